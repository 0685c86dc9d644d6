"""Warm scheduling and the audit trail through the real `migrate` command on the quickstart sim playbook.

`execute --keep-syncing` keeps the replicas warm on the sync cadence until Ctrl-C; a cron `sync --due`
runs only the passes that are due and steps aside while a keeper runs; every operation against a source
or target lands in the journal's audit table and in `migrate report`, with no secret in any of it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from orchestrator.report import SCHEMA, from_json, write_report
from tests.e2e.conftest import Migration

PB = "quickstart.yaml"


def sync_runs(state: Path) -> int:
    """Finished `sync` runs in the journal (each keeper pass is one, as a `migrate sync` is)."""
    journal = state / "journal.sqlite"
    if not journal.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1)
        try:
            return int(
                db.execute("SELECT COUNT(*) FROM runs WHERE command='sync' AND status='done'").fetchone()[0]
            )
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def passes(m: Migration, server: str) -> list[dict]:
    db = sqlite3.connect(f"file:{m.state / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM checkpoints WHERE key=?", (f"{server}/passes",)).fetchone()
    finally:
        db.close()
    return json.loads(row[0])["passes"] if row else []


def test_keep_syncing_journals_passes_until_ctrl_c_and_cron_steps_aside(migration: Migration) -> None:
    m = migration
    m.edit("  limits:", "  sync: {interval: 1s}\n  limits:")
    keeper = m.start("execute", PB, "--keep-syncing")
    try:
        deadline = time.monotonic() + 90
        while sync_runs(m.state) < 2 and keeper.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert keeper.poll() is None, keeper.communicate()
        assert sync_runs(m.state) >= 2
        cron = m.run("sync", "--due", PB)  # a cron line while the keeper runs: one line, exit 0
        assert "skipped" in cron.stdout and "execute --keep-syncing" in cron.stdout, cron.stdout
        assert len(cron.stdout.strip().splitlines()) == 1
        os.kill(keeper.pid, signal.SIGINT)
        out, err = keeper.communicate(timeout=60)
    finally:
        if keeper.poll() is None:
            keeper.kill()
            keeper.communicate()
    assert keeper.returncode == 130, f"{out}\n{err}"
    assert "interrupted" in out and "pass(es) run while waiting" in out

    status = json.loads(m.run("status", PB, "--json").stdout)
    for server in status["servers"]:
        assert server["state"] == "ready for cutover", server
        assert server["next_pass_due"].endswith("Z") and server["last_pass_at"].endswith("Z")
        assert server["lag"] is not None and server["last_pass_duration"] is not None
        assert server["last_pass_bytes"] is not None and server["convergence"] is not None
    table = m.run("status", PB, "--audit").stdout
    assert "next pass" in table and "final delta" in table and "lag" in table
    assert "audit: operations against sources and targets" in table and "sync pass" in table


def test_sync_due_runs_only_the_servers_whose_pass_is_due(migration: Migration) -> None:
    m = migration
    m.edit("  - name: db01\n", "  - name: db01\n    sync: {interval: 1s}\n")  # the others: 1h (default)
    m.run("execute", PB)
    before = {name: len(passes(m, name)) for name in ("db01", "web01", "app01")}
    time.sleep(1.1)
    done = m.run("sync", "--due", PB)
    assert "sync --due: db01" in done.stdout, done.stdout
    after = {name: len(passes(m, name)) for name in ("db01", "web01", "app01")}
    assert after == {**before, "db01": before["db01"] + 1}

    quiet = m.run("sync", "--due", PB, "web01", "app01")
    assert "no pass is due" in quiet.stdout and "web01 in" in quiet.stdout, quiet.stdout
    assert {name: len(passes(m, name)) for name in ("web01", "app01")} == {
        name: before[name] for name in ("web01", "app01")
    }


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"HOOK_TOKEN": "Bearer audit-s3cr3t-hdr", "HOOK_URL": "http://127.0.0.1:9/hook/audit-s3cr3t-url"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)  # `migrate` reads them from its environment
    return values


def test_audit_holds_every_operation_on_the_targets_and_no_secret(
    migration: Migration, secrets: dict[str, str]
) -> None:
    m = migration
    m.edit(
        "\nservers:",
        '\nnotifications:\n  webhook: {url: "${env:HOOK_URL}", '
        'headers: {Authorization: "${env:HOOK_TOKEN}"}}\n\nservers:',
    )
    # the script prints a secret it finds in its environment: the audit and the journal must mask it
    m.edit(
        "  cutover: {mode: manual, shutdown_source: true}",
        "  cutover: {mode: manual, shutdown_source: true, pre_script: 'echo \"got $HOOK_TOKEN\"'}",
    )
    m.run("execute", PB)
    m.run("cutover", PB)
    report = json.loads(m.run("report", PB, "--format", "json").stdout)
    audit = report["audit"]
    ops = [
        (a["server"], a["operation"].split("(")[0]) for a in audit if a["endpoint"].startswith("target local")
    ]
    for server, disks in (("db01", 2), ("web01", 1), ("app01", 1)):
        assert ops.count((server, "create_disk")) == disks
        assert ops.count((server, "attach_disk")) == disks and ops.count((server, "detach_disk")) == disks
        assert (server, "create_vm") in ops and (server, "power_on") in ops
    assert (None, "provision_appliance") in ops and (None, "release_appliance") in ops
    shutdowns = [
        a for a in audit if a["operation"].startswith("shutdown(") and a["endpoint"].startswith("source")
    ]
    assert sorted(a["server"] for a in shutdowns) == ["app01", "db01", "web01"]
    scripts = [a for a in audit if a["step_id"].endswith("/run_pre_script")]
    assert len(scripts) == 3 and all(a["operation"] == 'echo "got $HOOK_TOKEN"' for a in scripts)
    dns = [a["operation"] for a in audit if a["endpoint"].startswith("dns corp.test")]
    assert "replace('www', 'CNAME', 'web01.corp.test.', 60)" in dns
    assert all(a["outcome"] == "ok" and "@" in a["who"] and a["at"].endswith("Z") for a in audit)

    # the Markdown and HTML renderers of `migrate report`, on the report it wrote
    text = json.dumps({"schema": SCHEMA, **report})
    md, html = (write_report(from_json(text), fmt) for fmt in ("md", "html"))
    assert "## Audit" in md and "create_vm" in md and "<h2>Audit</h2>" in html and "release_appliance" in html
    blobs = [md, html, text]
    blobs += [p.read_bytes().decode(errors="replace") for p in m.state.rglob("*") if p.is_file()]
    for value in ("audit-s3cr3t-hdr", "audit-s3cr3t-url"):
        assert not any(value in blob for blob in blobs), value
    db = sqlite3.connect(f"file:{m.state / 'journal.sqlite'}?mode=ro", uri=True)
    messages = [row[0] for row in db.execute("SELECT message FROM events WHERE step_id LIKE '%pre_script'")]
    db.close()
    assert any("got ***" in message for message in messages), messages
