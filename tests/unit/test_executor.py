"""The executor and journal against real SQLite, real threads and real signals' effects (cancel events)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from orchestrator.executor import Executor
from orchestrator.journal import Journal, JournalError
from orchestrator.planner import Plan, node_hash
from orchestrator.playbook.models import Playbook
from orchestrator.steps import registry
from orchestrator.steps.base import Cancelled, Step, StepContext, StepFailed, StepNode


def playbook(**limits: Any) -> Playbook:
    return Playbook.model_validate(
        {
            "apiVersion": "hvmigrate/v1",
            "kind": "MigrationPlaybook",
            "name": "t",
            "defaults": {"limits": {"retry_backoff": 0.01, **limits}},
            "providers": {"local": {"type": "sim", "root": "/nonexistent"}},
            "servers": [
                {
                    "name": n,
                    "source": {"type": "image", "path": f"/x/{n}.raw"},
                    "target": {"provider": "local"},
                }
                for n in ("a", "b", "c")
            ],
        }
    )


class Recorder:
    """Shared memory of what the test steps did, with a concurrency high-water mark per slot."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.order: list[str] = []
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.undone: list[str] = []


REC = Recorder()


class Work(Step):
    kind = "t_work"
    retryable = True
    transient = True

    def run(self, ctx: StepContext) -> dict[str, Any]:
        node = ctx.node
        with REC.lock:
            REC.calls[node.id] = REC.calls.get(node.id, 0) + 1
            calls = REC.calls[node.id]
            for slot in node.slots:
                key = "/".join(slot)
                REC.active[key] = REC.active.get(key, 0) + 1
                REC.peak[key] = max(REC.peak.get(key, 0), REC.active[key])
        ctx.record_resource("thing", "local", {"id": node.id})
        try:
            time.sleep(float(node.params.get("sleep", 0.005)))
            if node.params.get("fail_times", 0) >= calls:
                raise StepFailed(f"{node.id} failed on purpose", retryable=True)
            if node.params.get("fatal"):
                raise StepFailed(f"{node.id} failed for good")
            if node.params.get("until_cancelled"):
                while not ctx.cancelled():
                    time.sleep(0.01)
                raise Cancelled("stopped")
        finally:
            with REC.lock:
                for slot in node.slots:
                    REC.active["/".join(slot)] -= 1
        with REC.lock:
            REC.order.append(node.id)
        ctx.progress(1, 1)
        return {"ok": node.id}

    def undo(self, ctx: StepContext) -> None:
        with REC.lock:
            REC.undone.append(ctx.node.id)
        super().undo(ctx)


@pytest.fixture(autouse=True)
def test_step(monkeypatch: pytest.MonkeyPatch) -> None:
    global REC
    REC = Recorder()
    monkeypatch.setitem(registry(), "t_work", Work)


def make_plan(nodes: list[StepNode], edges: list[tuple[str, str]]) -> Plan:
    graph = nx.DiGraph()
    for node in nodes:
        graph.add_node(node.id, step=node)
    graph.add_edges_from(edges)
    return Plan(graph=graph, playbook_name="t", playbook_sha256="x", servers=["a", "b", "c"])


def node(step_id: str, **params: Any) -> StepNode:
    server, _, _ = step_id.partition("/")
    slots = params.pop("slots", ())
    return StepNode(id=step_id, kind="t_work", server=server, phase="replicate", params=params, slots=slots)


def run(plan: Plan, state: Path, pb: Playbook | None = None, **kwargs: Any) -> tuple[Any, Journal]:
    journal = Journal(state)
    journal.adopt_plan(
        {"plan_hash": plan.hash, "playbook_sha256": "x"},
        {s.id: (s.server, s.kind, node_hash(s)) for s in plan.steps()},
    )
    executor = Executor(plan, pb or playbook(), journal, state_dir=state, base_dir=state, **kwargs)
    result = executor.run({s.id for s in plan.steps() if s.phase != "cleanup"}, command="test")
    return result, journal


def test_runs_in_dependency_order_and_journals_outputs(tmp_path: Path) -> None:
    plan = make_plan(
        [node("a/1"), node("a/2"), node("b/1"), node("a/3")], [("a/1", "a/2"), ("a/2", "a/3"), ("b/1", "a/3")]
    )
    result, journal = run(plan, tmp_path)
    assert result.status == "done" and result.exit_code == 0
    assert REC.order.index("a/1") < REC.order.index("a/2") < REC.order.index("a/3")
    assert REC.order.index("b/1") < REC.order.index("a/3")
    assert journal.output("a/3") == {"ok": "a/3"}
    assert set(journal.states().values()) == {"done"}


def test_slots_cap_concurrency(tmp_path: Path) -> None:
    nodes = [node(f"{s}/{i}", sleep=0.03, slots=(("target_host", "h1"),)) for s in "abc" for i in range(4)]
    pb = playbook(per_target_host=2)
    result, _ = run(make_plan(nodes, []), tmp_path, pb)
    assert result.status == "done"
    assert REC.peak["target_host/h1"] == 2  # reached, never passed


