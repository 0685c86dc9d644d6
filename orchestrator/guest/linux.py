"""System-state staging of a Linux guest, on its raw disk files, before the replica first boots.

A migrated Linux server usually boots fine and then has no network: its new NICs get new kernel names
(``enp0s2`` where the source had ``ens3`` or ``eth0``) and the old configuration names interfaces that no
longer exist. Or it does not boot at all: its initramfs lacks the new platform's disk driver, or fstab
names a disk by a device name the new platform spells differently. This module is the entry point that
reads the guest and plans what it needs, in small parts:

- `netconfig`: the network identity in the format the guest uses (ifupdown, netplan, NetworkManager,
  systemd-networkd), names pinned to MACs by systemd ``.link`` files;
- `hostname`: /etc/hostname and the /etc/hosts lines that make it resolve;
- `fstab`: entries checked against the replica's filesystems, device names remapped to UUIDs;
- `initramfs`: the target's disk and NIC drivers looked for in the default kernel's initramfs;
- `guest_tools`: the source platform's guest tools masked on another platform.

Plans are plain `GuestEdit` lists with findings and a log, computed once (`changes` makes that
repeatable) and applied idempotently by `apply_edits`. Everything goes through `ExtFs` (debugfs), so no
disk is ever mounted on the orchestrator.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .changes import ChangeSet, GuestView, revert_edits
from .disk_layout import DiskLayout, filesystems_of, read_layout
from .edits import HOSTS_MARK, GuestEdit, merge_hosts
from .extfs import ExtFs, FsOp, GuestFsError, ToolMissing, check_clean, image_lock
from .findings import Finding
from .fstab import DEFAULT_CONTROLLER, TargetDisk, check_fstab
from .guest_tools import plan_guest_tools
from .hostname import hosts_lines, plan_hostname
from .initramfs import check_initramfs
from .netconfig import NicConfig, interface_name
from .netconfig import plan_network as plan_network_config
from .netconfig.ifupdown import InterfaceStanza, parse_interfaces
from .netconfig.naming import LinkRule, parse_link_file
from .volume_ids import Volume, identify_volumes

__all__ = [
    "GuestEdit",
    "GuestFsError",
    "InterfaceStanza",
    "LinkRule",
    "NicConfig",
    "NicPlan",
    "RootFs",
    "StagingPlan",
    "StagingTarget",
    "TargetDisk",
    "apply_edits",
    "check_clean",
    "disk_layout",
    "find_linux_root",
    "interface_name",
    "link_rules",
    "merge_hosts",
    "os_release",
    "parse_interfaces",
    "parse_link_file",
    "plan_network",
    "plan_network_edits",
    "plan_system_state",
    "read_file",
    "revert_staging",
    "write_file",
]

_ROOT_MARKERS = ("/etc/os-release", "/etc/fstab", "/etc/hostname")
LINK_DIR = "/etc/systemd/network"


@dataclass(frozen=True)
class RootFs:
    """Where a Linux root filesystem sits on a disk image."""

    disk_path: Path
    offset: int
    fstype: str
    partition: int | None  # 1-based partition number; None for a filesystem on the whole disk

    @property
    def fs(self) -> ExtFs:
        return ExtFs(self.disk_path, self.offset)

    @property
    def device_hint(self) -> str:
        return f"partition {self.partition}" if self.partition else "whole disk"


def _file_reader(path: Path) -> tuple[int, Callable[[int, int], bytes]]:
    """A pread over a read-only descriptor: inspecting a source must never be able to write it."""
    fd = os.open(path, os.O_RDONLY)

    def read(offset: int, length: int) -> bytes:
        return os.pread(fd, length, offset)

    return fd, read


def disk_layout(disk_path: Path) -> DiskLayout:
    """The partition table of a disk file, opened read only."""
    fd, read = _file_reader(disk_path)
    try:
        return read_layout(read, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def find_linux_root(disk_path: Path | str) -> RootFs | None:
    """The first ext filesystem on the disk that holds an /etc a Linux system boots with; None if none.

    Only ext2/3/4 can be staged without mounting (debugfs); an XFS or btrfs root is reported as absent,
    which staging turns into a warning rather than a guess.
    """
    disk_path = Path(disk_path)
    if not disk_path.exists():
        raise GuestFsError(f"disk image {disk_path} does not exist")
    fd, read = _file_reader(disk_path)
    try:
        layout = read_layout(read, os.fstat(fd).st_size)
        found = filesystems_of(read, layout)
    finally:
        os.close(fd)
    numbers = {p.offset: p.number for p in layout.partitions}
    for offset, fstype in found:
        if not fstype.startswith("ext"):
            continue
        fs = ExtFs(disk_path, offset)
        try:
            has_marker = any(fs.stat(marker) is not None for marker in _ROOT_MARKERS)
        except ToolMissing:
            raise
        except GuestFsError:
            continue  # a damaged filesystem is not the root we can stage
        if has_marker:
            return RootFs(disk_path, offset, fstype, numbers.get(offset))
    return None


def read_file(root: RootFs, path: str) -> bytes | None:
    return root.fs.read(path)


def write_file(root: RootFs, path: str, data: bytes, mode: int = 0o644) -> None:
    root.fs.write_files([(path, data, mode)])


def os_release(root: RootFs) -> dict[str, str]:
    """/etc/os-release (or /usr/lib/os-release) as a dict; empty when the guest has neither."""
    raw = root.fs.read("/etc/os-release") or root.fs.read("/usr/lib/os-release")
    values: dict[str, str] = {}
    for line in (raw or b"").decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z0-9_]+", key.strip()):
            try:
                parts = shlex.split(value)
            except ValueError:
                parts = [value.strip().strip('"')]
            values[key.strip()] = " ".join(parts)
    return values


def link_rules(root: RootFs) -> list[LinkRule]:
    """The guest's /etc/systemd/network/*.link files in the lexical order udev applies them."""
    rules = []
    for entry in root.fs.listdir(LINK_DIR):
        if entry.endswith(".link"):
            data = root.fs.read(posixpath.join(LINK_DIR, entry))
            if data is not None:
                rules.append(parse_link_file(entry, data.decode(errors="replace")))
    return rules


