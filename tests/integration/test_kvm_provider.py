"""The KVM provider against a real libvirtd with QEMU (started by tests/testbed/libvirt.py).

Every test works in its own transient storage pool and isolated network (a bare bridge: no address, no
route out) and removes what it made. Domains are forced to ``type='qemu'``: these machines are nested and a
kvm guest spins there. Nothing here boots an OS: an empty disk under SeaBIOS is enough to power a domain
on and off, and to see that an OS which is not there does not answer the ACPI power button.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.base import DiskRequest, NicRequest, NotFound, ProviderError, VmRef, VmRequest
from tests.services import sshd as sshd_service
from tests.testbed import libvirt as testbed

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]

libvirt_uri = testbed.libvirt_uri  # the fixture, by the name the tests ask for
sshd_server = sshd_service.sshd_server

MiB = 1024**2
PROVIDER = "lab-kvm"


# ---------------------------------------------------------------- fixtures


conn = testbed.conn
pool = testbed.pool


@pytest.fixture(scope="module")
def network(conn: Any) -> Iterator[str]:
    with testbed.isolated_network(conn, testbed.unique_name()) as made:
        yield made.name()


def make_provider(uri: str, pool_name: str, **overrides: Any) -> Any:
    return testbed.kvm_provider(uri, pool_name, PROVIDER, **overrides)


@pytest.fixture(scope="module")
def provider(libvirt_uri: str, pool: Any) -> Iterator[Any]:
    made = make_provider(libvirt_uri, pool.name())
    yield made
    made.close()


@pytest.fixture
def name() -> str:
    return testbed.unique_name("hvt")


@pytest.fixture
def domains(conn: Any) -> Iterator[list[str]]:
    """Names appended here are stopped and undefined after the test, whatever happened."""
    names: list[str] = []
    yield names
    with testbed.scratch_domain_cleanup(conn, *names):
        pass


def disk(provider: Any, name: str, fmt: str = "raw", size: int = 8 * MiB) -> Any:
    request = DiskRequest(name=name, size=size, format=fmt, datastore=None)
    return provider.find_disk(request) or provider.create_disk(request)


def vm_request(name: str, disks: tuple = (), nics: tuple = (), **overrides: Any) -> VmRequest:
    options: dict[str, Any] = {
        "name": name,
        "host": None,
        "cpus": 1,
        "memory": 64 * MiB,
        "firmware": "bios",
        "disks": disks,
        "nics": nics,
        "tags": {"hvmigrate.server": name, "hvmigrate.playbook": "kvm-tests"},
    }
    options.update(overrides)
    return VmRequest(**options)


def volumes(pool: Any) -> list[str]:
    pool.refresh(0)
    return sorted(pool.listVolumes())


def qemu_img_info(path: str) -> dict[str, Any]:
    result = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", path], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


# ---------------------------------------------------------------- inventory


def test_inventory_shows_host_pool_network_and_limits(
    provider: Any, conn: Any, pool: Any, network: str
) -> None:
    inventory = provider.inventory()
    assert inventory.type == "kvm"
    assert inventory.hosts == (conn.getHostname(),)
    store = inventory.datastores[pool.name()]
    assert store.accessible and 0 < store.free <= store.capacity
    assert inventory.default_datastore == pool.name()
    assert network in inventory.networks
    assert inventory.limits.disk_formats == ("raw", "qcow2")
    assert "bios" in inventory.limits.firmware
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    assert inventory.limits.max_memory == int(meminfo["MemTotal"].split()[0]) * 1024
    assert provider.host_facts().cpus == conn.getInfo()[2]
    assert provider.host_for(None) == conn.getHostname()
    with pytest.raises(ProviderError, match="reaches one host"):
        provider.host_for("some-other-host")


# ---------------------------------------------------------------- volumes


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_volume_is_sparse_found_again_and_removed_with_its_sidecars(
    provider: Any, pool: Any, name: str, fmt: str
) -> None:
    request = DiskRequest(name=name, size=64 * MiB, format=fmt, datastore=None)
    assert provider.find_disk(request) is None
    created = provider.create_disk(request)
    assert (created.name, created.size, created.format, created.datastore) == (
        name,
        64 * MiB,
        fmt,
        pool.name(),
    )
    assert provider.create_disk(request) == created  # a re-run gets the same volume
    assert provider.find_disk(request) == created
    info = qemu_img_info(created.id)
    assert info["format"] == fmt and info["virtual-size"] == 64 * MiB
    if fmt == "qcow2":
        assert info["format-specific"]["data"]["compat"] == "1.1"
    assert os.stat(created.id).st_blocks * 512 < 1 * MiB  # sparse: nothing allocated up front
    with pytest.raises(ProviderError, match=r"already exists .* not the"):
        provider.create_disk(DiskRequest(name=name, size=128 * MiB, format=fmt, datastore=None))

    Path(created.id + ".hvmap").write_bytes(b"block map of the mirror")  # as the data plane leaves it
    provider.delete_disk(created)
    assert provider.find_disk(request) is None
    assert not [v for v in volumes(pool) if v.startswith(name)]  # volume, owner marker, block map: gone
    with pytest.raises(NotFound):
        provider.delete_disk(created)


def test_thick_volume_is_allocated_up_front(provider: Any, name: str) -> None:
    request = DiskRequest(name=name, size=8 * MiB, format="raw", datastore=None, provisioning="thick")
    created = provider.create_disk(request)
    try:
        assert os.stat(created.id).st_blocks * 512 >= 8 * MiB
    finally:
        provider.delete_disk(created)


def test_volume_not_created_by_the_tool_is_never_adopted_or_deleted(
    provider: Any, pool: Any, name: str
) -> None:
    pool.createXML(
        f"<volume><name>{name}.raw</name><capacity unit='bytes'>{MiB}</capacity>"
        "<target><format type='raw'/></target></volume>",
        0,
    )
    request = DiskRequest(name=name, size=MiB, format="raw", datastore=None)
    assert provider.find_disk(request) is None
    with pytest.raises(ProviderError, match="not created by hvmigrate; it is never overwritten"):
        provider.create_disk(request)
    foreign = provider._disk_ref(
        name, provider.pools.describe(pool, pool.storageVolLookupByName(f"{name}.raw"))
    )
    with pytest.raises(ProviderError, match="not created by hvmigrate"):
        provider.delete_disk(foreign)
    assert f"{name}.raw" in volumes(pool)


def test_unknown_pool_and_format_are_refused(provider: Any, pool: Any, name: str) -> None:
    with pytest.raises(ProviderError, match=rf"storage pool no-such-pool does not exist .*{pool.name()}"):
        provider.find_disk(DiskRequest(name=name, size=MiB, format="raw", datastore="no-such-pool"))
    with pytest.raises(ProviderError, match="raw or qcow2, not vmdk"):
        provider.create_disk(DiskRequest(name=name, size=MiB, format="vmdk", datastore=None))


@pytest.fixture
def small_pool(conn: Any, tmp_path: Path) -> Iterator[Any]:
    """A dir pool on a 16 MiB tmpfs: a pool whose capacity is known exactly."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        with testbed.scratch_pool(conn, testbed.unique_name(), mount) as made:
            yield made
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_pool_without_space_is_refused_before_anything_is_created(
    libvirt_uri: str, small_pool: Any, name: str
) -> None:
    provider = make_provider(libvirt_uri, small_pool.name())
    try:
        with pytest.raises(
            ProviderError, match=rf"storage pool {small_pool.name()} .* 16.0 MiB free .* needs 32.0 MiB"
        ):
            provider.create_disk(DiskRequest(name=name, size=32 * MiB, format="raw", datastore=None))
        assert volumes(small_pool) == []
        first = provider.create_disk(
            DiskRequest(name=f"{name}-a", size=10 * MiB, format="raw", datastore=None)
        )
        # 10 MiB are reserved although the sparse file holds nothing: a second 10 MiB no longer fits
        with pytest.raises(ProviderError, match="free that no volume may still grow into"):
            provider.create_disk(DiskRequest(name=f"{name}-b", size=10 * MiB, format="raw", datastore=None))
        assert provider.inventory().datastores[small_pool.name()].free <= 6 * MiB
        provider.delete_disk(first)
    finally:
        provider.close()


