"""System-state staging: make the replica boot as the same server on new hardware.

The edits are computed once, journaled as the step's output, applied to the replica's boot disk, and
re-applied after every later sync pass (a pass may carry the source's own copy of a staged file back).
The source is never edited: only the replica's disk, through its data-plane endpoint.
"""

from __future__ import annotations

import hashlib
from typing import Any

from orchestrator.guest.linux import GuestEdit, apply_edits, find_linux_root, plan_network_edits
from orchestrator.steps.base import Step, StepContext
from orchestrator.steps.common import endpoints, facts, optional_output
from providers.base import SourceFacts

STAGING_KINDS = ("stage_system_state", "remap_nics")


def boot_disk_path(ctx: StepContext) -> str | None:
    """The local path of the replica's boot disk, if the data plane can reach it from here."""
    index = boot_disk_index(ctx)
    eps = endpoints(ctx)
    if index >= len(eps) or eps[index].kind != "file" or eps[index].host != "local":
        return None
    return eps[index].path


def _apply(ctx: StepContext, edits: list[dict[str, Any]]) -> list[str]:
    path = boot_disk_path(ctx)
    if not edits or path is None:
        return []
    return apply_edits(path, [GuestEdit.from_json(e) for e in edits])


def _staged(ctx: StepContext) -> list[list[dict[str, Any]]]:
    return [o["edits"] for o in map(lambda k: optional_output(ctx, k), STAGING_KINDS) if o and o.get("edits")]


def reapply_staged_state(ctx: StepContext) -> int:
    """After a sync pass: put back what staging wrote, if staging already ran."""
    for edits in _staged(ctx):
        _apply(ctx, edits)
    return staged_edit_count(ctx)


def staged_edit_count(ctx: StepContext) -> int:
    """How many staged edits the replica's boot disk carries (so differs from the source by design)."""
    return sum(len(edits) for edits in _staged(ctx))


def boot_disk_index(ctx: StepContext) -> int:
    return next((i for i, d in enumerate(ctx.server.target.disks) if d.boot), 0)


def _linux_root_or_warn(ctx: StepContext, source: SourceFacts, what: str) -> bool:
    path = boot_disk_path(ctx)
    if source.os != "linux" or path is None or find_linux_root(path) is None:
        ctx.event(
            f"{what} not staged: no Linux root filesystem reachable on the replica's boot disk "
            f"(source os: {source.os})",
            level="warning",
        )
        return False
    return True


class StageSystemState(Step):
    kind = "stage_system_state"
    retryable = True
    description = "stage the system state on the replica: hostname, and what the new hardware needs"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        source = facts(ctx)
        target = ctx.server.target
        hostname = target.hostname or (source.hostname if target.keep_hostname else ctx.server.name)
        if not _linux_root_or_warn(ctx, source, "system state"):
            return {"edits": [], "hostname": hostname}
        edits = [GuestEdit("/etc/hostname", hostname + "\n").to_json()]
        log = _apply(ctx, edits)
        for line in log:
            ctx.event(line)
        return {"edits": edits, "hostname": hostname, "log": log}

    def undo(self, ctx: StepContext) -> None:
        """Edits live on the replica disk, which create_disks' undo removes."""


def mac_for(server: str, index: int) -> str:
    """A stable locally administered MAC for 'mac: new', known before the VM exists so staging can pin it."""
    digest = hashlib.sha256(f"{server}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def nic_plan(ctx: StepContext, source: SourceFacts) -> list[dict[str, Any]]:
    """Target NICs with their final MAC and address, matched to source NICs by MAC or position."""
    plan = []
    by_mac = {n.mac.lower(): n for n in source.nics}
    for index, nic in enumerate(ctx.server.target.nics):
        src = (
            by_mac.get(nic.source_mac or "")
            if nic.source_mac
            else (source.nics[index] if index < len(source.nics) else None)
        )
        if nic.mac == "keep":
            mac = src.mac.lower() if src else (nic.source_mac or mac_for(ctx.server.name, index))
        elif nic.mac == "new":
            mac = mac_for(ctx.server.name, index)
        else:
            mac = nic.mac
        ip: str = str(nic.ip)
        if nic.ip == "keep":
            ip = src.addresses[0] if src and src.addresses else "dhcp"
            if ip == "dhcp":
                ctx.event(
                    f"nic{index}: no source address known to keep; the replica will use DHCP", level="warning"
                )
        plan.append(
            {
                "index": index,
                "network": nic.network,
                "mac": mac,
                "ip": ip,
                "gateway": str(nic.gateway) if nic.gateway else None,
                "dns": [str(d) for d in nic.dns],
                "model": nic.type,
                "vlan": nic.vlan,
                "source_mac": src.mac if src else nic.source_mac,
            }
        )
    return plan


class RemapNics(Step):
    kind = "remap_nics"
    retryable = True
    description = "map source NICs to target networks; write their addresses and pin names to the new MACs"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        source = facts(ctx)
        nics = nic_plan(ctx, source)
        stage = optional_output(ctx, "stage_system_state") or {}
        hostname = stage.get("hostname") or source.hostname
        if not nics or not _linux_root_or_warn(ctx, source, "network configuration"):
            return {"nics": nics, "edits": []}
        planned = plan_network_edits(hostname, [(n["mac"], n["ip"], n["gateway"], n["dns"]) for n in nics])
        edits = [e.to_json() for e in planned]
        for line in _apply(ctx, edits):
            ctx.event(line)
        return {"nics": nics, "edits": edits}

    def undo(self, ctx: StepContext) -> None:
        """Edits live on the replica disk, which create_disks' undo removes."""
