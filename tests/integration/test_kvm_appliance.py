"""Recovery appliance VMs on KVM (``appliance: shared`` / ``dedicated``) against a real libvirtd with QEMU.

The appliance image is built from Debian packages by providers/kvm/appliance_image.py (cached in the test
bed's cache, sharing the debootstrap of the source server's image) and really boots under TCG on a
transient libvirt network with DHCP of this module's own. Replica volumes are hot-plugged into it as SCSI
LUNs and written by the agent running inside it, reached over SSH with the host key the provider minted
and pinned: the mirror route is the one the mirror step takes. Everything the tests make is removed, and
the last tests check that release leaves nothing behind.

One appliance serves most tests (booting one under TCG takes about half a minute); the restart test costs
one more boot, the CLI end-to-end its own appliance.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.mirror.route import DiskCopy, copy_disk
from orchestrator.playbook.models import ImageSource as ImageSourceConfig
from orchestrator.playbook.models import MirrorOptions
from orchestrator.transport.ssh import SshTransport
from providers.base import (
    AgentLocation,
    ApplianceRef,
    DiskEndpoint,
    DiskRef,
    DiskRequest,
    NotFound,
    ProviderError,
    VmRef,
    VmRequest,
)
from providers.sim.image_source import ImageSource
from tests.testbed import guest_image
from tests.testbed import libvirt as testbed

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.libvirt]

libvirt_uri = testbed.libvirt_uri  # the fixture, by the name the tests ask for

MiB = 1024**2
PROVIDER = "lab-kvm"
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- fixtures


conn = testbed.conn
pool = testbed.pool


def free_subnet(conn: Any) -> ipaddress.IPv4Network:
    """A /24 that no libvirt network and no address of this machine uses (other test runs share both)."""
    taken: list[ipaddress.IPv4Network] = []
    for network in conn.listAllNetworks(0):
        for ip in ET.fromstring(network.XMLDesc(0)).findall("ip"):
            if ip.get("address") and ":" not in ip.get("address", ""):
                taken.append(
                    ipaddress.ip_network(f"{ip.get('address')}/{ip.get('prefix') or 24}", strict=False)
                )
    routes = subprocess.run(["ip", "-4", "-o", "route"], capture_output=True, text=True).stdout
    for line in routes.splitlines():
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.ip_network(line.split()[0], strict=False))
    for third in range(40, 250):
        candidate = ipaddress.ip_network(f"10.231.{third}.0/24")
        if not any(candidate.overlaps(other) for other in taken if other.prefixlen > 0):
            return candidate
    raise RuntimeError("no free 10.231.x.0/24 subnet for the appliance network")


@pytest.fixture(scope="module")
def dhcp_network(conn: Any) -> Iterator[str]:
    """A transient libvirt network with an address on this host and dnsmasq handing out leases."""
    import libvirt

    name = testbed.unique_name("hvapp")
    subnet = free_subnet(conn)
    hosts = list(subnet.hosts())
    bridge = "hva" + name.rsplit("-", 1)[1]
    network = conn.networkCreateXML(
        f"<network><name>{name}</name><bridge name='{bridge}' stp='off' delay='0'/>"
        f"<ip address='{hosts[0]}' prefix='24'><dhcp><range start='{hosts[99]}' end='{hosts[199]}'/>"
        "</dhcp></ip></network>"
    )
    yield name
    with contextlib.suppress(libvirt.libvirtError):
        network.destroy()


@pytest.fixture(scope="module")
def image() -> Path:
    from providers.kvm import appliance_image

    cache = guest_image.cache_dir()
    if appliance_image.cached(cache) is None and (missing := appliance_image.missing_tools()):
        pytest.skip("appliance image cannot be built here: " + "; ".join(missing))
    return appliance_image.ensure(cache).path


def make_provider(uri: str, pool_name: str, **overrides: Any) -> Any:
    """Appliances small enough for two shared cores, and patient enough for TCG."""
    options = {"appliance_cpus": 1, "appliance_memory": 512 * MiB, "appliance_boot_timeout": 300}
    return testbed.kvm_provider(uri, pool_name, PROVIDER, **{**options, **overrides})


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("appliance-keys")


@pytest.fixture(scope="module")
def provider(libvirt_uri: str, pool: Any, dhcp_network: str, image: Path, keys_dir: Path) -> Iterator[Any]:
    made = make_provider(
        libvirt_uri,
        pool.name(),
        appliance_image=image,
        appliance_network=dhcp_network,
        appliance_keys=keys_dir,
    )
    yield made
    made.close()


@pytest.fixture(scope="module")
def appliance(provider: Any, conn: Any) -> Iterator[ApplianceRef]:
    """One appliance for the module; released afterwards if a test did not already do that."""
    name = testbed.unique_name("hvm-appliance")
    host = provider.host_for(None)
    with testbed.scratch_domain_cleanup(conn, name):
        ref = provider.provision_appliance(host, name)
        yield ref
        found = provider.find_appliance(host, name)
        if found is not None:
            for lun in provider.appliances._luns(conn.lookupByName(name)):
                disk = DiskRef(PROVIDER, "", lun.volume.rsplit(".", 1)[0], 0, lun.format, lun.pool)
                provider.detach_disk(found, disk)
            provider.release_appliance(found)


@pytest.fixture
def name() -> str:
    return testbed.unique_name("hvt")


def disk(provider: Any, name: str, fmt: str = "raw", size: int = 8 * MiB) -> DiskRef:
    request = DiskRequest(name=name, size=size, format=fmt, datastore=None)
    return provider.find_disk(request) or provider.create_disk(request)


def volumes(pool: Any) -> list[str]:
    pool.refresh(0)
    return sorted(pool.listVolumes())


def source_image(path: Path) -> Path:
    """Six MiB with random bytes, zeros (read and skipped, never sent) and text: what a disk holds."""
    with open(path, "wb") as handle:
        handle.write(os.urandom(MiB))
        handle.write(bytes(2 * MiB))
        handle.write((b"a line of text in a file on the source server\n" * 30000)[:MiB])
        handle.write(bytes(MiB))
        handle.write(os.urandom(MiB // 2) + bytes(MiB // 2))
    return path


def mirror_pass(provider: Any, endpoint: DiskEndpoint, source: Path, mode: str) -> Any:
    """One pass of one disk, built as the mirror step builds it."""
    reader = ImageSource("src", ImageSourceConfig(type="image", path=source))
    copy = DiskCopy.for_endpoint(
        MirrorOptions(chunk_size=MiB),
        reader.disk_location(source.name),
        endpoint,
        provider.writer_location(endpoint),
        f"src:{source.name}",
        mode,
    )
    assert not copy.in_process  # the writer runs in the appliance, not here
    return copy_disk(copy, open_reader=lambda: reader.open_disk(source.name))


def same_content(source: Path, volume: DiskRef) -> bool:
    """qemu-img compare: the volume holds the source's bytes, and zeros past its end (-U: it may still be
    open in the appliance, whose writer made what it wrote durable)."""
    result = subprocess.run(
        ["qemu-img", "compare", "-q", "-U", "-f", "raw", "-F", volume.format, str(source), volume.id],
        capture_output=True,
        text=True,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def read_back(volume: DiskRef, tmp_path: Path) -> bytes:
    raw = tmp_path / f"{volume.name}.read-back.raw"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-f", volume.format, "-O", "raw", volume.id, str(raw)], check=True
    )
    return raw.read_bytes()


# ---------------------------------------------------------------- what the provider offers


def test_appliance_vms_are_offered_with_an_image_on_a_local_uri(
    provider: Any, libvirt_uri: str, pool: Any, image: Path, name: str
) -> None:
    limits = provider.inventory().limits
    assert limits.appliance_modes == ("host", "shared", "dedicated")
    assert limits.max_disks_per_appliance == 60

    without = make_provider(libvirt_uri, pool.name())
    remote = make_provider("qemu+ssh://root@kvm1.invalid/system", pool.name(), appliance_image=image)
    try:
        assert without.inventory().limits.appliance_modes == ("host",)
        with pytest.raises(ProviderError, match=r"no appliance_image; build one .*appliance_image build"):
            without.provision_appliance(without.host_for(None), name)
        assert remote.appliances.modes() == ("host",)
        with pytest.raises(ProviderError, match=r"is remote; use target.appliance: host"):
            remote.provision_appliance("kvm1.invalid", name)
    finally:
        without.close()
        remote.close()


# ---------------------------------------------------------------- the data path


def test_mirror_writes_raw_and_qcow2_volumes_inside_the_appliance(
    provider: Any, appliance: ApplianceRef, conn: Any, name: str, tmp_path: Path
) -> None:
    source = source_image(tmp_path / "src.raw")
    raw, qcow = disk(provider, f"{name}-raw"), disk(provider, f"{name}-qcow", "qcow2", 16 * MiB)
    try:
        endpoints = [provider.attach_disk(appliance, raw), provider.attach_disk(appliance, qcow)]
        for endpoint, volume in zip(endpoints, (raw, qcow), strict=True):
            assert endpoint.kind == "block" and endpoint.size == volume.size
            assert endpoint.path.startswith("/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_hvm")
            assert endpoint.host == appliance.name
            assert endpoint.transport["map_path"].startswith("/var/lib/hvmigrate/maps/")
            location = provider.writer_location(endpoint)
            assert isinstance(location.transport, SshTransport) and location.path == endpoint.path
            assert location.transport.host_key  # the minted host key is pinned: never trust on first use
        luns = ET.fromstring(conn.lookupByName(appliance.name).XMLDesc(0)).findall("devices/disk")
        assert [d.find("target").get("bus") for d in luns].count("scsi") == 2
        assert not ET.fromstring(conn.lookupByName(appliance.name).XMLDesc(2)).findall(  # live only
            "devices/disk/target[@bus='scsi']"
        )

        for endpoint in endpoints:
            full = mirror_pass(provider, endpoint, source, "full")
            assert full.bytes_written == 3 * MiB  # three chunks hold data; the zero ones are skipped
            assert full.digest == full.target_digest

        with open(source, "r+b") as handle:  # the source changes one chunk; the next pass sends that one
            handle.seek(2 * MiB)
            handle.write(os.urandom(MiB))
        again = mirror_pass(provider, endpoints[0], source, "incremental")
        assert (again.bytes_written, again.unchanged_bytes_skipped) == (MiB, 3 * MiB)

        provider.detach_disk(appliance, raw)
        provider.detach_disk(appliance, qcow)
        assert same_content(source, raw)
        assert not same_content(source, qcow)  # it missed the incremental pass: the check can fail
        data = read_back(raw, tmp_path)
        assert data[: 6 * MiB] == source.read_bytes() and data[6 * MiB :] == bytes(2 * MiB)
        assert not ET.fromstring(conn.lookupByName(appliance.name).XMLDesc(0)).findall(
            "devices/disk/target[@bus='scsi']"
        )
    finally:
        for volume in (raw, qcow):
            provider.detach_disk(appliance, volume)
            provider.delete_disk(volume)


def test_provisioning_again_finds_the_same_running_appliance(
    provider: Any, appliance: ApplianceRef, conn: Any
) -> None:
    domain_id = conn.lookupByName(appliance.name).ID()
    again = provider.provision_appliance(appliance.host, appliance.name)
    assert again == appliance
    assert provider.find_appliance(appliance.host, appliance.name) == appliance
    assert conn.lookupByName(appliance.name).ID() == domain_id  # not restarted
    assert appliance.name in provider.inventory().vms


def test_a_volume_attached_to_the_appliance_is_refused_everywhere_else(
    provider: Any, appliance: ApplianceRef, name: str
) -> None:
    raw = disk(provider, name)
    endpoint = provider.attach_disk(appliance, raw)
    try:
        assert provider.attach_disk(appliance, raw) == endpoint  # idempotent
        where = f"attached to appliance {appliance.name}"
        with pytest.raises(ProviderError, match=where):
            provider.attach_disk(None, raw)
        with pytest.raises(ProviderError, match=where):
            provider.delete_disk(raw)
        with pytest.raises(ProviderError, match=where):
            provider.create_vm(
                VmRequest(name, None, 1, 64 * MiB, "bios", (raw,), (), tags={"hvmigrate.server": name})
            )
        with pytest.raises(ProviderError, match=r"still has 1 replica volume\(s\) attached"):
            provider.release_appliance(appliance)
        provider.detach_disk(None, raw)  # not the host's: leaves the appliance's attachment alone
        assert provider.attach_disk(appliance, raw) == endpoint
    finally:
        provider.detach_disk(appliance, raw)
    provider.detach_disk(appliance, raw)  # idempotent
    host_endpoint = provider.attach_disk(None, raw)  # free again: the host may write it now
    assert host_endpoint.kind == "file"
    provider.detach_disk(None, raw)
    provider.delete_disk(raw)


def maps_in(location: AgentLocation) -> list[str]:
    """The block maps the appliance keeps, listed by its own python3 over the provider's login."""
    process = location.transport.start_python(
        ["-c", "import os, sys; sys.stdout.write(' '.join(sorted(os.listdir('/var/lib/hvmigrate/maps'))))"]
    )
    try:
        out = bytearray()
        with contextlib.suppress(Exception):  # read to the end of the stream
            while True:
                out += process.read_exact(1)
        return out.decode().split()
    finally:
        process.close()


