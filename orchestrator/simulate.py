"""The dry run: the plan's own graph, through the executor's own Scheduler, in virtual time.

A prediction is only worth reading if it orders and throttles steps exactly as a real run would, so the
simulator does not model the executor: it drives the very `Scheduler` the executor drives (same slots,
same priorities) and only replaces "run the step" with "its cost under `defaults.simulation`". Time is a
number advanced by a heap of completion events; nothing sleeps, and nothing outside this process is
touched: no provider, no source, no file beyond ``stat()`` of image sources (which reads no data).

Data steps (mirror, sync, final sync) are fluid flows rather than fixed delays: the steps of one source
host share its link and its bandwidth limit equally, and every flow's rate is recomputed whenever one of
them starts or ends and whenever the bandwidth schedule turns a page. That is what makes "limit 20 MiB/s
on weekdays" or "per_source_host: 4" visible in the predicted duration.
"""

from __future__ import annotations

import gc
import heapq
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from orchestrator.mirror.throttle import Window, limit_at, next_change
from orchestrator.planner import Plan, source_host
from orchestrator.playbook.models import ImageSource, Playbook, Server, SimulationModel
from orchestrator.playbook.units import format_size
from orchestrator.report.model import FindingView, RunReport, ServerSummary, StepTiming, utc_now_iso
from orchestrator.scheduler import Scheduler, capacities
from orchestrator.steps.base import StepNode

GiB = 1024**3
DEFAULT_DISK = 100 * GiB
DEFAULT_ZERO_FRACTION = 0.5
DATA_KINDS = frozenset({"mirror", "sync", "final_sync", "mirror_files", "sync_files", "final_files_pass"})
# A data-only server's passes: each kind costed as its disk counterpart, plus a per-file cost expressed as
# link bytes (opening, creating and setting the attributes of a file on a first pass; comparing the two
# scans' entries on a difference pass).
FILES_KIND_AS = {"mirror_files": "mirror", "sync_files": "sync", "final_files_pass": "final_sync"}
FILE_FIRST_PASS_BYTES = 32 * 1024
FILE_SCAN_BYTES = 512
DEFAULT_FILES = 10_000  # a data-only server with no estimate and no earlier pass to read
# Costs the cost model has no field for: small next to any data step, so fixed figures are good enough.
VALIDATE_SECONDS = 1.0
DISCOVER_SECONDS = 5.0
SCRIPT_SECONDS = 30.0
DNS_CHECK_SECONDS = 1.0  # one signed no-op update per zone, before anything stops
POWER_ON_SECONDS = 5.0  # the power-on call itself; the rest of replica_boot is verify waiting for the guest
UNKNOWN_KIND_SECONDS = 1.0
MAX_NAMES_IN_NOTE = 5

_FINISH = 0
_LIMIT = 1


@dataclass(frozen=True)
class SizeInfo:
    """What the simulator knows about one source's disks.

    ``used`` is the bytes of each disk that hold data, which is what a full mirror reads, sends and
    writes (zero chunks are skipped); when it is None, ``zero_fraction`` (else the playbook's
    ``simulation.zero_fraction``, else 0.5) of each disk is taken to be zeros.
    """

    disks: list[int]
    used: list[int] | None = None
    zero_fraction: float | None = None
    files: int | None = None  # a data-only server's set: files and folders

    def data_bytes(self, default_zero_fraction: float) -> int:
        if self.used is not None:
            return sum(min(u, d) for u, d in zip(self.used, self.disks, strict=False))
        zeros = self.zero_fraction if self.zero_fraction is not None else default_zero_fraction
        return int(sum(self.disks) * (1.0 - zeros))


@dataclass
class Simulation:
    """The outcome of a dry run: the report every renderer shows, and what the prediction assumed."""

    report: RunReport
    duration: float
    sizes: dict[str, SizeInfo] = field(default_factory=dict)
    size_origin: dict[str, str] = field(default_factory=dict)  # server -> given|estimate|image|assumed


