"""`migrate status`: a per-server table, and per-step detail on request."""

from __future__ import annotations

import time
from datetime import datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.journal import Journal
from orchestrator.playbook.units import format_duration, format_size
from orchestrator.report.model import AuditLine, RunReport, ServerSummary
from orchestrator.report.progress import PartProgress, combined, step_parts

_CONVERGENCE = {"NOT_CONVERGING": "[bold yellow]NOT_CONVERGING[/]", "converged": "[green]converged[/]"}
_STYLE = {"done": "green", "failed": "bold red", "running": "cyan", "pending": "dim", "undone": "magenta"}


def _describe(part: PartProgress) -> str:
    """45% of 8.0 GiB, 310 MiB/s, 12s left"""
    text = f"{part.percent:.0f}% of {format_size(part.total)}"
    if part.rate:
        text += f", {format_size(part.rate)}/s"
    if part.eta is not None and part.done < part.total:
        text += f", {format_duration(part.eta)} left"
    return text


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _last_pass(server: ServerSummary) -> str:
    """12 MiB in 4.0s (when it started is the lag column: the replica is as fresh as that start)"""
    if server.last_pass_at is None:
        return "-"
    return (
        f"{format_size(server.last_pass_bytes or 0)} in {format_duration(server.last_pass_duration or 0.0)}"
    )


def _next_pass(server: ServerSummary, now: float) -> str:
    due = _epoch(server.next_pass_due)
    if due is None:
        return "-"
    return "due now" if due <= now else f"in {format_duration(due - now)}"


def files_line(name: str, files: dict) -> str:
    """One data-only server's figures: last pass, what it sent, the last verification, what was skipped."""
    last = files.get("last_pass")
    if last is None:
        return f"{name}: no files pass yet"
    text = (
        f"{name}: last pass {last['mode']} at {last['finished_at']}: {last['files']} files "
        f"({format_size(last['bytes_total'])}), {last['folders']} folders; sent {last['files_sent']} files "
        f"({format_size(last['bytes_sent'])}); {files['passes']} pass(es), "
        f"{format_size(files['bytes_sent_total'])} sent in all; {last['orphans']} orphan(s) "
        f"({last['orphan_action']})"
    )
    verification = files.get("verification")
    if verification is not None:
        text += f"; {verification['differing']} differing at the verification of {verification['at']}"
    if files.get("skipped"):
        text += f"; {len(files['skipped'])} skipped (see migrate report)"
    return text


def render_audit(console: Console, lines: list[AuditLine]) -> None:
    """`migrate status --audit`: every operation run against a source or target, oldest first."""
    table = Table(title="audit: operations against sources and targets", title_justify="left")
    for column in ("when (UTC)", "who", "server", "step", "where", "operation", "outcome"):
        table.add_column(column, overflow="fold")
    for line in lines:
        outcome = line.outcome if line.exit_code is None else f"{line.outcome} (exit {line.exit_code})"
        style = {"ok": "green", "error": "red"}.get(line.outcome, "yellow")
        shown = Text(outcome, style=style)
        if line.detail:
            shown.append(f": {line.detail}")
        table.add_row(
            *(Text(v) for v in (line.at, line.who, line.server or "-", line.step_id or "-", line.endpoint)),
            Text(line.operation),
            shown,
        )
    console.print(table, highlight=False)
    if not lines:
        console.print("no operation against a source or target is recorded yet")


def render_status(console: Console, report: RunReport, journal: Journal, *, show_steps: bool) -> None:
    records = journal.steps()
    table = Table(title=f"{report.title}  (plan {report.plan_hash})", title_justify="left")
    columns = ("server", "state", "steps", "current step", "progress", "moved", "lag", "sync")
    for column in (*columns, "last pass", "next pass", "final delta", "target"):
        table.add_column(column, overflow="fold")
    now = time.time()
    for server in report.servers:
        running = [r for r in records.values() if r.server == server.name and r.state == "running"]
        current, progress = "", ""
        parts: list[PartProgress] = []
        if running:
            step = running[0]
            current = step.kind
            parts = step_parts(journal, step)
            whole = combined(parts)
            if whole is not None:
                progress = _describe(whole)
            elif step.progress_total:
                progress = f"{100 * step.progress_done / step.progress_total:.0f}% of " + format_size(
                    step.progress_total
                )
        state_style = (
            "red" if server.state == "failed" else "green" if server.state == "cut over" else "white"
        )
        table.add_row(
            server.name,
            f"[{state_style}]{server.state}[/]",
            f"{server.steps_done}/{server.steps_total}",
            current,
            progress,
            format_size(server.bytes_moved),
            f"{format_duration(server.lag)} ago" if server.lag is not None else "-",
            _CONVERGENCE.get(server.convergence or "", server.convergence or "-"),
            _last_pass(server),
            _next_pass(server, now),
            f"~{format_duration(server.final_delta_estimate)}"
            if server.final_delta_estimate is not None
            else "-",
            server.target,
        )
        if len(parts) > 1:
            for part in parts:
                table.add_row("", "", "", f"[dim]  disk {part.name}[/]", _describe(part), *[""] * 7)
    console.print(table)
    for server in report.servers:
        if server.files is not None:
            console.print(files_line(server.name, server.files), highlight=False, markup=False)
    if show_steps:
        steps = Table(show_lines=False)
        for column in ("step", "state", "attempts", "took", "note"):
            steps.add_column(column, overflow="fold")
        for timing in report.steps:
            took = (
                (timing.end - timing.start) if timing.start is not None and timing.end is not None else None
            )
            steps.add_row(
                timing.step_id,
                f"[{_STYLE.get(timing.state, 'white')}]{timing.state}[/]",
                str(timing.attempts),
                format_duration(took) if took is not None else "",
                timing.message,
            )
        console.print(steps)
    stuck = [s.name for s in report.servers if s.convergence == "NOT_CONVERGING"]
    if stuck:
        console.print(
            f"[yellow]NOT_CONVERGING: {', '.join(stuck)}[/] - incremental passes stopped shrinking; cut "
            "over in a quiet window, raise the bandwidth limit, or quiesce the busy service"
        )
    failed = [r for r in records.values() if r.state == "failed"]
    for record in failed:
        console.print(f"[red]failed[/] {record.step_id}: {record.error}", highlight=False)
    runs = journal.runs()
    if runs:
        last = runs[-1]
        console.print(f"last command: {last['command']} ({last['status']})")
