"""The Hyper-V host model reached as ``transport: local`` reaches a host: this machine's ``powershell.exe``
and ``python.exe`` (test stand-in only).

``LocalHostStandIn(host).start()`` makes a folder of programs, ``bin``, to put first on PATH:
``powershell.exe`` (tests/fakes/powershell_exe.py) and ``python.exe`` (tests/fakes/python_exe.py), each a
small wrapper that runs the stand-in with this interpreter (``-S``: the stand-ins need only the standard
library, and start faster) and names this process's Unix socket. Through
that socket the stand-ins reach the model, which stays in memory here: a script runs through the WinRM
stand-in's own code (WinRMStandIn.run_local: the same interpreter, cmdlets, errors and ``scripts``
record), and the agent's command line is checked as the WinRM stand-in checks it. No WinRM, no login.
"""

from __future__ import annotations

import base64
import json
import shlex
import shutil
import socketserver
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from orchestrator.mirror.agent_bundle import BOOTSTRAP

from . import windows_python
from .agent_process import agent_machine
from .winrm_server import Received, WinRMStandIn

FAKES = Path(__file__).resolve().parent
SOCKET_ENV = "HVMIGRATE_STANDIN_SOCKET"


class LocalHostStandIn:
    """``start()`` it, put ``bin`` first on PATH, read ``scripts`` afterwards; ``stop()`` at the end."""

    def __init__(self, host: Any, *, models: tuple[Any, ...] = ()) -> None:
        self.host = host
        self.models = models
        self.runner = WinRMStandIn(host, users={}, models=models)  # never started: its script runner only
        self.folder = Path(tempfile.mkdtemp(prefix="hvlocal-"))  # short: a Unix socket path has 108 bytes
        self.bin = self.folder / "bin"
        self.socket = self.folder / "host.sock"
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    @property
    def scripts(self) -> list[Received]:
        return self.runner.scripts

    def path_with_bin(self, path: str) -> str:
        """``path`` (a PATH value) with the stand-ins' folder first."""
        return f"{self.bin}:{path}" if path else str(self.bin)

    def start(self) -> LocalHostStandIn:
        self.bin.mkdir()
        (self.folder / "agents").mkdir()
        for name, program in (("powershell.exe", "powershell_exe.py"), ("python.exe", "python_exe.py")):
            wrapper = self.bin / name
            wrapper.write_text(
                "#!/bin/sh\n"
                f"{SOCKET_ENV}={shlex.quote(str(self.socket))} exec {shlex.quote(sys.executable)} -S "
                f'{shlex.quote(str(FAKES / program))} "$@"\n'
            )
            wrapper.chmod(0o755)
        server = socketserver.ThreadingUnixStreamServer(str(self.socket), _handler(self))
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="local-host-standin", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def agent(self, argv: list[str]) -> dict[str, Any]:
        """What python.exe may run (the agent's bootstrap, nothing else) and the names it sees."""
        if len(argv) != 3 or argv[0] != "-c" or argv[1] != BOOTSTRAP or not argv[2].isdigit():
            problem = (
                "the stand-in runs Python only as the hvmigrate agent: python.exe -c <bootstrap> <length>"
            )
            return {"problem": problem}
        machine = agent_machine(self.host, self.models)
        return {
            "names": {name: str(path) for name, path in machine.agent_names().items()},
            "site": str(windows_python.SITE),
            "workdirs": str(self.folder / "agents"),
        }


def _handler(stand_in: LocalHostStandIn) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            request = json.loads(self.rfile.readline())
            if request["kind"] == "agent":
                self._answer(stand_in.agent(request["argv"]))
                return

            def read_stdin() -> bytes:
                self._answer({"stdin": True})
                return base64.b64decode(json.loads(self.rfile.readline())["stdin"])

            stdout, stderr, code = stand_in.runner.run_local(
                tuple(request["flags"]), request["script"], read_stdin
            )
            self._answer(
                {
                    "stdout": base64.b64encode(stdout).decode(),
                    "stderr": base64.b64encode(stderr).decode(),
                    "code": code,
                }
            )

        def _answer(self, answer: dict[str, Any]) -> None:
            self.wfile.write(json.dumps(answer).encode() + b"\n")
            self.wfile.flush()

    return Handler
