"""An ESX VM as a migration source (``source: {type: vm, provider: vcenter, vm: NAME}``).

Identity comes from vCenter, not from the guest: hardware (firmware, controllers, disks with capacity,
backing, thin/thick, independent mode, RDM), NICs with MAC and port group, the guest OS id, and the host
name and addresses VMware Tools report. Disks are named by slot (``scsi0:0``).

The bytes are read one of two ways (``source.read``):

- ``guest``: the agent runs inside the guest over SSH (the address Tools report, or ``guest.host``) and
  reads the guest's device for each slot, as for any SSH source. A vCenter snapshot would not freeze
  what it reads (the guest always sees its live disk), so the final pass is made consistent in the guest:
  ``source.guest`` takes an SSH source's quiesce options (fsfreeze, lvm_snapshot, services, commands) and
  the same code runs them. With CBT on, a snapshot per pass (and one of the paused guest at the final
  pass) still serves QueryChangedDiskAreas, so a pass reads only what changed.
- ``local_datastore``: the base VMDK's ``-flat.vmdk`` is read on this machine from a datastore mounted here
  (vcsim's folders in the test bed; an NFS datastore mounted on the orchestrator). For the final pass,
  ``quiesce`` takes a vCenter snapshot (quiesced through Tools where they run): the base file stops
  changing, writes go to the delta, and ``thaw`` removes the snapshot again (see snapshots.py for how a
  crash never leaves one behind). Incremental passes while the VM runs take one per pass with
  ``pass_snapshot``.

Changed-block tracking is probed per disk against the snapshot (cbt.py); where it is off or unsupported the
pass hashes the whole disk. Nothing here opens a source disk for writing; the only changes to the VM are
the tool's own snapshots and, at cutover, a guest shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyVmomi import vim

from orchestrator.playbook.models import SshSource as SshSourceConfig
from orchestrator.playbook.models import VmSource as VmSourceConfig
from providers.base import AgentLocation, DiskReader, NotFound, ProviderError, SourceFacts

from . import cbt
from .disks import split_datastore_path
from .snapshots import SnapshotKeeper, SnapshotState
from .source_inventory import EsxDisk, EsxSourceVm, read_source_vm
from .tasks import run_task

if TYPE_CHECKING:
    from providers.linux import SshSource

    from .provider import EsxProvider

log = logging.getLogger(__name__)
POWER_POLL = 1.0


class EsxVmSource:
    """The `Source` of one VM on an ESX provider; see the module docstring."""

    def __init__(self, name: str, provider: EsxProvider, config: VmSourceConfig) -> None:
        self.name = name
        self.provider = provider
        self.config = config
        self.host = config.provider  # the per-source-host slot, as the planner names it
        self.connection = provider.connection
        self.snapshots = SnapshotKeeper(self.connection, name, self.describe, provider.config.task_timeout)
        self._lock = threading.Lock()
        self._held: SnapshotState | None = None  # the snapshot reads go to now (local_datastore)
        self._guest: SshSource | None = None

    def __repr__(self) -> str:
        return f"EsxVmSource({self.name!r}, {self.config.vm!r} on {self.provider.name})"

    # ------------------------------------------------------------ identity

    def _moref(self) -> str:
        found = self.provider.scope.vm(self.config.vm)
        if found is None:
            raise NotFound(
                f"server {self.name}: source VM {self.config.vm} does not exist in datacenter "
                f"{self.provider.scope.datacenter_name} of {self.provider.name}; fix source.vm"
            )
        return found[1].moref

    def describe(self) -> EsxSourceVm:
        """The VM as vCenter describes it now (hardware, Tools, snapshots, CBT)."""
        return read_source_vm(self.connection, vim.VirtualMachine(self._moref(), self.connection.stub))

    def discover(self) -> SourceFacts:
        """Read only: leftover snapshots of this tool are reported (validation warns), not removed here,
        because a pass of another process may hold one right now."""
        return self.describe().facts(self.provider.name)

    def _disk(self, name: str, described: EsxSourceVm | None = None) -> EsxDisk:
        vm = described or self.describe()
        disk = vm.disk(name)
        if disk is None:
            known = ", ".join(d.slot for d in vm.disks) or "none"
            raise ProviderError(
                f"server {self.name}: source VM {vm.name} has no disk {name!r} (its disks: {known}); "
                "name source disks by slot"
            )
        return disk

    # ------------------------------------------------------------ reading

    def open_disk(self, name: str) -> DiskReader:
        from orchestrator.mirror.file_reader import FileDiskReader

        if self.config.read != "local_datastore":
            raise ProviderError(
                f"server {self.name}: disk {name} is read by the agent in the guest, not in this process; "
                "the mirror reads it through disk_location()"
            )
        path = self._flat_file(name)
        try:
            return FileDiskReader(path)
        except OSError as exc:
            raise ProviderError(f"server {self.name}: cannot open {path}: {exc.strerror or exc}") from None

    def disk_location(self, name: str) -> AgentLocation:
        if self.config.read == "local_datastore":
            return AgentLocation(transport=None, path=str(self._flat_file(name)))
        return AgentLocation(transport=self.guest().transport(), path=self.guest_device(name))

    def _flat_file(self, name: str) -> Path:
        """The base disk's data file: the snapshot's view of the disk while one is held (the file the
        snapshot froze), else the disk's current backing."""
        described = self.describe()
        disk = self._disk(name, described)
        if disk.rdm or disk.backing != "flat" or not disk.file:
            raise ProviderError(
                f"server {self.name}: disk {name} of VM {described.name} is a {disk.backing} disk; "
                "read: local_datastore reads flat VMDKs only: use read: guest"
            )
        file = self._frozen_file(disk) or disk.file
        datastore, inside = split_datastore_path(file)
        local = self.provider._local_datastore_dir(datastore)
        if local is None:
            raise ProviderError(
                f"server {self.name}: datastore {datastore} is not a folder on this machine, so read: "
                "local_datastore cannot read it; mount it here (NFS) or use read: guest"
            )
        stem = inside[: -len(".vmdk")] if inside.endswith(".vmdk") else inside
        flat = local / f"{stem}-flat.vmdk"
        if not flat.is_file():
            raise ProviderError(
                f"server {self.name}: {flat} (the data of {file}) does not exist; the disk is no flat VMDK "
                "on this datastore: use read: guest"
            )
        return flat

    def _frozen_file(self, disk: EsxDisk) -> str | None:
        held = self._held
        if held is None:
            return None
        snapshot = vim.vm.Snapshot(held.snapshot, self.connection.stub)
        devices = self.connection.call(
            lambda: snapshot.config.hardware.device, f"reading snapshot {held.name}"
        )
        for device in devices or ():
            if isinstance(device, vim.vm.device.VirtualDisk) and device.key == disk.key:
                return getattr(device.backing, "fileName", None)
        return None

    # ------------------------------------------------------------ the guest (read: guest)

    def guest(self) -> SshSource:
        """The guest as an SSH source, at the address VMware Tools report unless guest.host says."""
        from providers.linux import SshSource

        with self._lock:
            if self._guest is None:
                login = self.config.guest
                if login is None:
                    raise ProviderError(
                        f"server {self.name}: read: guest needs source.guest (user, key) to start the agent "
                        "in the VM; or use read: local_datastore where the datastore is mounted here"
                    )
                host = login.host or self._tools_address()
                options = login.model_dump(exclude={"host", "devices"}, exclude_none=True)
                config = SshSourceConfig(type="ssh", host=host, **options)
                self._guest = SshSource(self.name, config, list(self._guest_devices().values()))
            return self._guest

    def _tools_address(self) -> str:
        described = self.describe()
        if described.guest_ip:
            return described.guest_ip
        for nic in described.nics:
            for address in nic.addresses:
                return address.split("/")[0]
        raise ProviderError(
            f"server {self.name}: VMware Tools report no address for VM {described.name} (Tools: "
            f"{described.tools or 'unknown'}); start Tools in the guest or set source.guest.host"
        )

    def _guest_devices(self) -> dict[str, str]:
        """slot -> the guest's device: as given, else /dev/sda, /dev/sdb ... in SCSI slot order (what
        Linux assigns on one SCSI controller kind); guest_device checks each against the VMDK's size."""
        described = self.describe()
        given = dict(self.config.guest.devices) if self.config.guest else {}
        scsi = [d.slot for d in described.disks if d.slot.startswith("scsi") and d.slot not in given]
        for index, slot in enumerate(scsi):
            given.setdefault(slot, f"/dev/sd{chr(ord('a') + index)}" if index < 26 else f"/dev/sd{index}")
        return given

    def guest_device(self, name: str) -> str:
        described = self.describe()
        disk = self._disk(name, described)
        device = self._guest_devices().get(name)
        if device is None:
            raise ProviderError(
                f"server {self.name}: cannot tell which guest device is {name}; set source.guest.devices "
                f"({name}: /dev/...)"
            )
        found, _ = self.guest().discovery()
        size = next((d.get("size") for d in found.get("disks", ()) if d.get("name") == device), None)
        if size is not None and int(size) != disk.capacity:
            raise ProviderError(
                f"server {self.name}: guest device {device} holds {size} bytes but {name} is "
                f"{disk.capacity}; set source.guest.devices to the right device for {name}"
            )
        return device

    # ------------------------------------------------------------ snapshots and changed blocks

    def quiesce(self) -> dict[str, Any] | None:
        """local_datastore: a vCenter snapshot freezes the base disks for the final pass (returned as the
        state to journal). guest: the guest pauses its writes as source.guest says (see _quiesce_guest)."""
        if self.config.read != "local_datastore":
            return self._quiesce_guest()
        state = self.snapshots.take("final", self.config.snapshot_quiesce)
        self._held = state
        return state.to_json()

    def _guest_quiesces(self) -> bool:
        login = self.config.guest
        return login is not None and (
            login.quiesce != "none" or bool(login.quiesce_command) or bool(login.thaw_command)
        )

    def _quiesce_guest(self) -> dict[str, Any] | None:
        """read: guest: fsfreeze, an LVM snapshot, stopped services or a command in the guest, by the
        very code an SSH source uses (source.guest takes the same quiesce options). Where CBT is on, a
        snapshot of the paused guest (not quiesced again through Tools: its filesystems are frozen
        already) lets the final pass read only what changed."""
        if not self._guest_quiesces():
            return None
        guest = self.guest()
        state: dict[str, Any] = {"kind": "guest", "guest": guest.quiesce()}
        if self.describe().change_tracking:
            try:
                self._held = self.snapshots.take("final", False)
            except BaseException:
                guest.thaw(state["guest"])  # all or nothing, as quiesce promises
                raise
            state["snapshot"] = self._held.to_json()
        return state

    def restore_quiesce_state(self, state: Mapping[str, Any]) -> None:
        """After a restart: reads go to the journaled snapshot's frozen files again (and a guest's
        thaw knows what its quiesce paused)."""
        if state.get("kind") == "esx_snapshot":
            self._held = SnapshotState.from_json(state)
        elif state.get("kind") == "guest":
            if state.get("snapshot"):
                self._held = SnapshotState.from_json(state["snapshot"])
            if self.config.guest is not None:
                self.guest().restore_quiesce_state(state.get("guest") or {})

    @property
    def held_snapshot(self) -> SnapshotState | None:
        return self._held

    def thaw(self, state: Mapping[str, Any] | None = None) -> None:
        """Remove the snapshot (the journaled one, and any other of this server's), and resume the
        guest's writes where it paused them: safe when nothing is held or paused."""
        if state is not None and state.get("kind") == "guest":
            self.snapshots.release(state.get("snapshot") or self._held)
            self._held = None
            if self.config.guest is not None:
                self.guest().thaw(state.get("guest"))
            return
        if self.config.read != "local_datastore":
            if state is None and self._guest_quiesces():
                self.guest().thaw(None)  # without a journaled state: what the guest shows
            if self._held is not None or state is not None:
                self.snapshots.release(self._held)
                self._held = None
            return
        journaled = state if state and state.get("kind") == "esx_snapshot" else None
        self.snapshots.release(journaled or self._held)
        self._held = None

    @contextlib.contextmanager
    def pass_snapshot(self) -> Iterator[SnapshotState | None]:
        """A snapshot held for one pass: reads go to its frozen files; removed when the pass ends,
        whatever happens. The caller journals the yielded state so an undo after a crash removes it
        (the next take of this server sweeps it too).

        read: guest with CBT off takes none (yields None): the guest reads its live disk, so a snapshot
        would serve only QueryChangedDiskAreas, which has nothing to answer then.
        """
        if self.config.read != "local_datastore" and not self.describe().change_tracking:
            yield None
            return
        state = self.snapshots.take("pass", self.config.snapshot_quiesce)
        previous, self._held = self._held, state
        try:
            yield state
        finally:
            self._held = previous
            self.snapshots.release(state)

    def release_snapshot(self, state: Mapping[str, Any] | None) -> None:
        """Remove the pass snapshot a journal names (after a crash), and any other this server left."""
        journaled = state if state and state.get("kind") == "esx_snapshot" else None
        self.snapshots.release(journaled)

    def change_tracking(self, name: str) -> cbt.ChangeTracking:
        """Whether the next incremental pass of disk ``name`` can ask CBT, or hashes the whole disk."""
        described = self.describe()
        disk = self._disk(name, described)
        if not described.change_tracking:  # said without taking a snapshot to ask
            return cbt.probe(self.connection, None, "", disk, False)
        if self._held is None:
            with self.pass_snapshot() as state:
                assert state is not None  # CBT is on: a snapshot is always taken
                return self._probe(described, disk, state)
        return self._probe(described, disk, self._held)

    def _probe(self, described: EsxSourceVm, disk: EsxDisk, state: SnapshotState) -> cbt.ChangeTracking:
        vm = vim.VirtualMachine(described.moref, self.connection.stub)
        return cbt.probe(self.connection, vm, state.snapshot, disk, described.change_tracking)

    def change_ids(self) -> dict[str, str]:
        """slot -> CBT change id of the held snapshot's disks: what the next pass asks ``since``."""
        held = self._held
        if held is None:
            return {}
        snapshot = vim.vm.Snapshot(held.snapshot, self.connection.stub)
        devices = self.connection.call(lambda: snapshot.config.hardware.device, f"reading {held.name}")
        keys = {d.key: d.slot for d in self.describe().disks}
        return {
            keys[d.key]: d.backing.changeId
            for d in devices or ()
            if isinstance(d, vim.vm.device.VirtualDisk)
            and d.key in keys
            and getattr(d.backing, "changeId", None)
        }

    def changed_ranges(self, name: str, since: str | None) -> list[tuple[int, int]] | None:
        """Ranges of disk ``name`` written since change id ``since``, read against the held snapshot;
        None: hash the whole disk (no change id yet, CBT off or unsupported, no snapshot held)."""
        held = self._held
        if held is None or not since:
            return None
        described = self.describe()
        disk = self._disk(name, described)
        if not described.change_tracking or not disk.trackable:
            return None
        vm = vim.VirtualMachine(described.moref, self.connection.stub)
        return cbt.changed_ranges(self.connection, vm, held.snapshot, disk, since)

    # ------------------------------------------------------------ power

    def shutdown(self, timeout: float, force: bool) -> None:
        """Release the tool's snapshots (they would outlive the migration), then shut the guest down
        through Tools (or power off with ``force``, or when Tools do not run) and wait until it is off."""
        self.snapshots.release(self._held)
        self._held = None
        if self.config.read != "local_datastore" and self._guest_quiesces():
            self._thaw_filesystems_for_shutdown()
        described = self.describe()
        if described.power_state != "poweredOn":
            return
        vm = vim.VirtualMachine(described.moref, self.connection.stub)
        if force or described.tools != "guestToolsRunning":
            if not force:
                raise ProviderError(
                    f"server {self.name}: VMware Tools do not run in VM {described.name} "
                    f"({described.tools}), so it cannot be shut down cleanly; shut it down yourself, "
                    "or force the power-off"
                )
            run_task(
                self.connection,
                lambda: vm.PowerOffVM_Task(),
                f"powering off source VM {described.name}",
                self.provider.config.task_timeout,
            )
            return
        self.connection.call(lambda: vm.ShutdownGuest(), f"shutting down the guest of VM {described.name}")
        deadline = time.monotonic() + timeout
        while (
            self.connection.call(lambda: vm.runtime.powerState, f"reading VM {described.name}") == "poweredOn"
        ):
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"server {self.name}: VM {described.name} did not shut down within {timeout:.0f} s; "
                    "look at its console, then power it off"
                )
            time.sleep(POWER_POLL)

    def _thaw_filesystems_for_shutdown(self) -> None:
        """A frozen filesystem would hang the guest's shutdown in its final sync, and a guest LVM
        snapshot would outlive the migration: both go (best effort); stopped services stay stopped, as
        for an SSH source."""
        from providers.linux.quiesce import QuiesceState

        guest = self.guest()
        try:
            quiescer = guest.quiescer()
            known = guest.quiesce_state
            current = QuiesceState.from_json(known) if known is not None else quiescer.assumed_state()
            quiescer.undo(current, kinds=("freeze", "snapshot"))
        except Exception as exc:  # what could not be undone must not keep the source from going down
            log.warning("server %s: thawing the guest before its shutdown failed: %s", self.name, exc)

    def start(self) -> None:
        described = self.describe()
        if described.power_state == "poweredOn":
            return
        vm = vim.VirtualMachine(described.moref, self.connection.stub)
        run_task(
            self.connection,
            lambda: vm.PowerOnVM_Task(),
            f"powering on source VM {described.name}",
            self.provider.config.task_timeout,
        )

    def close(self) -> None:
        """The provider owns the vSphere session; only the guest's SSH connection is this source's."""
        with self._lock:
            guest, self._guest = self._guest, None
        if guest is not None:
            guest.close()
