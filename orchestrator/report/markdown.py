"""The report as Markdown, to paste into a change ticket or a pull request.

Every value that comes from the playbook or a provider is escaped: a server name with ``|`` would
otherwise break the table and one with ``<`` could inject HTML into the page that renders it.
"""

from __future__ import annotations

import re

from orchestrator.report import files_view
from orchestrator.report.model import (
    DASH,
    RunReport,
    ServerSummary,
    show_breakdown,
    show_duration,
    show_rate,
    show_size,
)

_SPECIAL = re.compile(r"([\\`*_\[\]<>|#&])")


def md(text: object) -> str:
    """One line of Markdown text showing ``text`` literally."""
    if text is None or text == "":
        return DASH
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def code(text: object) -> str:
    """An identifier (step id, rule id, path) as a code span: literal, and without escapes cluttering it."""
    if text is None or text == "":
        return DASH
    flat = " ".join(str(text).split())
    if "`" in flat:
        return md(flat)
    return "`" + flat.replace("|", "\\|") + "`"  # GFM: a pipe splits a table cell even inside a code span


def to_markdown(report: RunReport) -> str:
    parts = [
        _summary(report),
        _failures(report),
        _servers(report),
        files_view.to_markdown(report, md),
        _critical_path(report),
        _findings(report),
        _audit(report),
        _notes(report),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _summary(report: RunReport) -> str:
    what = "Simulation (dry run, predicted figures)" if report.is_simulation else "Run (measured figures)"
    steps_done = sum(1 for s in report.steps if s.state == "done")
    states = ", ".join(f"{n} {state}" for state, n in sorted(report.state_counts().items()))
    rows = [
        ("Kind", what),
        ("Playbook", code(report.playbook)),
        ("Plan", code(report.plan_hash)),
        ("Generated", md(report.generated_at)),
        ("Started", md(report.started_at)),
        ("Total duration", show_duration(report.duration)),
        ("Servers", f"{len(report.servers)}" + (f" ({md(states)})" if states else "")),
        ("Steps done", f"{steps_done} / {len(report.steps)}"),
        ("Bytes moved", show_size(report.bytes_moved)),
        ("Peak bandwidth", show_rate(report.peak_bandwidth)),
        ("Findings", ", ".join(f"{n} {md(sev)}" for sev, n in report.finding_counts().items()) or "none"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"# {md(report.title)}\n\n| | |\n|---|---|\n{table}"


def _failures(report: RunReport) -> str:
    failed = report.failed_steps()
    if not failed:
        return ""
    rows = "\n".join(
        f"| {code(s.step_id)} | {md(s.state)} | {s.attempts or DASH} | {show_duration(s.end)} "
        f"| {md(s.message)} |"
        for s in failed
    )
    return "## What failed\n\n| Step | State | Attempts | At | Message |\n|---|---|--:|--:|---|\n" + rows


def _servers(report: RunReport) -> str:
    header = (
        "| Server | State | Source | Target | Steps | Moved | Size | Duration | Downtime est. "
        "| Downtime measured | Downtime breakdown | Lag |\n"
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|---|--:|"
    )
    if not report.servers:
        return "## Servers\n\nNo servers in this report."
    return "## Servers\n\n" + header + "\n" + "\n".join(_server_row(s) for s in report.servers)


def _server_row(s: ServerSummary) -> str:
    cells = [
        md(s.name),
        md(s.state),
        md(s.source),
        md(s.target),
        f"{s.steps_done}/{s.steps_total}",
        show_size(s.bytes_moved),
        show_size(s.bytes_total),
        show_duration(s.duration),
        show_duration(s.downtime_estimate),
        show_duration(s.downtime_measured),
        md(show_breakdown(s)),
        show_duration(s.lag),
    ]
    return "| " + " | ".join(cells) + " |"


def _critical_path(report: RunReport) -> str:
    steps = report.critical_steps()
    if not steps:
        return "## Critical path\n\nNo critical path was computed for this report."
    first = min((s.start for s in steps if s.start is not None), default=None)
    last = max((s.end for s in steps if s.end is not None), default=None)
    span = show_duration(last - first) if first is not None and last is not None else DASH
    rows = "\n".join(
        f"| {i} | {code(s.step_id)} | {md(s.state)} | {show_duration(s.start)} | {show_duration(s.end)} "
        f"| {show_duration(s.duration)} |"
        for i, s in enumerate(steps, 1)
    )
    return (
        f"## Critical path\n\n{len(steps)} steps spanning {span}; "
        "shortening any of them shortens the run.\n\n"
        "| # | Step | State | Start | End | Duration |\n|--:|---|---|--:|--:|--:|\n" + rows
    )


def _findings(report: RunReport) -> str:
    if not report.findings:
        return "## Findings\n\nNo findings."
    rows = "\n".join(
        f"| {md(f.severity)} | {code(f.rule_id)} | {md(f.server)} | {code(f.location)} | {md(f.message)} "
        f"| {md(f.fix)} |"
        for f in report.findings_by_severity()
    )
    return (
        "## Findings\n\n| Severity | Rule | Server | Location | Message | Fix |\n|---|---|---|---|---|---|\n"
        + rows
    )


AUDIT_ROWS_SHOWN = 5000  # the JSON report and `migrate status --audit` hold every line


def _audit(report: RunReport) -> str:
    """Every operation run against a source or target: who, when, where, what, and how it ended."""
    if report.is_simulation:
        return ""
    if not report.audit:
        return "## Audit\n\nNo operation against a source or target is recorded."
    shown = report.audit[:AUDIT_ROWS_SHOWN]
    rows = "\n".join(
        f"| {md(a.at)} | {md(a.who)} | {md(a.server)} | {code(a.step_id)} | {md(a.endpoint)} "
        f"| {code(a.operation)} | {md(_outcome(a.outcome, a.exit_code, a.detail))} |"
        for a in shown
    )
    more = (
        f"\n\n{len(report.audit) - len(shown)} more in the JSON report."
        if len(report.audit) > len(shown)
        else ""
    )
    return (
        f"## Audit\n\n{len(report.audit)} operation(s) against sources and targets.\n\n"
        "| When (UTC) | Who | Server | Step | Where | Operation | Outcome |\n|---|---|---|---|---|---|---|\n"
        + rows
        + more
    )


def _outcome(outcome: str, exit_code: int | None, detail: str | None) -> str:
    """``error (exit 1): no such device``"""
    text = outcome if exit_code is None else f"{outcome} (exit {exit_code})"
    return f"{text}: {detail}" if detail else text


def _notes(report: RunReport) -> str:
    if not report.notes:
        return ""
    return "## Notes\n\n" + "\n".join(f"- {md(n)}" for n in report.notes)
