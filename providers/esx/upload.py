"""The cold path: a finished disk image uploaded as a flat VMDK through the datastore HTTP file interface.

For users who can afford downtime and have no recovery appliance: the source is stopped, its disk image
is final, and it goes up as ``<name>-flat.vmdk`` by one streamed ``PUT /folder/...?dcPath=&dsName=``
beside a VMFS flat descriptor ``<name>.vmdk`` that names it, in the tool's disk folder with the same
ownership marker as any replica disk (disks.py), so find, attach, create_vm and delete treat it alike.

Resuming: neither ESXi's nor vcsim's ``/folder`` PUT takes a Content-Range (a PUT replaces the whole
file), so an upload cut short is sent again from the start. What Range *can* do is spare a whole upload:
when a flat file of the right size is already there (an upload that finished before a crash recorded
it), ranged GETs compare it with the image chunk by chunk, and only a difference sends it again. A server
that ignores Range (answers 200, not 206) gets no comparison: the upload is simply repeated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

from orchestrator.playbook.units import format_size
from providers.base import DiskRef, DiskRequest, ProviderError

from .disks import DiskPlace, DiskStore

CHUNK = 4 * 1024**2
Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def descriptor(place: DiskPlace, size: int) -> bytes:
    """A VMFS flat-extent descriptor for ``size`` bytes, as ESXi writes for a thick disk."""
    sectors = size // 512
    cylinders = max(1, sectors // (255 * 63))
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        'encoding="UTF-8"\n'
        "CID=fffffffe\n"
        "parentCID=ffffffff\n"
        'createType="vmfs"\n\n'
        "# Extent description\n"
        f'RW {sectors} VMFS "{place.name}-flat.vmdk"\n\n'
        "# The Disk Data Base\n#DDB\n\n"
        'ddb.adapterType = "lsilogic"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        'ddb.geometry.heads = "255"\n'
        'ddb.geometry.sectors = "63"\n'
        'ddb.virtualHWVersion = "13"\n'
    ).encode()


class Uploader:
    """Uploads images into a DiskStore's places; one HTTPS stream per disk, the API session's cookie."""

    def __init__(self, store: DiskStore) -> None:
        self.store = store
        self.conn = store.conn
        self.datacenter = store.scope.datacenter_name

    def upload(
        self, image: Path, request: DiskRequest, free: int, progress: Progress | None = None
    ) -> DiskRef:
        """The disk ``request`` holding ``image``'s bytes; idempotent (a finished upload is found again)."""
        size = image.stat().st_size
        if size % 512:
            raise ProviderError(f"image {image} is {size} bytes, not a whole number of 512-byte sectors")
        if request.size < size:
            raise ProviderError(
                f"disk {request.name} is {format_size(request.size)}, smaller than image {image} "
                f"({format_size(size)})"
            )
        capacity = -(-request.size // 1024) * 1024
        found = self.store.find(request)
        if found is not None:
            return found
        place = self.store.place(request.name, request.datastore)
        marker = self.store.marker(place)
        if marker is None and self.store.vmdk_exists(place):
            raise ProviderError(
                f"a disk {place.path} already exists and was not created by hvmigrate; it is never "
                "overwritten: rename the disk or remove that one yourself"
            )
        if marker is None and capacity > free:
            raise ProviderError(
                f"datastore {place.datastore} has {format_size(max(free, 0))} free, disk {request.name} "
                f"needs {format_size(capacity)}; free space or choose another datastore"
            )
        self.store._make_folder(place)
        self.store._write_marker(place, "uploading", capacity, "thick")
        if not self._already_there(place, image, capacity, progress):
            self._put_flat(place, image, capacity, progress)
        self.conn.write_datastore_file(
            self.datacenter, place.datastore, place.vmdk, descriptor(place, capacity)
        )
        self.store._write_marker(place, "ready", capacity, "thick")
        return DiskRef(self.store.provider, place.path, place.name, capacity, "vmdk", place.datastore)

    def replace(self, place: DiskPlace, image: Path, capacity: int, progress: Progress | None = None) -> None:
        """Put ``image`` into the tool's existing disk at ``place`` (appliance: host, cold.py): compared by
        ranged GETs first, sent whole where it differs. The marker stays ready throughout: the caller keeps
        the image until this returns, so an upload cut short is simply made again."""
        if self.store.marker(place) is None:
            raise ProviderError(
                f"disk {place.path} was not created by hvmigrate; it is never overwritten by an upload"
            )
        if not self._already_there(place, image, capacity, progress):
            self._put_flat(place, image, capacity, progress)
        self.conn.write_datastore_file(
            self.datacenter, place.datastore, place.vmdk, descriptor(place, capacity)
        )
        self.store._write_marker(place, "ready", capacity, "thick")

    def _blocks(self, image: Path, capacity: int) -> Iterator[bytes]:
        """The image, then zeros up to the disk's capacity, in CHUNK pieces."""
        sent = 0
        with image.open("rb") as handle:
            while True:
                block = handle.read(CHUNK)
                if not block:
                    break
                sent += len(block)
                yield block
        while sent < capacity:
            block = bytes(min(CHUNK, capacity - sent))
            sent += len(block)
            yield block

    def _put_flat(self, place: DiskPlace, image: Path, capacity: int, progress: Progress | None) -> None:
        done = 0

        def body() -> Iterator[bytes]:
            nonlocal done
            for block in self._blocks(image, capacity):
                yield block
                done += len(block)
                if progress:
                    progress(done, capacity)

        url = self.conn.datastore_path_url(self.datacenter, place.datastore, place.flat)
        status = self.conn.stream_put(url, body(), capacity)
        if status not in (200, 201, 204):
            raise ProviderError(
                f"uploading {image} to [{place.datastore}] {place.flat} on {self.conn.where} failed: HTTP "
                f"{status} after {format_size(done)}; run again (the upload starts over)"
            )

    def _already_there(self, place: DiskPlace, image: Path, capacity: int, progress: Progress | None) -> bool:
        """True when the flat file on the datastore already holds the image (compared by ranged GETs)."""
        url = self.conn.datastore_path_url(self.datacenter, place.datastore, place.flat)
        if self.conn.remote_size(url) != capacity:
            return False
        offset = 0
        for block in self._blocks(image, capacity):
            status, remote = self.conn.get_range(url, offset, len(block))
            if status != 206:  # the server ignores Range: nothing to compare piecewise
                return False
            if hashlib.sha256(remote).digest() != hashlib.sha256(block).digest():
                return False
            offset += len(block)
            if progress:
                progress(offset, capacity)
        return True
