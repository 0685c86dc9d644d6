"""Initramfs reading (newc cpio, compressed as update-initramfs and dracut do) and the driver check."""

from __future__ import annotations

import bz2
import glob
import gzip
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import zstandard

from orchestrator.guest.cpio import UnreadableInitramfs, newc_archive, read_initramfs
from orchestrator.guest.extfs import check_clean
from orchestrator.guest.fstab import TargetDisk
from orchestrator.guest.initramfs import driver_needs
from orchestrator.guest.linux import StagingTarget, apply_edits, find_linux_root, plan_system_state, read_file
from orchestrator.quickstart import MiB, Symlink, make_ext4
from tests.unit.test_guest_volumes import guest_disk, pytestmark  # noqa: F401

VERSION = "6.1.0-99-amd64"
OLD = "5.10.0-30-amd64"
DIR = 0o040755
MICROCODE = {
    "kernel": (DIR, b""),
    "kernel/x86": (DIR, b""),
    "kernel/x86/microcode": (DIR, b""),
    "kernel/x86/microcode/GenuineIntel.bin": b"\x01" * 3000,
}


def main_archive(version: str, modules: list[str], builtin: list[str] = ()) -> bytes:  # type: ignore[assignment]
    files: dict[str, bytes | tuple[int, bytes]] = {
        ".": (DIR, b""),
        "init": (0o100755, b"#!/bin/sh\necho init\n"),
        "bin": (0o120777, b"usr/bin"),
        f"usr/lib/modules/{version}/modules.builtin": "".join(f"{m}\n" for m in builtin).encode(),
    }
    for module in modules:
        files[f"usr/lib/modules/{version}/{module}"] = os.urandom(700)  # incompressible, like a .ko
    return newc_archive(files)


def compress(data: bytes, kind: str) -> bytes:
    """As update-initramfs and dracut call the tools; the library where a tool is missing."""
    commands = {
        "gzip": ["gzip", "-n", "-9"],
        "zstd": ["zstd", "-q", "-1", "-T0"],
        "xz": ["xz", "--check=crc32"],
    }
    commands["lz4"] = ["lz4", "-l", "-9"]
    if kind in commands and shutil.which(commands[kind][0]):
        return subprocess.run(commands[kind], input=data, capture_output=True, check=True).stdout
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    if kind == "bzip2":
        return bz2.compress(data)
    pytest.skip(f"{kind} is not installed")


