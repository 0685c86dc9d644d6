"""The planner: the graph's shape, determinism, shared appliances, cross-server order and cycles."""

from __future__ import annotations

from typing import Any

import networkx as nx
import pytest

from orchestrator.planner import MAX_DISKS_PER_APPLIANCE, PlanError, build_plan
from orchestrator.playbook.models import Playbook


def server(name: str, **target: Any) -> dict[str, Any]:
    extra = {k: target.pop(k) for k in ("depends_on", "wave", "dns_records", "cutover") if k in target}
    return {
        "name": name,
        "source": {"type": "image", "path": f"/img/{name}.raw"},
        "target": {"provider": "local", **target},
        **extra,
    }


def playbook(*servers: dict[str, Any], **defaults: Any) -> Playbook:
    return Playbook.model_validate(
        {
            "apiVersion": "hvmigrate/v1",
            "kind": "MigrationPlaybook",
            "name": "p",
            "defaults": defaults,
            "providers": {
                "local": {"type": "sim", "root": "/sim"},
                "other": {"type": "sim", "root": "/sim2"},
            },
            "dns": {"corp": {"type": "zonefile", "path": "/z", "zone": "corp.test"}},
            "servers": list(servers),
        }
    )


def kinds_in_order(plan: Any, name: str, phases: tuple[str, ...] = ("replicate", "cutover")) -> list[str]:
    sub = plan.graph.subgraph([s.id for s in plan.server_steps(name) if s.phase in phases])
    return [plan.node(n).kind for n in nx.topological_sort(sub)]


def test_server_chain_follows_design_order() -> None:
    plan = build_plan(
        playbook(
            server(
                "db01",
                dns_records=[{"provider": "corp", "name": "db01"}],
                cutover={"pre_script": "true", "post_script": "true"},
            )
        )
    )
    assert kinds_in_order(plan, "db01") == [
        "validate",
        "discover_source",
        "create_disks",
        "attach_disks",
        "mirror",
        "sync",
        "stage_system_state",
        "remap_nics",
        "cutover_gate",
        "check_dns",
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
    ]


def test_test_cutover_is_its_own_phase_branching_off_a_staged_replica() -> None:
    plan = build_plan(playbook(server("db01")))
    assert kinds_in_order(plan, "db01", ("test",)) == [
        "clone_test_disks",
        "stage_test_copy",
        "create_test_copy",
        "power_on_test_copy",
        "verify_test_copy",
    ]
    assert list(plan.graph.predecessors("db01/clone_test_disks")) == ["db01/remap_nics"]
    assert not any(plan.node(n).phase == "test" for n in nx.descendants(plan.graph, "db01/cutover_gate"))


def test_optional_steps_are_left_out_when_they_would_do_nothing() -> None:
    plan = build_plan(playbook(server("a", cutover={"shutdown_source": False})))
    kinds = set(kinds_in_order(plan, "a"))
    assert not kinds & {"run_pre_script", "run_post_script", "check_dns", "update_dns", "shutdown_source"}


def test_one_shared_appliance_per_target_host_and_dedicated_per_server() -> None:
    plan = build_plan(
        playbook(
            server("a"),
            server("b"),
            server("c", provider="other"),
            server("d", appliance="dedicated"),
            server("e", appliance="host"),
        )
    )
    provisions = sorted(s.id for s in plan.steps() if s.kind == "provision_appliance")
    assert provisions == [
        "appliance/local/default/0/provision_appliance",
        "appliance/other/default/0/provision_appliance",
        "d/provision_appliance",
    ]
    shared = "appliance/local/default/0/provision_appliance"
    assert set(plan.graph.successors(shared)) == {"a/attach_disks", "b/attach_disks"}
    release = "appliance/local/default/0/release_appliance"
    assert set(plan.graph.predecessors(release)) == {"a/detach_disks", "b/detach_disks"}
    assert plan.node("e/attach_disks").params["appliance_step"] is None


def test_a_second_appliance_when_the_first_would_pass_its_disk_limit() -> None:
    many = [{"source": f"d{i}"} for i in range(40)]
    plan = build_plan(playbook(server("a", disks=many), server("b", disks=many)))
    assert plan.node("a/attach_disks").params["appliance_step"].endswith("/0/provision_appliance")
    assert plan.node("b/attach_disks").params["appliance_step"].endswith("/1/provision_appliance")
    assert MAX_DISKS_PER_APPLIANCE < 40 + 40


def test_depends_on_orders_cutover_after_the_dependency_is_up() -> None:
    plan = build_plan(playbook(server("db"), server("web", depends_on=["db"])))
    assert nx.has_path(plan.graph, "db/verify_replica", "web/cutover_gate")
    assert not nx.has_path(plan.graph, "db/mirror", "web/mirror")  # replication stays parallel


def test_waves_are_ordered_through_one_barrier() -> None:
    plan = build_plan(playbook(server("a", wave=1), server("b", wave=1), server("c", wave=2)))
    assert set(plan.graph.predecessors("wave/1/done")) == {"a/verify_replica", "b/verify_replica"}
    assert "wave/1/done" in plan.graph.predecessors("c/cutover_gate")


def test_cycle_and_unknown_dependency_are_refused() -> None:
    with pytest.raises(PlanError, match="cycle: a -> b"):
        build_plan(playbook(server("a", depends_on=["b"]), server("b", depends_on=["a"])))
    with pytest.raises(PlanError, match="unknown server 'nope'"):
        build_plan(playbook(server("a", depends_on=["nope"])))


def test_plan_is_deterministic_and_hash_tracks_meaningful_change() -> None:
    one = build_plan(playbook(server("a"), server("b")))
    two = build_plan(playbook(server("a"), server("b")))
    assert one.hash == two.hash and one.to_json() == two.to_json()
    changed = build_plan(playbook(server("a"), server("b", cpus=8)))
    assert changed.hash != one.hash
    assert changed.node("b/create_replica").params != one.node("b/create_replica").params
    assert changed.node("b/mirror") == one.node("b/mirror")  # --replan keeps the mirror


def test_cleanup_node_undoes_transient_steps_only() -> None:
    plan = build_plan(playbook(server("a")))
    cleanup = plan.node("a/cleanup_on_error")
    assert cleanup.phase == "cleanup"
    assert set(cleanup.cleanup_of) == {"a/attach_disks", "a/create_replica", "a/power_on_replica"}


def test_data_steps_hold_source_target_and_server_slots() -> None:
    plan = build_plan(playbook(server("a")))
    assert set(plan.node("a/mirror").slots) == {
        ("servers", "*"),
        ("source_host", "image:/img"),
        ("target_host", "local/default"),
    }
