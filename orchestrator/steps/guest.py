"""System-state staging: make the replica boot as the same server on new hardware.

The edits are computed once, journaled as the step's output, applied to the replica's boot disk, and
re-applied after every later sync pass (a pass may carry the source's own copy of a staged file back).
The source is never edited: only the replica's disk, through its data-plane endpoint. Every change comes
with a log line saying why; what an operator must act on comes as findings (critical ones fail the step
after the edits are on the disk, because a replica that cannot find its root disk must not be cut over to).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.guest.changes import RECORDS_DIR
from orchestrator.guest.findings import Finding
from orchestrator.guest.fstab import DEFAULT_CONTROLLER, TargetDisk
from orchestrator.guest.hive import HiveError
from orchestrator.guest.linux import (
    GuestEdit,
    NicConfig,
    StagingPlan,
    StagingTarget,
    apply_edits,
    find_linux_root,
    plan_network,
    plan_system_state,
)
from orchestrator.guest.ntfs import NtfsError
from orchestrator.guest.windows import (
    SCRIPT_PATH,
    StagingResult,
    WindowsStagingError,
    find_windows_volume,
    revert_windows_staging,
    stage_windows,
)
from orchestrator.guest.windows_firstboot import WindowsNic, firstboot_script
from orchestrator.mirror.outside_edits import edited_outside_the_mirror
from orchestrator.steps.base import Step, StepContext, StepFailed
from orchestrator.steps.common import endpoints, facts, optional_output, replica_disks
from providers.base import SourceFacts

STAGING_KINDS = ("stage_system_state", "remap_nics")


def disk_paths(ctx: StepContext) -> list[str | None]:
    """Local paths of the replica's disks, None for those the data plane cannot reach from here."""
    return [e.path if e.kind == "file" and e.host == "local" else None for e in endpoints(ctx)]


def boot_disk_path(ctx: StepContext) -> str | None:
    """The local path of the replica's boot disk, if the data plane can reach it from here."""
    index = boot_disk_index(ctx)
    paths = disk_paths(ctx)
    return paths[index] if index < len(paths) else None


def _apply(ctx: StepContext, edits: list[dict[str, Any]]) -> list[str]:
    path = boot_disk_path(ctx)
    if not edits or path is None:
        return []
    with edited_outside_the_mirror(path):  # the next pass restores what this changed; staging then reapplies
        return apply_edits(path, [GuestEdit.from_json(e) for e in edits])


def _plan_and_apply(ctx: StepContext, planner: Callable[[], StagingPlan]) -> tuple[StagingPlan, list[str]]:
    """Plan and apply as one edit outside the mirror: planning may already replay the filesystem's journal."""
    path = boot_disk_path(ctx)
    assert path is not None  # callers checked with _linux_root_or_warn
    with edited_outside_the_mirror(path):
        plan = planner()
        return plan, apply_edits(path, plan.edits)


def _staged(ctx: StepContext) -> list[list[dict[str, Any]]]:
    return [o["edits"] for o in map(lambda k: optional_output(ctx, k), STAGING_KINDS) if o and o.get("edits")]


def _staged_windows(ctx: StepContext) -> dict[str, Any] | None:
    stage = optional_output(ctx, "stage_system_state") or {}
    return stage.get("windows")


def reapply_staged_state(ctx: StepContext) -> int:
    """After a sync pass: put back what staging wrote, if staging already ran."""
    for edits in _staged(ctx):
        _apply(ctx, edits)
    windows = _staged_windows(ctx)
    path = boot_disk_path(ctx)
    if windows and path is not None:
        _apply_windows(path, windows["script"])
    return staged_edit_count(ctx)


WINDOWS_EDITS = 3  # the first-boot script, the record of the originals, the SYSTEM hive


def staged_edit_count(ctx: StepContext) -> int:
    """How many staged edits the replica's boot disk carries (so differs from the source by design)."""
    return sum(len(edits) for edits in _staged(ctx)) + (WINDOWS_EDITS if _staged_windows(ctx) else 0)


