"""Faults the foundation must survive: kill -9, Ctrl-C, a full target, a changed playbook, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.e2e.conftest import Migration
from tests.images import sha256

PB = "quickstart.yaml"


def slow(m: Migration, rate: str = "8MiB/s") -> None:
    """Throttle the mirror so a test can strike while it runs (schedule removed: same rate all week)."""
    m.edit("limit: 200MiB/s", f"limit: {rate}")
    m.edit('- {days: mon-fri, hours: "08:00-18:00", limit: 20MiB/s}', "")
    m.edit("schedule:", "schedule: []")


def mirror_output(m: Migration, server: str) -> dict:
    steps = {s["step_id"]: s for s in json.loads(m.run("status", PB, "--json").stdout)["steps"]}
    return steps[f"{server}/mirror"]


def journal_output(m: Migration, step_id: str) -> dict:
    import sqlite3

    db = sqlite3.connect(f"file:{m.state / 'journal.sqlite'}?mode=ro", uri=True)
    row = db.execute("SELECT output FROM steps WHERE step_id=?", (step_id,)).fetchone()
    db.close()
    return json.loads(row[0])


def test_kill_9_mid_mirror_then_rerun_finishes_with_identical_disks(migration: Migration) -> None:
    m = migration
    slow(m)
    process = m.start("execute", PB)
    m.wait_for_step("db01/mirror")
    time.sleep(6.5)  # past the mirror's 5 s durability batch, so some chunks are on record
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL

    m.edit("limit: 8MiB/s", "limit: 200MiB/s")
    assert "changed since the plan" in m.run("execute", PB, check=1).stderr
    m.run("execute", PB, "--replan")
    assert sha256(m.disk("db01-disk1")) == sha256(m.images / "db01-data.raw")
    output = journal_output(m, "db01/mirror")
    assert sum(d["resumed_bytes_skipped"] for d in output["disks"]) > 0  # resumed, not started over
    runs = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["state"] for s in runs["servers"]} == {"ready for cutover"}


def test_ctrl_c_stops_cleanly_with_130_and_the_same_command_resumes(migration: Migration) -> None:
    m = migration
    slow(m, "4MiB/s")
    process = m.start("execute", PB)
    m.wait_for_step("db01/mirror")
    deadline = time.monotonic() + 30  # per-disk progress reaches the journal at most once a second
    while True:
        parts = json.loads(m.run("status", PB, "--json").stdout)["progress"].get("db01/mirror", [])
        moving = len(parts) == 2 and all(p["done"] > 0 and p["rate"] > 0 for p in parts)
        if moving or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {p["name"] for p in parts} == {"db01-disk0", "db01-disk1"}
    assert all(0 < p["done"] <= p["total"] and p["rate"] > 0 for p in parts), parts
    assert any(p["eta"] > 0 for p in parts), parts
    shown = m.run("status", PB).stdout
    assert "disk db01-disk1" in shown and "left" in shown and "/s" in shown, shown
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "stopping at the next safe point" in err
    status = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["step_id"]: s["state"] for s in status["steps"]}["db01/mirror"] == "pending"
    m.edit("limit: 4MiB/s", "limit: 200MiB/s")
    m.run("execute", PB, "--replan")
    assert sha256(m.disk("db01-disk1")) == sha256(m.images / "db01-data.raw")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_target_fails_the_step_runs_cleanup_and_resumes_once_space_is_back(migration: Migration) -> None:
    m = migration
    datastore = m.sim / "datastores" / "default"  # the datastore fills up; the host's own state does not
    datastore.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(datastore)], check=True)
    try:
        failed = m.run("execute", PB, check=1)
        assert "full" in failed.stdout.lower() or "space" in failed.stdout.lower(), failed.stdout
        assert "cleanup ran" in failed.stdout
        status = json.loads(m.run("status", PB, "--json").stdout)
        states = {s["step_id"]: s["state"] for s in status["steps"]}
        assert "failed" in {states["db01/mirror"], states["web01/mirror"], states["app01/mirror"]}
        subprocess.run(["mount", "-o", "remount,size=400m", str(datastore)], check=True)
        m.run("execute", PB)
        assert sha256(m.disk("db01-disk1")) == sha256(m.images / "db01-data.raw")
        resumed = sum(
            d["resumed_bytes_skipped"] + d["unchanged_bytes_skipped"]
            for server in ("db01", "web01", "app01")
            for d in journal_output(m, f"{server}/mirror")["disks"]
        )
        assert resumed > 0  # what had arrived before the disk filled was not sent again
    finally:
        subprocess.run(["umount", "-l", str(datastore)], check=False)


def test_changed_playbook_is_refused_until_replan_which_reruns_only_what_changed(
    migration: Migration,
) -> None:
    m = migration
    m.run("execute", PB)
    m.edit("ip: 10.1.0.13/24", "ip: 10.1.0.23/24")
    refused = m.run("execute", PB, check=1)
    assert "--replan" in refused.stderr and "Nothing was run" in refused.stderr
    replanned = m.run("execute", PB, "--replan")
    assert "app01/remap_nics" in replanned.stderr
    assert "app01/remap_nics" in replanned.stdout and "app01/mirror" not in replanned.stdout


def test_bad_inputs_give_one_clear_line_each(migration: Migration) -> None:
    m = migration
    assert m.run("validate", "missing.yaml", check=2).stderr.count("does not exist") == 1
    (m.root / "broken.yaml").write_text("apiVersion: hvmigrate/v1\nkind: [unclosed\n")
    assert "broken.yaml:3:1: expected ',' or ']'" in m.run("validate", "broken.yaml", check=1).stderr

    m.edit("cpus: 1", "cpu: 1")
    typo = m.run("validate", PB, check=1).stderr
    assert "quickstart.yaml:" in typo and "did you mean 'cpus'" in typo
    m.edit("cpu: 1", "cpus: 1")

    m.edit("provider: local\n      vm_name: db01", "provider: lcoal\n      vm_name: db01")
    unknown = m.run("validate", PB, check=1).stdout
    assert "ref.unknown_provider" in unknown and "lcoal" in unknown
    m.edit("provider: lcoal", "provider: local")

    (m.images / "web01.raw").unlink()
    missing_image = m.run("validate", PB, check=None)
    assert "web01.raw" in missing_image.stderr + missing_image.stdout
    failed = m.run("execute", PB, check=1).stdout
    assert "web01/discover_source" in failed and "web01.raw" in failed
    assert "unknown server(s): nope" in m.run("sync", PB, "nope", check=2).stderr


def test_missing_secret_names_the_variable_never_a_value(migration: Migration) -> None:
    m = migration
    text = m.playbook.read_text().replace(
        "dns:\n",
        "dns:\n  ext: {type: rfc2136, server: 127.0.0.1, zone: ext.test, "
        'tsig: {name: k, secret: "${env:HVM_TEST_TSIG}"}}\n',
        1,
    )
    m.playbook.write_text(text)
    os.environ.pop("HVM_TEST_TSIG", None)
    out = m.run("validate", PB, check=1).stderr
    assert "HVM_TEST_TSIG" in out and "is not set" in out
    os.environ["HVM_TEST_TSIG"] = "c2VjcmV0LXZhbHVlLTEyMzQ="
    try:
        ok = m.run("plan", PB, "--format", "json")
        assert "c2VjcmV0LXZhbHVlLTEyMzQ=" not in ok.stdout + ok.stderr
        assert "c2VjcmV0LXZhbHVlLTEyMzQ=" not in m.run("schema").stdout
    finally:
        del os.environ["HVM_TEST_TSIG"]


def test_cutover_refuses_a_stale_replica_unless_forced(migration: Migration) -> None:
    m = migration
    m.edit(
        "  cutover: {mode: manual, shutdown_source: true}",
        "  cutover: {mode: manual, shutdown_source: true}\n  sync: {max_lag: 1s}",
    )
    m.run("execute", PB)
    time.sleep(1.5)
    stale = m.run("cutover", PB, "app01", check=1).stdout
    assert "app01/cutover_gate" in stale and "run `migrate sync` first" in stale
    assert not (m.sim / "vms" / "app01.json").exists()  # nothing disruptive happened
    forced = m.run("cutover", PB, "app01", "--force").stdout
    assert "app01/verify_replica" in forced
    assert (m.sim / "vms" / "app01.json").exists()


def test_verify_finds_a_chunk_damaged_on_the_replica_and_the_next_sync_repairs_it(
    migration: Migration,
) -> None:
    m = migration
    m.run("execute", PB)
    replica = m.disk("db01-disk1")  # the data disk: staging leaves it alone
    with open(replica, "r+b") as disk:
        disk.seek(3 * 1024**2 + 100)
        disk.write(b"bit rot")
    found = m.run("sync", PB, "db01", "--verify", check=1).stdout
    assert "db01-disk1" in found and "3145728+1048576" in found, found  # the 1 MiB chunk that holds it
    assert "run `migrate sync` to repair" in found
    assert sha256(replica) != sha256(m.images / "db01-data.raw")  # verify copies nothing
    m.run("sync", PB, "db01")
    assert sha256(replica) == sha256(m.images / "db01-data.raw")
    clean = m.run("sync", PB, "db01", "--verify").stdout  # only the staged boot disk differs now
    assert "db01-disk1 │ identical" in clean and "staged edits" in clean, clean


def test_a_killed_mirror_resumes_from_the_target_even_with_a_fresh_state_directory(
    migration: Migration,
) -> None:
    m = migration
    slow(m)
    process = m.start("execute", PB)
    m.wait_for_step("db01/mirror")
    time.sleep(6.5)  # past the writer's 5 s durability batch
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    subprocess.run(["rm", "-rf", str(m.state)], check=True)  # the orchestrator's machine was lost
    m.edit("limit: 8MiB/s", "limit: 200MiB/s")
    m.run("execute", PB)
    assert sha256(m.disk("db01-disk1")) == sha256(m.images / "db01-data.raw")
    output = journal_output(m, "db01/mirror")
    assert sum(d["resumed_bytes_skipped"] for d in output["disks"]) > 0  # the block map on the target
