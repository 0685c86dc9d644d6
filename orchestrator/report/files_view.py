"""The data-only servers' part of a report: per-server files figures, verification differences (times in
UTC) and the files a pass skipped, in Markdown and HTML from the same rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.report.model import DASH, RunReport, show_size

MAX_ROWS = 200  # per list in a report; the counts are always complete

FIGURE_COLUMNS = (
    "Server", "Last pass", "Finished (UTC)", "Files", "Folders", "Size", "Files sent", "Bytes sent",
    "Passes", "Sent in all", "Orphans", "Differing", "Skipped",
)  # fmt: skip
DIFFERENCE_COLUMNS = ("Server", "Path", "Why", "Source mtime (UTC)", "Target mtime (UTC)")
SKIPPED_COLUMNS = ("Server", "Path", "Why")


def _figures(name: str, files: dict[str, Any]) -> list[str]:
    last = files.get("last_pass") or {}
    verification = files.get("verification")
    return [
        name,
        str(last.get("mode", DASH)),
        str(last.get("finished_at") or DASH),
        str(last.get("files", DASH)),
        str(last.get("folders", DASH)),
        show_size(last.get("bytes_total")),
        str(last.get("files_sent", DASH)),
        show_size(last.get("bytes_sent")),
        str(files.get("passes", 0)),
        show_size(files.get("bytes_sent_total", 0)),
        f"{last.get('orphans', 0)} ({last.get('orphan_action', DASH)})" if last else DASH,
        f"{verification['differing']} at {verification['at']}" if verification else "not verified",
        str(len(files.get("skipped") or [])),
    ]


def tables(report: RunReport) -> list[tuple[str, tuple[str, ...], list[list[str]]]]:
    """(title, columns, rows) of each table; none when the report has no data-only server."""
    servers = [s for s in report.servers if s.files is not None]
    if not servers:
        return []
    figures = [_figures(s.name, s.files or {}) for s in servers]
    differences: list[list[str]] = []
    skipped: list[list[str]] = []
    for server in servers:
        files = server.files or {}
        for diff in ((files.get("verification") or {}).get("differences") or [])[:MAX_ROWS]:
            differences.append(
                [
                    server.name,
                    diff["path"],
                    diff["reason"],
                    diff.get("source_mtime") or DASH,
                    diff.get("target_mtime") or DASH,
                ]
            )
        for problem in (files.get("skipped") or [])[:MAX_ROWS]:
            skipped.append([server.name, problem["path"], problem["message"]])
    out = [("Files and folders", FIGURE_COLUMNS, figures)]
    if differences:
        out.append(("Verification: files that differ", DIFFERENCE_COLUMNS, differences))
    if skipped:
        out.append(
            ("Skipped files (could not be read or written; the pass went on)", SKIPPED_COLUMNS, skipped)
        )
    return out


def to_markdown(report: RunReport, cell: Callable[[object], str]) -> str:
    parts = []
    for title, columns, rows in tables(report):
        head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
        body = "\n".join("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
        parts.append(f"## {title}\n\n{head}\n{body}")
    return "\n\n".join(parts)


def to_html(report: RunReport, esc: Callable[[object], str]) -> str:
    parts = []
    for title, columns, rows in tables(report):
        head = "".join(f"<th>{esc(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
        parts.append(
            f"<section><h2>{esc(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            "</table></section>"
        )
    return "\n".join(parts)
