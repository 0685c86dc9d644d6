"""A server given as raw disk images (``source: {type: image}``): the quickstart's sources.

An image stands for a server that is switched off: there is nothing to quiesce or shut down, and it is
only ever read. Every open here is O_RDONLY (the partition probe, debugfs for the guest's /etc, and the
mirror's reader), so pointing a playbook at a golden image cannot damage it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.guest.disk_layout import DiskLayout, filesystems_of, read_layout
from orchestrator.guest.extfs import GuestFsError
from orchestrator.guest.linux import RootFs, find_linux_root, os_release, parse_interfaces
from orchestrator.playbook.models import ImageSource as ImageSourceConfig
from orchestrator.playbook.units import format_size
from providers.base import AgentLocation, DiskReader, ProviderError, SourceDisk, SourceFacts, SourceNic


class ImageSource:
    """The `Source` of one server whose disks are image files; names its disks by file name."""

    def __init__(self, name: str, config: ImageSourceConfig) -> None:
        self.name = name
        self.config = config
        self.paths = [Path(p).expanduser().resolve() for p in (config.path, *config.extra_disks)]
        names = [p.name for p in self.paths]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ProviderError(
                f"server {name}: two images are both named {duplicates[0]}; disks are named "
                "by file name, so rename one"
            )
        # Images in one folder usually sit on one disk: they share a per-source-host slot.
        self.host = f"image:{self.paths[0].parent}"

    def __repr__(self) -> str:
        return f"ImageSource({self.name!r}, {str(self.paths[0])!r})"

    def discover(self) -> SourceFacts:
        disks: list[SourceDisk] = []
        layouts: list[DiskLayout] = []
        for index, path in enumerate(self.paths):
            disk, layout = self._inspect(path, declared=self.config.size if index == 0 else None)
            disks.append(disk)
            layouts.append(layout)
        root = self._linux_root(self.paths[0])
        release = os_release(root) if root else {}
        hostname = self.config.hostname or self._hostname(root) or self.name
        if self.config.firmware:
            firmware = self.config.firmware
        else:
            firmware = "uefi" if layouts[0].table == "gpt" and layouts[0].has_efi_system_partition else "bios"
        has_release = bool(release)
        return SourceFacts(
            hostname=hostname,
            os="linux" if has_release else "unknown",
            os_detail=release.get("PRETTY_NAME", release.get("NAME", "Linux")) if has_release else "",
            firmware=firmware,
            disks=tuple(disks),
            nics=self._nics(root),
        )

    def open_disk(self, name: str) -> DiskReader:
        """A read-only reader of the image named ``name`` (its file name, as the playbook's disk map says)."""
        from orchestrator.mirror.file_reader import FileDiskReader

        path = self._path(name)
        try:
            return FileDiskReader(path)
        except OSError as exc:
            raise ProviderError(
                f"server {self.name}: cannot open image {path}: {exc.strerror or exc}"
            ) from None

    def disk_location(self, name: str) -> AgentLocation:
        """An image on this machine: read in-process when the target is here too, else by a local agent."""
        return AgentLocation(transport=None, path=str(self._path(name)))

    def quiesce(self) -> None:
        """An image is not running: nothing to freeze."""

    def thaw(self, state: Mapping[str, Any] | None = None) -> None:
        """Nothing was frozen."""

    def shutdown(self, timeout: float, force: bool) -> None:
        """An image is never running; cutover's shutdown is a no-op that leaves the file untouched."""

    def start(self) -> None:
        """Nothing to start again."""

    def close(self) -> None:
        """Nothing stays open between calls."""

    # ------------------------------------------------------------ internals

    def _path(self, name: str) -> Path:
        for path in self.paths:
            if path.name == name:
                return path
        known = ", ".join(p.name for p in self.paths)
        raise ProviderError(f"server {self.name} has no disk {name!r}; its disks are: {known}")

    def _inspect(self, path: Path, declared: int | None) -> tuple[SourceDisk, DiskLayout]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ProviderError(
                f"server {self.name}: image {path} does not exist; fix source.path (relative "
                "paths start at the playbook's folder) or generate the quickstart images with "
                "`python -m orchestrator.quickstart DIR`"
            ) from None
        except OSError as exc:
            raise ProviderError(f"server {self.name}: cannot read image {path}: {exc.strerror}") from None
        try:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise ProviderError(f"server {self.name}: {path} is not a disk image file")
            size = os.lseek(fd, 0, os.SEEK_END)
            if declared is not None and size < declared:
                raise ProviderError(
                    f"image {path} is {size} bytes ({format_size(size)}) but the playbook "
                    f"declares {declared} ({format_size(declared)}); fix source.size or the image"
                )

            def read(offset: int, length: int) -> bytes:
                return os.pread(fd, length, offset)

            layout = read_layout(read, size)
            filesystems = tuple(kind for _, kind in filesystems_of(read, layout))
            used = _allocated_bytes(fd, size)
        finally:
            os.close(fd)
        return SourceDisk(path.name, size, used, layout.table, filesystems), layout

    def _linux_root(self, path: Path) -> RootFs | None:
        try:
            return find_linux_root(path)
        except GuestFsError as exc:  # e2fsprogs missing: facts without the guest's /etc would mislead
            raise ProviderError(f"server {self.name}: cannot look inside {path}: {exc}") from None

    def _hostname(self, root: RootFs | None) -> str | None:
        if root is None:
            return None
        raw = root.fs.read("/etc/hostname")
        text = raw.decode(errors="replace").strip() if raw else ""
        return text.splitlines()[0].strip() if text else None

    def _nics(self, root: RootFs | None) -> tuple[SourceNic, ...]:
        """NICs documented by ``hwaddress`` lines; an image has no live NIC to ask for its MAC."""
        raw = root.fs.read("/etc/network/interfaces") if root else None
        if not raw:
            return ()
        nics: dict[str, SourceNic] = {}
        for stanza in parse_interfaces(raw.decode(errors="replace")):
            if not stanza.hwaddress:
                continue
            previous = nics.get(stanza.name)  # inet and inet6 stanzas of one interface
            addresses = (previous.addresses if previous else ()) + stanza.addresses
            nics[stanza.name] = SourceNic(stanza.name, stanza.hwaddress, addresses)
        return tuple(nics.values())


def _allocated_bytes(fd: int, size: int) -> int | None:
    """Bytes in data extents (SEEK_DATA/SEEK_HOLE); None where the file system cannot tell."""
    total = 0
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            total += end - start
            offset = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise
    return total
