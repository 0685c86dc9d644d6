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
    description = "pause writes on the source (fsfreeze, stop listed services) for a consistent final pass"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        state = ctx.source().quiesce()
        ctx.event("source quiesced")
        return {"quiesced_at": time.time(), "source_state": state}

    def undo(self, ctx: StepContext) -> None:
        ctx.source().thaw(quiesce_state(ctx))


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
