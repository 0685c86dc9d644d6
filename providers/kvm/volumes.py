"""Replica volumes in libvirt storage pools: created sparse, found again by name, removed with their sidecars.

A volume carries no metadata of its own, so ownership lives beside it: an empty marker volume
``<volume>.hvmigrate`` is created *before* the volume and removed *after* it. A volume without its marker
is somebody else's: never returned by find, never overwritten by create, never deleted. A crash between
the two steps leaves either a lone marker (harmless: create goes on) or nothing.

Free space follows the simulator's rule: a thin volume still reserves its whole size. The pool's free
bytes minus what its volumes may still grow into is what a new volume may take; a datastore that fills
up half-way through a mirror costs hours, a refusal at creation costs nothing.

Other sidecars (``<volume>.hvmap``, the mirror's block map; ``<volume>.hvattach``, "the data plane may
write this") are removed with the volume, as a datastore removes a disk's metadata.
"""

from __future__ import annotations

import contextlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from orchestrator.playbook.units import format_size
from providers.base import DatastoreInfo, NotFound, ProviderError

from .connection import Connection, failure, reason

FORMATS = ("raw", "qcow2")
FILE_POOLS = ("dir", "fs", "netfs")  # pools whose volumes are files: sidecars can sit beside them
OWNER_SUFFIX = ".hvmigrate"
ATTACH_SUFFIX = ".hvattach"
CLONING_SUFFIX = ".hvclone"  # present while a clone is being copied: the volume is not whole yet
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Volume:
    pool: str
    name: str
    path: str
    capacity: int
    allocation: int
    format: str


def check_name(name: str, what: str) -> None:
    """Names become file names on the host; anything that could escape the pool's folder is refused."""
    if not _NAME_RE.match(name or ""):
        raise ProviderError(
            f"{what} name {name!r} is not valid for libvirt: use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit"
        )


def volume_name(disk_name: str, fmt: str) -> str:
    check_name(disk_name, "disk")
    return f"{disk_name}.{fmt}"


def _refresh(pool: libvirt.virStoragePool) -> None:
    """Files written beside the volumes (block maps) show up only after a refresh; a refresh that
    collides with a volume being built elsewhere is skipped, the next call sees it."""
    with contextlib.suppress(libvirt.libvirtError):
        pool.refresh(0)


def _volume_xml(name: str, capacity: int, fmt: str, allocation: int) -> str:
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(root, "allocation", unit="bytes").text = str(allocation)
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", type=fmt)
    if fmt == "qcow2":
        # v3 (compat 1.1): zero clusters, so zeroes and discards through qemu-nbd stay sparse
        ET.SubElement(target, "compat").text = "1.1"
    return ET.tostring(root, encoding="unicode")


