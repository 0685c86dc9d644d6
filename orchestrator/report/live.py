"""Live view of a run in the terminal: one line per finished step, a progress bar per long step.

Bars appear only for steps that report byte progress (mirror passes), so a plan of two hundred quick steps
does not flicker. Off a terminal (CI, a pipe) it prints plain lines only.
"""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from orchestrator.steps.base import StepNode

_STATE_STYLE = {"done": "green", "failed": "bold red", "cancelled": "yellow", "undone": "magenta"}


class LiveObserver:
    def __init__(self, console: Console, *, verbose: bool = False) -> None:
        self.console = console
        self.verbose = verbose
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._tasks: dict[str, TaskID] = {}
        self.bars = Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )

    def __enter__(self) -> LiveObserver:
        self.bars.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.bars.stop()

    def step_started(self, node: StepNode) -> None:
        with self._lock:
            self._started[node.id] = time.monotonic()
        if self.verbose:
            self.console.print(f"[dim]  start  {node.id}[/]")

    def step_finished(self, node: StepNode, state: str, error: str | None) -> None:
        with self._lock:
            began = self._started.pop(node.id, time.monotonic())
            tasks = [self._tasks.pop(k) for k in list(self._tasks) if k.split("\0")[0] == node.id]
        for task in tasks:
            self.bars.remove_task(task)
        took = time.monotonic() - began
        style = _STATE_STYLE.get(state, "white")
        line = f"[{style}]{state:>9}[/]  {node.id}  [dim]{took:.1f}s[/]"
        if error:
            line += f"\n           [red]{error}[/]"
        self.console.print(line, highlight=False)

    def progress(self, node: StepNode, done: int, total: int, label: str, part: str = "") -> None:
        """One bar per disk when the step reports disks (``part``), else one for the step."""
        key = f"{node.id}\0{part}"
        with self._lock:
            task = self._tasks.get(key)
            if task is None:
                task = self.bars.add_task(label or node.id, total=total)
                self._tasks[key] = task
        self.bars.update(task, completed=done, total=total)

    def event(self, node: StepNode | None, level: str, message: str) -> None:
        if level in ("warning", "error", "critical"):
            where = f"{node.id}: " if node else ""
            self.console.print(f"[yellow]  {level}[/] {where}{message}", highlight=False)
        elif self.verbose:
            self.console.print(f"[dim]  {node.id if node else ''}: {message}[/]", highlight=False)
