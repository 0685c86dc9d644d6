"""Continuous replication with real inotify and a real files agent (over a local pipe and over sshd).

Write→visible latency is measured and printed (run with -s to see it), never asserted: the waits below
are hang guards only.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.files.mirror import LocalTree, Options, Pair, RemoteTree, mirror_pass
from orchestrator.files.replicate import Replicator, RootGone
from orchestrator.files.rules import RuleSet, make_rule
from orchestrator.transport.local import LocalTransport
from orchestrator.transport.ssh import SshTransport
from tests.integration.test_files_ssh import transport_to
from tests.services import sshd as sshd_service
from tests.services.sshd import SshServer

sshd_server = sshd_service.sshd_server

pytestmark = pytest.mark.integration

HANG_GUARD = 20.0  # seconds: a change that never arrives fails the test instead of hanging it
REPO = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


class Running:
    """A replicator on a thread of its own, and what it said."""

    def __init__(self, connect: Callable[[], RemoteTree], src: Path, dst: Path, **kwargs: object) -> None:
        self.rules = RuleSet([make_rule(str(src)), make_rule(str(src) + "/*.tmp", False)])
        self.pairs = [Pair(bytes(src), bytes(dst))]
        self.messages: list[str] = []
        self.replicator = Replicator(
            connect,
            LocalTree(),
            self.pairs,
            self.rules,
            Options(),
            say=self.messages.append,
            reconnect_seconds=0.1,
            **kwargs,  # type: ignore[arg-type]
        )
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.replicator.watching.is_set() or self.error is not None, "the watch to start")

    def _run(self) -> None:
        try:
            self.replicator.run(self.stop)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(HANG_GUARD)
        assert not self.thread.is_alive(), "the replicator did not stop"


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "docs").mkdir(parents=True)
    for index in range(5):
        (src / "docs" / f"f{index}.txt").write_text(f"file {index}\n")
    return src, dst


def local_connect() -> RemoteTree:
    return RemoteTree(LocalTransport())


@pytest.fixture
def ssh_connect(sshd_server: SshServer) -> Iterator[Callable[[], RemoteTree]]:
    transports: list[SshTransport] = []

    def connect() -> RemoteTree:
        transport = transport_to(sshd_server)
        transports.append(transport)
        return RemoteTree(transport)

    yield connect
    for transport in transports:
        transport.close()


def start_replicate(root: Path) -> subprocess.Popen:
    """`migrate replicate files.yaml files01` run in ``root`` as a real process, its output kept."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "replicate", "files.yaml", "files01"],
        cwd=root,
        env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def identical(src: Path, dst: Path) -> None:
    run = subprocess.run(["diff", "-r", "--no-dereference", src, dst], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def latency(src: Path, dst: Path, rounds: int = 15) -> list[float]:
    out = []
    for index in range(rounds):
        body = f"round {index} {time.time()}\n".encode()
        started = time.perf_counter()
        (src / "docs" / "probe.txt").write_bytes(body)
        wait_for(lambda body=body: read(dst / "docs" / "probe.txt") == body, "a write to appear")
        out.append(time.perf_counter() - started)
    return out


def report(where: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    print(
        f"\nreplication latency write→visible {where}: median {statistics.median(ms):.1f} ms, "
        f"max {ms[-1]:.1f} ms over {len(ms)} writes"
    )


def exercise(src: Path, dst: Path) -> None:
    """Create, write, rename, delete and chmod on the source; each appears on the target."""
    docs, out = src / "docs", dst / "docs"
    (docs / "new.txt").write_text("new\n")
    wait_for(lambda: read(out / "new.txt") == b"new\n", "a created file")
    with open(docs / "new.txt", "a") as handle:
        for line in range(20):  # repeated writes, coalesced by the agent
            handle.write(f"line {line}\n")
            handle.flush()
    expected = (docs / "new.txt").read_bytes()
    wait_for(lambda: read(out / "new.txt") == expected, "a written file")
    (docs / "sub").mkdir()
    (docs / "sub" / "inner.txt").write_text("inner\n")
    wait_for(lambda: read(out / "sub" / "inner.txt") == b"inner\n", "a file in a new folder")
    os.rename(docs / "f1.txt", docs / "renamed.txt")
    wait_for(lambda: read(out / "renamed.txt") == b"file 1\n" and not (out / "f1.txt").exists(), "a rename")
    os.rename(docs / "sub", docs / "moved")
    wait_for(
        lambda: read(out / "moved" / "inner.txt") == b"inner\n" and not (out / "sub").exists(),
        "a folder rename",
    )
    (docs / "f2.txt").unlink()
    wait_for(lambda: not (out / "f2.txt").exists(), "a delete")
    os.chmod(docs / "f3.txt", 0o640)
    wait_for(lambda: (out / "f3.txt").stat().st_mode & 0o777 == 0o640, "a chmod")
    (docs / "scratch.tmp").write_text("excluded by the rules\n")
    os.symlink("renamed.txt", docs / "link")
    wait_for(lambda: os.path.islink(out / "link"), "a symlink")
    assert not (out / "scratch.tmp").exists()
    (docs / "scratch.tmp").unlink()


def test_changes_follow_over_a_local_pipe(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    running = Running(local_connect, src, dst)
    try:
        assert read(dst / "docs" / "f0.txt") == b"file 0\n"  # the first difference pass
        exercise(src, dst)
        report("over a local pipe", latency(src, dst))
    finally:
        running.finish()
    assert running.error is None
    identical(src, dst)


def test_changes_follow_over_ssh(trees: tuple[Path, Path], ssh_connect: Callable[[], RemoteTree]) -> None:
    src, dst = trees
    running = Running(ssh_connect, src, dst)
    try:
        exercise(src, dst)
        report("over sshd", latency(src, dst))
    finally:
        running.finish()
    assert running.error is None
    identical(src, dst)


def test_killed_agent_reconnects_and_trees_end_identical(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    running = Running(local_connect, src, dst)
    try:
        first = running.replicator.stats.agent_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        # changes while no agent watches: only the difference pass after the reconnect can find them
        (src / "docs" / "f0.txt").write_text("changed while disconnected\n")
        (src / "docs" / "f4.txt").unlink()
        (src / "docs" / "later.txt").write_text("later\n")
        wait_for(lambda: running.replicator.stats.reconnects >= 1, "a reconnect")
        wait_for(running.replicator.watching.is_set, "watching again")
        assert running.replicator.stats.agent_pid != first and running.replicator.stats.passes == 2
        (src / "docs" / "after.txt").write_text("after\n")
        wait_for(lambda: read(dst / "docs" / "after.txt") == b"after\n", "a change after the reconnect")
    finally:
        running.finish()
    assert any("dropped" in m for m in running.messages)
    identical(src, dst)
    verify = mirror_pass(
        local_connect(),
        LocalTree(),
        running.pairs,
        running.rules,
        Options(compare="full_data"),
        verify_only=True,
    )
    assert verify.differences == []


def test_queue_overflow_reconnects_with_a_difference_pass(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    running = Running(local_connect, src, dst, memory=2, limit=4)
    try:
        for index in range(200):
            (src / "docs" / f"burst{index}.txt").write_text(f"{index}\n")
        wait_for(lambda: any("queue full" in m for m in running.messages), "the overflow")
        wait_for(lambda: read(dst / "docs" / "burst199.txt") == b"199\n", "the burst")
        wait_for(running.replicator.watching.is_set, "watching again")
    finally:
        running.finish()
    assert running.replicator.stats.passes >= 2
    identical(src, dst)


def test_root_renamed_stops_and_keeps_the_target(trees: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = trees
    running = Running(local_connect, src, dst)
    try:
        os.rename(src, tmp_path / "elsewhere")
        running.thread.join(HANG_GUARD)
    finally:
        running.finish()
    assert isinstance(running.error, RootGone) and "kept" in str(running.error)
    assert sorted(p.name for p in (dst / "docs").iterdir()) == [f"f{i}.txt" for i in range(5)]


def test_root_deleted_stops_and_keeps_the_target(trees: tuple[Path, Path]) -> None:
    src, dst = trees
    running = Running(local_connect, src, dst)
    try:
        subprocess.run(["rm", "-rf", str(src)], check=True)
        running.thread.join(HANG_GUARD)
    finally:
        running.finish()
    assert isinstance(running.error, RootGone)
    assert len(list((dst / "docs").iterdir())) == 5


def test_migrate_replicate_command(tmp_path: Path, sshd_server: SshServer) -> None:
    """`migrate replicate PLAYBOOK SERVER` as a real process: follows changes until SIGINT, exit 0."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("a\n")
    (tmp_path / "files.yaml").write_text(
        f"""apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: files-wave
providers:
  local: {{type: sim, root: ./sim-hypervisor}}
servers:
  - name: files01
    source:
      type: ssh
      host: {sshd_server.host}
      port: {sshd_server.port}
      user: {sshd_server.user}
      key: {sshd_server.client_key}
      known_hosts: {sshd_server.known_hosts}
    data:
      mapping: custom
      paths: [{{source: {src}, target: {dst}}}]
      rules:
        - {{path: {src}/docs}}
"""
    )
    process = start_replicate(tmp_path)
    try:
        wait_for(
            lambda: read(dst / "docs" / "a.txt") == b"a\n" or process.poll() is not None, "the first pass"
        )
        time.sleep(0.5)  # the watch starts before the pass: b.txt is a change the stream carries
        (src / "docs" / "b.txt").write_text("b\n")
        wait_for(lambda: read(dst / "docs" / "b.txt") == b"b\n" or process.poll() is not None, "a change")
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=HANG_GUARD)
    assert process.returncode == 0, output
    assert "difference pass" in output and "stopping replication" in output
    identical(src / "docs", dst / "docs")
