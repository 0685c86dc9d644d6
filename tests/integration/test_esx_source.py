"""ESX VMs as sources against vcsim: identity from vCenter, snapshot lifecycle, the CBT probe, the ESX
source rules, and reading a flat VMDK from vcsim's datastore folder (read: local_datastore).

The source VM is made by the test with the administrator's own session (pyVmomi), as an administrator
would have built it: EFI, a thin disk on SCSI 0:0, an independent thick disk on SCSI 0:1, a vmxnet3 NIC
with a fixed MAC. vcsim has no guest; what VMware Tools would report (host name, address) is set through
vcsim's ``SET.guest.*`` extraConfig keys. What vcsim cannot do (a quiesced snapshot through Tools, delta
disks, QueryChangedDiskAreas, RDMs) is said in each test that meets it.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.playbook.models import Playbook, VmSource
from orchestrator.session import inspect
from orchestrator.validation import RULES, Severity, validate
from providers.base import ProviderError, SourceFacts
from tests.images import sha256
from tests.services import sshd as sshd_service
from tests.services import vcsim as vcsim_service

pytestmark = pytest.mark.integration
pytest.importorskip("pyVmomi", reason="pyvmomi is missing: pip install 'hvmigrate[esx]'")

vcenter_sim = vcsim_service.vcenter_sim
admin = vcsim_service.vcenter_admin  # the administrator's own session, by the name the tests ask for
sshd_server = sshd_service.sshd_server

MiB = 1024**2
SOURCE_VM = "src01"
SERVER = "web01"
MAC = "00:50:56:aa:bb:01"
PASSWORD_ENV = "HVM_TEST_VCSIM_PASSWORD"


def wait(task: Any) -> Any:
    """Wait for an administrator's task; read by property path, as vcsim's snapshot tasks have an entity
    pyVmomi cannot type as a ManagedEntity (providers/esx/tasks.py does the same)."""
    from pyVmomi import vim

    from providers.esx.tasks import _task_state

    instance = vim.ServiceInstance("ServiceInstance", task._stub)
    while (state := _task_state(instance, task)).get("info.state") in ("queued", "running"):
        time.sleep(0.02)
    assert state.get("info.state") == "success", state.get("info.error")
    return state.get("info.result")


@pytest.fixture(autouse=True)
def _password(vcenter_sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, vcenter_sim.password)


def find(admin: Any, kind: Any, name: str) -> Any:
    content = admin.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        return next((obj for obj in view.view if obj.name == name), None)
    finally:
        view.Destroy()


@pytest.fixture(scope="module")
def source_vm(admin: Any) -> Any:
    """The source VM, made once per module, with what Tools would report set through vcsim."""
    from pyVmomi import vim

    dc = admin.content.rootFolder.childEntity[0]
    cluster = next(c for c in dc.hostFolder.childEntity if c.name == "DC0_C0")
    controller = vim.vm.device.ParaVirtualSCSIController(key=-1, busNumber=0, sharedBus="noSharing")

    def disk(key: int, unit: int, size: int, mode: str, thin: bool) -> Any:
        backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            diskMode=mode, thinProvisioned=thin, fileName="[LocalDS_0]"
        )
        return vim.vm.device.VirtualDisk(
            key=key, controllerKey=-1, unitNumber=unit, capacityInKB=size // 1024, backing=backing
        )

    nic = vim.vm.device.VirtualVmxnet3(
        key=-9,
        addressType="manual",
        macAddress=MAC,
        backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName="VM Network"),
    )
    add = vim.vm.device.VirtualDeviceSpec.Operation.add
    create = vim.vm.device.VirtualDeviceSpec.FileOperation.create
    spec = vim.vm.ConfigSpec(
        name=SOURCE_VM,
        numCPUs=1,
        memoryMB=256,
        guestId="debian11_64Guest",
        firmware="efi",
        files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation=add, device=controller),
            vim.vm.device.VirtualDeviceSpec(
                operation=add, fileOperation=create, device=disk(-2, 0, 8 * MiB, "persistent", True)
            ),
            vim.vm.device.VirtualDeviceSpec(
                operation=add,
                fileOperation=create,
                device=disk(-3, 1, 4 * MiB, "independent_persistent", False),
            ),
            vim.vm.device.VirtualDeviceSpec(operation=add, device=nic),
        ],
    )
    vm = wait(dc.vmFolder.CreateVM_Task(config=spec, pool=cluster.resourcePool))
    tools = [
        vim.option.OptionValue(key="SET.guest.hostName", value="web01.corp.test"),
        vim.option.OptionValue(key="SET.guest.ipAddress", value="10.0.0.9"),
    ]
    wait(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=tools)))
    return vm


@pytest.fixture(scope="module")
def provider(vcenter_sim: Any) -> Iterator[Any]:
    from providers.esx import EsxProvider

    made = EsxProvider(
        "vcenter", vcenter_sim.config(datacenter="DC0", cluster="DC0_C0", datastore="LocalDS_0")
    )
    yield made
    made.close()


def open_source(provider: Any, **options: Any) -> Any:
    config = VmSource(type="vm", provider="vcenter", vm=SOURCE_VM, **options)
    return provider.open_vm_source(SERVER, SOURCE_VM, config)


def set_cbt(vm: Any, enabled: bool) -> None:
    from pyVmomi import vim

    wait(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=enabled)))


def snapshot_names(vm: Any) -> list[str]:
    """Read with the PropertyCollector: vcsim 0.24 panics when ``vm.snapshot`` is fetched alone after its
    last snapshot was removed."""
    from pyVmomi import vim, vmodl

    collector = vmodl.query.PropertyCollector
    spec = collector.FilterSpec(
        objectSet=[collector.ObjectSpec(obj=vm, skip=False)],
        propSet=[collector.PropertySpec(type=vim.VirtualMachine, pathSet=["snapshot"])],
    )
    content = vim.ServiceInstance("ServiceInstance", vm._stub).content
    found = content.propertyCollector.RetrieveContents([spec])
    info = next((p.val for item in found or () for p in item.propSet or ()), None)
    names: list[str] = []

    def walk(trees: Any) -> None:
        for tree in trees or ():
            names.append(tree.name)
            walk(tree.childSnapshotList)

    walk(info.rootSnapshotList if info else None)
    return names


# ---------------------------------------------------------------- identity


def test_discovery_reads_hardware_and_tools_identity(provider: Any, source_vm: Any) -> None:
    facts = open_source(provider).discover()
    assert facts.hostname == "web01.corp.test"  # guest.hostName, from Tools
    assert facts.firmware == "uefi" and facts.os == "linux"
    assert [(d.name, d.size) for d in facts.disks] == [("scsi0:0", 8 * MiB), ("scsi0:1", 4 * MiB)]
    (nic,) = facts.nics
    assert nic.mac == MAC and nic.addresses == ("10.0.0.9/32",)
    vm = facts.vm
    assert vm is not None and vm.vm == SOURCE_VM and vm.guest_id == "debian11_64Guest"
    assert [(d.disk, d.backing, d.provisioning, d.mode) for d in vm.disks] == [
        ("scsi0:0", "flat", "thin", "persistent"),
        ("scsi0:1", "flat", "thick", "independent_persistent"),
    ]
    assert vm.snapshots == () and vm.change_tracking is False
    assert SourceFacts.from_json(copy.deepcopy(facts.to_json())) == facts  # survives the journal

    described = open_source(provider).describe()
    assert described.nics[0].network == "VM Network" and described.nics[0].type == "VirtualVmxnet3"
    assert described.disks[0].controller == "ParaVirtualSCSIController"
    assert described.disks[0].file == f"[LocalDS_0] {SOURCE_VM}/{SOURCE_VM}.vmdk"


def test_unknown_source_vm_says_what_to_fix(provider: Any) -> None:
    source = provider.open_vm_source(SERVER, "ghost", None)
    with pytest.raises(ProviderError, match=r"source VM ghost does not exist.*fix source\.vm"):
        source.discover()


# ---------------------------------------------------------------- validate --discover


def playbook(sim: Any, defaults: dict[str, Any] | None = None, **source: Any) -> Playbook:
    document = {
        "apiVersion": "hvmigrate/v1",
        "kind": "MigrationPlaybook",
        "name": "esx-source",
        "defaults": defaults or {},
        "providers": {
            "vcenter": {
                "type": "esx",
                "host": sim.host,
                "port": sim.port,
                "user": sim.user,
                "password": f"${{env:{PASSWORD_ENV}}}",
                "thumbprint": sim.thumbprint,
                "datacenter": "DC0",
                "cluster": "DC0_C0",
                "datastore": "LocalDS_1",
                "disk_writer": "datastore_path",  # the target side is not what these tests look at
            },
        },
        "servers": [
            {
                "name": SERVER,
                "source": {"type": "vm", "provider": "vcenter", "vm": SOURCE_VM, **source},
                "target": {
                    "provider": "vcenter",
                    "vm_name": "web01-replica",
                    "memory": 256 * MiB,
                    "nics": [{"source_mac": MAC, "network": "VM Network"}],  # the MAC discovery reports
                },
            }
        ],
    }
    return Playbook.model_validate(document)


def discovered(sim: Any, **source: Any) -> list[Any]:
    """What `migrate validate --discover` finds: providers and the vm source read through vCenter."""
    book = playbook(sim, **source)
    inspection = inspect(book, discover_all=True)
    assert inspection.problems == []
    return validate(book, inventories=inspection.inventories, facts=inspection.facts)


def test_source_rules_fire_on_what_vcenter_reports(vcenter_sim: Any, source_vm: Any) -> None:
    findings = discovered(vcenter_sim)
    by_rule: dict[str, list[Any]] = {}
    for finding in findings:
        by_rule.setdefault(finding.rule_id, []).append(finding)
    assert sorted(by_rule) == ["esx.cbt.disabled", "esx.source.independent_disk"], [
        f.message for f in findings
    ]
    cbt = by_rule["esx.cbt.disabled"]
    assert [f.severity for f in cbt] == [Severity.WARNING] * 2  # one per disk
    assert "scsi0:0" in cbt[0].message and "all 8.0 MiB" in cbt[0].message
    assert SOURCE_VM in cbt[0].fix and cbt[0].field == "servers[0].source.vm"
    (independent,) = by_rule["esx.source.independent_disk"]
    assert "scsi0:1" in independent.message and "independent_persistent" in independent.message

    set_cbt(source_vm, True)
    snapshot = wait(source_vm.CreateSnapshot_Task(name="before-upgrade", memory=False, quiesce=False))
    try:
        findings = discovered(vcenter_sim)
        assert [f for f in findings if f.rule_id == "esx.cbt.disabled"] == []
        (present,) = [f for f in findings if f.rule_id == "esx.source.snapshot_present"]
        assert present.severity is Severity.WARNING and "before-upgrade" in present.message
        assert "this tool's own" not in present.fix
    finally:
        wait(snapshot.RemoveSnapshot_Task(removeChildren=False))
        set_cbt(source_vm, False)


# ---------------------------------------------------------------- snapshots


def test_final_pass_snapshot_is_taken_and_removed(provider: Any, source_vm: Any) -> None:
    source = open_source(provider, read="local_datastore")
    state = source.quiesce()
    assert state is not None and state["kind"] == "esx_snapshot"
    assert snapshot_names(source_vm) == [state["name"]] and state["name"].startswith(f"hvmigrate-{SERVER}-")
    # vcsim reports Tools as not running: the snapshot is crash-consistent, and the state says why
    assert state["quiesced"] is False and "VMware Tools are guestToolsNotRunning" in state["note"]
    source.thaw(state)
    assert snapshot_names(source_vm) == []
    source.thaw(state)  # again (a retried undo): already gone is done


def test_a_crash_never_leaves_a_snapshot_behind(provider: Any, source_vm: Any) -> None:
    """A snapshot whose state never reached the journal is found by its name; one the tool did not take is
    never touched."""
    foreign = wait(source_vm.CreateSnapshot_Task(name="keep-me", memory=False, quiesce=False))
    try:
        open_source(provider, read="local_datastore").snapshots.take("pass", True)  # then "crash"
        assert len(snapshot_names(source_vm)) == 2
        restarted = open_source(provider, read="local_datastore")
        restarted.thaw(None)  # undo after the crash, without the journaled state
        assert snapshot_names(source_vm) == ["keep-me"]

        restarted.snapshots.take("pass", True)
        with restarted.pass_snapshot() as state:  # a new take sweeps the leftover first
            assert sorted(snapshot_names(source_vm)) == sorted(["keep-me", state.name])
        assert snapshot_names(source_vm) == ["keep-me"]

        with pytest.raises(RuntimeError), restarted.pass_snapshot():
            raise RuntimeError("the pass failed")
        assert snapshot_names(source_vm) == ["keep-me"]
    finally:
        wait(foreign.RemoveSnapshot_Task(removeChildren=False))


# ---------------------------------------------------------------- changed-block tracking


def test_cbt_probe_falls_back_to_hashing(provider: Any, source_vm: Any) -> None:
    source = open_source(provider, read="local_datastore")
    off = source.change_tracking("scsi0:0")
    assert off.method == "hash" and "changed-block tracking is off" in off.reason
    set_cbt(source_vm, True)
    try:
        assert source.describe().change_tracking is True
        # vcsim has no QueryChangedDiskAreas: the probe must see the fault and fall back, not fail
        unsupported = source.change_tracking("scsi0:0")
        assert unsupported.method == "hash"
        assert "does not implement QueryChangedDiskAreas (MethodNotFound)" in unsupported.reason
        with source.pass_snapshot():
            assert source.changed_ranges("scsi0:0", since="52 aa 10 7f/12") is None
            assert source.changed_ranges("scsi0:0", since=None) is None
        assert snapshot_names(source_vm) == []  # the probe's own snapshot is gone too
    finally:
        set_cbt(source_vm, False)


# ---------------------------------------------------------------- reading (read: local_datastore)


def test_local_datastore_reads_the_base_flat_vmdk(provider: Any, source_vm: Any) -> None:
    """The test bed's stand-in for the guest's disk: the flat VMDK in vcsim's datastore folder."""
    source = open_source(provider, read="local_datastore")
    path = Path(source.disk_location("scsi0:0").path)
    assert path.name == f"{SOURCE_VM}-flat.vmdk"
    with open(path, "r+b") as data:  # the test prepares the source's data; the code only reads
        data.truncate(8 * MiB)
        data.seek(3 * MiB)
        data.write(b"hvmigrate" * 100)
    state = source.quiesce()
    try:
        assert source.disk_location("scsi0:0").path == str(path)  # the file the snapshot froze
        reader = source.open_disk("scsi0:0")
        try:
            assert reader.size == 8 * MiB
            assert reader.read(3 * MiB, 9) == b"hvmigrate"
        finally:
            reader.close()
    finally:
        source.thaw(state)
    assert snapshot_names(source_vm) == []

    guest = open_source(provider)  # read: guest without a login: says what to add
    with pytest.raises(ProviderError, match=r"read: guest needs source\.guest"):
        guest.disk_location("scsi0:0")


