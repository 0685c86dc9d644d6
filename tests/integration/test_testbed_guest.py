"""The test bed's source server: a Debian image built from packages that boots by itself under libvirt.

The image comes from the cache (tests/testbed/guest_image.py builds it once, minutes); the VM boots from a
qcow2 overlay under TCG (tests/testbed/source_vm.py) and must let root in over SSH with the host key
pinned at build time. What is checked is what the KVM end-to-end test relies on: its name, its address on
the NIC named by MAC, python3 with what the agent imports, a root mounted by UUID, a console log to read,
and a cached image that booting does not change.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest

from tests.images import allocated
from tests.testbed import guest_image
from tests.testbed import source_vm as source_vm_bed
from tests.testbed.guest_image import GuestImage
from tests.testbed.source_vm import SourceVm

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.libvirt]

source_vm = source_vm_bed.source_vm  # the fixture, by the name the tests ask for

GiB = 1024**3
AGENT_MODULES = "json, dataclasses, ctypes, mmap, queue, shutil, hashlib, zlib, concurrent.futures, threading"


@pytest.fixture(scope="module")
def image() -> GuestImage:
    if guest_image.cached_image() is None and (missing := guest_image.missing_tools()):
        pytest.skip("guest image cannot be built here: " + "; ".join(missing))
    return guest_image.ensure_image()


@pytest.fixture(scope="module")
def image_mtime(image: GuestImage) -> int:
    """Taken before the VM boots (the fixture order below makes sure of it)."""
    return image.disk.stat().st_mtime_ns


# ---------------------------------------------------------------- the image


def test_image_is_cached_under_its_recipe_hash(image: GuestImage) -> None:
    assert image.directory.name == guest_image.entry_name(guest_image.recipe_hash())
    again = guest_image.ensure_image()
    assert again.directory == image.directory
    assert again.manifest["built_at"] == image.manifest["built_at"]  # found, not rebuilt
    assert not list(image.directory.parent.glob(".build-*"))


def test_a_changed_recipe_names_another_cache_entry() -> None:
    changed = guest_image.recipe()
    changed["files"] = {**changed["files"], "/etc/hostname": "other\n"}
    assert guest_image.recipe_hash(changed) != guest_image.recipe_hash()
    assert guest_image.recipe_hash(guest_image.recipe()) == guest_image.recipe_hash()


def test_image_is_a_sparse_mbr_disk_with_syslinux_and_ext4_root(image: GuestImage) -> None:
    size = image.disk.stat().st_size
    assert GiB <= size <= 2 * GiB
    assert allocated(image.disk) < size // 2
    assert image.disk.stat().st_mode & 0o222 == 0  # read-only: only ever a backing file
    with image.disk.open("rb") as handle:
        sector = handle.read(512)
        handle.seek(guest_image.PART_START + 1024)
        superblock = handle.read(1024)
    assert sector[:440] == guest_image.SYSLINUX_MBR.read_bytes()[:440]
    assert sector[510:512] == b"\x55\xaa"
    boot_flag, part_type, start_lba, sectors = struct.unpack_from("<B3xB3xII", sector, 446)
    assert (boot_flag, part_type) == (0x80, 0x83)
    assert start_lba * 512 == guest_image.PART_START
    assert (start_lba + sectors) * 512 == size
    assert struct.unpack_from("<H", superblock, 56)[0] == 0xEF53  # ext2/3/4 magic
    assert str(uuid.UUID(bytes=superblock[104:120])) == image.root_uuid


def test_recorded_fingerprint_is_the_host_key(image: GuestImage) -> None:
    public = image.directory / "ssh_host_ed25519_key.pub"
    listed = subprocess.run(["ssh-keygen", "-lf", str(public)], capture_output=True, text=True, check=True)
    assert listed.stdout.split()[1] == image.fingerprint
    assert (
        json.loads((image.directory / "manifest.json").read_text())["recipe_hash"]
        == guest_image.recipe_hash()
    )


# ---------------------------------------------------------------- the running source VM


def test_source_vm_answers_ssh_as_src01(
    image: GuestImage,
    image_mtime: int,
    source_vm: SourceVm,
    record_testsuite_property: Callable[[str, object], None],
) -> None:
    figures = {
        "debootstrap_seconds": image.manifest["debootstrap_seconds"],
        "image_build_seconds": image.manifest["build_seconds"],
        "boot_to_ssh_seconds": source_vm.boot_seconds,
    }
    for name, value in figures.items():  # measured, reported (pytest -rA, junit xml), never asserted
        record_testsuite_property(name, value)
    print(" ".join(f"{name}={value}" for name, value in figures.items()))
    status, out, _ = source_vm.run("hostname")
    assert (status, out.strip()) == (0, "src01")
    status, out, _ = source_vm.run("python3 -c 'print(1)'")
    assert (status, out.strip()) == (0, "1")


def test_guest_python_has_what_the_agent_imports(source_vm: SourceVm) -> None:
    status, out, err = source_vm.run(f"python3 -c 'import {AGENT_MODULES}; print(\"ok\")'")
    assert (status, out.strip()) == (0, "ok"), err


def test_nic_is_named_by_its_mac_and_holds_the_static_address(source_vm: SourceVm) -> None:
    status, out, _ = source_vm.run(f"cat /sys/class/net/{guest_image.INTERFACE}/address")
    assert (status, out.strip()) == (0, source_vm.mac)
    _, out, _ = source_vm.run(f"ip -4 -o addr show dev {guest_image.INTERFACE}")
    assert f"inet {source_vm.host}/{guest_image.PREFIX} " in out


def test_root_is_mounted_from_the_uuid_in_fstab(image: GuestImage, source_vm: SourceVm) -> None:
    _, out, _ = source_vm.run("findmnt -n -o UUID,FSTYPE /")
    assert out.split() == [image.root_uuid, "ext4"]
    _, fstab, _ = source_vm.run("cat /etc/fstab")
    assert f"UUID={image.root_uuid}\t/\text4" in fstab


def test_console_log_shows_the_kernel_booting(image: GuestImage, source_vm: SourceVm) -> None:
    console = source_vm.console()
    assert "Linux version 6." in console
    command_line = next(line for line in console.splitlines() if "Kernel command line:" in line)
    assert f"root=UUID={image.root_uuid}" in command_line
    assert "console=ttyS0" in command_line


def test_another_host_key_for_the_address_is_refused(source_vm: SourceVm, tmp_path: Path) -> None:
    impostor = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    known_hosts = tmp_path / "known_hosts"
    public = impostor.with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"{source_vm.host} {public[0]} {public[1]}\n")
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException):
        client.connect(source_vm.host, username="root", key_filename=str(source_vm.key), timeout=15.0,
                       allow_agent=False, look_for_keys=False)  # fmt: skip
    client.close()


def test_vm_writes_go_to_the_overlay_not_the_cached_image(
    image: GuestImage, image_mtime: int, source_vm: SourceVm
) -> None:
    status, _, _ = source_vm.run("echo written-by-the-guest > /root/marker && sync")
    assert status == 0
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(source_vm.overlay)],
        capture_output=True,
        text=True,
        check=True,
    )
    overlay = json.loads(info.stdout)
    assert overlay["format"] == "qcow2"
    assert overlay["backing-filename"] == str(image.disk)
    assert image.disk.stat().st_mtime_ns == image_mtime


# ---------------------------------------------------------------- leftovers of a killed build


def test_stale_build_directories_are_removed_with_their_mounts(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    stale = tmp_path / ".build-0123456789abcdef-killed"
    proc = stale / "root" / "proc"
    proc.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(proc)], check=True)
    (proc / "would-be-deleted").write_text("a killed debootstrap left this mounted")
    (tmp_path / "bookworm-0123456789abcdef").mkdir()  # a complete entry: kept

    removed = guest_image.remove_stale_builds(tmp_path)

    assert removed == [stale]
    assert not stale.exists()
    assert str(proc) not in Path("/proc/self/mounts").read_text()
    assert (tmp_path / "bookworm-0123456789abcdef").is_dir()
