"""The hvmigrate agent: the program the orchestrator runs next to a disk (a source server, an appliance,
the local host) to discover it, read it or write it.

It needs nothing but a Python 3.8+ standard library on that machine: the orchestrator ships it over the
stream it starts it on (``python3 -c BOOTSTRAP N`` over SSH or a pipe, then the program's N bytes, see
orchestrator/mirror/agent_bundle.py), together with the stdlib-only mirror modules it imports (the block
map, the target writer, the wire protocol), so the agent writes block maps with the very code the local
mirror uses. xxhash and zstandard are used when that Python has them.

After the handshake (protocol.py) the orchestrator sends REQUESTs:

* ``discover``: disks (lsblk), used space (statvfs of what is mounted), NICs (``ip -j addr``), OS
  (/etc/os-release), hostname, firmware (UEFI iff /sys/firmware/efi exists);
* ``read``: open a block device or file read-only, receive the target's block map, stream every chunk in
  order as SAME, ZERO (markers only) or DATA (compressed when it pays), then END; an incremental read
  given ``ranges`` (what changed-block tracking says changed since the last pass) reads only the chunks
  they touch and those the target lacks, and confirms the rest as SAME from the map without reading;
  a Windows disk (``\\\\.\\PhysicalDriveN``, its size given) may come with ``overlay`` extents, read from
  VSS shadow devices instead of the live disk (mirror/device_reader.py);
* ``write``: open the target (a raw file, a block device, or an NBD export by URI, its map then at the
  request's map_path) with its block map beside it, send the map, then apply what arrives through
  TargetWriter and acknowledge what is durable.

A read or write request is one pass; the agent exits after it. Everything it prints for humans goes to
stderr: stdout carries frames only.
"""

from __future__ import annotations

import contextlib
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from orchestrator import __version__ as AGENT_VERSION
from orchestrator.mirror import protocol as wire
from orchestrator.mirror.blockmap import ABSENT, DATA, ZERO
from orchestrator.mirror.device_reader import DeviceReader, OverlayReader, check_alignment
from orchestrator.mirror.errors import MirrorCancelled, MirrorError
from orchestrator.mirror.file_reader import FileDiskReader, ReadAhead, changed_chunks
from orchestrator.mirror.hashing import DIGEST_SIZE, aligned_buffer, chunk_hasher, is_zero
from orchestrator.mirror.portable_io import is_windows_device
from orchestrator.mirror.writer import TargetWriter

DONE_THIS_PASS = 0x80  # MAP state flag: the open (resumed) pass already wrote or confirmed this chunk
STATE_MASK = 0x03
RUN_SECONDS = 0.5  # a run of SAME/ZERO markers is sent at least this often: progress and cancel stay live
ACK_SECONDS = 1.0
READ_BUFFER_BUDGET = 64 * 1024**2  # chunk buffers in flight in a reader (bounded whatever the disk size)
RECEIVE_BUDGET = 32 * 1024**2  # bytes of received chunks queued ahead of the target writer
COMMAND_TIMEOUT = 20


