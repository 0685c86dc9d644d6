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
from typing import Any

import networkx as nx

from orchestrator.playbook.models import Limits
from orchestrator.steps.base import StepNode

Slot = tuple[str, str]
# A slot held by more selected steps than this is "crowded": its waiters queue by group, not one by one.
CROWDED_SLOT_HOLDERS = 32


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
        # Steps that are ready but find a slot full wait, each in ONE queue, until that slot frees a unit.
        # A step needing a crowded slot (one that hundreds of steps hold, such as a target host or the
        # global "servers" slot) waits inside the group of steps needing the same crowded slots, and the
        # whole group queues as one entry: when "servers" and a target host are both full, moving one
        # entry between their queues replaces moving every waiting mirror, which made a 10,000-server
        # wave cost seconds of queue shuffling.
        self._queues: dict[Slot, list[Any]] = defaultdict(list)  # small slot: (prio, node); crowded: group
        self._groups: dict[tuple[Slot, ...], list[tuple[float, str]]] = defaultdict(list)
        self._home: dict[tuple[Slot, ...], Slot | None] = {}  # the crowded slot a group queues at
        self._waiting = 0
        self._handed: dict[str, Slot] = {}  # ready steps that were handed a unit of this slot
        # node -> its slots that have a capacity; and, once it had to wait, (crowded, small) of those
        self._limited: dict[str, tuple[Slot, ...]] = {}
        self._split: dict[str, tuple[tuple[Slot, ...], tuple[Slot, ...]]] = {}
        holders: dict[Slot, int] = defaultdict(int)
        same: dict[tuple[Slot, ...], tuple[Slot, ...]] = {}  # slots -> limited slots (tuples repeat a lot)
        for node in self.selected:
            slots = self._steps[node].slots
            limited = same.get(slots)
            if limited is None:
                limited = same[slots] = tuple(slot for slot in slots if slot[0] in self.capacity)
            self._limited[node] = limited
            for slot in limited:
                holders[slot] += 1
        self._crowded = {slot for slot, count in holders.items() if count > CROWDED_SLOT_HOLDERS}
        # Unfinished predecessors: all of them, less those already done (counted from the done side,
        # which is cheaper than testing every predecessor of every step).
        pred, succ = graph.pred, graph.succ
        missing = self._missing
        for node in self.selected:
            missing[node] = len(pred[node])
        for node in self.done:
            if node in graph:
                for child in succ[node]:
                    if child in missing:
                        missing[child] -= 1
        for node, count in missing.items():
            if count == 0:
                self._push(node)

    # ------------------------------------------------------------ queries

    def step(self, node: str) -> StepNode:
        return self._steps[node]

    @property
    def idle(self) -> bool:
        """Nothing runs, nothing can start, nothing waits for a timer: this invocation is over."""
        return not self.running and not self._ready and not self.parked and not self._waiting

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
        started = self._start_ready()
        if not started and not self.running and self._waiting:
            # Nothing runs, so no slot will ever free a unit again: whatever still waits can start now.
            self._requeue_all()
            started = self._start_ready()
        return started

    def _start_ready(self) -> list[str]:
        # Written flat (no per-step method calls): it runs for every step of a 200,000-step simulation.
        started: list[str] = []
        ready, used, capacity, handed = self._ready, self.used, self.capacity, self._handed
        while ready:
            again: list[Slot] = []
            while ready:
                prio, node = heapq.heappop(ready)
                handed_by = handed.pop(node, None) if handed else None
                for slot in self._limited.get(node) or self._limits(node):
                    if used[slot] >= capacity[slot[0]]:
                        break
                else:
                    self.running.add(node)
                    for slot in self._steps[node].slots:
                        used[slot] += 1
                    started.append(node)
                    continue
                # Blocked. If it had been handed a unit, a better step took another unit it needs in
                # this same round: that unit goes to the next waiter of its slot instead of idling.
                self._wait(prio, node)
                if handed_by is not None:
                    again.append(handed_by)
            for slot in again:
                self._hand_over(slot)
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
        dropped = [n for _, n in self._ready] + list(self.parked) + self._drain_waiters()
        self._ready.clear()
        self._handed.clear()
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

    def _limits(self, node: str) -> tuple[Slot, ...]:
        limited = self._limited.get(node)
        if limited is None:  # a node added later (cleanup)
            limited = tuple(slot for slot in self._steps[node].slots if slot[0] in self.capacity)
            self._limited[node] = limited
        return limited

    def _slots(self, node: str) -> tuple[tuple[Slot, ...], tuple[Slot, ...]]:
        """The node's limited slots as (crowded, small)."""
        split = self._split.get(node)
        if split is None:
            limited = self._limits(node)
            crowded = tuple(slot for slot in limited if slot in self._crowded)
            split = self._split[node] = (crowded, tuple(slot for slot in limited if slot not in crowded))
        return split

    def _full(self, slots: tuple[Slot, ...]) -> Slot | None:
        used, capacity = self.used, self.capacity
        for slot in slots:
            if used[slot] >= capacity[slot[0]]:
                return slot
        return None

    def _blocker(self, node: str) -> Slot | None:
        return self._full(self._limits(node))

    def _wait(self, prio: float, node: str) -> None:
        """Queue a blocked step behind the slot that blocks it (or its group behind that crowded slot)."""
        self._waiting += 1
        crowded, small = self._slots(node)
        blocker = self._full(crowded)
        if blocker is None:
            small_blocker = self._full(small)
            assert small_blocker is not None, f"{node} waits but no slot of it is full"
            heapq.heappush(self._queues[small_blocker], (prio, node))
            return
        members = self._groups[crowded]
        heapq.heappush(members, (prio, node))
        home = self._home.get(crowded)
        if home is None or self.used[home] < self.capacity[home[0]]:
            # Queue the group where it is blocked now: a home with room would never wake it.
            self._home[crowded] = blocker
            heapq.heappush(self._queues[blocker], (*members[0], crowded))
        elif members[0][1] == node:  # a new best member: requeue the group under its new key
            heapq.heappush(self._queues[home], (prio, node, crowded))

    def _release(self, node: str) -> None:
        if node not in self.running:
            return
        self.running.discard(node)
        slots = self._steps[node].slots
        for slot in slots:
            self.used[slot] -= 1
        for slot in slots:
            if slot in self._queues:
                self._hand_over(slot)

    def _hand_over(self, slot: Slot) -> None:
        """Give the freed unit to the best waiter that fits; waiters blocked elsewhere move there."""
        queue = self._queues[slot]
        capacity = self.capacity.get(slot[0], 1 << 30)
        while queue and self.used[slot] < capacity:
            entry = heapq.heappop(queue)
            if len(entry) == 2:  # a single step behind a small slot
                prio, node = entry
                self._waiting -= 1
                if self._blocker(node) is None:
                    heapq.heappush(self._ready, (prio, node))
                    self._handed[node] = slot
                    return
                self._wait(prio, node)
                continue
            prio, top, group = entry
            members = self._groups[group]
            if self._home.get(group) != slot or not members or members[0] != (prio, top):
                continue  # superseded by a later entry of the same group
            blocker = self._full(group)
            if blocker is not None:
                self._home[group] = blocker
                heapq.heappush(self._queues[blocker], entry)
                continue
            handed = False
            while members:
                prio, node = heapq.heappop(members)
                self._waiting -= 1
                small = self._full(self._slots(node)[1])
                if small is None:
                    heapq.heappush(self._ready, (prio, node))
                    self._handed[node] = slot
                    handed = True
                    break
                self._waiting += 1
                heapq.heappush(self._queues[small], (prio, node))
            if members:
                heapq.heappush(queue, (*members[0], group))
            else:
                self._home[group] = None
            if handed:
                return

    def _drain_waiters(self) -> list[str]:
        nodes = [entry[1] for queue in self._queues.values() for entry in queue if len(entry) == 2]
        nodes += [node for members in self._groups.values() for _, node in members]
        self._queues.clear()
        self._groups.clear()
        self._home.clear()
        self._waiting = 0
        return nodes

    def _requeue_all(self) -> None:
        waiting = [
            (entry[0], entry[1]) for queue in self._queues.values() for entry in queue if len(entry) == 2
        ]
        waiting += [member for members in self._groups.values() for member in members]
        self._drain_waiters()
        for entry in waiting:
            heapq.heappush(self._ready, entry)