class Pools:
    def __init__(self, connection: Connection, default_pool: str) -> None:
        self.connection = connection
        self.default_pool = default_pool

    @property
    def where(self) -> str:
        return self.connection.uri.display

    # ------------------------------------------------------------ pools

    def pool(self, name: str | None) -> libvirt.virStoragePool:
        """The active pool ``name`` (the provider's default for None), refreshed."""
        name = name or self.default_pool
        conn = self.connection.get()
        try:
            pool = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            known = ", ".join(sorted(p.name() for p in conn.listAllStoragePools(0))) or "none"
            raise ProviderError(
                f"storage pool {name} does not exist on {self.where} (pools: {known}); create it "
                "(virsh pool-define-as) or set storage_pool / the disk's datastore"
            ) from None
        if not pool.isActive():
            raise ProviderError(
                f"storage pool {name} on {self.where} is not active; start it: virsh pool-start {name}"
            )
        _refresh(pool)
        return pool

    def datastores(self) -> dict[str, DatastoreInfo]:
        found = {}
        for pool in self.connection.get().listAllStoragePools(0):
            name = pool.name()
            try:
                if pool.isActive():
                    _refresh(pool)
                    _, capacity, _, _ = pool.info()
                    found[name] = DatastoreInfo(name, capacity, self.reservable(pool))
                else:
                    found[name] = DatastoreInfo(name, 0, 0, accessible=False)
            except libvirt.libvirtError:
                found[name] = DatastoreInfo(name, 0, 0, accessible=False)
        return found

    def reservable(self, pool: libvirt.virStoragePool) -> int:
        """Free bytes no existing volume may still grow into (thin volumes reserve their full size)."""
        _, _, _, available = pool.info()
        growth = 0
        for volume in pool.listAllVolumes(0):
            try:
                _, capacity, allocation = volume.info()
            except libvirt.libvirtError:
                continue  # removed while we looked
            growth += max(0, capacity - allocation)
        return max(0, available - growth)

    # ------------------------------------------------------------ volumes

    def _lookup(self, pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError:
            return None

    def describe(self, pool: libvirt.virStoragePool, volume: libvirt.virStorageVol) -> Volume:
        root = ET.fromstring(volume.XMLDesc(0))
        fmt = root.find("target/format")
        _, capacity, allocation = volume.info()
        return Volume(
            pool=pool.name(),
            name=volume.name(),
            path=volume.path(),
            capacity=capacity,
            allocation=allocation,
            format=fmt.get("type", "raw") if fmt is not None else "raw",
        )

    def find(self, pool_name: str | None, name: str) -> Volume | None:
        """The tool's own volume ``name``; None when absent or when it is not the tool's."""
        pool = self.pool(pool_name)
        volume = self._lookup(pool, name)
        if volume is None or self._lookup(pool, name + OWNER_SUFFIX) is None:
            return None
        return self.describe(pool, volume)

    def foreign(self, pool_name: str | None, name: str) -> bool:
        """A volume of that name exists and the tool did not create it."""
        pool = self.pool(pool_name)
        return self._lookup(pool, name) is not None and self._lookup(pool, name + OWNER_SUFFIX) is None

    def create(self, pool_name: str | None, name: str, size: int, fmt: str, thick: bool) -> Volume:
        pool = self.pool(pool_name)
        self.require_files(pool)
        if self._lookup(pool, name) is not None:
            raise ProviderError(
                f"a volume named {name} already exists in pool {pool.name()} on {self.where} and was not "
                "created by hvmigrate; it is never overwritten: remove it yourself or choose another vm_name"
            )
        free = self.reservable(pool)
        if size > free:
            raise ProviderError(
                f"storage pool {pool.name()} on {self.where} has {format_size(free)} free that no volume "
                f"may still grow into, volume {name} needs {format_size(size)}; free space or choose "
                "another pool (the disk's datastore)"
            )
        if self._lookup(pool, name + OWNER_SUFFIX) is None:
            self._create(pool, name + OWNER_SUFFIX, 0, "raw", 0)
        volume = self._create(pool, name, size, fmt, size if thick else 0)
        return self.describe(pool, volume)

    def _create(
        self, pool: libvirt.virStoragePool, name: str, capacity: int, fmt: str, allocation: int
    ) -> libvirt.virStorageVol:
        try:
            return pool.createXML(_volume_xml(name, capacity, fmt, allocation), 0)
        except libvirt.libvirtError as exc:
            raise failure(exc, f"creating volume {name} in pool {pool.name()} on {self.where}") from None

    def clone(self, pool_name: str | None, name: str, source: Volume, fmt: str) -> Volume:
        """A copy of ``source`` as the tool's own volume ``name`` (libvirt copies, converting the format
        and keeping holes). A ``.hvclone`` marker stands while the copy runs, so a crash half-way leaves a
        volume `incomplete` recognises; the caller deletes it and clones again."""
        pool = self.pool(pool_name)
        self.require_files(pool)
        if self._lookup(pool, name) is not None:
            raise ProviderError(
                f"a volume named {name} already exists in pool {pool.name()} on {self.where}; it is never "
                "overwritten: remove it or choose another name"
            )
        free = self.reservable(pool)
        if source.capacity > free:
            raise ProviderError(
                f"storage pool {pool.name()} on {self.where} has {format_size(free)} free that no volume "
                f"may still grow into, clone {name} needs {format_size(source.capacity)}; free space or "
                "choose another pool"
            )
        for marker in (OWNER_SUFFIX, CLONING_SUFFIX):
            if self._lookup(pool, name + marker) is None:
                self._create(pool, name + marker, 0, "raw", 0)
        origin = self.pool(source.pool).storageVolLookupByName(source.name)
        try:
            volume = pool.createXMLFrom(_volume_xml(name, source.capacity, fmt, 0), origin, 0)
        except libvirt.libvirtError as exc:
            raise failure(exc, f"cloning volume {source.name} into {name} on {self.where}") from None
        marker = self._lookup(pool, name + CLONING_SUFFIX)
        if marker is not None:
            marker.delete(0)
        return self.describe(pool, volume)

    def incomplete(self, pool_name: str | None, name: str) -> bool:
        """A clone whose copy did not finish (see `clone`)."""
        return self._lookup(self.pool(pool_name), name + CLONING_SUFFIX) is not None

    def require_files(self, pool: libvirt.virStoragePool) -> None:
        """Ownership markers and the mirror's block maps are files beside the volume: a logical, iSCSI
        or RBD pool has nowhere to keep them, so replica volumes go into file-based pools."""
        kind = ET.fromstring(pool.XMLDesc(0)).get("type", "")
        if kind not in FILE_POOLS:
            raise ProviderError(
                f"storage pool {pool.name()} on {self.where} is of type {kind}; replica volumes go into "
                f"file-based pools ({', '.join(FILE_POOLS)}) for now: choose one as storage_pool or datastore"
            )

    def sidecars(self, pool: libvirt.virStoragePool, name: str) -> list[str]:
        prefix = name + "."
        return sorted(v for v in pool.listVolumes() if v.startswith(prefix))

    def delete(self, pool_name: str | None, name: str) -> None:
        """Delete the volume, then its sidecars, the ownership marker last."""
        pool = self.pool(pool_name)
        volume = self._lookup(pool, name)
        if volume is None:
            raise NotFound(f"volume {name} does not exist in pool {pool.name()} on {self.where}")
        if self._lookup(pool, name + OWNER_SUFFIX) is None:
            raise ProviderError(
                f"volume {name} in pool {pool.name()} was not created by hvmigrate; it is never deleted by it"
            )
        try:
            volume.delete(0)
        except libvirt.libvirtError as exc:
            raise failure(exc, f"deleting volume {name} in pool {pool.name()} on {self.where}") from None
        _refresh(pool)
        for sidecar in sorted(self.sidecars(pool, name), key=lambda n: n.endswith(OWNER_SUFFIX)):
            found = self._lookup(pool, sidecar)
            if found is not None:
                try:
                    found.delete(0)
                except libvirt.libvirtError as exc:
                    raise ProviderError(
                        f"volume {name} was deleted but its sidecar {sidecar} could not be: {reason(exc)}; "
                        "delete it by hand (virsh vol-delete)"
                    ) from None

    # ------------------------------------------------------------ host attachments

    def attached(self, pool_name: str | None, name: str) -> bool:
        return self._lookup(self.pool(pool_name), name + ATTACH_SUFFIX) is not None

    def mark_attached(self, pool_name: str | None, name: str) -> None:
        pool = self.pool(pool_name)
        if self._lookup(pool, name + ATTACH_SUFFIX) is None:
            self._create(pool, name + ATTACH_SUFFIX, 0, "raw", 0)

    def clear_attached(self, pool_name: str | None, name: str) -> None:
        pool = self.pool(pool_name)
        marker = self._lookup(pool, name + ATTACH_SUFFIX)
        if marker is not None:
            try:
                marker.delete(0)
            except libvirt.libvirtError as exc:
                raise failure(exc, f"clearing the attachment of {name} in pool {pool.name()}") from None
