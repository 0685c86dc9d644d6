"""The snapshot a source holds for one mirror pass, and the changed ranges it can name.

Sources that offer ``SnapshotsPasses`` (a VM on a hypervisor with snapshots and changed-block tracking)
freeze their disks for each pass and can say which ranges changed since the previous one; the pass then
reads only those. Two things must never go wrong, whatever crashes when:

- a snapshot left behind grows on the source's datastore until the VM stops. So the snapshot is a
  journaled resource of the step: a placeholder is recorded before it is taken (a crash in between is
  swept by name), its state once it exists, and both are forgotten only after it is gone. The next pass
  of the step, or ``migrate undo``, releases whatever the journal still names.
- a change missed is a replica silently different from its source. So the change ids a pass starts from
  are saved only after a pass that copied succeeded, and forgotten when a verify pass finds the target
  differing (the next pass then hashes every chunk and repairs it); a source that cannot answer gets
  every chunk hashed, as for any other source.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from orchestrator.mirror.route import DiskCopy
from orchestrator.playbook.units import format_size
from orchestrator.steps.base import StepContext
from providers.base import SnapshotsPasses

RESOURCE = "source_snapshot"


def change_ids_key(ctx: StepContext) -> str:
    return f"{ctx.server.name}/change_ids"


def forget_change_ids(ctx: StepContext) -> None:
    """The target no longer holds what the saved change ids vouch for: the next pass hashes everything."""
    ctx.checkpoint(change_ids_key(ctx), None)


class FrozenPass:
    """What one pass may ask of its source's snapshot: changed ranges before, change ids after."""

    def __init__(self, ctx: StepContext, source: SnapshotsPasses | None) -> None:
        self.ctx = ctx
        self.source = source

    def narrowed(self, copy: DiskCopy, name: str) -> DiskCopy:
        """``copy`` limited to the ranges that changed since the last pass, when the source can say."""
        if self.source is None or copy.mode != "incremental":
            return copy
        since = (self.ctx.load_checkpoint(change_ids_key(self.ctx)) or {}).get(name)
        ranges = self.source.changed_ranges(name, since)
        if ranges is None:
            why = "the source cannot say what changed" if since else "no change id from an earlier pass"
            self.ctx.event(f"{name}: every chunk is hashed ({why})", disk=name, changed_ranges=None)
            return copy
        total = sum(length for _, length in ranges)
        self.ctx.event(
            f"{name}: changed-block tracking names {len(ranges)} range(s), {format_size(total)}: only "
            "those chunks are read",
            disk=name,
            changed_ranges=len(ranges),
            changed_bytes=total,
        )
        return DiskCopy(**{**copy.__dict__, "changed_ranges": tuple((int(o), int(n)) for o, n in ranges)})

    def passed(self) -> None:
        """The pass copied everything up to the snapshot: the next one starts from its change ids."""
        if self.source is None:
            return
        ids = self.source.change_ids()
        if ids:
            saved = self.ctx.load_checkpoint(change_ids_key(self.ctx)) or {}
            self.ctx.checkpoint(change_ids_key(self.ctx), {**saved, **ids})


def release_left_behind(ctx: StepContext, source: Any | None = None) -> list[dict[str, Any]]:
    """Release every snapshot the journal says this step's passes still hold (after a crash or a failed
    release); returns the states released. Opens the source only when there is one."""
    held = [r for r in ctx.resources() if r.kind == RESOURCE]
    if not held:
        return []
    source = source if source is not None else ctx.source()
    released = []
    for resource in held:
        state = resource.ref.get("state")
        if isinstance(source, SnapshotsPasses):
            source.release_snapshot(state)
        ctx.forget_resource(resource)
        if state:
            released.append(dict(state))
            ctx.event(f"removed snapshot {state.get('name', '')} an interrupted pass left on the source")
    return released


@contextlib.contextmanager
def frozen_pass(ctx: StepContext, source: Any, *, take: bool) -> Iterator[FrozenPass]:
    """Hold the source's pass snapshot (``take``) around one pass, journaled as described above; without
    ``take`` (the final pass: quiesce holds the snapshot) only ranges and change ids are asked."""
    if not isinstance(source, SnapshotsPasses):
        yield FrozenPass(ctx, None)
        return
    release_left_behind(ctx, source)
    if not take:
        yield FrozenPass(ctx, source)
        return
    ctx.record_resource(RESOURCE, "source", {"server": ctx.server.name, "state": None})
    failure: BaseException | None = None
    with source.pass_snapshot() as state:
        if state is not None:
            ctx.record_resource(RESOURCE, "source", {"server": ctx.server.name, "state": state.to_json()})
        try:
            yield FrozenPass(ctx, source)
        except BaseException as exc:  # the snapshot goes first, then the pass's own error
            failure = exc
    for resource in ctx.resources():  # reached only once the snapshot is gone (its release raises else)
        if resource.kind == RESOURCE:
            ctx.forget_resource(resource)
    if failure is not None:
        raise failure
