"""`migrate` commands forked from a warm interpreter, for the commands a test is going to kill.

A command that gets ``kill -9`` must be a process of its own, but starting Python and importing the
orchestrator costs about a second of CPU each time, which dozens of kill cases pay again and again.
multiprocessing's fork server imports `migrate` once and forks every command from there: each command is
still a separate process (own pid, own journal connection, killed for real), it only skips the imports.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path

PRELOAD = ["orchestrator.cli", "orchestrator.executor", "orchestrator.session", "providers.sim", __name__]
_context: ForkServerContext | None = None


def _fork_server() -> ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def start(argv: list[str], cwd: Path, env: Mapping[str, str], log: Path) -> BaseProcess:
    """Start ``migrate ARGV`` in ``cwd`` with ``env`` added; stdout and stderr go to ``log``."""
    process = _fork_server().Process(target=_migrate, args=(argv, str(cwd), dict(env), str(log)))
    process.start()
    return process


def _migrate(argv: list[str], cwd: str, env: dict[str, str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(cwd)
    os.environ.update(env)
    from orchestrator import failpoints
    from orchestrator.cli import main

    failpoints.arm()
    main(argv, prog_name="migrate")  # exits: the process's exit code is the command's
