"""Windows services for the stand-in's Windows server: Get-Service, Stop-Service and Start-Service as
Windows PowerShell 5.1 runs them against the Service Control Manager (test stand-in only).

Parameter names follow Microsoft's reference (Microsoft.PowerShell.Management); only those hvmigrate uses
are registered, so any other is refused as unknown. What is modelled, because hvmigrate depends on it:

* ``-Name`` takes wildcard patterns (``*``, ``?``, ``[a-z]``, backtick escapes). A name without wildcards
  is looked up as ``new ServiceController(name)`` looks it up: the service name, else the display name,
  case-insensitively; none found is the real error record (NoServiceFoundForGivenName, ObjectNotFound).
  A pattern that matches nothing is silently empty, as on Windows.
* ``-DependentServices`` writes ServiceController.DependentServices: every service that depends on it,
  directly or not, in reverse start order (EnumDependentServices).
* ``Stop-Service`` refuses a service with running dependants unless ``-Force``
  (ServiceHasDependentServices); with it, the running dependants stop first. A service that accepts no
  stop control, or whose dependant is still stopping, fails as Windows reports it (CouldNotStopService).
  A service that hangs stays StopPending: ``-NoWait`` returns at once; without it Windows would wait for
  ever, which the stand-in refuses to model (hvmigrate always passes ``-NoWait`` and polls).
* ``Start-Service`` starts the services it depends on first, as the SCM does; a disabled or still
  stopping service fails (CouldNotStartService).
* Status and StartType print as numbers in ConvertTo-Json (ServiceControllerStatus, ServiceStartMode).

Not modelled: start and stop taking time (a started service is Running at once), service accounts and
recovery actions, pause and continue, services of other computers (-ComputerName).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .hyperv_host import PSEnum
from .powershell import Cmdlet, Param, PSError, PSObject

SERVICE_TYPE = "System.ServiceProcess.ServiceController"
STATUS = {  # System.ServiceProcess.ServiceControllerStatus
    "Stopped": 1,
    "StartPending": 2,
    "StopPending": 3,
    "Running": 4,
    "ContinuePending": 5,
    "PausePending": 6,
    "Paused": 7,
}
START_MODE = {"Boot": 0, "System": 1, "Automatic": 2, "Manual": 3, "Disabled": 4}  # ServiceStartMode


@dataclass
class Service:
    """One service; tests set how it behaves and read ``stops``/``starts`` afterwards."""

    name: str
    display_name: str = ""
    status: str = "Running"
    start_type: str = "Automatic"
    depends_on: tuple[str, ...] = ()  # the services it needs running (ServicesDependedOn)
    accepts_stop: bool = True  # False: it accepts no stop control (CanStop is false while it runs)
    hangs_on_stop: bool = False  # True: it stays StopPending after the stop control, never stopping
    on_stop: Callable[[], None] | None = None  # what it does as it stops (a database writing its last pages)
    stops: int = 0
    starts: int = 0

    def __post_init__(self) -> None:
        assert self.status in STATUS and self.start_type in START_MODE
        self.display_name = self.display_name or self.name

    @property
    def label(self) -> str:
        """How PowerShell's service messages name a service: ``'Display Name (name)'``."""
        return f"{self.display_name} ({self.name})"


def wildcard_regex(pattern: str) -> re.Pattern[str] | None:
    """PowerShell's WildcardPattern as a regex (IgnoreCase); None when the pattern has no wildcard."""
    out, wild, index = [], False, 0
    while index < len(pattern):
        ch = pattern[index]
        if ch == "`" and index + 1 < len(pattern):
            out.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        if ch == "*":
            out.append(".*")
            wild = True
        elif ch == "?":
            out.append(".")
            wild = True
        elif ch == "[":
            end = pattern.find("]", index + 1)
            if end < 0:
                raise PSError(
                    f"The specified wildcard character pattern is not valid: {pattern}",
                    error_id="RuntimeException",
                )
            body = pattern[index + 1 : end]
            out.append("[" + "".join("\\" + c if c in "\\^" else c for c in body) + "]")
            wild = True
            index = end
        else:
            out.append(re.escape(ch))
        index += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL) if wild else None


