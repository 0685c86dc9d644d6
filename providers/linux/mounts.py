"""Which filesystems on a source's disks are mounted read-write: what an unquiesced final pass copies live.

Discovery already maps every mounted device back to the disk the playbook names (lsblk's tree of a disk
holds its partitions, the LVs and other device-mapper devices on them, and for a disk that is a file, the
loop devices backed by it). It does not say whether a mount is read-only, so the mount table is read once
more, from ``/proc/self/mountinfo``, whose sixth field holds the mount's own options and whose last holds
the filesystem's: a filesystem can be written through a mount only when both say ``rw`` (a read-only
bind mount of a writable filesystem, or a filesystem the kernel remounted read-only after an error, can
not). One read-write mount of a filesystem is enough for it to change under the copy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from providers.base import LiveMount

_ESCAPE = re.compile(r"\\([0-7]{3})")  # the kernel writes a space in a path as \040


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo, reduced to what says whether it can be written."""

    mountpoint: str
    source: str
    writable: bool


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The entries of a mountinfo table, in its order (a later mount on the same point lies on top)."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10 or "-" not in fields[6:]:
            continue  # not a mountinfo line: nothing to learn from it
        separator = fields.index("-", 6)
        if len(fields) < separator + 4:
            continue
        mount_options = fields[5].split(",")
        super_options = fields[separator + 3].split(",")
        entries.append(
            MountEntry(
                mountpoint=_unescape(fields[4]),
                source=_unescape(fields[separator + 2]),
                writable="rw" in mount_options and "rw" in super_options,
            )
        )
    return entries


def live_mounts(
    found: Mapping[str, Any], names: Sequence[str], table: Iterable[MountEntry]
) -> list[LiveMount]:
    """Per source disk (in the playbook's order), each device on it with its read-write mountpoints.

    A device lsblk lists under two source names (a disk and a link to it) is reported once, under the
    first. A mountpoint the table does not show (unmounted between the two reads) is not reported.
    """
    by_point: dict[str, list[MountEntry]] = {}
    for entry in table:
        by_point.setdefault(entry.mountpoint, []).append(entry)
    described = {entry["name"]: entry for entry in found.get("paths", ())}
    seen: set[str] = set()
    live = []
    for name in names:
        for mount in described.get(name, {}).get("filesystem_mounts", ()):
            device = mount["device"]
            if device in seen:
                continue
            seen.add(device)
            points = tuple(p for p in mount["mountpoints"] if _writable(by_point.get(p, []), device))
            if points:
                live.append(LiveMount(disk=name, device=device, mountpoints=points))
    return live


def _writable(entries: list[MountEntry], device: str) -> bool:
    """Whether ``device`` can be written through the mounts at one mountpoint.

    The table names a device as it was mounted (``/dev/mapper/vg-lv`` for ``/dev/dm-0``, ``/dev/root`` for
    the root filesystem); when no entry there names ``device`` exactly, every entry at that point counts,
    so a doubt reports a writable mount rather than hides one.
    """
    own = [entry for entry in entries if entry.source == device] or entries
    return any(entry.writable for entry in own)


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), text)
