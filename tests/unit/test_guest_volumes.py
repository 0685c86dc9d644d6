"""Filesystem and partition identities read from real disk images, checked against blkid and partx.

Also home of `guest_disk`, the small partitioned Linux disk the other test_guest_* modules stage.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from orchestrator.guest.volume_ids import identify_volumes
from orchestrator.quickstart import (
    LINUX_FILESYSTEM,
    GptPartition,
    MbrPartition,
    MiB,
    Tree,
    make_ext4,
    write_gpt,
    write_mbr,
)

SBIN = {"PATH": "/usr/sbin:/sbin:/usr/bin:/bin"}
ROOT_UUID = uuid.UUID("0b0b0b0b-1111-4222-8333-444444444444")
DISK_SIGNATURE = 0x1234ABCD

pytestmark = pytest.mark.skipif(
    shutil.which("debugfs", path=SBIN["PATH"]) is None, reason="e2fsprogs (debugfs) is not installed"
)


def guest_disk(
    path: Path,
    tree: Tree,
    *,
    size: int = 24 * MiB,
    fs_uuid: uuid.UUID = ROOT_UUID,
    label: str = "root",
    swap: int = 0,
) -> Path:
    """An MBR disk with an ext4 root holding ``tree`` in partition 1 and, if ``swap``, a swap partition 2."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    root_size = size - MiB - swap
    make_ext4(path, MiB, root_size, tree, fs_uuid=fs_uuid, label=label)
    partitions = [MbrPartition(MiB, root_size, 0x83, bootable=True)]
    if swap:
        partitions.append(MbrPartition(MiB + root_size, swap, 0x82))
        area = path.with_name(path.name + ".swap")
        with open(area, "wb") as handle:
            handle.truncate(swap)
        subprocess.run(
            ["mkswap", "-U", str(uuid.uuid5(fs_uuid, "swap")), "-L", "swap", str(area)],
            check=True,
            capture_output=True,
            env=SBIN,
        )
        with open(path, "r+b") as disk:
            disk.seek(MiB + root_size)
            disk.write(area.read_bytes())
        area.unlink()
    write_mbr(path, partitions, DISK_SIGNATURE)
    return path


def data_disk(path: Path, fs_uuid: uuid.UUID, label: str, size: int = 8 * MiB) -> Path:
    """A disk holding one ext4 filesystem on the whole device, as data disks often are."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    make_ext4(path, 0, size, {"/data/README": b"data\n"}, fs_uuid=fs_uuid, label=label)
    return path


def blkid(path: Path, offset: int) -> dict[str, str]:
    out = subprocess.run(
        ["blkid", "-p", "-o", "export", "-O", str(offset), str(path)],
        capture_output=True,
        text=True,
        env=SBIN,
        check=False,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def partx_uuids(path: Path) -> list[str]:
    out = subprocess.run(
        ["partx", "--show", "--noheadings", "-o", "UUID", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.strip() for line in out.splitlines()]


@pytest.mark.skipif(shutil.which("blkid", path=SBIN["PATH"]) is None, reason="blkid is not installed")
def test_ext4_and_swap_identities_match_blkid(tmp_path: Path) -> None:
    disk = guest_disk(tmp_path / "g.raw", {"/etc/hostname": b"g\n"}, size=32 * MiB, swap=4 * MiB)
    data = data_disk(tmp_path / "d.raw", uuid.UUID(int=0xD474), "pgdata")
    volumes = identify_volumes([disk, data])
    assert [(v.disk_index, v.partition, v.fstype) for v in volumes] == [
        (0, 1, "ext4"),
        (0, 2, "swap"),
        (1, None, "ext4"),
    ]
    for volume in volumes:
        seen = blkid(Path(volume.disk_path), volume.offset)
        assert (volume.uuid, volume.label) == (seen["UUID"], seen["LABEL"])
    assert volumes[0].uuid == str(ROOT_UUID) and volumes[2].label == "pgdata"
    if shutil.which("partx"):
        assert [v.partuuid for v in volumes[:2]] == partx_uuids(disk) == ["1234abcd-01", "1234abcd-02"]
    assert all(v.readable for v in volumes)


def test_gpt_partition_uuid_and_name(tmp_path: Path) -> None:
    path = tmp_path / "gpt.raw"
    with open(path, "wb") as handle:
        handle.truncate(24 * MiB)
    make_ext4(path, MiB, 20 * MiB, {"/etc/hostname": b"g\n"}, fs_uuid=ROOT_UUID, label="root")
    write_gpt(path, [GptPartition(MiB, 20 * MiB, LINUX_FILESYSTEM, "rootfs")], uuid.UUID(int=5))
    (volume,) = identify_volumes([path])
    assert volume.partlabel == "rootfs" and volume.uuid == str(ROOT_UUID)
    if shutil.which("partx"):
        assert [volume.partuuid] == partx_uuids(path)


def test_xfs_vfat_and_unknown_signatures(tmp_path: Path) -> None:
    """No mkfs.xfs or mkfs.vfat here: superblocks written at the offsets the formats document."""
    xfs = bytearray(4096)
    xfs[0:4] = b"XFSB"
    xfs[32:48] = uuid.UUID("12345678-9abc-4def-8123-456789abcdef").bytes
    xfs[108:120] = b"srv\x00".ljust(12, b"\x00")
    fat = bytearray(4096)
    fat[82:87] = b"FAT32"
    struct.pack_into("<I", fat, 0x43, 0xA1B2C3D4)
    fat[0x47 : 0x47 + 11] = b"EFI        "
    lvm = bytearray(4096)
    lvm[512:520] = b"LABELONE"
    disks = []
    for name, head in (("xfs", xfs), ("fat", fat), ("lvm", lvm)):
        disk = tmp_path / f"{name}.raw"
        with open(disk, "wb") as handle:
            handle.write(head)
            handle.truncate(MiB)
        disks.append(disk)
    xfs_volume, fat_volume, lvm_volume = identify_volumes(disks)
    assert (xfs_volume.fstype, xfs_volume.uuid, xfs_volume.label) == (
        "xfs",
        "12345678-9abc-4def-8123-456789abcdef",
        "srv",
    )
    assert (fat_volume.fstype, fat_volume.uuid, fat_volume.label) == ("vfat", "A1B2-C3D4", "EFI")
    assert (lvm_volume.fstype, lvm_volume.uuid, lvm_volume.readable) == ("LVM2_member", None, False)