def test_a_volume_attached_again_never_trusts_the_block_map_of_its_last_attachment(
    provider: Any, appliance: ApplianceRef, name: str, tmp_path: Path
) -> None:
    """Between two attachments the volume may be written elsewhere (here: blanked on the host); the map the
    first one left in the appliance would make the next full pass skip every chunk it lists."""
    source = source_image(tmp_path / "src.raw")
    raw = disk(provider, name)
    first = provider.attach_disk(appliance, raw)
    assert mirror_pass(provider, first, source, "full").bytes_written == 3 * MiB
    provider.detach_disk(appliance, raw)

    on_host = provider.attach_disk(None, raw)
    Path(on_host.path).write_bytes(bytes(raw.size))  # the volume changes while no appliance holds it
    provider.detach_disk(None, raw)

    second = provider.attach_disk(appliance, raw)
    try:
        assert second.path == first.path and second.transport["map_path"] != first.transport["map_path"]
        again = mirror_pass(provider, second, source, "full")
        assert again.bytes_written == 3 * MiB and again.resumed_bytes_skipped == 0
        maps = maps_in(provider.writer_location(second))
        assert Path(second.transport["map_path"]).name in maps
        assert Path(first.transport["map_path"]).name not in maps  # swept at the second attachment
    finally:
        provider.detach_disk(appliance, raw)
    assert same_content(source, raw)
    provider.delete_disk(raw)


