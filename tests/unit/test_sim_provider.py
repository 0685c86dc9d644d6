"""The embedded sim hypervisor, the image source and the provider registry, on real sparse files."""

from __future__ import annotations

import hashlib
import importlib.util
import multiprocessing
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator.guest.linux import apply_edits, plan_network_edits
from orchestrator.playbook.models import ImageSource as ImageSourceConfig
from orchestrator.playbook.models import Server, SimProviderConfig
from orchestrator.quickstart import EFI_SYSTEM, LINUX_FILESYSTEM, GptPartition, MiB, make_images, write_gpt
from providers.base import (
    ApplianceRef,
    DiskRef,
    DiskRequest,
    NicRequest,
    NotFound,
    Provider,
    ProviderError,
    Source,
    VmRef,
    VmRequest,
)
from providers.linux import SshSource
from providers.registry import (
    ProviderUnavailable,
    SourceUnavailable,
    open_provider,
    open_source,
    provider_factory,
)
from providers.sim import ImageSource, SimProvider

CAPACITY = 64 * MiB


def sim(root: Path, **overrides: Any) -> SimProvider:
    config = {
        "type": "sim",
        "root": root,
        "datastores": {"default": CAPACITY, "small": 4 * MiB},
        "networks": ["prod", "test"],
        **overrides,
    }
    return SimProvider("local", SimProviderConfig.model_validate(config))


@pytest.fixture
def provider(tmp_path: Path) -> SimProvider:
    return sim(tmp_path / "host")


def disk_request(name: str, size: int = MiB, datastore: str | None = None, fmt: str = "raw") -> DiskRequest:
    return DiskRequest(name=name, size=size, format=fmt, datastore=datastore)