def _apply_windows(path: str, script: str) -> StagingResult:
    """Install and register the first-boot script as one edit outside the mirror."""
    try:
        with edited_outside_the_mirror(path):
            return stage_windows(path, script)
    except (WindowsStagingError, NtfsError, HiveError) as exc:
        raise StepFailed(str(exc)) from exc


def _is_windows(ctx: StepContext, source: SourceFacts) -> bool:
    if source.os in ("windows", "linux"):
        return source.os == "windows"
    path = boot_disk_path(ctx)  # an image source says no OS: look for a Windows volume
    return path is not None and Path(path).is_file() and find_windows_volume(path) is not None


def _source_platform(ctx: StepContext, source: SourceFacts) -> str | None:
    """The hypervisor the source runs on, when it is another one than the target's (its tools must go)."""
    provider = ctx.playbook.providers.get(source.vm.provider) if source.vm else None
    platform = provider.type if provider is not None else None
    return platform if platform != platform_of(ctx) else None


def stage_windows_replica(ctx: StepContext, source: SourceFacts, hostname: str) -> dict[str, Any]:
    """The Windows replica's first-boot script (NIC map by MAC, source tools removed), staged to run once."""
    path = boot_disk_path(ctx)
    nics = nic_plan(ctx, source)
    output: dict[str, Any] = {"edits": [], "hostname": source.hostname, "log": [], "findings": []}
    if path is None:
        ctx.event(
            "system state not staged: the Windows replica's boot disk is not reachable from here",
            level="warning",
        )
        return output
    if hostname.lower() != source.hostname.lower():
        ctx.event(
            f"a Windows replica keeps the source's name {source.hostname} (a rename would change its "
            f"domain account); {hostname} is not staged",
            level="warning",
        )
    windows_nics = [WindowsNic(n["mac"], n["ip"], n["gateway"], tuple(n["dns"])) for n in nics]
    script = firstboot_script(windows_nics, source_platform=_source_platform(ctx, source))
    result = _apply_windows(path, script)
    for warning in result.warnings:
        ctx.event(warning, level="warning")
    ctx.event(
        f"system state of {source.hostname}: first-boot script {SCRIPT_PATH} staged on {result.volume}; "
        f"at first boot it configures {len(nics)} NIC(s) by MAC before the logon screen"
    )
    return {**output, "log": result.log, "windows": {"script": script, "nics": nics, "volume": result.volume}}


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


def platform_of(ctx: StepContext) -> str:
    """kvm, esx, hyperv or sim: the kind of hypervisor the replica will run on."""
    return ctx.playbook.providers[ctx.server.target.provider].type


def staging_target(ctx: StepContext) -> StagingTarget:
    target = ctx.server.target
    platform = platform_of(ctx)
    default = DEFAULT_CONTROLLER.get(platform, "virtio")
    if platform == "hyperv" and (target.generation == 1 or (target.generation is None and _bios(ctx))):
        default = "ide"  # a generation 1 VM boots from its IDE controller
    disks = tuple(
        TargetDisk(
            index,
            (target.disks[index].controller if index < len(target.disks) else None) or default,
            source,
        )
        for index, (source, _) in enumerate(replica_disks(ctx))
    )
    return StagingTarget(platform, disks, boot_disk_index(ctx), tuple(n.type for n in target.nics))


def _bios(ctx: StepContext) -> bool:
    firmware = ctx.server.target.firmware
    return (facts(ctx).firmware if firmware == "auto" else firmware) == "bios"


