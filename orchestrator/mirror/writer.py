"""The writer side of the data plane: owns the target disk and its block map.

It only ever receives messages a wire can carry (``write(offset, data, digest)``, ``zero(offset, length)``,
``confirm(offset, digest)``, ``check(offset, length, digest)``, ``checkpoint()``, ``finish()``), so a later
agent can run it next to the target disk and the reader next to the source, with the same code deciding
what is durable. Everything about crash safety lives here: the order "mark the extent hot, write the data,
fdatasync it, verify it, then record it" is what lets a killed copy resume without trusting a record whose
data may be missing (see blockmap.py).

The target is a raw file or a block device (by file descriptor), or an NBD export (nbd.py: how a qcow2
or any volume qemu-nbd can open is written). Both sit behind the same few operations (``FileTarget``,
``NbdTarget``): write, read back, make a range read as zeros, and make writes durable (fdatasync, or
NBD FLUSH), so the order above holds for both. An NBD export has no directory beside it, so its block map
lives where the caller says (``map_path``, e.g. ``<volume>.hvmap`` on the host).

Written chunks are settled in batches (every ``flush_bytes`` or ``flush_seconds``): a helper thread
fdatasyncs and re-reads one batch while the next is being written, so the disk never waits for Python and
Python rarely waits for the disk; the batch is recorded in the map only once its thread reports back.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import portable_io
from .blockmap import (
    _HEADER,
    ABSENT,
    DATA,
    FULL_PASS,
    IDENTITY_MAX,
    INCREMENTAL_PASS,
    MAGIC,
    ZERO,
    BlockMap,
    MapSnapshot,
    map_path_for,
)
from .errors import MirrorError
from .file_reader import data_ranges, device_size, is_hole
from .hashing import XXH3_128, aligned_buffer, chunk_hasher, is_zero, zero_block
from .nbd import STATE_ZERO, NbdClient, is_nbd_uri
from .portable_io import fdatasync, pwrite_all, try_lock

log = logging.getLogger(__name__)

DEFAULT_FLUSH_BYTES = 256 * 1024**2
DEFAULT_FLUSH_SECONDS = 5.0
_FLUSH_RECORDS = 65536  # records changed without data (confirmations) also get flushed now and then
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _libc_function(name: str, argtypes: list[type]) -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


_fallocate = _libc_function("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong])
_sync_file_range = _libc_function(
    "sync_file_range", [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
)
_SYNC_FILE_RANGE_WRITE = 0x02


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing this range now, without waiting: the disk then works while the
    next chunks arrive, and the batch's fdatasync finds little left to do."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a range so it reads as zeros; False when the file system or platform cannot."""
    if _fallocate is None:
        return False
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV):
        return False
    raise OSError(code, os.strerror(code))


def map_identity(source_identity: str, hash_algorithm: str) -> str:
    """The identity a block map stores: the source's, tagged with the digest algorithm unless xxh3_128.

    A map whose digests were made with another algorithm cannot tell which chunks changed, so it must
    start over; tagging the identity makes BlockMap.open do exactly that (its "different source" rule),
    and leaves the maps written by xxh3_128, the original algorithm, valid as they are.
    """
    if hash_algorithm == XXH3_128:
        return source_identity
    tagged = f"{source_identity} [hash {hash_algorithm}]"
    if len(tagged.encode()) > IDENTITY_MAX:  # too long for the header: shorten it without xxhash
        tagged = f"sha256:{hashlib.sha256(source_identity.encode()).hexdigest()} [hash {hash_algorithm}]"
    return tagged


def _stored_algorithm(map_path: Path) -> str | None:
    """The digest algorithm of an existing map, read from its identity tag (None: no readable map)."""
    try:
        with open(map_path, "rb") as handle:
            raw = handle.read(_HEADER.size)
    except OSError:
        return None
    if len(raw) < _HEADER.size or raw[:8] != MAGIC:
        return None
    fields = _HEADER.unpack(raw)
    identity = fields[10][: fields[9]].decode(errors="replace")
    if identity.endswith("]") and " [hash " in identity:
        return identity[identity.rindex(" [hash ") + 7 : -1]
    return XXH3_128