# ---------------------------------------------------------------- what vcsim cannot hold


def described_facts(guest_id: str, backing: Any, mode: str = "persistent") -> SourceFacts:
    """Facts of a VM vcsim cannot create (vcsim 0.24 panics on an RDM backing and refuses unknown guest ids),
    built from the same pyVmomi objects vCenter returns and mapped by the same code."""
    from pyVmomi import vim

    from providers.esx.source_inventory import describe

    controller = vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0)
    backing.diskMode = mode
    disk = vim.vm.device.VirtualDisk(
        key=2000, controllerKey=1000, unitNumber=0, capacityInKB=4096, backing=backing
    )
    props = {
        "name": SOURCE_VM,
        "config.guestId": guest_id,
        "config.hardware.device": [controller, disk],
        "config.changeTrackingEnabled": True,
        "runtime.powerState": "poweredOn",
    }
    return describe("vm-1", props).facts("vcenter")


def test_rdm_and_unknown_guest_id_rules(vcenter_sim: Any) -> None:
    from pyVmomi import vim

    rdm = vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo(
        compatibilityMode="physicalMode", deviceName="/vmfs/devices/disks/naa.6000", fileName="[ds] a.vmdk"
    )
    facts = described_facts("madeUpGuest", rdm, "independent_persistent")
    assert facts.vm is not None and facts.vm.disks[0].backing == "rdm_physical"
    assert facts.vm.disks[0].change_tracking is False  # CBT never tracks a physical RDM
    book = playbook(vcenter_sim, read="local_datastore")
    findings = validate(book, facts={SERVER: facts})
    ids = sorted(f.rule_id for f in findings if f.rule_id.startswith("esx."))
    assert ids == ["esx.guest_id_unsupported", "esx.source.rdm_disk"]  # no cbt warning for a physical RDM
    (found,) = [f for f in findings if f.rule_id == "esx.source.rdm_disk"]
    assert found.severity is Severity.CRITICAL and "physical-mode RDM" in found.message
    assert "cannot read an RDM" in found.fix

    flat = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(thinProvisioned=True, fileName="[ds] b.vmdk")
    clean = validate(book, facts={SERVER: described_facts("debian11_64Guest", flat)})
    assert [f.rule_id for f in clean if f.rule_id.startswith("esx.")] == []


