"""The agent wire protocol: framing over any byte stream, the handshake, and per-chunk compression.

One protocol serves every stream the data plane uses (an SSH channel, a local pipe, later a TLS socket
between two agents), so this module ships inside the agent (orchestrator/agent.py) and must stay
standard-library only and Python 3.8 compatible; zstandard is used when both ends have it.

A frame is a 12-byte header, then ``length`` bytes of payload::

    magic "HV" | type u8 | flags u8 | length u32 | crc32 u32      (little endian)

The CRC covers type, flags, length and payload, so a flipped bit anywhere is caught by the receiver, not
only in the payload; the chunk digest inside a DATA frame then checks the decompressed data end to end.
The two low bits of ``flags`` name the payload's compression. The header layout and the HELLO frame are
frozen forever: they are how two versions recognise each other and refuse to go on.

A pass, relayed by the orchestrator (or later sent agent to agent)::

    writer -> reader   MAP_HEAD, MAP...          the block map: 1 state byte + 16 digest bytes per chunk
    reader -> writer   SAME | ZERO | DATA...     in disk order; SAME and ZERO are run-length markers
                       HASHES...                 (verify mode: every chunk's digest, nothing copied)
                       END                       the source's whole-disk digest and the pass counters
    writer -> reader   ACK...                    every chunk below n is durable on the target
    writer -> orch.    DONE                      the target's whole-disk digest (or the differing ranges)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from . import portable_io
from .errors import MirrorError
from .hashing import DIGEST_SIZE, available_algorithms

try:
    import zstandard
except ImportError:  # a host without zstandard: zlib only
    zstandard = None  # type: ignore[assignment]

PROTOCOL_VERSION = 1

MAGIC = b"HV"
HEADER = struct.Struct("<2sBBII")
HEADER_SIZE = HEADER.size
_CRC_FIELDS = struct.Struct("<BBI")
MAX_PAYLOAD = 320 * 1024**2  # a 256 MiB chunk (the largest allowed) plus its prefix, never more

# frame types (numbers are part of the wire format: add new ones, never renumber)
HELLO = 1  # json, both directions, first frame of a stream
ERROR = 2  # json {message, kind, retryable}: the sender stops
REQUEST = 3  # json {op, ...}: orchestrator -> agent
RESULT = 4  # json: the answer to a REQUEST
MAP_HEAD = 5  # json {chunk_count, chunk_size, size, pass_number, resuming, hash}
MAP = 6  # <QI first, count> + count state bytes + count digests
SAME = 7  # <QI first, count> + count digests: chunks equal to the map (recorded as checked)
ZERO = 8  # <QI first, count>: chunks that read as zeros
DATA = 9  # <Q16s index, digest> + chunk (compressed as the flags say)
HASHES = 10  # <QI first, count> + count digests: verify mode
END = 11  # json: the reader's whole-disk digest and counters; or {cancelled: true}
ACK = 12  # <Q durable_through>
DONE = 13  # json: the writer's result
CANCEL = 14  # json {}: stop at the next chunk boundary
BYE = 15  # json {}: close the session

FRAME_NAMES = {
    HELLO: "HELLO",
    ERROR: "ERROR",
    REQUEST: "REQUEST",
    RESULT: "RESULT",
    MAP_HEAD: "MAP_HEAD",
    MAP: "MAP",
    SAME: "SAME",
    ZERO: "ZERO",
    DATA: "DATA",
    HASHES: "HASHES",
    END: "END",
    ACK: "ACK",
    DONE: "DONE",
    CANCEL: "CANCEL",
    BYE: "BYE",
}

CODEC_MASK = 0x03
RAW, ZLIB, ZSTD = 0, 1, 2
CODEC_NAMES = {RAW: "none", ZLIB: "zlib", ZSTD: "zstd"}
CODECS = {name: code for code, name in CODEC_NAMES.items()}
MIN_SAVING = 0.05  # a chunk is sent raw unless compression saves at least 5%

RUN = struct.Struct("<QI")  # first chunk index, chunk count
DATA_PREFIX = struct.Struct(f"<Q{DIGEST_SIZE}s")
ACK_BODY = struct.Struct("<Q")
MAP_FRAME_CHUNKS = 65536  # chunks per MAP frame: 1.1 MiB
RUN_MAX = 4096  # chunks per SAME/HASHES run: 64 KiB of digests


class ProtocolError(MirrorError):
    """The stream broke or carried something it should not; what was durable stays, a re-run resumes."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message, retryable=retryable)


class StreamClosed(ProtocolError):
    """The other end went away (EOF, broken pipe, closed channel)."""


