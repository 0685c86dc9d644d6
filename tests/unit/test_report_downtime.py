"""Measured downtime, as `migrate report` and `migrate status` read it back from a real journal.

The application stops being served when quiesce_source starts (services stop, filesystems freeze), before
the final pass and the shutdown; the replica serves when verify_replica ends. The journal stamps every
transition itself, so each test checks the figure against the stamps it recorded, never against a clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.journal import Journal
from orchestrator.planner import CUTOVER_CHAIN, build_plan, node_hash
from orchestrator.playbook.models import Playbook
from orchestrator.report.from_journal import build_run_report


def playbook(**cutover: Any) -> Playbook:
    return Playbook.model_validate(
        {
            "apiVersion": "hvmigrate/v1",
            "kind": "MigrationPlaybook",
            "name": "downtime",
            "defaults": {"cutover": {"mode": "manual", **cutover}},
            "providers": {"local": {"type": "sim", "root": "./sim"}},
            "servers": [
                {
                    "name": "db01",
                    "source": {"type": "image", "path": "db01.raw"},
                    "target": {"provider": "local", "disks": [{"source": "db01.raw"}]},
                }
            ],
        }
    )


class Run:
    """A journal that has adopted the real plan, with steps moved through it as the executor does."""

    def __init__(self, state: Path, pb: Playbook) -> None:
        self.playbook = pb
        self.plan = build_plan(pb)
        self.journal = Journal(state)
        self.journal.adopt_plan(
            self.plan.to_json(),
            {s.id: (s.server, s.kind, node_hash(s)) for s in self.plan.steps()},
        )
        self.run_id = self.journal.begin_run("cutover", self.plan.hash)

    def step(self, kind: str, state: str = "done", **output: Any) -> None:
        step_id = f"db01/{kind}"
        self.journal.set_state(step_id, "running", run_id=self.run_id)
        self.journal.set_state(step_id, state, run_id=self.run_id, output=output, error=None)

    def cutover(
        self, resume_at: str = "cutover_gate", quiesce: dict[str, Any] | None = None, **final_sync: Any
    ) -> None:
        """The cutover chain from ``resume_at`` on, as a (re-)run of `migrate cutover` goes through it."""
        outputs = {"quiesce_source": quiesce or {}, "final_sync": final_sync}
        kinds = [k for k in CUTOVER_CHAIN if f"db01/{k}" in self.plan.graph]
        for kind in kinds[kinds.index(resume_at) :]:
            self.step(kind, **outputs.get(kind, {}))

    def started(self, kind: str) -> float:
        record = self.journal.step(f"db01/{kind}")
        assert record is not None and record.started_at is not None
        return record.started_at

    def ended(self, kind: str) -> float:
        record = self.journal.step(f"db01/{kind}")
        assert record is not None and record.ended_at is not None
        return record.ended_at

    def measured(self) -> float | None:
        report = build_run_report(self.plan, self.playbook, self.journal, playbook_path="downtime.yaml")
        return report.servers[0].downtime_measured


def test_downtime_starts_when_quiesce_starts_not_at_the_shutdown(tmp_path: Path) -> None:
    run = Run(tmp_path, playbook(shutdown_source=True))
    run.cutover()
    assert run.started("quiesce_source") < run.started("final_sync") < run.started("shutdown_source")
    assert run.measured() == run.ended("verify_replica") - run.started("quiesce_source")


def test_without_a_shutdown_downtime_still_starts_at_quiesce(tmp_path: Path) -> None:
    run = Run(tmp_path, playbook(shutdown_source=False))
    assert "db01/shutdown_source" not in run.plan.graph
    run.cutover()
    assert run.measured() == run.ended("verify_replica") - run.started("quiesce_source")


# What SshSource.quiesce journals: what it paused (actions), and what it left live on purpose.
FROZE = {
    "version": 1,
    "actions": [{"kind": "freeze", "device": "/dev/vdb1", "mountpoint": "/srv"}],
    "live": [],
}
NOTHING = {"version": 1, "actions": [], "live": ["/dev/vda1 holds /: left live (...)"]}


def test_a_quiesce_that_paused_nothing_leaves_the_source_serving_until_its_shutdown(tmp_path: Path) -> None:
    paused = Run(tmp_path / "froze", playbook(shutdown_source=True))
    paused.cutover(quiesce={"source_state": FROZE})
    assert paused.measured() == paused.ended("verify_replica") - paused.started("quiesce_source")

    live = Run(tmp_path / "live", playbook(shutdown_source=True))
    live.cutover(quiesce={"source_state": NOTHING})
    assert live.measured() == live.ended("verify_replica") - live.started("shutdown_source")

    # no shutdown either: when it stopped serving cannot be told, so the quiesce counts (an upper bound)
    kept = Run(tmp_path / "kept", playbook(shutdown_source=False))
    kept.cutover(quiesce={"source_state": NOTHING})
    assert kept.measured() == kept.ended("verify_replica") - kept.started("quiesce_source")


def test_a_final_pass_that_quiesced_again_after_a_thaw_starts_the_downtime(tmp_path: Path) -> None:
    """A failed final pass thaws the source, which serves again; the pass that succeeds quiesces it anew
    and says when (``requiesced_at``): the outage that ended with the replica started then."""
    run = Run(tmp_path, playbook(shutdown_source=True))
    run.step("cutover_gate")
    run.step("quiesce_source")
    run.step("final_sync", state="failed")
    requiesced = run.ended("final_sync")  # a moment the journal stamped, after the first quiesce
    run.cutover("final_sync", requiesced_at=requiesced)  # quiesce_source stays done: it is not re-run
    assert run.started("quiesce_source") < requiesced
    assert run.measured() == run.ended("verify_replica") - requiesced


def test_no_downtime_is_measured_before_the_replica_is_verified(tmp_path: Path) -> None:
    run = Run(tmp_path, playbook())
    run.step("cutover_gate")
    run.step("quiesce_source")
    run.step("final_sync")
    assert run.measured() is None
    run.step("verify_replica", state="failed")
    assert run.measured() is None
