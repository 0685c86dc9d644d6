"""What a running domain can be seen to be: its hostname and addresses, from the best witness available.

In order of trust: the QEMU guest agent (the guest's own answer), the DHCP leases of libvirt's dnsmasq,
then the host's ARP table (a static address shows up there once the guest speaks on a bridge the host has
an address on). A domain that is running but that none of them has seen is reported as running with no
addresses, and the detail says so: a replica that may still be in its firmware is not called booted.
"""

from __future__ import annotations

import ipaddress
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from providers.base import BootReport

POLL_INTERVAL = 1.0

_SOURCES = (
    ("guest agent", "VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT"),
    ("DHCP lease", "VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE"),
    ("ARP table", "VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP"),
)


@dataclass(frozen=True)
class Sighting:
    witness: str
    hostname: str | None
    addresses: tuple[str, ...]


def _network_prefixes(
    conn: libvirt.virConnect, networks: list[str]
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The subnets libvirt networks declare: ARP entries carry no prefix length, these give it back."""
    found = []
    for name in networks:
        try:
            root = ET.fromstring(conn.networkLookupByName(name).XMLDesc(0))
        except libvirt.libvirtError:
            continue
        for ip in root.findall("ip"):
            address = ip.get("address")
            prefix = ip.get("prefix") or ip.get("netmask")
            if address and prefix:
                try:
                    found.append(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
                except ValueError:
                    continue
    return found


def _cidr(address: str, prefix: int, subnets: list) -> str:
    if prefix:
        return f"{address}/{prefix}"
    ip = ipaddress.ip_address(address)
    for subnet in subnets:
        if ip in subnet:
            return f"{address}/{subnet.prefixlen}"
    return address


def look(domain: libvirt.virDomain, conn: libvirt.virConnect, networks: list[str]) -> Sighting | None:
    """One look at the domain through each witness; the first that sees an address wins."""
    for witness, constant in _SOURCES:
        source = getattr(libvirt, constant, None)
        if source is None:
            continue
        try:
            interfaces = domain.interfaceAddresses(source, 0) or {}
        except libvirt.libvirtError:
            continue  # no agent in the guest, no lease, no ARP entry: try the next witness
        subnets = _network_prefixes(conn, networks) if witness == "ARP table" else []
        addresses = []
        for name, interface in interfaces.items():
            if name == "lo":
                continue
            for entry in interface.get("addrs") or []:
                ip = ipaddress.ip_address(entry["addr"])
                if ip.is_loopback or ip.is_link_local:
                    continue
                addresses.append(_cidr(entry["addr"], int(entry.get("prefix") or 0), subnets))
        if addresses:
            return Sighting(witness, _hostname(domain, witness), tuple(dict.fromkeys(addresses)))
    return None


def _hostname(domain: libvirt.virDomain, witness: str) -> str | None:
    flags = {
        "guest agent": getattr(libvirt, "VIR_DOMAIN_GET_HOSTNAME_AGENT", 0),
        "DHCP lease": getattr(libvirt, "VIR_DOMAIN_GET_HOSTNAME_LEASE", 0),
    }
    if witness not in flags:
        return None
    try:
        return domain.hostname(flags[witness]) or None
    except libvirt.libvirtError:
        return None


def wait_booted(
    domain: libvirt.virDomain, conn: libvirt.virConnect, networks: list[str], timeout: float
) -> BootReport:
    name = domain.name()
    started = time.monotonic()
    deadline = started + max(0.0, timeout)
    while True:
        try:
            running = domain.isActive() == 1
        except libvirt.libvirtError as exc:
            return BootReport(running=False, detail=f"domain {name} cannot be queried: {exc}")
        if not running:
            return BootReport(
                running=False,
                detail=f"domain {name} is not running (powered off, or it stopped itself); power it on first",
            )
        if not networks:
            return BootReport(
                running=True,
                detail=f"domain {name} running; it has no NIC, so no address can confirm its OS is up",
            )
        sighting = look(domain, conn, networks)
        if sighting is not None:
            return BootReport(
                running=True,
                hostname=sighting.hostname,
                addresses=sighting.addresses,
                detail=f"domain {name} running; addresses from the {sighting.witness}",
            )
        if time.monotonic() >= deadline:
            waited = time.monotonic() - started
            return BootReport(
                running=True,
                detail=(
                    f"domain {name} running, but in {waited:.0f} s no guest agent answered and no DHCP "
                    "lease or ARP entry showed an address: that the guest OS is up is not confirmed"
                ),
            )
        time.sleep(POLL_INTERVAL)