def log(message: str) -> None:
    sys.stderr.write(f"hvmigrate agent on {wire.this_host()}: {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- session


class Agent:
    """Serves one orchestrator over one stream: the handshake, then requests until a pass or BYE."""

    def __init__(self, channel: wire.FrameChannel) -> None:
        self.channel = channel
        self.hello = wire.hello(wire.this_host(), AGENT_VERSION, role="agent")

    def serve(self) -> int:
        channel = self.channel
        channel.send_json(wire.HELLO, self.hello)
        try:
            frame = channel.receive()
        except wire.StreamClosed:
            return 0  # the orchestrator refused us (and said why on its side) or went away
        if frame.type != wire.HELLO:
            log(f"expected HELLO from the orchestrator, got {frame.name}")
            return 2
        theirs = frame.json()
        if theirs.get("protocol") != wire.PROTOCOL_VERSION:
            message = wire.version_mismatch(self.hello, theirs)
            log(f"refusing: {message}")
            self._send_error(message, "VersionMismatch", retryable=False)
            return 3
        while True:
            try:
                frame = channel.receive()
            except wire.StreamClosed:
                return 0
            if frame.type == wire.BYE:
                return 0
            if frame.type != wire.REQUEST:
                self._send_error(f"expected a REQUEST, got {frame.name}", "ProtocolError", retryable=False)
                return 2
            request = frame.json()
            op = request.pop("op", None)
            try:
                if op == "discover":
                    channel.send_json(wire.RESULT, discover(request.get("paths")))
                    continue
                if op == "read":
                    ReaderRole(channel, **request).run()
                    return 0
                if op == "write":
                    WriterRole(channel, **request).run()
                    return 0
                raise wire.ProtocolError(f"unknown request {op!r}: this agent is {AGENT_VERSION}")
            except MirrorError as exc:
                log(str(exc))
                self._send_error(str(exc), type(exc).__name__, retryable=exc.retryable)
                return 1
            except Exception as exc:  # a bug: say where, keep the orchestrator's message to one line
                traceback.print_exc()
                message = f"agent failure in {op}: {type(exc).__name__}: {exc} (its stderr has the traceback)"
                self._send_error(message, "MirrorError", retryable=False)
                return 1

    def _send_error(self, message: str, kind: str, *, retryable: bool) -> None:
        with contextlib.suppress(wire.StreamClosed):
            self.channel.send_json(wire.ERROR, {"message": message, "kind": kind, "retryable": retryable})


# ---------------------------------------------------------------- reader role


class _Runs:
    """Collects consecutive SAME / ZERO / HASHES chunks into one frame each (16 B per chunk at most)."""

    def __init__(self, emit: Any) -> None:
        self._emit = emit
        self._type = 0
        self._first = 0
        self._count = 0
        self._digests = bytearray()
        self._started = 0.0

    def add(self, frame_type: int, index: int, digest: bytes = b"") -> None:
        if self._count and (
            frame_type != self._type or index != self._first + self._count or self._count >= wire.RUN_MAX
        ):
            self.flush()
        if not self._count:
            self._type, self._first, self._started = frame_type, index, time.monotonic()
        self._count += 1
        if frame_type != wire.ZERO:
            self._digests += digest
        if time.monotonic() - self._started >= RUN_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._count:
            self._emit(self._type, wire.pack_run(self._first, self._count, bytes(self._digests)))
            self._count = 0
            self._digests = bytearray()


class _Effort:
    """The compression level of the next chunk: the configured one while the stream is what limits the
    pass, less while the stream waits for the compressors.

    Compressing pays only where bytes cost more than cycles. Over a WAN the sender finds each chunk
    compressed with more queued behind it, and the level stays at (or climbs back to) the configured one.
    Over a fast link (a LAN, SSH to a neighbour, a local pipe) the sender would wait for zstd level 3
    (130-200 MB/s a core on log-like text, measured), so the level steps down, to 1 at the lowest: on
    such data the same ratio at twice the speed. Incompressible chunks go raw anyway (the sample test).
    """

    DOWN_AFTER = 2  # consecutive chunks the sender had to wait for
    UP_AFTER = 8  # consecutive chunks found ready with a backlog behind them

    def __init__(self, compressor: wire.ChunkCompressor) -> None:
        self.ceiling = compressor.level
        self.floor = compressor.min_level
        self.level = self.ceiling
        self._waited = 0
        self._ready = 0

    def observe(self, waited: bool, backlog: int) -> None:
        if waited:
            self._ready = 0
            self._waited += 1
            if self._waited >= self.DOWN_AFTER and self.level > self.floor:
                self.level -= 1
                self._waited = 0
        elif backlog >= 2:
            self._waited = 0
            self._ready += 1
            if self._ready >= self.UP_AFTER and self.level < self.ceiling:
                self.level += 1
                self._ready = 0
        else:  # the reader is the slowest part: the level changes nothing
            self._waited = self._ready = 0


class _Outbox:
    """Frames leave in disk order from one sender thread while a pool compresses the DATA chunks.

    Reading and hashing (the calling thread), compression (the pool) and writing to the stream (the
    sender) overlap; the buffer pool bounds how far the reader runs ahead, and ``_Effort`` how much
    compression may slow the stream.
    """

    def __init__(
        self, channel: wire.FrameChannel, compressor: wire.ChunkCompressor, workers: int, buffers: queue.Queue
    ) -> None:
        self._channel = channel
        self._compressor = compressor
        self._buffers = buffers
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="compress")
        self._items: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.payload_bytes = 0
        self.raw_chunks = 0
        self.effort = _Effort(compressor)
        self._thread = threading.Thread(target=self._run, name="sender", daemon=True)
        self._thread.start()

    def frame(self, frame_type: int, parts: list) -> None:
        self._items.put((frame_type, parts, None, None))

    def chunk(self, index: int, digest: bytes, buffer: memoryview, length: int) -> None:
        prefix = wire.DATA_PREFIX.pack(index, digest)
        job = self._pool.submit(self._pack, prefix, buffer[:length], self.effort.level)
        self._items.put((wire.DATA, prefix, job, buffer))

    def _pack(self, prefix: bytes, view: memoryview, level: int) -> tuple[int, Any, int]:
        """Compress and checksum one chunk in the pool: the frame CRC (1.6 GB/s) off the sender too."""
        codec, payload = self._compressor.compress(view, level)
        return codec, payload, wire.frame_crc(wire.DATA, codec, (prefix, payload))

    def _run(self) -> None:
        while True:
            item = self._items.get()
            if item is None:
                return
            frame_type, parts, job, buffer = item
            try:
                if self.error is None:
                    if job is None:
                        self._channel.send(frame_type, *parts)
                    else:
                        self.effort.observe(not job.done(), self._items.qsize())
                        codec, payload, crc = job.result()
                        self._channel.send(wire.DATA, parts, payload, flags=codec, crc=crc)
                        self.payload_bytes += len(payload)
                        self.raw_chunks += codec == wire.RAW
            except BaseException as exc:  # the stream broke, or compression failed: stop sending
                self.error = exc
            finally:
                if buffer is not None:
                    if job is not None and not job.done():
                        job.cancel()
                    self._buffers.put(buffer)

    def close(self) -> None:
        """Send everything queued, stop, and raise the sender's error if it had one."""
        self._items.put(None)
        self._thread.join()
        self._pool.shutdown(wait=True)
        if self.error is not None:
            raise self.error