def test_powered_off_appliance_that_lost_its_keys_comes_back_with_its_volumes(
    provider: Any, appliance: ApplianceRef, conn: Any, name: str, keys_dir: Path, tmp_path: Path
) -> None:
    """A power cut (or a host reboot) drops the live LUNs; deleted keys are minted again. The volume comes
    back at the same path in the re-keyed appliance, and its block map, kept on the appliance's root,
    still knows what the volume holds: the next pass sends nothing."""
    source = source_image(tmp_path / "src.raw")
    raw = disk(provider, name)
    endpoint = provider.attach_disk(appliance, raw)
    try:
        mirror_pass(provider, endpoint, source, "full")
        old_key = provider.writer_location(endpoint).transport.host_key
        domain = conn.lookupByName(appliance.name)
        domain.destroy()
        for folder in keys_dir.iterdir():
            subprocess.run(["rm", "-rf", str(folder)], check=True)

        location = provider.writer_location(endpoint)  # starts it, re-keys it, plugs the volume again
        assert domain.isActive() and location.path == endpoint.path
        assert location.transport.host_key != old_key
        again = mirror_pass(provider, endpoint, source, "incremental")
        assert again.bytes_written == 0 and again.digest == again.target_digest
    finally:
        provider.detach_disk(appliance, raw)
    assert same_content(source, raw)
    provider.delete_disk(raw)


