"""Validation findings and the rule catalog as rich tables (`migrate validate`, `migrate validate --rules`).

The functions read findings by attribute only (rule_id, severity, message, fix, server, location), so a
`orchestrator.validation.Finding` and a report's flattened `FindingView` render the same way. Every value
goes in as `rich.text.Text`, never as markup: a server or a network called ``[red]x`` prints as written.
"""

from __future__ import annotations

from collections.abc import Iterable
from string import Formatter
from typing import Protocol

from rich.table import Table
from rich.text import Text

from orchestrator.validation import RULES, Rule

SEVERITIES = ("critical", "warning", "info")  # most severe first
SEVERITY_STYLES = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
_DASH = "—"


class FindingLike(Protocol):
    rule_id: str
    severity: str  # a `Severity` is a str too
    message: str
    fix: str
    server: str | None
    location: str | None


def _severity(value: str) -> Text:
    name = str(value)
    return Text(name, SEVERITY_STYLES.get(name, ""))


def findings_table(findings: Iterable[FindingLike], *, title: str = "Findings") -> Table:
    """One row per finding, in the order given (`validate` already sorts them, most severe first)."""
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, expand=False)
    table.add_column("severity", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("server", no_wrap=True)
    table.add_column("message", ratio=3)
    table.add_column("fix", ratio=2)
    table.add_column("location", no_wrap=True, style="dim")
    for finding in findings:
        table.add_row(
            _severity(finding.severity),
            Text(finding.rule_id),
            Text(finding.server or _DASH),
            Text(finding.message),
            Text(finding.fix or _DASH, "green"),
            Text(finding.location or _DASH),
        )
    return table


def findings_summary(findings: Iterable[FindingLike]) -> str:
    """``2 critical, 1 warning, 3 info``; ``no findings`` when the playbook is clean."""
    counts = dict.fromkeys(SEVERITIES, 0)
    for finding in findings:
        key = str(finding.severity)
        counts[key] = counts.get(key, 0) + 1
    if not any(counts.values()):
        return "no findings"
    parts = []
    for severity, count in counts.items():
        noun = f"{severity}s" if severity == "warning" and count != 1 else severity
        parts.append(f"{count} {noun}")
    return ", ".join(parts)


def fix_template_text(template: str) -> str:
    """A fix template as a person reads it: ``use nic0..nic<last>``, with ``{{`` unescaped."""
    return "".join(
        literal + (f"<{name}>" if name is not None else "")
        for literal, name, _, _ in Formatter().parse(template)
    )


def catalog_table(rules: Iterable[Rule] | None = None) -> Table:
    """Every rule the validator knows, as `migrate validate --rules` lists them."""
    table = Table(title="Validation rules", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("rule", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("checks", ratio=3)
    table.add_column("needs", no_wrap=True)
    table.add_column("fix", ratio=2)
    table.add_column("reference", ratio=2, style="dim")
    for rule in RULES.values() if rules is None else rules:
        table.add_row(
            Text(rule.id),
            _severity(rule.severity),
            Text(rule.title),
            Text(", ".join(rule.needs) or "playbook"),
            Text(fix_template_text(rule.fix), "green"),
            Text(rule.reference or _DASH),
        )
    return table
