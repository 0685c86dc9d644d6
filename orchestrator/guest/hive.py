"""Offline edits of a Windows registry hive file through hivex (Debian libhivex0), byte-exact.

hivexsh (libhivex-bin) can only replace every value of a key at once (``setval``), and its listing
decodes strings, so keeping a key's other values exactly as they were would mean parsing text back into
bytes. The library underneath it reads and writes values as (type, bytes), so this module binds the few
calls it needs with ctypes: the same code hivexsh, hivexget and virt-v2v run, without a text round trip.
Tests read the result back with hivexget, not with this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REG_DWORD", "REG_EXPAND_SZ", "REG_SZ", "Hive", "HiveError", "RegValue", "open_hive"]

REG_SZ, REG_EXPAND_SZ, REG_DWORD = 1, 2, 4
_OPEN_WRITE = 4  # HIVEX_OPEN_WRITE


class HiveError(RuntimeError):
    """A hive could not be read or changed; the message names the file and what to do."""


@dataclass(frozen=True)
class RegValue:
    """A registry value as the hive stores it: its type number and raw bytes."""

    type: int
    data: bytes

    @classmethod
    def sz(cls, text: str, kind: int = REG_SZ) -> RegValue:
        return cls(kind, (text + "\0").encode("utf-16-le"))

    @classmethod
    def dword(cls, number: int) -> RegValue:
        return cls(REG_DWORD, struct.pack("<I", number))

    def as_int(self) -> int | None:
        return (
            struct.unpack("<I", self.data[:4])[0] if self.type == REG_DWORD and len(self.data) >= 4 else None
        )

    def to_json(self) -> dict[str, object]:
        return {"type": self.type, "hex": self.data.hex()}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> RegValue:
        return cls(int(str(data["type"])), bytes.fromhex(str(data["hex"])))


class _SetValue(ctypes.Structure):
    _fields_ = [
        ("key", ctypes.c_char_p),
        ("t", ctypes.c_int),
        ("len", ctypes.c_size_t),
        ("value", ctypes.c_char_p),
    ]


@functools.cache
def _library() -> ctypes.CDLL:
    """libhivex, bound once per process (find_library runs ldconfig)."""
    name = ctypes.util.find_library("hivex")
    if name is None:
        raise HiveError("libhivex is not installed: apt-get install libhivex-bin (it brings libhivex0)")
    lib = ctypes.CDLL(name, use_errno=True)
    handle, node = ctypes.c_void_p, ctypes.c_size_t
    signatures: dict[str, tuple[object, list[object]]] = {
        "hivex_open": (handle, [ctypes.c_char_p, ctypes.c_int]),
        "hivex_close": (ctypes.c_int, [handle]),
        "hivex_root": (node, [handle]),
        "hivex_node_get_child": (node, [handle, node, ctypes.c_char_p]),
        "hivex_node_add_child": (node, [handle, node, ctypes.c_char_p]),
        "hivex_node_values": (ctypes.POINTER(node), [handle, node]),
        "hivex_value_key": (ctypes.c_void_p, [handle, node]),
        "hivex_value_value": (
            ctypes.c_void_p,
            [handle, node, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t)],
        ),
        "hivex_node_set_values": (
            ctypes.c_int,
            [handle, node, ctypes.c_size_t, ctypes.POINTER(_SetValue), ctypes.c_int],
        ),
        "hivex_commit": (ctypes.c_int, [handle, ctypes.c_char_p, ctypes.c_int]),
    }
    for function, (restype, argtypes) in signatures.items():
        getattr(lib, function).restype = restype
        getattr(lib, function).argtypes = argtypes
    return lib


_LIBC = ctypes.CDLL(None)
_LIBC.free.argtypes = [ctypes.c_void_p]


class Hive:
    """One open hive file. Keys are backslash paths from the hive's root (``Setup``, ``ControlSet001\\X``)."""

    def __init__(self, path: Path, *, write: bool) -> None:
        self.path = path
        self._lib = _library()
        self._h = self._lib.hivex_open(os.fsencode(path), _OPEN_WRITE if write else 0)
        if not self._h:
            raise HiveError(f"{path}: not a registry hive hivex can open ({os.strerror(ctypes.get_errno())})")

    def close(self) -> None:
        if self._h:
            self._lib.hivex_close(self._h)
            self._h = None

    def _error(self, what: str) -> HiveError:
        return HiveError(f"{self.path}: {what} failed ({os.strerror(ctypes.get_errno()) or 'corrupt hive'})")

    def _node(self, key: str, *, create: bool = False) -> int | None:
        node = self._lib.hivex_root(self._h)
        for part in filter(None, key.split("\\")):
            ctypes.set_errno(0)
            child = self._lib.hivex_node_get_child(self._h, node, part.encode())
            if not child:
                if ctypes.get_errno():
                    raise self._error(f"reading key {key}")
                if not create:
                    return None
                child = self._lib.hivex_node_add_child(self._h, node, part.encode())
                if not child:
                    raise self._error(f"adding key {key}")
            node = child
        return int(node)

    def values(self, key: str) -> dict[str, RegValue]:
        """Every value of ``key`` in the hive's order; the default value's name is the empty string."""
        node = self._node(key)
        return {} if node is None else self._values(node)

    def _values(self, node: int) -> dict[str, RegValue]:
        array = self._lib.hivex_node_values(self._h, node)
        if not array:
            raise self._error("listing values")
        found: dict[str, RegValue] = {}
        try:
            index = 0
            while array[index]:
                value = array[index]
                name_ptr = self._lib.hivex_value_key(self._h, value)
                kind, length = ctypes.c_int(), ctypes.c_size_t()
                data_ptr = self._lib.hivex_value_value(
                    self._h, value, ctypes.byref(kind), ctypes.byref(length)
                )
                if not name_ptr or not data_ptr:
                    raise self._error("reading a value")
                found[ctypes.string_at(name_ptr).decode("utf-8", errors="replace")] = RegValue(
                    kind.value, ctypes.string_at(data_ptr, length.value)
                )
                _LIBC.free(name_ptr)
                _LIBC.free(data_ptr)
                index += 1
        finally:
            _LIBC.free(ctypes.cast(array, ctypes.c_void_p))
        return found

    def set_values(self, key: str, changes: dict[str, RegValue | None]) -> None:
        """Set (or, for None, delete) the named values of ``key``, creating the key; the others stay."""
        node = self._node(key, create=True)
        assert node is not None
        merged = self._values(node)
        for name, value in changes.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        keep = [(name.encode(), value.data) for name, value in merged.items()]  # alive through the call
        array = (_SetValue * max(len(keep), 1))()
        for slot, ((name, data), value) in enumerate(zip(keep, merged.values(), strict=True)):
            array[slot] = _SetValue(name, value.type, len(data), data)
        if self._lib.hivex_node_set_values(self._h, node, len(keep), array, 0) != 0:
            raise self._error(f"setting values of {key}")

    def commit(self) -> None:
        if self._lib.hivex_commit(self._h, None, 0) != 0:
            raise self._error("writing the hive")


@contextmanager
def open_hive(path: Path, *, write: bool = False) -> Iterator[Hive]:
    hive = Hive(path, write=write)
    try:
        yield hive
    finally:
        hive.close()
