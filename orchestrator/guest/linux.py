"""System-state staging of a Linux guest, on its raw disk file, before the replica first boots.

A migrated Linux server usually boots fine and then has no network: its new NICs get new kernel names
(``enp0s2`` where the source had ``ens3`` or ``eth0``) and the old configuration names interfaces that no
longer exist. Staging therefore pins each NIC's name to its MAC with a systemd ``.link`` file (honoured by
udev with or without systemd-networkd) and writes an ifupdown configuration for those pinned names, so the
identity survives whatever the new hypervisor's bus layout is. Everything is done through `ExtFs`
(debugfs), so no disk is ever mounted on the orchestrator.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import posixpath
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .disk_layout import DiskLayout, filesystems_of, read_layout
from .extfs import ExtFs, GuestFsError, ToolMissing, check_clean, image_lock

__all__ = [
    "GuestEdit",
    "GuestFsError",
    "InterfaceStanza",
    "LinkRule",
    "NicPlan",
    "RootFs",
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
    "plan_network_edits",
    "read_file",
    "write_file",
]

_ROOT_MARKERS = ("/etc/os-release", "/etc/fstab", "/etc/hostname")
_HOSTS_MARK = "# hvmigrate"
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


# ---------------------------------------------------------------- ifupdown and .link parsing


@dataclass(frozen=True)
class InterfaceStanza:
    name: str
    family: str  # inet, inet6
    method: str  # static, dhcp, loopback, manual
    auto: bool  # brought up at boot (auto / allow-hotplug)
    addresses: tuple[str, ...] = ()  # CIDR
    gateway: str | None = None
    hwaddress: str | None = None
    dns: tuple[str, ...] = ()


def parse_interfaces(text: str) -> list[InterfaceStanza]:
    """The ``iface`` stanzas of an ifupdown /etc/network/interfaces (continuation lines joined)."""
    lines = text.replace("\\\n", " ").splitlines()
    auto: set[str] = set()
    stanzas: list[dict] = []
    current: dict | None = None
    for raw in lines:
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        key = words[0]
        if key == "auto" or key.startswith("allow-"):
            auto.update(words[1:])
            current = None
        elif key == "iface" and len(words) >= 4:
            current = {
                "name": words[1],
                "family": words[2],
                "method": words[3],
                "address": [],
                "netmask": None,
                "gateway": None,
                "hwaddress": None,
                "dns": [],
            }
            stanzas.append(current)
        elif key in ("mapping", "source", "source-directory", "rename"):
            current = None
        elif current is not None and len(words) >= 2:
            if key == "address":
                current["address"].append(words[1])
            elif key == "netmask":
                current["netmask"] = words[1]
            elif key == "gateway":
                current["gateway"] = words[1]
            elif key == "hwaddress":
                current["hwaddress"] = words[-1].lower()
            elif key == "dns-nameservers":
                current["dns"].extend(words[1:])
    return [_stanza(s, s["name"] in auto) for s in stanzas]


def _stanza(raw: dict, auto: bool) -> InterfaceStanza:
    addresses = []
    for address in raw["address"]:
        text = address if "/" in address or not raw["netmask"] else f"{address}/{raw['netmask']}"
        try:
            addresses.append(str(ipaddress.ip_interface(text)))
        except ValueError:
            addresses.append(address)
    return InterfaceStanza(
        raw["name"],
        raw["family"],
        raw["method"],
        auto,
        tuple(addresses),
        raw["gateway"],
        raw["hwaddress"],
        tuple(raw["dns"]),
    )


@dataclass(frozen=True)
class LinkRule:
    """A systemd .link file reduced to what naming needs: which MACs it matches, what name it gives."""

    file: str
    macs: tuple[str, ...]
    name: str | None


def parse_link_file(file: str, text: str) -> LinkRule:
    section = ""
    macs: list[str] = []
    name = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        if section == "Match" and key.strip() in ("MACAddress", "PermanentMACAddress"):
            macs.extend(m.lower() for m in value.split())
        elif section == "Link" and key.strip() == "Name":
            name = value.strip() or None
    return LinkRule(file, tuple(macs), name)


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
class GuestEdit:
    """One file to put on the guest; ``merge="hosts"`` merges lines into /etc/hosts instead of replacing it.

    Plain data (no callables), so a plan of edits can be journaled and shown before it is applied.
    """

    path: str
    content: bytes  # text is accepted and stored UTF-8 encoded
    mode: int = 0o644
    merge: Literal["replace", "hosts"] = "replace"

    def __post_init__(self) -> None:
        if isinstance(self.content, str):
            object.__setattr__(self, "content", self.content.encode())
        if self.merge not in ("replace", "hosts"):
            raise ValueError(f"unknown merge {self.merge!r} for {self.path}: use replace or hosts")

    def to_json(self) -> dict[str, Any]:
        """A journal-safe form: text content as text, anything else base64."""
        try:
            content, encoding = self.content.decode(), "utf-8"
        except UnicodeDecodeError:
            content, encoding = base64.b64encode(self.content).decode(), "base64"
        return {
            "path": self.path,
            "content": content,
            "encoding": encoding,
            "mode": self.mode,
            "merge": self.merge,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GuestEdit:
        content = data["content"]
        raw = base64.b64decode(content) if data.get("encoding") == "base64" else content
        return cls(data["path"], raw, int(data.get("mode", 0o644)), data.get("merge", "replace"))


@dataclass(frozen=True)
class NicPlan:
    """One NIC of the replica as staging sees it: the MAC it will have and the address it must carry."""

    mac: str
    ip: str  # CIDR, or "dhcp"
    gateway: str | None = None
    dns: tuple[str, ...] = field(default_factory=tuple)


NicSpec = NicPlan | tuple[str, str, str | None, Sequence[str] | None]


def interface_name(index: int) -> str:
    """The name staging pins NIC ``index`` to: the playbook calls it nicN, and so will the guest.

    Not ethN: the kernel hands out ethN itself, and renaming into the kernel's namespace races with it.
    """
    return f"nic{index}"


def plan_network_edits(hostname: str, nics: Sequence[NicSpec]) -> list[GuestEdit]:
    """The files that give the replica its hostname and its NICs their names and addresses."""
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
        GuestEdit("/etc/hosts", "".join(f"{line}\t{_HOSTS_MARK}\n" for line in hosts).encode(), merge="hosts")
    )
    return edits


def _mac(value: str) -> str:
    mac = value.lower().replace("-", ":")
    if not re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac):
        raise ValueError(f"expected a MAC address like 52:54:00:12:34:56, got {value!r}")
    return mac


def merge_hosts(current: bytes | None, managed: bytes) -> bytes:
    """Keep the guest's own /etc/hosts lines; replace ours, 127.0.1.1 and any other line for our names."""
    ours = managed.decode().splitlines()
    our_names = {name for line in ours for name in line.split("#", 1)[0].split()[1:]}
    kept = []
    for line in (current or b"127.0.0.1\tlocalhost\n").decode(errors="replace").splitlines():
        fields = line.split("#", 1)[0].split()
        if line.rstrip().endswith(_HOSTS_MARK) or (fields and fields[0] == "127.0.1.1"):
            continue
        if (
            len(fields) > 1
            and not fields[0].startswith("127.")
            and fields[0] != "::1"
            and our_names & set(fields[1:])
        ):
            continue
        kept.append(line)
    return ("\n".join([*kept, *ours]) + "\n").encode()


