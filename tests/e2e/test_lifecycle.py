"""The whole lifecycle on the embedded default, through the real `migrate` command, checked byte for byte."""

from __future__ import annotations

import json
import os
import random
import sqlite3

from orchestrator.guest.linux import find_linux_root, read_file
from tests.e2e.conftest import Migration
from tests.images import sha256

PB = "quickstart.yaml"


def source_hashes(m: Migration) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(m.images.iterdir())}


def test_validate_plan_and_dry_run_touch_nothing(migration: Migration) -> None:
    m = migration
    before = sorted(p.name for p in m.root.iterdir())
    out = m.run("validate", PB).stdout
    assert "validation:" in out and "critical" not in out
    tree = m.run("plan", PB).stdout
    assert "db01" in tree and "web01" in tree and "after db01/update_dns" in tree
    m.run("plan", PB, "-o", "plan.json")
    plan = json.loads((m.root / "plan.json").read_text())
    assert plan["schema"] == "hvmigrate/plan/v1" and len(plan["steps"]) > 40
    assert m.run("plan", PB, "--format", "dot").stdout.startswith("digraph")
    assert m.run("plan", PB, "--format", "mermaid").stdout.startswith("flowchart LR")
    (m.root / "plan.json").unlink()
    dry = m.run("execute", PB, "--dry-run", "--report", "dry.json")
    assert "downtime" in dry.stdout.lower()
    report = json.loads((m.root / "dry.json").read_text())
    assert report["kind"] == "simulation" and {s["name"] for s in report["servers"]} == {
        "db01",
        "web01",
        "app01",
    }
    assert all(
        s["downtime_estimate"] and s["downtime_estimate"] > 60 for s in report["servers"]
    )  # ttl 60 included
    (m.root / "dry.json").unlink()
    assert sorted(p.name for p in m.root.iterdir()) == before  # no journal, no sim host, no zone file


def test_execute_sync_cutover_status_report_undo(migration: Migration) -> None:
    m = migration
    original = source_hashes(m)

    out = m.run("execute", PB).stdout
    assert "ready for cutover: db01, web01, app01" in out
    # The data disk is copied exactly; boot disks carry the staged identity on top of the source's files.
    assert sha256(m.disk("db01-disk1")) == original["db01-data.raw"]
    assert os.stat(m.disk("db01-disk1")).st_blocks * 512 < os.stat(m.disk("db01-disk1")).st_size  # sparse
    replica, source = find_linux_root(m.disk("web01-disk0")), find_linux_root(m.images / "web01.raw")
    assert replica and source
    assert read_file(replica, "/srv/www/index.html") == read_file(source, "/srv/www/index.html")
    assert b"10.1.0.11/24" in (read_file(replica, "/etc/network/interfaces") or b"")
    assert b"10.1.0.11" not in (read_file(source, "/etc/network/interfaces") or b"")

    # The "running" source changes a few blocks of its data disk; a sync carries exactly those chunks.
    data = m.images / "db01-data.raw"
    rng = random.Random(7)
    with data.open("r+b") as handle:
        for offset in (3 * 2**20 + 17, 11 * 2**20 + 4096):
            handle.seek(offset)
            handle.write(rng.randbytes(1000))
    original["db01-data.raw"] = sha256(data)
    sync = m.run("sync", PB, "db01").stdout
    assert "db01/sync" in sync
    assert sha256(m.disk("db01-disk1")) == original["db01-data.raw"]
    status = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["name"]: s["state"] for s in status["servers"]}["db01"] == "ready for cutover"
    assert {s["name"]: s["convergence"] for s in status["servers"]}["db01"] == "converged"
    sync_step = next(s for s in status["steps"] if s["step_id"] == "db01/sync")
    db = sqlite3.connect(f"file:{m.state / 'journal.sqlite'}?mode=ro", uri=True)
    events = db.execute("SELECT data FROM events WHERE step_id='db01/sync' ORDER BY id").fetchall()
    db.close()
    data_pass = [p for p in map(lambda r: json.loads(r[0]), events) if p.get("disk") == "db01-disk1"][-1]
    assert data_pass["bytes_written"] == 2 * 2**20  # two changed 1 MiB chunks, nothing else
    assert sync_step["bytes"] > data_pass["bytes_written"]  # plus the boot disk's staged chunks, restored

    cut = m.run("cutover", PB)
    assert "cutover:" in cut.stdout
    zone = (m.root / "sim-dns" / "corp.test.zone").read_text()
    assert "db01 60 IN A 10.1.0.12" in zone and "web01 60 IN A 10.1.0.11" in zone
    vm = json.loads((m.sim / "vms" / "web01.json").read_text())
    assert vm["power"] in ("on", "running")
    assert "booted" in (m.sim / "vms" / "web01.console.log").read_text()
    status = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["state"] for s in status["servers"]} == {"cut over"}
    # web01 depends on db01: it started its cutover only after db01 answered.
    steps = {s["step_id"]: s for s in status["steps"]}
    assert steps["web01/cutover_gate"]["start"] >= steps["db01/verify_replica"]["end"]

    for fmt in ("html", "json", "md"):
        m.run("report", PB, "--format", fmt, "-o", f"report.{fmt}")
    html = (m.root / "report.html").read_text()
    assert "<svg" in html and "web01" in html
    assert json.loads((m.root / "report.json").read_text())["kind"] == "run"

    undo = m.run("undo", PB, "--yes").stdout
    assert "undone" in undo
    assert not list((m.sim / "vms").glob("*.json"))
    assert not list((m.sim / "datastores" / "default").glob("*.raw"))
    zone = (m.root / "sim-dns" / "corp.test.zone").read_text()
    assert "10.1.0.12" not in zone and "10.1.0.11" not in zone
    assert source_hashes(m) == original  # the source was only ever read
    assert "nothing to undo" in m.run("undo", PB, "--yes").stdout

    # After an undo the migration starts over for real: the replicas are mirrored again, not assumed.
    m.run("execute", PB)
    assert sha256(m.disk("db01-disk1")) == sha256(m.images / "db01-data.raw")
    status = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["state"] for s in status["servers"]} == {"ready for cutover"}


