"""Changed-block tracking: which ranges of a source disk changed since the last pass, when vSphere can say.

QueryChangedDiskAreas answers against a snapshot: "what changed on device K between change id C and this
snapshot". It needs CBT enabled on the VM (config.changeTrackingEnabled, active after the next stun: a
power cycle or a snapshot), a disk CBT covers (not a physical-mode RDM) and a change id recorded at the
previous pass. Where any of that is missing, or the endpoint does not implement the call (vcsim, some
standalone hosts without the license), the pass falls back to the data mover's own method: hash every
chunk and send the ones whose hash differs, which is always correct and only slower. The probe says which
of the two applies and why, so the report can show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pyVmomi import vim, vmodl

from .connection import Connection
from .source_inventory import EsxDisk

# The endpoint has no CBT at all: no point asking again for another disk.
UNSUPPORTED = (vmodl.fault.MethodNotFound, vmodl.fault.NotSupported, vmodl.fault.NotImplemented)
# This disk's change id is no longer valid (CBT was reset, the disk was moved): one full hash pass.
STALE = (vim.fault.FileFault, vmodl.fault.InvalidArgument)


@dataclass(frozen=True)
class ChangeTracking:
    """How the next incremental pass of one disk finds what changed."""

    method: Literal["cbt", "hash"]
    reason: str


def probe(
    conn: Connection, vm: vim.VirtualMachine | None, snapshot_moref: str, disk: EsxDisk, enabled: bool
) -> ChangeTracking:
    """Ask QueryChangedDiskAreas once (change id ``*``: allocated areas) to learn whether CBT serves this
    disk; every refusal turns into the hash fallback with the reason."""
    if not enabled:
        return ChangeTracking(
            "hash", "changed-block tracking is off on the VM (config.changeTrackingEnabled)"
        )
    if not disk.trackable:
        return ChangeTracking("hash", f"{disk.slot} is a physical-mode RDM, which CBT does not track")
    assert vm is not None, "CBT is on: the VM is asked"
    try:
        query(conn, vm, snapshot_moref, disk, "*", 0)
    except UNSUPPORTED as fault:
        return ChangeTracking(
            "hash", f"{conn.where} does not implement QueryChangedDiskAreas ({_name(fault)})"
        )
    except STALE as fault:
        return ChangeTracking("hash", f"CBT has no valid state for {disk.slot} ({_name(fault)})")
    return ChangeTracking("cbt", "QueryChangedDiskAreas answers for this disk")


def changed_ranges(
    conn: Connection, vm: vim.VirtualMachine, snapshot_moref: str, disk: EsxDisk, since: str
) -> list[tuple[int, int]] | None:
    """(offset, length) ranges written since change id ``since`` up to the snapshot, paged through the
    whole disk; None when vSphere cannot say (the caller hashes the whole disk instead)."""
    ranges: list[tuple[int, int]] = []
    offset = 0
    try:
        while offset < disk.capacity:
            info = query(conn, vm, snapshot_moref, disk, since, offset)
            for area in info.changedArea or ():
                ranges.append((int(area.start), int(area.length)))
            covered = int(info.startOffset) + int(info.length)
            if covered <= offset:
                break  # an answer that does not advance: stop rather than loop
            offset = covered
    except (*UNSUPPORTED, *STALE):
        return None
    return ranges


def query(
    conn: Connection, vm: vim.VirtualMachine, snapshot_moref: str, disk: EsxDisk, change_id: str, offset: int
) -> vim.VirtualMachine.DiskChangeInfo:
    """One QueryChangedDiskAreas call; vSphere faults come through as they are (the callers sort them)."""
    snapshot = vim.vm.Snapshot(snapshot_moref, conn.stub)
    conn.stub.ensure_login()
    try:
        return vm.QueryChangedDiskAreas(
            snapshot=snapshot, deviceKey=disk.key, startOffset=offset, changeId=change_id
        )
    except (*UNSUPPORTED, *STALE):
        raise
    except Exception as exc:
        raise conn.failure(exc, f"asking which blocks of {disk.slot} changed") from None


def _name(fault: BaseException) -> str:
    return type(fault).__name__.rsplit(".", 1)[-1]
