"""Disk-image helpers shared by the mirror, agent and end-to-end tests: real sparse files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def make_image(path: Path, size: int, pieces: dict[int, bytes] | None = None) -> Path:
    """A sparse image: holes everywhere except ``pieces`` (offset -> bytes, written for real)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, data in (pieces or {}).items():
            handle.seek(offset)
            handle.write(data)
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def allocated(path: Path) -> int:
    """Bytes the filesystem really holds for the file: far below its size when it is sparse."""
    return os.stat(path).st_blocks * 512