def test_cutover_of_some_servers_respects_depends_on_and_keeps_the_shared_appliance(
    migration: Migration,
) -> None:
    m = migration
    m.run("execute", PB)
    early = m.run("cutover", PB, "web01").stdout  # web01 depends on db01, which has not cut over
    assert "waiting on steps outside this command" in early and "web01/cutover_gate" in early
    assert not (m.sim / "vms" / "web01.json").exists()
    m.run("cutover", PB, "db01")
    assert json.loads((m.sim / "vms" / "db01.json").read_text())
    assert list((m.sim / "appliances").glob("*.json"))  # still used by web01 and app01
    m.run("cutover", PB)
    status = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["state"] for s in status["servers"]} == {"cut over"}
    assert not list((m.sim / "appliances").glob("*.json"))  # released once nobody used it


def test_test_cutover_boots_an_isolated_copy_while_syncing_goes_on_and_undo_test_removes_only_it(
    migration: Migration,
) -> None:
    m = migration
    m.edit("test_network: isolated,\n           ip: 10.1.0.11/24", "ip: 10.1.0.11/24")  # web01: none
    m.run("execute", PB)
    replica = {d: sha256(m.disk(d)) for d in ("db01-disk0", "db01-disk1", "web01-disk0")}
    original = source_hashes(m)

    out = m.run("cutover", PB, "db01", "web01", "--test").stdout
    assert "cutover --test: 10 step(s) done" in out, out
    db01 = json.loads((m.sim / "vms" / "db01-test.json").read_text())
    assert [(n["network"], n["connected"]) for n in db01["nics"]] == [("isolated", True)]
    assert [d["name"] for d in db01["disks"]] == ["db01-test-disk0", "db01-test-disk1"]
    console = (m.sim / "vms" / "db01-test.console.log").read_text()
    assert "192.168.50.12/24" in console and "10.1.0.12" not in console  # its test address, not production's
    web01 = json.loads((m.sim / "vms" / "web01-test.json").read_text())
    assert [(n["network"], n["connected"]) for n in web01["nics"]] == [("prod", False)]  # no link
    assert not (m.sim / "vms" / "db01.json").exists()  # the replica itself is not created
    assert {d: sha256(m.disk(d)) for d in replica} == replica  # nor are its disks changed
    assert sha256(m.disk("db01-test-disk1")) == replica["db01-disk1"]
    status = json.loads(m.run("status", PB, "--json").stdout)
    states = {s["name"]: s["state"] for s in status["servers"]}
    assert states == {
        "db01": "ready for cutover (test copy up)",
        "web01": "ready for cutover (test copy up)",
        "app01": "ready for cutover",
    }

    # Replication goes on under the test copy: a sync moves the source's change into the replica only.
    data = m.images / "db01-data.raw"
    with data.open("r+b") as handle:
        handle.seek(5 * 2**20)
        handle.write(b"written during the test" * 100)
    m.run("sync", PB, "db01")
    assert sha256(m.disk("db01-disk1")) == sha256(data) != sha256(m.disk("db01-test-disk1"))

    undo = m.run("undo", PB, "db01", "--test", "--yes").stdout
    assert "db01/create_test_copy" in undo and "db01/clone_test_disks" in undo and "db01/mirror" not in undo
    assert not (m.sim / "vms" / "db01-test.json").exists() and not m.disk("db01-test-disk0").exists()
    assert m.disk("db01-disk0").exists() and (m.sim / "vms" / "web01-test.json").exists()
    status = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["name"]: s["state"] for s in status["servers"]}["db01"] == "ready for cutover"
    assert "nothing to undo" in m.run("undo", PB, "db01", "--test", "--yes").stdout

    # A live cutover removes a test copy still up first, then cuts over as usual.
    cut = m.run("cutover", PB).stdout
    assert "removing the test copy first: web01/create_test_copy, web01/clone_test_disks" in cut
    assert sorted(p.name for p in (m.sim / "vms").glob("*.json")) == ["app01.json", "db01.json", "web01.json"]
    assert not list((m.sim / "datastores" / "default").glob("*-test-*"))
    status = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["state"] for s in status["servers"]} == {"cut over"}
    assert all(s["steps_done"] == s["steps_total"] for s in status["servers"])
    refused = m.run("cutover", PB, "db01", "--test", check=1)
    assert "already cut over" in refused.stdout + refused.stderr
    data_hash = sha256(data)
    assert source_hashes(m) == {**original, "db01-data.raw": data_hash}  # sources only read (bar our edit)
