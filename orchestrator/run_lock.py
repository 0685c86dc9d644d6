"""One orchestrator per plan at a time: an exclusive flock in the state directory.

The journal's SQLite transactions keep each write whole, but two commands running steps of one plan at
once would still fight: both would mark the other's running steps as crashed, copy into the same disks
and undo each other's work. So every command that runs steps holds ``run.lock`` while it does, and a
second one is refused with a line naming the holder. flock belongs to the open file: a process killed
with -9 loses it at once, so a lock is never left stale. ``keeper.lock`` is held for the whole life of
`migrate execute --keep-syncing`, so a cron `migrate sync --due` knows a keeper is already on the job.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

RUN = "run"
KEEPER = "keeper"


class PlanBusy(Exception):
    """Another process holds the lock; the message names it and what to do."""

    def __init__(self, message: str, holder: dict[str, object]) -> None:
        super().__init__(message)
        self.holder = holder


class PlanLock:
    """``<state_dir>/<name>.lock``; ``acquire`` never waits: a busy plan is refused, not queued."""

    def __init__(self, state_dir: Path, name: str = RUN) -> None:
        self.path = Path(state_dir) / f"{name}.lock"
        self.name = name
        self._fd: int | None = None

    def acquire(self, command: str) -> PlanLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise PlanBusy(busy_message(holder, self.path.parent), holder) from None
        os.ftruncate(fd, 0)
        record = {
            "pid": os.getpid(),
            "command": command,
            "who": who(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # releases the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> dict[str, object] | None:
        """Who holds it now (another process), or None when it is free."""
        if not self.path.exists():
            return None
        try:
            probe = PlanLock(self.path.parent, self.name).acquire("probe")
        except PlanBusy as busy:
            return busy.holder
        probe.release()
        return None

    def __enter__(self) -> PlanLock:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.release()


def who() -> str:
    """OS user @ this host: who ran a command, for the lock and the audit trail."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (some containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def describe(holder: dict[str, object]) -> str:
    """`migrate execute --keep-syncing` (pid 4242, ops@orch1, since 2024-05-01T10:00:00Z)"""
    return (
        f"`migrate {holder.get('command', '?')}` (pid {holder.get('pid', '?')}, {holder.get('who', '?')}, "
        f"since {holder.get('since', '?')})"
    )


def busy_message(holder: dict[str, object], state_dir: Path) -> str:
    return (
        f"another orchestrator runs this plan: {describe(holder)} holds {state_dir}; wait for it to finish "
        "or stop it (Ctrl-C keeps its state), then run this command again"
    )


def _read(fd: int) -> dict[str, object]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
