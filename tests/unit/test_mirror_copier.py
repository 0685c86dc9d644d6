"""mirror_disk on real sparse files: copy, sparseness, incremental, resume, verify, and every error path."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.mirror import (
    BlockMapMismatch,
    FileDiskReader,
    MirrorCancelled,
    MirrorError,
    PassStats,
    mirror_disk,
)
from orchestrator.mirror import writer as writer_module
from orchestrator.mirror.blockmap import ABSENT, DATA, BlockMap, map_path_for
from orchestrator.mirror.hashing import chunk_digest
from tests.images import allocated, make_image, sha256

REPO = Path(__file__).resolve().parents[2]
KiB, MiB = 1024, 1024**2
CHUNK = 256 * KiB
SIZE = 16 * MiB  # 64 chunks


def sample_pieces() -> dict[int, bytes]:
    return {
        0: os.urandom(CHUNK + 1000),  # chunk 0 and the start of chunk 1
        5 * CHUNK: os.urandom(3 * CHUNK),  # chunks 5-7
        10 * CHUNK: bytes(2 * CHUNK),  # allocated zeros: read, found zero, never written
        SIZE - 100: b"end of disk" * 9,  # the last chunk, ending at the last byte
    }


def mirror(source: Path, target: Path, mode: str = "full", **kwargs: object) -> PassStats:
    with FileDiskReader(source) as reader:
        return mirror_disk(reader, target, chunk_size=CHUNK, mode=mode, source_identity="src-1", **kwargs)


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_image(tmp_path / "source.img", SIZE, sample_pieces())


# ---------------------------------------------------------------- copying


def test_full_copy_is_identical_and_sparse(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    stats = mirror(source, target)

    assert sha256(target) == sha256(source)
    assert target.stat().st_size == SIZE
    # data chunks: 0, 1, 5, 6, 7 and the last one; the allocated zeros of chunks 10-11 are not written
    assert stats.chunks_written == 6
    assert stats.bytes_written == 6 * CHUNK
    assert allocated(target) <= 6 * CHUNK + 64 * KiB
    assert allocated(target) < allocated(source)
    # holes of the source are skipped without reading: only allocated ranges are read
    assert stats.bytes_read == 8 * CHUNK
    assert stats.zero_bytes_skipped == SIZE - 6 * CHUNK
    assert stats.bytes_total == SIZE and stats.pass_number == 1 and stats.digest


def test_digest_is_equal_for_equal_disks_and_differs_otherwise(source: Path, tmp_path: Path) -> None:
    first = mirror(source, tmp_path / "a.img")
    # the replica, read as a source itself, digests to the same value through another path of the code
    again = mirror(tmp_path / "a.img", tmp_path / "b.img")
    assert again.digest == first.digest
    checked = mirror(source, tmp_path / "a.img", mode="verify")
    assert checked.digest == first.digest and checked.differing_ranges == []

    overwrite(source, 3 * CHUNK, b"x")
    assert mirror(source, tmp_path / "c.img").digest != first.digest


def test_incremental_writes_only_changed_chunks(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    mirror(source, target)
    overwrite(source, 6 * CHUNK + 17, b"changed")  # inside data
    overwrite(source, 20 * CHUNK, b"new data in a hole")  # a hole gets data
    overwrite(source, 63 * CHUNK, os.urandom(10))  # the last chunk

    stats = mirror(source, target, mode="incremental")

    assert sha256(target) == sha256(source)
    assert stats.chunks_written == 3
    assert stats.bytes_written == 3 * CHUNK
    assert stats.unchanged_bytes_skipped == 4 * CHUNK  # chunks 0, 1, 5 and 7
    assert stats.pass_number == 2


def test_incremental_with_nothing_changed_writes_nothing(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    mirror(source, target)
    stats = mirror(source, target, mode="incremental")
    assert stats.bytes_written == 0 and stats.chunks_written == 0
    assert stats.unchanged_bytes_skipped == 6 * CHUNK


def test_chunk_that_became_zero_is_punched_out(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    mirror(source, target)
    before = allocated(target)
    overwrite(source, 5 * CHUNK, bytes(CHUNK))

    stats = mirror(source, target, mode="incremental")

    assert stats.bytes_written == 0
    assert sha256(target) == sha256(source)
    assert allocated(target) <= before - CHUNK  # a hole, not a chunk of written zeros
    fd = os.open(target, os.O_RDONLY)
    try:
        assert os.lseek(fd, 5 * CHUNK, os.SEEK_DATA) >= 6 * CHUNK
    finally:
        os.close(fd)


def test_existing_target_with_foreign_data_is_overwritten_and_hollowed(source: Path, tmp_path: Path) -> None:
    """A pre-existing target without a map: its data where the source has holes must not survive."""
    target = make_image(tmp_path / "target.img", SIZE + MiB, {0: os.urandom(SIZE + MiB)})
    tail = target.read_bytes()[SIZE:]

    mirror(source, target)

    assert target.read_bytes()[:SIZE] == source.read_bytes()
    assert target.read_bytes()[SIZE:] == tail  # the target is never shrunk nor touched past the source
    assert target.stat().st_size == SIZE + MiB
    assert allocated(target) <= 6 * CHUNK + MiB + 64 * KiB


# ---------------------------------------------------------------- resume


class CancelAfter:
    def __init__(self, chunks: int) -> None:
        self.left = chunks

    def progress(self, done: int, total: int) -> None:
        self.left -= 1

    def cancelled(self) -> bool:
        return self.left <= 0


def test_cancelled_copy_resumes_without_rereading(tmp_path: Path) -> None:
    source = make_image(tmp_path / "source.img", SIZE, {0: os.urandom(SIZE)})
    target = tmp_path / "target.img"
    stop = CancelAfter(40)
    with pytest.raises(MirrorCancelled, match="cancelled at offset"):
        mirror(source, target, progress=stop.progress, cancelled=stop.cancelled)

    blockmap = _load_map(target)
    done = [i for i in range(64) if blockmap.state(i) == DATA]
    blockmap.close()
    assert len(done) == 40  # cancellation flushes the map at the chunk boundary: nothing lost

    stats = mirror(source, target)

    assert stats.resumed_bytes_skipped == 40 * CHUNK
    assert stats.bytes_read == 24 * CHUNK
    assert stats.chunks_written == 24
    assert stats.pass_number == 1  # the same pass, resumed
    assert sha256(target) == sha256(source)


def test_progress_callback_raising_keeps_what_was_written(tmp_path: Path) -> None:
    source = make_image(tmp_path / "source.img", SIZE, {0: os.urandom(SIZE)})
    target = tmp_path / "target.img"
    seen = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if len(seen) == 30:
            raise RuntimeError("orchestrator lost its journal")

    with pytest.raises(RuntimeError):
        mirror(source, target, progress=progress)
    stats = mirror(source, target)
    assert stats.resumed_bytes_skipped >= 25 * CHUNK  # the writer lags the reader by a few buffers at most
    assert stats.resumed_bytes_skipped + stats.bytes_written == SIZE
    assert sha256(target) == sha256(source)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from orchestrator.mirror import FileDiskReader, mirror_disk

    source, target, kill_at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])

    def progress(done, total):
        if done >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    with FileDiskReader(source) as reader:
        mirror_disk(reader, target, chunk_size=CHUNK, mode=sys.argv[4], source_identity="src-1",
                    progress=progress, flush_bytes=4 * CHUNK)
    """
).replace("CHUNK", str(CHUNK))


