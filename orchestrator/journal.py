"""The journal: everything a run did, in SQLite (WAL), so a crash or Ctrl-C loses at most the step in flight.

Why SQLite: one file, atomic transactions, readable by `migrate status` while `execute` writes (WAL), and
recoverable after ``kill -9`` with no repair step. Resources are written *before* they are created, so
`migrate undo` can always find what a crashed step was building. Nothing secret is ever written here:
free text passes through `secrets.redact`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.playbook.secrets import redact
from orchestrator.steps.base import Resource

SCHEMA_VERSION = 2  # 2: the audit table
FILE_NAME = "journal.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plans (
    plan_hash TEXT PRIMARY KEY, playbook_sha256 TEXT NOT NULL, created_at REAL NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, command TEXT NOT NULL, plan_hash TEXT NOT NULL, started_at REAL NOT NULL,
    ended_at REAL, status TEXT NOT NULL DEFAULT 'running');
CREATE TABLE IF NOT EXISTS steps (
    step_id TEXT PRIMARY KEY, server TEXT, kind TEXT NOT NULL, node_hash TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL, ended_at REAL, run_id INTEGER, output TEXT, error TEXT,
    progress_done INTEGER NOT NULL DEFAULT 0, progress_total INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS resources (
    id INTEGER PRIMARY KEY, step_id TEXT NOT NULL, kind TEXT NOT NULL, provider TEXT NOT NULL,
    ref TEXT NOT NULL, created_at REAL NOT NULL, removed_at REAL);
CREATE TABLE IF NOT EXISTS checkpoints (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, run_id INTEGER, ts REAL NOT NULL, step_id TEXT, level TEXT NOT NULL,
    message TEXT NOT NULL, data TEXT);
CREATE TABLE IF NOT EXISTS step_history (
    id INTEGER PRIMARY KEY, run_id INTEGER, step_id TEXT NOT NULL, state TEXT NOT NULL,
    started_at REAL, ended_at REAL, error TEXT);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, run_id INTEGER, ts REAL NOT NULL, who TEXT NOT NULL, server TEXT, step_id TEXT,
    endpoint TEXT NOT NULL, operation TEXT NOT NULL, outcome TEXT NOT NULL, exit_code INTEGER, detail TEXT,
    ended_at REAL);
CREATE INDEX IF NOT EXISTS events_step ON events(step_id);
CREATE INDEX IF NOT EXISTS resources_step ON resources(step_id);
"""


class JournalError(Exception):
    """The journal cannot be used as it is; the message says what to do. Nothing was overwritten."""


@dataclass(frozen=True)
class StepRecord:
    step_id: str
    server: str | None
    kind: str
    node_hash: str
    state: str
    attempts: int
    started_at: float | None
    ended_at: float | None
    output: dict[str, Any] | None
    error: str | None
    progress_done: int
    progress_total: int