# ---------------------------------------------------------------- staging


@dataclass(frozen=True)
class NicPlan:
    """One NIC of the replica as staging sees it: the MAC it will have and the address it must carry."""

    mac: str
    ip: str  # CIDR, or "dhcp"
    gateway: str | None = None
    dns: tuple[str, ...] = field(default_factory=tuple)


NicSpec = NicPlan | tuple[str, str, str | None, Sequence[str] | None]


def plan_network_edits(hostname: str, nics: Sequence[NicSpec]) -> list[GuestEdit]:
    """The hostname and an ifupdown configuration for the NICs, without reading the guest.

    For callers with no disk at hand (tests of the sim's boot); staging itself uses `plan_network`,
    which detects the guest's format and keeps what the guest holds besides.
    """
    plans = [n if isinstance(n, NicPlan) else NicPlan(n[0], n[1], n[2], tuple(n[3] or ())) for n in nics]
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*", hostname):
        raise ValueError(f"{hostname!r} is not a valid hostname")
    edits = [GuestEdit("/etc/hostname", f"{hostname}\n".encode())]
    short = hostname.split(".")[0]
    names = f"{hostname} {short}" if short != hostname else hostname
    hosts = [f"127.0.1.1\t{names}"]
    stanzas = [
        "# Written by hvmigrate. Each interface name is pinned to its MAC by",
        f"# {LINK_DIR}/10-hvmigrate-<n>.link, so it survives the move to new hardware.",
        "source /etc/network/interfaces.d/*",
        "",
        "auto lo",
        "iface lo inet loopback",
    ]
    for index, nic in enumerate(plans):
        mac = _mac(nic.mac)
        name = interface_name(index)
        stanzas.append("")
        stanzas.append(f"auto {name}")
        if nic.ip == "dhcp":
            stanzas += [f"iface {name} inet dhcp", f"    hwaddress ether {mac}"]
        else:
            address = ipaddress.ip_interface(nic.ip)
            family = "inet" if address.version == 4 else "inet6"
            stanzas += [
                f"iface {name} {family} static",
                f"    address {address.with_prefixlen}",
                f"    hwaddress ether {mac}",
            ]
            if nic.gateway:
                stanzas.append(f"    gateway {ipaddress.ip_address(nic.gateway)}")
            if len(hosts) == 1:
                hosts.insert(0, f"{address.ip}\t{names}")
        if nic.dns:
            stanzas.append("    dns-nameservers " + " ".join(str(ipaddress.ip_address(d)) for d in nic.dns))
        edits.append(
            GuestEdit(
                f"{LINK_DIR}/10-hvmigrate-{index}.link",
                (
                    "# Written by hvmigrate: this MAC keeps the name its network configuration uses.\n"
                    f"[Match]\nMACAddress={mac}\n\n[Link]\nName={name}\n"
                ).encode(),
            )
        )
    edits.append(GuestEdit("/etc/network/interfaces", ("\n".join(stanzas) + "\n").encode()))
    edits.append(
        GuestEdit("/etc/hosts", "".join(f"{line}\t{HOSTS_MARK}\n" for line in hosts).encode(), merge="hosts")
    )
    return edits


