"""The agent's discovery on this very machine, checked against what lsblk, sysfs and os-release say."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.mirror.agent_session import discover, source_facts
from orchestrator.transport.local import LocalTransport

STDLIB_PYTHON = [sys.executable, "-I", "-S"]


@pytest.fixture(scope="module")
def found() -> dict[str, Any]:
    return discover(LocalTransport(STDLIB_PYTHON))


def _lsblk_disks() -> dict[str, int]:
    out = subprocess.run(
        ["lsblk", "-J", "-b", "-d", "-o", "NAME,SIZE,TYPE"], capture_output=True, check=True, text=True
    ).stdout
    return {
        f"/dev/{d['name']}": int(d["size"])
        for d in json.loads(out)["blockdevices"]
        if d["type"] == "disk" and int(d["size"] or 0) > 0 and not d["name"].startswith(("zram", "ram"))
    }


@pytest.mark.skipif(shutil.which("lsblk") is None, reason="lsblk (util-linux) is not installed")
def test_disks_are_those_lsblk_lists_with_their_sizes(found: dict[str, Any]) -> None:
    expected = _lsblk_disks()
    assert {disk["name"]: disk["size"] for disk in found["disks"]} == expected
    for disk in found["disks"]:
        assert disk["partition_table"] in ("mbr", "gpt", "none")
        assert disk["used"] is None or 0 <= disk["used"] <= disk["size"]


@pytest.mark.skipif(shutil.which("lsblk") is None, reason="lsblk (util-linux) is not installed")
def test_used_space_of_a_mounted_disk_is_what_statvfs_reports(found: dict[str, Any]) -> None:
    mounted = [d for d in found["disks"] if d["used_exact"] and d["mountpoints"] and not d["partitions"]]
    if not mounted:
        pytest.skip("no whole disk is mounted directly on this machine")
    disk = mounted[0]
    info = os.statvfs(disk["mountpoints"][0])
    # files come and go between the two readings (other tests write): the order of magnitude is the point
    assert abs(disk["used"] - (info.f_blocks - info.f_bfree) * info.f_frsize) < 256 * 1024**2


def test_identity_firmware_and_os_are_this_machine(found: dict[str, Any]) -> None:
    assert found["hostname"] == socket.gethostname()
    assert found["os"] == "linux"
    assert found["firmware"] == ("uefi" if Path("/sys/firmware/efi").is_dir() else "bios")
    release = Path("/etc/os-release").read_text()
    pretty = next(
        line.split("=", 1)[1].strip('"') for line in release.splitlines() if line.startswith("PRETTY_NAME=")
    )
    assert found["os_detail"] == pretty
    assert found["kernel"] == os.uname().release


def test_nics_carry_the_macs_sysfs_shows_and_their_addresses(found: dict[str, Any]) -> None:
    sysfs = {
        entry.name: (entry / "address").read_text().strip().lower()
        for entry in Path("/sys/class/net").iterdir()
        if entry.name != "lo"
    }
    assert {nic["name"]: nic["mac"] for nic in found["nics"]} == sysfs
    if shutil.which("ip"):
        out = json.loads(
            subprocess.run(["ip", "-j", "addr"], capture_output=True, check=True, text=True).stdout
        )
        expected = {
            link["ifname"]: sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []))
            for link in out
            if link["ifname"] != "lo"
        }
        assert {nic["name"]: sorted(nic["addresses"]) for nic in found["nics"]} == expected


def test_discovery_becomes_the_planners_source_facts(found: dict[str, Any]) -> None:
    facts = source_facts(found)
    assert facts.hostname == found["hostname"] and facts.os == "linux"
    assert [d.name for d in facts.disks] == [d["name"] for d in found["disks"]]
    assert [d.size for d in facts.disks] == [d["size"] for d in found["disks"]]
    assert all(n.mac for n in facts.nics)


def test_a_full_agent_and_a_stdlib_only_agent_discover_the_same(found: dict[str, Any]) -> None:
    full = discover(LocalTransport())
    assert [d["name"] for d in full["disks"]] == [d["name"] for d in found["disks"]]
    assert full["nics"] == found["nics"] and full["firmware"] == found["firmware"]


def test_partitions_lvm_and_unmounted_filesystems_are_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tree lsblk 2.38 prints for a GPT disk: EFI partition, root on LVM (mounted at /), swap."""
    from orchestrator import agent

    tree = [
        {
            "name": "sda",
            "kname": "sda",
            "path": "/dev/sda",
            "size": 100 * 1024**3,
            "type": "disk",
            "fstype": None,
            "mountpoints": [None],
            "pttype": "gpt",
            "ro": False,
            "rm": False,
            "model": "QEMU HARDDISK   ",
            "children": [
                {
                    "name": "sda1",
                    "path": "/dev/sda1",
                    "size": 512 * 1024**2,
                    "type": "part",
                    "fstype": "vfat",
                    "mountpoints": [None],
                    "pttype": "gpt",
                },
                {
                    "name": "sda2",
                    "path": "/dev/sda2",
                    "size": 90 * 1024**3,
                    "type": "part",
                    "fstype": "LVM2_member",
                    "mountpoints": [None],
                    "pttype": "gpt",
                    "children": [
                        {
                            "name": "vg-root",
                            "path": "/dev/mapper/vg-root",
                            "size": 90 * 1024**3,
                            "type": "lvm",
                            "fstype": "ext4",
                            "mountpoints": ["/"],
                        }
                    ],
                },
                {
                    "name": "sda3",
                    "path": "/dev/sda3",
                    "size": 1024**3,
                    "type": "part",
                    "fstype": "swap",
                    "mountpoints": ["[SWAP]"],
                    "pttype": "gpt",
                },
            ],
        },
        {"name": "sr0", "path": "/dev/sr0", "size": 1024**2, "type": "rom", "mountpoints": [None]},
        {"name": "loop0", "path": "/dev/loop0", "size": 1024**2, "type": "loop", "mountpoints": [None]},
    ]
    monkeypatch.setattr(agent, "_lsblk", lambda: tree)
    (disk,) = agent._disks()
    root = os.statvfs("/")
    root_used = (root.f_blocks - root.f_bfree) * root.f_frsize
    assert (
        disk["name"] == "/dev/sda" and disk["partition_table"] == "gpt" and disk["model"] == "QEMU HARDDISK"
    )
    assert disk["filesystems"] == ["vfat", "LVM2_member", "ext4", "swap"]
    # what is mounted counts what it uses; what is not (EFI, swap) counts whole: it cannot be told
    assert abs(disk["used"] - (512 * 1024**2 + root_used + 1024**3)) < 256 * 1024**2
    assert disk["used_exact"] is False
    names = [p["name"] for p in disk["partitions"]]
    assert names == ["/dev/sda1", "/dev/sda2", "/dev/sda3"]
    assert disk["partitions"][1]["children"][0]["mountpoints"] == ["/"]
    assert disk["partitions"][1]["children"][0]["used"] is not None
