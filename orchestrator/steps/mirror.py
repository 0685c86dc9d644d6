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
from pathlib import Path
from typing import Any, ClassVar

from orchestrator.convergence import assess, record_pass
from orchestrator.mirror.copier import PassStats, mirror_disk
from orchestrator.mirror.errors import MirrorCancelled, MirrorError
from orchestrator.mirror.throttle import Throttle
from orchestrator.planner import source_host
from orchestrator.steps.base import Cancelled, Step, StepContext, StepFailed
from orchestrator.steps.common import endpoints, replica_disks
from orchestrator.steps.guest import reapply_staged_state

_throttles: dict[str, Throttle] = {}
_throttles_lock = threading.Lock()
MAX_DISKS_AT_ONCE = 4


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

    def run(self, ctx: StepContext) -> dict[str, Any]:
        options = ctx.playbook.mirror_for(ctx.server)
        source = ctx.source()
        pairs = list(zip(replica_disks(ctx), endpoints(ctx), strict=True))
        for (_, _disk), endpoint in pairs:
            if endpoint.kind != "file" or endpoint.host != "local":
                raise StepFailed(
                    f"endpoint {endpoint.kind} on {endpoint.host} needs the remote agent, which "
                    "this build does not have yet; use a provider with appliance: host"
                )
        totals = {e.path: 0 for _, e in pairs}
        sizes = sum(e.size for _, e in pairs)
        lock = threading.Lock()
        throttle = shared_throttle(ctx)

        def one(pair: tuple[tuple[str, Any], Any]) -> PassStats:
            (source_name, _disk), endpoint = pair

            def progress(done: int, _total: int) -> None:
                with lock:
                    totals[endpoint.path] = done
                    ctx.progress(sum(totals.values()), sizes, label=f"{self.mode} {ctx.server.name}")

            reader = source.open_disk(source_name)
            try:
                return mirror_disk(
                    reader,
                    Path(endpoint.path),
                    chunk_size=options.chunk_size,
                    mode=self.pass_mode(),
                    throttle=throttle,
                    progress=progress,
                    cancelled=ctx.cancelled,
                    source_identity=f"{ctx.server.name}:{source_name}",
                    verify=options.verify,
                )
            finally:
                reader.close()

        started = time.time()
        try:
            with ThreadPoolExecutor(max_workers=min(MAX_DISKS_AT_ONCE, len(pairs)) or 1) as pool:
                stats = list(pool.map(one, pairs))
        except MirrorCancelled as exc:
            raise Cancelled(str(exc)) from None
        except MirrorError as exc:
            raise StepFailed(str(exc), retryable=getattr(exc, "retryable", False)) from None
        output = self.summarize(ctx, pairs, stats, started)
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

    def pass_mode(self) -> str:
        return "full" if self.mode == "full" else "incremental"

    def summarize(
        self, ctx: StepContext, pairs: list[Any], stats: list[PassStats], started: float
    ) -> dict[str, Any]:
        disks = []
        for ((source_name, disk), _), stat in zip(pairs, stats, strict=True):
            item = {"source": source_name, "disk": disk.name, **asdict(stat)}
            item.pop("differing_ranges", None)
            disks.append(item)
            ctx.event(
                f"{self.mode} {source_name} -> {disk.name}: {stat.bytes_written} B written, "
                f"{stat.zero_bytes_skipped} B zero, {stat.unchanged_bytes_skipped} B unchanged, "
                f"{stat.resumed_bytes_skipped} B already there; digest {stat.digest[:16]}",
                bytes_written=stat.bytes_written,
                zero=stat.zero_bytes_skipped,
                unchanged=stat.unchanged_bytes_skipped,
            )
        return {
            "mode": self.mode,
            "duration": time.time() - started,
            "disks": disks,
            "bytes_written": sum(s.bytes_written for s in stats),
            "bytes_read": sum(s.bytes_read for s in stats),
        }

    def undo(self, ctx: StepContext) -> None:
        """A pass creates nothing of its own: the disks belong to create_disks."""


class Mirror(_MirrorPass):
    kind = "mirror"
    mode = "full"
    description = "full copy of every source disk while the source runs (zero chunks skipped, resumable)"


class Sync(_MirrorPass):
    kind = "sync"
    mode = "sync"
    description = "incremental pass: only chunks whose hash changed since the last pass"


class FinalSync(_MirrorPass):
    kind = "final_sync"
    mode = "final"
    description = "last incremental pass with the source quiesced; then thaw unless it shuts down"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        try:
            return super().run(ctx)
        finally:
            if not ctx.playbook.cutover_for(ctx.server).shutdown_source:
                ctx.source().thaw()