class FileTarget:
    """A raw file or a block device, by file descriptor: creating a missing file sparse, refusing one too
    small, and an exclusive lock so that a second writer is refused rather than interleaved: an flock on
    the target itself, or where there is no flock (Windows) an ``msvcrt`` lock of ``lock_path`` (beside
    the block map): Windows' byte-range locks are mandatory, so a lock on the disk would keep everyone
    else from reading its first byte.

    A Windows device path (``\\\\.\\PhysicalDriveN``, a mounted VHDX) is never created, fstat'd or
    sized here: Windows tells a disk's size only through an IOCTL, and the provider made the disk at
    least as large as the source. Raw disk I/O on Windows must be whole sectors at sector offsets; every
    transfer here is a whole chunk at a chunk offset (chunks are powers of two of 4 KiB or more, and a
    disk is a whole number of sectors), so that holds without a check per call.
    """

    def __init__(self, path: Path, size: int, lock_path: Path | None = None) -> None:
        self.name = str(path)
        self.fresh = False  # created here, so it reads as zeros throughout
        self.device = portable_io.is_windows_device(path)
        self._lock_fd = -1
        flags = portable_io.open_flags(os.O_RDWR)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if self.device:
                raise MirrorError(
                    f"there is no disk {path}: it is not mounted or has another number now; run the "
                    "mirror step again to mount it and find its number",
                    retryable=True,
                ) from None
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                self.fresh = True
            except FileExistsError:
                fd = os.open(path, flags)
            except OSError as exc:
                raise MirrorError(f"cannot create the target disk {path}: {exc.strerror}") from None
        except OSError as exc:
            raise MirrorError(f"cannot open the target disk {path}: {exc.strerror}") from None
        self.fd = fd
        try:
            self._lock(path, lock_path)
            self.identity = self._claim(path, size)
        except BaseException:
            self.close()
            raise

    def _lock(self, path: Path, lock_path: Path | None) -> None:
        if portable_io.fcntl is not None:
            held = try_lock(self.fd)
        else:
            lock_path = lock_path or Path(str(path) + ".lock")
            try:
                self._lock_fd = os.open(lock_path, portable_io.open_flags(os.O_RDWR | os.O_CREAT), 0o600)
            except OSError as exc:
                raise MirrorError(
                    f"cannot create {lock_path} beside the block map of {path}: {exc.strerror}; "
                    "choose a map_path in a writable directory"
                ) from None
            held = try_lock(self._lock_fd)
        if not held:
            raise MirrorError(f"another mirror is writing {path}: wait for it to finish", retryable=True)

    def _claim(self, path: Path, size: int) -> int:
        """Check and (when new) size the target; returns the identity the block map keeps (inode)."""
        if self.device:
            return 0  # a device has no inode to tell a replaced disk by
        fd = self.fd
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            current, identity = info.st_size, info.st_ino
        elif stat.S_ISBLK(info.st_mode):
            current, identity = device_size(fd), 0  # device inodes change at each boot: not an identity
        else:
            raise MirrorError(f"target {path} is neither a file nor a block device")
        if self.fresh:
            try:
                os.ftruncate(fd, size)  # sparse: the target costs nothing until data arrives
            except OSError as exc:
                raise MirrorError(f"cannot size the target disk {path}: {exc.strerror}") from None
        elif current < size:
            raise MirrorError(
                f"target disk is smaller than the source ({current} < {size}): grow "
                f"{path} to at least {size} bytes and run again"
            )
        return identity

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        pwrite_all(self.fd, data, offset)
        start_writeback(self.fd, offset, len(data))

    def punch(self, offset: int, length: int) -> bool:
        return punch_hole(self.fd, offset, length)

    def sync(self) -> None:
        fdatasync(self.fd)

    def read_into(self, view: memoryview, offset: int) -> int:
        """Fill ``view``; fewer bytes only where the target ends."""
        return portable_io.pread_full(self.fd, view, offset)

    def is_hole(self, offset: int, length: int) -> bool:
        return not self.device and is_hole(self.fd, offset, length)

    def data_ranges(self, size: int) -> Iterator[tuple[int, int]] | None:
        return None if self.device else data_ranges(self.fd, size)

    def close(self) -> None:
        if self.fd >= 0:
            portable_io.close(self.fd)  # releases the flock
            self.fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the msvcrt lock
            self._lock_fd = -1