class VersionMismatch(ProtocolError):
    """The two ends speak different protocol versions; retrying cannot help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


# ---------------------------------------------------------------- frames


class Frame:
    """One received frame; ``payload`` is a bytearray the receiver owns."""

    __slots__ = ("buffer", "crc", "flags", "payload", "type")

    def __init__(
        self, type: int, flags: int, payload: bytes | bytearray | memoryview, crc: int | None = None
    ) -> None:
        self.type = type
        self.flags = flags
        self.payload = payload
        self.crc = crc
        self.buffer: Any = None  # a lent receive buffer behind ``payload`` (see read_frame)

    @property
    def name(self) -> str:
        return FRAME_NAMES.get(self.type, f"type {self.type}")

    @property
    def codec(self) -> int:
        return self.flags & CODEC_MASK

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(bytes(self.payload).decode())
        except ValueError:
            raise ProtocolError(f"a {self.name} frame does not hold valid JSON") from None
        if not isinstance(value, dict):
            raise ProtocolError(f"a {self.name} frame does not hold a JSON object")
        return value

    def __repr__(self) -> str:
        return f"Frame({self.name}, flags={self.flags}, {len(self.payload)} bytes)"


def frame_crc(type: int, flags: int, parts: Sequence[bytes | bytearray | memoryview]) -> int:
    length = sum(len(part) for part in parts)
    crc = zlib.crc32(_CRC_FIELDS.pack(type, flags, length))
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def frame_header(
    type: int, parts: Sequence[bytes | bytearray | memoryview], flags: int = 0, crc: int | None = None
) -> bytes:
    """The 12-byte header for a payload made of ``parts`` (sent back to back, never joined)."""
    length = sum(len(part) for part in parts)
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"a {FRAME_NAMES.get(type, type)} frame of {length} bytes is too large")
    if crc is None:
        crc = frame_crc(type, flags, parts)
    return HEADER.pack(MAGIC, type, flags, length, crc)


def read_frame(
    read_exact: Callable[[int], bytearray],
    *,
    check: bool = True,
    peer: str = "peer",
    into: Callable[[int, int], tuple[Any, memoryview] | None] | None = None,
    read_into: Callable[[memoryview], None] | None = None,
) -> Frame:
    """Read one frame; ``check=False`` leaves the CRC to the final receiver (a relay passing it on).

    ``into(type, length)`` may lend a buffer for the payload, as (owner, view of ``length`` bytes), so a
    receiver of many large frames reuses a few buffers instead of faulting in fresh memory for each; the
    frame's ``payload`` is then that view and ``owner`` is kept in ``Frame.buffer`` to be given back.
    """
    header = read_exact(HEADER_SIZE)
    magic, type, flags, length, crc = HEADER.unpack(header)
    if magic != MAGIC:
        preview = bytes(header).decode("ascii", "replace")
        raise ProtocolError(
            f"{peer} sent something that is not an agent frame ({preview!r}): a login banner or shell "
            "profile printing on stdout? Make the account's non-interactive shell silent and run again",
            retryable=False,
        )
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"{peer} announced a {length}-byte frame: the stream is damaged; run again")
    lent = into(type, length) if into is not None and read_into is not None and length else None
    if lent is not None:
        owner, payload = lent
        read_into(payload)  # type: ignore[misc]
    else:
        owner, payload = None, read_exact(length) if length else bytearray()
    if check and frame_crc(type, flags, (payload,)) != crc:
        raise ProtocolError(
            f"a {FRAME_NAMES.get(type, type)} frame from {peer} arrived damaged (CRC mismatch): "
            "check the network path, then run again (the mirror resumes)"
        )
    frame = Frame(type, flags, payload, crc)
    frame.buffer = owner
    return frame


def json_payload(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


# ---------------------------------------------------------------- binary payloads


def pack_run(first: int, count: int, digests: bytes | bytearray = b"") -> list[bytes | bytearray]:
    return [RUN.pack(first, count), digests] if digests else [RUN.pack(first, count)]


def unpack_run(payload: bytes | bytearray, *, with_digests: bool) -> tuple[int, int, memoryview]:
    if len(payload) < RUN.size:
        raise ProtocolError("a run frame is shorter than its header: the stream is damaged")
    first, count = RUN.unpack_from(payload)
    digests = memoryview(payload)[RUN.size :]
    expected = count * DIGEST_SIZE if with_digests else 0
    if len(digests) != expected:
        raise ProtocolError(f"a run frame of {count} chunks carries {len(digests)} digest bytes")
    return first, count, digests


def unpack_map(payload: bytes | bytearray) -> tuple[int, int, bytes, memoryview]:
    first, count = RUN.unpack_from(payload)
    body = memoryview(payload)[RUN.size :]
    if len(body) != count * (1 + DIGEST_SIZE):
        raise ProtocolError(f"a MAP frame of {count} chunks carries {len(body)} bytes")
    return first, count, bytes(body[:count]), body[count:]


# ---------------------------------------------------------------- handshake


def hello(host: str, agent_version: str, *, role: str) -> dict[str, Any]:
    return {
        "protocol": PROTOCOL_VERSION,
        "agent_version": agent_version,
        "role": role,
        "host": host,
        "python": ".".join(str(part) for part in sys.version_info[:3]),
        "hashes": list(available_algorithms()),
        "compressors": list(available_compressors()),
        "pid": os.getpid(),
    }


def this_host() -> str:
    return socket.gethostname() or "localhost"


def version_mismatch(agent: dict[str, Any], orchestrator: dict[str, Any]) -> str:
    """The one message both ends print when their protocol versions differ."""
    theirs, ours = agent.get("protocol"), orchestrator.get("protocol")
    older = isinstance(theirs, int) and isinstance(ours, int) and theirs < ours
    return (
        f"agent protocol {theirs} on host {agent.get('host', '?')}, orchestrator speaks {ours}: the agent "
        f"there (version {agent.get('agent_version', '?')}) is {'older' if older else 'newer'} than this "
        f"orchestrator (version {orchestrator.get('agent_version', '?')}); let this orchestrator ship its "
        "own agent (remove any preinstalled copy"
        + (")" if older else ") or upgrade the orchestrator")
        + " and run again"
    )


# ---------------------------------------------------------------- compression


def available_compressors() -> tuple[str, ...]:
    return ("zstd", "zlib") if zstandard is not None else ("zlib",)


def negotiate_compressor(requested: str, *sides: Sequence[str]) -> str:
    """zstd when asked for and every end has it, zlib otherwise; "none" only when asked for."""
    if requested == "none":
        return "none"
    if requested == "zstd" and all("zstd" in side for side in sides):
        return "zstd"
    return "zlib"


class ChunkCompressor:
    """Compresses chunks for the wire, and sends them raw when that does not pay.

    A sample of the chunk (three 16 KiB slices) is tried first: random or already-compressed data (a
    third of a typical disk) then costs a 48 KiB trial instead of compressing 4 MiB for nothing. Safe to
    share between threads (each thread gets its own zstd contexts). ``level`` is the configured level;
    a caller may ask for less effort per chunk, down to ``min_level`` (see the agent's reader, which
    lowers it while compression is what the stream waits for).
    """

    SAMPLE = 16 * 1024

    def __init__(self, name: str, level: int) -> None:
        if name not in CODECS:
            raise ValueError(f"unknown compressor {name!r}")
        if name == "zstd" and zstandard is None:
            raise ValueError("zstd needs the zstandard module, which this Python does not have")
        self.name = name
        self.level = level if name == "zstd" else max(1, min(9, level))
        self.min_level = min(1, self.level)
        self._local = threading.local()

    def _zstd(self, level: int) -> Any:
        contexts = getattr(self._local, "zstd", None)
        if contexts is None:
            contexts = self._local.zstd = {}
        context = contexts.get(level)
        if context is None:
            context = contexts[level] = zstandard.ZstdCompressor(level=level)
        return context

    def _compress(self, data: bytes | bytearray | memoryview, level: int) -> bytes:
        if self.name == "zstd":
            return self._zstd(level).compress(data)
        return zlib.compress(data, level)

    def compress(
        self, data: bytes | bytearray | memoryview, level: int | None = None
    ) -> tuple[int, bytes | bytearray | memoryview]:
        """(codec, payload): the payload is ``data`` itself when sent raw."""
        if self.name == "none" or not data:
            return RAW, data
        level = self.level if level is None else max(self.min_level, min(self.level, level))
        size = len(data)
        if size >= 16 * self.SAMPLE:
            view = memoryview(data)
            step = size // 3
            sample = b"".join(bytes(view[i * step : i * step + self.SAMPLE]) for i in range(3))
            if len(self._compress(sample, level)) > len(sample) * (1 - MIN_SAVING):
                return RAW, data
        packed = self._compress(data, level)
        if len(packed) > size * (1 - MIN_SAVING):
            return RAW, data
        return CODECS[self.name], packed


def decompress(codec: int, payload: bytes | bytearray | memoryview, length: int) -> bytes | memoryview:
    """The original chunk of ``length`` bytes; never allocates more than that, whatever the payload says."""
    if codec == RAW:
        data: bytes | memoryview = memoryview(payload)
    elif codec == ZSTD:
        if zstandard is None:
            raise ProtocolError(
                "received a zstd chunk but this agent has no zstandard module", retryable=False
            )
        try:
            data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=length)
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"cannot decompress (zstd: {exc})") from None
    elif codec == ZLIB:
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(payload, length + 1)
        except zlib.error as exc:
            raise ProtocolError(f"cannot decompress (zlib: {exc})") from None
    else:
        raise ProtocolError(f"unknown compression code {codec}")
    if len(data) != length:
        raise ProtocolError(f"decompressed to {len(data)} bytes instead of {length}")
    return data


# ---------------------------------------------------------------- streams over file descriptors

_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), named in fcntl only from Python 3.10
PIPE_SIZE = 1024**2


def widen_pipe(fd: int) -> None:
    """Grow a pipe to 1 MiB (from 64 KiB): a 4 MiB chunk then crosses in 4 system calls, not 64."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, ImportError):
        pass  # not a pipe, above /proc/sys/fs/pipe-max-size, or no fcntl: the default works, only slower


