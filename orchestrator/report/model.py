"""The report of a run or a dry run, as plain data.

The executor fills it from the journal and the simulator from its virtual clock, so every renderer
(terminal, JSON, Markdown, HTML) shows a real run and a prediction the same way and the two can be
compared side by side. It holds only plain values (no playbook, no validation objects, no secrets) so
that it can be written to disk, read back and rendered again later without the code that produced it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from orchestrator.playbook.units import format_duration, format_size

SCHEMA = "hvmigrate/report/v1"

STEP_STATES = ("pending", "running", "done", "failed", "skipped", "undone", "cancelled")
REPORT_KINDS = ("simulation", "run")
SEVERITIES = ("critical", "warning", "info")  # most severe first: renderers sort on this order

# Where a server's downtime goes, in the order it happens at cutover; renderers list known keys in this
# order and any other key after them.
DOWNTIME_PARTS = ("quiesce", "final_delta", "detach", "boot", "verify", "dns_ttl")


def utc_now_iso() -> str:
    """ISO 8601 in UTC with a ``Z``: what `RunReport.generated_at` holds."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class StepTiming:
    """One step of the plan on the run's clock (seconds from the run's start; None = not yet)."""

    step_id: str
    server: str | None
    kind: str
    phase: str
    state: str
    start: float | None = None
    end: float | None = None
    bytes: int = 0
    attempts: int = 0
    message: str = ""
    critical: bool = False

    @property
    def duration(self) -> float | None:
        """Elapsed time of a finished step; None while it has not both started and ended."""
        if self.start is None or self.end is None:
            return None
        return max(0.0, self.end - self.start)

    def end_or(self, now: float) -> float | None:
        """Where a bar ends on a chart: its end, or ``now`` while it is still running."""
        if self.start is None:
            return None
        return self.end if self.end is not None else max(self.start, now)


@dataclass(slots=True)
class ServerSummary:
    """One server's line in the report: where it is, how far, how much data and how long it is down."""

    name: str
    source: str
    target: str
    state: str
    steps_done: int = 0
    steps_total: int = 0
    bytes_total: int = 0
    bytes_moved: int = 0
    duration: float | None = None
    downtime_estimate: float | None = None
    downtime_measured: float | None = None
    downtime_breakdown: dict[str, float] = field(default_factory=dict)
    lag: float | None = None
    convergence: str | None = None  # converged | converging | NOT_CONVERGING | unknown
    # the warm-migration clock (sync_schedule): the last incremental pass and when the next one is due
    last_pass_at: str | None = None  # ISO 8601 UTC, when the last pass started
    last_pass_bytes: int | None = None
    last_pass_duration: float | None = None
    next_pass_due: str | None = None  # ISO 8601 UTC; None: not mirrored yet, or past the cutover gate
    final_delta_estimate: float | None = None  # seconds a final pass would take if cut over now
    # a data-only server's figures (steps/files.py): last pass, totals, verification, skipped files
    files: dict[str, Any] | None = None

    def breakdown_items(self) -> list[tuple[str, float]]:
        """The downtime parts in cutover order, unknown parts last (alphabetically) so output is stable."""
        known = [(k, self.downtime_breakdown[k]) for k in DOWNTIME_PARTS if k in self.downtime_breakdown]
        extra = sorted((k, v) for k, v in self.downtime_breakdown.items() if k not in DOWNTIME_PARTS)
        return known + extra


@dataclass(slots=True)
class FindingView:
    """A validation finding flattened to strings, so the report does not depend on the rule catalog."""

    rule_id: str
    severity: str
    message: str
    fix: str = ""
    server: str | None = None
    location: str | None = None


@dataclass(slots=True)
class AuditLine:
    """One operation the tool ran against a source or target (the journal's audit table), as plain text."""

    at: str  # ISO 8601 UTC
    who: str  # OS user@orchestrator host
    server: str | None
    step_id: str | None
    endpoint: str
    operation: str
    outcome: str  # ok | error | running (no outcome recorded: the process stopped during it)
    exit_code: int | None = None
    detail: str | None = None


