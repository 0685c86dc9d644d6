"""When the next incremental pass of a warm migration is due, and the loop that keeps servers in sync.

The cadence is ``sync.interval`` after the end of the last pass. With ``sync.adaptive`` it is
``min(max(interval, last_pass_duration / 2), max_interval)``:

- never shorter than ``interval``: the playbook's cadence is the floor;
- at least half the last pass's length: a pass that ran long means a busy source or a thin link, and a
  pause of half its length caps warm syncing at two thirds of the time (pass, half-pass pause, ...), so
  production traffic and the source's disks always get a third back, instead of passes running back to
  back and never letting the change set shrink;
- at most ``max_interval``: however slow the passes, the replica is never left staler than that (plus
  one pass), so a cutover's final delta stays bounded.

The same schedule serves both ways of keeping a plan warm: `migrate execute --keep-syncing` waits at the
cutover gate running the passes itself, and a cron line ``*/5 * * * * migrate sync --due wave.yaml``
runs only the passes that are due. Either way a pass is the plan's own ``sync`` step, journaled as
`migrate sync` journals it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.convergence import assess
from orchestrator.playbook.models import SyncOptions

POLL_SECONDS = 5.0  # how often a waiting keeper looks whether another command cut the servers over


def next_interval(options: SyncOptions, last_duration: float | None) -> float:
    """Seconds from the end of the last pass to the start of the next one."""
    interval = float(options.interval)
    if not options.adaptive:
        return interval
    return min(max(interval, float(last_duration or 0.0) / 2), float(options.max_interval))


def pass_finished_at(entry: Mapping[str, Any]) -> float:
    """When a journaled pass ended (older entries have only its start and length)."""
    finished = entry.get("finished_at")
    if finished is not None:
        return float(finished)
    return float(entry["started_at"]) + float(entry.get("duration", 0.0))


def next_due(passes: Sequence[Mapping[str, Any]], options: SyncOptions) -> float | None:
    """Epoch seconds the next pass is due; None without any pass (no full mirror yet)."""
    if not passes:
        return None
    last = passes[-1]
    return pass_finished_at(last) + next_interval(options, float(last.get("duration", 0.0)))


def keeps_syncing(states: Mapping[str, str], server: str) -> bool:
    """Mirrored and not past the cutover gate: the servers warm passes are for.

    A gate that refused (failed) leaves the server replicating, so passes go on; once the gate is
    passed, the cutover's own final pass is the last.
    """
    mirrored = "done" in (states.get(f"{server}/mirror"), states.get(f"{server}/mirror_files"))
    return mirrored and states.get(f"{server}/cutover_gate") not in (
        "done",
        "running",
    )


@dataclass(frozen=True)
class PassSchedule:
    """One server's warm-migration clock, as `migrate status` shows it."""

    server: str
    syncing: bool  # mirrored and not past the cutover gate
    last_started: float | None
    last_finished: float | None
    last_bytes: int | None
    last_duration: float | None
    lag: float | None
    convergence: str | None
    next_due: float | None  # None: no pass to schedule (not mirrored yet, or past the gate)
    final_delta: float | None  # seconds a final pass would take if cut over now

    def due(self, now: float) -> bool:
        return self.syncing and self.next_due is not None and self.next_due <= now


def schedule_of(
    server: str,
    passes: Sequence[Mapping[str, Any]],
    states: Mapping[str, str],
    options: SyncOptions,
    now: float,
) -> PassSchedule:
    syncing = keeps_syncing(states, server)
    verdict = assess(passes, interval=float(options.interval), now=now)
    last = passes[-1] if passes else None
    return PassSchedule(
        server=server,
        syncing=syncing,
        last_started=float(last["started_at"]) if last else None,
        last_finished=pass_finished_at(last) if last else None,
        last_bytes=verdict.last_bytes,
        last_duration=verdict.last_duration,
        lag=verdict.lag,
        convergence=verdict.state if passes else None,
        next_due=next_due(passes, options) if syncing else None,
        final_delta=verdict.estimated_final_delta,
    )


def schedules(
    journal: Any, playbook: Any, names: Sequence[str], now: float | None = None
) -> list[PassSchedule]:
    """The clock of each named server, from the journal's pass history (a `Journal`, read-only is fine)."""
    now = time.time() if now is None else now
    states = journal.states()
    result = []
    for name in names:
        passes = (journal.load_checkpoint(f"{name}/passes") or {}).get("passes", [])
        options = playbook.sync_for(playbook.server(name))
        result.append(schedule_of(name, passes, states, options, now))
    return result


# ---------------------------------------------------------------- the keeper


@dataclass
class KeeperOutcome:
    status: str  # "cut over" | "cancelled" | "plan changed"
    passes: int


PassRunner = Callable[[list[str]], str]  # due servers -> "done" | "failed" | "cancelled" | "busy" | "changed"


def keep_syncing(
    names: Sequence[str],
    *,
    clock: Callable[[Sequence[str], float], list[PassSchedule]],
    run_pass: PassRunner,
    stopped: threading.Event,
    say: Callable[[str], None],
    now: Callable[[], float] = time.time,
    poll: float = POLL_SECONDS,
) -> KeeperOutcome:
    """Run due passes until every server is past the cutover gate, or ``stopped`` is set (Ctrl-C).

    ``clock`` reads the schedules afresh each round, so a pass run by another command (a manual
    `migrate sync`) moves the next one back, and a cutover by another command ends the loop. A failed
    pass is not retried before its server's next interval (the executor has already retried it), so a
    broken source does not spin.
    """
    held_back: dict[str, float] = {}  # server -> not before (after a failed pass)
    passes = 0
    announced: float | None = None
    while not stopped.is_set():
        moment = now()
        clocks = clock(names, moment)
        live = [c for c in clocks if c.syncing]
        if not live:
            return KeeperOutcome("cut over", passes)
        due = [c.server for c in live if c.due(moment) and held_back.get(c.server, 0.0) <= moment]
        if due:
            outcome = run_pass(due)
            announced = None
            if outcome in ("cancelled", "changed"):
                return KeeperOutcome("cancelled" if outcome == "cancelled" else "plan changed", passes)
            if outcome == "busy":
                stopped.wait(poll)
                continue
            passes += 1
            if outcome == "failed":
                after = now()
                for c in live:
                    if c.server in due:
                        wait = (
                            c.next_due - c.last_finished
                            if c.next_due is not None and c.last_finished is not None
                            else poll
                        )
                        held_back[c.server] = after + wait
                say(f"the pass of {', '.join(due)} failed; trying again at its next interval")
            continue
        upcoming = [
            max(c.next_due or moment, held_back.get(c.server, 0.0)) for c in live if c.next_due is not None
        ]
        wake = min(upcoming) if upcoming else moment + poll
        if announced != wake:
            announced = wake
            waiting = ", ".join(
                f"{c.server} in {max(0.0, (c.next_due or moment) - moment):.0f}s"
                for c in live
                if c.next_due is not None
            )
            say(f"keeping in sync: next pass {waiting} (Ctrl-C stops; state is kept)")
        stopped.wait(max(0.05, min(poll, wake - moment)))
    return KeeperOutcome("cancelled", passes)
