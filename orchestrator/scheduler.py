"""Which step may start now: the ready set, concurrency slots and failure propagation.

This is the one piece of "executor logic" the real executor and the dry-run simulator share, so the
simulation orders and throttles steps exactly as a real run would. It knows nothing about time or threads:
callers tell it what started and what finished. Everything is O(1) amortized per step and slot release,
which is what lets a 200,000-step plan be simulated in seconds.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping

import networkx as nx

from orchestrator.playbook.models import Limits
from orchestrator.steps.base import StepNode

Slot = tuple[str, str]


def capacities(limits: Limits) -> dict[str, int]:
    return {
        "servers": limits.max_parallel_servers,
        "source_host": limits.per_source_host,
        "target_host": limits.per_target_host,
    }


def bottom_levels(
    graph: nx.DiGraph, selected: Iterable[str], cost: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Longest remaining path (by cost) from each node to the end: steps on long chains go first.

    Kahn's algorithm from the sinks up, over plain lists copied once from the graph's adjacency: a
    topological sort of a ``subgraph`` view filters every neighbour lookup and took seconds on a
    200,000-step plan.
    """
    chosen = set(selected)
    children: dict[str, list[str]] = {}
    for node, nbrs in graph.adjacency():
        if node in chosen:
            children[node] = [s for s in nbrs if s in chosen]
    parents: dict[str, list[str]] = {node: [] for node in children}
    for node, kids in children.items():
        for kid in kids:
            parents[kid].append(node)
    remaining = {node: len(kids) for node, kids in children.items()}
    todo = [node for node, count in remaining.items() if count == 0]
    level: dict[str, float] = {}
    while todo:
        node = todo.pop()
        kids = children[node]
        below = max([level[s] for s in kids]) if kids else 0.0
        level[node] = below + (cost.get(node, 1.0) if cost else 1.0)
        for parent in parents[node]:
            remaining[parent] -= 1
            if remaining[parent] == 0:
                todo.append(parent)
    if len(level) != len(chosen):
        raise nx.NetworkXUnfeasible("the selected steps form a cycle")
    return level


class Scheduler:
    def __init__(
        self,
        graph: nx.DiGraph,
        selected: Iterable[str],
        done: Iterable[str],
        slot_capacity: Mapping[str, int],
        priority: Mapping[str, float] | None = None,
    ) -> None:
        self.graph = graph
        # Node -> StepNode as a plain dict: the slot checks look steps up several times per transition.
        self._steps: dict[str, StepNode] = dict(graph.nodes(data="step"))
        self.done: set[str] = set(done)
        self.selected: set[str] = set(selected) - self.done
        self.capacity = dict(slot_capacity)
        self.priority = priority or bottom_levels(graph, self.selected)
        self.used: dict[Slot, int] = defaultdict(int)
        self.running: set[str] = set()
        self.failed: set[str] = set()
        self.blocked: set[str] = set()  # a predecessor failed
        self.parked: set[str] = set()  # waiting for a retry timer
        self._missing: dict[str, int] = {}
        self._ready: list[tuple[float, str]] = []
        self._waiters: dict[Slot, list[tuple[float, str]]] = defaultdict(list)
        for node in self.selected:
            missing = sum(1 for p in graph.predecessors(node) if p not in self.done)
            self._missing[node] = missing
            if missing == 0:
                self._push(node)

    # ------------------------------------------------------------ queries

    def step(self, node: str) -> StepNode:
        return self._steps[node]

    @property
    def idle(self) -> bool:
        """Nothing runs, nothing can start, nothing waits for a timer: this invocation is over."""
        return not self.running and not self._ready and not self.parked and not any(self._waiters.values())

    def unreached(self) -> list[str]:
        """Selected steps that never became ready: they wait for steps outside this invocation."""
        return sorted(
            n
            for n in self.selected
            if n not in self.done and n not in self.failed and n not in self.blocked and n not in self.running
        )

    def waiting_on(self, node: str) -> list[str]:
        return sorted(p for p in self.graph.predecessors(node) if p not in self.done)

    # ------------------------------------------------------------ transitions

    def startable(self) -> list[str]:
        """Pop every step that can start now and take its slots."""
        started: list[str] = []
        while self._ready:
            prio, node = heapq.heappop(self._ready)
            blocker = self._blocking_slot(node)
            if blocker is not None:
                heapq.heappush(self._waiters[blocker], (prio, node))
                continue
            self._take(node)
            started.append(node)
        return started

    def finish(self, node: str, ok: bool) -> list[str]:
        """Record the end of a step; returns the steps now blocked by its failure."""
        self._release(node)
        if ok:
            self.done.add(node)
            for succ in self.graph.successors(node):
                if succ in self._missing:
                    self._missing[succ] -= 1
                    if self._missing[succ] == 0 and succ not in self.blocked:
                        self._push(succ)
            return []
        self.failed.add(node)
        newly = [
            d
            for d in nx.descendants(self.graph, node)
            if d in self.selected and d not in self.done and d not in self.blocked
        ]
        self.blocked.update(newly)
        return sorted(newly)

    def park(self, node: str) -> None:
        """The step failed but will be retried: free its slots until its timer fires."""
        self._release(node)
        self.parked.add(node)

    def unpark(self, node: str) -> None:
        self.parked.discard(node)
        self._push(node)

    def cancel_pending(self) -> list[str]:
        """Stop starting anything (Ctrl-C); returns what will not run."""
        dropped = [n for _, n in self._ready] + list(self.parked)
        dropped += [n for heap in self._waiters.values() for _, n in heap]
        self._ready.clear()
        self._waiters.clear()
        self.parked.clear()
        return dropped

    def add(self, node: str) -> None:
        """Run a node outside the normal flow (a cleanup node), ignoring its predecessors."""
        self.selected.add(node)
        self._missing[node] = 0
        self._push(node)

    # ------------------------------------------------------------ slots

    def _push(self, node: str) -> None:
        heapq.heappush(self._ready, (-self.priority.get(node, 0.0), node))

    def _blocking_slot(self, node: str) -> Slot | None:
        for slot in self._steps[node].slots:
            cap = self.capacity.get(slot[0])
            if cap is not None and self.used[slot] >= cap:
                return slot
        return None

    def _take(self, node: str) -> None:
        self.running.add(node)
        for slot in self._steps[node].slots:
            self.used[slot] += 1

    def _release(self, node: str) -> None:
        if node not in self.running:
            return
        self.running.discard(node)
        for slot in self._steps[node].slots:
            self.used[slot] -= 1
            waiters = self._waiters.get(slot)
            # Hand the freed unit to the best waiter; if it is blocked elsewhere it moves to that queue.
            while waiters and self.used[slot] < self.capacity.get(slot[0], 1 << 30):
                prio, waiter = heapq.heappop(waiters)
                other = self._blocking_slot(waiter)
                if other is None:
                    heapq.heappush(self._ready, (prio, waiter))
                    break
                heapq.heappush(self._waiters[other], (prio, waiter))
