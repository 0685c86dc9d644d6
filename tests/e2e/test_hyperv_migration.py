"""A server migrated onto Hyper-V end to end through the real `migrate` command, against the WinRM stand-in.

The playbook is the shipped example, playbooks/image-to-hyperv.yaml, pointed at a WS-Management stand-in
(tests/fakes) started in this process on a free port over HTTPS with a minted CA and NTLM: no Windows runs
here, so every script the provider sends is decoded and run by the stand-in's strict interpreter against a
host model whose VHDX files are real (raw, sparse) files. The mounted VHDX (Mount-VHD -NoDriveLetter) is
written by the real agent, run by the stand-in as the host's ``python.exe`` and fed over WinRM Send and
Receive; ``host_device_dir`` (where this machine sees the disks the host mounts) is left only for staging,
which edits the replica's root from this machine.
The source is the quickstart's db01 (a partitioned ext4 Linux root booting BIOS, and a data disk).

What it proves, in the order a user goes: validate, plan and the dry run touch nothing on the host;
execute creates the VHDX files (dynamic and fixed), mounts them and mirrors them; a sync carries a change
of the running source; a test cutover boots a copy from Copy-Item clones on the Isolated switch with its
test address and `undo --test` removes only it; the cutover dismounts the disks and builds a generation 1
VM booting from IDE with the data disk on SCSI, the NIC on the mapped switch with its VLAN and its MAC
kept; the stand-in's guest boots from the VHDX's bytes and reports its heartbeat and addresses; the data
VHDX holds the source's bytes exactly and the boot VHDX differs only where staging wrote. Then `migrate
undo` leaves the host model (VMs, VHDX files, mounts, every file) exactly as it was, and the WinRM
password never shows in any output, journal, plan or report.
"""

from __future__ import annotations

import base64
import hashlib
import json
import resource
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import REPO, Migration
from tests.fakes.hyperv_host import VM as HostVM
from tests.fakes.hyperv_host import Drive, HypervHost
from tests.fakes.winrm_server import WinRMStandIn, mint_tls
from tests.images import sha256

pytestmark = pytest.mark.integration
pytest.importorskip("winrm", reason="pywinrm is missing: pip install 'hvmigrate[hyperv]'")


EXAMPLE = REPO / "playbooks" / "image-to-hyperv.yaml"
USER = "migrator"
PASSWORD = "Hv-0nly;in'the$env\"x"  # quotes, $ and ; on purpose: passed as data, never shown
MAC = "52:54:00:00:01:02"
MiB = 1024**2
CHUNK = 4096


