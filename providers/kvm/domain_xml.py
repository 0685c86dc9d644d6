"""Domain XML: written from a resolved VM spec, and read back for what the provider needs to know.

Built with ElementTree, never by string formatting, so a name or path with ``<`` or ``'`` in it cannot
change the document. Every domain the tool defines carries ``<hvmigrate:owner>`` in its ``<metadata>``:
that element, not the name, is what makes a domain the tool's own, so a VM someone else created under the
same name is never found, changed or removed by it.
"""

from __future__ import annotations

import string
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

OWNER_NS = "https://hvmigrate.dev/ns/1"
OWNER_PREFIX = "hvmigrate"
OWNER_TAG = f"{{{OWNER_NS}}}owner"

ET.register_namespace(OWNER_PREFIX, OWNER_NS)

# bus -> device name prefix (vda, sda, hda)
DISK_BUSES: dict[str, str] = {"virtio": "vd", "sata": "sd", "scsi": "sd", "ide": "hd"}
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "vmxnet3")
BRIDGE_PREFIX = "bridge:"


@dataclass(frozen=True)
class DiskSpec:
    pool: str
    volume: str
    format: str  # raw | qcow2
    bus: str  # a key of DISK_BUSES
    serial: str | None = None  # what the guest sees as the disk's serial (a stable /dev/disk/by-id name)
    readonly: bool = False


@dataclass(frozen=True)
class NicSpec:
    network: str  # a libvirt network, or bridge:NAME for a host bridge
    mac: str
    model: str
    vlan: int | None = None
    connected: bool = True


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    domain_type: str  # kvm | qemu
    cpus: int
    memory: int  # bytes
    firmware: str  # bios | uefi
    disks: tuple[DiskSpec, ...]
    nics: tuple[NicSpec, ...]
    owner: dict[str, str] = field(default_factory=dict)
    serial_log: str | None = None  # the console, kept in a file on the host
    scsi_controller: bool = False  # a virtio-scsi controller even without SCSI disks (for hot-plugged LUNs)


def device_name(prefix: str, index: int) -> str:
    """vda, vdb, ... vdz, vdaa: libvirt's own naming."""
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = string.ascii_lowercase[remainder] + letters
    return prefix + letters


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def domain_xml(spec: DomainSpec) -> str:
    root = ET.Element("domain", {"type": spec.domain_type})
    _sub(root, "name", spec.name)
    _sub(root, "uuid", spec.uuid)
    metadata = _sub(root, "metadata")
    owner = _sub(metadata, OWNER_TAG)
    for key, value in sorted(spec.owner.items()):
        _sub(owner, f"{{{OWNER_NS}}}tag", value, name=key)
    _sub(root, "memory", str(-(-spec.memory // 1024)), unit="KiB")
    _sub(root, "vcpu", str(spec.cpus))
    os_element = _sub(root, "os", **({"firmware": "efi"} if spec.firmware == "uefi" else {}))
    _sub(os_element, "type", "hvm", arch="x86_64")
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.domain_type == "kvm":
        _sub(root, "cpu", mode="host-passthrough")
    _sub(root, "clock", offset="utc")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    counters: dict[str, int] = {}
    for order, disk in enumerate(spec.disks):
        prefix = DISK_BUSES[disk.bus]
        index = counters.get(prefix, 0)
        counters[prefix] = index + 1
        element = _sub(devices, "disk", type="volume", device="disk")
        _sub(element, "driver", name="qemu", type=disk.format, discard="unmap")
        _sub(element, "source", pool=disk.pool, volume=disk.volume)
        _sub(element, "target", dev=device_name(prefix, index), bus=disk.bus)
        if disk.serial:
            _sub(element, "serial", disk.serial)
        if disk.readonly:
            _sub(element, "readonly")
        if order == 0:
            _sub(element, "boot", order="1")
    if spec.scsi_controller or any(disk.bus == "scsi" for disk in spec.disks):
        _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    for nic in spec.nics:
        if nic.network.startswith(BRIDGE_PREFIX):
            element = _sub(devices, "interface", type="bridge")
            _sub(element, "source", bridge=nic.network[len(BRIDGE_PREFIX) :])
        else:
            element = _sub(devices, "interface", type="network")
            _sub(element, "source", network=nic.network)
        _sub(element, "mac", address=nic.mac)
        _sub(element, "model", type=nic.model)
        if nic.vlan is not None:
            _sub(_sub(element, "vlan"), "tag", id=str(nic.vlan))
        if not nic.connected:
            _sub(element, "link", state="down")
    serial = _sub(devices, "serial", type="pty")
    if spec.serial_log:
        _sub(serial, "log", file=spec.serial_log, append="off")
    _sub(serial, "target", port="0")
    _sub(_sub(devices, "console", type="pty"), "target", type="serial", port="0")
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(devices, "memballoon", model="virtio")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


# ---------------------------------------------------------------- reading a domain back


@dataclass(frozen=True)
class DomainFacts:
    name: str
    owned: bool
    owner: dict[str, str]
    files: tuple[str, ...]  # disk sources given as paths
    volumes: tuple[tuple[str, str], ...]  # disk sources given as (pool, volume)
    nics: tuple[tuple[str, str], ...]  # (network or bridge:NAME, mac)
    serial_log: str | None


def read_domain(xml: str) -> DomainFacts:
    root = ET.fromstring(xml)
    owner_element = root.find(f"metadata/{OWNER_TAG}")
    owner = (
        {tag.get("name", ""): tag.text or "" for tag in owner_element.findall(f"{{{OWNER_NS}}}tag")}
        if owner_element is not None
        else {}
    )
    files: list[str] = []
    volumes: list[tuple[str, str]] = []
    for disk in root.findall("devices/disk"):
        source = disk.find("source")
        if source is None:
            continue
        if source.get("pool") and source.get("volume"):
            volumes.append((source.get("pool", ""), source.get("volume", "")))
        elif source.get("file") or source.get("dev"):
            files.append(source.get("file") or source.get("dev") or "")
    nics: list[tuple[str, str]] = []
    for interface in root.findall("devices/interface"):
        source = interface.find("source")
        mac = interface.find("mac")
        if source is None or mac is None:
            continue
        network = source.get("network") or (BRIDGE_PREFIX + source.get("bridge", ""))
        nics.append((network, (mac.get("address") or "").lower()))
    log = root.find("devices/serial/log")
    return DomainFacts(
        name=root.findtext("name", ""),
        owned=owner_element is not None,
        owner=owner,
        files=tuple(files),
        volumes=tuple(volumes),
        nics=tuple(nics),
        serial_log=log.get("file") if log is not None else None,
    )