def run_killed(source: Path, target: Path, kill_at: int, mode: str = "full") -> None:
    result = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(source), str(target), str(kill_at), mode],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_copy_killed_with_sigkill_resumes(tmp_path: Path) -> None:
    source = make_image(tmp_path / "source.img", SIZE, {0: os.urandom(SIZE)})
    target = tmp_path / "target.img"
    run_killed(source, target, SIZE // 2)

    stats = mirror(source, target)

    assert stats.pass_number == 1
    assert stats.resumed_bytes_skipped >= 16 * CHUNK  # flushed every 4 chunks; killed after 32 were read
    assert stats.resumed_bytes_skipped + stats.bytes_written == SIZE
    assert sha256(target) == sha256(source)


def test_block_that_changes_and_changes_back_is_not_trusted_after_a_kill(tmp_path: Path) -> None:
    """Pass 1 copies A; the source becomes B and a writer dies right after writing B, before recording it.
    The map still says A. If the source goes back to A, only the hot extent stops the next pass from
    skipping the chunk while the target holds B."""
    original = os.urandom(CHUNK)
    source = make_image(tmp_path / "source.img", SIZE, {0: original, 3 * CHUNK: os.urandom(CHUNK)})
    target = tmp_path / "target.img"
    mirror(source, target)
    changed = os.urandom(CHUNK)
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from orchestrator.mirror.hashing import chunk_digest
        from orchestrator.mirror.writer import TargetWriter
        data = Path({str(tmp_path / "changed")!r}).read_bytes()
        writer = TargetWriter(Path({str(target)!r}), size={SIZE}, chunk_size={CHUNK},
                              source_identity="src-1", mode="incremental")
        writer.write(0, data, chunk_digest(data))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    (tmp_path / "changed").write_bytes(changed)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert target.read_bytes()[:CHUNK] == changed  # the write reached the target, its record did not

    stats = mirror(source, target, mode="incremental")

    assert sha256(target) == sha256(source)
    assert stats.chunks_written >= 1


# ---------------------------------------------------------------- verify


def test_verify_finds_corruption_and_incremental_repairs_it(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    mirror(source, target)
    overwrite(target, 6 * CHUNK + 5, b"bit rot")  # two adjacent chunks: one merged range
    overwrite(target, 7 * CHUNK + 9, b"bit rot")
    overwrite(target, 30 * CHUNK, b"junk in a hole")  # data where the source has a hole

    checked = mirror(source, target, mode="verify")

    assert checked.differing_ranges == [(6 * CHUNK, 2 * CHUNK), (30 * CHUNK, CHUNK)]
    assert checked.bytes_written == 0 and checked.chunks_written == 0
    assert sha256(target) != sha256(source)  # verify copies nothing

    repaired = mirror(source, target, mode="incremental")

    assert repaired.chunks_written == 2  # chunks 6 and 7; chunk 30 is zeroed by a punched hole
    assert sha256(target) == sha256(source)
    assert mirror(source, target, mode="verify").differing_ranges == []


@pytest.mark.parametrize("flush_bytes", [CHUNK, 256 * MiB], ids=["settled-in-background", "settled-at-end"])
def test_verify_after_write_catches_storage_returning_other_data(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flush_bytes: int
) -> None:
    """A target that silently stores other bytes than it was given (the read-back check exists for it)."""
    real_pwrite_all = writer_module.pwrite_all

    def lying_pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
        if offset == 5 * CHUNK:
            data = b"\xff" + bytes(data)[1:]
        real_pwrite_all(fd, data, offset)

    monkeypatch.setattr(writer_module, "pwrite_all", lying_pwrite_all)
    target = tmp_path / "target.img"
    with pytest.raises(MirrorError, match=f"verification failed at offset {5 * CHUNK}"):
        mirror(source, target, flush_bytes=flush_bytes)
    blockmap = _load_map(target)
    assert blockmap.state(5) == ABSENT
    assert blockmap.state(0) == DATA  # recorded in an earlier batch... or the same one, before chunk 5
    blockmap.close()

    monkeypatch.setattr(writer_module, "pwrite_all", real_pwrite_all)
    mirror(source, target)
    assert sha256(target) == sha256(source)


# ---------------------------------------------------------------- refusals and errors


def test_target_smaller_than_source_is_refused_before_copying(source: Path, tmp_path: Path) -> None:
    target = make_image(tmp_path / "target.img", SIZE - MiB, {0: b"keep me"})
    with pytest.raises(
        MirrorError, match=rf"target disk is smaller than the source \({SIZE - MiB} < {SIZE}\)"
    ):
        mirror(source, target)
    assert target.stat().st_size == SIZE - MiB
    assert target.read_bytes()[:7] == b"keep me"
    assert not map_path_for(target).exists()


def test_source_size_changed_since_last_pass_is_refused(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    mirror(source, target)
    os.truncate(target, SIZE + MiB)  # the target would be big enough: the map is what refuses
    os.truncate(source, SIZE + MiB)
    with pytest.raises(BlockMapMismatch, match=rf"was {SIZE} bytes at the last pass and is {SIZE + MiB}"):
        mirror(source, target, mode="incremental")


def test_chunk_size_changed_is_refused(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    mirror(source, target)
    with FileDiskReader(source) as reader, pytest.raises(BlockMapMismatch, match="chunk size 262144"):
        mirror_disk(reader, target, chunk_size=CHUNK * 2, mode="incremental", source_identity="src-1")


def test_different_source_starts_over(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    mirror(source, target)
    with FileDiskReader(source) as reader:
        stats = mirror_disk(reader, target, chunk_size=CHUNK, mode="incremental", source_identity="other")
    assert stats.chunks_written == 6  # nothing trusted from the other source's map
    assert stats.pass_number == 1
    assert sha256(target) == sha256(source)


class FailingReader:
    """A DiskReader (read() only, no readinto) whose disk has one unreadable sector."""

    def __init__(self, path: Path, bad_offset: int) -> None:
        self._inner = FileDiskReader(path)
        self.size = self._inner.size
        self.bad_offset = bad_offset

    def read(self, offset: int, length: int) -> bytes:
        if offset <= self.bad_offset < offset + length:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return self._inner.read(offset, length)

    def allocated_ranges(self) -> Iterator[tuple[int, int]] | None:
        return self._inner.allocated_ranges()

    def close(self) -> None:
        self._inner.close()


def test_read_error_names_the_offset_and_leaves_the_chunk_unrecorded(tmp_path: Path) -> None:
    source = make_image(tmp_path / "source.img", SIZE, {0: os.urandom(SIZE)})
    target = tmp_path / "target.img"
    reader = FailingReader(source, 20 * CHUNK + 4096)
    with pytest.raises(
        MirrorError, match=f"cannot read the source disk at offset {20 * CHUNK}: Input/output"
    ) as failure:
        mirror_disk(reader, target, chunk_size=CHUNK, mode="full", source_identity="src-1")
    reader.close()
    assert failure.value.retryable  # a source read error may be transient: the step may retry
    blockmap = _load_map(target)
    assert blockmap.state(20) != DATA and blockmap.pass_of(20) == 0  # still what the new target held
    assert [blockmap.state(i) for i in range(20)] == [DATA] * 20  # what was read before is kept
    blockmap.close()

    stats = mirror(source, target)
    assert stats.resumed_bytes_skipped == 20 * CHUNK
    assert sha256(target) == sha256(source)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, so the target really runs out of space."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_target_full_names_the_offset_and_resumes_once_space_is_freed(tmp_path: Path, small_fs: Path) -> None:
    source = make_image(tmp_path / "source.img", SIZE, {0: os.urandom(SIZE)})
    target = small_fs / "target.img"

    with pytest.raises(
        MirrorError, match=r"target full at offset (\d+): free space and run again"
    ) as failure:
        mirror(source, target)

    assert not failure.value.retryable  # retrying cannot help until someone frees space
    failed_at = int(failure.value.args[0].split("offset ")[1].split(":")[0])
    assert 0 < failed_at < 8 * MiB
    blockmap = _load_map(target)
    recorded = [i for i in range(64) if blockmap.state(i) == DATA]
    assert failed_at // CHUNK not in recorded
    content = target.read_bytes()
    for index in recorded:  # every record the map keeps is backed by the data it names
        assert chunk_digest(content[index * CHUNK : (index + 1) * CHUNK]) == blockmap.digest(index)
    blockmap.close()

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    stats = mirror(source, target)
    assert stats.resumed_bytes_skipped == len(recorded) * CHUNK > 0
    assert sha256(target) == sha256(source)


class NoHolesReader(FailingReader):
    """A source that cannot tell its holes (a block device over a protocol without them)."""

    def allocated_ranges(self) -> None:
        return None


def test_source_without_hole_information_is_read_whole_and_still_sparse(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    reader = NoHolesReader(source, bad_offset=SIZE + 1)
    stats = mirror_disk(reader, target, chunk_size=CHUNK, mode="full", source_identity="src-1")
    reader.close()
    assert stats.bytes_read == SIZE
    assert stats.chunks_written == 6
    assert allocated(target) <= 6 * CHUNK + 64 * KiB
    assert sha256(target) == sha256(source)


def test_one_writer_per_target(source: Path, tmp_path: Path) -> None:
    target = make_image(tmp_path / "target.img", SIZE)
    fd = os.open(target, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(MirrorError, match="another mirror is writing"):
            mirror(source, target)
    finally:
        os.close(fd)


def test_disks_mirror_in_parallel_threads(tmp_path: Path) -> None:
    sources = [make_image(tmp_path / f"s{i}.img", SIZE, {i * CHUNK: os.urandom(4 * MiB)}) for i in range(4)]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            mirror(sources[index], tmp_path / f"t{index}.img")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for index in range(4):
        assert sha256(tmp_path / f"t{index}.img") == sha256(sources[index])


def test_bad_arguments(source: Path, tmp_path: Path) -> None:
    with FileDiskReader(source) as reader:
        with pytest.raises(ValueError, match="mode must be"):
            mirror_disk(reader, tmp_path / "t", chunk_size=CHUNK, mode="copy", source_identity="x")  # type: ignore
        with pytest.raises(ValueError, match="power of two"):
            mirror_disk(reader, tmp_path / "t", chunk_size=3 * 4096, mode="full", source_identity="x")


def test_pass_stats_round_trip_through_json(source: Path, tmp_path: Path) -> None:
    mirror(source, tmp_path / "target.img")
    overwrite(tmp_path / "target.img", 0, b"rot")
    stats = mirror(source, tmp_path / "target.img", mode="verify")
    assert PassStats.from_json(stats.to_json()) == stats
    assert stats.differing_ranges == [(0, CHUNK)]


def _load_map(target: Path) -> BlockMap:
    return BlockMap.open(
        map_path_for(target),
        chunk_size=CHUNK,
        disk_size=SIZE,
        source_identity="src-1",
        target_ino=target.stat().st_ino,
        fresh_target=False,
        seed_zero=lambda: (),
    )


def test_idle_writer_still_records_its_batch(tmp_path: Path) -> None:
    """A reader stuck in the throttle sends nothing for a long time; the writer must not sit on
    written data: its tick settles and records the batch once the flush interval has passed."""
    from orchestrator.mirror.local_channel import ThreadedWriter
    from orchestrator.mirror.writer import TargetWriter

    now = [0.0]
    target = tmp_path / "target.img"
    writer = TargetWriter(
        target,
        size=SIZE,
        chunk_size=CHUNK,
        source_identity="src-1",
        mode="full",
        flush_seconds=5.0,
        clock=lambda: now[0],
    )
    channel = ThreadedWriter(writer, CHUNK)
    buffer = channel.borrow()
    buffer[:] = os.urandom(CHUNK)
    channel.write(0, buffer, CHUNK, chunk_digest(buffer))
    now[0] = 6.0  # past the flush interval, and no further message ever comes
    try:
        for _ in range(200):  # waits for an event (up to 10 s); nothing is asserted about how long it took
            if _chunk0_state_on_disk(target) == DATA:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the idle writer never recorded the chunk it wrote")
    finally:
        channel.join()
        writer.close()


def _chunk0_state_on_disk(target: Path) -> int:
    """State of chunk 0 as the map file says, read without opening the map (which would change it)."""
    from orchestrator.mirror.blockmap import HEADER_SIZE, RECORD_SIZE

    raw = map_path_for(target).read_bytes()
    bitmap_size = HEADER_SIZE  # 64 chunks: one extent, one page of bitmap
    return raw[HEADER_SIZE + bitmap_size + 20] if len(raw) >= HEADER_SIZE + bitmap_size + RECORD_SIZE else -1
