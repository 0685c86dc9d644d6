"""`migrate status`: a per-server table, and per-step detail on request."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from orchestrator.journal import Journal
from orchestrator.playbook.units import format_duration, format_size
from orchestrator.report.model import RunReport
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


def render_status(console: Console, report: RunReport, journal: Journal, *, show_steps: bool) -> None:
    records = journal.steps()
    table = Table(title=f"{report.title}  (plan {report.plan_hash})", title_justify="left")
    for column in ("server", "state", "steps", "current step", "progress", "moved", "lag", "sync", "target"):
        table.add_column(column, overflow="fold")
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
            server.target,
        )
        if len(parts) > 1:
            for part in parts:
                table.add_row("", "", "", f"[dim]  disk {part.name}[/]", _describe(part), "", "", "", "")
    console.print(table)
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