def test_rules_are_in_the_catalog() -> None:
    expected = {
        "esx.cbt.disabled": Severity.WARNING,
        "esx.source.snapshot_present": Severity.WARNING,
        "esx.source.independent_disk": Severity.WARNING,
        "esx.source.rdm_disk": Severity.CRITICAL,
        "esx.guest_id_unsupported": Severity.WARNING,
    }
    for rule_id, severity in expected.items():
        assert RULES[rule_id].severity is severity and "facts" in RULES[rule_id].needs


# ---------------------------------------------------------------- mirror passes (snapshot, CBT, fallback)

CHUNK = 256 * 1024
FLAT = 8 * MiB


class StepRun:
    """The StepContext a mirror step sees, over a real journal (SQLite): checkpoints and resources are
    what `migrate` itself would keep, so a crash can be played by abandoning a pass halfway."""

    def __init__(self, book: Playbook, source: Any, target_provider: Any, replica: Path, kind: str) -> None:
        from dataclasses import asdict

        from orchestrator.journal import Journal
        from orchestrator.steps.base import StepNode
        from providers.base import DiskEndpoint, DiskRef

        self.playbook = book
        self.state_dir = self.base_dir = replica.parent
        self.journal = Journal(replica.parent / "state")
        self.node = StepNode(f"{SERVER}/{kind}", kind, SERVER, "replicate")
        self._source = source
        self._target = target_provider
        self.events: list[tuple[str, dict[str, Any]]] = []
        ref = DiskRef("vcenter", str(replica), "web01-disk0", FLAT, "raw", "LocalDS_1")
        self.outputs = {
            f"{SERVER}/create_disks": {"disks": [{"source": "scsi0:0", "disk": asdict(ref)}]},
            f"{SERVER}/attach_disks": {"endpoints": [asdict(DiskEndpoint("file", str(replica), FLAT))]},
        }

    def for_step(self, kind: str) -> StepRun:
        from orchestrator.steps.base import StepNode

        self.node = StepNode(f"{SERVER}/{kind}", kind, SERVER, "replicate")
        return self

    @property
    def server(self) -> Any:
        return self.playbook.servers[0]

    def provider(self, name: str) -> Any:
        return self._target

    def source(self) -> Any:
        return self._source

    def output(self, step_id: str) -> dict[str, Any]:
        return self.outputs[step_id]

    def record_resource(self, kind: str, provider: str, ref: Any) -> None:
        self.journal.add_resource(self.node.id, kind, provider, ref)

    def resources(self, step_id: str | None = None) -> list[Any]:
        return self.journal.resources(step_id or self.node.id)

    def forget_resource(self, resource: Any) -> None:
        self.journal.remove_resource(resource)

    def checkpoint(self, key: str, value: Any) -> None:
        self.journal.checkpoint(key, value)

    def load_checkpoint(self, key: str) -> dict[str, Any] | None:
        return self.journal.load_checkpoint(key)

    def progress(self, done: int, total: int, **_: Any) -> None:
        pass

    def event(self, message: str, *, level: str = "info", **data: Any) -> None:
        self.events.append((message, data))

    def cancelled(self) -> bool:
        return False


