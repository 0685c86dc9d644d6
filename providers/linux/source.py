"""A running Linux server reached over SSH (``source: {type: ssh}``): discovered and read by the agent.

Nothing here reads a disk in this process: discovery runs the agent on the host, and the mirror starts a
reader agent there through ``disk_location`` (the disk's own path, or its LVM snapshot while one is held),
so disk bytes travel once, from the source's agent to the target's. The administrative commands around
the copy (quiesce, thaw, poweroff) are exec channels on the same SSH connection. No code path here opens
a source disk for writing: the agent's reader opens O_RDONLY, and the only commands that change the host
pause or resume its writes (fsfreeze, services, an LVM snapshot beside the disk) or power it off.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from orchestrator.mirror import protocol as wire
from orchestrator.mirror.agent_session import discover
from orchestrator.mirror.errors import MirrorError
from orchestrator.playbook.models import SshSource as SshSourceConfig
from orchestrator.playbook.secrets import redact
from orchestrator.transport.ssh import SshTransport
from providers.base import (
    AgentLocation,
    DiskReader,
    LiveMount,
    ProviderError,
    SourceFacts,
    TransientProviderError,
)

from .facts import facts_from_discovery
from .mounts import live_mounts, parse_mountinfo
from .power import answers_ssh, power_off
from .quiesce import Quiescer, QuiesceState
from .shell import RemoteShell


class SshSource:
    """The `Source` of one running Linux server; its disks are named by their paths on that server."""

    def __init__(self, name: str, config: SshSourceConfig, disks: list[str] | tuple[str, ...] = ()) -> None:
        self.name = name
        self.config = config
        self.host = config.host  # the per-source-host slot, as the planner names it
        self.disks = list(disks)  # target.disks[*].source; empty: every disk lsblk lists
        self._transport: SshTransport | None = None
        self._lock = threading.Lock()
        # None: not known in this process (a fresh orchestrator); thaw then looks at the host
        self._state: QuiesceState | None = None

    def __repr__(self) -> str:
        return f"SshSource({self.name!r}, {self.config.user}@{self.config.host}:{self.config.port})"

    # ------------------------------------------------------------ connection

    def transport(self) -> SshTransport:
        """The one SSH connection to the host, opened on first use (constructing a source never connects)."""
        with self._lock:
            if self._transport is None:
                self._transport = SshTransport.from_source(self.config)
            return self._transport

    def shell(self) -> RemoteShell:
        return RemoteShell(self.transport(), sudo=self.config.sudo)

    # ------------------------------------------------------------ discovery

    def discover(self) -> SourceFacts:
        found, names = self.discovery()
        return facts_from_discovery(found, names, server=self.name)

    def discovery(self) -> tuple[dict[str, Any], list[str]]:
        """The agent's raw discovery, with the source disks described under ``paths``, and their names."""
        found = self._run_discovery(self.disks)
        if self.disks:
            return found, list(self.disks)
        names = [disk["name"] for disk in found.get("disks", ())]
        return self._run_discovery(names) if names else found, names

    def _run_discovery(self, paths: list[str]) -> dict[str, Any]:
        try:
            return discover(self.transport(), paths)
        except (MirrorError, wire.ProtocolError) as exc:
            error_type = TransientProviderError if getattr(exc, "retryable", False) else ProviderError
            raise error_type(
                f"server {self.name}: discovery on {self.config.host} failed: {redact(str(exc))}"
            ) from None

    # ------------------------------------------------------------ reading

    def open_disk(self, name: str) -> DiskReader:
        raise ProviderError(
            f"server {self.name}: disk {name} is read by an agent on {self.config.host}, not in this "
            "process; the mirror reads it through disk_location()"
        )

    def disk_location(self, name: str) -> AgentLocation:
        """Where the reader agent runs and what it reads: the disk, or its snapshot while one is held."""
        if self.disks and name not in self.disks:
            raise ProviderError(
                f"server {self.name} has no source disk {name!r}; target.disks names: {', '.join(self.disks)}"
            )
        if not name.startswith("/"):
            raise ProviderError(
                f"server {self.name}: source disk {name!r} must be a path on {self.config.host} (/dev/vda)"
            )
        snapshots = self._state.snapshots() if self._state else {}
        return AgentLocation(transport=self.transport(), path=snapshots.get(name, name))

    # ------------------------------------------------------------ consistency

    def quiescer(self) -> Quiescer:
        return Quiescer(self.shell(), self.config, server=self.name, discover=self.discovery)

    def quiesce(self) -> dict[str, Any]:
        """Pause writes as the playbook says; returns the state to journal (see ``thaw``)."""
        state = QuiesceState()
        self._state = state  # filled in as it goes: a failed quiesce leaves what it could not thaw
        self.quiescer().quiesce(state)
        return state.to_json()

    def quiesce_configured(self) -> bool:
        """Whether the playbook pauses writes at all; a thaw_command alone pauses nothing."""
        return self.config.quiesce != "none" or bool(self.config.quiesce_command)

    def unquiesced_mounts(self) -> list[LiveMount]:
        """Read-write mounts on the source disks that the final pass would copy live: none when quiesce is
        configured (it is trusted to pause what matters), else every one the host shows."""
        if self.quiesce_configured():
            return []
        found, names = self.discovery()
        table = self.shell().check(
            ["cat", "/proc/self/mountinfo"], "reading the mount table", privileged=False
        )
        return live_mounts(found, names, parse_mountinfo(table.stdout))

    @property
    def quiesce_state(self) -> dict[str, Any] | None:
        """What is paused now, as JSON; None when this process does not know (nothing quiesced here)."""
        return self._state.to_json() if self._state is not None else None

    def restore_quiesce_state(self, state: Mapping[str, Any]) -> None:
        """Adopt a journaled quiesce state after a restart, so reads go to its snapshots again."""
        self._state = QuiesceState.from_json(state)

    def thaw(self, state: Mapping[str, Any] | None = None) -> None:
        """Undo what quiesce did: from ``state`` (journaled), else what this process recorded, else what
        the host shows. Every item is tried; all failures are reported together, and kept for a retry."""
        if state is not None:
            self._state = QuiesceState.from_json(state)
        quiescer = self.quiescer()
        current = self._state if self._state is not None else quiescer.assumed_state()
        self._state = current
        failures = quiescer.undo(current)
        if failures:
            raise ProviderError(
                f"server {self.name}: thaw on {self.config.host} left {len(failures)} item(s) paused: "
                f"{'; '.join(failures)}; fix them on the host, then run undo (or the cutover) again"
            )

    # ------------------------------------------------------------ power

    def shutdown(self, timeout: float, force: bool) -> None:
        """Power the host off and wait until it stops answering SSH.

        Frozen filesystems are thawed and snapshots removed first (a frozen filesystem would hang the
        shutdown's final sync; a snapshot would outlive the migration); stopped services stay stopped.
        """
        if not answers_ssh(self.config.host, self.config.port):
            return  # already down: a retried cutover step
        quiescer = self.quiescer()
        current = self._state if self._state is not None else quiescer.assumed_state()
        self._state = current
        # best effort: what could not be undone must not keep the source from going down
        quiescer.undo(current, kinds=("freeze", "snapshot"))
        power_off(self.shell(), self.config.host, self.config.port, timeout=timeout, force=force)

    def start(self) -> None:
        if answers_ssh(self.config.host, self.config.port):
            return  # started again by hand, as the message below asks: nothing left to undo
        raise ProviderError(
            f"server {self.name}: {self.config.host} is a machine reached over SSH; this tool cannot "
            "power it on: start it by hand (console, BMC, or its hypervisor); a VM on a managed "
            "hypervisor is a source of type vm, which can"
        )

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None
