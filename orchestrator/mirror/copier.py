"""One mirror pass of one disk: the reader side, and the glue to a local writer side.

The reader side walks the source chunk by chunk: it skips holes the source reports without reading them,
reads everything else on a read-ahead thread (file_reader.ReadAhead) into a few reused page-aligned
buffers, recognises zero chunks at memcmp speed, hashes the rest with xxh3_128 while the next one is read,
and decides from the writer's block map snapshot what to send. The writer side (writer.py) only
receives (offset, data-or-zero, digest) messages and owns the map, so splitting the two across a wire later
changes the transport, not the decisions.

Modes:
* full: copy every non-zero chunk, except those the map says this same pass already wrote (a resumed copy
  skips them without reading) and those whose digest the map already holds;
* incremental: read and hash every chunk, send only those whose digest differs from the map; given
  ``changed_ranges`` (changed-block tracking: what the source wrote since the last pass), read only the
  chunks they touch and those the target lacks, and confirm the others from the map unread;
* verify: copy nothing; hash both sides and report the differing ranges (and correct the map, so the next
  incremental pass repairs them).
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from providers.base import DiskReader

from .blockmap import ABSENT, DATA, ZERO, MapSnapshot
from .errors import MirrorCancelled, MirrorError
from .file_reader import ReadAhead, changed_chunks
from .hashing import DiskDigest, aligned_buffer, chunk_digest, is_zero, zero_digest
from .local_channel import ThreadedWriter
from .throttle import Throttle
from .writer import DEFAULT_FLUSH_BYTES, DEFAULT_FLUSH_SECONDS, TargetWriter

Mode = Literal["full", "incremental", "verify"]
VERIFY_BUFFERS = 3  # source chunks read ahead of the one being compared
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
    changed_ranges: Sequence[tuple[int, int]] | None = None,
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
        if changed_ranges is not None and mode == "incremental":
            side.changed = changed_chunks(changed_ranges, chunk_size, writer.summary.chunk_count)
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
        self.changed: bytearray | None = None  # chunks changed-block tracking names; None: hash them all

    def planned(
        self,
        ahead: ReadAhead,
        progress: Callable[[int, int], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> Iterator[tuple[int, int, int, int, Any, int, OSError | None]]:
        """(kind, index, offset, length, buffer, bytes read, read error) per chunk in disk order, from the
        read-ahead thread; cancellation is checked at every chunk boundary, progress reported after it."""
        for kind, first, count, buffer, got, error in ahead:
            for index in range(first, first + count):
                offset = index * self.chunk_size
                if cancelled is not None and cancelled():
                    raise MirrorCancelled(
                        f"mirror cancelled at offset {offset}; run again to resume from there"
                    )
                length = min(self.chunk_size, self.size - offset)
                yield kind, index, offset, length, buffer, got, error
                if progress is not None:
                    progress(offset + length, self.size)

    def read_ahead(
        self, take: Callable[[float], Any], give_back: Callable[[Any], None], wanted: Callable[[int], bool]
    ) -> ReadAhead:
        return ReadAhead(
            self.reader,
            chunk_size=self.chunk_size,
            size=self.size,
            wanted=wanted,
            take_buffer=take,
            give_back=give_back,
        )

    def send_to(
        self,
        channel: ThreadedWriter,
        mode: str,
        progress: Callable[[int, int], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> None:
        snap, stats = self.snapshot, self.stats
        resuming = snap.resuming and mode == "full"
        changed = self.changed

        def wanted(index: int) -> bool:
            if changed is not None:  # unchanged since the last pass, and the target holds it: not read
                return bool(changed[index]) or snap.states[index] == ABSENT
            # not copied already by the pass this one resumes
            return not (resuming and snap.states[index] != ABSENT and snap.passes[index] == snap.pass_number)

        ahead = self.read_ahead(channel.try_borrow, channel.give_back, wanted)
        whole = DiskDigest()
        try:
            for kind, index, offset, length, buffer, got, error in self.planned(ahead, progress, cancelled):
                state = snap.states[index]
                if kind == ReadAhead.SKIP:
                    digest = zero_digest(length) if state == ZERO else snap.digest(index)
                    whole.update(digest)
                    if changed is None:
                        stats.resumed_bytes_skipped += length
                    else:
                        stats.unchanged_bytes_skipped += length
                        channel.confirm(offset, digest)
                    continue
                if kind == ReadAhead.HOLE:
                    whole.update(zero_digest(length))
                    stats.zero_bytes_skipped += length
                    if state != ZERO:
                        channel.zero(offset, length)
                    continue
                try:
                    data = self._received(buffer, offset, length, got, error)
                except BaseException:
                    channel.give_back(buffer)
                    raise
                if is_zero(data):
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
        finally:
            ahead.stop()
        stats.digest = whole.hexdigest()

    def verify_against(
        self,
        writer: TargetWriter,
        progress: Callable[[int, int], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> None:
        stats = self.stats
        whole = DiskDigest()
        differing = stats.differing_ranges
        free: queue.Queue = queue.Queue()
        for _ in range(VERIFY_BUFFERS):
            free.put(aligned_buffer(self.chunk_size))

        def take(timeout: float) -> memoryview | None:
            try:
                return free.get(timeout=timeout)
            except queue.Empty:
                return None

        ahead = self.read_ahead(take, free.put, lambda index: True)
        try:
            for kind, _index, offset, length, buffer, got, error in self.planned(ahead, progress, cancelled):
                if kind == ReadAhead.HOLE:
                    digest = zero_digest(length)
                else:
                    try:
                        data = self._received(buffer, offset, length, got, error)
                        digest = zero_digest(length) if is_zero(data) else chunk_digest(data)
                    finally:
                        free.put(buffer)
                whole.update(digest)
                if not writer.check(offset, length, digest):
                    if differing and differing[-1][0] + differing[-1][1] == offset:
                        differing[-1] = (differing[-1][0], differing[-1][1] + length)
                    else:
                        differing.append((offset, length))
        finally:
            ahead.stop()
        stats.digest = whole.hexdigest()

    def _received(
        self, buffer: memoryview, offset: int, length: int, got: int, error: OSError | None
    ) -> memoryview:
        """The chunk the read-ahead thread read, or the error its read met, said with the offset."""
        if error is not None:
            reason = error.strerror or str(error)
            raise MirrorError(
                f"cannot read the source disk at offset {offset}: {reason}; check the source "
                "disk, then run again (the mirror resumes where it stopped)",
                retryable=True,
            )
        self.stats.bytes_read += got
        if got != length:
            raise MirrorError(
                f"the source disk ended at offset {offset + got}, expected {self.size} bytes: "
                "did it shrink? Re-discover the source and plan again"
            )
        return buffer[:length]
