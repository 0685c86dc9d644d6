"""Interpreters that stand for Windows CPython: this Python with tests/fakes/windows_site/sitecustomize.py
loaded first, which takes away what Windows' ``os`` lacks (fcntl, pread, pwrite, fdatasync, ...) and
enforces its text-mode, rename and raw-disk alignment rules. Not Windows: see that module for what it
does not show.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

SITE = Path(__file__).resolve().with_name("windows_site")


def environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the stand-in's site folder first on the path."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONSTARTUP", None)
    env["PYTHONPATH"] = str(SITE)
    return env


def python_argv(cwd: Path | None = None) -> list[str]:
    """A command line starting such an interpreter (in ``cwd``: where Windows device names are files)."""
    return ["env", *(["-C", str(cwd)] if cwd else []), f"PYTHONPATH={SITE}", sys.executable]
