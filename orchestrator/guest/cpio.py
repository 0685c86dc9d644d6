"""The file list of a Linux initramfs, read the way the kernel unpacks it, without extracting anything.

An initramfs is one or more "newc" cpio archives, each either stored as is or compressed (gzip, zstd,
xz, lzma, bzip2, lz4), one after another with zero padding between them. Debian and dracut put an
uncompressed archive holding CPU microcode first ("early" initramfs) and the compressed main archive
after it. The reader walks those segments as the kernel's ``unpack_to_rootfs`` does, decompresses in
bounded pieces (a 70 MiB initrd never sits decompressed in memory), and keeps only names, sizes and the
content of the few small files a caller asks for. lz4 goes through the ``lz4`` program, as Python's
standard library has no lz4; LZO is refused with a message rather than guessed.
"""

from __future__ import annotations

import bz2
import lzma
import shutil
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["CpioEntry", "InitramfsContents", "UnreadableInitramfs", "newc_archive", "read_initramfs"]

_CHUNK = 256 * 1024
_HEADER = 110
_TRAILER = "TRAILER!!!"
_MAGICS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("xz", b"\xfd7zXZ\x00"),
    ("lzma", b"\x5d\x00\x00"),
    ("bzip2", b"BZh"),
    ("lz4", b"\x02\x21\x4c\x18"),
    ("lzo", b"\x89LZO"),
)


class UnreadableInitramfs(Exception):
    """The initramfs is in a form this reader cannot take apart; the message says which and why."""


@dataclass(frozen=True)
class CpioEntry:
    name: str  # as stored, without a leading "./" or "/"
    mode: int
    size: int


@dataclass
class InitramfsContents:
    entries: dict[str, CpioEntry] = field(default_factory=dict)
    captured: dict[str, bytes] = field(default_factory=dict)  # contents of the files asked for
    segments: list[str] = field(default_factory=list)  # "cpio", "gzip", ... in order


class _Stream:
    """Bytes from ``source`` with look-ahead, counting what was consumed."""

    def __init__(self, source: Callable[[int], bytes]) -> None:
        self._source = source
        self._buffer = b""
        self.consumed = 0

    def peek(self, count: int) -> bytes:
        while len(self._buffer) < count:
            more = self._source(max(_CHUNK, count - len(self._buffer)))
            if not more:
                break
            self._buffer += more
        return self._buffer[:count]

    def read(self, count: int) -> bytes:
        data = self.peek(count)
        self._buffer = self._buffer[len(data) :]
        self.consumed += len(data)
        return data

    def skip(self, count: int) -> None:
        while count > 0:
            step = len(self.read(min(count, _CHUNK)))
            if not step:
                raise UnreadableInitramfs("an archive ends in the middle of a file")
            count -= step

    def skip_zeros(self) -> None:
        while True:
            head = self.peek(_CHUNK)
            if not head:
                return
            stripped = len(head) - len(head.lstrip(b"\x00"))
            self.read(stripped)
            if stripped < len(head):
                return


def _parse_archives(stream: _Stream, out: InitramfsContents, capture: Callable[[str, int], bool]) -> None:
    """Every newc archive at this point of the stream, until something that is not one begins."""
    while True:
        stream.skip_zeros()
        if stream.peek(6) not in (b"070701", b"070702"):
            return
        while True:
            header = stream.read(_HEADER)
            if len(header) < _HEADER or header[:6] not in (b"070701", b"070702"):
                raise UnreadableInitramfs("a cpio header is cut short or has no newc magic")
            try:
                fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
            except ValueError as exc:
                raise UnreadableInitramfs("a cpio header holds non-hexadecimal fields") from exc
            mode, size, name_size = fields[1], fields[6], fields[11]
            raw_name = stream.read(name_size)
            stream.skip((4 - (_HEADER + name_size) % 4) % 4)
            name = raw_name.rstrip(b"\x00").decode(errors="replace")
            if name == _TRAILER:
                break
            name = name.removeprefix("./").lstrip("/")
            if name and name != ".":
                out.entries[name] = CpioEntry(name, mode, size)
            if name and capture(name, size):
                out.captured[name] = stream.read(size)
            else:
                stream.skip(size)
            stream.skip((4 - size % 4) % 4)


