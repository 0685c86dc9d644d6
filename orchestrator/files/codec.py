"""A small, safe binary encoding for the files agent's batches: tuples of ints, bytes, None and tuples.

Why not marshal or pickle: what a source host sends must never be able to build objects on the
orchestrator (pickle runs code, marshal builds code objects and may crash the interpreter on bad input).
Why not JSON: paths are bytes (newlines, invalid UTF-8) and file data is binary. Standard-library only.

Speed matters here: a tree of 100,000 files crosses as 100,000 entries and 300,000 read pieces, so the
scalars inside a tuple are handled inline instead of by one call each, and a large byte string (file
data) is never copied into the batch: it travels as its own part of the frame (``FrameChannel.send``
writes the parts back to back) and is decoded as a view of the received frame.
"""

from __future__ import annotations

import struct
from typing import Any

_INT = struct.Struct("<q")
_LEN = struct.Struct("<I")
_TAG_INT = struct.Struct("<cq").pack
_TAG_LEN = struct.Struct("<cI").pack
_int_at = _INT.unpack_from
_len_at = _LEN.unpack_from

# frame types of the files agent (above the block mirror's numbers, which stop at 15)
ENTRIES = 40  # a batch of scan entries
PIECES = 41  # a batch of read pieces (file starts, data, ends, problems)
HASHES = 42  # a batch of block digest lists
OPS = 43  # a batch of writer operations

BATCH_BYTES = 1024 * 1024
SEPARATE_BYTES = 32 * 1024  # a byte string this long goes as a frame part of its own, not copied
VIEW_BYTES = 32 * 1024  # and is decoded as a view of the frame, not copied


class CodecError(Exception):
    pass


def encode(items: list[tuple]) -> bytes:
    out = bytearray()
    for item in items:
        _put(out, item)
    return bytes(out)


def _put(out: bytearray, value: Any) -> None:
    kind = type(value)
    if kind is tuple:
        out += _TAG_LEN(b"t", len(value))
        for part in value:
            kind = type(part)
            if kind is int:
                out += _TAG_INT(b"i", part)
            elif kind is bytes:
                out += _TAG_LEN(b"b", len(part))
                out += part
            elif part is None:
                out += b"n"
            elif part is True:
                out += b"T"
            elif part is False:
                out += b"F"
            else:
                _put(out, part)
    elif kind is bytes:
        out += _TAG_LEN(b"b", len(value))
        out += value
    elif kind is int:
        out += _TAG_INT(b"i", value)
    elif value is None:
        out += b"n"
    elif value is True or value is False:
        out += b"T" if value else b"F"
    elif isinstance(value, int):
        out += _TAG_INT(b"i", int(value))
    elif isinstance(value, (bytearray, memoryview)):
        view = memoryview(value).cast("B")
        out += _TAG_LEN(b"b", len(view))
        out += view
    elif isinstance(value, tuple):
        _put(out, tuple(value))
    else:
        raise CodecError(f"cannot encode {type(value).__name__}")


def decode(payload: bytes | bytearray | memoryview) -> list[tuple]:
    """The tuples of one batch. Byte strings of VIEW_BYTES or more are read-only views of ``payload``."""
    data = payload if type(payload) is bytes else memoryview(payload).toreadonly()
    items: list[tuple] = []
    offset = 0
    end = len(data)
    try:
        while offset < end:
            if data[offset] != 0x74:
                raise CodecError("a batch holds tuples only")
            value, offset = _get(data, offset, end)
            items.append(value)
    except (IndexError, struct.error):
        raise CodecError("the batch ends in the middle of a value") from None
    return items


def _get(data: Any, offset: int, end: int) -> tuple[Any, int]:
    tag = data[offset]
    offset += 1
    if tag == 0x74:  # t
        (count,) = _len_at(data, offset)
        offset += 4
        parts: list[Any] = []
        append = parts.append
        for _ in range(count):
            tag = data[offset]
            if tag == 0x69:  # i
                append(_int_at(data, offset + 1)[0])
                offset += 9
            elif tag == 0x62:  # b
                (length,) = _len_at(data, offset + 1)
                start = offset + 5
                offset = start + length
                if offset > end:
                    raise CodecError("the batch ends in the middle of a byte string")
                if length >= VIEW_BYTES and type(data) is not bytes:
                    append(data[start:offset])
                else:
                    append(bytes(data[start:offset]))
            elif tag == 0x6E:  # n
                append(None)
                offset += 1
            elif tag == 0x54:  # T
                append(True)
                offset += 1
            elif tag == 0x46:  # F
                append(False)
                offset += 1
            else:
                value, offset = _get(data, offset, end)
                append(value)
        return tuple(parts), offset
    if tag == 0x62:  # b
        (length,) = _len_at(data, offset)
        start = offset + 4
        if start + length > end:
            raise CodecError("the batch ends in the middle of a byte string")
        return bytes(data[start : start + length]), start + length
    if tag == 0x69:  # i
        return _int_at(data, offset)[0], offset + 8
    if tag == 0x6E:
        return None, offset
    if tag == 0x54:
        return True, offset
    if tag == 0x46:
        return False, offset
    raise CodecError(f"unknown value tag {tag}")