# ---------------------------------------------------------------- host appliance: where the data plane writes


def test_raw_volume_is_written_as_a_file_on_the_local_host(provider: Any, name: str) -> None:
    raw = disk(provider, name)
    endpoint = provider.attach_disk(None, raw)
    try:
        assert (endpoint.kind, endpoint.path, endpoint.size, endpoint.host) == (
            "file",
            raw.id,
            raw.size,
            "local",
        )
        assert provider.attach_disk(None, raw) == endpoint
        assert provider.writer_location(endpoint) is None  # local URI: written in-process
        with pytest.raises(ProviderError, match=r"attached to host .* detach it first"):
            provider.delete_disk(raw)
    finally:
        provider.detach_disk(None, raw)
    provider.detach_disk(None, raw)  # idempotent
    provider.delete_disk(raw)


def test_qcow2_volume_is_exported_over_nbd_and_writes_land_in_it(
    provider: Any, name: str, domains: list[str], tmp_path: Path
) -> None:
    from providers.kvm import nbd

    qcow = disk(provider, name, "qcow2")
    endpoint = provider.attach_disk(None, qcow)
    try:
        assert endpoint.kind == "nbd" and endpoint.size == qcow.size
        assert endpoint.path.startswith("nbd+unix:///?socket=")
        assert endpoint.transport["map_path"] == qcow.id + ".hvmap"
        pid = nbd.status(qcow.id)["pid"]
        assert pid and provider.attach_disk(None, qcow) == endpoint  # the live export is reused
        assert nbd.status(qcow.id)["pid"] == pid
        assert provider.writer_location(endpoint) is None
        subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 64k", endpoint.path],
            check=True,
            capture_output=True,
        )
        domains.append(name)
        with pytest.raises(ProviderError, match="still attached to host"):
            provider.create_vm(vm_request(name, disks=(qcow,)))
    finally:
        provider.detach_disk(None, qcow)
    assert not nbd.status(qcow.id)["running"]
    assert not Path(endpoint.path.split("socket=", 1)[1]).exists()
    provider.detach_disk(None, qcow)  # idempotent
    raw = tmp_path / "read-back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow.id, str(raw)], check=True)
    with open(raw, "rb") as handle:
        assert handle.read(MiB) == bytes(MiB)
        assert handle.read(64 * 1024) == b"\xab" * 64 * 1024
    provider.delete_disk(qcow)


