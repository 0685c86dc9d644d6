"""Faults at cutover: a pre-cutover script that hangs or fails, a replica that never boots, a failure after
DNS moved. The source is a running VM on a second sim host (sim to sim), so "the source is untouched" and
"undo powers it back on" are power states on a host, not no-ops on an image file; DNS is a real BIND.

The target running out of space mid-copy is tests/e2e/test_faults.py's full-tmpfs test (a real tmpfs
filling up under the datastore; it needs root to mount).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.playbook.models import SimProviderConfig
from providers.base import DiskRequest, VmRequest
from providers.sim import SimProvider
from tests.e2e.test_dns_cutover import INITIAL, records
from tests.faults.conftest import (
    DISKS,
    PB,
    SERVER,
    FaultMigration,
    copy_images,
    restore_tree,
    small_playbook,
)
from tests.faults.secrets_audit import SecretsAudit
from tests.images import sha256
from tests.services.bind import BindServer
from tests.services.bind_zones import bind_zones  # noqa: F401 - the fixture

SOURCE_HOST = {"type": "sim", "root": "./old-host", "host": "old-host-1", "datastores": {"default": "1GiB"}}
UNTOUCHED_AFTER_PRE_SCRIPT = ("quiesce_source", "final_sync", "shutdown_source", "create_replica")


def source_host(m: FaultMigration) -> SimProvider:
    return SimProvider("old", SimProviderConfig(**{**SOURCE_HOST, "root": m.root / "old-host"}))


def source_power(m: FaultMigration) -> str:
    host = source_host(m)
    vm = host.find_vm(SERVER)
    assert vm is not None
    return str(host.vm_details(vm)["power"])


def make_source_vm(m: FaultMigration) -> None:
    """db01 as a running VM on the old host, its disks filled from the quickstart images (a test may
    prepare a source's bytes; the tool only ever reads them)."""
    host = source_host(m)
    disks = []
    for image in sorted(set(DISKS.values())):
        path = m.images / image
        disk = host.create_disk(DiskRequest(Path(image).stem, path.stat().st_size, "raw", None))
        subprocess.run(["cp", "--sparse=always", str(path), disk.id], check=True)
        disks.append(disk)
    host.create_vm(VmRequest(SERVER, None, 1, 256 * 1024**2, "bios", tuple(disks), ()))
    host.power_on(host.find_vm(SERVER))  # type: ignore[arg-type]


def edit_playbook(m: FaultMigration, change: dict[str, Any]) -> None:
    playbook = yaml.safe_load(m.playbook.read_text())
    cutover = playbook["defaults"]["cutover"]
    cutover.update(change.get("cutover", {}))
    playbook["servers"][0]["target"].update(change.get("target", {}))
    if "dns" in change:
        playbook["dns"]["corp"] = change["dns"]
    m.playbook.write_text(yaml.safe_dump(playbook, sort_keys=False))


@dataclass
class Lane:
    m: FaultMigration
    executed: Path
    source_sums: dict[str, str]

    def restore(self) -> FaultMigration:
        restore_tree(self.executed, self.m.root)
        return self.m


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Lane]:
    """db01 migrated from a VM of the old host up to the cutover gate, once; each test starts there."""
    base = tmp_path_factory.mktemp("cutover-faults")
    m = FaultMigration(base / "lane")
    m.root.mkdir()
    copy_images(image_cache, m.images)
    small_playbook(m.root)
    playbook = yaml.safe_load(m.playbook.read_text())
    playbook["providers"]["old"] = SOURCE_HOST
    playbook["servers"][0]["source"] = {"type": "vm", "provider": "old", "vm": SERVER}
    playbook["defaults"]["cutover"]["boot_timeout"] = "3s"  # the sim answers at once; no 10-minute wait
    m.playbook.write_text(yaml.safe_dump(playbook, sort_keys=False))
    make_source_vm(m)
    m.run_here("execute", PB)
    sums = {p.name: sha256(p) for p in sorted((m.root / "old-host" / "datastores" / "default").glob("*.raw"))}
    restore_tree(m.root, base / "executed")
    yield Lane(m, base / "executed", sums)


def assert_source_untouched_and_running(lane: Lane) -> None:
    m = lane.m
    assert source_power(m) == "on"
    datastore = m.root / "old-host" / "datastores" / "default"
    assert {p.name: sha256(p) for p in sorted(datastore.glob("*.raw"))} == lane.source_sums


