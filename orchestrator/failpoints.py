"""Fault injection for tests: the orchestrator kills itself (SIGKILL) at a named point of a run.

The executor promises that ``kill -9`` at any moment loses nothing: a re-run finishes, creates nothing
twice, and ``migrate undo`` still finds everything. A test can only prove that at step boundaries if it
can crash the process exactly there, which a timer cannot do; these failpoints can.

Set ``HVMIGRATE_FAILPOINT`` to one or more comma-separated points (tests/faults/ does; nobody else should):

``before:<step_id>``
    the executor has journaled the step as running, the step's own work has not started
``after:<step_id>``
    the step's work returned, the executor has not journaled it done yet (the window a crash makes a
    finished step run again, so it had better be idempotent)

The process sends itself SIGKILL there: no cleanup, no ``finally``, no atexit, exactly as a crash or an
operator's ``kill -9`` would. The variable is read once at import (`arm` reads it again); unset (always,
outside tests), each check is one test of an empty frozenset.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "HVMIGRATE_FAILPOINT"
WHEN = ("before", "after")


def _parse(value: str) -> frozenset[tuple[str, str]]:
    points: set[tuple[str, str]] = set()
    for item in filter(None, (part.strip() for part in value.split(","))):
        when, sep, step_id = item.partition(":")
        if not sep or when not in WHEN or not step_id:
            raise SystemExit(f"{ENV}: {item!r} is not before:<step_id> or after:<step_id>; unset {ENV}")
        points.add((when, step_id))
    return frozenset(points)


_POINTS = _parse(os.environ.get(ENV, ""))


def arm() -> None:
    """Read the variable again: for a process forked from an interpreter that imported this module
    before the variable was set (the tests' fork server, which saves each killed command its imports)."""
    global _POINTS
    _POINTS = _parse(os.environ.get(ENV, ""))


def hit(when: str, step_id: str) -> None:
    """Die here, at once, if a test armed this point."""
    if _POINTS and (when, step_id) in _POINTS:
        sys.stderr.write(f"{ENV}: SIGKILL {when}:{step_id}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