def simulate(
    plan: Plan,
    playbook: Playbook,
    *,
    selected: set[str] | None = None,
    source_sizes: Mapping[str, SizeInfo] | None = None,
    findings: Iterable[Any] = (),
    base_dir: Path | None = None,
) -> Simulation:
    """Run ``selected`` steps (default: every replicate and cutover step) in virtual time.

    Steps of the plan that are not selected count as already done, so simulating only the cutover
    predicts a cutover of servers that are already replicated. ``base_dir`` resolves relative image
    paths (the loader makes them absolute, so it rarely matters).
    """
    with _collector_paused():
        return _Simulator(plan, playbook, selected, source_sizes or {}, base_dir).run(findings)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """A 200,000-step run allocates millions of objects that all stay alive until the report is built;
    letting the cyclic collector rescan them over and over doubles the run time, and nothing made here
    is garbage before the end."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# ---------------------------------------------------------------- sizes


def resolve_sizes(
    playbook: Playbook,
    given: Mapping[str, SizeInfo],
    base_dir: Path | None = None,
) -> tuple[dict[str, SizeInfo], dict[str, str], list[str]]:
    """Each server's disks: given, else its ``estimate``, else its image files' metadata, else assumed.

    Returns sizes, where each came from, and notes about anything that could not be read.
    """
    sim = playbook.defaults.simulation
    sizes: dict[str, SizeInfo] = {}
    origin: dict[str, str] = {}
    problems: list[str] = []
    for server in playbook.servers:
        name = server.name
        if name in given:
            sizes[name], origin[name] = given[name], "given"
        elif server.data is not None:
            sizes[name], origin[name] = _data_sizes(server, sim)
        elif server.estimate is not None:
            disks = [int(d) for d in server.estimate.disks]
            used = [int(d * server.estimate.used_fraction) for d in disks]
            sizes[name], origin[name] = SizeInfo(disks, used), "estimate"
        elif isinstance(server.source, ImageSource):
            try:
                sizes[name] = _image_sizes(server.source, base_dir, sim)
                origin[name] = "image"
            except OSError as exc:
                problems.append(f"{name}: image not readable ({exc.strerror or exc}), size assumed")
                sizes[name], origin[name] = _assumed(sim), "assumed"
        else:
            sizes[name], origin[name] = _assumed(sim), "assumed"
    return sizes, origin, problems


def _data_sizes(server: Server, sim: SimulationModel) -> tuple[SizeInfo, str]:
    """A data-only server's set, from its estimate (data_bytes and files, else disks x used_fraction)."""
    estimate = server.estimate
    if estimate is None:
        assumed = _assumed(sim)
        return SizeInfo(assumed.disks, assumed.used, assumed.zero_fraction, DEFAULT_FILES), "assumed"
    total = (
        int(estimate.data_bytes)
        if estimate.data_bytes is not None
        else int(sum(estimate.disks) * estimate.used_fraction)
    )
    files = estimate.files if estimate.files is not None else DEFAULT_FILES
    return SizeInfo([total], [total], None, files), "estimate"


def _assumed(sim: SimulationModel) -> SizeInfo:
    zeros = sim.zero_fraction if sim.zero_fraction is not None else DEFAULT_ZERO_FRACTION
    return SizeInfo([DEFAULT_DISK], None, zeros)


def _image_sizes(source: ImageSource, base_dir: Path | None, sim: SimulationModel) -> SizeInfo:
    """Sizes from ``stat``: apparent size, and allocated blocks as the data a sparse-aware copy moves."""
    disks: list[int] = []
    used: list[int] = []
    for index, path in enumerate([source.path, *source.extra_disks]):
        full = path if path.is_absolute() or base_dir is None else base_dir / path
        info = os.stat(full)
        size = max(info.st_size, int(source.size or 0)) if index == 0 else info.st_size
        disks.append(size)
        used.append(min(info.st_blocks * 512, info.st_size))
    if sim.zero_fraction is not None:  # the playbook's explicit figure wins over what stat suggests
        return SizeInfo(disks, None, sim.zero_fraction)
    return SizeInfo(disks, used)


# ---------------------------------------------------------------- the simulator


@dataclass(slots=True)
class _ServerModel:
    name: str
    disks: list[int]
    data_bytes: int  # what a full mirror moves (uncompressed)
    wire_ratio: float  # wire bytes per data byte
    change_rate: float
    sync_interval: float
    group: str  # the source host whose link and limit it shares
    dns_ttl: int
    n_disks: int
    files: int = 0  # a data-only server's files and folders (0 for a VM server)


@dataclass(slots=True)
class _Flow:
    """A running data step: how much is left and how fast it goes since ``since``."""

    node: str
    group: str
    remaining: float  # data bytes still to move
    wire_ratio: float
    rate: float = 0.0  # data bytes per second
    since: float = 0.0
    version: int = 0


