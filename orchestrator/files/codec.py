"""A small, safe binary encoding for the files agent's batches: tuples of ints, bytes, None and tuples.

Why not marshal or pickle: what a source host sends must never be able to build objects on the
orchestrator (pickle runs code, marshal builds code objects and may crash the interpreter on bad input).
Why not JSON: paths are bytes (newlines, invalid UTF-8) and file data is binary. Standard-library only.
"""

from __future__ import annotations

import struct
from typing import Any

_INT = struct.Struct("<q")
_LEN = struct.Struct("<I")

# frame types of the files agent (above the block mirror's numbers, which stop at 15)
ENTRIES = 40  # a batch of scan entries
PIECES = 41  # a batch of read pieces (file starts, data, ends, problems)
HASHES = 42  # a batch of block digest lists
OPS = 43  # a batch of writer operations

BATCH_BYTES = 1024 * 1024


class CodecError(Exception):
    pass


def encode(items: list[tuple]) -> bytes:
    out = bytearray()
    for item in items:
        _put(out, item)
    return bytes(out)


def _put(out: bytearray, value: Any) -> None:
    if value is None:
        out += b"n"
    elif value is True or value is False:
        out += b"T" if value else b"F"
    elif isinstance(value, int):
        out += b"i"
        out += _INT.pack(value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out += b"b"
        out += _LEN.pack(len(value))
        out += value
    elif isinstance(value, tuple):
        out += b"t"
        out += _LEN.pack(len(value))
        for part in value:
            _put(out, part)
    else:
        raise CodecError(f"cannot encode {type(value).__name__}")


def decode(payload: bytes | bytearray | memoryview) -> list[tuple]:
    data = bytes(payload)
    items: list[tuple] = []
    offset = 0
    end = len(data)
    while offset < end:
        value, offset = _get(data, offset)
        if not isinstance(value, tuple):
            raise CodecError("a batch holds tuples only")
        items.append(value)
    return items


def _get(data: bytes, offset: int) -> tuple[Any, int]:
    try:
        tag = data[offset]
    except IndexError:
        raise CodecError("the batch ends in the middle of a value") from None
    offset += 1
    if tag == 0x6E:  # n
        return None, offset
    if tag == 0x54:  # T
        return True, offset
    if tag == 0x46:  # F
        return False, offset
    if tag == 0x69:  # i
        if offset + 8 > len(data):
            raise CodecError("the batch ends in the middle of a number")
        return _INT.unpack_from(data, offset)[0], offset + 8
    if tag in (0x62, 0x74):  # b, t
        if offset + 4 > len(data):
            raise CodecError("the batch ends in the middle of a length")
        (length,) = _LEN.unpack_from(data, offset)
        offset += 4
        if tag == 0x62:
            if offset + length > len(data):
                raise CodecError("the batch ends in the middle of a byte string")
            return data[offset : offset + length], offset + length
        parts = []
        for _ in range(length):
            value, offset = _get(data, offset)
            parts.append(value)
        return tuple(parts), offset
    raise CodecError(f"unknown value tag {tag}")


class Batcher:
    """Collects items and sends them as frames of about BATCH_BYTES."""

    def __init__(self, channel: Any, frame_type: int) -> None:
        self.channel = channel
        self.frame_type = frame_type
        self.buffer = bytearray()

    def add(self, item: tuple) -> None:
        _put(self.buffer, item)
        if len(self.buffer) >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.channel.send(self.frame_type, bytes(self.buffer))
            self.buffer = bytearray()
