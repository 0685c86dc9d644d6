"""The report in the terminal (rich): what `migrate status`, `execute` and `report` print.

Every value from a playbook or a provider goes in as a `rich.text.Text`, never as a markup string, so a
server called ``[red]x`` prints as written. A terminal cannot scroll through ten thousand rows usefully,
so long tables show the servers that need attention first and say how many were left out.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from orchestrator.report.html import nice_tick_step, tick_label
from orchestrator.report.model import (
    DASH,
    FindingView,
    RunReport,
    ServerSummary,
    StepTiming,
    show_duration,
    show_rate,
    show_size,
)

STATE_STYLES = {
    "done": "green",
    "failed": "bold red",
    "running": "cyan",
    "pending": "dim",
    "skipped": "dim",
    "undone": "magenta",
    "cancelled": "yellow",
}
SEVERITY_STYLES = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
# Server states shown first when a table is cut short: the ones an operator must look at.
_ATTENTION = {"failed": 0, "cancelled": 1, "running": 2}

# Text Gantt: the character and style of each phase, and which wins when two share a cell.
PHASE_GLYPHS = {
    "replicate": ("━", "blue"),
    "test": ("━", "magenta"),
    "cutover": ("█", "green"),
    "cleanup": ("─", "bright_black"),
}
_PHASE_PRIORITY = {"cleanup": 1, "replicate": 2, "test": 3, "cutover": 4}
_FAILED = 9


def render_report(
    report: RunReport,
    console: Console,
    *,
    max_servers: int = 50,
    critical_items: int = 10,
    max_failures: int = 10,
) -> None:
    """Summary, servers, critical path, findings and notes, in the order an operator reads them."""
    console.print(_summary_panel(report))
    stopped = report.failed_steps()
    for step in stopped[:max_failures]:
        console.print(
            Text.assemble(
                (f"{step.state}: ", STATE_STYLES.get(step.state, "")),
                (step.step_id, "bold"),
                f" after {step.attempts} attempts: " if step.attempts > 1 else ": ",
                step.message or "no message was recorded",
            )
        )
    if len(stopped) > max_failures:
        console.print(Text(f"… and {len(stopped) - max_failures:,} more failed or cancelled steps", "red"))
    if report.servers:
        console.print(servers_table(report, max_rows=max_servers))
    if report.critical_path:
        console.print(critical_path_table(report, top=critical_items))
    if report.findings:
        console.print(_findings(report.findings_by_severity()))
    for note in report.notes:
        console.print(Text.assemble(("note: ", "yellow"), note))


def _summary_panel(report: RunReport) -> Panel:
    what = "dry run — predicted" if report.is_simulation else "run — measured"
    steps_done = sum(1 for s in report.steps if s.state == "done")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    grid.add_row("playbook", Text(report.playbook))
    grid.add_row("plan", Text(report.plan_hash))
    if report.started_at:
        grid.add_row("started", Text(report.started_at))
    grid.add_row("duration", show_duration(report.duration))
    grid.add_row("bytes moved", show_size(report.bytes_moved))
    grid.add_row("peak bandwidth", show_rate(report.peak_bandwidth))
    states = Text()
    for i, (state, n) in enumerate(sorted(report.state_counts().items())):
        states.append(", " if i else "")
        states.append(f"{n} {state}", STATE_STYLES.get(state, ""))
    grid.add_row("servers", Text.assemble(str(len(report.servers)), " (", states, ")") if states else "0")
    grid.add_row("steps done", f"{steps_done}/{len(report.steps)}")
    counts = report.finding_counts()
    findings = Text()
    for i, (sev, n) in enumerate(counts.items()):
        findings.append(", " if i else "")
        findings.append(f"{n} {sev}", SEVERITY_STYLES.get(sev, ""))
    grid.add_row("findings", findings if counts else Text("none"))
    title = Text.assemble((report.title, "bold"), (f"  {what}", "dim"))
    return Panel(grid, title=title, title_align="left", expand=False)


def servers_table(report: RunReport, *, max_rows: int = 50) -> Table:
    """One row per server; beyond ``max_rows`` the failed, cancelled and running ones come first."""
    servers: Sequence[ServerSummary] = report.servers
    left_out = 0
    if len(servers) > max_rows:
        servers = sorted(servers, key=lambda s: _ATTENTION.get(s.state, 3))[:max_rows]
        left_out = len(report.servers) - max_rows
    table = Table(title="Servers", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("server", no_wrap=True)
    table.add_column("state")
    table.add_column("steps", justify="right")
    table.add_column("moved / size", justify="right")
    table.add_column("duration", justify="right")
    table.add_column("downtime est.", justify="right")
    table.add_column("measured", justify="right")
    table.add_column("lag", justify="right")
    for s in servers:
        table.add_row(
            Text(s.name, "bold"),
            Text(s.state, STATE_STYLES.get(s.state, "")),
            f"{s.steps_done}/{s.steps_total}",
            f"{show_size(s.bytes_moved)} / {show_size(s.bytes_total)}",
            show_duration(s.duration),
            show_duration(s.downtime_estimate),
            show_duration(s.downtime_measured),
            show_duration(s.lag),
        )
    if left_out:
        table.caption = f"{left_out:,} more servers not shown; `migrate report --format html` lists them all"
    return table


def critical_path_table(report: RunReport, *, top: int = 10) -> Table:
    """The longest steps of the critical path: the ones worth making faster."""
    steps = report.critical_steps()
    longest = sorted(steps, key=lambda s: -(s.duration or 0.0))[:top]
    total = sum(s.duration or 0.0 for s in steps)
    shown = "" if len(longest) == len(steps) else f", {len(longest)} longest shown"
    table = Table(
        title=f"Critical path: {len(steps)} steps, {show_duration(total)}{shown}",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("step", no_wrap=True)
    table.add_column("state")
    table.add_column("start", justify="right")
    table.add_column("duration", justify="right")
    table.add_column("share", justify="right")
    for s in longest:
        share = f"{(s.duration or 0.0) / total * 100:.0f}%" if total > 0 else DASH
        table.add_row(
            Text(s.step_id),
            Text(s.state, STATE_STYLES.get(s.state, "")),
            show_duration(s.start),
            show_duration(s.duration),
            share,
        )
    return table


def _findings(findings: list[FindingView]) -> Table | Group:
    """The validation helper's table when it is installed; it reads the same attribute names."""
    try:
        from orchestrator.report.findings import findings_table
    except ImportError:
        return findings_fallback_table(findings)
    try:
        return findings_table(findings)
    except (AttributeError, TypeError, KeyError):
        # findings.py is written against validation's Finding; if its shape ever drifts from FindingView,
        # a report must still print, so fall back rather than crash at the end of a long run.
        return findings_fallback_table(findings)


