"""PowerShell on this machine, for when the orchestrator runs on the Windows host itself (``transport:
local``): the very same scripts as over WinRM, run by a local ``powershell.exe``.

Nothing changes but the pipe: the script is composed exactly as for WinRM (winrm.compose: a fixed body,
the user's values as base64 JSON data), started as ``powershell.exe -NoProfile -NonInteractive
-EncodedCommand <base64 UTF-16LE>`` with an argument list (no cmd.exe, no shell parsing), and its
stdout (JSON), stderr (a CLIXML error record, or plain lines) and exit code are read by the same
winrm.script_output, so a failure is the same PowerShellError. A script whose command line would pass
CreateProcess's 32,767 characters goes on stdin through the same fixed bootstrap as over WinRM.

No login is made: the scripts run as the user running the orchestrator, who must be allowed to manage
Hyper-V (Hyper-V Administrators) on this host. The ``wmi`` package (root\\virtualization\\v2) is not
used: its calls could not be exercised anywhere these tests run, while this path runs the Hyper-V
cmdlets the WinRM path already sends, against the same stand-in (tests/fakes/powershell_exe.py).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping
from typing import Any

from .winrm import FLAGS, POWERSHELL, STDIN_BOOTSTRAP, WinRMError, compose, script_output

CREATE_PROCESS_LIMIT = 32767  # characters of a Windows command line, the program's name included


class LocalPowerShell:
    """``run`` a body with data through this machine's powershell.exe; the interface of winrm.WinRM."""

    def __init__(self, name: str = "this machine", executable: str = POWERSHELL) -> None:
        self.name = name
        self.executable = executable
        self.sent: list[str] = []  # every script run, newest last (bodies and base64 data: no secrets)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalPowerShell({self.executable!r})"

    @property
    def where(self) -> str:
        """Where the scripts run, for messages."""
        return f"{self.executable} on {self.name}"

    def run(self, body: str, data: Mapping[str, Any] | None = None) -> Any:
        """Run ``body`` with ``data`` as ``$hv``; the JSON it printed (None when it printed nothing)."""
        stdout, stderr, code = self.execute(compose(body, data))
        return script_output(stdout, stderr, code, self.name)

    def execute(self, script: str) -> tuple[bytes, bytes, int]:
        """Run a whole script; (stdout, stderr, exit code)."""
        with self._lock:
            self.sent.append(script)
        program = self._program()
        argv = [program, *FLAGS, "-EncodedCommand", _encoded(script)]
        stdin: bytes | None = None
        if _command_line_length(argv) > CREATE_PROCESS_LIMIT:
            argv[-1] = _encoded(STDIN_BOOTSTRAP)
            stdin = base64.b64encode(script.encode("utf-8"))
        try:
            done = subprocess.run(
                argv,
                input=stdin,
                stdin=subprocess.DEVNULL if stdin is None else None,
                capture_output=True,
                check=False,
            )
        except OSError as exc:
            raise WinRMError(f"cannot start {program} on {self.name}: {exc.strerror}") from None
        return done.stdout, done.stderr, done.returncode

    def close(self) -> None:
        """Each script is its own process: nothing stays open."""

    def _program(self) -> str:
        found = shutil.which(self.executable)
        if found is None:
            system = os.environ.get("SYSTEMROOT")  # Windows reads names in any case
            default = (
                os.path.join(system, "System32", "WindowsPowerShell", "v1.0", POWERSHELL) if system else ""
            )
            if default and os.path.isfile(default):
                return default
            raise WinRMError(
                f"{self.executable} is not on the PATH of {self.name}: transport: local runs the scripts "
                "with Windows PowerShell on the Windows host itself (Hyper-V host, DNS server or source);"
                " run the orchestrator there, or use transport: https"
            )
        return found


def _encoded(script: str) -> str:
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def _command_line_length(argv: list[str]) -> int:
    return len(subprocess.list2cmdline(argv))


def powershell_for(config: Any, name: str | None = None) -> Any:
    """A WinRM session to ``config.host``, or this machine's powershell.exe when ``transport: local``."""
    if getattr(config, "transport", None) == "local":
        return LocalPowerShell(name or config.host or "this machine")
    from .winrm import WinRM, WinRMTarget

    return WinRM(WinRMTarget.from_config(config))


def agent_transport_for(config: Any, runner: Any) -> Any:
    """Where the hvmigrate agent of ``config``'s Windows host starts: a local process on the host itself
    (``transport: local``; ``python``, else this interpreter), ``python`` there through ``runner``'s WinRM,
    or None when a remote host has no ``python`` configured."""
    if getattr(config, "transport", None) == "local":
        from .local import LocalTransport

        return LocalTransport([config.python] if config.python else None, name=config.host)
    if not config.python:
        return None
    from .winrm_agent import WinRMTransport

    return WinRMTransport(runner, config.python, name=config.host)