def test_appliance_vms_need_an_appliance_image(provider: Any, pool: Any, name: str) -> None:
    """Without appliance_image only appliance: host is offered; the VMs themselves are tested (booted) in
    test_kvm_appliance.py."""
    from providers.base import ApplianceRef

    host = provider.host_for(None)
    assert provider.inventory().limits.appliance_modes == ("host",)
    assert provider.find_appliance(host, name) is None
    with pytest.raises(ProviderError, match=r"no appliance_image; build one .*or use target.appliance: host"):
        provider.provision_appliance(host, name)
    with pytest.raises(NotFound):
        provider.release_appliance(ApplianceRef(PROVIDER, "x", name, host))
    assert not [v for v in volumes(pool) if v.startswith(name)]


# ---------------------------------------------------------------- domains


def test_domain_is_defined_powered_on_and_off_and_deleted_keeping_its_disks(
    provider: Any, conn: Any, network: str, name: str, domains: list[str]
) -> None:
    boot = disk(provider, f"{name}-disk0")
    domains.append(name)
    request = vm_request(
        name,
        disks=(boot,),
        nics=(
            NicRequest(network=network, mac=None),
            NicRequest(network=network, mac="52:54:00:AB:CD:EF", model="e1000"),
        ),
    )
    vm = provider.create_vm(request)
    assert provider.find_vm(name) == vm
    assert name in provider.inventory().vms
    with pytest.raises(ProviderError, match="already exists"):
        provider.create_vm(request)

    root = ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    assert root.get("type") == "qemu"
    assert root.findtext("vcpu") == "1" and root.find("memory").text == str(64 * 1024)
    assert [t.get("bus") for t in root.findall("devices/disk/target")] == ["virtio"]
    assert [m.get("type") for m in root.findall("devices/interface/model")] == ["virtio", "e1000"]
    details = provider.vm_details(vm)
    assert (
        details.owned and details.owner["hvmigrate.server"] == name and details.owner["provider"] == PROVIDER
    )
    (net0, mac0), (net1, mac1) = details.nics
    assert net0 == net1 == network and mac0.startswith("52:54:00:") and mac1 == "52:54:00:ab:cd:ef"
    with pytest.raises(ProviderError, match="belongs to VM"):
        provider.delete_disk(boot)
    with pytest.raises(ProviderError, match="MAC 52:54:00:ab:cd:ef is already used"):
        provider.create_vm(
            vm_request(f"{name}-2", nics=(NicRequest(network=network, mac="52:54:00:ab:cd:ef"),))
        )

    provider.power_on(vm)
    provider.power_on(vm)  # idempotent
    assert conn.lookupByName(name).isActive()
    assert details.serial_log and Path(details.serial_log).exists()  # the console is kept on the host
    report = provider.wait_booted(vm, timeout=0)
    assert report.running and report.addresses == () and "not confirmed" in report.detail
    with pytest.raises(ProviderError, match="running; power it off first"):
        provider.delete_vm(vm)
    with pytest.raises(ProviderError, match="did not shut down within 1 s"):
        provider.power_off(vm)  # SeaBIOS with an empty disk: nobody presses the ACPI button
    provider.power_off(vm, force=True)
    provider.power_off(vm, force=True)  # idempotent
    assert not conn.lookupByName(name).isActive()
    assert not provider.wait_booted(vm, timeout=0).running

    provider.delete_vm(vm)
    assert provider.find_vm(name) is None
    with pytest.raises(NotFound):
        provider.delete_vm(vm)
    assert (
        provider.find_disk(DiskRequest(name=f"{name}-disk0", size=8 * MiB, format="raw", datastore=None))
        == boot
    )
    provider.delete_disk(boot)


