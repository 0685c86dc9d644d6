"""The report as one self-contained HTML page: summary, Gantt chart, bandwidth, servers, findings.

One file, no scripts, no external CSS, fonts or images, so it can be mailed, attached to a change
ticket or opened on an air-gapped jump host, and it looks the same years later. A Content-Security-Policy
forbids any script or remote load, and every string is escaped, because server names, messages and notes
come from playbooks and providers. Hover text is SVG ``<title>``, which works without JavaScript.

Beyond a few hundred servers a lane per step would make a chart hundreds of thousands of pixels tall, so
the chart switches to one lane per server, split into its phases.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

from orchestrator.report import files_view
from orchestrator.report.model import (
    DASH,
    SCHEMA,
    RunReport,
    ServerSummary,
    StepTiming,
    show_breakdown,
    show_duration,
    show_rate,
    show_size,
)

# Above this many servers the Gantt shows one lane per server instead of one lane per step.
STEP_LANES_MAX_SERVERS = 300
# ... or above this many steps, whatever the server count (20 steps x 300 servers is already 6,000 lanes).
STEP_LANES_MAX_STEPS = 8000
# The header lists the downtime of at most this many servers (the longest); the table lists all.
HEADER_DOWNTIME_ROWS = 12
# "What failed" lists at most this many steps (the first to fail); the JSON report has them all.
FAILED_ROWS = 20

STATE_COLOURS = {
    "done": "#2e9d57",
    "failed": "#d64541",
    "running": "#2f7fd1",
    "pending": "#c4c9d1",
    "skipped": "#a9b0ba",
    "undone": "#8e6bbf",
    "cancelled": "#e08a2c",
}
PHASE_COLOURS = {
    "replicate": "#4f86d9",
    "test": "#9b6bd6",
    "cutover": "#2e9d57",
    "cleanup": "#8a8f98",
}
SEVERITY_COLOURS = {"critical": "#d64541", "warning": "#e08a2c", "info": "#2f7fd1"}
DOWNTIME_COLOURS = {
    "quiesce": "#e08a2c",
    "final_delta": "#4f86d9",
    "detach": "#7f8c9a",
    "boot": "#2e9d57",
    "verify": "#1f9e9e",
    "dns_ttl": "#9b6bd6",
}
OTHER_COLOUR = "#b07b4f"

# Chart geometry (SVG user units = CSS pixels at 100 % zoom).
LABEL_W = 250
PLOT_W = 880
RIGHT_PAD = 70
CHART_W = LABEL_W + PLOT_W + RIGHT_PAD
AXIS_H = 24
STEP_ROW_H = 16
HEADER_ROW_H = 22
SERVER_ROW_H = 13
CHAR_W = 5.8  # average width of an 11 px sans-serif character (measured in Chromium), for fitting labels
BOLD_CHAR_W = 7.4  # the same for the 12 px bold group headers

# A tick step is the first of these (seconds) that gives at most MAX_TICKS ticks.
_TICK_STEPS = (
    0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    86400, 172800, 604800, 1209600, 2592000,
)  # fmt: skip
MAX_TICKS = 10


def esc(value: object) -> str:
    """Escaped text for element content and quoted attributes alike."""
    return html.escape("" if value is None else str(value), quote=True)


def to_html(report: RunReport) -> str:
    span = report.time_span()
    sections = [
        _header(report),
        _summary_cards(report),
        _failures_section(report),
        _downtime_overview(report),
        _gantt_section(report, span),
        _bandwidth_section(report, span),
        _servers_section(report),
        files_view.to_html(report, esc),
        _critical_path_section(report),
        _findings_section(report),
        _audit_section(report),
        _notes_section(report),
    ]
    body = "\n".join(s for s in sections if s)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(report.title)} — hvmigrate {esc(_kind_word(report))} report</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n"
        f"<footer>hvmigrate report · schema {SCHEMA} · generated {esc(report.generated_at)}</footer>\n"
        "</main>\n</body>\n</html>\n"
    )


def _kind_word(report: RunReport) -> str:
    return "dry-run" if report.is_simulation else "run"


# -- header and summary ---------------------------------------------------------------------------


def _header(report: RunReport) -> str:
    badge = (
        '<span class="badge sim">Simulation · predicted figures</span>'
        if report.is_simulation
        else '<span class="badge run">Run · measured figures</span>'
    )
    started = f" · started {esc(report.started_at)}" if report.started_at else ""
    return (
        f"<header><h1>{esc(report.title)} {badge}</h1>"
        f'<p class="meta">playbook <code>{esc(report.playbook)}</code> · '
        f"plan <code>{esc(report.plan_hash)}</code>{started} · "
        f"generated {esc(report.generated_at)}</p></header>"
    )


def _summary_cards(report: RunReport) -> str:
    steps_done = sum(1 for s in report.steps if s.state == "done")
    states = report.state_counts()
    server_detail = " · ".join(
        f'<span style="color:{STATE_COLOURS.get(state, "#555")}">{n:,} {esc(state)}</span>'
        for state, n in sorted(states.items())
    )
    estimates = [s.downtime_estimate for s in report.servers if s.downtime_estimate is not None]
    measured = [s.downtime_measured for s in report.servers if s.downtime_measured is not None]
    counts = report.finding_counts()
    finding_detail = (
        " · ".join(
            f'<span style="color:{SEVERITY_COLOURS.get(sev, "#555")}">{n} {esc(sev)}</span>'
            for sev, n in counts.items()
        )
        or "none"
    )
    cards = [
        (
            "Total duration",
            show_duration(report.duration),
            "predicted" if report.is_simulation else "elapsed",
        ),
        ("Bytes moved", show_size(report.bytes_moved), _bytes_detail(report)),
        ("Peak bandwidth", show_rate(report.peak_bandwidth), "all streams together"),
        ("Servers", f"{len(report.servers):,}", server_detail or "none"),
        (
            "Steps done",
            f"{steps_done:,}",
            f"of {len(report.steps):,} {_progress_bar(steps_done, len(report.steps))}",
        ),
        (
            "Longest downtime",
            show_duration(max(measured) if measured else (max(estimates) if estimates else None)),
            "measured" if measured else ("estimated" if estimates else "no cutover yet"),
        ),
        ("Findings", f"{len(report.findings):,}", finding_detail),
    ]
    return (
        '<section class="cards">'
        + "".join(
            f'<div class="card"><div class="label">{esc(label)}</div><div class="value">{esc(value)}</div>'
            f'<div class="detail">{detail}</div></div>'
            for label, value, detail in cards
        )
        + "</section>"
    )


def _bytes_detail(report: RunReport) -> str:
    total = sum(s.bytes_total for s in report.servers)
    return f"of {esc(show_size(total))} on the sources" if total else "&nbsp;"


def _progress_bar(done: int, total: int) -> str:
    share = 0.0 if total <= 0 else min(1.0, done / total)
    return f'<span class="progress"><span style="width:{share * 100:.1f}%"></span></span>'


def _downtime_overview(report: RunReport) -> str:
    """Downtime per server as stacked bars of its parts, longest first: the figure a change board asks for."""
    rows = [s for s in report.servers if s.downtime_estimate is not None or s.downtime_measured is not None]
    if not rows:
        return ""
    rows.sort(key=lambda s: -max(s.downtime_measured or 0.0, s.downtime_estimate or 0.0))
    shown = rows[:HEADER_DOWNTIME_ROWS]
    longest = _longest_downtime(shown)
    lines = []
    for s in shown:
        lines.append(
            f'<tr><td class="name">{esc(s.name)}</td>{_num(show_duration(s.downtime_estimate))}'
            f"{_num(show_duration(s.downtime_measured))}"
            f'<td class="dtbar">{_downtime_stack(s, longest)}</td>'
            f'<td class="small">{esc(show_breakdown(s))}</td></tr>'
        )
    more = (
        f'<p class="small">The {len(shown)} longest of {len(rows)} servers; '
        "every server is in the table below.</p>"
        if len(rows) > len(shown)
        else ""
    )
    used = {name for s in shown for name, _ in s.breakdown_items()}
    legend = _legend((name, DOWNTIME_COLOURS.get(name, OTHER_COLOUR)) for name in _ordered_parts(used))
    return (
        "<section><h2>Downtime per server</h2>"
        '<table class="downtime"><thead><tr><th>Server</th><th class="num">Estimated</th>'
        '<th class="num">Measured</th><th>Where it goes</th><th></th></tr></thead><tbody>'
        + "".join(lines)
        + f"</tbody></table>{legend}{more}</section>"
    )


def _longest_downtime(servers: Iterable[ServerSummary]) -> float:
    return (
        max((max(s.downtime_measured or 0.0, s.downtime_estimate or 0.0) for s in servers), default=0.0)
        or 1.0
    )


def _downtime_stack(server: ServerSummary, longest: float) -> str:
    """A bar of the server's downtime parts, to the same scale (``longest``) for every server."""
    segments = []
    for name, value in server.breakdown_items():
        width = max(0.0, value) / longest * 100
        colour = DOWNTIME_COLOURS.get(name, OTHER_COLOUR)
        segments.append(
            f'<span class="seg" style="width:{width:.2f}%;background:{colour}" '
            f'title="{esc(name)} {esc(show_duration(value))}"></span>'
        )
    figure = server.downtime_measured if server.downtime_measured is not None else server.downtime_estimate
    if not segments and figure is not None:
        width = max(0.0, figure) / longest * 100
        segments.append(f'<span class="seg" style="width:{width:.2f}%;background:{OTHER_COLOUR}"></span>')
    return f'<span class="stack" title="{esc(show_breakdown(server))}">{"".join(segments)}</span>'