def vm_request(
    name: str, disks: tuple[DiskRef, ...], nics: tuple[NicRequest, ...] = (), firmware: str = "bios"
) -> VmRequest:
    return VmRequest(
        name=name,
        host=None,
        cpus=2,
        memory=512 * MiB,
        firmware=firmware,  # type: ignore[arg-type]
        disks=disks,
        nics=nics,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_images(tmp_path_factory.mktemp("quickstart-images"))


def copy_into(source: Path, target: str) -> None:
    """What the data plane does, minus the network: every non-zero MiB of the image into the endpoint."""
    with open(source, "rb") as src, open(target, "r+b") as dst:
        while block := src.read(MiB):
            if block.count(0) != len(block):
                dst.seek(src.tell() - len(block))
                dst.write(block)


# ---------------------------------------------------------------- protocol and inventory


def test_sim_provider_is_a_provider_and_records_its_host(provider: SimProvider) -> None:
    assert isinstance(provider, Provider)
    provider.inventory()
    provider.find_vm("nope")
    assert not provider.root.exists()  # reading a host that was never written creates nothing
    provider.create_disk(disk_request("first", MiB))
    host = (provider.root / "host.json").read_text()
    assert '"host": "sim-host-1"' in host and '"small"' in host
    assert provider.host_for(None) == provider.host_for("sim-host-1") == "sim-host-1"
    with pytest.raises(ProviderError, match="has one host, sim-host-1"):
        provider.host_for("esx-7")


def test_inventory_free_space_counts_full_size_of_sparse_disks(provider: SimProvider) -> None:
    assert provider.inventory().datastores["default"].free == CAPACITY
    first = provider.create_disk(disk_request("a", 10 * MiB))
    provider.create_disk(disk_request("b", 20 * MiB))
    assert os.stat(first.id).st_blocks == 0  # a real sparse file: nothing allocated yet
    inventory = provider.inventory()
    assert inventory.datastores["default"].free == CAPACITY - 30 * MiB
    assert inventory.datastores["default"].capacity == CAPACITY
    assert inventory.datastores["small"].free == 4 * MiB
    with open(first.id, "r+b") as handle:  # the data plane filling a disk does not move the figure
        handle.write(b"x" * MiB)
    assert provider.inventory().datastores["default"].free == CAPACITY - 30 * MiB
    assert inventory.networks == ("prod", "test") and inventory.hosts == ("sim-host-1",)
    limits = inventory.limits
    assert (limits.native_format, limits.disk_formats, limits.max_disks_per_appliance) == (
        "raw",
        ("raw",),
        60,
    )
    assert inventory.default_datastore == "default"


# ---------------------------------------------------------------- disks


def test_create_disk_refusals(provider: SimProvider) -> None:
    with pytest.raises(
        ProviderError,
        match="datastore nowhere does not exist on sim host sim-host-1; datastores: default, small",
    ):
        provider.create_disk(disk_request("x", datastore="nowhere"))
    with pytest.raises(ProviderError, match="the sim stores raw disks only; use format: raw"):
        provider.create_disk(disk_request("x", fmt="qcow2"))
    with pytest.raises(ProviderError, match=r"datastore small has 4.0 MiB free, disk x needs 5.0 MiB"):
        provider.create_disk(disk_request("x", 5 * MiB, "small"))
    with pytest.raises(ProviderError, match="multiple of 512"):
        provider.create_disk(disk_request("x", 1000))
    with pytest.raises(ProviderError, match="not valid"):
        provider.create_disk(disk_request("../escape"))
    assert not list((provider.root / "datastores").rglob("x*"))


def test_create_disk_is_idempotent_by_name(provider: SimProvider) -> None:
    disk = provider.create_disk(disk_request("web01-disk0", 2 * MiB))
    assert provider.create_disk(disk_request("web01-disk0", 2 * MiB)) == disk
    assert provider.find_disk(disk_request("web01-disk0", 2 * MiB)) == disk
    assert provider.find_disk(disk_request("other")) is None
    with pytest.raises(ProviderError, match=r"already exists on datastore default with 2\.0 MiB"):
        provider.create_disk(disk_request("web01-disk0", 3 * MiB))
    assert disk.id == str(provider.root / "datastores" / "default" / "web01-disk0.raw")


def test_delete_disk(provider: SimProvider) -> None:
    disk = provider.create_disk(disk_request("d"))
    Path(disk.id + ".hvmap").write_text("block map")
    provider.create_disk(disk_request("d-other"))
    provider.delete_disk(disk)
    assert not Path(disk.id).exists() and not Path(disk.id + ".hvmap").exists()
    assert provider.find_disk(disk_request("d-other")) is not None
    with pytest.raises(NotFound):
        provider.delete_disk(disk)
    foreign = DiskRef("other-provider", disk.id, "d", MiB, "raw", "default")
    with pytest.raises(ProviderError, match="belongs to provider other-provider"):
        provider.delete_disk(foreign)


# ---------------------------------------------------------------- appliances and attachments


def test_appliance_lifecycle_and_attachments(provider: SimProvider) -> None:
    appliance = provider.provision_appliance("sim-host-1", "shared-sim-host-1")
    assert provider.provision_appliance("sim-host-1", "shared-sim-host-1") == appliance
    assert provider.find_appliance("sim-host-1", "shared-sim-host-1") == appliance
    assert provider.find_appliance("sim-host-1", "nope") is None
    disk = provider.create_disk(disk_request("d0", 2 * MiB))
    endpoint = provider.attach_disk(appliance, disk)
    assert (endpoint.kind, endpoint.path, endpoint.size, endpoint.host) == ("file", disk.id, 2 * MiB, "local")
    assert provider.attach_disk(appliance, disk) == endpoint  # idempotent
    with open(endpoint.path, "r+b") as handle:  # the endpoint really is writable
        handle.write(b"replica")
    assert Path(disk.id).read_bytes()[:7] == b"replica"

    other = provider.provision_appliance("sim-host-1", "dedicated-db01")
    with pytest.raises(ProviderError, match="attached to appliance shared-sim-host-1; detach it there first"):
        provider.attach_disk(other, disk)
    with pytest.raises(ProviderError, match="attached to appliance shared-sim-host-1; detach it first"):
        provider.delete_disk(disk)
    with pytest.raises(ProviderError, match=r"still has 1 disk\(s\) attached \(d0\); detach them first"):
        provider.release_appliance(appliance)
    provider.detach_disk(appliance, disk)
    provider.detach_disk(appliance, disk)  # idempotent
    provider.release_appliance(appliance)
    assert provider.find_appliance("sim-host-1", "shared-sim-host-1") is None
    with pytest.raises(NotFound):
        provider.release_appliance(appliance)
    with pytest.raises(NotFound, match="provision it first"):
        provider.attach_disk(appliance, disk)

    host_endpoint = provider.attach_disk(None, disk)  # appliance: host
    assert host_endpoint.path == disk.id
    with pytest.raises(ProviderError, match="attached to host sim-host-1"):
        provider.attach_disk(other, disk)
    provider.detach_disk(None, disk)
    provider.attach_disk(other, disk)


def test_an_appliance_takes_at_most_60_disks(provider: SimProvider) -> None:
    appliance = provider.provision_appliance("sim-host-1", "full")
    disks = [provider.create_disk(disk_request(f"d{i}", 512)) for i in range(61)]
    for disk in disks[:60]:
        provider.attach_disk(appliance, disk)
    with pytest.raises(ProviderError, match="already has 60 disks attached"):
        provider.attach_disk(appliance, disks[60])
    provider.detach_disk(appliance, disks[0])
    provider.attach_disk(appliance, disks[60])


def test_attach_a_missing_disk_is_not_found(provider: SimProvider) -> None:
    ghost = DiskRef("local", "/nowhere", "ghost", MiB, "raw", "default")
    with pytest.raises(NotFound, match="create it first"):
        provider.attach_disk(None, ghost)


# ---------------------------------------------------------------- VMs


def test_create_vm_records_the_vm_with_generated_and_given_macs(
    provider: SimProvider, tmp_path: Path
) -> None:
    disk = provider.create_disk(disk_request("web01-disk0"))
    vm = provider.create_vm(
        vm_request("web01", (disk,), (NicRequest("prod", None), NicRequest("test", "52-54-00-AA-BB-CC")))
    )
    assert vm == VmRef("local", "web01", "web01") == provider.find_vm("web01")
    details = provider.vm_details(vm)
    assert (details["cpus"], details["memory"], details["firmware"], details["power"]) == (
        2,
        512 * MiB,
        "bios",
        "off",
    )
    assert [d["path"] for d in details["disks"]] == [disk.id]
    generated, given = (nic["mac"] for nic in details["nics"])
    assert generated.startswith("52:54:00:") and len(generated) == 17 and given == "52:54:00:aa:bb:cc"
    # The same VM name gets the same MAC on another sim host: deterministic, not random.
    again = sim(tmp_path / "other-host")
    twin = again.create_vm(
        vm_request("web01", (again.create_disk(disk_request("x")),), (NicRequest("prod", None),))
    )
    assert again.vm_details(twin)["nics"][0]["mac"] == generated
    assert provider.inventory().vms == ("web01",)


def test_create_vm_refusals(tmp_path: Path) -> None:
    provider = sim(tmp_path / "host", max_nics=2, firmware=["bios"])
    disk = provider.create_disk(disk_request("d0"))
    with pytest.raises(
        ProviderError,
        match=r"network dmz does not exist on sim host sim-host-1; networks: "
        r"prod, test",
    ):
        provider.create_vm(vm_request("a", (disk,), (NicRequest("dmz", None),)))
    with pytest.raises(ProviderError, match="asks for 3 NICs; sim host sim-host-1 allows at most 2"):
        provider.create_vm(vm_request("a", (disk,), (NicRequest("prod", None),) * 3))
    with pytest.raises(ProviderError, match="firmware uefi is not supported by sim host sim-host-1"):
        provider.create_vm(vm_request("a", (disk,), firmware="uefi"))
    with pytest.raises(ProviderError, match="not a MAC address"):
        provider.create_vm(vm_request("a", (disk,), (NicRequest("prod", "52:54:00:zz:00:01"),)))
    appliance = provider.provision_appliance("sim-host-1", "app")
    provider.attach_disk(appliance, disk)
    with pytest.raises(ProviderError, match="still attached to appliance app; detach first"):
        provider.create_vm(vm_request("a", (disk,)))
    provider.detach_disk(appliance, disk)
    provider.create_vm(vm_request("a", (disk,), (NicRequest("prod", "52:54:00:00:00:01"),)))
    with pytest.raises(ProviderError, match="a VM named a already exists on sim host sim-host-1"):
        provider.create_vm(vm_request("a", ()))
    with pytest.raises(ProviderError, match="already belongs to VM a"):
        provider.create_vm(vm_request("b", (disk,)))
    with pytest.raises(ProviderError, match="MAC 52:54:00:00:00:01 is already used by VM a on network prod"):
        provider.create_vm(vm_request("b", (), (NicRequest("prod", "52:54:00:00:00:01"),)))
    provider.create_vm(vm_request("c", (), (NicRequest("test", "52:54:00:00:00:01"),)))  # another network
    with pytest.raises(ProviderError, match="belongs to VM a; the data plane cannot write"):
        provider.attach_disk(None, disk)
    with pytest.raises(ProviderError, match="belongs to VM a; delete the VM first"):
        provider.delete_disk(disk)
    assert sorted(provider.inventory().vms) == ["a", "c"]


def test_power_and_delete(provider: SimProvider) -> None:
    disk = provider.create_disk(disk_request("d0"))
    vm = provider.create_vm(vm_request("a", (disk,)))
    provider.power_on(vm)
    provider.power_on(vm)
    assert provider.vm_details(vm)["power"] == "on"
    with pytest.raises(ProviderError, match="VM a is running; power it off first"):
        provider.delete_vm(vm)
    provider.power_off(vm, force=True)
    provider.delete_vm(vm)
    assert provider.find_vm("a") is None
    assert Path(disk.id).exists()  # disks outlive their VM; delete_disk removes them
    provider.delete_disk(disk)
    for action in (provider.delete_vm, provider.power_on, provider.power_off):
        with pytest.raises(NotFound, match="VM a does not exist"):
            action(vm)


def test_power_on_refuses_a_vm_whose_disk_vanished(provider: SimProvider) -> None:
    disk = provider.create_disk(disk_request("d0"))
    vm = provider.create_vm(vm_request("a", (disk,)))
    os.unlink(disk.id)
    with pytest.raises(ProviderError, match="cannot start: its disk d0"):
        provider.power_on(vm)


# ---------------------------------------------------------------- booting


def test_wait_booted_needs_power_and_a_boot_signature(provider: SimProvider) -> None:
    disk = provider.create_disk(disk_request("blank"))
    vm = provider.create_vm(vm_request("blank", (disk,)))
    report = provider.wait_booted(vm, timeout=1)
    assert not report.running and "powered off" in report.detail
    provider.power_on(vm)
    report = provider.wait_booted(vm, timeout=1)
    assert not report.running and report.detail.startswith("no bootable disk")
    assert "no boot signature" in provider.console_log(vm)


def test_uefi_vm_needs_an_efi_system_partition(
    provider: SimProvider, images: dict[str, Path], tmp_path: Path
) -> None:
    mbr_disk = provider.create_disk(disk_request("mbr", 48 * MiB))
    copy_into(images["app01.raw"], provider.attach_disk(None, mbr_disk).path)
    provider.detach_disk(None, mbr_disk)
    vm = provider.create_vm(vm_request("uefi-on-mbr", (mbr_disk,), firmware="uefi"))
    provider.power_on(vm)
    report = provider.wait_booted(vm, timeout=1)
    assert (
        not report.running and "EFI System Partition" in report.detail and "firmware: bios" in report.detail
    )

    gpt_disk = provider.create_disk(disk_request("gpt", 8 * MiB))
    write_gpt(
        Path(gpt_disk.id),
        [GptPartition(MiB, 2 * MiB, EFI_SYSTEM), GptPartition(3 * MiB, 4 * MiB, LINUX_FILESYSTEM)],
        uuid.UUID(int=9),
    )
    vm2 = provider.create_vm(vm_request("uefi-ok", (gpt_disk,), firmware="uefi"))
    provider.power_on(vm2)
    report = provider.wait_booted(vm2, timeout=1)
    assert report.running and report.hostname is None and "unknown" in report.detail


def test_a_migrated_linux_boots_without_network_until_staged(tmp_path: Path, images: dict[str, Path]) -> None:
    """The image names its NIC eth0; the sim's kernel calls it enp0s2; staging's .link pins nic0."""
    provider = sim(tmp_path / "big-host", datastores={"default": 1024 * MiB})
    disk = provider.create_disk(disk_request("web01-disk0", 96 * MiB))
    endpoint = provider.attach_disk(None, disk)
    copy_into(images["web01.raw"], endpoint.path)
    provider.detach_disk(None, disk)
    vm = provider.create_vm(vm_request("web01", (disk,), (NicRequest("prod", "52:54:00:00:01:01"),)))
    provider.power_on(vm)
    report = provider.wait_booted(vm, timeout=600)
    assert report.running and report.hostname == "web01" and report.addresses == ()
    assert "eth0 is configured but no NIC has that name" in report.detail
    assert "ifup: eth0: no such interface (present: enp0s2)" in provider.console_log(vm)

    provider.power_off(vm)
    apply_edits(
        disk.id,
        plan_network_edits("web01", [("52:54:00:00:01:01", "10.1.0.11/24", "10.1.0.1", ["10.1.0.2"])]),
    )
    provider.power_on(vm)
    report = provider.wait_booted(vm, timeout=600)
    assert report.running and report.hostname == "web01" and report.addresses == ("10.1.0.11/24",)
    console = (provider.root / "vms" / "web01.console.log").read_text()
    assert "renamed nic0 by 10-hvmigrate-0.link" in console and "Debian GNU/Linux 12" in console


# ---------------------------------------------------------------- concurrency and durability


def test_threads_never_overcommit_a_datastore(provider: SimProvider, tmp_path: Path) -> None:
    """16 threads, half through their own provider object (so only the flock stands between them)."""
    results: list[str] = []
    lock = threading.Lock()

    def create(index: int) -> None:
        target = provider if index % 2 else sim(tmp_path / "host")
        try:
            target.create_disk(disk_request(f"t{index}", 6 * MiB))
            outcome = "ok"
        except ProviderError:
            outcome = "full"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count("ok") == CAPACITY // (6 * MiB)
    assert provider.inventory().datastores["default"].free == CAPACITY % (6 * MiB)


def _create_in_child(root: str, start: int, queue: Any) -> None:
    provider = sim(Path(root))
    made = 0
    for index in range(start, start + 8):
        try:
            provider.create_disk(disk_request(f"p{index}", 6 * MiB))
            made += 1
        except ProviderError:
            pass
    queue.put(made)


def test_processes_never_overcommit_a_datastore(provider: SimProvider) -> None:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [
        context.Process(target=_create_in_child, args=(str(provider.root), n * 8, queue)) for n in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert queue.get(timeout=5) + queue.get(timeout=5) == CAPACITY // (6 * MiB)


def test_a_host_whose_first_writer_died_while_laying_it_out_is_laid_out_again(tmp_path: Path) -> None:
    """kill -9 between taking the first lock and finishing the layout: the lock file exists, the rest not."""
    root = tmp_path / "host"
    root.mkdir()
    (root / ".lock").touch()
    inventory = sim(root).inventory()
    assert all(ds.accessible for ds in inventory.datastores.values())
    assert (root / "datastores" / "small").is_dir() and (root / "host.json").exists()


def test_state_writes_leave_no_temporary_files(provider: SimProvider) -> None:
    disk = provider.create_disk(disk_request("d0"))
    appliance = provider.provision_appliance("sim-host-1", "a")
    provider.attach_disk(appliance, disk)
    provider.detach_disk(appliance, disk)
    provider.create_vm(vm_request("v", (disk,), (NicRequest("prod", None),)))
    assert not [p for p in provider.root.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- image source


def image_source(path: Path, name: str = "web01", **extra: Any) -> ImageSource:
    return ImageSource(name, ImageSourceConfig.model_validate({"type": "image", "path": path, **extra}))


def fingerprint(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns, stat.st_size


def test_image_source_discovers_a_linux_server(images: dict[str, Path]) -> None:
    source = image_source(images["web01.raw"])
    assert isinstance(source, Source)
    assert source.host == f"image:{images['web01.raw'].parent}"
    facts = source.discover()
    assert (facts.hostname, facts.os, facts.os_detail, facts.firmware) == (
        "web01",
        "linux",
        "Debian GNU/Linux 12 (bookworm)",
        "bios",
    )
    (disk,) = facts.disks
    assert (disk.name, disk.size, disk.partition_table, disk.filesystems) == (
        "web01.raw",
        96 * MiB,
        "mbr",
        ("ext4",),
    )
    assert disk.used is not None and 0 < disk.used < disk.size
    assert [(n.name, n.mac, n.addresses) for n in facts.nics] == [
        ("eth0", "52:54:00:00:01:01", ("10.0.0.11/24",))
    ]


def test_image_source_with_a_second_disk_and_overrides(images: dict[str, Path]) -> None:
    source = image_source(
        images["db01.raw"],
        "db01",
        extra_disks=[images["db01-data.raw"]],
        hostname="db01.corp.test",
        firmware="uefi",
        size="64MiB",
    )
    facts = source.discover()
    assert (facts.hostname, facts.firmware) == ("db01.corp.test", "uefi")
    assert [(d.name, d.partition_table, d.filesystems) for d in facts.disks] == [
        ("db01.raw", "mbr", ("ext4",)),
        ("db01-data.raw", "none", ("ext4",)),
    ]
    assert facts.disk("db01-data.raw").size == 32 * MiB


def test_image_source_firmware_from_gpt_and_unknown_os(tmp_path: Path) -> None:
    path = tmp_path / "uefi.raw"
    with open(path, "wb") as handle:
        handle.truncate(16 * MiB)
    write_gpt(
        path,
        [GptPartition(MiB, 4 * MiB, EFI_SYSTEM), GptPartition(5 * MiB, 10 * MiB)],
        uuid.UUID(int=3),
    )
    facts = image_source(path, "winbox").discover()
    assert (facts.firmware, facts.os, facts.hostname, facts.nics) == ("uefi", "unknown", "winbox", ())
    assert facts.disks[0].partition_table == "gpt" and facts.disks[0].used is not None


def test_image_source_refuses_missing_and_short_images(images: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match=r"image .*missing\.raw does not exist"):
        image_source(tmp_path / "missing.raw").discover()
    declared = 128 * MiB
    with pytest.raises(
        ProviderError, match=f"image .*web01.raw is {96 * MiB} bytes .* but the playbook declares {declared}"
    ):
        image_source(images["web01.raw"], size="128MiB").discover()
    with pytest.raises(ProviderError, match=r"both named web01\.raw"):
        image_source(images["web01.raw"], extra_disks=[images["web01.raw"]])
    with pytest.raises(ProviderError, match=r"has no disk 'sda'; its disks are: web01\.raw"):
        image_source(images["web01.raw"]).open_disk("sda")


def test_image_source_never_modifies_the_image(images: dict[str, Path]) -> None:
    paths = [images["db01.raw"], images["db01-data.raw"]]
    before = [fingerprint(p) for p in paths]
    source = image_source(paths[0], "db01", extra_disks=[paths[1]])
    source.discover()
    source.quiesce()
    source.thaw()
    for path in paths:
        reader = source.open_disk(path.name)
        try:
            assert reader.size == path.stat().st_size
            ranges = reader.allocated_ranges()
            assert ranges is not None
            digest = hashlib.sha256()
            position = 0
            for offset, length in ranges:
                digest.update(bytes(offset - position))
                digest.update(reader.read(offset, length))
                position = offset + length
            digest.update(bytes(reader.size - position))
            assert digest.hexdigest() == fingerprint(path)[0]  # holes really are zeros
        finally:
            reader.close()
    source.shutdown(timeout=1, force=True)
    source.start()
    source.close()
    assert [fingerprint(p) for p in paths] == before


# ---------------------------------------------------------------- registry


def test_open_provider_resolves_a_relative_root(tmp_path: Path) -> None:
    config = SimProviderConfig.model_validate({"type": "sim", "root": "./sim-hypervisor"})
    provider = open_provider("local", config, base_dir=tmp_path)
    assert isinstance(provider, SimProvider) and provider.root == tmp_path / "sim-hypervisor"
    provider.provision_appliance("sim-host-1", "helper")
    assert (tmp_path / "sim-hypervisor" / "host.json").exists()


def test_unknown_and_uninstalled_provider_types() -> None:
    with pytest.raises(
        ProviderUnavailable, match="unknown provider type 'xen'; known types: esx, hyperv, kvm"
    ):
        provider_factory("xen")
    if importlib.util.find_spec("libvirt") is None:
        with pytest.raises(
            ProviderUnavailable,
            match=r"provider type kvm needs libvirt-python: "
            r"pip install 'hvmigrate\[kvm\]'",
        ):
            provider_factory("kvm")


def test_a_third_party_provider_registers_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin installed as a distribution: its dist-info declares the entry point, nothing else."""
    (tmp_path / "fakehv.py").write_text(
        "class FakeProvider:\n    type = 'fake'\n"
        "    def __init__(self, name, config):\n        self.name = name\n"
    )
    dist = tmp_path / "fakehv-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakehv\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[hvmigrate.providers]\nfake = fakehv:FakeProvider\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = provider_factory("fake")
    assert factory.__name__ == "FakeProvider" and factory("p", None).name == "p"
    sys.modules.pop("fakehv", None)


def server(source: dict[str, Any]) -> Server:
    return Server.model_validate({"name": "s1", "source": source, "target": {"provider": "local"}})


def test_open_source_for_each_source_type(images: dict[str, Path], provider: SimProvider) -> None:
    image = images["web01.raw"]
    source = open_source(
        server({"type": "image", "path": image.name, "extra_disks": [image.name.replace("web01", "app01")]}),
        {},
        base_dir=image.parent,
    )
    assert isinstance(source, ImageSource) and [p.name for p in source.paths] == ["web01.raw", "app01.raw"]
    assert isinstance(open_source(server({"type": "ssh", "host": "10.0.0.6"}), {}), SshSource)  # no connect
    winrm = open_source(server({"type": "winrm", "host": "h", "user": "u", "password": "p"}), {})
    assert type(winrm).__name__ == "WinrmSource" and winrm.host == "h"  # no connect
    with pytest.raises(ProviderError, match="source VM old does not exist on sim provider local"):
        open_source(server({"type": "vm", "provider": "local", "vm": "old"}), {"local": provider})
    with pytest.raises(ProviderError, match="source provider 'esx' is not in the playbook's providers"):
        open_source(server({"type": "vm", "provider": "esx", "vm": "old"}), {"local": provider})
    assert issubclass(SourceUnavailable, NotImplementedError)


def test_appliance_refs_of_another_provider_are_refused(provider: SimProvider) -> None:
    with pytest.raises(ProviderError, match="belongs to provider kvm"):
        provider.release_appliance(ApplianceRef("kvm", "a", "a", "h"))