def test_retryable_failure_is_retried_then_succeeds(tmp_path: Path) -> None:
    result, journal = run(make_plan([node("a/1", fail_times=2)], []), tmp_path)
    assert result.status == "done"
    assert REC.calls["a/1"] == 3
    assert journal.step("a/1").attempts == 3


def test_retries_are_bounded(tmp_path: Path) -> None:
    result, journal = run(make_plan([node("a/1", fail_times=99)], []), tmp_path, playbook(retries=2))
    assert result.status == "failed" and result.exit_code == 1
    assert REC.calls["a/1"] == 3
    assert "failed on purpose" in journal.step("a/1").error


def test_failure_blocks_dependents_runs_cleanup_and_spares_other_servers(tmp_path: Path) -> None:
    cleanup = StepNode(
        id="a/cleanup_on_error", kind="cleanup_on_error", server="a", phase="cleanup", cleanup_of=("a/1",)
    )
    plan = make_plan(
        [node("a/1"), node("a/2", fatal=True), node("a/3"), node("b/1"), node("b/2"), cleanup],
        [("a/1", "a/2"), ("a/2", "a/3"), ("b/1", "b/2")],
    )
    result, journal = run(plan, tmp_path)
    assert result.status == "failed"
    assert list(result.failed) == ["a/2"]
    assert result.blocked == ["a/3"]
    assert {"b/1", "b/2"} <= set(REC.order)
    assert REC.undone == ["a/1"]  # the transient step was undone by the cleanup node
    assert journal.states()["a/1"] == "undone"
    assert journal.resources("a/1") == []
    assert result.cleaned == ["a/cleanup_on_error"]


def test_cancel_keeps_state_and_rerun_resumes_without_redoing(tmp_path: Path) -> None:
    plan = make_plan(
        [node("a/1"), node("a/2", until_cancelled=True), node("a/3")], [("a/1", "a/2"), ("a/2", "a/3")]
    )
    journal = Journal(tmp_path)
    journal.adopt_plan(
        {"plan_hash": plan.hash, "playbook_sha256": "x"},
        {s.id: (s.server, s.kind, node_hash(s)) for s in plan.steps()},
    )
    executor = Executor(plan, playbook(), journal, state_dir=tmp_path, base_dir=tmp_path)
    timer = threading.Timer(0.3, executor.cancel)
    timer.start()
    result = executor.run({"a/1", "a/2", "a/3"}, command="test")
    assert result.status == "cancelled" and result.exit_code == 130
    assert journal.states() == {"a/1": "done", "a/2": "pending", "a/3": "pending"}

    plan.graph.nodes["a/2"]["step"] = node("a/2")  # the cause of the stop is gone
    again = Executor(plan, playbook(), journal, state_dir=tmp_path, base_dir=tmp_path)
    result = again.run({"a/1", "a/2", "a/3"}, command="test")
    assert result.status == "done"
    assert REC.calls["a/1"] == 1  # not redone


def test_step_left_running_by_a_killed_process_runs_again(tmp_path: Path) -> None:
    plan = make_plan([node("a/1"), node("a/2")], [("a/1", "a/2")])
    _, journal = run(plan, tmp_path)
    run_id = journal.begin_run("test", plan.hash)
    journal.set_state("a/2", "running", run_id=run_id)  # as if kill -9 struck mid-step
    executor = Executor(plan, playbook(), journal, state_dir=tmp_path, base_dir=tmp_path)
    result = executor.run({"a/1", "a/2"}, command="test")
    assert result.done == ["a/2"]
    assert REC.calls == {"a/1": 1, "a/2": 2}
    assert any(r["status"] == "crashed" for r in journal.runs())


def test_journal_from_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    Journal(tmp_path).close()
    db = sqlite3.connect(tmp_path / "journal.sqlite")
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    before = (tmp_path / "journal.sqlite").read_bytes()
    with pytest.raises(JournalError, match="newer hvmigrate"):
        Journal(tmp_path)
    assert (tmp_path / "journal.sqlite").read_bytes() == before


def test_corrupt_journal_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(JournalError, match=r"corrupt|not an hvmigrate journal"):
        Journal(tmp_path)
    assert path.read_bytes() == b"this is not sqlite at all" * 100


def test_adopting_a_changed_plan_resets_only_changed_steps(tmp_path: Path) -> None:
    plan = make_plan([node("a/1"), node("a/2")], [("a/1", "a/2")])
    _, journal = run(plan, tmp_path)
    changed = make_plan([node("a/1"), node("a/2", sleep=0.001)], [("a/1", "a/2")])
    reset = journal.adopt_plan(
        {"plan_hash": changed.hash + "x", "playbook_sha256": "y"},
        {s.id: (s.server, s.kind, node_hash(s)) for s in changed.steps()},
    )
    assert reset == ["a/2"]
    assert journal.states() == {"a/1": "done", "a/2": "pending"}
