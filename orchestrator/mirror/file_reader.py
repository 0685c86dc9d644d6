"""A DiskReader over a local file or block device (raw images, the sim provider's sources, tests).

It reads with pread/preadv so one reader can serve several threads, and it reports the file's holes
(SEEK_DATA/SEEK_HOLE) so the mirror skips them without reading: a 100 GiB thin image with 3 GiB of data
costs 3 GiB of reads.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

_UNSUPPORTED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ESPIPE}


def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]] | None:
    """(offset, length) ranges of ``fd`` below ``size`` that may hold data; None when the file system
    cannot tell. Block devices report one range covering everything, which is correct, only not useful."""
    try:
        first = os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data at all
            return iter(())
        if exc.errno in _UNSUPPORTED:
            return None
        raise
    return _walk(fd, size, first)


def _walk(fd: int, size: int, offset: int) -> Iterator[tuple[int, int]]:
    while offset < size:
        hole = min(os.lseek(fd, offset, os.SEEK_HOLE), size)
        if hole > offset:
            yield offset, hole - offset
        try:
            offset = os.lseek(fd, hole, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            raise


def is_hole(fd: int, offset: int, length: int) -> bool:
    """True when [offset, offset+length) is known to be a hole (reads as zeros without touching the disk)."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
    except OSError as exc:
        return exc.errno == errno.ENXIO  # ENXIO: no data after offset; anything else: unknown, so not a hole


def device_size(fd: int) -> int:
    """Size of a regular file or a block device (st_size is 0 for the latter)."""
    return os.lseek(fd, 0, os.SEEK_END)


class FileDiskReader:
    """Random-access reads of one local disk image or block device; it is never written."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot open source disk {self.path}: {exc.strerror}") from None
        self.size = device_size(self._fd)
        self.identity = self._identity()

    def _identity(self) -> str:
        """A string that changes when the file is replaced by another one (not when it is written to or
        resized: a resize must reach the block map's size check, not silently restart the copy)."""
        stat = os.fstat(self._fd)
        return f"file:{self.path.resolve()}:{stat.st_dev}:{stat.st_ino}"

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        got = self.read_into(offset, buf)
        return bytes(buf[:got]) if got < length else bytes(buf)

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        """Fill ``buf`` from ``offset``; returns fewer bytes only at the end of the disk.

        An optional DiskReader extension: the mirror uses it when present to read into its own reused
        buffers instead of allocating a bytes object per chunk. (Not named ``readinto``: io's readinto
        takes no offset, and a reader built on io must not be mistaken for one that has this.)"""
        view = memoryview(buf)
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got == 0:
                break
            done += got
        return done

    def allocated_ranges(self) -> Iterator[tuple[int, int]] | None:
        return data_ranges(self._fd, self.size)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileDiskReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class HoleIndex:
    """Answers "is chunk i wholly inside a hole of the source?" for increasing i, from allocated_ranges()."""

    def __init__(self, ranges: Iterable[tuple[int, int]] | None, chunk_size: int) -> None:
        self._ranges = iter(ranges) if ranges is not None else None
        self._chunk_size = chunk_size
        self._current: tuple[int, int] | None = None
        self._advance()

    def _advance(self) -> None:
        self._current = None
        if self._ranges is None:
            return
        for offset, length in self._ranges:
            if length > 0:
                self._current = (offset // self._chunk_size, (offset + length - 1) // self._chunk_size)
                return

    def is_hole(self, index: int) -> bool:
        if self._ranges is None:
            return False
        while self._current is not None and self._current[1] < index:
            self._advance()
        return self._current is None or self._current[0] > index
