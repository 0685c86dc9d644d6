"""The secrets audit: after every suite of the session, no secret value may appear in anything written.

A pytest plugin (tests/conftest.py loads it for every suite). Tests register the secrets they hand to
`migrate` through ``${env:}`` / ``${file:}`` with the ``secrets_audit`` fixture; a fixture that returns an
object with ``secret`` and ``directory`` attributes (the BIND servers of tests/services) is registered by
itself. When the session ends, every file under the session's temporary directory (and any folder a test
added) is read: raw bytes, and for SQLite files (journals) every text and blob column of every table, zlib
blobs (the journal's stored plans) decompressed. A secret found anywhere fails the session at teardown,
naming the file and the table/column, never the secret.

What may hold a secret: the files a test wrote it into on purpose (registered ``holders``), the secret's
own service folder (BIND's named.conf), and files named ``*.secret`` (what ``${file:}`` points at).
Disk images (``.raw``, ``.qcow2``, ``.img``, ``.vmdk``) and files over 64 MiB are not read: they are the
sources and replicas, written by the data plane, not by the tool's reporting.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import zlib
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SKIP_SUFFIXES = (".raw", ".qcow2", ".img", ".vmdk", ".iso")
MAX_BYTES = 64 * 1024**2
SQLITE_MAGIC = b"SQLite format 3\0"


def fingerprint(secret: str) -> str:
    """How a report names a secret without showing it."""
    return f"secret#{hashlib.sha256(secret.encode()).hexdigest()[:10]}"


@dataclass
class Leak:
    path: Path
    where: str
    secret: str

    def __str__(self) -> str:
        return f"{self.path}: {self.where} holds {fingerprint(self.secret)}"


@dataclass
class SecretsAudit:
    secrets: set[str] = field(default_factory=set)
    holders: set[Path] = field(default_factory=set)
    roots: set[Path] = field(default_factory=set)

    def register(self, secret: str, *, holders: Iterable[Path] = ()) -> str:
        """Watch ``secret``; ``holders`` are files or folders a test put it in on purpose."""
        if len(secret) < 6:
            raise ValueError("register secrets of 6 characters or more: shorter ones match by chance")
        self.secrets.add(secret)
        self.holders.update(Path(h).resolve() for h in holders)
        return secret

    def watch(self, folder: Path) -> None:
        """Also scan ``folder`` at the end (outputs written outside pytest's temporary directory)."""
        self.roots.add(Path(folder).resolve())

    def allowed(self, path: Path) -> bool:
        resolved = path.resolve()
        return path.name.endswith(".secret") or any(
            resolved == h or h in resolved.parents for h in self.holders
        )

    # ------------------------------------------------------------ scanning

    def scan(self, roots: Iterable[Path] = ()) -> list[Leak]:
        leaks: list[Leak] = []
        if not self.secrets:
            return leaks
        for root in {*map(Path, roots), *self.roots}:
            for path in _files(root):
                if not self.allowed(path):
                    leaks.extend(self.scan_file(path))
        return leaks

    def scan_file(self, path: Path) -> list[Leak]:
        try:
            data = path.read_bytes()
        except OSError:
            return []
        leaks = [Leak(path, "file bytes", s) for s in self.secrets if s.encode() in data]
        if data.startswith(SQLITE_MAGIC):
            leaks.extend(self._scan_sqlite(path))
        return leaks

    def _scan_sqlite(self, path: Path) -> Iterator[Leak]:
        """Every column of every row of every table, zlib blobs decompressed (WAL content included)."""
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error:
            return
        try:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                cursor = db.execute(f'SELECT * FROM "{table}"')
                columns = [d[0] for d in cursor.description]
                for row in cursor:
                    for column, value in zip(columns, row, strict=True):
                        for secret in self._found_in(value):
                            yield Leak(path, f"table {table}, column {column}", secret)
        except sqlite3.Error:
            return  # not a readable database after all: its raw bytes were scanned above
        finally:
            db.close()

    def _found_in(self, value: Any) -> list[str]:
        if isinstance(value, bytes):
            texts = [value]
            with contextlib.suppress(zlib.error):
                texts.append(zlib.decompress(value))
            return [s for s in self.secrets if any(s.encode() in t for t in texts)]
        if isinstance(value, str):
            return [s for s in self.secrets if s in value]
        return []


def _files(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file() or path.name.endswith(SKIP_SUFFIXES):
            continue
        try:
            if path.stat().st_size > MAX_BYTES:
                continue
        except OSError:
            continue
        yield path


_AUDIT = SecretsAudit()


@pytest.fixture(scope="session")
def secrets_audit() -> SecretsAudit:
    """Register what your test hands to `migrate` as a secret; the session's end checks it leaked nowhere."""
    return _AUDIT


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_output(tmp_path_factory: pytest.TempPathFactory) -> Generator[None, None, None]:
    yield
    leaks = _AUDIT.scan([tmp_path_factory.getbasetemp()])
    if leaks:
        pytest.fail("secret values were written to:\n" + "\n".join(f"  {leak}" for leak in leaks))


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: Any) -> Generator[None, Any, None]:
    """A service fixture that carries a secret (BIND's TSIG key) registers it, its folder as holder."""
    outcome = yield
    try:
        value = outcome.get_result()
    except BaseException:  # the fixture failed; pytest reports that
        return
    secret, directory = getattr(value, "secret", None), getattr(value, "directory", None)
    if isinstance(secret, str) and len(secret) >= 6 and isinstance(directory, Path):
        _AUDIT.register(secret, holders=[directory])