# ---------------------------------------------------------------- names the tool did not create


def test_same_named_domain_the_tool_did_not_create_is_refused(provider: Any, conn: Any, name: str) -> None:
    host = provider.host_for(None)
    with testbed.scratch_domain_cleanup(conn, name):
        conn.defineXML(
            f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
            "<os><type arch='x86_64'>hvm</type></os></domain>"
        )
        before = conn.lookupByName(name).XMLDesc(0)
        assert provider.find_appliance(host, name) is None
        with pytest.raises(ProviderError, match="not created by hvmigrate"):
            provider.provision_appliance(host, name)
        with pytest.raises(ProviderError, match="not created by hvmigrate"):
            provider.release_appliance(ApplianceRef(PROVIDER, "x", name, host))
        assert conn.lookupByName(name).XMLDesc(0) == before

    with testbed.scratch_domain_cleanup(conn, name):  # a replica VM the tool made is no appliance either
        replica = provider.create_vm(VmRequest(name, None, 1, 64 * MiB, "bios", (), ()))
        assert provider.find_appliance(host, name) is None
        with pytest.raises(ProviderError, match="is a replica hvmigrate created, not an appliance"):
            provider.provision_appliance(host, name)
        provider.delete_vm(VmRef(PROVIDER, replica.id, name))