@dataclass(slots=True)
class _Record:
    """Everything the loop and the report need about one selected step, behind a single lookup."""

    step: StepNode
    model: _ServerModel | None
    cost: float  # seconds, for steps that are not data flows
    is_flow: bool
    start: float = -1.0
    end: float = -1.0
    cause: str | None = None
    bytes: int = 0
    wire: float = 0.0
    flow: _Flow | None = None


class _Simulator:
    def __init__(
        self,
        plan: Plan,
        playbook: Playbook,
        selected: set[str] | None,
        source_sizes: Mapping[str, SizeInfo],
        base_dir: Path | None,
    ) -> None:
        self.plan = plan
        self.playbook = playbook
        self.sim = sim = playbook.defaults.simulation
        self.graph = plan.graph
        steps: dict[str, StepNode] = dict(self.graph.nodes(data="step"))
        self.steps = steps
        if selected is None:
            chosen = [n for n, s in steps.items() if s.phase not in ("cleanup", "test")]
        else:
            unknown = sorted(n for n in selected if n not in steps)
            if unknown:
                raise ValueError(
                    f"not steps of this plan: {', '.join(unknown[:5])}; `migrate plan` lists the step ids"
                )
            chosen = [n for n in steps if n in selected and steps[n].phase != "cleanup"]
        for name in ("link_bandwidth", "disk_read", "disk_write"):
            if getattr(sim, name) <= 0:
                raise ValueError(
                    f"simulation.{name} must be above zero to move any data; set it in the playbook"
                )
        try:
            self.origin = datetime.fromisoformat(sim.start_time)
        except ValueError:
            raise ValueError(
                f"simulation.start_time {sim.start_time!r} is not a date and time; write it like "
                "2026-01-05T20:00"
            ) from None
        self.sizes, self.size_origin, self.size_problems = resolve_sizes(playbook, source_sizes, base_dir)
        self.servers = {s.name: self._server_model(s) for s in playbook.servers}
        self._setup_bandwidth()

        self.records: dict[str, _Record] = {}
        for node in chosen:
            step = steps[node]
            model = self.servers[step.server] if step.server is not None else None
            is_flow = step.kind in DATA_KINDS and model is not None
            cost = 0.0 if is_flow else self.fixed_cost(step.kind, model)
            self.records[node] = _Record(step, model, cost, is_flow)
        self.flows: dict[str, dict[str, _Flow]] = {}  # group -> running flows
        self.running_flows = 0
        self.released_by: dict[tuple[str, str], str] = {}  # slot -> the step that last gave a unit back
        self.series: list[tuple[float, float]] = []
        self.total_wire_rate = 0.0
        self.group_wire_rate: dict[str, float] = {}
        self.events: list[tuple[float, int, int, str, int]] = []
        self.seq = 0

    # ------------------------------------------------------------ inputs

    def _server_model(self, server: Server) -> _ServerModel:
        size = self.sizes[server.name]
        disks = list(size.disks)
        used = list(size.used) if size.used is not None else None
        if server.target is not None and server.target.disks and len(server.target.disks) < len(disks):
            # Only the mapped disks are copied; maps name source disks, matched here by position.
            keep = len(server.target.disks)
            disks, used = disks[:keep], used[:keep] if used is not None else None
        zeros = self.sim.zero_fraction if self.sim.zero_fraction is not None else DEFAULT_ZERO_FRACTION
        data = SizeInfo(disks, used, size.zero_fraction).data_bytes(zeros)
        mirror = self.playbook.mirror_for(server)
        estimate = server.estimate
        change = (
            estimate.change_rate if estimate and estimate.change_rate is not None else self.sim.change_rate
        )
        return _ServerModel(
            name=server.name,
            disks=disks,
            data_bytes=data,
            wire_ratio=1.0 if mirror.compression == "none" else self.sim.compression_ratio,
            change_rate=float(change),
            sync_interval=float(self.playbook.sync_for(server).interval),
            group=source_host(server),
            dns_ttl=max((r.ttl for r in server.dns_records), default=0),
            n_disks=max(1, len(disks)),
            files=(size.files or 0) if server.data is not None else 0,
        )

    def _setup_bandwidth(self) -> None:
        """One limit per source host, from the first server on it, as the mirror's shared throttle does."""
        self.group_config: dict[str, int] = {}
        configs: list[tuple[int | None, tuple[Window, ...]]] = []
        index_of: dict[int, int] = {}  # id of a Bandwidth object -> its index in configs
        for server in self.playbook.servers:
            group = self.servers[server.name].group
            if group in self.group_config:
                continue
            bandwidth = self.playbook.mirror_for(server).bandwidth
            if id(bandwidth) not in index_of:
                index_of[id(bandwidth)] = len(configs)
                configs.append((bandwidth.limit, tuple(Window.parse(w) for w in bandwidth.schedule)))
            self.group_config[group] = index_of[id(bandwidth)]
        self.configs = configs
        self.limits: list[float] = [0.0] * len(configs)
        self._refresh_limits(0.0)

    def _refresh_limits(self, t: float) -> float | None:
        """Limits in force at virtual time ``t``; returns when the next schedule boundary falls."""
        when = self.origin + timedelta(seconds=t)
        upcoming: list[datetime] = []
        for i, (base, windows) in enumerate(self.configs):
            limit = limit_at(when, base, windows)
            self.limits[i] = float("inf") if limit is None else float(limit)
            change = next_change(when, windows)
            if change is not None:
                upcoming.append(change)
        if not upcoming:
            return None
        return (min(upcoming) - self.origin).total_seconds()

    # ------------------------------------------------------------ costs

    def fixed_cost(self, kind: str, server: _ServerModel | None) -> float:
        sim = self.sim
        n = server.n_disks if server else 1
        if kind == "provision_appliance":
            return float(sim.appliance_boot)
        if kind == "create_disks":
            return float(sim.disk_create) * n
        if kind in ("attach_disks", "detach_disks"):
            return float(sim.disk_attach) * n
        if kind == "quiesce_source":
            return float(sim.quiesce)
        if kind == "shutdown_source":
            return float(sim.source_shutdown)
        if kind in ("create_replica", "release_appliance"):
            return float(sim.vm_create)
        if kind == "power_on_replica":
            return min(POWER_ON_SECONDS, float(sim.replica_boot))
        if kind == "verify_replica":
            return max(0.0, float(sim.replica_boot) - POWER_ON_SECONDS)
        if kind in ("stage_system_state", "remap_nics"):
            return float(sim.staging)
        if kind == "update_dns":
            return float(sim.dns_update)
        if kind == "check_dns":
            return DNS_CHECK_SECONDS
        if kind in ("run_pre_script", "run_post_script"):
            return SCRIPT_SECONDS
        if kind == "validate":
            return VALIDATE_SECONDS
        if kind == "discover_source":
            return DISCOVER_SECONDS
        if kind in ("cutover_gate", "barrier", "drain_replication"):
            return 0.0
        return UNKNOWN_KIND_SECONDS

    def data_bytes(self, kind: str, server: _ServerModel, t: float) -> int:
        """Bytes a data step moves, decided when it starts (as the real pass decides from the block map)."""
        if kind in FILES_KIND_AS:
            per_file = FILE_FIRST_PASS_BYTES if kind == "mirror_files" else FILE_SCAN_BYTES
            return self._files_bytes(kind, server, t) + server.files * per_file
        if kind == "mirror":
            return server.data_bytes
        name, records = server.name, self.records
        if kind == "sync":
            mirror = records.get(f"{name}/mirror")
            window = t - mirror.start if mirror is not None else server.sync_interval
        else:  # final_sync: what changed between the last pass and the moment writes stopped
            last = records.get(f"{name}/sync") or records.get(f"{name}/mirror")
            quiesce = records.get(f"{name}/quiesce_source")
            stopped = quiesce.start if quiesce is not None else t
            interval = server.sync_interval
            window = min(stopped - last.end, interval) if last is not None else interval
        return int(min(server.change_rate * max(0.0, window), server.data_bytes))

    def _files_bytes(self, kind: str, server: _ServerModel, t: float) -> int:
        """A files pass's data, costed as its disk counterpart over the files kinds' own records."""
        name, records = server.name, self.records
        if kind == "mirror_files":
            return server.data_bytes
        if kind == "sync_files":
            mirror = records.get(f"{name}/mirror_files")
            window = t - mirror.start if mirror is not None else server.sync_interval
        else:
            last = records.get(f"{name}/sync_files") or records.get(f"{name}/mirror_files")
            quiesce = records.get(f"{name}/quiesce_source")
            stopped = quiesce.start if quiesce is not None else t
            interval = server.sync_interval
            window = min(stopped - last.end, interval) if last is not None else interval
        return int(min(server.change_rate * max(0.0, window), server.data_bytes))

    # ------------------------------------------------------------ the event loop

    def _push(self, t: float, kind: int, node: str, version: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, node, version))

    def run(self, findings: Iterable[Any]) -> Simulation:
        """The event loop; written flat (locals, few calls of its own) because it runs once per step."""
        records, graph = self.records, self.graph
        sched = Scheduler(
            graph,
            records,
            [n for n in self.steps if n not in records],
            capacities(self.playbook.defaults.limits),
        )
        next_boundary = self._refresh_limits(0.0)
        if next_boundary is not None:
            self._push(next_boundary, _LIMIT, "", 0)
        pred = graph.pred
        events, released_by, flows = self.events, self.released_by, self.flows
        push, pop = heapq.heappush, heapq.heappop
        dirty: set[str] = set()
        t = 0.0
        while True:
            for node in sched.startable():
                rec = records[node]
                rec.start = t
                # Why now: its last predecessor, or (ready earlier) the step that freed one of its slots.
                last, last_end = None, -1.0
                for p in pred[node]:
                    other = records.get(p)
                    if other is not None and other.end > last_end:
                        last, last_end = p, other.end
                if last is None or last_end < t:
                    for slot in rec.step.slots:
                        releaser = released_by.get(slot)
                        if releaser is not None and records[releaser].end == t:
                            last = releaser
                            break
                rec.cause = last
                if not rec.is_flow:
                    self.seq += 1
                    push(events, (t + rec.cost, self.seq, _FINISH, node, 0))
                    continue
                model = rec.model
                assert model is not None
                rec.bytes = self.data_bytes(rec.step.kind, model, t)
                rec.wire = rec.bytes * model.wire_ratio
                rec.flow = _Flow(node, model.group, float(rec.bytes), model.wire_ratio, since=t)
                flows.setdefault(model.group, {})[node] = rec.flow
                self.running_flows += 1
                dirty.add(model.group)
            for group in dirty:
                self._reflow(group, t)
            dirty.clear()
            if not sched.running:
                break
            t, _, kind, node, version = pop(events)
            while True:
                if kind == _LIMIT:
                    upcoming = self._refresh_limits(t)
                    if upcoming is not None:
                        self._push(upcoming, _LIMIT, "", 0)
                    dirty.update(g for g, running in flows.items() if running)
                else:
                    rec = records[node]
                    flow = rec.flow
                    # A reflow of its group supersedes a data step's earlier end events.
                    if (flow.version == version) if flow is not None else rec.end < 0:
                        if flow is not None:
                            rec.flow = None
                            del flows[flow.group][node]
                            self.running_flows -= 1
                            dirty.add(flow.group)
                        rec.end = t
                        sched.finish(node, ok=True)
                        for slot in rec.step.slots:
                            released_by[slot] = node
                if not events or events[0][0] != t:
                    break
                t, _, kind, node, version = pop(events)
        return self._simulation(findings)

    def _reflow(self, group: str, t: float) -> None:
        """Share the group's link and limit among its running data steps; reschedule their ends."""
        flows = self.flows.get(group)
        old = self.group_wire_rate.get(group, 0.0)
        new = 0.0
        if flows:
            sim = self.sim
            share = min(float(sim.link_bandwidth), self.limits[self.group_config[group]]) / len(flows)
            disk = float(min(sim.disk_read, sim.disk_write))
            for flow in flows.values():
                flow.remaining = max(0.0, flow.remaining - flow.rate * (t - flow.since))
                flow.since = t
                flow.rate = min(disk, share / flow.wire_ratio)
                flow.version += 1
                new += flow.rate * flow.wire_ratio
                self._push(t + flow.remaining / flow.rate, _FINISH, flow.node, flow.version)
        self.group_wire_rate[group] = new
        if new != old:
            self.total_wire_rate = self.total_wire_rate + new - old if self.running_flows else 0.0
            rate = max(0.0, self.total_wire_rate)
            if self.series and self.series[-1][0] == t:
                self.series[-1] = (t, rate)
            else:
                self.series.append((t, rate))

    # ------------------------------------------------------------ the report

    def _critical_path(self) -> list[str]:
        finished = [(rec.end, node) for node, rec in self.records.items() if rec.end >= 0]
        if not finished:
            return []
        path: list[str] = []
        node: str | None = max(finished)[1]
        seen: set[str] = set()
        while node is not None and node not in seen:
            seen.add(node)
            path.append(node)
            node = self.records[node].cause
        path.reverse()
        return path

    def _simulation(self, findings: Iterable[Any]) -> Simulation:
        records = self.records
        duration = max((rec.end for rec in records.values()), default=0.0)
        critical = self._critical_path()
        on_path = set(critical)
        timings: list[StepTiming] = []
        per_server: dict[str, list[StepTiming]] = {}
        totals: dict[str, int] = {}
        for node, step in self.steps.items():
            if step.server is not None and step.phase != "cleanup":
                totals[step.server] = totals.get(step.server, 0) + 1
            rec = records.get(node)
            if rec is None or rec.end < 0:
                continue
            message = (
                f"{format_size(rec.bytes)} of data, {format_size(rec.wire)} on the wire"
                if rec.is_flow
                else ""
            )
            timing = StepTiming(
                node, step.server, step.kind, step.phase, "done", rec.start, rec.end, rec.bytes, 1, message,
                node in on_path,
            )  # fmt: skip
            timings.append(timing)
            if step.server is not None:
                per_server.setdefault(step.server, []).append(timing)
        summaries = [
            self._summary(server, per_server.get(server.name, []), totals.get(server.name, 0))
            for server in self.playbook.servers
        ]
        series = self.series
        if series and series[-1][1] != 0.0:
            series.append((duration, 0.0))
        report = RunReport(
            kind="simulation",
            title=f"{self.playbook.name}: simulated migration",
            playbook=self.plan.playbook_name or self.playbook.name,
            plan_hash=self.plan.hash,
            generated_at=utc_now_iso(),
            started_at=self.origin.isoformat(timespec="minutes"),
            duration=duration,
            servers=summaries,
            steps=timings,
            findings=[_finding_view(f) for f in findings],
            bytes_moved=sum(t.bytes for t in timings),
            peak_bandwidth=max((rate for _, rate in series), default=0.0),
            bandwidth_series=series,
            critical_path=critical,
            notes=self._notes(),
        )
        return Simulation(report, duration, self.sizes, self.size_origin)

    def _summary(self, server: Server, timings: list[StepTiming], total: int) -> ServerSummary:
        model = self.servers[server.name]
        by_kind = {t.kind: t for t in timings}
        state = "planned"
        for kind, word in (
            ("verify_replica", "cut over"),
            ("final_files_pass", "cut over"),
            ("remap_nics", "ready for cutover"),
            ("sync_files", "ready for cutover"),
            ("mirror", "replicating"),
            ("mirror_files", "replicating"),
            ("discover_source", "preparing"),
        ):
            if kind in by_kind:
                state = word
                break
        breakdown = _downtime(by_kind, model.dns_ttl)
        starts = [t.start for t in timings if t.start is not None]
        ends = [t.end for t in timings if t.end is not None]
        source = server.source
        where = getattr(source, "host", None) or getattr(source, "path", None) or getattr(source, "vm", "")
        return ServerSummary(
            name=server.name,
            source=f"{source.type}:{where}",
            target=_target_label(server),
            state=state,
            steps_done=len(timings),
            steps_total=total,
            bytes_total=sum(model.disks),
            bytes_moved=sum(t.bytes for t in timings),
            duration=(max(ends) - min(starts)) if starts and ends else None,
            downtime_estimate=sum(breakdown.values()) if breakdown else None,
            downtime_breakdown=breakdown,
        )

    def _notes(self) -> list[str]:
        sim = self.sim
        notes = [
            f"virtual clock starts {self.origin.isoformat(timespec='minutes')} (simulation.start_time); "
            "bandwidth schedules apply by that clock",
            "cutover gates open as soon as they are reached (a manual cutover is assumed to follow at once); "
            f"pre/post scripts take {SCRIPT_SECONDS:.0f}s each",
            f"bandwidth figures are bytes on the wire: data x {sim.compression_ratio:g} "
            "(simulation.compression_ratio; 1 without compression); step and server bytes are data written",
            "the data steps of one source host share its link and bandwidth limit equally; rates are "
            "recomputed whenever one starts or ends and at every schedule boundary",
            "a sync moves what changed since its mirror started, a final sync what changed between the "
            "last pass and quiesce (at most one sync.interval), both at simulation.change_rate or the "
            "server's estimate",
        ]
        data = [s.name for s in self.playbook.servers if s.data is not None]
        if data:
            notes.append(
                f"{_count(data, 'data-only server')} ({_names(data)}): a first files pass costs "
                f"{format_size(FILE_FIRST_PASS_BYTES)} of link time per file and folder on top of the data, "
                f"a difference pass {format_size(FILE_SCAN_BYTES)} per entry for the scans; no VM steps"
            )
        by_origin: dict[str, list[str]] = {}
        for name, origin in self.size_origin.items():
            by_origin.setdefault(origin, []).append(name)
        if by_origin.get("assumed"):
            zeros = sim.zero_fraction if sim.zero_fraction is not None else DEFAULT_ZERO_FRACTION
            notes.append(
                f"{_count(by_origin['assumed'], 'server')} without size information (no estimate, no "
                f"readable image) assumed to have one {format_size(DEFAULT_DISK)} disk, "
                f"{(1 - zeros) * 100:.0f}% data: {_names(by_origin['assumed'])}"
            )
        if by_origin.get("image"):
            notes.append(
                f"disk sizes of {_count(by_origin['image'], 'image source')} read with stat(); "
                "allocated blocks count as data"
            )
        if by_origin.get("estimate"):
            notes.append(f"disk sizes of {_count(by_origin['estimate'], 'server')} from their estimate")
        notes.extend(self.size_problems[:MAX_NAMES_IN_NOTE])
        if len(self.size_problems) > MAX_NAMES_IN_NOTE:
            notes.append(f"... and {len(self.size_problems) - MAX_NAMES_IN_NOTE} more unreadable images")
        return notes


