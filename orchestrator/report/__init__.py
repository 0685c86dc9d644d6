"""Reports of a run or a dry run: one data model, four renderers (terminal, JSON, Markdown, HTML)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Literal, TypeVar

from orchestrator.playbook.secrets import redact
from orchestrator.report.html import to_html
from orchestrator.report.json_report import from_json, to_json
from orchestrator.report.markdown import to_markdown
from orchestrator.report.model import (
    SCHEMA,
    AuditLine,
    FindingView,
    RunReport,
    ServerSummary,
    StepTiming,
    utc_now_iso,
)
from orchestrator.report.terminal import render_gantt_text, render_report

__all__ = [
    "SCHEMA",
    "FindingView",
    "RunReport",
    "ServerSummary",
    "StepTiming",
    "from_json",
    "redacted",
    "render_gantt_text",
    "render_report",
    "to_html",
    "to_json",
    "to_markdown",
    "utc_now_iso",
    "write_report",
]

ReportFormat = Literal["html", "json", "md"]
_RENDERERS = {"html": to_html, "json": to_json, "md": to_markdown}


def redacted(report: RunReport) -> RunReport:
    """A copy with every secret this process has revealed replaced by ``***`` in every string.

    Step messages and notes carry provider error text, which can quote a password back; scrubbing the
    model (not the rendered output) catches the value before HTML or JSON escaping could disguise it.
    """
    seen: dict[str, str] = {}  # step ids, states and kinds repeat: redact each distinct string once

    def clean(text: str) -> str:
        if text not in seen:
            seen[text] = redact(text)
        return seen[text]

    copy = _with_clean_strings(report, clean)
    copy.servers = [_with_clean_strings(s, clean) for s in report.servers]
    for server in copy.servers:
        server.downtime_breakdown = {clean(k): v for k, v in server.downtime_breakdown.items()}
        if server.files is not None:  # paths and messages a files agent sent
            server.files = _clean_nested(server.files, clean)
    copy.steps = [_with_clean_strings(s, clean) for s in report.steps]
    copy.findings = [_with_clean_strings(f, clean) for f in report.findings]
    copy.critical_path = [clean(i) for i in report.critical_path]
    copy.notes = [clean(n) for n in report.notes]
    copy.audit = [_with_clean_strings(a, clean) for a in report.audit]
    copy.bandwidth_series = list(report.bandwidth_series)
    return copy


_Item = TypeVar("_Item", RunReport, ServerSummary, StepTiming, FindingView, AuditLine)


def _with_clean_strings(item: _Item, clean: Callable[[str], str]) -> _Item:
    values = {f.name: getattr(item, f.name) for f in fields(item)}
    return type(item)(**{k: clean(v) if isinstance(v, str) and v else v for k, v in values.items()})


def _clean_nested(value: object, clean: Callable[[str], str]) -> object:
    if isinstance(value, str):
        return clean(value) if value else value
    if isinstance(value, dict):
        return {k: _clean_nested(v, clean) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_nested(v, clean) for v in value]
    return value


def write_report(report: RunReport, fmt: ReportFormat, path: str | Path | None = None) -> str:
    """Render ``report`` as ``fmt``; write it to ``path`` when given. Returns the rendered text."""
    try:
        render = _RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown report format {fmt!r}; use one of: html, json, md") from None
    text = render(redacted(report))
    if path is not None:
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ValueError(
                f"cannot write the report to {target}: {exc.strerror}; choose another -o path"
            ) from None
    return text