def apply_edits(disk_path: Path | str, edits: Sequence[GuestEdit]) -> list[str]:
    """Apply staged edits to the Linux root on ``disk_path``; returns one log line per file changed.

    Files whose content is already what the edit asks are left alone, so a re-run after a crash changes
    nothing and says so.
    """
    root = find_linux_root(disk_path)
    if root is None:
        raise GuestFsError(f"{disk_path}: no Linux root filesystem (ext2/3/4 with /etc) found to stage")
    with image_lock(root.disk_path):
        if root.fs.needs_recovery():  # read what the guest would see after its journal replays
            root.fs.replay_journal()
        log: list[str] = []
        pending: list[tuple[str, bytes, int]] = []
        for edit in edits:
            current = root.fs.read(edit.path)
            wanted = merge_hosts(current, edit.content) if edit.merge == "hosts" else edit.content
            found = root.fs.resolve(edit.path)
            if (
                current == wanted
                and found is not None
                and found[1].mode == edit.mode
                and found[0] == edit.path
            ):
                log.append(f"unchanged {edit.path}")
                continue
            pending.append((edit.path, wanted, edit.mode))
            log.append(
                f"{'replaced' if current is not None else 'created'} {edit.path} ({len(wanted)} bytes)"
            )
        root.fs.write_files(pending)
    return [f"{root.device_hint} at offset {root.offset} ({root.fstype}): {line}" for line in log]
