"""The KVM target: libvirt domains and storage volumes, on any host a libvirt URI reaches.

It keeps the Provider contract as the simulator does (see providers/sim/provider.py): finds are idempotent
by name, creates refuse what already exists, deletes refuse what is still in use, and a VM's disks outlive
the VM. On top of that it never touches what it did not create: domains carry ``<hvmigrate:owner>`` in
their metadata and volumes an ownership marker beside them; anything else of the same name is refused,
never adopted, overwritten or removed.

``appliance: host`` writes raw volumes as files and qcow2 volumes through a qemu-nbd export, on the
libvirt host itself (in-process for a local URI, over SSH for qemu+ssh://). ``appliance: shared`` and
``dedicated`` boot a recovery appliance VM from the configured ``appliance_image`` and hot-plug the replica
volumes into it (appliance.py); that needs a local URI for now.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from pathlib import Path

import libvirt

from orchestrator.playbook.models import KvmProviderConfig
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
from providers.macs import assign_mac

from . import boot
from .appliance import MAX_DISKS as MAX_APPLIANCE_DISKS
from .appliance import Appliances
from .connection import Connection, LibvirtUri, effective_uri, failure
from .domain_xml import (
    DISK_BUSES,
    NIC_MODELS,
    DiskSpec,
    DomainFacts,
    DomainSpec,
    NicSpec,
    domain_xml,
    read_domain,
)
from .host import LibvirtHost
from .inventory import (
    Abilities,
    HostFacts,
    abilities,
    domain_names,
    host_facts,
    network_exists,
    networks,
    vlan_capable,
)
from .volumes import FORMATS, Pools, Volume, check_name, volume_name

MIN_MEMORY = 32 * 1024**2
MAX_NICS = 16
SHUTDOWN_POLL = 0.5
_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | getattr(libvirt, "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA", 0)
)


class KvmProvider:
    """libvirt-python behind the Provider protocol; see the module docstring."""

    type = "kvm"

    def __init__(self, name: str, config: KvmProviderConfig) -> None:
        self.name = name
        self.config = config
        self.uri = LibvirtUri.parse(config.uri)
        self.connection = Connection(self.uri, effective_uri(config))
        self.pools = Pools(self.connection, config.storage_pool)
        self._lock = threading.RLock()
        self._abilities: Abilities | None = None
        self._hostname: str | None = None
        self._host: LibvirtHost | None = None
        self.appliances = Appliances(self)

    def __repr__(self) -> str:
        return f"KvmProvider({self.name!r}, uri={self.uri.display!r})"

    @property
    def where(self) -> str:
        return self.uri.display

    def _conn(self) -> libvirt.virConnect:
        return self.connection.get()

    def abilities(self) -> Abilities:
        """Domain type and firmware of the host, asked once per provider."""
        if self._abilities is None:
            self._abilities = abilities(self._conn(), self.config.domain_type, self.where)
        return self._abilities

    def _host_name(self) -> str:
        if self._hostname is None:
            try:
                self._hostname = self._conn().getHostname()
            except libvirt.libvirtError as exc:
                raise failure(exc, f"asking {self.where} for its host name") from None
        return self._hostname

    def host(self) -> LibvirtHost:
        if self._host is None:
            self._host = LibvirtHost(self.uri, self.config, self._host_name())
        return self._host

    # ------------------------------------------------------------ inventory

    def inventory(self) -> Inventory:
        """Pools' free bytes count thin volumes at their full size, as the simulator does."""
        conn = self._conn()
        try:
            facts = host_facts(conn)
            found = self.abilities()
            datastores = self.pools.datastores()
            nets = networks(conn)
            vms = domain_names(conn)
        except libvirt.libvirtError as exc:
            raise failure(exc, f"reading the inventory of {self.where}") from None
        self._hostname = facts.hostname
        return Inventory(
            provider=self.name,
            type=self.type,
            hosts=(facts.hostname,),
            datastores=datastores,
            networks=nets,
            vms=vms,
            limits=Limits(
                max_nics=MAX_NICS,
                firmware=found.firmware,
                disk_formats=FORMATS,
                native_format="raw",
                max_memory=facts.memory,
                appliance_modes=self.appliances.modes(),  # VMs need an appliance_image and a local URI
                max_disks_per_appliance=MAX_APPLIANCE_DISKS,
            ),
            default_datastore=self.config.storage_pool if self.config.storage_pool in datastores else None,
        )

    def host_facts(self) -> HostFacts:
        """Host name, CPUs and memory (Inventory has no field for the CPU count; reports ask here)."""
        try:
            return host_facts(self._conn())
        except libvirt.libvirtError as exc:
            raise failure(exc, f"reading the host facts of {self.where}") from None

    def host_for(self, requested: str | None) -> str:
        """One URI is one host; a target.host must name it (its host name or the URI's host)."""
        hostname = self._host_name()
        if requested not in (None, hostname, self.uri.host):
            raise ProviderError(
                f"kvm provider {self.name} reaches one host, {hostname} ({self.where}); remove target.host "
                f"or set it to {hostname}, or add a provider with that host's URI"
            )
        return hostname

    # ------------------------------------------------------------ appliances

    def provision_appliance(self, host: str, name: str) -> ApplianceRef:
        """Boots (or finds, starts, re-keys) the appliance VM ``name``; returns once it lets us in by SSH."""
        return self.appliances.provision(host, name)

    def find_appliance(self, host: str, name: str) -> ApplianceRef | None:
        """The tool's appliance ``name`` on ``host``, running or not; another domain of the name is not."""
        return self.appliances.find(host, name)

    def release_appliance(self, appliance: ApplianceRef) -> None:
        """Removes the appliance, its volumes and keys (the base image volume with the last appliance)."""
        self.appliances.release(appliance)

    # ------------------------------------------------------------ disks

    def create_disk(self, request: DiskRequest) -> DiskRef:
        """Idempotent by name: the same request twice gives the same volume. Thin is sparse (allocation
        0); thick and eager_zeroed allocate it all up front."""
        if request.format not in FORMATS:
            raise ProviderError(
                f"disk {request.name}: KVM volumes are raw or qcow2, not {request.format}; "
                "use format: raw or qcow2"
            )
        if request.size <= 0 or request.size % 512:
            raise ProviderError(
                f"disk {request.name}: size {request.size} is not a positive multiple of 512 bytes"
            )
        name = volume_name(request.name, request.format)
        with self._lock:
            existing = self.find_disk(request)
            if existing is not None:
                if existing.size != request.size:
                    raise ProviderError(
                        f"disk {request.name} already exists in pool {existing.datastore} with "
                        f"{existing.size} bytes, not the {request.size} asked; delete it or rename it"
                    )
                return existing
            volume = self.pools.create(
                request.datastore, name, request.size, request.format, thick=request.provisioning != "thin"
            )
        return self._disk_ref(request.name, volume)

    def find_disk(self, request: DiskRequest) -> DiskRef | None:
        volume = self.pools.find(request.datastore, volume_name(request.name, request.format))
        return None if volume is None else self._disk_ref(request.name, volume)

    def delete_disk(self, disk: DiskRef) -> None:
        """Refuses a disk still attached or still part of a VM; NotFound when it is already gone."""
        pool, name = self._volume_of(disk)
        with self._lock:
            if self.pools.find(pool, name) is None:
                if self.pools.foreign(pool, name):
                    raise ProviderError(
                        f"volume {name} in pool {pool} was not created by hvmigrate; not deleted"
                    )
                raise NotFound(f"disk {disk.name} does not exist in pool {pool} on {self.where}")
            if self.pools.attached(pool, name):
                raise ProviderError(
                    f"disk {disk.name} is attached to {self._attached_where(pool, name)}; detach it first"
                )
            vm = self._vm_using(pool, name)
            if vm:
                raise ProviderError(f"disk {disk.name} belongs to VM {vm}; delete the VM first")
            self.pools.delete(pool, name)

    def clone_disk(self, source: DiskRef, request: DiskRequest) -> DiskRef:
        """libvirt copies the volume (holes kept, format converted). A qcow2 replica open in its qemu-nbd
        export is locked, so the export pauses for the copy and comes back on the same socket; one open in an
        appliance VM's QEMU is refused (a raw one is read by libvirtd itself, between passes)."""
        if request.format not in FORMATS:
            raise ProviderError(f"disk {request.name}: KVM volumes are raw or qcow2, not {request.format}")
        src_pool, src_name = self._volume_of(source)
        name = volume_name(request.name, request.format)
        with self._lock:
            if self.pools.incomplete(request.datastore, name):
                with contextlib.suppress(NotFound):  # a copy a crash cut short
                    self.pools.delete(request.datastore, name)
            existing = self.find_disk(request)
            if existing is not None:
                return existing
            origin = self.pools.find(src_pool, src_name)
            if origin is None:
                raise NotFound(f"disk {source.name} does not exist in pool {src_pool} on {self.where}")
            holder = self.appliances.holder(src_pool, src_name)
            if holder and origin.format != "raw":
                raise ProviderError(
                    f"disk {source.name} is a qcow2 volume open in appliance {holder}, whose QEMU locks it: "
                    "a test copy of it needs raw replica volumes, or appliance: host, for now"
                )
            exported = not holder and origin.format != "raw" and self.pools.attached(src_pool, src_name)
            if exported:
                self.host().nbd("stop", origin.path, origin.format)
            try:
                volume = self.pools.clone(request.datastore, name, origin, request.format)
            finally:
                if exported:
                    self.host().nbd("start", origin.path, origin.format)
        return self._disk_ref(request.name, volume)

    def _disk_ref(self, name: str, volume: Volume) -> DiskRef:
        return DiskRef(self.name, volume.path, name, volume.capacity, volume.format, volume.pool)

    def _volume_of(self, disk: DiskRef) -> tuple[str, str]:
        """(pool, volume name) of a DiskRef, from its datastore and name, never from a journaled path."""
        self._own(disk.provider, f"disk {disk.name}")
        return disk.datastore or self.config.storage_pool, volume_name(disk.name, disk.format)

    # ------------------------------------------------------------ the data plane's access

    def attach_disk(self, appliance: ApplianceRef | None, disk: DiskRef) -> DiskEndpoint:
        """Open a volume for writing on the host: raw as the file itself, qcow2 through qemu-nbd.

        Idempotent: attaching again returns the same endpoint (a live export is reused). The block map of
        an NBD export lives beside the volume (``<volume>.hvmap``): the socket says nothing durable.
        """
        if appliance is not None:
            return self.appliances.attach(appliance, disk)
        pool, name = self._volume_of(disk)
        with self._lock:
            volume = self.pools.find(pool, name)
            if volume is None:
                raise NotFound(
                    f"disk {disk.name} does not exist in pool {pool} on {self.where}; create it first"
                )
            vm = self._vm_using(pool, name)
            if vm:
                raise ProviderError(
                    f"disk {disk.name} belongs to VM {vm}; the data plane cannot write a disk a VM uses: "
                    "delete the VM (disks are kept) first"
                )
            holder = self.appliances.holder(pool, name)
            if holder is not None:
                raise ProviderError(
                    f"disk {disk.name} is attached to appliance {holder}; detach it there first"
                )
            self.pools.mark_attached(pool, name)
            host = self.host()
            if volume.format == "raw":
                return DiskEndpoint("file", volume.path, volume.capacity, host=host.name)
            export = host.nbd("start", volume.path, volume.format)
            return DiskEndpoint(
                "nbd",
                export["uri"],
                volume.capacity,
                host=host.name,
                transport={"map_path": volume.path + ".hvmap"},
            )

    def writer_location(self, endpoint: DiskEndpoint) -> AgentLocation | None:
        """The appliance's SSH login for a device in an appliance; else None for a local URI (written
        in-process), the host's SSH login for qemu+ssh://."""
        if endpoint.kind == "block" and "appliance" in endpoint.transport:
            return self.appliances.writer_location(endpoint)
        return self.host().writer_location(endpoint.path)

    def detach_disk(self, appliance: ApplianceRef | None, disk: DiskRef) -> None:
        """Idempotent: stops the disk's qemu-nbd export (which flushes it) and clears the attachment."""
        if appliance is not None:
            self.appliances.detach(appliance, disk)
            return
        pool, name = self._volume_of(disk)
        with self._lock:
            volume = self.pools.find(pool, name)
            if volume is None and self.pools.foreign(pool, name):
                return  # somebody else's volume of that name: nothing of ours is attached
            if self.appliances.holder(pool, name) is not None:
                return  # written in an appliance, not on the host: its own detach clears it
            fmt = volume.format if volume is not None else disk.format
            if fmt != "raw":
                # An export is found by the path it serves, so this stops nothing but this disk's.
                self.host().nbd("stop", volume.path if volume is not None else disk.id, fmt)
            self.pools.clear_attached(pool, name)

    # ------------------------------------------------------------ VMs

    def create_vm(self, request: VmRequest) -> VmRef:
        """Refuses a name already taken: callers look for their VM with find_vm first (that is the
        idempotency), so a domain found here under the same name is another run's or somebody else's."""
        check_name(request.name, "VM")
        self.host_for(request.host)
        found = self.abilities()
        conn = self._conn()
        with self._lock:
            existing = self._lookup(request.name)
            if existing is not None:
                if read_domain(existing.XMLDesc(0)).owned:
                    raise ProviderError(
                        f"a VM named {request.name} already exists on {self.where}; delete it or choose "
                        "another vm_name"
                    )
                raise ProviderError(
                    f"a VM named {request.name} already exists on {self.where} and was not created by "
                    "hvmigrate; it is never overwritten: choose another vm_name (or remove that VM yourself)"
                )
            if request.firmware not in found.firmware:
                raise ProviderError(
                    f"VM {request.name}: firmware {request.firmware} needs OVMF on {self.where}, which it "
                    "does not have; install the Debian package ovmf there and restart libvirtd, or use "
                    "firmware: bios"
                )
            if request.cpus < 1 or request.memory < MIN_MEMORY:
                raise ProviderError(f"VM {request.name}: needs at least 1 vCPU and 32 MiB of memory")
            if found.max_vcpus and request.cpus > found.max_vcpus:
                raise ProviderError(
                    f"VM {request.name} asks for {request.cpus} vCPUs; {self.where} allows {found.max_vcpus} "
                    f"for {found.domain_type} domains"
                )
            if len(request.nics) > MAX_NICS:
                raise ProviderError(
                    f"VM {request.name} asks for {len(request.nics)} NICs; at most {MAX_NICS}"
                )
            spec = DomainSpec(
                name=request.name,
                uuid=str(uuid.uuid4()),
                domain_type=found.domain_type,
                cpus=request.cpus,
                memory=request.memory,
                firmware=request.firmware,
                disks=self._vm_disks(request),
                nics=self._vm_nics(request),
                owner={"provider": self.name, **request.tags},
                serial_log=self._serial_log(request.name),
            )
            try:
                domain = conn.defineXMLFlags(domain_xml(spec), libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
            except libvirt.libvirtError as exc:
                raise failure(exc, f"defining VM {request.name} on {self.where}") from None
        return VmRef(self.name, domain.UUIDString(), request.name)

    def find_vm(self, name: str) -> VmRef | None:
        """The tool's own domain ``name``; a domain of that name it did not create is not found."""
        check_name(name, "VM")
        domain = self._lookup(name)
        if domain is None or not read_domain(domain.XMLDesc(0)).owned:
            return None
        return VmRef(self.name, domain.UUIDString(), name)

    def vm_details(self, vm: VmRef) -> DomainFacts:
        """What the domain is made of (disks, NICs with MACs, owner tags): for reports and tests."""
        return read_domain(self._domain(vm).XMLDesc(0))

    def delete_vm(self, vm: VmRef) -> None:
        """Refuses a running VM (power it off first). Undefines it and keeps its volumes: a failed
        cutover's undo removes the VM, and the replica disks hold hours of mirroring the next try reuses."""
        with self._lock:
            domain = self._domain(vm)
            if domain.isActive():
                raise ProviderError(f"VM {vm.name} is running; power it off first")
            facts = read_domain(domain.XMLDesc(0))
            try:
                domain.undefineFlags(_UNDEFINE_FLAGS)
            except libvirt.libvirtError as exc:
                raise failure(exc, f"removing VM {vm.name} from {self.where}") from None
            if facts.serial_log and self.uri.is_local:
                Path(facts.serial_log).unlink(missing_ok=True)

    def power_on(self, vm: VmRef) -> None:
        """Idempotent; refuses while one of its disks is still open for the data plane to write."""
        domain = self._domain(vm)
        if domain.isActive():
            return
        facts = read_domain(domain.XMLDesc(0))
        for pool, volume in facts.volumes:
            if self.pools.attached(pool, volume):
                raise ProviderError(
                    f"VM {vm.name} cannot start: its disk {volume} is still attached to "
                    f"{self._attached_where(pool, volume)} for writing; detach it first (detach_disks step)"
                )
        try:
            domain.create()
        except libvirt.libvirtError as exc:
            raise failure(exc, f"VM {vm.name} cannot start on {self.where}") from None

    def power_off(self, vm: VmRef, *, force: bool = False) -> None:
        """``force`` pulls the plug; otherwise the guest gets the ACPI power button and
        ``shutdown_timeout`` to act on it. Idempotent: an off VM stays off."""
        domain = self._domain(vm)
        if not domain.isActive():
            return
        try:
            if force:
                domain.destroy()
                return
            domain.shutdown()
        except libvirt.libvirtError as exc:
            if not domain.isActive():
                return  # it went off by itself meanwhile
            raise failure(exc, f"powering off VM {vm.name} on {self.where}") from None
        deadline = time.monotonic() + self.config.shutdown_timeout
        while domain.isActive():
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"VM {vm.name} did not shut down within {self.config.shutdown_timeout:.0f} s of the ACPI "
                    "power button (its OS ignores it, or has none); power it off with force, or raise "
                    "shutdown_timeout"
                )
            time.sleep(SHUTDOWN_POLL)

    def wait_booted(self, vm: VmRef, timeout: float) -> BootReport:
        """Running, and what the guest agent, DHCP leases or ARP saw of it (see boot.py): only what was
        observed, never a guess."""
        domain = self._domain(vm)
        facts = read_domain(domain.XMLDesc(0))
        nets = [network for network, _ in facts.nics]
        return boot.wait_booted(domain, self._conn(), nets, timeout)

    def console_log(self, vm: VmRef) -> str:
        """The serial console of the VM's last start (local URIs: the log is a file on this machine)."""
        facts = read_domain(self._domain(vm).XMLDesc(0))
        if not facts.serial_log or not self.uri.is_local:
            return ""
        path = Path(facts.serial_log)
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.appliances.close()
        if self._host is not None:
            self._host.close()
        self.connection.close()

    # ------------------------------------------------------------ internals

    def _attached_where(self, pool: str, name: str) -> str:
        """Where a volume marked as attached is written: an appliance, or the host itself."""
        holder = self.appliances.holder(pool, name)
        return f"appliance {holder}" if holder else f"host {self._host_name()}"

    def _own(self, provider: str, what: str) -> None:
        if provider != self.name:
            raise ProviderError(f"{what} belongs to provider {provider}, not {self.name}")

    def _lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self._conn().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise failure(exc, f"looking up VM {name} on {self.where}") from None

    def _domain(self, vm: VmRef) -> libvirt.virDomain:
        self._own(vm.provider, f"VM {vm.name}")
        check_name(vm.name, "VM")
        domain = self._lookup(vm.name)
        if domain is None:
            raise NotFound(f"VM {vm.name} does not exist on {self.where}")
        if not read_domain(domain.XMLDesc(0)).owned:
            raise ProviderError(
                f"VM {vm.name} on {self.where} was not created by hvmigrate; it is never changed by it"
            )
        return domain

    def _domains(self) -> list[DomainFacts]:
        facts = []
        for domain in self._conn().listAllDomains(0):
            with contextlib.suppress(libvirt.libvirtError):  # undefined while we looked
                facts.append(read_domain(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
        return facts

    def _vm_using(self, pool: str, name: str) -> str | None:
        path = None
        for facts in self._domains():
            if (pool, name) in facts.volumes:
                return facts.name
            if facts.files:
                if path is None:
                    volume = self.pools.find(pool, name)
                    path = volume.path if volume else ""
                if path and path in facts.files:
                    return facts.name
        return None

    def _serial_log(self, name: str) -> str | None:
        """libvirt's per-domain log folder, for system connections (a session daemon cannot write it)."""
        return f"/var/log/libvirt/qemu/{name}-serial.log" if self.uri.is_system else None

    def _vm_disks(self, request: VmRequest) -> tuple[DiskSpec, ...]:
        buses = _disk_buses(request)
        disks = []
        for disk, bus in zip(request.disks, buses, strict=True):
            pool, name = self._volume_of(disk)
            volume = self.pools.find(pool, name)
            if volume is None:
                raise ProviderError(f"VM {request.name}: disk {disk.name} does not exist in pool {pool}")
            if self.pools.attached(pool, name):
                raise ProviderError(
                    f"VM {request.name}: disk {disk.name} is still attached to "
                    f"{self._attached_where(pool, name)}; detach first"
                )
            vm = self._vm_using(pool, name)
            if vm:
                raise ProviderError(f"VM {request.name}: disk {disk.name} already belongs to VM {vm}")
            disks.append(DiskSpec(pool=pool, volume=name, format=volume.format, bus=bus))
        return tuple(disks)

    def _vm_nics(self, request: VmRequest) -> tuple[NicSpec, ...]:
        """Validated NICs with their MACs; a MAC already on the same network would break both VMs."""
        conn = self._conn()
        in_use = {(network, mac): facts.name for facts in self._domains() for network, mac in facts.nics}
        nics = []
        for index, nic in enumerate(request.nics):
            if not network_exists(conn, nic.network):
                known = ", ".join(networks(conn)) or "none"
                raise ProviderError(
                    f"network {nic.network} does not exist on {self.where} (networks: {known}); "
                    "create it or map the NIC to one of these"
                )
            model = nic.model or "virtio"
            if model not in NIC_MODELS:
                raise ProviderError(
                    f"VM {request.name}: NIC type {model} does not exist on KVM; use one of "
                    f"{', '.join(NIC_MODELS)}"
                )
            if nic.vlan is not None and not vlan_capable(conn, nic.network):
                raise ProviderError(
                    f"VM {request.name}: network {nic.network} cannot tag VLAN {nic.vlan} (libvirt tags "
                    "VLANs on Open vSwitch and SR-IOV networks only); map the NIC to a network carrying it"
                )
            mac = assign_mac(request.name, index, nic.mac, nic.network, in_use)
            nics.append(
                NicSpec(network=nic.network, mac=mac, model=model, vlan=nic.vlan, connected=nic.connected)
            )
        return tuple(nics)


def _disk_buses(request: VmRequest) -> list[str]:
    """The bus of each disk: virtio unless the request names another (guests without virtio)."""
    given = list(request.disk_controllers)
    buses = [(given[i] if i < len(given) else None) or "virtio" for i in range(len(request.disks))]
    for bus in buses:
        if bus not in DISK_BUSES:
            raise ProviderError(
                f"VM {request.name}: disk controller {bus} does not exist on KVM; use one of "
                f"{', '.join(DISK_BUSES)}"
            )
    return buses
