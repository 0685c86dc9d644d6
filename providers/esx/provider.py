"""The ESX target: vCenter or a standalone ESXi through pyVmomi (extra ``esx``).

It keeps the Provider contract as the simulator does (see providers/sim/provider.py): finds are idempotent
by name, creates refuse what already exists, deletes refuse what is still in use, and a VM's disks outlive
the VM. It never touches what it did not create: VMs carry ``hvmigrate.owner`` in their extraConfig and
disks an ownership marker beside them (disks.py); anything else of the same name is refused, never adopted,
changed or removed. An appliance VM named in the provider config is used, never removed.

The data plane writes a replica disk through the recovery appliance it is hot-added to (ReconfigVM with
an existing-disk backing; never SCSI 0:0, which holds the appliance's own disk; controllers added as
needed, SCSI first, then SATA, up to MAX_DISKS_PER_APPLIANCE, the planner's slots). The provider's
``disk_writer`` says how that disk is written:

- ``appliance`` (the default): a ``block`` endpoint naming the appliance and the disk's ``bus:unit``; the
  agent's writer runs inside the appliance, reached over SSH at the address VMware Tools report with the
  provider's ``appliance_login`` (host key checked), and writes the device it finds there for that slot,
  its block map on the appliance's root (appliance_access.py, sharing providers/appliance_guest.py with
  the KVM appliance);
- ``datastore_path`` (test beds): the datastore is a folder on this machine, as vcsim's are, and the
  endpoint is the VMDK's ``-flat.vmdk`` there, written in-process. The disk is hot-added all the same, so
  the appliance's configuration is what it would be; the flat file stands for the device the appliance
  sees. A datastore that is not a local folder is refused with this mode, never written some other way.

``appliance: host`` is the cold path (cold.py): no appliance; each replica disk is built as a local image
on this machine and uploaded through the datastore's HTTP interface when a VM is created on it, so only
for sources that stand still (the limits say ``cold_host``; validation refuses a live source).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from pyVmomi import vim, vmodl

from orchestrator.playbook.models import EsxProviderConfig
from providers.base import (
    AgentLocation,
    ApplianceRef,
    BootReport,
    DiskEndpoint,
    DiskRef,
    DiskRequest,
    Inventory,
    Limits,
    NotFound,
    ProviderError,
    VmRef,
    VmRequest,
)

from . import vms as hardware
from .appliance_access import ApplianceAccess
from .cold import ColdImages
from .connection import Connection
from .disks import DiskPlace, DiskStore, check_name, split_datastore_path
from .inventory import OWNER_KEY, OWNER_VALUE, PROVIDER_KEY, ROLE_KEY, EsxInventory, Scope, extra_config
from .tasks import run_task

MAX_NICS = 10  # vmx hardware version 7 and later
MAX_DISKS_PER_APPLIANCE = 60
MIN_MEMORY = 32 * 1024**2
BOOT_POLL = 1.0
GUEST_IDS = {"linux": "otherLinux64Guest", "windows": "windows9Server64Guest"}


class EsxProvider:
    """pyVmomi behind the Provider protocol; see the module docstring."""

    type = "esx"

    def __init__(self, name: str, config: EsxProviderConfig) -> None:
        self.name = name
        self.config = config
        self.connection = Connection(config)
        self.scope = Scope(self.connection, config.datacenter, config.cluster)
        self.disks = DiskStore(
            name, self.scope, config.disk_folder, self._default_datastore, config.task_timeout
        )
        self._lock = threading.RLock()
        self.appliances = ApplianceAccess(self)
        self.cold = ColdImages(self)

    def __repr__(self) -> str:
        return f"EsxProvider({self.name!r}, {self.config.user}@{self.connection.where})"

    @property
    def where(self) -> str:
        return self.connection.where

    def _task(self, start: Any, what: str) -> Any:
        return run_task(self.connection, start, what, self.config.task_timeout)

    # ------------------------------------------------------------ inventory

    def details(self) -> EsxInventory:
        """Everything the provider sees (hosts with version and state, port groups with VLAN, ...)."""
        return self.scope.describe()

    def inventory(self) -> Inventory:
        """Datastores' free bytes count thin disks at their full size (free minus uncommitted)."""
        facts = self.details()
        datastores = facts.datastore_infos()
        return Inventory(
            provider=self.name,
            type=self.type,
            hosts=tuple(h.name for h in facts.hosts),
            datastores=datastores,
            networks=tuple(p.name for p in facts.port_groups),
            vms=tuple(v.name for v in facts.vms if not v.template),
            limits=Limits(
                max_nics=MAX_NICS,
                max_disks_per_appliance=MAX_DISKS_PER_APPLIANCE,
                firmware=("bios", "uefi"),
                disk_formats=("vmdk",),
                native_format="vmdk",
                appliance_modes=("shared", "dedicated", "host"),
                cold_host=True,
            ),
            default_datastore=self.config.datastore if self.config.datastore in datastores else None,
            unavailable_hosts=facts.unavailable_hosts(),
        )

    def host_for(self, requested: str | None) -> str:
        """A host of the datacenter (or cluster) by name; without one, the configured esx_host, else the
        cluster (DRS places the VM; the cluster names the slot and the shared appliance), else the only
        host."""
        wanted = requested or self.config.esx_host
        hosts = {props["name"]: props for _, props in self.scope.hosts()}
        if wanted is not None:
            if wanted in hosts:
                return wanted
            if self.config.cluster and wanted == self.config.cluster:
                return wanted
            raise ProviderError(
                f"host {wanted} is not in {self._scope_name()} "
                f"(hosts: {', '.join(sorted(hosts)) or 'none'}); "
                "fix target.host or the provider's esx_host"
            )
        if self.config.cluster:
            return self.config.cluster
        if len(hosts) == 1:
            return next(iter(hosts))
        clusters = self.scope.named(vim.ClusterComputeResource)
        if len(clusters) == 1:
            return next(iter(clusters))
        raise ProviderError(
            f"{self._scope_name()} has {len(hosts)} hosts; name one with target.host or the provider's "
            "esx_host, or a cluster with cluster:"
        )

    def _scope_name(self) -> str:
        dc = self.scope.datacenter_name
        return (
            f"cluster {self.config.cluster} of datacenter {dc}" if self.config.cluster else f"datacenter {dc}"
        )

    def _placement(self, host: str | None) -> tuple[vim.ResourcePool, vim.HostSystem | None]:
        """The resource pool (and host, when one is named) a new VM goes to."""
        name = self.host_for(host)
        found = {props["name"]: obj for obj, props in self.scope.hosts()}
        target = found.get(name)
        compute = self.connection.call(lambda: target.parent, "reading a host") if target else None
        if compute is None:
            clusters = self.scope.named(vim.ClusterComputeResource)
            compute = clusters[name][0]
        pool = self.connection.call(lambda: compute.resourcePool, "reading a resource pool")
        if self.config.resource_pool:
            pools = self.scope.named(vim.ResourcePool)
            if self.config.resource_pool not in pools:
                raise ProviderError(
                    f"resource pool {self.config.resource_pool} does not exist in datacenter "
                    f"{self.scope.datacenter_name} (pools: {', '.join(sorted(pools))}); fix resource_pool:"
                )
            pool = pools[self.config.resource_pool][0]
        return pool, target

    def _folder(self) -> vim.Folder:
        root = self.connection.call(lambda: self.scope.datacenter.vmFolder, "reading the VM folder")
        if not self.config.folder:
            return root
        folders = self.scope.named(vim.Folder)
        if self.config.folder not in folders:
            raise ProviderError(
                f"VM folder {self.config.folder} does not exist in datacenter {self.scope.datacenter_name}; "
                "create it or fix folder:"
            )
        return folders[self.config.folder][0]

    def _default_datastore(self) -> str:
        if self.config.datastore:
            return self.config.datastore
        names = [d.name for d in self.scope.datastores() if d.accessible]
        if len(names) == 1:
            return names[0]
        raise ProviderError(
            f"datacenter {self.scope.datacenter_name} has {len(names)} datastores ({', '.join(names)}); "
            "name the disk's datastore: or the provider's datastore:"
        )

    def _free(self, datastore: str) -> int:
        _, facts = self.scope.datastore(datastore)
        return max(0, facts.free - facts.uncommitted)

    # ------------------------------------------------------------ disks

    def create_disk(self, request: DiskRequest) -> DiskRef:
        with self._lock:
            datastore = request.datastore or self._default_datastore()
            return self.disks.create(request, self._free(datastore))

    def find_disk(self, request: DiskRequest) -> DiskRef | None:
        return self.disks.find(request)

    def delete_disk(self, disk: DiskRef) -> None:
        with self._lock:
            place = self.disks.place_of(disk)
            self.disks.delete(disk, self._user_of(place.path))
            self.cold.discard(place)

    def clone_disk(self, source: DiskRef, request: DiskRequest) -> DiskRef:
        with self._lock:
            datastore = request.datastore or self._default_datastore()
            clone = self.disks.clone(source, request, self._free(datastore))
            # appliance: host keeps the replica as a local image until a VM uses it: the clone takes a
            # copy of it, uploaded when the test copy's VM is created
            self.cold.copy(self.disks.place_of(source), self.disks.place_of(clone))
            return clone

    def upload_disk(self, image: Path, request: DiskRequest, progress: Any = None) -> DiskRef:
        """The cold path (upload.py): a finished image uploaded as a flat VMDK, no appliance needed."""
        from .upload import Uploader

        with self._lock:
            datastore = request.datastore or self._default_datastore()
            return Uploader(self.disks).upload(Path(image), request, self._free(datastore), progress)

    def _vm_disks(self) -> dict[str, str]:
        """Datastore path of every VMDK any VM of the datacenter uses -> that VM's name."""
        from .inventory import collect

        users: dict[str, str] = {}
        found = collect(
            self.connection, self.scope.datacenter, vim.VirtualMachine, ["name", "config.hardware.device"]
        )
        for _, props in found:
            for device in props.get("config.hardware.device") or ():
                if isinstance(device, vim.vm.device.VirtualDisk):
                    path = getattr(device.backing, "fileName", None)
                    if path:
                        users.setdefault(path, props["name"])
        return users

    def _other_user(self, path: str, skip: vim.VirtualMachine) -> str | None:
        """The VM other than ``skip`` that uses the VMDK at ``path``, or None. Only VMs with files on
        that datastore are read (``VirtualMachine.datastore``), so a hot-add to an appliance already
        holding many disks does not read every VM's devices again."""
        from .inventory import collect

        datastore, _ = split_datastore_path(path)
        store, _ = self.scope.datastore(datastore)
        found = collect(self.connection, self.scope.datacenter, vim.VirtualMachine, ["name", "datastore"])
        for vm, props in found:
            if vm._moId == skip._moId or store._moId not in {d._moId for d in props.get("datastore") or ()}:
                continue
            if _disk_at(self._devices(vm, f"reading the devices of VM {props['name']}"), path) is not None:
                return str(props["name"])
        return None

    def _user_of(self, path: str) -> str | None:
        user = self._vm_disks().get(path)
        return f"VM {user}" if user else None

    # ------------------------------------------------------------ appliances

    def provision_appliance(self, host: str, name: str) -> ApplianceRef:
        """The configured appliance VM, or a clone of appliance_template made for this host; with an
        appliance_login, returned once it lets the provider in over SSH (the writer runs there)."""
        made = self._provision_appliance(host, name)
        if self._writes_in_appliance():
            self.appliances.login(made.name)
        return made

    def _provision_appliance(self, host: str, name: str) -> ApplianceRef:
        with self._lock:
            found = self.find_appliance(host, name)
            if found is not None:
                return found
            if self.config.appliance:
                raise ProviderError(
                    f"the appliance VM {self.config.appliance} named in provider {self.name} "
                    "does not exist in "
                    f"datacenter {self.scope.datacenter_name}; deploy it or fix appliance:"
                )
            if not self.config.appliance_template:
                raise ProviderError(
                    f"provider {self.name} has no recovery appliance: name an existing appliance VM with "
                    "appliance:, or a template to clone one from with appliance_template:"
                )
            check_name(name, "appliance")
            taken = self.scope.vm(name)
            if taken is not None:
                raise ProviderError(
                    f"a VM named {name} already exists in datacenter {self.scope.datacenter_name} and is not "
                    "an hvmigrate appliance; it is never touched: remove or rename it"
                )
            template = self.scope.vm(self.config.appliance_template)
            if template is None:
                raise ProviderError(
                    f"appliance template {self.config.appliance_template} does not exist in datacenter "
                    f"{self.scope.datacenter_name}; import it or fix appliance_template:"
                )
            pool, target = self._placement(host)
            relocate = vim.vm.RelocateSpec(pool=pool, host=target)
            if self.config.datastore:
                relocate.datastore = self.scope.datastore(self.config.datastore)[0]
            spec = vim.vm.CloneSpec(
                location=relocate,
                powerOn=False,
                template=False,
                config=vim.vm.ConfigSpec(extraConfig=_owner_options(self.name, "appliance", {})),
            )
            folder = self._folder()
            result = self._task(
                lambda: template[0].CloneVM_Task(folder=folder, name=name, spec=spec),
                f"cloning appliance {name} from template {self.config.appliance_template}",
            )
            clone = vim.VirtualMachine(result._moId, self.connection.stub)
            # Powered on as its own task (not CloneSpec.powerOn): the writer inside it must run.
            self._task(lambda: clone.PowerOnVM_Task(), f"powering on appliance {name}")
            return ApplianceRef(self.name, result._moId, name, host)

    def find_appliance(self, host: str, name: str) -> ApplianceRef | None:
        wanted = self.config.appliance or name
        found = self.scope.vm(wanted)
        if found is None:
            return None
        _, facts = found
        if not self.config.appliance and not (facts.owned and facts.role == "appliance"):
            return None  # somebody else's VM of that name: not an appliance of ours
        return ApplianceRef(self.name, facts.moref, facts.name, host)

    def release_appliance(self, appliance: ApplianceRef) -> None:
        """Refuses while replica disks are attached. Removes an appliance the tool cloned; one named in
        the provider config belongs to the administrator and stays."""
        with self._lock:
            vm, facts = self._appliance_vm(appliance)
            attached = [d for d in hardware.disks_of(vm) if self._is_replica_path(hardware.backing_path(d))]
            if attached:
                names = ", ".join(
                    sorted(
                        Path(split_datastore_path(hardware.backing_path(d) or "")[1]).stem for d in attached
                    )
                )
                raise ProviderError(
                    f"appliance {appliance.name} still has {len(attached)} replica disk(s) attached "
                    f"({names}); "
                    "detach them first"
                )
            if not facts.owned:
                return
            self.appliances.forget(appliance.name)
            if facts.power_state == "poweredOn":
                self._task(lambda: vm.PowerOffVM_Task(), f"powering off appliance {appliance.name}")
            self._task(lambda: vm.Destroy_Task(), f"removing appliance {appliance.name}")

    def _appliance_vm(self, appliance: ApplianceRef) -> tuple[vim.VirtualMachine, Any]:
        if appliance.provider != self.name:
            raise ProviderError(
                f"appliance {appliance.name} belongs to provider {appliance.provider}, not {self.name}"
            )
        found = self.scope.vm(appliance.name)
        if found is None:
            raise NotFound(
                f"appliance {appliance.name} does not exist in datacenter {self.scope.datacenter_name}"
            )
        vm, facts = found
        if appliance.name != self.config.appliance and not (facts.owned and facts.role == "appliance"):
            raise ProviderError(
                f"VM {appliance.name} is not an hvmigrate appliance; it is never changed by it"
            )
        return vm, facts

    def _is_replica_path(self, path: str | None) -> bool:
        if not path:
            return False
        try:
            _, inside = split_datastore_path(path)
        except ProviderError:
            return False
        return inside.startswith(self.disks.disk_folder + "/")

    # ------------------------------------------------------------ the data plane's access

    def attach_disk(self, appliance: ApplianceRef | None, disk: DiskRef) -> DiskEndpoint:
        """Hot-add the VMDK to the appliance (existing-disk backing, never SCSI 0:0, the appliance's own).

        Idempotent: a disk already on this appliance gives the same endpoint again.
        """
        if appliance is None:
            place = self._existing_place(disk)
            if self.config.disk_writer == "datastore_path":  # this machine writes the datastore's files
                transport = {"vmdk": place.path, "disk_writer": self.config.disk_writer}
                return self._flat_endpoint(disk, place, transport)
            return self.cold.endpoint(disk, place)  # appliance: host: the disk's local image (cold.py)
        # the login waits for the appliance's boot, so it comes before the provider's lock
        login = self.appliances.login(appliance.name) if self._writes_in_appliance() else None
        with self._lock:
            place = self._existing_place(disk)
            vm, _ = self._appliance_vm(appliance)
            devices = self._devices(vm, "reading the appliance's devices")
            mine = _disk_at(devices, place.path)
            if mine is None:
                user = self._other_user(place.path, vm)
                if user:
                    raise ProviderError(
                        f"disk {disk.name} is attached to VM {user}; the data plane cannot write a disk "
                        "another VM uses: detach it there (or delete that VM, disks are kept) first"
                    )
                if login is not None:  # a map of an earlier attachment is never trusted
                    self.appliances.sweep_maps(login, place.path)
                mine, devices = self._hot_add(vm, appliance, devices, place.path, disk.size)
            slot = hardware.scsi_slot(devices, mine)
        if self.config.disk_writer == "appliance":  # datastore_path: _endpoint sizes it
            self._size_local_flat(disk, place)
        if login is not None:
            self.appliances.device(login, appliance.name, slot, disk.size, place.path)
        return self._endpoint(appliance, disk, place, slot)

    def _writes_in_appliance(self) -> bool:
        """disk_writer: appliance with a login: the writer runs in the appliance (without a login the
        disk is still hot-added, and writer_location says what to set)."""
        return self.config.disk_writer == "appliance" and self.appliances.configured

    def _existing_place(self, disk: DiskRef) -> DiskPlace:
        """Where ``disk`` is, refused unless it exists there (the data plane writes only made disks)."""
        place = self.disks.place_of(disk)
        if self.disks.find(DiskRequest(disk.name, disk.size, "vmdk", disk.datastore)) is None:
            raise NotFound(f"disk {disk.name} does not exist on datastore {place.datastore}; create it first")
        return place

    def _devices(self, vm: vim.VirtualMachine, what: str) -> list[Any]:
        """The VM's devices alone: reading ``vm.config`` whole costs a large SOAP answer per call."""
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=vm, skip=False)],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.VirtualMachine, pathSet=["config.hardware.device"], all=False
                )
            ],
        )

        def read() -> list[Any]:
            found = self.connection.content.propertyCollector.RetrieveContents([spec])
            return [d for item in found or () for p in item.propSet or () for d in p.val or ()]

        return self.connection.call(read, what)

    def _hot_add(
        self, vm: vim.VirtualMachine, appliance: ApplianceRef, devices: list[Any], path: str, size: int
    ) -> tuple[Any, list[Any]]:
        """The disk device now at ``path`` on the appliance, and the appliance's devices after the add."""
        disks = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
        if (
            sum(1 for d in disks if self._is_replica_path(hardware.backing_path(d)))
            >= MAX_DISKS_PER_APPLIANCE
        ):
            raise ProviderError(
                f"appliance {appliance.name} already has {MAX_DISKS_PER_APPLIANCE} replica disks "
                "attached (the "
                "limit); use appliance: dedicated or wait for a detach"
            )
        specs: list[Any] = []
        slot: tuple[int, int] | None = None
        for kind in (self.config.scsi_controller, "sata"):  # SCSI first; SATA once four SCSI are full
            slot = _free_slot(devices, disks, kind)
            if slot is not None:
                break
            controller = _new_controller(devices, kind)
            if controller is not None:
                specs.append(hardware.add(controller))
                own_disk = kind != "sata" and controller.busNumber == 0
                slot = (controller.key, 1 if own_disk else 0)
                break
        if slot is None:
            raise ProviderError(
                f"appliance {appliance.name} has no free SCSI or SATA slot left; detach disks first"
            )
        specs.append(hardware.add(hardware.disk_device(path, size, slot[0], slot[1], -201)))
        self._task(
            lambda: vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=specs)),
            f"hot-adding disk {path} to appliance {appliance.name}",
        )
        devices = self._devices(vm, "reading the appliance's devices")
        added = _disk_at(devices, path)
        if added is None:
            raise ProviderError(
                f"appliance {appliance.name} did not take disk {path}; check its tasks in vCenter"
            )
        return added, devices

    def _endpoint(self, appliance: ApplianceRef, disk: DiskRef, place: Any, slot: str) -> DiskEndpoint:
        transport = {
            "appliance": appliance.name,
            "scsi": slot,
            "vmdk": place.path,
            "disk_writer": self.config.disk_writer,
        }
        if self.config.disk_writer == "appliance":
            if self.appliances.configured:
                transport["map_path"] = self.appliances.map_path(place.path)
            return DiskEndpoint("block", f"scsi:{slot}", disk.size, host=appliance.name, transport=transport)
        return self._flat_endpoint(disk, place, transport)

    def _flat_endpoint(self, disk: DiskRef, place: Any, transport: dict[str, Any]) -> DiskEndpoint:
        """disk_writer: datastore_path: the VMDK's flat file in the datastore's local folder."""
        local = self._local_datastore_dir(place.datastore)
        if local is None:
            raise ProviderError(
                f"disk {disk.name}: disk_writer: datastore_path needs datastore {place.datastore} to be a "
                "folder on this machine (a test bed such as vcsim), and it is not; use disk_writer: appliance"
            )
        # The flat file stands for the disk inside the appliance (see the module docstring).
        flat = local / place.flat
        if not _sized_like_esxi(flat, disk.size):
            raise ProviderError(
                f"disk {disk.name}: {flat} is missing; the datastore folder does not hold the VMDK's flat "
                "file"
            )
        transport["datastore_path"] = str(flat)
        return DiskEndpoint("file", str(flat), disk.size, transport=transport)

    def _size_local_flat(self, disk: DiskRef, place: Any) -> None:
        """On a datastore that is a folder here (vcsim), the VMDK's flat file sized as ESXi sizes it."""
        local = self._local_datastore_dir(place.datastore)
        if local is not None:
            _sized_like_esxi(local / place.flat, disk.size)

    def _local_datastore_dir(self, datastore: str) -> Path | None:
        """The datastore's folder when it is a directory on this machine (vcsim), else None."""
        _, facts = self.scope.datastore(datastore)
        url = facts.url
        if url.startswith("file://"):
            url = url[len("file://") :]
        if "://" in url or not url.startswith("/"):
            return None
        path = Path(url)
        return path if path.is_dir() else None

    def writer_location(self, endpoint: DiskEndpoint) -> AgentLocation | None:
        """None for a file on this machine (a local image, a datastore_path flat file); for ``block``, the
        appliance's SSH login and the device it shows for the disk's slot now (looked up again each pass:
        a rescan or a reboot of the appliance may rename it)."""
        if endpoint.kind == "file":
            return None
        name, vmdk = endpoint.host, str(endpoint.transport.get("vmdk"))
        if not self.appliances.configured:
            raise ProviderError(
                f"disk {vmdk} is attached to appliance {name} at {endpoint.transport.get('scsi')}, and the "
                f"writer runs inside it over SSH: set appliance_login on provider {self.name} (user, key, "
                "host_key or known_hosts)"
            )
        login = self.appliances.login(name)
        with self._lock:
            found = self.scope.vm(name)
            devices = self._devices(found[0], "reading the appliance's disks") if found else []
            mine = _disk_at(devices, vmdk)
            if mine is None:
                raise ProviderError(
                    f"disk {vmdk} is not attached to appliance {name} any more; run the attach_disks step "
                    "again (migrate execute)"
                )
            slot = hardware.scsi_slot(devices, mine)
        device = self.appliances.device(login, name, slot, endpoint.size, vmdk)
        return AgentLocation(login, device)

    def detach_disk(self, appliance: ApplianceRef | None, disk: DiskRef) -> None:
        """Hot-remove the VMDK from the appliance, keeping the file. Idempotent."""
        if appliance is None:
            return
        with self._lock:
            place = self.disks.place_of(disk)
            try:
                vm, _ = self._appliance_vm(appliance)
            except NotFound:
                return
            devices = self._devices(vm, "reading the appliance's disks")
            device = _disk_at(devices, place.path)
            if device is None:
                return
            if self._writes_in_appliance():  # what the guest may still cache for it, before it goes
                self.appliances.flush(appliance.name, hardware.scsi_slot(devices, device))
            self._task(
                lambda: vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[hardware.remove(device)])),
                f"hot-removing disk {place.path} from appliance {appliance.name}",
            )

    # ------------------------------------------------------------ VMs

    def create_vm(self, request: VmRequest) -> VmRef:
        """Refuses a name already taken: callers look for their VM with find_vm first (that is the
        idempotency), so a VM found here under the same name is another run's or somebody else's."""
        check_name(request.name, "VM")
        with self._lock:
            existing = self.scope.vm(request.name)
            if existing is not None:
                if existing[1].owned:
                    raise ProviderError(
                        f"a VM named {request.name} already exists in datacenter "
                        f"{self.scope.datacenter_name}; "
                        "delete it or choose another vm_name"
                    )
                raise ProviderError(
                    f"a VM named {request.name} already exists in datacenter {self.scope.datacenter_name} "
                    "and was not created by hvmigrate; it is never touched: choose another vm_name "
                    "(or remove that "
                    "VM yourself)"
                )
            if request.cpus < 1 or request.memory < MIN_MEMORY:
                raise ProviderError(f"VM {request.name}: needs at least 1 vCPU and 32 MiB of memory")
            if len(request.nics) > MAX_NICS:
                raise ProviderError(
                    f"VM {request.name} asks for {len(request.nics)} NICs; ESX allows {MAX_NICS}"
                )
            pool, target = self._placement(request.host)
            for disk in request.disks:  # appliance: host: the finished local image goes up now (cold.py)
                self.cold.upload(disk, self.disks.place_of(disk))
            devices = self._disk_devices(request) + self._nic_devices(request)
            datastore = request.datastore or (request.disks[0].datastore if request.disks else None)
            datastore = datastore or self._default_datastore()
            self.scope.datastore(datastore)
            tags = {"hvmigrate.server": request.name, **request.tags}
            spec = vim.vm.ConfigSpec(
                name=request.name,
                numCPUs=request.cpus,
                memoryMB=-(-request.memory // 1024**2),
                guestId=request.tags.get("hvmigrate.guest_id") or GUEST_IDS["linux"],
                firmware="efi" if request.firmware == "uefi" else "bios",
                files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
                deviceChange=devices,
                extraConfig=_owner_options(self.name, "replica", tags),
                annotation=f"Created by hvmigrate (provider {self.name}); its disks are kept when it is "
                "deleted.",
            )
            folder = self._folder()
            result = self._task(
                lambda: folder.CreateVM_Task(config=spec, pool=pool, host=target),
                f"creating VM {request.name}",
            )
        return VmRef(self.name, result._moId, request.name)

    def _disk_devices(self, request: VmRequest) -> list[Any]:
        given = list(request.disk_controllers)
        kinds = [
            hardware.controller_kind(given[i] if i < len(given) else None, self.config.scsi_controller)
            for i in range(len(request.disks))
        ]
        users = self._vm_disks()
        for disk in request.disks:
            place = self.disks.place_of(disk)
            if self.disks.find(DiskRequest(disk.name, disk.size, "vmdk", disk.datastore)) is None:
                raise ProviderError(
                    f"VM {request.name}: disk {disk.name} does not exist on datastore {place.datastore}"
                )
            if place.path in users:
                raise ProviderError(
                    f"VM {request.name}: disk {disk.name} is still attached to VM "
                    f"{users[place.path]}; detach it first"
                )
        refs = tuple(
            DiskRef(d.provider, self.disks.place_of(d).path, d.name, d.size, d.format, d.datastore)
            for d in request.disks
        )
        return hardware.disk_specs(request.name, refs, kinds)

    def _nic_devices(self, request: VmRequest) -> list[Any]:
        groups = self.scope.port_groups() if request.nics else {}
        specs = []
        for index, nic in enumerate(request.nics):
            if nic.network not in groups:
                raise ProviderError(
                    f"port group {nic.network} does not exist in datacenter {self.scope.datacenter_name} "
                    f"(port groups: {', '.join(sorted(groups)) or 'none'}); "
                    "create it or map the NIC to one of these"
                )
            obj, facts = groups[nic.network]
            switch_uuid = None
            if facts.distributed:
                switch_uuid = self.connection.call(
                    lambda o=obj: o.config.distributedVirtualSwitch.uuid, "reading a distributed switch"
                )
            specs.append(hardware.nic_spec(request.name, index, nic, (obj, facts), switch_uuid))
        return specs

    def find_vm(self, name: str) -> VmRef | None:
        """The tool's own VM ``name``; a VM of that name it did not create is not found."""
        check_name(name, "VM")
        found = self.scope.vm(name)
        if found is None or not found[1].owned or found[1].role == "appliance":
            return None
        return VmRef(self.name, found[1].moref, name)

    def _vm(self, vm: VmRef) -> tuple[vim.VirtualMachine, Any]:
        if vm.provider != self.name:
            raise ProviderError(f"VM {vm.name} belongs to provider {vm.provider}, not {self.name}")
        check_name(vm.name, "VM")
        found = self.scope.vm(vm.name)
        if found is None:
            raise NotFound(f"VM {vm.name} does not exist in datacenter {self.scope.datacenter_name}")
        if not found[1].owned:
            raise ProviderError(f"VM {vm.name} was not created by hvmigrate; it is never changed by it")
        return found

    def vm_details(self, vm: VmRef) -> dict[str, Any]:
        """Firmware, disks (path, slot) and NICs (MAC, port group) of a VM: for reports and tests."""
        obj, facts = self._vm(vm)

        def read() -> dict[str, Any]:
            config = obj.config
            nics = []
            for device in config.hardware.device:
                if isinstance(device, vim.vm.device.VirtualEthernetCard):
                    backing = device.backing
                    network = getattr(backing, "deviceName", None)
                    if isinstance(
                        backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo
                    ):
                        network = backing.port.portgroupKey
                    nics.append(
                        {
                            "type": type(device).__name__.rsplit(".", 1)[-1],
                            "mac": device.macAddress,
                            "address_type": device.addressType,
                            "network": network,
                            "connected": bool(device.connectable and device.connectable.startConnected),
                        }
                    )
            disks = [
                {
                    "path": hardware.backing_path(d),
                    "slot": hardware.scsi_slot(config.hardware.device, d),
                    "size": d.capacityInKB * 1024,
                }
                for d in config.hardware.device
                if isinstance(d, vim.vm.device.VirtualDisk)
            ]
            controllers = [
                {"type": type(d).__name__.rsplit(".", 1)[-1], "bus": d.busNumber}
                for d in config.hardware.device
                if isinstance(d, vim.vm.device.VirtualController)
                and isinstance(d, (vim.vm.device.VirtualSCSIController, vim.vm.device.VirtualSATAController))
            ]
            return {
                "name": facts.name,
                "firmware": config.firmware,
                "cpus": config.hardware.numCPU,
                "memory_mb": config.hardware.memoryMB,
                "power": facts.power_state,
                "disks": disks,
                "controllers": controllers,
                "nics": nics,
                "tags": extra_config(config.extraConfig),
            }

        details = self.connection.call(read, f"reading VM {vm.name}")
        keys = [
            n["network"] for n in details["nics"] if n["network"] and n["network"].startswith("dvportgroup")
        ]
        if keys:  # a distributed port group is named by its key on the NIC: give its name too
            names = {
                self.connection.call(lambda o=obj: o.key, "reading a port group"): name
                for name, (obj, facts) in self.scope.port_groups().items()
                if facts.distributed
            }
            for nic in details["nics"]:
                if nic["network"] in names:
                    nic["portgroup_key"], nic["network"] = nic["network"], names[nic["network"]]
        return details

    def delete_vm(self, vm: VmRef) -> None:
        """Refuses a running VM. Detaches its disks first, so Destroy_Task (which deletes a VM's disks
        on ESXi) removes the VM and keeps the replica disks for the next attempt."""
        with self._lock:
            obj, facts = self._vm(vm)
            if facts.power_state == "poweredOn":
                raise ProviderError(f"VM {vm.name} is running; power it off first")
            disks = self.connection.call(lambda: hardware.disks_of(obj), f"reading VM {vm.name}")
            if disks:
                changes = [hardware.remove(d) for d in disks]
                self._task(
                    lambda: obj.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=changes)),
                    f"detaching the disks of VM {vm.name}",
                )
            self._task(lambda: obj.Destroy_Task(), f"removing VM {vm.name}")

    def power_on(self, vm: VmRef) -> None:
        """Idempotent; refuses while one of its disks is still hot-added to an appliance."""
        obj, facts = self._vm(vm)
        if facts.power_state == "poweredOn":
            return
        users = self._vm_disks()
        for disk in self.connection.call(lambda: hardware.disks_of(obj), f"reading VM {vm.name}"):
            path = hardware.backing_path(disk)
            others = [name for p, name in users.items() if p == path and name != vm.name]
            if others:
                raise ProviderError(
                    f"VM {vm.name} cannot start: its disk {path} is still attached to "
                    f"{others[0]}; detach it first"
                )
        self._task(lambda: obj.PowerOnVM_Task(), f"powering on VM {vm.name}")

    def power_off(self, vm: VmRef, *, force: bool = False) -> None:
        """``force`` pulls the plug; otherwise VMware Tools shut the guest down within shutdown_timeout."""
        obj, facts = self._vm(vm)
        if facts.power_state != "poweredOn":
            return
        if force:
            self._task(lambda: obj.PowerOffVM_Task(), f"powering off VM {vm.name}")
            return
        self.connection.call(lambda: obj.ShutdownGuest(), f"shutting down the guest of VM {vm.name}")
        deadline = time.monotonic() + self.config.shutdown_timeout
        while self.connection.call(lambda: obj.runtime.powerState, f"reading VM {vm.name}") == "poweredOn":
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"VM {vm.name} did not shut down within {self.config.shutdown_timeout:.0f} s "
                    "of the guest "
                    "shutdown; power it off with force, or raise shutdown_timeout"
                )
            time.sleep(BOOT_POLL)

    def wait_booted(self, vm: VmRef, timeout: float) -> BootReport:
        """Powered on, and what VMware Tools report (host name, addresses): only what was observed."""
        obj, _ = self._vm(vm)
        deadline = time.monotonic() + timeout
        while True:
            state, guest = self.connection.call(
                lambda: (obj.runtime.powerState, obj.guest), f"reading the guest of VM {vm.name}"
            )
            if state != "poweredOn":
                return BootReport(running=False, detail=f"VM {vm.name} is {state}; power it on first")
            addresses = tuple(
                sorted(
                    {ip for nic in (guest.net or ()) for ip in (nic.ipAddress or ())}
                    | ({guest.ipAddress} if guest.ipAddress else set())
                )
            )
            if guest.hostName or addresses:
                return BootReport(
                    running=True,
                    hostname=guest.hostName or None,
                    addresses=addresses,
                    detail=f"VMware Tools: {guest.toolsRunningStatus or 'unknown'}",
                )
            if time.monotonic() >= deadline:
                return BootReport(
                    running=True,
                    detail=f"VM {vm.name} is powered on; VMware Tools reported no host name or address yet",
                )
            time.sleep(min(BOOT_POLL, max(0.0, deadline - time.monotonic())))

    def open_vm_source(self, server: str, vm: str, config: Any = None) -> Any:
        """A VM of this provider as the source of ``server`` (providers/esx/source.py)."""
        from orchestrator.playbook.models import VmSource

        from .source import EsxVmSource

        return EsxVmSource(server, self, config or VmSource(type="vm", provider=self.name, vm=vm))

    def close(self) -> None:
        self.appliances.close()
        self.connection.close()


