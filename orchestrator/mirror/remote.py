"""One mirror pass between two agents, relayed through the orchestrator.

This is DESIGN.md's fallback path: the reader agent (next to the source) and the writer agent (next to the
target) each talk to the orchestrator, which passes frames from one to the other without decoding chunks:
it only counts them, reports progress, applies the bandwidth limit on the bytes that really cross, and
journals what the writer acknowledges as durable. Direct agent-to-agent TLS (the orchestrator only
watching) uses the same frames and comes later.

There are no round trips per chunk: the writer sends its block map once (17 bytes per chunk), the reader
decides alone what to send, and the writer's acknowledgements flow back on their own thread.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from . import protocol as wire
from .agent_session import AgentSession
from .blockmap import stored_identity
from .copier import MODES, Mode, PassStats
from .errors import MirrorCancelled, MirrorError
from .hashing import aligned_buffer, negotiate_algorithm
from .throttle import Throttle

RelayHook = Callable[[wire.Frame], wire.Frame]
_BULK = (wire.DATA, wire.SAME, wire.ZERO, wire.HASHES)  # passed on unchecked: the writer checks them
STOP_WAIT_SECONDS = 120.0  # how long a stopping writer may take to make its last batch durable


@dataclass
class RemotePassStats(PassStats):
    """PassStats plus what crossed the wire."""

    wire_bytes: int = 0  # reader -> writer: every frame relayed, headers included
    control_bytes: int = 0  # writer -> reader: the block map and the acknowledgements
    payload_bytes: int = 0  # chunk bytes inside DATA frames, as sent (compressed or raw)
    data_frames: int = 0
    raw_chunks: int = 0  # DATA chunks sent uncompressed: compression would not have saved 5%
    compression_ratio: float = 1.0  # bytes_written / payload_bytes
    hash_algorithm: str = ""
    compression: str = ""
    durable_bytes: int = 0  # what the writer last acknowledged as durable
    target_digest: str | None = None  # the target's whole-disk digest from its block map
    map_reset_reason: str | None = None  # why the target's block map started over this pass, if it did


def mirror_remote(
    source: Any,
    source_path: str,
    target: Any,
    target_path: str,
    *,
    chunk_size: int,
    mode: Mode,
    source_identity: str,
    verify: bool = True,
    compression: str = "zstd",
    compression_level: int = 3,
    throttle: Throttle | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    checkpoint: Callable[[int], None] | None = None,
    map_path: str | None = None,
    flush_bytes: int | None = None,
    flush_seconds: float | None = None,
    compress_workers: int = 2,
    relay_hook: RelayHook | None = None,
    changed_ranges: Sequence[tuple[int, int]] | None = None,
    source_size: int | None = None,
    source_overlay: Sequence[tuple[int, int, str]] = (),
) -> RemotePassStats:
    """One pass from ``source_path`` read by an agent started through the ``source`` transport to
    ``target_path`` written by an agent started through ``target`` (see orchestrator/transport).

    Same modes, guarantees and errors as ``mirror_disk``: any failure leaves the target's block map
    recording exactly what is durable, so the same call resumes. ``checkpoint(durable_bytes)`` is called
    from a relay thread whenever the writer acknowledges more; ``progress`` and ``cancelled`` from the
    calling thread, at every frame. ``relay_hook`` sees (and may replace) every frame going to the
    writer: a test seam for damaging a stream on purpose. ``changed_ranges`` (an incremental pass only):
    what changed-block tracking says changed since the last pass; the reader reads only those chunks
    (an agent older than this option ignores it and hashes everything, which is slower, never wrong).
    ``source_size``: the source disk's size where its agent cannot ask the disk (a Windows device path).
    ``source_overlay``: (disk offset, length, device) extents the reader takes from those devices instead
    of the disk (VSS shadow copies of a Windows disk's volumes: mirror/device_reader.py).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if chunk_size < 4096 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two of at least 4096, got {chunk_size}")
    started = time.monotonic()
    reader, writer = _start_both(source, target)
    try:
        relay = _Relay(reader, writer, progress, cancelled, checkpoint, throttle, relay_hook)
        try:
            stats = relay.run(
                read={
                    "path": source_path,
                    "chunk_size": chunk_size,
                    "mode": mode,
                    "compression": compression,
                    "level": compression_level,
                    "workers": compress_workers,
                    **({} if changed_ranges is None else {"ranges": [[o, n] for o, n in changed_ranges]}),
                    **({} if source_size is None else {"size": source_size}),
                    **({"overlay": [list(extent) for extent in source_overlay]} if source_overlay else {}),
                },
                write={
                    "path": target_path,
                    "chunk_size": chunk_size,
                    "identity": stored_identity(source_identity).decode(),
                    "mode": mode,
                    "verify": verify,
                    "map_path": map_path,
                    "flush_bytes": flush_bytes,
                    "flush_seconds": flush_seconds,
                },
            )
        finally:
            relay.shutdown()
    finally:
        writer.close()
        reader.close()
    if mode != "verify" and verify and stats.target_digest != stats.digest:
        raise MirrorError(
            f"the whole-disk digest of {target_path} on {writer.where} ({stats.target_digest}) differs from "
            f"the source's ({stats.digest}): run a verify pass, then an incremental pass"
        )
    stats.duration = time.monotonic() - started
    return stats


class _Relay:
    """Moves frames reader -> writer on the calling thread and writer -> reader on a helper thread."""

    def __init__(
        self,
        reader: AgentSession,
        writer: AgentSession,
        progress: Callable[[int, int], None] | None,
        cancelled: Callable[[], bool] | None,
        checkpoint: Callable[[int], None] | None,
        throttle: Throttle | None,
        hook: RelayHook | None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.progress = progress
        self.cancelled = cancelled
        self.checkpoint = checkpoint
        self.throttle = throttle
        self.hook = hook
        self.size = 0
        self.chunk_size = 0
        self.durable_through = 0
        self.done: dict[str, Any] | None = None
        self.back_error: BaseException | None = None
        self._back: threading.Thread | None = None
        self._relay_buffer: memoryview | None = None

    # ------------------------------------------------------------ the pass

    def run(self, *, read: dict[str, Any], write: dict[str, Any]) -> RemotePassStats:
        reader, writer = self.reader, self.writer
        algorithm = negotiate_algorithm(reader.info.hashes, writer.info.hashes)
        codec = wire.negotiate_compressor(
            read.pop("compression"), reader.info.compressors, writer.info.compressors
        )
        reader.request("read", hash=algorithm, compression=codec, **read)
        self.size = reader.receive(wire.RESULT).json()["size"]
        self.chunk_size = read["chunk_size"]
        writer.request("write", hash=algorithm, size=self.size, **write)
        try:
            head = self._relay_map()
        except BaseException:
            with contextlib.suppress(wire.ProtocolError):
                reader.channel.send_json(wire.BYE, {})
            raise
        stats = RemotePassStats(
            bytes_total=self.size,
            mode=read["mode"],
            pass_number=head["pass_number"],
            hash_algorithm=algorithm,
            compression=codec,
            map_reset_reason=head.get("reset_reason"),
        )
        stats.control_bytes = self._map_bytes
        self.stats = stats
        self._back = threading.Thread(
            target=self._from_writer, name=f"relay-acks:{writer.where}", daemon=True
        )
        self._back.start()
        end = self._pump(stats)
        self._back.join()
        if self.back_error is not None:
            raise self.back_error
        assert self.done is not None
        for key in (
            "bytes_read",
            "bytes_written",
            "zero_bytes_skipped",
            "unchanged_bytes_skipped",
            "resumed_bytes_skipped",
            "chunks_written",
        ):
            setattr(stats, key, int(end.get(key, 0)))
        stats.digest = end.get("digest")
        stats.payload_bytes = int(end.get("payload_bytes", stats.payload_bytes))
        stats.raw_chunks = int(end.get("raw_chunks", stats.raw_chunks))
        stats.target_digest = self.done.get("digest")
        stats.differing_ranges = [(int(o), int(n)) for o, n in self.done.get("differing_ranges", ())]
        stats.durable_bytes = min(self.size, int(self.done.get("durable_through", 0)) * self.chunk_size)
        if stats.payload_bytes:
            stats.compression_ratio = round(stats.bytes_written / stats.payload_bytes, 4)
        return stats

    def _relay_map(self) -> dict[str, Any]:
        head_frame = self.writer.receive(wire.MAP_HEAD)
        self.reader.channel.forward(head_frame)
        head = head_frame.json()
        control = wire.HEADER_SIZE + len(head_frame.payload)
        received = 0
        while received < head["chunk_count"]:
            frame = self.writer.receive(wire.MAP)
            received += wire.RUN.unpack_from(frame.payload)[1]
            control += self.reader.channel.forward(frame)
        self._map_bytes = control
        return head

    def _pump(self, stats: RemotePassStats) -> dict[str, Any]:
        """Reader -> writer until END; returns the reader's END."""
        splice = self.hook is None and _can_splice(self.reader.process, self.writer.process)
        while True:
            try:
                frame, tail = self._next_frame(splice)
            except MirrorError:
                if self.back_error is not None:  # the writer failed first and we stopped the reader
                    raise self.back_error from None
                self._stop_writer()
                raise
            kind = frame.type
            if kind not in _BULK and wire.frame_crc(kind, frame.flags, (frame.payload,)) != frame.crc:
                raise wire.ProtocolError(
                    f"a {frame.name} frame from the reader on {self.reader.where} arrived damaged"
                )
            size = wire.HEADER_SIZE + len(frame.payload) + tail
            end: dict[str, Any] | None = None
            if kind == wire.DATA:
                last = wire.DATA_PREFIX.unpack_from(frame.payload)[0]
                stats.data_frames += 1
                stats.payload_bytes += size - wire.HEADER_SIZE - wire.DATA_PREFIX.size
                stats.raw_chunks += frame.codec == wire.RAW
                if self.throttle is not None:
                    self.throttle.acquire(size)
            elif kind in _BULK:
                first, count = wire.RUN.unpack_from(frame.payload)
                last = first + count - 1
            elif kind == wire.END:
                end = frame.json()
                last = -(-self.size // self.chunk_size) - 1
            else:
                raise wire.ProtocolError(
                    f"unexpected {frame.name} frame from the reader on {self.reader.where}"
                )
            if self.hook is not None:
                frame = self.hook(frame)
            try:
                if tail:
                    self._forward_spliced(frame, tail)
                else:
                    self.writer.channel.forward(frame)
            except wire.StreamClosed:
                raise self._writer_failure() from None
            stats.wire_bytes += size
            if self.progress is not None:
                self.progress(min(self.size, (last + 1) * self.chunk_size), self.size)
            if end is not None:
                return end
            if self.cancelled is not None and self.cancelled():
                self._stop_writer()
                raise MirrorCancelled(
                    f"mirror cancelled at offset {min(self.size, (last + 1) * self.chunk_size)}; what the "
                    f"target holds durably ({self.durable_through * self.chunk_size} bytes and more) stays: "
                    "run again to resume from there"
                )

    def _next_frame(self, splice: bool) -> tuple[wire.Frame, int]:
        """The next frame from the reader, and how many of its bytes are left in the pipe to splice.

        Between two local pipes a DATA frame's chunk never enters this process: only its header and
        prefix are read, the rest moves pipe to pipe inside the kernel (splice), which saves two copies
        of every chunk and most of the relay's CPU time.
        """
        if not splice:
            if self.hook is not None:
                return self.reader.receive(check=False), 0
            try:  # one reused buffer: each frame is forwarded before the next one is read
                frame = self.reader.channel.receive(check=False, into=self._lend)
            except wire.StreamClosed:
                raise self.reader.died("in the middle of its work") from None
            if frame.type == wire.ERROR:
                self.reader._raise_error(frame)
            return frame, 0
        stream = self.reader.process
        try:
            header = stream.read_exact(wire.HEADER_SIZE)
            magic, kind, flags, length, crc = wire.HEADER.unpack(header)
            if magic != wire.MAGIC or length > wire.MAX_PAYLOAD:
                raise wire.ProtocolError(f"the reader on {self.reader.where} sent a damaged frame header")
            if kind == wire.DATA and length > wire.DATA_PREFIX.size:
                prefix = stream.read_exact(wire.DATA_PREFIX.size)
                return wire.Frame(kind, flags, prefix, crc), length - wire.DATA_PREFIX.size
            frame = wire.Frame(kind, flags, stream.read_exact(length) if length else bytearray(), crc)
        except wire.StreamClosed:
            raise self.reader.died("in the middle of its work") from None
        if kind == wire.ERROR:
            self.reader._raise_error(frame)
        return frame, 0

    def _lend(self, kind: int, length: int) -> tuple[None, memoryview] | None:
        """The relay's receive buffer for bulk frames (aligned: see hashing.aligned_buffer)."""
        if kind not in _BULK:
            return None
        if self._relay_buffer is None or len(self._relay_buffer) < length:
            self._relay_buffer = aligned_buffer(max(length, self.chunk_size + wire.DATA_PREFIX.size))
        return None, self._relay_buffer[:length]

    def _forward_spliced(self, frame: wire.Frame, tail: int) -> None:
        source, target = self.reader.process, self.writer.process
        header = wire.HEADER.pack(wire.MAGIC, frame.type, frame.flags, len(frame.payload) + tail, frame.crc)
        target.write(header, frame.payload)
        while tail:
            try:
                moved = os.splice(source.read_fd, target.write_fd, tail)
            except OSError as exc:
                raise wire.StreamClosed(f"relaying a chunk failed: {exc.strerror}") from None
            if moved == 0:
                raise self.reader.died("in the middle of a chunk")
            tail -= moved

    def _from_writer(self) -> None:
        """Writer -> orchestrator (-> reader): acknowledgements, then DONE; an error stops the reader."""
        try:
            while True:
                frame = self.writer.receive(wire.ACK, wire.DONE)
                self.stats.control_bytes += wire.HEADER_SIZE + len(frame.payload)
                if frame.type == wire.DONE:
                    self.done = frame.json()
                    return
                (self.durable_through,) = wire.ACK_BODY.unpack_from(frame.payload)
                with contextlib.suppress(wire.ProtocolError):
                    self.reader.channel.forward(frame)
                if self.checkpoint is not None:
                    self.checkpoint(min(self.size, self.durable_through * self.chunk_size))
        except BaseException as exc:
            self.back_error = exc
            with contextlib.suppress(OSError):
                self.reader.process.kill()  # unblocks the pump, which then raises this error

    def _writer_failure(self) -> BaseException:
        if self._back is not None:
            self._back.join(STOP_WAIT_SECONDS)
        if self.back_error is not None:
            return self.back_error
        return self.writer.died("while receiving chunks")

    def _stop_writer(self) -> None:
        """The pass stops early: the writer makes what it received durable and answers DONE."""
        self.reader.process.kill()
        with contextlib.suppress(wire.ProtocolError):
            self.writer.channel.send_json(wire.END, {"cancelled": True})
        if self._back is not None:
            self._back.join(STOP_WAIT_SECONDS)

    def shutdown(self) -> None:
        """BYE to both; wait for the ack thread before the streams close under it."""
        for session in (self.writer, self.reader):
            with contextlib.suppress(wire.ProtocolError, OSError):
                session.channel.send_json(wire.BYE, {})
        if self._back is not None and self._back.is_alive():
            if self.writer.process.exit_status(timeout=STOP_WAIT_SECONDS) is None:
                self.writer.process.kill()
            self._back.join()


def _start_both(source: Any, target: Any) -> tuple[AgentSession, AgentSession]:
    """Start the reader and the writer agents at the same time (each start is a round trip or more)."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="agent-start") as pool:
        reading = pool.submit(AgentSession.start, source)
        writing = pool.submit(AgentSession.start, target)
        wait([reading, writing])
    if reading.exception() is None and writing.exception() is None:
        return reading.result(), writing.result()
    for started in (reading, writing):
        if started.exception() is None:
            started.result().kill()
    raise (reading.exception() or writing.exception())  # type: ignore[misc]


def _can_splice(source: Any, target: Any) -> bool:
    """Both ends are local pipes (LocalProcess) and this kernel and Python can splice between them."""
    if not hasattr(os, "splice"):
        return False
    try:
        return all(
            stat.S_ISFIFO(os.fstat(fd).st_mode)
            for fd in (getattr(source, "read_fd", -1), getattr(target, "write_fd", -1))
        )
    except OSError:
        return False