class ExactReader:
    """``read_exact``/``read_into`` over a ``_recv_into`` that may return short counts (0: closed).

    Every stream kind (pipes, an SSH channel) differs only in how it receives some bytes; filling a frame
    exactly and saying where a stream broke off is written once, here.
    """

    name: str

    def _recv_into(self, view: memoryview) -> int:
        raise NotImplementedError

    def read_exact(self, count: int) -> bytearray:
        buffer = bytearray(count)
        self.read_into(memoryview(buffer))
        return buffer

    def read_into(self, view: memoryview) -> None:
        """Fill ``view`` exactly (a lent buffer: no allocation per frame)."""
        count = len(view)
        done = 0
        while done < count:
            got = self._recv_into(view[done:])
            if got == 0:
                raise StreamClosed(
                    f"{self.name} closed the stream"
                    + (f" in the middle of a frame ({done} of {count} bytes)" if done else "")
                )
            done += got


class FdStream(ExactReader):
    """A byte stream over two file descriptors (a pipe pair, a socket twice, stdin/stdout of an agent)."""

    def __init__(self, read_fd: int, write_fd: int, name: str = "peer") -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.name = name

    def _recv_into(self, view: memoryview) -> int:
        try:
            return portable_io.readv_into(self.read_fd, view)
        except OSError as exc:
            raise StreamClosed(f"reading from {self.name} failed: {exc.strerror}") from None

    def write(self, *parts: bytes | bytearray | memoryview) -> None:
        views = [memoryview(part).cast("B") for part in parts if len(part)]
        while views:
            try:
                written = portable_io.writev(self.write_fd, views)
            except OSError as exc:
                raise StreamClosed(f"writing to {self.name} failed: {exc.strerror}") from None
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views and written:
                views[0] = views[0][written:]

    def close(self) -> None:
        for fd in {self.read_fd, self.write_fd}:
            with contextlib.suppress(OSError):
                os.close(fd)


