"""kill -9 of the orchestrator at every step boundary and at seeded moments inside the mirror.

Step boundaries are hit exactly with the executor's failpoints (orchestrator/failpoints.py): the process
SIGKILLs itself ``after`` a step's work returned and before the journal says so (every boundary; the side
where a finished step must run again), and ``before`` chosen steps' work starts. Moments inside the mirror
come from a seeded delay after the (throttled) mirror started, then ``kill -9`` from outside.

After each kill, whatever the phase: the same command run again finishes; the replica's disks match the
source (tests/faults/conftest.py says how exactly); the journal's live resources and the sim host's VMs,
disks, appliances and attachments are exactly those of an uninterrupted run (nothing created twice, nothing
lost); and `migrate undo` leaves the sim host and the DNS zone as they were before `migrate execute`.

All cases run one after the other in one folder (the sim and the journal record absolute paths), restored
from snapshots taken once: before execute, and after an uninterrupted execute for the cutover cases. The
command that is killed is a process of its own, forked from a warm interpreter (tests/faults/forked.py);
the re-run and the undo run in the test process (FaultMigration.run_here): same command, fewer imports.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.failpoints import ENV
from orchestrator.playbook.models import SimProviderConfig
from providers.base import DiskRequest
from providers.sim import SimProvider
from tests.faults.conftest import (
    PB,
    SERVER,
    ZONE_BASE,
    FaultMigration,
    assert_replica_matches_source,
    copy_images,
    restore_tree,
    small_playbook,
)

APPLIANCE = "appliance/local/default/0"
EXECUTE_STEPS = (
    f"{SERVER}/validate",
    f"{SERVER}/discover_source",
    f"{APPLIANCE}/provision_appliance",
    f"{SERVER}/create_disks",
    f"{SERVER}/attach_disks",
    f"{SERVER}/mirror",
    f"{SERVER}/sync",
    f"{SERVER}/stage_system_state",
    f"{SERVER}/remap_nics",
)
CUTOVER_STEPS = (
    f"{SERVER}/cutover_gate",
    f"{SERVER}/check_dns",
    f"{SERVER}/run_pre_script",
    f"{SERVER}/quiesce_source",
    f"{SERVER}/final_sync",
    f"{SERVER}/shutdown_source",
    f"{SERVER}/detach_disks",
    f"{SERVER}/create_replica",
    f"{APPLIANCE}/release_appliance",
    f"{SERVER}/power_on_replica",
    f"{SERVER}/verify_replica",
    f"{SERVER}/update_dns",
    f"{SERVER}/run_post_script",
)
MIRROR_SEEDS = range(1, 7)
SLOW_MIRROR = "16MiB/s"  # the mirror then lasts a few seconds


@dataclass
class Lane:
    """The one folder every case runs in, its snapshots, and what an uninterrupted run leaves."""

    m: FaultMigration
    fresh: Path
    executed: Path
    after_execute: tuple[Counter[tuple[str, str, str, str]], dict[str, object]]
    after_cutover: tuple[Counter[tuple[str, str, str, str]], dict[str, object]]

    def restore(self, snapshot: Path) -> FaultMigration:
        restore_tree(snapshot, self.m.root)
        self.m.extra_env = {}
        return self.m


def state_of(m: FaultMigration) -> tuple[Counter[tuple[str, str, str, str]], dict[str, object]]:
    return m.live_resources(), m.sim_inventory()


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Lane]:
    base = tmp_path_factory.mktemp("kill9")
    root, fresh, executed = base / "lane", base / "fresh", base / "executed"
    fresh.mkdir()
    copy_images(image_cache, fresh / "images")
    small_playbook(fresh)
    restore_tree(fresh, root)
    m = FaultMigration(root)
    m.run_here("execute", PB)
    restore_tree(root, executed)
    after_execute = state_of(m)
    m.run_here("cutover", PB)
    after_cutover = state_of(m)
    yield Lane(m, fresh, executed, after_execute, after_cutover)


def kill_at(m: FaultMigration, command: str, point: str) -> None:
    m.extra_env = {ENV: point}
    process, log = m.fork(command, PB)
    m.extra_env = {}
    process.join(m.timeout)
    assert process.exitcode == -signal.SIGKILL, (point, process.exitcode, log.read_text())
    assert f"SIGKILL {point}" in log.read_text()


def assert_undo_leaves_nothing(m: FaultMigration) -> None:
    m.run_here("undo", PB, "--yes")
    left = m.sim_inventory()
    assert left["vms"] == [] and left["appliances"] == [], left
    assert left["files"] == [] and not left["attachments"] and left["temporary"] == [], left
    assert m.live_resources() == Counter()
    assert m.zone_records() == ZONE_BASE


def assert_same_as_uninterrupted(
    m: FaultMigration,
    expected: tuple[Counter[tuple[str, str, str, str]], dict[str, object]],
) -> None:
    """A rerun after a kill journals each resource once, update_dns's changes included."""
    resources, inventory = state_of(m)
    assert resources == expected[0], f"journal resources differ:\n{resources}\n!=\n{expected[0]}"
    assert all(count == 1 for count in resources.values()), resources
    assert inventory == expected[1], f"sim host differs:\n{inventory}\n!=\n{expected[1]}"
    assert all(count == 1 for count in inventory["attachments"].values())  # type: ignore[attr-defined]