class NbdTarget:
    """An NBD export (qemu-nbd serving a qcow2 volume, say), written through nbd.NbdClient.

    Where the server reports block status (qemu-nbd does), holes are known as for a sparse file: a new
    map starts with the chunks that read as zeros already *zero* (a fresh qcow2 is all zero: no chunk of
    it is written or read back for nothing), and a zero chunk is verified without reading it. Without
    block status they are unknown, and read. The export existed before the writer, so it is never
    ``fresh``, and it has no inode to notice a replaced volume by (``identity`` 0, as for a block
    device). The exclusive lock that keeps a second writer out is held on ``<map>.lock`` (flock, or
    msvcrt on Windows), since the export itself cannot be locked.
    """

    fresh = False
    identity = 0

    def __init__(self, uri: str, map_path: Path, size: int) -> None:
        self._lock_fd = -1
        self.client: NbdClient | None = None
        lock_path = Path(str(map_path) + ".lock")
        try:
            self._lock_fd = os.open(lock_path, portable_io.open_flags(os.O_RDWR | os.O_CREAT), 0o600)
            held = try_lock(self._lock_fd)
        except OSError as exc:
            self.close()
            raise MirrorError(
                f"cannot create {lock_path} beside the block map of {uri}: {exc.strerror}; "
                "choose a map_path in a writable directory"
            ) from None
        if not held:
            self.close()
            raise MirrorError(
                f"another mirror is writing {uri} (it holds {lock_path}): wait for it to finish",
                retryable=True,
            )
        try:
            self.client = NbdClient.connect(uri, writable=True)
        except BaseException:
            self.close()
            raise
        self.name = self.client.address.uri
        if self.client.size < size:
            current = self.client.size
            self.close()
            raise MirrorError(
                f"target disk is smaller than the source ({current} < {size}): grow the volume exported "
                f"as {self.name} to at least {size} bytes (qemu-img resize) and run again"
            )

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        assert self.client is not None
        self.client.pwrite(data, offset)

    def punch(self, offset: int, length: int) -> bool:
        """NBD_CMD_WRITE_ZEROES without NO_HOLE: reads as zeros, and the server may leave a hole."""
        assert self.client is not None
        if not self.client.can_write_zeroes:
            return False
        self.client.write_zeroes(offset, length, may_punch=True)
        return True

    def sync(self) -> None:
        assert self.client is not None
        self.client.flush()

    def read_into(self, view: memoryview, offset: int) -> int:
        assert self.client is not None
        self.client.pread_into(view, offset)
        return len(view)

    def is_hole(self, offset: int, length: int) -> bool:
        """Reads as zeros, says the server; False when it cannot say (the caller then reads)."""
        assert self.client is not None
        return self.client.can_block_status and self.client.reads_zero(offset, length)

    def data_ranges(self, size: int) -> Iterator[tuple[int, int]] | None:
        """Ranges that may hold data (not known to read as zeros); None without block status."""
        assert self.client is not None
        if not self.client.can_block_status:
            return None
        return self._data_ranges(self.client, size)

    @staticmethod
    def _data_ranges(client: NbdClient, size: int) -> Iterator[tuple[int, int]]:
        start = end = -1  # the run of data being merged (adjacent extents come separately)
        for offset, length, state in client.extents(0, size):
            if state & STATE_ZERO:
                continue
            if offset == end:
                end += length
                continue
            if start >= 0:
                yield start, end - start
            start, end = offset, offset + length
        if start >= 0:
            yield start, end - start

    def close(self) -> None:
        if self.client is not None:
            self.client.close()  # DISC: the server frees the client slot
            self.client = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


