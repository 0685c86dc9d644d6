"""The embedded simulated hypervisor: the default target of the quickstart, the tests and dry runs.

It keeps the Provider contract as strictly as a real hypervisor would, so that a plan which passes on
the sim fails on ESX for reasons of ESX and not of the plan: it refuses unknown networks and datastores,
over-full datastores, too many NICs, unsupported firmware, a disk written by the data plane and used by a
VM at the same time, and deleting what is still in use. Disks are real sparse files that the data plane
writes through a ``file`` endpoint, and a VM "boots" by reading its boot disk (see `boot`).

Layout under ``root``::

    host.json                        the simulated host as configured (name, datastores, networks, firmware)
    datastores/<ds>/<disk>.raw       replica disks (sparse files)
    vms/<name>.json                  VMs; vms/<name>.console.log the last boot's console
    appliances/<name>.json           recovery appliances and the disks attached to them
    host-attachments.json            disks attached to the host itself (appliance: host)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.mirror.file_reader import data_ranges
from orchestrator.playbook.models import SimProviderConfig
from orchestrator.playbook.units import format_size
from providers.base import (
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
    VmRef,
    VmRequest,
)
from providers.macs import assign_mac

from . import boot
from .state import HostState

if TYPE_CHECKING:
    from .vm_source import SimVmSource

MAX_DISKS_PER_APPLIANCE = 60  # vSphere's limit per VM (4 controllers x 15 targets); the sim keeps it
MIN_MEMORY = 32 * 1024**2
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HOST_ATTACHMENTS = "host-attachments.json"


class SimProvider:
    """A hypervisor of JSON documents and sparse files; see the module docstring for its layout."""

    type = "sim"

    def __init__(self, name: str, config: SimProviderConfig) -> None:
        self.name = name
        self.config = config
        # The planner resolves playbook paths against the playbook's folder; a relative root left here
        # would follow the process's working directory, so pin it once.
        self.root = Path(config.root).expanduser().resolve()
        if not config.datastores:
            raise ProviderError(f"sim provider {name} has no datastores; add one under datastores:")
        for datastore in config.datastores:
            _check_name(datastore, "datastore")
        self._state = HostState(self.root, self._initialize)

    def _initialize(self) -> None:
        """Lay out a new simulated host; called under the state lock on its first write."""
        config = self.config
        for datastore in config.datastores:
            (self.root / "datastores" / datastore).mkdir(parents=True, exist_ok=True)
        (self.root / "vms").mkdir(exist_ok=True)
        (self.root / "appliances").mkdir(exist_ok=True)
        # The playbook is the truth about the host; host.json records it for people and other tools.
        self._state.write(
            "host.json",
            {
                "host": config.host,
                "datastores": {ds: {"capacity": cap} for ds, cap in config.datastores.items()},
                "networks": list(config.networks),
                "firmware": list(config.firmware),
                "max_nics": config.max_nics,
            },
        )

    def __repr__(self) -> str:
        return f"SimProvider({self.name!r}, root={str(self.root)!r})"

    # ------------------------------------------------------------ inventory

    def inventory(self) -> Inventory:
        """What the host offers; a datastore's free space counts every disk at its full size.

        Thin disks still reserve their whole size here. A real thin datastore lets you over-commit and
        then fills up halfway through a mirror, when the copy has already cost hours; the sim refuses at
        planning time instead. It also keeps the figure stable while the data plane fills the sparse
        files, so validation never races the mirror.
        """
        with self._state.locked(write=False):
            datastores = {
                ds: DatastoreInfo(
                    ds,
                    capacity,
                    max(0, capacity - self._used(ds)),
                    accessible=not self.root.exists() or (self.root / "datastores" / ds).is_dir(),
                )
                for ds, capacity in self.config.datastores.items()
            }
            vms = tuple(sorted(vm["name"] for vm in self._state.documents("vms")))
        return Inventory(
            provider=self.name,
            type=self.type,
            hosts=(self.config.host,),
            datastores=datastores,
            networks=tuple(self.config.networks),
            vms=vms,
            limits=Limits(
                max_nics=self.config.max_nics,
                max_disks_per_appliance=MAX_DISKS_PER_APPLIANCE,
                firmware=tuple(self.config.firmware),
                disk_formats=("raw",),
                native_format="raw",
            ),
            default_datastore=self._default_datastore(),
        )

    def host_for(self, requested: str | None) -> str:
        if requested not in (None, self.config.host):
            raise ProviderError(
                f"sim provider {self.name} has one host, {self.config.host}; "
                f"remove target.host or set it to {self.config.host}"
            )
        return self.config.host

    # ------------------------------------------------------------ appliances

    def provision_appliance(self, host: str, name: str) -> ApplianceRef:
        """Idempotent: an appliance of that name on that host is returned as it is."""
        host = self.host_for(host)
        _check_name(name, "appliance")
        with self._state.locked():
            existing = self.find_appliance(host, name)
            if existing:
                return existing
            self._state.write(f"appliances/{name}.json", {"name": name, "host": host, "attachments": {}})
        return ApplianceRef(self.name, name, name, host)

    def find_appliance(self, host: str, name: str) -> ApplianceRef | None:
        _check_name(name, "appliance")
        with self._state.locked(write=False):
            doc = self._state.read(f"appliances/{name}.json")
        if doc is None or doc["host"] != self.host_for(host):
            return None
        return ApplianceRef(self.name, name, name, doc["host"])

    def release_appliance(self, appliance: ApplianceRef) -> None:
        """Refuses while disks are attached: detach them first (the detach_disks step does).

        Releasing would silently detach them, and a mirror still writing to one would then write into a
        disk a VM may already be booting from; an explicit detach keeps that ordering visible.
        """
        self._own(appliance.provider, f"appliance {appliance.name}")
        with self._state.locked():
            doc = self._appliance_doc(appliance.name)
            if doc["attachments"]:
                names = ", ".join(sorted(a["disk"] for a in doc["attachments"].values()))
                raise ProviderError(
                    f"appliance {appliance.name} still has {len(doc['attachments'])} disk(s) "
                    f"attached ({names}); detach them first"
                )
            self._state.delete(f"appliances/{appliance.name}.json")

    # ------------------------------------------------------------ disks

    def create_disk(self, request: DiskRequest) -> DiskRef:
        """Idempotent by name: the same request twice gives the same disk.

        Whatever ``provisioning`` says, the file is sparse: the sim's datastore is a simulation, and the
        machine running it should not spend real space on eager zeroing.
        """
        if request.format != "raw":
            raise ProviderError(f"disk {request.name}: the sim stores raw disks only; use format: raw")
        if request.size <= 0 or request.size % 512:
            raise ProviderError(
                f"disk {request.name}: size {request.size} is not a positive multiple of 512 bytes"
            )
        with self._state.locked():
            existing = self.find_disk(request)
            if existing:
                if existing.size != request.size:
                    raise ProviderError(
                        f"disk {request.name} already exists on datastore {existing.datastore} with "
                        f"{format_size(existing.size)} ({existing.size} bytes), not the "
                        f"{format_size(request.size)} ({request.size} bytes) asked; delete it or rename it"
                    )
                return existing
            datastore = self._datastore(request.datastore)
            free = self.config.datastores[datastore] - self._used(datastore)
            if request.size > free:
                raise ProviderError(
                    f"datastore {datastore} has {format_size(max(free, 0))} free, disk "
                    f"{request.name} needs {format_size(request.size)}; free space or "
                    "choose another datastore"
                )
            path = self._disk_path(datastore, request.name)
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "wb") as handle:
                handle.truncate(request.size)
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        return DiskRef(self.name, str(path), request.name, request.size, "raw", datastore)

    def find_disk(self, request: DiskRequest) -> DiskRef | None:
        _check_name(request.name, "disk")
        datastore = self._datastore(request.datastore)
        path = self._disk_path(datastore, request.name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return DiskRef(self.name, str(path), request.name, size, "raw", datastore)

    def delete_disk(self, disk: DiskRef) -> None:
        """Refuses a disk still attached or still part of a VM; NotFound when it is already gone.

        Files named ``<disk>.raw.*`` beside it go with it, as a real datastore deletes a disk's metadata.
        """
        path = self._disk_of(disk)
        with self._state.locked():
            if not path.exists():
                raise NotFound(f"disk {disk.name} does not exist on datastore {disk.datastore}")
            owner = self._attached_to(path)
            if owner:
                raise ProviderError(f"disk {disk.name} is attached to {owner}; detach it first")
            vm = self._vm_using(path)
            if vm:
                raise ProviderError(f"disk {disk.name} belongs to VM {vm}; delete the VM first")
            path.unlink()
            # Sidecars beside the disk (the mirror keeps its block map there) describe this disk only; a
            # stale one would make a new disk of the same name look already copied.
            for sidecar in path.parent.glob(f"{path.name}.*"):
                sidecar.unlink(missing_ok=True)

    def clone_disk(self, source: DiskRef, request: DiskRequest) -> DiskRef:
        """A sparse copy made under a temporary name and renamed into place, so a crash mid-copy leaves
        nothing find_disk would return. Callers clone between passes, not while one writes the source."""
        src = self._disk_of(source)
        if request.format != "raw":
            raise ProviderError(f"disk {request.name}: the sim stores raw disks only; use format: raw")
        with self._state.locked():
            existing = self.find_disk(request)
            if existing is not None:
                return existing
            if not src.exists():
                raise NotFound(f"disk {source.name} does not exist on datastore {source.datastore}")
            datastore = self._datastore(request.datastore)
            size = src.stat().st_size
            free = self.config.datastores[datastore] - self._used(datastore)
            if size > free:
                raise ProviderError(
                    f"datastore {datastore} has {format_size(max(free, 0))} free, clone {request.name} "
                    f"needs {format_size(size)}; free space or choose another datastore"
                )
            path = self._disk_path(datastore, request.name)
            tmp = path.with_name(f".{path.name}.tmp")
            _sparse_copy(src, tmp, size)
            os.replace(tmp, path)
        return DiskRef(self.name, str(path), request.name, size, "raw", datastore)

    def writer_location(self, endpoint: DiskEndpoint) -> None:
        """The simulated datastores are folders on this machine: written in-process."""
        return None

    def attach_disk(self, appliance: ApplianceRef | None, disk: DiskRef) -> DiskEndpoint:
        """Record that the data plane may write ``disk``; ``None`` means on the host itself.

        Idempotent: attaching a disk already attached to the same place returns the same endpoint.
        """
        path = self._disk_of(disk)
        with self._state.locked():
            if not path.exists():
                raise NotFound(
                    f"disk {disk.name} does not exist on datastore {disk.datastore}; create it first"
                )
            target, document, doc = self._attachments(appliance)
            owner = self._attached_to(path)
            size = path.stat().st_size
            if owner == target:
                return DiskEndpoint("file", str(path), size)
            if owner:
                raise ProviderError(f"disk {disk.name} is attached to {owner}; detach it there first")
            vm = self._vm_using(path)
            if vm:
                raise ProviderError(
                    f"disk {disk.name} belongs to VM {vm}; the data plane cannot write a disk "
                    "a VM uses: delete the VM (disks are kept) first"
                )
            if appliance is not None and len(doc["attachments"]) >= MAX_DISKS_PER_APPLIANCE:
                raise ProviderError(
                    f"appliance {appliance.name} already has {MAX_DISKS_PER_APPLIANCE} disks "
                    "attached (the limit); use appliance: dedicated or wait for a detach"
                )
            doc["attachments"][str(path)] = {"disk": disk.name, "datastore": disk.datastore}
            self._state.write(document, doc)
        return DiskEndpoint("file", str(path), size)

    def detach_disk(self, appliance: ApplianceRef | None, disk: DiskRef) -> None:
        """Idempotent: a disk not attached there is already detached."""
        path = self._disk_of(disk)
        with self._state.locked():
            _, document, doc = self._attachments(appliance)
            if doc["attachments"].pop(str(path), None) is not None:
                self._state.write(document, doc)

    # ------------------------------------------------------------ VMs

    def create_vm(self, request: VmRequest) -> VmRef:
        """Refuses a name already taken: callers look for their VM with find_vm first (that is the
        idempotency), so a VM found here under the same name is somebody else's."""
        _check_name(request.name, "VM")
        host = self.host_for(request.host)
        with self._state.locked():
            if self.find_vm(request.name):
                raise ProviderError(
                    f"a VM named {request.name} already exists on sim host {host}; delete it "
                    "or choose another vm_name"
                )
            if request.firmware not in self.config.firmware:
                raise ProviderError(
                    f"VM {request.name}: firmware {request.firmware} is not supported by sim "
                    f"host {host} (it supports {', '.join(self.config.firmware)})"
                )
            if request.cpus < 1 or request.memory < MIN_MEMORY:
                raise ProviderError(f"VM {request.name}: needs at least 1 vCPU and 32 MiB of memory")
            if len(request.nics) > self.config.max_nics:
                raise ProviderError(
                    f"VM {request.name} asks for {len(request.nics)} NICs; sim host {host} "
                    f"allows at most {self.config.max_nics}"
                )
            nics = self._vm_nics(request)
            disks = []
            for disk in request.disks:
                path = self._disk_of(disk)
                if not path.exists():
                    raise ProviderError(
                        f"VM {request.name}: disk {disk.name} does not exist on datastore {disk.datastore}"
                    )
                owner = self._attached_to(path)
                if owner:
                    raise ProviderError(
                        f"VM {request.name}: disk {disk.name} is still attached to {owner}; detach first"
                    )
                vm = self._vm_using(path)
                if vm:
                    raise ProviderError(f"VM {request.name}: disk {disk.name} already belongs to VM {vm}")
                disks.append(
                    {
                        "name": disk.name,
                        "datastore": disk.datastore,
                        "path": str(path),
                        "size": path.stat().st_size,
                        "format": "raw",
                    }
                )
            self._state.write(
                f"vms/{request.name}.json",
                {
                    "name": request.name,
                    "host": host,
                    "cpus": request.cpus,
                    "memory": request.memory,
                    "firmware": request.firmware,
                    "generation": request.generation,
                    "disks": disks,
                    "nics": nics,
                    "power": "off",
                    "tags": dict(request.tags),
                },
            )
        return VmRef(self.name, request.name, request.name)

    def find_vm(self, name: str) -> VmRef | None:
        _check_name(name, "VM")
        with self._state.locked(write=False):
            doc = self._state.read(f"vms/{name}.json")
        return VmRef(self.name, name, name) if doc else None

    def vm_details(self, vm: VmRef) -> dict[str, Any]:
        """The VM's state document (cpus, memory, disks, nics with MACs, power): for reports and tests."""
        with self._state.locked(write=False):
            return self._vm_doc(vm)

    def delete_vm(self, vm: VmRef) -> None:
        """Refuses a running VM: power it off first, as vSphere and Hyper-V require.

        The VM's disks are kept: they are deleted separately (delete_disk), because a failed cutover's
        undo removes the VM but the replica disks hold hours of mirroring that the next attempt reuses.
        """
        with self._state.locked():
            doc = self._vm_doc(vm)
            if doc["power"] == "on":
                raise ProviderError(f"VM {vm.name} is running; power it off first")
            self._state.delete(f"vms/{vm.name}.json")
            (self.root / "vms" / f"{vm.name}.console.log").unlink(missing_ok=True)

    def power_on(self, vm: VmRef) -> None:
        with self._state.locked():
            doc = self._vm_doc(vm)
            for disk in doc["disks"]:
                if not Path(disk["path"]).exists():
                    raise ProviderError(
                        f"VM {vm.name} cannot start: its disk {disk['name']} ({disk['path']}) is missing"
                    )
            if doc["power"] != "on":
                doc["power"] = "on"
                self._state.write(f"vms/{vm.name}.json", doc)

    def power_off(self, vm: VmRef, *, force: bool = False) -> None:
        """The sim has no guest to ask, so a clean shutdown and ``force`` are the same instant stop."""
        with self._state.locked():
            doc = self._vm_doc(vm)
            if doc["power"] != "off":
                doc["power"] = "off"
                self._state.write(f"vms/{vm.name}.json", doc)

    def wait_booted(self, vm: VmRef, timeout: float) -> BootReport:
        """Boot from the disk's real bytes (see `boot`); the sim answers at once, so ``timeout`` is unused.

        The console of this boot is written to ``vms/<name>.console.log``.
        """
        with self._state.locked():
            doc = self._vm_doc(vm)
            if doc["power"] != "on":
                return BootReport(running=False, detail=f"VM {vm.name} is powered off; power it on first")
            console = boot.Console()
            report = boot.boot(doc, console)
            self._state.write_text(f"vms/{vm.name}.console.log", console.text)
        return report

    def open_vm_source(self, server: str, vm: str, config: Any = None) -> SimVmSource:
        """One of this host's VMs as the source of ``server`` (sim to sim; see `vm_source`); the
        source's playbook ``config`` adds nothing the VM's own document does not say."""
        from .vm_source import SimVmSource

        return SimVmSource(server, self, vm)

    def console_log(self, vm: VmRef) -> str:
        path = self.root / "vms" / f"{vm.name}.console.log"
        return path.read_text() if path.exists() else ""

    def close(self) -> None:
        """Nothing to release: every operation opens and closes what it uses."""

    # ------------------------------------------------------------ internals

    def _default_datastore(self) -> str:
        return "default" if "default" in self.config.datastores else next(iter(self.config.datastores))

    def _datastore(self, requested: str | None) -> str:
        datastore = requested or self._default_datastore()
        if datastore not in self.config.datastores:
            known = ", ".join(self.config.datastores)
            raise ProviderError(
                f"datastore {datastore} does not exist on sim host {self.config.host}; datastores: {known}"
            )
        return datastore

    def _disk_path(self, datastore: str, name: str) -> Path:
        _check_name(name, "disk")
        return self.root / "datastores" / datastore / f"{name}.raw"

    def _disk_of(self, disk: DiskRef) -> Path:
        """The file of a DiskRef, from its datastore and name (never from a path a journal could carry)."""
        self._own(disk.provider, f"disk {disk.name}")
        return self._disk_path(self._datastore(disk.datastore), disk.name)

    def _own(self, provider: str, what: str) -> None:
        if provider != self.name:
            raise ProviderError(f"{what} belongs to provider {provider}, not {self.name}")

    def _used(self, datastore: str) -> int:
        directory = self.root / "datastores" / datastore
        return sum(p.stat().st_size for p in directory.glob("*.raw")) if directory.is_dir() else 0

    def _appliance_doc(self, name: str) -> dict[str, Any]:
        doc = self._state.read(f"appliances/{name}.json")
        if doc is None:
            raise NotFound(
                f"appliance {name} does not exist on sim host {self.config.host}; provision it first"
            )
        return doc

    def _attachments(self, appliance: ApplianceRef | None) -> tuple[str, str, dict[str, Any]]:
        """(who, document, its content) for an appliance, or for the host itself when ``None``."""
        if appliance is None:
            doc = self._state.read(_HOST_ATTACHMENTS) or {"attachments": {}}
            return f"host {self.config.host}", _HOST_ATTACHMENTS, doc
        self._own(appliance.provider, f"appliance {appliance.name}")
        _check_name(appliance.name, "appliance")
        return (
            f"appliance {appliance.name}",
            f"appliances/{appliance.name}.json",
            self._appliance_doc(appliance.name),
        )

    def _attached_to(self, path: Path) -> str | None:
        key = str(path)
        host = self._state.read(_HOST_ATTACHMENTS) or {"attachments": {}}
        if key in host["attachments"]:
            return f"host {self.config.host}"
        for doc in self._state.documents("appliances"):
            if key in doc["attachments"]:
                return f"appliance {doc['name']}"
        return None

    def _vm_using(self, path: Path) -> str | None:
        for doc in self._state.documents("vms"):
            if any(d["path"] == str(path) for d in doc["disks"]):
                return doc["name"]
        return None

    def _vm_doc(self, vm: VmRef) -> dict[str, Any]:
        self._own(vm.provider, f"VM {vm.name}")
        _check_name(vm.name, "VM")
        doc = self._state.read(f"vms/{vm.name}.json")
        if doc is None:
            raise NotFound(f"VM {vm.name} does not exist on sim host {self.config.host}")
        return doc

    def _vm_nics(self, request: VmRequest) -> list[dict[str, Any]]:
        """Validated NICs with their MACs; a MAC already on the same network would break both VMs."""
        in_use: dict[tuple[str, str], str] = {}
        for doc in self._state.documents("vms"):
            for nic in doc["nics"]:
                in_use[(nic["network"], nic["mac"])] = doc["name"]
        nics: list[dict[str, Any]] = []
        for index, nic in enumerate(request.nics):
            if nic.network not in self.config.networks:
                raise ProviderError(
                    f"network {nic.network} does not exist on sim host {self.config.host}; "
                    f"networks: {', '.join(self.config.networks)}"
                )
            mac = assign_mac(request.name, index, nic.mac, nic.network, in_use)
            nics.append(
                {
                    "network": nic.network,
                    "mac": mac,
                    "model": nic.model or "virtio",
                    "vlan": nic.vlan,
                    "connected": nic.connected,
                }
            )
        return nics


def _sparse_copy(source: Path, target: Path, size: int) -> None:
    """Copy the data ranges only; holes stay holes (a thin 100 GiB replica clones in its data's time)."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.truncate(size)
        ranges = data_ranges(src.fileno(), size)
        for offset, length in ranges if ranges is not None else [(0, size)]:
            done = 0
            while done < length:
                at = offset + done
                copied = os.copy_file_range(src.fileno(), dst.fileno(), length - done, at, at)
                if copied == 0:
                    break
                done += copied
        os.fsync(dst.fileno())


def _check_name(name: str, what: str) -> None:
    """Names become file names; anything that could escape the state directory is refused."""
    if not _NAME_RE.match(name or ""):
        raise ProviderError(
            f"{what} name {name!r} is not valid on the sim: use letters, digits, '-', '_' "
            "and '.', starting with a letter or digit"
        )
