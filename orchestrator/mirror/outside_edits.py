"""Edits of a target disk made outside the mirror, and how its block map learns of them.

Staging edits the replica's boot disk in place between passes (hostname, network configuration, the
journal replay of a filesystem copied while mounted). The block map still vouches for those chunks as the
mirror wrote them, so the next incremental pass would keep a chunk that staging changed and the source did
not, and overwrite one that both changed: the replica becomes a mix of two filesystems' metadata (an inode
table from the source, the directory entries staging added pointing into it), and re-applying the staging
on that fails or corrupts files. So an edit outside the mirror runs inside ``edited_outside_the_mirror``:
the chunks whose bytes it changed are marked absent in the map, the next pass puts the source's bytes back,
and the staging is applied again to a faithful copy.

Finding the changed chunks costs one read of the target's allocated data before and one after the edit
(holes are skipped; a raw replica of a mostly empty disk is mostly holes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .blockmap import BlockMap, map_path_for
from .file_reader import data_ranges
from .hashing import chunk_digest


def chunk_fingerprints(target: Path, chunk_size: int) -> dict[int, bytes]:
    """Chunk index -> digest, for every chunk of ``target`` that holds allocated data."""
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        ranges = data_ranges(fd, size)
        indices: set[int] = set()
        for offset, length in ranges if ranges is not None else [(0, size)]:
            indices.update(range(offset // chunk_size, -(-(offset + length) // chunk_size)))
        return {i: chunk_digest(os.pread(fd, chunk_size, i * chunk_size)) for i in sorted(indices)}
    finally:
        os.close(fd)


@contextlib.contextmanager
def edited_outside_the_mirror(target: str | Path, map_path: str | Path | None = None) -> Iterator[None]:
    """Run an in-place edit of ``target``; afterwards (also after a failed edit) the chunks it changed are
    absent in the target's block map. Without a map (no pass yet) there is nothing to keep honest."""
    target = Path(target)
    blockmap = BlockMap.existing(Path(map_path) if map_path else map_path_for(target))
    if blockmap is None:
        yield
        return
    try:
        before = chunk_fingerprints(target, blockmap.chunk_size)
        try:
            yield
        finally:
            after = chunk_fingerprints(target, blockmap.chunk_size)
            blockmap.forget(i for i in before.keys() | after.keys() if before.get(i) != after.get(i))
    finally:
        blockmap.close()