class Journal:
    """One state directory's journal; safe to use from the executor's worker threads."""

    def __init__(self, state_dir: Path, *, readonly: bool = False) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self._lock = threading.RLock()
        if readonly and not self.path.exists():
            raise JournalError(f"no journal at {self.path}: run `migrate execute` first")
        self._check_existing()
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"file:{self.path}?mode={'ro' if readonly else 'rwc'}"
        self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        if not readonly:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable against a crash of this process
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            # An older journal got the new tables from _SCHEMA's IF NOT EXISTS just now: it is current.
            self._db.execute(
                "UPDATE meta SET value=? WHERE key='schema_version' AND CAST(value AS INTEGER) < ?",
                (str(SCHEMA_VERSION), SCHEMA_VERSION),
            )

    # ------------------------------------------------------------ integrity

    def _check_existing(self) -> None:
        """Refuse a corrupt journal or one from a newer version before writing a single byte to it."""
        if not self.path.exists():
            return
        try:
            probe = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                tables = {r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if "meta" not in tables:
                    raise JournalError(
                        f"{self.path} is not an hvmigrate journal; move it aside or choose "
                        "another --state directory"
                    )
                row = probe.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if probe.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise sqlite3.DatabaseError("quick_check failed")
            finally:
                probe.close()
        except sqlite3.DatabaseError as exc:
            raise JournalError(
                f"journal {self.path} is corrupt ({exc}); it was left untouched: "
                "move it aside "
                "and use `migrate undo` from a backup, or start a fresh --state"
            ) from None
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {self.path} was written by a newer hvmigrate (journal schema "
                f"{version}, this version reads up to {SCHEMA_VERSION}); upgrade hvmigrate"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    class _Tx:
        def __init__(self, journal: Journal) -> None:
            self.journal = journal

        def __enter__(self) -> sqlite3.Connection:
            self.journal._lock.acquire()
            self.journal._db.execute("BEGIN IMMEDIATE")
            return self.journal._db

        def __exit__(self, exc_type: object, *_: object) -> None:
            try:
                self.journal._db.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.journal._lock.release()

    def _tx(self) -> Journal._Tx:
        return Journal._Tx(self)

    # ------------------------------------------------------------ plans

    def current_plan_hash(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key='plan_hash'").fetchone()
        return row[0] if row else None

    def adopt_plan(
        self, plan_json: Mapping[str, Any], node_hashes: Mapping[str, tuple[str | None, str, str]]
    ) -> list[str]:
        """Make this plan the journal's plan; steps whose definition changed go back to pending.

        Returns the ids of finished steps that were reset, so the caller can tell the user.
        """
        reset: list[str] = []
        body = zlib.compress(json.dumps(plan_json, sort_keys=True).encode(), 6)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO plans VALUES (?, ?, ?, ?)",
                (plan_json["plan_hash"], plan_json["playbook_sha256"], time.time(), body),
            )
            existing = {
                r["step_id"]: (r["node_hash"], r["state"])
                for r in db.execute("SELECT step_id, node_hash, state FROM steps")
            }
            for step_id, (server, kind, nhash) in node_hashes.items():
                old = existing.get(step_id)
                if old is None:
                    db.execute(
                        "INSERT INTO steps (step_id, server, kind, node_hash) VALUES (?, ?, ?, ?)",
                        (step_id, server, kind, nhash),
                    )
                elif old[0] != nhash:
                    if old[1] != "pending":
                        reset.append(step_id)
                    db.execute(
                        "UPDATE steps SET node_hash=?, state='pending', output=NULL, error=NULL, "
                        "attempts=0 WHERE step_id=?",
                        (nhash, step_id),
                    )
            for key, value in (
                ("plan_hash", plan_json["plan_hash"]),
                ("playbook_sha256", plan_json["playbook_sha256"]),
            ):
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        return reset

    # ------------------------------------------------------------ runs

    def begin_run(self, command: str, plan_hash: str) -> int:
        with self._tx() as db:
            # A previous process killed mid-step left 'running' rows: that work is lost, run it again.
            db.execute("UPDATE steps SET state='pending' WHERE state='running'")
            db.execute("UPDATE runs SET status='crashed', ended_at=? WHERE status='running'", (time.time(),))
            cur = db.execute(
                "INSERT INTO runs (command, plan_hash, started_at) VALUES (?, ?, ?)",
                (command, plan_hash, time.time()),
            )
            return int(cur.lastrowid or 0)

    def end_run(self, run_id: int, status: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET status=?, ended_at=? WHERE id=?", (status, time.time(), run_id))

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute("SELECT * FROM runs ORDER BY id")]

    # ------------------------------------------------------------ steps

    def set_state(
        self,
        step_id: str,
        state: str,
        *,
        run_id: int | None = None,
        output: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        now = time.time()
        with self._tx() as db:
            if state == "running":
                db.execute(
                    "UPDATE steps SET state='running', started_at=?, ended_at=NULL, error=NULL, "
                    "attempts=attempts+1, run_id=? WHERE step_id=?",
                    (now, run_id, step_id),
                )
                return
            db.execute(
                "UPDATE steps SET state=?, ended_at=?, output=COALESCE(?, output), error=? WHERE step_id=?",
                (
                    state,
                    now,
                    json.dumps(output) if output is not None else None,
                    redact(error) if error else None,
                    step_id,
                ),
            )
            row = db.execute("SELECT started_at FROM steps WHERE step_id=?", (step_id,)).fetchone()
            db.execute(
                "INSERT INTO step_history (run_id, step_id, state, started_at, ended_at, error) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, step_id, state, row[0] if row else None, now, redact(error) if error else None),
            )

    def reset(self, step_ids: list[str]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE steps SET state='pending', error=NULL WHERE step_id=?", [(s,) for s in step_ids]
            )

    def set_progress(self, step_id: str, done: int, total: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE steps SET progress_done=?, progress_total=? WHERE step_id=?", (done, total, step_id)
            )

    def step(self, step_id: str) -> StepRecord | None:
        row = self._db.execute("SELECT * FROM steps WHERE step_id=?", (step_id,)).fetchone()
        return _record(row) if row else None

    def steps(self) -> dict[str, StepRecord]:
        with self._lock:
            return {r["step_id"]: _record(r) for r in self._db.execute("SELECT * FROM steps")}

    def states(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT step_id, state FROM steps").fetchall())

    def output(self, step_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT output FROM steps WHERE step_id=?", (step_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    # ------------------------------------------------------------ resources

    def add_resource(self, step_id: str, kind: str, provider: str, ref: Mapping[str, Any]) -> None:
        payload = json.dumps(dict(ref), sort_keys=True)
        with self._tx() as db:
            exists = db.execute(
                "SELECT 1 FROM resources WHERE step_id=? AND kind=? AND ref=? AND removed_at IS NULL",
                (step_id, kind, payload),
            ).fetchone()
            if not exists:
                db.execute(
                    "INSERT INTO resources (step_id, kind, provider, ref, created_at) VALUES (?, ?, ?, ?, ?)",
                    (step_id, kind, provider, payload, time.time()),
                )

    def remove_resource(self, resource: Resource) -> None:
        payload = json.dumps(dict(resource.ref), sort_keys=True)
        with self._tx() as db:
            db.execute(
                "UPDATE resources SET removed_at=? WHERE step_id=? AND kind=? AND ref=? "
                "AND removed_at "
                "IS NULL",
                (time.time(), resource.step_id, resource.kind, payload),
            )

    def emptied_steps(self) -> set[str]:
        """Steps whose every resource was removed since (an appliance released at cutover)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT step_id FROM resources GROUP BY step_id HAVING COUNT(removed_at) = COUNT(*)"
            ).fetchall()
        return {row[0] for row in rows}

    def resources(self, step_id: str | None = None) -> list[Resource]:
        query = "SELECT * FROM resources WHERE removed_at IS NULL"
        args: tuple[Any, ...] = ()
        if step_id is not None:
            query += " AND step_id=?"
            args = (step_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [Resource(r["step_id"], r["kind"], r["provider"], json.loads(r["ref"])) for r in rows]

    # ------------------------------------------------------------ checkpoints and events

    def checkpoint(self, key: str, value: Mapping[str, Any] | None) -> None:
        with self._tx() as db:
            if value is None:
                db.execute("DELETE FROM checkpoints WHERE key=?", (key,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)",
                    (key, json.dumps(dict(value)), time.time()),
                )

    def load_checkpoint(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM checkpoints WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def event(
        self,
        run_id: int | None,
        step_id: str | None,
        level: str,
        message: str,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO events (run_id, ts, step_id, level, message, data) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    time.time(),
                    step_id,
                    level,
                    redact(message),
                    redact(json.dumps(dict(data), default=str)) if data else None,
                ),
            )

    # ------------------------------------------------------------ audit

    def audit_start(self, run_id: int | None, entry: Any) -> int:
        """One operation on a source or target, before it runs (outcome 'running'); returns its id."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO audit (run_id, ts, who, server, step_id, endpoint, operation, outcome) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    entry.ts,
                    entry.who,
                    entry.server,
                    entry.step_id,
                    redact(entry.endpoint),
                    redact(entry.operation),
                    entry.outcome,
                ),
            )
            return int(cur.lastrowid or 0)

    def audit_finish(self, entry_id: int, outcome: str, exit_code: int | None, detail: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE audit SET outcome=?, exit_code=?, detail=?, ended_at=? WHERE id=?",
                (outcome, exit_code, redact(detail) if detail else None, time.time(), entry_id),
            )

    def audit(self, server: str | None = None) -> list[dict[str, Any]]:
        """The audit trail, oldest first; empty for a journal older than the audit table."""
        query = "SELECT * FROM audit" + (" WHERE server=?" if server is not None else "") + " ORDER BY id"
        try:
            with self._lock:
                rows = self._db.execute(query, (server,) if server is not None else ()).fetchall()
        except sqlite3.OperationalError:  # a schema-1 journal opened read-only: no audit table
            return []
        return [dict(row) for row in rows]


def _record(row: sqlite3.Row) -> StepRecord:
    return StepRecord(
        step_id=row["step_id"],
        server=row["server"],
        kind=row["kind"],
        node_hash=row["node_hash"],
        state=row["state"],
        attempts=row["attempts"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        output=json.loads(row["output"]) if row["output"] else None,
        error=row["error"],
        progress_done=row["progress_done"],
        progress_total=row["progress_total"],
    )
