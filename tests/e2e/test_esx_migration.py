"""A server migrated onto vCenter end to end through the real `migrate` command, against vcsim.

The playbook is the shipped example, playbooks/image-to-esx.yaml, pointed at a vcsim vCenter (cluster of
two hosts, two datastores, a distributed switch; tests/services/vcsim.py) by its host, port and pinned
thumbprint. The source is the quickstart's db01 (a partitioned ext4 Linux root and a data disk). The
recovery appliance is a VM an administrator deployed beforehand (its own disk on SCSI 0:0), named in the
provider config. vcsim has no guest, so the provider's ``disk_writer: datastore_path`` writes each replica
VMDK's -flat.vmdk in the datastore folder, standing for the disk hot-added to the appliance; and a thread
here plays VMware Tools, reporting a host name and address once a VM of the plan is powered on (vcsim takes
them as SET.guest.* options), which is what verify_replica waits for.

What it proves, in the order a user goes: validate, plan and the dry run touch nothing; execute hot-adds
the replica disks to the appliance (never on 0:0) and mirrors them; a test cutover boots a copy from
clones on the test port group and `undo --test` removes only it; the cutover hot-removes the disks,
attaches them to a new VM in the chosen folder, on the chosen datastores, with the NIC on the mapped
distributed port group and its MAC kept, and powers it on; the data disk holds the source's bytes exactly
and the root disk differs only where staging wrote; the appliance keeps its own disk; status and the
report say so. Then `migrate undo` leaves vcsim's inventory (VMs and their devices, folders, port groups,
every file on both datastores) exactly as it was before the run.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import REPO, Migration
from tests.images import sha256
from tests.services import sshd as sshd_service
from tests.services import vcsim as vcsim_service

pytestmark = pytest.mark.integration
pytest.importorskip("pyVmomi", reason="pyvmomi is missing: pip install 'hvmigrate[esx]'")

vcenter_sim = vcsim_service.vcenter_sim
sshd_server = sshd_service.sshd_server

EXAMPLE = REPO / "playbooks" / "image-to-esx.yaml"
APPLIANCE = "hvm-appliance"
MAC = "52:54:00:00:01:02"
CHUNK = 4096


class EsxMigration(Migration):
    """`migrate` on the example playbook, pointed at this vcsim; the password only in the environment."""

    def __init__(
        self,
        root: Path,
        server: Any,
        images: Path,
        provider: dict[str, Any] | None = None,
        target: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(root)
        self.server = server
        self.playbook = root / "image-to-esx.yaml"
        data = yaml.safe_load(EXAMPLE.read_text())
        vcenter = data["providers"]["vcenter"]
        vcenter.update(host=server.host, port=server.port, thumbprint=server.thumbprint)
        vcenter["disk_writer"] = "datastore_path"
        vcenter.update(provider or {})
        data["servers"][0]["target"].update(target or {})
        source = data["servers"][0]["source"]
        source["path"] = str(images / "db01.raw")
        source["extra_disks"] = [str(images / "db01-data.raw")]
        data["defaults"]["cutover"]["boot_timeout"] = "5s"  # no address knocking: Tools answer at once
        self.playbook.write_text(yaml.safe_dump(data, sort_keys=False))

        self.timings: list[tuple[str, float]] = []

    def env(self) -> dict[str, str]:
        return {**super().env(), "VC_PASSWORD": self.server.password}

    def run(self, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        try:
            return super().run(*args, check=check)
        finally:  # printed with pytest -s: where the test's time goes
            self.timings.append(
                (" ".join(a for a in args if a != self.playbook.name), time.monotonic() - started)
            )
            print(f"migrate {self.timings[-1][0]}: {self.timings[-1][1]:.1f}s")


@pytest.fixture(scope="module")
def admin(vcenter_sim: Any) -> Iterator[Any]:
    """The administrator's own session: to deploy the appliance and look at vCenter, never the tool's."""
    instance = vcenter_sim.admin()
    yield instance
    instance.content.sessionManager.Logout()


def objects(admin: Any, kind: Any) -> list[Any]:
    content = admin.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


def vm_named(admin: Any, name: str) -> Any:
    from pyVmomi import vim

    return next((vm for vm in objects(admin, vim.VirtualMachine) if vm.name == name), None)


def datastore_dirs(admin: Any) -> dict[str, Path]:
    from pyVmomi import vim

    return {ds.name: Path(ds.info.url) for ds in objects(admin, vim.Datastore)}


def device_view(device: Any) -> tuple[Any, ...]:
    from pyVmomi import vim

    kind = type(device).__name__.rsplit(".", 1)[-1]
    if isinstance(device, vim.vm.device.VirtualDisk):
        return (kind, device.key, device.controllerKey, device.unitNumber, device.backing.fileName)
    if isinstance(device, vim.vm.device.VirtualEthernetCard):
        backing = device.backing
        network = getattr(backing, "deviceName", None) or getattr(
            getattr(backing, "port", None), "portgroupKey", None
        )
        return (kind, device.key, device.macAddress, device.addressType, network)
    if isinstance(device, vim.vm.device.VirtualController):
        return (kind, device.key, device.busNumber)
    return (kind, device.key)


def inventory(admin: Any) -> dict[str, Any]:
    """What an administrator would compare: VMs with their devices, folders, port groups, every file."""
    from pyVmomi import vim

    vms = {
        vm.name: {
            "power": vm.runtime.powerState,
            "template": vm.config.template,
            "folder": vm.parent.name,
            "devices": sorted(device_view(d) for d in vm.config.hardware.device),
            "extra_config": sorted((o.key, str(o.value)) for o in vm.config.extraConfig or ()),
        }
        for vm in objects(admin, vim.VirtualMachine)
    }
    folders = sorted((f.name, f.parent.name if f.parent else None) for f in objects(admin, vim.Folder))
    networks = sorted(n.name for n in objects(admin, vim.Network))
    files = {
        name: {
            str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))
        }
        for name, root in datastore_dirs(admin).items()
    }
    return {"vms": vms, "folders": folders, "networks": networks, "files": files}


class VmwareTools(threading.Thread):
    """What VMware Tools in a booted guest report, once a VM named here is powered on: its host name and
    address (vcsim takes them as SET.guest.* options). Its own administrator session."""

    def __init__(self, server: Any, guests: dict[str, tuple[str, str]]) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.guests = guests
        self.stop = threading.Event()
        self.reported: list[str] = []

    def run(self) -> None:
        from pyVmomi import vim, vmodl

        admin = self.server.admin()
        try:
            while not self.stop.wait(0.2):
                for vm in objects(admin, vim.VirtualMachine):
                    try:
                        self.report(vm)
                    except vmodl.fault.ManagedObjectNotFound:
                        continue  # removed while we looked (undo --test)
        finally:
            admin.content.sessionManager.Logout()

    def report(self, vm: Any) -> None:
        from pyVmomi import vim

        name = vm.name
        if name not in self.guests or name in self.reported or vm.runtime.powerState != "poweredOn":
            return
        hostname, address = self.guests[name]
        options = [
            vim.option.OptionValue(key="SET.guest.hostName", value=hostname),
            vim.option.OptionValue(key="SET.guest.ipAddress", value=address),
        ]
        vcsim_service.wait_task(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=options)))
        self.reported.append(name)


def journal_output(m: Migration, step_id: str) -> dict[str, Any]:
    import sqlite3

    db = sqlite3.connect(f"file:{m.state / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT output FROM steps WHERE step_id=?", (step_id,)).fetchone()
    finally:
        db.close()
    return json.loads(row[0])


def flat(admin: Any, datastore: str, disk: str) -> Path:
    return datastore_dirs(admin)[datastore] / "hvmigrate" / disk / f"{disk}-flat.vmdk"


def differing_blocks(a: Path, b: Path) -> int:
    with a.open("rb") as left, b.open("rb") as right:
        count = 0
        while True:
            x, y = left.read(CHUNK), right.read(CHUNK)
            if not x and not y:
                return count
            count += x != y


def disks_of(vm: Any) -> list[tuple[str, str]]:
    """(slot, VMDK) of each disk, slot as bus:unit on its controller."""
    devices = {d.key: d for d in vm.config.hardware.device}
    return [
        (f"{devices[d.controllerKey].busNumber}:{d.unitNumber}", d.backing.fileName)
        for d in vm.config.hardware.device
        if type(d).__name__.endswith("VirtualDisk")
    ]


def test_image_to_vcenter_migration_and_undo_restores_the_inventory(
    tmp_path: Path, vcenter_sim: Any, admin: Any, image_cache: Path
) -> None:
    from pyVmomi import vim

    vcsim_service.deploy_appliance(admin, APPLIANCE)
    before = inventory(admin)
    own_disk = disks_of(vm_named(admin, APPLIANCE))
    assert [slot for slot, _ in own_disk] == ["0:0"]
    m = EsxMigration(tmp_path, vcenter_sim, image_cache)
    tools = VmwareTools(vcenter_sim, {"db01": ("db01", "10.1.0.12"), "db01-test": ("db01", "192.168.50.12")})
    tools.start()
    try:
        assert "validation: no findings" in m.run("validate", m.playbook.name).stdout
        planned = m.run("plan", m.playbook.name).stdout
        assert "appliance/vcenter/default/0/provision_appliance" in planned
        dry = m.run("execute", m.playbook.name, "--dry-run").stdout
        assert "db01/power_on_replica" in dry
        assert inventory(admin) == before  # validate, plan and the dry run touched nothing

        m.run("execute", m.playbook.name)
        appliance_disks = disks_of(vm_named(admin, APPLIANCE))
        assert appliance_disks == [
            *own_disk,
            ("0:1", "[LocalDS_0] hvmigrate/db01-disk0/db01-disk0.vmdk"),
            ("0:2", "[LocalDS_1] hvmigrate/db01-disk1/db01-disk1.vmdk"),
        ]
        data = image_cache / "db01-data.raw"
        assert sha256(flat(admin, "LocalDS_1", "db01-disk1")) == sha256(data)

        # A test cutover: a copy from clones of the replica disks, on the test port group, then only it goes.
        m.run("cutover", m.playbook.name, "--test")
        copy = vm_named(admin, "db01-test")
        assert copy is not None and copy.runtime.powerState == "poweredOn"
        test_group = next(g for g in objects(admin, vim.Network) if g.name == "DC0_DVPG_VLAN100")
        nic = next(d for d in copy.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard))
        assert nic.backing.port.portgroupKey == test_group.key
        clone_paths = [path for _, path in disks_of(copy)]
        assert all("db01-test" in path for path in clone_paths) and len(clone_paths) == 2
        clone_data = next(p for p in clone_paths if p.startswith("[LocalDS_1]"))
        clone_name = clone_data.rsplit("/", 1)[-1].removesuffix(".vmdk")
        assert sha256(flat(admin, "LocalDS_1", clone_name)) == sha256(data)
        replica_root = sha256(flat(admin, "LocalDS_0", "db01-disk0"))
        m.run("undo", m.playbook.name, "--test", "--yes")
        assert vm_named(admin, "db01-test") is None
        assert not flat(admin, "LocalDS_1", clone_name).parent.exists()
        assert sha256(flat(admin, "LocalDS_0", "db01-disk0")) == replica_root  # the replica is untouched

        m.run("cutover", m.playbook.name)
        replica = vm_named(admin, "db01")
        assert replica.runtime.powerState == "poweredOn" and replica.parent.name == "migrated"
        assert disks_of(replica) == [
            ("0:0", "[LocalDS_0] hvmigrate/db01-disk0/db01-disk0.vmdk"),
            ("0:1", "[LocalDS_1] hvmigrate/db01-disk1/db01-disk1.vmdk"),
        ]
        controllers = [
            d for d in replica.config.hardware.device if isinstance(d, vim.vm.device.VirtualSCSIController)
        ]
        assert [type(c).__name__.rsplit(".", 1)[-1] for c in controllers] == ["ParaVirtualSCSIController"]
        nics = [d for d in replica.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        prod = next(g for g in objects(admin, vim.Network) if g.name == "DC0_DVPG0")
        assert [(type(n).__name__.rsplit(".", 1)[-1], n.macAddress, n.addressType) for n in nics] == [
            ("VirtualVmxnet3", MAC, "manual")
        ]
        assert nics[0].backing.port.portgroupKey == prod.key
        assert disks_of(vm_named(admin, APPLIANCE)) == own_disk  # hot-removed; its own disk stays
        assert sha256(flat(admin, "LocalDS_1", "db01-disk1")) == sha256(data)
        root = flat(admin, "LocalDS_0", "db01-disk0")
        assert root.stat().st_size == (image_cache / "db01.raw").stat().st_size
        changed = differing_blocks(root, image_cache / "db01.raw")
        assert 0 < changed <= 64, changed  # staging's edits (hostname, network config), nothing else
        assert "db01" in tools.reported
        seen = journal_output(m, "db01/verify_replica")  # what VMware Tools told verify_replica
        assert seen["hostname"] == "db01" and "10.1.0.12" in seen["addresses"], seen

        status = m.run("status", m.playbook.name).stdout
        assert "cut over" in status
        m.run("report", m.playbook.name, "--format", "json", "-o", "report.json")
        report = json.loads((tmp_path / "report.json").read_text())
        (server,) = report["servers"]
        assert server["state"] == "cut over" and server["downtime_measured"] is not None
        verified = next(s for s in report["steps"] if s["step_id"] == "db01/verify_replica")
        assert verified["state"] == "done"
        assert vcenter_sim.password not in (tmp_path / "report.json").read_text() + status

        m.run("undo", m.playbook.name, "--yes")
        assert inventory(admin) == before
    finally:
        tools.stop.set()
        tools.join(10)


def appliance_with_tools_address(admin: Any, address: str) -> Any:
    """The administrator's appliance VM (deployed unless the first test did), its Tools reporting
    ``address``: where the test sshd plays its guest."""
    vm = vm_named(admin, APPLIANCE) or vcsim_service.deploy_appliance(admin, APPLIANCE)
    return vcsim_service.report_tools_address(vm, address)


def test_appliance_writer_and_cold_path_in_one_wave(
    tmp_path: Path, vcenter_sim: Any, admin: Any, image_cache: Path, sshd_server: Any
) -> None:
    """Two servers through `migrate`, one per way of writing an ESX replica without datastore_path:

    - db01, disk_writer: appliance: the agent's writer runs in the appliance over SSH (the test sshd plays
      its guest at the address Tools report; guest_devices maps each hot-added slot to the VMDK's flat
      file, the device the guest would see); the full pass at execute, the final pass at cutover, the
      replica made from the disks it wrote (not staged: the appliance's disk is not reachable from here;
      incremental passes through the agent: tests/integration/test_esx_appliance_writer.py);
    - db02, appliance: host (the cold path): no appliance; the mirror builds each disk as a local image,
      staging edits it, and the cutover uploads it through /folder before the replica VM is made on it.
    """
    appliance_with_tools_address(admin, "127.0.0.1")
    before = inventory(admin)
    images = image_cache
    maps, upload_dir = tmp_path / "appliance-maps", tmp_path / "upload"
    root, data = flat(admin, "LocalDS_0", "db01-disk0"), flat(admin, "LocalDS_1", "db01-disk1")
    login = {
        "port": sshd_server.port,
        "user": sshd_server.user,
        "key": str(sshd_server.client_key),
        "known_hosts": str(sshd_server.known_hosts),
        "maps_dir": str(maps),
        "guest_devices": {"0:1": str(root), "0:2": str(data)},
    }
    provider = {"disk_writer": "appliance", "appliance_login": login, "upload_dir": str(upload_dir)}
    m = EsxMigration(tmp_path, vcenter_sim, images, provider=provider)
    playbook = yaml.safe_load(m.playbook.read_text())
    cold = deepcopy(playbook["servers"][0])
    cold["name"] = "db02"
    cold["source"].update(
        path=str(image_cache / "db01.raw"), extra_disks=[str(image_cache / "db01-data.raw")]
    )
    nic = {k: v for k, v in cold["target"]["nics"][0].items() if not k.startswith("test_")}
    nic.update(source_mac="52:54:00:00:01:03", ip="10.1.0.13/24")
    cold["target"].update(vm_name="db02", appliance="host", nics=[nic])
    playbook["servers"].append(cold)
    m.playbook.write_text(yaml.safe_dump(playbook, sort_keys=False))
    tools = VmwareTools(vcenter_sim, {"db01": ("db01", "10.1.0.12"), "db02": ("db01", "10.1.0.13")})
    tools.start()
    try:
        m.run("execute", m.playbook.name)
        assert sha256(data) == sha256(images / "db01-data.raw")
        assert sha256(root) == sha256(images / "db01.raw")
        assert len(list(maps.glob("*.hvmap"))) == 2  # db01's block maps on the appliance's root
        assert sorted(p.name for p in upload_dir.rglob("*.img")) == ["db02-disk0.img", "db02-disk1.img"]
        assert [slot for slot, _ in disks_of(vm_named(admin, APPLIANCE))] == ["0:0", "0:1", "0:2"]

        cold_data = flat(admin, "LocalDS_1", "db02-disk1")
        assert sha256(cold_data) != sha256(image_cache / "db01-data.raw")  # db02: not uploaded yet
        m.run("cutover", m.playbook.name)
        for name in ("db01", "db02"):
            assert vm_named(admin, name).runtime.powerState == "poweredOn"
        assert disks_of(vm_named(admin, APPLIANCE)) == [("0:0", disks_of(vm_named(admin, APPLIANCE))[0][1])]
        assert sha256(data) == sha256(images / "db01-data.raw")
        assert sha256(cold_data) == sha256(image_cache / "db01-data.raw")
        changed = differing_blocks(flat(admin, "LocalDS_0", "db02-disk0"), image_cache / "db01.raw")
        assert 0 < changed <= 64, changed  # staged on the local image, then uploaded
        assert not list(upload_dir.rglob("*.img"))  # each image goes once it is up

        m.run("undo", m.playbook.name, "--yes")
        assert inventory(admin) == before
    finally:
        tools.stop.set()
        tools.join(10)


def test_cold_path_refuses_a_running_source(
    vcenter_sim: Any, image_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.playbook.loader import load_playbook
    from orchestrator.validation import validate
    from providers.esx import EsxProvider

    monkeypatch.setenv("VC_PASSWORD", vcenter_sim.password)
    m = EsxMigration(tmp_path, vcenter_sim, image_cache, target={"appliance": "host"})
    data = yaml.safe_load(m.playbook.read_text())
    data["servers"][0]["source"] = {"type": "ssh", "host": "10.0.0.6", "key": "/k", "host_key": "SHA256:x"}
    m.playbook.write_text(yaml.safe_dump(data, sort_keys=False))
    provider = EsxProvider("vcenter", vcenter_sim.config(datacenter="DC0", cluster="DC0_C0"))
    try:
        inventory_now = provider.inventory()
    finally:
        provider.close()
    assert "host" in inventory_now.limits.appliance_modes and inventory_now.limits.cold_host
    findings = validate(load_playbook(m.playbook).playbook, inventories={"vcenter": inventory_now})
    (cold,) = [f for f in findings if f.rule_id == "appliance.cold_host_live_source"]
    assert cold.severity == "critical" and "running server (ssh)" in cold.message
