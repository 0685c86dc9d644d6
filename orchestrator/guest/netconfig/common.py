"""What every network configuration writer shares: the NICs to configure and which old names are gone.

On the replica the only Ethernet NICs are the ones the playbook maps, each pinned by a .link file to the
name ``nicN``. So any definition the guest still holds for a physical Ethernet name (eth0, ens3, enp0s2)
or for one of the moved MACs can only do harm: it names an interface that no longer exists, or fights
staging's definition for the one that does. Writers neutralise those and leave everything else alone.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

__all__ = ["Moved", "NicConfig", "interface_name", "normal_mac"]

LINK_DIR = "/etc/systemd/network"
# The names kernels and udev give Ethernet NICs: eth0, en* (eno1, ens3, enp0s2, enx...), em1, p1p1.
_PHYSICAL_RE = re.compile(r"^(eth\d+|en[a-z0-9_]+|em\d+|p\d+p\d+\w*)$")
_OURS_RE = re.compile(r"^nic\d+$")
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def interface_name(index: int) -> str:
    """The name staging pins NIC ``index`` to: the playbook calls it nicN, and so will the guest.

    Not ethN: the kernel hands out ethN itself, and renaming into the kernel's namespace races with it.
    """
    return f"nic{index}"


def normal_mac(value: str) -> str:
    mac = value.strip().lower().replace("-", ":")
    if not _MAC_RE.fullmatch(mac):
        raise ValueError(f"expected a MAC address like 52:54:00:12:34:56, got {value!r}")
    return mac


@dataclass(frozen=True)
class NicConfig:
    """One NIC of the replica: the MAC it will have, the address it must carry, and what it was."""

    index: int
    mac: str
    ip: str = "dhcp"  # CIDR, or "dhcp"
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    source_name: str | None = None  # the source's name for it (eth0), when discovery knew
    source_mac: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", normal_mac(self.mac))
        if self.source_mac:
            object.__setattr__(self, "source_mac", normal_mac(self.source_mac))
        if self.ip != "dhcp":
            object.__setattr__(self, "ip", ipaddress.ip_interface(self.ip).with_prefixlen)
        if self.gateway:
            object.__setattr__(self, "gateway", str(ipaddress.ip_address(self.gateway)))
        object.__setattr__(self, "dns", tuple(str(ipaddress.ip_address(d)) for d in self.dns))

    @property
    def name(self) -> str:
        return interface_name(self.index)

    @property
    def dhcp(self) -> bool:
        return self.ip == "dhcp"

    @property
    def address(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
        return None if self.dhcp else ipaddress.ip_interface(self.ip)

    def summary(self) -> str:
        if self.dhcp:
            text = f"{self.name} ({self.mac}): DHCP"
        else:
            text = f"{self.name} ({self.mac}): static {self.ip}"
            text += f" via {self.gateway}" if self.gateway else ""
        return text + (f", DNS {' '.join(self.dns)}" if self.dns else "")


@dataclass(frozen=True)
class Moved:
    """The identities that belonged to the mapped NICs on the source, and the names they have now."""

    names: frozenset[str]  # source interface names known from discovery
    macs: frozenset[str]  # source and target MACs of mapped NICs
    ours: frozenset[str]  # nic0, nic1, ...

    @classmethod
    def of(cls, nics: list[NicConfig]) -> Moved:
        return cls(
            frozenset(n.source_name for n in nics if n.source_name),
            frozenset({n.mac for n in nics} | {n.source_mac for n in nics if n.source_mac}),
            frozenset(n.name for n in nics),
        )

    def is_stale_name(self, name: str) -> bool:
        """A definition by this interface name cannot apply on the replica (or duplicates staging's)."""
        base = name.split(":", 1)[0]  # eth0:1 is an address alias on eth0
        return base in self.names or bool(_PHYSICAL_RE.match(base)) or bool(_OURS_RE.match(base))

    def has_mac(self, mac: str | None) -> bool:
        if not mac:
            return False
        try:
            return normal_mac(mac) in self.macs
        except ValueError:
            return False

    def glob_hits_ours(self, patterns: list[str]) -> bool:
        """Would a systemd-style name match list (globs, ``!`` negation) match one of the nicN names?"""
        positive = [p for p in patterns if not p.startswith("!")]
        negative = [p[1:] for p in patterns if p.startswith("!")]
        for name in self.ours:
            if any(fnmatchcase(name, p) for p in negative):
                continue
            if not positive or any(fnmatchcase(name, p) for p in positive):
                return True
        return False


def mentions(text: str, names: set[str]) -> set[str]:
    """Which of ``names`` appear as whole words in ``text`` (bridge_ports eth0, bond-slaves ens3)."""
    words = set(re.split(r"[\s,;=\[\]\"']+", text))
    return names & words
