"""The hvmigrate agent as the WinRM stand-in runs it: ``python.exe`` on a Windows machine, played by a
real Python subprocess on this machine running the real agent.

What it stands for: a Windows host or server with CPython installed at the path its model names
(``python``), on which WinRM starts ``python.exe -c <bootstrap> N`` and the agent then opens Windows
device paths. Only that exact command is accepted (the agent's bootstrap, decoded from the hex form
orchestrator/transport/winrm_agent.py sends, must equal agent_bundle.BOOTSTRAP); anything else Python
could run is refused, so a test passing here never ran an arbitrary program.

Windows names are made real by the working directory the agent starts in, a fresh folder holding one
symbolic link per name the machine publishes: ``\\\\.\\PhysicalDriveN`` (a literal file name on Linux) to the
model's disk file (a mounted VHDX's raw file on the Hyper-V host model, a small disk file on the Windows
source model), and ``C:``, ``D:`` to the model's volume folders, so ``D:/hvmigrate/x.hvmap`` (Win32 takes
``/`` for ``\\``) lands where ``D:\\hvmigrate\\x.hvmap`` is on the model. A disk that is not published (not
mounted, no such number) does not open, as on Windows. The interpreter runs with Windows' ``os`` as
tests/fakes/windows_site/sitecustomize.py plays it: no fcntl, pread, pwrite, fdatasync or O_CLOEXEC,
O_BINARY required, no rename of an open file, raw-disk reads and writes in whole sectors only, msvcrt
locks. What this does not show: the agent under Windows' own Python (sharing and locking of a disk a
volume is mounted from, what a raw disk handle answers), and Windows' timing.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from orchestrator.mirror.agent_bundle import BOOTSTRAP

from . import windows_python

RECEIVE_MAX = 256 * 1024  # stdout bytes per Receive response: its base64 fits a 500 KiB envelope
_HEX_CODE = re.compile(r"exec\(bytes\.fromhex\('([0-9a-f]+)'\)\)")


def agent_machine(host: Any, models: tuple[Any, ...]) -> Any:
    """The machine this endpoint stands for that can run Python (the Hyper-V host, or a source)."""
    for machine in (host, *models):
        if machine is not None and hasattr(machine, "agent_names"):
            return machine
    return None


def windows_argv(line: str) -> list[str]:
    """A command line split as CreateProcess and the Microsoft C runtime split it (quotes, backslashes)."""
    argv: list[str] = []
    current: list[str] = []
    in_quotes = False
    have = False
    index = 0
    while index < len(line):
        ch = line[index]
        if ch == "\\":
            run = 0
            while index < len(line) and line[index] == "\\":
                run += 1
                index += 1
            if index < len(line) and line[index] == '"':
                current.append("\\" * (run // 2))
                if run % 2:
                    current.append('"')
                    index += 1
            else:
                current.append("\\" * run)
            have = True
            continue
        if ch == '"':
            in_quotes = not in_quotes
            have = True
        elif ch in " \t" and not in_quotes:
            if have:
                argv.append("".join(current))
                current, have = [], False
        else:
            current.append(ch)
            have = True
        index += 1
    if have:
        argv.append("".join(current))
    return argv


def parse_agent_command(argv: list[str]) -> tuple[str | None, int]:
    """(why it is refused, or None; the program length the bootstrap reads)."""
    if len(argv) != 4 or argv[1] != "-c" or not argv[3].isdigit():
        return "the stand-in runs Python only as the hvmigrate agent: python.exe -c <bootstrap> <length>", 0
    match = _HEX_CODE.fullmatch(argv[2])
    if match is None or bytes.fromhex(match.group(1)).decode("utf-8", "replace") != BOOTSTRAP:
        return "the stand-in runs no Python code but the hvmigrate agent's bootstrap", 0
    return None, int(argv[3])


class AgentProcess:
    """One running agent: Send writes its stdin, Receive collects its stdout and stderr."""

    def __init__(self, popen: subprocess.Popen, workdir: Path) -> None:
        self.popen = popen
        self.workdir = workdir
        self._stdin_lock = threading.Lock()
        self._receive_lock = threading.Lock()
        self._open = {"stdout": True, "stderr": True}

    @classmethod
    def start(cls, machine: Any, length: int) -> AgentProcess:
        workdir = Path(tempfile.mkdtemp(prefix="winrm-agent-"))
        for name, target in machine.agent_names().items():
            (workdir / name).symlink_to(target)
        environment = windows_python.environment()  # Windows' os: no fcntl, pread, fdatasync, ...
        popen = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, str(length)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=environment,
            bufsize=0,
            close_fds=True,
            start_new_session=True,
        )
        return cls(popen, workdir)

    def send(self, data: bytes, *, end: bool) -> bool:
        """False when the agent's stdin is gone (it exited): Windows answers such a Send with a fault."""
        with self._stdin_lock:
            stdin = self.popen.stdin
            assert stdin is not None
            try:
                if data:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(stdin.fileno(), view) :]
                if end:
                    stdin.close()
            except (BrokenPipeError, ValueError, OSError):
                return False
            return True

    def receive(self, timeout: float) -> tuple[bytes, bytes, int | None]:
        """What it wrote since the last call (waiting up to ``timeout`` for anything), and its exit code
        once both streams ended."""
        with self._receive_lock:
            pipes = {"stdout": self.popen.stdout, "stderr": self.popen.stderr}
            out = {"stdout": bytearray(), "stderr": bytearray()}
            wait = timeout
            while any(self._open.values()) and len(out["stdout"]) < RECEIVE_MAX:
                fds = [pipes[name].fileno() for name, live in self._open.items() if live]  # type: ignore[union-attr]
                ready, _, _ = select.select(fds, [], [], wait)
                if not ready:
                    break
                for name in ("stdout", "stderr"):
                    pipe = pipes[name]
                    assert pipe is not None
                    if self._open[name] and pipe.fileno() in ready:
                        room = RECEIVE_MAX - len(out["stdout"]) if name == "stdout" else 65536
                        data = os.read(pipe.fileno(), max(1, min(65536, room)))
                        if data:
                            out[name] += data
                        else:
                            self._open[name] = False
                wait = 0  # gather what is there already, then answer
            code = None
            if not any(self._open.values()):
                code = self.popen.wait()
                for pipe in pipes.values():
                    if pipe is not None:
                        pipe.close()
                self._cleanup()
            return bytes(out["stdout"]), bytes(out["stderr"]), code

    def terminate(self) -> None:
        """Signal terminate (or the shell deleted): TerminateProcess, as WinRM does."""
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
