"""How far planning, the dry run and the executor's bookkeeping scale: one wave of 10,000 servers.

Run it with ``.venv/bin/python bench/plan_scale.py [--servers N] [--steps K]``. It builds a synthetic
playbook (servers spread over 20 target hosts of 2 providers, shared source hosts, a few percent of
``depends_on`` chains, four cutover waves, estimates instead of real disks), then times

* pydantic validation of the playbook,
* ``build_plan`` (the step graph), and the plan's content hash (computed on first use),
* ``simulate`` (the dry run of every step, in virtual time), under the playbook's limits and again under
  the default limits (8 servers moving data at once: the most contended schedule),
* the real ``Executor`` running K no-op steps against a real SQLite journal (its cost per step),

and prints each against its goal. Every figure is wall-clock on this machine; the peak RSS is the
process's high-water mark (``getrusage``), so it covers everything measured before it.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.executor import Executor
from orchestrator.journal import Journal
from orchestrator.planner import Plan, build_plan, node_hash
from orchestrator.playbook.models import Limits, Playbook
from orchestrator.playbook.units import format_duration, format_size
from orchestrator.simulate import simulate
from orchestrator.steps.base import StepNode

GiB = 1024**3
TARGET_HOSTS = 20
PROVIDERS = 2
SERVERS_PER_SOURCE_HOST = 4
DEPENDS_EVERY = 33  # one server in 33 cuts over after the previous one: about 3%
WAVES = 4
GOAL_SECONDS = 10.0
GOAL_RSS = 2 * 1024**3
GOAL_STEP_SECONDS = 1e-3


def synthetic_playbook(count: int) -> dict[str, Any]:
    """A playbook a large wave might have: shared source hosts, DNS records, a few chains, estimates."""
    servers = []
    for i in range(count):
        name = f"srv{i:05d}"
        host = i // SERVERS_PER_SOURCE_HOST
        server: dict[str, Any] = {
            "name": name,
            "source": {"type": "ssh", "host": f"10.{host // 250 % 250}.{host % 250}.{1 + host // 62500}"},
            "target": {
                "provider": f"sim-{i % PROVIDERS}",
                "host": f"host-{i % TARGET_HOSTS:02d}",
                "disks": [{"source": "/dev/vda"}] + ([{"source": "/dev/vdb"}] if i % 5 == 0 else []),
            },
            "estimate": {
                "disks": [40 * GiB] + ([200 * GiB] if i % 5 == 0 else []),
                "used_fraction": 0.2 + (i % 7) / 10,
            },
            "dns_records": [{"provider": "corp", "name": name, "ttl": 60 + (i % 4) * 60}],
            "wave": i * WAVES // count,
        }
        if i % DEPENDS_EVERY == DEPENDS_EVERY - 1:
            server["depends_on"] = [f"srv{i - 1:05d}"]
        servers.append(server)
    return {
        "apiVersion": "hvmigrate/v1",
        "kind": "MigrationPlaybook",
        "name": "scale",
        "defaults": {
            "limits": {"max_parallel_servers": 400, "per_source_host": 4, "per_target_host": 40},
            "mirror": {
                "bandwidth": {
                    "limit": "200MiB/s",
                    "schedule": [{"days": "mon-fri", "hours": "08:00-18:00", "limit": "20MiB/s"}],
                }
            },
        },
        "providers": {f"sim-{p}": {"type": "sim", "root": f"/nonexistent/sim-{p}"} for p in range(PROVIDERS)},
        "dns": {"corp": {"type": "zonefile", "path": "/nonexistent/corp.zone", "zone": "corp.test"}},
        "servers": servers,
    }


def with_default_limits(playbook: Playbook) -> Playbook:
    """The same playbook under the default limits (8 servers moving data at once): the most contended
    schedule, where every mirror waits for the global slot while target hosts stay busy."""
    copy = playbook.model_copy()
    copy.defaults = playbook.defaults.model_copy(update={"limits": Limits()})
    return copy


def no_op_plan(playbook: Playbook, count: int, chains: int = 50) -> Plan:
    """``count`` barrier steps (a real step kind that does nothing) in parallel chains, like a wave."""
    graph = nx.DiGraph()
    for i in range(count):
        node = f"noop/{i:06d}"
        graph.add_node(node, step=StepNode(id=node, kind="barrier", server=None, phase="replicate"))
        if i >= chains:
            graph.add_edge(f"noop/{i - chains:06d}", node)
    return Plan(graph=graph, playbook_name=playbook.name, playbook_sha256="", servers=[])


@dataclass
class Row:
    what: str
    seconds: float
    detail: str
    goal: float | None = GOAL_SECONDS


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def executor_overhead(count: int) -> tuple[float, int]:
    """Seconds per no-op step through the real executor, journal included (state written twice a step)."""
    playbook = Playbook.model_validate(synthetic_playbook(1))
    plan = no_op_plan(playbook, count)
    with tempfile.TemporaryDirectory(prefix="hvm-bench-") as tmp:
        state = Path(tmp)
        journal = Journal(state)
        journal.adopt_plan(plan.to_json(), {s.id: (s.server, s.kind, node_hash(s)) for s in plan.steps()})
        executor = Executor(plan, playbook, journal, state_dir=state, base_dir=state)
        began = time.perf_counter()
        result = executor.run(set(plan.graph.nodes), command="bench")
        elapsed = time.perf_counter() - began
        journal.close()
    if result.status != "done" or len(result.done) != count:
        raise SystemExit(f"the no-op run ended {result.status} with {len(result.done)}/{count} steps done")
    return elapsed / count, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=10_000, help="servers in the synthetic playbook")
    parser.add_argument("--steps", type=int, default=2_000, help="no-op steps run through the executor")
    args = parser.parse_args(argv)

    rows: list[Row] = []
    raw = synthetic_playbook(args.servers)

    began = time.perf_counter()
    playbook = Playbook.model_validate(raw)
    rows.append(Row("validate playbook", time.perf_counter() - began, f"{args.servers:,} servers"))

    began = time.perf_counter()
    plan = build_plan(playbook)
    edges = plan.graph.number_of_edges()
    rows.append(Row("build_plan", time.perf_counter() - began, f"{len(plan):,} steps, {edges:,} edges"))

    began = time.perf_counter()
    plan_hash = plan.hash  # computed once per plan, on first use; a report or a journal needs it
    rows.append(Row("plan hash (first use)", time.perf_counter() - began, f"{plan_hash}", None))

    for label, pb in (
        ("simulate", playbook),
        ("simulate, default limits", with_default_limits(playbook)),
    ):
        began = time.perf_counter()
        result = simulate(plan, pb)
        seconds = time.perf_counter() - began
        limits = pb.defaults.limits
        rows.append(
            Row(
                label,
                seconds,
                f"{len(result.report.steps):,} steps; limits {limits.max_parallel_servers}/"
                f"{limits.per_source_host}/{limits.per_target_host}; predicts "
                f"{format_duration(result.duration)}, peak {format_size(result.report.peak_bandwidth)}/s",
            )
        )
        del result
    del raw
    rss_after_plan = peak_rss()

    per_step, count = executor_overhead(args.steps)
    rows.append(
        Row("executor, per no-op step", per_step, f"{count:,} steps, journal on disk", GOAL_STEP_SECONDS)
    )

    width = max(len(r.what) for r in rows)
    print(f"{'measure':<{width}}  {'time':>10}  {'goal':>8}  {'ratio':>6}  detail")
    for row in rows:
        shown = (
            f"{row.seconds * 1e6:.0f} µs"
            if row.seconds < 1e-3
            else f"{row.seconds * 1e3:.0f} ms"
            if row.seconds < 1
            else f"{row.seconds:.2f} s"
        )
        goal = "" if row.goal is None else f"{row.goal * 1e3:.0f} ms" if row.goal < 1 else f"{row.goal:.0f} s"
        ratio = "" if row.goal is None else f"{row.seconds / row.goal:.2f}"
        print(f"{row.what:<{width}}  {shown:>10}  {goal:>8}  {ratio:>6}  {row.detail}")
    print(
        f"{'peak RSS':<{width}}  {rss_after_plan / 1024**2:>7.0f} MiB  {GOAL_RSS / 1024**3:>6.0f} GiB  "
        f"{rss_after_plan / GOAL_RSS:>6.2f}  plan + simulation of {args.servers:,} servers"
    )
    over = [r.what for r in rows if r.goal is not None and r.seconds > r.goal]
    if rss_after_plan > GOAL_RSS:
        over.append("peak RSS")
    print("all within goals" if not over else f"over goal: {', '.join(over)}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
