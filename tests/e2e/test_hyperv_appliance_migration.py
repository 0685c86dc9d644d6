"""A server migrated onto Hyper-V with ``appliance: shared``, end to end through the real `migrate` command.

The playbook is the shipped example (playbooks/image-to-hyperv.yaml) with the recovery appliance instead of
mounted disks: the WinRM stand-in (HTTPS, NTLM) serves a host whose administrator runs an appliance VM
(generation 2, its own disk on SCSI 0:0). The stand-in runs no guest, so the test sshd plays the
appliance's: the stand-in reports its address (127.0.0.1) as the guest's KVP daemon would, the provider
logs in there (appliance_login, host key pinned) and runs the real agent's writer over SSH, and
``guest_devices`` maps each hot-added ``controller:location`` to that VHDX's raw file, standing for the
device the guest would see. Nothing on this machine opens a replica disk (no ``host_device_dir``), so
staging is skipped with a warning, as on ESX's appliance path.

What it proves: validate and execute hot-add each VHDX on SCSI to the running appliance (0:1, 0:2, never
its own 0:0) and mirror the source into them through the writer in the appliance; a sync carries a change
of the running source; the cutover hot-removes the disks, builds the generation 1 replica on them (boot
disk on IDE, data on SCSI, NIC mapped, MAC kept) and the stand-in's guest boots from their bytes; both
replica disks equal the source byte for byte; `migrate undo` leaves the host model exactly as it was, the
appliance with its own disk only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_hyperv_migration import (
    PASSWORD,
    USER,
    HypervMigration,
    host_state,
    prepare_sources,
    vm_view,
)
from tests.fakes.hyperv_guest import GuestState
from tests.fakes.hyperv_host import VM, Drive, HypervHost, Nic
from tests.fakes.winrm_server import WinRMStandIn, mint_tls
from tests.images import sha256
from tests.services import sshd as sshd_service

pytestmark = pytest.mark.integration
pytest.importorskip("winrm", reason="pywinrm is missing: pip install 'hvmigrate[hyperv]'")

sshd_server = sshd_service.sshd_server

MiB = 1024**2
APPLIANCE = "hvm-appliance"
SYSTEM = "D:\\appliances\\appliance-system.vhdx"
DISK0, DISK1 = "D:\\hvmigrate\\db01-disk0.vhdx", "D:\\hvmigrate\\db01-disk1.vhdx"


@pytest.fixture
def hyperv(tmp_path: Path) -> Iterator[tuple[HypervHost, WinRMStandIn, Path]]:
    """A host running the administrator's appliance VM, its KVP daemon reporting the test sshd's address."""
    host = HypervHost(tmp_path / "hv01", volumes={"C": 8 * 1024 * MiB, "D": 1024 * MiB})
    raw = host.raw_file(SYSTEM)
    raw.parent.mkdir(parents=True)
    raw.write_bytes(b"the appliance's own system disk".ljust(MiB, b"."))
    host.vhds[SYSTEM.lower()] = {"path": SYSTEM, "type": "Dynamic", "size": MiB}
    host.vms[APPLIANCE] = VM(
        APPLIANCE,
        2,
        1024 * MiB,
        "D:\\appliances",
        state="Running",
        notes="recovery appliance (deployed by the administrator)",
        drives=[Drive("SCSI", 0, 0, SYSTEM)],
        nics=[Nic("Network Adapter", "LAN", "00155D00AA01", False, False)],
        guest=GuestState(heartbeat="OkApplicationsUnknown", addresses={"Network Adapter": ["127.0.0.1"]}),
    )
    tls = mint_tls(tmp_path / "tls")
    endpoint = WinRMStandIn(host, users={USER: PASSWORD}, tls=tls).start()
    yield host, endpoint, tls.ca_file
    endpoint.stop()


def appliance_playbook(m: HypervMigration, host: HypervHost, sshd: Any, maps: Path) -> None:
    """The example with appliance: shared, the appliance named and logged in to; no view of the disks here."""
    data = yaml.safe_load(m.playbook.read_text())
    hv01 = data["providers"]["hv01"]
    del hv01["host_device_dir"]
    hv01["appliance"] = APPLIANCE
    hv01["appliance_login"] = {
        "port": sshd.port,
        "user": sshd.user,
        "key": str(sshd.client_key),
        "host_key": sshd.fingerprint,
        "maps_dir": str(maps),
        "guest_devices": {"0:1": str(host.raw_file(DISK0)), "0:2": str(host.raw_file(DISK1))},
        "boot_timeout": "10s",
        "device_timeout": "5s",
    }
    target = data["servers"][0]["target"]
    target["appliance"] = "shared"
    # Staging cannot reach a disk inside the appliance from here, so the replica keeps the source's own
    # network settings: the NIC map gives the switch, VLAN and MAC only (no address to verify)
    target["nics"] = [
        {k: v for k, v in nic.items() if k in ("source_mac", "network", "vlan", "type")}
        for nic in target["nics"]
    ]
    m.playbook.write_text(yaml.safe_dump(data, sort_keys=False))


def test_appliance_shared_migration_sync_cutover_and_undo(
    tmp_path: Path, image_cache: Path, sshd_server: Any, hyperv: tuple[HypervHost, WinRMStandIn, Path]
) -> None:
    host, endpoint, ca_file = hyperv
    prepare_sources(image_cache, tmp_path / "images")
    source_root, source_data = tmp_path / "images" / "db01.raw", tmp_path / "images" / "db01-data.raw"
    m = HypervMigration(tmp_path, endpoint, host, ca_file)
    maps = tmp_path / "appliance-root" / "maps"
    appliance_playbook(m, host, sshd_server, maps)
    pb = m.playbook.name
    before = host_state(host)

    assert "validation: no findings" in m.run("validate", pb).stdout
    out = m.run("execute", pb).stdout
    assert "ready for cutover: db01" in out, out
    assert vm_view(host, APPLIANCE)["drives"] == [
        ("SCSI", 0, 0, SYSTEM),
        ("SCSI", 0, 1, DISK0),
        ("SCSI", 0, 2, DISK1),
    ]  # hot-added on SCSI to the running appliance, its own disk kept at 0:0
    assert host.mounted == {}  # nothing mounted on the host: the appliance writes them
    assert sha256(host.raw_file(DISK0)) == sha256(source_root)
    assert sha256(host.raw_file(DISK1)) == sha256(source_data)
    assert len(list(maps.glob("*.hvmap"))) == 2  # the block maps on the appliance's root

    with source_data.open("r+b") as handle:  # the running source changes; a sync carries it
        handle.seek(5 * MiB + 123)
        handle.write(b"written while the source runs" * 64)
    m.run("sync", pb)
    assert sha256(host.raw_file(DISK1)) == sha256(source_data)

    m.run("cutover", pb)
    assert vm_view(host, APPLIANCE)["drives"] == [("SCSI", 0, 0, SYSTEM)]  # hot-removed
    replica = vm_view(host, "db01")
    assert replica["state"] == "Running" and replica["heartbeat"] == "OkApplicationsUnknown"
    assert (replica["generation"], replica["drives"]) == (1, [("IDE", 0, 0, DISK0), ("SCSI", 0, 0, DISK1)])
    assert replica["nics"] == [("LAN", "525400000102", True, False, 42)]
    assert sha256(host.raw_file(DISK0)) == sha256(source_root)  # byte for byte: not staged from here
    assert sha256(host.raw_file(DISK1)) == sha256(source_data)

    m.run("undo", pb, "--yes")
    assert host_state(host) == before  # the replica and its VHDX gone, the appliance as it was
    assert not any(PASSWORD in out for out in m.outputs)
