"""Which engine copies one disk: in this process, or agents at either end.

When the source disk and the target are both on this machine, the in-process mirror is the fastest path
(no pipes, no frames). As soon as one end is elsewhere (a source server reached over SSH, a writer on a
remote hypervisor host or an appliance), agents run at the ends: the reader next to the source, the writer
next to the target, and the orchestrator relays (remote.py). A local end of a remote copy is a local agent,
so both paths run the same reader and writer code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.transport.local import LocalTransport
from providers.base import AgentLocation, DiskEndpoint, DiskReader

from .copier import Mode, PassStats, mirror_disk
from .remote import RemotePassStats, mirror_remote
from .throttle import Throttle


@dataclass(frozen=True)
class DiskCopy:
    """One disk of one pass: where it is read, where it is written, and how."""

    source: AgentLocation | None  # None: only readable through ``open_reader`` in this process
    target: AgentLocation  # transport None: ``path`` is writable from this machine
    source_identity: str
    chunk_size: int
    mode: Mode
    verify: bool = True
    compression: str = "zstd"
    compression_level: int = 3
    map_path: str | None = None  # where the block map lives when not beside the target (NBD, devices)
    streams: int = 2  # chunks a reader agent hashes and compresses at once
    # incremental: what changed-block tracking says changed since the last pass; None: hash every chunk
    changed_ranges: tuple[tuple[int, int], ...] | None = None

    @classmethod
    def for_endpoint(
        cls,
        options: Any,
        source: AgentLocation | None,
        endpoint: DiskEndpoint,
        writer: AgentLocation | None,
        identity: str,
        mode: Mode,
    ) -> DiskCopy:
        """The copy of one disk into a provider's endpoint with the playbook's mirror ``options``:
        ``writer`` is the provider's writer_location (None: the endpoint's path, from here)."""
        return cls(
            source=source,
            target=writer or AgentLocation(None, endpoint.path),
            source_identity=identity,
            chunk_size=options.chunk_size,
            mode=mode,
            verify=options.verify,
            compression=options.compression,
            compression_level=options.compression_level,
            map_path=endpoint.transport.get("map_path"),
            streams=options.streams,
        )

    @property
    def in_process(self) -> bool:
        return self.target.transport is None and (self.source is None or self.source.transport is None)


def copy_disk(
    copy: DiskCopy,
    *,
    open_reader: Callable[[], DiskReader],
    throttle: Throttle | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    checkpoint: Callable[[int], None] | None = None,
) -> PassStats | RemotePassStats:
    """Run one pass of one disk on the engine its two ends call for."""
    if copy.in_process:
        reader = open_reader()
        try:
            return mirror_disk(
                reader,
                _local_target(copy.target.path),
                chunk_size=copy.chunk_size,
                mode=copy.mode,
                throttle=throttle,
                progress=progress,
                cancelled=cancelled,
                source_identity=copy.source_identity,
                verify=copy.verify,
                map_path=Path(copy.map_path) if copy.map_path else None,
                changed_ranges=copy.changed_ranges,
            )
        finally:
            reader.close()
    if copy.source is None:
        raise ValueError(
            "this source can only be read in-process, but its target is written by a remote agent"
        )
    return mirror_remote(
        _transport(copy.source),
        copy.source.path,
        _transport(copy.target),
        copy.target.path,
        chunk_size=copy.chunk_size,
        mode=copy.mode,
        source_identity=copy.source_identity,
        verify=copy.verify,
        compression=copy.compression,
        compression_level=copy.compression_level,
        throttle=throttle,
        progress=progress,
        cancelled=cancelled,
        checkpoint=checkpoint,
        map_path=copy.map_path,
        compress_workers=copy.streams,
        changed_ranges=copy.changed_ranges,
        source_size=copy.source.size,
        source_overlay=copy.source.overlay,
    )


def _local_target(path: str) -> Any:
    """A file or device path, or an NBD URI (which a Path would mangle: it folds "///")."""
    return path if "://" in path else Path(path)


def _transport(location: AgentLocation) -> Any:
    return location.transport if location.transport is not None else LocalTransport()
