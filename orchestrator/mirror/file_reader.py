"""A DiskReader over a local file or block device (raw images, the sim provider's sources, tests).

It reads with pread/preadv (portable_io: seek and read under a lock on Windows) so one reader can serve
several threads, and it reports the file's holes (SEEK_DATA/SEEK_HOLE, where the platform has them) so
the mirror skips them without reading: a 100 GiB thin image with 3 GiB of data costs 3 GiB of reads.
"""

from __future__ import annotations

import errno
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from . import portable_io

_UNSUPPORTED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ESPIPE}


def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]] | None:
    """(offset, length) ranges of ``fd`` below ``size`` that may hold data; None when the file system
    cannot tell. Block devices report one range covering everything, which is correct, only not useful."""
    if not portable_io.HAS_SEEK_DATA:  # Windows: no SEEK_DATA, so no holes are known
        return None
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


def changed_chunks(ranges: Iterable[tuple[int, int]], chunk_size: int, count: int) -> bytearray:
    """1 for every chunk an (offset, length) range touches, else 0: the chunks an incremental pass must
    read when the source can say what changed since the last pass (changed-block tracking). A range past
    the end is clipped, so a disk that grew never indexes out of bounds."""
    changed = bytearray(count)
    for offset, length in ranges:
        if length <= 0:
            continue
        first = max(0, offset // chunk_size)
        last = min(count, -(-(offset + length) // chunk_size))
        changed[first:last] = b"\x01" * max(0, last - first)
    return changed


def is_hole(fd: int, offset: int, length: int) -> bool:
    """True when [offset, offset+length) is known to be a hole (reads as zeros without touching the disk)."""
    if not portable_io.HAS_SEEK_DATA:
        return False
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
            self._fd = os.open(self.path, portable_io.open_flags(os.O_RDONLY))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot open source disk {self.path}: {exc.strerror}") from None
        self.size = device_size(self._fd)
        self.identity = self._identity()
        # A mounted device's own page cache is not updated when its filesystem rewrites a block: a
        # buffered read would return the version an earlier pass cached. Dropped before each read.
        self._uncached = stat.S_ISBLK(os.fstat(self._fd).st_mode) and hasattr(os, "posix_fadvise")

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
        if self._uncached:
            os.posix_fadvise(self._fd, offset, len(view), os.POSIX_FADV_DONTNEED)
        return portable_io.pread_full(self._fd, view, offset)

    def allocated_ranges(self) -> Iterator[tuple[int, int]] | None:
        return data_ranges(self._fd, self.size)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            portable_io.close(self._fd)
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


class ReadAhead:
    """Reads the chunks of a pass on a thread of its own, in disk order, while the caller hashes the one
    before: on a disk-bound source the hashing then hides behind the reads, and on a cached one the two run
    on two cores (preadv and xxh3 both release the GIL).

    The thread decides alone which chunks to read (it walks the holes itself and asks ``wanted`` about
    the rest, e.g. chunks a resumed pass already copied), and tells the caller in order, one item per
    run: ``(HOLE, first, count, None, 0, None)``, ``(SKIP, first, count, None, 0, None)`` or
    ``(DATA, index, 1, buffer, bytes_read, error)``; an ``OSError`` of a read comes as that item's
    ``error`` for the caller to report with its offset. Buffers come from ``take_buffer(timeout)`` (None:
    none free yet), so the buffer pool bounds how far it runs ahead; the caller gives back those it is
    done with, as before. ``stop()`` ends the thread early and returns the buffers it held.
    """

    HOLE, SKIP, DATA = 0, 1, 2
    WAIT = 0.1  # seconds between looks at the stop flag while blocked

    @classmethod
    def from_pool(
        cls, reader: Any, buffers: queue.Queue, *, chunk_size: int, size: int, wanted: Callable[[int], bool]
    ) -> ReadAhead:
        """Buffers from (and back to) a queue of them; as many in flight as the queue holds now."""

        def take(timeout: float) -> Any:
            try:
                return buffers.get(timeout=timeout)
            except queue.Empty:
                return None

        return cls(
            reader,
            chunk_size=chunk_size,
            size=size,
            wanted=wanted,
            take_buffer=take,
            give_back=buffers.put,
            depth=buffers.qsize(),
        )

    def __init__(
        self,
        reader: Any,
        *,
        chunk_size: int,
        size: int,
        wanted: Callable[[int], bool],
        take_buffer: Callable[[float], Any],
        give_back: Callable[[Any], None],
        depth: int = 8,
    ) -> None:
        self._reader = reader
        self._chunk_size = chunk_size
        self._size = size
        self._wanted = wanted
        self._take_buffer = take_buffer
        self._give_back = give_back
        self._items: queue.Queue = queue.Queue(maxsize=max(2, depth))
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[tuple[int, int, int, Any, int, OSError | None]]:
        while True:
            item = self._items.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self._stopped.set()
        while self._thread.is_alive():
            self._drain()
            self._thread.join(self.WAIT)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                item = self._items.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, tuple) and item[3] is not None:
                self._give_back(item[3])

    def _put(self, item: Any) -> bool:
        while not self._stopped.is_set():
            try:
                self._items.put(item, timeout=self.WAIT)
                return True
            except queue.Full:
                continue
        if isinstance(item, tuple) and item[3] is not None:
            self._give_back(item[3])
        return False

    def _run(self) -> None:
        try:
            self._walk()
        except BaseException as exc:  # a bug: the caller raises it rather than waiting forever
            self._put(exc)

    def _read(self, offset: int, view: memoryview) -> int:
        read_into = getattr(self._reader, "read_into", None)
        if read_into is not None:
            return read_into(offset, view)
        data = self._reader.read(offset, len(view))  # a DiskReader with read() only
        view[: len(data)] = data
        return len(data)

    def _walk(self) -> None:
        chunk = self._chunk_size
        holes = HoleIndex(self._reader.allocated_ranges(), chunk)
        kind, first, count = -1, 0, 0
        for index in range(-(-self._size // chunk)):
            if self._stopped.is_set():
                return
            this = self.SKIP if not self._wanted(index) else self.HOLE if holes.is_hole(index) else self.DATA
            if this != self.DATA:
                if this == kind:
                    count += 1
                    continue
                if count and not self._put((kind, first, count, None, 0, None)):
                    return
                kind, first, count = this, index, 1
                continue
            if count and not self._put((kind, first, count, None, 0, None)):
                return
            kind, count = -1, 0
            buffer = None
            while buffer is None:
                if self._stopped.is_set():
                    return
                buffer = self._take_buffer(self.WAIT)
            offset = index * chunk
            length = min(chunk, self._size - offset)
            error = None
            try:
                got = self._read(offset, buffer[:length])
            except OSError as exc:
                got, error = 0, exc
            if not self._put((self.DATA, index, 1, buffer, got, error)):
                return
            if error is not None:  # the caller reports it; nothing after a failed read is read
                break
        else:
            if count and not self._put((kind, first, count, None, 0, None)):
                return
        self._put(None)
