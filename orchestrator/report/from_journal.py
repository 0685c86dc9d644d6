"""Turn what the journal recorded into a RunReport, and tell each server's state in one word.

`migrate status` and `migrate report` both read from here, so the terminal, JSON, Markdown and HTML views
of a run can never disagree.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from orchestrator.convergence import assess
from orchestrator.journal import Journal, StepRecord
from orchestrator.planner import TEST_CHAIN, Plan
from orchestrator.playbook.models import Playbook, Server
from orchestrator.report.model import (
    AuditLine,
    FindingView,
    RunReport,
    ServerSummary,
    StepTiming,
    utc_now_iso,
)
from orchestrator.sync_schedule import schedule_of

DATA_KINDS = ("mirror", "sync", "final_sync", "mirror_files", "sync_files", "final_files_pass")


# The furthest milestone a server reached names its state; a data-only server's steps included.
_MILESTONES = {
    "verify_replica": "cut over",
    "final_files_pass": "cut over",
    "remap_nics": "ready for cutover",
    "sync_files": "ready for cutover",
    "mirror": "replicating",
    "mirror_files": "replicating",
    "discover_source": "preparing",
}


def server_state(records: dict[str, StepRecord], server: str) -> str:
    """One word for where a server is: failed, cut over, ready for cutover, replicating, planned."""
    mine = {
        r.kind: r
        for r in records.values()
        if r.server == server and r.kind != "cleanup_on_error" and r.kind not in TEST_CHAIN
    }
    states = {r.state for r in mine.values()}
    if "failed" in states:
        return "failed"
    if "running" in states:
        running = sorted(k for k, r in mine.items() if r.state == "running")
        return f"running {', '.join(running)}"
    last = [k for k in _MILESTONES if k in mine and mine[k].state == "done"]
    if not last:
        return "undone" if "undone" in states else "planned"
    state = _MILESTONES[last[0]]
    test = next((r for r in records.values() if r.server == server and r.kind == "verify_test_copy"), None)
    if last[0] == "remap_nics" and test is not None and test.state == "done":
        state += " (test copy up)"
    return state


def _source_label(server: Server) -> str:
    source = server.source
    where = getattr(source, "host", None) or getattr(source, "path", None) or getattr(source, "vm", "")
    return f"{source.type}:{where}"


def build_run_report(
    plan: Plan,
    playbook: Playbook,
    journal: Journal,
    *,
    playbook_path: str,
    findings: list[FindingView] | None = None,
) -> RunReport:
    records = journal.steps()
    starts = [r.started_at for r in records.values() if r.started_at]
    origin = min(starts) if starts else time.time()
    ends = [r.ended_at or time.time() for r in records.values() if r.started_at]
    steps: list[StepTiming] = []
    for node in plan.steps():
        record = records.get(node.id)
        if record is None or (node.phase in ("cleanup", "test") and record.state == "pending"):
            continue
        output = record.output or {}
        steps.append(
            StepTiming(
                step_id=node.id,
                server=node.server,
                kind=node.kind,
                phase=node.phase,
                state=record.state,
                start=record.started_at - origin if record.started_at else None,
                end=record.ended_at - origin if record.ended_at and record.state != "running" else None,
                bytes=int(output.get("bytes_written", 0)),
                attempts=record.attempts,
                message=record.error or "",
            )
        )

    series = _series(steps)
    servers = [_server_summary(server, records, journal, playbook) for server in playbook.servers]
    runs = journal.runs()
    return RunReport(
        kind="run",
        title=f"{playbook.name}: migration run",
        playbook=playbook_path,
        plan_hash=plan.hash,
        generated_at=utc_now_iso(),
        started_at=datetime.fromtimestamp(origin, UTC).isoformat(timespec="seconds") if starts else None,
        duration=(max(ends) - origin) if ends else 0.0,
        servers=servers,
        steps=steps,
        findings=findings or [],
        bytes_moved=sum(s.bytes_moved for s in servers),
        peak_bandwidth=max((rate for _, rate in series), default=0.0),
        bandwidth_series=series,
        critical_path=[],
        notes=[f"{len(runs)} command run(s) recorded; last: {runs[-1]['command']} ({runs[-1]['status']})"]
        if runs
        else [],
        audit=audit_lines(journal),
    )


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def audit_lines(journal: Journal, server: str | None = None) -> list[AuditLine]:
    """The journal's audit trail as report lines (already redacted when it was written)."""
    return [
        AuditLine(
            at=iso(row["ts"]) or "",
            who=row["who"],
            server=row["server"],
            step_id=row["step_id"],
            endpoint=row["endpoint"],
            operation=row["operation"],
            outcome=row["outcome"],
            exit_code=row["exit_code"],
            detail=row["detail"],
        )
        for row in journal.audit(server)
    ]


