"""Reading the mount table of a Linux source: which mounts can write to a filesystem.

Checked against this machine's own /proc/self/mountinfo and what findmnt (util-linux) makes of it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from providers.base import LiveMount
from providers.linux.mounts import MountEntry, live_mounts, parse_mountinfo


def test_the_mount_table_here_reads_as_findmnt_reads_it() -> None:
    if shutil.which("findmnt") is None:
        pytest.skip("findmnt (util-linux) is missing")
    listing = subprocess.run(
        ["findmnt", "-rn", "-o", "TARGET,VFS-OPTIONS,FS-OPTIONS"], capture_output=True, text=True, check=True
    ).stdout
    expected: dict[str, list[bool]] = {}
    for line in listing.splitlines():
        target, vfs, fs = [*line.split(" "), "", ""][:3]
        if "\\" not in target:  # findmnt escapes differently (\x20); plain paths compare as they are
            expected.setdefault(target, []).append("rw" in vfs.split(",") and "rw" in fs.split(","))
    entries = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    parsed: dict[str, list[bool]] = {}
    for entry in entries:
        if "\\" not in entry.mountpoint and " " not in entry.mountpoint:
            parsed.setdefault(entry.mountpoint, []).append(entry.writable)
    assert parsed == expected
    assert any(entry.mountpoint == "/" for entry in entries)


def test_a_read_only_mount_or_a_read_only_filesystem_cannot_be_written() -> None:
    table = (
        "36 25 7:3 / /srv/data rw,noatime shared:1 - ext4 /dev/loop3 rw\n"
        "37 25 7:3 / /srv/ro\\040copy ro,relatime - ext4 /dev/loop3 rw\n"  # a read-only bind mount
        "38 25 253:0 / /var/lib/db rw,relatime master:2 - xfs /dev/mapper/vg-db ro,attr2\n"  # fs gone ro
        "garbage line\n"
    )
    assert parse_mountinfo(table) == [
        MountEntry("/srv/data", "/dev/loop3", True),
        MountEntry("/srv/ro copy", "/dev/loop3", False),
        MountEntry("/var/lib/db", "/dev/mapper/vg-db", False),
    ]


def test_live_mounts_are_reported_per_playbook_disk_once() -> None:
    found = {
        "paths": [
            {
                "name": "/dev/vda",
                "filesystem_mounts": [
                    {"device": "/dev/vda1", "fstype": "ext4", "mountpoints": ["/", "/srv/bind"]},
                    {"device": "/dev/dm-0", "fstype": "xfs", "mountpoints": ["/var/lib/db"]},
                ],
            },
            {  # the same disk named again through a link: reported once, under the first name
                "name": "/dev/disk/by-id/virtio-db01",
                "filesystem_mounts": [{"device": "/dev/vda1", "fstype": "ext4", "mountpoints": ["/"]}],
            },
        ]
    }
    table = parse_mountinfo(
        "20 1 254:1 / / rw,relatime - ext4 /dev/root rw\n"  # the root filesystem as the kernel names it
        "21 20 254:1 /srv /srv/bind ro,relatime - ext4 /dev/root rw\n"
        "22 20 253:0 / /var/lib/db rw,relatime - xfs /dev/mapper/vg-db rw\n"
    )
    assert live_mounts(found, ["/dev/vda", "/dev/disk/by-id/virtio-db01"], table) == [
        LiveMount("/dev/vda", "/dev/vda1", ("/",)),
        LiveMount("/dev/vda", "/dev/dm-0", ("/var/lib/db",)),
    ]
