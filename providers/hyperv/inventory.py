"""What a Hyper-V host holds, read in one pass of fixed scripts (scripts.py) and turned into plain values.

Windows PowerShell 5.1's ConvertTo-Json prints enums as numbers; the tables below give their names
(Microsoft.HyperV.PowerShell's VMState, ControllerType, VhdType, VMSwitchType, VMNetworkAdapterVlanMode,
VMHeartbeatStatus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.transport.winrm import WinRM

from . import scripts

VM_STATE = {2: "Running", 3: "Off", 4: "Stopping", 6: "Saved", 9: "Paused", 10: "Starting", 32773: "Saving"}
CONTROLLER_TYPE = {0: "IDE", 1: "SCSI", 2: "PMEM"}
VHD_TYPE = {2: "Fixed", 3: "Dynamic", 4: "Differencing"}
SWITCH_TYPE = {0: "Private", 1: "Internal", 2: "External"}
VLAN_MODE = {0: "Untagged", 1: "Access", 2: "Trunk", 3: "Private"}
HEARTBEAT = {
    0: "Unknown",
    1: "Disabled",
    2: "NoContact",
    3: "Error",
    4: "LostCommunication",
    5: "OkApplicationsUnknown",
    6: "OkApplicationsHealthy",
    7: "OkApplicationsCritical",
    8: "Paused",
}
OWNER_PREFIX = "hvmigrate:"


def listed(value: Any) -> list[dict[str, Any]]:
    """ConvertTo-Json prints nothing for no object, an object for one and an array for more."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def named(table: dict[int, str], value: Any) -> str:
    return table.get(value, str(value)) if isinstance(value, int) else str(value)


@dataclass(frozen=True)
class Volume:
    letter: str
    size: int
    free: int


@dataclass(frozen=True)
class Switch:
    name: str
    type: str


@dataclass(frozen=True)
class Disk:
    controller: str
    number: int
    location: int
    path: str
    vhd_type: str | None


@dataclass(frozen=True)
class Nic:
    name: str
    switch: str | None
    mac: str
    static_mac: bool
    legacy: bool
    vlan: int | None


@dataclass(frozen=True)
class VmFacts:
    name: str
    generation: int
    processors: int
    memory: int
    state: str
    path: str
    notes: str
    disks: tuple[Disk, ...]
    nics: tuple[Nic, ...]
    checkpoints: tuple[str, ...]

    @property
    def owned(self) -> bool:
        return self.notes.startswith(OWNER_PREFIX)


@dataclass(frozen=True)
class HostFacts:
    name: str
    processors: int
    memory: int
    vhd_path: str
    vm_path: str
    volumes: tuple[Volume, ...]
    switches: tuple[Switch, ...]
    vms: tuple[VmFacts, ...]

    def vm(self, name: str) -> VmFacts | None:
        return next((vm for vm in self.vms if vm.name.lower() == name.lower()), None)


def read_vms(winrm: WinRM) -> list[dict[str, Any]]:
    return listed(winrm.run(scripts.VMS))


def read_host(winrm: WinRM) -> HostFacts:
    found = winrm.run(scripts.INVENTORY) or {}
    host = found.get("Host") or {}
    volumes = tuple(
        Volume(_letter(v["DriveLetter"]), int(v["Size"]), int(v["SizeRemaining"]))
        for v in listed(found.get("Volumes"))
        if v.get("DriveLetter")
    )
    switches = tuple(
        Switch(s["Name"], named(SWITCH_TYPE, s["SwitchType"])) for s in listed(found.get("Switches"))
    )
    vhd_types = {d["Path"].lower(): named(VHD_TYPE, d["VhdType"]) for d in listed(found.get("Vhds"))}
    disks: dict[str, list[Disk]] = {}
    for d in listed(found.get("Disks")):
        disks.setdefault(d["VMName"], []).append(
            Disk(
                named(CONTROLLER_TYPE, d["ControllerType"]),
                int(d["ControllerNumber"]),
                int(d["ControllerLocation"]),
                d["Path"],
                vhd_types.get((d["Path"] or "").lower()),
            )
        )
    nics: dict[str, list[Nic]] = {}
    for n in listed(found.get("Nics")):
        vlan = n.get("VlanSetting") or {}
        mode = named(VLAN_MODE, vlan.get("OperationMode", 0)) if isinstance(vlan, dict) else "Untagged"
        nics.setdefault(n["VMName"], []).append(
            Nic(
                n["Name"],
                n.get("SwitchName"),
                _mac(n["MacAddress"]),
                not n.get("DynamicMacAddressEnabled", True),
                bool(n.get("IsLegacy")),
                int(vlan["AccessVlanId"]) if mode == "Access" else None,
            )
        )
    checkpoints: dict[str, list[str]] = {}
    for c in listed(found.get("Checkpoints")):
        checkpoints.setdefault(c["VMName"], []).append(c["Name"])
    vms = tuple(
        VmFacts(
            v["Name"],
            int(v["Generation"]),
            int(v["ProcessorCount"]),
            int(v["MemoryStartup"]),
            named(VM_STATE, v["State"]),
            v.get("Path") or "",
            v.get("Notes") or "",
            tuple(disks.get(v["Name"], ())),
            tuple(nics.get(v["Name"], ())),
            tuple(checkpoints.get(v["Name"], ())),
        )
        for v in listed(found.get("VMs"))
    )
    return HostFacts(
        name=host.get("ComputerName", ""),
        processors=int(host.get("LogicalProcessorCount") or 0),
        memory=int(host.get("MemoryCapacity") or 0),
        vhd_path=host.get("VirtualHardDiskPath") or "",
        vm_path=host.get("VirtualMachinePath") or "",
        volumes=volumes,
        switches=switches,
        vms=vms,
    )


def _letter(value: Any) -> str:
    """A [char] prints as a one-letter string or, in some PowerShell versions, its code."""
    return (chr(value) if isinstance(value, int) else str(value)).upper()


def _mac(value: str) -> str:
    digits = value.replace("-", "").replace(":", "").lower()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))