class ServiceControlManager:
    """The services of one machine and the three cmdlets that reach them."""

    def __init__(self, services: list[Service], lock: threading.RLock) -> None:
        self.services = services
        self.lock = lock

    # ------------------------------------------------------------ lookups

    def by_name(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name.lower() == name.lower()), None)

    def matching(self, patterns: list[str], command: str) -> list[Service]:
        found: list[Service] = []
        for pattern in patterns:
            regex = wildcard_regex(pattern)
            if regex is not None:
                hits = [s for s in self.services if regex.fullmatch(s.name)]
            else:
                one = self.by_name(pattern) or next(
                    (s for s in self.services if s.display_name.lower() == pattern.lower()), None
                )
                if one is None:
                    raise PSError(
                        f"Cannot find any service with service name '{pattern}'.",
                        category="ObjectNotFound",
                        error_id=f"NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.{command}",
                        cmdlet=command.removesuffix("Command").replace("Service", "-Service"),
                    )
                hits = [one]
            found.extend(s for s in hits if s not in found)
        return found

    def dependents(self, service: Service) -> list[Service]:
        """Every service needing ``service``, directly or not, those started last first."""
        order: list[Service] = []

        def visit(current: Service) -> None:
            for other in self.services:
                if any(n.lower() == current.name.lower() for n in other.depends_on) and other not in order:
                    visit(other)  # its own dependants stop before it
                    order.append(other)

        visit(service)
        return order

    def required(self, service: Service) -> list[Service]:
        return [s for n in service.depends_on if (s := self.by_name(n)) is not None]

    # ------------------------------------------------------------ control

    def stop(self, service: Service, *, force: bool, wait: bool) -> None:
        if service.status == "Stopped":
            return
        running = [d for d in self.dependents(service) if d.status != "Stopped"]
        if running and not force:
            raise PSError(
                f"Cannot stop service '{service.label}' because it has dependent services. It can only be "
                "stopped if the Force flag is set.",
                category="InvalidOperation",
                error_id="ServiceHasDependentServices,Microsoft.PowerShell.Commands.StopServiceCommand",
                cmdlet="Stop-Service",
            )
        for dependent in running:
            self._control_stop(dependent)
        self._control_stop(service)
        if wait and service.status != "Stopped":
            raise PSError(
                f"Waiting for service '{service.label}' to stop... (it never does; the stand-in does not "
                "wait for ever: pass -NoWait and poll Get-Service)",
                category="OperationTimeout",
                error_id="StandInWouldWaitForEver,Microsoft.PowerShell.Commands.StopServiceCommand",
                cmdlet="Stop-Service",
            )

    def _control_stop(self, service: Service) -> None:
        if service.status == "Stopped":
            return
        still = [d for d in self.dependents(service) if d.status != "Stopped"]
        if not service.accepts_stop or still or service.status == "StopPending":
            raise PSError(
                f"Service '{service.label}' cannot be stopped due to the following error: Cannot stop "
                f"{service.name} service on computer '.'.",
                category="CloseError",
                error_id="CouldNotStopService,Microsoft.PowerShell.Commands.StopServiceCommand",
                cmdlet="Stop-Service",
            )
        service.stops += 1
        if service.hangs_on_stop:
            service.status = "StopPending"
            return
        if service.on_stop is not None:
            service.on_stop()
        service.status = "Stopped"

    def start(self, service: Service) -> None:
        if service.status == "Running":
            return
        if service.start_type == "Disabled" or service.status != "Stopped":
            raise self._cannot_start(service)
        for needed in self.required(service):  # the SCM starts what it depends on first
            try:
                self.start(needed)
            except PSError:
                raise self._cannot_start(service) from None
        service.starts += 1
        service.status = "Running"

    @staticmethod
    def _cannot_start(service: Service) -> PSError:
        return PSError(
            f"Service '{service.label}' cannot be started due to the following error: Cannot start service "
            f"{service.name} on computer '.'.",
            category="OpenError",
            error_id="CouldNotStartService,Microsoft.PowerShell.Commands.StartServiceCommand",
            cmdlet="Start-Service",
        )

    # ------------------------------------------------------------ objects and cmdlets

    def as_object(self, service: Service) -> PSObject:
        return PSObject(
            SERVICE_TYPE,
            {
                "Name": service.name,
                "ServiceName": service.name,
                "DisplayName": service.display_name,
                "Status": PSEnum(service.status, STATUS[service.status]),
                "StartType": PSEnum(service.start_type, START_MODE[service.start_type]),
                "CanStop": service.status == "Running" and service.accepts_stop,
                "MachineName": ".",
                "ServiceType": PSEnum("Win32OwnProcess", 16),
            },
        )

    def _targets(self, bound: dict[str, Any], command: str) -> list[Service]:
        if "InputObject" in bound:
            found = self.by_name(bound["InputObject"].get_prop("ServiceName"))
            return [found] if found else []
        if "Name" not in bound:
            raise PSError(
                "Cannot process command because of one or more missing mandatory parameters: Name.",
                error_id=f"MissingMandatoryParameter,Microsoft.PowerShell.Commands.{command}",
            )
        return self.matching(bound["Name"], command)

    def cmdlets(self) -> dict[str, Cmdlet]:
        names, switch = Param("string[]"), Param("switch")
        service_input = {"pipeline": "InputObject", "by_value": SERVICE_TYPE}

        def get_service(bound: dict[str, Any], piped: list[Any]) -> list[Any]:
            with self.lock:
                found = (
                    self.matching(bound["Name"], "GetServiceCommand") if "Name" in bound else self.services
                )
                if bound.get("DependentServices"):
                    found = [d for s in found for d in self.dependents(s)]
                return [self.as_object(s) for s in found]

        def stop_service(bound: dict[str, Any], piped: list[Any]) -> list[Any]:
            with self.lock:
                targets = self._targets(bound, "StopServiceCommand")
                for service in targets:
                    self.stop(service, force=bool(bound.get("Force")), wait=not bound.get("NoWait"))
                return [self.as_object(s) for s in targets] if bound.get("PassThru") else []

        def start_service(bound: dict[str, Any], piped: list[Any]) -> list[Any]:
            with self.lock:
                targets = self._targets(bound, "StartServiceCommand")
                for service in targets:
                    self.start(service)
                return [self.as_object(s) for s in targets] if bound.get("PassThru") else []

        made = [
            Cmdlet("Get-Service", {"Name": names, "DependentServices": switch}, get_service),
            Cmdlet(
                "Stop-Service",
                {
                    "Name": names,
                    "InputObject": Param("object"),
                    "Force": switch,
                    "NoWait": switch,
                    "PassThru": switch,
                },
                stop_service,
                **service_input,
            ),
            Cmdlet(
                "Start-Service",
                {"Name": names, "InputObject": Param("object"), "PassThru": switch},
                start_service,
                **service_input,
            ),
        ]
        return {c.name.lower(): c for c in made}
