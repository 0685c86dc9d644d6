"""Mirror, sync and final sync: the data plane driven from a step.

All three are the same operation with a different mode: a full pass copies every non-zero chunk not yet
on the target, an incremental pass only what changed since. Each pass is recorded (bytes read, sent,
skipped) so convergence can be judged, and the staged system state is re-applied after every pass because
a pass may have brought back the source's own version of a staged file.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, ClassVar

from orchestrator import audit
from orchestrator.convergence import assess, record_pass
from orchestrator.mirror.copier import Mode, PassStats
from orchestrator.mirror.errors import MirrorCancelled, MirrorError
from orchestrator.mirror.remote import RemotePassStats
from orchestrator.mirror.route import DiskCopy, copy_disk
from orchestrator.mirror.throttle import Throttle
from orchestrator.planner import source_host
from orchestrator.playbook.units import format_size
from orchestrator.steps.base import Cancelled, Step, StepContext, StepFailed
from orchestrator.steps.common import endpoints, replica_disks
from orchestrator.steps.cutover import quiesce_state, thawed_marker
from orchestrator.steps.guest import boot_disk_index, reapply_staged_state, staged_edit_count
from orchestrator.steps.pass_snapshot import FrozenPass, forget_change_ids, frozen_pass, release_left_behind
from orchestrator.transport import TransportError
from providers.base import AgentLocation, DiskEndpoint

_throttles: dict[str, Throttle] = {}
_throttles_lock = threading.Lock()
MAX_DISKS_AT_ONCE = 4
CHECKPOINT_SECONDS = 5.0  # how often a pass journals what the target holds durably
MAX_RANGES_KEPT = 100  # differing ranges kept per disk in a verify pass's output (the count is exact)


def _location(owner: Any, method: str, key: Any) -> AgentLocation | None:
    """``owner.method(key)`` for providers and sources that know data-plane locations; None otherwise
    (a third-party plugin written before they existed)."""
    find = getattr(owner, method, None)
    return find(key) if find is not None else None


def shared_throttle(ctx: StepContext) -> Throttle | None:
    """One token bucket per source host, shared by all its disks and streams (the playbook's limit)."""
    bandwidth = ctx.playbook.mirror_for(ctx.server).bandwidth
    if bandwidth.limit is None and not bandwidth.schedule:
        return None
    key = source_host(ctx.server)
    with _throttles_lock:
        if key not in _throttles:
            _throttles[key] = Throttle.from_options(bandwidth)
        return _throttles[key]


class _MirrorPass(Step):
    mode: ClassVar[str] = "full"
    retryable = True
    snapshot_each_pass: ClassVar[bool] = True  # sources that offer one freeze their disks for the pass

    def run(self, ctx: StepContext) -> dict[str, Any]:
        """One pass inside the source's pass snapshot, when it offers one (pass_snapshot.py)."""
        with frozen_pass(ctx, ctx.source(), take=self.snapshot_each_pass) as frozen:
            return self.copy_pass(ctx, frozen)

    def copy_pass(self, ctx: StepContext, frozen: FrozenPass) -> dict[str, Any]:
        mode = self.pass_mode(ctx)
        source = ctx.source()
        provider = ctx.provider(ctx.server.target.provider)
        pairs = list(zip(replica_disks(ctx), endpoints(ctx), strict=True))
        copies = [
            frozen.narrowed(self.plan_copy(ctx, source, provider, name, endpoint, mode), name)
            for (name, _), endpoint in pairs
        ]
        throttle = shared_throttle(ctx)
        totals = {endpoint.path: 0 for _, endpoint in pairs}
        everything = sum(endpoint.size for _, endpoint in pairs)
        lock = threading.Lock()
        label = f"{mode if mode == 'verify' else self.mode} {ctx.server.name}"

        def one(item: tuple[tuple[tuple[str, Any], Any], DiskCopy]) -> PassStats:
            ((source_name, disk), endpoint), copy = item
            last_checkpoint = [0.0]

            def progress(done: int, total: int) -> None:
                with lock:
                    totals[endpoint.path] = done
                    ctx.progress(done, total, label=f"{label} {disk.name}", part=disk.name)
                    ctx.progress(sum(totals.values()), everything, label=label)

            def checkpoint(durable: int) -> None:
                now = time.monotonic()
                if now - last_checkpoint[0] >= CHECKPOINT_SECONDS:
                    last_checkpoint[0] = now
                    ctx.checkpoint(
                        f"{ctx.server.name}/mirror/{disk.name}",
                        {"mode": self.mode, "durable_bytes": durable, "at": time.time()},
                    )

            where = f"target {ctx.server.target.provider} ({endpoint.kind} on {endpoint.host})"
            what = f"{mode if mode == 'verify' else self.mode} pass {source_name} -> {endpoint.path}"
            with audit.operation(where, what) as op:
                stat = copy_disk(
                    copy,
                    open_reader=lambda: source.open_disk(source_name),
                    throttle=throttle,
                    progress=progress,
                    cancelled=ctx.cancelled,
                    checkpoint=checkpoint,
                )
                op.note(f"{stat.bytes_written} bytes written, {stat.bytes_read} read")
            return stat

        started = time.time()
        try:
            with ThreadPoolExecutor(max_workers=min(MAX_DISKS_AT_ONCE, len(pairs)) or 1) as pool:
                stats = list(pool.map(audit.carry(one), zip(pairs, copies, strict=True)))
        except MirrorCancelled as exc:
            raise Cancelled(str(exc)) from None
        except (MirrorError, TransportError) as exc:
            raise StepFailed(str(exc), retryable=getattr(exc, "retryable", False)) from None
        output = self.summarize(ctx, pairs, stats, started)
        if mode == "verify":
            return self.verified(ctx, output, pairs, stats)
        frozen.passed()
        finished = time.time()
        entry = {
            "mode": self.mode,
            "started_at": started,
            "finished_at": finished,
            "bytes_written": output["bytes_written"],
            "bytes_read": output["bytes_read"],
            "duration": output["duration"],
        }
        name = ctx.server.name
        ctx.checkpoint(f"{name}/last_pass", entry)
        passes = record_pass((ctx.load_checkpoint(f"{name}/passes") or {}).get("passes"), entry)
        ctx.checkpoint(f"{name}/passes", {"passes": passes})
        verdict = assess(passes, interval=ctx.playbook.sync_for(ctx.server).interval, now=finished)
        output["convergence"] = verdict.state
        if verdict.warning:
            ctx.event(verdict.warning, level="warning")
        edits = reapply_staged_state(ctx)
        if edits:
            output["restaged"] = edits
        return output

    def pass_mode(self, ctx: StepContext) -> Mode:
        return "full" if self.mode == "full" else "incremental"

    def verified(
        self, ctx: StepContext, output: dict[str, Any], pairs: list[Any], stats: list[PassStats]
    ) -> dict[str, Any]:
        """A verify pass copies nothing, so it is no sync pass for convergence; it reports what differs
        (the target's map now says so too, and the next incremental pass sends exactly those chunks)."""
        differing = []
        staged = staged_edit_count(ctx)
        for index, (((_, disk), _), stat) in enumerate(zip(pairs, stats, strict=True)):
            ranges = stat.differing_ranges
            differing.append(
                {
                    "disk": disk.name,
                    "ranges": [list(r) for r in ranges[:MAX_RANGES_KEPT]],
                    "range_count": len(ranges),
                    "bytes": sum(length for _, length in ranges),
                    "staged_edits": staged if index == boot_disk_index(ctx) else 0,
                }
            )
            if ranges:
                ctx.event(
                    f"verify {disk.name}: {len(ranges)} range(s) differ, "
                    f"{format_size(differing[-1]['bytes'])} in all, first at offset {ranges[0][0]}; "
                    "`migrate sync` repairs them",
                    level="warning",
                    disk=disk.name,
                )
        output["differing"] = differing
        if any(item["range_count"] for item in differing):
            forget_change_ids(ctx)  # changed-block tracking would not name these ranges: hash them all
        return output

    def plan_copy(
        self,
        ctx: StepContext,
        source: Any,
        provider: Any,
        source_name: str,
        endpoint: DiskEndpoint,
        mode: Mode,
    ) -> DiskCopy:
        """Where this disk is read and written; refused early when the two ends cannot meet."""
        reading = _location(source, "disk_location", source_name)
        copy = DiskCopy.for_endpoint(
            ctx.playbook.mirror_for(ctx.server),
            reading,
            endpoint,
            _location(provider, "writer_location", endpoint),
            f"{ctx.server.name}:{source_name}",
            mode,
        )
        if reading is None and not copy.in_process:
            raise StepFailed(
                f"{ctx.server.name}: disk {source_name} can only be read on this machine, but its target "
                f"is written on {endpoint.host}; give the source as a path an agent can read"
            )
        return copy

    def summarize(
        self, ctx: StepContext, pairs: list[Any], stats: list[PassStats], started: float
    ) -> dict[str, Any]:
        disks = []
        for ((source_name, disk), _), stat in zip(pairs, stats, strict=True):
            item = {"source": source_name, "disk": disk.name, **asdict(stat)}
            item.pop("differing_ranges", None)
            disks.append(item)
            wire = getattr(stat, "wire_bytes", None)
            sent = (
                f"{format_size(wire)} on the wire (compression {stat.compression_ratio:.2f}x), "
                if isinstance(stat, RemotePassStats)
                else ""
            )
            ctx.event(
                f"{self.mode} {source_name} -> {disk.name}: {format_size(stat.bytes_written)} written, "
                f"{sent}{format_size(stat.zero_bytes_skipped)} skipped as zero, "
                f"{format_size(stat.unchanged_bytes_skipped)} unchanged, "
                f"{format_size(stat.resumed_bytes_skipped)} already there; digest {(stat.digest or '')[:16]}",
                disk=disk.name,
                bytes_written=stat.bytes_written,
                bytes_sent=wire if wire is not None else stat.bytes_written,
                zero=stat.zero_bytes_skipped,
                unchanged=stat.unchanged_bytes_skipped,
                resumed=stat.resumed_bytes_skipped,
                compression_ratio=getattr(stat, "compression_ratio", 1.0),
            )
        return {
            "mode": self.mode,
            "duration": time.time() - started,
            "disks": disks,
            "bytes_written": sum(s.bytes_written for s in stats),
            "bytes_read": sum(s.bytes_read for s in stats),
            "bytes_sent": sum(getattr(s, "wire_bytes", s.bytes_written) for s in stats),
        }

    def undo(self, ctx: StepContext) -> None:
        """A pass creates nothing of its own (the disks belong to create_disks), except the source's pass
        snapshot an interrupted pass left behind."""
        release_left_behind(ctx)


class Mirror(_MirrorPass):
    kind = "mirror"
    mode = "full"
    description = "full copy of every source disk while the source runs (zero chunks skipped, resumable)"


class Sync(_MirrorPass):
    kind = "sync"
    mode = "sync"
    description = "incremental pass: only chunks whose hash changed since the last pass"

    def pass_mode(self, ctx: StepContext) -> Mode:
        """`migrate sync --verify` asks for one verify pass instead (the request is used up here)."""
        key = f"{ctx.server.name}/pass_request"
        request = ctx.load_checkpoint(key)
        if request is None:
            return "incremental"
        ctx.checkpoint(key, None)
        return "verify" if request.get("mode") == "verify" else "incremental"


class FinalSync(_MirrorPass):
    kind = "final_sync"
    mode = "final"
    snapshot_each_pass = False  # quiesce_source holds the snapshot the final pass reads
    description = "last incremental pass with the source quiesced; then thaw unless it shuts down"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        """The source is thawed whatever happens, except after a good pass that the shutdown follows.

        A failed or interrupted pass thaws the source (users get their service back while someone
        looks) and notes it, so the re-run quiesces again before copying: the final pass is never
        taken from a live source by accident.
        """
        source = ctx.source()
        thawed_key = thawed_marker(ctx)
        state = quiesce_state(ctx)
        requiesced_at = None
        if ctx.load_checkpoint(thawed_key):
            requiesced_at = time.time()  # the service stops again here: measured downtime starts anew
            state = source.quiesce()
            ctx.checkpoint(thawed_key, None)
            ctx.event("source quiesced again for the final pass")
        elif state is not None and hasattr(source, "restore_quiesce_state"):
            source.restore_quiesce_state(state)  # after a restart: reads go to its snapshots again
        try:
            output = super().run(ctx)
        except BaseException as failure:
            ctx.checkpoint(thawed_key, {"at": time.time()})
            try:
                source.thaw(state)
            except Exception as thaw_failure:  # never hide the pass's own error behind the thaw's
                ctx.event(f"the source could not be thawed: {thaw_failure}", level="error")
            raise failure from None
        if not ctx.playbook.cutover_for(ctx.server).shutdown_source:
            source.thaw(state)
        return {**output, "requiesced_at": requiesced_at} if requiesced_at else output
