"""Targets whose file names ignore case (exFAT, FAT, SMB shares, ext4 with casefold): what a pass must
do differently there.

Standard-library only and Python 3.8 compatible (the files agent ships it, and probes the target with it).

On such a target ``a.txt`` and ``A.txt`` are one name. So a pass matches the source's entries to the
target's by their folded names: a target ``a.txt`` for a source ``A.txt`` is the same file with a stale
case, renamed (through a temporary name: a direct rename between two spellings of one name is a no-op
on the kernel's case-insensitive filesystems) instead of being sent again and then deleted as an
orphan; and two source names that differ only by case cannot both exist there: the second is reported
as a problem and skipped, never silently merged into the first.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

PROBE = b".hvm-case-probe"


def fold(path: bytes) -> bytes:
    """The name as a case-insensitive filesystem compares it (Unicode case folding where it decodes)."""
    return path.decode("utf-8", "surrogateescape").casefold().encode("utf-8", "surrogateescape")


def _swapped(name: bytes) -> bytes:
    return name.decode("utf-8", "surrogateescape").swapcase().encode("utf-8", "surrogateescape")


def folds(folder: bytes) -> bool:
    """Whether names in ``folder`` (or, while it does not exist yet, in its nearest existing parent,
    whose behaviour it inherits) ignore case. Read-only when an entry with a cased name is there to
    look up under its other spelling; otherwise a probe file is made and removed at once."""
    where = folder
    while not os.path.isdir(where) and where not in (b"", b"/"):
        where = os.path.dirname(where)
    try:
        names = os.listdir(where)
    except OSError:
        return False
    present = set(names)
    for name in names[:64]:
        other = _swapped(name)
        if other != name and other not in present:
            return os.path.lexists(os.path.join(where, other))
    name = PROBE + b"-%d" % os.getpid()
    probe = os.path.join(where, name)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return False  # not writable here: the pass will say so itself
    os.close(fd)
    try:
        return os.path.lexists(os.path.join(where, name.upper()))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


def match(
    src_entries: list[tuple[int, Any]], theirs: dict[tuple[int, bytes], Any], folded: list[bool]
) -> tuple[list[tuple[int, Any]], dict[tuple[int, bytes], Any], list[tuple[int, bytes, bytes]], list]:
    """For the pairs whose target folds case: the source entries without case collisions, the target's
    entries keyed by the source's spelling, the case renames to make on the target (pair, target name,
    source name; parents first), and the collisions (pair, skipped source path, the path it collides with)."""
    kept: list[tuple[int, Any]] = []
    spelled: dict[tuple[int, bytes], bytes] = {}  # (pair, folded path) -> the source's spelling
    collisions: list[tuple[int, bytes, bytes]] = []
    skipped: list[tuple[int, bytes]] = []  # folders skipped: their contents go with them
    for index, entry in src_entries:
        if not folded[index]:
            kept.append((index, entry))
            continue
        if any(i == index and entry.path.startswith(p + b"/") for i, p in skipped):
            continue
        key = (index, fold(entry.path))
        first = spelled.get(key)
        if first is not None:
            collisions.append((index, entry.path, first))
            if entry.kind == b"d":
                skipped.append((index, entry.path))
            continue
        spelled[key] = entry.path
        kept.append((index, entry))
    remapped: dict[tuple[int, bytes], Any] = {}
    renames: list[tuple[int, bytes, bytes]] = []
    for (index, path), entry in theirs.items():
        if folded[index]:
            mine = spelled.get((index, fold(path)))
            if mine is not None and mine != path:
                if mine.rpartition(b"/")[2] != path.rpartition(b"/")[2]:  # a parent's rename does the rest
                    renames.append((index, path, mine))
                entry = entry._replace(path=mine)
                path = mine
        remapped[(index, path)] = entry
    renames.sort(key=lambda item: item[2].count(b"/"))
    return kept, remapped, renames, collisions