class FrameChannel:
    """Frames over a stream: one reader at a time, writers serialised (acks and data share the stream)."""

    def __init__(self, stream: Any, peer: str) -> None:
        self.stream = stream
        self.peer = peer
        self._write_lock = threading.Lock()
        self.sent_bytes = 0
        self.received_bytes = 0

    def send(
        self, type: int, *parts: bytes | bytearray | memoryview, flags: int = 0, crc: int | None = None
    ) -> int:
        """Send one frame; ``crc`` when the caller computed it already (on another thread, say)."""
        header = frame_header(type, parts, flags, crc)
        with self._write_lock:
            self.stream.write(header, *parts)
        size = HEADER_SIZE + sum(len(part) for part in parts)
        self.sent_bytes += size
        return size

    def send_json(self, type: int, value: dict[str, Any]) -> int:
        return self.send(type, json_payload(value))

    def forward(self, frame: Frame) -> int:
        """Send a received frame on unchanged (its CRC too, so the final receiver checks end to end)."""
        header = frame_header(frame.type, (frame.payload,), frame.flags, frame.crc)
        with self._write_lock:
            self.stream.write(header, frame.payload)
        size = HEADER_SIZE + len(frame.payload)
        self.sent_bytes += size
        return size

    def receive(
        self, *, check: bool = True, into: Callable[[int, int], tuple[Any, memoryview] | None] | None = None
    ) -> Frame:
        read_into = getattr(self.stream, "read_into", None)
        frame = read_frame(
            self.stream.read_exact, check=check, peer=self.peer, into=into, read_into=read_into
        )
        self.received_bytes += HEADER_SIZE + len(frame.payload)
        return frame


def serve_stdio(serve: Callable[[FrameChannel], int], log: Callable[[str], None]) -> int:
    """An agent's entry point: the protocol owns fd 0 and fd 1, anything else printing (a library, a
    warning) goes to stderr instead; a peer gone is exit 1, Ctrl-C exit 130."""
    protocol_out = os.dup(1)
    os.dup2(2, 1)
    for fd in (0, protocol_out):
        portable_io.binary_stdio(fd)  # Windows: frames are bytes, never line-end translated text
        widen_pipe(fd)
    channel = FrameChannel(FdStream(0, protocol_out, "the orchestrator"), "the orchestrator")
    try:
        return serve(channel)
    except StreamClosed as exc:
        log(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