def _ordered_parts(used: set[str]) -> list[str]:
    known = [p for p in DOWNTIME_COLOURS if p in used]
    return known + sorted(used - set(known))


def _legend(items: Iterable[tuple[str, str]], *, marks: Iterable[tuple[str, str]] = ()) -> str:
    """A row of colour swatches, then special marks given as (swatch CSS class, label)."""
    spans = [
        f'<span class="key"><span class="swatch" style="background:{colour}"></span>{esc(name)}</span>'
        for name, colour in items
    ]
    spans += [
        f'<span class="key"><span class="swatch {cls}"></span>{esc(name)}</span>' for cls, name in marks
    ]
    return f'<div class="legend">{"".join(spans)}</div>' if spans else ""


# -- the Gantt chart ------------------------------------------------------------------------------


def nice_tick_step(span: float) -> float:
    """The smallest round step (1 s, 5 min, 1 h, ...) that puts at most MAX_TICKS ticks on the axis."""
    for step in _TICK_STEPS:
        if span / step <= MAX_TICKS:
            return step
    return math.ceil(span / MAX_TICKS / _TICK_STEPS[-1]) * _TICK_STEPS[-1]


def tick_label(t: float, step: float) -> str:
    """``0``, ``45s``, ``12m``, ``1h30m``, ``2d4h``: the shortest exact label for a tick."""
    if t <= 0:
        return "0"
    if step < 1:
        return f"{t:.1f}s"
    seconds = round(t)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        m, s = divmod(seconds, 60)
        return f"{m}m" + (f"{s:02d}s" if s else "")
    if seconds < 86400:
        h, rest = divmod(seconds, 3600)
        return f"{h}h" + (f"{rest // 60:02d}m" if rest // 60 else "")
    d, rest = divmod(seconds, 86400)
    return f"{d}d" + (f"{rest // 3600}h" if rest // 3600 else "")


class _Scale:
    """Maps run time (seconds) to the chart's x; a zero-length run still gets a usable 1 s axis."""

    def __init__(self, span: float) -> None:
        self.span = span if span > 0 else 1.0

    def x(self, t: float) -> float:
        return LABEL_W + max(0.0, min(t, self.span)) / self.span * PLOT_W


def _axis(scale: _Scale, y: float, height: float, *, labels_below: bool) -> list[str]:
    """Tick labels at ``y`` and light vertical gridlines over the ``height`` below (or above) them."""
    step = nice_tick_step(scale.span)
    out = []
    count = int(scale.span / step + 1e-9)
    for i in range(count + 1):
        t = i * step
        x = scale.x(t)
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{y:.1f}" y2="{y + height:.1f}"/>')
        ty = y + height + 14 if labels_below else y - 6
        anchor = "start" if i == 0 else "middle"
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{ty:.1f}" text-anchor="{anchor}">{tick_label(t, step)}</text>'
        )
    return out


def _fit(text: str, width: float) -> str:
    """Shorten ``text`` from the left to fit ``width`` px: the end of a step id (its kind) says most."""
    room = max(3, int(width / CHAR_W))
    return text if len(text) <= room else "…" + text[-(room - 1) :]


def _clip(text: str, width: float, char_w: float = CHAR_W) -> str:
    """Shorten ``text`` from the right to fit ``width`` px: a server name reads from its start."""
    room = max(3, int(width / char_w))
    return text if len(text) <= room else text[: room - 1] + "…"


def _step_title(step: StepTiming, now: float) -> str:
    end = step.end if step.end is not None else None
    lines = [
        step.step_id,
        f"state: {step.state}" + (" (critical path)" if step.critical else ""),
        f"phase: {step.phase} · kind: {step.kind}",
        f"start: {show_duration(step.start)}",
        f"end: {show_duration(end)}" + (" (still running)" if step.state == "running" else ""),
        f"duration: {show_duration(step.duration if end is not None else _running_for(step, now))}",
        f"bytes: {show_size(step.bytes)}",
    ]
    if step.attempts > 1:
        lines.append(f"attempts: {step.attempts}")
    if step.message:
        lines.append(step.message)
    return "\n".join(lines)


def _running_for(step: StepTiming, now: float) -> float | None:
    return None if step.start is None else max(0.0, now - step.start)


def _server_of(report: RunReport) -> dict[str, ServerSummary]:
    return {s.name: s for s in report.servers}


def use_step_lanes(report: RunReport) -> bool:
    """One lane per step while that stays readable; one lane per server beyond that."""
    return len(report.servers) <= STEP_LANES_MAX_SERVERS and len(report.steps) <= STEP_LANES_MAX_STEPS


def _gantt_section(report: RunReport, span: float) -> str:
    scale = _Scale(span)
    step_mode = use_step_lanes(report)
    svg = _gantt_by_step(report, scale) if step_mode else _gantt_by_server(report, scale)
    if step_mode:
        legend = _legend(STATE_COLOURS.items(), marks=[("crit", "critical path")])
        explain = "One lane per step, grouped by server. Hover over a bar for its times and bytes."
    else:
        legend = _legend(
            PHASE_COLOURS.items(), marks=[("crit", "holds a critical-path step"), ("failmark", "failed step")]
        )
        explain = (
            f"{len(report.servers):,} servers, {len(report.steps):,} steps: too many for a lane per step, so "
            "this chart shows one lane per server, from its first step's start to its last step's end, split "
            "into phases. Per-step times are in the JSON report."
        )
    started = sum(1 for s in report.steps if s.start is not None)
    if report.steps and not started:
        explain += " No step has started yet: bars appear as steps run."
    return _section("Timeline", f'<p class="small">{esc(explain)}</p>{legend}<div class="chart">{svg}</div>')


def _svg_open(height: float, label: str) -> str:
    return (
        f'<svg class="gantt" width="{CHART_W}" height="{height:.0f}" viewBox="0 0 {CHART_W} {height:.0f}" '
        f'role="img" aria-label="{esc(label)}">'
    )


def _gantt_by_step(report: RunReport, scale: _Scale) -> str:
    groups = report.steps_by_server()
    servers = _server_of(report)
    rows = sum(len(steps) for steps in groups.values())
    height = AXIS_H + len(groups) * HEADER_ROW_H + rows * STEP_ROW_H + AXIS_H
    body_top = AXIS_H
    body_h = height - 2 * AXIS_H
    out = [_svg_open(height, "Gantt chart of the run's steps")]
    out.append(f'<rect class="plotbg" x="{LABEL_W}" y="{body_top}" width="{PLOT_W}" height="{body_h:.0f}"/>')
    out.extend(_axis(scale, body_top, body_h, labels_below=False))
    y = float(body_top)
    for name, steps in groups.items():
        out.append(_group_header(name, servers.get(name) if name else None, y))
        y += HEADER_ROW_H
        prefix = f"{name}/" if name else ""
        for i, step in enumerate(steps):
            if i % 2:
                out.append(f'<rect class="zebra" x="0" y="{y:.1f}" width="{CHART_W}" height="{STEP_ROW_H}"/>')
            label = (
                step.step_id[len(prefix) :] if prefix and step.step_id.startswith(prefix) else step.step_id
            )
            out.append(
                f'<text class="lane" x="{LABEL_W - 8}" y="{y + 11.5:.1f}" text-anchor="end">'
                f"<title>{esc(step.step_id)}</title>{esc(_fit(label, LABEL_W - 24))}</text>"
            )
            out.append(_step_bar(step, scale, y, report.duration))
            y += STEP_ROW_H
    out.extend(_axis(scale, y, 0, labels_below=True))
    out.append("</svg>")
    return "".join(out)


def _group_header(name: str | None, server: ServerSummary | None, y: float) -> str:
    title = name if name is not None else "shared steps"
    detail = "used by several servers (appliances, one per target host)"
    if server is not None:
        detail = f"{server.state} · {server.source} → {server.target}"
    colour = STATE_COLOURS.get(server.state, "#555") if server else "#555"
    return (
        f'<rect class="grouprow" x="0" y="{y:.1f}" width="{CHART_W}" height="{HEADER_ROW_H}"/>'
        f'<rect x="0" y="{y:.1f}" width="4" height="{HEADER_ROW_H}" fill="{colour}"/>'
        f'<text class="group" x="10" y="{y + 15:.1f}"><title>{esc(title)}</title>'
        f"{esc(_clip(title, LABEL_W - 16, BOLD_CHAR_W))}</text>"
        f'<text class="groupdetail" x="{LABEL_W + 6}" y="{y + 15:.1f}">{esc(detail)}</text>'
    )


def _step_bar(step: StepTiming, scale: _Scale, y: float, now: float) -> str:
    colour = STATE_COLOURS.get(step.state, "#777")
    if step.start is None:
        # Not started: a faint dashed box at the left edge, so the lane does not look broken.
        return (
            f"<g><title>{esc(_step_title(step, now))}</title>"
            f'<text class="pending" x="{LABEL_W + 4}" y="{y + 11.5:.1f}">{esc(step.state)}</text></g>'
        )
    end = step.end_or(now) or step.start
    x0, x1 = scale.x(step.start), scale.x(end)
    width = max(2.0, x1 - x0)
    crit = ' class="crit"' if step.critical else ""
    note = show_duration(end - step.start)
    if step.state == "failed":
        note = "failed" + (f" after {step.attempts} attempts" if step.attempts > 1 else "")
    elif step.attempts > 1:
        note += f" ×{step.attempts}"
    text_w = len(note) * CHAR_W * 0.9
    if x0 + width + 4 + text_w <= CHART_W:
        text = f'<text class="barnote" x="{x0 + width + 4:.1f}" y="{y + 11.5:.1f}">{esc(note)}</text>'
    else:
        text = (
            f'<text class="barnote" x="{x0 - 4:.1f}" y="{y + 11.5:.1f}" text-anchor="end">{esc(note)}</text>'
        )
    return (
        f"<g><title>{esc(_step_title(step, now))}</title>"
        f'<rect{crit} x="{x0:.1f}" y="{y + 3:.1f}" width="{width:.1f}" height="{STEP_ROW_H - 6}" rx="2" '
        f'fill="{colour}"/>{text}</g>'
    )


def _gantt_by_server(report: RunReport, scale: _Scale) -> str:
    groups = report.steps_by_server()
    servers = _server_of(report)
    height = 2 * AXIS_H + len(groups) * SERVER_ROW_H
    body_h = height - 2 * AXIS_H
    out = [_svg_open(height, "Gantt chart, one lane per server")]
    out.append(f'<rect class="plotbg" x="{LABEL_W}" y="{AXIS_H}" width="{PLOT_W}" height="{body_h:.0f}"/>')
    out.extend(_axis(scale, AXIS_H, body_h, labels_below=False))
    y = float(AXIS_H)
    for i, (name, steps) in enumerate(groups.items()):
        if i % 2:
            out.append(f'<rect class="zebra" x="0" y="{y:.1f}" width="{CHART_W}" height="{SERVER_ROW_H}"/>')
        label = name if name is not None else "shared steps"
        server = servers.get(name) if name else None
        failed = " failed" if server is not None and server.state == "failed" else ""
        out.append(
            f'<text class="lanesmall{failed}" x="{LABEL_W - 8}" y="{y + 10:.1f}" text-anchor="end">'
            f"<title>{esc(label)}</title>{esc(_clip(label, LABEL_W - 16))}</text>"
        )
        out.append(_server_lane(name, server, steps, scale, y, report.duration))
        y += SERVER_ROW_H
    out.extend(_axis(scale, y, 0, labels_below=True))
    out.append("</svg>")
    return "".join(out)


def _server_lane(
    name: str | None,
    server: ServerSummary | None,
    steps: Sequence[StepTiming],
    scale: _Scale,
    y: float,
    now: float,
) -> str:
    phases: dict[str, list[float]] = {}
    failed: list[float] = []
    critical = False
    for step in steps:
        if step.start is None:
            continue
        end = step.end_or(now) or step.start
        span = phases.setdefault(step.phase, [step.start, end])
        span[0], span[1] = min(span[0], step.start), max(span[1], end)
        critical = critical or step.critical
        if step.state == "failed":
            failed.append(end)
    if not phases:
        return ""
    first = min(s for s, _ in phases.values())
    last = max(e for _, e in phases.values())
    lines = [name or "shared steps"]
    if server is not None:
        lines.append(f"state: {server.state} · {server.steps_done}/{server.steps_total} steps")
        lines.append(f"bytes moved: {show_size(server.bytes_moved)}")
    lines.append(
        f"start: {show_duration(first)} · end: {show_duration(last)} · {show_duration(last - first)}"
    )
    lines += [f"{phase}: {show_duration(s)} → {show_duration(e)}" for phase, (s, e) in phases.items()]
    if critical:
        lines.append("holds a critical-path step")
    parts = [f"<g><title>{esc(chr(10).join(lines))}</title>"]
    h = SERVER_ROW_H - 4
    for phase, (start, end) in phases.items():
        x0 = scale.x(start)
        width = max(1.5, scale.x(end) - x0)
        colour = PHASE_COLOURS.get(phase, "#777")
        parts.append(f'<rect x="{x0:.1f}" y="{y + 2:.1f}" width="{width:.1f}" height="{h}" fill="{colour}"/>')
    if critical:
        x0 = scale.x(first)
        parts.append(
            f'<rect class="crit" x="{x0:.1f}" y="{y + 2:.1f}" width="{max(1.5, scale.x(last) - x0):.1f}" '
            f'height="{h}" fill="none"/>'
        )
    for t in failed:
        x = scale.x(t)
        parts.append(f'<path class="failmark" d="M{x - 4:.1f},{y + 1:.1f}h8l-4,{SERVER_ROW_H - 2}z"/>')
    parts.append("</g>")
    return "".join(parts)


# -- bandwidth --------------------------------------------------------------------------------------

BW_H = 110


def _bandwidth_section(report: RunReport, span: float) -> str:
    series = [(t, r) for t, r in report.bandwidth_series if math.isfinite(t) and math.isfinite(r)]
    if not series:
        return (
            '<section><h2>Bandwidth</h2><p class="small">No data has moved yet, so there is no bandwidth '
            "to chart.</p></section>"
        )
    scale = _Scale(span)
    peak = max(report.peak_bandwidth, max(r for _, r in series))
    top = 14
    base = top + BW_H
    height = base + AXIS_H

    def y(rate: float) -> float:
        return base - (max(0.0, rate) / peak * BW_H if peak > 0 else 0.0)

    columns = _bandwidth_columns(series, scale)
    d = [f"M{LABEL_W:.1f},{base:.1f}L{columns[0][0]:.1f},{base:.1f}"]
    for x0, x1, rate in columns:
        d.append(f"L{x0:.1f},{y(rate):.1f}L{x1:.1f},{y(rate):.1f}")
    d.append(f"L{columns[-1][1]:.1f},{base:.1f}Z")
    out = [
        f'<svg class="bw" width="{CHART_W}" height="{height}" viewBox="0 0 {CHART_W} {height}" role="img" '
        'aria-label="Bandwidth over time">',
        f'<rect class="plotbg" x="{LABEL_W}" y="{top}" width="{PLOT_W}" height="{BW_H}"/>',
        *_axis(scale, top, BW_H, labels_below=True),
        f'<line class="grid" x1="{LABEL_W}" x2="{LABEL_W + PLOT_W}" y1="{y(peak / 2):.1f}" '
        f'y2="{y(peak / 2):.1f}"/>',
        f'<text class="tick" x="{LABEL_W - 8}" y="{top + 4}" text-anchor="end">{esc(show_rate(peak))}</text>',
        f'<text class="tick" x="{LABEL_W - 8}" y="{y(peak / 2) + 4:.1f}" text-anchor="end">'
        f"{esc(show_rate(peak / 2))}</text>",
        f'<text class="tick" x="{LABEL_W - 8}" y="{base:.1f}" text-anchor="end">0</text>',
        f'<path class="area" d="{"".join(d)}"><title>peak {esc(show_rate(peak))}</title></path>',
        "</svg>",
    ]
    detail = (
        f"Peak {show_rate(peak)}; {show_size(report.bytes_moved)} moved in {show_duration(report.duration)}."
    )
    return _section("Bandwidth", f'<p class="small">{esc(detail)}</p><div class="chart">{"".join(out)}</div>')


def _bandwidth_columns(
    series: Sequence[tuple[float, float]], scale: _Scale
) -> list[tuple[float, float, float]]:
    """The step function as (x0, x1, rate) runs; above one point per pixel, each pixel keeps its peak."""
    ordered = sorted(series)
    segments = []
    for i, (t, rate) in enumerate(ordered):
        t_next = ordered[i + 1][0] if i + 1 < len(ordered) else max(scale.span, t)
        segments.append((t, t_next, rate))
    if len(segments) <= PLOT_W:
        return [(scale.x(a), scale.x(b), r) for a, b, r in segments]
    peaks = [0.0] * (PLOT_W + 1)
    for a, b, rate in segments:
        c0 = int(scale.x(a) - LABEL_W)
        c1 = max(c0, math.ceil(scale.x(b) - LABEL_W) - 1)
        for c in range(c0, min(c1, PLOT_W) + 1):
            peaks[c] = max(peaks[c], rate)
    return [(LABEL_W + c, LABEL_W + c + 1, rate) for c, rate in enumerate(peaks[:PLOT_W])]


def _section(title: str, inner: str) -> str:
    return f"<section><h2>{esc(title)}</h2>{inner}</section>"


def _num(text: str) -> str:
    return f'<td class="num">{esc(text)}</td>'


def _pill(text: str, colour: str) -> str:
    return f'<span class="pill" style="background:{colour}">{esc(text)}</span>'


# -- tables -------------------------------------------------------------------------------------------


def _failures_section(report: RunReport) -> str:
    stopped = report.failed_steps()
    if not stopped:
        return ""
    failed = stopped[:FAILED_ROWS]
    more = (
        f'<p class="small">The first {len(failed)} of {len(stopped):,} failed or cancelled steps; '
        "the JSON report lists them all.</p>"
        if len(stopped) > len(failed)
        else ""
    )
    rows = "".join(
        f"<tr><td><code>{esc(s.step_id)}</code></td>"
        f"<td>{_pill(s.state, STATE_COLOURS.get(s.state, '#555'))}</td>"
        f"{_num(str(s.attempts) if s.attempts else DASH)}{_num(show_duration(s.end))}"
        f"<td>{esc(s.message or DASH)}</td></tr>"
        for s in failed
    )
    return (
        '<section class="alert"><h2>What failed</h2><table><thead><tr><th>Step</th><th>State</th>'
        '<th class="num">Attempts</th><th class="num">At</th><th>Message</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>{more}</section>"
    )


def _servers_section(report: RunReport) -> str:
    if not report.servers:
        return '<section><h2>Servers</h2><p class="small">No servers in this report.</p></section>'
    longest = _longest_downtime(report.servers)
    rows = []
    for s in report.servers:
        colour = STATE_COLOURS.get(s.state, "#555")
        rows.append(
            f'<tr><td class="name">{esc(s.name)}</td>'
            f"<td>{_pill(s.state, colour)}</td><td>{esc(s.source)}</td><td>{esc(s.target)}</td>"
            f'<td class="num">{s.steps_done}/{s.steps_total} '
            f"{_progress_bar(s.steps_done, s.steps_total)}</td>"
            f"{_num(show_size(s.bytes_moved))}{_num(show_size(s.bytes_total))}{_num(show_duration(s.duration))}"
            f"{_num(show_duration(s.downtime_estimate))}{_num(show_duration(s.downtime_measured))}"
            f'<td class="minibar">{_downtime_stack(s, longest) if s.downtime_breakdown else DASH}</td>'
            f"{_num(show_duration(s.lag))}</tr>"
        )
    return (
        "<section><h2>Servers</h2><table><thead><tr><th>Server</th><th>State</th><th>Source</th><th>Target</th>"
        '<th class="num">Steps</th><th class="num">Moved</th><th class="num">Size</th>'
        '<th class="num">Duration</th>'
        '<th class="num">Downtime est.</th><th class="num">Downtime measured</th><th>Where downtime goes</th>'
        '<th class="num">Lag</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table></section>"
    )


def _critical_path_section(report: RunReport) -> str:
    steps = report.critical_steps()
    if not steps:
        return ""
    longest = max((s.duration or 0.0 for s in steps), default=0.0) or 1.0
    rows = "".join(
        f'<tr><td class="num">{i}</td><td>{esc(s.step_id)}</td>'
        f"<td>{_pill(s.state, STATE_COLOURS.get(s.state, '#555'))}</td>"
        f"{_num(show_duration(s.start))}{_num(show_duration(s.duration))}"
        f'<td class="dtbar"><span class="stack"><span class="seg" '
        f'style="width:{(s.duration or 0) / longest * 100:.1f}%;background:#555"></span></span></td></tr>'
        for i, s in enumerate(steps, 1)
    )
    return (
        "<section><h2>Critical path</h2>"
        f'<p class="small">{len(steps)} steps that decide the total duration; shortening any of them '
        'shortens the run.</p><table><thead><tr><th class="num">#</th><th>Step</th><th>State</th>'
        '<th class="num">Start</th><th class="num">Duration</th><th></th></tr></thead>'
        f"<tbody>{rows}</tbody></table></section>"
    )


def _findings_section(report: RunReport) -> str:
    if not report.findings:
        return '<section><h2>Findings</h2><p class="small">No findings.</p></section>'
    rows = "".join(
        f'<tr class="sev" style="border-left-color:{SEVERITY_COLOURS.get(f.severity, "#555")}">'
        f'<td><span class="pill" style="background:{SEVERITY_COLOURS.get(f.severity, "#555")}">'
        f"{esc(f.severity)}</span></td><td><code>{esc(f.rule_id)}</code></td><td>{esc(f.server or DASH)}</td>"
        f'<td class="small">{esc(f.location or DASH)}</td><td>{esc(f.message)}</td>'
        f'<td class="fix">{esc(f.fix or DASH)}</td></tr>'
        for f in report.findings_by_severity()
    )
    return (
        "<section><h2>Findings</h2><table><thead><tr><th>Severity</th><th>Rule</th><th>Server</th>"
        "<th>Location</th><th>Finding</th><th>Fix</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )


AUDIT_ROWS_SHOWN = 5000  # the JSON report and `migrate status --audit` hold every line
_OUTCOME_COLOURS = {"ok": "#2e9d57", "error": "#d64541", "running": "#b7791f"}


def _audit_section(report: RunReport) -> str:
    """Every operation run against a source or target: who, when, where, what, and how it ended."""
    if report.is_simulation:
        return ""
    if not report.audit:
        return _section("Audit", '<p class="small">No operation against a source or target is recorded.</p>')
    shown = report.audit[:AUDIT_ROWS_SHOWN]
    rows = "".join(
        f'<tr><td class="small">{esc(a.at)}</td><td class="small">{esc(a.who)}</td>'
        f"<td>{esc(a.server or DASH)}</td><td><code>{esc(a.step_id or DASH)}</code></td>"
        f'<td class="small">{esc(a.endpoint)}</td><td><code>{esc(a.operation)}</code></td>'
        f'<td><span class="pill" style="background:{_OUTCOME_COLOURS.get(a.outcome, "#555")}">'
        f"{esc(a.outcome)}{esc(f' {a.exit_code}' if a.exit_code is not None else '')}</span>"
        f"{f' <span class=small>{esc(a.detail)}</span>' if a.detail else ''}</td></tr>"
        for a in shown
    )
    more = (
        f'<p class="small">{len(report.audit) - len(shown)} more in the JSON report.</p>'
        if len(report.audit) > len(shown)
        else ""
    )
    return (
        f'<section><h2>Audit</h2><p class="small">{len(report.audit)} operation(s) against sources and '
        "targets: who ran them (OS user@orchestrator host), when (UTC), where, what, and the outcome.</p>"
        "<table><thead><tr><th>When (UTC)</th><th>Who</th><th>Server</th><th>Step</th><th>Where</th>"
        f"<th>Operation</th><th>Outcome</th></tr></thead><tbody>{rows}</tbody></table>{more}</section>"
    )


def _notes_section(report: RunReport) -> str:
    if not report.notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in report.notes)
    return f"<section><h2>Notes</h2><ul>{items}</ul></section>"


_CSS = """
:root{color-scheme:light;--fg:#1d2430;--muted:#667085;--line:#e3e6eb;--bg:#f6f7f9}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1260px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:16px;margin:0 0 8px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 16px;margin:14px 0}
header{margin-bottom:6px}
section.alert{border-left:4px solid #d64541}
.meta,.small,footer{color:var(--muted);font-size:12px}
footer{margin-top:16px;text-align:center}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eef0f3;padding:1px 4px;
border-radius:3px}
.badge{font-size:12px;font-weight:600;vertical-align:middle;padding:2px 8px;border-radius:10px;
margin-left:6px}
.badge.sim{background:#efe7fb;color:#6a3fb0}.badge.run{background:#e3f3e9;color:#1f7a43}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(155px,1fr));gap:10px;background:none;
border:none;padding:0}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.card .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:20px;font-weight:650;margin:2px 0;line-height:1.25}
.card .detail{font-size:12px;color:var(--muted)}
.progress{display:inline-block;width:60px;height:6px;background:#e6e8ec;border-radius:3px;vertical-align:middle;
overflow:hidden}
.progress span{display:block;height:100%;background:#2e9d57}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600;background:#fafbfc;position:sticky;top:0}
td.num,th.num{text-align:right;white-space:nowrap}
td.name{font-weight:600;white-space:nowrap}
td.fix{color:#24543a}
tr.sev td:first-child{border-left:4px solid;border-left-color:inherit}
.pill{color:#fff;font-size:11px;font-weight:600;padding:1px 7px;border-radius:9px;white-space:nowrap}
.dtbar{width:34%}
.stack{display:flex;height:12px;background:#eef0f3;border-radius:3px;overflow:hidden;margin-top:3px}
.seg{display:block;height:100%}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;color:var(--muted);margin:4px 0 8px}
.key{display:inline-flex;align-items:center;gap:5px}
.swatch{display:inline-block;width:14px;height:10px;border-radius:2px}
.swatch.crit{border:2px solid #111;background:#fff}
.swatch.failmark{background:#d64541;clip-path:polygon(0 0,100% 0,50% 100%)}
.chart{overflow-x:auto}
.chart svg{max-width:100%;height:auto}
td.minibar{width:120px;min-width:90px}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif}
svg .plotbg{fill:#fcfcfd}
svg .grid{stroke:#e4e7ec;stroke-width:1}
svg .tick{font-size:11px;fill:#667085}
svg .lane{font-size:11px;fill:#344054}
svg .lanesmall{font-size:9.5px;fill:#344054}
svg .lanesmall.failed{fill:#d64541;font-weight:650}
svg .group{font-size:12px;font-weight:650;fill:#1d2430}
svg .groupdetail{font-size:11px;fill:#667085}
svg .grouprow{fill:#eef1f5}
svg .zebra{fill:rgba(16,24,40,.028)}
svg .barnote{font-size:10px;fill:#667085}
svg .pending{font-size:10px;fill:#98a2b3;font-style:italic}
svg .crit{stroke:#111;stroke-width:1.6}
svg .failmark{fill:#d64541}
svg .area{fill:rgba(79,134,217,.25);stroke:#4f86d9;stroke-width:1.2}
"""