def _sized_like_esxi(flat: Path, size: int) -> bool:
    """A VMDK's flat file in a local datastore folder grown, sparse, to ``size`` as ESXi would have made it
    (vcsim's CreateVirtualDisk leaves it empty); False where there is no such file."""
    if not flat.exists():
        return False
    if flat.stat().st_size < size:
        os.truncate(flat, size)
    return True


def _disk_at(devices: list[Any], path: str) -> Any:
    """The disk device backed by the VMDK at ``path`` among ``devices``, or None."""
    disks = (d for d in devices if isinstance(d, vim.vm.device.VirtualDisk))
    return next((d for d in disks if hardware.backing_path(d) == path), None)


def _free_slot(devices: list[Any], disks: list[Any], kind: str) -> tuple[int, int] | None:
    """(controller key, unit) of the first free slot on the appliance's controllers of ``kind``; SCSI 0:0
    is never free: it is the appliance's own disk, even when that disk sits elsewhere."""
    base = vim.vm.device.VirtualSATAController if kind == "sata" else vim.vm.device.VirtualSCSIController
    controllers = sorted((d for d in devices if isinstance(d, base)), key=lambda c: c.busNumber)
    for controller in controllers:
        used = {d.unitNumber for d in disks if d.controllerKey == controller.key}
        if kind == "sata":
            free = sorted(set(range(hardware.UNITS_PER_SATA)) - used)
        else:
            if controller.busNumber == 0:
                used.add(0)
            free = hardware.scsi_units(used)
        if free:
            return controller.key, free[0]
    return None


def _new_controller(devices: list[Any], kind: str) -> Any:
    """A new controller of ``kind`` on the next free bus (None when all four are taken)."""
    base = vim.vm.device.VirtualSATAController if kind == "sata" else vim.vm.device.VirtualSCSIController
    buses = {d.busNumber for d in devices if isinstance(d, base)}
    free = [b for b in range(hardware.MAX_CONTROLLERS) if b not in buses]
    return hardware.new_controller(kind, free[0], -200) if free else None


def _owner_options(provider: str, role: str, tags: dict[str, str]) -> list[vim.option.OptionValue]:
    options = {OWNER_KEY: OWNER_VALUE, PROVIDER_KEY: provider, ROLE_KEY: role}
    for key, value in tags.items():
        options.setdefault(key if key.startswith("hvmigrate.") else f"hvmigrate.tag.{key}", str(value))
    return [vim.option.OptionValue(key=k, value=v) for k, v in options.items()]
