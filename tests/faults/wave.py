"""A generated wave of many small servers, and the checks of a run of it read back from the journal.

Concurrency is taken from the executor's own record: each attempt of each step is a row of the journal's
``step_history`` (started_at as journaled when the executor took the step's slots and marked it running,
ended_at as journaled before it released them), so the intervals checked here lie inside the times the
scheduler really held the slots. Which slots a step holds comes from the plan itself (its JSON).
"""

from __future__ import annotations

import os
import sqlite3
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.planner import MAX_DISKS_PER_APPLIANCE

IMAGE_SIZE = 64 * 1024  # a sparse source disk: a boot sector and one block of data


@dataclass
class Wave:
    servers: int
    source_hosts: int = 1
    target_hosts: int = 1
    depends_on: dict[int, list[int]] = field(default_factory=dict)  # server -> earlier servers
    disks: dict[int, int] = field(default_factory=dict)  # server -> disk count (default 1)
    appliance: dict[int, str] = field(default_factory=dict)  # server -> shared | dedicated | host
    max_parallel_servers: int = 8
    per_source_host: int = 4
    per_target_host: int = 10

    def name(self, index: int) -> str:
        return f"s{index:03d}"

    def write(self, root: Path, *, cutover_mode: str = "manual") -> Path:
        """The playbook and its sparse images under ``root``; returns the playbook's path."""
        servers = []
        for index in range(self.servers):
            folder = root / f"source-host-{index % self.source_hosts}"
            folder.mkdir(parents=True, exist_ok=True)
            images = [
                make_disk(folder / f"{self.name(index)}-{d}.raw", index, d)
                for d in range(self.disks.get(index, 1))
            ]
            servers.append(
                {
                    "name": self.name(index),
                    **(
                        {"depends_on": [self.name(d) for d in self.depends_on[index]]}
                        if self.depends_on.get(index)
                        else {}
                    ),
                    "source": {
                        "type": "image",
                        "path": str(images[0].relative_to(root)),
                        "extra_disks": [str(p.relative_to(root)) for p in images[1:]],
                        "firmware": "bios",
                    },
                    "target": {
                        "provider": f"t{index % self.target_hosts}",
                        "vm_name": self.name(index),
                        "cpus": 1,
                        "memory": "64MiB",
                        "appliance": self.appliance.get(index, "shared"),
                        "disks": [{"source": p.name, "format": "raw"} for p in images],
                    },
                }
            )
        playbook = {
            "apiVersion": "hvmigrate/v1",
            "kind": "MigrationPlaybook",
            "name": "wave",
            "defaults": {
                "mirror": {"chunk_size": "64KiB", "verify": True},
                "cutover": {"mode": cutover_mode, "shutdown_source": True},
                "limits": {
                    "max_parallel_servers": self.max_parallel_servers,
                    "per_source_host": self.per_source_host,
                    "per_target_host": self.per_target_host,
                },
            },
            "providers": {
                f"t{t}": {
                    "type": "sim",
                    "root": f"./target-{t}",
                    "host": f"target-host-{t}",
                    "datastores": {"default": "64GiB"},
                }
                for t in range(self.target_hosts)
            },
            "servers": servers,
        }
        path = root / "wave.yaml"
        path.write_text(yaml.safe_dump(playbook, sort_keys=False))
        return path


def make_disk(path: Path, server: int, disk: int) -> Path:
    """Sparse: a BIOS boot signature (so the sim's firmware boots it) and 4 KiB of data unique to it."""
    with open(path, "wb") as handle:
        handle.truncate(IMAGE_SIZE)
        handle.seek(510)
        handle.write(b"\x55\xaa")
        handle.seek(IMAGE_SIZE // 2)
        handle.write(os.urandom(16) + f"server {server} disk {disk}\n".encode() * 100)
    return path


# ---------------------------------------------------------------- reading a run back


@dataclass(frozen=True)
class Interval:
    step_id: str
    start: float
    end: float


def attempts(journal: Path) -> list[Interval]:
    """Every finished attempt of every step, as the executor journaled it."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT step_id, started_at, ended_at FROM step_history WHERE started_at IS NOT NULL"
        ).fetchall()
    finally:
        db.close()
    return [Interval(s, a, b) for s, a, b in rows]


def peak_overlap(intervals: list[Interval]) -> tuple[int, list[str]]:
    """The most intervals open at one instant (an end at t closes before a start at t opens)."""
    edges = sorted([(i.start, 1, i.step_id) for i in intervals] + [(i.end, 0, i.step_id) for i in intervals])
    open_now: set[str] = set()
    best: tuple[int, list[str]] = (0, [])
    for _, opening, step_id in edges:
        if opening:
            open_now.add(step_id)
            if len(open_now) > best[0]:
                best = (len(open_now), sorted(open_now))
        else:
            open_now.discard(step_id)
    return best


def limit_violations(plan: Mapping[str, Any], limits: Mapping[str, int], runs: list[Interval]) -> list[str]:
    """Each slot with a capacity: its peak of steps running at once against that capacity."""
    slots_of = {s["id"]: [tuple(slot) for slot in s["slots"]] for s in plan["steps"]}
    holders: dict[tuple[str, str], list[Interval]] = defaultdict(list)
    for run in runs:
        for slot in slots_of[run.step_id]:
            if slot[0] in limits:
                holders[slot].append(run)
    problems = []
    for slot, intervals in sorted(holders.items()):
        peak, who = peak_overlap(intervals)
        if peak > limits[slot[0]]:
            problems.append(f"{slot} held by {peak} steps at once (limit {limits[slot[0]]}): {who}")
    return problems


def order_violations(plan: Mapping[str, Any], runs: list[Interval], wave: Wave) -> list[str]:
    """A server's cutover starts only after every server it depends on is cut over: each of that server's
    own steps finished (its dedicated appliance's release is housekeeping, free to run alongside)."""
    first: dict[str, float] = {}
    last: dict[str, float] = defaultdict(float)
    server_of = {s["id"]: s["server"] for s in plan["steps"]}
    phase_of = {s["id"]: s["phase"] for s in plan["steps"]}
    for run in runs:
        server = server_of[run.step_id]
        if server is None or phase_of[run.step_id] not in ("replicate", "cutover"):
            continue
        if run.step_id.endswith("_appliance"):
            continue
        last[server] = max(last[server], run.end)
        if run.step_id == f"{server}/cutover_gate":
            first[server] = min(first.get(server, run.start), run.start)
    problems = []
    for index, deps in wave.depends_on.items():
        name = wave.name(index)
        for dep in map(wave.name, deps):
            if name in first and first[name] < last[dep]:
                problems.append(f"{name} began its cutover before {dep}, which it depends on, had finished")
            if name in first and dep not in last:
                problems.append(f"{name} cut over though {dep}, which it depends on, never ran")
    return problems


def appliance_overloads(plan: Mapping[str, Any], wave: Wave) -> list[str]:
    """No appliance is planned to hold more disks at once than a VM can attach."""
    load: dict[str, int] = defaultdict(int)
    for step in plan["steps"]:
        if step["kind"] == "attach_disks" and step["params"].get("appliance_step"):
            index = int(step["server"][1:])
            load[step["params"]["appliance_step"]] += wave.disks.get(index, 1)
    return [f"{a} gets {n} disks" for a, n in load.items() if n > MAX_DISKS_PER_APPLIANCE]
