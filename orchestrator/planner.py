"""Playbook -> Plan: one dependency graph of steps for every server of a wave.

Planning many servers as ONE graph is what lets the executor share appliances, respect per-host slots and
order cutovers across servers, and what lets the simulator find the critical path of the whole wave. The
plan is deterministic (same playbook, same step ids, same hash), so a journal can tell whether the plan it
holds is still the plan the playbook asks for.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from orchestrator.playbook.models import (
    ImageSource,
    Playbook,
    Server,
    SshSource,
    VmSource,
    WinrmSource,
)
from orchestrator.steps.base import Phase, StepNode

MAX_DISKS_PER_APPLIANCE = 60

# The per-server chain of DESIGN.md, in order; optional steps are left out when they would do nothing.
REPLICATE_CHAIN = ("mirror", "sync", "stage_system_state", "remap_nics")
CUTOVER_CHAIN = (
    "cutover_gate",
    "check_dns",  # before anything stops: a rejected DNS key must not leave a stopped source behind
    "run_pre_script",
    "quiesce_source",
    "final_sync",
    "shutdown_source",
    "detach_disks",
    "create_replica",
    "power_on_replica",
    "verify_replica",
    "update_dns",
    "run_post_script",
)
# A test cutover (`migrate cutover --test`): a copy of the replica, booted on isolated networks from clones
# of its disks while the source runs and replication goes on. Its own phase, run only when asked.
TEST_CHAIN = (
    "clone_test_disks",
    "stage_test_copy",
    "create_test_copy",
    "power_on_test_copy",
    "verify_test_copy",
)
# Undone by the server's cleanup node when the server fails: what holds an appliance or half-boots a replica.
# Replica disks are kept, so a re-run resumes the mirror instead of starting over (as Coriolis keeps volumes).
TRANSIENT = ("attach_disks", "create_replica", "power_on_replica")


class PlanError(Exception):
    """The playbook cannot be turned into a graph (a cycle, an unknown server); validation explains more."""


@dataclass
class Plan:
    graph: nx.DiGraph
    playbook_name: str
    playbook_sha256: str
    servers: list[str]
    settings_digest: str = ""
    _hash: str | None = field(default=None, repr=False)

    def node(self, step_id: str) -> StepNode:
        return self.graph.nodes[step_id]["step"]

    def steps(self) -> Iterator[StepNode]:
        for _, data in self.graph.nodes(data=True):
            yield data["step"]

    def server_steps(self, server: str) -> list[StepNode]:
        return [s for s in self.steps() if s.server == server]

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    @property
    def hash(self) -> str:
        """Content hash of nodes and edges: changes iff the work the plan describes changes."""
        if self._hash is None:
            digest = hashlib.sha256(self.settings_digest.encode())
            for node_id in sorted(self.graph.nodes):
                digest.update(node_hash(self.node(node_id)).encode())
                digest.update(",".join(sorted(self.graph.predecessors(node_id))).encode())
            self._hash = digest.hexdigest()[:16]
        return self._hash

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "hvmigrate/plan/v1",
            "playbook": self.playbook_name,
            "playbook_sha256": self.playbook_sha256,
            "plan_hash": self.hash,
            "settings_digest": self.settings_digest,
            "servers": self.servers,
            "steps": [
                {**self.node(n).to_json(), "after": sorted(self.graph.predecessors(n))}
                for n in nx.lexicographical_topological_sort(self.graph)
            ],
        }


def node_hash(step: StepNode) -> str:
    return hashlib.sha256(json.dumps(step.to_json(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_host(server: Server) -> str:
    """Names the per-source-host slot: the machine whose disks and NIC a mirror loads."""
    source = server.source
    if isinstance(source, SshSource | WinrmSource):
        return source.host
    if isinstance(source, VmSource):
        return f"{source.provider}"
    assert isinstance(source, ImageSource)
    return f"image:{source.path.parent}"


def target_host(server: Server) -> str:
    return f"{server.target.provider}/{server.target.host or 'default'}"


def build_plan(playbook: Playbook, playbook_sha256: str = "") -> Plan:
    # A 10,000-server plan allocates about a million containers that all stay alive; letting the cyclic
    # collector rescan them again and again doubled planning time, and nothing made here is garbage.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _build_plan(playbook, playbook_sha256)
    finally:
        if enabled:
            gc.enable()


def _build_plan(playbook: Playbook, playbook_sha256: str) -> Plan:
    graph = nx.DiGraph()
    names = [s.name for s in playbook.servers]
    known = set(names)
    for server in playbook.servers:
        for dep in server.depends_on:
            if dep not in known:
                raise PlanError(f"server {server.name} depends on unknown server {dep!r}")

    appliances = _assign_appliances(playbook.servers)
    last_step: dict[str, str] = {}
    first_cutover: dict[str, str] = {}
    for server in playbook.servers:
        if server.data is not None:
            last_step[server.name], first_cutover[server.name] = _add_data_server(graph, playbook, server)
            continue
        last_step[server.name], first_cutover[server.name] = _add_server(
            graph, playbook, server, appliances.get(server.name)
        )

    for server in playbook.servers:
        for dep in server.depends_on:
            graph.add_edge(last_step[dep], first_cutover[server.name])
    _add_wave_barriers(graph, playbook.servers, last_step, first_cutover)

    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        servers = " -> ".join(dict.fromkeys(graph.nodes[a]["step"].server or a for a, _ in cycle))
        raise PlanError(f"depends_on forms a cycle: {servers}")
    # Where notices go is not part of the work: changing it must not make the journal's plan stale.
    settings = hashlib.sha256(playbook.model_dump_json(exclude={"notifications"}).encode()).hexdigest()[:16]
    return Plan(
        graph=graph,
        playbook_name=playbook.name,
        playbook_sha256=playbook_sha256,
        servers=names,
        settings_digest=settings,
    )


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def config_digests(server: Server) -> dict[str, str]:
    """What each step kind's work depends on: when it changes, ``--replan`` runs that step again."""
    target = server.target.model_dump(mode="json")
    disks, nics = target.pop("disks"), target.pop("nics")
    return {
        "discover_source": _digest(server.source.model_dump(mode="json")),
        "create_disks": _digest(disks),
        "remap_nics": _digest(nics),
        "stage_system_state": _digest([target["hostname"], target["keep_hostname"]]),
        "create_replica": _digest(target),
        "update_dns": _digest([r.model_dump(mode="json") for r in server.dns_records]),
        "check_dns": _digest([r.model_dump(mode="json") for r in server.dns_records]),
        "stage_test_copy": _digest(nics),
        "create_test_copy": _digest(nics),
    }


