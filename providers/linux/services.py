"""Stopping and starting services on a Linux source, whichever service manager it runs.

systemd where it is PID 1 (``/run/systemd/system`` exists, as sd_booted() checks), OpenRC where
``rc-service`` exists, else the SysV ``service`` wrapper (Devuan, old releases, containers). A service that
does not exist is an error before anything is stopped: a misspelt name in ``services`` silently left
running is exactly the inconsistent final pass the option is there to prevent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from providers.base import ProviderError

from .shell import RemoteShell

Manager = Literal["systemd", "openrc", "sysv"]
SERVICE_TIMEOUT = 300.0  # a database may take minutes to stop cleanly; systemd's own default is 90 s

DETECT = (
    "if [ -d /run/systemd/system ]; then echo systemd; "
    "elif command -v rc-service >/dev/null 2>&1; then echo openrc; "
    "elif command -v service >/dev/null 2>&1; then echo sysv; "
    "else echo none; fi"
)


@dataclass(frozen=True)
class ServiceState:
    name: str
    exists: bool
    active: bool


class Services:
    """The service manager of one host."""

    def __init__(self, shell: RemoteShell, manager: Manager) -> None:
        self.shell = shell
        self.manager = manager

    @classmethod
    def detect(cls, shell: RemoteShell) -> Services:
        found = shell.run(["sh", "-c", DETECT], privileged=False).stdout.strip()
        if found not in ("systemd", "openrc", "sysv"):
            raise ProviderError(
                f"no service manager found on {shell.where} (neither systemd, OpenRC nor the service "
                "command): stop the services with quiesce_command and start them with thaw_command instead"
            )
        return cls(shell, found)  # type: ignore[arg-type]

    def state(self, name: str) -> ServiceState:
        if self.manager == "systemd":
            load = self.shell.run(["systemctl", "show", "--property=LoadState", "--value", "--", name])
            if load.stdout.strip() in ("", "not-found"):
                return ServiceState(name, False, False)
            active = self.shell.run(["systemctl", "is-active", "--quiet", "--", name]).ok
        elif self.manager == "openrc":
            if not self.shell.run(["rc-service", "--exists", name]).ok:
                return ServiceState(name, False, False)
            active = self.shell.run(["rc-service", name, "status"]).ok
        else:
            if not self.shell.run(["test", "-x", f"/etc/init.d/{name}"]).ok:
                return ServiceState(name, False, False)
            active = self.shell.run(["service", name, "status"]).ok  # LSB: 0 running, 3 stopped
        return ServiceState(name, True, active)

    def stop(self, name: str) -> None:
        self.shell.check(self._argv(name, "stop"), f"stopping service {name}", timeout=SERVICE_TIMEOUT)

    def start(self, name: str) -> None:
        self.shell.check(self._argv(name, "start"), f"starting service {name}", timeout=SERVICE_TIMEOUT)

    def _argv(self, name: str, verb: str) -> list[str]:
        if self.manager == "systemd":
            return ["systemctl", verb, "--", name]
        if self.manager == "openrc":
            return ["rc-service", name, verb]
        return ["service", name, verb]
