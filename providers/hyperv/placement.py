"""Where each disk and NIC of a replica goes on Hyper-V, decided before anything is created.

Generation 1 boots BIOS from IDE: the boot disk (the first) must be on IDE; IDE has 2 controllers x 2
locations. Generation 2 boots UEFI from SCSI and has no IDE. SCSI has 4 controllers x 64 locations. NICs
are synthetic (8 at most) or legacy (4 at most, generation 1 only), each on a virtual switch that exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from providers.base import ProviderError, VmRequest

IDE_SLOTS = ((0, 0), (0, 1), (1, 0), (1, 1))
SCSI_CONTROLLERS = 4
SCSI_LOCATIONS = 64
MAX_SYNTHETIC = 8
MAX_LEGACY = 4
NIC_MODELS = ("synthetic", "legacy")


@dataclass(frozen=True)
class NicPlan:
    switch: str | None
    mac: str | None  # 12 hex digits, or None for a dynamic MAC
    legacy: bool
    vlan: int | None


def place_disks(request: VmRequest, generation: int) -> list[tuple[str, int, int]]:
    """(controller type, controller number, location) per disk, in the request's order."""
    given = list(request.disk_controllers)
    ide: list[int] = []
    scsi: list[int] = []
    for index in range(len(request.disks)):
        wanted = (given[index] if index < len(given) else None) or (
            "ide" if generation == 1 and index == 0 else "scsi"
        )
        if wanted not in ("ide", "scsi"):
            raise ProviderError(
                f"VM {request.name}: disk {index} asks for controller {wanted}; Hyper-V has ide and scsi"
            )
        if wanted == "ide" and generation == 2:
            raise ProviderError(
                f"VM {request.name}: generation 2 has no IDE controller; put disk {index} on scsi"
            )
        if index == 0 and generation == 1 and wanted != "ide":
            raise ProviderError(
                f"VM {request.name}: generation 1 boots only from IDE; put the boot disk on ide "
                "(validation rule hyperv.gen1_boot_not_ide)"
            )
        (ide if wanted == "ide" else scsi).append(index)
    if len(ide) > len(IDE_SLOTS):
        raise ProviderError(
            f"VM {request.name}: {len(ide)} disks on IDE; generation 1 has room for {len(IDE_SLOTS)}"
        )
    if len(scsi) > SCSI_CONTROLLERS * SCSI_LOCATIONS:
        raise ProviderError(
            f"VM {request.name}: {len(scsi)} disks on SCSI; Hyper-V has room for "
            f"{SCSI_CONTROLLERS * SCSI_LOCATIONS}"
        )
    placed: dict[int, tuple[str, int, int]] = {}
    for slot, index in enumerate(ide):
        placed[index] = ("IDE", *IDE_SLOTS[slot])
    for slot, index in enumerate(scsi):
        placed[index] = ("SCSI", slot // SCSI_LOCATIONS, slot % SCSI_LOCATIONS)
    return [placed[i] for i in range(len(request.disks))]


def place_nics(request: VmRequest, generation: int, switches: set[str]) -> list[NicPlan]:
    plans = []
    for index, nic in enumerate(request.nics):
        model = nic.model or "synthetic"
        if model not in NIC_MODELS:
            raise ProviderError(
                f"VM {request.name}: NIC {index} is {model}; Hyper-V NICs are synthetic or legacy"
            )
        if model == "legacy" and generation == 2:
            raise ProviderError(
                f"VM {request.name}: generation 2 has no legacy network adapter; "
                f"use synthetic for NIC {index}"
            )
        if nic.connected and nic.network not in switches:
            known = ", ".join(sorted(switches)) or "none"
            raise ProviderError(
                f"virtual switch {nic.network!r} does not exist on the Hyper-V host (switches: {known}); "
                "create it or map the NIC to one of these"
            )
        mac = nic.mac.replace(":", "").replace("-", "").upper() if nic.mac else None
        plans.append(NicPlan(nic.network if nic.connected else None, mac, model == "legacy", nic.vlan))
    for legacy, limit in ((False, MAX_SYNTHETIC), (True, MAX_LEGACY)):
        count = sum(1 for plan in plans if plan.legacy == legacy)
        if count > limit:
            raise ProviderError(
                f"VM {request.name} asks for {count} {'legacy' if legacy else 'synthetic'} NICs; Hyper-V "
                f"allows {limit}"
            )
    return plans