class HypervMigration(Migration):
    """`migrate` on the example playbook, pointed at this stand-in; the password only in the environment."""

    def __init__(self, root: Path, endpoint: WinRMStandIn, host: HypervHost, ca_file: Path) -> None:
        super().__init__(root)
        self.playbook = root / "image-to-hyperv.yaml"
        data = yaml.safe_load(EXAMPLE.read_text())
        hv01 = data["providers"]["hv01"]
        hv01.update(host="localhost", port=endpoint.port, ca_bundle=str(ca_file))
        hv01["host_device_dir"] = str(host.root / "devices")
        data["defaults"]["cutover"]["boot_timeout"] = "20s"  # the stand-in's guest answers at once
        self.playbook.write_text(yaml.safe_dump(data, sort_keys=False))
        self.outputs: list[str] = []  # every command's stdout and stderr, for the secret audit

    def env(self) -> dict[str, str]:
        return {**super().env(), "HV_PASSWORD": PASSWORD}

    def run(self, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        started, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        done = super().run(*args, check=check)
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        shown = " ".join(a for a in args if a != self.playbook.name)
        print(  # pytest -s: where the time goes (wall clock, and CPU: the machine may be busy)
            f"migrate {shown}: {time.monotonic() - started:.1f}s, "
            f"cpu {used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime:.1f}s"
        )
        self.outputs.append(done.stdout + done.stderr)
        return done


@pytest.fixture
def hyperv(tmp_path: Path) -> Iterator[tuple[HypervHost, WinRMStandIn, Path]]:
    """A Hyper-V host with a foreign VM and a disk of its own (both must survive), behind WinRM over HTTPS."""
    host = HypervHost(
        tmp_path / "hv01", volumes={"C": 8 * 1024 * MiB, "D": 1024 * MiB}, python="C:\\Python311\\python.exe"
    )
    dc01 = HostVM("dc01", 2, 1024 * MiB, "C:\\VMs", processors=2, notes="domain controller")
    own_disk = "D:\\VMs\\dc01.vhdx"
    raw = host.raw_file(own_disk)
    raw.parent.mkdir(parents=True)
    raw.write_bytes(b"dc01's own disk" * 4096)
    host.vhds[own_disk.lower()] = {"path": own_disk, "type": "Dynamic", "size": raw.stat().st_size}
    dc01.drives.append(Drive("SCSI", 0, 0, own_disk))
    host.vms["dc01"] = dc01
    tls = mint_tls(tmp_path / "tls")
    endpoint = WinRMStandIn(host, users={USER: PASSWORD}, tls=tls).start()
    yield host, endpoint, tls.ca_file
    endpoint.stop()


def host_state(host: HypervHost) -> dict[str, Any]:
    """What an administrator would compare: every VM with its devices, the VHDs, mounts and every file."""
    files = {
        str(p.relative_to(host.root)): (
            f"-> {p.readlink()}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for p in sorted(host.root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }
    return {
        "vms": {name: asdict(vm) for name, vm in sorted(host.vms.items())},
        "vhds": dict(sorted(host.vhds.items())),
        "mounted": dict(host.mounted),
        "files": files,
    }


def differing_blocks(a: Path, b: Path) -> int:
    with a.open("rb") as left, b.open("rb") as right:
        count = 0
        while True:
            x, y = left.read(CHUNK), right.read(CHUNK)
            if not x and not y:
                return count
            count += x != y


def prepare_sources(image_cache: Path, folder: Path) -> None:
    """db01's disks, with Debian's hyperv-daemons: its KVP daemon reports the guest's addresses."""
    from orchestrator.guest.linux import find_linux_root

    folder.mkdir()
    for name in ("db01.raw", "db01-data.raw"):
        subprocess.run(["cp", "--sparse=always", str(image_cache / name), str(folder / name)], check=True)
    root = find_linux_root(folder / "db01.raw")
    assert root is not None
    root.fs.write_files(
        [("/usr/sbin/hv_kvp_daemon", b"\x7fELF stands for hyperv-daemons' KVP daemon", 0o755)]
    )


def vm_view(host: HypervHost, name: str) -> dict[str, Any]:
    vm = host.vms[name]
    return {
        "generation": vm.generation,
        "processors": vm.processors,
        "memory": vm.memory,
        "state": vm.state,
        "drives": [(d.controller, d.number, d.location, d.path) for d in vm.drives],
        "nics": [(n.switch, n.mac, n.static, n.legacy, n.vlan) for n in vm.nics],
        "heartbeat": vm.guest.heartbeat if vm.guest else None,
        "addresses": vm.guest.addresses if vm.guest else None,
    }


def test_image_to_hyperv_migration_test_cutover_and_undo_restore_the_host(
    tmp_path: Path, image_cache: Path, hyperv: tuple[HypervHost, WinRMStandIn, Path]
) -> None:
    host, endpoint, ca_file = hyperv
    prepare_sources(image_cache, tmp_path / "images")
    source_root, source_data = tmp_path / "images" / "db01.raw", tmp_path / "images" / "db01-data.raw"
    m = HypervMigration(tmp_path, endpoint, host, ca_file)
    pb = m.playbook.name
    before = host_state(host)
    disk0, disk1 = "D:\\hvmigrate\\db01-disk0.vhdx", "D:\\hvmigrate\\db01-disk1.vhdx"

    assert "validation: no findings" in m.run("validate", pb).stdout
    m.run("plan", pb, "-o", "plan.json")
    plan = json.loads((tmp_path / "plan.json").read_text())
    kinds = {s["kind"] for s in plan["steps"]}
    assert {"attach_disks", "create_replica", "clone_test_disks"} <= kinds
    assert "provision_appliance" not in kinds  # appliance: host
    dry = m.run("execute", pb, "--dry-run").stdout
    assert "db01" in dry and "downtime" in dry.lower()
    assert host_state(host) == before  # validate, plan and the dry run touched nothing

    # execute: a dynamic and a fixed VHDX, mounted on the host and mirrored through the mounted disks
    out = m.run("execute", pb).stdout
    assert "ready for cutover: db01" in out, out
    made = {p: v["type"] for p, v in host.vhds.items() if p not in before["vhds"]}
    assert made == {disk0.lower(): "Dynamic", disk1.lower(): "Fixed"}
    assert sorted(host.mounted) == [disk0.lower(), disk1.lower()]
    assert sha256(host.raw_file(disk1)) == sha256(source_data)
    maps = [host.local(f"{disk}.hvmap") for disk in (disk0, disk1)]
    assert all(path.is_file() for path in maps)  # the agent on the host kept the block maps beside the VHDX

    # the running source changes; a sync carries it
    with source_data.open("r+b") as handle:
        handle.seek(5 * MiB + 123)
        handle.write(b"written while the source runs" * 64)
    m.run("sync", pb)
    assert sha256(host.raw_file(disk1)) == sha256(source_data)
    replica = {p: sha256(host.raw_file(p)) for p in (disk0, disk1)}

    # test cutover: a copy from Copy-Item clones, on the Isolated switch, answering on its test address
    m.run("cutover", pb, "--test")
    copy = vm_view(host, "db01-test")
    assert copy["state"] == "Running" and copy["heartbeat"] == "OkApplicationsUnknown"
    assert copy["nics"] == [("Isolated", "525400000102", True, False, 42)]
    assert copy["addresses"] == {"nic0": ["192.168.50.12"]}
    clones = [path for _, _, _, path in copy["drives"]]
    assert clones == ["D:\\hvmigrate\\db01-test-disk0.vhdx", "D:\\hvmigrate\\db01-test-disk1.vhdx"]
    assert sha256(host.raw_file(clones[1])) == replica[disk1]
    assert "db01" not in host.vms and {p: sha256(host.raw_file(p)) for p in replica} == replica
    undo_test = m.run("undo", pb, "--test", "--yes").stdout
    assert "db01/create_test_copy" in undo_test and "db01/mirror" not in undo_test
    assert "db01-test" not in host.vms and not any("db01-test" in p for p in host.vhds)
    assert sorted(host.mounted) == [disk0.lower(), disk1.lower()]  # the replica's disks stay as they were

    # cutover: dismounted, a generation 1 VM booting from IDE, data on SCSI, NIC as mapped, MAC kept
    m.run("cutover", pb)
    assert host.mounted == {}
    assert vm_view(host, "db01") == {
        "generation": 1,
        "processors": 2,
        "memory": 2 * 1024 * MiB,
        "state": "Running",
        "drives": [("IDE", 0, 0, disk0), ("SCSI", 0, 0, disk1)],
        "nics": [("LAN", "525400000102", True, False, 42)],
        "heartbeat": "OkApplicationsUnknown",
        "addresses": {"nic0": ["10.1.0.12"]},
    }
    assert host.vms["db01"].notes.startswith("hvmigrate:")
    assert sha256(host.raw_file(disk1)) == sha256(source_data)  # the data disk byte for byte
    root = host.raw_file(disk0)
    assert root.stat().st_size == source_root.stat().st_size
    assert 0 < differing_blocks(root, source_root) <= 64  # staging's edits (hostname, network), nothing else

    status = m.run("status", pb).stdout
    assert "cut over" in status
    m.run("report", pb, "--format", "json", "-o", "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    (server,) = report["servers"]
    assert server["state"] == "cut over"
    verified = next(s for s in report["steps"] if s["step_id"] == "db01/verify_replica")
    assert verified["state"] == "done"

    m.run("undo", pb, "--yes")
    assert host_state(host) == before  # VMs, VHDX files, mounts, every file: as before the run

    # the WinRM password (given by ${env:HV_PASSWORD}) is nowhere: outputs, journal, plan, report, host
    forms = (PASSWORD.encode(), PASSWORD.encode("utf-16-le"), base64.b64encode(PASSWORD.encode()))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "journal.sqlite" for p in files) and (tmp_path / "plan.json").exists()
    leaks = [str(p) for p in files for form in forms if form in p.read_bytes()]
    assert leaks == []
    assert not any(PASSWORD in out for out in m.outputs)
    assert not any(PASSWORD in received.script for received in endpoint.scripts)
    assert len(m.outputs) == 11