@dataclass
class _Batch:
    """Chunks written since the last batch, on their way to being durable and recorded."""

    entries: list[tuple[int, int, bytes]]  # (chunk, state, digest)
    through: int = 0  # every chunk below this one was received before the batch was taken
    thread: threading.Thread | None = None
    sync_error: OSError | None = None
    crash: BaseException | None = None
    failed: list[int] = field(default_factory=list)  # chunks that read back wrong


class TargetWriter:
    """Writes one replica disk, keeps its block map, and says what the target holds.

    One writer per target at a time (an exclusive flock on the target enforces it); different targets may
    be written from different threads, since nothing here is shared between writers.
    """

    def __init__(
        self,
        target_path: Path | str,
        *,
        size: int,
        chunk_size: int,
        source_identity: str,
        mode: str,
        verify: bool = True,
        check_received: bool = True,
        map_path: Path | None = None,
        flush_bytes: int = DEFAULT_FLUSH_BYTES,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        hash_algorithm: str = XXH3_128,
    ) -> None:
        self.path = Path(target_path)  # for an NBD export, only a label: ``name`` is what messages show
        self._hasher = chunk_hasher(hash_algorithm)
        self.hash_algorithm = hash_algorithm
        self._received_through = 0
        # every chunk below this index is durable and recorded (or needed nothing): what a remote reader
        # is told in acknowledgements, since the stream delivers chunks in disk order
        self.durable_through = 0
        self.size = size
        self.chunk_size = chunk_size
        self._verify = verify
        self._check_received = check_received
        self._flush_bytes = flush_bytes
        self._flush_seconds = flush_seconds
        self._clock = clock
        self._pending: list[tuple[int, int, bytes]] = []  # (chunk, state, digest) written, not yet durable
        self._pending_bytes = 0
        self._last_flush = clock()
        self._can_punch = True
        self._check_buffer: memoryview | None = None  # read-back buffer; one settling batch at a time uses it
        self._settling: _Batch | None = None
        self._last_hot: int | None = None
        self._closing = False  # finishing or aborting: cool every extent
        path_of_map = Path(map_path) if map_path else map_path_for(self.path)
        self._target = self._open_target(target_path, map_path, path_of_map)
        self.name = self._target.name
        fresh, target_ino = self._target.fresh, self._target.identity
        try:
            previous = None if fresh else _stored_algorithm(path_of_map)
            if previous is not None and previous != hash_algorithm:
                log.warning(
                    "block map %s holds %s digests and this pass uses %s: it cannot tell which chunks "
                    "changed, so it starts over and the next pass copies the whole disk",
                    path_of_map,
                    previous,
                    hash_algorithm,
                )
            self._map = BlockMap.open(
                path_of_map,
                chunk_size=chunk_size,
                disk_size=size,
                source_identity=map_identity(source_identity, hash_algorithm),
                target_ino=target_ino,
                fresh_target=fresh,
                seed_zero=lambda: range(-(-size // chunk_size)) if fresh else self._hole_chunks(),
            )
            if isinstance(self._target, NbdTarget) and self._map.reset_reason is None:
                self._distrust_data_in_holes()
            resuming = False
            if mode != "verify":
                resuming = self._map.begin_pass(
                    FULL_PASS if mode == "full" else INCREMENTAL_PASS, resume=mode == "full"
                )
            self.summary: MapSnapshot = self._map.snapshot(resuming)
            if previous is not None and previous != hash_algorithm:
                self._map.reset_reason = f"digest algorithm changed from {previous} to {hash_algorithm}"
        except BaseException:
            self._target.close()
            raise

    # ------------------------------------------------------------ opening

    def _open_target(
        self, target_path: Path | str, map_path: Path | None, path_of_map: Path
    ) -> FileTarget | NbdTarget:
        if not is_nbd_uri(target_path):
            return FileTarget(self.path, self.size, Path(str(path_of_map) + ".lock"))
        if map_path is None:
            raise MirrorError(
                f"the target {os.fspath(target_path)} is an NBD export, which has no directory to keep its "
                "block map in: give the mirror a map_path (a file beside the volume on its host, such as "
                "VOLUME.hvmap) and run again"
            )
        return NbdTarget(os.fspath(target_path), Path(map_path), self.size)

    def _hole_chunks(self) -> Iterator[int]:
        """Chunks lying wholly in a hole of the existing target: known zero without a write."""
        ranges = self._target.data_ranges(self.size)
        if ranges is None:
            return
        count = -(-self.size // self.chunk_size)
        cursor = 0
        try:
            for offset, length in ranges:
                first, last = offset // self.chunk_size, (offset + length - 1) // self.chunk_size
                yield from range(cursor, min(first, count))
                cursor = max(cursor, last + 1)
        except OSError as exc:
            raise MirrorError(
                f"cannot tell where the target disk {self.name} has holes: {exc.strerror}; "
                "check the target and run again",
                retryable=True,
            ) from None
        yield from range(cursor, count)

    def _distrust_data_in_holes(self) -> None:
        """Correct records of data where the target reads as zeros (no data chunk is all zeros).

        An export has no inode to tell a replaced volume by: a qcow2 deleted and created again under the
        same name keeps its old map, whose records would make the next incremental pass skip every
        chunk. The holes the server reports catch exactly that case, for the price of a block status walk.
        """
        wrong = 0
        for index in self._hole_chunks():
            if self._map.state(index) == DATA:
                self._map.set(index, ZERO, 0, b"")
                wrong += 1
        if wrong:
            log.warning(
                "block map %s records data in %d chunks that read as zeros on %s (was the volume "
                "replaced?): they are copied again",
                self._map.path,
                wrong,
                self.name,
            )
            try:
                self._map.flush()
            except OSError as exc:
                raise MirrorError(
                    f"cannot update the block map {self._map.path}: {exc.strerror}; "
                    "free space beside the target disk and run again"
                ) from None

    # ------------------------------------------------------------ messages

    def write(self, offset: int, data: bytes | bytearray | memoryview, digest: bytes) -> None:
        """Store one data chunk; it is recorded in the map only once durable (and verified)."""
        index = self._index(offset, len(data))
        if self._check_received and self._hasher.digest(data) != digest:
            raise MirrorError(
                f"the chunk at offset {offset} arrived damaged (digest mismatch): run again", retryable=True
            )
        self._mark_hot(index)
        try:
            self._target.pwrite(data, offset)
        except OSError as exc:
            self._map.set(index, ABSENT, 0, b"")
            raise self._write_error(exc, offset) from None
        self._pending.append((index, DATA, digest))
        self._received_through = index + 1
        self._pending_bytes += len(data)
        self._maybe_flush()

    def zero(self, offset: int, length: int) -> None:
        """Make one chunk read as zeros without storing them (a hole where the platform allows)."""
        index = self._index(offset, length)
        self._mark_hot(index)
        try:
            if not (self._can_punch and self._target.punch(offset, length)):
                self._can_punch = False
                self._target.pwrite(zero_block(length), offset)
                self._pending_bytes += length
        except OSError as exc:
            self._map.set(index, ABSENT, 0, b"")
            raise self._write_error(exc, offset) from None
        self._pending.append((index, ZERO, b""))
        self._received_through = index + 1
        self._maybe_flush()

    def confirm(self, offset: int, digest: bytes) -> None:
        """The reader found this chunk equal to the map: record it as checked in this pass (no I/O)."""
        index = self._index(offset, min(self.chunk_size, self.size - offset))
        state = self._map.state(index)
        known = self._hasher.zero(self._map.chunk_length(index)) if state == ZERO else self._map.digest(index)
        if state == ABSENT or known != digest:
            raise MirrorError(f"confirmed chunk at offset {offset} does not match the block map: run again")
        self._map.set(index, state, self._map.pass_number, digest)
        self._received_through = index + 1
        self._maybe_flush()

    def check(self, offset: int, length: int, digest: bytes) -> bool:
        """Verify mode: does the target chunk hash to ``digest``? A mismatch corrects the map to the truth,
        so the next pass re-sends the chunk even if the map believed it was there."""
        index = self._index(offset, length)
        try:
            state, actual = self._read_back(offset, length)
        except OSError as exc:
            raise MirrorError(
                f"cannot read the target disk {self.name} at offset {offset}: {exc.strerror}; "
                "check the target storage and run again",
                retryable=True,
            ) from None
        if state != self._map.state(index) or (state == DATA and actual != self._map.digest(index)):
            self._map.set(index, state, 0, actual)
        if self._map.dirty_count >= _FLUSH_RECORDS:
            self._map.flush()
        return actual == digest

    def tick(self) -> None:
        """Nothing arrived for a while: record a batch that finished settling, start one that is due."""
        self._maybe_flush()

    def checkpoint(self) -> None:
        """Make everything written so far durable and recorded, every extent cool (before a pause)."""
        self._closing = True
        self._flush()
        self._closing = False

    def finish(self) -> str | None:
        """Close the pass; returns the target's whole-disk digest as the map records it."""
        self._closing = True
        self._flush()
        self._map.end_pass()
        return self.disk_digest()

    def disk_digest(self) -> str | None:
        """Whole-disk digest from the map alone, in this writer's algorithm (None: a chunk is unknown)."""
        digest = self._hasher.disk()
        blockmap = self._map
        for index in range(blockmap.chunk_count):
            state = blockmap.state(index)
            if state == DATA:
                digest.update(blockmap.digest(index))
            elif state == ZERO:
                digest.update(self._hasher.zero(blockmap.chunk_length(index)))
            else:
                return None
        return digest.hexdigest()

    def abort(self) -> None:
        """After a failure: keep what is durable (a later run resumes from it), never more."""
        self._closing = True
        if self._settling is not None:
            with contextlib.suppress(MirrorError, OSError):
                self._commit(self._settling)
        with contextlib.suppress(MirrorError, OSError):
            self._flush()

    def close(self) -> None:
        if self._settling is not None and self._settling.thread is not None:
            self._settling.thread.join()  # never close the fd under a running fdatasync
        self._map.close()
        self._target.close()  # releases the lock

    @property
    def block_map(self) -> BlockMap:
        return self._map

    # ------------------------------------------------------------ durability

    def _mark_hot(self, index: int) -> None:
        self._last_hot = index
        try:
            self._map.mark_hot(index)
        except OSError as exc:
            raise MirrorError(f"cannot update the block map {self._map.path}: {exc.strerror}") from None

    def _maybe_flush(self) -> None:
        batch = self._settling
        if batch is not None and batch.thread is not None and not batch.thread.is_alive():
            self._commit(batch)
        if (
            self._pending_bytes >= self._flush_bytes
            or self._map.dirty_count >= _FLUSH_RECORDS
            or self._clock() - self._last_flush >= self._flush_seconds
        ):
            self._settle_in_background()

    def _settle_in_background(self) -> None:
        """Hand the written batch to a thread that fdatasyncs and re-reads it, and keep writing meanwhile:
        the disk is busy with one batch while the next one arrives (at most one batch settles at a time)."""
        if self._settling is not None:
            self._commit(self._settling)
        batch = self._take_batch()
        if batch.entries:
            batch.thread = threading.Thread(target=self._settle, args=(batch,), name="mirror-fdatasync")
            batch.thread.start()
            self._settling = batch
        else:
            self._commit(batch)

    def _flush(self) -> None:
        """Settle and record everything written so far, now (checkpoint, finish, abort)."""
        if self._settling is not None:
            self._commit(self._settling)
        batch = self._take_batch()
        self._settle(batch)
        self._commit(batch)

    def _take_batch(self) -> _Batch:
        batch = _Batch(self._pending, through=self._received_through)
        self._pending = []
        self._pending_bytes = 0
        self._last_flush = self._clock()
        return batch

    def _settle(self, batch: _Batch) -> None:
        """fdatasync the data, then re-read it if verifying. Touches the target only, never the map, so it
        may run on its own thread."""
        try:
            self._settle_batch(batch)
        except BaseException as exc:  # a bug here must not let unverified chunks be recorded
            batch.crash = exc

    def _settle_batch(self, batch: _Batch) -> None:
        if not batch.entries:
            return
        try:
            self._target.sync()
        except OSError as exc:
            batch.sync_error = exc
            return
        if not self._verify:
            return
        for index, state, digest in batch.entries:
            offset = index * self.chunk_size
            try:
                actual_state, actual = self._read_back(offset, min(self.chunk_size, self.size - offset))
            except (OSError, MirrorError):
                actual_state, actual = ABSENT, b""
            if actual_state != state or (state == DATA and actual != digest):
                batch.failed.append(index)

    def _commit(self, batch: _Batch) -> None:
        """Record a settled batch: only what reached the disk and read back right is marked done."""
        if batch.thread is not None:
            batch.thread.join()
        if batch is self._settling:
            self._settling = None
        pass_number = self._map.pass_number
        failed = set(batch.failed)
        for index, state, digest in batch.entries:
            if batch.sync_error is not None or batch.crash is not None or index in failed:
                self._map.set(index, ABSENT, 0, b"")
            else:
                self._map.set(index, state, pass_number, digest)
        # Extents of chunks written after this batch stay hot (their data is not durable yet), and so does
        # the extent being written: cooling it would cost a map fdatasync at the very next chunk.
        still_hot = [index for index, _state, _digest in self._pending]
        if self._last_hot is not None and not self._closing:
            still_hot.append(self._last_hot)
        try:
            self._map.flush(keep_hot=still_hot)
        except OSError as exc:
            raise MirrorError(
                f"cannot update the block map {self._map.path}: {exc.strerror}; "
                "free space beside the target disk and run again"
            ) from None
        if batch.crash is None and batch.sync_error is None and not failed:
            self.durable_through = max(self.durable_through, batch.through)
        if batch.crash is not None:
            raise batch.crash
        if batch.sync_error is not None:
            raise self._write_error(batch.sync_error, batch.entries[0][0] * self.chunk_size)
        if failed:
            offset = min(failed) * self.chunk_size
            raise MirrorError(
                f"verification failed at offset {offset}: the target disk {self.name} returned other "
                "data than was written; check the target storage, then run again"
            )

    def _read_back(self, offset: int, length: int) -> tuple[int, bytes]:
        """(state, digest) of what the target holds at [offset, offset+length)."""
        if self._target.is_hole(offset, length):
            return ZERO, self._hasher.zero(length)
        if self._check_buffer is None:
            self._check_buffer = aligned_buffer(self.chunk_size)  # misaligned reads are 4x slower here
        view = self._check_buffer[:length]
        done = 0
        while done < length:
            got = self._target.read_into(view[done:], offset + done)
            if got == 0:
                raise MirrorError(f"the target disk {self.name} ended at offset {offset + done}: run again")
            done += got
        zero = is_zero(view)
        return (ZERO, self._hasher.zero(length)) if zero else (DATA, self._hasher.digest(view))

    def _index(self, offset: int, length: int) -> int:
        index, rest = divmod(offset, self.chunk_size)
        if rest or offset < 0 or offset >= self.size or length != min(self.chunk_size, self.size - offset):
            raise MirrorError(f"chunk at offset {offset} (length {length}) does not match the disk geometry")
        return index

    def _write_error(self, exc: OSError, offset: int) -> MirrorError:
        if exc.errno in _FULL_ERRNOS:
            return MirrorError(f"target full at offset {offset}: free space and run again ({self.name})")
        return MirrorError(
            f"cannot write the target disk {self.name} at offset {offset}: {exc.strerror}; "
            "check the target storage and run again"
        )
