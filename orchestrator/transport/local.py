"""Agents on this machine: a subprocess with pipes (both ends of a copy local, or tests).

It runs the very same shipped program as over SSH, so the local path tests the remote one.
"""

from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Sequence

from orchestrator.mirror.protocol import FdStream, widen_pipe

from . import TransportError

STDERR_TAIL_LINES = 40


class StderrTail:
    """Keeps the last lines a process wrote to stderr, read on a thread so the process never blocks."""

    def __init__(self) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._partial = ""
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        with self._lock:
            text = self._partial + data.decode(errors="replace")
            *lines, self._partial = text.split("\n")
            self._lines.extend(lines)

    def text(self) -> str:
        with self._lock:
            return "\n".join([*self._lines, self._partial]).strip()


class LocalProcess(FdStream):
    """A local interpreter's stdin/stdout as a stream."""

    def __init__(self, popen: subprocess.Popen, name: str) -> None:
        assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
        super().__init__(popen.stdout.fileno(), popen.stdin.fileno(), name)
        self.popen = popen
        self.pid = popen.pid
        widen_pipe(self.read_fd)
        widen_pipe(self.write_fd)
        self._stderr = StderrTail()
        self._drain = threading.Thread(target=self._read_stderr, name=f"stderr:{self.pid}", daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        stderr = self.popen.stderr
        assert stderr is not None
        while True:
            data = os.read(stderr.fileno(), 65536)
            if not data:
                return
            self._stderr.feed(data)

    def exit_status(self, timeout: float | None = None) -> int | None:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._drain.join(timeout=1)
        return code

    def stderr_tail(self) -> str:
        return self._stderr.text()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()

    def close(self) -> None:
        """End its stdin (an agent exits at EOF), wait a little, then make sure it is gone."""
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        if self.exit_status(timeout=10) is None:
            self.popen.kill()
            self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._drain.join(timeout=1)
        if self.popen.stderr is not None:
            self.popen.stderr.close()


class LocalTransport:
    """Starts ``python`` (default: this interpreter) here, optionally under ``sudo -n``."""

    def __init__(
        self, python: Sequence[str] | None = None, *, sudo: bool = False, name: str = "local"
    ) -> None:
        self.python = list(python) if python else [sys.executable]
        self.sudo = sudo
        self.name = name

    def start_python(self, args: Sequence[str]) -> LocalProcess:
        argv = (["sudo", "-n"] if self.sudo else []) + self.python + list(args)
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                close_fds=True,
                start_new_session=True,  # a Ctrl-C reaches the orchestrator, which stops the agents cleanly
            )
        except OSError as exc:
            raise TransportError(f"cannot start {argv[0]} on this machine: {exc.strerror}") from None
        return LocalProcess(popen, self.name)

    def close(self) -> None:
        """Nothing is shared between the processes it started."""
