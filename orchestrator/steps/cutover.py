"""The cutover gate and what is done to the source at cutover: quiesce, then (if the playbook says so) stop.

These are the only steps that act on the source, and they only ever pause or stop it; the source's disks
are never written.
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator.playbook.units import format_duration
from orchestrator.steps.base import Step, StepContext, StepFailed
from orchestrator.steps.common import optional_output
from providers.base import LiveMount, ProviderError, ReportsLiveMounts, TransientProviderError

CONSISTENT_QUIESCE = "configure source.quiesce (fsfreeze, lvm_snapshot or services) or source.quiesce_command"


class CutoverGate(Step):
    kind = "cutover_gate"
    description = "readiness check before anything disruptive: replica in sync and recent enough"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        name = ctx.server.name
        last = ctx.load_checkpoint(f"{name}/last_pass")
        if last is None:
            raise StepFailed(f"{name} has no completed mirror pass; run `migrate execute` first")
        age = time.time() - last["finished_at"]
        max_lag = ctx.playbook.sync_for(ctx.server).max_lag
        forced = ctx.load_checkpoint(f"{name}/force_cutover")
        if forced:
            ctx.checkpoint(f"{name}/force_cutover", None)  # one forced cutover, not a standing exemption
            ctx.event(
                f"readiness check overridden with --force (last pass {format_duration(age)} ago)",
                level="warning",
            )
        elif age > max_lag:
            raise StepFailed(
                f"last sync of {ctx.server.name} finished {format_duration(age)} ago, more than "
                f"sync.max_lag ({format_duration(max_lag)}); run `migrate sync` first"
            )
        ctx.event(f"gate open: last pass ({last['mode']}) {format_duration(age)} ago")
        return {"opened_at": time.time(), "last_pass_age": age}

    def undo(self, ctx: StepContext) -> None:
        """Opening the gate changes nothing."""


class QuiesceSource(Step):
    kind = "quiesce_source"
    description = (
        "pause writes on the source (fsfreeze, LVM snapshot, services, quiesce_command) for a consistent "
        "final pass; without quiesce, warn about or refuse filesystems mounted read-write"
    )

    def run(self, ctx: StepContext) -> dict[str, Any]:
        live = check_unquiesced_writes(ctx)  # refuses before anything is paused or stopped
        state = ctx.source().quiesce()
        # Quiesced now: a final pass that failed (and thawed) before an undo must not quiesce a second time.
        ctx.checkpoint(thawed_marker(ctx), None)
        ctx.event("source quiesced")
        output: dict[str, Any] = {"quiesced_at": time.time(), "source_state": state}
        if live:
            output["unquiesced_mounts"] = mounts_json(live)
        return output

    def undo(self, ctx: StepContext) -> None:
        ctx.source().thaw(quiesce_state(ctx))


def check_unquiesced_writes(ctx: StepContext) -> list[LiveMount]:
    """Act on cutover.unquiesced_writes: the filesystems the final pass will copy while they are written.

    Only a source that can tell (``ReportsLiveMounts``) is asked; it answers nothing when quiesce is
    configured. ``refuse`` raises here, before the source is touched; ``warn`` journals a warning event;
    ``allow`` does not even ask. A source that cannot be inspected counts as live under ``refuse`` (the
    point is not to copy what cannot be shown to be still) and as a warning under ``warn``.
    """
    policy = ctx.playbook.cutover_for(ctx.server).unquiesced_writes
    source = ctx.source()
    if policy == "allow" or not isinstance(source, ReportsLiveMounts):
        return []
    name = ctx.server.name
    try:
        live = source.unquiesced_mounts()
    except ProviderError as exc:
        if policy == "refuse":
            raise StepFailed(
                f"{name}: cannot tell whether the source has filesystems mounted read-write ({exc}); "
                f"cutover.unquiesced_writes is refuse, so nothing was stopped: fix that and run the "
                f"cutover again, or {CONSISTENT_QUIESCE}",
                retryable=isinstance(exc, TransientProviderError),
            ) from None
        ctx.event(
            f"cannot tell whether the source has filesystems mounted read-write ({exc}); without quiesce "
            "the final pass copies whatever is written meanwhile",
            level="warning",
        )
        return []
    if not live:
        return []
    what = mount_list(live)
    one = len(live) == 1 and len(live[0].mountpoints) == 1
    verb, it = ("is", "it") if one else ("are", "them")
    if policy == "refuse":
        raise StepFailed(
            f"{name}: no quiesce is configured and {what} {verb} mounted read-write, so the final pass would "
            f"copy {it} while written; {CONSISTENT_QUIESCE}, or set cutover.unquiesced_writes: warn to "
            "accept a crash-consistent copy; nothing was stopped"
        )
    ctx.event(
        f"no quiesce is configured and {what} {verb} mounted read-write: the final pass copies {it} while "
        f"written (crash-consistent, as after a power cut); {CONSISTENT_QUIESCE} for a consistent copy, "
        "or set cutover.unquiesced_writes: allow",
        level="warning",
        mounts=mounts_json(live),
    )
    return live


def mount_list(mounts: list[LiveMount]) -> str:
    """``/dev/loop3 on /srv/data (disk /srv/disk.img)``, joined by ``; ``: how messages name live mounts."""
    return "; ".join(
        f"{mount.device} on {', '.join(mount.mountpoints)}"
        + ("" if mount.device == mount.disk else f" (disk {mount.disk})")
        for mount in mounts
    )


def mounts_json(mounts: list[LiveMount]) -> list[dict[str, Any]]:
    return [{"disk": m.disk, "device": m.device, "mountpoints": list(m.mountpoints)} for m in mounts]


def thawed_marker(ctx: StepContext) -> str:
    """The checkpoint final_sync leaves when a failed pass thawed the source (orchestrator/steps/mirror.py
    spells the same key): the next pass quiesces again first."""
    return f"{ctx.server.name}/thawed_before_final_sync"


def quiesce_state(ctx: StepContext) -> dict[str, Any] | None:
    """What quiesce_source paused, as journaled (None before it ran, or for sources with no state)."""
    output = optional_output(ctx, "quiesce_source")
    return output.get("source_state") if output else None


class ShutdownSource(Step):
    kind = "shutdown_source"
    description = "shut the source down (cutover.shutdown_source) so only the replica owns its identity"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        cutover = ctx.playbook.cutover_for(ctx.server)
        ctx.record_resource("source_power", "source", {"server": ctx.server.name})
        ctx.source().shutdown(timeout=cutover.boot_timeout, force=False)
        ctx.event("source shut down")
        return {"stopped_at": time.time()}

    def undo(self, ctx: StepContext) -> None:
        """Rollback: start the source again, since this tool stopped it."""
        for resource in ctx.resources():
            ctx.source().start()
            ctx.forget_resource(resource)


class Barrier(Step):
    kind = "barrier"
    description = "wave boundary: the next wave cuts over after every server of this one"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        return {}

    def undo(self, ctx: StepContext) -> None:
        """Nothing to undo."""
