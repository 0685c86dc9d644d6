"""The audit trail's plumbing: scopes, the proxy in front of providers, and the journal table."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator import audit
from orchestrator.journal import SCHEMA_VERSION, Journal
from orchestrator.playbook.secrets import Secret


@dataclass(frozen=True)
class Request:
    name: str
    password: Secret


class Target:
    """A provider-shaped object: one write, one read, an attribute."""

    type = "fake"

    def create_vm(self, request: Request) -> str:
        return f"vm-{request.name}"

    def find_vm(self, name: str) -> None:
        return None

    def delete_vm(self, name: str) -> None:
        raise RuntimeError(f"cannot delete {name}: host said no")


@pytest.fixture
def journal(tmp_path: Path) -> Any:
    opened = Journal(tmp_path)
    yield opened
    opened.close()


def test_outside_a_scope_nothing_is_recorded_and_the_call_still_runs(journal: Journal) -> None:
    proxy = audit.audited(Target(), "target t", audit.PROVIDER_WRITES)
    assert proxy.create_vm(Request("db01", Secret("x"))) == "vm-db01"
    assert journal.audit() == []


def test_writes_are_recorded_with_outcome_reads_are_not_and_secrets_are_masked(journal: Journal) -> None:
    secret = Secret("s3cr3t-audit-value")
    sink = audit.JournalSink(journal, lambda: 7)
    proxy = audit.audited(Target(), "target lab (fake)", audit.PROVIDER_WRITES)
    with audit.scope(sink, server="db01", step_id="db01/create_replica"):
        assert proxy.type == "fake" and proxy.find_vm("db01") is None
        proxy.create_vm(Request("db01", secret))
        with pytest.raises(RuntimeError):
            proxy.delete_vm("db01")
    ok, failed = journal.audit()
    assert (ok["server"], ok["step_id"], ok["run_id"], ok["outcome"]) == (
        "db01",
        "db01/create_replica",
        7,
        "ok",
    )
    assert ok["operation"] == "create_vm(Request(name='db01', password=***))"
    assert ok["endpoint"] == "target lab (fake)" and "@" in ok["who"] and ok["ended_at"] >= ok["ts"]
    assert failed["outcome"] == "error" and "host said no" in failed["detail"]
    files = [journal.path, Path(f"{journal.path}-wal")]
    raw = b"".join(f.read_bytes() for f in files if f.exists())
    assert b"s3cr3t-audit-value" not in raw


def test_a_command_that_exits_non_zero_is_an_error_with_its_exit_code(journal: Journal) -> None:
    with audit.scope(audit.JournalSink(journal, lambda: 1), server="db01", step_id="db01/quiesce_source"):
        with audit.operation("ssh root@db01:22", "fsfreeze -f /srv") as op:
            op.exited(1, "fsfreeze: /srv: not a mount point (exit 1)")
        with audit.operation("ssh root@db01:22", "true") as op:
            op.exited(0)
    (frozen, fine) = journal.audit("db01")
    assert (frozen["outcome"], frozen["exit_code"]) == ("error", 1) and "not a mount point" in frozen[
        "detail"
    ]
    assert (fine["outcome"], fine["exit_code"], fine["detail"]) == ("ok", 0, None)


def test_scopes_stay_apart_across_threads_and_carry_into_a_pool(journal: Journal) -> None:
    sink = audit.JournalSink(journal, lambda: 1)

    def step(server: str) -> None:
        with (
            audit.scope(sink, server=server, step_id=f"{server}/mirror"),
            ThreadPoolExecutor(max_workers=2) as pool,  # a step fanning out per disk
        ):
            list(pool.map(audit.carry(lambda disk: audit.record("agent", f"write {disk}")), ["d0", "d1"]))

    threads = [threading.Thread(target=step, args=(name,)) for name in ("db01", "web01")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = journal.audit()
    assert len(lines) == 4
    assert all(line["step_id"] == f"{line['server']}/mirror" for line in lines)


def test_a_schema_1_journal_gains_the_audit_table(tmp_path: Path) -> None:
    Journal(tmp_path).close()
    db = sqlite3.connect(tmp_path / "journal.sqlite")
    db.execute("DROP TABLE audit")
    db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    db.commit()
    db.close()
    assert Journal(tmp_path, readonly=True).audit() == []  # read-only: no table, no error
    migrated = Journal(tmp_path)
    assert migrated.audit() == []
    version = migrated._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION == 2
    migrated.close()
