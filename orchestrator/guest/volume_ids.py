"""Which filesystems the replica's disks hold, by the names fstab and boot loaders use for them.

An fstab line ``UUID=...`` that names no filesystem of the replica drops the migrated server into an
emergency shell at boot. The identifiers are read from each filesystem's own superblock, as blkid does,
at the offsets the on-disk formats document: ext2/3/4, XFS, FAT, swap and btrfs. Anything else (LVM, LUKS,
an unrecognised signature) is listed as present but unreadable, so a check can say "not checked" instead
of "missing". Every disk is opened read only.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .disk_layout import Reader, probe_filesystem, read_layout

__all__ = ["Volume", "identify_volumes", "volume_ids"]

READABLE = frozenset({"ext2", "ext3", "ext4", "xfs", "vfat", "swap", "btrfs"})


@dataclass(frozen=True)
class Volume:
    """One filesystem (or unreadable container) on one of the replica's disks."""

    disk_index: int  # position among the server's disks, in the playbook's order
    disk_path: str
    partition: int | None  # 1-based; None for a filesystem on the whole disk
    offset: int
    fstype: str | None  # None: no signature this module knows
    uuid: str | None = None
    label: str | None = None
    partuuid: str | None = None
    partlabel: str | None = None

    @property
    def readable(self) -> bool:
        """Its UUID and label could be read (so "not found" about it is a fact, not a guess)."""
        return self.fstype in READABLE

    def where(self) -> str:
        part = f"partition {self.partition}" if self.partition else "whole disk"
        return f"disk {self.disk_index} ({Path(self.disk_path).name}) {part}"


def volume_ids(read: Reader, offset: int, fstype: str | None) -> tuple[str | None, str | None]:
    """(UUID, label) of the filesystem at ``offset`` in the spelling blkid and /dev/disk/by-uuid use."""
    if fstype in ("ext2", "ext3", "ext4"):
        sb = _pad(read(offset + 1024, 1024), 1024)
        return _uuid(sb[0x68:0x78]), _text(sb[0x78:0x88])
    if fstype == "xfs":
        sb = _pad(read(offset, 512), 512)
        return _uuid(sb[32:48]), _text(sb[108:120])
    if fstype == "swap":
        header = _pad(read(offset + 1024, 64), 64)
        return _uuid(header[12:28]), _text(header[28:44])
    if fstype == "btrfs":
        sb = _pad(read(offset + 0x10000, 0x22B), 0x22B)
        return _uuid(sb[0x20:0x30]), _text(sb[0x12B:0x22B])
    if fstype == "vfat":
        boot = _pad(read(offset, 512), 512)
        fat32 = boot[82:87] == b"FAT32"
        serial_at, label_at = (0x43, 0x47) if fat32 else (0x27, 0x2B)
        serial = struct.unpack_from("<I", boot, serial_at)[0]
        label = _text(boot[label_at : label_at + 11])
        return f"{serial >> 16:04X}-{serial & 0xFFFF:04X}", None if label == "NO NAME" else label
    return None, None


def identify_volumes(disks: Sequence[Path | str]) -> list[Volume]:
    """Every partition (or bare filesystem) of every disk, with what can be read of its identity."""
    volumes: list[Volume] = []
    for index, disk in enumerate(disks):
        fd = os.open(disk, os.O_RDONLY)
        try:

            def read(offset: int, length: int, fd: int = fd) -> bytes:
                return os.pread(fd, length, offset)

            layout = read_layout(read, os.fstat(fd).st_size)
            if not layout.partitions:
                fstype = probe_filesystem(read, 0)
                fs_uuid, label = volume_ids(read, 0, fstype)
                volumes.append(Volume(index, str(disk), None, 0, fstype, fs_uuid, label))
                continue
            for part in layout.partitions:
                fstype = probe_filesystem(read, part.offset)
                fs_uuid, label = volume_ids(read, part.offset, fstype)
                volumes.append(
                    Volume(
                        index,
                        str(disk),
                        part.number,
                        part.offset,
                        fstype,
                        fs_uuid,
                        label,
                        part.partuuid,
                        part.partlabel,
                    )
                )
        finally:
            os.close(fd)
    return volumes


def _uuid(raw: bytes) -> str | None:
    return None if not any(raw) else str(uuid.UUID(bytes=bytes(raw)))


def _text(raw: bytes) -> str | None:
    text = raw.split(b"\x00", 1)[0].decode(errors="replace").strip()
    return text or None


def _pad(data: bytes, length: int) -> bytes:
    return data if len(data) >= length else data + bytes(length - len(data))
