"""The Provider and Source protocols and the value types that cross them.

Steps talk only to these protocols, so a step never knows which hypervisor it drives and a provider never
knows which step calls it (virt-v2v's input/output split). Value types are plain frozen dataclasses that
round-trip through JSON, because every one of them ends up in the journal as a step output or a created
resource and must be rebuilt from there after a crash.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Firmware = Literal["bios", "uefi"]


class ProviderError(Exception):
    """A hypervisor refused or failed an operation; the message says what to do about it."""

    retryable: bool = False


class TransientProviderError(ProviderError):
    """Worth retrying: a timeout, a busy host, a dropped session."""

    retryable = True


class NotFound(ProviderError):
    """The object is gone; undo treats this as already done."""


# ---------------------------------------------------------------- inventory


@dataclass(frozen=True)
class DatastoreInfo:
    name: str
    capacity: int
    free: int
    accessible: bool = True


@dataclass(frozen=True)
class Limits:
    """What the target platform allows; validation checks plans against these."""

    max_nics: int = 16
    max_disks_per_appliance: int = 60
    firmware: tuple[str, ...] = ("bios", "uefi")
    disk_formats: tuple[str, ...] = ("raw",)
    native_format: str = "raw"
    max_memory: int | None = None  # bytes one VM can be given on the target host; None when unknown
    appliance_modes: tuple[str, ...] = ("shared", "dedicated", "host")  # what target.appliance may say
    # appliance: host is cold: disks are built here and uploaded once, so the source must stand still
    cold_host: bool = False


@dataclass(frozen=True)
class Inventory:
    provider: str
    type: str
    hosts: tuple[str, ...]
    datastores: dict[str, DatastoreInfo]
    networks: tuple[str, ...]
    vms: tuple[str, ...]
    limits: Limits = field(default_factory=Limits)
    default_datastore: str | None = None
    # host -> why no new VM can be placed on it now ("in maintenance mode", "disconnected"); hosts absent
    # here are usable (or their provider cannot tell)
    unavailable_hosts: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- source facts


@dataclass(frozen=True)
class SourceDisk:
    name: str  # how the playbook names it: /dev/vda, PhysicalDrive0, web01.raw
    size: int
    used: int | None = None  # bytes known to hold data, when the source can tell
    partition_table: Literal["mbr", "gpt", "none"] = "none"
    filesystems: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceNic:
    name: str
    mac: str
    addresses: tuple[str, ...] = ()  # CIDR strings


@dataclass(frozen=True)
class SourceVmDisk:
    """How a hypervisor backs one disk of a source VM: what decides whether a snapshot or changed-block
    tracking covers it."""

    disk: str  # the SourceDisk's name
    file: str | None  # "[datastore] vm/vm.vmdk"; None where the disk has no file
    backing: str  # flat | sparse | rdm_physical | rdm_virtual | other
    provisioning: str  # thin | thick | eager_zeroed | none (an RDM)
    mode: str  # persistent | independent_persistent | independent_nonpersistent | nonpersistent | ...
    change_tracking: bool = False  # changed-block tracking records this disk's writes


@dataclass(frozen=True)
class SourceVm:
    """A source that is a VM on a managed hypervisor: what validation checks beyond the guest's own facts."""

    provider: str
    vm: str
    guest_id: str  # the hypervisor's guest OS id (ESX: debian11_64Guest)
    power_state: str
    tools: str  # guest tools state as the hypervisor reports it ("guestToolsRunning", ...)
    change_tracking: bool
    snapshots: tuple[str, ...] = ()  # names of snapshots the VM has now
    disks: tuple[SourceVmDisk, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceVm:
        return cls(
            **{
                **data,
                "snapshots": tuple(data.get("snapshots", ())),
                "disks": tuple(SourceVmDisk(**d) for d in data.get("disks", ())),
            }
        )


@dataclass(frozen=True)
class WindowsVolume:
    """A volume of a Windows source: what its BitLocker state and VSS snapshot are judged by."""

    letter: str | None  # "C", or None for a volume without a drive letter
    filesystem: str
    size: int
    used: int
    disk: str | None  # the SourceDisk holding it (PhysicalDrive0); None when Windows did not say
    bitlocker: str = "off"  # off | on (protected) | suspended (encrypted, key in the clear) | in_progress


@dataclass(frozen=True)
class WindowsNicConfig:
    """How a Windows source's NIC is set up beyond its addresses: what staging carries to the replica."""

    mac: str
    dhcp: bool
    gateways: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] = ()


