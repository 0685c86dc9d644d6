"""How `migrate cutover` and a running `migrate replicate` find each other: files in the state directory.

They are two processes, often in two shells, so they meet in ``<state_dir>/replicate/``:

* ``<server>.lock``: held (flock) by the replicating process for its whole life, so a cutover knows a
  replicator is live (the kernel drops it when the process dies: never stale);
* ``<server>.status.json``: what the replicator last saw, written at each batch end and heartbeat: its
  state, how many changes wait in the source agent's queue, when;
* ``<server>.control.json``: what the cutover asks: ``{"stop": "apply"}`` (apply what is queued, stop
  once the source is idle) or ``{"stop": "discard"}`` (stop at the end of the batch being applied; the
  rest of the queue is dropped and the cutover's final difference pass sends what it held).

The reference product's cutover asks the same question: apply the data in the target queues first, or
discard it and cut over at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from orchestrator.run_lock import PlanBusy, PlanLock

STOP_MODES = ("apply", "discard")
STATUS_EVERY = 0.2  # seconds between status writes while changes stream (each idle moment is written)


class ReplicationControl:
    """The three files of one server's replication; used by both sides."""

    def __init__(self, state_dir: Path, server: str) -> None:
        self.folder = Path(state_dir) / "replicate"
        self.server = server
        self.lock = PlanLock(self.folder, server)
        self.status_path = self.folder / f"{server}.status.json"
        self.control_path = self.folder / f"{server}.control.json"
        self._written = 0.0

    # ------------------------------------------------------------ the replicating side

    def hold(self, command: str) -> None:
        """Take the lock (refused with PlanBusy when another process replicates this server) and clear a
        request left by an earlier run."""
        self.lock.acquire(command)
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()

    def publish(self, state: str, queued: int, *, force: bool = False, **more: Any) -> None:
        now = time.time()
        if not force and queued and now - self._written < STATUS_EVERY:
            return
        self._written = now
        record = {"pid": os.getpid(), "state": state, "queued": queued, "at": now, **more}
        _write_json(self.status_path, record)

    def requested(self) -> str | None:
        """The stop mode a cutover asked for, or None."""
        record = _read_json(self.control_path)
        mode = record.get("stop") if record else None
        return mode if mode in STOP_MODES else None

    def release(self, state: str, **more: Any) -> None:
        self.publish(state, int(more.pop("queued", 0)), force=True, **more)
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()
        self.lock.release()

    # ------------------------------------------------------------ the cutover's side

    def live(self) -> dict[str, Any] | None:
        """Who replicates this server now (the lock's holder), or None."""
        if not self.folder.exists():
            return None
        return self.lock.holder()

    def status(self) -> dict[str, Any] | None:
        return _read_json(self.status_path)

    def ask_stop(self, mode: str) -> None:
        if mode not in STOP_MODES:
            raise ValueError(f"stop mode must be one of {', '.join(STOP_MODES)}, got {mode!r}")
        _write_json(self.control_path, {"stop": mode, "at": time.time(), "by": os.getpid()})


def busy(exc: PlanBusy) -> str:
    return str(exc).replace("another orchestrator runs this plan", "this server is already replicated")


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """Whole or not at all: the other process never reads half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(json.dumps(record))
    os.replace(temp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