def assert_all_done(m: FaultMigration, steps: tuple[str, ...]) -> None:
    states = dict(m.journal_rows("SELECT step_id, state FROM steps"))
    assert {step: states[step] for step in steps} == dict.fromkeys(steps, "done")


def test_the_cases_cover_every_step_of_the_plan(lane: Lane) -> None:
    """If the planner grows a step, this fails until the boundary lists above name it too."""
    m = lane.restore(lane.fresh)
    steps = json.loads(m.run("plan", PB, "--format", "json").stdout)["steps"]
    phases = {s["id"]: s["phase"] for s in steps}
    assert {s for s, p in phases.items() if p == "replicate"} == set(EXECUTE_STEPS)
    assert {s for s, p in phases.items() if p == "cutover"} == set(CUTOVER_STEPS)


EXECUTE_CASES = [f"after:{s}" for s in EXECUTE_STEPS] + [
    f"before:{SERVER}/validate",
    f"before:{SERVER}/mirror",
]
CUTOVER_CASES = [f"after:{s}" for s in CUTOVER_STEPS] + [
    f"before:{SERVER}/cutover_gate",
    f"before:{SERVER}/final_sync",
    f"before:{SERVER}/create_replica",
]


@pytest.mark.parametrize("point", EXECUTE_CASES)
def test_kill_9_at_an_execute_step_boundary(lane: Lane, point: str, tmp_path: Path) -> None:
    m = lane.restore(lane.fresh)
    kill_at(m, "execute", point)
    m.run_here("execute", PB)
    assert_all_done(m, EXECUTE_STEPS)
    assert_replica_matches_source(m, tmp_path)
    assert_same_as_uninterrupted(m, lane.after_execute)
    assert_undo_leaves_nothing(m)


@pytest.mark.parametrize("point", CUTOVER_CASES)
def test_kill_9_at_a_cutover_step_boundary(lane: Lane, point: str, tmp_path: Path) -> None:
    m = lane.restore(lane.executed)
    kill_at(m, "cutover", point)
    m.run_here("cutover", PB)
    assert_all_done(m, CUTOVER_STEPS)
    assert_replica_matches_source(m, tmp_path)
    assert_same_as_uninterrupted(m, lane.after_cutover)
    assert (m.sim / "vms" / f"{SERVER}.json").exists()
    assert_undo_leaves_nothing(m)


@pytest.mark.parametrize("seed", MIRROR_SEEDS)
def test_kill_9_at_a_seeded_moment_inside_the_mirror(lane: Lane, seed: int, tmp_path: Path) -> None:
    m = lane.restore(lane.fresh)
    m.edit("limit: 1GiB/s", f"limit: {SLOW_MIRROR}")
    process, _ = m.fork("execute", PB)
    m.wait_for_step(f"{SERVER}/mirror", progress_at_least=0)
    time.sleep(random.Random(seed).uniform(0.05, 2.0))
    os.kill(process.pid, signal.SIGKILL)
    process.join(m.timeout)
    assert process.exitcode == -signal.SIGKILL
    state = m.journal_rows("SELECT state FROM steps WHERE step_id=?", (f"{SERVER}/mirror",))
    assert state == [("running",)], "the kill did not land inside the mirror; lower the delays"
    m.edit(f"limit: {SLOW_MIRROR}", "limit: 1GiB/s")
    m.run_here("execute", PB, "--replan")
    assert_all_done(m, EXECUTE_STEPS)
    assert_replica_matches_source(m, tmp_path)
    assert_same_as_uninterrupted(m, lane.after_execute)
    assert_undo_leaves_nothing(m)


def _die_while_writing(root: str) -> None:
    """A sim host writer killed between creating its temporary file and renaming it into place."""
    from providers.sim import state

    state.os.replace = lambda *_: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[assignment]
    SimProvider("local", SimProviderConfig(type="sim", root=Path(root))).create_disk(
        DiskRequest("db01-disk0", 1024**2, "raw", None)
    )


def test_a_writer_killed_mid_write_leaves_no_temporary_file_once_the_host_is_used_again(
    tmp_path: Path,
) -> None:
    host = SimProvider("local", SimProviderConfig(type="sim", root=tmp_path))
    host.provision_appliance(None, "a0")
    child = multiprocessing.get_context("fork").Process(target=_die_while_writing, args=(str(tmp_path),))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert [p.name for p in tmp_path.rglob("*.tmp")] != []  # what the crash left
    again = SimProvider("local", SimProviderConfig(type="sim", root=tmp_path))
    assert again.find_disk(DiskRequest("db01-disk0", 1024**2, "raw", None)) is None
    again.inventory()
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []
    assert again.find_appliance(None, "a0") is not None  # nothing else went
