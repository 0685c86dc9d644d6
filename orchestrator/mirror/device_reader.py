"""Reading a disk by its Windows device name, live or as it was when VSS shadow copies of its volumes were
taken. Shipped with the agent (stdlib only).

Windows has no ``SEEK_END`` answer, ``pread`` or ``SEEK_DATA`` for a disk device, and asking it for the
size takes an IOCTL (ctypes and a handle the C runtime does not expose), so the size comes with the read
request, read from Get-Disk by the orchestrator. Raw disk I/O on Windows must be whole sectors at
sector offsets: every read here is a whole chunk at a chunk offset (chunk sizes are powers of two of at
least 4 KiB), cut only at extent boundaries, and ``check_alignment`` refuses a request whose disk size
or extents are not whole 512-byte sectors, so no read is ever unaligned. Assumed, not checked: a short
read from a device returns whole sectors (Windows' ReadFile on a disk does), and buffers need no
alignment, which holds because the C runtime opens without FILE_FLAG_NO_BUFFERING.

VSS snapshots volumes, not disks. ``OverlayReader`` makes the point-in-time disk image from both: the
disk's bytes come from ``\\\\.\\PhysicalDriveN`` except inside each snapshotted volume's partition
extent, which comes from that volume's shadow device (``\\\\?\\GLOBALROOT\\Device\\HarddiskVolumeShadow
CopyN``, read from its offset 0). What lies outside every extent (partition tables, the EFI and recovery
partitions VSS does not snapshot, gaps) is read live: it rarely changes while a server runs, and the
next incremental pass repairs what did.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Any

from . import portable_io
from .errors import MirrorError
from .portable_io import SECTOR


def check_alignment(path: str, size: int, chunk_size: int, extents: Sequence[Sequence[Any]] = ()) -> None:
    """Refuse a device read whose geometry would make Windows see an unaligned transfer."""
    if size % SECTOR or chunk_size % SECTOR:
        raise MirrorError(
            f"{path} is said to be {size} bytes read in {chunk_size}-byte chunks: a disk is whole "
            f"{SECTOR}-byte sectors; run discovery again (migrate validate) and retry"
        )
    for offset, length, device in extents:
        if offset % SECTOR or length % SECTOR:
            raise MirrorError(
                f"the extent of {device} on {path} (offset {offset}, {length} bytes) is not whole "
                f"{SECTOR}-byte sectors: run discovery again (migrate validate) and retry"
            )


class DeviceReader:
    """A disk (or a shadow copy's volume) by Windows device path, read-only, of a size given by the caller.

    Reads are positioned (portable_io: ``preadv``, or seek and read under a lock); no holes are known,
    so zero chunks are found by looking at them. Opened with O_BINARY where that exists (the C runtime
    would translate line ends otherwise), never with O_DIRECT, which Windows does not have.
    """

    def __init__(self, path: str, size: int | None) -> None:
        if not size or size <= 0:
            raise MirrorError(
                f"the size of {path} was not given: a Windows disk's size comes from the source's "
                "discovery; run discovery again (migrate validate) and retry"
            )
        self.path = path
        self.size = int(size)
        self.identity = f"device:{path}:{self.size}"
        self._fd = os.open(path, portable_io.open_flags(os.O_RDONLY))

    def read_into(self, offset: int, buf: Any) -> int:
        view = memoryview(buf).cast("B")[: max(0, min(len(buf), self.size - offset))]
        return portable_io.pread_full(self._fd, view, offset)

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        return bytes(buf[: self.read_into(offset, buf)])

    def allocated_ranges(self) -> None:
        return None

    def close(self) -> None:
        if self._fd >= 0:
            portable_io.close(self._fd)
            self._fd = -1


class OverlayReader:
    """A disk read from ``base`` except in ``extents`` ((disk offset, length, device path) each), which
    are read from offset 0 of their device: a disk image as of the shadow copies the extents name.

    It keeps the base's identity (the block map must not start over because shadow copies have new
    names each pass) and knows no holes (a hole of the live disk may hold data in the shadow).
    """

    def __init__(self, base: Any, extents: Sequence[Sequence[Any]]) -> None:
        self.base = base
        self.size = base.size
        self.identity = base.identity
        self.path = getattr(base, "path", "")
        ordered = sorted((int(o), int(n), str(d)) for o, n, d in extents)
        end = 0
        for offset, length, device in ordered:
            if length <= 0 or offset < end or offset + length > self.size:
                raise MirrorError(
                    f"the shadow copy extents of {self.path} overlap or pass its end ({device} at offset "
                    f"{offset}, {length} bytes, disk {self.size} bytes): run discovery again and retry"
                )
            end = offset + length
        self.extents = ordered
        self._devices: dict[str, DeviceReader] = {}
        try:
            for _offset, length, device in ordered:
                self._devices[device] = DeviceReader(device, length)
        except OSError as exc:
            self.close()
            raise MirrorError(
                f"cannot open the shadow copy {exc.filename or device} on this host: "
                f"{exc.strerror or exc}; it was removed before the pass read it: run the pass again "
                "(it takes a new one)",
                retryable=True,
            ) from None

    def read_into(self, offset: int, buf: Any) -> int:
        """Fill ``buf`` from ``offset``, each piece from whichever device holds it."""
        view = memoryview(buf).cast("B")[: max(0, min(len(buf), self.size - offset))]
        done = 0
        while done < len(view):
            position = offset + done
            source, at, room = self._piece(position)
            piece = view[done : done + min(room, len(view) - done)]
            got = source.read_into(at, piece)
            if got < len(piece):
                if source is self.base:
                    return done + got  # the disk ended: the caller says so, with the offset
                raise OSError(
                    errno.EIO,
                    f"the shadow copy {source.path} ended {got} bytes into a read at its offset {at} "
                    f"(disk offset {position}): it is smaller than its partition",
                )
            done += got
        return done

    def _piece(self, position: int) -> tuple[Any, int, int]:
        """(reader, offset in it, bytes up to the next boundary) for the disk byte at ``position``."""
        for offset, length, device in self.extents:
            if position < offset:
                return self.base, position, offset - position
            if position < offset + length:
                return self._devices[device], position - offset, offset + length - position
        return self.base, position, self.size - position

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        return bytes(buf[: self.read_into(offset, buf)])

    def allocated_ranges(self) -> None:
        return None

    def close(self) -> None:
        for device in self._devices.values():
            device.close()
        self._devices = {}
        self.base.close()
