"""Per-disk progress of running passes, as `migrate status` shows it: done, total, rate and ETA.

The executor journals each disk's progress (a checkpoint per running step, at most once a second), so
another process (`migrate status` in a second terminal) reads the same figures the live bars show.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.journal import Journal, StepRecord


@dataclass(frozen=True)
class PartProgress:
    name: str
    done: int
    total: int
    rate: float | None  # bytes per second since the part started
    eta: float | None  # seconds left at that rate

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _part(name: str, record: dict[str, Any]) -> PartProgress:
    done, total = int(record.get("done", 0)), int(record.get("total", 0))
    elapsed = float(record.get("updated", 0)) - float(record.get("started", 0))
    rate = done / elapsed if elapsed > 0 and done > 0 else None
    eta = (total - done) / rate if rate else None
    return PartProgress(name, done, total, rate, eta)


def step_parts(journal: Journal, record: StepRecord) -> list[PartProgress]:
    """The disks of a running step, in the order it reported them; empty for steps without parts."""
    if record.state != "running":
        return []
    saved = journal.load_checkpoint(f"progress/{record.step_id}") or {}
    return [_part(name, part) for name, part in saved.get("parts", {}).items()]


def combined(parts: list[PartProgress]) -> PartProgress | None:
    """The server's figure: parts copy side by side, so the rates add up and the ETA is the longest."""
    if not parts:
        return None
    rates = [p.rate for p in parts if p.rate]
    etas = [p.eta for p in parts if p.eta is not None]
    return PartProgress(
        "all disks",
        sum(p.done for p in parts),
        sum(p.total for p in parts),
        sum(rates) if rates else None,
        max(etas) if etas else None,
    )


def running_progress(journal: Journal) -> dict[str, list[dict[str, Any]]]:
    """Every running step's parts, for `migrate status --json`."""
    found = {record.step_id: step_parts(journal, record) for record in journal.steps().values()}
    return {step_id: [part.to_json() for part in parts] for step_id, parts in found.items() if parts}
