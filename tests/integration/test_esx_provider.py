"""The ESX provider against vcsim (tests/services/vcsim.py): the real vSphere SOAP API, through pyVmomi only.

A vCenter model (cluster of two hosts, two datastores, a distributed switch) and a standalone ESXi model.
What vcsim cannot show (Tools inside a real guest, a real appliance's view of a hot-added disk, disk
descriptors with their capacity) is said where it matters; the data plane writes the flat file of the
VMDK on this machine, standing for the disk inside the appliance.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.base import DiskRequest, NicRequest, NotFound, ProviderError, VmRequest
from tests.services import vcsim as vcsim_service

pytestmark = pytest.mark.integration
pytest.importorskip("pyVmomi", reason="pyvmomi is missing: pip install 'hvmigrate[esx]'")

vcenter_sim = vcsim_service.vcenter_sim
admin = vcsim_service.vcenter_admin  # the administrator's own session, by the name the tests ask for
esx_sim = vcsim_service.esx_sim

MiB = 1024**2
PROVIDER = "vcenter"
FOREIGN_VM = "DC0_C0_RP0_VM0"  # made by vcsim's model: somebody else's VM


def make_provider(server: Any, **overrides: Any) -> Any:
    from providers.esx import EsxProvider

    options: dict[str, Any] = {"datacenter": "DC0", "cluster": "DC0_C0", "datastore": "LocalDS_0"}
    if server.model == "esx":
        options = {}
    options.update(overrides)
    return EsxProvider(PROVIDER, server.config(**options))


@pytest.fixture(scope="module")
def provider(vcenter_sim: Any) -> Iterator[Any]:
    made = make_provider(vcenter_sim)
    yield made
    made.close()


def admin_vm(admin: Any, name: str) -> Any:
    from pyVmomi import vim

    content = admin.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next((vm for vm in view.view if vm.name == name), None)
    finally:
        view.Destroy()


datastore_dir = vcsim_service.datastore_dir
make_appliance = vcsim_service.deploy_appliance


def wait(task: Any) -> Any:
    import time

    while task.info.state in ("queued", "running"):
        time.sleep(0.05)
    assert task.info.state == "success", task.info.error
    return task.info.result


# ---------------------------------------------------------------- connecting


def test_connects_with_the_pinned_thumbprint_and_reads_the_vcenter_inventory(provider: Any) -> None:
    facts = provider.details()
    assert facts.endpoint == "VirtualCenter"
    assert facts.datacenter == "DC0"
    assert facts.clusters == ("DC0_C0",)
    assert [h.name for h in facts.hosts] == ["DC0_C0_H0", "DC0_C0_H1"]
    assert all(h.version and h.connection_state == "connected" and not h.in_maintenance for h in facts.hosts)
    assert all(h.cluster == "DC0_C0" for h in facts.hosts)
    assert "DC0_C0_RP1" in facts.resource_pools
    assert "migrated" in facts.folders
    stores = {d.name: d for d in facts.datastores}
    assert set(stores) == {"LocalDS_0", "LocalDS_1"}
    assert all(d.accessible and d.capacity > d.free > 0 for d in stores.values())
    groups = {p.name: p for p in facts.port_groups}
    assert groups["DC0_DVPG_VLAN100"].distributed and groups["DC0_DVPG_VLAN100"].vlan == 100
    assert groups["DC0_DVPG0"].distributed and groups["DC0_DVPG0"].switch == "DVS0"
    assert not groups["VM Network"].distributed and groups["VM Network"].vlan == 0
    assert FOREIGN_VM in [v.name for v in facts.vms]
    assert not next(v for v in facts.vms if v.name == FOREIGN_VM).owned

    inventory = provider.inventory()
    assert inventory.type == "esx" and inventory.hosts == ("DC0_C0_H0", "DC0_C0_H1")
    assert set(inventory.datastores) == {"LocalDS_0", "LocalDS_1"}
    assert {"VM Network", "DC0_DVPG0", "DC0_DVPG_VLAN100"} <= set(inventory.networks)
    assert inventory.limits.native_format == "vmdk" and inventory.default_datastore == "LocalDS_0"
    assert provider.host_for(None) == "DC0_C0"
    assert provider.host_for("DC0_C0_H1") == "DC0_C0_H1"
    with pytest.raises(ProviderError, match="host nowhere is not in cluster DC0_C0"):
        provider.host_for("nowhere")


def test_reads_a_standalone_esx(esx_sim: Any) -> None:
    provider = make_provider(esx_sim)
    try:
        facts = provider.details()
        assert facts.endpoint == "HostAgent"
        assert facts.datacenter == "ha-datacenter" and facts.clusters == ()
        assert len(facts.hosts) == 1 and facts.hosts[0].cluster is None
        assert [d.name for d in facts.datastores] == ["LocalDS_0"]
        assert [p.name for p in facts.port_groups if not p.distributed] == ["VM Network"]
        assert provider.host_for(None) == facts.hosts[0].name
        assert provider.inventory().default_datastore is None  # none configured: the only one is used
        disk = provider.create_disk(DiskRequest("esx-disk", 2 * MiB, "vmdk", None))
        assert disk.datastore == "LocalDS_0"
        provider.delete_disk(disk)
    finally:
        provider.close()


def test_wrong_password_is_refused_without_showing_it(vcenter_sim: Any) -> None:
    provider = make_provider(vcenter_sim, password="not-the-password")
    with pytest.raises(ProviderError) as caught:
        provider.inventory()
    message = str(caught.value)
    assert "refused the login of administrator@vsphere.local: wrong user name or password" in message
    assert "not-the-password" not in message and vcenter_sim.password not in message
    assert "not-the-password" not in repr(provider) + repr(provider.config)


def test_wrong_thumbprint_is_refused(vcenter_sim: Any) -> None:
    wrong = ":".join(["AB"] * 32)
    provider = make_provider(vcenter_sim, thumbprint=wrong)
    with pytest.raises(ProviderError) as caught:
        provider.inventory()
    assert f"presented a certificate with thumbprint {vcenter_sim.thumbprint}, not the pinned {wrong}" in str(
        caught.value
    )


def test_unverifiable_certificate_is_refused_and_a_ca_bundle_verifies_it(vcenter_sim: Any) -> None:
    unpinned = make_provider(vcenter_sim, thumbprint=None)
    with pytest.raises(ProviderError, match=r"cannot be verified .*give its CA as ca_bundle"):
        unpinned.inventory()
    bundled = make_provider(vcenter_sim, thumbprint=None, ca_bundle=vcenter_sim.cert)
    try:
        assert bundled.inventory().hosts == ("DC0_C0_H0", "DC0_C0_H1")
    finally:
        bundled.close()


def test_session_terminated_mid_run_logs_in_again(vcenter_sim: Any, admin: Any) -> None:
    provider = make_provider(vcenter_sim)
    try:
        disk = provider.create_disk(DiskRequest("relogin-disk", 2 * MiB, "vmdk", None))
        key = provider.connection.session_key
        logins = provider.connection.stub.logins
        admin.content.sessionManager.TerminateSession([key])
        assert provider.find_disk(DiskRequest("relogin-disk", 2 * MiB, "vmdk", None)) == disk
        provider.delete_disk(disk)
        assert provider.connection.stub.logins == logins + 1
        assert provider.connection.session_key != key
    finally:
        provider.close()


# ---------------------------------------------------------------- disks


@pytest.mark.parametrize("provisioning", ["thin", "thick", "eager_zeroed"])
def test_disk_create_find_delete(provider: Any, admin: Any, provisioning: str) -> None:
    request = DiskRequest(f"d-{provisioning}", 3 * MiB, "vmdk", "LocalDS_1", provisioning)
    assert provider.find_disk(request) is None
    disk = provider.create_disk(request)
    assert (disk.name, disk.size, disk.format, disk.datastore) == (request.name, 3 * MiB, "vmdk", "LocalDS_1")
    assert disk.id == f"[LocalDS_1] hvmigrate/{request.name}/{request.name}.vmdk"
    assert provider.create_disk(request) == disk  # idempotent
    assert provider.find_disk(request) == disk
    folder = datastore_dir(admin, "LocalDS_1") / "hvmigrate" / request.name
    assert (folder / f"{request.name}.vmdk").exists() and (folder / f"{request.name}-flat.vmdk").exists()
    with pytest.raises(ProviderError, match="already exists on datastore LocalDS_1 with"):
        provider.create_disk(DiskRequest(request.name, 4 * MiB, "vmdk", "LocalDS_1", provisioning))
    provider.delete_disk(disk)
    assert not folder.exists()
    assert provider.find_disk(request) is None
    with pytest.raises(NotFound):
        provider.delete_disk(disk)


def test_foreign_disk_is_never_adopted_or_deleted(provider: Any, admin: Any) -> None:
    folder = datastore_dir(admin, "LocalDS_0") / "hvmigrate" / "foreign"
    folder.mkdir(parents=True)
    (folder / "foreign.vmdk").write_text("# somebody's descriptor\n")
    (folder / "foreign-flat.vmdk").write_bytes(b"precious" * 1024)
    request = DiskRequest("foreign", 1 * MiB, "vmdk", "LocalDS_0")
    assert provider.find_disk(request) is None
    with pytest.raises(ProviderError, match="was not created by hvmigrate; it is never overwritten"):
        provider.create_disk(request)
    from providers.base import DiskRef

    with pytest.raises(ProviderError, match="was not created by hvmigrate; not deleted"):
        provider.delete_disk(DiskRef(PROVIDER, "x", "foreign", MiB, "vmdk", "LocalDS_0"))
    assert (folder / "foreign-flat.vmdk").read_bytes() == b"precious" * 1024


def test_full_datastore_is_refused(provider: Any) -> None:
    free = provider.inventory().datastores["LocalDS_0"].free
    request = DiskRequest("too-big", free + 1024**3, "vmdk", "LocalDS_0")
    with pytest.raises(ProviderError, match=r"datastore LocalDS_0 has .* free, disk too-big needs"):
        provider.create_disk(request)
    assert provider.find_disk(request) is None


def test_clone_copies_the_disk(provider: Any, admin: Any) -> None:
    source = provider.create_disk(DiskRequest("clone-src", 2 * MiB, "vmdk", "LocalDS_0"))
    flat = datastore_dir(admin, "LocalDS_0") / "hvmigrate" / "clone-src" / "clone-src-flat.vmdk"
    flat.write_bytes(os.urandom(2 * MiB))
    request = DiskRequest("clone-dst", 2 * MiB, "vmdk", "LocalDS_0")
    clone = provider.clone_disk(source, request)
    assert provider.clone_disk(source, request) == clone
    copied = datastore_dir(admin, "LocalDS_0") / "hvmigrate" / "clone-dst" / "clone-dst-flat.vmdk"
    assert copied.read_bytes() == flat.read_bytes()
    provider.delete_disk(clone)
    provider.delete_disk(source)


# ---------------------------------------------------------------- VMs


def test_vm_name_taken_by_a_foreign_vm_is_refused_and_untouched(provider: Any, admin: Any) -> None:
    before = admin_vm(admin, FOREIGN_VM)
    devices = len(before.config.hardware.device)
    assert provider.find_vm(FOREIGN_VM) is None
    request = VmRequest(FOREIGN_VM, None, 1, 256 * MiB, "bios", (), ())
    with pytest.raises(ProviderError, match="was not created by hvmigrate; it is never touched"):
        provider.create_vm(request)
    after = admin_vm(admin, FOREIGN_VM)
    assert after is not None and len(after.config.hardware.device) == devices
    assert after.runtime.powerState == "poweredOn"


def test_missing_port_group_is_refused(provider: Any) -> None:
    request = VmRequest("no-net", None, 1, 256 * MiB, "bios", (), (NicRequest("nowhere", None),))
    with pytest.raises(ProviderError, match="port group nowhere does not exist in datacenter DC0"):
        provider.create_vm(request)
    assert provider.find_vm("no-net") is None


def test_vm_with_two_nics_kept_macs_power_and_delete_keeps_disks(provider: Any, admin: Any) -> None:
    boot = provider.create_disk(DiskRequest("web-disk0", 4 * MiB, "vmdk", "LocalDS_0"))
    data = provider.create_disk(DiskRequest("web-disk1", 2 * MiB, "vmdk", "LocalDS_1"))
    nics = (
        NicRequest("VM Network", "52:54:00:aa:bb:01", model="vmxnet3"),
        NicRequest("DC0_DVPG_VLAN100", "52:54:00:aa:bb:02", model="e1000e", vlan=100),
    )
    request = VmRequest(
        "web01", "DC0_C0_H1", 2, 512 * MiB, "uefi", (boot, data), nics, tags={"hvmigrate.server": "web01"}
    )
    vm = provider.create_vm(request)
    assert provider.find_vm("web01") == vm
    details = provider.vm_details(vm)
    assert details["firmware"] == "efi" and details["cpus"] == 2 and details["memory_mb"] == 512
    assert [(n["type"], n["mac"], n["address_type"]) for n in details["nics"]] == [
        ("VirtualVmxnet3", "52:54:00:aa:bb:01", "manual"),
        ("VirtualE1000e", "52:54:00:aa:bb:02", "manual"),
    ]
    assert details["nics"][0]["network"] == "VM Network"
    assert [d["path"] for d in details["disks"]] == [boot.id, data.id]
    assert details["tags"]["hvmigrate.owner"] == "hvmigrate"
    assert admin_vm(admin, "web01").runtime.host.name == "DC0_C0_H1"
    with pytest.raises(ProviderError, match="a VM named web01 already exists"):
        provider.create_vm(request)

    provider.power_on(vm)
    provider.power_on(vm)  # idempotent
    assert admin_vm(admin, "web01").runtime.powerState == "poweredOn"
    with pytest.raises(ProviderError, match="running; power it off first"):
        provider.delete_vm(vm)
    report = provider.wait_booted(vm, 0)
    assert report.running and report.hostname is None  # no Tools have reported yet
    # What VMware Tools in the guest would report (vcsim takes it as SET.guest.* options).
    tools = [
        {"key": "SET.guest.hostName", "value": "web01.corp.test"},
        {"key": "SET.guest.ipAddress", "value": "10.1.0.6"},
    ]
    from pyVmomi import vim

    wait(
        admin_vm(admin, "web01").ReconfigVM_Task(
            spec=vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(**t) for t in tools])
        )
    )
    report = provider.wait_booted(vm, 5)
    assert report.running and report.hostname == "web01.corp.test" and "10.1.0.6" in report.addresses

    provider.power_off(vm)
    assert admin_vm(admin, "web01").runtime.powerState == "poweredOff"
    provider.power_off(vm, force=True)  # idempotent
    provider.delete_vm(vm)
    assert admin_vm(admin, "web01") is None and provider.find_vm("web01") is None
    assert provider.find_disk(DiskRequest("web-disk0", 4 * MiB, "vmdk", "LocalDS_0")) == boot
    assert provider.find_disk(DiskRequest("web-disk1", 2 * MiB, "vmdk", "LocalDS_1")) == data
    provider.delete_disk(boot)
    provider.delete_disk(data)


def test_sixteen_disks_take_a_second_controller(provider: Any) -> None:
    disks = tuple(provider.create_disk(DiskRequest(f"many-{i}", MiB, "vmdk", "LocalDS_0")) for i in range(16))
    vm = provider.create_vm(
        VmRequest("many", None, 1, 256 * MiB, "bios", disks, (), disk_controllers=("pvscsi",) * 16)
    )
    try:
        details = provider.vm_details(vm)
        assert [c["type"] for c in details["controllers"] if "SCSI" in c["type"]] == [
            "ParaVirtualSCSIController",
            "ParaVirtualSCSIController",
        ]
        slots = [d["slot"] for d in details["disks"]]
        assert slots[0] == "0:0" and "0:7" not in slots and slots[15] == "1:0"
    finally:
        provider.delete_vm(vm)
        for disk in disks:
            provider.delete_disk(disk)


# ---------------------------------------------------------------- the appliance and the data plane


def test_appliance_attach_two_disks_mirror_and_detach(vcenter_sim: Any, admin: Any) -> None:
    from orchestrator.mirror.file_reader import FileDiskReader
    from orchestrator.mirror.route import DiskCopy, copy_disk
    from providers.base import AgentLocation

    appliance_vm = make_appliance(admin, "hvm-appliance")
    provider = make_provider(vcenter_sim, appliance="hvm-appliance", disk_writer="datastore_path")
    try:
        host = provider.host_for(None)
        appliance = provider.find_appliance(host, "hvm-appliance-DC0_C0-0")
        assert appliance is not None and appliance.name == "hvm-appliance"
        assert provider.provision_appliance(host, "hvm-appliance-DC0_C0-0") == appliance
        disks = [
            provider.create_disk(DiskRequest("app-disk0", 4 * MiB, "vmdk", "LocalDS_0")),
            provider.create_disk(DiskRequest("app-disk1", 2 * MiB, "vmdk", "LocalDS_1")),
        ]
        endpoints = [provider.attach_disk(appliance, disk) for disk in disks]
        assert provider.attach_disk(appliance, disks[0]) == endpoints[0]  # idempotent
        own = [d for d in appliance_vm.config.hardware.device if d.__class__.__name__.endswith("VirtualDisk")]
        assert len(own) == 3 and own[0].unitNumber == 0  # the appliance's own disk stays on 0:0
        assert [e.transport["scsi"] for e in endpoints] == ["0:1", "0:2"]
        assert all(e.kind == "file" and provider.writer_location(e) is None for e in endpoints)
        assert all(e.transport["disk_writer"] == "datastore_path" for e in endpoints)
        with pytest.raises(ProviderError, match="still has 2 replica disk"):
            provider.release_appliance(appliance)
        held = provider.create_disk(DiskRequest("app-held", MiB, "vmdk", "LocalDS_1"))
        holder = provider.create_vm(VmRequest("holder", None, 1, 256 * MiB, "bios", (held,), ()))
        with pytest.raises(ProviderError, match="disk app-held is attached to VM holder"):
            provider.attach_disk(appliance, held)  # another VM's disk is never written
        provider.delete_vm(holder)
        provider.delete_disk(held)

        source = vcenter_sim.directory / "source.raw"
        payload = os.urandom(3 * MiB) + bytes(MiB)
        source.write_bytes(payload)
        copy = DiskCopy(
            source=AgentLocation(None, str(source)),
            target=AgentLocation(None, endpoints[0].path),
            source_identity="test:source.raw",
            chunk_size=MiB,
            mode="full",
        )
        stats = copy_disk(copy, open_reader=lambda: FileDiskReader(source))
        assert stats.bytes_written >= 3 * MiB
        flat = Path(endpoints[0].path)
        assert flat.name == "app-disk0-flat.vmdk"
        assert hashlib.sha256(flat.read_bytes()).digest() == hashlib.sha256(payload).digest()

        for disk in disks:
            provider.detach_disk(appliance, disk)
            provider.detach_disk(appliance, disk)  # idempotent
        remaining = [
            d for d in appliance_vm.config.hardware.device if d.__class__.__name__.endswith("VirtualDisk")
        ]
        assert len(remaining) == 1 and remaining[0].unitNumber == 0
        assert flat.read_bytes() == payload  # hot-remove keeps the file
        provider.release_appliance(appliance)  # named in the config: the administrator's, it stays
        assert admin_vm(admin, "hvm-appliance") is not None
        for disk in disks:
            provider.delete_disk(disk)
    finally:
        provider.close()


def test_appliance_cloned_from_a_template_is_released_with_its_vm(vcenter_sim: Any, admin: Any) -> None:
    from providers.registry import open_provider

    make_appliance(admin, "appliance-tpl", power_on=False).MarkAsTemplate()
    config = vcenter_sim.config(datacenter="DC0", appliance_template="appliance-tpl")
    provider = open_provider(PROVIDER, config)
    try:
        host = provider.host_for("DC0_C0_H0")
        assert provider.find_appliance(host, "hvm-appliance-h0") is None
        appliance = provider.provision_appliance(host, "hvm-appliance-h0")
        assert provider.provision_appliance(host, "hvm-appliance-h0") == appliance
        assert provider.find_appliance(host, "hvm-appliance-h0") == appliance
        assert provider.find_vm("hvm-appliance-h0") is None  # an appliance is no replica
        assert admin_vm(admin, "hvm-appliance-h0").runtime.powerState == "poweredOn"
        disk = provider.create_disk(DiskRequest("tpl-disk", MiB, "vmdk", "LocalDS_0"))
        endpoint = provider.attach_disk(appliance, disk)
        assert endpoint.transport["scsi"] == "0:1"
        provider.detach_disk(appliance, disk)
        provider.release_appliance(appliance)
        assert admin_vm(admin, "hvm-appliance-h0") is None
        assert admin_vm(admin, "appliance-tpl") is not None  # the template stays
        provider.delete_disk(disk)
    finally:
        provider.close()


def test_appliance_takes_sixty_disks_never_on_its_own_slot_and_keeps_its_disk(
    vcenter_sim: Any, admin: Any
) -> None:
    """The planner's 60 slots: SCSI 0:0 stays the appliance's own disk, four SCSI controllers give 59
    more, the 60th goes on a SATA controller, the 61st is refused. With the default disk_writer the
    endpoint names the appliance and the slot, and without appliance_login the writer says what to set."""
    appliance_vm = make_appliance(admin, "hvm-appliance-60")
    own = next(d for d in appliance_vm.config.hardware.device if d.__class__.__name__.endswith("VirtualDisk"))
    own_file = own.backing.fileName
    provider = make_provider(vcenter_sim, appliance="hvm-appliance-60")
    disks = [provider.create_disk(DiskRequest(f"slot-{i}", MiB, "vmdk", "LocalDS_1")) for i in range(61)]
    try:
        appliance = provider.provision_appliance(provider.host_for(None), "hvm-appliance-60")
        endpoints = [provider.attach_disk(appliance, disk) for disk in disks[:60]]
        slots = [e.transport["scsi"] for e in endpoints]
        assert len(set(slots)) == 60 and "0:0" not in slots
        assert not any(s.endswith(":7") for s in slots if not s.startswith("sata"))
        assert slots[0] == "0:1" and slots[14] == "1:0" and slots[-1] == "sata0:0"
        assert endpoints[0].kind == "block" and endpoints[0].path == "scsi:0:1"
        assert endpoints[0].host == "hvm-appliance-60"
        with pytest.raises(ProviderError, match="writer runs inside it over SSH: set appliance_login"):
            provider.writer_location(endpoints[0])
        with pytest.raises(ProviderError, match="already has 60 replica disks attached"):
            provider.attach_disk(appliance, disks[60])
        for disk in disks[:60]:
            provider.detach_disk(appliance, disk)
        left = [
            d for d in appliance_vm.config.hardware.device if d.__class__.__name__.endswith("VirtualDisk")
        ]
        assert [(d.controllerKey, d.unitNumber, d.backing.fileName) for d in left] == [
            (own.controllerKey, 0, own_file)
        ]
    finally:
        for disk in disks:
            provider.detach_disk(provider.find_appliance("DC0_C0", "hvm-appliance-60"), disk)
            provider.delete_disk(disk)
        provider.close()


# ---------------------------------------------------------------- the cold path


def test_cold_upload_as_flat_vmdk_with_progress_and_resume_by_range(provider: Any, admin: Any) -> None:
    """An image goes up by one PUT through /folder; a crash after the bytes arrived costs ranged GETs,
    not a second upload; a flat file that differs is sent again; the disk boots a VM like any other."""
    image = datastore_dir(admin, "LocalDS_0").parent / "cold-source.raw"
    payload = os.urandom(3 * MiB) + bytes(MiB // 2)
    image.write_bytes(payload)
    request = DiskRequest("cold", 4 * MiB, "vmdk", "LocalDS_1")
    seen: list[tuple[int, int]] = []
    disk = provider.upload_disk(image, request, lambda done, total: seen.append((done, total)))
    assert disk == provider.find_disk(request) and disk.size == 4 * MiB
    assert seen[-1] == (4 * MiB, 4 * MiB) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    folder = datastore_dir(admin, "LocalDS_1") / "hvmigrate" / "cold"
    flat = folder / "cold-flat.vmdk"
    assert flat.read_bytes() == payload + bytes(4 * MiB - len(payload))
    assert 'RW 8192 VMFS "cold-flat.vmdk"' in (folder / "cold.vmdk").read_text()
    seen.clear()
    assert provider.upload_disk(image, request, lambda d, t: seen.append((d, t))) == disk and not seen

    # A crash after the bytes arrived, before the marker said ready: compared by Range, not sent again.
    provider.disks._write_marker(provider.disks.place("cold", "LocalDS_1"), "uploading", 4 * MiB, "thick")
    assert provider.find_disk(request) is None
    before = flat.stat().st_mtime_ns
    assert provider.upload_disk(image, request, lambda d, t: seen.append((d, t))) == disk
    assert flat.stat().st_mtime_ns == before and seen[-1] == (4 * MiB, 4 * MiB)

    # A flat file that differs (an upload cut short, then overwritten) is sent again whole.
    with flat.open("r+b") as handle:
        handle.seek(2 * MiB)
        handle.write(b"\xff" * 16)
    provider.disks._write_marker(provider.disks.place("cold", "LocalDS_1"), "uploading", 4 * MiB, "thick")
    assert provider.upload_disk(image, request) == disk
    assert flat.read_bytes() == payload + bytes(4 * MiB - len(payload))

    vm = provider.create_vm(VmRequest("cold01", None, 1, 256 * MiB, "bios", (disk,), ()))
    try:
        assert [d["path"] for d in provider.vm_details(vm)["disks"]] == [disk.id]
    finally:
        provider.delete_vm(vm)
    provider.delete_disk(disk)
    assert not folder.exists()
