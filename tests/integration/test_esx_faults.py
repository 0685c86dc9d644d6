"""The ESX target when vCenter misbehaves in the middle of a step, through the real executor and steps.

Each test runs the replicate phase of a one-server playbook (two small image disks onto vcsim, written
through an appliance VM an administrator deployed) with the executor in this process, and strikes from
the executor's observer, which the step calls synchronously when it reports progress: so the fault lands
exactly between two vSphere calls of one step, every time.

- The session is terminated by the administrator (SessionManager.TerminateSession from a second
  connection) after the first replica disk is made: the step logs in again and makes the second one.
- vcsim stops answering (SIGSTOP) after the first disk: the step fails with one line naming the endpoint
  and what to do; once vcsim answers again (SIGCONT), the same run resumes and finishes, the first disk
  found again rather than made twice. A killed vcsim would forget its whole inventory (it keeps it in
  memory), which no real vCenter does, so "stopped" here is a server that no longer answers.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.executor import Executor, NullObserver
from orchestrator.session import open_session
from tests.images import make_image, sha256
from tests.services import vcsim as vcsim_service

pytestmark = pytest.mark.integration
pytest.importorskip("pyVmomi", reason="pyvmomi is missing: pip install 'hvmigrate[esx]'")

vcenter_sim = vcsim_service.vcenter_sim
vcenter_admin = vcsim_service.vcenter_admin

MiB = 1024**2
REPO = Path(__file__).resolve().parents[2]
PASSWORD_ENV = "HVM_TEST_VC_PASSWORD"


@pytest.fixture(scope="module")
def admin(vcenter_admin: Any) -> Any:
    vcsim_service.deploy_appliance(vcenter_admin, "hvm-appliance")
    return vcenter_admin


def playbook(tmp_path: Path, server: Any, vm_name: str) -> Path:
    """The shipped example pointed at vcsim, with two small images of random and zero blocks as db01."""
    data = yaml.safe_load((REPO / "playbooks" / "image-to-esx.yaml").read_text())
    vcenter = data["providers"]["vcenter"]
    vcenter.update(host=server.host, port=server.port, thumbprint=server.thumbprint)
    vcenter.update(password=f"${{env:{PASSWORD_ENV}}}", disk_writer="datastore_path", api_timeout="2s")
    data["defaults"]["limits"] = {"retries": 0}
    boot = make_image(tmp_path / "boot.raw", 4 * MiB, {0: os.urandom(MiB), 3 * MiB: os.urandom(4096)})
    extra = make_image(tmp_path / "data.raw", 2 * MiB, {MiB: os.urandom(MiB)})
    (server_spec,) = data["servers"]
    server_spec["source"] = {"type": "image", "path": str(boot), "extra_disks": [str(extra)]}
    server_spec["target"]["vm_name"] = vm_name
    server_spec["target"]["disks"] = [
        {"source": "boot.raw", "datastore": "LocalDS_0"},
        {"source": "data.raw", "datastore": "LocalDS_1"},
    ]
    path = tmp_path / "esx.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class StrikeAfterFirstDisk(NullObserver):
    """Calls ``strike()`` once, when create_disks reports its first disk (in the step's own thread)."""

    def __init__(self, strike: Any) -> None:
        self.strike = strike
        self.struck = False

    def event(self, node: Any, level: str, message: str) -> None:
        if node is not None and node.kind == "create_disks" and not self.struck:
            self.struck = True
            self.strike()


def run_replicate(session: Any, observer: Any) -> Any:
    """`migrate execute` in this process, with ``observer`` watching."""
    journal, _ = session.open_journal()
    executor = Executor(
        session.plan,
        session.playbook,
        journal,
        state_dir=session.state_dir,
        base_dir=session.base_dir,
        observer=observer,
    )
    try:
        return executor.run(executor.select(["replicate"], None, auto_cutover=False), command="execute")
    finally:
        executor.resources.close()
        journal.close()


def flat(admin: Any, datastore: str, disk: str) -> Path:
    return vcsim_service.datastore_dir(admin, datastore) / "hvmigrate" / disk / f"{disk}-flat.vmdk"


def undo_all(session: Any) -> None:
    """What `migrate undo` does, in this process: every step with live resources, newest first."""
    from orchestrator.cli import _undo_order

    journal, _ = session.open_journal()
    executor = Executor(
        session.plan, session.playbook, journal, state_dir=session.state_dir, base_dir=session.base_dir
    )
    try:
        _, errors = executor.undo(_undo_order(session, journal, set(session.plan.servers)))
        assert not errors, errors
    finally:
        executor.resources.close()
        journal.close()


def test_session_terminated_mid_step_logs_in_again_and_the_step_goes_on(
    tmp_path: Path, vcenter_sim: Any, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, vcenter_sim.password)
    session = open_session(playbook(tmp_path, vcenter_sim, "relogin01"), tmp_path / "state")
    holder: dict[str, Any] = {}

    def terminate() -> None:
        connection = holder["executor"].resources.provider("vcenter").connection
        holder["key"], holder["stub"] = connection.session_key, connection.stub
        holder["logins"] = connection.stub.logins
        admin.content.sessionManager.TerminateSession([holder["key"]])

    observer = StrikeAfterFirstDisk(terminate)
    journal, _ = session.open_journal()
    executor = Executor(
        session.plan,
        session.playbook,
        journal,
        state_dir=session.state_dir,
        base_dir=session.base_dir,
        observer=observer,
    )
    holder["executor"] = executor
    try:
        result = executor.run(executor.select(["replicate"], None, auto_cutover=False), command="execute")
        assert observer.struck and result.status in ("done", "waiting"), result.failed
        assert holder["stub"].logins == holder["logins"] + 1  # one new login, and the same step went on
        assert journal.states()["db01/create_disks"] == "done"
        assert sha256(flat(admin, "LocalDS_1", "relogin01-disk1")) == sha256(tmp_path / "data.raw")
    finally:
        executor.resources.close()
        journal.close()
    undo_all(session)


def test_vcsim_stopped_mid_step_fails_in_one_line_and_the_rerun_resumes(
    tmp_path: Path, vcenter_sim: Any, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, vcenter_sim.password)
    session = open_session(playbook(tmp_path, vcenter_sim, "stopped01"), tmp_path / "state")
    try:
        observer = StrikeAfterFirstDisk(lambda: os.kill(vcenter_sim.pid, signal.SIGSTOP))
        result = run_replicate(session, observer)
    finally:
        os.kill(vcenter_sim.pid, signal.SIGCONT)
    assert observer.struck
    error = result.failed["db01/create_disks"]
    print(f"the step's error: {error}")
    assert "\n" not in error and f"{vcenter_sim.host}:{vcenter_sim.port}" in error, error
    assert "no answer within 2 s" in error and "check the endpoint is up" in error, error

    result = run_replicate(session, NullObserver())
    assert result.status in ("done", "waiting"), result.failed
    assert sha256(flat(admin, "LocalDS_0", "stopped01-disk0")) == sha256(tmp_path / "boot.raw")
    assert sha256(flat(admin, "LocalDS_1", "stopped01-disk1")) == sha256(tmp_path / "data.raw")
    undo_all(session)
