"""Continuous replication keeps what a pass keeps: folder times and hard links (real inotify, a real
files agent over a local pipe). Each test ends with a full-data verify pass that must list nothing."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.files.mirror import LocalTree, Options, mirror_pass
from tests.integration.test_files_replicate import Running, local_connect, read, trees, wait_for

__all__ = ["trees"]  # the fixture, used by name


def verify(running: Running) -> list[str]:
    source = local_connect()
    try:
        result = mirror_pass(
            source, LocalTree(), running.pairs, running.rules, Options(compare="full_data"), verify_only=True
        )
    finally:
        source.close()
    return [f"{d.path}: {d.reason}" for d in result.differences]


def settled(src: Path, dst: Path) -> None:
    """A marker written last has arrived: every change before it is in its batch or an earlier one, and
    stopping never cuts a batch (the replicator stops at a batch's end)."""
    (src / "marker").write_text("last\n")  # outside the folders the test changes: it refreshes none
    wait_for(lambda: read(dst / "marker") == b"last\n", "the marker")


def test_folder_times_follow_renames_creates_and_excluded_files(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    running = Running(local_connect, src, dst)
    try:
        docs = src / "docs"
        os.rename(docs / "f1.txt", docs / "g1.txt")
        (docs / "sub").mkdir()
        (docs / "sub" / "inner.txt").write_text("inner\n")
        os.rename(docs / "sub" / "inner.txt", docs / "sub" / "moved.txt")
        wait_for(lambda: read(dst / "docs" / "sub" / "moved.txt") == b"inner\n", "the rename")
        # then excluded files (*.tmp) made and removed: the folders' times move on the source all the same
        (docs / "scratch.tmp").write_text("excluded\n")
        (docs / "scratch.tmp").unlink()
        (docs / "sub" / "other.tmp").write_text("excluded\n")
        settled(src, dst)
    finally:
        running.finish()
    assert running.error is None
    assert verify(running) == []


def test_a_changed_hard_linked_file_keeps_its_link_on_the_target(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    docs, out = src / "docs", dst / "docs"
    os.link(docs / "f0.txt", docs / "twin.txt")  # linked before replication: the first pass links them
    running = Running(local_connect, src, dst)
    try:
        assert os.stat(out / "f0.txt").st_ino == os.stat(out / "twin.txt").st_ino
        with open(docs / "f0.txt", "a") as handle:  # written through one name
            handle.write("more\n")
        wait_for(lambda: read(out / "twin.txt") == b"file 0\nmore\n", "the other name to follow")
        os.link(docs / "f0.txt", docs / "third.txt")  # a new name made during replication
        wait_for(lambda: (out / "third.txt").exists(), "the new name")
        with open(docs / "third.txt", "a") as handle:
            handle.write("again\n")
        wait_for(lambda: read(out / "f0.txt") == b"file 0\nmore\nagain\n", "a write through the new name")
        settled(src, dst)
    finally:
        running.finish()
    assert running.error is None
    inodes = {os.stat(out / name).st_ino for name in ("f0.txt", "twin.txt", "third.txt")}
    assert len(inodes) == 1 and os.stat(out / "f0.txt").st_nlink == 3
    assert verify(running) == []
