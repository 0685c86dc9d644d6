"""Test cutover: boot a copy of the replica on isolated networks while the source runs and syncing goes on.

As the reference product does it: take a point-in-time copy of the replica's disks (a new disk set, so the
next sync pass into the replica changes nothing the test copy runs on), give the copy the test network
settings, and boot it. Each NIC goes to its ``test_network``; a NIC without one keeps no link, so nothing
the copy says reaches production (two servers answering as the same host is how users split between
source and target). The replica itself, its disks and the source are never changed: `migrate undo --test`
removes the copy and its disks and the migration carries on where it was.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from orchestrator.guest.linux import apply_edits, find_linux_root, plan_network
from orchestrator.steps.base import Step, StepContext, StepFailed
from orchestrator.steps.common import optional_output, replica_disks, step_id
from orchestrator.steps.disks import CreateDisks, detach_all
from orchestrator.steps.guest import boot_disk_index, fail_on_critical, nic_configs, staging_report
from orchestrator.steps.replica import CreateReplica, PowerOnReplica, VerifyReplica, vm_of
from providers.base import DiskRef, DiskRequest, NicRequest

TEST_SUFFIX = "-test"


def test_vm_name(ctx: StepContext) -> str:
    return f"{ctx.server.vm_name}{TEST_SUFFIX}"


def test_disks(ctx: StepContext) -> list[DiskRef]:
    return [DiskRef(**d) for d in ctx.output(step_id(ctx, "clone_test_disks"))["disks"]]


def test_nics(ctx: StepContext) -> list[dict[str, Any]]:
    """The replica's NICs (same MACs: staging pinned interface names to them) with the test settings."""
    replica = (optional_output(ctx, "remap_nics") or {}).get("nics", [])
    maps = ctx.server.target.nics
    nics = []
    for nic in replica:
        given = maps[nic["index"]] if nic["index"] < len(maps) else None
        test_network = given.test_network if given else None
        test_ip = str(given.test_ip) if given and given.test_ip else None
        gateway = given.test_gateway if given else None
        nics.append(
            {
                **nic,
                "network": test_network or nic["network"],
                "connected": test_network is not None,
                "ip": test_ip or nic["ip"],
                "gateway": str(gateway) if gateway else (None if test_ip else nic["gateway"]),
            }
        )
    return nics


def _address(nic: dict[str, Any]) -> tuple[str, str | None]:
    return nic["ip"], nic["gateway"]


class CloneTestDisks(CreateDisks):
    kind = "clone_test_disks"
    retryable = True
    description = "copy the replica's disks as they are now into a new disk set for the test copy"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        if optional_output(ctx, "detach_disks") is not None:
            raise StepFailed(
                f"{ctx.server.name} is already cut over: its replica runs as {ctx.server.vm_name}, so there "
                "is nothing left to test (undo the cutover first to test again)"
            )
        provider_name = ctx.server.target.provider
        provider = ctx.provider(provider_name)
        clones = []
        for index, (_, disk) in enumerate(replica_disks(ctx)):
            request = DiskRequest(
                name=f"{test_vm_name(ctx)}-disk{index}",
                size=disk.size,
                format=disk.format,
                datastore=disk.datastore,
            )
            ctx.record_resource("disk", provider_name, {"request": asdict(request)})
            clone = provider.clone_disk(disk, request)
            ctx.event(f"disk {disk.name} copied to {clone.name} on {clone.datastore}")
            clones.append(asdict(clone))
        return {"disks": clones}


class StageTestCopy(Step):
    kind = "stage_test_copy"
    retryable = True
    description = "give the test copy its test addresses (where the playbook sets test_ip or test_gateway)"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        nics = test_nics(ctx)
        replica = {n["index"]: n for n in (optional_output(ctx, "remap_nics") or {}).get("nics", [])}
        changed = [n for n in nics if (n["ip"], n["gateway"]) != _address(replica[n["index"]])]
        if not changed:
            return {"nics": nics, "edits": []}
        provider_name = ctx.server.target.provider
        provider = ctx.provider(provider_name)
        disks = test_disks(ctx)
        paths: list[str | None] = []
        for disk in disks:
            ctx.record_resource("attachment", provider_name, {"appliance": None, "disk": asdict(disk)})
            endpoint = provider.attach_disk(None, disk)
            paths.append(endpoint.path if endpoint.kind == "file" and endpoint.host == "local" else None)
        try:
            boot = paths[boot_disk_index(ctx)] if boot_disk_index(ctx) < len(paths) else None
            if boot is None or find_linux_root(boot) is None:
                raise StepFailed(
                    f"test addresses not staged: no Linux root filesystem reachable on {test_vm_name(ctx)}'s "
                    "boot disk from here; remove test_ip/test_gateway to boot the copy with the replica's "
                    "addresses on its isolated network"
                )
            hostname = (optional_output(ctx, "stage_system_state") or {}).get("hostname") or ctx.server.name
            plan = plan_network(paths, boot_disk_index(ctx), hostname, nic_configs(nics))
            applied = apply_edits(boot, plan.edits)
        finally:
            detach_all(ctx, ctx.node.id)
        addresses = ", ".join(f"nic{n['index']} {n['ip']}" for n in changed)
        output = {
            **staging_report(ctx, plan, applied, f"test copy {test_vm_name(ctx)} ({addresses})"),
            "nics": nics,
        }
        fail_on_critical(plan.findings)
        return output

    def undo(self, ctx: StepContext) -> None:
        detach_all(ctx, ctx.node.id)


class CreateTestCopy(CreateReplica):
    kind = "create_test_copy"
    description = "define the test copy: the replica's hardware on the cloned disks and the test networks"

    def vm_name(self, ctx: StepContext) -> str:
        return test_vm_name(ctx)

    def disks(self, ctx: StepContext) -> tuple[DiskRef, ...]:
        return tuple(test_disks(ctx))

    def nics(self, ctx: StepContext) -> tuple[NicRequest, ...]:
        return tuple(
            NicRequest(
                network=n["network"], mac=n["mac"], model=n["model"], vlan=n["vlan"], connected=n["connected"]
            )
            for n in test_nics(ctx)
        )


class PowerOnTestCopy(PowerOnReplica):
    kind = "power_on_test_copy"
    description = "power the test copy on"
    create_kind = "create_test_copy"


class VerifyTestCopy(VerifyReplica):
    kind = "verify_test_copy"
    description = "wait until the test copy answers on its test network"
    create_kind = "create_test_copy"

    def wanted_addresses(self, ctx: StepContext) -> set[str]:
        return {n["ip"] for n in test_nics(ctx) if n["connected"] and n["ip"] not in ("dhcp", "keep")}

    def run(self, ctx: StepContext) -> dict[str, Any]:
        if not any(n["connected"] for n in test_nics(ctx)):
            vm = vm_of(ctx, self.create_kind)
            report = ctx.provider(ctx.server.target.provider).wait_booted(vm, 0)
            if not report.running:
                raise StepFailed(f"{vm.name} did not start: {report.detail}")
            ctx.event(
                f"{vm.name} is running with no NIC connected (no test_network set): check it on its console",
                level="warning",
            )
            return {"hostname": None, "addresses": [], "detail": report.detail}
        return super().run(ctx)
