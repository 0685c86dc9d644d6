"""File I/O the shipped agent modules share, written once for POSIX and for Windows CPython.

The agent runs under whatever CPython the far machine has, Windows' included, and Windows' ``os`` lacks
``pread``, ``pwrite``, ``preadv``, ``readv``, ``writev``, ``fdatasync``, ``O_CLOEXEC``, ``SEEK_DATA``,
and ``fcntl`` is not there at all. Every use goes through here: the POSIX call where the platform has
it, else what Windows offers.

* Positioned reads and writes fall back to ``lseek`` + ``read``/``write`` under a lock per descriptor,
  so the reader, the writer and the writer's read-back thread sharing one descriptor never interleave a
  seek with another thread's transfer.
* ``open_flags`` adds ``O_BINARY`` (without it the C runtime opens in text mode and rewrites line ends
  in the data) and ``O_NOINHERIT`` on Windows, ``O_CLOEXEC`` on POSIX.
* ``try_lock`` takes an exclusive, non-blocking lock: ``flock`` on POSIX, ``msvcrt.locking`` of the
  first byte on Windows. Windows' byte-range locks are mandatory (a locked byte cannot be read through
  another handle), so callers lock a lock file there, never a disk.

Nothing here may import what Windows lacks at module level: this module is shipped with the agent.
"""

from __future__ import annotations

import errno
import os
import threading

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None  # type: ignore[assignment]

O_BINARY = getattr(os, "O_BINARY", 0)
NO_INHERIT = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOINHERIT", 0)
HAS_SEEK_DATA = hasattr(os, "SEEK_DATA") and hasattr(os, "SEEK_HOLE")
SECTOR = 512  # the smallest logical sector a disk has: raw device I/O on Windows must be a multiple

_fd_locks: dict[int, threading.Lock] = {}
_fd_locks_guard = threading.Lock()


def open_flags(flags: int) -> int:
    """``flags`` plus binary mode and no inheritance, whatever this platform calls them."""
    return flags | O_BINARY | NO_INHERIT


def is_windows_device(path: str | os.PathLike[str]) -> bool:
    """``\\\\.\\PhysicalDrive1``, ``\\\\?\\GLOBALROOT\\Device\\...``: a disk or volume by its device name."""
    return os.fspath(path).startswith(("\\\\.\\", "\\\\?\\"))


def _seek_lock(fd: int) -> threading.Lock:
    with _fd_locks_guard:
        lock = _fd_locks.get(fd)
        if lock is None:
            lock = _fd_locks[fd] = threading.Lock()
        return lock


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` at ``offset`` (one call: may return fewer bytes, 0 at the end)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    with _seek_lock(fd):
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, len(view))
    view[: len(data)] = data
    return len(data)


def pread_full(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``offset``; fewer bytes only where the file or device ends."""
    done = 0
    while done < len(view):
        got = pread_into(fd, view[done:], offset + done)
        if got == 0:
            break
        done += got
    return done


def pread(fd: int, length: int, offset: int) -> bytes:
    """``os.pread``: up to ``length`` bytes at ``offset``, fewer only at the end."""
    if hasattr(os, "pread"):
        return os.pread(fd, length, offset)
    buffer = bytearray(length)
    return bytes(buffer[: pread_full(fd, memoryview(buffer), offset)])


def pwrite(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
    """``os.pwrite``: one call, returns how many bytes it wrote."""
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, offset)
    with _seek_lock(fd):
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def fdatasync(fd: int) -> None:
    """The data on stable storage (Windows has only FlushFileBuffers, which ``os.fsync`` calls)."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def readv_into(fd: int, view: memoryview) -> int:
    """Read what is there into ``view`` (a pipe: fewer bytes than asked is normal; 0 at the end)."""
    if hasattr(os, "readv"):
        return os.readv(fd, [view])
    data = os.read(fd, len(view))
    view[: len(data)] = data
    return len(data)


def writev(fd: int, views: list[memoryview]) -> int:
    """Write the start of ``views``; returns the bytes written (one system call)."""
    if hasattr(os, "writev"):
        return os.writev(fd, views)
    return os.write(fd, views[0])


def binary_stdio(fd: int) -> None:
    """Make a standard stream binary under the Windows C runtime (a no-op elsewhere)."""
    if msvcrt is not None:
        msvcrt.setmode(fd, O_BINARY or 0x8000)


def try_lock(fd: int) -> bool:
    """An exclusive lock on ``fd``, held until it is closed; False when someone else holds it.

    On Windows the first byte is locked (``msvcrt.locking`` locks from the file position): give it a
    lock file, never a disk, since nothing else may then read that byte.
    """
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    if msvcrt is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EDEADLK, getattr(errno, "EDEADLOCK", errno.EDEADLK)):
                return False
            raise
        return True
    return True  # neither: nothing to lock with (no platform CPython supports)


def forget(fd: int) -> None:
    """Drop the seek lock of a descriptor about to be closed (its number will be reused)."""
    with _fd_locks_guard:
        _fd_locks.pop(fd, None)


def close(fd: int) -> None:
    forget(fd)
    os.close(fd)