# A scan entry in a fixed layout: a tree of 100,000 files crosses as 100,000 entries, and unpacking one
# struct per entry costs a fraction of decoding fifteen tagged values. The variable parts follow it: the
# path, the link's target, and the xattrs (generic encoding, rare) when there are any.
_ENTRY = struct.Struct("<IcIIIqqQQQBIII")
_SPARSE, _MEMBER, _LINK, _NO_XATTRS, _XATTRS = 1, 2, 4, 8, 16


def put_entry(out: bytearray, pair: int, entry: Any) -> None:
    """Append ``entry`` (a tree.Entry) of root pair ``pair`` to ``out``."""
    path, kind, mode, uid, gid, size, mtime_ns, ino, dev, nlink, sparse, link, xattrs, member = entry
    flags = (_SPARSE if sparse else 0) | (_MEMBER if member else 0)
    blob = b""
    if link is not None:
        flags |= _LINK
    if xattrs is None:
        flags |= _NO_XATTRS
    elif xattrs:
        flags |= _XATTRS
        packed = bytearray()
        _put(packed, tuple(xattrs))
        blob = bytes(packed)
    out += _ENTRY.pack(
        pair,
        kind,
        mode,
        uid,
        gid,
        size,
        mtime_ns,
        ino,
        dev,
        nlink,
        flags,
        len(path),
        len(link or b""),
        len(blob),
    )
    out += path
    if link:
        out += link
    out += blob


def decode_entries(payload: bytes | bytearray | memoryview, make: Any) -> list[tuple[int, Any]]:
    """The (pair, entry) of one ENTRIES batch; ``make`` builds an entry from its fourteen fields."""
    data = bytes(payload)
    out: list[tuple[int, Any]] = []
    append = out.append
    unpack = _ENTRY.unpack_from
    head = _ENTRY.size
    offset, end = 0, len(data)
    try:
        while offset < end:
            pair, kind, mode, uid, gid, size, mtime_ns, ino, dev, nlink, flags, plen, llen, xlen = unpack(
                data, offset
            )
            offset += head
            path = data[offset : offset + plen]
            offset += plen
            link = data[offset : offset + llen] if flags & _LINK else None
            offset += llen
            if flags & _XATTRS:
                xattrs, _ = _get(data, offset, offset + xlen)
                offset += xlen
            else:
                xattrs = None if flags & _NO_XATTRS else ()
            if offset > end:
                raise CodecError("the batch ends in the middle of an entry")
            append(
                (
                    pair,
                    make(
                        (
                            path,
                            kind,
                            mode,
                            uid,
                            gid,
                            size,
                            mtime_ns,
                            ino,
                            dev,
                            nlink,
                            bool(flags & _SPARSE),
                            link,
                            xattrs,
                            bool(flags & _MEMBER),
                        )
                    ),
                )
            )
    except (IndexError, struct.error):
        raise CodecError("the batch ends in the middle of an entry") from None
    return out


class EntryBatcher:
    """Scan entries into ENTRIES frames of about BATCH_BYTES."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.buffer = bytearray()

    def add(self, pair: int, entry: Any) -> None:
        put_entry(self.buffer, pair, entry)
        if len(self.buffer) >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.channel.send(ENTRIES, self.buffer)
        self.buffer = bytearray()


class Batcher:
    """Collects items and sends them as frames of about BATCH_BYTES. An item whose last field is a large
    byte string (file data) is written up to it; the string itself becomes the frame's next part."""

    def __init__(self, channel: Any, frame_type: int) -> None:
        self.channel = channel
        self.frame_type = frame_type
        self.buffer = bytearray()
        self.parts: list[Any] = []
        self.size = 0

    def add(self, item: tuple) -> None:
        last = item[-1] if item else None
        if type(last) in (bytes, memoryview, bytearray) and len(last) >= SEPARATE_BYTES:
            start = len(self.buffer)
            _put(self.buffer, item[:-1])
            self.buffer[start + 1 : start + 5] = _LEN.pack(len(item))  # the tuple's count, with the string
            view = memoryview(last).cast("B")
            self.buffer += _TAG_LEN(b"b", len(view))
            self.parts.append(self.buffer)
            self.parts.append(view)
            self.size += len(self.buffer) + len(view)
            self.buffer = bytearray()
        else:
            _put(self.buffer, item)
        if self.size + len(self.buffer) >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.parts.append(self.buffer)
        if self.parts:
            self.channel.send(self.frame_type, *self.parts)
        self.buffer = bytearray()
        self.parts = []
        self.size = 0