@dataclass(frozen=True)
class _Appliance:
    provision_id: str
    release_id: str
    params: dict[str, Any]
    shared: bool


def _assign_appliances(servers: Iterable[Server]) -> dict[str, _Appliance]:
    """One shared appliance per target host, a second one when the first would pass 60 disks."""
    assigned: dict[str, _Appliance] = {}
    fill: dict[str, tuple[int, int]] = {}  # target host -> (appliance index, disks on it)
    for server in servers:
        target = server.target
        if target is None or target.appliance == "host":
            continue
        host = target.host or "default"
        if target.appliance == "dedicated":
            assigned[server.name] = _Appliance(
                f"{server.name}/provision_appliance",
                f"{server.name}/release_appliance",
                {"provider": target.provider, "host": target.host, "name": f"hvm-appliance-{server.name}"},
                shared=False,
            )
            continue
        key = f"{target.provider}/{host}"
        disks = max(1, len(target.disks))
        index, used = fill.get(key, (0, 0))
        if used and used + disks > MAX_DISKS_PER_APPLIANCE:
            index, used = index + 1, 0
        fill[key] = (index, used + disks)
        base = f"appliance/{key}/{index}"
        assigned[server.name] = _Appliance(
            f"{base}/provision_appliance",
            f"{base}/release_appliance",
            {"provider": target.provider, "host": target.host, "name": f"hvm-appliance-{host}-{index}"},
            shared=True,
        )
    return assigned


def _add_server(
    graph: nx.DiGraph, playbook: Playbook, server: Server, appliance: _Appliance | None
) -> tuple[str, str]:
    name = server.name
    cutover = playbook.cutover_for(server)
    src, dst = ("source_host", source_host(server)), ("target_host", target_host(server))
    data_slots = (("servers", "*"), src, dst)
    slots_for = {
        "discover_source": (src,),
        "mirror": data_slots,
        "sync": data_slots,
        "final_sync": data_slots,
        "quiesce_source": (src,),
        "shutdown_source": (src,),
        "validate": (),
        "cutover_gate": (),
        "check_dns": (),
        "run_pre_script": (),
        "run_post_script": (),
        "update_dns": (),
    }

    digests = config_digests(server)

    def add(kind: str, phase: Phase, **params: Any) -> str:
        step_id = f"{name}/{kind}"
        if kind in digests:
            params["config"] = digests[kind]
        graph.add_node(
            step_id,
            step=StepNode(
                id=step_id,
                kind=kind,
                server=name,
                phase=phase,
                params=params,
                slots=slots_for.get(kind, (dst,)),
            ),
        )
        return step_id

    chain = [add("validate", "replicate"), add("discover_source", "replicate")]
    create = add("create_disks", "replicate")
    graph.add_edge(chain[-1], create)
    attach = add("attach_disks", "replicate", appliance_step=appliance.provision_id if appliance else None)
    graph.add_edge(create, attach)
    if appliance:
        if appliance.provision_id not in graph:
            _add_appliance_node(graph, appliance, "provision_appliance", dst)
            _add_appliance_node(graph, appliance, "release_appliance", dst)
        if not appliance.shared:
            graph.add_edge(chain[-1], appliance.provision_id)
        graph.add_edge(appliance.provision_id, attach)
    chain += [create, attach]
    chain += [add(kind, "replicate") for kind in REPLICATE_CHAIN]

    test_chain = [chain[-1]] + [add(kind, "test") for kind in TEST_CHAIN]
    for before, after in itertools.pairwise(test_chain):
        graph.add_edge(before, after)

    first_cutover = add("cutover_gate", "cutover")
    chain.append(first_cutover)
    for kind in CUTOVER_CHAIN[1:]:
        if kind == "run_pre_script" and not cutover.pre_script:
            continue
        if kind == "run_post_script" and not cutover.post_script:
            continue
        if kind == "shutdown_source" and not cutover.shutdown_source:
            continue
        if kind in ("check_dns", "update_dns") and not server.dns_records:
            continue
        chain.append(add(kind, "cutover"))
    for before, after in itertools.pairwise(chain):
        graph.add_edge(before, after)
    last = chain[-1]
    if appliance:
        graph.add_edge(f"{name}/detach_disks", appliance.release_id)

    cleanup_id = f"{name}/cleanup_on_error"
    graph.add_node(
        cleanup_id,
        step=StepNode(
            id=cleanup_id,
            kind="cleanup_on_error",
            server=name,
            phase="cleanup",
            slots=(dst,),
            cleanup_of=tuple(f"{name}/{kind}" for kind in reversed(TRANSIENT))
            + ((appliance.provision_id,) if appliance and not appliance.shared else ()),
        ),
    )
    return last, first_cutover