# ---------------------------------------------------------------- release


def test_release_removes_the_appliance_its_volumes_keys_and_the_unused_base(
    provider: Any, appliance: ApplianceRef, conn: Any, pool: Any, keys_dir: Path
) -> None:
    import libvirt

    assert any(v.startswith("hvm-appliance-base-") for v in volumes(pool))
    serial_log = Path(f"/var/log/libvirt/qemu/{appliance.name}-serial.log")
    assert serial_log.exists()
    provider.release_appliance(appliance)
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(appliance.name)
    assert volumes(pool) == []  # overlay, config disk, base image, every marker
    assert list(keys_dir.iterdir()) == []
    assert not serial_log.exists()
    assert provider.find_appliance(appliance.host, appliance.name) is None
    with pytest.raises(NotFound):
        provider.release_appliance(appliance)


# ---------------------------------------------------------------- through the command line


def write_playbook(
    directory: Path, uri: str, pool: str, network: str, image: Path | None, vm_name: str, appliance: str
) -> tuple[Path, Path]:
    """A one-server playbook: a raw image file as the source, its replica a qcow2 volume on KVM."""
    source = source_image(directory / "web01.raw")
    playbook = directory / "kvm-appliance.yaml"
    appliance_image = f"\n    appliance_image: {image}" if image else ""
    playbook.write_text(
        f"""apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: kvm-appliance
defaults:
  mirror: {{chunk_size: 1MiB}}
providers:
  lab-kvm:
    type: kvm
    uri: "{uri}"
    storage_pool: {pool}
    domain_type: qemu{appliance_image}
    appliance_network: {network}
    appliance_cpus: 1
    appliance_memory: 512MiB
    appliance_keys: {directory / "keys"}
servers:
  - name: web01
    source: {{type: image, path: {source}}}
    target:
      provider: lab-kvm
      vm_name: {vm_name}
      cpus: 1
      memory: 256MiB
      appliance: {appliance}
      disks: [{{source: web01.raw, format: qcow2}}]
"""
    )
    return playbook, source


def migrate(playbook: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args, str(playbook)],
        cwd=playbook.parent,
        env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )


def report(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def test_validate_refuses_appliance_vms_on_a_provider_without_an_image(
    libvirt_uri: str, pool: Any, dhcp_network: str, tmp_path: Path, name: str
) -> None:
    playbook, _ = write_playbook(tmp_path, libvirt_uri, pool.name(), dhcp_network, None, name, "dedicated")
    validated = migrate(playbook, "validate", "--json")
    assert validated.returncode == 1, report(validated)
    (finding,) = [f for f in json.loads(validated.stdout) if f["rule_id"] == "appliance.mode_unsupported"]
    assert finding["severity"] == "critical"
    assert "supports appliance: host, not dedicated" in finding["message"]


def test_migrate_execute_with_a_shared_appliance_then_undo(
    libvirt_uri: str, pool: Any, dhcp_network: str, image: Path, conn: Any, tmp_path: Path, name: str
) -> None:
    """`migrate execute` up to the cutover gate writes the replica inside a shared appliance; `migrate
    undo` removes the replica volume and the appliance (its base image with it)."""
    playbook, source = write_playbook(tmp_path, libvirt_uri, pool.name(), dhcp_network, image, name, "shared")
    appliance_name = "hvm-appliance-default-0"  # the planner's name: one shared appliance per target host
    with testbed.scratch_domain_cleanup(conn, appliance_name, name):
        validated = migrate(playbook, "validate")
        assert validated.returncode == 0, report(validated)
        executed = migrate(playbook, "execute")
        assert executed.returncode == 0, report(executed)
        domain = conn.lookupByName(appliance_name)
        assert domain.isActive()
        replica = f"{name}-disk0.qcow2"
        luns = ET.fromstring(domain.XMLDesc(0)).findall("devices/disk/source")
        assert (pool.name(), replica) in {(s.get("pool"), s.get("volume")) for s in luns}
        volume = pool.storageVolLookupByName(replica)
        assert same_content(source, DiskRef(PROVIDER, volume.path(), name, 0, "qcow2", pool.name()))
        status = migrate(playbook, "status")
        assert status.returncode == 0, report(status)

        undone = migrate(playbook, "undo", "--yes")
        assert undone.returncode == 0, report(undone)
        assert appliance_name not in [d.name() for d in conn.listAllDomains(0)]
        assert volumes(pool) == []