def _mac(value: str) -> str:
    mac = value.lower().replace("-", ":")
    if not re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac):
        raise ValueError(f"expected a MAC address like 52:54:00:12:34:56, got {value!r}")
    return mac


def apply_edits(disk_path: Path | str, edits: Sequence[GuestEdit]) -> list[str]:
    """Apply staged edits to the Linux root on ``disk_path``; returns one log line per edit.

    Edits whose result is already on the disk are left alone, so a re-run after a crash changes nothing
    and says so. Later edits of the same path see the earlier ones (two merges into /etc/hosts compose).
    """
    root = find_linux_root(disk_path)
    if root is None:
        raise GuestFsError(f"{disk_path}: no Linux root filesystem (ext2/3/4 with /etc) found to stage")
    fs = root.fs
    with image_lock(root.disk_path):
        if fs.needs_recovery():  # read what the guest would see after its journal replays
            fs.replay_journal()
        log: list[str] = []
        pending: dict[str, FsOp] = {}

        def exists(path: str) -> bool:
            if path in pending:
                return pending[path].kind != "absent"
            return fs.stat(path) is not None

        def content(path: str) -> bytes | None:
            if path in pending:
                return pending[path].data if pending[path].kind == "file" else None
            return fs.read(path)

        for edit in edits:
            if edit.merge == "keep" and exists(edit.path):
                log.append(f"unchanged {edit.describe()}")
                continue
            if edit.kind == "absent":
                if not exists(edit.path):
                    log.append(f"unchanged {edit.path} (absent)")
                    continue
                pending[edit.path] = FsOp("absent", edit.path)
                log.append(f"removed {edit.path}")
                continue
            if edit.kind == "symlink":
                inode = None if edit.path in pending else fs.stat(edit.path)
                if (
                    inode is not None
                    and inode.type == "symlink"
                    and inode.link_target == edit.content.decode()
                ):
                    log.append(f"unchanged {edit.describe()}")
                    continue
                pending[edit.path] = FsOp("symlink", edit.path, edit.content)
                log.append(f"linked {edit.describe()}")
                continue
            current = content(edit.path)
            wanted = merge_hosts(current, edit.content) if edit.merge == "hosts" else edit.content
            found = None if edit.path in pending else fs.resolve(edit.path)
            if (
                current == wanted
                and found is not None
                and found[1].mode == edit.mode
                and found[0] == edit.path
            ):
                log.append(f"unchanged {edit.path}")
                continue
            pending[edit.path] = FsOp("file", edit.path, wanted, edit.mode)
            log.append(
                f"{'replaced' if current is not None else 'created'} {edit.path} ({len(wanted)} bytes)"
            )
        fs.apply(list(pending.values()))
    return [f"{root.device_hint} at offset {root.offset} ({root.fstype}): {line}" for line in log]


# ---------------------------------------------------------------- planning on the replica's disks