def flat_file(provider: Any) -> Path:
    path = Path(open_source(provider, read="local_datastore").disk_location("scsi0:0").path)
    with open(path, "r+b") as data:  # the test prepares the source's data; the code only reads
        data.truncate(0)  # what an earlier test wrote goes
        data.truncate(FLAT)
        for index in range(0, FLAT // CHUNK, 3):
            data.seek(index * CHUNK)
            data.write(os.urandom(CHUNK))
    return path


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def make_diff_tracked(provider: Any, frozen_dir: Path) -> Any:
    """An ESX source whose QueryChangedDiskAreas answer comes from a real disk diff.

    vcsim has no CBT, so this source stands in for vCenter's answer, and only for it: the snapshots,
    the frozen flat file, the journal and the data mover are the real ones. Its change id names a copy
    of the flat file as the pass saw it; the changed ranges are the 4 KiB blocks that differ since."""
    from providers.esx.source import EsxVmSource

    class DiffTrackedSource(EsxVmSource):
        asked: list[str | None] = []

        def change_ids(self) -> dict[str, str]:
            assert self.held_snapshot is not None, "change ids are read while the pass snapshot is held"
            copy = frozen_dir / f"cbt-{len(list(frozen_dir.iterdir()))}"
            shutil.copyfile(self.disk_location("scsi0:0").path, copy)
            return {"scsi0:0": copy.name}

        def changed_ranges(self, name: str, since: str | None) -> list[tuple[int, int]] | None:
            self.asked.append(since)
            if since is None:
                return None
            before = (frozen_dir / since).read_bytes()
            now = Path(self.disk_location(name).path).read_bytes()
            block = 4096
            return [
                (offset, block)
                for offset in range(0, len(now), block)
                if before[offset : offset + block] != now[offset : offset + block]
            ]

    config = VmSource(type="vm", provider="vcenter", vm=SOURCE_VM, read="local_datastore")
    return DiffTrackedSource(SERVER, provider, config)


def test_sync_reads_only_the_ranges_cbt_names_under_a_journaled_snapshot(
    vcenter_sim: Any, provider: Any, source_vm: Any, tmp_path: Path
) -> None:
    from orchestrator.steps.mirror import Mirror, Sync

    flat = flat_file(provider)
    (tmp_path / "cbt").mkdir()
    source = make_diff_tracked(provider, tmp_path / "cbt")
    replica = tmp_path / "replica.raw"
    book = playbook(vcenter_sim, {"mirror": {"chunk_size": CHUNK}}, read="local_datastore")
    run = StepRun(book, source, provider, replica, "mirror")

    full = Mirror().run(run)  # type: ignore[arg-type]
    assert full["bytes_written"] == 11 * CHUNK and sha256(replica) == sha256(flat)
    assert run.load_checkpoint(f"{SERVER}/change_ids") == {"scsi0:0": "cbt-0"}
    assert snapshot_names(source_vm) == [] and run.journal.resources() == []

    overwrite(flat, 3 * CHUNK + 5, b"one changed block")
    overwrite(flat, 20 * CHUNK, b"a chunk that held zeros")
    sync = Sync().run(run.for_step("sync"))  # type: ignore[arg-type]
    assert source.asked == ["cbt-0"]
    assert sync["bytes_read"] == 2 * CHUNK and sync["bytes_written"] == 2 * CHUNK  # nothing else read
    assert sha256(replica) == sha256(flat)
    assert any("changed-block tracking names 2 range(s)" in message for message, _ in run.events)
    assert run.load_checkpoint(f"{SERVER}/change_ids") == {"scsi0:0": "cbt-1"}
    assert snapshot_names(source_vm) == [] and run.journal.resources() == []

    # A crash in the middle of a pass: the snapshot is on the VM and in the journal, nowhere else.
    from orchestrator.steps.pass_snapshot import frozen_pass

    crashed = [frozen_pass(run, source, take=True)]  # kept: a collected generator would clean up
    crashed[0].__enter__()
    (held,) = snapshot_names(source_vm)
    assert [r.ref["state"]["name"] for r in run.journal.resources() if r.ref["state"]] == [held]
    Sync().undo(run)  # type: ignore[arg-type]  # migrate undo, from the journal alone
    assert snapshot_names(source_vm) == [] and run.journal.resources() == []

    crashed.append(frozen_pass(run, source, take=True))  # crash again; this time the next pass resumes
    crashed[1].__enter__()
    overwrite(flat, 7 * CHUNK, b"changed while the orchestrator was down")
    again = Sync().run(run)  # type: ignore[arg-type]
    assert again["bytes_read"] == CHUNK and sha256(replica) == sha256(flat)
    assert snapshot_names(source_vm) == [] and run.journal.resources() == []
    for abandoned in crashed:  # the dead process's passes, ended before the journal closes
        abandoned.gen.close()
    run.journal.close()


def test_sync_hashes_every_chunk_when_vcenter_has_no_cbt_answer(
    vcenter_sim: Any, provider: Any, source_vm: Any, tmp_path: Path
) -> None:
    """vcsim has no QueryChangedDiskAreas: with CBT on and a change id saved by an earlier pass, the
    pass asks, gets MethodNotFound, and falls back to hashing every chunk: same bytes, more reading."""
    from orchestrator.steps.mirror import Mirror, Sync

    flat = flat_file(provider)
    source = open_source(provider, read="local_datastore")
    replica = tmp_path / "replica.raw"
    book = playbook(vcenter_sim, {"mirror": {"chunk_size": CHUNK}}, read="local_datastore")
    run = StepRun(book, source, provider, replica, "mirror")
    set_cbt(source_vm, True)
    try:
        Mirror().run(run)  # type: ignore[arg-type]
        run.checkpoint(f"{SERVER}/change_ids", {"scsi0:0": "52 aa 10 7f/12"})  # as a real vCenter gives
        overwrite(flat, 3 * CHUNK + 5, b"one changed block")
        sync = Sync().run(run.for_step("sync"))  # type: ignore[arg-type]
    finally:
        set_cbt(source_vm, False)
    assert sync["bytes_read"] == 11 * CHUNK and sync["bytes_written"] == CHUNK  # every data chunk read
    assert sha256(replica) == sha256(flat)
    assert any("every chunk is hashed (the source cannot say" in message for message, _ in run.events)
    assert snapshot_names(source_vm) == [] and run.journal.resources() == []
    run.journal.close()


# ---------------------------------------------------------------- read: guest (the agent over SSH)


def set_guest_ip(vm: Any, address: str) -> None:
    from pyVmomi import vim

    option = vim.option.OptionValue(key="SET.guest.ipAddress", value=address)
    wait(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=[option])))