@dataclass(frozen=True)
class WindowsFacts:
    """What a Windows source says about itself beyond the common facts (set by the WinRM source)."""

    edition: str  # Win32_OperatingSystem.Caption: "Microsoft Windows Server 2019 Standard"
    version: str  # "10.0.17763"
    domain: str | None  # the AD domain, None in a workgroup
    volumes: tuple[WindowsVolume, ...] = ()
    dynamic_disks: tuple[str, ...] = ()  # SourceDisk names holding LDM (dynamic disk) partitions
    nics: tuple[WindowsNicConfig, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WindowsFacts:
        return cls(
            edition=data["edition"],
            version=data["version"],
            domain=data.get("domain"),
            volumes=tuple(WindowsVolume(**v) for v in data.get("volumes", ())),
            dynamic_disks=tuple(data.get("dynamic_disks", ())),
            nics=tuple(
                WindowsNicConfig(
                    **{**n, "gateways": tuple(n["gateways"]), "dns_servers": tuple(n["dns_servers"])}
                )
                for n in data.get("nics", ())
            ),
        )


@dataclass(frozen=True)
class SourceFacts:
    hostname: str
    os: str  # "linux", "windows", "unknown"
    os_detail: str
    firmware: Firmware
    disks: tuple[SourceDisk, ...]
    nics: tuple[SourceNic, ...] = ()
    vm: SourceVm | None = None  # set by sources that are VMs on a managed hypervisor
    windows: WindowsFacts | None = None  # set by Windows sources reached over WinRM

    def disk(self, name: str) -> SourceDisk:
        for disk in self.disks:
            if disk.name == name:
                return disk
        known = ", ".join(d.name for d in self.disks) or "none"
        raise KeyError(f"source has no disk {name!r} (it has: {known})")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceFacts:
        return cls(
            hostname=data["hostname"],
            os=data["os"],
            os_detail=data["os_detail"],
            firmware=data["firmware"],
            disks=tuple(
                SourceDisk(**{**d, "filesystems": tuple(d.get("filesystems", ()))}) for d in data["disks"]
            ),
            nics=tuple(SourceNic(**{**n, "addresses": tuple(n.get("addresses", ()))}) for n in data["nics"]),
            vm=SourceVm.from_json(data["vm"]) if data.get("vm") else None,
            windows=WindowsFacts.from_json(data["windows"]) if data.get("windows") else None,
        )


# ---------------------------------------------------------------- target objects


@dataclass(frozen=True)
class DiskRequest:
    name: str  # unique on the target: "<vm>-disk0"
    size: int
    format: str
    datastore: str | None
    provisioning: str = "thin"


@dataclass(frozen=True)
class DiskRef:
    provider: str
    id: str  # provider's handle: a path, a volume key, a VMDK path
    name: str
    size: int
    format: str
    datastore: str


@dataclass(frozen=True)
class ApplianceRef:
    provider: str
    id: str
    name: str
    host: str


@dataclass(frozen=True)
class DiskEndpoint:
    """Where the data plane writes one replica disk.

    ``kind`` file: a raw file or device path on ``host`` ("local" for this machine); nbd: ``path`` is an
    NBD URI; block: a device inside an appliance reached over ``transport``.
    """

    kind: Literal["file", "block", "nbd"]
    path: str
    size: int
    host: str = "local"
    transport: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentLocation:
    """A place the data plane can start an agent (orchestrator/agent.py) and the disk path it uses there.

    ``transport`` is an orchestrator.transport.Transport (kept as Any: providers do not depend on the
    orchestrator's classes); the mirror ships the agent through it and reads or writes ``path`` on that
    host. ``None`` means this machine: when both ends of a copy are here, it runs in-process.
    """

    transport: Any
    path: str
    size: int | None = None  # the disk's size where the far end cannot tell it (a Windows disk device)
    # (disk offset, length, device) read from that device instead of ``path``: VSS shadow copies of
    # the volumes on a Windows disk, so a pass reads the disk as of the shadow copies (a reader only)
    overlay: tuple[tuple[int, int, str], ...] = ()


@dataclass(frozen=True)
class NicRequest:
    network: str
    mac: str | None  # None: let the hypervisor generate one
    model: str | None = None
    vlan: int | None = None
    connected: bool = True  # False: the NIC exists but no link comes up (a test copy without test_network)


@dataclass(frozen=True)
class VmRequest:
    name: str
    host: str | None
    cpus: int
    memory: int
    firmware: Firmware
    disks: tuple[DiskRef, ...]
    nics: tuple[NicRequest, ...]
    generation: int | None = None
    datastore: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # One per disk (None: the platform's default, virtio on KVM); sata/ide for guests without virtio.
    disk_controllers: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class VmRef:
    provider: str
    id: str
    name: str


@dataclass(frozen=True)
class BootReport:
    """What a booted replica told us about itself (heartbeat, console, guest tools)."""

    running: bool
    hostname: str | None = None
    addresses: tuple[str, ...] = ()
    detail: str = ""


def ref_to_json(ref: Any) -> dict[str, Any]:
    return asdict(ref)


# ---------------------------------------------------------------- protocols


@runtime_checkable
class Provider(Protocol):
    """A hypervisor (or a cluster behind one endpoint) that migrated servers land on."""

    name: str
    type: str

    def inventory(self) -> Inventory: ...

    def host_for(self, requested: str | None) -> str:
        """The target host a VM lands on; it names the concurrency slot and the shared appliance."""
        ...

    def provision_appliance(self, host: str, name: str) -> ApplianceRef: ...

    def find_appliance(self, host: str, name: str) -> ApplianceRef | None: ...

    def release_appliance(self, appliance: ApplianceRef) -> None: ...

    def create_disk(self, request: DiskRequest) -> DiskRef: ...

    def find_disk(self, request: DiskRequest) -> DiskRef | None: ...

    def delete_disk(self, disk: DiskRef) -> None: ...

    def clone_disk(self, source: DiskRef, request: DiskRequest) -> DiskRef:
        """A new disk ``request`` holding what ``source`` holds now: the point-in-time copy a test cutover
        boots while replication into ``source`` goes on. Idempotent: a finished clone is found again, a
        half-made one (a crash while copying) is made again, never returned."""
        ...

    def attach_disk(self, appliance: ApplianceRef | None, disk: DiskRef) -> DiskEndpoint:
        """Make a disk writable by the data plane; ``None`` appliance means write on the host itself."""
        ...

    def writer_location(self, endpoint: DiskEndpoint) -> AgentLocation | None:
        """Where a writer agent must run to write ``endpoint`` (an appliance, a remote hypervisor host);
        None: ``endpoint.path`` is a file, device or NBD URI this machine can write itself."""
        ...

    def detach_disk(self, appliance: ApplianceRef | None, disk: DiskRef) -> None: ...

    def create_vm(self, request: VmRequest) -> VmRef: ...

    def find_vm(self, name: str) -> VmRef | None: ...

    def delete_vm(self, vm: VmRef) -> None: ...

    def power_on(self, vm: VmRef) -> None: ...

    def power_off(self, vm: VmRef, *, force: bool = False) -> None: ...

    def wait_booted(self, vm: VmRef, timeout: float) -> BootReport: ...

    def close(self) -> None: ...


class DiskReader(Protocol):
    """Random-access read of one source disk; the mirror reads it chunk by chunk."""

    size: int

    def read(self, offset: int, length: int) -> bytes: ...

    def allocated_ranges(self) -> Iterator[tuple[int, int]] | None:
        """(offset, length) ranges that may hold data, when the source knows (sparse files); else None."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Source(Protocol):
    """A running server (or image of one) that is only ever read, and at cutover maybe shut down."""

    name: str
    host: str  # names the per-source-host concurrency slot

    def discover(self) -> SourceFacts: ...

    def open_disk(self, name: str) -> DiskReader: ...

    def disk_location(self, name: str) -> AgentLocation | None:
        """Where disk ``name`` can be read by path (an SSH host's device, an image file here with
        ``transport=None``); None: only through ``open_disk``, in this process."""
        ...

    def quiesce(self) -> dict[str, Any] | None:
        """Pause writes; returns what was paused (JSON) so a thaw after a restart knows it, or None."""
        ...

    def thaw(self, state: Mapping[str, Any] | None = None) -> None:
        """Undo quiesce, from the journaled ``state`` when given; safe to call when nothing is paused."""
        ...

    def shutdown(self, timeout: float, force: bool) -> None: ...

    def start(self) -> None:
        """Power the source back on (undo of a failed cutover)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SnapshotsPasses(Protocol):
    """A Source that can freeze its disks for one pass (a hypervisor snapshot) and may say which ranges of
    a disk changed since an earlier pass (changed-block tracking), so a pass reads only those.

    Optional: the mirror steps ask ``isinstance(source, SnapshotsPasses)`` and hash every chunk of the
    others. The steps journal the state ``pass_snapshot`` yields before the pass reads, so a crash never
    leaves a snapshot behind: the next pass, or undo, hands it to ``release_snapshot``.
    """

    def pass_snapshot(self) -> AbstractContextManager[Any]:
        """Hold a snapshot while the block runs, reads going to it, removed at the end whatever happens;
        yields its state (``to_json()`` for the journal), or None when this source needs none now."""
        ...

    def release_snapshot(self, state: Mapping[str, Any] | None) -> None:
        """Remove a snapshot the journal names (after a crash); None: any this server's pass left."""
        ...

    def change_ids(self) -> dict[str, str]:
        """Disk -> change id of the snapshot held now: what the next pass passes as ``since``."""
        ...

    def changed_ranges(self, name: str, since: str | None) -> list[tuple[int, int]] | None:
        """(offset, length) ranges of disk ``name`` written since change id ``since`` up to the snapshot
        held now; None: the source cannot say, hash the whole disk."""
        ...


@dataclass(frozen=True)
class LiveMount:
    """A filesystem on a source disk that stays mounted read-write through quiesce: the final pass copies
    it while it may be written (crash-consistent, as after a power cut)."""

    disk: str  # the source disk as the playbook names it
    device: str  # what is mounted: the disk, a partition, an LV, a loop device
    mountpoints: tuple[str, ...]


@runtime_checkable
class ReportsLiveMounts(Protocol):
    """A Source that can tell which of its disks' filesystems no configured quiesce pauses.

    Optional: sources without it (images, the simulator) have nothing mounted, and count as none.
    """

    def unquiesced_mounts(self) -> list[LiveMount]:
        """The read-write mounts the final pass would copy live; empty when quiesce is configured."""
        ...