@dataclass(frozen=True)
class StagingTarget:
    """What staging must know of the replica's virtual hardware."""

    platform: str  # kvm, esx, hyperv, sim
    disks: tuple[TargetDisk, ...] = ()  # every replica disk, in the playbook's order
    boot_disk: int = 0
    nic_models: tuple[str | None, ...] = ()  # None: the platform's default

    @property
    def boot_controller(self) -> str:
        for disk in self.disks:
            if disk.index == self.boot_disk:
                return disk.controller
        return DEFAULT_CONTROLLER.get(self.platform, "virtio")


@dataclass
class StagingPlan:
    """Edits to apply, findings to report, and one log line per change saying why."""

    edits: list[GuestEdit]
    findings: list[Finding]
    log: list[str]
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def changes(self) -> int:
        """Files changed, not counting the records of their originals."""
        return sum(1 for e in self.edits if e.merge != "keep")


DiskPath = Path | str | None  # None: a replica disk this machine cannot read (an appliance's device)


def _root(disks: Sequence[DiskPath], boot_disk: int) -> RootFs:
    path = disks[boot_disk] if boot_disk < len(disks) else None
    root = find_linux_root(path) if path is not None else None
    if root is None:
        raise GuestFsError(f"{path}: no Linux root filesystem (ext2/3/4 with /etc) found to stage")
    if root.fs.needs_recovery():  # plan on what the guest will see once its journal is replayed
        root.fs.replay_journal()
    return root


def _volumes(disks: Sequence[DiskPath]) -> list[Volume]:
    readable = {i: d for i, d in enumerate(disks) if d is not None}
    found = identify_volumes(list(readable.values()))
    indexes = list(readable)
    volumes = [Volume(**{**v.__dict__, "disk_index": indexes[v.disk_index]}) for v in found]
    volumes += [
        Volume(i, "(not readable from here)", None, 0, None) for i, d in enumerate(disks) if d is None
    ]
    return volumes


def _unique(findings: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))


def plan_system_state(disks: Sequence[DiskPath], target: StagingTarget, hostname: str) -> StagingPlan:
    """Hostname, fstab, drivers and guest tools of the replica whose disks are ``disks``."""
    root = _root(disks, target.boot_disk)
    view = GuestView(root.fs)
    changes = ChangeSet(view)
    plan_hostname(view, changes, hostname)
    volumes = _volumes(disks)
    findings = check_fstab(view, changes, target.disks, volumes)
    findings += check_initramfs(
        view, changes, target.platform, target.boot_controller, target.nic_models, volumes
    )
    findings += plan_guest_tools(view, changes, target.platform)
    release = os_release(root)
    facts = {"os": release.get("PRETTY_NAME", "Linux"), "root": f"{root.device_hint} ({root.fstype})"}
    return StagingPlan(changes.edits(), _unique(findings), changes.log, facts)


def plan_network(
    disks: Sequence[DiskPath], boot_disk: int, hostname: str, nics: Sequence[NicConfig]
) -> StagingPlan:
    """Network configuration, name pinning and /etc/hosts for the replica's NICs."""
    root = _root(disks, boot_disk)
    view = GuestView(root.fs)
    changes = ChangeSet(view)
    detection, findings = plan_network_config(view, changes, list(nics))
    address = next((str(n.address.ip) for n in nics if n.address is not None), None)
    changes.merge_hosts(
        hosts_lines(view, hostname, address),
        why=f"{hostname} resolves to {address or '127.0.1.1 only (DHCP)'}",
    )
    facts = {"network": detection.manager, "evidence": detection.evidence, "present": list(detection.present)}
    return StagingPlan(changes.edits(), _unique(findings), changes.log, facts)


def revert_staging(disk_path: Path | str) -> list[str]:
    """Put every file staging changed on this disk back as it was (a kept replica staged anew, say)."""
    root = find_linux_root(disk_path)
    if root is None:
        raise GuestFsError(f"{disk_path}: no Linux root filesystem (ext2/3/4 with /etc) found")
    return apply_edits(disk_path, revert_edits(GuestView(root.fs)))
