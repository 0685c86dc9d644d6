"""What a libvirt host offers: its CPUs and memory, pools, networks and bridges, domains, and abilities.

Abilities come from libvirt's domain capabilities, which the daemon computes on the host itself, so the
answers hold for remote URIs too: whether ``type='kvm'`` is available (libvirt checks /dev/kvm), and
whether UEFI firmware (OVMF, Debian package ``ovmf``) is installed there.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from providers.base import ProviderError

from .connection import reason
from .domain_xml import BRIDGE_PREFIX


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    cpus: int
    memory: int  # bytes


@dataclass(frozen=True)
class Abilities:
    domain_type: str  # kvm | qemu: what domains are defined as
    firmware: tuple[str, ...]  # bios, and uefi when OVMF is there
    max_vcpus: int | None


def host_facts(conn: libvirt.virConnect) -> HostFacts:
    """Memory is the host's MemTotal; getInfo's figure follows memory blocks that a balloon driver
    (these machines are VMs themselves) onlines and offlines, so it moves between calls."""
    info = conn.getInfo()  # [arch, memory MiB, cpus, MHz, nodes, sockets, cores, threads]
    memory = int(info[1]) * 1024**2
    with contextlib.suppress(libvirt.libvirtError, KeyError):
        memory = int(conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)["total"]) * 1024
    return HostFacts(hostname=conn.getHostname(), cpus=int(info[2]), memory=memory)


def _capabilities(conn: libvirt.virConnect, virt_type: str) -> ET.Element | None:
    try:
        return ET.fromstring(conn.getDomainCapabilities(None, "x86_64", None, virt_type, 0))
    except libvirt.libvirtError:
        return None


def abilities(conn: libvirt.virConnect, configured: str, where: str) -> Abilities:
    """The domain type to use (``configured`` is auto, kvm or qemu) and what it supports."""
    kvm = _capabilities(conn, "kvm")
    if configured == "kvm" and kvm is None:
        raise ProviderError(
            f"domain_type: kvm, but {where} offers no KVM (no usable /dev/kvm there); "
            "set domain_type: qemu (TCG, slower) or auto"
        )
    chosen = "kvm" if configured == "kvm" or (configured == "auto" and kvm is not None) else "qemu"
    caps = kvm if chosen == "kvm" else _capabilities(conn, "qemu")
    if caps is None:
        raise ProviderError(
            f"{where} cannot run QEMU x86_64 guests (no domain capabilities for type {chosen}); "
            "install qemu-system-x86 there and restart libvirtd"
        )
    efi = {value.text for value in caps.findall("os/enum[@name='firmware']/value")}
    loaders = [value.text for value in caps.findall("os/loader/value") if value.text]
    firmware = ("bios", "uefi") if "efi" in efi or loaders else ("bios",)
    vcpu = caps.find("vcpu")
    max_vcpus = int(vcpu.get("max", "0")) if vcpu is not None else 0
    return Abilities(domain_type=chosen, firmware=firmware, max_vcpus=max_vcpus or None)


def networks(conn: libvirt.virConnect) -> tuple[str, ...]:
    """libvirt networks by name, and host bridges no libvirt network owns as ``bridge:NAME``."""
    names: list[str] = []
    owned_bridges: set[str] = set()
    for network in conn.listAllNetworks(0):
        names.append(network.name())
        with contextlib.suppress(libvirt.libvirtError):
            owned_bridges.add(network.bridgeName())
    bridges: list[str] = []
    with contextlib.suppress(libvirt.libvirtError):  # the host may have no interface driver
        for interface in conn.listAllInterfaces(0):
            root = ET.fromstring(interface.XMLDesc(0))
            if root.get("type") == "bridge" and interface.name() not in owned_bridges:
                bridges.append(BRIDGE_PREFIX + interface.name())
    return tuple(sorted(names)) + tuple(sorted(bridges))


def network_exists(conn: libvirt.virConnect, network: str) -> bool:
    if network.startswith(BRIDGE_PREFIX):
        try:
            conn.interfaceLookupByName(network[len(BRIDGE_PREFIX) :])
        except libvirt.libvirtError:
            return False
        return True
    try:
        conn.networkLookupByName(network)
    except libvirt.libvirtError:
        return False
    return True


def vlan_capable(conn: libvirt.virConnect, network: str) -> bool:
    """libvirt tags VLANs only on Open vSwitch and SR-IOV (hostdev) networks."""
    if network.startswith(BRIDGE_PREFIX):
        return False
    try:
        root = ET.fromstring(conn.networkLookupByName(network).XMLDesc(0))
    except libvirt.libvirtError as exc:
        raise ProviderError(f"network {network}: {reason(exc)}") from None
    virtualport = root.find("virtualport")
    forward = root.find("forward")
    return (virtualport is not None and virtualport.get("type") == "openvswitch") or (
        forward is not None and forward.get("mode") == "hostdev"
    )


def domain_names(conn: libvirt.virConnect) -> tuple[str, ...]:
    return tuple(sorted(domain.name() for domain in conn.listAllDomains(0)))
