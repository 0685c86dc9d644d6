"""The Scheduler on its own: slot capacities, dependency order, failure, retries, and that nothing is lost.

Random small graphs are driven to completion with random completion orders. After every round the test
checks the invariants a real run and a simulation both rely on: no slot ever holds more steps than its
capacity, a step starts only after all its predecessors are done, no capacity idles while a step that
fits waits, and every step eventually runs. The same graphs run once with the crowded-slot grouping
forced on and once with it off, since a 10,000-server plan uses one path and a small playbook the other.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, field

import networkx as nx
import pytest

from orchestrator import scheduler as scheduler_module
from orchestrator.scheduler import Scheduler, bottom_levels
from orchestrator.steps.base import StepNode

SLOT_POOL = [
    ("servers", "*"),
    ("source_host", "s0"),
    ("source_host", "s1"),
    ("target_host", "t0"),
    ("target_host", "t1"),
    ("target_host", "t2"),
    ("unlimited", "u"),  # a slot kind without a capacity never blocks
]


def random_graph(rng: random.Random, size: int, edge_chance: float = 0.08) -> nx.DiGraph:
    graph = nx.DiGraph()
    for i in range(size):
        slots = tuple(sorted(set(rng.sample(SLOT_POOL, rng.randint(0, 3)))))
        step = StepNode(id=f"n{i:03d}", kind="t", server=None, phase="replicate", slots=slots)
        graph.add_node(step.id, step=step)
    for i in range(size):
        for j in range(i + 1, size):
            if rng.random() < edge_chance:
                graph.add_edge(f"n{i:03d}", f"n{j:03d}")
    return graph


def random_capacity(rng: random.Random) -> dict[str, int]:
    return {"servers": rng.randint(1, 4), "source_host": rng.randint(1, 2), "target_host": rng.randint(1, 3)}


@dataclass
class Driver:
    """Plays the executor: finishes one running step at a time, chosen by the seeded random generator."""

    graph: nx.DiGraph
    sched: Scheduler
    rng: random.Random
    capacity: dict[str, int]
    started: list[str] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)
    peak: Counter[tuple[str, str]] = field(default_factory=Counter)

    def start_round(self) -> list[str]:
        new = self.sched.startable()
        for node in new:
            assert node not in self.running and node not in self.finished, f"{node} started twice"
            missing = [p for p in self.graph.predecessors(node) if p not in self.finished]
            assert not missing, f"{node} started before {missing} finished"
            self.running.add(node)
            self.started.append(node)
        self.check_slots()
        self.check_nothing_idles()
        return new

    def check_slots(self) -> None:
        held: Counter[tuple[str, str]] = Counter()
        for node in self.running:
            held.update(self.graph.nodes[node]["step"].slots)
        for slot, count in held.items():
            self.peak[slot] = max(self.peak[slot], count)
            cap = self.capacity.get(slot[0])
            assert cap is None or count <= cap, f"{slot} holds {count} steps, capacity {cap}"

    def check_nothing_idles(self) -> None:
        """A ready step whose every slot has room must have been started (work conservation)."""
        held: Counter[tuple[str, str]] = Counter()
        for node in self.running:
            held.update(self.graph.nodes[node]["step"].slots)
        for node in self.sched.selected:
            if node in self.running or node in self.finished or node in self.sched.blocked:
                continue
            if node in self.sched.parked or node in self.sched.failed:
                continue
            if any(p not in self.finished for p in self.graph.predecessors(node)):
                continue
            slots = self.graph.nodes[node]["step"].slots
            fits = all(s[0] not in self.capacity or held[s] < self.capacity[s[0]] for s in slots)
            assert not fits, f"{node} is ready and fits, yet waits"

    def finish_one(self, ok: bool = True) -> tuple[str, list[str]]:
        node = self.rng.choice(sorted(self.running))
        self.running.discard(node)
        blocked = self.sched.finish(node, ok=ok)
        if ok:
            self.finished.add(node)
        return node, blocked

    def run_to_end(self) -> None:
        self.start_round()
        while self.running:
            self.finish_one()
            self.start_round()


@pytest.fixture(params=["grouped", "one-by-one"])
def crowding(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Force the crowded-slot path (every slot crowded) or the plain one (no slot crowded)."""
    threshold = 0 if request.param == "grouped" else 10**9
    monkeypatch.setattr(scheduler_module, "CROWDED_SLOT_HOLDERS", threshold)
    return str(request.param)


@pytest.mark.parametrize("seed", range(40))
def test_random_graphs_respect_capacities_order_and_all_run(seed: int, crowding: str) -> None:
    rng = random.Random(seed)
    graph = random_graph(rng, rng.randint(5, 60))
    capacity = random_capacity(rng)
    sched = Scheduler(graph, list(graph.nodes), [], capacity)
    driver = Driver(graph, sched, rng, capacity)
    driver.run_to_end()
    assert driver.finished == set(graph.nodes), "every step eventually runs"
    assert sched.idle and sched.unreached() == []
    assert len(driver.started) == graph.number_of_nodes()


def test_capacity_is_reached_when_enough_steps_compete(crowding: str) -> None:
    """Thirty independent steps on one target host with capacity 3: exactly 3 run at once, never more."""
    graph = nx.DiGraph()
    for i in range(30):
        step = StepNode(f"n{i:02d}", "t", None, "replicate", slots=(("target_host", "t0"),))
        graph.add_node(step.id, step=step)
    capacity = {"target_host": 3}
    sched = Scheduler(graph, list(graph.nodes), [], capacity)
    driver = Driver(graph, sched, random.Random(1), capacity)
    driver.run_to_end()
    assert driver.peak[("target_host", "t0")] == 3
    assert len(driver.finished) == 30


