"""Steps of a data-only (files-and-folders) server: first mirror, difference passes, final pass.

The source is reached through the files agent over the server's SSH source login; the target is this
machine (``target_host: local``) or another files agent over SSH. Every pass journals its counts, problems
and orphans as events and output, marks ``<server>/last_pass`` and appends to ``<server>/passes``, so the
cutover gate, the sync clock, `migrate status` and the reports read data servers as they read VM servers.

What undo means here: the target is a running server that holds data of its own, so undo removes only what
this tool certainly made. The first pass journals each target root (the folder a source top lands in)
that did *not* exist before it; undo removes, under those roots only, the entries the rule set holds
(files and links; folders once empty), then the root if it is empty. A root that existed before the first
pass is never touched, so a file that was on the target before the migration is never deleted by undo.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.convergence import assess, record_pass
from orchestrator.steps.base import Cancelled, Step, StepContext, StepFailed
from orchestrator.steps.cutover import quiesce_state, thawed_marker

MAX_LISTED = 1000  # paths kept per list in the journal and the report; counts are always complete
CREATED_ROOT = "files_root"  # resource kind: a target root the first pass created


def _settings(ctx: StepContext) -> tuple[Any, Any, list[Any]]:
    from orchestrator.files.mirror import pairs_for
    from orchestrator.files.rules import RuleSet

    data = ctx.server.data
    if data is None:
        raise StepFailed(f"{ctx.server.name} has no data: section; this step is for data-only servers")
    rules = RuleSet.from_config(data.rules)
    try:
        pairs = pairs_for(rules, data.mapping, ctx.server.name, data.target_path, data.paths)
    except ValueError as exc:
        raise StepFailed(f"{ctx.server.name}: {exc}") from None
    return data, rules, pairs


def _target(ctx: StepContext) -> Any:
    from orchestrator.files.mirror import LocalTree, RemoteTree
    from orchestrator.mirror.errors import MirrorError
    from orchestrator.transport.ssh import SshTransport

    host = ctx.server.data.target_host  # type: ignore[union-attr]
    try:
        return LocalTree() if host == "local" else RemoteTree(SshTransport.from_source(host))
    except MirrorError as exc:
        raise StepFailed(f"target of {ctx.server.name}: {exc}", retryable=exc.retryable) from None


def _source(ctx: StepContext) -> Any:
    from orchestrator.files.mirror import RemoteTree
    from orchestrator.mirror.errors import MirrorError
    from orchestrator.transport.ssh import SshTransport

    try:
        return RemoteTree(SshTransport.from_source(ctx.server.source))
    except MirrorError as exc:
        raise StepFailed(f"source of {ctx.server.name}: {exc}", retryable=exc.retryable) from None


@contextmanager
def _ends(ctx: StepContext) -> Iterator[tuple[Any, Any]]:
    from orchestrator.mirror.errors import MirrorError

    source = _source(ctx)
    try:
        target = _target(ctx)
    except BaseException:
        source.close()
        raise
    try:
        yield source, target
    except MirrorError as exc:
        raise StepFailed(f"{ctx.server.name}: {exc}", retryable=exc.retryable) from None
    finally:
        source.close()
        target.close()


def _missing_roots(target: Any, pairs: list[Any]) -> list[int]:
    """The pairs whose target root does not exist yet (a scan with no rules lists the root alone)."""
    from orchestrator.files.rules import RuleSet

    entries, _ = target.scan([(p.target, p.source) for p in pairs], RuleSet([]), False)
    present = {index for index, entry in entries if entry.path == b""}
    return [index for index in range(len(pairs)) if index not in present]


def _journal_created_roots(ctx: StepContext, target: Any, pairs: list[Any]) -> None:
    """Before anything is written: the roots this pass will create, so undo can find them."""
    from orchestrator.files.mirror import shown

    known = {r.ref.get("path") for r in ctx.resources() if r.kind == CREATED_ROOT}
    for index in _missing_roots(target, pairs):
        path = shown(pairs[index].target)
        if path not in known:
            ctx.record_resource(
                CREATED_ROOT,
                "target",
                {"path": path, "raw": pairs[index].target.hex(), "source": pairs[index].source.hex()},
            )


def run_pass(ctx: StepContext, mode: str, *, verify_only: bool = False) -> dict[str, Any]:
    from orchestrator.files.mirror import Options, mirror_pass

    data, rules, pairs = _settings(ctx)
    # a verification compares every file's blocks, whatever its attributes say
    options = Options.from_data(data, compare="full_data" if verify_only else None)
    name = ctx.server.name
    if mode != "final" and not verify_only and (holder := _replicating(ctx)) is not None:
        return holder
    started = time.time()
    with _ends(ctx) as (source, target):
        if mode == "mirror" and not verify_only:
            _journal_created_roots(ctx, target, pairs)
        _check_cancel(ctx)
        result = mirror_pass(source, target, pairs, rules, options, verify_only=verify_only)
    finished = time.time()
    for problem in result.problems[:MAX_LISTED]:
        ctx.event(f"skipped {problem['path']}: {problem['message']}", level="warning")
    for path in result.unstable[:MAX_LISTED]:
        ctx.event(f"{path} kept changing while read; the next pass sends it again", level="warning")
    if result.orphans and not verify_only:
        ctx.event(
            f"{len(result.orphans)} orphan(s) on the target, {data.orphans}: "
            + ", ".join(result.orphans[:20])
        )
    output = _output(result, mode if not verify_only else "verify", started, finished)
    if verify_only:
        ctx.event(f"verify: {len(result.differences)} difference(s) between source and target")
        ctx.checkpoint(f"{name}/files_verify", output)  # status and reports read the last one
        return output
    ctx.event(
        f"{mode}: {result.files} files, {result.folders} folders, {result.files_sent} sent "
        f"({result.bytes_sent} bytes), {len(result.problems)} problem(s)"
    )
    entry = {
        "mode": "full" if mode == "mirror" else mode,
        "started_at": started,
        "finished_at": finished,
        "bytes_written": result.bytes_sent,
        "bytes_read": result.bytes_sent,
        "duration": finished - started,
    }
    ctx.checkpoint(f"{name}/last_pass", entry)
    ctx.checkpoint(f"{name}/files_last_pass", output)
    passes = record_pass((ctx.load_checkpoint(f"{name}/passes") or {}).get("passes"), entry)
    ctx.checkpoint(f"{name}/passes", {"passes": passes})
    verdict = assess(passes, interval=ctx.playbook.sync_for(ctx.server).interval, now=finished)
    output["convergence"] = verdict.state
    return output


def _check_cancel(ctx: StepContext) -> None:
    if ctx.cancelled():
        raise Cancelled(f"{ctx.node.id} interrupted")


def _output(result: Any, mode: str, started: float, finished: float) -> dict[str, Any]:
    """The pass as the journal keeps it: every count, and at most MAX_LISTED paths per list."""
    out = result.to_json()
    for key in ("orphans", "problems", "unstable", "differences"):
        items = out.get(key) or []
        if len(items) > MAX_LISTED:
            out[f"{key}_count"] = len(items)
            out[key] = items[:MAX_LISTED]
    out.update(
        mode=mode,
        started_at=started,
        finished_at=finished,
        duration=finished - started,
        bytes_written=result.bytes_sent,
    )
    return out


class MirrorFiles(Step):
    kind = "mirror_files"
    retryable = True
    description = "first files-and-folders pass into the target server (what arrived stays on a re-run)"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        return run_pass(ctx, "mirror")

    def undo(self, ctx: StepContext) -> None:
        """Remove, under the target roots the first pass created, what the rule set holds (see the module
        docstring); roots that existed before are left alone."""
        roots = [r for r in ctx.resources() if r.kind == CREATED_ROOT]
        if roots:
            remove_created(ctx, [bytes.fromhex(r.ref["raw"]) for r in roots], [r.ref for r in roots])
        for resource in ctx.resources():
            ctx.forget_resource(resource)


def remove_created(ctx: StepContext, targets: list[bytes], refs: list[Any]) -> None:
    from orchestrator.files.mirror import shown

    _, rules, pairs = _settings(ctx)
    by_target = {p.target: p for p in pairs}
    chosen = [by_target[t] for t in targets if t in by_target]
    if not chosen:
        return
    target = _target(ctx)
    try:
        entries, _ = target.scan([(p.target, p.source) for p in chosen], rules, False)
        # deepest first, each root last: a folder goes only once what the set held in it went
        members = sorted(
            ((i, e.path) for i, e in entries if e.member),
            key=lambda item: -(item[1].count(b"/") + (1 if item[1] else 0)),
        )
        apply = target.applier([p.target for p in chosen], False, False)
        for index, rel in members:
            apply((b"O", index, rel))
        problems, _ = apply.finish()
    finally:
        target.close()
    for index, rel, message in problems:
        ctx.event(f"undo: {shown(chosen[index].target + b'/' + rel)} not removed: {message}", level="warning")
    ctx.event(f"undo: removed {len(members)} entr(y/ies) the set held under {len(chosen)} created root(s)")


class SyncFiles(Step):
    kind = "sync_files"
    retryable = True
    description = "difference pass: only what changed on the source since the last pass travels"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        """`migrate sync --verify` asks for one verification instead (the request is used up here)."""
        key = f"{ctx.server.name}/pass_request"
        request = ctx.load_checkpoint(key)
        if request is not None:
            ctx.checkpoint(key, None)
            if request.get("mode") == "verify":
                return run_pass(ctx, "sync", verify_only=True)
        return run_pass(ctx, "sync")

    def undo(self, ctx: StepContext) -> None:
        """Nothing of its own: what it wrote lies under the roots mirror_files journaled."""


def _control(ctx: StepContext) -> Any:
    from orchestrator.files.replicate_control import ReplicationControl

    return ReplicationControl(ctx.state_dir, ctx.server.name)


def _replicating(ctx: StepContext) -> dict[str, Any] | None:
    """A pass and `migrate replicate` would write the same target files at once: while it runs, the
    passes before the cutover are skipped (it keeps the target current), with an event saying so."""
    from orchestrator.run_lock import describe

    holder = _control(ctx).live()
    if holder is None:
        return None
    ctx.event(
        f"pass skipped: {ctx.server.name} is replicated continuously by {describe(holder)}, which keeps "
        "the target current (stop it with Ctrl-C for a pass; `migrate cutover` stops it itself)",
        level="warning",
    )
    return {"skipped": "replicating", "replicator": holder}


POLL_SECONDS = 0.2


class DrainReplication(Step):
    kind = "drain_replication"
    description = (
        "when `migrate replicate` runs: wait (data.drain_timeout) for its queue to drain before the "
        "source's services stop, so the downtime holds only the last changes"
    )

    def run(self, ctx: StepContext) -> dict[str, Any]:
        from orchestrator.run_lock import describe

        control = _control(ctx)
        holder = control.live()
        if holder is None:
            return {"replicating": False}
        timeout = float(ctx.server.data.drain_timeout)  # type: ignore[union-attr]
        ctx.event(
            f"{describe(holder)} replicates {ctx.server.name}: waiting up to {timeout:.0f}s for its queue"
        )
        asked = time.time()
        deadline = time.monotonic() + timeout
        most = 0
        while control.live() is not None:
            status = control.status() or {}
            queued = int(status.get("queued", -1))
            fresh = float(status.get("at", 0)) >= asked
            if fresh and status.get("state") == "watching" and queued == 0:
                ctx.progress(most, most, unit="changes", label="replication queue")
                ctx.event("the replication queue is drained")
                return {"replicating": True, "drained": True, "waited": time.time() - asked}
            most = max(most, queued)
            ctx.progress(most - max(queued, 0), most, unit="changes", label="replication queue")
            if time.monotonic() > deadline:
                ctx.event(
                    f"the replication queue did not drain in {timeout:.0f}s ({queued} change(s) queued, "
                    f"state {status.get('state', '?')}): the source's services stop now and the final "
                    "pass sends the rest (raise data.drain_timeout to wait longer)",
                    level="warning",
                )
                return {"replicating": True, "drained": False, "queued": queued}
            _check_cancel(ctx)
            time.sleep(POLL_SECONDS)
        ctx.event("replication ended by itself while the cutover waited")
        return {"replicating": False}

    def undo(self, ctx: StepContext) -> None:
        """Nothing to undo: it only waited."""


def stop_replication(ctx: StepContext) -> dict[str, Any] | None:
    """Stop a running `migrate replicate` before the final pass (both writing the target would race):
    data.cutover_queue says whether the changes still queued are applied first (up to drain_timeout,
    then discarded with a warning) or discarded at once. Either way the final pass that follows finds and
    sends whatever they were."""
    from orchestrator.run_lock import describe

    control = _control(ctx)
    holder = control.live()
    if holder is None:
        return None
    data = ctx.server.data
    assert data is not None
    mode = data.cutover_queue
    control.ask_stop(mode)
    ctx.event(f"stopping {describe(holder)}: {mode} the changes still queued")
    deadline = time.monotonic() + float(data.drain_timeout)
    while control.live() is not None:
        if time.monotonic() > deadline:
            if mode == "discard":
                raise StepFailed(
                    f"{describe(holder)} did not stop for the cutover; stop it (Ctrl-C) and run "
                    "`migrate cutover` again",
                    retryable=True,
                )
            ctx.event(
                f"the source did not go idle in {data.drain_timeout:.0f}s: discarding what is still queued "
                "(the final pass sends it)",
                level="warning",
            )
            mode = "discard"
            control.ask_stop(mode)
            deadline = time.monotonic() + float(data.drain_timeout)
        _check_cancel(ctx)
        time.sleep(POLL_SECONDS)
    status = control.status() or {}
    discarded = int(status.get("discarded", 0))
    ctx.event(f"replication stopped ({mode}): {discarded} queued change(s) discarded")
    return {"mode": mode, "discarded": discarded}


class FinalFilesPass(Step):
    kind = "final_files_pass"
    retryable = True
    description = "last difference pass with the source's services stopped (they stay stopped after it)"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        """After a good pass the source stays quiesced: its services stopped, so nothing writes to data
        that now lives on the target (`migrate undo` starts them again). A failed pass thaws the source
        (users get their service back while someone looks) and the re-run quiesces again first.
        A running `migrate replicate` is stopped first (see stop_replication)."""
        stopped = stop_replication(ctx)
        if stopped is not None:
            ctx.checkpoint(f"{ctx.server.name}/replication_stopped", stopped)
        state = quiesce_state(ctx)
        if state is None:  # no quiesce configured: the pass copies what is there now
            return run_pass(ctx, "final")
        source = ctx.source()
        thawed_key = thawed_marker(ctx)
        if ctx.load_checkpoint(thawed_key):
            state = source.quiesce()
            ctx.checkpoint(thawed_key, None)
            ctx.checkpoint(f"{ctx.server.name}/requiesced", {"source_state": state})
            ctx.event("source quiesced again for the final pass")
        ctx.record_resource("source_quiesced", "source", {"server": ctx.server.name})
        try:
            output = run_pass(ctx, "final")
        except BaseException as failure:
            ctx.checkpoint(thawed_key, {"at": time.time()})
            try:
                source.thaw(state)
                for resource in ctx.resources():
                    ctx.forget_resource(resource)
            except Exception as thaw_failure:  # never hide the pass's own error behind the thaw's
                ctx.event(f"the source could not be thawed: {thaw_failure}", level="error")
            raise failure from None
        ctx.event("the source stays quiesced: its data now lives on the target")
        return output

    def undo(self, ctx: StepContext) -> None:
        """Start again what quiesce stopped for the final pass (this tool stopped it)."""
        for resource in ctx.resources():
            again = ctx.load_checkpoint(f"{ctx.server.name}/requiesced")
            ctx.source().thaw(again["source_state"] if again else quiesce_state(ctx))
            ctx.forget_resource(resource)
