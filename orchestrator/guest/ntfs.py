"""An NTFS volume of a replica disk, read and written with ntfs-3g's own tools, never mounted.

The replica is a raw file (or, in an appliance, a block device) with an MBR or GPT partition table; the
ntfs-3g tools take a device, not an offset, so the partition is handed to them as a loop device bound to
its byte range (``losetup --offset --sizelimit``), as the Linux staging reaches an ext4 root by offset.
Reading goes through ``ntfsls`` and ``ntfscat``, writing through ``ntfscp`` (which creates a missing file
in an existing directory). The tools have no mkdir and no rm, so those two calls bind libntfs-3g (the
library the tools are built on) with ctypes, as ntfs-3g's FUSE driver calls it: ``ntfs_create`` for a
directory, ``ntfs_delete`` for a file.

NTFS names are case-insensitive to Windows but the tools match them exactly, so every path is resolved
component by component against the directory listing first (``windows/system32`` finds ``Windows\\System32``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import posixpath
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .disk_layout import probe_filesystem, read_layout

__all__ = ["NtfsError", "NtfsPartition", "NtfsVolume", "attached", "ntfs_partitions"]


class NtfsError(RuntimeError):
    """An NTFS volume could not be read or written; the message says which and what to do."""


@dataclass(frozen=True)
class NtfsPartition:
    """Where an NTFS filesystem sits on a disk."""

    disk_path: Path
    offset: int
    size: int
    number: int | None  # 1-based partition number; None for a filesystem on the whole disk

    def describe(self) -> str:
        where = f"partition {self.number}" if self.number else "whole disk"
        return f"{self.disk_path} {where} (NTFS at offset {self.offset})"


def ntfs_partitions(disk_path: Path) -> list[NtfsPartition]:
    """Every NTFS filesystem on the disk, by its boot sector signature; the disk is opened read only."""
    fd = os.open(disk_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)

        def read(offset: int, length: int) -> bytes:
            return os.pread(fd, length, offset)

        layout = read_layout(read, size)
        spans = [(p.offset, p.size, p.number) for p in layout.partitions] or [(0, size, None)]
        return [
            NtfsPartition(disk_path, offset, length, number)
            for offset, length, number in spans
            if probe_filesystem(read, offset) == "ntfs"
        ]
    finally:
        os.close(fd)


_SEARCH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]
)  # ntfscp and losetup live in sbin


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess[bytes]:
    program = shutil.which(argv[0], path=_SEARCH)
    if program is None:
        package = "mount (util-linux)" if argv[0] == "losetup" else "ntfs-3g"
        raise NtfsError(f"{argv[0]} is not installed: apt-get install {package}")
    done = subprocess.run([program, *argv[1:]], capture_output=True, check=False)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise NtfsError(f"{what}: {detail[-1] if detail else f'{argv[0]} exited {done.returncode}'}")
    return done


@contextmanager
def attached(partition: NtfsPartition, *, writable: bool) -> Iterator[NtfsVolume]:
    """The partition as a loop device over its byte range, detached (and flushed) on the way out."""
    argv = ["losetup", "--find", "--show", "--offset", str(partition.offset)]
    argv += ["--sizelimit", str(partition.size)] + ([] if writable else ["--read-only"])
    device = (
        _run(
            [*argv, str(partition.disk_path)], f"{partition.describe()}: cannot attach a loop device (root?)"
        )
        .stdout.decode()
        .strip()
    )
    try:
        yield NtfsVolume(device, partition)
    finally:
        if writable:
            fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _run(["losetup", "--detach", device], f"{partition.describe()}: cannot detach {device}")


class NtfsVolume:
    """One attached NTFS volume; paths are "/"-separated from its root and matched case-insensitively."""

    def __init__(self, device: str, partition: NtfsPartition) -> None:
        self.device = device
        self.partition = partition

    def _what(self, path: str) -> str:
        return f"{self.partition.describe()}: {path}"

    def listdir(self, path: str) -> dict[str, bool]:
        """Entry name -> is a directory, for the directory at the exact (already resolved) ``path``."""
        done = _run(["ntfsls", "-F", "-p", path or "/", self.device], f"cannot list {self._what(path)}")
        entries: dict[str, bool] = {}
        for line in done.stdout.decode("utf-8", errors="surrogateescape").splitlines():
            if line and line not in ("./", "../"):
                entries[line.rstrip("/")] = line.endswith("/")
        return entries

    def resolve(self, path: str) -> tuple[str, bool] | None:
        """The path with the volume's own spelling and whether it is a directory; None when absent."""
        current, is_dir = "", True
        for part in filter(None, path.split("/")):
            if not is_dir:
                return None
            entries = self.listdir(current or "/")
            match = next((name for name in entries if name.lower() == part.lower()), None)
            if match is None:
                return None
            current, is_dir = f"{current}/{match}", entries[match]
        return current or "/", is_dir

    def read(self, path: str) -> bytes | None:
        found = self.resolve(path)
        if found is None or found[1]:
            return None
        return _run(["ntfscat", self.device, found[0]], f"cannot read {self._what(path)}").stdout

    def write(self, path: str, data: bytes) -> str:
        """Put ``data`` at ``path`` (replacing a file there); its directory must exist. Returns the path."""
        parent = self.resolve(posixpath.dirname(path))
        if parent is None or not parent[1]:
            raise NtfsError(f"{self._what(posixpath.dirname(path))} is not a directory on the volume")
        existing = self.resolve(path)
        if existing is not None and existing[1]:
            raise NtfsError(f"{self._what(path)} is a directory, not a file")
        target = existing[0] if existing else posixpath.join(parent[0], posixpath.basename(path))
        with tempfile.NamedTemporaryFile(prefix="hvmigrate-ntfs-") as source:
            source.write(data)
            source.flush()
            _run(["ntfscp", "-q", self.device, source.name, target], f"cannot write {self._what(target)}")
        return target

    def remove(self, path: str) -> bool:
        """Delete the file at ``path``; False when there was none."""
        found = self.resolve(path)
        if found is None:
            return False
        if found[1]:
            raise NtfsError(f"{self._what(path)} is a directory: staging removes files only")
        with _LibNtfs.mounted(self.device) as lib:
            lib.delete(found[0])
        return True

    def mkdir(self, path: str) -> str:
        """Create the directory ``path`` (its parent must exist); an existing one is left as it is."""
        found = self.resolve(path)
        if found is not None:
            if not found[1]:
                raise NtfsError(f"{self._what(path)} exists and is not a directory")
            return found[0]
        parent = self.resolve(posixpath.dirname(path))
        if parent is None or not parent[1]:
            raise NtfsError(f"{self._what(posixpath.dirname(path))} is not a directory on the volume")
        with _LibNtfs.mounted(self.device) as lib:
            lib.create_directory(parent[0], posixpath.basename(path))
        return posixpath.join(parent[0], posixpath.basename(path))


