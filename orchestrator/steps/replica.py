"""The replica VM: defined from the target spec around the mirrored disks, powered on, and checked."""

from __future__ import annotations

import socket
import time
from dataclasses import asdict
from typing import Any, ClassVar

from orchestrator.steps.base import Step, StepContext, StepFailed
from orchestrator.steps.common import facts, optional_output, replica_disks, step_id
from providers.base import DiskRef, NicRequest, NotFound, VmRef, VmRequest


def vm_of(ctx: StepContext, create_kind: str = "create_replica") -> VmRef:
    return VmRef(**ctx.output(step_id(ctx, create_kind))["vm"])


class CreateReplica(Step):
    kind = "create_replica"
    retryable = True
    transient = True
    description = "define the replica VM (CPUs, memory, firmware, disks, NICs) on the target"

    def vm_name(self, ctx: StepContext) -> str:
        return ctx.server.vm_name

    def disks(self, ctx: StepContext) -> tuple[DiskRef, ...]:
        return tuple(disk for _, disk in replica_disks(ctx))

    def nics(self, ctx: StepContext) -> tuple[NicRequest, ...]:
        nics = (optional_output(ctx, "remap_nics") or {}).get("nics", [])
        return tuple(
            NicRequest(network=n["network"], mac=n["mac"], model=n["model"], vlan=n["vlan"]) for n in nics
        )

    def run(self, ctx: StepContext) -> dict[str, Any]:
        server, source = ctx.server, facts(ctx)
        target = server.target
        firmware = source.firmware if target.firmware == "auto" else target.firmware
        request = VmRequest(
            name=self.vm_name(ctx),
            host=target.host,
            cpus=target.cpus,
            memory=target.memory,
            firmware=firmware,
            disks=self.disks(ctx),
            nics=self.nics(ctx),
            generation=target.generation or (2 if firmware == "uefi" else 1),
            datastore=target.datastore,
            tags={"hvmigrate.server": server.name, "hvmigrate.playbook": ctx.playbook.name},
            disk_controllers=tuple(disk.controller for disk in target.disks),
        )
        provider = ctx.provider(target.provider)
        ctx.record_resource("vm", target.provider, {"name": request.name})
        vm = provider.find_vm(request.name) or provider.create_vm(request)
        ctx.event(
            f"{vm.name} defined: {target.cpus} vCPU, {target.memory} B, {firmware}, "
            f"{len(request.disks)} disk(s), {len(request.nics)} NIC(s)"
        )
        return {"vm": asdict(vm)}

    def undo(self, ctx: StepContext) -> None:
        for resource in reversed(ctx.resources()):
            provider = ctx.provider(resource.provider)
            vm = provider.find_vm(resource.ref["name"])
            if vm is not None:
                try:
                    provider.power_off(vm, force=True)
                    provider.delete_vm(vm)
                except NotFound:
                    pass
            ctx.forget_resource(resource)


class PowerOnReplica(Step):
    kind = "power_on_replica"
    retryable = True
    transient = True
    description = "power the replica on"
    create_kind: ClassVar[str] = "create_replica"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        vm = vm_of(ctx, self.create_kind)
        ctx.provider(ctx.server.target.provider).power_on(vm)
        return {"powered_on": True}

    def undo(self, ctx: StepContext) -> None:
        try:
            vm = vm_of(ctx, self.create_kind)
        except KeyError:
            return
        provider = ctx.provider(ctx.server.target.provider)
        if provider.find_vm(vm.name) is not None:
            provider.power_off(vm, force=True)


BOOT_SLICE = 5.0  # seconds per provider look while a replica boots


class VerifyReplica(Step):
    kind = "verify_replica"
    retryable = True
    description = "wait until the replica answers, and check it came up as the server it should be"
    create_kind: ClassVar[str] = "create_replica"

    def wanted_addresses(self, ctx: StepContext) -> set[str]:
        """The static addresses the replica should come up with (DHCP ones cannot be known)."""
        nics = (optional_output(ctx, "remap_nics") or {}).get("nics", [])
        return {n["ip"] for n in nics if n["ip"] not in ("dhcp", "keep")}

    def run(self, ctx: StepContext) -> dict[str, Any]:
        cutover = ctx.playbook.cutover_for(ctx.server)
        wanted = self.wanted_addresses(ctx)
        report = self.watch(ctx, wanted, cutover.boot_timeout)
        vm = vm_of(ctx, self.create_kind)
        if not report.running:
            raise StepFailed(f"{vm.name} did not come up: {report.detail}")
        expected = (optional_output(ctx, "stage_system_state") or {}).get("hostname")
        if expected and report.hostname and report.hostname != expected:
            raise StepFailed(f"{vm.name} reports hostname {report.hostname!r}, expected {expected!r}")
        seen = {address.split("/")[0] for address in report.addresses}  # VMware Tools give no prefix
        missing = sorted(w for w in wanted if w.split("/")[0] not in seen)
        if missing and report.addresses:
            raise StepFailed(f"{vm.name} came up without address(es) {', '.join(missing)}")
        ctx.event(
            f"{vm.name} up: hostname {report.hostname or '?'}, addresses "
            f"{', '.join(report.addresses) or 'unknown'}; {report.detail}"
        )
        return {"hostname": report.hostname, "addresses": list(report.addresses), "detail": report.detail}

    def watch(self, ctx: StepContext, wanted: set[str], timeout: float) -> Any:
        """Ask the provider in short slices and, in between, knock on the planned static addresses.

        A replica with a static address has no DHCP lease and no guest agent, and the host's ARP table
        only learns it once something talks to it: a TCP connect that is answered (or refused: the
        kernel's network stack is up either way) is that talk, and the next slice sees the address.
        """
        provider = ctx.provider(ctx.server.target.provider)
        vm = vm_of(ctx, self.create_kind)
        if not wanted:
            return provider.wait_booted(vm, timeout)
        deadline = time.monotonic() + timeout
        while True:
            began = time.monotonic()
            left = deadline - began
            report = provider.wait_booted(vm, max(0.0, min(BOOT_SLICE, left)))
            if report.addresses or left <= BOOT_SLICE:
                return report
            self.check_cancel(ctx)
            time.sleep(max(0.0, BOOT_SLICE - (time.monotonic() - began)))  # a provider that answers at once
            if any(_answers(address.split("/")[0]) for address in wanted):
                return provider.wait_booted(vm, BOOT_SLICE)

    def undo(self, ctx: StepContext) -> None:
        """Checking creates nothing."""


def _answers(address: str, port: int = 22) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
