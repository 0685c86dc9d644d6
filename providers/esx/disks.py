"""Replica VMDKs on datastores: created, found again by name, cloned and removed, never someone else's.

Each disk lives in a folder of its own, ``[ds] <disk_folder>/<name>/<name>.vmdk``, beside an ownership
marker ``<name>.hvmigrate.json`` written through the datastore HTTP file interface. The marker is written
*before* the disk (state ``creating`` or ``cloning``) and says ``ready`` only once the VirtualDiskManager
task succeeded, so a crash in between leaves a disk that find never returns and the next create makes
again. A VMDK at that path without a marker is somebody else's: never returned, overwritten or deleted.

The marker also records the size: a VMDK descriptor holds it too on a real ESXi, but reading it back
means parsing descriptors, and vcsim writes empty ones. Deleting a disk removes its whole folder, so
the mirror's block map beside a flat file goes with it (a stale one would make a new disk of the same
name look already copied). The ``<disk_folder>`` above them is removed with its last disk when the tool
made it (it holds ``hvmigrate-folder.json`` then), so an undo leaves the datastore as it found it; one an
administrator made stays.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from orchestrator.playbook.units import format_size
from providers.base import DiskRef, DiskRequest, NotFound, ProviderError

from .inventory import Scope
from .tasks import run_task

MARKER_SUFFIX = ".hvmigrate.json"
FOLDER_MARKER = "hvmigrate-folder.json"  # in a disk_folder the tool made itself
DISK_TYPES = {"thin": "thin", "thick": "preallocated", "eager_zeroed": "eagerZeroedThick"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_DS_PATH_RE = re.compile(r"^\[(?P<ds>[^\]]+)\] (?P<path>.+)$")


def check_name(name: str, what: str) -> None:
    """Names become datastore folder and file names; anything that could escape them is refused."""
    if not _NAME_RE.match(name or ""):
        raise ProviderError(
            f"{what} name {name!r} is not valid on ESX: use up to 80 letters, digits, '-', '_' and '.', "
            "starting with a letter or digit"
        )


def split_datastore_path(path: str) -> tuple[str, str]:
    """``[ds] folder/file.vmdk`` -> (ds, folder/file.vmdk)."""
    match = _DS_PATH_RE.match(path)
    if not match:
        raise ProviderError(f"{path!r} is not a datastore path like '[datastore1] folder/disk.vmdk'")
    return match["ds"], match["path"]


@dataclass(frozen=True)
class DiskPlace:
    datastore: str
    folder: str  # inside the datastore
    name: str

    @property
    def vmdk(self) -> str:
        return f"{self.folder}/{self.name}.vmdk"

    @property
    def flat(self) -> str:
        return f"{self.folder}/{self.name}-flat.vmdk"

    @property
    def marker(self) -> str:
        return f"{self.folder}/{self.name}{MARKER_SUFFIX}"

    @property
    def path(self) -> str:
        """The datastore path vSphere takes: ``[ds] folder/name.vmdk``."""
        return f"[{self.datastore}] {self.vmdk}"

    @property
    def folder_path(self) -> str:
        return f"[{self.datastore}] {self.folder}"


class DiskStore:
    def __init__(self, provider: str, scope: Scope, disk_folder: str, default_datastore: Any, timeout: float):
        self.provider = provider
        self.scope = scope
        self.conn = scope.conn
        self.disk_folder = disk_folder.strip("/")
        self._default_datastore = default_datastore  # callable: the provider's default datastore name
        self.timeout = timeout

    # ------------------------------------------------------------ places and markers

    def place(self, name: str, datastore: str | None) -> DiskPlace:
        check_name(name, "disk")
        return DiskPlace(datastore or self._default_datastore(), f"{self.disk_folder}/{name}", name)

    def place_of(self, disk: DiskRef) -> DiskPlace:
        """Where a DiskRef's disk is, from its datastore and name (never from a path a journal carried)."""
        if disk.provider != self.provider:
            raise ProviderError(f"disk {disk.name} belongs to provider {disk.provider}, not {self.provider}")
        return self.place(disk.name, disk.datastore)

    def marker(self, place: DiskPlace) -> dict[str, Any] | None:
        data = self.conn.read_datastore_file(self.scope.datacenter_name, place.datastore, place.marker)
        if data is None:
            return None
        try:
            marker = json.loads(data)
        except ValueError:
            return None
        return marker if isinstance(marker, dict) and marker.get("owner") == "hvmigrate" else None

    def _write_marker(self, place: DiskPlace, state: str, size: int, provisioning: str) -> None:
        marker = {
            "owner": "hvmigrate",
            "provider": self.provider,
            "disk": place.name,
            "size": size,
            "provisioning": provisioning,
            "state": state,
            "at": time.time(),
        }
        body = json.dumps(marker, indent=1).encode()
        self.conn.write_datastore_file(self.scope.datacenter_name, place.datastore, place.marker, body)

    def vmdk_exists(self, place: DiskPlace) -> bool:
        return (
            self.conn.read_datastore_file(self.scope.datacenter_name, place.datastore, place.vmdk) is not None
        )

    def _ref(self, place: DiskPlace, size: int) -> DiskRef:
        return DiskRef(self.provider, place.path, place.name, size, "vmdk", place.datastore)

    # ------------------------------------------------------------ the Provider's disk calls

    def find(self, request: DiskRequest) -> DiskRef | None:
        """The tool's finished disk ``request.name``; None when absent, half made or not the tool's."""
        place = self.place(request.name, request.datastore)
        marker = self.marker(place)
        if marker is None or marker.get("state") != "ready" or not self.vmdk_exists(place):
            return None
        return self._ref(place, int(marker["size"]))

    def create(self, request: DiskRequest, free: int) -> DiskRef:
        """Idempotent by name; ``free`` is what the datastore can still give (thin disks count in full)."""
        if request.format != "vmdk":
            raise ProviderError(
                f"disk {request.name}: ESX stores VMDKs, not {request.format}; "
                "use format: vmdk (or leave it out)"
            )
        if request.provisioning not in DISK_TYPES:
            raise ProviderError(
                f"disk {request.name}: provisioning {request.provisioning} is not one of "
                "thin, thick, eager_zeroed"
            )
        if request.size <= 0 or request.size % 512:
            raise ProviderError(
                f"disk {request.name}: size {request.size} is not a positive multiple of 512 bytes"
            )
        size = -(-request.size // 1024) * 1024  # VMDK capacity is in KiB
        place = self.place(request.name, request.datastore)
        marker = self.marker(place)
        exists = self.vmdk_exists(place)
        if marker is None and exists:
            raise ProviderError(
                f"a disk {place.path} already exists and was not created by hvmigrate; it is never "
                "overwritten: rename the replica disk or remove that one yourself"
            )
        if marker is not None and marker.get("state") == "ready" and exists:
            if int(marker["size"]) != size:
                raise ProviderError(
                    f"disk {request.name} already exists on datastore {place.datastore} with "
                    f"{format_size(int(marker['size']))}, not the {format_size(size)} asked; "
                    "delete it or rename it"
                )
            return self._ref(place, size)
        if marker is not None and exists:  # a create or clone a crash cut short
            self._delete_vmdk(place)
        if size > free:
            raise ProviderError(
                f"datastore {place.datastore} has {format_size(max(free, 0))} free, "
                f"disk {request.name} needs "
                f"{format_size(size)}; free space or choose another datastore"
            )
        self._make_folder(place)
        self._write_marker(place, "creating", size, request.provisioning)
        spec = vim.VirtualDiskManager.FileBackedVirtualDiskSpec(
            diskType=DISK_TYPES[request.provisioning], adapterType="lsiLogic", capacityKb=size // 1024
        )
        manager = self.conn.content.virtualDiskManager
        run_task(
            self.conn,
            lambda: manager.CreateVirtualDisk_Task(
                name=place.path, datacenter=self.scope.datacenter, spec=spec
            ),
            f"creating disk {place.path}",
            self.timeout,
        )
        self._write_marker(place, "ready", size, request.provisioning)
        return self._ref(place, size)

    def clone(self, source: DiskRef, request: DiskRequest, free: int) -> DiskRef:
        """CopyVirtualDisk_Task into the tool's folder; a half-made clone is made again, never returned."""
        src = self.place_of(source)
        src_marker = self.marker(src)
        if src_marker is None or src_marker.get("state") != "ready" or not self.vmdk_exists(src):
            raise NotFound(f"disk {source.name} does not exist on datastore {src.datastore}")
        existing = self.find(request)
        if existing is not None:
            return existing
        place = self.place(request.name, request.datastore)
        marker = self.marker(place)
        exists = self.vmdk_exists(place)
        if marker is None and exists:
            raise ProviderError(
                f"a disk {place.path} already exists and was not created by hvmigrate; it is never "
                "overwritten: choose another name for the clone"
            )
        if exists:
            self._delete_vmdk(place)  # a clone a crash cut short
        size = int(src_marker["size"])
        if size > free:
            raise ProviderError(
                f"datastore {place.datastore} has {format_size(max(free, 0))} free, "
                f"clone {request.name} needs "
                f"{format_size(size)}; free space or choose another datastore"
            )
        self._make_folder(place)
        provisioning = str(src_marker.get("provisioning", "thin"))
        self._write_marker(place, "cloning", size, provisioning)
        manager = self.conn.content.virtualDiskManager
        dc = self.scope.datacenter
        run_task(
            self.conn,
            lambda: manager.CopyVirtualDisk_Task(
                sourceName=src.path, sourceDatacenter=dc, destName=place.path, destDatacenter=dc, force=False
            ),
            f"copying disk {src.path} to {place.path}",
            self.timeout,
        )
        self._write_marker(place, "ready", size, provisioning)
        return self._ref(place, size)

    def delete(self, disk: DiskRef, used_by: str | None) -> None:
        """Refuses a foreign disk and one a VM still uses; NotFound when it is already gone."""
        place = self.place_of(disk)
        marker = self.marker(place)
        exists = self.vmdk_exists(place)
        if marker is None:
            if exists:
                raise ProviderError(f"disk {place.path} was not created by hvmigrate; not deleted")
            raise NotFound(f"disk {disk.name} does not exist on datastore {place.datastore}")
        if used_by:
            raise ProviderError(
                f"disk {disk.name} is attached to {used_by}; detach it (or delete the VM) first"
            )
        if exists:
            self._delete_vmdk(place)
        self._delete_folder(place.folder_path)
        self._remove_disk_folder_if_done(place.datastore)

    # ------------------------------------------------------------ internals

    def _delete_vmdk(self, place: DiskPlace) -> None:
        manager = self.conn.content.virtualDiskManager
        run_task(
            self.conn,
            lambda: manager.DeleteVirtualDisk_Task(name=place.path, datacenter=self.scope.datacenter),
            f"deleting disk {place.path}",
            self.timeout,
        )

    def _delete_folder(self, folder_path: str) -> None:
        file_manager = self.conn.content.fileManager
        run_task(
            self.conn,
            lambda: file_manager.DeleteDatastoreFile_Task(name=folder_path, datacenter=self.scope.datacenter),
            f"removing the folder {folder_path}",
            self.timeout,
        )

    def _listing(self, datastore: str, folder: str) -> list[str] | None:
        """Names in ``[datastore] folder`` (the datastore browser), None when the folder does not exist."""
        store, _ = self.scope.datastore(datastore)
        browser = self.conn.call(lambda: store.browser, f"reading the browser of datastore {datastore}")
        spec = vim.host.DatastoreBrowser.SearchSpec(matchPattern=["*"])
        try:
            found = run_task(
                self.conn,
                lambda: browser.SearchDatastore_Task(
                    datastorePath=f"[{datastore}] {folder}", searchSpec=spec
                ),
                f"listing [{datastore}] {folder}",
                self.timeout,
            )
        except NotFound:
            return None
        return [f.path for f in (found.file or ())] if found is not None else []

    def _remove_disk_folder_if_done(self, datastore: str) -> None:
        """The disk_folder goes with its last disk when the tool made it (it holds only FOLDER_MARKER)."""
        names = self._listing(datastore, self.disk_folder)
        if names != [FOLDER_MARKER]:
            return
        self._delete_folder(f"[{datastore}] {self.disk_folder}")

    def _make_folder(self, place: DiskPlace) -> None:
        if self._listing(place.datastore, self.disk_folder) is None:
            self._make_directory(f"[{place.datastore}] {self.disk_folder}")
            marker = {"owner": "hvmigrate", "provider": self.provider, "made": time.time()}
            self.conn.write_datastore_file(
                self.scope.datacenter_name,
                place.datastore,
                f"{self.disk_folder}/{FOLDER_MARKER}",
                json.dumps(marker).encode(),
            )
        self._make_directory(place.folder_path)

    def _make_directory(self, folder_path: str) -> None:
        manager = self.conn.content.fileManager
        try:
            manager.MakeDirectory(
                name=folder_path, datacenter=self.scope.datacenter, createParentDirectories=True
            )
        except vim.fault.FileAlreadyExists:
            pass
        except Exception as exc:
            # vcsim answers an existing folder with CannotCreateFile; a real ESXi with FileAlreadyExists
            if isinstance(exc, vim.fault.CannotCreateFile) and "exist" in str(exc).lower():
                return
            raise self.conn.failure(exc, f"creating the folder {folder_path}") from None
