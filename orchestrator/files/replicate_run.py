"""`migrate replicate`: continuous replication of one data-only server, from its playbook settings.

Kept apart from the steps: replication is not a step with an end but a process that runs until Ctrl-C,
a root of the set going, or `migrate cutover` asking it to stop (replicate_control.py: the cutover waits
for its queue to drain, then has it apply or discard what is still queued); it journals nothing, and the
cutover's final pass, run once replication stopped, is what makes the target complete and durable.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .mirror import LocalTree, Options, RemoteTree, pairs_for
from .replicate import ReplicationStats, replicate
from .replicate_control import ReplicationControl
from .rules import RuleSet


def replicate_server(
    playbook: Any,
    name: str,
    stop: threading.Event,
    say: Callable[[str], None],
    state_dir: Path | None = None,
) -> ReplicationStats:
    """Replicate server ``name`` (a ``data:`` server) until ``stop`` or a cutover asks it to stop (through
    the files in ``state_dir``, see replicate_control.py); raises ValueError for a bad setup and
    PlanBusy when another process replicates it already."""
    from orchestrator.transport.ssh import SshTransport

    server = playbook.server(name)
    data = server.data
    if data is None:
        raise ValueError(f"{name} has no data: section; replicate is for data-only servers")
    rules = RuleSet.from_config(data.rules)
    pairs = pairs_for(rules, data.mapping, name, data.target_path, data.paths)
    options = Options.from_data(data)
    transports: list[Any] = []

    def connect() -> RemoteTree:
        transport = SshTransport.from_source(server.source)
        transports.append(transport)
        return RemoteTree(transport)

    target: Any = (
        LocalTree() if data.target_host == "local" else RemoteTree(SshTransport.from_source(data.target_host))
    )
    control = ReplicationControl(state_dir, name) if state_dir is not None else None
    stats = ReplicationStats()
    try:
        if control is not None:
            control.hold(f"replicate {name}")
        stats = replicate(connect, target, pairs, rules, options, stop, say=say, control=control)
        return stats
    finally:
        if control is not None and control.lock.held:
            control.release(stats.ended or "stopped", queued=0, discarded=stats.discarded)
        target.close()
        for transport in transports:
            with contextlib.suppress(Exception):
                transport.close()
