"""Edits of a replica made outside the mirror (staging) are undone by the next pass, not kept half-way.

Without ``edited_outside_the_mirror`` the block map vouches for the edited chunks as the mirror wrote
them: a chunk only staging changed survives the pass, one that both changed is overwritten, and the
replica ends up a mix of the two (the e2e KVM test saw an ext4 whose directory pointed at a reused inode).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from orchestrator.mirror import FileDiskReader, mirror_disk
from orchestrator.mirror.blockmap import ABSENT, DATA, ZERO, BlockMap, map_path_for
from orchestrator.mirror.outside_edits import chunk_fingerprints, edited_outside_the_mirror

CHUNK = 64 * 1024
CHUNKS = 64


def make_source(path: Path) -> None:
    with open(path, "wb") as disk:
        disk.truncate(CHUNKS * CHUNK)
        for index in (1, 5, 9, 30):
            disk.seek(index * CHUNK)
            disk.write(os.urandom(CHUNK))


def one_pass(source: Path, target: Path, mode: str) -> int:
    with FileDiskReader(source) as reader:
        return mirror_disk(reader, target, chunk_size=CHUNK, mode=mode, source_identity="src").bytes_written


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as disk:
        disk.seek(offset)
        disk.write(data)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_next_pass_restores_what_an_edit_changed_and_sends_only_that(tmp_path: Path) -> None:
    source, target = tmp_path / "source.raw", tmp_path / "target.raw"
    make_source(source)
    one_pass(source, target, "full")
    with edited_outside_the_mirror(target):
        write_at(target, 5 * CHUNK + 10, b"staged")  # a chunk of data the source does not change
        write_at(target, 9 * CHUNK + 20, b"staged")  # one the source changes too
        write_at(target, 40 * CHUNK, b"new file")  # a hole of the target until now
    blockmap = BlockMap.existing(map_path_for(target))
    assert blockmap is not None
    assert [blockmap.state(i) for i in (1, 5, 9, 30, 40)] == [DATA, ABSENT, ABSENT, DATA, ABSENT]
    blockmap.close()

    write_at(source, 9 * CHUNK, os.urandom(100))
    assert one_pass(source, target, "incremental") == 2 * CHUNK  # 5 and 9; 40 is zero at the source
    assert sha(target) == sha(source)


def test_an_edit_that_fails_half_way_is_still_tracked(tmp_path: Path) -> None:
    source, target = tmp_path / "source.raw", tmp_path / "target.raw"
    make_source(source)
    one_pass(source, target, "full")
    try:
        with edited_outside_the_mirror(target):
            write_at(target, 30 * CHUNK, b"half")
            raise RuntimeError("debugfs died")
    except RuntimeError:
        pass
    one_pass(source, target, "incremental")
    assert sha(target) == sha(source)


def test_without_a_map_there_is_nothing_to_track(tmp_path: Path) -> None:
    target = tmp_path / "target.raw"
    make_source(target)
    with edited_outside_the_mirror(target):
        write_at(target, 0, b"edit")
    assert not map_path_for(target).exists()


def test_fingerprints_cover_allocated_chunks_only(tmp_path: Path) -> None:
    target = tmp_path / "target.raw"
    make_source(target)
    assert sorted(chunk_fingerprints(target, CHUNK)) == [1, 5, 9, 30]


def test_forget_leaves_absent_and_zero_records_alone_and_survives_reopening(tmp_path: Path) -> None:
    source, target = tmp_path / "source.raw", tmp_path / "target.raw"
    make_source(source)
    one_pass(source, target, "full")
    blockmap = BlockMap.existing(map_path_for(target))
    assert blockmap is not None and blockmap.state(2) == ZERO
    assert blockmap.forget([1, 2, 1, 999]) == 2  # 1 (data) and 2 (zero); 999 is past the end
    assert blockmap.forget([1]) == 0
    blockmap.close()
    again = BlockMap.existing(map_path_for(target))
    assert again is not None and (again.state(1), again.state(2), again.state(5)) == (ABSENT, ABSENT, DATA)
    again.close()
