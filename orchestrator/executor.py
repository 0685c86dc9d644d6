"""Runs a Plan for real: ready steps in worker threads, under slots, with retries, cleanup and the journal.

The main thread owns the schedule; workers only run steps. Every transition is journaled before the next
one is taken, so ``kill -9`` loses at most the steps that were running (they are idempotent and run again),
and Ctrl-C stops at a safe point with exit 130 and nothing lost.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import networkx as nx

from orchestrator import audit, failpoints
from orchestrator.journal import Journal
from orchestrator.planner import Plan
from orchestrator.playbook.models import Playbook, Server
from orchestrator.playbook.secrets import redact
from orchestrator.scheduler import Scheduler, capacities
from orchestrator.steps import step_for
from orchestrator.steps.base import Cancelled, Resource, StepFailed, StepNode
from providers.base import Provider, ProviderError, Source


class Observer(Protocol):
    """What the command line (or a test) hears about a run; every method is optional to act on."""

    def step_started(self, node: StepNode) -> None: ...

    def step_finished(self, node: StepNode, state: str, error: str | None) -> None: ...

    def progress(self, node: StepNode, done: int, total: int, label: str, part: str = "") -> None: ...

    def event(self, node: StepNode | None, level: str, message: str) -> None: ...


class NullObserver:
    def step_started(self, node: StepNode) -> None:
        pass

    def step_finished(self, node: StepNode, state: str, error: str | None) -> None:
        pass

    def progress(self, node: StepNode, done: int, total: int, label: str, part: str = "") -> None:
        pass

    def event(self, node: StepNode | None, level: str, message: str) -> None:
        pass


@dataclass
class RunResult:
    status: str  # done | failed | cancelled | waiting
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    unreached: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return {"done": 0, "waiting": 0, "failed": 1, "cancelled": 130}[self.status]


class Resources:
    """Opens providers and sources once per run, on first use, shared by all steps (thread-safe)."""

    def __init__(
        self,
        playbook: Playbook,
        open_provider: Callable[[str, Any], Provider] | None = None,
        open_source: Callable[[Server, Mapping[str, Provider]], Source] | None = None,
    ) -> None:
        from providers import registry  # late: the registry imports optional provider packages

        self.playbook = playbook
        self._open_provider = open_provider or registry.open_provider
        self._open_source = open_source or registry.open_source
        self._providers: dict[str, Provider] = {}
        self._sources: dict[str, Source] = {}
        self._lock = threading.RLock()  # a source of type vm opens its provider while holding it

    def provider(self, name: str) -> Provider:
        with self._lock:
            if name not in self._providers:
                if name not in self.playbook.providers:
                    raise StepFailed(f"provider {name!r} is not defined in the playbook's providers")
                self._providers[name] = self._open_provider(name, self.playbook.providers[name])
            return self._providers[name]

    def source(self, server: Server) -> Source:
        with self._lock:
            if server.name not in self._sources:
                self._sources[server.name] = self._open_source(server, _LazyProviders(self))
            return self._sources[server.name]

    def close(self) -> None:
        """Close what is open; a later use opens it again (a cutover first undoes a test copy)."""
        with self._lock:
            items = [*self._providers.values(), *self._sources.values()]
            self._providers.clear()
            self._sources.clear()
        for item in items:
            with contextlib.suppress(Exception):
                item.close()


class _LazyProviders(Mapping[str, Provider]):
    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    def __getitem__(self, name: str) -> Provider:
        return self._resources.provider(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._resources.playbook.providers)

    def __len__(self) -> int:
        return len(self._resources.playbook.providers)


class _Context:
    """The StepContext a step sees: the journal and the executor stay behind it."""

    def __init__(self, executor: Executor, node: StepNode) -> None:
        self._x = executor
        self.node = node
        self.playbook = executor.playbook
        self.state_dir = executor.state_dir
        self.base_dir = executor.base_dir
        self._last_progress = 0.0
        self._parts: dict[str, dict[str, float]] = {}
        self._last_parts = 0.0

    @property
    def server(self) -> Server:
        if self.node.server is None:
            raise StepFailed(f"{self.node.id} is shared by several servers and has no server of its own")
        return self.playbook.server(self.node.server)

    def provider(self, name: str) -> Provider:
        """The provider behind an audit proxy: every call that changes the target is journaled."""
        config = self.playbook.providers.get(name)
        endpoint = audit.provider_endpoint(name, config)
        return audit.audited(self._x.resources.provider(name), endpoint, audit.PROVIDER_WRITES)

    def source(self) -> Source:
        """The source behind an audit proxy: quiesce, thaw, shutdown and start are journaled."""
        server = self.server
        source = self._x.resources.source(server)
        return audit.audited(source, audit.source_endpoint(server), audit.SOURCE_WRITES)

    def output(self, step_id: str) -> dict[str, Any]:
        output = self._x.journal.output(step_id)
        if output is None:
            raise KeyError(f"{step_id} has no output yet")
        return output

    def record_resource(self, kind: str, provider: str, ref: Mapping[str, Any]) -> None:
        self._x.journal.add_resource(self.node.id, kind, provider, ref)

    def resources(self, step_id: str | None = None) -> list[Resource]:
        return self._x.journal.resources(step_id or self.node.id)

    def forget_resource(self, resource: Resource) -> None:
        self._x.journal.remove_resource(resource)

    def checkpoint(self, key: str, value: Mapping[str, Any] | None) -> None:
        self._x.journal.checkpoint(key, value)

    def load_checkpoint(self, key: str) -> dict[str, Any] | None:
        return self._x.journal.load_checkpoint(key)

    def progress(self, done: int, total: int, *, unit: str = "B", label: str = "", part: str = "") -> None:
        self._x.observer.progress(self.node, done, total, label, part)
        now = time.monotonic()
        if part:
            self._part_progress(part, done, total, now)
        elif now - self._last_progress >= 1.0 or done >= total:
            self._last_progress = now
            self._x.journal.set_progress(self.node.id, done, total)

    def _part_progress(self, part: str, done: int, total: int, now: float) -> None:
        """Per-part progress (one disk of a pass) goes to a checkpoint `migrate status` reads, at most
        once a second; the rate is measured from when the part started, ETA follows from it."""
        record = self._parts.setdefault(part, {"started": time.time(), "done": 0, "total": total})
        record.update(done=done, total=total, updated=time.time())
        if now - self._last_parts >= 1.0 or all(r["done"] >= r["total"] for r in self._parts.values()):
            self._last_parts = now
            self._x.journal.checkpoint(f"progress/{self.node.id}", {"parts": self._parts})

    def event(self, message: str, *, level: str = "info", **data: Any) -> None:
        self._x.journal.event(self._x.run_id, self.node.id, level, message, data)
        self._x.observer.event(self.node, level, redact(message))

    def cancelled(self) -> bool:
        return self._x.cancel_event.is_set()


class Executor:
    def __init__(
        self,
        plan: Plan,
        playbook: Playbook,
        journal: Journal,
        *,
        state_dir: Path,
        base_dir: Path,
        resources: Resources | None = None,
        observer: Observer | None = None,
        max_workers: int = 16,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.plan = plan
        self.playbook = playbook
        self.journal = journal
        self.state_dir = state_dir
        self.base_dir = base_dir
        self.resources = resources or Resources(playbook)
        self.observer = observer or NullObserver()
        self.max_workers = max_workers
        self.cancel_event = threading.Event()
        self.run_id = 0
        self._sleep = sleep
        self.audit_sink = audit.JournalSink(journal, lambda: self.run_id)

    def _audited(self, function: Callable[[StepNode], None], node: StepNode) -> None:
        """Run a step's work in its audit scope: what it does to sources and targets is journaled."""
        with audit.scope(self.audit_sink, server=node.server, step_id=node.id):
            function(node)

    def cancel(self) -> None:
        """Ask running steps to stop at their next safe point (Ctrl-C, SIGTERM)."""
        self.cancel_event.set()

    # ------------------------------------------------------------ selection

    def select(
        self, phases: Iterable[str], servers: Iterable[str] | None = None, auto_cutover: bool = True
    ) -> set[str]:
        """The steps a command runs: its phases, for its servers (all when None).

        ``execute`` asks for the replicate phase and, where a server's cutover mode is auto, its cutover too.
        Shared nodes (appliances, wave barriers) are always in: one still used by a server outside this
        command simply waits, and the command reports it as waiting rather than failed.
        """
        wanted = set(phases)
        names = set(servers) if servers else set(self.plan.servers)
        auto = {s.name for s in self.playbook.servers if self.playbook.cutover_for(s).mode == "auto"}
        chosen: set[str] = set()
        for node in self.plan.steps():
            if node.phase == "cleanup":
                continue
            if node.server is None:
                if node.phase in wanted or (auto_cutover and node.phase == "cutover" and auto):
                    chosen.add(node.id)
                continue
            if node.server not in names:
                continue
            if node.phase in wanted or (auto_cutover and node.phase == "cutover" and node.server in auto):
                chosen.add(node.id)
        return chosen

    # ------------------------------------------------------------ the loop

    def run(self, selected: set[str], *, command: str) -> RunResult:
        self.run_id = self.journal.begin_run(command, self.plan.hash)
        states = self.journal.states()
        done = {n for n, s in states.items() if s == "done"}
        sched = Scheduler(self.plan.graph, selected, done, capacities(self.playbook.defaults.limits))
        finished: queue.Queue[tuple[str, str, str | None, dict[str, Any] | None]] = queue.Queue()
        timers: list[tuple[float, str]] = []
        result = RunResult(status="done")
        attempts: dict[str, int] = {}
        cleaned_servers: set[str] = set()
        limits = self.playbook.defaults.limits

        def work(node: StepNode) -> None:
            try:
                failpoints.hit("before", node.id)  # tests only: kill -9 at a step boundary
                if node.kind == "cleanup_on_error":
                    output: dict[str, Any] | None = {"undone": self._cleanup(node)}
                else:
                    output = step_for(node.kind).run(_Context(self, node))
                failpoints.hit("after", node.id)
                finished.put((node.id, "done", None, output))
            except Cancelled as exc:
                finished.put((node.id, "cancelled", str(exc), None))
            except (StepFailed, ProviderError) as exc:
                retry = getattr(exc, "retryable", False) and step_for(node.kind).retryable
                finished.put((node.id, "retry" if retry else "failed", str(exc), None))
            except OSError as exc:  # a full disk or a vanished file: the user can act on it, it is no bug
                where = f" ({exc.filename})" if exc.filename else ""
                finished.put((node.id, "failed", f"{exc.strerror or exc}{where}", None))
            except Exception as exc:
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                self.journal.event(self.run_id, node.id, "debug", traceback.format_exc())
                finished.put((node.id, "failed", f"internal error: {detail}", None))

        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="step") as pool:
            while True:
                if not self.cancel_event.is_set():
                    for node_id in sched.startable():
                        node = self.plan.node(node_id)
                        attempts[node_id] = attempts.get(node_id, 0) + 1
                        self.journal.set_state(node_id, "running", run_id=self.run_id)
                        self.observer.step_started(node)
                        pool.submit(self._audited, work, node)
                else:  # every time: a finishing step may have handed its slot to a waiter
                    result.cancelled.extend(sched.cancel_pending())
                    timers.clear()
                if sched.idle and not timers:
                    break
                timeout = max(0.0, min(t for t, _ in timers) - time.monotonic()) if timers else 0.5
                try:
                    node_id, state, error, output = finished.get(timeout=min(timeout, 0.5))
                except queue.Empty:
                    now = time.monotonic()
                    for due, node_id in [t for t in timers if t[0] <= now]:
                        timers.remove((due, node_id))
                        sched.unpark(node_id)
                    continue
                node = self.plan.node(node_id)
                if (
                    state == "retry"
                    and attempts[node_id] <= limits.retries
                    and not self.cancel_event.is_set()
                ):
                    delay = limits.retry_backoff * 2 ** (attempts[node_id] - 1)
                    self.journal.set_state(node_id, "pending", run_id=self.run_id, error=error)
                    self.journal.event(
                        self.run_id,
                        node_id,
                        "warning",
                        f"attempt {attempts[node_id]} failed, retrying in {delay:.0f}s: {error}",
                    )
                    self.observer.event(node, "warning", f"retrying in {delay:.0f}s: {redact(error or '')}")
                    sched.park(node_id)
                    timers.append((time.monotonic() + delay, node_id))
                    continue
                if state == "retry":
                    state = "failed"
                if state == "cancelled":
                    self.journal.set_state(node_id, "pending", run_id=self.run_id, error="interrupted")
                    sched.finish(node_id, ok=False)
                    result.cancelled.append(node_id)
                    self.observer.step_finished(node, "cancelled", None)
                    continue
                self.journal.set_state(node_id, state, run_id=self.run_id, output=output, error=error)
                self.observer.step_finished(node, state, redact(error) if error else None)
                if state == "done":
                    sched.finish(node_id, ok=True)
                    if node.kind == "cleanup_on_error":
                        result.cleaned.append(node_id)
                    else:
                        result.done.append(node_id)
                    continue
                result.failed[node_id] = redact(error or "failed")
                result.blocked.extend(sched.finish(node_id, ok=False))
                server = node.server
                if server and server not in cleaned_servers and node.kind != "cleanup_on_error":
                    cleaned_servers.add(server)
                    cleanup_id = f"{server}/cleanup_on_error"
                    if cleanup_id in self.plan.graph:
                        sched.add(cleanup_id)
        self.resources.close()
        result.cancelled = sorted(set(result.cancelled))
        result.unreached = [n for n in sched.unreached() if n not in result.cancelled]
        if self.cancel_event.is_set():
            result.status = "cancelled"
        elif result.failed:
            result.status = "failed"
        elif result.unreached:
            result.status = "waiting"
        self.journal.end_run(self.run_id, result.status)
        return result

    def _cleanup(self, node: StepNode) -> list[str]:
        """Undo the server's transient steps (appliance attachments, half-made replica) after a failure."""
        undone: list[str] = []
        for step_id in node.cleanup_of:
            record = self.journal.step(step_id)
            if record is None or (
                record.state not in ("done", "failed") and not self.journal.resources(step_id)
            ):
                continue
            target = self.plan.node(step_id)
            step_for(target.kind).undo(_Context(self, target))
            self.journal.set_state(step_id, "undone", run_id=self.run_id)
            undone.append(step_id)
        return undone

    def _forget_work_built_on(self, undone: list[str]) -> None:
        """Steps that built on what was just removed (a mirror into a deleted disk, staging on it) are
        done no more: they run again next time, and the pass history of a deleted replica goes too."""
        graph = self.plan.graph
        stale = set(undone).union(*(nx.descendants(graph, step_id) for step_id in undone))
        # What those steps stood on and is gone too (an appliance released at cutover) is needed again.
        emptied = self.journal.emptied_steps()
        stale |= {a for step_id in undone for a in nx.ancestors(graph, step_id) if a in emptied}
        states = self.journal.states()
        self.journal.reset(sorted(s for s in stale - set(undone) if states.get(s) in ("done", "failed")))
        for step_id in stale:
            node = self.plan.node(step_id)
            if node.kind == "create_disks" and node.server is not None:
                for key in ("last_pass", "passes"):
                    self.journal.checkpoint(f"{node.server}/{key}", None)

    def undo(self, step_ids: list[str]) -> tuple[list[str], dict[str, str]]:
        """Undo steps in the given (reverse dependency) order; the source is never touched."""
        self.run_id = self.journal.begin_run("undo", self.plan.hash)
        undone: list[str] = []
        errors: dict[str, str] = {}
        for step_id in step_ids:
            node = self.plan.node(step_id)
            try:
                with audit.scope(self.audit_sink, server=node.server, step_id=node.id):
                    step_for(node.kind).undo(_Context(self, node))
            except (StepFailed, ProviderError, OSError) as exc:
                errors[step_id] = redact(str(exc))
                self.journal.event(self.run_id, step_id, "error", f"undo failed: {exc}")
                continue
            self.journal.set_state(step_id, "undone", run_id=self.run_id)
            undone.append(step_id)
        self._forget_work_built_on(undone)
        self.resources.close()
        self.journal.end_run(self.run_id, "failed" if errors else "done")
        return undone, errors
