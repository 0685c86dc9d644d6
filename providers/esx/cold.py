"""``appliance: host`` on ESX, the cold path: no recovery appliance, each replica disk is uploaded once.

ESX has no writer on the host itself. For servers that can afford downtime (a disk image, a VM that is
shut down), the mirror writes each replica disk as a local image on this machine instead (a sparse raw
file under ``upload_dir``; every pass, the staging of the system state and its verify work on it as on any
local disk), and the finished image goes up through the datastore's ``/folder`` HTTP interface
(upload.py: one streamed PUT, compared by ranged GETs first so a finished upload is never sent twice) when
a VM is about to use the disk: ``create_vm`` (the cutover's replica), or ``clone_disk`` (the test copy's
clones, so they hold the replica as it is now). The local image goes after a successful upload, or with
``delete_disk``.

Nothing here knows about steps: the provider says ``cold_host`` in its limits, validation refuses a live
source for it (``appliance.cold_host_live_source``), and the steps run as for any ``appliance: host``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from providers.base import DiskEndpoint, DiskRef, ProviderError

from .disks import DiskPlace
from .upload import Uploader

if TYPE_CHECKING:
    from .provider import EsxProvider

MAP_SUFFIX = ".hvmap"  # the mirror's block map beside a local target (orchestrator/mirror/blockmap.py)
COPY_CHUNK = 4 * 1024**2


class ColdImages:
    """Local images of one provider's replica disks, under ``upload_dir/<provider>/<datastore>/``."""

    def __init__(self, provider: EsxProvider) -> None:
        self.p = provider
        self.root = Path(provider.config.upload_dir).expanduser() / provider.name

    def image(self, place: DiskPlace) -> Path:
        return self.root / place.datastore / f"{place.name}.img"

    def endpoint(self, disk: DiskRef, place: DiskPlace) -> DiskEndpoint:
        """The local image the mirror writes for ``disk``, made (sparse, the disk's size) if missing."""
        image = self.image(place)
        for folder in (self.root.parent, self.root, image.parent):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not image.exists():
            with open(image, "xb"):
                pass
            os.chmod(image, 0o600)
        if image.stat().st_size < disk.size:
            os.truncate(image, disk.size)
        return DiskEndpoint(
            "file", str(image), disk.size, transport={"vmdk": place.path, "upload": "on create_vm"}
        )

    def pending(self, place: DiskPlace) -> Path | None:
        """The disk's local image if the mirror wrote it (its block map is beside it): an image nothing
        wrote (a disk attached here but never mirrored) is never uploaded over the disk."""
        image = self.image(place)
        return image if image.is_file() and _map_of(image).is_file() else None

    def upload(self, disk: DiskRef, place: DiskPlace) -> bool:
        """Send the disk's local image into its VMDK, then drop the image; False when none is pending."""
        image = self.pending(place)
        if image is None:
            return False
        if image.stat().st_size > disk.size:
            raise ProviderError(
                f"the local image {image} of disk {disk.name} is larger than the disk; remove it and run the "
                "mirror again"
            )
        Uploader(self.p.disks).replace(place, image, disk.size)
        self.discard(place)
        return True

    def copy(self, source: DiskPlace, clone: DiskPlace) -> None:
        """The source's pending image as the clone's (sparse: zero blocks are skipped, not written)."""
        image = self.pending(source)
        if image is None:
            return
        target = self.image(clone)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        with open(image, "rb") as src, open(partial, "wb") as dst:
            os.fchmod(dst.fileno(), 0o600)
            while block := src.read(COPY_CHUNK):
                if block.count(0) == len(block):
                    dst.seek(len(block), os.SEEK_CUR)
                else:
                    dst.write(block)
            dst.truncate()
            os.fsync(dst.fileno())
        shutil.copyfile(_map_of(image), _map_of(target))  # the map first: the image makes it pending
        os.replace(partial, target)

    def discard(self, place: DiskPlace) -> None:
        image = self.image(place)
        for path in (image, _map_of(image), Path(str(_map_of(image)) + ".lock")):
            path.unlink(missing_ok=True)
        for folder in (image.parent, self.root):
            with contextlib.suppress(OSError):
                folder.rmdir()


def _map_of(image: Path) -> Path:
    return Path(str(image) + MAP_SUFFIX)