def _target_label(server: Server) -> str:
    if server.data is None:
        return f"{server.target.provider}/{server.vm_name}"  # type: ignore[union-attr]
    host = server.data.target_host
    return "files:local" if host == "local" else f"files:{host.host}"


def _downtime(by_kind: Mapping[str, StepTiming], ttl: int) -> dict[str, float]:
    """Where a server is unavailable: from quiesce until DNS points at the replica and caches expire.

    Each part is that step's simulated duration; time spent queued for a slot in between (a busy target
    host delaying create_replica) is downtime too and shows as ``queued``.
    """
    parts = {
        "quiesce": "quiesce_source",
        "final_delta": "final_sync",
        "shutdown": "shutdown_source",
        "detach": "detach_disks",
        "create": "create_replica",
        "boot": "power_on_replica",
        "verify": "verify_replica",
        "dns_update": "update_dns",
    }
    if "final_files_pass" in by_kind:  # a data-only server: down from quiesce until the final pass ends
        parts = {
            "quiesce": "quiesce_source",
            "final_delta": "final_files_pass",
            "shutdown": "shutdown_source",
            "dns_update": "update_dns",
        }
        up = "final_files_pass"
    else:
        up = "verify_replica"
    first = by_kind.get("quiesce_source") or by_kind.get("final_files_pass")
    if first is None or up not in by_kind or first.start is None:
        return {}
    breakdown: dict[str, float] = {}
    last_end = first.start
    for part, kind in parts.items():
        timing = by_kind.get(kind)
        if timing is None or timing.duration is None:
            continue
        breakdown[part] = round(timing.duration, 3)
        last_end = max(last_end, timing.end or last_end)
    queued = round((last_end - first.start) - sum(breakdown.values()), 3)
    if queued > 0:
        breakdown["queued"] = queued
    if ttl and "dns_update" in breakdown:
        breakdown["dns_ttl"] = float(ttl)
    return breakdown


def _finding_view(finding: Any) -> FindingView:
    if isinstance(finding, FindingView):
        return finding
    return FindingView(
        rule_id=str(finding.rule_id),
        severity=str(getattr(finding.severity, "value", finding.severity)),
        message=str(finding.message),
        fix=str(getattr(finding, "fix", "") or ""),
        server=getattr(finding, "server", None),
        location=getattr(finding, "location", None),
    )


def _count(names: list[str], noun: str) -> str:
    return f"{len(names)} {noun}{'' if len(names) == 1 else 's'}"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_IN_NOTE])
    return shown + (f" and {len(names) - MAX_NAMES_IN_NOTE} more" if len(names) > MAX_NAMES_IN_NOTE else "")
