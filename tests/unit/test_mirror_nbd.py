"""Mirroring into an NBD export: a real qemu-nbd serving a real qcow2, written in process and by the
writer agent, checked with qemu-img (the replica's bytes, and what the qcow2 really allocates)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.mirror import FileDiskReader, MirrorError, PassStats, mirror_disk
from orchestrator.mirror import nbd as nbd_module
from orchestrator.mirror import protocol as wire
from orchestrator.mirror.blockmap import ABSENT, DATA, ZERO
from orchestrator.mirror.hashing import chunk_hasher
from orchestrator.mirror.nbd import NbdAddress, NbdClient, NbdError, is_nbd_uri, parse_nbd_uri
from orchestrator.mirror.remote import RemotePassStats, mirror_remote
from orchestrator.mirror.writer import TargetWriter
from orchestrator.transport.local import LocalProcess, LocalTransport
from tests.images import make_image, sha256
from tests.unit.test_agent_mirror import PYTHON38, STDLIB_PYTHON

KiB, MiB = 1024, 1024**2
CHUNK = 256 * KiB
SIZE = 32 * MiB  # 128 chunks; the export has the same size, so its raw image is comparable byte for byte
IDENTITY = "db01:/dev/vda"
TEXT = (b"nameserver 10.0.0.2\n# the quick brown fox jumps over the lazy dog\n" * 5000)[:CHUNK]
QEMU_NBD, QEMU_IMG = shutil.which("qemu-nbd"), shutil.which("qemu-img")


# ---------------------------------------------------------------- a real qemu-nbd


@dataclass
class Export:
    """One qcow2 volume served by its own qemu-nbd on a Unix socket."""

    image: Path
    socket: Path
    pid: int
    name: str

    @property
    def uri(self) -> str:
        return f"nbd+unix:///{self.name}?socket={self.socket}"

    @property
    def map_path(self) -> Path:
        return Path(str(self.image) + ".hvmap")

    def raw_sha256(self, scratch: Path) -> str:
        """The guest-visible disk, as `qemu-img convert -O raw` reads it from the qcow2 file itself."""
        raw = scratch / f"{self.image.stem}.raw"
        qemu_img("convert", "-U", "-f", "qcow2", "-O", "raw", str(self.image), str(raw))
        try:
            return sha256(raw)
        finally:
            raw.unlink()

    def data_bytes(self) -> int:
        """Bytes of the virtual disk the qcow2 holds as data (not holes, not zero clusters)."""
        extents = json.loads(qemu_img("map", "-U", "--output=json", "-f", "qcow2", str(self.image)))
        return sum(e["length"] for e in extents if e["data"] and not e["zero"])

    def file_bytes(self) -> int:
        """What the qcow2 file costs on the host (qemu-img info's "disk size")."""
        info = json.loads(qemu_img("info", "-U", "--output=json", "-f", "qcow2", str(self.image)))
        return int(info["actual-size"])

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _running(self.pid):
            time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def qemu_img(*args: str) -> str:
    assert QEMU_IMG is not None
    done = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"qemu-img {' '.join(args)}: {done.stderr}"
    return done.stdout


class Exports:
    """Starts qemu-nbd servers (qcow2, a socket path short enough for AF_UNIX) and stops them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.socket_dir = Path(tempfile.mkdtemp(prefix="hvnbd-", dir="/tmp"))
        self.started: list[Export] = []

    def start(
        self, name: str = "replica", size: int = SIZE, *, read_only: bool = False, export_name: str = ""
    ) -> Export:
        assert QEMU_NBD is not None
        image = self.tmp_path / f"{name}.qcow2"
        if not image.exists():
            qemu_img("create", "-q", "-f", "qcow2", str(image), str(size))
        sock = self.socket_dir / f"{name}.sock"
        pid_file = self.socket_dir / f"{name}.pid"
        log = self.socket_dir / f"{name}.log"
        argv = [
            QEMU_NBD,
            f"--socket={sock}",
            "--format=qcow2",
            "--persistent",
            "--shared=2",
            "--fork",
            f"--pid-file={pid_file}",
            "--discard=unmap",  # a zeroed chunk gives its clusters back
            *(["--read-only"] if read_only else []),
            *([f"--export-name={export_name}"] if export_name else []),
            str(image),
        ]
        with open(log, "wb") as err:  # not a pipe: the forked server would hold it open
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, timeout=60)
        assert done.returncode == 0, f"qemu-nbd did not start: {log.read_text()}"
        export = Export(image, sock, int(pid_file.read_text()), export_name)
        self.started.append(export)
        return export

    def stop_all(self) -> None:
        for export in self.started:
            export.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


@pytest.fixture
def exports(tmp_path: Path) -> Iterator[Exports]:
    if QEMU_NBD is None or QEMU_IMG is None:
        pytest.skip("qemu-nbd and qemu-img are not installed (Debian package qemu-utils)")
    servers = Exports(tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture
def export(exports: Exports) -> Export:
    return exports.start()


# ---------------------------------------------------------------- helpers


DATA_CHUNKS = [0, 1, 4, 5, 6, 20, 127]


def sample_pieces() -> dict[int, bytes]:
    return {
        0: os.urandom(2 * CHUNK),  # chunks 0-1
        4 * CHUNK: TEXT * 3,  # chunks 4-6
        10 * CHUNK: bytes(4 * CHUNK),  # chunks 10-13: allocated zeros in the source, never data on the target
        20 * CHUNK: os.urandom(1000) + TEXT[: CHUNK - 1000],  # chunk 20
        SIZE - 100: b"end of disk" * 9,  # the last chunk
    }


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_image(tmp_path / "source.img", SIZE, sample_pieces())


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def local(source: Path, export: Export, mode: str = "full", **kwargs: Any) -> PassStats:
    with FileDiskReader(source) as reader:
        return mirror_disk(
            reader,
            Path(export.uri),  # as a caller holding a Path would pass it: the URI survives pathlib
            chunk_size=CHUNK,
            mode=mode,  # type: ignore[arg-type]
            source_identity=IDENTITY,
            map_path=kwargs.pop("map_path", export.map_path),
            **kwargs,
        )


def remote(
    source: Path, export: Export, mode: str = "full", *, writer: Any = None, **kwargs: Any
) -> RemotePassStats:
    return mirror_remote(
        LocalTransport(),
        str(source),
        writer or LocalTransport(),
        export.uri,
        chunk_size=CHUNK,
        mode=mode,  # type: ignore[arg-type]
        source_identity=IDENTITY,
        map_path=str(export.map_path),
        **kwargs,
    )


def assert_map_tells_the_truth(export: Export) -> int:
    """Every chunk the block map vouches for is on the export (read back over NBD); returns how many
    chunks it records as data."""
    hasher = chunk_hasher()
    writer = TargetWriter(
        export.uri,
        size=SIZE,
        chunk_size=CHUNK,
        source_identity=IDENTITY,
        mode="verify",
        map_path=export.map_path,
    )
    recorded = 0
    try:
        with NbdClient.connect(export.uri, writable=False) as client:
            blockmap = writer.block_map
            for index in range(blockmap.chunk_count):
                state = blockmap.state(index)
                if state == ABSENT:
                    continue
                piece = client.pread(CHUNK, index * CHUNK)
                if state == DATA:
                    recorded += 1
                    assert hasher.digest(piece) == blockmap.digest(index), (
                        f"chunk {index} is not what the map says"
                    )
                else:
                    assert state == ZERO and piece == bytes(CHUNK), (
                        f"chunk {index} is recorded zero, holds data"
                    )
    finally:
        writer.close()
    return recorded


class Recording(LocalTransport):
    """A local transport that remembers the agents it started (to kill one)."""

    def __init__(self, python: list[str] | None = None) -> None:
        super().__init__(python)
        self.started: list[LocalProcess] = []

    def start_python(self, args: Any) -> LocalProcess:
        process = super().start_python(args)
        self.started.append(process)
        return process


# ---------------------------------------------------------------- URIs


def test_nbd_uris_parse_also_after_pathlib_folded_their_slashes() -> None:
    unix = NbdAddress(export="vol 1", socket_path="/run/hv/a.sock")
    assert parse_nbd_uri("nbd+unix:///vol%201?socket=/run/hv/a.sock") == unix
    assert parse_nbd_uri(Path("nbd+unix:///vol%201?socket=/run/hv/a.sock")) == unix
    assert parse_nbd_uri(unix.uri) == unix
    assert parse_nbd_uri("nbd+unix:///?socket=/s") == NbdAddress(export="", socket_path="/s")
    tcp = NbdAddress(export="disk0", host="10.0.0.9", port=10809)
    assert parse_nbd_uri("nbd://10.0.0.9/disk0") == tcp
    assert parse_nbd_uri(Path("nbd://10.0.0.9:10809/disk0")) == tcp
    assert parse_nbd_uri("nbd://[fd00::9]:2000/") == NbdAddress(export="", host="fd00::9", port=2000)
    assert is_nbd_uri(Path("nbd://h/x")) and is_nbd_uri("NBD+UNIX:///x?socket=/s")
    assert not is_nbd_uri("/var/lib/images/nbd.img") and not is_nbd_uri("nbd.qcow2")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("nbd+unix:///vol", r"names no socket: add \?socket=PATH"),
        ("nbds://host/vol", "TLS or vsock.*not supported"),
        ("nbd:///vol", "names no host"),
        ("nbd://host:notaport/vol", "invalid port"),
    ],
)
def test_a_malformed_nbd_uri_says_what_is_missing(uri: str, message: str) -> None:
    with pytest.raises(NbdError, match=message):
        parse_nbd_uri(uri)


# ---------------------------------------------------------------- copies into a qcow2


def test_in_process_full_copy_gives_the_source_bytes_and_a_thin_qcow2(
    source: Path, export: Export, tmp_path: Path
) -> None:
    stats = local(source, export)

    assert export.raw_sha256(tmp_path) == sha256(source)
    assert stats.chunks_written == len(DATA_CHUNKS) and stats.bytes_written == len(DATA_CHUNKS) * CHUNK
    # zero chunks (holes and the allocated zeros of chunks 10-13) stay unallocated in the qcow2
    assert export.data_bytes() == len(DATA_CHUNKS) * CHUNK
    assert export.file_bytes() < SIZE // 4
    assert export.map_path.exists() and assert_map_tells_the_truth(export) == len(DATA_CHUNKS)

    again = local(source, export, "incremental")
    assert again.chunks_written == 0 and again.unchanged_bytes_skipped == len(DATA_CHUNKS) * CHUNK


def test_remote_full_copy_then_incremental_sends_only_the_changed_chunks(
    source: Path, export: Export, tmp_path: Path
) -> None:
    full = remote(source, export)
    assert export.raw_sha256(tmp_path) == sha256(source)
    assert full.chunks_written == full.data_frames == len(DATA_CHUNKS)
    assert full.digest == full.target_digest and full.durable_bytes == SIZE
    assert export.data_bytes() == len(DATA_CHUNKS) * CHUNK

    changed = {5: os.urandom(CHUNK), 60: os.urandom(CHUNK)}
    for index, data in changed.items():
        overwrite(source, index * CHUNK, data)
    incremental = remote(source, export, "incremental")

    assert incremental.chunks_written == incremental.data_frames == 2
    assert incremental.bytes_written == 2 * CHUNK and incremental.pass_number == 2
    assert incremental.unchanged_bytes_skipped == (len(DATA_CHUNKS) - 1) * CHUNK
    assert export.raw_sha256(tmp_path) == sha256(source)
    assert export.data_bytes() == (len(DATA_CHUNKS) + 1) * CHUNK  # chunk 60 is new data
    assert remote(source, export, "incremental").data_frames == 0


def test_a_chunk_that_became_zero_is_zeroed_and_its_clusters_given_back(
    source: Path, export: Export, tmp_path: Path
) -> None:
    remote(source, export)
    overwrite(source, 4 * CHUNK, bytes(3 * CHUNK))  # chunks 4-6 become zeros in the source

    stats = remote(source, export, "incremental")

    assert stats.chunks_written == 0 and stats.zero_bytes_skipped >= 3 * CHUNK
    assert export.raw_sha256(tmp_path) == sha256(source)
    assert export.data_bytes() == (len(DATA_CHUNKS) - 3) * CHUNK  # WRITE_ZEROES may punch: it did


def test_a_stdlib_only_python_3_8_writer_fills_the_export(
    source: Path, export: Export, tmp_path: Path
) -> None:
    python = [PYTHON38, "-I", "-S"] if PYTHON38 else STDLIB_PYTHON  # the oldest Python the agent supports
    stats = remote(source, export, writer=LocalTransport(python))
    assert export.raw_sha256(tmp_path) == sha256(source)
    assert stats.chunks_written == len(DATA_CHUNKS)


# ---------------------------------------------------------------- faults


def test_a_finished_pass_survives_the_nbd_server_being_killed(
    source: Path, export: Export, tmp_path: Path
) -> None:
    """qemu-nbd keeps qcow2 metadata in memory until a FLUSH; a pass that reported done must have sent it."""
    local(source, export)
    os.kill(export.pid, signal.SIGKILL)  # no chance to write anything it still held
    export.stop()
    assert export.raw_sha256(tmp_path) == sha256(source)


def test_writer_killed_with_sigkill_mid_pass_resumes_to_an_identical_disk(
    exports: Exports, tmp_path: Path
) -> None:
    source = make_image(tmp_path / "source.img", SIZE, {0: os.urandom(24 * MiB), 30 * MiB: TEXT})
    export = exports.start()
    writer = Recording()
    killed = threading.Event()
    acknowledged: list[int] = []
    relayed: list[int] = []

    def kill_once_something_is_durable(durable: int) -> None:
        if durable and not killed.is_set():
            acknowledged.append(durable)
            os.kill(writer.started[0].pid, signal.SIGKILL)
            killed.set()

    def hold_the_stream_until_the_kill(frame: wire.Frame) -> wire.Frame:
        # after two batches the relay waits: the idle writer FLUSHes and records the first batch,
        # acknowledges it and is killed; the stream then resumes into a dead writer, mid-pass
        relayed.append(frame.type)
        if relayed.count(wire.DATA) == 8:
            killed.wait(timeout=60)
        return frame

    with pytest.raises(MirrorError, match=r"killed by signal 9") as caught:
        remote(
            source,
            export,
            writer=writer,
            flush_bytes=4 * CHUNK,
            checkpoint=kill_once_something_is_durable,
            relay_hook=hold_the_stream_until_the_kill,
        )
    assert killed.is_set() and caught.value.retryable

    recorded = assert_map_tells_the_truth(export)
    assert recorded * CHUNK >= acknowledged[0]  # what was acknowledged as durable is in the map
    resumed = remote(source, export)
    assert export.raw_sha256(tmp_path) == sha256(source)
    assert resumed.pass_number == 1 and resumed.resumed_bytes_skipped >= recorded * CHUNK > 0


def test_nbd_server_killed_mid_pass_loses_nothing_the_map_recorded(exports: Exports, tmp_path: Path) -> None:
    """qemu-nbd dies with unflushed writes (and qcow2 metadata) in memory; the map only ever recorded what
    a FLUSH had made durable, so after a restart the resumed pass completes an identical disk."""
    source = make_image(tmp_path / "source.img", SIZE, {0: os.urandom(24 * MiB), 30 * MiB: TEXT})
    export = exports.start()
    killed = threading.Event()
    relayed: list[int] = []

    def kill_the_server_once_something_is_durable(durable: int) -> None:
        if durable and not killed.is_set():
            os.kill(export.pid, signal.SIGKILL)
            killed.set()

    def hold_the_stream_until_the_kill(frame: wire.Frame) -> wire.Frame:
        relayed.append(frame.type)
        if relayed.count(wire.DATA) == 8:
            killed.wait(timeout=60)
        return frame

    with pytest.raises(MirrorError, match="NBD server") as caught:
        remote(
            source,
            export,
            flush_bytes=4 * CHUNK,
            checkpoint=kill_the_server_once_something_is_durable,
            relay_hook=hold_the_stream_until_the_kill,
        )
    assert killed.is_set()
    assert "is the server still running?" in str(caught.value)
    export.stop()

    export = exports.start()  # the same qcow2, served again
    recorded = assert_map_tells_the_truth(export)
    assert recorded > 0
    resumed = remote(source, export)
    assert export.raw_sha256(tmp_path) == sha256(source)
    assert resumed.resumed_bytes_skipped >= recorded * CHUNK


def test_a_volume_replaced_under_its_block_map_is_copied_again(
    source: Path, exports: Exports, tmp_path: Path
) -> None:
    """An export has no inode: a qcow2 deleted and created again keeps its old map beside it. The map's
    data records where the new volume reads zeros must not make the next pass skip those chunks."""
    export = exports.start()
    remote(source, export)
    export.stop()
    export.image.unlink()
    export = exports.start()  # a new, empty qcow2 of the same name; the old map is still there
    assert export.map_path.exists()

    stats = remote(source, export, "incremental")

    assert stats.chunks_written == len(DATA_CHUNKS)
    assert export.raw_sha256(tmp_path) == sha256(source)


def test_verify_finds_a_chunk_corrupted_through_nbd_and_the_next_pass_repairs_it(
    source: Path, export: Export, tmp_path: Path
) -> None:
    remote(source, export)
    with NbdClient.connect(export.uri) as client:  # someone writes to the replica behind the mirror's back
        client.pwrite(b"bit rot", 20 * CHUNK + 4096)
        client.flush()
    assert export.raw_sha256(tmp_path) != sha256(source)

    checked = remote(source, export, "verify")
    assert checked.differing_ranges == [(20 * CHUNK, CHUNK)]
    assert checked.data_frames == 0

    repaired = remote(source, export, "incremental")
    assert repaired.chunks_written == 1
    assert export.raw_sha256(tmp_path) == sha256(source)
    assert remote(source, export, "verify").differing_ranges == []


# ---------------------------------------------------------------- refusals


def test_an_export_smaller_than_the_source_is_refused_before_copying(source: Path, exports: Exports) -> None:
    small = exports.start("small", SIZE // 2)
    with pytest.raises(
        MirrorError, match=rf"smaller than the source \({SIZE // 2} < {SIZE}\).*qemu-img resize"
    ):
        remote(source, small)
    with pytest.raises(MirrorError, match="smaller than the source"):
        local(source, small)
    assert small.data_bytes() == 0 and not small.map_path.exists()


def test_a_read_only_export_is_refused_with_what_to_do(source: Path, exports: Exports) -> None:
    frozen = exports.start(read_only=True)
    with pytest.raises(
        MirrorError, match=r"is read-only: export it writable \(qemu-nbd without --read-only\)"
    ):
        remote(source, frozen)
    with pytest.raises(NbdError, match="read-only"):
        local(source, frozen)
    assert frozen.data_bytes() == 0


def test_an_nbd_target_needs_a_map_path(source: Path, export: Export) -> None:
    with pytest.raises(MirrorError, match=r"NBD export, which has no directory.*give the mirror a map_path"):
        local(source, export, map_path=None)
    with pytest.raises(MirrorError, match="give the mirror a map_path"):
        mirror_remote(
            LocalTransport(),
            str(source),
            LocalTransport(),
            export.uri,
            chunk_size=CHUNK,
            mode="full",
            source_identity=IDENTITY,
        )


def test_an_unknown_export_name_and_a_stopped_server_are_named(source: Path, exports: Exports) -> None:
    named = exports.start("named", export_name="vol0")
    wrong = Export(named.image, named.socket, named.pid, "vol1")
    with pytest.raises(MirrorError, match=r"has no export named 'vol1': check the export name"):
        remote(source, wrong)
    named.stop()
    with pytest.raises(MirrorError, match=r"cannot connect to the NBD server at unix socket .*named\.sock"):
        local(source, named)


def test_a_second_writer_of_the_same_export_is_refused(source: Path, export: Export) -> None:
    first = TargetWriter(
        export.uri,
        size=SIZE,
        chunk_size=CHUNK,
        source_identity=IDENTITY,
        mode="full",
        map_path=export.map_path,
    )
    try:
        with pytest.raises(MirrorError, match="another mirror is writing") as caught:
            local(source, export)
        assert caught.value.retryable
    finally:
        first.close()


# ---------------------------------------------------------------- the client itself


def test_client_reads_writes_zeroes_and_trims_whole_chunks(export: Export) -> None:
    with NbdClient.connect(export.uri) as client:
        assert client.size == SIZE and client.can_flush and client.can_write_zeroes and client.can_trim
        data = os.urandom(3 * MiB + 512)
        client.pwrite(data, MiB)
        assert client.pread(len(data), MiB) == data
        client.write_zeroes(MiB, MiB)
        assert client.pread(MiB, MiB) == bytes(MiB)
        client.trim(2 * MiB, MiB)  # a hint: what it reads now is the server's business
        client.flush()
        with pytest.raises(OSError, match="beyond the end of the NBD export"):
            client.pwrite(b"x", SIZE)
        assert client.pread(512, 4 * MiB) == data[3 * MiB :]  # the connection is still fine


def test_block_status_tells_zeros_from_data_and_reads_skip_the_holes(export: Export) -> None:
    with NbdClient.connect(export.uri) as client:
        assert client.structured and client.can_block_status
        assert list(client.extents(0, SIZE)) == [(0, SIZE, nbd_module.STATE_HOLE | nbd_module.STATE_ZERO)]
        data = os.urandom(MiB)
        client.pwrite(data, 2 * MiB)
        assert client.reads_zero(0, 2 * MiB) and client.reads_zero(3 * MiB, SIZE - 3 * MiB)
        assert not client.reads_zero(0, 3 * MiB)
        assert [state & nbd_module.STATE_ZERO for _at, _run, state in client.extents(2 * MiB, MiB)] == [0]
        # a READ across data and holes: qemu-nbd sends the hole as a length, the client fills in zeros
        buffer = bytearray(b"\xee" * (4 * MiB))
        client.pread_into(buffer, MiB)
        assert buffer == bytes(MiB) + data + bytes(2 * MiB)


@pytest.mark.parametrize("block_status", [True, False], ids=["block-status", "simple-replies-only"])
def test_a_new_map_knows_the_zeros_of_the_export_when_the_server_can_say(
    source: Path, export: Export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_status: bool
) -> None:
    monkeypatch.setattr(nbd_module, "STRUCTURED_REPLIES", block_status)
    writer = TargetWriter(
        export.uri,
        size=SIZE,
        chunk_size=CHUNK,
        source_identity=IDENTITY,
        mode="full",
        map_path=export.map_path,
    )
    try:
        # a fresh qcow2 reads as zeros: with block status no zero chunk is written or read back for nothing
        assert set(writer.summary.states) == ({ZERO} if block_status else {ABSENT})
    finally:
        writer.abort()
        writer.close()
    stats = local(source, export)
    assert export.raw_sha256(tmp_path) == sha256(source)
    assert stats.chunks_written == len(DATA_CHUNKS)
    assert export.data_bytes() == len(DATA_CHUNKS) * CHUNK
    overwrite(source, 30 * CHUNK, b"one more chunk")
    assert local(source, export, "incremental").chunks_written == 1
    with NbdClient.connect(export.uri) as client:  # rot in a data chunk and in a zero one
        client.pwrite(b"bit rot", 5 * CHUNK)
        client.pwrite(b"bit rot", 40 * CHUNK + 100)
    assert local(source, export, "verify").differing_ranges == [(5 * CHUNK, CHUNK), (40 * CHUNK, CHUNK)]
    assert local(source, export, "incremental").chunks_written == 1  # chunk 40 is zeroed, not sent
    assert export.raw_sha256(tmp_path) == sha256(source)


def test_requests_larger_than_the_servers_maximum_are_split(
    export: Export, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nbd_module, "MAX_REQUEST", 64 * KiB)  # as if the server took at most 64 KiB
    data = os.urandom(MiB + 4096)
    with NbdClient.connect(export.uri) as client:
        assert client.max_request == 64 * KiB
        client.pwrite(data, 0)
    with NbdClient.connect(export.uri) as fresh:
        assert fresh.pread(len(data), 0) == data


class _ShortReplyServer:
    """A newstyle NBD server with nothing but simple replies: it answers the handshake properly, then
    sends half of the first READ's data and hangs up (a fault qemu-nbd cannot be asked to produce)."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(struct.pack(">QQH", nbd_module.NBDMAGIC, nbd_module.IHAVEOPT, 3))
            _receive(conn, 4)  # client flags
            while True:
                _magic, option, length = struct.unpack(">QII", _receive(conn, 16))
                _receive(conn, length)
                if option != nbd_module.OPT_GO:  # structured replies, metadata contexts: not here
                    self._option_reply(conn, option, nbd_module.REP_ERR_UNSUP, b"")
                    continue
                flags = nbd_module.HAS_FLAGS | nbd_module.SEND_FLUSH
                self._option_reply(conn, option, nbd_module.REP_INFO, struct.pack(">HQH", 0, MiB, flags))
                self._option_reply(conn, option, nbd_module.REP_ACK, b"")
                break
            _magic, _flags, _kind, handle, _offset, length = struct.unpack(">IHHQQI", _receive(conn, 28))
            conn.sendall(struct.pack(">IIQ", nbd_module.SIMPLE_REPLY_MAGIC, 0, handle) + bytes(length // 2))

    @staticmethod
    def _option_reply(conn: socket.socket, option: int, reply: int, body: bytes) -> None:
        conn.sendall(struct.pack(">QIII", nbd_module.OPTION_REPLY_MAGIC, option, reply, len(body)) + body)

    def close(self) -> None:
        self.listener.close()


def _receive(conn: socket.socket, length: int) -> bytes:
    data = b""
    while len(data) < length:
        piece = conn.recv(length - len(data))
        if not piece:
            raise ConnectionError("client went away")
        data += piece
    return data


def test_a_short_reply_is_reported_and_the_connection_is_not_reused() -> None:
    directory = Path(tempfile.mkdtemp(prefix="hvnbd-", dir="/tmp"))
    server = _ShortReplyServer(directory / "short.sock")
    try:
        client = NbdClient.connect(f"nbd+unix:///?socket={directory / 'short.sock'}")
        with pytest.raises(OSError, match=r"closed the connection in the middle of a reply \(short reply\)"):
            client.pread(64 * KiB, 0)
        with pytest.raises(OSError, match="is unusable"):
            client.pread(512, 0)
        client.close()
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)
