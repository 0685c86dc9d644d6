"""Ask the source what it is: disks, firmware, NICs, hostname. Read only."""

from __future__ import annotations

from typing import Any

from orchestrator.steps.base import Step, StepContext, StepFailed


class DiscoverSource(Step):
    kind = "discover_source"
    retryable = True
    description = "inventory the source: disks, partitions, firmware, NICs, OS, hostname"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        facts = ctx.source().discover()
        if not facts.disks:
            raise StepFailed(f"source of {ctx.server.name} reports no disks; nothing to migrate")
        mapped = [d.source for d in ctx.server.target.disks]
        for name in mapped:
            try:
                facts.disk(name)
            except KeyError as exc:
                raise StepFailed(str(exc.args[0])) from None
        ctx.event(
            f"{facts.hostname}: {facts.os_detail or facts.os}, {facts.firmware}, "
            f"{len(facts.disks)} disk(s), {len(facts.nics)} NIC(s)"
        )
        return {"facts": facts.to_json()}

    def undo(self, ctx: StepContext) -> None:
        """Discovery creates nothing."""
