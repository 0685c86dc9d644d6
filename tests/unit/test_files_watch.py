"""The inotify watcher of continuous replication (ctypes on libc, no dependency) and its spilling queue,
on a real tree with real kernel events."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.files.rules import RuleSet, make_rule
from orchestrator.files.watch import Change, SpillQueue, Watcher


def drain(watcher: Watcher, rounds: int = 3) -> list[Change]:
    """Every change the kernel has queued (a few reads: a rename's halves may straddle two)."""
    out: list[Change] = []
    for _ in range(rounds):
        out += watcher.read(timeout=0.2)
    return out


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Watcher]:
    root = tmp_path / "src"
    (root / "www").mkdir(parents=True)
    (root / "www" / "old.txt").write_text("old")
    rules = RuleSet([make_rule(str(root)), make_rule(str(root) + "/*.tmp", False)])
    watcher = Watcher([bytes(root)], rules, [bytes(root)])
    yield root, watcher
    watcher.close()


def test_create_write_rename_delete_and_attributes_come_in_order(tree: tuple[Path, Watcher]) -> None:
    root, watcher = tree
    (root / "www" / "a.txt").write_text("one")
    (root / "www" / "skip.tmp").write_text("excluded by the rules: only its folder's new time is reported")
    os.rename(root / "www" / "a.txt", root / "www" / "b.txt")
    os.chmod(root / "www" / "b.txt", 0o600)
    (root / "www" / "old.txt").unlink()
    changes = [(c.kind, c.path, c.old) for c in drain(watcher)]
    assert changes == [
        (b"c", b"www/a.txt", None),
        (b"w", b"www/a.txt", None),
        (b"a", b"www", None),  # skip.tmp made in www
        (b"m", b"www/b.txt", b"www/a.txt"),
        (b"a", b"www/b.txt", None),
        (b"d", b"www/old.txt", None),
    ]


def test_a_new_folder_is_watched_and_a_folder_moved_away_is_a_delete(
    tree: tuple[Path, Watcher], tmp_path: Path
) -> None:
    root, watcher = tree
    (root / "new").mkdir()
    assert [(c.kind, c.path) for c in drain(watcher, 1)] == [(b"c", b"new")]
    (root / "new" / "inside.txt").write_text("seen through the new folder's own watch")
    os.rename(root / "www", tmp_path / "outside")
    changes = [(c.kind, c.path) for c in drain(watcher)]
    assert changes == [(b"c", b"new/inside.txt"), (b"w", b"new/inside.txt"), (b"d", b"www")]


def test_renaming_the_root_is_reported_never_as_deletes(tree: tuple[Path, Watcher], tmp_path: Path) -> None:
    root, watcher = tree
    os.rename(root, tmp_path / "renamed")
    changes = drain(watcher)
    assert Change(b"r", 0, b"") in changes
    assert all(c.kind != b"d" for c in changes)


def test_the_queue_spills_to_disk_in_order_and_overflows_past_its_limit(tmp_path: Path) -> None:
    queue = SpillQueue(memory=3, limit=10, folder=str(tmp_path))
    puts = [Change(b"w", 0, f"f{i}".encode()) for i in range(8)] + [Change(b"m", 1, b"new\nname", b"\xff")]
    for change in puts:
        queue.put(change)
    assert len(queue) == 9
    assert [queue.get() for _ in range(9)] == puts and queue.get() is None
    for i in range(11):
        queue.put(Change(b"c", 0, str(i).encode()))
    assert queue.take_overflow() and not queue.take_overflow()
    assert len(queue) == 0 and queue.get() is None  # what was queued is dropped: a difference pass follows
    queue.close()
