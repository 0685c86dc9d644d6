"""Small lookups several steps share: the outputs of earlier steps, rebuilt into value types."""

from __future__ import annotations

from typing import Any

from orchestrator.steps.base import StepContext
from providers.base import ApplianceRef, DiskEndpoint, DiskRef, SourceFacts


def step_id(ctx: StepContext, kind: str) -> str:
    return f"{ctx.server.name}/{kind}"


def facts(ctx: StepContext) -> SourceFacts:
    return SourceFacts.from_json(ctx.output(step_id(ctx, "discover_source"))["facts"])


def replica_disks(ctx: StepContext) -> list[tuple[str, DiskRef]]:
    """(source disk name, replica disk) pairs, in the playbook's order."""
    return [(d["source"], DiskRef(**d["disk"])) for d in ctx.output(step_id(ctx, "create_disks"))["disks"]]


def endpoints(ctx: StepContext) -> list[DiskEndpoint]:
    return [DiskEndpoint(**e) for e in ctx.output(step_id(ctx, "attach_disks"))["endpoints"]]


def appliance(ctx: StepContext) -> ApplianceRef | None:
    """The appliance the server's disks are attached to, or None when writing on the host itself."""
    output = ctx.output(step_id(ctx, "attach_disks"))
    return ApplianceRef(**output["appliance"]) if output.get("appliance") else None


def optional_output(ctx: StepContext, kind: str) -> dict[str, Any] | None:
    try:
        return ctx.output(step_id(ctx, kind))
    except KeyError:
        return None