def staging_report(ctx: StepContext, plan: StagingPlan, applied: list[str], what: str) -> dict[str, Any]:
    """Journal-ready output; findings and a one-line summary as events."""
    for item in plan.findings:
        ctx.event(
            f"{item.rule_id}: {item.message}" + (f" (fix: {item.fix})" if item.fix else ""),
            level=item.severity,
        )
    counts = {s: sum(1 for f in plan.findings if f.severity == s) for s in ("critical", "warning", "info")}
    written = sum(1 for line in applied if ": unchanged " not in line and RECORDS_DIR not in line)
    summary = (
        f"{what}: {plan.changes} file(s) staged, {written} written now (originals kept in {RECORDS_DIR})"
    )
    summary += "".join(f"; {k}: {v}" for k, v in plan.facts.items() if isinstance(v, str))
    if any(counts.values()):
        summary += "; findings: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    ctx.event(summary, level="critical" if counts["critical"] else "info")
    return {
        "edits": [e.to_json() for e in plan.edits],
        "log": plan.log,
        "applied": applied,
        "findings": [f.to_json() for f in plan.findings],
        "facts": plan.facts,
    }


def fail_on_critical(findings: list[Finding]) -> None:
    critical = [f for f in findings if f.severity == "critical"]
    if critical:
        raise StepFailed(
            "; ".join(f"{f.rule_id}: {f.message}" + (f"; fix: {f.fix}" if f.fix else "") for f in critical)
        )


class StageSystemState(Step):
    kind = "stage_system_state"
    retryable = True
    description = "stage the system state on the replica: hostname, fstab, drivers, guest tools"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        source = facts(ctx)
        target = ctx.server.target
        hostname = target.hostname or (source.hostname if target.keep_hostname else ctx.server.name)
        if _is_windows(ctx, source):
            return stage_windows_replica(ctx, source, hostname)
        if not _linux_root_or_warn(ctx, source, "system state"):
            return {"edits": [], "hostname": hostname, "log": [], "findings": []}
        target = staging_target(ctx)
        plan, applied = _plan_and_apply(ctx, lambda: plan_system_state(disk_paths(ctx), target, hostname))
        output = {**staging_report(ctx, plan, applied, f"system state of {hostname}"), "hostname": hostname}
        fail_on_critical(plan.findings)
        return output

    def undo(self, ctx: StepContext) -> None:
        """Linux edits live on the replica disk, which create_disks' undo removes; a Windows replica's
        first-boot registration is reverted from the record staging left beside the script."""
        try:
            path = boot_disk_path(ctx)
        except KeyError:
            return
        if path is None or not Path(path).is_file() or find_windows_volume(path) is None:
            return
        with edited_outside_the_mirror(path):
            for line in revert_windows_staging(path):
                ctx.event(f"unstaged {line}")


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
                "source_name": src.name if src else None,
            }
        )
    return plan


def nic_configs(nics: list[dict[str, Any]]) -> list[NicConfig]:
    return [
        NicConfig(
            n["index"],
            n["mac"],
            n["ip"],
            n["gateway"],
            tuple(n["dns"]),
            source_name=n.get("source_name"),
            source_mac=n.get("source_mac"),
        )
        for n in nics
    ]


class RemapNics(Step):
    kind = "remap_nics"
    retryable = True
    description = "map source NICs to target networks; write their addresses and pin names to the new MACs"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        source = facts(ctx)
        stage = optional_output(ctx, "stage_system_state") or {}
        if stage.get("windows"):
            ctx.event(
                f"network of {source.hostname}: set at first boot by the first-boot script {SCRIPT_PATH}"
            )
            return {"nics": stage["windows"]["nics"], "edits": []}
        nics = nic_plan(ctx, source)
        hostname = stage.get("hostname") or source.hostname
        if not nics or not _linux_root_or_warn(ctx, source, "network configuration"):
            return {"nics": nics, "edits": []}
        configs = nic_configs(nics)
        plan, applied = _plan_and_apply(
            ctx, lambda: plan_network(disk_paths(ctx), boot_disk_index(ctx), hostname, configs)
        )
        output = {**staging_report(ctx, plan, applied, f"network of {hostname}"), "nics": nics}
        fail_on_critical(plan.findings)
        return output

    def undo(self, ctx: StepContext) -> None:
        """Edits live on the replica disk, which create_disks' undo removes."""