def test_done_steps_are_not_run_and_release_their_successors(crowding: str) -> None:
    graph = nx.DiGraph([("a", "b"), ("b", "c"), ("x", "c")])
    for node in graph.nodes:
        graph.nodes[node]["step"] = StepNode(node, "t", None, "replicate")
    sched = Scheduler(graph, ["b", "c", "x"], ["a"], {})
    assert sorted(sched.startable()) == ["b", "x"]
    sched.finish("b", ok=True)
    assert sched.startable() == []  # c still waits for x
    sched.finish("x", ok=True)
    assert sched.startable() == ["c"]


def test_longer_chains_start_first_when_a_slot_is_scarce(crowding: str) -> None:
    """Bottom level is the priority: the head of a 3-step chain beats a lone step for the single unit."""
    slot = ("target_host", "t0")
    graph = nx.DiGraph([("chain1", "chain2"), ("chain2", "chain3")])
    for node in ["lone", "chain1", "chain2", "chain3"]:
        graph.add_node(node, step=StepNode(node, "t", None, "replicate", slots=(slot,)))
    assert bottom_levels(graph, graph.nodes) == {"chain1": 3.0, "chain2": 2.0, "chain3": 1.0, "lone": 1.0}
    sched = Scheduler(graph, list(graph.nodes), [], {"target_host": 1})
    assert sched.startable() == ["chain1"]
    sched.finish("chain1", ok=True)
    assert sched.startable() == ["chain2"]


@pytest.mark.parametrize("seed", range(15))
def test_failure_blocks_exactly_the_descendants(seed: int, crowding: str) -> None:
    rng = random.Random(1000 + seed)
    graph = random_graph(rng, rng.randint(8, 40), edge_chance=0.15)
    capacity = random_capacity(rng)
    sched = Scheduler(graph, list(graph.nodes), [], capacity)
    driver = Driver(graph, sched, rng, capacity)
    driver.start_round()
    failed, blocked = driver.finish_one(ok=False)
    expected = nx.descendants(graph, failed) - driver.finished
    assert set(blocked) == expected and blocked == sorted(blocked)
    driver.start_round()
    while driver.running:
        driver.finish_one()
        driver.start_round()
    assert not expected & set(driver.started), "a step after the failed one ran"
    survivors = set(graph.nodes) - expected - {failed}
    assert driver.finished == survivors, "everything not downstream of the failure still ran"
    assert sched.failed == {failed} and sched.blocked == expected
    assert sched.idle


def test_park_frees_the_slot_and_unpark_runs_the_step_again(crowding: str) -> None:
    slot = ("source_host", "s0")
    graph = nx.DiGraph()
    for node in ["retry", "other"]:
        graph.add_node(node, step=StepNode(node, "t", None, "replicate", slots=(slot,)))
    sched = Scheduler(graph, ["retry", "other"], [], {"source_host": 1})
    first = sched.startable()
    assert len(first) == 1
    waiting = "other" if first == ["retry"] else "retry"
    parked = first[0]
    sched.park(parked)  # failed, will be retried: the unit goes to the waiting step
    assert sched.startable() == [waiting]
    assert not sched.idle  # the parked step still counts
    sched.unpark(parked)
    assert sched.startable() == []  # its timer fired, but the only unit is taken
    sched.finish(waiting, ok=True)
    assert sched.startable() == [parked]
    sched.finish(parked, ok=True)
    assert sched.idle and sched.done == {"retry", "other"}


def test_cancel_pending_returns_every_step_that_will_not_run(crowding: str) -> None:
    slot = ("target_host", "t0")
    graph = nx.DiGraph()
    for i in range(6):
        graph.add_node(f"n{i}", step=StepNode(f"n{i}", "t", None, "replicate", slots=(slot,)))
    sched = Scheduler(graph, list(graph.nodes), [], {"target_host": 2})
    running = sched.startable()
    assert len(running) == 2
    dropped = sched.cancel_pending()
    assert sorted(dropped) == sorted(set(graph.nodes) - set(running))
    for node in running:
        sched.finish(node, ok=True)
    assert sched.startable() == [] and sched.idle


def test_mixed_crowded_and_small_slots_in_a_large_wave() -> None:
    """The shape of a real wave (no monkeypatching): a global slot, many target-host holders, small
    source hosts; capacities hold and everything runs."""
    rng = random.Random(7)
    graph = nx.DiGraph()
    for server in range(120):
        src, dst = ("source_host", f"s{server // 4}"), ("target_host", f"t{server % 3}")
        chain = [
            StepNode(f"v{server}/discover", "t", None, "replicate", slots=(src,)),
            StepNode(f"v{server}/create", "t", None, "replicate", slots=(dst,)),
            StepNode(f"v{server}/mirror", "t", None, "replicate", slots=(("servers", "*"), src, dst)),
            StepNode(f"v{server}/boot", "t", None, "replicate", slots=(dst,)),
        ]
        for step in chain:
            graph.add_node(step.id, step=step)
        for a, b in itertools.pairwise(chain):
            graph.add_edge(a.id, b.id)
    capacity = {"servers": 5, "source_host": 1, "target_host": 4}
    sched = Scheduler(graph, list(graph.nodes), [], capacity)
    assert sched._crowded >= {("servers", "*"), ("target_host", "t0")}  # the grouped path is in use
    driver = Driver(graph, sched, rng, capacity)
    driver.run_to_end()
    assert driver.finished == set(graph.nodes)
    assert driver.peak[("servers", "*")] == 5 and driver.peak[("target_host", "t1")] == 4
