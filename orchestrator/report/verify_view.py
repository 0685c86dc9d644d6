"""What `migrate sync --verify` found: per disk, the ranges where the replica differs from the source."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.playbook.units import format_size

SHOWN_RANGES = 5


def render_verify(console: Console, outputs: dict[str, dict[str, Any] | None]) -> int:
    """Print the comparison; 1 when anything differs (a script can act on it), else 0."""
    table = Table(title="verify: replica compared with the source, chunk by chunk", title_justify="left")
    for column in ("server", "disk", "differs", "ranges (offset+length)"):
        table.add_column(column, overflow="fold")
    found = staged = 0
    for server, output in outputs.items():
        for disk in (output or {}).get("differing", []):
            shown = ", ".join(f"{o}+{n}" for o, n in disk["ranges"][:SHOWN_RANGES])
            more = disk["range_count"] - min(SHOWN_RANGES, len(disk["ranges"]))
            if not disk["range_count"]:
                verdict = "[green]identical[/]"
            elif disk.get("staged_edits"):
                staged += disk["range_count"]
                verdict = (
                    f"[yellow]{format_size(disk['bytes'])}[/] (carries {disk['staged_edits']} staged edits)"
                )
            else:
                found += disk["range_count"]
                verdict = f"[red]{format_size(disk['bytes'])}[/]"
            table.add_row(server, disk["disk"], verdict, shown + (f" and {more} more" if more > 0 else ""))
    console.print(table)
    if staged:
        console.print(
            f"{staged} range(s) of boot disks differ where the system-state staging (network, hostname, "
            "fstab) changed the replica on purpose; they are not counted as damage, and a sync restores "
            "the source's data there before staging again"
        )
    if found:
        console.print(f"[yellow]{found} range(s) differ[/]: run `migrate sync` to repair exactly those")
        return 1
    console.print(
        "[green]every replica disk matches its source[/]" + (" apart from staging" if staged else "")
    )
    return 0


def render_files_verify(console: Console, outputs: dict[str, dict[str, Any] | None]) -> int:
    """A data-only server's verification: each differing path, why, and both sides' times in UTC."""
    table = Table(title="verify: target files compared with the source", title_justify="left")
    for column in ("server", "path", "why", "source mtime (UTC)", "target mtime (UTC)"):
        table.add_column(column, overflow="fold")
    found = 0
    for server, output in outputs.items():
        differences = (output or {}).get("differences", [])
        found += int((output or {}).get("differences_count", len(differences)))
        for diff in differences:
            table.add_row(
                server, diff["path"], diff["reason"], diff["source_mtime"] or "-", diff["target_mtime"] or "-"
            )
    console.print(table, highlight=False)
    if found:
        console.print(f"[yellow]{found} path(s) differ[/]: run `migrate sync` to send them again")
        return 1
    console.print("[green]every file in the set matches its source[/]")
    return 0