@dataclass(slots=True)
class RunReport:
    """Everything a renderer needs; ``kind`` says whether the figures were measured or predicted."""

    kind: str
    title: str
    playbook: str
    plan_hash: str
    generated_at: str
    started_at: str | None = None
    duration: float = 0.0
    servers: list[ServerSummary] = field(default_factory=list)
    steps: list[StepTiming] = field(default_factory=list)
    findings: list[FindingView] = field(default_factory=list)
    bytes_moved: int = 0
    peak_bandwidth: float = 0.0
    bandwidth_series: list[tuple[float, float]] = field(default_factory=list)
    critical_path: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    audit: list[AuditLine] = field(default_factory=list)

    # -- views shared by the renderers ------------------------------------------------------------

    @property
    def is_simulation(self) -> bool:
        return self.kind == "simulation"

    def time_span(self) -> float:
        """The length of the chart's time axis: the run's duration, or the last bar end if later."""
        ends = [s.end_or(self.duration) or 0.0 for s in self.steps if s.start is not None]
        series_end = self.bandwidth_series[-1][0] if self.bandwidth_series else 0.0
        return max([self.duration, series_end, *ends])

    def steps_by_server(self) -> dict[str | None, list[StepTiming]]:
        """Steps grouped by server in the report's server order; shared nodes (server None) come first."""
        groups: dict[str | None, list[StepTiming]] = {}
        if any(s.server is None for s in self.steps):
            groups[None] = []
        for server in self.servers:
            groups.setdefault(server.name, [])
        for step in self.steps:
            groups.setdefault(step.server, []).append(step)
        return groups

    def critical_steps(self) -> list[StepTiming]:
        """The critical path as step objects in path order (ids the report does not hold are skipped)."""
        by_id = {s.step_id: s for s in self.steps}
        return [by_id[i] for i in self.critical_path if i in by_id]

    def failed_steps(self) -> list[StepTiming]:
        """Failed and cancelled steps in the order they stopped: what an operator must read first."""
        stopped = [s for s in self.steps if s.state in ("failed", "cancelled")]
        return sorted(stopped, key=lambda s: (s.end if s.end is not None else float("inf"), s.step_id))

    def state_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for server in self.servers:
            counts[server.state] = counts.get(server.state, 0) + 1
        return counts

    def finding_counts(self) -> dict[str, int]:
        """How many findings of each severity, most severe first; severities with none are left out."""
        counts = {sev: 0 for sev in SEVERITIES}
        for finding in self.findings:
            counts[finding.severity] = counts.get(finding.severity, 0) + 1
        return {sev: n for sev, n in counts.items() if n}

    def findings_by_severity(self) -> list[FindingView]:
        """Findings most severe first, then by server and rule, so the same input renders the same way."""
        rank = {sev: i for i, sev in enumerate(SEVERITIES)}
        return sorted(
            self.findings,
            key=lambda f: (rank.get(f.severity, len(SEVERITIES)), f.server or "", f.rule_id, f.message),
        )

    # -- serialization ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists, not tuples; no NaN); `from_dict` reads it back to an equal report."""
        # Written out rather than dataclasses.asdict, which deep-copies every value and takes tens of
        # seconds on a 10,000-server report.
        data = _plain(self)
        data["servers"] = [
            _plain(s) | {"downtime_breakdown": dict(s.downtime_breakdown)} for s in self.servers
        ]
        data["steps"] = [_plain(s) for s in self.steps]
        data["findings"] = [_plain(f) for f in self.findings]
        data["bandwidth_series"] = [[float(t), float(rate)] for t, rate in self.bandwidth_series]
        data["critical_path"] = list(self.critical_path)
        data["notes"] = list(self.notes)
        data["audit"] = [_plain(a) for a in self.audit]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunReport:
        """Inverse of `to_dict`; unknown keys (from a newer writer) are ignored, missing lists are empty."""
        if not isinstance(data, Mapping):
            raise ValueError("a report must be a JSON object; was the file written by `migrate report`?")
        values = _known(cls, data)
        for required in ("kind", "title", "playbook", "plan_hash", "generated_at"):
            if required not in values:
                raise ValueError(f"the report has no {required!r}; it is not an hvmigrate report")
        values["servers"] = [ServerSummary(**_known(ServerSummary, s)) for s in _list(data, "servers")]
        for server in values["servers"]:
            server.downtime_breakdown = {str(k): float(v) for k, v in server.downtime_breakdown.items()}
        values["steps"] = [StepTiming(**_known(StepTiming, s)) for s in _list(data, "steps")]
        values["findings"] = [FindingView(**_known(FindingView, f)) for f in _list(data, "findings")]
        values["bandwidth_series"] = [(float(t), float(rate)) for t, rate in _list(data, "bandwidth_series")]
        values["critical_path"] = [str(i) for i in _list(data, "critical_path")]
        values["notes"] = [str(n) for n in _list(data, "notes")]
        values["audit"] = [AuditLine(**_known(AuditLine, a)) for a in _list(data, "audit")]
        return cls(**values)


def _plain(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in _FIELD_NAMES[type(obj)]}


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = _FIELD_NAMES[cls]
    return {k: v for k, v in data.items() if k in names}


def _list(data: Mapping[str, Any], key: str) -> Iterable[Any]:
    value = data.get(key) or []
    if not isinstance(value, list | tuple):
        raise ValueError(f"the report's {key!r} must be a list")
    return value


_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls))
    for cls in (StepTiming, ServerSummary, FindingView, RunReport, AuditLine)
}


# -- formatting shared by the renderers, so a figure reads the same in every format ---------------

DASH = "—"


def show_duration(seconds: float | None) -> str:
    return DASH if seconds is None else format_duration(max(0.0, seconds))


def show_size(n: float | None) -> str:
    return DASH if n is None else format_size(n)


def show_rate(bytes_per_second: float | None) -> str:
    return DASH if bytes_per_second is None else f"{format_size(bytes_per_second)}/s"


def show_breakdown(server: ServerSummary) -> str:
    """``quiesce 5.0s · final_delta 12.0s · boot 40.0s``: where the downtime goes."""
    return " · ".join(
        f"{name} {format_duration(max(0.0, value))}" for name, value in server.breakdown_items()
    )
