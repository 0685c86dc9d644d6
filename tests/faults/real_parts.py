"""Real parts for the fault cases that need them: an SSH source, a KVM target, and a libvirtd to break.

The source is this machine logged into through a real sshd on loopback (tests/services/sshd.py); its
disk is a file of random bytes the test writes (a real server's disk, read by the agent over SSH). The
target is the real libvirtd (tests/testbed/libvirt.py) with ``appliance: host``: raw volumes in a scratch
dir pool of the test's own, written in place by the host. A small volume the tool did not create sits in
that pool from the start (a bystander): undo must leave it, and leave nothing else.

libvirtd is shared with every other test on the machine, so a test that stops or kills it does so only
inside ``libvirtd_fault()``, which always lets it go on and starts it again through the test bed's own
starter. Connections are opened per use (``live_conn``): one held across a restart would be dead.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import FaultMigration
from tests.services.sshd import SshServer
from tests.testbed import libvirt as testbed

KiB, MiB = 1024, 1024**2
PB = "real.yaml"
SERVER = "db01"
BYSTANDER = "bystander.raw"  # a volume in the pool the tool never created
LIBVIRTD_PID = Path("/var/run/libvirtd.pid")
COMMAND_TIMEOUT = 300.0


class RealMigration(FaultMigration):
    """`migrate` on a playbook with an SSH source and a KVM target, read back through its journal."""

    timeout = COMMAND_TIMEOUT

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.playbook = root / PB

    def rows(self, query: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Like journal_rows, but an absent or busy journal (a run starting up) reads as no rows."""
        if not (self.state / "journal.sqlite").exists():
            return []
        try:
            return self.journal_rows(query, args)
        except sqlite3.Error:
            return []

    def step(self, step_id: str) -> tuple[str | None, int, int]:
        """(state, progress done, progress total) of one step as the journal has it now."""
        found = self.rows(
            "SELECT state, progress_done, progress_total FROM steps WHERE step_id=?", (step_id,)
        )
        return (found[0][0], int(found[0][1]), int(found[0][2])) if found else (None, 0, 0)

    def events(self, step_id: str, level: str | None = None) -> list[str]:
        query = "SELECT message FROM events WHERE step_id=?" + (" AND level=?" if level else "")
        return [
            row[0] for row in self.rows(query + " ORDER BY id", (step_id, level) if level else (step_id,))
        ]

    def output(self, step_id: str) -> dict[str, Any]:
        import json

        (row,) = self.rows("SELECT output FROM steps WHERE step_id=?", (step_id,))
        return json.loads(row[0])

    def wait_until(self, what: str, condition: Callable[[], bool], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
            time.sleep(0.02)


@dataclass(frozen=True)
class RealBed:
    """What one test works on: its migrate runner, its source disk, its pool and its replica's name."""

    m: RealMigration
    source: Path
    pool: str
    pool_dir: Path
    vm_name: str

    def replica_disk(self) -> Path:
        return self.pool_dir / f"{self.vm_name}-disk0.raw"

    def pool_files(self) -> list[str]:
        return sorted(p.name for p in self.pool_dir.iterdir())

    def volumes(self) -> list[str]:
        """The pool's volumes as libvirt lists them (refreshed): what a user of virsh would see."""
        with live_conn() as conn:
            pool = conn.storagePoolLookupByName(self.pool)
            pool.refresh(0)
            return sorted(pool.listVolumes())

    def domains(self) -> list[str]:
        """Domains of this test's replica name (the machine's other domains belong to other tests)."""
        with live_conn() as conn:
            return sorted(d.name() for d in conn.listAllDomains(0) if d.name().startswith(self.vm_name))


def write_source(path: Path, size: int, seed: int) -> Path:
    """A disk of seeded random bytes: nothing compresses or is skipped as zero, so every byte travels."""
    rng = random.Random(seed)
    with open(path, "wb") as handle:
        for _ in range(size // MiB):
            handle.write(rng.randbytes(MiB))
    return path


def overwrite(path: Path, offset: int, length: int, seed: int) -> None:
    """What the running server writes between two passes (the test plays the server's application)."""
    rng = random.Random(seed)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(rng.randbytes(length))


def write_playbook(
    bed: RealBed,
    server: SshServer,
    *,
    rate: str = "8MiB/s",
    retries: int = 3,
    backoff: int = 1,
) -> None:
    bed.m.playbook.write_text(
        f"""apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: faults-real
defaults:
  mirror: {{chunk_size: 1MiB, compression: zstd, verify: true, bandwidth: {{limit: {rate}}}}}
  cutover: {{mode: manual, shutdown_source: false, unquiesced_writes: allow}}
  limits: {{retries: {retries}, retry_backoff: {backoff}}}
providers:
  lab-kvm:
    {{type: kvm, uri: "{testbed.URI}", storage_pool: {bed.pool}, domain_type: qemu, shutdown_timeout: 1}}
servers:
  - name: {SERVER}
    source:
      type: ssh
      host: {server.host}
      port: {server.port}
      user: {server.user}
      key: {server.client_key}
      known_hosts: {server.known_hosts}
    target:
      provider: lab-kvm
      vm_name: {bed.vm_name}
      cpus: 1
      memory: 64MiB
      appliance: host
      disks: [{{source: {bed.source}, format: raw}}]
"""
    )


# ---------------------------------------------------------------- libvirtd


@contextlib.contextmanager
def live_conn() -> Iterator[Any]:
    import libvirt

    conn = libvirt.open(testbed.URI)
    try:
        yield conn
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class LibvirtdFault:
    """The running libvirtd, to freeze (SIGSTOP: calls hang as on a wedged daemon), kill (SIGKILL: every
    connection drops mid-call) and start again as the test bed does."""

    def __init__(self) -> None:
        self.pid = int(LIBVIRTD_PID.read_text().strip())
        if not _alive(self.pid):
            raise AssertionError(f"libvirtd ({LIBVIRTD_PID}: {self.pid}) is not running")
        self.frozen = False

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)  # also ends a frozen process
        deadline = time.monotonic() + 30
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.frozen = False

    def start(self) -> None:
        testbed.ensure_libvirtd()
        self.pid = int(LIBVIRTD_PID.read_text().strip())

    def release(self) -> None:
        """Whatever the test did: libvirtd runs and answers again."""
        if self.frozen and _alive(self.pid):
            os.kill(self.pid, signal.SIGCONT)
            self.frozen = False
        self.start()


@contextlib.contextmanager
def libvirtd_fault() -> Iterator[LibvirtdFault]:
    fault = LibvirtdFault()
    try:
        yield fault
    finally:
        fault.release()


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def real_bed(tmp_path: Path, libvirt_uri: str) -> Iterator[RealBed]:
    """A scratch pool (transient: it survives a libvirtd restart, goes when destroyed) holding only the
    bystander, a source disk to fill, and whatever the test leaves in libvirt removed afterwards."""
    import libvirt

    name = testbed.unique_name("hvfault")
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    with live_conn() as conn:
        pool = conn.storagePoolCreateXML(
            f"<pool type='dir'><name>{name}</name><target><path>{pool_dir}</path></target></pool>", 0
        )
        pool.createXML(
            f"<volume><name>{BYSTANDER}</name><capacity unit='bytes'>{MiB}</capacity>"
            "<target><format type='raw'/></target></volume>",
            0,
        )
    bed = RealBed(RealMigration(tmp_path), tmp_path / "db01-vda.img", name, pool_dir, name + "-db01")
    try:
        yield bed
    finally:
        with live_conn() as conn:
            for domain in conn.listAllDomains(0):
                if domain.name().startswith(bed.vm_name):
                    with contextlib.suppress(libvirt.libvirtError):
                        domain.destroy()
                    with contextlib.suppress(libvirt.libvirtError):
                        domain.undefine()
            with contextlib.suppress(libvirt.libvirtError):
                conn.storagePoolLookupByName(name).destroy()


def kill_group(process: subprocess.Popen[str]) -> None:
    """kill -9 of the orchestrator and everything it started (its local agents), as a crash would."""
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
