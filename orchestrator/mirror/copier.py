"""One mirror pass of one disk: the reader side, and the glue to a local writer side.

The reader side walks the source chunk by chunk: it skips holes the source reports without reading them,
reads everything else into one reused buffer, recognises zero chunks at memcmp speed, hashes the rest with
xxh3_128 and decides from the writer's block map snapshot what to send. The writer side (writer.py) only
receives (offset, data-or-zero, digest) messages and owns the map, so splitting the two across a wire later
changes the transport, not the decisions.

Modes:
* full: copy every non-zero chunk, except those the map says this same pass already wrote (a resumed copy
  skips them without reading) and those whose digest the map already holds;
* incremental: read and hash every chunk, send only those whose digest differs from the map;
* verify: copy nothing; hash both sides and report the differing ranges (and correct the map, so the next
  incremental pass repairs them).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from providers.base import DiskReader

from .blockmap import ABSENT, DATA, ZERO, MapSnapshot
from .errors import MirrorCancelled, MirrorError
from .file_reader import HoleIndex
from .hashing import DiskDigest, chunk_digest, zero_block, zero_digest
from .local_channel import ThreadedWriter
from .throttle import Throttle
from .writer import DEFAULT_FLUSH_BYTES, DEFAULT_FLUSH_SECONDS, TargetWriter

Mode = Literal["full", "incremental", "verify"]
MODES = ("full", "incremental", "verify")


@dataclass
class PassStats:
    """What one pass did; it goes to the journal as a step output, hence plain JSON-able fields."""

    bytes_total: int
    bytes_read: int = 0
    bytes_written: int = 0
    zero_bytes_skipped: int = 0
    unchanged_bytes_skipped: int = 0
    resumed_bytes_skipped: int = 0
    chunks_written: int = 0
    duration: float = 0.0
    digest: str | None = None  # whole-disk digest of the source as this pass saw it (see hashing.py)
    differing_ranges: list[tuple[int, int]] = field(default_factory=list)  # verify mode: (offset, length)
    mode: str = "full"
    pass_number: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["differing_ranges"] = [list(r) for r in self.differing_ranges]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PassStats:
        return cls(**{**data, "differing_ranges": [tuple(r) for r in data.get("differing_ranges", ())]})


def mirror_disk(
    reader: DiskReader,
    target_path: Path,
    *,
    chunk_size: int,
    mode: Mode,
    throttle: Throttle | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    source_identity: str,
    verify: bool = True,
    map_path: Path | None = None,
    flush_bytes: int = DEFAULT_FLUSH_BYTES,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
) -> PassStats:
    """Run one pass from ``reader`` to the raw file or device at ``target_path``.

    Safe to call from several threads for different targets. Any failure leaves the block map recording
    exactly what is durably on the target, so running the same call again resumes.

    ``progress(done, total)`` is called after every chunk, from the calling thread; ``cancelled()`` is
    polled before every chunk. ``map_path`` overrides ``<target>.hvmap`` (for a block device target);
    ``flush_bytes``/``flush_seconds`` bound how much written data may wait for its fdatasync, which is
    also how much a kill -9 can cost a resumed copy.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if chunk_size < 4096 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two of at least 4096, got {chunk_size}")
    started = time.monotonic()
    size = reader.size
    writer = TargetWriter(
        Path(target_path),
        size=size,
        chunk_size=chunk_size,
        source_identity=source_identity,
        mode=mode,
        verify=verify,
        check_received=False,  # same process, same buffer: nothing can damage a chunk between the sides
        map_path=map_path,
        flush_bytes=flush_bytes,
        flush_seconds=flush_seconds,
    )
    try:
        stats = PassStats(bytes_total=size, mode=mode, pass_number=writer.summary.pass_number)
        side = _ReaderSide(reader, writer.summary, stats, throttle)
        if mode == "verify":
            side.verify_against(writer, progress, cancelled)
            writer.checkpoint()
        else:
            channel = ThreadedWriter(writer, chunk_size)
            try:
                side.send_to(channel, mode, progress, cancelled)
            except BaseException:
                with contextlib.suppress(BaseException):
                    channel.join()
                raise
            channel.join()
            target_digest = writer.finish()
            if verify and target_digest != stats.digest:
                raise MirrorError(
                    f"the whole-disk digest of {target_path} ({target_digest}) differs from the "
                    f"source's ({stats.digest}): run a verify pass, then an incremental pass"
                )
    except BaseException:
        writer.abort()
        raise
    finally:
        writer.close()
    stats.duration = time.monotonic() - started
    return stats


