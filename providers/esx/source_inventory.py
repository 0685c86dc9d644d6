"""A source VM as vCenter describes it: hardware, guest identity from VMware Tools, snapshots and CBT.

Read in one RetrievePropertiesEx of the VM's config, guest and snapshot properties, so discovering a source
costs the same few round trips however many disks it has. Disks are named by their slot on the VM
(``scsi0:1``, ``sata0:0``, ``nvme0:0``, ``ide1:0``): the name vmx files and the vSphere client use, stable
across reboots and the same whatever the guest calls the device. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from providers.base import SourceDisk, SourceFacts, SourceNic, SourceVm, SourceVmDisk
from providers.macs import normalized_mac

from .connection import Connection

VM_PATHS = [
    "name",
    "config.firmware",
    "config.guestId",
    "config.guestFullName",
    "config.changeTrackingEnabled",
    "config.hardware.device",
    "config.files.vmPathName",
    "runtime.powerState",
    "guest.hostName",
    "guest.ipAddress",
    "guest.net",
    "guest.toolsRunningStatus",
    "guest.guestFamily",
    "snapshot",
]

_CONTROLLER_PREFIXES: tuple[tuple[type, str], ...] = (
    (vim.vm.device.VirtualSCSIController, "scsi"),
    (vim.vm.device.VirtualSATAController, "sata"),
    (vim.vm.device.VirtualNVMEController, "nvme"),
    (vim.vm.device.VirtualIDEController, "ide"),
)


@dataclass(frozen=True)
class EsxDisk:
    slot: str  # scsi0:1
    key: int  # the device key QueryChangedDiskAreas takes
    label: str
    controller: str  # ParaVirtualSCSIController, VirtualAHCIController, ...
    capacity: int
    file: str | None
    backing: str  # flat | sparse | rdm_physical | rdm_virtual | other
    provisioning: str  # thin | thick | eager_zeroed | none
    mode: str
    change_id: str | None  # the backing's CBT change id, when CBT has one

    @property
    def independent(self) -> bool:
        return self.mode.startswith("independent")

    @property
    def rdm(self) -> bool:
        return self.backing.startswith("rdm")

    @property
    def trackable(self) -> bool:
        """CBT never covers a physical-mode RDM: its writes bypass the VMkernel's tracking filter."""
        return self.backing != "rdm_physical"


@dataclass(frozen=True)
class EsxNic:
    label: str
    key: int
    mac: str
    network: str | None  # port group name (distributed: its key, when the name is unknown)
    type: str  # VirtualVmxnet3, VirtualE1000e, ...
    connected: bool
    addresses: tuple[str, ...]  # CIDR strings from VMware Tools


@dataclass(frozen=True)
class EsxSnapshot:
    name: str
    moref: str
    quiesced: bool
    created: str


@dataclass(frozen=True)
class EsxSourceVm:
    """Everything discovery knows about one source VM."""

    name: str
    moref: str
    firmware: str  # bios | efi
    guest_id: str
    guest_name: str
    power_state: str
    tools: str
    hostname: str | None
    guest_ip: str | None
    change_tracking: bool
    vmx: str
    disks: tuple[EsxDisk, ...]
    nics: tuple[EsxNic, ...]
    snapshots: tuple[EsxSnapshot, ...]

    def disk(self, slot: str) -> EsxDisk | None:
        return next((d for d in self.disks if d.slot == slot), None)

    def facts(self, provider: str) -> SourceFacts:
        """The VM in the project's source discovery types: sizes for the disk map, MACs and addresses for
        the NIC map, firmware for the replica, and the ESX specifics validation checks."""
        os_kind = _os_of(self.guest_id)
        return SourceFacts(
            hostname=self.hostname or self.name,
            os=os_kind,
            os_detail=self.guest_name or self.guest_id,
            firmware="uefi" if self.firmware == "efi" else "bios",
            disks=tuple(SourceDisk(d.slot, d.capacity) for d in self.disks),
            nics=tuple(SourceNic(n.label, n.mac, n.addresses) for n in self.nics),
            vm=SourceVm(
                provider=provider,
                vm=self.name,
                guest_id=self.guest_id,
                power_state=self.power_state,
                tools=self.tools,
                change_tracking=self.change_tracking,
                snapshots=tuple(s.name for s in self.snapshots),
                disks=tuple(
                    SourceVmDisk(
                        disk=d.slot,
                        file=d.file,
                        backing=d.backing,
                        provisioning=d.provisioning,
                        mode=d.mode,
                        change_tracking=self.change_tracking and d.trackable,
                    )
                    for d in self.disks
                ),
            ),
        )


def _os_of(guest_id: str) -> str:
    lowered = guest_id.lower()
    if lowered.startswith("win"):
        return "windows"
    if lowered in ("otherguest", "otherguest64", ""):
        return "unknown"
    return "linux"


def read_source_vm(conn: Connection, vm: vim.VirtualMachine) -> EsxSourceVm:
    """The VM's description in one property read (``vm`` is a moref; its name is read too)."""
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=vm, skip=False)],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=VM_PATHS)],
    )

    def read() -> dict[str, Any]:
        found = conn.content.propertyCollector.RetrieveContents([spec])
        return {p.name: p.val for item in found or () for p in item.propSet or ()}

    props = conn.call(read, f"reading VM {vm._moId}")
    return describe(vm._moId, props)


