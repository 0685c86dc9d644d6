"""Partition tables and filesystem signatures, read from the bytes of a disk.

Works over a ``read(offset, length)`` callable so that the same code inspects a source image (read only),
a replica file on the sim host and, later, a disk seen through an agent. Nothing here writes. Sectors are
512 bytes: every disk image this project produces or meets on the three hypervisors uses 512-byte logical
sectors (4Kn disks exist but none of the targets presents them to guests by default).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

SECTOR = 512
Reader = Callable[[int, int], bytes]

EFI_SYSTEM_PARTITION = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
_MBR_EXTENDED = {0x05, 0x0F, 0x85}
_MBR_GPT_PROTECTIVE = 0xEE
_MBR_EFI = 0xEF
_MAX_LOGICAL = 128  # an EBR chain longer than this is a loop in a corrupt table

# ext2/3/4 superblock feature bits that tell the three apart (as blkid does).
_EXT_COMPAT_HAS_JOURNAL = 0x4
_EXT_INCOMPAT_EXT4_ONLY = (
    0x40 | 0x80 | 0x200 | 0x400 | 0x1000 | 0x8000 | 0x10000
)  # extents, 64bit, flex_bg...
_EXT_RO_COMPAT_EXT4_ONLY = 0x8 | 0x10 | 0x20 | 0x400  # huge_file, gdt_csum, dir_nlink, metadata_csum


@dataclass(frozen=True)
class Partition:
    number: int  # 1-based, as the guest's kernel would number it (sda1, vda5 for the first logical)
    offset: int  # bytes from the start of the disk
    size: int
    type: str  # "0x83" for MBR, a GUID for GPT
    bootable: bool = False
    # What fstab's PARTUUID= and PARTLABEL= name: the GPT entry's unique GUID and name, or for MBR the
    # disk signature and partition number ("1234abcd-01") as the Linux kernel composes it; no label.
    partuuid: str | None = None
    partlabel: str | None = None

    @property
    def is_efi_system(self) -> bool:
        return self.type in (str(EFI_SYSTEM_PARTITION), f"0x{_MBR_EFI:02x}")


@dataclass(frozen=True)
class DiskLayout:
    table: Literal["mbr", "gpt", "none"]
    partitions: tuple[Partition, ...]
    boot_signature: bool  # 0x55AA at byte 510: BIOS firmware will try to boot this disk

    @property
    def has_efi_system_partition(self) -> bool:
        return any(p.is_efi_system for p in self.partitions)


def read_layout(read: Reader, size: int) -> DiskLayout:
    """The partition table of a disk (GPT wins over its protective MBR, as every firmware does)."""
    sector0 = _pad(read(0, SECTOR), SECTOR)
    boot_signature = sector0[510:512] == b"\x55\xaa"
    if size >= 2 * SECTOR and _pad(read(SECTOR, 8), 8) == b"EFI PART":
        return DiskLayout("gpt", _gpt_partitions(read, size), boot_signature)
    if boot_signature:
        partitions = _mbr_partitions(read, sector0, size)
        if partitions or _looks_like_empty_mbr(sector0):
            return DiskLayout("mbr", partitions, boot_signature)
    return DiskLayout("none", (), boot_signature)


def probe_filesystem(read: Reader, offset: int) -> str | None:
    """The filesystem type starting at ``offset``, by its on-disk signature; None when unrecognised."""
    superblock = _pad(read(offset + 1024, 1024), 1024)
    if superblock[56:58] == b"\x53\xef":  # s_magic 0xEF53, little endian
        compat, incompat, ro_compat = struct.unpack_from("<III", superblock, 0x5C)
        if incompat & _EXT_INCOMPAT_EXT4_ONLY or ro_compat & _EXT_RO_COMPAT_EXT4_ONLY:
            return "ext4"
        return "ext3" if compat & _EXT_COMPAT_HAS_JOURNAL else "ext2"
    head = _pad(read(offset, 4096), 4096)
    if head[0:4] == b"XFSB":
        return "xfs"
    if head[3:11] == b"NTFS    ":
        return "ntfs"
    if head[82:87] == b"FAT32" or head[54:59] in (b"FAT12", b"FAT16"):
        return "vfat"
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap"
    if _pad(read(offset + 0x10040, 8), 8) == b"_BHRfS_M":
        return "btrfs"
    if head[0:4] == b"LUKS":
        return "crypto_LUKS"
    if _pad(read(offset + 512, 8), 8) == b"LABELONE":
        return "LVM2_member"
    return None


def filesystems_of(read: Reader, layout: DiskLayout) -> tuple[tuple[int, str], ...]:
    """(offset, type) of every recognised filesystem: one per partition, or a bare one at offset 0."""
    offsets = [p.offset for p in layout.partitions] if layout.partitions else [0]
    found: list[tuple[int, str]] = []
    for offset in offsets:
        kind = probe_filesystem(read, offset)
        if kind:
            found.append((offset, kind))
    return tuple(found)


def _pad(data: bytes, length: int) -> bytes:
    """Reads past the end of a short disk return fewer bytes; treat the missing part as zeros."""
    return data if len(data) >= length else data + bytes(length - len(data))


def _looks_like_empty_mbr(sector0: bytes) -> bool:
    return sector0[446:510] == bytes(64)


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int]]:
    """(status, type, first LBA, sector count) of the four primary slots, empty slots left out."""
    entries = []
    for slot in range(4):
        status, ptype, first, count = struct.unpack_from("<B3xB3xII", sector, 446 + 16 * slot)
        if ptype and count:
            entries.append((status, ptype, first, count))
    return entries


def _mbr_partitions(read: Reader, sector0: bytes, size: int) -> tuple[Partition, ...]:
    partitions: list[Partition] = []
    signature = struct.unpack_from("<I", sector0, 440)[0]
    for number, (status, ptype, first, count) in enumerate(_mbr_entries(sector0), start=1):
        if status not in (0x00, 0x80) or first * SECTOR >= size:
            return ()  # not a partition table: a boot sector of a bare filesystem, or garbage
        if ptype in _MBR_EXTENDED:
            partitions.extend(_logical_partitions(read, first, size, signature))
        elif ptype != _MBR_GPT_PROTECTIVE:
            partitions.append(
                Partition(
                    number,
                    first * SECTOR,
                    count * SECTOR,
                    f"0x{ptype:02x}",
                    bootable=status == 0x80,
                    partuuid=f"{signature:08x}-{number:02x}",
                )
            )
    return tuple(partitions)


def _logical_partitions(read: Reader, extended_lba: int, size: int, signature: int) -> list[Partition]:
    """Walk the EBR chain; logical partitions are numbered from 5 as Linux does."""
    found: list[Partition] = []
    ebr_lba = extended_lba
    for number in range(5, 5 + _MAX_LOGICAL):
        ebr = _pad(read(ebr_lba * SECTOR, SECTOR), SECTOR)
        if ebr[510:512] != b"\x55\xaa":
            break
        entries = _mbr_entries(ebr)
        if not entries:
            break
        status, ptype, first, count = entries[0]
        offset = (ebr_lba + first) * SECTOR
        if offset < size:
            found.append(
                Partition(
                    number,
                    offset,
                    count * SECTOR,
                    f"0x{ptype:02x}",
                    bootable=status == 0x80,
                    partuuid=f"{signature:08x}-{number:02x}",
                )
            )
        if len(entries) < 2 or entries[1][1] not in _MBR_EXTENDED:
            break
        ebr_lba = extended_lba + entries[1][2]
    return found


def _gpt_partitions(read: Reader, size: int) -> tuple[Partition, ...]:
    header = _pad(read(SECTOR, SECTOR), SECTOR)
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if entry_size < 128 or count > 1024:
        return ()
    table = _pad(read(entries_lba * SECTOR, count * entry_size), count * entry_size)
    partitions: list[Partition] = []
    for index in range(count):
        entry = table[index * entry_size : (index + 1) * entry_size]
        type_guid = uuid.UUID(bytes_le=entry[0:16])
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        if first * SECTOR >= size or last < first:
            continue
        name = entry[56:128].decode("utf-16-le", errors="replace").split("\x00", 1)[0]
        partitions.append(
            Partition(
                index + 1,
                first * SECTOR,
                (last - first + 1) * SECTOR,
                str(type_guid),
                partuuid=str(uuid.UUID(bytes_le=entry[16:32])),
                partlabel=name or None,
            )
        )
    return tuple(partitions)