def test_guest_read_mirrors_through_the_agent_in_the_guest_and_quiesces_it(
    provider: Any, source_vm: Any, sshd_server: Any, tmp_path: Path
) -> None:
    """The "guest" is this machine behind the test sshd, at the address Tools report (127.0.0.1); its
    device for scsi0:0 is a file of the VMDK's size. Quiesce runs the guest's own commands over SSH."""
    from orchestrator.mirror.route import DiskCopy, copy_disk
    from providers.base import AgentLocation

    device = tmp_path / "guest-sda"
    device.write_bytes(os.urandom(MiB) + bytes(6 * MiB) + b"end of the guest's disk".ljust(MiB, b"."))
    marks = tmp_path / "marks"
    login = {
        "port": sshd_server.port,
        "user": sshd_server.user,
        "key": str(sshd_server.client_key),
        "known_hosts": str(sshd_server.known_hosts),
        "devices": {"scsi0:0": str(device)},
        "quiesce_command": f"echo quiesced >> {marks}",
        "thaw_command": f"echo thawed >> {marks}",
    }
    set_guest_ip(source_vm, "127.0.0.1")
    source = open_source(provider, guest=login)
    try:
        facts = source.discover()
        assert (facts.disks[0].name, facts.disks[0].size) == ("scsi0:0", 8 * MiB)
        location = source.disk_location("scsi0:0")
        assert location.path == str(device) and location.transport is not None
        assert source.guest().config.host == "127.0.0.1"  # the address Tools report

        copy = DiskCopy(
            location, AgentLocation(None, str(tmp_path / "replica.raw")), "web01:scsi0:0", CHUNK, "full"
        )
        stats = copy_disk(copy, open_reader=lambda: source.open_disk("scsi0:0"))
        assert sha256(tmp_path / "replica.raw") == sha256(device)
        assert stats.bytes_written == 2 * MiB and stats.zero_bytes_skipped == 6 * MiB

        state = source.quiesce()  # CBT is off: the guest's own quiesce, no snapshot
        assert state is not None and state["kind"] == "guest" and "snapshot" not in state
        assert marks.read_text() == "quiesced\n" and snapshot_names(source_vm) == []
        source.thaw(state)
        assert marks.read_text() == "quiesced\nthawed\n"

        set_cbt(source_vm, True)  # CBT on: a snapshot of the paused guest, for the final pass's ranges
        try:
            state = source.quiesce()
            assert state is not None and snapshot_names(source_vm) == [state["snapshot"]["name"]]
            source.thaw(state)
            assert snapshot_names(source_vm) == [] and marks.read_text().count("thawed") == 2
        finally:
            set_cbt(source_vm, False)
    finally:
        source.close()
        set_guest_ip(source_vm, "10.0.0.9")
