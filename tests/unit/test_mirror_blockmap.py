"""The block map file: persistence, damage, crash distrust (hot extents), geometry checks, memory bound."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from orchestrator.mirror import BlockMapMismatch, MirrorError
from orchestrator.mirror.blockmap import (
    ABSENT,
    DATA,
    FULL_PASS,
    HEADER_SIZE,
    INCREMENTAL_PASS,
    RECORD_SIZE,
    ZERO,
    BlockMap,
)

MiB, GiB, TiB = 1024**2, 1024**3, 1024**4
CHUNK = 64 * MiB  # 4 chunks per 256 MiB extent: small maps with several extents
DISK = GiB  # 16 chunks, 4 extents


def open_map(
    path: Path,
    *,
    identity: str = "src",
    ino: int = 7,
    fresh: bool = False,
    holes: Iterable[int] = (),
    chunk: int = CHUNK,
    disk: int = DISK,
) -> BlockMap:
    return BlockMap.open(
        path,
        chunk_size=chunk,
        disk_size=disk,
        source_identity=identity,
        target_ino=ino,
        fresh_target=fresh,
        seed_zero=lambda: holes,
    )


def digest(n: int) -> bytes:
    return bytes([n]) * 16


def test_new_map_for_a_new_target_knows_it_reads_zero(tmp_path: Path) -> None:
    blockmap = open_map(tmp_path / "m", fresh=True, holes=tuple(range(16)))
    assert blockmap.reset_reason == "new target"
    assert [blockmap.state(i) for i in range(16)] == [ZERO] * 16
    assert os.path.getsize(tmp_path / "m") == blockmap.records_offset + 16 * RECORD_SIZE
    blockmap.close()


def test_records_persist_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "m"
    blockmap = open_map(path)
    assert blockmap.reset_reason == "no block map yet"
    assert blockmap.begin_pass(FULL_PASS, resume=True) is False
    blockmap.set(3, DATA, blockmap.pass_number, digest(3))
    blockmap.set(4, ZERO, blockmap.pass_number, b"")
    blockmap.set(15, DATA, blockmap.pass_number, digest(15))
    blockmap.end_pass()
    blockmap.close()

    again = open_map(path)
    assert again.reset_reason is None
    assert (again.state(3), again.digest(3), again.pass_of(3)) == (DATA, digest(3), 1)
    assert (again.state(4), again.pass_of(4)) == (ZERO, 1)
    assert again.digest(15) == digest(15)
    assert [again.state(i) for i in (0, 1, 2, 5, 14)] == [ABSENT] * 5
    assert again.pass_number == 1 and not again.pass_open
    again.close()


def test_pass_numbers_resume_only_an_open_full_pass(tmp_path: Path) -> None:
    blockmap = open_map(tmp_path / "m")
    assert blockmap.begin_pass(FULL_PASS, resume=True) is False and blockmap.pass_number == 1
    blockmap.close()
    blockmap = open_map(tmp_path / "m")  # the run died: the same full pass resumes
    assert blockmap.begin_pass(FULL_PASS, resume=True) is True and blockmap.pass_number == 1
    blockmap.close()
    blockmap = open_map(tmp_path / "m")  # an incremental run is always a pass of its own
    assert blockmap.begin_pass(INCREMENTAL_PASS, resume=False) is False and blockmap.pass_number == 2
    blockmap.end_pass()
    assert blockmap.begin_pass(FULL_PASS, resume=True) is False and blockmap.pass_number == 3
    blockmap.close()


def test_damaged_record_is_treated_as_absent(tmp_path: Path) -> None:
    path = tmp_path / "m"
    blockmap = open_map(path)
    blockmap.begin_pass(FULL_PASS, resume=True)
    for index in range(16):
        blockmap.set(index, DATA, 1, digest(index))
    blockmap.end_pass()
    offset = blockmap.records_offset + 9 * RECORD_SIZE + 2
    blockmap.close()
    with open(path, "r+b") as handle:  # one flipped byte in record 9's digest
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))

    again = open_map(path)
    assert again.damaged == 1
    assert again.state(9) == ABSENT
    assert [again.state(i) for i in range(16) if i != 9] == [DATA] * 15
    again.close()


def test_hot_extent_distrusts_older_records_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "m"
    blockmap = open_map(path)
    blockmap.begin_pass(FULL_PASS, resume=True)
    for index in range(16):
        blockmap.set(index, DATA, 1, digest(index))
    blockmap.end_pass()
    # pass 2 records chunk 5, then is about to overwrite chunk 6 and "dies" (no flush, no close)
    blockmap.begin_pass(INCREMENTAL_PASS, resume=False)
    blockmap.mark_hot(5)
    blockmap.set(5, DATA, 2, digest(55))
    blockmap.flush()  # chunk 5's data was durable: its record is written, the extent cools
    blockmap.mark_hot(6)  # extent 1 = chunks 4..7 is hot again; chunk 6 gets overwritten, then the crash
    os.close(blockmap._fd)

    again = open_map(path, holes=(7,))  # chunk 7 happens to be a hole of the target now
    assert again.downgraded == 3
    assert (again.state(5), again.digest(5)) == (DATA, digest(55))  # written by the open pass: trusted
    assert again.state(4) == ABSENT and again.state(6) == ABSENT  # may have been overwritten
    assert again.state(7) == ZERO  # a hole reads as zeros whatever happened
    assert [again.state(i) for i in (0, 1, 2, 3, 8, 12, 15)] == [DATA] * 7  # cool extents are trusted
    again.close()
    assert open_map(path).downgraded == 0  # the distrust itself was made durable


def test_different_source_or_replaced_target_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "m"
    blockmap = open_map(path)
    blockmap.set(0, DATA, 1, digest(1))
    blockmap.flush()
    blockmap.close()

    other = open_map(path, identity="another source", holes=(1,))
    assert other.reset_reason == "different source"
    assert other.state(0) == ABSENT and other.state(1) == ZERO
    other.set(0, DATA, 1, digest(1))
    other.flush()
    other.close()

    replaced = open_map(path, identity="another source", ino=8)
    assert replaced.reset_reason == "target file was replaced"
    assert replaced.state(0) == ABSENT
    replaced.close()


def test_long_identity_is_stored_as_a_digest(tmp_path: Path) -> None:
    identity = "vm:" + "x" * 1000
    open_map(tmp_path / "m", identity=identity).close()
    assert open_map(tmp_path / "m", identity=identity).reset_reason is None
    assert open_map(tmp_path / "m", identity=identity + "y").reset_reason == "different source"


def test_geometry_changes_are_refused(tmp_path: Path) -> None:
    open_map(tmp_path / "m").close()
    with pytest.raises(BlockMapMismatch, match=f"chunk size {CHUNK}, this run asks for {CHUNK // 2}"):
        open_map(tmp_path / "m", chunk=CHUNK // 2)
    with pytest.raises(BlockMapMismatch, match=f"was {DISK} bytes at the last pass and is {2 * DISK} bytes"):
        open_map(tmp_path / "m", disk=2 * DISK)


def test_damaged_header_starts_over_and_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m"
    open_map(path).close()
    with open(path, "r+b") as handle:
        handle.seek(40)
        handle.write(b"\x99")
    assert open_map(path).reset_reason == "block map header is damaged"

    foreign = tmp_path / "disk.img.hvmap"
    foreign.write_bytes(b"not a map at all" * 100)
    with pytest.raises(MirrorError, match="is not a block map"):
        open_map(foreign)
    assert foreign.read_bytes() == b"not a map at all" * 100


def test_memory_stays_bounded_for_a_terabyte_disk(tmp_path: Path) -> None:
    chunk = 4 * MiB
    count = TiB // chunk
    blockmap = open_map(tmp_path / "m", chunk=chunk, disk=TiB, fresh=True, holes=range(count))
    assert blockmap.chunk_count == 262144
    assert blockmap.memory_bytes == 21 * 262144  # 5.5 MB: 16-byte digest, 4-byte pass, 1-byte state
    assert os.path.getsize(tmp_path / "m") == HEADER_SIZE + blockmap.bitmap_size + 32 * 262144
    blockmap.close()