def describe(moref: str, props: dict[str, Any]) -> EsxSourceVm:
    """The description from the property values (split out so it reads pyVmomi objects, not the wire)."""
    devices = list(props.get("config.hardware.device") or ())
    by_key = {d.key: d for d in devices}
    guest_nets = list(props.get("guest.net") or ())
    return EsxSourceVm(
        name=props.get("name", moref),
        moref=moref,
        firmware=str(props.get("config.firmware") or "bios"),
        guest_id=str(props.get("config.guestId") or ""),
        guest_name=str(props.get("config.guestFullName") or ""),
        power_state=str(props.get("runtime.powerState") or ""),
        tools=str(props.get("guest.toolsRunningStatus") or ""),
        hostname=props.get("guest.hostName") or None,
        guest_ip=props.get("guest.ipAddress") or None,
        change_tracking=bool(props.get("config.changeTrackingEnabled")),
        vmx=str(props.get("config.files.vmPathName") or ""),
        disks=tuple(
            sorted(
                (_disk(d, by_key) for d in devices if isinstance(d, vim.vm.device.VirtualDisk)),
                key=_slot_order,
            )
        ),
        nics=tuple(_nic(d, guest_nets) for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)),
        snapshots=tuple(_snapshots(props.get("snapshot"))),
    )


def _slot_order(disk: EsxDisk) -> tuple[int, int, int]:
    kind, _, rest = disk.slot.partition(":")
    prefix = kind.rstrip("0123456789")
    bus = kind[len(prefix) :]
    order = ("scsi", "sata", "nvme", "ide", "?")
    return (order.index(prefix) if prefix in order else 9, int(bus or 0), int(rest or 0))


def _disk(disk: Any, by_key: dict[int, Any]) -> EsxDisk:
    controller = by_key.get(disk.controllerKey)
    prefix = next((p for kind, p in _CONTROLLER_PREFIXES if isinstance(controller, kind)), "?")
    bus = getattr(controller, "busNumber", 0) if controller is not None else 0
    backing = disk.backing
    capacity = int(getattr(disk, "capacityInBytes", 0) or 0) or int(disk.capacityInKB or 0) * 1024
    kind, provisioning = "other", "none"
    if isinstance(backing, vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo):
        kind = "rdm_physical" if backing.compatibilityMode == "physicalMode" else "rdm_virtual"
    elif isinstance(backing, vim.vm.device.VirtualDisk.FlatVer2BackingInfo):
        kind = "flat"
        if backing.thinProvisioned:
            provisioning = "thin"
        else:
            provisioning = "eager_zeroed" if backing.eagerlyScrub else "thick"
    elif isinstance(
        backing,
        (vim.vm.device.VirtualDisk.SparseVer2BackingInfo, vim.vm.device.VirtualDisk.SeSparseBackingInfo),
    ):
        kind, provisioning = "sparse", "thin"
    label = disk.deviceInfo.label if disk.deviceInfo else f"disk {disk.key}"
    return EsxDisk(
        slot=f"{prefix}{bus}:{disk.unitNumber}",
        key=int(disk.key),
        label=label,
        controller=type(controller).__name__.rsplit(".", 1)[-1] if controller is not None else "",
        capacity=capacity,
        file=getattr(backing, "fileName", None) or None,
        backing=kind,
        provisioning=provisioning,
        mode=str(getattr(backing, "diskMode", "") or "persistent"),
        change_id=getattr(backing, "changeId", None) or None,
    )


def _nic(card: Any, guest_nets: list[Any]) -> EsxNic:
    backing = card.backing
    network = getattr(backing, "deviceName", None)
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        network = backing.port.portgroupKey if backing.port else None
    mac = normalized_mac("source VM", card.macAddress) if card.macAddress else ""
    addresses: list[str] = []
    for net in guest_nets:
        same_card = net.deviceConfigId == card.key
        same_mac = bool(net.macAddress) and net.macAddress.lower() == mac
        if not (same_card or same_mac):
            continue
        network = network or net.network
        prefixes = {
            a.ipAddress: a.prefixLength
            for a in (getattr(getattr(net, "ipConfig", None), "ipAddress", None) or ())
        }
        for ip in net.ipAddress or ():
            length = prefixes.get(ip)
            if length is None:
                length = 128 if ":" in ip else 32  # Tools gave the address without its prefix
            addresses.append(f"{ip}/{length}")
    connectable = card.connectable
    return EsxNic(
        label=card.deviceInfo.label if card.deviceInfo else f"nic {card.key}",
        key=int(card.key),
        mac=mac,
        network=network,
        type=type(card).__name__.rsplit(".", 1)[-1],
        connected=bool(connectable and (connectable.connected or connectable.startConnected)),
        addresses=tuple(dict.fromkeys(addresses)),
    )


def _snapshots(info: Any) -> list[EsxSnapshot]:
    found: list[EsxSnapshot] = []

    def walk(trees: Any) -> None:
        for tree in trees or ():
            found.append(
                EsxSnapshot(
                    name=tree.name,
                    moref=tree.snapshot._moId,
                    quiesced=bool(tree.quiesced),
                    created=tree.createTime.isoformat() if tree.createTime else "",
                )
            )
            walk(tree.childSnapshotList)

    walk(getattr(info, "rootSnapshotList", None))
    return found