class _LibNtfs:
    """The two calls the ntfs-3g tools do not offer, on a volume opened by libntfs-3g itself."""

    def __init__(self, lib: ctypes.CDLL, volume: int, device: str) -> None:
        self.lib, self.volume, self.device = lib, volume, device

    @classmethod
    @contextmanager
    def mounted(cls, device: str) -> Iterator[_LibNtfs]:
        name = ctypes.util.find_library("ntfs-3g")
        if name is None:
            raise NtfsError("libntfs-3g is not installed: apt-get install ntfs-3g")
        lib = ctypes.CDLL(name, use_errno=True)
        pointer = ctypes.c_void_p
        lib.ntfs_mount.restype, lib.ntfs_mount.argtypes = pointer, [ctypes.c_char_p, ctypes.c_ulong]
        lib.ntfs_umount.restype, lib.ntfs_umount.argtypes = ctypes.c_int, [pointer, ctypes.c_int]
        lib.ntfs_pathname_to_inode.restype = pointer
        lib.ntfs_pathname_to_inode.argtypes = [pointer, pointer, ctypes.c_char_p]
        lib.ntfs_mbstoucs.restype = ctypes.c_int
        lib.ntfs_mbstoucs.argtypes = [ctypes.c_char_p, ctypes.POINTER(pointer)]
        lib.ntfs_create.restype = pointer
        lib.ntfs_create.argtypes = [pointer, ctypes.c_uint32, pointer, ctypes.c_uint8, ctypes.c_uint]
        lib.ntfs_delete.restype = ctypes.c_int
        lib.ntfs_delete.argtypes = [pointer, ctypes.c_char_p, pointer, pointer, pointer, ctypes.c_uint8]
        lib.ntfs_inode_close.restype, lib.ntfs_inode_close.argtypes = ctypes.c_int, [pointer]
        lib.ntfs_ucsfree.restype, lib.ntfs_ucsfree.argtypes = None, [pointer]
        volume = lib.ntfs_mount(device.encode(), 0)
        if not volume:
            raise NtfsError(
                f"{device}: libntfs-3g cannot open the volume ({os.strerror(ctypes.get_errno())})"
            )
        try:
            yield cls(lib, volume, device)
        finally:
            if lib.ntfs_umount(volume, 0) != 0:
                raise NtfsError(f"{device}: closing the volume failed ({os.strerror(ctypes.get_errno())})")

    def _error(self, what: str) -> NtfsError:
        return NtfsError(f"{self.device}: {what} ({os.strerror(ctypes.get_errno())})")

    def _inode(self, path: str) -> int:
        inode = self.lib.ntfs_pathname_to_inode(self.volume, None, path.encode())
        if not inode:
            raise self._error(f"cannot open {path}")
        return int(inode)

    def _name(self, name: str) -> tuple[ctypes.c_void_p, int]:
        wide = ctypes.c_void_p()
        length = self.lib.ntfs_mbstoucs(name.encode(), ctypes.byref(wide))
        if length < 0:
            raise self._error(f"cannot encode the name {name!r}")
        return wide, length

    def create_directory(self, parent: str, name: str) -> None:
        directory = self._inode(parent)
        wide, length = self._name(name)
        try:
            created = self.lib.ntfs_create(directory, 0, wide, length, stat.S_IFDIR)
            if not created:
                raise self._error(f"cannot create {parent.rstrip('/')}/{name}")
            self.lib.ntfs_inode_close(created)
        finally:
            self.lib.ntfs_ucsfree(wide)
            self.lib.ntfs_inode_close(directory)

    def delete(self, path: str) -> None:
        directory = self._inode(posixpath.dirname(path) or "/")
        try:
            inode = self._inode(path)
        except NtfsError:
            self.lib.ntfs_inode_close(directory)
            raise
        wide, length = self._name(posixpath.basename(path))
        try:  # ntfs_delete closes both inodes, whatever it returns
            if self.lib.ntfs_delete(self.volume, path.encode(), inode, directory, wide, length) != 0:
                raise self._error(f"cannot delete {path}")
        finally:
            self.lib.ntfs_ucsfree(wide)