def step_states(m: FaultMigration) -> dict[str, str]:
    return {str(k): str(v) for k, v in m.journal_rows("SELECT step_id, state FROM steps")}


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (
            "echo $$ > script.pid; exec sleep 300",
            "pre_script did not finish within 2.0s (cutover.script_timeout)",
        ),
        ("echo 'refusing: app still writing' >&2; exit 3", "pre_script exited with status 3: refusing"),
    ],
    ids=["hangs", "fails"],
)
def test_a_pre_script_that_hangs_or_fails_stops_the_cutover_with_the_source_untouched(
    lane: Lane, script: str, message: str
) -> None:
    m = lane.restore()
    edit_playbook(m, {"cutover": {"pre_script": script, "script_timeout": "2s"}})
    m.run_here("execute", PB, "--replan")
    failed = m.run_here("cutover", PB, check=1).output
    assert f"{SERVER}/run_pre_script" in failed and message in failed, failed
    states = step_states(m)
    assert states[f"{SERVER}/run_pre_script"] == "failed"
    for kind in UNTOUCHED_AFTER_PRE_SCRIPT:
        assert states[f"{SERVER}/{kind}"] == "pending", (kind, states[f"{SERVER}/{kind}"])
    assert not (m.sim / "vms" / f"{SERVER}.json").exists()
    assert_source_untouched_and_running(lane)
    pid_file = m.root / "script.pid"
    assert pid_file.exists() == ("sleep" in script)
    if pid_file.exists():  # the hanging script was killed at the timeout, not left behind
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)


def point_at_bind(m: FaultMigration, server: BindServer, audit: SecretsAudit) -> None:
    secret_file = m.root / "tsig.secret"
    secret_file.write_text(server.secret)
    audit.register(server.secret, holders=[secret_file])
    zone = {"type": "rfc2136", "server": server.host, "port": server.port, "zone": "corp.test"}
    zone |= {
        "reverse_zones": ["10.in-addr.arpa"],
        "tsig": {"name": "migkey", "secret": "${file:./tsig.secret}"},
    }
    edit_playbook(m, {"dns": zone})


def test_a_replica_that_never_boots_fails_the_cutover_and_undo_starts_the_source_again(
    lane: Lane,
    bind_zones: BindServer,  # noqa: F811 - fixture
    secrets_audit: SecretsAudit,
) -> None:
    """target.firmware: uefi for a BIOS guest (validation warns, firmware.mismatch): the sim's firmware
    finds no EFI System Partition on the replica's boot disk, as a real one would not."""
    m = lane.restore()
    point_at_bind(m, bind_zones, secrets_audit)
    edit_playbook(m, {"target": {"firmware": "uefi"}})
    m.run_here("execute", PB, "--replan")
    failed = m.run_here("cutover", PB, check=1).output
    assert f"{SERVER}/verify_replica" in failed and "did not come up" in failed, failed
    assert "EFI System Partition" in failed, failed
    states = step_states(m)
    assert states[f"{SERVER}/shutdown_source"] == "done" and states[f"{SERVER}/update_dns"] == "pending"
    assert source_power(m) == "off"  # the tool stopped it; only undo may start it again
    assert records(bind_zones) == INITIAL

    undo = m.run_here("undo", PB, SERVER, "--yes").output
    assert f"{SERVER}/shutdown_source" in undo, undo
    assert_source_untouched_and_running(lane)
    assert records(bind_zones) == INITIAL
    left = m.sim_inventory()
    assert left["vms"] == [] and left["appliances"] == [] and left["files"] == [], left


def test_a_failure_after_dns_moved_is_rolled_back_from_the_journal_by_undo(
    lane: Lane,
    bind_zones: BindServer,  # noqa: F811 - fixture
    secrets_audit: SecretsAudit,
) -> None:
    m = lane.restore()
    point_at_bind(m, bind_zones, secrets_audit)
    edit_playbook(m, {"cutover": {"post_script": "echo 'smoke test: checkout page 500' >&2; exit 4"}})
    m.run_here("execute", PB, "--replan")
    failed = m.run_here("cutover", PB, check=1).output
    assert f"{SERVER}/run_post_script" in failed and "exited with status 4" in failed, failed
    moved = records(bind_zones)
    assert moved["db01 A"] == [("10.1.0.12", 60)] and moved["db01 PTR"] == [("db01.corp.test.", 60)]
    assert source_power(m) == "off"

    m.run_here("undo", PB, SERVER, "--yes")
    assert records(bind_zones) == INITIAL  # values and TTLs as they were, reverse zone included
    assert_source_untouched_and_running(lane)
    left = m.sim_inventory()
    assert left["vms"] == [] and left["appliances"] == [] and left["files"] == [], left
