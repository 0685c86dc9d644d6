"""Stopping a Windows source's services before the final pass, and starting exactly those again.

The state (`ServiceState`) names every service this tool stopped, written down *before* the stop is sent:
the services named in the playbook that were running, and their running dependants, which
``Stop-Service -Force`` stops too, as Windows requires. So a thaw after a failure halfway, or after a
restart from the journaled state, starts exactly what was running before, and nothing that was stopped
already. Starting a service that runs is a no-op, so a thaw can be retried.

Stopping is ``Stop-Service -Force -NoWait``, then Get-Service is polled until every recorded service is
Stopped or ``service_timeout`` has passed: Stop-Service by itself waits for ever on a service that never
stops, and a WinRM call would time out with no word about which service hung.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.playbook.units import format_duration
from providers.base import ProviderError

from . import scripts
from .facts import listed

# System.ServiceProcess.ServiceControllerStatus as ConvertTo-Json prints it (5.1 and 7: numbers)
STATUS = {
    1: "Stopped",
    2: "StartPending",
    3: "StopPending",
    4: "Running",
    5: "ContinuePending",
    6: "PausePending",
    7: "Paused",
}
AUTOMATIC = 2  # ServiceStartMode.Automatic
POLL_FIRST, POLL_MAX = 0.2, 2.0  # seconds between Get-Service polls while services stop

# (body, data, what is being done, error-id prefix -> what to do) -> the script's JSON output
Run = Callable[..., Any]


def status_of(entry: Mapping[str, Any]) -> str:
    value = entry.get("Status")
    return STATUS.get(value, str(value)) if isinstance(value, int) else str(value)


@dataclass
class ServiceState:
    """What quiesce changed on the source: services stopped (in stop order), shadow copies taken after."""

    services: list[str] = field(default_factory=list)
    shadows: dict[str, dict[str, str]] = field(default_factory=dict)  # volume -> shadow id and device
    live: list[str] = field(default_factory=list)  # what was left as it was, and why

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "services": list(self.services),
            "shadows": {volume: dict(shadow) for volume, shadow in self.shadows.items()},
            "live": list(self.live),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceState:
        return cls(
            [str(name) for name in data.get("services", ())],
            {str(v): dict(s) for v, s in dict(data.get("shadows") or {}).items()},
            [str(note) for note in data.get("live", ())],
        )


class WindowsServices:
    """The service control of one source, through its PowerShell runner (WinRM or local)."""

    def __init__(self, run: Run, where: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self.run = run
        self.where = where
        self.sleep = sleep

    def stop(self, names: list[str], state: ServiceState, timeout: float) -> None:
        """Stop ``names`` and their running dependants, recording each in ``state`` before it is stopped."""
        if not names:
            return
        found = listed(
            self.run(
                scripts.SERVICES_FIND,
                {"names": names},
                "looking up source.services",
                fix={"NoServiceFoundForGivenName": "fix source.services (names as Get-Service shows them)"},
            )
        )
        running = [entry for entry in found if status_of(entry) != "Stopped"]
        state.live.extend(
            f"service {entry['Name']} was not running: left alone" for entry in found if entry not in running
        )
        if not running:
            return
        dependants = listed(
            self.run(
                scripts.SERVICES_DEPENDENT,
                {"names": [entry["Name"] for entry in running]},
                "listing the services that depend on source.services",
            )
        )
        for entry in [*dependants, *running]:  # dependants stop first
            if status_of(entry) != "Stopped" and not _among(entry["Name"], state.services):
                state.services.append(str(entry["Name"]))
        for entry in running:
            self.run(scripts.SERVICE_STOP, {"name": entry["Name"]}, f"stopping service {entry['Name']}")
        self._wait_stopped(state.services, timeout)

    def _wait_stopped(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pause = POLL_FIRST
        while True:
            now = self.statuses()
            pending = {n: now[n.lower()] for n in names if now.get(n.lower(), "Stopped") != "Stopped"}
            if not pending:
                return
            if time.monotonic() >= deadline:
                which = ", ".join(f"{name} ({status})" for name, status in pending.items())
                raise ProviderError(
                    f"{which} did not stop within {format_duration(timeout)} on {self.where}; find out why "
                    "there (the service's own log, sc queryex), or raise source.service_timeout"
                )
            self.sleep(pause)
            pause = min(pause * 2, POLL_MAX)

    def statuses(self) -> dict[str, str]:
        """Every service on the source: lower-case name -> status."""
        every = listed(self.run(scripts.SERVICES_ALL, None, "reading the state of the services"))
        return {str(entry["Name"]).lower(): status_of(entry) for entry in every}

    def start(self, names: Iterable[str]) -> tuple[list[str], list[str]]:
        """Start each of ``names`` in turn; (those that could not be started, why each failed)."""
        kept, failures = [], []
        for name in names:
            try:
                self.run(scripts.SERVICE_START, {"name": name}, f"starting service {name}")
            except ProviderError as exc:
                kept.append(name)
                failures.append(str(exc))
        return kept, failures

    def assumed_stopped(self, names: list[str]) -> list[str]:
        """For a thaw with no record (a crash before quiesce's state was journaled): the listed services
        that are stopped although Windows starts them by itself (StartType Automatic). It cannot tell
        "this tool stopped it" from "someone did"; with a record, only what quiesce stopped is started."""
        if not names:
            return []
        found = listed(self.run(scripts.SERVICES_FIND, {"names": names}, "looking up source.services"))
        return [
            str(entry["Name"])
            for entry in found
            if status_of(entry) == "Stopped" and entry.get("StartType") in (AUTOMATIC, "Automatic")
        ]


def _among(name: str, names: list[str]) -> bool:
    return name.lower() in (n.lower() for n in names)
