"""Many servers at once under limits: no slot is ever held past its capacity, depends_on order always holds.

Two kinds of run, both through the real planner, scheduler and executor, both checked from the journal's
``step_history`` (the executor's own start and end of each attempt; see tests/faults/wave.py):

- one real run of 200 servers on two sim hosts, every step doing its real work on tiny sparse disks
  (discover, create and attach disks, mirror, sync, staging, NIC remap) up to the cutover gate, by the
  `migrate execute` command; the sim's appliances are read back for their attached-disk counts;
- property-based (hypothesis): generated waves of up to 200 servers with a random depends_on DAG, random
  source and target hosts, appliance modes, disk counts and limits, executed through replication and
  cutover by the real executor on the real plan, with every step *instrumented*: it holds its slots for a
  seeded few milliseconds and does nothing else, so hundreds of steps overlap and contend for slots in
  seconds. That is what the executor schedules; the steps' own work is covered by the real run above.
"""

from __future__ import annotations

import json
import random
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.executor import Executor, RunResult
from orchestrator.planner import MAX_DISKS_PER_APPLIANCE
from orchestrator.session import open_session
from orchestrator.steps.base import Step, StepContext
from tests.faults.wave import (
    Interval,
    Wave,
    appliance_overloads,
    attempts,
    limit_violations,
    order_violations,
)


def limits_of(wave: Wave) -> dict[str, int]:
    return {
        "servers": wave.max_parallel_servers,
        "source_host": wave.per_source_host,
        "target_host": wave.per_target_host,
    }


def test_200_servers_really_executed_to_the_gate_keep_every_limit(tmp_path: Path) -> None:
    wave = Wave(
        200,
        source_hosts=4,
        target_hosts=2,
        depends_on={i: [i - 1] for i in range(1, 200, 3)},
        disks={i: 2 for i in range(0, 200, 5)},
        appliance={i: "dedicated" for i in range(0, 200, 50)} | {i: "host" for i in range(1, 200, 40)},
        max_parallel_servers=6,
        per_source_host=3,
        per_target_host=8,
    )
    playbook = wave.write(tmp_path)
    done = CliRunner().invoke(main, ["execute", str(playbook)], catch_exceptions=False)
    assert done.exit_code == 0, done.output[-3000:]
    assert "ready for cutover: s000" in done.output
    plan = json.loads(CliRunner().invoke(main, ["plan", str(playbook), "--format", "json"]).output)
    runs = attempts(tmp_path / ".hvmigrate" / "journal.sqlite")
    assert {r.step_id for r in runs} == {s["id"] for s in plan["steps"] if s["phase"] == "replicate"}
    assert limit_violations(plan, limits_of(wave), runs) == []
    mirrors = [r for r in runs if r.step_id.endswith("/mirror")]
    assert len(mirrors) == 200
    attached: dict[str, int] = {}
    for target in ("target-0", "target-1"):
        for doc in (tmp_path / target / "appliances").glob("*.json"):
            attached[f"{target}/{doc.stem}"] = len(json.loads(doc.read_text())["attachments"])
    assert attached and max(attached.values()) <= MAX_DISKS_PER_APPLIANCE, attached
    through_appliances = sum(
        wave.disks.get(i, 1) for i in range(wave.servers) if wave.appliance.get(i, "shared") != "host"
    )
    assert sum(attached.values()) == through_appliances  # every disk attached once, up to the gate
    assert len(attached) > 4 + 2, attached  # past 60 disks a host's shared appliance gets a sibling


class Instrumented(Step):
    """Every step kind at once: holds the step's slots for a seeded moment, creates nothing."""

    kind = "instrumented"

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def run(self, ctx: StepContext) -> dict[str, Any]:
        time.sleep(random.Random(zlib.crc32(ctx.node.id.encode()) ^ self.seed).uniform(0.0, 0.001))
        return {}

    def undo(self, ctx: StepContext) -> None:
        """Nothing was made."""


def run_instrumented(
    wave: Wave, root: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], list[Interval], RunResult]:
    """Replication and cutover of ``wave`` by the real executor on the real plan, steps instrumented."""
    session = open_session(wave.write(root))
    monkeypatch.setattr("orchestrator.executor.step_for", lambda kind: Instrumented(seed))
    journal, _ = session.open_journal()
    executor = Executor(
        session.plan, session.playbook, journal, state_dir=session.state_dir, base_dir=session.base_dir
    )
    try:
        result = executor.run(executor.select(["replicate", "cutover"]), command="execute")
    finally:
        journal.close()
    return session.plan.to_json(), attempts(session.state_dir / "journal.sqlite"), result


def test_the_checks_catch_a_scheduler_that_ignores_its_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The property can fail: the same executor with its slot capacities taken away breaks them."""
    wave = Wave(30, source_hosts=2, max_parallel_servers=2, per_source_host=1, per_target_host=2)
    monkeypatch.setattr("orchestrator.executor.capacities", lambda limits: {})
    plan, runs, result = run_instrumented(wave, tmp_path, 1, monkeypatch)
    assert result.status == "done"
    broken = limit_violations(plan, limits_of(wave), runs)
    assert any("('servers', '*')" in problem for problem in broken), broken
    assert any("target_host" in problem for problem in broken), broken


@st.composite
def waves(draw: st.DrawFn) -> Wave:
    count = draw(st.integers(1, 200) if draw(st.integers(0, 3)) == 0 else st.integers(1, 40))
    deps: dict[int, list[int]] = {}
    for index in range(1, count):
        if draw(st.integers(0, 3)) == 0:  # a quarter of the servers depend on one to three earlier ones
            deps[index] = sorted(draw(st.sets(st.integers(0, index - 1), min_size=1, max_size=3)))
    return Wave(
        count,
        source_hosts=draw(st.integers(1, 5)),
        target_hosts=draw(st.integers(1, 3)),
        depends_on=deps,
        disks={i: draw(st.integers(1, 3)) for i in range(count) if draw(st.integers(0, 4)) == 0},
        appliance={
            i: draw(st.sampled_from(["dedicated", "host"]))
            for i in range(count)
            if draw(st.integers(0, 9)) == 0
        },
        max_parallel_servers=draw(st.integers(1, 8)),
        per_source_host=draw(st.integers(1, 4)),
        per_target_host=draw(st.integers(1, 6)),
    )


@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,  # seeded: the same examples every run, so CI time and results are stable
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@example(
    wave=Wave(
        200,
        source_hosts=3,
        target_hosts=2,
        depends_on={i: sorted({i - 1, i // 2}) for i in range(2, 200, 4)},
        disks={i: 3 for i in range(0, 200, 7)},
        appliance={i: "dedicated" for i in range(3, 200, 31)},
        max_parallel_servers=5,
        per_source_host=2,
        per_target_host=4,
    ),
    seed=7,
)
@given(wave=waves(), seed=st.integers(0, 2**16))
def test_generated_waves_never_exceed_a_limit_and_always_keep_the_depends_on_order(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, wave: Wave, seed: int
) -> None:
    plan, runs, result = run_instrumented(wave, tmp_path_factory.mktemp("wave"), seed, monkeypatch)
    assert result.status == "done" and not result.failed, result
    assert appliance_overloads(plan, wave) == []
    wanted = {s["id"] for s in plan["steps"] if s["phase"] in ("replicate", "cutover")}
    assert {r.step_id for r in runs} == wanted
    assert limit_violations(plan, limits_of(wave), runs) == []
    assert order_violations(plan, runs, wave) == []
