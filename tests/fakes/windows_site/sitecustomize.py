"""Windows CPython's ``os`` as the hvmigrate agent meets it, played by Linux CPython: a test stand-in.

Python imports this as ``sitecustomize`` when its folder is on PYTHONPATH (tests/fakes/windows_python.py
starts interpreters so: the WinRM stand-in's ``python.exe``, and the agents of
tests/unit/test_windows_python.py). It cannot make Linux behave as Windows; it takes away and restricts
what the agent could otherwise use here without anyone noticing:

- modules Windows does not have: fcntl, termios, resource, grp, pwd (importing one fails);
- ``os`` functions and constants Windows' ``os`` lacks (``_MISSING`` below: pread, pwrite, preadv,
  readv, writev, fdatasync, O_CLOEXEC, O_DIRECTORY, SEEK_DATA, SEEK_HOLE, statvfs, ...);
- ``os.O_BINARY`` and ``os.O_NOINHERIT`` exist (values of their own: only their presence matters), and
  ``os.open`` refuses a file opened without O_BINARY (the C runtime would open it in text mode and
  rewrite line ends in the data) and any directory (Windows' ``os.open`` opens none);
- a file opened by ``os.open`` can be neither renamed, replaced nor removed while it is open (the C
  runtime opens without FILE_SHARE_DELETE);
- a Windows device name (``\\\\.\\PhysicalDrive0``, ``\\\\?\\GLOBALROOT\\Device\\...``: here a file of that
  name in the working directory) takes ``os.read``/``os.write`` only in whole 512-byte sectors at a
  sector-aligned position, else EINVAL, as ReadFile and WriteFile on a raw disk; ``os.fstat`` of it
  fails (what Windows answers depends on its version: the agent must not depend on it);
- ``msvcrt`` with ``locking`` (byte ranges from the file position, held per open handle, EACCES when
  taken: Linux open-file-description locks) and ``setmode``.

What it does not show: ``sys.platform`` stays "linux", so code keyed on it takes its Linux branch (and
``subprocess``, which tells Windows by whether ``msvcrt`` imports, is imported before it does); file
sharing modes, handle inheritance, paths with drive letters, and the speed of Windows' I/O.
"""

from __future__ import annotations

import errno
import fcntl as _fcntl  # the msvcrt stand-in's locks; hidden from everyone else below
import os
import struct
import subprocess  # noqa: F401 - imported before msvcrt exists: it takes msvcrt for "this is Windows"
import sys
import time
import types

_MISSING = (
    "pread",
    "pwrite",
    "preadv",
    "pwritev",
    "readv",
    "writev",
    "fdatasync",
    "posix_fadvise",
    "posix_fallocate",
    "O_CLOEXEC",
    "O_DIRECTORY",
    "O_NOFOLLOW",
    "O_NONBLOCK",
    "O_DSYNC",
    "O_SYNC",
    "O_DIRECT",
    "O_NOATIME",
    "O_PATH",
    "O_TMPFILE",
    "SEEK_DATA",
    "SEEK_HOLE",
    "statvfs",
    "fstatvfs",
    "major",
    "minor",
    "makedev",
    "sync",
    "sendfile",
    "copy_file_range",
    "splice",
    "memfd_create",
)
_HIDDEN_MODULES = ("fcntl", "termios", "resource", "grp", "pwd")
O_BINARY = 1 << 28
O_NOINHERIT = 1 << 29
SECTOR = 512
_F_OFD_SETLK, _F_OFD_SETLKW = 37, 38
_FLOCK = struct.Struct("hh4xqqi4x")  # struct flock on 64-bit Linux: type, whence, start, len, pid

_real = {name: getattr(os, name) for name in ("open", "close", "read", "write", "lseek", "fstat")}
_real_rename = {name: getattr(os, name) for name in ("rename", "replace", "unlink", "remove")}
_open_paths: dict[int, str] = {}  # fd -> real path, for the rename rule
_devices: set[int] = set()


def _is_device_name(path: str) -> bool:
    return os.path.basename(path).startswith(("\\\\.\\", "\\\\?\\"))