def initrd(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "initrd.img"
    path.write_bytes(data)
    return path


DRIVERS = ["kernel/drivers/block/virtio_blk.ko", "kernel/drivers/virtio/virtio_pci.ko.xz"]


@pytest.mark.parametrize("kind", ["gzip", "zstd", "xz", "bzip2", "lz4"])
def test_compressed_initramfs_with_early_microcode(tmp_path: Path, kind: str) -> None:
    early = newc_archive(MICROCODE)
    path = initrd(tmp_path, early + compress(main_archive(VERSION, DRIVERS), kind))
    contents = read_initramfs(path, lambda name, size: name == "init")
    assert contents.segments == ["cpio", kind]
    assert "kernel/x86/microcode/GenuineIntel.bin" in contents.entries
    assert f"usr/lib/modules/{VERSION}/kernel/drivers/block/virtio_blk.ko" in contents.entries
    assert contents.entries["init"].mode == 0o100755 and contents.captured == {
        "init": b"#!/bin/sh\necho init\n"
    }
    assert contents.entries["bin"].size == len(b"usr/bin")


def test_members_and_archives_one_after_another(tmp_path: Path) -> None:
    """Two gzip members continue one stream; a second compressed archive after zero padding is read too."""
    first = compress(main_archive(VERSION, DRIVERS[:1]), "gzip")
    second = compress(newc_archive({"etc/extra.conf": b"x=1\n"}), "zstd")
    contents = read_initramfs(initrd(tmp_path, first + bytes(1024) + second))
    assert contents.segments == ["gzip", "zstd"]
    assert "etc/extra.conf" in contents.entries and "init" in contents.entries


def test_damaged_or_unknown_data_is_refused_with_a_reason(tmp_path: Path) -> None:
    whole = compress(main_archive(VERSION, DRIVERS), "gzip")
    with pytest.raises(UnreadableInitramfs, match=r"cut short|damaged"):
        read_initramfs(initrd(tmp_path, whole[: len(whole) // 2]))
    with pytest.raises(UnreadableInitramfs, match="unrecognised data"):
        read_initramfs(initrd(tmp_path, b"\x89PNG\r\n" + bytes(100)))
    with pytest.raises(UnreadableInitramfs, match="lzo"):
        read_initramfs(initrd(tmp_path, b"\x89LZO\x00" + bytes(100)))


def test_uncompressed_only_initramfs(tmp_path: Path) -> None:
    contents = read_initramfs(initrd(tmp_path, main_archive(VERSION, DRIVERS)))
    assert contents.segments == ["cpio"] and "init" in contents.entries


# ---------------------------------------------------------------- the driver check on a guest


def guest(
    tmp_path: Path, modules: list[str], *, builtin: list[str] = (), tool: str = "initramfs-tools"
) -> Path:  # type: ignore[assignment]
    dep = "".join(
        f"{m}:\n"
        for m in [
            "kernel/drivers/block/virtio_blk.ko",
            "kernel/drivers/scsi/virtio_scsi.ko",
            "kernel/drivers/net/virtio_net.ko",
            "kernel/drivers/ata/ahci.ko",
        ]
    )
    tree: dict[str, bytes | Symlink] = {
        "/etc/hostname": b"web01\n",
        "/etc/fstab": b"",
        "/boot/vmlinuz-" + VERSION: b"kernel",
        "/boot/initrd.img-" + VERSION: newc_archive(MICROCODE)
        + compress(main_archive(VERSION, modules, builtin), "gzip"),
        "/boot/vmlinuz-" + OLD: b"kernel",
        "/boot/initrd.img-" + OLD: compress(main_archive(OLD, DRIVERS), "gzip"),
        "/vmlinuz": Symlink(f"boot/vmlinuz-{VERSION}"),
        f"/usr/lib/modules/{VERSION}/modules.dep": dep.encode(),
        f"/usr/lib/modules/{VERSION}/modules.builtin": "".join(f"{b}\n" for b in builtin).encode(),
        "/lib": Symlink("usr/lib"),
    }
    if tool == "initramfs-tools":
        tree["/etc/initramfs-tools/modules"] = (
            b"# List of modules that you want to include in your initramfs.\n"
        )
        tree["/usr/sbin/update-initramfs"] = b"#!/bin/sh\n"
    else:
        tree["/etc/dracut.conf"] = b"# dracut\n"
    return guest_disk(tmp_path / "guest.raw", tree, size=24 * MiB)


KVM = StagingTarget("kvm", (TargetDisk(0, "virtio"),), 0, ("virtio",))


def test_missing_virtio_blk_is_critical_and_the_modules_file_gets_it(tmp_path: Path) -> None:
    disk = guest(tmp_path, ["kernel/drivers/scsi/vmw_pvscsi.ko", "kernel/drivers/virtio/virtio_pci.ko"])
    plan = plan_system_state([disk], KVM, "web01")
    (missing,) = [f for f in plan.findings if f.rule_id == "guest.initramfs.missing_driver"]
    assert missing.severity == "critical" and "virtio_blk" in missing.message and VERSION in missing.message
    assert (
        missing.fix
        and "update-initramfs -u -k " + VERSION in missing.fix
        and "controller: sata" in missing.fix
    )
    assert any("/vmlinuz points to it" in line for line in plan.log)
    apply_edits(disk, plan.edits)
    root = find_linux_root(disk)
    assert root is not None
    modules = (read_file(root, "/etc/initramfs-tools/modules") or b"").decode().splitlines()
    assert modules[0].startswith("# List of modules") and modules[-1] == "virtio_blk"
    assert check_clean(root.fs)[0]


def test_drivers_in_the_initramfs_or_built_in_pass(tmp_path: Path) -> None:
    disk = guest(tmp_path, DRIVERS)
    plan = plan_system_state([disk], KVM, "web01")
    assert not [f for f in plan.findings if f.rule_id.startswith("guest.initramfs")]
    assert "/etc/initramfs-tools/modules" not in {e.path for e in plan.edits}
    builtin = guest(
        tmp_path, [], builtin=["kernel/drivers/block/virtio_blk.ko", "kernel/drivers/virtio/virtio_pci.ko"]
    )
    assert not [f for f in plan_system_state([builtin], KVM, "web01").findings if f.severity == "critical"]


def test_sata_needs_ahci_and_a_missing_nic_driver_is_reported(tmp_path: Path) -> None:
    disk = guest(tmp_path, [*DRIVERS, "kernel/drivers/scsi/sd_mod.ko"], tool="dracut")
    target = StagingTarget("kvm", (TargetDisk(0, "sata"),), 0, ("e1000",))
    plan = plan_system_state([disk], target, "web01")
    rules = sorted(f.rule_id for f in plan.findings)
    assert rules == ["guest.initramfs.missing_driver", "guest.initramfs.missing_nic_driver"]
    assert any("e1000" in f.message for f in plan.findings)
    dropin = next(e for e in plan.edits if e.path == "/etc/dracut.conf.d/90-hvmigrate.conf")
    assert b'add_drivers+=" ahci "' in dropin.content


def test_no_kernel_or_an_unreadable_initramfs_is_not_checked_not_passed(tmp_path: Path) -> None:
    plain = guest_disk(tmp_path / "plain.raw", {"/etc/hostname": b"x\n"})
    assert [f.rule_id for f in plan_system_state([plain], KVM, "x").findings] == [
        "guest.initramfs.not_checked"
    ]
    broken = guest_disk(
        tmp_path / "broken.raw",
        {
            "/etc/hostname": b"x\n",
            f"/boot/vmlinuz-{VERSION}": b"k",
            f"/boot/initrd.img-{VERSION}": b"\x89LZO\x00!",
        },
    )
    findings = plan_system_state([broken], KVM, "x").findings
    assert {f.rule_id for f in findings} == {"guest.initramfs.not_checked"}  # nothing claimed missing
    assert any("lzo" in f.message for f in findings) and any("modules.dep" in f.message for f in findings)
    assert plan_system_state([plain], StagingTarget("sim"), "x").findings == []  # the sim needs no drivers


def test_driver_needs_per_platform() -> None:
    assert [n.any_of for n in driver_needs("kvm", "virtio", [None])] == [
        ("virtio_blk",),
        ("virtio_pci",),
        ("virtio_net",),
    ]
    assert [n.any_of for n in driver_needs("hyperv", "scsi", [None])][-1] == ("hv_netvsc",)
    assert ("vmw_pvscsi", "mptspi", "mptsas") in [n.any_of for n in driver_needs("esx", "scsi", [])]


def real_initrds() -> list[tuple[Path, str]]:
    """Initramfs images of real Debian kernels on this machine: its own /boot, the test bed's guest."""
    found = [(Path(p), "host") for p in sorted(glob.glob("/boot/initrd.img-*"))]
    try:
        from tests.testbed.guest_image import cached_image

        image = cached_image()
    except Exception:  # the test bed module needs nothing to import; a broken cache is not this test's
        image = None
    if image is not None:
        found.append((image.disk, "testbed"))
    return found


@pytest.mark.skipif(not real_initrds(), reason="no real initramfs here (/boot/initrd.img-*, test bed image)")
def test_real_debian_initramfs(tmp_path: Path) -> None:
    for path, where in real_initrds():
        if where == "host":
            contents = read_initramfs(path)
            assert "init" in contents.entries and len(contents.entries) > 50
            continue
        # The test bed's cached guest: read only, planned, never written.
        before = os.stat(path).st_mtime_ns
        plan = plan_system_state([path], KVM, "testbed")
        assert not [f for f in plan.findings if f.rule_id.startswith("guest.initramfs")], plan.findings
        assert any("virtio_blk" in line and "gzip" in line for line in plan.log), plan.log
        assert os.stat(path).st_mtime_ns == before
        root = find_linux_root(path)
        assert root is not None
        name = next(n for n in root.fs.listdir("/boot") if n.startswith("initrd.img-"))
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "initrd"
            root.fs.dump(f"/boot/{name}", local)
            contents = read_initramfs(local)
        version = name[len("initrd.img-") :]
        assert f"usr/lib/modules/{version}/kernel/drivers/block/virtio_blk.ko" in contents.entries
        assert "init" in contents.entries


def test_a_separate_boot_filesystem_is_found_through_fstab(tmp_path: Path) -> None:
    boot_uuid = "b0b0b0b0-0000-4000-8000-00000000b007"
    boot = tmp_path / "boot.raw"
    with open(boot, "wb") as handle:
        handle.truncate(8 * MiB)
    make_ext4(
        boot,
        0,
        8 * MiB,
        {
            f"/vmlinuz-{VERSION}": b"kernel",
            f"/initrd.img-{VERSION}": compress(main_archive(VERSION, ["kernel/drivers/ata/ahci.ko"]), "zstd"),
        },
        fs_uuid=uuid.UUID(boot_uuid),
        label="boot",
    )
    root = guest_disk(
        tmp_path / "root.raw",
        {"/etc/hostname": b"x\n", "/etc/fstab": f"UUID={boot_uuid} /boot ext4 defaults 0 2\n".encode()},
    )
    target = StagingTarget("kvm", (TargetDisk(0, "virtio"), TargetDisk(1, "virtio")), 0, ())
    plan = plan_system_state([root, boot], target, "x")
    (missing,) = [f for f in plan.findings if f.rule_id == "guest.initramfs.missing_driver"]
    assert f"/initrd.img-{VERSION}" in missing.message and "virtio_blk" in missing.message
    assert any("[zstd]" in line for line in plan.log)