def _server_summary(
    server: Server, records: dict[str, StepRecord], journal: Journal, playbook: Playbook
) -> ServerSummary:
    name = server.name
    mine = {r.kind: r for r in records.values() if r.server == name}
    disks = (mine.get("create_disks").output or {}).get("disks", []) if "create_disks" in mine else []
    moved = sum(int((mine[k].output or {}).get("bytes_written", 0)) for k in DATA_KINDS if k in mine)
    started = [r.started_at for r in mine.values() if r.started_at]
    ended = [r.ended_at for r in mine.values() if r.ended_at]
    down_from = downtime_start(mine)
    up = mine.get("verify_replica")
    measured = None
    if down_from is not None and up and up.state == "done" and up.ended_at and up.ended_at >= down_from:
        measured = up.ended_at - down_from
    passes = (journal.load_checkpoint(f"{name}/passes") or {}).get("passes", [])
    options = playbook.sync_for(server)
    verdict = assess(passes, interval=options.interval)
    clock = schedule_of(name, passes, {r.step_id: r.state for r in records.values()}, options, time.time())
    counted = [  # a test copy's steps count while it exists, not as work left to do
        r
        for r in mine.values()
        if r.kind != "cleanup_on_error" and not (r.kind in TEST_CHAIN and r.state in ("pending", "undone"))
    ]
    return ServerSummary(
        name=name,
        source=_source_label(server),
        target=_target_label(server),
        state=server_state(records, name),
        steps_done=sum(r.state == "done" for r in counted),
        steps_total=len(counted),
        bytes_total=sum(int(d["disk"]["size"]) for d in disks),
        bytes_moved=moved,
        duration=(max(ended) - min(started)) if started and ended else None,
        downtime_measured=measured,
        lag=verdict.lag,
        convergence=verdict.state if passes else None,
        last_pass_at=iso(clock.last_started),
        last_pass_bytes=clock.last_bytes,
        last_pass_duration=clock.last_duration,
        next_pass_due=iso(clock.next_due),
        final_delta_estimate=clock.final_delta,
        files=files_summary(journal, name) if server.data is not None else None,
    )


def _target_label(server: Server) -> str:
    if server.data is None:
        return f"{server.target.provider}/{server.vm_name}"  # type: ignore[union-attr]
    host = server.data.target_host
    return "files:local" if host == "local" else f"files:{host.host}"


def files_summary(journal: Journal, name: str) -> dict[str, Any]:
    """A data-only server's figures: its last pass, totals over every pass, the last verification (times
    in UTC) and what was skipped (a file that could not be read or written, logged and left out)."""
    last = journal.load_checkpoint(f"{name}/files_last_pass")
    verify = journal.load_checkpoint(f"{name}/files_verify")
    every = (journal.load_checkpoint(f"{name}/passes") or {}).get("passes", [])
    summary: dict[str, Any] = {
        "passes": len(every),
        "bytes_sent_total": sum(int(p.get("bytes_written", 0)) for p in every),
        "last_pass": None,
        "verification": None,
        "skipped": [],
    }
    if last is not None:
        summary["last_pass"] = {
            "mode": last.get("mode"),
            "finished_at": iso(last.get("finished_at")),
            **{k: last.get(k, 0) for k in _PASS_FIGURES},
            "orphans": last.get("orphans_count", len(last.get("orphans") or [])),
            "orphan_action": last.get("orphan_action"),
        }
        summary["skipped"] = list(last.get("problems") or [])
    if verify is not None:
        summary["verification"] = {
            "at": iso(verify.get("finished_at")),
            "differing": verify.get("differences_count", len(verify.get("differences") or [])),
            "differences": list(verify.get("differences") or []),
        }
    return summary


_PASS_FIGURES = ("files", "folders", "links", "hardlinks", "bytes_total", "files_sent", "bytes_sent")


def downtime_start(mine: dict[str, StepRecord]) -> float | None:
    """When the source stopped serving for the last time before its replica took over.

    That is when quiesce_source started (services stop, filesystems freeze), before the final pass and
    the shutdown. A quiesce that journaled a state with nothing in it paused nothing (no quiesce
    configured, or every filesystem left live): the source served on until shutdown_source started, when
    there is one. A final pass that failed thawed the source, which then served again until the pass
    that succeeded quiesced it anew (final_sync's ``requiesced_at``): the outage began then.
    """
    quiesce, shutdown = mine.get("quiesce_source"), mine.get("shutdown_source")
    quiesced = quiesce.started_at if quiesce is not None else None
    stopped = shutdown.started_at if shutdown is not None else None
    state = (quiesce.output or {}).get("source_state") if quiesce is not None else None
    paused_nothing = isinstance(state, dict) and not state.get("actions")
    if quiesced is None or (paused_nothing and stopped is not None):
        start = stopped
    else:
        start = min(quiesced, stopped) if stopped is not None else quiesced
    if start is None:
        return None
    final = mine.get("final_sync")
    requiesced = (final.output or {}).get("requiesced_at") if final is not None else None
    if isinstance(requiesced, int | float) and requiesced > start:
        start = float(requiesced)
    return start


def _series(steps: list[StepTiming]) -> list[tuple[float, float]]:
    """Average rate of each data step over its span, summed: a step function of bandwidth over time."""
    edges: list[tuple[float, float]] = []
    for step in steps:
        if step.kind in DATA_KINDS and step.start is not None and step.end and step.end > step.start:
            rate = step.bytes / (step.end - step.start)
            edges += [(step.start, rate), (step.end, -rate)]
    series, level = [], 0.0
    for t, delta in sorted(edges):
        level += delta
        series.append((t, max(0.0, level)))
    return series