def _open(path, flags, mode=0o777, *, dir_fd=None):
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if not flags & O_BINARY:
        raise OSError(errno.EINVAL, "opened without O_BINARY: the C runtime would translate line ends", name)
    if os.path.isdir(name if dir_fd is None else os.path.join(f"/proc/self/fd/{dir_fd}", name)):
        raise PermissionError(errno.EACCES, "Permission denied (Windows' os.open opens no directory)", name)
    fd = _real["open"](path, flags & ~(O_BINARY | O_NOINHERIT), mode, dir_fd=dir_fd)
    _open_paths[fd] = os.path.realpath(name)
    if _is_device_name(name):
        _devices.add(fd)
    return fd


def _close(fd: int) -> None:
    _open_paths.pop(fd, None)
    _devices.discard(fd)
    _real["close"](fd)


def _check_sectors(fd: int, count: int, doing: str) -> None:
    position = _real["lseek"](fd, 0, os.SEEK_CUR)
    if position % SECTOR or count % SECTOR:
        raise OSError(
            errno.EINVAL,
            f"{doing} {count} bytes at {position} of a raw disk: not whole {SECTOR}-byte sectors",
        )


def _read(fd: int, count: int) -> bytes:
    if fd in _devices:
        _check_sectors(fd, count, "read")
    return _real["read"](fd, count)


def _write(fd: int, data) -> int:
    if fd in _devices:
        _check_sectors(fd, memoryview(data).nbytes, "write")
    return _real["write"](fd, data)


def _fstat(fd: int) -> os.stat_result:
    if fd in _devices:
        raise OSError(
            errno.EINVAL, "fstat of a raw disk handle (its answer differs between Windows versions)"
        )
    return _real["fstat"](fd)


def _guard(name: str):
    real = _real_rename[name]

    def guarded(src, dst=None, *args, **kwargs):
        for path in (src, dst):
            if path is not None and os.path.realpath(path) in _open_paths.values():
                raise PermissionError(
                    errno.EACCES,
                    "The process cannot access the file because it is being used by another process",
                    os.fspath(path),
                )
        return real(src, *args, **kwargs) if dst is None else real(src, dst, *args, **kwargs)

    return guarded


def _locking(fd: int, mode: int, nbytes: int) -> None:
    """msvcrt.locking: ``nbytes`` from the current position; LK_NBLCK fails at once with EACCES."""
    start = _real["lseek"](fd, 0, os.SEEK_CUR)
    kind = _fcntl.F_UNLCK if mode == 0 else _fcntl.F_RDLCK if mode in (3, 4) else _fcntl.F_WRLCK
    request = _FLOCK.pack(kind, os.SEEK_SET, start, nbytes, 0)
    tries = 10 if mode in (1, 3) else 1  # LK_LOCK, LK_RLCK: ten tries a second apart, then EDEADLOCK
    for attempt in range(tries):
        try:
            _fcntl.fcntl(fd, _F_OFD_SETLK, request)
            return
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
        if attempt + 1 < tries:
            time.sleep(1)
    if tries > 1:
        raise OSError(errno.EDEADLK, "Resource deadlock avoided")
    raise PermissionError(errno.EACCES, "Permission denied")


def _setmode(fd: int, flags: int) -> int:
    return O_BINARY


def _install() -> None:
    for name in _MISSING:
        if hasattr(os, name):
            delattr(os, name)
    os.O_BINARY = O_BINARY
    os.O_NOINHERIT = O_NOINHERIT
    os.open, os.close, os.read, os.write, os.fstat = _open, _close, _read, _write, _fstat
    for name in _real_rename:
        setattr(os, name, _guard(name))
    for name in _HIDDEN_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]
    msvcrt = types.ModuleType("msvcrt", "Windows' msvcrt, as far as the agent uses it (a test stand-in)")
    msvcrt.LK_UNLCK, msvcrt.LK_LOCK, msvcrt.LK_NBLCK, msvcrt.LK_RLCK, msvcrt.LK_NBRLCK = 0, 1, 2, 3, 4
    msvcrt.locking = _locking
    msvcrt.setmode = _setmode
    sys.modules["msvcrt"] = msvcrt


_install()