# A data-only server (files and folders into a running target server): no VM, disks or appliance.
DATA_CHAIN = ("validate", "mirror_files", "sync_files")
DATA_CUTOVER_CHAIN = (
    "cutover_gate",
    "check_dns",
    "drain_replication",  # a running `migrate replicate`: its queue drained while the source still serves
    "run_pre_script",
    "quiesce_source",  # source.quiesce: services stops the services that write the data
    "final_files_pass",
    "shutdown_source",
    "update_dns",
    "run_post_script",
)


def _add_data_server(graph: nx.DiGraph, playbook: Playbook, server: Server) -> tuple[str, str]:
    assert server.data is not None
    name = server.name
    cutover = playbook.cutover_for(server)
    src = ("source_host", source_host(server))
    target = server.data.target_host
    dst = ("target_host", "local" if target == "local" else target.host)
    data_slots = (("servers", "*"), src, dst)
    source = server.source
    quiesces = isinstance(source, SshSource) and (source.quiesce != "none" or source.quiesce_command)
    digest = _digest(server.data.model_dump(mode="json"))
    chain: list[str] = []
    for kind in DATA_CHAIN + DATA_CUTOVER_CHAIN:
        if kind in ("run_pre_script", "run_post_script") and not getattr(cutover, kind[4:]):
            continue
        if kind == "shutdown_source" and not cutover.shutdown_source:
            continue
        if kind == "quiesce_source" and not quiesces:
            continue
        if kind in ("check_dns", "update_dns") and not server.dns_records:
            continue
        step_id = f"{name}/{kind}"
        params: dict[str, Any] = {"config": digest} if kind.endswith("files") or kind.endswith("pass") else {}
        slots = data_slots if kind in ("mirror_files", "sync_files", "final_files_pass") else ()
        if kind in ("quiesce_source", "shutdown_source"):
            slots = (src,)
        phase: Phase = "replicate" if kind in DATA_CHAIN else "cutover"
        graph.add_node(
            step_id,
            step=StepNode(id=step_id, kind=kind, server=name, phase=phase, params=params, slots=slots),
        )
        if chain:
            graph.add_edge(chain[-1], step_id)
        chain.append(step_id)
    return chain[-1], f"{name}/cutover_gate"


def _add_appliance_node(graph: nx.DiGraph, appliance: _Appliance, kind: str, slot: tuple[str, str]) -> None:
    step_id = appliance.provision_id if kind == "provision_appliance" else appliance.release_id
    graph.add_node(
        step_id,
        step=StepNode(
            id=step_id,
            kind=kind,
            server=None if appliance.shared else step_id.split("/")[0],
            phase="replicate" if kind == "provision_appliance" else "cutover",
            params=appliance.params,
            slots=(slot,),
        ),
    )


def _add_wave_barriers(
    graph: nx.DiGraph, servers: list[Server], last_step: dict[str, str], first_cutover: dict[str, str]
) -> None:
    """Servers of wave N+1 cut over only after every server of wave N is done, through one barrier node."""
    waves = sorted({s.wave for s in servers if s.wave is not None})
    for earlier, later in itertools.pairwise(waves):
        barrier = f"wave/{earlier}/done"
        graph.add_node(barrier, step=StepNode(id=barrier, kind="barrier", server=None, phase="cutover"))
        for server in servers:
            if server.wave == earlier:
                graph.add_edge(last_step[server.name], barrier)
            elif server.wave == later:
                graph.add_edge(barrier, first_cutover[server.name])
