"""The staging steps themselves on a real replica disk: journaled output, re-apply after a sync, failure
on a critical finding with the edits already on the disk."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.guest.changes import ORIGINALS_DIR
from orchestrator.guest.linux import find_linux_root, read_file
from orchestrator.playbook.models import Playbook
from orchestrator.quickstart import MiB
from orchestrator.steps.base import StepFailed, StepNode
from orchestrator.steps.guest import RemapNics, StageSystemState, reapply_staged_state
from providers.base import DiskEndpoint, DiskRef, SourceDisk, SourceFacts, SourceNic
from tests.unit.test_guest_initramfs import guest
from tests.unit.test_guest_netconfig import BASE, NETPLAN
from tests.unit.test_guest_volumes import guest_disk, pytestmark  # noqa: F401

SOURCE_MAC = "52:54:00:0a:0b:01"


def playbook(provider: dict[str, Any], nic: dict[str, Any], **target: Any) -> Playbook:
    return Playbook.model_validate(
        {
            "apiVersion": "hvmigrate/v1",
            "kind": "MigrationPlaybook",
            "name": "t",
            "providers": {"target": provider},
            "servers": [
                {
                    "name": "web01",
                    "source": {"type": "image", "path": "web01.raw"},
                    "target": {"provider": "target", "nics": [nic], **target},
                }
            ],
        }
    )


@dataclass
class Context:
    """The narrow StepContext a step sees; its dependencies' outputs in memory, as the journal holds them."""

    playbook: Playbook
    disk: Path
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    node: StepNode = field(
        default_factory=lambda: StepNode("web01/stage", "stage_system_state", "web01", "replicate")
    )
    state_dir: Path = Path(".")
    base_dir: Path = Path(".")

    def __post_init__(self) -> None:
        facts = SourceFacts(
            "web01", "linux", "Test Linux", "bios", (SourceDisk("web01.raw", 24 * MiB),),
            (SourceNic("ens3", SOURCE_MAC, ("10.0.0.13/24",)),),
        )  # fmt: skip
        ref = DiskRef("target", str(self.disk), "web01-disk0", 24 * MiB, "raw", "default")
        self.outputs.update(
            {
                "web01/discover_source": {"facts": facts.to_json()},
                "web01/create_disks": {"disks": [{"source": "web01.raw", "disk": asdict(ref)}]},
                "web01/attach_disks": {"endpoints": [asdict(DiskEndpoint("file", str(self.disk), 24 * MiB))]},
            }
        )

    @property
    def server(self):  # type: ignore[no-untyped-def]
        return self.playbook.servers[0]

    def output(self, step_id: str) -> dict[str, Any]:
        return self.outputs[step_id]

    def event(self, message: str, *, level: str = "info", **data: Any) -> None:
        self.events.append((level, message))

    def record_resource(self, kind: str, provider: str, ref: Mapping[str, Any]) -> None:
        raise AssertionError("staging creates no target resources")


KVM = {"type": "kvm", "uri": "qemu:///system"}
STATIC = {
    "source_mac": SOURCE_MAC,
    "network": "prod",
    "ip": "10.1.0.13/24",
    "gateway": "10.1.0.1",
    "dns": ["10.1.0.2"],
}


def test_stage_then_remap_on_netplan_guest_journal_and_reapply(tmp_path: Path) -> None:
    hosts = b"127.0.0.1\tlocalhost\n127.0.1.1\tweb01.corp.test web01\n"
    disk = guest_disk(
        tmp_path / "web01.raw", {**BASE, **NETPLAN, "/etc/hostname": b"web01\n", "/etc/hosts": hosts}
    )
    ctx = Context(playbook({"type": "sim", "root": str(tmp_path)}, STATIC, hostname="web02"), disk)
    stage = StageSystemState().run(ctx)  # type: ignore[arg-type]
    ctx.outputs["web01/stage_system_state"] = json.loads(json.dumps(stage))  # what the journal keeps
    remap = RemapNics().run(ctx)  # type: ignore[arg-type]
    ctx.outputs["web01/remap_nics"] = json.loads(json.dumps(remap))
    assert stage["hostname"] == "web02" and any("hostname web01 -> web02" in line for line in stage["log"])
    assert remap["facts"]["network"] == "netplan" and remap["nics"][0]["source_name"] == "ens3"
    assert any(line.startswith("create /etc/netplan/90-hvmigrate.yaml") for line in remap["log"])
    summaries = [m for level, m in ctx.events if m.startswith(("system state of web02", "network of web02"))]
    assert len(summaries) == 2 and "network: netplan" in summaries[1]

    root = find_linux_root(disk)
    assert root is not None
    # A sync pass carries the source's files back over staged ones; staging re-applies from the journal.
    source_netplan = read_file(root, ORIGINALS_DIR + "/etc/netplan/50-cloud-init.yaml")
    assert source_netplan is not None
    root.fs.write_files(
        [("/etc/hostname", b"web01\n", 0o644), ("/etc/netplan/50-cloud-init.yaml", source_netplan, 0o644)]
    )
    assert reapply_staged_state(ctx) > 0  # type: ignore[arg-type]
    assert read_file(root, "/etc/hostname") == b"web02\n"
    assert yaml.safe_load(read_file(root, "/etc/netplan/50-cloud-init.yaml") or b"") == {
        "network": {"version": 2}
    }
    assert b"10.1.0.13\tweb02.corp.test web02" in (read_file(root, "/etc/hosts") or b"")


def test_a_critical_finding_fails_the_step_after_writing_the_fix_it_can(tmp_path: Path) -> None:
    disk = guest(tmp_path, ["kernel/drivers/scsi/vmw_pvscsi.ko"])
    ctx = Context(playbook(KVM, STATIC), disk)
    with pytest.raises(
        StepFailed, match=r"guest\.initramfs\.missing_driver: .*virtio_blk.*fix: on the source"
    ):
        StageSystemState().run(ctx)  # type: ignore[arg-type]
    assert ("critical", next(m for level, m in ctx.events if level == "critical")) in ctx.events
    root = find_linux_root(disk)
    assert root is not None and b"virtio_blk" in (read_file(root, "/etc/initramfs-tools/modules") or b"")
    # The same guest with a SATA boot disk on KVM: the check asks for ahci instead.
    sata = Context(playbook(KVM, STATIC, disks=[{"source": "web01.raw", "controller": "sata"}]), disk)
    with pytest.raises(StepFailed, match="ahci"):
        StageSystemState().run(sata)  # type: ignore[arg-type]


def test_not_a_linux_root_warns_and_stages_nothing(tmp_path: Path) -> None:
    blank = tmp_path / "web01.raw"
    with open(blank, "wb") as handle:
        handle.truncate(4 * MiB)
    ctx = Context(playbook(KVM, STATIC), blank)
    assert StageSystemState().run(ctx)["edits"] == []  # type: ignore[arg-type]
    assert ctx.events[0][0] == "warning" and "no Linux root" in ctx.events[0][1]
