"""`migrate replicate`: continuous replication of one data-only server, from its playbook settings.

Kept apart from the steps: replication is not a step with an end but a process that runs until Ctrl-C
(or a root of the set goes); it journals nothing, and the cutover's final pass, run by `migrate cutover`
once replication is stopped, is what makes the target complete and durable.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from .mirror import LocalTree, Options, RemoteTree, pairs_for
from .replicate import ReplicationStats, replicate
from .rules import RuleSet


def replicate_server(
    playbook: Any, name: str, stop: threading.Event, say: Callable[[str], None]
) -> ReplicationStats:
    """Replicate server ``name`` (a ``data:`` server) until ``stop``; raises ValueError for a bad setup."""
    from orchestrator.transport.ssh import SshTransport

    server = playbook.server(name)
    data = server.data
    if data is None:
        raise ValueError(f"{name} has no data: section; replicate is for data-only servers")
    rules = RuleSet.from_config(data.rules)
    pairs = pairs_for(rules, data.mapping, name, data.target_path, data.paths)
    options = Options(
        compare=data.compare,
        orphans=data.orphans,
        orphans_path=data.orphans_path.encode() if data.orphans_path else None,
        block_size=data.block_size,
        xattrs=data.xattrs,
        owners=data.owners,
        retries=data.retries,
    )
    transports: list[Any] = []

    def connect() -> RemoteTree:
        transport = SshTransport.from_source(server.source)
        transports.append(transport)
        return RemoteTree(transport)

    target: Any = (
        LocalTree() if data.target_host == "local" else RemoteTree(SshTransport.from_source(data.target_host))
    )
    try:
        return replicate(connect, target, pairs, rules, options, stop, say=say)
    finally:
        target.close()
        for transport in transports:
            with contextlib.suppress(Exception):
                transport.close()
