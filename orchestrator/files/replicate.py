"""Continuous replication of a files-and-folders set: the source's changes applied on the target as they
happen, until told to stop.

The files agent on the source watches the set with inotify and streams writer operations (its ``watch``
request, replicate_source.py); this side applies them on the target through the same writer a pass uses,
in order, one batch at a time. What the reference product does is kept:

* when changes were lost (the kernel's or the agent's queue overflowed) or the connection dropped, the
  watch is started again and then a difference pass runs, which finds whatever the lost changes were
  (the watch is running first, so nothing that changes during the pass falls through);
* when the root of a pair is renamed or deleted, nothing is deleted on the target: replication of the set
  stops with a message, and the target copy stays as it was.

A batch is applied without a ``syncfs`` (a filesystem sync per change would cap the rate at the disk's
flush latency); the cutover's final pass makes the target durable. A cutover talks to a running
replicator through ``control`` (replicate_control.py): each batch end publishes how many changes the
source still queues, and a stop request ends the stream at a batch end (``discard``) or once the source
is idle (``apply``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.mirror import protocol as wire
from orchestrator.mirror.errors import MirrorError

from . import codec
from .mirror import Options, Pair, RemoteTree, mirror_pass, shown
from .rules import RuleSet

RECONNECT_SECONDS = 2.0


class RootGone(Exception):
    """A root of the set was renamed or deleted on the source: replication of the set stopped."""


@dataclass
class ReplicationStats:
    batches: int = 0
    operations: int = 0
    passes: int = 0
    reconnects: int = 0
    problems: list[str] = field(default_factory=list)
    agent_pid: int | None = None  # the source agent streaming now (tests kill it)
    queued: int = -1  # changes waiting in the source agent's queue at the last batch end (-1: not streaming)
    discarded: int = 0  # changes a cutover's ``discard`` dropped (its final pass sends what they were)
    ended: str = ""  # stopped, cutover (a cutover stopped it), root gone


class Replicator:
    """Keeps ``target`` following the source until ``stop`` is set or a root goes.

    ``connect`` opens a new files agent session on the source (called again after every disconnect);
    ``target`` is a tree (LocalTree or RemoteTree) that stays open for the whole replication.
    """

    def __init__(
        self,
        connect: Callable[[], RemoteTree],
        target: Any,
        pairs: list[Pair],
        rules: RuleSet,
        options: Options,
        *,
        say: Callable[[str], None] = lambda message: None,
        memory: int = 10_000,
        limit: int = 1_000_000,
        reconnect_seconds: float = RECONNECT_SECONDS,
        control: Any = None,
    ) -> None:
        self.connect = connect
        self.control = control  # a ReplicationControl: status for, and stop requests from, a cutover
        self.cutover: str | None = None  # the stop mode a cutover asked for, once acted on
        self.target = target
        self.pairs = pairs
        self.rules = rules
        self.options = options
        self.say = say
        self.memory = memory
        self.limit = limit
        self.reconnect_seconds = reconnect_seconds
        self.stats = ReplicationStats()
        self.watching = threading.Event()  # set while a stream is live (after its difference pass)

    def run(self, stop: threading.Event, *, initial_pass: bool = True) -> ReplicationStats:
        """Replicate until ``stop``; raises RootGone when a root of the set was renamed or deleted."""
        need_pass = initial_pass
        while not stop.is_set():
            source: RemoteTree | None = None
            self._publish("connecting", -1)
            try:
                source = self.connect()
                self._start_watch(source)
                if need_pass:
                    self._publish("difference pass", -1)
                    self._difference_pass()
                    need_pass = False
                self.watching.set()
                ended = self._stream(source, stop)
            except (MirrorError, wire.ProtocolError, OSError) as exc:
                ended = "lost"
                self.say(f"replication: the source connection dropped ({exc}); reconnecting")
            finally:
                self.watching.clear()
                if source is not None:
                    source.close()
            if ended == "stopped" or self.cutover is not None:
                break
            need_pass = True
            self.stats.reconnects += 1
            if ended == "overflow":
                self.say("replication: changes were lost (queue full); reconnecting for a difference pass")
            else:
                stop.wait(self.reconnect_seconds)
        self.stats.ended = "cutover" if self.cutover is not None else "stopped"
        return self.stats

    def _publish(self, state: str, queued: int) -> None:
        self.stats.queued = queued
        if self.control is not None:
            self.control.publish(state, queued, force=queued <= 0, applied=self.stats.operations)

    def _stop_for_cutover(self, kind: bytes, queued: int) -> bool:
        """Whether a cutover's request ends the stream now: ``discard`` at once (this batch is applied
        whole), ``apply`` once the source is idle with nothing queued (a heartbeat)."""
        if self.control is None:
            return False
        mode = self.control.requested()
        if mode == "discard" or (mode == "apply" and kind == b"h" and queued == 0):
            self.cutover = mode
            self.stats.discarded = queued if mode == "discard" else 0
            return True
        return False

    def _start_watch(self, source: RemoteTree) -> None:
        source.session.request(
            "watch",
            pairs=[[p.source.hex(), p.source.hex()] for p in self.pairs],
            rules=[[r.path.hex(), r.include, r.recursive] for r in self.rules.rules],
            memory=self.memory,
            limit=self.limit,
            block_size=self.options.block_size,
            retries=self.options.retries,
        )
        first = next(self._records(source))
        if first[0] != b"!":
            raise wire.ProtocolError(f"the watch on {source.name} opened with {first[0]!r}")
        self.stats.agent_pid = int(first[1])

    def _difference_pass(self) -> None:
        self._needs_pass = False
        passer = self.connect()
        try:
            result = mirror_pass(passer, self.target, self.pairs, self.rules, self.options)
        finally:
            passer.close()
        self.stats.passes += 1
        self.say(
            f"replication: difference pass sent {result.files_sent} file(s), "
            f"{len(result.orphans)} orphan(s) {result.orphan_action}"
        )

    def _records(self, source: RemoteTree) -> Any:
        """The stream's records, frame by frame, until the request's RESULT."""
        while True:
            frame = source.session.receive(codec.OPS, wire.RESULT)
            if frame.type == wire.RESULT:
                return
            yield from codec.decode(frame.payload)

    def _stream(self, source: RemoteTree, stop: threading.Event) -> str:
        roots = [p.target for p in self.pairs]
        apply: Any = None
        renames: set[tuple[int, bytes]] = set()
        try:
            for record in self._records(source):
                kind = record[0]
                if kind in (b"F", b"h"):
                    if apply is not None:
                        self._settle(apply, renames)
                        apply = None
                        renames = set()
                        self.stats.batches += 1
                        if self._needs_pass:
                            return "overflow"
                    queued = int(record[1]) if len(record) > 1 else 0
                    self._publish("watching", queued)
                    if stop.is_set() or self._stop_for_cutover(kind, queued):
                        return self._end(source)
                    continue
                if kind == b"o":
                    return "overflow"
                if kind == b"r":
                    pair = self.pairs[int(record[1])]
                    raise RootGone(
                        f"{shown(pair.source)} was renamed or deleted on the source: replication of this "
                        f"set stopped, and the target copy {shown(pair.target)} is kept as it is (nothing "
                        "deleted); put the folder back and start replication again"
                    )
                if apply is None:
                    apply = self.target.applier(roots, self.options.owners, self.options.xattrs, False)
                if kind == b"N":
                    renames.add((record[1], record[2]))
                if kind in (b"B", b"D", b"L", b"A", b"R", b"N"):
                    self.stats.operations += 1
                apply(record)
            raise wire.StreamClosed(f"the watch on {source.name} ended by itself")
        finally:
            if apply is not None:
                self._settle(apply, renames)

    _needs_pass = False

    def _settle(self, apply: Any, renames: set[tuple[int, bytes]]) -> None:
        """The batch is applied; a rename whose old name the target did not have asks for a pass."""
        problems, _ = apply.finish()
        for index, rel, message in problems:
            self.stats.problems.append(f"{shown(self.pairs[index].target + b'/' + rel)}: {message}")
            self.say(f"replication: {self.stats.problems[-1]}")
            if (index, rel) in renames:
                self._needs_pass = True

    def _end(self, source: RemoteTree) -> str:
        """Ask the agent to stop, and apply nothing more (what it still sends is for the next start)."""
        source.session.channel.send(codec.OPS)
        for record in self._records(source):
            if self.cutover == "discard" and record[0] in (b"B", b"D", b"L", b"A", b"R", b"N", b"H"):
                self.stats.discarded += 1
        return "stopped"


def replicate(
    connect: Callable[[], RemoteTree],
    target: Any,
    pairs: list[Pair],
    rules: RuleSet,
    options: Options,
    stop: threading.Event,
    *,
    say: Callable[[str], None] = print,
    initial_pass: bool = True,
    control: Any = None,
) -> ReplicationStats:
    """Run a `Replicator` until ``stop`` (or a cutover's request through ``control``); a root going is
    reported through ``say`` and ends it."""
    replicator = Replicator(connect, target, pairs, rules, options, say=say, control=control)
    started = time.time()
    try:
        stats = replicator.run(stop, initial_pass=initial_pass)
        if stats.ended == "cutover":
            say(
                f"replication stopped for the cutover ({replicator.cutover}): "
                + (
                    f"{stats.discarded} queued change(s) discarded, the final pass sends what they were"
                    if replicator.cutover == "discard"
                    else "every queued change applied"
                )
            )
        return stats
    except RootGone as exc:
        say(f"replication stopped: {exc}")
        replicator.stats.ended = "root gone"
        return replicator.stats
    finally:
        say(f"replication ran {time.time() - started:.0f}s: {replicator.stats.operations} change(s) applied")
