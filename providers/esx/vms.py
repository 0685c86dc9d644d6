"""Virtual hardware for replica and appliance VMs: controllers, disks and NICs as vSphere device specs.

Disks go on SCSI (pvscsi or lsilogic-sas) or SATA controllers; a SCSI controller takes 15 disks (unit 7 is
the controller's own), so the 16th disk of a kind adds the next controller, up to four per kind (60
disks). NICs go on standard port groups (by network) or distributed ones (by switch UUID and port group
key); a MAC the playbook keeps is set as a manual MAC so vSphere never changes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from providers.base import DiskRef, NicRequest, ProviderError
from providers.macs import normalized_mac

from .inventory import PortGroupFacts

SCSI_TYPES = {
    "pvscsi": vim.vm.device.ParaVirtualSCSIController,
    "lsilogic-sas": vim.vm.device.VirtualLsiLogicSASController,
}
NIC_TYPES = {
    "vmxnet3": vim.vm.device.VirtualVmxnet3,
    "e1000e": vim.vm.device.VirtualE1000e,
    "e1000": vim.vm.device.VirtualE1000,
}
UNITS_PER_SCSI = 15  # units 0-15 without 7
UNITS_PER_SATA = 30
MAX_CONTROLLERS = 4


def controller_kind(requested: str | None, default_scsi: str) -> str:
    """The controller a disk asks for, as pvscsi, lsilogic-sas or sata."""
    if requested in (None, "scsi"):
        return default_scsi
    if requested in SCSI_TYPES or requested == "sata":
        return requested
    raise ProviderError(
        f"disk controller {requested} does not exist on ESX; use scsi (the provider's scsi_controller), "
        "pvscsi, lsilogic-sas or sata"
    )


def scsi_units(used: set[int]) -> list[int]:
    return [u for u in range(16) if u != 7 and u not in used]


@dataclass
class _Controller:
    kind: str
    key: int
    bus: int
    used: set[int]


def disk_device(path: str, size: int, controller_key: int, unit: int, key: int) -> vim.vm.device.VirtualDisk:
    """An existing VMDK as a device: no file operation, so vSphere neither creates nor deletes it."""
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=path, diskMode="persistent")
    return vim.vm.device.VirtualDisk(
        key=key, controllerKey=controller_key, unitNumber=unit, backing=backing, capacityInKB=size // 1024
    )


def add(device: Any) -> vim.vm.device.VirtualDeviceSpec:
    return vim.vm.device.VirtualDeviceSpec(
        operation=vim.vm.device.VirtualDeviceSpec.Operation.add, device=device
    )


def remove(device: Any) -> vim.vm.device.VirtualDeviceSpec:
    """Remove a device; for a disk, without fileOperation: the VMDK stays on the datastore."""
    return vim.vm.device.VirtualDeviceSpec(
        operation=vim.vm.device.VirtualDeviceSpec.Operation.remove, device=device
    )


def new_controller(kind: str, bus: int, key: int) -> Any:
    if kind == "sata":
        return vim.vm.device.VirtualAHCIController(key=key, busNumber=bus)
    return SCSI_TYPES[kind](
        key=key, busNumber=bus, sharedBus=vim.vm.device.VirtualSCSIController.Sharing.noSharing
    )


def disk_specs(
    vm_name: str, disks: tuple[DiskRef, ...], kinds: list[str]
) -> list[vim.vm.device.VirtualDeviceSpec]:
    """Controllers and disks for a new VM, in order: the first disk boots (SCSI 0:0 or SATA 0:0)."""
    specs: list[vim.vm.device.VirtualDeviceSpec] = []
    controllers: dict[str, list[_Controller]] = {}
    key = -100
    for disk, kind in zip(disks, kinds, strict=True):
        mine = controllers.setdefault(kind, [])
        limit = UNITS_PER_SATA if kind == "sata" else UNITS_PER_SCSI
        current = mine[-1] if mine and len(mine[-1].used) < limit else None
        if current is None:
            if len(mine) >= MAX_CONTROLLERS:
                raise ProviderError(
                    f"VM {vm_name}: {len(disks)} disks need more than {MAX_CONTROLLERS} {kind} controllers; "
                    "spread them over scsi and sata"
                )
            key -= 1
            current = _Controller(
                kind, key, len(mine) if kind == "sata" else _next_scsi_bus(controllers), set()
            )
            mine.append(current)
            specs.append(add(new_controller(kind, current.bus, current.key)))
        unit = min(set(range(limit)) - current.used) if kind == "sata" else scsi_units(current.used)[0]
        current.used.add(unit)
        key -= 1
        specs.append(add(disk_device(disk.id, disk.size, current.key, unit, key)))
    return specs


def _next_scsi_bus(controllers: dict[str, list[_Controller]]) -> int:
    """SCSI buses 0-3 are shared by pvscsi and lsilogic-sas controllers of one VM."""
    used = {c.bus for kind, group in controllers.items() if kind != "sata" for c in group}
    return min(set(range(MAX_CONTROLLERS)) - used) if len(used) < MAX_CONTROLLERS else MAX_CONTROLLERS


def nic_spec(
    vm_name: str, index: int, nic: NicRequest, group: tuple[Any, PortGroupFacts], switch_uuid: str | None
) -> vim.vm.device.VirtualDeviceSpec:
    network, facts = group
    model = nic.model or "vmxnet3"
    if model not in NIC_TYPES:
        raise ProviderError(
            f"VM {vm_name}: NIC type {model} does not exist on ESX; use vmxnet3 (default), e1000e or e1000"
        )
    if nic.vlan is not None and facts.vlan is not None and facts.vlan != nic.vlan:
        raise ProviderError(
            f"VM {vm_name}: port group {facts.name} carries VLAN {facts.vlan}, not the {nic.vlan} asked; "
            "map the NIC to a port group with that VLAN"
        )
    if facts.distributed:
        backing: Any = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(switchUuid=switch_uuid, portgroupKey=network.key)
        )
    else:
        backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=facts.name, network=network)
    card = NIC_TYPES[model](
        key=-10 - index,
        backing=backing,
        connectable=vim.vm.device.VirtualDevice.ConnectInfo(
            startConnected=nic.connected, connected=nic.connected, allowGuestControl=True
        ),
    )
    if nic.mac:
        card.addressType = "manual"
        card.macAddress = normalized_mac(vm_name, nic.mac, example="00:50:56:12:34:56")
    else:
        card.addressType = "generated"
    return add(card)


def disks_of(vm: Any) -> list[vim.vm.device.VirtualDisk]:
    devices = vm.config.hardware.device if vm.config else []
    return [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]


def backing_path(disk: vim.vm.device.VirtualDisk) -> str | None:
    return getattr(disk.backing, "fileName", None)


def scsi_slot(devices: Any, disk: vim.vm.device.VirtualDisk) -> str:
    """``bus:unit`` of a disk among a VM's ``devices``, as the guest sees it (``sata1:3`` for SATA)."""
    for device in devices:
        if device.key == disk.controllerKey:
            prefix = "sata" if isinstance(device, vim.vm.device.VirtualSATAController) else ""
            return f"{prefix}{device.busNumber}:{disk.unitNumber}"
    return f"?:{disk.unitNumber}"