def test_sata_disks_for_guests_without_virtio(
    provider: Any, conn: Any, name: str, domains: list[str]
) -> None:
    boot = disk(provider, f"{name}-disk0")
    domains.append(name)
    vm = provider.create_vm(vm_request(name, disks=(boot,), disk_controllers=("sata",)))
    root = ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    assert [(t.get("dev"), t.get("bus")) for t in root.findall("devices/disk/target")] == [("sda", "sata")]
    provider.delete_vm(vm)
    provider.delete_disk(boot)


def test_domain_name_taken_by_a_domain_the_tool_did_not_create_is_refused(
    provider: Any, conn: Any, name: str, domains: list[str]
) -> None:
    domains.append(name)
    conn.defineXML(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    before = conn.lookupByName(name).XMLDesc(0)
    assert provider.find_vm(name) is None
    with pytest.raises(ProviderError, match="not created by hvmigrate; it is never overwritten"):
        provider.create_vm(vm_request(name))
    with pytest.raises(ProviderError, match="not created by hvmigrate"):
        provider.delete_vm(VmRef(PROVIDER, "whatever", name))
    with pytest.raises(ProviderError, match="not created by hvmigrate"):
        provider.power_on(VmRef(PROVIDER, "whatever", name))
    assert conn.lookupByName(name).XMLDesc(0) == before


def test_network_that_does_not_exist_is_refused(provider: Any, conn: Any, network: str, name: str) -> None:
    import libvirt

    with pytest.raises(ProviderError, match=rf"network no-such-net does not exist .*{network}"):
        provider.create_vm(vm_request(name, nics=(NicRequest(network="no-such-net", mac=None),)))
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(name)


def test_uefi_only_where_ovmf_is_installed(provider: Any, conn: Any, name: str, domains: list[str]) -> None:
    domains.append(name)
    request = vm_request(name, firmware="uefi")
    if "uefi" not in provider.inventory().limits.firmware:
        with pytest.raises(ProviderError, match=r"needs OVMF .* Debian package ovmf"):
            provider.create_vm(request)
        return
    vm = provider.create_vm(request)
    provider.power_on(vm)  # OVMF starts: libvirt found firmware for the machine type
    nvram = ET.fromstring(conn.lookupByName(name).XMLDesc(0)).findtext("os/nvram")
    assert nvram and Path(nvram).exists()
    provider.power_off(vm, force=True)
    provider.delete_vm(vm)
    assert not Path(nvram).exists()  # the VM's UEFI variables go with it


# ---------------------------------------------------------------- connections


def test_uri_goes_to_libvirt_with_the_ssh_options_of_the_config(libvirt_uri: str, tmp_path: Path) -> None:
    from orchestrator.playbook.models import KvmProviderConfig
    from providers.kvm.connection import LibvirtUri, effective_uri

    def config(uri: str, **extra: Any) -> KvmProviderConfig:
        return KvmProviderConfig(type="kvm", uri=uri, **extra)

    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    assert effective_uri(config("qemu:///system", ssh_key=key)) == "qemu:///system"
    assert effective_uri(config("qemu+tls://kvm1/system", ssh_key=key)) == "qemu+tls://kvm1/system"
    ssh = LibvirtUri.parse(effective_uri(config("qemu+ssh://root@kvm1:2222/system", ssh_key=key)))
    assert ssh.params == {"keyfile": str(key), "no_tty": "1"} and (ssh.host, ssh.port) == ("kvm1", 2222)
    libssh2 = LibvirtUri.parse(
        effective_uri(config("qemu+libssh2://kvm1/system?keyfile=/mine", ssh_key=key, known_hosts=known))
    )
    assert libssh2.params == {"keyfile": "/mine", "known_hosts": str(known)}  # the URI's own word wins
    assert LibvirtUri.parse("qemu:///system").is_local and not ssh.is_local
    assert LibvirtUri.parse("qemu+ssh://u:secret@kvm1/system").display == "qemu+ssh://u:***@kvm1/system"


@pytest.mark.parametrize(
    "uri",
    ["qemu+unix:///system?socket=/nonexistent/libvirt-sock", "qemu+tcp://127.0.0.1:1/system"],
)
def test_unreachable_uri_says_which_and_what_to_check(libvirt_uri: str, uri: str) -> None:
    provider = make_provider(uri, "default")
    with pytest.raises(ProviderError, match="libvirtd not running or unreachable") as caught:
        provider.inventory()
    assert uri in str(caught.value) and "check that libvirtd is running" in str(caught.value)
    assert caught.value.retryable


def test_qemu_ssh_host_writes_through_the_ssh_login(sshd_server: Any, pool: Any, name: str) -> None:
    """libvirt over libssh2 to a real sshd; the writer and qemu-nbd are reached over the same login."""
    from orchestrator.transport.ssh import SshTransport
    from providers.kvm import nbd

    server = sshd_server
    provider = make_provider(
        f"qemu+libssh2://{server.user}@{server.host}:{server.port}/system",
        pool.name(),
        ssh_key=server.client_key,
        known_hosts=server.known_hosts,
    )
    try:
        assert pool.name() in provider.inventory().datastores
        raw = disk(provider, f"{name}-raw")
        endpoint = provider.attach_disk(None, raw)
        assert (endpoint.kind, endpoint.path, endpoint.host) == ("file", raw.id, server.host)
        location = provider.writer_location(endpoint)
        assert isinstance(location.transport, SshTransport) and location.path == raw.id
        assert (location.transport.host, location.transport.port) == (server.host, server.port)
        provider.detach_disk(None, raw)
        provider.delete_disk(raw)

        qcow = disk(provider, f"{name}-qcow", "qcow2")
        endpoint = provider.attach_disk(None, qcow)
        assert endpoint.kind == "nbd" and nbd.status(qcow.id)["running"]  # started over SSH
        assert provider.writer_location(endpoint).path == endpoint.path
        provider.detach_disk(None, qcow)
        assert not nbd.status(qcow.id)["running"]
        provider.delete_disk(qcow)
    finally:
        with contextlib.suppress(ProviderError):
            for leftover in (f"{name}-raw", f"{name}-qcow"):
                for fmt in ("raw", "qcow2"):
                    found = provider.find_disk(DiskRequest(leftover, 8 * MiB, fmt, None))
                    if found:
                        provider.detach_disk(None, found)
                        provider.delete_disk(found)
        provider.close()
