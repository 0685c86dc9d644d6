"""The warm-migration cadence, the due logic, the keeper loop and the one-orchestrator-per-plan lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.playbook.models import SyncOptions
from orchestrator.run_lock import KEEPER, PlanBusy, PlanLock
from orchestrator.sync_schedule import (
    PassSchedule,
    keep_syncing,
    keeps_syncing,
    next_due,
    next_interval,
    schedule_of,
)

HOUR = 3600.0


def test_fixed_cadence_ignores_how_long_the_last_pass_took() -> None:
    options = SyncOptions(interval="1h")
    assert next_interval(options, None) == HOUR
    assert next_interval(options, 5 * HOUR) == HOUR


@pytest.mark.parametrize(
    ("last_pass", "expected"),
    [
        (None, HOUR),  # no pass measured: the floor
        (10 * 60, HOUR),  # a quick pass: the playbook's interval
        (3 * HOUR, 1.5 * HOUR),  # a slow pass: a pause of half its length
        (30 * HOUR, 12 * HOUR),  # a very slow pass: capped by max_interval (default 12h)
    ],
)
def test_adaptive_cadence_is_min_of_max_interval_and_the_larger_of_interval_and_half_the_last_pass(
    last_pass: float | None, expected: float
) -> None:
    assert next_interval(SyncOptions(interval="1h", adaptive=True), last_pass) == expected


def test_adaptive_max_interval_below_interval_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_interval must be at least interval"):
        SyncOptions(interval="2h", adaptive=True, max_interval="1h")


def test_next_pass_is_due_an_interval_after_the_last_pass_ended() -> None:
    options = SyncOptions(interval="10m")
    passes = [{"mode": "full", "started_at": 1000.0, "finished_at": 1500.0, "duration": 500.0}]
    assert next_due(passes, options) == 1500.0 + 600
    legacy = [{"mode": "sync", "started_at": 1000.0, "duration": 40.0}]  # written before finished_at
    assert next_due(legacy, options) == 1040.0 + 600
    assert next_due([], options) is None


def test_only_mirrored_servers_before_the_gate_keep_syncing() -> None:
    assert not keeps_syncing({}, "db01")
    assert keeps_syncing({"db01/mirror": "done"}, "db01")
    assert keeps_syncing({"db01/mirror": "done", "db01/cutover_gate": "failed"}, "db01")  # refused gate
    assert not keeps_syncing({"db01/mirror": "done", "db01/cutover_gate": "done"}, "db01")
    assert not keeps_syncing({"db01/mirror": "done", "db01/cutover_gate": "running"}, "db01")


def test_a_server_is_due_only_once_its_next_pass_time_has_come() -> None:
    options = SyncOptions(interval="5m")
    passes = [{"mode": "sync", "started_at": 0.0, "finished_at": 60.0, "duration": 60.0, "bytes_written": 1}]
    states = {"db01/mirror": "done"}
    early = schedule_of("db01", passes, states, options, now=200.0)
    assert early.next_due == 360.0 and not early.due(200.0)
    assert early.lag == 200.0 and early.last_bytes == 1 and early.last_duration == 60.0
    assert schedule_of("db01", passes, states, options, now=360.0).due(360.0)
    cut = schedule_of("db01", passes, {**states, "db01/cutover_gate": "done"}, options, now=9999.0)
    assert cut.next_due is None and not cut.due(9999.0)


# ---------------------------------------------------------------- the keeper loop, on a fake clock


class FakePlan:
    """Servers with a next-due time each; a pass moves it on by ``interval``; a clock moved by waits."""

    def __init__(self, due: dict[str, float], interval: float = 10.0) -> None:
        self.due = dict(due)
        self.interval = interval
        self.now = 0.0
        self.cut_over: set[str] = set()
        self.passes: list[list[str]] = []
        self.outcomes: list[str] = []

    def clock(self, names: list[str], now: float) -> list[PassSchedule]:
        return [
            PassSchedule(n, n not in self.cut_over, None, self.due[n] - self.interval, None, None, None, None,
                         self.due[n], None)
            for n in names
        ]  # fmt: skip

    def run_pass(self, due: list[str]) -> str:
        self.passes.append(sorted(due))
        outcome = self.outcomes.pop(0) if self.outcomes else "done"
        if outcome == "done":
            for name in due:
                self.due[name] = self.now + self.interval
        return outcome


class FakeStop(threading.Event):
    """wait() advances the fake clock instead of sleeping; ``after`` passes, it stops the keeper."""

    def __init__(self, plan: FakePlan, stop_at: float | None = None, cut_at: float | None = None) -> None:
        super().__init__()
        self.plan, self.stop_at, self.cut_at = plan, stop_at, cut_at

    def wait(self, timeout: float | None = None) -> bool:
        self.plan.now += timeout or 0.0
        if self.cut_at is not None and self.plan.now >= self.cut_at:
            self.plan.cut_over = set(self.plan.due)
        if self.stop_at is not None and self.plan.now >= self.stop_at:
            self.set()
        return self.is_set()


def keeper(plan: FakePlan, stop: FakeStop, lines: list[str] | None = None) -> str:
    outcome = keep_syncing(
        sorted(plan.due),
        clock=plan.clock,
        run_pass=plan.run_pass,
        stopped=stop,
        say=(lines if lines is not None else []).append,
        now=lambda: plan.now,
        poll=1.0,
    )
    return f"{outcome.status}/{outcome.passes}"


def test_keeper_runs_each_server_when_due_until_stopped() -> None:
    plan = FakePlan({"db01": 0.0, "web01": 5.0})
    lines: list[str] = []
    assert keeper(plan, FakeStop(plan, stop_at=21.0), lines) == "cancelled/5"
    assert plan.passes == [["db01"], ["web01"], ["db01"], ["web01"], ["db01"]]
    assert any("next pass" in line for line in lines)


def test_keeper_ends_when_another_command_cut_every_server_over() -> None:
    plan = FakePlan({"db01": 0.0})
    assert keeper(plan, FakeStop(plan, cut_at=15.0)) == "cut over/2"


def test_a_failed_pass_waits_its_interval_and_a_busy_plan_is_tried_again_soon() -> None:
    plan = FakePlan({"db01": 0.0})
    plan.outcomes = ["busy", "failed", "done"]
    lines: list[str] = []
    assert keeper(plan, FakeStop(plan, stop_at=12.5), lines) == "cancelled/2"
    # busy at 0 -> again after one poll (1s); failed at 1 -> held back a full interval -> done at 11
    assert plan.passes == [["db01"], ["db01"], ["db01"]]
    assert any("failed" in line for line in lines)


def test_a_cancelled_pass_ends_the_keeper() -> None:
    plan = FakePlan({"db01": 0.0})
    plan.outcomes = ["cancelled"]
    assert keeper(plan, FakeStop(plan)) == "cancelled/0"


# ---------------------------------------------------------------- one orchestrator per plan


def test_a_second_orchestrator_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    first = PlanLock(tmp_path).acquire("execute --keep-syncing")
    with pytest.raises(PlanBusy) as refused:
        PlanLock(tmp_path).acquire("sync --due")
    assert refused.value.holder["command"] == "execute --keep-syncing"
    assert f"pid {os.getpid()}" in str(refused.value) and "\n" not in str(refused.value)
    assert PlanLock(tmp_path, KEEPER).holder() is None  # another lock of the same plan is free
    first.release()
    assert PlanLock(tmp_path).holder() is None
    PlanLock(tmp_path).acquire("sync").release()


def test_a_lock_dies_with_its_process_even_on_kill_9(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from orchestrator.run_lock import PlanLock; "
            "PlanLock(sys.argv[1]).acquire('execute'); print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert PlanLock(tmp_path).holder() is not None
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        assert PlanLock(tmp_path).holder() is None
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
