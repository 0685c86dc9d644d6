"""A running Windows server as a migration source, reached over WinRM: discovery, VSS, shutdown.

Discovery is PowerShell over WinRM (scripts.py), read into SourceFacts by facts.py. Each mirror pass can
read from VSS shadow copies (``vss: true``, the default): `pass_snapshot` creates one shadow copy per
volume of the source (Win32_ShadowCopy.Create), yields their ids and device objects for the journal, and
removes them when the pass ends, whatever happened; `release_snapshot` removes those a crashed pass left,
from the journaled state.

Reading the disks is the agent's work on the source itself (orchestrator/agent.py, stdlib-only, ported to
Windows CPython: orchestrator/mirror/portable_io.py): with ``python:`` set (CPython 3.8+ on the source),
`disk_location` hands the data plane the agent started through WinRM (orchestrator/transport/winrm_agent.py)
reading ``\\\\.\\PhysicalDriveN``, with the size discovery found (Windows tells a disk's size only through
an IOCTL). WinRM's shell carries the stream as base64 in SOAP: slower than SSH (README, Limits), but
nothing has to be installed but Python.

Inside a pass snapshot, the disk is read as of its shadow copies: `disk_location` adds one overlay extent
per snapshotted volume on that disk (its partition's offset and length from discovery, and the shadow's
device, ``\\\\?\\GLOBALROOT\\Device\\HarddiskVolumeShadowCopyN``), and the agent reads those extents from
the shadow devices and the rest of the disk live (orchestrator/mirror/device_reader.py). So every NTFS or
ReFS volume with a drive letter is point-in-time for the pass, whatever the server writes meanwhile. Read
live: partition tables, volumes without a letter or on other file systems (the EFI system partition,
the recovery partition), which rarely change; an incremental pass repairs what did.
The final pass takes no pass snapshot (``take=False`` in the mirror steps): `quiesce` holds its shadow
copies instead. It stops ``services`` (services.py: Stop-Service -Force, dependants included, polled
with a timeout), then, with ``vss``, takes one shadow copy per volume, so the final pass reads the
volumes as they were once the services had stopped, while the server itself runs on. The returned state
(journaled by the step) names the services stopped and the shadows taken; `thaw` removes those shadows
and starts exactly those services, also from the journaled state after a restart, and on undo.

``transport: local`` (the orchestrator runs on the source itself): the same scripts run by this
machine's powershell.exe (orchestrator/transport/local_powershell.py), and the agent is a local process
(``python``, else the orchestrator's own interpreter); no login.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.playbook.models import WinrmSource as WinrmSourceConfig
from orchestrator.transport.local_powershell import agent_transport_for, powershell_for
from orchestrator.transport.winrm import PowerShellError, WinRMError
from providers.base import (
    AgentLocation,
    DiskReader,
    ProviderError,
    SourceDisk,
    SourceFacts,
    TransientProviderError,
)

from . import scripts
from .facts import bitlocker_states, facts_from_discovery, listed, volume_extents
from .services import ServiceState, WindowsServices

_GUID = re.compile(r"\{[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}\}")
# Win32_ShadowCopy.Create's return values that are worth a retry (VSS busy), and their meaning.
VSS_RETURN = {
    1: "access denied",
    2: "invalid argument",
    3: "the volume was not found",
    4: "the volume is not supported by VSS",
    5: "the shadow copy context is not supported",
    6: "there is not enough storage for the shadow copy",
    7: "the volume is in use by another shadow copy operation",
    8: "the maximum number of shadow copies was reached",
    9: "another shadow copy operation is already in progress",
    10: "the shadow copy provider vetoed the operation",
    11: "the shadow copy provider is not registered",
    12: "the shadow copy provider failed",
}
VSS_BUSY = {7, 9}


@dataclass
class VssState:
    """The shadow copies one pass holds: volume -> shadow id and device; journaled before reads start."""

    name: str
    shadows: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shadows": {k: dict(v) for k, v in self.shadows.items()}}


def _shadow_filter(shadow_id: str) -> str:
    """The WQL filter naming one shadow copy; refuses anything but a GUID, so WQL never carries other text."""
    if not _GUID.fullmatch(shadow_id):
        raise ProviderError(f"{shadow_id!r} is not a shadow copy id (a GUID in braces)")
    return f"ID='{shadow_id}'"


class WinrmSource:
    """The `Source` of one running Windows server; its disks are named PhysicalDrive<N>."""

    def __init__(self, name: str, config: WinrmSourceConfig, disks: list[str] | tuple[str, ...] = ()) -> None:
        self.name = name
        self.config = config
        self.host = config.host
        self.disks = list(disks)
        self.winrm = powershell_for(config)  # WinRM, or this machine's powershell.exe (transport: local)
        self._facts: SourceFacts | None = None
        self._found: Mapping[str, Any] = {}  # discovery as Windows answered it (partition extents)
        self._shadows: dict[str, dict[str, str]] = {}  # volume ("C:\\") -> shadow of the running pass
        self._quiesced: ServiceState | None = None  # what quiesce changed, as this process knows it
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        login = "" if self.config.transport == "local" else f"{self.config.user}@"
        return f"WinrmSource({self.name!r}, {login}{self.winrm.where})"

    def _run(
        self,
        body: str,
        data: Mapping[str, Any] | None,
        doing: str,
        fix: Mapping[str, str] | None = None,
    ) -> Any:
        """Run a script; a failure is one line, ended by ``fix``'s advice for its error id, if any."""
        try:
            return self.winrm.run(body, data)
        except PowerShellError as exc:
            advice = next(
                (f"; {text}" for key, text in (fix or {}).items() if exc.error_id.startswith(key)), ""
            )
            raise ProviderError(
                f"server {self.name}: {doing} on {self.config.host} failed: {exc.message}{advice}"
            ) from None
        except WinRMError as exc:
            error = TransientProviderError if exc.retryable else ProviderError
            raise error(f"server {self.name}: {doing}: {exc}") from None

    # ------------------------------------------------------------ discovery

    def discover(self) -> SourceFacts:
        found = self._run(scripts.DISCOVERY, None, "discovery")
        try:
            bitlocker = bitlocker_states(self.winrm.run(scripts.BITLOCKER))
        except PowerShellError as exc:
            if "CommandNotFoundException" not in exc.error_id:
                raise ProviderError(
                    f"server {self.name}: reading BitLocker state on {self.config.host} failed: {exc.message}"
                ) from None
            bitlocker = {}  # no BitLocker feature: nothing is encrypted by it
        except WinRMError as exc:
            raise (TransientProviderError if exc.retryable else ProviderError)(str(exc)) from None
        facts = facts_from_discovery(found or {}, bitlocker)
        self._found = found or {}
        self._facts = facts
        return facts

    # ------------------------------------------------------------ reading

    def open_disk(self, name: str) -> DiskReader:
        raise ProviderError(
            f"server {self.name}: {name} is read by the hvmigrate agent on {self.config.host}, not in this "
            "process (disk_location)"
        )

    def disk_location(self, name: str) -> AgentLocation | None:
        """The agent on the source reading ``\\\\.\\<name>``, with its size from discovery: a local process
        on the source itself (``transport: local``: ``python``, else this interpreter), else ``python``
        started through WinRM."""
        transport = agent_transport_for(self.config, self.winrm)
        if transport is None:
            raise ProviderError(
                f"server {self.name}: reading {name} of a Windows source needs the hvmigrate agent on "
                f"{self.config.host}: install CPython 3.8+ there and set source.python to its python.exe "
                "(C:\\Python311\\python.exe), or migrate from an image of its disks (source: {type: image})"
            )
        disk = self._disk(name)
        return AgentLocation(
            transport, f"\\\\.\\{disk.name}", size=disk.size, overlay=self._overlay(disk.name)
        )

    def _disk(self, name: str) -> SourceDisk:
        facts = self._facts or self.discover()
        disk = next((d for d in facts.disks if d.name.lower() == name.lower()), None)
        if disk is None or not re.fullmatch(r"PhysicalDrive\d+", disk.name):
            known = ", ".join(d.name for d in facts.disks) or "none"
            raise ProviderError(
                f"server {self.name}: {self.config.host} has no disk {name} (its disks: {known})"
            )
        return disk

    def _overlay(self, disk: str) -> tuple[tuple[int, int, str], ...]:
        """(offset, length, shadow device) of each volume on ``disk`` the running pass holds a shadow of."""
        extents = volume_extents(self._found)
        overlay = []
        for volume, shadow in self._shadows.items():
            where = extents.get(volume.rstrip(":\\").upper())
            if where is None or where[0].lower() != disk.lower():
                continue
            if not shadow.get("device"):
                raise ProviderError(
                    f"server {self.name}: the shadow copy {shadow.get('id')} of {volume} on "
                    f"{self.config.host} names no device to read; run the pass again (it takes a new one)"
                )
            overlay.append((where[1], where[2], shadow["device"]))
        return tuple(sorted(overlay))

    # ------------------------------------------------------------ VSS, one snapshot per pass

    @contextlib.contextmanager
    def pass_snapshot(self) -> Iterator[VssState | None]:
        """Shadow copies of every lettered volume on the copied disks, removed when the block ends."""
        if not self.config.vss:
            yield None
            return
        state = VssState(name=f"hvmigrate-{self.name}")
        try:
            for volume in self._snapshot_volumes():
                state.shadows[volume] = self._create_shadow(volume)
            self._shadows = dict(state.shadows)  # what disk_location overlays from now on
            yield state
        finally:
            self._shadows = {}
            self.release_snapshot(state.to_json())

    def release_snapshot(self, state: Mapping[str, Any] | None) -> None:
        """Remove the shadow copies ``state`` names (gone already counts as removed).

        With no state (a crash before it was journaled) nothing can be told apart: Win32_ShadowCopy has
        no owner or name, so a shadow copy of another backup tool is never removed on a guess.
        """
        if not state:
            return
        failures = self._remove_shadows(dict(state.get("shadows", {})))
        if failures:
            raise ProviderError(
                f"server {self.name}: {len(failures)} shadow copies could not be removed "
                f"({'; '.join(failures)}); remove them with vssadmin delete shadows /shadow=ID, then run "
                "undo again"
            )

    def _remove_shadows(self, shadows: dict[str, dict[str, str]]) -> list[str]:
        """Remove each shadow copy, dropping it from ``shadows`` once gone; why each other one failed."""
        failures = []
        for volume, shadow in list(shadows.items()):
            try:
                self._run(
                    scripts.VSS_REMOVE, {"filter": _shadow_filter(shadow["id"])}, "removing a shadow copy"
                )
                del shadows[volume]
            except ProviderError as exc:
                failures.append(f"{volume} {shadow['id']}: {exc}")
        return failures

    def change_ids(self) -> dict[str, str]:
        """Windows keeps no changed-block tracking a reader can ask for: every pass hashes every chunk."""
        return {}

    def changed_ranges(self, name: str, since: str | None) -> list[tuple[int, int]] | None:
        return None

    def _snapshot_volumes(self) -> list[str]:
        facts = self._facts or self.discover()
        assert facts.windows is not None
        wanted = set(self.disks) or {d.name for d in facts.disks}
        return [
            f"{v.letter}:\\"
            for v in facts.windows.volumes
            if v.letter and v.filesystem.upper() in ("NTFS", "REFS") and (v.disk is None or v.disk in wanted)
        ]

    def _create_shadow(self, volume: str) -> dict[str, str]:
        made = self._run(scripts.VSS_CREATE, {"volume": volume}, f"creating a shadow copy of {volume}") or {}
        code = int(made.get("ReturnValue", -1))
        if code != 0:
            reason = VSS_RETURN.get(code, f"return value {code}")
            error = TransientProviderError if code in VSS_BUSY else ProviderError
            raise error(
                f"server {self.name}: VSS could not snapshot {volume} on {self.config.host}: {reason}"
            )
        shadow_id = str(made.get("ShadowID", ""))
        filter_ = _shadow_filter(shadow_id)
        found = listed(self._run(scripts.VSS_GET, {"filter": filter_}, "reading a shadow copy"))
        device = str(found[0].get("DeviceObject", "")) if found else ""
        return {"id": shadow_id, "device": device}

    # ------------------------------------------------------------ quiesce and power

    def services(self) -> WindowsServices:
        return WindowsServices(self._run, self.config.host)

    def quiesce(self) -> dict[str, Any] | None:
        """Stop ``services`` (their dependants too), then take the shadow copies the final pass reads.

        Each service is recorded before it is stopped; on any failure what was done is undone (the
        services started again, the shadows removed) before the error is raised, so it stops everything
        or nothing. None when there is nothing to do (no services, vss off): the final pass reads live.
        """
        if not self.config.services and not self.config.vss:
            return None
        state = ServiceState()
        self._quiesced = state  # filled in as it goes: a failed quiesce keeps what it could not undo
        try:
            self.services().stop(self.config.services, state, float(self.config.service_timeout))
            if self.config.vss:
                for volume in self._snapshot_volumes():
                    state.shadows[volume] = self._create_shadow(volume)
        except Exception as exc:
            done = bool(state.services or state.shadows)
            failures = self._undo(state)
            if failures:
                after = f"; undoing what it had done also failed: {'; '.join(failures)}"
            else:
                after = (
                    "; the services it had stopped were started again" if done else "; nothing was stopped"
                )
            reason = str(exc).removeprefix(f"server {self.name}: ")
            error = type(exc) if isinstance(exc, ProviderError) else ProviderError
            raise error(f"server {self.name}: quiesce on {self.config.host} failed: {reason}{after}") from exc
        self._shadows = dict(state.shadows)  # what disk_location overlays for the final pass
        return state.to_json()

    @property
    def quiesce_state(self) -> dict[str, Any] | None:
        """What quiesce changed, as JSON; None when this process does not know."""
        return self._quiesced.to_json() if self._quiesced is not None else None

    def restore_quiesce_state(self, state: Mapping[str, Any]) -> None:
        """Adopt a journaled quiesce state after a restart: the final pass reads its shadow copies again."""
        self._quiesced = ServiceState.from_json(state)
        self._shadows = dict(self._quiesced.shadows)

    def thaw(self, state: Mapping[str, Any] | None = None) -> None:
        """Remove quiesce's shadow copies and start exactly the services it stopped: from ``state``
        (journaled), else what this process recorded, else (no record at all) the listed services that
        are stopped though set to start automatically. Every item is tried; failures are kept for a retry
        and reported together."""
        if state is not None:
            self._quiesced = ServiceState.from_json(state)
        if self._quiesced is None:
            self._quiesced = ServiceState(services=self.services().assumed_stopped(self.config.services))
        failures = self._undo(self._quiesced)
        if failures:
            raise ProviderError(
                f"server {self.name}: thaw on {self.config.host} left {len(failures)} item(s) undone: "
                f"{'; '.join(failures)}; fix them on the source, then run undo (or the cutover) again"
            )

    def _undo(self, state: ServiceState) -> list[str]:
        """Shadows first (a pass that is over needs none), then the services, those that need others
        first; ``state`` keeps what could not be undone."""
        self._shadows = {}
        failures = self._remove_shadows(state.shadows)
        kept, failed = self.services().start(list(reversed(state.services)))
        state.services = [name for name in state.services if name in kept]
        return failures + failed

    def shutdown(self, timeout: float, force: bool) -> None:
        """Stop the computer; quiesce's shadow copies go first (they would outlive the migration on the
        source's volumes), its stopped services stay stopped."""
        if self._quiesced is not None and self._quiesced.shadows:
            self._shadows = {}
            self._remove_shadows(self._quiesced.shadows)  # best effort: the shutdown matters more
        self._run(scripts.SHUTDOWN[force], None, "shutting down")

    def start(self) -> None:
        raise ProviderError(
            f"server {self.name}: {self.config.host} is a running Windows server; this tool cannot power "
            "it on: start it by hand (console, BMC, or its hypervisor)"
        )

    def close(self) -> None:
        with self._lock:
            self.winrm.close()
