"""mirror_remote between real agent processes over pipes: the shipped program, the handshake, copies,
incremental passes, and every way the stream or the writer can die on the way."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from orchestrator.mirror import protocol as wire
from orchestrator.mirror.agent_bundle import agent_program
from orchestrator.mirror.agent_session import AgentSession
from orchestrator.mirror.blockmap import ABSENT, DATA, ZERO
from orchestrator.mirror.errors import BlockMapMismatch, MirrorCancelled, MirrorError
from orchestrator.mirror.hashing import BLAKE2B_128, XXH3_128, available_algorithms, chunk_hasher
from orchestrator.mirror.remote import RemotePassStats, mirror_remote
from orchestrator.mirror.writer import TargetWriter
from orchestrator.transport.local import LocalProcess, LocalTransport
from tests.images import allocated, make_image, sha256

KiB, MiB = 1024, 1024**2
CHUNK = 256 * KiB
SIZE = 16 * MiB  # 64 chunks
IDENTITY = "web01:/dev/vda"
TEXT = (b"127.0.0.1 localhost\n# the quick brown fox jumps over the lazy dog\n" * 5000)[:CHUNK]
# An agent with nothing but the standard library: no site-packages (-S, so no xxhash, no zstandard) and
# isolated (-I: neither the working directory nor PYTHONPATH), so it runs only what was shipped to it.
STDLIB_PYTHON = [sys.executable, "-I", "-S"]


class Recording(LocalTransport):
    """A local transport that remembers the agents it started (to kill one, or read its stderr)."""

    def __init__(self, python: list[str] | None = None) -> None:
        super().__init__(python)
        self.started: list[LocalProcess] = []

    def start_python(self, args: Any) -> LocalProcess:
        process = super().start_python(args)
        self.started.append(process)
        return process


class _CutStream:
    """Passes writes through to an agent until ``cut_at`` bytes, then ends its stdin mid-whatever."""

    def __init__(self, inner: LocalProcess) -> None:
        self.inner = inner
        self.name = inner.name
        self.written = 0
        self.cut_at: int | None = None
        self.cut = False

    def write(self, *parts: bytes | bytearray | memoryview) -> None:
        for part in parts:
            if self.cut:
                raise wire.StreamClosed("cut by the test")
            room = len(part) if self.cut_at is None else self.cut_at - self.written
            if room < len(part):
                self.inner.write(memoryview(part)[: max(0, room)])
                self.written += max(0, room)
                self.cut = True
                assert self.inner.popen.stdin is not None
                self.inner.popen.stdin.close()  # the agent reads EOF inside this frame
                raise wire.StreamClosed("cut by the test")
            self.inner.write(part)
            self.written += len(part)

    def __getattr__(self, name: str) -> Any:  # read side, exit status, stderr: the real process's
        if name in ("read_fd", "write_fd"):  # no splice shortcut around the cut
            raise AttributeError(name)
        return getattr(self.inner, name)


class CuttingTransport(LocalTransport):
    def start_python(self, args: Any) -> Any:
        self.stream = _CutStream(super().start_python(args))
        return self.stream


# ---------------------------------------------------------------- helpers

# what an agent without xxhash offers: SHA-256 first where this CPU has SHA instructions, BLAKE2b always
STDLIB_ALGORITHMS = tuple(name for name in available_algorithms() if name != XXH3_128)


def sample_pieces() -> dict[int, bytes]:
    return {
        0: os.urandom(2 * CHUNK),  # chunks 0-1: incompressible
        4 * CHUNK: TEXT * 3,  # chunks 4-6: text, compresses well
        10 * CHUNK: bytes(2 * CHUNK),  # chunks 10-11: allocated zeros, read but never sent
        20 * CHUNK: os.urandom(1000) + TEXT[: CHUNK - 1000],  # chunk 20: mixed
        SIZE - 100: b"end of disk" * 9,  # the last chunk
    }


DATA_CHUNKS = [0, 1, 4, 5, 6, 20, 63]


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def remote(
    source: Path,
    target: Path,
    mode: str = "full",
    *,
    reader: Any = None,
    writer: Any = None,
    **kwargs: Any,
) -> RemotePassStats:
    return mirror_remote(
        reader or LocalTransport(),
        str(source),
        writer or LocalTransport(),
        str(target),
        chunk_size=CHUNK,
        mode=mode,  # type: ignore[arg-type]
        source_identity=IDENTITY,
        **kwargs,
    )


def assert_map_tells_the_truth(target: Path, size: int = SIZE, algorithm: str = XXH3_128) -> int:
    """Open the map as the next run would; every chunk it vouches for must really be on the target.

    Returns how many chunks it records as data (what a resumed pass will not send again)."""
    hasher = chunk_hasher(algorithm)
    writer = TargetWriter(
        target, size=size, chunk_size=CHUNK, source_identity=IDENTITY, mode="verify", hash_algorithm=algorithm
    )
    recorded = 0
    try:
        content = target.read_bytes()
        blockmap = writer.block_map
        for index in range(blockmap.chunk_count):
            piece = content[index * CHUNK : (index + 1) * CHUNK]
            state = blockmap.state(index)
            if state == DATA:
                recorded += 1
                assert hasher.digest(piece) == blockmap.digest(index), (
                    f"chunk {index} is not what the map says"
                )
            elif state == ZERO:
                assert piece == bytes(len(piece)), f"chunk {index} is recorded as zero but holds data"
    finally:
        writer.close()
    return recorded


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_image(tmp_path / "source.img", SIZE, sample_pieces())


# ---------------------------------------------------------------- the agent and its handshake


def test_agent_starts_from_the_shipped_program_and_says_hello() -> None:
    with AgentSession.start(LocalTransport()) as session:
        info = session.info
    assert info.protocol == wire.PROTOCOL_VERSION and info.pid > 0
    assert XXH3_128 in info.hashes and "zstd" in info.compressors  # this venv has xxhash and zstandard


def test_a_stdlib_only_agent_offers_only_the_fallbacks() -> None:
    with AgentSession.start(LocalTransport(STDLIB_PYTHON)) as session:
        assert session.info.hashes == STDLIB_ALGORITHMS and session.info.hashes[-1] == BLAKE2B_128
        assert session.info.compressors == ("zlib",)


def test_protocol_mismatch_is_refused_on_both_ends_with_the_same_clear_message() -> None:
    transport = Recording()
    newer_agent = agent_program(protocol_version=wire.PROTOCOL_VERSION + 1)
    with pytest.raises(wire.VersionMismatch) as caught:
        AgentSession.start(transport, program=newer_agent)
    expected = (
        f"agent protocol {wire.PROTOCOL_VERSION + 1} on host {wire.this_host()}, "
        f"orchestrator speaks {wire.PROTOCOL_VERSION}: "
    )
    assert str(caught.value).startswith(expected)
    assert not caught.value.retryable
    agent = transport.started[0]
    assert agent.exit_status(timeout=30) == 3
    assert f"refusing: {expected}" in agent.stderr_tail()


def test_an_interpreter_that_is_missing_or_not_python_is_reported_plainly() -> None:
    with pytest.raises(MirrorError, match="cannot start the agent on local: cannot start /nonexistent"):
        AgentSession.start(LocalTransport(["/nonexistent/python3"]))
    false = shutil.which("false")
    assert false is not None
    with pytest.raises(MirrorError, match="the agent on local exited with code 1 before its handshake"):
        AgentSession.start(LocalTransport([false]))


# ---------------------------------------------------------------- copies


def test_full_copy_is_identical_sparse_and_compressed_where_it_pays(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    stats = remote(source, target)

    assert sha256(target) == sha256(source)
    assert allocated(target) <= len(DATA_CHUNKS) * CHUNK + 64 * KiB  # holes and zero chunks stay holes
    assert stats.chunks_written == stats.data_frames == len(DATA_CHUNKS)
    assert stats.bytes_written == len(DATA_CHUNKS) * CHUNK
    assert stats.hash_algorithm == XXH3_128 and stats.compression == "zstd"
    assert stats.raw_chunks == 2  # the random chunks 0 and 1; text, mixed and the tail compress
    assert stats.payload_bytes < stats.bytes_written * 0.5
    assert stats.wire_bytes < stats.payload_bytes + 4 * KiB  # framing and markers cost next to nothing
    assert stats.compression_ratio == round(stats.bytes_written / stats.payload_bytes, 4) > 2
    assert stats.digest == stats.target_digest and stats.pass_number == 1
    assert stats.durable_bytes == SIZE
    assert RemotePassStats.from_json(stats.to_json()) == stats  # journaled as a step output
    assert assert_map_tells_the_truth(target) == len(DATA_CHUNKS)


def test_remote_and_in_process_copies_agree_on_the_digest(source: Path, tmp_path: Path) -> None:
    from orchestrator.mirror import FileDiskReader, mirror_disk

    with FileDiskReader(source) as reader:
        local = mirror_disk(
            reader, tmp_path / "local.img", chunk_size=CHUNK, mode="full", source_identity="x"
        )
    assert remote(source, tmp_path / "remote.img").digest == local.digest


def test_incremental_sends_only_the_changed_chunks(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    remote(source, target)
    changed = {5: os.urandom(CHUNK), 33: os.urandom(CHUNK), 63: os.urandom(100)}
    for index, data in changed.items():
        overwrite(source, index * CHUNK + (CHUNK - len(data) if index == 63 else 0), data)

    stats = remote(source, target, "incremental")

    assert sha256(target) == sha256(source)
    assert stats.data_frames == stats.chunks_written == 3
    assert stats.bytes_written == 3 * CHUNK
    assert stats.unchanged_bytes_skipped == (len(DATA_CHUNKS) - 2) * CHUNK  # chunks 5 and 63 changed
    # on the wire: the three chunks (random data does not compress) and a few hundred bytes of markers
    assert stats.wire_bytes <= 1.2 * (2 * CHUNK + 100) + 2 * KiB
    assert stats.pass_number == 2


def test_incremental_with_nothing_changed_sends_no_data(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    remote(source, target)
    stats = remote(source, target, "incremental")
    assert stats.data_frames == 0 and stats.bytes_written == 0
    assert stats.wire_bytes < 4 * KiB  # SAME markers with their 16-byte digests, one END


def test_stdlib_only_agents_copy_with_a_hashlib_digest_and_zlib(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    fallback = LocalTransport(STDLIB_PYTHON)
    stats = remote(source, target, reader=fallback, writer=fallback)
    assert (stats.hash_algorithm, stats.compression) == (STDLIB_ALGORITHMS[0], "zlib")
    assert sha256(target) == sha256(source)
    assert stats.raw_chunks == 2 and stats.payload_bytes < stats.bytes_written * 0.5
    assert assert_map_tells_the_truth(target, algorithm=STDLIB_ALGORITHMS[0]) == len(DATA_CHUNKS)
    again = remote(source, target, "incremental", reader=fallback, writer=fallback)
    assert again.data_frames == 0


def test_a_map_of_another_digest_algorithm_is_never_trusted_for_skipping(
    source: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target.img"
    remote(source, target)  # xxh3_128 on both ends
    # the writer side lost xxhash: its map's digests cannot be compared, so everything is sent again
    switched = remote(source, target, "incremental", writer=LocalTransport(STDLIB_PYTHON))
    assert switched.hash_algorithm == STDLIB_ALGORITHMS[0]
    assert switched.map_reset_reason == f"digest algorithm changed from xxh3_128 to {STDLIB_ALGORITHMS[0]}"
    assert switched.chunks_written == len(DATA_CHUNKS) and switched.unchanged_bytes_skipped == 0
    assert sha256(target) == sha256(source)
    # the map now holds BLAKE2b digests: an xxh3 pass starts over too, and only then skips again
    back = remote(source, target, "incremental")
    assert back.hash_algorithm == XXH3_128 and back.chunks_written == len(DATA_CHUNKS)
    assert remote(source, target, "incremental").chunks_written == 0


def _python38() -> str | None:
    """A real Python 3.8 interpreter (not a pyenv shim that may point nowhere), if this machine has one."""
    candidates = sorted(str(p) for p in (Path.home() / ".pyenv" / "versions").glob("3.8*/bin/python3.8"))
    candidates += ["/usr/bin/python3.8", "/usr/local/bin/python3.8"]
    for candidate in candidates:
        try:
            done = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if done.stdout.strip() == b"True":
            return candidate
    return None


PYTHON38 = _python38()


@pytest.mark.skipif(
    PYTHON38 is None, reason="no Python 3.8 interpreter on this machine to run the agent with"
)
def test_the_agent_runs_on_python_3_8(source: Path, tmp_path: Path) -> None:
    python38 = LocalTransport([PYTHON38 or "python3.8", "-I", "-S"])
    with AgentSession.start(python38) as session:
        assert session.info.python.startswith("3.8.")
    target = tmp_path / "target.img"
    remote(source, target, reader=python38, writer=python38)
    assert sha256(target) == sha256(source)
    overwrite(source, 40 * CHUNK, b"changed")
    assert remote(source, target, "incremental", reader=python38, writer=python38).chunks_written == 1
    assert sha256(target) == sha256(source)


def test_verify_reports_a_damaged_chunk_and_the_next_pass_repairs_it(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    remote(source, target)
    overwrite(target, 4 * CHUNK + 10, b"bit rot")

    checked = remote(source, target, "verify")
    assert checked.differing_ranges == [(4 * CHUNK, CHUNK)]
    assert checked.data_frames == 0 and checked.bytes_written == 0

    repaired = remote(source, target, "incremental")
    assert repaired.chunks_written == 1
    assert sha256(target) == sha256(source)
    assert remote(source, target, "verify").differing_ranges == []


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_cut_at_a_random_byte_leaves_a_resumable_uncorrupted_target(
    source: Path, tmp_path: Path, seed: int
) -> None:
    # how long the chunk stream of a full copy of this source is
    stream_bytes = remote(source, tmp_path / "measure.img").wire_bytes
    offset = random.Random(seed).randrange(0, int(stream_bytes * 0.95))
    target = tmp_path / "target.img"
    cutting = CuttingTransport()

    def arm_at_first_chunk(frame: wire.Frame) -> wire.Frame:
        stream = cutting.stream
        if stream.cut_at is None:
            stream.cut_at = stream.written + offset  # counted from the first byte of the chunk stream
        return frame

    with pytest.raises(MirrorError) as caught:
        remote(source, target, writer=cutting, relay_hook=arm_at_first_chunk, flush_bytes=2 * CHUNK)
    assert cutting.stream.cut, f"the stream was not cut at offset {offset} (seed {seed})"
    assert caught.value.retryable
    assert "ended before the pass did" in str(caught.value) or "stopped" in str(caught.value)

    assert_map_tells_the_truth(target)
    resumed = remote(source, target)
    assert sha256(target) == sha256(source), f"seed {seed}, cut at stream offset {offset}"
    assert resumed.pass_number == 1  # the same full pass, resumed


def test_writer_killed_with_sigkill_mid_pass_resumes_to_an_identical_disk(tmp_path: Path) -> None:
    size = 32 * MiB
    source = make_image(tmp_path / "source.img", size, {0: os.urandom(24 * MiB), 30 * MiB: TEXT})
    target = tmp_path / "target.img"
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
        # after two batches, the relay waits: the idle writer records the first batch, acknowledges it,
        # and is killed; the stream then resumes into a dead writer, in the middle of the pass
        relayed.append(frame.type)
        if relayed.count(wire.DATA) == 8:
            killed.wait(timeout=60)
        return frame

    with pytest.raises(MirrorError, match=r"killed by signal 9") as caught:
        mirror_remote(
            LocalTransport(),
            str(source),
            writer,
            str(target),
            chunk_size=CHUNK,
            mode="full",
            source_identity=IDENTITY,
            flush_bytes=4 * CHUNK,
            checkpoint=kill_once_something_is_durable,
            relay_hook=hold_the_stream_until_the_kill,
        )
    assert killed.is_set() and caught.value.retryable

    recorded = assert_map_tells_the_truth(target, size)
    assert recorded * CHUNK >= acknowledged[0]  # what was acknowledged as durable is in the map
    resumed = remote(source, target)
    assert sha256(target) == sha256(source)
    assert resumed.resumed_bytes_skipped >= recorded * CHUNK > 0  # and not sent again


@pytest.mark.parametrize("recompute_crc", [False, True], ids=["crc-catches-it", "digest-catches-it"])
def test_a_chunk_damaged_in_transit_is_refused_and_never_recorded(
    source: Path, tmp_path: Path, recompute_crc: bool
) -> None:
    target = tmp_path / "target.img"
    damaged: list[int] = []

    def flip_a_byte_in_the_second_chunk(frame: wire.Frame) -> wire.Frame:
        if frame.type == wire.DATA and not damaged and wire.DATA_PREFIX.unpack_from(frame.payload)[0] == 1:
            damaged.append(1)
            payload = bytearray(frame.payload)
            payload[wire.DATA_PREFIX.size + 1000] ^= 0x40
            return wire.Frame(frame.type, frame.flags, payload, None if recompute_crc else frame.crc)
        return frame

    with pytest.raises(MirrorError, match="arrived damaged") as caught:
        remote(source, target, relay_hook=flip_a_byte_in_the_second_chunk)
    assert damaged and caught.value.retryable
    if recompute_crc:
        assert "offset 262144" in str(caught.value) and "digest mismatch" in str(caught.value)
    else:
        assert "CRC mismatch" in str(caught.value)

    writer = TargetWriter(target, size=SIZE, chunk_size=CHUNK, source_identity=IDENTITY, mode="verify")
    try:
        assert writer.block_map.state(1) in (ABSENT, ZERO)  # never recorded as data
    finally:
        writer.close()
    assert target.read_bytes()[CHUNK : 2 * CHUNK] == bytes(CHUNK)  # and not a byte of it written
    assert_map_tells_the_truth(target)

    remote(source, target)
    assert sha256(target) == sha256(source)


def test_cancel_stops_at_a_frame_and_keeps_everything_received(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    frames: list[int] = []

    def count(frame: wire.Frame) -> wire.Frame:
        frames.append(frame.type)
        return frame

    def cancel_after_three_chunks() -> bool:
        return frames.count(wire.DATA) >= 3

    with pytest.raises(MirrorCancelled, match="run again to resume"):
        remote(source, target, relay_hook=count, cancelled=cancel_after_three_chunks)
    assert frames.count(wire.DATA) == 3
    assert assert_map_tells_the_truth(target) == 3  # the writer made all it had received durable

    resumed = remote(source, target)
    assert resumed.resumed_bytes_skipped == 3 * CHUNK and resumed.chunks_written == len(DATA_CHUNKS) - 3
    assert sha256(target) == sha256(source)


def test_progress_is_reported_up_to_the_whole_disk(source: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    durable: list[int] = []
    remote(
        source,
        tmp_path / "t.img",
        progress=lambda done, total: seen.append((done, total)),
        checkpoint=durable.append,
    )
    assert seen[-1] == (SIZE, SIZE)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert durable and durable[-1] == SIZE


# ---------------------------------------------------------------- refusals


def test_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(MirrorError, match=r"cannot open the source disk .*nothing\.img"):
        remote(tmp_path / "nothing.img", tmp_path / "target.img")


def test_target_smaller_than_source_is_refused_before_copying(source: Path, tmp_path: Path) -> None:
    target = make_image(tmp_path / "target.img", SIZE // 2)
    with pytest.raises(MirrorError, match="smaller than the source"):
        remote(source, target)
    assert allocated(target) == 0


def test_source_that_grew_since_the_last_pass_is_refused(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    remote(source, target)
    os.truncate(target, SIZE + CHUNK)  # the target would be big enough: the map is what refuses
    os.truncate(source, SIZE + CHUNK)
    with pytest.raises(BlockMapMismatch, match=rf"was {SIZE} bytes at the last pass and is {SIZE + CHUNK}"):
        remote(source, target, "incremental")
