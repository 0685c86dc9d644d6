"""A data-only (files-and-folders) server end to end through the real `migrate` command.

The source is this machine read through a real sshd on loopback by the files agent; the target is a local
folder that already holds data of its own (a running server's disk, as a data-only migration expects).
Every command a user runs is run: validate, plan, execute --dry-run, execute, sync, sync --verify,
status, report (json, md, html), cutover (quiesce, final pass, DNS) and undo, which must never delete a
file the target had before. A second test plans and runs a wave that mixes a VM server on the simulator
with a data server.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from tests.e2e.conftest import Migration
from tests.services import sshd as sshd_service
from tests.services.sshd import SshServer

sshd_server = sshd_service.sshd_server

PB = "files.yaml"
MiB = 1024**2


def source_block(server: SshServer, markers: Path | None = None) -> str:
    quiesce = ""
    if markers:  # stands for stopping and starting the services that write the data
        quiesce = f'\n      quiesce_command: "echo stopped >> {markers}"'
        quiesce += f'\n      thaw_command: "echo started >> {markers}"'
    return f"""source:
      type: ssh
      host: {server.host}
      port: {server.port}
      user: {server.user}
      key: {server.client_key}
      known_hosts: {server.known_hosts}{quiesce}"""


def data_block(src: Path, dst: Path) -> str:
    return f"""data:
      mapping: custom
      paths: [{{source: {src}, target: {dst}}}]
      orphans: delete
      rules:
        - {{path: {src}/www}}
        - {{path: {src}/www/*.log, exclude: true}}
        - {{path: {src}/docs}}"""


def make_source(src: Path) -> None:
    (src / "www" / "img").mkdir(parents=True)
    (src / "docs").mkdir(parents=True)
    for index in range(30):
        (src / "www" / f"page{index}.html").write_text(f"<p>page {index}</p>\n" * 50)
    (src / "www" / "img" / "logo.bin").write_bytes(os.urandom(3 * MiB))
    (src / "www" / "access.log").write_text("excluded by a wildcard rule\n")
    (src / "www" / "new\nline.txt").write_text("a name with a newline\n")
    (src / "docs" / os.fsdecode(b"caf\xe9.txt")).write_text("a name that is not UTF-8\n")
    (src / "docs" / "readme.txt").write_text("docs\n")
    os.symlink("readme.txt", src / "docs" / "link-to-readme")
    os.chmod(src / "docs" / "readme.txt", 0o640)
    os.mkfifo(src / "docs" / "pipe")  # neither file, folder nor link: skipped, logged, reported


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every entry under root: kind, mode, content (or link target), mtime for files."""
    out: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, os.fsencode(root))
            if any(rel.endswith(os.fsencode(s)) for s in (*skip, "pipe")):
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[os.fsdecode(rel)] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[os.fsdecode(rel)] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(full, "rb") as f:
                    out[os.fsdecode(rel)] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, f.read())
    return out


@pytest.fixture
def cli(migration: Migration, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The `migrate` command run in this process (each subprocess spends seconds importing on a loaded
    machine); the first execute runs as a real process through ``Migration.run``. The files agents are
    real processes either way, started over SSH."""
    monkeypatch.chdir(migration.root)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str, check: int = 0) -> str:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == check, f"migrate {' '.join(args)} -> {result.exit_code}\n{result.output}"
        return result.output

    return run


def steps_of(plan_json: dict) -> set[str]:
    return {s["kind"] for s in plan_json["steps"]}


def test_a_data_only_server_goes_through_every_command(
    migration: Migration, sshd_server: SshServer, tmp_path: Path, cli
) -> None:
    m = migration
    src, dst, markers = tmp_path / "src", tmp_path / "dst", tmp_path / "services.log"
    make_source(src)
    # The target is a running server with data of its own: www exists already, docs does not.
    (dst / "www").mkdir(parents=True)
    (dst / "www" / "app.log").write_text("the target's own log, outside the rule set\n")
    zone = m.root / "corp.test.zone"
    (m.root / PB).write_text(
        f"""apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: files-wave
defaults:
  cutover: {{mode: manual, shutdown_source: false}}
providers:
  local: {{type: sim, root: ./sim-hypervisor}}
dns:
  corp: {{type: zonefile, path: {zone}, zone: corp.test}}
servers:
  - name: files01
    {source_block(sshd_server, markers)}
    {data_block(src, dst)}
    dns_records: [{{provider: corp, name: files, type: A, value: 10.1.0.50, ttl: 60}}]
    estimate: {{data_bytes: 2GiB, files: 50000}}
"""
    )
    cli("validate", PB)
    plan = json.loads(cli("plan", PB, "--format", "json"))
    kinds = steps_of(plan)
    assert {"mirror_files", "sync_files", "final_files_pass", "quiesce_source", "update_dns"} <= kinds
    assert not kinds & {"create_disks", "attach_disks", "mirror", "create_replica", "remap_nics"}

    # The dry run costs the files job from the estimate: 2 GiB plus the per-file cost, and no VM steps.
    cli("execute", PB, "--dry-run", "--report", "dry.json")
    dry = json.loads((m.root / "dry.json").read_text())
    by_kind = {s["kind"]: s for s in dry["steps"]}
    assert by_kind["mirror_files"]["bytes"] == 2 * 1024**3 + 50000 * 32 * 1024
    assert by_kind["mirror_files"]["end"] > by_kind["mirror_files"]["start"]
    assert "create_replica" not in by_kind and dry["servers"][0]["target"] == "files:local"

    m.run("execute", PB)
    assert tree(dst, skip=("app.log",)) == tree(src, skip=("access.log",))
    assert (dst / "www" / "app.log").exists() and not (dst / "www" / "access.log").exists()

    # The source keeps changing: one file changes, one is new, one goes; a difference pass follows.
    (src / "www" / "page3.html").write_text("changed\n")
    (src / "docs" / "new.txt").write_text("new\n")
    (src / "www" / "page4.html").unlink()
    cli("sync", PB)
    assert tree(dst, skip=("app.log",)) == tree(src, skip=("access.log",))
    status = json.loads(cli("status", PB, "--json"))["servers"][0]
    assert status["state"] == "ready for cutover"
    last = status["files"]["last_pass"]
    assert (last["mode"], last["files_sent"], last["orphans"]) == ("sync", 2, 1)
    assert last["files"] == 34 and last["finished_at"].endswith("Z")
    assert "files01: last pass sync" in cli("status", PB)

    # Damage on the target is found by a verification (exit 1), listed with UTC times, then repaired.
    damaged = dst / "www" / "page7.html"
    damaged.write_text("damaged on the target\n")
    os.utime(damaged, (1_600_000_000, 1_600_000_000))
    verify = cli("sync", PB, "--verify", check=1)
    assert "page7.html" in verify
    report = json.loads(cli("report", PB, "--format", "json"))
    files = report["servers"][0]["files"]
    [difference] = files["verification"]["differences"]
    assert difference["path"].endswith("www/page7.html") and difference["reason"] == "content differs"
    assert difference["target_mtime"] == "2020-09-13T12:26:40.000000Z"
    [skipped] = files["skipped"]
    assert skipped["path"].endswith("docs/pipe") and "skipped" in skipped["message"]
    for fmt in ("md", "html"):
        text = cli("report", PB, "--format", fmt)
        assert "page7.html" in text and "2020-09-13T12:26:40" in text and "docs/pipe" in text
    cli("sync", PB)
    assert tree(dst, skip=("app.log",)) == tree(src, skip=("access.log",))

    # Cutover: services stopped (quiesce), a final pass, the DNS name moved; services stay stopped.
    (src / "docs" / "last.txt").write_text("written just before the cutover\n")
    cli("cutover", PB)
    assert markers.read_text().split() == ["stopped"]
    assert (dst / "docs" / "last.txt").read_text() == "written just before the cutover\n"
    assert "10.1.0.50" in zone.read_text()
    final = json.loads(cli("status", PB, "--json"))["servers"][0]
    assert final["state"] == "cut over" and final["files"]["last_pass"]["mode"] == "final"

    # Undo: docs did not exist on the target and goes; www existed, so nothing in it is touched; the
    # services this tool stopped start again; the source's data is never touched.
    before = tree(dst / "www")
    source_before = tree(src)
    cli("undo", PB, "-y")
    assert not (dst / "docs").exists()
    assert tree(dst / "www") == before and (dst / "www" / "app.log").exists()
    assert markers.read_text().split() == ["stopped", "started"]
    assert tree(src) == source_before


def test_a_wave_mixing_a_vm_server_and_a_data_server_plans_and_runs(
    migration: Migration, sshd_server: SshServer, tmp_path: Path, cli
) -> None:
    m = migration
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_source(src)
    (m.root / PB).write_text(
        f"""apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: mixed-wave
defaults:
  mirror: {{chunk_size: 1MiB}}
  cutover: {{mode: manual, shutdown_source: false}}
providers:
  local: {{type: sim, root: ./sim-hypervisor, datastores: {{default: 4GiB}}, networks: [prod]}}
servers:
  - name: app01
    source: {{type: image, path: ./images/app01.raw}}
    target: {{provider: local, vm_name: app01}}
  - name: files01
    depends_on: [app01]
    {source_block(sshd_server)}
    {data_block(src, dst)}
"""
    )
    plan = json.loads(cli("plan", PB, "--format", "json"))
    servers = {s["server"]: set() for s in plan["steps"] if s["server"]}
    for step in plan["steps"]:
        if step["server"]:
            servers[step["server"]].add(step["kind"])
    assert "mirror" in servers["app01"] and "mirror_files" in servers["files01"]
    assert "create_disks" not in servers["files01"]
    cli("execute", PB, "--dry-run", "--report", "dry.json")
    simulated = {s["step_id"] for s in json.loads((m.root / "dry.json").read_text())["steps"]}
    assert {"files01/mirror_files", "files01/final_files_pass", "app01/mirror", "app01/verify_replica"} <= (
        simulated
    )
    cli("execute", PB)
    assert tree(dst, skip=("app.log",)) == tree(src, skip=("access.log",))
    status = json.loads(cli("status", PB, "--json"))
    assert {s["name"]: s["state"] for s in status["servers"]} == {
        "app01": "ready for cutover",
        "files01": "ready for cutover",
    }