class _Control:
    """Reads what the orchestrator sends a reader while it streams: ACK, CANCEL, BYE (or the end)."""

    def __init__(self, channel: wire.FrameChannel) -> None:
        self.channel = channel
        self.durable_through = 0
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                frame = self.channel.receive()
                if frame.type == wire.ACK:
                    (self.durable_through,) = wire.ACK_BODY.unpack_from(frame.payload)
                elif frame.type == wire.CANCEL:
                    self.cancelled.set()
                elif frame.type == wire.BYE:
                    self.cancelled.set()  # harmless after END; before it, the orchestrator gave up
                    return
        except wire.ProtocolError:
            self.cancelled.set()  # the orchestrator is gone: nobody would receive what we read
        finally:
            self.finished.set()


class ReaderRole:
    """Source side of one pass: decides from the target's map what crosses, chunk by chunk."""

    def __init__(
        self,
        channel: wire.FrameChannel,
        *,
        path: str,
        chunk_size: int,
        mode: str,
        hash: str,
        compression: str = "zlib",
        level: int = 3,
        workers: int = 2,
        ranges: list[list[int]] | None = None,
        size: int | None = None,
        overlay: list[list[Any]] | None = None,
        **_ignored: Any,
    ) -> None:
        self.channel = channel
        self.path = path
        self.given_size = size  # from the source's discovery: what a Windows disk's size is known by
        self.overlay = overlay or []  # (disk offset, length, shadow device): read those from the shadows
        self.ranges = ranges if mode == "incremental" else None  # a full or verify pass reads everything
        self.chunk_size = chunk_size
        self.mode = mode
        self.hasher = chunk_hasher(hash)
        self.compressor = wire.ChunkCompressor(compression, level)
        self.workers = workers
        self.stats = {
            "bytes_read": 0,
            "bytes_written": 0,
            "zero_bytes_skipped": 0,
            "unchanged_bytes_skipped": 0,
            "resumed_bytes_skipped": 0,
            "chunks_written": 0,
        }

    def run(self) -> None:
        try:
            if is_windows_device(self.path):
                check_alignment(self.path, self.given_size or 0, self.chunk_size, self.overlay)
                reader: Any = DeviceReader(self.path, self.given_size)
            else:
                reader = FileDiskReader(self.path)
            if self.overlay:
                reader = OverlayReader(reader, self.overlay)
        except OSError as exc:
            raise MirrorError(
                f"cannot open the source disk {self.path} on {wire.this_host()}: "
                f"{os.strerror(exc.errno) if exc.errno else exc}; "
                "check the path and that the agent's user may read it (sudo)"
            ) from None
        try:
            self.size = reader.size
            self.channel.send_json(wire.RESULT, {"size": reader.size, "identity": reader.identity})
            head = self._receive_head()
            if head is None:
                return
            states, digests, resuming = self._receive_map(head)
            control = _Control(self.channel)
            if self.mode == "verify":
                self._verify(reader, control)
            else:
                self._send(reader, control, states, digests, resuming)
            control.finished.wait()
        finally:
            reader.close()

    def _receive_head(self) -> dict[str, Any] | None:
        frame = self.channel.receive()
        if frame.type == wire.BYE:
            return None  # the writer could not start: the orchestrator says why on its side
        if frame.type != wire.MAP_HEAD:
            raise wire.ProtocolError(f"expected the block map, got {frame.name}")
        head = frame.json()
        count = -(-self.size // self.chunk_size)
        if head["chunk_size"] != self.chunk_size or head["chunk_count"] != count:
            raise wire.ProtocolError(
                f"the target's map has {head['chunk_count']} chunks of {head['chunk_size']} bytes, "
                f"the source {count} of {self.chunk_size}"
            )
        if head["hash"] != self.hasher.name:
            raise wire.ProtocolError(
                f"the target's map uses {head['hash']} digests and this pass {self.hasher.name}: never "
                "compared across algorithms"
            )
        return head

    def _receive_map(self, head: dict[str, Any]) -> tuple[bytearray, bytearray, bool]:
        count = head["chunk_count"]
        states = bytearray(count)
        digests = bytearray(count * DIGEST_SIZE)
        received = 0
        while received < count:
            frame = self.channel.receive()
            if frame.type != wire.MAP:
                raise wire.ProtocolError(f"expected a MAP frame, got {frame.name}")
            first, n, codes, body = wire.unpack_map(frame.payload)
            if first != received or first + n > count:
                raise wire.ProtocolError(f"MAP frame for chunks {first}..{first + n} out of order")
            states[first : first + n] = codes
            digests[first * DIGEST_SIZE : (first + n) * DIGEST_SIZE] = body
            received += n
        return states, digests, bool(head["resuming"])

    def _planned(
        self, ahead: ReadAhead, control: _Control
    ) -> Iterator[tuple[int, int, int, int, Any, int, OSError | None]]:
        """(kind, index, offset, length, buffer, bytes read, read error) per chunk, in disk order, from
        the read-ahead thread's runs; a cancellation stops it at the next chunk boundary."""
        chunk = self.chunk_size
        for kind, first, count, buffer, got, error in ahead:
            for index in range(first, first + count):
                if control.cancelled.is_set():
                    raise MirrorCancelled(
                        f"the reader on {wire.this_host()} was told to stop at offset {index * chunk}"
                    )
                offset = index * chunk
                yield kind, index, offset, min(chunk, self.size - offset), buffer, got, error

    def _read_ahead(self, reader: FileDiskReader, buffers: queue.Queue, wanted: Any) -> ReadAhead:
        return ReadAhead.from_pool(reader, buffers, chunk_size=self.chunk_size, size=self.size, wanted=wanted)

    def _received(
        self, buffer: memoryview, offset: int, length: int, got: int, error: OSError | None
    ) -> memoryview:
        """The chunk the read-ahead thread read, or the error its read met, with the offset."""
        if error is not None:
            raise MirrorError(
                f"cannot read the source disk {self.path} on {wire.this_host()} at offset {offset}: "
                f"{error.strerror or error}; check the source disk, then run again (the mirror resumes "
                "where it stopped)",
                retryable=True,
            )
        self.stats["bytes_read"] += got
        if got != length:
            raise MirrorError(
                f"the source disk {self.path} ended at offset {offset + got}, expected {self.size} bytes: "
                "did it shrink? Re-discover the source and plan again"
            )
        return buffer[:length]

    def _send(
        self,
        reader: FileDiskReader,
        control: _Control,
        states: bytearray,
        digests: bytearray,
        resuming: bool,
    ) -> None:
        stats, hasher = self.stats, self.hasher
        depth = max(2, min(8, READ_BUFFER_BUDGET // self.chunk_size))
        buffers: queue.Queue = queue.Queue()
        for _ in range(depth):
            buffers.put(aligned_buffer(self.chunk_size))
        outbox = _Outbox(self.channel, self.compressor, self.workers, buffers)
        runs = _Runs(outbox.frame)
        changed = None
        if self.ranges is not None:
            changed = changed_chunks(self.ranges, self.chunk_size, len(states))

        def wanted(index: int) -> bool:
            code = states[index]
            if changed is not None:  # unchanged since the last pass, and the target holds it: not read
                return bool(changed[index]) or code & STATE_MASK == ABSENT
            return not (resuming and code & STATE_MASK != ABSENT and code & DONE_THIS_PASS)

        ahead = self._read_ahead(reader, buffers, wanted)
        whole = hasher.disk()
        try:
            for kind, index, offset, length, buffer, got, error in self._planned(ahead, control):
                if outbox.error is not None:
                    break
                state = states[index] & STATE_MASK
                known = bytes(digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE])
                if kind == ReadAhead.SKIP:
                    digest = hasher.zero(length) if state == ZERO else known
                    whole.update(digest)
                    if changed is None:
                        stats["resumed_bytes_skipped"] += length
                    else:
                        stats["unchanged_bytes_skipped"] += length
                        runs.add(wire.SAME, index, digest)
                    continue
                if kind == ReadAhead.HOLE:
                    whole.update(hasher.zero(length))
                    stats["zero_bytes_skipped"] += length
                    if state != ZERO:
                        runs.add(wire.ZERO, index)
                    continue
                try:
                    data = self._received(buffer, offset, length, got, error)
                except BaseException:
                    buffers.put(buffer)
                    raise
                if is_zero(data):
                    buffers.put(buffer)
                    digest = hasher.zero(length)
                    stats["zero_bytes_skipped"] += length
                    runs.add(wire.SAME if state == ZERO else wire.ZERO, index, digest)
                else:
                    digest = hasher.digest(data)
                    if state == DATA and known == digest:
                        buffers.put(buffer)
                        stats["unchanged_bytes_skipped"] += length
                        runs.add(wire.SAME, index, digest)
                    else:
                        runs.flush()
                        outbox.chunk(index, digest, buffer, length)
                        stats["bytes_written"] += length
                        stats["chunks_written"] += 1
                whole.update(digest)
            runs.flush()
        finally:
            ahead.stop()
            outbox.close()
        self.channel.send_json(
            wire.END,
            {
                **stats,
                "digest": whole.hexdigest(),
                "payload_bytes": outbox.payload_bytes,
                "raw_chunks": outbox.raw_chunks,
                "durable_through": control.durable_through,
            },
        )

    def _verify(self, reader: FileDiskReader, control: _Control) -> None:
        hasher = self.hasher
        runs = _Runs(lambda frame_type, parts: self.channel.send(frame_type, *parts))
        buffers: queue.Queue = queue.Queue()
        for _ in range(max(2, min(4, READ_BUFFER_BUDGET // self.chunk_size))):
            buffers.put(aligned_buffer(self.chunk_size))
        ahead = self._read_ahead(reader, buffers, lambda index: True)
        whole = hasher.disk()
        try:
            for kind, index, offset, length, buffer, got, error in self._planned(ahead, control):
                if kind == ReadAhead.HOLE:
                    digest = hasher.zero(length)
                else:
                    try:
                        data = self._received(buffer, offset, length, got, error)
                        digest = hasher.zero(length) if is_zero(data) else hasher.digest(data)
                    finally:
                        buffers.put(buffer)
                whole.update(digest)
                runs.add(wire.HASHES, index, digest)
            runs.flush()
        finally:
            ahead.stop()
        self.channel.send_json(wire.END, {**self.stats, "digest": whole.hexdigest()})


# ---------------------------------------------------------------- writer role


class WriterRole:
    """Target side of one pass: sends the block map, applies the stream, acknowledges what is durable."""

    def __init__(
        self,
        channel: wire.FrameChannel,
        *,
        path: str,
        size: int,
        chunk_size: int,
        identity: str,
        mode: str,
        hash: str,
        verify: bool = True,
        map_path: str | None = None,
        flush_bytes: int | None = None,
        flush_seconds: float | None = None,
        **_ignored: Any,
    ) -> None:
        self.channel = channel
        self.path = Path(path)
        self.size = size
        self.chunk_size = chunk_size
        self.count = -(-size // chunk_size)
        self.mode = mode
        self.hash = hash
        options: dict[str, Any] = {}
        if flush_bytes is not None:
            options["flush_bytes"] = flush_bytes
        if flush_seconds is not None:
            options["flush_seconds"] = flush_seconds
        if map_path is None and (is_windows_device(path) or self.path.is_block_device()):
            raise MirrorError(
                f"{path} on {wire.this_host()} is a block device: give the mirror a map_path on a file "
                "system that survives a reboot to keep its block map in"
            )
        if is_windows_device(path) and not os.path.exists(path):
            raise MirrorError(
                f"there is no disk {path} on {wire.this_host()}: it is not mounted (Mount-VHD) or has "
                "another number now; run the mirror step again to mount it and find its number",
                retryable=True,
            )
        self.writer = TargetWriter(
            path,  # a file, a block device or an NBD URI (which Path() would fold: "nbd:/...")
            size=size,
            chunk_size=chunk_size,
            source_identity=identity,
            mode=mode,
            verify=verify,
            check_received=True,  # it crossed a wire: the digest is checked before a byte is written
            map_path=Path(map_path) if map_path else None,
            hash_algorithm=hash,
            **options,
        )
        self._acked = 0
        self._last_ack = 0.0  # the first progress is acknowledged at once, then every ACK_SECONDS
        self._buffers: queue.Queue = queue.Queue()
        self._differing: list[list[int]] = []

    def run(self) -> None:
        writer = self.writer
        try:
            self._send_map()
            depth = max(2, min(8, RECEIVE_BUDGET // self.chunk_size))
            inbox: queue.Queue = queue.Queue(maxsize=depth)
            for _ in range(depth + 2):  # queued, being applied, being received: the receiver never waits
                self._buffers.put(bytearray(self.chunk_size + wire.DATA_PREFIX.size))
            threading.Thread(target=self._receive, args=(inbox,), name="receiver", daemon=True).start()
            self._apply(inbox)
        except BaseException:
            writer.abort()
            raise
        finally:
            writer.close()

    def _send_map(self) -> None:
        snapshot = self.writer.summary
        blockmap = self.writer.block_map
        self.channel.send_json(
            wire.MAP_HEAD,
            {
                "chunk_count": snapshot.chunk_count,
                "chunk_size": snapshot.chunk_size,
                "size": snapshot.disk_size,
                "pass_number": snapshot.pass_number,
                "resuming": snapshot.resuming,
                "hash": self.hash,
                "reset_reason": blockmap.reset_reason,
                "downgraded": blockmap.downgraded,
                "damaged": blockmap.damaged,
            },
        )
        passes, pass_number = snapshot.passes, snapshot.pass_number
        for first in range(0, snapshot.chunk_count, wire.MAP_FRAME_CHUNKS):
            last = min(first + wire.MAP_FRAME_CHUNKS, snapshot.chunk_count)
            codes = bytearray(snapshot.states[first:last])
            for k in range(last - first):
                if codes[k] != ABSENT and passes[first + k] == pass_number:
                    codes[k] |= DONE_THIS_PASS
            digests = snapshot.digests[first * DIGEST_SIZE : last * DIGEST_SIZE]
            self.channel.send(wire.MAP, wire.RUN.pack(first, last - first), codes, digests)

    def _receive(self, inbox: queue.Queue) -> None:
        """Read, check and decompress frames ahead of the writer (a thread: it overlaps with the writes)."""
        try:
            while True:
                frame = self.channel.receive(into=self._lend)
                data: Any = None
                if frame.type == wire.DATA:
                    index, digest = wire.DATA_PREFIX.unpack_from(frame.payload)
                    if index >= self.count:
                        raise wire.ProtocolError(f"DATA frame for chunk {index} of a {self.count}-chunk disk")
                    offset = index * self.chunk_size
                    length = min(self.chunk_size, self.size - offset)
                    try:
                        data = wire.decompress(
                            frame.codec, memoryview(frame.payload)[wire.DATA_PREFIX.size :], length
                        )
                    except wire.ProtocolError as exc:
                        raise wire.ProtocolError(
                            f"the chunk at offset {offset} arrived damaged ({exc}): run again"
                        ) from None
                    if frame.codec != wire.RAW:  # decompressed elsewhere: the buffer is free again
                        self._give_back(frame)
                    data = (index, digest, data)  # read now: a given-back buffer may be reused any time
                inbox.put((frame, data))
                if frame.type == wire.BYE:
                    return
        except BaseException as exc:
            inbox.put((None, exc))

    def _lend(self, frame_type: int, length: int) -> tuple[bytearray, memoryview] | None:
        if frame_type != wire.DATA or length > self.chunk_size + wire.DATA_PREFIX.size:
            return None
        buffer = self._buffers.get()
        return buffer, memoryview(buffer)[:length]

    def _give_back(self, frame: wire.Frame) -> None:
        if frame.buffer is not None:
            self._buffers.put(frame.buffer)
            frame.buffer = None

    def _apply(self, inbox: queue.Queue) -> None:
        writer, chunk = self.writer, self.chunk_size
        finished = False
        while True:
            try:
                frame, data = inbox.get(timeout=0.5)
            except queue.Empty:
                writer.tick()
                self._ack()
                continue
            if frame is None:
                if finished and isinstance(data, wire.StreamClosed):
                    return
                if isinstance(data, wire.StreamClosed):
                    raise wire.StreamClosed(
                        f"the stream to the writer on {wire.this_host()} ended before the pass did ({data}); "
                        "what arrived durably is recorded: run again to resume"
                    )
                raise data
            kind = frame.type
            if kind == wire.DATA:
                index, digest, chunk_data = data
                try:
                    writer.write(index * chunk, chunk_data, digest)
                finally:
                    self._give_back(frame)
            elif kind == wire.SAME:
                first, count, digests = wire.unpack_run(frame.payload, with_digests=True)
                for k in range(count):
                    writer.confirm(
                        (first + k) * chunk, bytes(digests[k * DIGEST_SIZE : (k + 1) * DIGEST_SIZE])
                    )
            elif kind == wire.ZERO:
                first, count, _ = wire.unpack_run(frame.payload, with_digests=False)
                for k in range(count):
                    offset = (first + k) * chunk
                    writer.zero(offset, min(chunk, self.size - offset))
            elif kind == wire.HASHES:
                first, count, digests = wire.unpack_run(frame.payload, with_digests=True)
                for k in range(count):
                    offset = (first + k) * chunk
                    length = min(chunk, self.size - offset)
                    if not writer.check(
                        offset, length, bytes(digests[k * DIGEST_SIZE : (k + 1) * DIGEST_SIZE])
                    ):
                        if self._differing and sum(self._differing[-1]) == offset:
                            self._differing[-1][1] += length
                        else:
                            self._differing.append([offset, length])
            elif kind == wire.END:
                self._end(frame.json())
                finished = True
            elif kind == wire.BYE:
                if not finished:
                    raise wire.StreamClosed("the orchestrator ended the pass before the reader did")
                return
            else:
                raise wire.ProtocolError(f"unexpected {frame.name} frame in the chunk stream")
            self._ack()

    def _ack(self, force: bool = False) -> None:
        durable = self.writer.durable_through
        if durable > self._acked and (force or time.monotonic() - self._last_ack >= ACK_SECONDS):
            self.channel.send(wire.ACK, wire.ACK_BODY.pack(durable))
            self._acked = durable
            self._last_ack = time.monotonic()

    def _end(self, end: dict[str, Any]) -> None:
        writer = self.writer
        result: dict[str, Any] = {"pass_number": writer.summary.pass_number}
        if end.get("cancelled"):
            writer.checkpoint()
            result["cancelled"] = True
        elif self.mode == "verify":
            writer.checkpoint()
            result["differing_ranges"] = self._differing
        else:
            result["digest"] = writer.finish()
        # a complete pass covered every chunk: those after the last message needed nothing
        result["durable_through"] = writer.durable_through if end.get("cancelled") else self.count
        self._ack(force=True)
        self.channel.send_json(wire.DONE, result)


# ---------------------------------------------------------------- discovery


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.decode(errors="replace") if done.returncode == 0 else None


def _lsblk(device: str | None = None) -> list[dict[str, Any]] | None:
    """The block device tree (of one ``device`` when given); None without a usable lsblk."""
    import json

    # MOUNTPOINTS (all mounts of a device) needs util-linux 2.37; MOUNTPOINT works everywhere
    for columns in (
        "NAME,KNAME,PATH,SIZE,TYPE,FSTYPE,MOUNTPOINTS,PTTYPE,RO,RM,MODEL",
        "NAME,KNAME,SIZE,TYPE,FSTYPE,MOUNTPOINT,PTTYPE,RO,RM,MODEL",
    ):
        out = _run(["lsblk", "-J", "-b", "-o", columns] + ([device] if device else []))
        if out:
            try:
                return json.loads(out).get("blockdevices") or []
            except ValueError:
                continue
    return None


def _mounts(node: dict[str, Any]) -> list[str]:
    points = node.get("mountpoints")
    if points is None:
        points = [node.get("mountpoint")]
    return [p for p in points if isinstance(p, str) and p.startswith("/")]


def _used(node: dict[str, Any]) -> tuple[int, bool]:
    """(bytes in use, exactly known) of a device tree: statvfs of what is mounted (what df reports);
    a leaf nothing is mounted from counts whole, since what it holds cannot be told from here."""
    children = node.get("children") or []
    mounts = _mounts(node)
    if mounts:
        try:
            info = os.statvfs(mounts[0])
        except OSError:
            return int(node.get("size") or 0), False
        return (info.f_blocks - info.f_bfree) * info.f_frsize, True
    if not children:
        return int(node.get("size") or 0), False
    total, exact = 0, True
    for child in children:
        used, known = _used(child)
        total += used
        exact = exact and known
    return total, exact


def _filesystems(node: dict[str, Any]) -> list[str]:
    found = [node["fstype"]] if node.get("fstype") else []
    for child in node.get("children") or []:
        found.extend(fs for fs in _filesystems(child) if fs not in found)
    return found


def _device_path(node: dict[str, Any]) -> str:
    return node.get("path") or "/dev/" + str(node.get("kname") or node.get("name"))


def _partition_entry(node: dict[str, Any]) -> dict[str, Any]:
    used, exact = _used(node)
    return {
        "name": _device_path(node),
        "size": int(node.get("size") or 0),
        "type": node.get("type"),
        "fstype": node.get("fstype"),
        "mountpoints": _mounts(node),
        "used": used if exact else None,
        "children": [_partition_entry(child) for child in node.get("children") or []],
    }


def _disks() -> list[dict[str, Any]]:
    nodes = _lsblk()
    if nodes is None:
        return _disks_from_sys()
    disks = []
    for node in nodes:
        name = str(node.get("name") or "")
        size = int(node.get("size") or 0)
        if node.get("type") != "disk" or size == 0 or name.startswith(("zram", "ram")):
            continue  # loops, optical drives, RAM disks: nothing to migrate
        used, exact = _used(node)
        pttype = node.get("pttype")
        disks.append(
            {
                "name": _device_path(node),
                "size": size,
                "used": used,
                "used_exact": exact,
                "partition_table": {"gpt": "gpt", "dos": "mbr"}.get(pttype or "", "none"),
                "filesystems": _filesystems(node),
                "mountpoints": _mounts(node),
                "model": (node.get("model") or "").strip() or None,
                "read_only": node.get("ro") in (True, 1, "1"),
                "removable": node.get("rm") in (True, 1, "1"),
                "partitions": [_partition_entry(child) for child in node.get("children") or []],
            }
        )
    return disks


def _disks_from_sys() -> list[dict[str, Any]]:
    """Without a usable lsblk: names and sizes from sysfs, nothing more."""
    disks = []
    root = Path("/sys/block")
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.name.startswith(("loop", "ram", "zram", "sr", "fd")):
            continue
        try:
            size = int((entry / "size").read_text()) * 512
        except (OSError, ValueError):
            continue
        if size:
            disks.append(
                {
                    "name": f"/dev/{entry.name}",
                    "size": size,
                    "used": None,
                    "used_exact": False,
                    "partition_table": "none",
                    "filesystems": [],
                    "mountpoints": [],
                    "partitions": [],
                }
            )
    return disks


def _nics() -> list[dict[str, Any]]:
    import json

    out = _run(["ip", "-j", "addr"])
    nics = []
    if out:
        try:
            links = json.loads(out)
        except ValueError:
            links = []
        for link in links:
            if link.get("link_type") == "loopback":
                continue
            nics.append(
                {
                    "name": link.get("ifname"),
                    "mac": (link.get("address") or "").lower(),
                    "state": link.get("operstate"),
                    "mtu": link.get("mtu"),
                    "addresses": [
                        f"{info['local']}/{info['prefixlen']}"
                        for info in link.get("addr_info") or []
                        if info.get("local") and info.get("family") in ("inet", "inet6")
                    ],
                }
            )
        return nics
    root = Path("/sys/class/net")  # no iproute2 JSON: names and MACs from sysfs, no addresses
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.name == "lo":
            continue
        try:
            mac = (entry / "address").read_text().strip().lower()
        except OSError:
            continue
        nics.append({"name": entry.name, "mac": mac, "state": None, "mtu": None, "addresses": []})
    return nics


def _os_release() -> dict[str, str]:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        values = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() and not key.startswith("#"):
                values[key.strip()] = value.strip().strip("\"'")
        return values
    return {}


def _mountinfo() -> dict[str, list[str]]:
    """``major:minor`` of each mounted device and where it is mounted (what lsblk reads, without lsblk)."""
    import re

    mounts: dict[str, list[str]] = {}
    try:
        with open("/proc/self/mountinfo") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return mounts
    for line in lines:
        fields = line.split()
        if len(fields) > 4:  # octal escapes: a space in a mountpoint is \040
            target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            mounts.setdefault(fields[2], []).append(target)
    return mounts


def _blkid(path: str, offset: int | None = None) -> dict[str, str]:
    """What a low-level probe finds at ``path`` (PTTYPE, TYPE); works on files and without udev."""
    argv = ["blkid", "-p", "-o", "export"] + (["-O", str(offset)] if offset else []) + [path]
    values = {}
    for line in (_run(argv) or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _probe_tree(node: dict[str, Any]) -> None:
    """Fill in what lsblk leaves empty where udev is not running (containers, rescue systems)."""
    if not node.get("fstype") and not node.get("pttype"):
        found = _blkid(_device_path(node))
        node["fstype"] = found.get("TYPE")
        node["pttype"] = found.get("PTTYPE")
    for child in node.get("children") or []:
        _probe_tree(child)


def _filesystem_mounts(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every device in a tree (the disk, its partitions, LVs, loop devices) that is mounted, and where."""
    found = []
    mounts = _mounts(node)
    if mounts:
        found.append({"device": _device_path(node), "fstype": node.get("fstype"), "mountpoints": mounts})
    for child in node.get("children") or []:
        found.extend(_filesystem_mounts(child))
    return found


def _loops_backed_by(real_path: str) -> list[str]:
    """Loop devices whose backing file is ``real_path`` (a file disk mounted through losetup)."""
    found = []
    root = Path("/sys/block")
    for entry in sorted(root.glob("loop*")) if root.is_dir() else []:
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing == real_path:
            found.append("/dev/" + entry.name)
    return found


def _file_partitions(path: str) -> list[dict[str, Any]]:
    """Partitions of a disk held in a regular file: partx reads the table, blkid probes each one."""
    partitions = []
    for line in (_run(["partx", "-g", "-b", "-o", "NR,START,SIZE", path]) or "").splitlines()[:128]:
        fields = line.split()
        if len(fields) != 3 or not all(field.isdigit() for field in fields):
            continue
        number, start, size = (int(field) for field in fields)
        offset = start * 512  # partx counts 512-byte sectors whatever the logical sector size
        partitions.append(
            {
                "name": f"{path}#{number}",
                "offset": offset,
                "size": size,
                "type": "part",
                "fstype": _blkid(path, offset).get("TYPE"),
                "mountpoints": [],
                "used": None,
                "children": [],
            }
        )
    return partitions


def _device_size(path: str, device: int) -> int:
    """A block device's size: seeking to its end needs read access, sysfs does not."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        try:
            sectors = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}/size").read_text()
            return int(sectors) * 512
        except (OSError, ValueError):
            return 0
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _path_disk(path: str) -> dict[str, Any]:
    """One disk the playbook names, described whether or not lsblk lists it as a disk.

    Never opened for writing; a regular file is not even opened (stat and read-only probes).
    """
    import stat

    try:
        info = os.stat(path)
    except OSError as exc:
        missing = isinstance(exc, FileNotFoundError)
        return {"name": path, "error": "does not exist" if missing else exc.strerror or str(exc)}
    block, regular = stat.S_ISBLK(info.st_mode), stat.S_ISREG(info.st_mode)
    if not (block or regular):
        return {"name": path, "error": "is neither a block device nor a regular file"}
    real = os.path.realpath(path)
    entry: dict[str, Any] = {
        "name": path,
        "realpath": real,
        "block": block,
        "readable": os.access(path, os.R_OK),
        "loop_devices": [],
    }
    if block:
        size = _device_size(path, info.st_rdev)
        nodes = _lsblk(real)
        node = nodes[0] if nodes else None
        if node is None:  # no lsblk: what the device itself is, from a probe and mountinfo
            found = _blkid(path)
            node = {
                "path": real,
                "size": size,
                "fstype": found.get("TYPE"),
                "pttype": found.get("PTTYPE"),
                "mountpoints": _mountinfo().get(f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}", []),
            }
        else:
            _probe_tree(node)
        used, exact = _used({**node, "size": size})
        tree = [node]
        partitions = [_partition_entry(child) for child in node.get("children") or []]
        pttype, mountpoints = node.get("pttype"), _mounts(node)
        filesystems = _filesystems(node)
    else:
        size = info.st_size
        used, exact = min(info.st_blocks * 512, size), False  # allocated: an upper bound of the data
        found = _blkid(path)
        pttype = found.get("PTTYPE")
        partitions = _file_partitions(path) if pttype else []
        filesystems = [found["TYPE"]] if found.get("TYPE") else []
        filesystems.extend(p["fstype"] for p in partitions if p["fstype"] and p["fstype"] not in filesystems)
        entry["loop_devices"] = _loops_backed_by(real)  # a file disk mounted through losetup
        tree = [node for loop in entry["loop_devices"] for node in _lsblk(loop) or []]
        for node in tree:
            _probe_tree(node)
            filesystems.extend(fs for fs in _filesystems(node) if fs not in filesystems)
        mountpoints = []
    entry.update(
        {
            "size": size,
            "used": used,
            "used_exact": exact,
            "partition_table": {"gpt": "gpt", "dos": "mbr"}.get(pttype or "", "none"),
            "filesystems": filesystems,
            "mountpoints": mountpoints,
            "partitions": partitions,
            "filesystem_mounts": [mount for node in tree for mount in _filesystem_mounts(node)],
        }
    )
    return entry


def discover(paths: list[str] | None = None) -> dict[str, Any]:
    """What this machine is: the facts the planner needs to size and stage its replica.

    ``paths`` are the disks the playbook names; each is described under ``paths`` whether lsblk lists
    it or not (an LV, a loop device, a regular file standing in for a disk), with the mountpoints of the
    filesystems on it, because quiescing at cutover must know exactly what to freeze.
    """
    release = _os_release()
    system = platform.system().lower()
    detail = release.get("PRETTY_NAME") or f"{platform.system()} {platform.release()}"
    return {
        "hostname": wire.this_host(),
        "os": system if system in ("linux", "windows") else "unknown",
        "os_detail": detail,
        "os_id": release.get("ID"),
        "os_version": release.get("VERSION_ID"),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "firmware": "uefi" if os.path.isdir("/sys/firmware/efi") else "bios",
        "disks": _disks() if system == "linux" else [],
        "nics": _nics() if system == "linux" else [],
        "python": platform.python_version(),
        "agent_version": AGENT_VERSION,
        "paths": [_path_disk(path) for path in paths or ()],
    }


# ---------------------------------------------------------------- entry point


def main() -> int:
    return wire.serve_stdio(lambda channel: Agent(channel).serve(), log)


if __name__ == "__main__":
    sys.exit(main())
