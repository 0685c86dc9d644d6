"""The Hyper-V recovery appliance (``appliance: shared|dedicated``): a Linux VM the replica VHDX files are
hot-added to on SCSI, with the agent's writer running inside it over SSH, as on ESX and KVM.

Which VM: the one named by ``appliance`` in the provider config (the administrator's: used as it is, never
removed), else one the tool makes from ``appliance_template``, a VHDX it copies beside the replica disks
as the appliance's system disk: generation 2, its system disk on SCSI 0:0, four SCSI controllers added
while it is off (Hyper-V adds none to a running VM), one NIC on ``appliance_switch``; its Notes carry
``hvmigrate:...;role=appliance`` and release removes the VM and that copy, nothing else.

Hyper-V's rules for a hot-add: a running VM takes a VHDX on SCSI, never on IDE; one VHDX is attached to
one VM at a time, and not while it is mounted on the host (``appliance: host``). The location is the
first free one, controller by controller, so the appliance's own disks are never displaced.

Reaching it: the address its KVP daemon (hyperv-daemons) reports, Get-VMNetworkAdapter's IPAddresses
(IPv4 first), logged in to with ``appliance_login``, host key always checked (providers/appliance_guest.py,
shared with ESX). Inside, a disk at ``controller:location`` is the storvsc SCSI host of that controller,
LUN = location. Test beds: the WinRM stand-in has no guest; the test sshd plays it at the address the
stand-in reports, and ``guest_devices`` maps each ``controller:location`` to the VHDX's raw file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from providers.appliance_guest import ApplianceAccess
from providers.base import ProviderError

from . import scripts
from .inventory import listed, named

if TYPE_CHECKING:
    from .provider import HypervProvider

SCSI_CONTROLLERS = 4
SCSI_LOCATIONS = 64
MAX_DISKS_PER_APPLIANCE = SCSI_LOCATIONS - 1  # one controller, location 0 holding the appliance's own disk
ROLE = "role=appliance"
CONTROLLER_TYPE = {0: "IDE", 1: "SCSI", 2: "PMEM"}  # ControllerType as ConvertTo-Json prints it


class HypervApplianceAccess(ApplianceAccess):
    """The shared SSH access, at the address the appliance's KVP daemon reports."""

    guest_tools = "Hyper-V integration services (the KVP daemon of hyperv-daemons)"
    p: HypervProvider

    def guest_address(self, name: str) -> str | None:
        nics = listed(
            self.p._run(scripts.VM_ADDRESSES, {"name": name}, f"reading the addresses of appliance {name}")
        )
        addresses = [a for nic in nics for a in (nic.get("IPAddresses") or ())]
        return next((a for a in addresses if ":" not in a), addresses[0] if addresses else None)

    def slot_args(self, slot: str) -> dict[str, Any]:
        controller, _, location = slot.partition(":")
        return {"kind": "storvsc", "bus": int(controller), "unit": int(location)}


def free_scsi_slot(drives: list[dict[str, Any]], controllers: int) -> tuple[int, int] | None:
    """The first free SCSI location of the appliance's present controllers, controller by controller."""
    taken = {
        (int(d["ControllerNumber"]), int(d["ControllerLocation"]))
        for d in drives
        if named(CONTROLLER_TYPE, d.get("ControllerType")) == "SCSI"
    }
    for number in range(controllers):
        for location in range(SCSI_LOCATIONS):
            if (number, location) not in taken:
                return number, location
    return None


def drive_at(drives: list[dict[str, Any]], path: str) -> dict[str, Any] | None:
    return next((d for d in drives if (d.get("Path") or "").lower() == path.lower()), None)


def slot_of(drive: dict[str, Any]) -> str:
    return f"{int(drive['ControllerNumber'])}:{int(drive['ControllerLocation'])}"


def check_hot_add(name: str, vhd: dict[str, Any], path: str) -> None:
    """Hyper-V's refusals, said before the host says them less clearly."""
    if vhd.get("DiskNumber") is not None:
        raise ProviderError(
            f"{path} is mounted on the Hyper-V host (appliance: host); a mounted VHDX cannot be attached to "
            f"appliance {name}: detach it there (migrate undo, or Dismount-VHD) first"
        )
    if vhd.get("Attached"):
        raise ProviderError(
            f"{path} is attached to another VM; one VHDX is attached to one VM at a time: remove it from "
            f"that VM (Remove-VMHardDiskDrive) before attaching it to appliance {name}"
        )
