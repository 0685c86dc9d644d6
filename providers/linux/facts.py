"""The agent's discovery of a running Linux host, as SourceFacts named the way the playbook names disks.

lsblk lists the host's whole disks; the playbook may name others (an LV, a loop device, a file standing in
for a disk, a /dev/disk/by-id link). The agent describes each named path on its own (``paths`` in its
answer), and that description wins: the disk is listed under the playbook's name, and a whole disk lsblk
also lists under another name for the same device is not listed twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.mirror.agent_session import source_facts
from providers.base import ProviderError, SourceDisk, SourceFacts

NO_READ_HINT = "log in as root, or set sudo: true with NOPASSWD sudo for that user"


def path_problems(found: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """Why each named disk cannot be read, one phrase per disk; empty when all can."""
    entries = {entry["name"]: entry for entry in found.get("paths", ())}
    problems = []
    for name in names:
        entry = entries.get(name)
        if entry is None:
            problems.append(f"{name} was not examined (the agent is older than this orchestrator)")
        elif entry.get("error"):
            problems.append(f"{name} {entry['error']}")
        elif not entry.get("readable", True):
            problems.append(f"{name} cannot be read by the login ({NO_READ_HINT})")
    return problems


def facts_from_discovery(found: Mapping[str, Any], names: Sequence[str], *, server: str) -> SourceFacts:
    """SourceFacts with the playbook's disks first (in its order), then the other disks lsblk lists."""
    problems = path_problems(found, names)
    if problems:
        listed = ", ".join(disk["name"] for disk in found.get("disks", ())) or "none"
        raise ProviderError(
            f"server {server}: on {found.get('hostname', '?')}, source disk {'; '.join(problems)}; fix "
            f"target.disks[*].source (lsblk lists these disks there: {listed})"
        )
    entries = {entry["name"]: entry for entry in found.get("paths", ())}
    named = [entries[name] for name in names]
    claimed = {entry.get("realpath") for entry in named} | set(names)
    disks = [_named_disk(entry) for entry in named]
    disks += [_listed_disk(disk) for disk in found.get("disks", ()) if disk["name"] not in claimed]
    facts = source_facts({**found, "disks": []})
    return SourceFacts(facts.hostname, facts.os, facts.os_detail, facts.firmware, tuple(disks), facts.nics)


def _named_disk(entry: Mapping[str, Any]) -> SourceDisk:
    used = entry.get("used")
    if entry.get("block") and not entry.get("used_exact"):
        used = None  # a device with unmounted parts: how much of it holds data cannot be told from here
    return SourceDisk(
        name=entry["name"],
        size=int(entry["size"]),
        used=used,
        partition_table=entry.get("partition_table", "none"),
        filesystems=tuple(entry.get("filesystems", ())),
    )


def _listed_disk(disk: Mapping[str, Any]) -> SourceDisk:
    return SourceDisk(
        name=disk["name"],
        size=int(disk["size"]),
        used=disk.get("used") if disk.get("used_exact") else None,
        partition_table=disk.get("partition_table", "none"),
        filesystems=tuple(disk.get("filesystems", ())),
    )


def mounted_filesystems(found: Mapping[str, Any], names: Sequence[str]) -> list[dict[str, Any]]:
    """Each mounted filesystem on the named disks once: ``{"device", "fstype", "mountpoints"}``."""
    entries = {entry["name"]: entry for entry in found.get("paths", ())}
    seen: set[str] = set()
    mounted = []
    for name in names:
        for mount in entries.get(name, {}).get("filesystem_mounts", ()):
            if mount["device"] not in seen:
                seen.add(mount["device"])
                mounted.append(mount)
    return mounted