class _Decompressed:
    """A decompressing reader over the file from ``offset``: consecutive members of one format continue
    one stream (gzip -c and multi-threaded zstd can write several), and ``end`` is the offset where the
    compressed data stopped, or None when the tool used cannot say (lz4)."""

    def __init__(self, handle: BinaryIO, offset: int, kind: str) -> None:
        self.handle, self.kind = handle, kind
        self.position = offset  # next compressed byte to feed
        self.end: int | None = None
        self._pending = b""  # compressed bytes read but not yet fed
        self._process: subprocess.Popen[bytes] | None = None
        self._decoder = self._new_decoder()

    def _new_decoder(self) -> Any:
        if self.kind == "gzip":
            return zlib.decompressobj(31)
        if self.kind in ("xz", "lzma"):
            return lzma.LZMADecompressor()
        if self.kind == "bzip2":
            return bz2.BZ2Decompressor()
        if self.kind == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().decompressobj()
        if self.kind == "lz4":
            tool = shutil.which("lz4")
            if tool is None:
                raise UnreadableInitramfs("the initramfs is lz4-compressed: install lz4 to read it")
            self.handle.seek(self.position)
            self._process = subprocess.Popen(
                [tool, "-dc"], stdin=self.handle, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
            return None
        raise UnreadableInitramfs(f"the initramfs is {self.kind}-compressed, which this reader does not take")

    def read(self, count: int) -> bytes:
        if self._process is not None:
            assert self._process.stdout is not None
            return self._process.stdout.read(count)
        while self.end is None:
            decoder = self._decoder
            if self.kind == "zstd":
                data, self._pending = decoder.decompress(self._pending or self._next_chunk()), b""
            elif self.kind == "gzip":
                data = decoder.decompress(self._pending or self._next_chunk(), count)
                self._pending = decoder.unconsumed_tail
            elif decoder.needs_input:
                data, self._pending = decoder.decompress(self._pending or self._next_chunk(), count), b""
            else:  # output held back by max_length: drain it before feeding more
                data = decoder.decompress(b"", count)
            if decoder.eof:
                self._member_ended(len(decoder.unused_data) + len(self._pending))
            if data:
                return data
        return b""

    def _next_chunk(self) -> bytes:
        self.handle.seek(self.position)
        chunk = self.handle.read(_CHUNK)
        if not chunk:
            raise UnreadableInitramfs(f"the {self.kind} data of the initramfs is cut short")
        self.position += len(chunk)
        return chunk

    def _member_ended(self, unused: int) -> None:
        """Continue with the next member of the same format after any zero padding, or stop there."""
        member_end = self.position - unused
        self.handle.seek(member_end)
        offset = member_end
        while True:
            chunk = self.handle.read(_CHUNK)
            stripped = chunk.lstrip(b"\x00")
            offset += len(chunk) - len(stripped)
            if stripped or not chunk:
                break
        self._pending = b""
        if stripped.startswith(dict(_MAGICS)[self.kind]):
            self.position = offset
            self._decoder = self._new_decoder()
        else:
            self.end = member_end

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()


def _kind(head: bytes) -> str | None:
    for kind, magic in _MAGICS:
        if head.startswith(magic):
            return kind
    return None


def read_initramfs(
    path: Path, capture: Callable[[str, int], bool] = lambda name, size: False
) -> InitramfsContents:
    """Names (and captured contents) of every file in the initramfs at ``path``."""
    out = InitramfsContents()
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        position = 0
        while position < size:
            handle.seek(position)
            raw = _Stream(handle.read)
            raw.skip_zeros()
            position += raw.consumed
            head = raw.peek(8)
            if not head:
                break
            if head[:6] in (b"070701", b"070702"):
                handle.seek(position)
                archive = _Stream(handle.read)
                _parse_archives(archive, out, capture)
                out.segments.append("cpio")
                position += archive.consumed
                continue
            kind = _kind(head)
            if kind is None:
                raise UnreadableInitramfs(
                    f"unrecognised data at byte {position} of the initramfs (starts {head[:4].hex()})"
                )
            reader = _Decompressed(handle, position, kind)
            try:
                _parse_archives(_Stream(reader.read), out, capture)
                while reader.read(_CHUNK):  # padding after the last archive inside the compressed data
                    pass
            except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
                raise UnreadableInitramfs(f"the {kind} data of the initramfs is damaged: {exc}") from exc
            except Exception as exc:
                if type(exc).__module__.startswith("zstd"):
                    raise UnreadableInitramfs(f"the zstd data of the initramfs is damaged: {exc}") from exc
                raise
            finally:
                reader.close()
            out.segments.append(kind)
            if reader.end is None:
                break
            position = reader.end
    return out


def newc_archive(files: dict[str, bytes | tuple[int, bytes]]) -> bytes:
    """A newc cpio archive of ``files`` (name -> content, or (mode, content)), as update-initramfs and
    dracut write them; directories must be listed as (0o040755, b"")."""
    out = bytearray()
    for inode, (name, value) in enumerate([*files.items(), (_TRAILER, (0, b""))], start=1):
        mode, data = value if isinstance(value, tuple) else (0o100644, value)
        encoded = name.encode() + b"\x00"
        fields = [inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out += b"070701" + b"".join(f"{f:08X}".encode() for f in fields) + encoded
        out += bytes((4 - len(out) % 4) % 4) + data + bytes((4 - len(data) % 4) % 4)
    return bytes(out) + bytes((512 - len(out) % 512) % 512)  # cpio pads its output to 512-byte blocks
