"""`migrate cutover` of a data-only server while `migrate replicate` runs, both as the real command: the
cutover waits for the replication queue to drain, stops the source's services, stops the replicator
(data.cutover_queue: apply or discard what is still queued) and runs the final difference pass.

The replicator is a real process over a real sshd; the cutover runs in this process (CliRunner) to spare
an interpreter start on a loaded machine. Waits are hang guards, never assertions on time.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.files.replicate_control import ReplicationControl
from tests.integration.test_files_replicate import HANG_GUARD, identical, read, start_replicate, wait_for
from tests.services import sshd as sshd_service
from tests.services.sshd import SshServer

sshd_server = sshd_service.sshd_server

pytestmark = pytest.mark.integration


def playbook(server: SshServer, src: Path, dst: Path, markers: Path, queue: str) -> str:
    # the quiesce command stands for the services stopping; their last write lands in the replication
    # queue after the drain and before the replicator is told to stop
    stop = f"echo stopped >> {markers}; echo last > {src}/docs/written-at-stop.txt"
    return f"""apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: files-drain
defaults:
  cutover: {{mode: manual, shutdown_source: false}}
providers:
  local: {{type: sim, root: ./sim-hypervisor}}
servers:
  - name: files01
    source:
      type: ssh
      host: {server.host}
      port: {server.port}
      user: {server.user}
      key: {server.client_key}
      known_hosts: {server.known_hosts}
      quiesce_command: "{stop}"
      thaw_command: "echo started >> {markers}"
    data:
      mapping: custom
      paths: [{{source: {src}, target: {dst}}}]
      cutover_queue: {queue}
      drain_timeout: 20s
      rules:
        - {{path: {src}/docs}}
"""


def cli(root: Path, *args: str, check: int = 0) -> str:
    previous = Path.cwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    finally:
        os.chdir(previous)
    assert result.exit_code == check, f"migrate {' '.join(args)} -> {result.exit_code}\n{result.output}"
    return result.output


@pytest.fixture
def replicating(tmp_path: Path, sshd_server: SshServer, request: pytest.FixtureRequest) -> Iterator[dict]:
    src, dst, markers = tmp_path / "src", tmp_path / "dst", tmp_path / "services.log"
    (src / "docs").mkdir(parents=True)
    for index in range(5):
        (src / "docs" / f"f{index}.txt").write_text(f"file {index}\n")
    (tmp_path / "files.yaml").write_text(playbook(sshd_server, src, dst, markers, request.param))
    cli(tmp_path, "execute", "files.yaml")  # first mirror and a difference pass, then the gate
    process = start_replicate(tmp_path)
    control = ReplicationControl(tmp_path / ".hvmigrate", "files01")
    try:
        wait_for(
            lambda: (control.status() or {}).get("state") == "watching" or process.poll() is not None,
            "replication to start watching",
        )
        assert process.poll() is None, process.communicate()[0]
        yield {"root": tmp_path, "src": src, "dst": dst, "markers": markers, "process": process}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        process.communicate(timeout=HANG_GUARD)


@pytest.mark.parametrize("replicating", ["apply", "discard"], indirect=True)
def test_cutover_drains_and_stops_a_running_replication(replicating: dict) -> None:
    root, src, dst = replicating["root"], replicating["src"], replicating["dst"]
    process = replicating["process"]
    queue = "apply" if "apply" in (root / "files.yaml").read_text() else "discard"
    # a burst just before the cutover: the drain waits for it while the source still serves
    for index in range(200):
        (src / "docs" / f"burst{index}.txt").write_text(f"{index}\n")
    # a pass beside a live replicator would race it on the target: skipped, with the holder named
    skipped = cli(root, "sync", "files.yaml", "-v")
    assert "pass skipped: files01 is replicated continuously by `migrate replicate files01`" in skipped
    output = cli(root, "cutover", "files.yaml", "-v")
    said, _ = process.communicate(timeout=HANG_GUARD)  # the replicator ends by itself
    assert process.returncode == 0, said
    assert f"replication stopped for the cutover ({queue})" in said
    assert replicating["markers"].read_text() == "stopped\n"  # services stopped once, left stopped
    assert read(dst / "docs" / "burst199.txt") == b"199\n"
    assert read(dst / "docs" / "written-at-stop.txt") == b"last\n"
    identical(src / "docs", dst / "docs")
    assert "the replication queue is drained" in output, output
    assert "stopping `migrate replicate files01`" in output and f"{queue} the changes still queued" in output
    if queue == "apply":
        # everything the services wrote up to their stop was applied by replication: nothing left to send
        assert "0 queued change(s) discarded" in output
    assert ReplicationControl(root / ".hvmigrate", "files01").live() is None
