"""The recovery appliance: the helper VM on the target that the replica disks are attached to while
they are written (the reference product's ESX appliance). Shared per target host or dedicated per server."""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import Any

from orchestrator.steps.base import Resource, Step, StepContext
from providers.base import NotFound


class ProvisionAppliance(Step):
    kind = "provision_appliance"
    retryable = True
    description = "create (or find) the recovery appliance VM on the target host"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        params = ctx.node.params
        provider = ctx.provider(params["provider"])
        host = provider.host_for(params.get("host"))
        ref = {"host": host, "name": params["name"]}
        ctx.record_resource("appliance", params["provider"], ref)
        appliance = provider.find_appliance(host, params["name"]) or provider.provision_appliance(
            host, params["name"]
        )
        ctx.event(f"appliance {appliance.name} ready on {appliance.host}")
        return {"appliance": asdict(appliance)}

    def undo(self, ctx: StepContext) -> None:
        release_recorded(ctx, ctx.resources())


class ReleaseAppliance(Step):
    kind = "release_appliance"
    description = "remove the recovery appliance once no server uses it"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        provision_id = ctx.node.id.replace("/release_appliance", "/provision_appliance")
        release_recorded(ctx, ctx.resources(provision_id))
        return {"released": ctx.node.params["name"]}

    def undo(self, ctx: StepContext) -> None:
        """A released appliance is not brought back; a re-run provisions a new one."""


def release_recorded(ctx: StepContext, resources: list[Resource]) -> None:
    """Remove the appliances these journal records name (gone already counts as removed)."""
    for resource in reversed(resources):
        provider = ctx.provider(resource.provider)
        appliance = provider.find_appliance(resource.ref["host"], resource.ref["name"])
        if appliance is not None:
            with contextlib.suppress(NotFound):
                provider.release_appliance(appliance)
        ctx.forget_resource(resource)
