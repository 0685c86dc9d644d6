"""vCenter snapshots of a source VM: taken to freeze its base disks for a read, always removed afterwards.

A snapshot left behind grows a delta file on the source's datastore until the datastore fills and the VM
stops, so every snapshot this tool takes is findable twice over: its moref is returned as state that the
caller journals (quiesce_source keeps it as the step's output, so undo and a resumed final pass release
it), and its name says whose it is (``hvmigrate-<server>-<purpose>``), so a crash between CreateSnapshot
and the journal write is caught too: the next take or release of that server removes any snapshot of that
name first. Snapshots the tool did not name are never touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pyVmomi import vim

from providers.base import NotFound, ProviderError

from .connection import Connection
from .source_inventory import EsxSnapshot, EsxSourceVm
from .tasks import run_task

PREFIX = "hvmigrate"
QUIESCE_FAULTS = (vim.fault.ApplicationQuiesceFault, vim.fault.ToolsUnavailable)


def snapshot_prefix(server: str) -> str:
    return f"{PREFIX}-{server}-"


@dataclass(frozen=True)
class SnapshotState:
    """What a taken snapshot is, as journaled."""

    vm: str  # moref of the VM
    snapshot: str  # moref of the snapshot
    name: str
    quiesced: bool
    note: str = ""  # why it is not quiesced, when quiesce was asked for

    def to_json(self) -> dict[str, Any]:
        return {"kind": "esx_snapshot", **asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SnapshotState:
        return cls(
            vm=data["vm"],
            snapshot=data["snapshot"],
            name=data["name"],
            quiesced=bool(data.get("quiesced")),
            note=str(data.get("note", "")),
        )


class SnapshotKeeper:
    """Takes and removes the tool's own snapshots of one source VM."""

    def __init__(
        self,
        conn: Connection,
        server: str,
        describe: Callable[[], EsxSourceVm],
        timeout: float,
    ) -> None:
        self.conn = conn
        self.server = server
        self.describe = describe
        self.timeout = timeout

    def _vm(self, moref: str) -> vim.VirtualMachine:
        return vim.VirtualMachine(moref, self.conn.stub)

    def leftovers(self, described: EsxSourceVm | None = None) -> list[EsxSnapshot]:
        """This server's snapshots that still exist (a crash, a failed release)."""
        vm = described or self.describe()
        return [s for s in vm.snapshots if s.name.startswith(snapshot_prefix(self.server))]

    def take(self, purpose: str, quiesce: bool) -> SnapshotState:
        """A new snapshot without memory; quiesced through VMware Tools when asked and Tools run.

        A quiesce that Tools refuse (no VSS writer, a frozen filesystem that would not thaw) falls back to
        a crash-consistent snapshot, and the state says so: the read is still of one instant.
        """
        described = self.describe()
        self.sweep(described)
        name = f"{snapshot_prefix(self.server)}{purpose}-{int(time.time())}"
        tools_run = described.tools == "guestToolsRunning"
        note = ""
        if quiesce and not tools_run:
            note = f"VMware Tools are {described.tools or 'not reported'}: crash-consistent snapshot"
        vm = self._vm(described.moref)
        try:
            snapshot = self._create(vm, name, quiesce and tools_run)
            quiesced = quiesce and tools_run
        except ProviderError as exc:
            if not (quiesce and tools_run):
                raise
            note = f"quiesced snapshot refused ({exc}): crash-consistent snapshot"
            self.sweep()  # a refused quiesce can leave a half-made snapshot of that name
            snapshot = self._create(vm, name, False)
            quiesced = False
        return SnapshotState(described.moref, snapshot._moId, name, quiesced, note)

    def _create(self, vm: vim.VirtualMachine, name: str, quiesce: bool) -> Any:
        return run_task(
            self.conn,
            lambda: vm.CreateSnapshot_Task(
                name=name,
                description=f"hvmigrate: consistent read of server {self.server}; removed after the pass",
                memory=False,
                quiesce=quiesce,
            ),
            f"taking snapshot {name} of source VM {self.server}",
            self.timeout,
        )

    def release(self, state: SnapshotState | Mapping[str, Any] | None) -> list[str]:
        """Remove the snapshot ``state`` names (gone already counts as done) and any other of this
        server's; returns the names removed."""
        removed: list[str] = []
        if state is not None:
            snap = state if isinstance(state, SnapshotState) else SnapshotState.from_json(state)
            if self._remove(snap.snapshot, snap.name):
                removed.append(snap.name)
        removed += self.sweep()
        return removed

    def sweep(self, described: EsxSourceVm | None = None) -> list[str]:
        """Remove every snapshot of this server still on the VM."""
        return [s.name for s in self.leftovers(described) if self._remove(s.moref, s.name)]

    def _remove(self, moref: str, name: str) -> bool:
        snapshot = vim.vm.Snapshot(moref, self.conn.stub)
        try:
            run_task(
                self.conn,
                lambda: snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True),
                f"removing snapshot {name} of source VM {self.server}",
                self.timeout,
            )
        except NotFound:
            return False
        return True
