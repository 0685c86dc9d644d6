"""What a vCenter or ESXi endpoint holds, read with the PropertyCollector in a few round trips.

Reading ``vm.name`` property by property costs one SOAP call each; a vCenter with thousands of VMs answers
one RetrievePropertiesEx over a container view in the time of a few. Everything here reads; nothing writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim, vmodl

from providers.base import DatastoreInfo, ProviderError

from .connection import Connection

OWNER_KEY = "hvmigrate.owner"  # extraConfig key on every VM the tool creates
OWNER_VALUE = "hvmigrate"
PROVIDER_KEY = "hvmigrate.provider"
ROLE_KEY = "hvmigrate.role"  # "replica" or "appliance"


@dataclass(frozen=True)
class HostFacts:
    name: str
    cluster: str | None
    version: str
    build: str
    in_maintenance: bool
    connection_state: str  # connected | disconnected | notResponding
    power_state: str


@dataclass(frozen=True)
class PortGroupFacts:
    name: str
    distributed: bool
    vlan: int | None  # None: trunk, private VLAN or unknown
    switch: str | None


@dataclass(frozen=True)
class DatastoreFacts:
    name: str
    capacity: int
    free: int
    uncommitted: int
    accessible: bool
    type: str
    url: str


@dataclass(frozen=True)
class VmFacts:
    name: str
    moref: str
    power_state: str
    owned: bool
    role: str | None
    template: bool


@dataclass(frozen=True)
class EsxInventory:
    """The whole of what the provider sees in its datacenter (Inventory keeps the names only)."""

    endpoint: str  # "VirtualCenter" or "HostAgent"
    version: str
    datacenters: tuple[str, ...]
    datacenter: str
    clusters: tuple[str, ...]
    hosts: tuple[HostFacts, ...]
    resource_pools: tuple[str, ...]
    folders: tuple[str, ...]
    datastores: tuple[DatastoreFacts, ...]
    port_groups: tuple[PortGroupFacts, ...]
    vms: tuple[VmFacts, ...] = field(default_factory=tuple)

    def unavailable_hosts(self) -> dict[str, str]:
        """Hosts a new VM cannot be placed on now: vCenter refuses, or DRS leaves them out."""
        found: dict[str, str] = {}
        for host in self.hosts:
            if host.connection_state and host.connection_state != "connected":
                found[host.name] = host.connection_state
            elif host.in_maintenance:
                found[host.name] = "in maintenance mode"
            elif host.power_state and host.power_state != "poweredOn":
                found[host.name] = host.power_state
        return found

    def datastore_infos(self) -> dict[str, DatastoreInfo]:
        """Free space as the other providers count it: thin disks reserve their whole size."""
        return {
            d.name: DatastoreInfo(d.name, d.capacity, max(0, d.free - d.uncommitted), d.accessible)
            for d in self.datastores
        }


def collect(conn: Connection, root: Any, kind: type, paths: list[str]) -> list[tuple[Any, dict[str, Any]]]:
    """(object, {path: value}) for every ``kind`` under ``root``, in one RetrievePropertiesEx (paged)."""
    content = conn.content

    def run() -> list[tuple[Any, dict[str, Any]]]:
        view = content.viewManager.CreateContainerView(root, [kind], True)
        try:
            traversal = vmodl.query.PropertyCollector.TraversalSpec(
                name="view", path="view", skip=False, type=vim.view.ContainerView
            )
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[
                    vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[traversal])
                ],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=paths, all=False)],
            )
            collector = content.propertyCollector
            found: list[tuple[Any, dict[str, Any]]] = []
            result = collector.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
            while result is not None:
                for item in result.objects or ():
                    found.append((item.obj, {p.name: p.val for p in item.propSet or ()}))
                token = result.token
                result = collector.ContinueRetrievePropertiesEx(token) if token else None
            return found
        finally:
            view.Destroy()

    return conn.call(run, f"reading the {kind.__name__.rsplit('.', 1)[-1]} objects")


def extra_config(options: Any) -> dict[str, str]:
    return {o.key: str(o.value) for o in options or ()}


class Scope:
    """The provider's datacenter (and cluster, when configured) and lookups inside it."""

    def __init__(self, conn: Connection, datacenter: str | None, cluster: str | None) -> None:
        self.conn = conn
        self._datacenter_name = datacenter
        self._cluster_name = cluster
        self._datacenter: vim.Datacenter | None = None

    @property
    def datacenter(self) -> vim.Datacenter:
        if self._datacenter is None:
            found = collect(self.conn, self.conn.content.rootFolder, vim.Datacenter, ["name"])
            names = sorted(props["name"] for _, props in found)
            if self._datacenter_name is None:
                if len(found) != 1:
                    raise ProviderError(
                        f"{self.conn.where} has {len(found)} datacenters ({', '.join(names) or 'none'}); "
                        "name one with datacenter:"
                    )
                self._datacenter = found[0][0]
                self._datacenter_name = found[0][1]["name"]
            else:
                match = [obj for obj, props in found if props["name"] == self._datacenter_name]
                if not match:
                    raise ProviderError(
                        f"datacenter {self._datacenter_name} does not exist on {self.conn.where} "
                        f"(datacenters: {', '.join(names) or 'none'}); fix datacenter:"
                    )
                self._datacenter = match[0]
        return self._datacenter

    @property
    def datacenter_name(self) -> str:
        """The configured name, or the only datacenter's (read once: every datastore URL names it)."""
        if self._datacenter_name is None:
            self._datacenter_name = self.conn.call(lambda: self.datacenter.name, "reading the datacenter")
        return self._datacenter_name

    def named(self, kind: type, paths: list[str] | None = None) -> dict[str, tuple[Any, dict[str, Any]]]:
        """Objects of ``kind`` in the datacenter by name (first wins on duplicates, as the UI shows)."""
        found: dict[str, tuple[Any, dict[str, Any]]] = {}
        for obj, props in collect(self.conn, self.datacenter, kind, ["name", *(paths or [])]):
            found.setdefault(props["name"], (obj, props))
        return found

    def cluster(self) -> vim.ClusterComputeResource | None:
        if self._cluster_name is None:
            return None
        clusters = self.named(vim.ClusterComputeResource)
        if self._cluster_name not in clusters:
            raise ProviderError(
                f"cluster {self._cluster_name} does not exist in datacenter {self.datacenter_name} "
                f"(clusters: {', '.join(sorted(clusters)) or 'none'}); fix cluster:"
            )
        return clusters[self._cluster_name][0]

    def hosts(self) -> list[tuple[vim.HostSystem, dict[str, Any]]]:
        """Hosts in scope: the cluster's when one is configured, else every host of the datacenter."""
        root = self.cluster() or self.datacenter
        return collect(
            self.conn,
            root,
            vim.HostSystem,
            [
                "name",
                "parent",
                "config.product.version",
                "config.product.build",
                "runtime.inMaintenanceMode",
                "runtime.connectionState",
                "runtime.powerState",
            ],
        )

    def datastores(self) -> list[DatastoreFacts]:
        facts = []
        paths = ["summary.capacity", "summary.freeSpace", "summary.uncommitted", "summary.accessible"]
        for name, (_, props) in self.named(vim.Datastore, [*paths, "summary.type", "summary.url"]).items():
            facts.append(
                DatastoreFacts(
                    name=name,
                    capacity=int(props.get("summary.capacity") or 0),
                    free=int(props.get("summary.freeSpace") or 0),
                    uncommitted=int(props.get("summary.uncommitted") or 0),
                    accessible=bool(props.get("summary.accessible")),
                    type=str(props.get("summary.type") or ""),
                    url=str(props.get("summary.url") or ""),
                )
            )
        return sorted(facts, key=lambda d: d.name)

    def datastore(self, name: str) -> tuple[vim.Datastore, DatastoreFacts]:
        found = self.named(vim.Datastore)
        if name not in found:
            raise ProviderError(
                f"datastore {name} does not exist in datacenter {self.datacenter_name} (datastores: "
                f"{', '.join(sorted(found)) or 'none'}); fix the disk's datastore: or the provider's"
            )
        facts = next(d for d in self.datastores() if d.name == name)
        if not facts.accessible:
            raise ProviderError(f"datastore {name} is not accessible; check its storage, then run again")
        return found[name][0], facts

    def port_groups(self) -> dict[str, tuple[Any, PortGroupFacts]]:
        """Standard port groups (Network objects) and distributed ones, by name."""
        groups: dict[str, tuple[Any, PortGroupFacts]] = {}
        vlans: dict[str, int] = {}
        for host, props in collect(self.conn, self.datacenter, vim.HostSystem, ["config.network.portgroup"]):
            del host
            for group in props.get("config.network.portgroup") or ():
                vlans.setdefault(group.spec.name, int(group.spec.vlanId))
        distributed = collect(
            self.conn,
            self.datacenter,
            vim.dvs.DistributedVirtualPortgroup,
            ["name", "config.defaultPortConfig", "config.distributedVirtualSwitch", "config.uplink"],
        )
        for obj, props in distributed:
            if props.get("config.uplink"):
                continue  # uplink port groups carry the host's NICs, not VMs
            setting = props.get("config.defaultPortConfig")
            vlan_spec = getattr(setting, "vlan", None)
            vlan = getattr(vlan_spec, "vlanId", None)
            switch = props.get("config.distributedVirtualSwitch")
            groups[props["name"]] = (
                obj,
                PortGroupFacts(
                    name=props["name"],
                    distributed=True,
                    vlan=int(vlan) if isinstance(vlan, int) else None,
                    switch=self.conn.call(lambda s=switch: s.name, "reading a switch") if switch else None,
                ),
            )
        for obj, props in collect(self.conn, self.datacenter, vim.Network, ["name"]):
            if isinstance(obj, vim.dvs.DistributedVirtualPortgroup) or props["name"] in groups:
                continue
            if type(obj).__name__.endswith("OpaqueNetwork"):
                continue
            groups[props["name"]] = (
                obj,
                PortGroupFacts(props["name"], distributed=False, vlan=vlans.get(props["name"]), switch=None),
            )
        return groups

    def vms(self) -> list[VmFacts]:
        found = collect(
            self.conn,
            self.datacenter,
            vim.VirtualMachine,
            ["name", "runtime.powerState", "config.extraConfig", "config.template"],
        )
        facts = []
        for obj, props in found:
            extra = extra_config(props.get("config.extraConfig"))
            facts.append(
                VmFacts(
                    name=props["name"],
                    moref=obj._moId,
                    power_state=str(props.get("runtime.powerState") or ""),
                    owned=extra.get(OWNER_KEY) == OWNER_VALUE,
                    role=extra.get(ROLE_KEY),
                    template=bool(props.get("config.template")),
                )
            )
        return sorted(facts, key=lambda v: v.name)

    def vm(self, name: str) -> tuple[vim.VirtualMachine, VmFacts] | None:
        """The VM called ``name`` in the datacenter (the tool's or not), or None."""
        for facts in self.vms():
            if facts.name == name:
                return vim.VirtualMachine(facts.moref, self.conn.stub), facts
        return None

    def describe(self) -> EsxInventory:
        about = self.conn.content.about
        datacenters = tuple(
            sorted(
                p["name"]
                for _, p in collect(self.conn, self.conn.content.rootFolder, vim.Datacenter, ["name"])
            )
        )
        hosts = []
        for _, props in self.hosts():
            parent = props.get("parent")
            cluster = (
                self.conn.call(lambda p=parent: p.name, "reading a cluster")
                if isinstance(parent, vim.ClusterComputeResource)
                else None
            )
            hosts.append(
                HostFacts(
                    name=props["name"],
                    cluster=cluster,
                    version=str(props.get("config.product.version") or ""),
                    build=str(props.get("config.product.build") or ""),
                    in_maintenance=bool(props.get("runtime.inMaintenanceMode")),
                    connection_state=str(props.get("runtime.connectionState") or ""),
                    power_state=str(props.get("runtime.powerState") or ""),
                )
            )
        return EsxInventory(
            endpoint=about.apiType,
            version=about.version,
            datacenters=datacenters,
            datacenter=self.datacenter_name,
            clusters=tuple(sorted(self.named(vim.ClusterComputeResource))),
            hosts=tuple(sorted(hosts, key=lambda h: h.name)),
            resource_pools=tuple(sorted(self.named(vim.ResourcePool))),
            folders=tuple(sorted(self.named(vim.Folder))),
            datastores=tuple(self.datastores()),
            port_groups=tuple(sorted((f for _, f in self.port_groups().values()), key=lambda p: p.name)),
            vms=tuple(self.vms()),
        )
