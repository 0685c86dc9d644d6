"""The dry run: a 3-server playbook through the real planner and Scheduler, in virtual time.

Every expected figure below is derived from the playbook's own cost model (or from ``os.stat`` of real
sparse files), never copied from a previous run, so a change in how the simulator schedules or costs a
step shows up as a failure here.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.planner import build_plan, source_host
from orchestrator.playbook.models import Playbook
from orchestrator.report.model import FindingView, RunReport, StepTiming
from orchestrator.simulate import Simulation, SizeInfo, simulate

GiB = 1024**3
MiB = 1024**2
LINK = 125_000_000  # bytes/s: simulation.link_bandwidth's default, 1 Gbit/s


def make_playbook(tmp_path: Path, **defaults: Any) -> Playbook:
    """db01 and app01 share a source host; web01 is a sparse image file on a second target host."""
    image = tmp_path / "images" / "web01.raw"
    if not image.exists():
        image.parent.mkdir(parents=True, exist_ok=True)
        with open(image, "wb") as f:  # 1 GiB apparent, 2 MiB of data
            f.truncate(GiB)
            f.write(b"\x5a" * MiB)
            f.seek(512 * MiB)
            f.write(b"\xa5" * MiB)
    return Playbook.model_validate(
        {
            "apiVersion": "hvmigrate/v1",
            "kind": "MigrationPlaybook",
            "name": "three",
            "defaults": {"mirror": {"compression": "none"}, **defaults},
            "providers": {"local": {"type": "sim", "root": str(tmp_path / "sim-hypervisor")}},
            "dns": {"corp": {"type": "zonefile", "path": str(tmp_path / "corp.zone"), "zone": "corp.test"}},
            "servers": [
                {
                    "name": "db01",
                    "source": {"type": "ssh", "host": "10.0.0.6"},
                    "target": {"provider": "local", "host": "h1"},
                    "estimate": {"disks": ["20GiB"], "used_fraction": 0.5},
                    "dns_records": [
                        {"provider": "corp", "name": "db01", "ttl": 300},
                        {"provider": "corp", "name": "db", "type": "CNAME", "value": "db01", "ttl": 60},
                    ],
                },
                {
                    "name": "app01",
                    "depends_on": ["db01"],
                    "source": {"type": "ssh", "host": "10.0.0.6"},
                    "target": {"provider": "local", "host": "h1"},
                    "estimate": {"disks": ["10GiB"], "used_fraction": 0.5},
                },
                {
                    "name": "web01",
                    "source": {"type": "image", "path": str(image)},
                    "target": {"provider": "local", "host": "h2"},
                },
            ],
        }
    )


def run(playbook: Playbook, **kwargs: Any) -> Simulation:
    return simulate(build_plan(playbook), playbook, **kwargs)


def by_id(report: RunReport) -> dict[str, StepTiming]:
    return {s.step_id: s for s in report.steps}


def test_every_step_starts_after_its_predecessors_end_and_costs_what_the_model_says(tmp_path: Path) -> None:
    playbook = make_playbook(tmp_path)
    plan = build_plan(playbook)
    result = simulate(plan, playbook)
    steps = by_id(result.report)
    expected = {s.id for s in plan.steps() if s.phase in ("replicate", "cutover")}
    assert set(steps) == expected, "every replicate and cutover step; no cleanup node, no test copy"
    for before, after in plan.graph.edges:
        if before in steps and after in steps:
            assert steps[after].start >= steps[before].end, f"{after} started before {before} ended"
    sim = playbook.defaults.simulation
    db = {s.kind: s for s in result.report.steps if s.server == "db01"}
    fixed = {
        "validate": 1.0,
        "discover_source": 5.0,
        "create_disks": sim.disk_create * 1,
        "attach_disks": sim.disk_attach * 1,
        "stage_system_state": sim.staging,
        "remap_nics": sim.staging,
        "cutover_gate": 0.0,
        "quiesce_source": sim.quiesce,
        "shutdown_source": sim.source_shutdown,
        "detach_disks": sim.disk_attach * 1,
        "create_replica": sim.vm_create,
        "update_dns": sim.dns_update,
    }
    for kind, seconds in fixed.items():
        assert db[kind].duration == pytest.approx(seconds), kind
    assert db["power_on_replica"].duration + db["verify_replica"].duration == pytest.approx(sim.replica_boot)
    appliance = steps["appliance/local/h1/0/provision_appliance"]
    assert appliance.duration == pytest.approx(sim.appliance_boot)
    # The replica is done when the last step of the chain ends, and the run ends with the last step.
    assert result.duration == max(s.end for s in result.report.steps)
    assert result.report.duration == result.duration


def shared_bytes(step: StepTiming, group: list[StepTiming], limit: Callable[[float], float]) -> float:
    """What ``step`` moves if its source host's rate ``limit(t)`` is split equally among the data steps
    of ``group`` running at each moment: the fluid model, integrated independently of the simulator."""
    cuts = {step.start, step.end, *WINDOW_EDGES}
    cuts |= {t for s in group for t in (s.start, s.end)}
    points = sorted(t for t in cuts if step.start <= t <= step.end)
    total = 0.0
    for a, b in itertools.pairwise(points):
        middle = (a + b) / 2
        running = sum(1 for s in group if s.start <= middle < s.end)
        total += (b - a) * limit(middle) / running
    return total


WINDOW_EDGES = (600.0,)


def data_steps(report: RunReport, *servers: str) -> list[StepTiming]:
    return [s for s in report.steps if s.server in servers and s.kind in ("mirror", "sync", "final_sync")]


def test_steps_of_one_source_host_share_its_link(tmp_path: Path) -> None:
    """db01 and app01 mirror at once over 10.0.0.6: half the link each while both run."""
    result = run(make_playbook(tmp_path))
    steps = by_id(result.report)
    db, app = steps["db01/mirror"], steps["app01/mirror"]
    assert db.start == app.start
    assert db.bytes == 10 * GiB and app.bytes == 5 * GiB  # 20 GiB and 10 GiB disks, half of each used
    assert app.duration == pytest.approx(5 * GiB / (LINK / 2))
    assert db.duration > 5 * GiB / (LINK / 2) + 5 * GiB / LINK  # app01's sync takes a share too
    group = data_steps(result.report, "db01", "app01")
    for step in group:
        assert shared_bytes(step, group, lambda t: LINK) == pytest.approx(step.bytes), step.step_id
    # Each source host fills its own link, never more: two hosts, two links at the peak.
    assert result.report.peak_bandwidth == pytest.approx(2 * LINK)
    assert max(rate for _, rate in result.report.bandwidth_series) == result.report.peak_bandwidth


def test_sync_and_final_sync_move_what_changed_meanwhile(tmp_path: Path) -> None:
    playbook = make_playbook(tmp_path)
    result = run(playbook)
    steps = by_id(result.report)
    rate = playbook.defaults.simulation.change_rate
    for name in ("db01", "app01"):
        mirror, sync = steps[f"{name}/mirror"], steps[f"{name}/sync"]
        quiesce, final = steps[f"{name}/quiesce_source"], steps[f"{name}/final_sync"]
        assert sync.bytes == int(rate * (sync.start - mirror.start))
        assert final.bytes == int(rate * (quiesce.start - sync.end))
        assert final.start >= quiesce.end
    # app01 cuts over only after db01 is up: its final delta covers that wait.
    assert steps["app01/cutover_gate"].start >= steps["db01/update_dns"].end
    assert steps["app01/final_sync"].bytes > steps["db01/final_sync"].bytes


def test_a_bandwidth_window_halves_the_rate(tmp_path: Path) -> None:
    bandwidth = {
        "limit": "100MiB/s",
        "schedule": [{"days": "mon-fri", "hours": "08:00-18:00", "limit": "50MiB/s"}],
    }
    mirror = {"compression": "none", "bandwidth": bandwidth}
    evening = run(make_playbook(tmp_path, mirror=mirror, simulation={"start_time": "2026-01-05T20:00"}))
    morning = run(make_playbook(tmp_path, mirror=mirror, simulation={"start_time": "2026-01-05T09:00"}))
    fast, slow = by_id(evening.report)["web01/mirror"], by_id(morning.report)["web01/mirror"]
    assert fast.bytes == slow.bytes > 0
    assert fast.bytes / fast.duration == pytest.approx(100 * MiB)
    assert slow.bytes / slow.duration == pytest.approx(50 * MiB)
    assert slow.duration == pytest.approx(2 * fast.duration)
    # The two servers sharing 10.0.0.6 split the host's limit: 25 MiB/s each while both mirror.
    app = by_id(morning.report)["app01/mirror"]
    assert app.bytes / app.duration == pytest.approx(25 * MiB)


def test_the_rate_changes_when_a_window_closes_mid_mirror(tmp_path: Path) -> None:
    bandwidth = {
        "limit": "100MiB/s",
        "schedule": [{"days": "mon", "hours": "08:00-18:00", "limit": "10MiB/s"}],
    }
    playbook = make_playbook(
        tmp_path,
        mirror={"compression": "none", "bandwidth": bandwidth},
        simulation={"start_time": "2026-01-05T17:50"},
    )
    report = run(playbook).report
    steps = by_id(report)
    db, web = steps["db01/mirror"], steps["web01/mirror"]
    assert db.start < WINDOW_EDGES[0] < db.end  # 18:00 falls ten minutes after the clock starts
    group = data_steps(report, "db01", "app01")
    for step in group:
        moved = shared_bytes(step, group, lambda t: 10 * MiB if t < WINDOW_EDGES[0] else 100 * MiB)
        assert moved == pytest.approx(step.bytes), step.step_id
    assert web.end < WINDOW_EDGES[0]  # 2 MiB at 10 MiB/s: long done
    rates = dict(report.bandwidth_series)
    assert rates[WINDOW_EDGES[0]] == pytest.approx(100 * MiB)  # the page turns at 18:00 exactly


def test_per_target_host_one_serializes_the_steps_on_that_host(tmp_path: Path) -> None:
    def intervals(result: Simulation, host: str) -> list[tuple[float, float]]:
        plan_slots = {s.id: s.slots for s in build_plan(make_playbook(tmp_path)).steps()}
        held = [s for s in result.report.steps if ("target_host", f"local/{host}") in plan_slots[s.step_id]]
        return sorted((s.start, s.end) for s in held)

    serial = run(make_playbook(tmp_path, limits={"per_target_host": 1}))
    spans = intervals(serial, "h1")
    assert len(spans) > 10
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, "two steps held target host h1 at once"
    creates = [s for s in serial.report.steps if s.kind == "create_disks" and s.server in ("db01", "app01")]
    first, second = sorted(creates, key=lambda s: s.start)
    assert second.start >= first.end
    # With room for ten, the same two create steps run side by side: the limit is what serialized them.
    parallel = run(make_playbook(tmp_path, limits={"per_target_host": 10}))
    creates = [s for s in parallel.report.steps if s.kind == "create_disks" and s.server in ("db01", "app01")]
    assert creates[0].start == creates[1].start
    assert serial.duration > parallel.duration
    # Waiting for the host is on the critical path too: each step starts as the one before frees a unit.
    steps = by_id(serial.report)
    path = serial.report.critical_path
    assert steps[path[-1]].end == serial.duration
    for before, after in itertools.pairwise(path):
        assert steps[after].start == steps[before].end, f"{after} did not start when {before} ended"
    graph = build_plan(make_playbook(tmp_path)).graph
    waited = [(a, b) for a, b in itertools.pairwise(path) if b not in graph.succ[a]]
    assert waited, "some link of the path is a slot handed over, not a dependency"


def test_downtime_estimate_includes_the_dns_ttl(tmp_path: Path) -> None:
    playbook = make_playbook(tmp_path)
    result = run(playbook)
    servers = {s.name: s for s in result.report.servers}
    steps = by_id(result.report)
    db = servers["db01"]
    assert db.downtime_breakdown["dns_ttl"] == 300.0  # the longest TTL of its records
    assert db.downtime_estimate == pytest.approx(sum(db.downtime_breakdown.values()))
    parts = {
        "quiesce": "quiesce_source",
        "final_delta": "final_sync",
        "shutdown": "shutdown_source",
        "detach": "detach_disks",
        "create": "create_replica",
        "boot": "power_on_replica",
        "verify": "verify_replica",
        "dns_update": "update_dns",
    }
    for part, kind in parts.items():
        assert db.downtime_breakdown[part] == pytest.approx(steps[f"db01/{kind}"].duration, abs=1e-3)
    down_from, up_at = steps["db01/quiesce_source"].start, steps["db01/update_dns"].end
    assert db.downtime_estimate == pytest.approx(up_at - down_from + 300.0, abs=1e-2)  # parts in ms
    web = servers["web01"]  # no DNS records: no TTL to wait for
    assert "dns_ttl" not in web.downtime_breakdown and "dns_update" not in web.downtime_breakdown
    assert web.downtime_estimate < db.downtime_estimate


def test_critical_path_is_the_chain_that_ends_last(tmp_path: Path) -> None:
    result = run(make_playbook(tmp_path))
    report = result.report
    steps = by_id(report)
    path = report.critical_path
    last = max(report.steps, key=lambda s: s.end)
    assert path[-1] == last.step_id and steps[path[-1]].end == report.duration
    assert steps[path[0]].start == 0.0
    for before, after in itertools.pairwise(path):
        assert steps[after].start == steps[before].end, f"{after} did not start when {before} ended"
    assert {s.step_id for s in report.steps if s.critical} == set(path)
    # app01 waits for db01 (depends_on), so db01's cutover lies on the path to app01's end.
    assert "db01/update_dns" in path and path.index("db01/update_dns") < path.index("app01/cutover_gate")


def test_the_simulation_creates_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    playbook = make_playbook(tmp_path)  # writes the image first
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # anything using tempfile would land here

    def listing() -> list[tuple[str, int, float]]:
        return sorted(
            (str(p.relative_to(tmp_path)), p.stat().st_size, p.stat().st_mtime) for p in tmp_path.rglob("*")
        )

    before = listing()
    result = run(playbook)
    assert listing() == before
    assert not (tmp_path / "sim-hypervisor").exists() and not (tmp_path / "corp.zone").exists()
    assert result.report.steps  # it did simulate


def test_image_sizes_come_from_stat(tmp_path: Path) -> None:
    playbook = make_playbook(tmp_path)
    image = tmp_path / "images" / "web01.raw"
    info = os.stat(image)
    allocated = min(info.st_blocks * 512, info.st_size)
    assert allocated < info.st_size, "the test image must be sparse"
    result = run(playbook)
    assert result.size_origin["web01"] == "image"
    assert result.sizes["web01"] == SizeInfo([info.st_size], [allocated])
    web = next(s for s in result.report.servers if s.name == "web01")
    assert web.bytes_total == GiB
    assert by_id(result.report)["web01/mirror"].bytes == allocated
    assert any("stat()" in note for note in result.report.notes)


def test_sizes_given_win_and_unknown_sources_are_assumed_and_noted(tmp_path: Path) -> None:
    playbook = make_playbook(tmp_path)
    playbook.servers[1].estimate = None  # app01: ssh source, nothing known
    given = {"db01": SizeInfo(disks=[8 * GiB, 4 * GiB], used=[2 * GiB, GiB])}
    result = run(playbook, source_sizes=given)
    steps = by_id(result.report)
    assert result.size_origin == {"db01": "given", "app01": "assumed", "web01": "image"}
    assert steps["db01/mirror"].bytes == 3 * GiB
    sim = playbook.defaults.simulation
    assert steps["db01/create_disks"].duration == pytest.approx(2 * sim.disk_create)
    assert steps["app01/mirror"].bytes == 50 * GiB  # 100 GiB assumed, half of it data
    assert any("assumed" in note and "app01" in note for note in result.report.notes)


def test_a_selection_simulates_only_those_steps(tmp_path: Path) -> None:
    playbook = make_playbook(tmp_path)
    plan = build_plan(playbook)
    cutover = {s.id for s in plan.steps() if s.server == "db01" and s.phase == "cutover"}
    result = simulate(plan, playbook, selected=cutover | {"db01/cleanup_on_error"})
    assert {s.step_id for s in result.report.steps} == cutover  # cleanup nodes never run
    steps = by_id(result.report)
    assert steps["db01/cutover_gate"].start == 0.0  # replication counts as done
    with pytest.raises(ValueError, match="not steps of this plan"):
        simulate(plan, playbook, selected={"nope/mirror"})


def test_findings_pass_through_and_the_report_round_trips(tmp_path: Path) -> None:
    class Finding:  # what the validator hands over: attributes, a severity that is a str enum
        rule_id, severity, message, fix, server, location = (
            "DNS001",
            "warning",
            "TTL is long",
            "lower it",
            "db01",
            None,
        )

    view = FindingView("NET002", "critical", "no network", "map one", "web01", "playbook.yaml:12:3")
    result = run(make_playbook(tmp_path), findings=[view, Finding()])
    report = result.report
    assert report.kind == "simulation" and report.is_simulation
    assert report.findings[0] == view
    assert report.findings[1] == FindingView("DNS001", "warning", "TTL is long", "lower it", "db01", None)
    assert report.plan_hash == build_plan(make_playbook(tmp_path)).hash
    assert report.bytes_moved == sum(s.bytes for s in report.steps)
    assert report.peak_bandwidth == max(rate for _, rate in report.bandwidth_series)
    assert report.bandwidth_series[-1][1] == 0.0
    back = RunReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert back == report


def test_source_hosts_group_what_shares_a_link(tmp_path: Path) -> None:
    playbook = make_playbook(tmp_path)
    hosts = {s.name: source_host(s) for s in playbook.servers}
    assert hosts["db01"] == hosts["app01"] != hosts["web01"]
