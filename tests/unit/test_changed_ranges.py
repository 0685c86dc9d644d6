"""Incremental passes given changed ranges (changed-block tracking): both engines, the in-process copier
and real agent processes over pipes, read only the chunks the ranges touch and those the target lacks, and
confirm the rest from the block map without reading them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from orchestrator.mirror import FileDiskReader, mirror_disk
from orchestrator.mirror.blockmap import BlockMap, map_path_for
from orchestrator.mirror.file_reader import changed_chunks
from orchestrator.mirror.remote import mirror_remote
from orchestrator.transport.local import LocalTransport
from tests.images import make_image, sha256

KiB, MiB = 1024, 1024**2
CHUNK = 64 * KiB
SIZE = 4 * MiB  # 64 chunks
IDENTITY = "web01:scsi0:0"
STDLIB_PYTHON = [sys.executable, "-I", "-S"]  # an agent with nothing but the standard library


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def in_process(source: Path, target: Path, mode: str, ranges: list[tuple[int, int]] | None = None) -> object:
    with FileDiskReader(source) as reader:
        return mirror_disk(
            reader,
            target,
            chunk_size=CHUNK,
            mode=mode,  # type: ignore[arg-type]
            source_identity=IDENTITY,
            changed_ranges=ranges,
        )


def by_agents(source: Path, target: Path, mode: str, ranges: list[tuple[int, int]] | None = None) -> object:
    return mirror_remote(
        LocalTransport(STDLIB_PYTHON),
        str(source),
        LocalTransport(),
        str(target),
        chunk_size=CHUNK,
        mode=mode,  # type: ignore[arg-type]
        source_identity=IDENTITY,
        changed_ranges=ranges,
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    pieces = {index * CHUNK: os.urandom(CHUNK) for index in range(0, 64, 2)}  # every even chunk holds data
    return make_image(tmp_path / "source.img", SIZE, pieces)


@pytest.mark.parametrize("engine", [in_process, by_agents], ids=["in-process", "agents"])
def test_only_the_changed_chunks_and_those_the_target_lacks_are_read(
    engine: object, source: Path, tmp_path: Path
) -> None:
    copy = engine  # type: ignore[assignment]
    target = tmp_path / "target.img"
    copy(source, target, "full")  # type: ignore[operator]
    overwrite(source, 4 * CHUNK + 100, b"changed in chunk 4")
    overwrite(source, 9 * CHUNK - 10, b"spans chunks 8 and 9")  # chunk 9 was a hole: now data
    # staging edited chunk 30 on the target: the map forgets it, so it must be read although CBT is silent
    overwrite(target, 30 * CHUNK, b"staged")
    blockmap = BlockMap.existing(map_path_for(target))
    assert blockmap is not None
    blockmap.forget([30])
    blockmap.close()

    ranges = [(4 * CHUNK + 100, 18), (9 * CHUNK - 10, 20)]
    stats = copy(source, target, "incremental", ranges)  # type: ignore[operator]

    assert sha256(target) == sha256(source)  # the whole-disk digests were compared too (verify)
    assert stats.bytes_read == 4 * CHUNK  # chunks 4, 8, 9 and 30: nothing else was read
    assert stats.bytes_written == 4 * CHUNK
    assert stats.unchanged_bytes_skipped == (64 - 4) * CHUNK  # every other chunk, confirmed unread

    # the ranges are trusted: a change they do not name is not seen (which is why only CBT gives them)
    overwrite(source, 12 * CHUNK, b"not reported")
    quiet = copy(source, target, "incremental", [])  # type: ignore[operator]
    assert quiet.bytes_read == 0 and quiet.bytes_written == 0
    assert sha256(target) != sha256(source)
    healed = copy(source, target, "incremental")  # no ranges: every chunk hashed, the change found
    assert healed.bytes_written == CHUNK and sha256(target) == sha256(source)


def test_a_full_pass_ignores_ranges(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    stats = by_agents(source, target, "full", [(0, CHUNK)])
    assert stats.bytes_written == 32 * CHUNK and sha256(target) == sha256(source)  # type: ignore[attr-defined]


def test_changed_chunks_rounds_out_and_clips() -> None:
    marks = changed_chunks(
        [(CHUNK - 1, 2), (5 * CHUNK, CHUNK), (7 * CHUNK, 0), (9 * CHUNK, 10 * CHUNK)], CHUNK, 10
    )
    assert [i for i, mark in enumerate(marks) if mark] == [0, 1, 5, 9]