class _ReaderSide:
    """Reads the source and decides, from the writer's map snapshot, what crosses to the writer."""

    def __init__(
        self, reader: DiskReader, snapshot: MapSnapshot, stats: PassStats, throttle: Throttle | None
    ) -> None:
        self.reader = reader
        self.snapshot = snapshot
        self.stats = stats
        self.throttle = throttle
        self.chunk_size = snapshot.chunk_size
        self.size = reader.size
        self._read_into: Callable[[int, memoryview], int] | None = getattr(reader, "read_into", None)

    def chunks(
        self, progress: Callable[[int, int], None] | None, cancelled: Callable[[], bool] | None
    ) -> Iterator[tuple[int, int, int]]:
        """(index, offset, length) in disk order, checking cancellation at every chunk boundary."""
        for index in range(self.snapshot.chunk_count):
            if cancelled is not None and cancelled():
                raise MirrorCancelled(
                    f"mirror cancelled at offset {index * self.chunk_size}; run again to resume from there"
                )
            offset = index * self.chunk_size
            length = min(self.chunk_size, self.size - offset)
            yield index, offset, length
            if progress is not None:
                progress(offset + length, self.size)

    def send_to(
        self,
        channel: ThreadedWriter,
        mode: str,
        progress: Callable[[int, int], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> None:
        snap, stats = self.snapshot, self.stats
        resuming = snap.resuming and mode == "full"
        holes = HoleIndex(self.reader.allocated_ranges(), self.chunk_size)
        whole = DiskDigest()
        for index, offset, length in self.chunks(progress, cancelled):
            state = snap.states[index]
            if resuming and state != ABSENT and snap.passes[index] == snap.pass_number:
                stats.resumed_bytes_skipped += length
                whole.update(zero_digest(length) if state == ZERO else snap.digest(index))
                continue
            if holes.is_hole(index):
                whole.update(zero_digest(length))
                stats.zero_bytes_skipped += length
                if state != ZERO:
                    channel.zero(offset, length)
                continue
            buffer = channel.borrow()
            try:
                data = self._read(buffer, offset, length)
            except BaseException:
                channel.give_back(buffer)
                raise
            if _is_zero(buffer, data):
                channel.give_back(buffer)
                digest = zero_digest(length)
                stats.zero_bytes_skipped += length
                if state == ZERO:
                    channel.confirm(offset, digest)
                else:
                    channel.zero(offset, length)
            else:
                digest = chunk_digest(data)
                if state == DATA and snap.digest(index) == digest:
                    channel.give_back(buffer)
                    stats.unchanged_bytes_skipped += length
                    channel.confirm(offset, digest)
                else:
                    if self.throttle is not None:
                        self.throttle.acquire(length)
                    channel.write(offset, buffer, length, digest)
                    stats.bytes_written += length
                    stats.chunks_written += 1
            whole.update(digest)
        stats.digest = whole.hexdigest()

    def verify_against(
        self,
        writer: TargetWriter,
        progress: Callable[[int, int], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> None:
        stats = self.stats
        holes = HoleIndex(self.reader.allocated_ranges(), self.chunk_size)
        whole = DiskDigest()
        differing = stats.differing_ranges
        buffer = bytearray(self.chunk_size)
        for index, offset, length in self.chunks(progress, cancelled):
            if holes.is_hole(index):
                digest = zero_digest(length)
            else:
                data = self._read(buffer, offset, length)
                digest = zero_digest(length) if _is_zero(buffer, data) else chunk_digest(data)
            whole.update(digest)
            if not writer.check(offset, length, digest):
                if differing and differing[-1][0] + differing[-1][1] == offset:
                    differing[-1] = (differing[-1][0], differing[-1][1] + length)
                else:
                    differing.append((offset, length))
        stats.digest = whole.hexdigest()

    def _read(self, buffer: bytearray, offset: int, length: int) -> memoryview:
        view = memoryview(buffer)[:length]
        try:
            if self._read_into is not None:
                got = self._read_into(offset, view)
            else:
                data = self.reader.read(offset, length)
                got = len(data)
                view[:got] = data
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise MirrorError(
                f"cannot read the source disk at offset {offset}: {reason}; check the source "
                "disk, then run again (the mirror resumes where it stopped)",
                retryable=True,
            ) from None
        self.stats.bytes_read += got
        if got != length:
            raise MirrorError(
                f"the source disk ended at offset {offset + got}, expected {self.size} bytes: "
                "did it shrink? Re-discover the source and plan again"
            )
        return view


def _is_zero(buffer: bytearray, data: memoryview) -> bool:
    # bytearray == bytes is one memcmp; comparing a memoryview would go item by item (100x slower).
    if len(data) == len(buffer):
        return buffer == zero_block(len(buffer))
    return data.tobytes() == zero_block(len(data))
