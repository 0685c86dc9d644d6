"""Replica disks: create them on the target, attach them where the data plane can write, detach at cutover."""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import Any

from orchestrator.steps.base import Step, StepContext, StepFailed
from orchestrator.steps.common import appliance, facts, replica_disks, step_id
from providers.base import ApplianceRef, DiskRef, DiskRequest, NotFound


def disk_requests(ctx: StepContext) -> list[tuple[str, DiskRequest]]:
    """One request per mapped source disk (all of them when none is mapped), sized from the source."""
    server, source = ctx.server, facts(ctx)
    provider = ctx.provider(server.target.provider)
    native = provider.inventory().limits.native_format
    maps = server.target.disks
    pairs: list[tuple[str, Any]] = (
        [(m.source, m) for m in maps] if maps else [(d.name, None) for d in source.disks]
    )
    requests = []
    for index, (name, disk_map) in enumerate(pairs):
        size = source.disk(name).size
        if disk_map is not None and disk_map.size != "auto":
            if disk_map.size < size:
                raise StepFailed(
                    f"target disk for {name} is {disk_map.size} bytes but the source disk is "
                    f"{size} bytes; the replica must be at least as large (use size: auto)"
                )
            size = disk_map.size
        requests.append(
            (
                name,
                DiskRequest(
                    name=f"{server.vm_name}-disk{index}",
                    size=size,
                    format=(disk_map.format if disk_map and disk_map.format else native),
                    datastore=(
                        disk_map.datastore if disk_map and disk_map.datastore else server.target.datastore
                    ),
                    provisioning=disk_map.provisioning if disk_map else "thin",
                ),
            )
        )
    return requests


class CreateDisks(Step):
    kind = "create_disks"
    retryable = True
    description = "create the replica disks on the target datastore, sized from the source"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        provider_name = ctx.server.target.provider
        provider = ctx.provider(provider_name)
        created = []
        for source_name, request in disk_requests(ctx):
            ctx.record_resource("disk", provider_name, {"request": asdict(request)})
            disk = provider.find_disk(request) or provider.create_disk(request)
            ctx.event(f"disk {disk.name}: {disk.size} bytes {disk.format} on {disk.datastore}")
            created.append({"source": source_name, "disk": asdict(disk)})
        return {"disks": created}

    def undo(self, ctx: StepContext) -> None:
        for resource in reversed(ctx.resources()):
            provider = ctx.provider(resource.provider)
            disk = provider.find_disk(DiskRequest(**resource.ref["request"]))
            if disk is not None:
                with contextlib.suppress(NotFound):
                    provider.delete_disk(disk)
            ctx.forget_resource(resource)


class AttachDisks(Step):
    kind = "attach_disks"
    retryable = True
    transient = True
    description = "attach the replica disks to the appliance (or open them on the host) for writing"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        provider_name = ctx.server.target.provider
        provider = ctx.provider(provider_name)
        helper = _appliance_for(ctx)
        result = []
        for _, disk in replica_disks(ctx):
            ctx.record_resource(
                "attachment",
                provider_name,
                {"appliance": asdict(helper) if helper else None, "disk": asdict(disk)},
            )
            result.append(asdict(provider.attach_disk(helper, disk)))
        return {"appliance": asdict(helper) if helper else None, "endpoints": result}

    def undo(self, ctx: StepContext) -> None:
        detach_all(ctx, ctx.node.id)


class DetachDisks(Step):
    kind = "detach_disks"
    retryable = True
    description = "detach the replica disks from the appliance so the replica VM can own them"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        detached = detach_all(ctx, step_id(ctx, "attach_disks"))
        return {"detached": detached, "appliance": asdict(a) if (a := appliance(ctx)) else None}

    def undo(self, ctx: StepContext) -> None:
        """Re-attaching is the attach step's job; a re-run does it."""


def _appliance_for(ctx: StepContext) -> ApplianceRef | None:
    provision_step = ctx.node.params.get("appliance_step")
    if not provision_step:
        return None
    try:
        return ApplianceRef(**ctx.output(provision_step)["appliance"])
    except KeyError:
        raise StepFailed(f"{provision_step} has not run; run `migrate execute` again") from None


def detach_all(ctx: StepContext, attach_step: str) -> list[str]:
    detached = []
    for resource in reversed(ctx.resources(attach_step)):
        if resource.kind != "attachment":
            continue
        provider = ctx.provider(resource.provider)
        helper = ApplianceRef(**resource.ref["appliance"]) if resource.ref["appliance"] else None
        disk = DiskRef(**resource.ref["disk"])
        with contextlib.suppress(NotFound):
            provider.detach_disk(helper, disk)
        ctx.forget_resource(resource)
        detached.append(disk.name)
    return detached
