"""Reports of a run or a dry run: one data model, four renderers (terminal, JSON, Markdown, HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from orchestrator.playbook.secrets import redact
from orchestrator.report.html import to_html
from orchestrator.report.json_report import from_json, to_json
from orchestrator.report.markdown import to_markdown
from orchestrator.report.model import (
    SCHEMA,
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
    return RunReport.from_dict(_scrub(report.to_dict()))


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
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