def findings_fallback_table(findings: list[FindingView]) -> Table:
    table = Table(title="Findings", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("severity")
    table.add_column("rule", no_wrap=True)
    table.add_column("server")
    table.add_column("finding")
    table.add_column("fix")
    for f in findings:
        table.add_row(
            Text(f.severity, SEVERITY_STYLES.get(f.severity, "")),
            Text(f.rule_id),
            Text(f.server or DASH),
            Text(f.message + (f" ({f.location})" if f.location else "")),
            Text(f.fix or DASH, "green"),
        )
    return table


# -- compact text Gantt ---------------------------------------------------------------------------


def render_gantt_text(
    report: RunReport, console: Console, width: int | None = None, *, max_rows: int = 60
) -> None:
    """One row per server across ``width`` columns: phases as coloured runs, a failed step as ✗."""
    width = width or console.width
    groups = report.steps_by_server()
    names = [n for n in groups if n is not None] + ([None] if None in groups else [])
    label_w = min(24, max([len(n or "shared") for n in names] + [6]))
    cols = max(10, width - label_w - 1)
    span = report.time_span()
    if span <= 0:
        span = 1.0
    if not any(s.start is not None for s in report.steps):
        console.print(Text("No step has started yet.", "dim"))
        return
    for name in names[:max_rows]:
        row = Text(_clip(name or "shared", label_w).ljust(label_w) + " ", "bold" if name else "dim")
        row.append_text(_gantt_row(groups[name], span, cols, report.duration))
        console.print(row, no_wrap=True, overflow="crop")
    if len(names) > max_rows:
        console.print(Text(f"… {len(names) - max_rows:,} more servers", "dim"))
    console.print(Text(" " * (label_w + 1)) + _axis_text(span, cols), no_wrap=True, overflow="crop")
    legend = Text(" " * (label_w + 1))
    for phase, (glyph, style) in PHASE_GLYPHS.items():
        legend.append(glyph * 2, style)
        legend.append(f" {phase}  ")
    legend.append("✗", "bold red")
    legend.append(" failed")
    console.print(legend, no_wrap=True, overflow="crop")


def _gantt_row(steps: Sequence[StepTiming], span: float, cols: int, now: float) -> Text:
    cells = [0] * cols
    phase_at: list[str | None] = [None] * cols
    for step in steps:
        if step.start is None:
            continue
        end = step.end_or(now) or step.start
        c0 = min(cols - 1, int(step.start / span * cols))
        c1 = min(cols - 1, max(c0, int(end / span * cols - 1e-9)))
        rank = _FAILED if step.state == "failed" else _PHASE_PRIORITY.get(step.phase, 1)
        if step.state == "failed":
            c0 = c1  # the failure is a moment: mark where it ended, not the whole attempt
        for c in range(c0, c1 + 1):
            if rank > cells[c]:
                cells[c] = rank
                phase_at[c] = step.phase
    text = Text()
    for rank, phase in zip(cells, phase_at, strict=True):
        if rank == _FAILED:
            text.append("✗", "bold red")
        elif phase is None:
            text.append(" ")
        else:
            glyph, style = PHASE_GLYPHS.get(phase, ("━", "white"))
            text.append(glyph, style)
    return text


def _axis_text(span: float, cols: int) -> Text:
    """Tick labels placed under their columns, as many as fit without overlapping."""
    step = nice_tick_step(span)
    line = [" "] * (cols + 12)
    t = 0.0
    last_end = -1
    while t <= span + 1e-9:
        col = min(cols - 1, int(t / span * cols))  # the same mapping as the bars
        label = "|" + tick_label(t, step)
        if col > last_end and col + len(label) <= len(line):
            line[col : col + len(label)] = list(label)
            last_end = col + len(label)
        t += step
    return Text("".join(line).rstrip(), "dim")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
