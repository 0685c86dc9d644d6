"""A full and an incremental pass through a writer inside a recovery appliance, as the ESX and Hyper-V
appliance tests both run them: the same source layout, the same two changed chunks, the same checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.images import sha256

MiB = 1024**2
CHUNK = 64 * 1024


def make_source(path: Path) -> Path:
    """8 MiB: 2 MiB random, 4 MiB of zeros (never sent), 2 MiB of text."""
    path.write_bytes(os.urandom(2 * MiB) + bytes(4 * MiB) + b"the end of the source".ljust(2 * MiB, b"."))
    return path


def full_then_incremental(
    provider: Any, endpoint: Any, source: Path, target: Path, map_path: str, label: str
) -> None:
    """The reader here, the writer in the "appliance" over SSH; the block map on the appliance's root."""
    from orchestrator.mirror.route import DiskCopy, copy_disk
    from providers.base import AgentLocation

    def run(mode: str) -> Any:
        location = provider.writer_location(endpoint)  # looked up again each pass, as the mirror does
        copy = DiskCopy(AgentLocation(None, str(source)), location, label, CHUNK, mode, map_path=map_path)
        return copy_disk(copy, open_reader=lambda: None)

    full = run("full")
    assert sha256(target) == sha256(source)
    assert full.bytes_written == 4 * MiB and full.zero_bytes_skipped == 4 * MiB
    assert Path(map_path).is_file()

    with source.open("r+b") as handle:  # two chunks change on the running source
        handle.seek(CHUNK * 3)
        handle.write(b"\x01" * CHUNK)
        handle.seek(6 * MiB)
        handle.write(b"new data".ljust(CHUNK, b"!"))
    incremental = run("incremental")
    assert sha256(target) == sha256(source)
    assert incremental.bytes_written == 2 * CHUNK, incremental
