"""The Hyper-V target: VMs and VHDX files on a Windows host, driven by PowerShell over WinRM.

It keeps the Provider contract as the simulator and KVM do: finds are idempotent by name, creates refuse
what exists, deletes refuse what is in use, a VM's disks outlive the VM, and it never touches what it did
not create: its VMs carry ``hvmigrate:`` in their Notes, and a VM of the same name without it is refused,
never adopted or removed. Its disks live in a folder of their own (``vm_path``, or ``<volume>:\\hvmigrate``).

Hyper-V's rules are checked before anything is created, so a plan that breaks one fails without leaving a
half-built VM: generation 1 boots BIOS from IDE (2 controllers x 2 locations; the DVD drive New-VM adds on
IDE 1:0 is removed), generation 2 boots UEFI and has SCSI only (4 controllers x 64 locations), at most 8
synthetic and 4 legacy NICs (legacy on generation 1 only), switches that exist. If the host still fails
half-way, the VM made so far is removed before the error is raised.

``appliance: host`` mounts each VHDX on the host (Mount-VHD -NoDriveLetter) and hands the data plane the
mounted disk, ``\\\\.\\PhysicalDriveN``, written by the hvmigrate agent running on the host itself with the
configured ``python`` (CPython on the host), started over WinRM (orchestrator/transport/winrm_agent.py);
the disk's block map lives beside its VHDX (``D:/hvmigrate/<disk>.vhdx.hvmap``: Win32 takes ``/``).
Staging edits (Linux system state, a test copy's addresses) are made from this machine, so they need a
view of the mounted disk here: only test beds have one (``host_device_dir``, the WinRM stand-in's
devices folder); elsewhere they are skipped with a warning, as on every endpoint this machine cannot
open. Without ``python``, ``host_device_dir`` alone makes this machine write the mounted disk too (the
older test-bed path).

``transport: local`` is for the orchestrator running on the Hyper-V host itself: the same scripts run
through its own ``powershell.exe`` (orchestrator/transport/local_powershell.py) and the agent writing a
mounted disk is a local process (orchestrator/transport/local.py), ``python`` or else the orchestrator's own
interpreter. The ``wmi`` package (root\\virtualization\\v2) is not used: nothing here can exercise it.

``appliance: shared|dedicated`` hot-adds each VHDX on SCSI to a recovery appliance VM (an existing one
named by ``appliance``, or one made from ``appliance_template``), and the agent's writer runs inside it
over SSH at the address its KVP daemon reports (appliance.py, sharing providers/appliance_guest.py with
ESX and KVM): a ``block`` endpoint ``scsi:CONTROLLER:LOCATION`` on the appliance.

A replica is up when its guest's heartbeat says so, not when Hyper-V says Running (it runs a VM whose
guest never boots); the addresses the guest's KVP daemon reports are what verify_replica compares with the
NIC map.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from orchestrator.playbook.models import HypervProviderConfig
from orchestrator.transport.local_powershell import agent_transport_for, powershell_for
from orchestrator.transport.winrm import PowerShellError, WinRMError
from providers.base import (
    AgentLocation,
    ApplianceRef,
    BootReport,
    DatastoreInfo,
    DiskEndpoint,
    DiskRef,
    DiskRequest,
    Inventory,
    Limits,
    NotFound,
    ProviderError,
    TransientProviderError,
    VmRef,
    VmRequest,
)

from . import scripts
from .appliance import (
    MAX_DISKS_PER_APPLIANCE,
    ROLE,
    SCSI_CONTROLLERS,
    HypervApplianceAccess,
    check_hot_add,
    drive_at,
    free_scsi_slot,
    slot_of,
)
from .inventory import HEARTBEAT, OWNER_PREFIX, VM_STATE, HostFacts, listed, named, read_host, read_vms
from .placement import place_disks, place_nics

FORMATS = ("vhdx", "vhd")
MEMORY_STEP = 2 * 1024**2  # Hyper-V assigns memory in 2 MiB steps
MAX_NAME = 100
POLL = 0.5
DISK_FOLDER = "hvmigrate"


class HypervProvider:
    """pywinrm + Hyper-V PowerShell behind the Provider protocol; see the module docstring."""

    type = "hyperv"

    def __init__(self, name: str, config: HypervProviderConfig) -> None:
        self.name = name
        self.config = config
        # WinRM to the host, or this machine's powershell.exe (transport: local): the same scripts either way
        self.winrm = powershell_for(config)
        self._hostname: str | None = None
        self.appliances = HypervApplianceAccess(self)
        self._lock = threading.RLock()  # one hot-add at a time picks a free SCSI location

    def __repr__(self) -> str:
        return f"HypervProvider({self.name!r}, at={self.winrm.where!r})"

    # ------------------------------------------------------------ running scripts

    def _run(self, body: str, data: dict[str, Any], doing: str) -> Any:
        try:
            return self.winrm.run(body, data)
        except PowerShellError as exc:
            raise ProviderError(f"{doing} on Hyper-V host {self.config.host} failed: {exc.message}") from None
        except WinRMError as exc:
            error = TransientProviderError if exc.retryable else ProviderError
            raise error(f"{doing}: {exc}") from None

    # ------------------------------------------------------------ inventory

    def details(self) -> HostFacts:
        """Everything the host holds: volumes, switches, VMs with disks, NICs and checkpoints."""
        try:
            facts = read_host(self.winrm)
        except PowerShellError as exc:
            raise ProviderError(
                f"reading the inventory of {self.config.host} failed: {exc.message}"
            ) from None
        except WinRMError as exc:
            raise (TransientProviderError if exc.retryable else ProviderError)(str(exc)) from None
        self._hostname = facts.name
        return facts

    def inventory(self) -> Inventory:
        """Volumes are the datastores (``D:``); switches the networks; every VM's name, ours or not."""
        facts = self.details()
        datastores = {f"{v.letter}:": DatastoreInfo(f"{v.letter}:", v.size, v.free) for v in facts.volumes}
        return Inventory(
            provider=self.name,
            type=self.type,
            hosts=(facts.name,),
            datastores=datastores,
            networks=tuple(s.name for s in facts.switches),
            vms=tuple(vm.name for vm in facts.vms),
            limits=Limits(
                max_nics=12,
                max_disks_per_appliance=MAX_DISKS_PER_APPLIANCE,
                firmware=("bios", "uefi"),
                disk_formats=FORMATS,
                native_format="vhdx",
                max_memory=facts.memory or None,
                appliance_modes=("shared", "dedicated", "host"),
            ),
            default_datastore=self._default_datastore(facts),
        )

    def host_for(self, requested: str | None) -> str:
        name = self._host_name()
        if requested not in (None, name, self.config.host):
            raise ProviderError(
                f"hyperv provider {self.name} reaches one host, {name} ({self.config.host}); "
                "remove target.host "
                "or add a provider for that host"
            )
        return name

    def _host_name(self) -> str:
        if self._hostname is None:
            host = self._run(scripts.HOST, {}, "reading the host's name") or {}
            self._hostname = host.get("ComputerName") or self.config.host
        return self._hostname

    def _default_datastore(self, facts: HostFacts | None = None) -> str:
        if self.config.vm_path:
            return self.config.vm_path[:2].upper()
        path = (facts.vhd_path if facts else "") or "C:"
        return path[:2].upper()

    # ------------------------------------------------------------ appliances

    def provision_appliance(self, host: str, name: str) -> ApplianceRef:
        """The configured appliance VM, or one made from appliance_template (appliance.py); with an
        appliance_login, returned once it lets the provider in over SSH (the writer runs there)."""
        made = self._provision_appliance(host, name)
        if self.appliances.configured:
            self.appliances.login(made.name)
        return made

    def _provision_appliance(self, host: str, name: str) -> ApplianceRef:
        with self._lock:
            found = self.find_appliance(host, name)
            if found is not None:
                return found
            config = self.config
            if config.appliance:
                raise ProviderError(
                    f"the appliance VM {config.appliance} named in provider {self.name} does not exist on "
                    f"{config.host}; create it there or fix appliance:"
                )
            if not config.appliance_template:
                raise ProviderError(
                    f"provider {self.name} has no recovery appliance: name an existing appliance VM with "
                    "appliance:, or an appliance VHDX to make one from with appliance_template:"
                )
            if not config.appliance_switch:
                raise ProviderError(
                    f"provider {self.name}: an appliance made from appliance_template needs a NIC the "
                    "provider can reach it through; set appliance_switch to a virtual switch of the host"
                )
            _check_file_name(name, "appliance")
            facts = self.details()
            if facts.vm(name) is not None:
                raise ProviderError(
                    f"a VM named {name} already exists on {facts.name} and is not an hvmigrate appliance; "
                    "it is never touched: remove or rename it"
                )
            if self._vhd(config.appliance_template) is None:
                raise ProviderError(
                    f"appliance template {config.appliance_template} does not exist on {config.host}; "
                    "copy the appliance VHDX there or fix appliance_template:"
                )
            system = self._appliance_system_disk(name)
            self._run(
                scripts.COPY_FILE,
                {"source": config.appliance_template, "path": system},
                f"copying the appliance template to {system}",
            )
            base = {"name": name}
            try:
                self._run(
                    scripts.NEW_VM,
                    {
                        **base,
                        "generation": 2,
                        "memory": -(-config.appliance_memory // MEMORY_STEP) * MEMORY_STEP,
                        "path": system.rsplit("\\", 1)[0],
                        "cpus": config.appliance_cpus,
                        "notes": f"{OWNER_PREFIX}provider={self.name};{ROLE}",
                    },
                    f"creating appliance {name}",
                )
                for _ in range(1, SCSI_CONTROLLERS):  # while it is off: a running VM gains no controller
                    self._run(scripts.ADD_SCSI_CONTROLLER, base, f"adding a SCSI controller to {name}")
                self._run(
                    scripts.ADD_DISK,
                    {**base, "path": system, "controller": "SCSI", "number": 0, "location": 0},
                    f"attaching its system disk to appliance {name}",
                )
                self._run(
                    scripts.add_nic(switch=True, static_mac=False),
                    {**base, "nic": "appliance", "legacy": False, "switch": config.appliance_switch},
                    f"adding the NIC of appliance {name}",
                )
                self._run(scripts.START_VM, base, f"starting appliance {name}")
            except ProviderError as exc:
                left = self._remove_half_made(name)
                self.winrm.run(scripts.REMOVE_FILE, {"path": system})
                raise ProviderError(f"{exc}; {left} and its system disk copy removed") from None
            return ApplianceRef(self.name, name, name, host)

    def _appliance_system_disk(self, name: str) -> str:
        """The copy of appliance_template an appliance boots, on the template's volume."""
        volume = self.config.appliance_template[:2] if self.config.appliance_template else None
        return self.disk_path(volume, f"{name}-system", "vhdx")

    def find_appliance(self, host: str, name: str) -> ApplianceRef | None:
        wanted = self.config.appliance or name
        vm = self._vm_named(wanted)
        if vm is None:
            return None
        if not self.config.appliance and not _is_our_appliance(vm):
            return None  # somebody else's VM of that name: not an appliance of ours
        return ApplianceRef(self.name, vm["Name"], vm["Name"], host)

    def release_appliance(self, appliance: ApplianceRef) -> None:
        """Refuses while replica disks are attached. Removes an appliance the tool made (and its system
        disk copy); one named in the provider config belongs to the administrator and stays."""
        with self._lock:
            vm = self._appliance_vm(appliance)
            system = self._appliance_system_disk(appliance.name)
            drives = listed(self._run(scripts.VM_DRIVES, {"name": vm["Name"]}, "reading its disks"))
            attached = sorted(
                d["Path"] for d in drives if self._is_replica_path(d.get("Path")) and d["Path"] != system
            )
            if attached:
                raise ProviderError(
                    f"appliance {appliance.name} still has {len(attached)} replica disk(s) attached "
                    f"({', '.join(attached)}); detach them first"
                )
            self.appliances.forget(appliance.name)
            if not _is_our_appliance(vm) or appliance.name == self.config.appliance:
                return
            if named(VM_STATE, vm["State"]) != "Off":
                self._run(scripts.STOP_VM["turnoff"], {"name": vm["Name"]}, f"stopping {appliance.name}")
            self._run(scripts.REMOVE_VM, {"name": vm["Name"]}, f"removing appliance {appliance.name}")
            if self._vhd(system) is not None:
                self._run(scripts.REMOVE_FILE, {"path": system}, f"deleting its system disk {system}")

    def _vm_named(self, name: str) -> dict[str, Any] | None:
        return next(
            (
                v
                for v in listed(self._run(scripts.VMS, {}, "listing VMs"))
                if v["Name"].lower() == name.lower()
            ),
            None,
        )

    def _appliance_vm(self, appliance: ApplianceRef) -> dict[str, Any]:
        if appliance.provider != self.name:
            raise ProviderError(
                f"appliance {appliance.name} belongs to provider {appliance.provider}, not {self.name}"
            )
        vm = self._vm_named(appliance.name)
        if vm is None:
            raise NotFound(f"appliance {appliance.name} does not exist on {self.config.host}")
        if appliance.name != self.config.appliance and not _is_our_appliance(vm):
            raise ProviderError(
                f"VM {appliance.name} is not an hvmigrate appliance; it is never changed by it"
            )
        return vm

    def _is_replica_path(self, path: str | None) -> bool:
        """A VHDX in the tool's disk folder (``vm_path``, or ``<volume>:\\hvmigrate``)."""
        if not path or "\\" not in path:
            return False
        folder = path.rsplit("\\", 1)[0].lower()
        return folder == (self.config.vm_path or "").rstrip("\\").lower() or folder == (
            f"{path[:2]}\\{DISK_FOLDER}".lower()
        )

    # ------------------------------------------------------------ disks

    def disk_path(self, datastore: str | None, name: str, fmt: str) -> str:
        """Disk ``name``'s VHDX: in ``vm_path`` when on that volume, else ``<volume>\\hvmigrate``."""
        _check_file_name(name, "disk")
        volume = (datastore or self._default_datastore()).rstrip("\\").upper()
        if len(volume) != 2 or not volume[0].isalpha() or volume[1] != ":":
            raise ProviderError(
                f"datastore {datastore!r} is not a volume of a Hyper-V host; use a drive such as D:"
            )
        if self.config.vm_path and self.config.vm_path[:2].upper() == volume:
            folder = self.config.vm_path.rstrip("\\")
        else:
            folder = f"{volume}\\{DISK_FOLDER}"
        return f"{folder}\\{name}.{fmt}"

    def create_disk(self, request: DiskRequest) -> DiskRef:
        """Idempotent by name. Thin is a dynamic VHDX; thick and eager_zeroed a fixed one."""
        fmt = request.format
        if fmt not in FORMATS:
            raise ProviderError(
                f"disk {request.name}: Hyper-V disks are vhdx or vhd, not {fmt}; use format: vhdx"
            )
        if request.size <= 0 or request.size % 512:
            raise ProviderError(
                f"disk {request.name}: size {request.size} is not a positive multiple of 512 bytes"
            )
        existing = self.find_disk(request)
        if existing is not None:
            if existing.size != request.size:
                raise ProviderError(
                    f"disk {request.name} already exists as {existing.id} with {existing.size} bytes, "
                    "not the "
                    f"{request.size} asked; delete it or rename it"
                )
            return existing
        path = self.disk_path(request.datastore, request.name, fmt)
        kind = "Dynamic" if request.provisioning == "thin" else "Fixed"
        self._run(scripts.NEW_VHD[kind], {"path": path, "size": request.size}, f"creating disk {path}")
        return DiskRef(self.name, path, request.name, request.size, fmt, path[:2].upper())

    def find_disk(self, request: DiskRequest) -> DiskRef | None:
        path = self.disk_path(request.datastore, request.name, request.format)
        vhd = self._vhd(path)
        if vhd is None:
            return None
        return DiskRef(self.name, path, request.name, int(vhd["Size"]), request.format, path[:2].upper())

    def _vhd(self, path: str) -> dict[str, Any] | None:
        if not self._run(scripts.TEST_PATH, {"path": path}, f"looking for {path}"):
            return None
        return self._run(scripts.GET_VHD, {"path": path}, f"reading disk {path}")

    def delete_disk(self, disk: DiskRef) -> None:
        """NotFound when already gone; the host refuses a disk a VM uses or that is mounted."""
        path = self._path_of(disk)
        if self._vhd(path) is None:
            raise NotFound(f"disk {disk.name} ({path}) does not exist on {self.config.host}")
        self._run(scripts.REMOVE_FILE, {"path": path}, f"deleting disk {path}")
        if self.config.host_device_dir:
            self._map_path(disk).unlink(missing_ok=True)
        # the block map the agent on the host kept (_host_map_path), and the lock file its writer held
        # there (Windows has no flock: mirror/portable_io.py)
        for kept in (f"{path}.hvmap", f"{path}.hvmap.lock"):
            if self._run(scripts.TEST_PATH, {"path": kept}, f"looking for {kept}"):
                self._run(scripts.REMOVE_FILE, {"path": kept}, f"deleting the block map file {kept}")

    def clone_disk(self, source: DiskRef, request: DiskRequest) -> DiskRef:
        """Copy-Item of the VHDX between passes (the copy is the test cutover's point-in-time disk)."""
        existing = self.find_disk(request)
        if existing is not None:
            return existing
        origin = self._path_of(source)
        if self._vhd(origin) is None:
            raise NotFound(f"disk {source.name} ({origin}) does not exist on {self.config.host}")
        path = self.disk_path(request.datastore, request.name, request.format)
        self._run(scripts.COPY_FILE, {"source": origin, "path": path}, f"copying {origin} to {path}")
        return DiskRef(self.name, path, request.name, source.size, request.format, path[:2].upper())

    def _path_of(self, disk: DiskRef) -> str:
        """A DiskRef's VHDX, from its datastore and name (never from a path a journal could carry)."""
        if disk.provider != self.name:
            raise ProviderError(f"disk {disk.name} belongs to provider {disk.provider}, not {self.name}")
        return self.disk_path(disk.datastore, disk.name, disk.format)

    def _host_map_path(self, disk: DiskRef) -> str:
        """The disk's block map on the host, beside its VHDX, as the agent there opens it: Win32 reads
        ``/`` as ``\\``, and so does a test bed whose volumes are folders."""
        return f"{self._path_of(disk)}.hvmap".replace("\\", "/")

    def _map_path(self, disk: DiskRef) -> Path:
        assert self.config.host_device_dir is not None
        return Path(self.config.host_device_dir) / f"{disk.datastore[0]}-{disk.name}.{disk.format}.hvmap"

    # ------------------------------------------------------------ the data plane's access

    def attach_disk(self, appliance: ApplianceRef | None, disk: DiskRef) -> DiskEndpoint:
        """Mount the VHDX on the host without a drive letter (``appliance`` None), else hot-add it to the
        appliance on SCSI; idempotent (a mounted or attached one is reused)."""
        if appliance is not None:
            return self._attach_to_appliance(appliance, disk)
        path = self._path_of(disk)
        vhd = self._vhd(path)
        if vhd is None:
            raise NotFound(f"disk {disk.name} ({path}) does not exist on {self.config.host}; create it first")
        number = vhd.get("DiskNumber")
        if number is None:
            mounted = self._run(scripts.MOUNT_VHD, {"path": path}, f"mounting {path} on the host")
            number = (mounted or {}).get("DiskNumber")
            if number is None:
                raise ProviderError(f"Mount-VHD of {path} reported no disk number; dismount it and try again")
        # offline, so that the host mounts no volume of it while the agent writes (asked again when a
        # mounted disk is reused: something may have brought it online since)
        self._run(
            scripts.SET_DISK_OFFLINE, {"number": int(number)}, f"setting disk {int(number)} ({path}) offline"
        )
        device = f"\\\\.\\PhysicalDrive{int(number)}"
        host = self._host_name()
        if self.config.python or self.config.transport == "local":  # the agent on the host keeps it
            map_path: str | None = self._host_map_path(disk)
        elif self.config.host_device_dir:
            map_path = str(self._map_path(disk))
        else:
            map_path = None
        if self.config.host_device_dir:
            # A test bed sees the mounted disk as a file: staging (and, without python, the data plane)
            # reach it from here.
            local = Path(self.config.host_device_dir) / f"PhysicalDrive{int(number)}"
            return DiskEndpoint(
                "file",
                str(local),
                disk.size,
                host="local",
                transport={"device": device, "vhd": path, "map_path": map_path},
            )
        return DiskEndpoint(
            "block",
            device,
            disk.size,
            host=host,
            transport={"device": device, "vhd": path, "map_path": map_path},
        )

    def _attach_to_appliance(self, appliance: ApplianceRef, disk: DiskRef) -> DiskEndpoint:
        """Add-VMHardDiskDrive on the first free SCSI location of the running appliance (never one its
        own disks hold); the endpoint once the guest shows the device (with an appliance_login)."""
        # the login waits for the appliance's boot, so it comes before the provider's lock
        login = self.appliances.login(appliance.name) if self.appliances.configured else None
        path = self._path_of(disk)
        with self._lock:
            vhd = self._vhd(path)
            if vhd is None:
                raise NotFound(
                    f"disk {disk.name} ({path}) does not exist on {self.config.host}; create it first"
                )
            vm = self._appliance_vm(appliance)
            base = {"name": vm["Name"]}
            drives = listed(self._run(scripts.VM_DRIVES, base, f"reading the disks of {appliance.name}"))
            mine = drive_at(drives, path)
            if mine is None:
                check_hot_add(appliance.name, vhd, path)
                controllers = len(
                    listed(
                        self._run(scripts.SCSI_CONTROLLERS, base, f"reading SCSI controllers of {vm['Name']}")
                    )
                )
                free = free_scsi_slot(drives, controllers)
                if free is None:
                    raise ProviderError(
                        f"appliance {appliance.name} has no free SCSI location on its {controllers} "
                        "controller(s); detach disks, or use appliance: dedicated"
                    )
                if login is not None:  # a map of an earlier attachment is never trusted
                    self.appliances.sweep_maps(login, path)
                number, location = free
                self._run(
                    scripts.ADD_DISK,
                    {**base, "path": path, "controller": "SCSI", "number": number, "location": location},
                    f"hot-adding {path} to appliance {appliance.name} on SCSI {number}:{location}",
                )
                mine = {"ControllerNumber": number, "ControllerLocation": location}
            slot = slot_of(mine)
        if login is not None:
            self.appliances.device(login, appliance.name, slot, disk.size, path)
        transport: dict[str, Any] = {"appliance": appliance.name, "scsi": slot, "vhd": path}
        if self.appliances.configured:
            transport["map_path"] = self.appliances.map_path(path)
        return DiskEndpoint("block", f"scsi:{slot}", disk.size, host=appliance.name, transport=transport)

    def _appliance_writer(self, endpoint: DiskEndpoint) -> AgentLocation:
        """The appliance's SSH login and the device it shows for the disk's slot now (looked up again
        each pass: a rescan or a reboot of the appliance may rename it)."""
        name, path = endpoint.host, str(endpoint.transport.get("vhd"))
        if not self.appliances.configured:
            raise ProviderError(
                f"disk {path} is attached to appliance {name} at SCSI {endpoint.transport.get('scsi')}, and "
                f"the writer runs inside it over SSH: set appliance_login on provider {self.name} (user, "
                "key, host_key or known_hosts)"
            )
        login = self.appliances.login(name)
        drives = listed(self._run(scripts.VM_DRIVES, {"name": name}, f"reading the disks of {name}"))
        mine = drive_at(drives, path)
        if mine is None:
            raise ProviderError(
                f"disk {path} is not attached to appliance {name} any more; run the attach_disks step "
                "again (migrate execute)"
            )
        device = self.appliances.device(login, name, slot_of(mine), endpoint.size, path)
        return AgentLocation(login, device)

    def writer_location(self, endpoint: DiskEndpoint) -> AgentLocation | None:
        """In the appliance over SSH; else the agent on the host writing the mounted disk (``python``);
        None: this machine writes it."""
        if "appliance" in endpoint.transport:
            return self._appliance_writer(endpoint)
        device = endpoint.transport.get("device", endpoint.path)
        agent = agent_transport_for(self.config, self.winrm)
        if agent is not None:
            return AgentLocation(agent, device)
        if endpoint.kind == "file":
            return None  # host_device_dir without python: this machine writes the mounted disk itself
        raise ProviderError(
            f"writing {device} needs the hvmigrate agent on Hyper-V host {self.config.host}: install "
            "CPython 3.8+ there and set python on provider "
            f"{self.name} to its python.exe (C:\\Python311\\python.exe)"
        )

    def detach_disk(self, appliance: ApplianceRef | None, disk: DiskRef) -> None:
        """Dismount-VHD, or Remove-VMHardDiskDrive from the appliance (the VHDX is kept); idempotent (a
        disk not mounted or attached, or gone, is detached)."""
        if appliance is not None:
            self._detach_from_appliance(appliance, disk)
            return
        path = self._path_of(disk)
        vhd = self._vhd(path)
        if vhd is not None and vhd.get("DiskNumber") is not None:
            self._run(scripts.DISMOUNT_VHD, {"path": path}, f"dismounting {path}")

    def _detach_from_appliance(self, appliance: ApplianceRef, disk: DiskRef) -> None:
        path = self._path_of(disk)
        with self._lock:
            try:
                vm = self._appliance_vm(appliance)
            except NotFound:
                return
            drives = listed(self._run(scripts.VM_DRIVES, {"name": vm["Name"]}, "reading its disks"))
            mine = drive_at(drives, path)
            if mine is None:
                return
            if self.appliances.configured:  # what the guest may still cache for it, before it goes
                self.appliances.flush(appliance.name, slot_of(mine))
            self._run(
                scripts.REMOVE_DISK,
                {
                    "name": vm["Name"],
                    "controller": "SCSI",
                    "number": int(mine["ControllerNumber"]),
                    "location": int(mine["ControllerLocation"]),
                },
                f"hot-removing {path} from appliance {appliance.name}",
            )

    # ------------------------------------------------------------ VMs

    def create_vm(self, request: VmRequest) -> VmRef:
        """Checks every Hyper-V rule first, then builds the VM; a failure half-way removes what was made."""
        name = request.name
        if not name or len(name) > MAX_NAME:
            raise ProviderError(f"VM name {name!r} must have 1 to {MAX_NAME} characters on Hyper-V")
        generation = request.generation or (2 if request.firmware == "uefi" else 1)
        if (generation, request.firmware) in ((1, "uefi"), (2, "bios")):
            raise ProviderError(
                f"VM {name}: generation {generation} boots {'BIOS' if generation == 1 else 'UEFI'} only, not "
                f"{request.firmware}; use generation {1 if request.firmware == 'bios' else 2}"
            )
        facts = self.details()
        existing = facts.vm(name)
        if existing is not None:
            if not existing.owned:
                raise ProviderError(
                    f"a VM named {name!r} already exists on {facts.name} and was not created by "
                    "hvmigrate; it is "
                    "never overwritten: choose another vm_name (or remove that VM yourself)"
                )
            raise ProviderError(
                f"VM {name!r} already exists on {facts.name}; delete it or choose another vm_name"
            )
        disks = place_disks(request, generation)
        nics = place_nics(request, generation, {s.name for s in facts.switches})
        paths = [self._path_of(disk) for disk in request.disks]
        if self.config.vm_path:
            home = self.config.vm_path
        else:
            volume = (request.datastore or self._default_datastore(facts)).rstrip("\\").upper()
            home = f"{volume}\\{DISK_FOLDER}"
        memory = -(-request.memory // MEMORY_STEP) * MEMORY_STEP
        notes = f"{OWNER_PREFIX}provider={self.name};" + ";".join(
            f"{k}={v}" for k, v in sorted(request.tags.items())
        )
        base = {"name": name}
        try:
            self._run(
                scripts.NEW_VM,
                {
                    **base,
                    "generation": generation,
                    "memory": memory,
                    "path": home,
                    "cpus": request.cpus,
                    "notes": notes,
                },
                f"creating VM {name}",
            )
            if generation == 1:
                self._run(scripts.REMOVE_GEN1_DVD, base, f"removing the DVD drive of VM {name}")
            scsi_needed = 1 + max((n for c, n, _ in disks if c == "SCSI"), default=-1)
            have = len(
                listed(self._run(scripts.SCSI_CONTROLLERS, base, f"reading SCSI controllers of {name}"))
            )
            for _ in range(have, scsi_needed):
                self._run(scripts.ADD_SCSI_CONTROLLER, base, f"adding a SCSI controller to VM {name}")
            for path, (controller, number, location) in zip(paths, disks, strict=True):
                self._run(
                    scripts.ADD_DISK,
                    {**base, "path": path, "controller": controller, "number": number, "location": location},
                    f"attaching {path} to VM {name} on {controller} {number}:{location}",
                )
            for index, nic in enumerate(nics):
                data = {**base, "nic": f"nic{index}", "legacy": nic.legacy}
                if nic.switch is not None:
                    data["switch"] = nic.switch
                if nic.mac is not None:
                    data["mac"] = nic.mac
                body = scripts.add_nic(switch=nic.switch is not None, static_mac=nic.mac is not None)
                self._run(body, data, f"adding NIC {index} to VM {name}")
                if nic.vlan:
                    self._run(
                        scripts.SET_VLAN,
                        {**base, "nic": f"nic{index}", "vlan": nic.vlan},
                        f"setting VLAN {nic.vlan} on NIC {index} of VM {name}",
                    )
        except ProviderError as exc:
            raise ProviderError(f"{exc}; {self._remove_half_made(name)}") from None
        return VmRef(self.name, name, name)

    def _remove_half_made(self, name: str) -> str:
        """Remove the VM this call began (its name was free before); say what was left behind."""
        try:
            if not any(v["Name"].lower() == name.lower() for v in read_vms(self.winrm)):
                return "nothing was left behind"
            self.winrm.run(scripts.REMOVE_VM, {"name": name})
        except (PowerShellError, WinRMError) as exc:
            return f"the half-made VM {name!r} could not be removed ({exc}); remove it with Remove-VM"
        return f"the half-made VM {name!r} was removed"

    def find_vm(self, name: str) -> VmRef | None:
        """The tool's own VM ``name``; a VM of that name it did not create is not found."""
        for vm in listed(self._run(scripts.VMS, {}, "listing VMs")):
            if (
                vm["Name"].lower() == name.lower()
                and (vm.get("Notes") or "").startswith(OWNER_PREFIX)
                and not _is_our_appliance(vm)
            ):
                return VmRef(self.name, vm["Name"], vm["Name"])
        return None

    def _state(self, vm: VmRef) -> dict[str, Any]:
        if vm.provider != self.name:
            raise ProviderError(f"VM {vm.name} belongs to provider {vm.provider}, not {self.name}")
        found = next(
            (v for v in listed(self._run(scripts.VMS, {}, "listing VMs")) if v["Name"] == vm.name), None
        )
        if found is None:
            raise NotFound(f"VM {vm.name} does not exist on {self.config.host}")
        if not (found.get("Notes") or "").startswith(OWNER_PREFIX):
            raise ProviderError(
                f"VM {vm.name} on {self.config.host} was not created by hvmigrate; it is never changed by it"
            )
        found["StateName"] = named(VM_STATE, found["State"])
        return found

    def delete_vm(self, vm: VmRef) -> None:
        """Refuses a running VM. Remove-VM keeps the VHDX files: the replica disks outlive the VM."""
        if self._state(vm)["StateName"] != "Off":
            raise ProviderError(f"VM {vm.name} is running; power it off first")
        self._run(scripts.REMOVE_VM, {"name": vm.name}, f"removing VM {vm.name}")

    def power_on(self, vm: VmRef) -> None:
        if self._state(vm)["StateName"] == "Running":
            return
        self._run(scripts.START_VM, {"name": vm.name}, f"starting VM {vm.name}")

    def power_off(self, vm: VmRef, *, force: bool = False) -> None:
        """``force`` turns it off at once; otherwise a guest shutdown within ``shutdown_timeout``."""
        if self._state(vm)["StateName"] == "Off":
            return
        body = scripts.STOP_VM["turnoff" if force else "shutdown"]
        self._run(body, {"name": vm.name}, f"stopping VM {vm.name}")
        deadline = time.monotonic() + self.config.shutdown_timeout
        while self._state(vm)["StateName"] != "Off":
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"VM {vm.name} did not shut down within {self.config.shutdown_timeout:.0f} s; "
                    "power it off "
                    "with force, or raise shutdown_timeout"
                )
            time.sleep(POLL)

    def wait_booted(self, vm: VmRef, timeout: float) -> BootReport:
        """Up means the guest's heartbeat, not "Running": Hyper-V runs a VM whose guest never boots.

        The integration services' heartbeat (hv_utils in Linux kernels, built into Windows) says the
        guest is up; the addresses come from its KVP daemon (Debian: hyperv-daemons) where it runs one.
        The host does not tell the guest's hostname without WMI, so the report has none.
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self._state(vm)
            running = state["StateName"] == "Running"
            beat = state.get("Heartbeat")
            heartbeat = named(HEARTBEAT, beat) if beat is not None else None
            if running and heartbeat and heartbeat.startswith("Ok"):
                return self._guest_report(vm, heartbeat)
            if time.monotonic() >= deadline:
                if not running:
                    return BootReport(
                        running=False, detail=f"VM {vm.name} is {state['StateName']}, not running"
                    )
                return BootReport(
                    running=False,
                    detail=f"VM {vm.name} runs but its guest gave no heartbeat (heartbeat "
                    f"{heartbeat or 'none'}): it did not boot, or it has no Hyper-V integration services; "
                    "look at its console in Hyper-V Manager",
                )
            time.sleep(POLL)

    def _guest_report(self, vm: VmRef, heartbeat: str) -> BootReport:
        nics = listed(
            self._run(scripts.VM_ADDRESSES, {"name": vm.name}, f"reading the addresses of {vm.name}")
        )
        addresses = tuple(a for nic in nics for a in (nic.get("IPAddresses") or ()))
        detail = f"running; heartbeat {heartbeat}; " + (
            f"the guest reports {', '.join(addresses)}"
            if addresses
            else "no addresses reported (no KVP daemon in the guest: Debian's hyperv-daemons)"
        )
        return BootReport(running=True, addresses=addresses, detail=detail)

    def close(self) -> None:
        self.appliances.close()
        self.winrm.close()


def _is_our_appliance(vm: dict[str, Any]) -> bool:
    notes = vm.get("Notes") or ""
    return notes.startswith(OWNER_PREFIX) and ROLE in notes.split(";")


def _check_file_name(name: str, what: str) -> None:
    """Disk names become file names on the host: letters, digits, '-', '_' and '.' only."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name or ""):
        raise ProviderError(
            f"{what} name {name!r} cannot be a Hyper-V file name: use letters, digits, '-', '_' and '.'"
        )
