"""Clones of replica volumes for a test cutover, against a real libvirtd: what they hold, what they cost, and
that a crash half-way through one never leaves a volume that passes for a finished clone."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.base import DiskRequest, NicRequest, ProviderError, VmRequest
from tests.testbed import libvirt as testbed

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]

libvirt_uri = testbed.libvirt_uri
MiB = 1024**2


conn = testbed.conn
pool = testbed.pool


@pytest.fixture(scope="module")
def provider(libvirt_uri: str, pool: Any) -> Iterator[Any]:
    made = testbed.kvm_provider(libvirt_uri, pool.name())
    yield made
    made.close()


@pytest.fixture
def name() -> str:
    return testbed.unique_name("hvc")


def request(name: str, fmt: str = "raw", size: int = 16 * MiB) -> DiskRequest:
    return DiskRequest(name=name, size=size, format=fmt, datastore=None)


def fill(path: str) -> bytes:
    """Data at 1 MiB and 9 MiB, holes elsewhere; returns the whole expected content."""
    content = bytearray(16 * MiB)
    content[MiB : MiB + 4096] = os.urandom(4096)
    content[9 * MiB : 9 * MiB + 65536] = b"replica" * (65536 // 7) + b"r" * (65536 % 7)
    with open(path, "r+b") as handle:
        for offset in (MiB, 9 * MiB):
            handle.seek(offset)
            handle.write(content[offset : offset + 65536])
    return bytes(content)


def guest_bytes(path: str, fmt: str, tmp: Any) -> bytes:
    out = tmp / "guest.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", path, str(out)], check=True)
    return out.read_bytes()


def test_a_raw_clone_holds_the_replica_as_it_was_and_stays_sparse(
    provider: Any, name: str, tmp_path: Any
) -> None:
    replica = provider.create_disk(request(name))
    expected = fill(replica.id)
    clone = provider.clone_disk(replica, request(name + "-test"))
    assert (clone.size, clone.format) == (replica.size, "raw")
    assert Path(clone.id).read_bytes() == expected
    assert os.stat(clone.id).st_blocks * 512 < 4 * MiB  # holes kept
    assert provider.clone_disk(replica, request(name + "-test")) == clone  # found again, not copied again
    with open(replica.id, "r+b") as handle:  # the next sync pass changes the replica, not the clone
        handle.write(b"\xff" * 4096)
    assert Path(clone.id).read_bytes() == expected
    provider.delete_disk(clone)
    provider.delete_disk(replica)


def test_a_qcow2_replica_is_cloned_while_its_nbd_export_stays_usable(
    provider: Any, name: str, tmp_path: Any
) -> None:
    from providers.kvm import nbd

    replica = provider.create_disk(request(name, "qcow2"))
    endpoint = provider.attach_disk(None, replica)
    try:
        subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "write -P 0x5a 2M 64k", endpoint.path],
            check=True,
            capture_output=True,
        )
        clone = provider.clone_disk(replica, request(name + "-test", "qcow2"))
        assert nbd.status(replica.id)["running"]  # the export came back on the same socket
        subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "write -P 0x11 2M 4k", endpoint.path],
            check=True,
            capture_output=True,
        )
    finally:
        provider.detach_disk(None, replica)
    copied = guest_bytes(clone.id, "qcow2", tmp_path)
    assert copied[2 * MiB : 2 * MiB + 65536] == b"\x5a" * 65536  # what the replica held at clone time
    assert guest_bytes(replica.id, "qcow2", tmp_path)[2 * MiB : 2 * MiB + 4096] == b"\x11" * 4096
    provider.delete_disk(clone)
    provider.delete_disk(replica)


def test_a_clone_cut_short_by_a_crash_is_made_again_not_returned(
    provider: Any, pool: Any, name: str, tmp_path: Any
) -> None:
    replica = provider.create_disk(request(name))
    expected = fill(replica.id)
    half = provider.create_disk(request(name + "-test"))  # what a crash mid-copy leaves: a volume ...
    pool.createXML(  # ... with its in-progress marker still there
        f"<volume><name>{name}-test.raw.hvclone</name><capacity>0</capacity></volume>", 0
    )
    clone = provider.clone_disk(replica, request(name + "-test"))
    assert clone.id == half.id and Path(clone.id).read_bytes() == expected
    pool.refresh(0)
    assert f"{name}-test.raw.hvclone" not in pool.listVolumes()
    provider.delete_disk(clone)
    provider.delete_disk(replica)


def test_a_volume_of_the_clones_name_the_tool_did_not_make_is_refused(
    provider: Any, pool: Any, name: str
) -> None:
    replica = provider.create_disk(request(name))
    pool.createXML(f"<volume><name>{name}-test.raw</name><capacity>1048576</capacity></volume>", 0)
    with pytest.raises(ProviderError, match="never overwritten"):
        provider.clone_disk(replica, request(name + "-test"))
    pool.storageVolLookupByName(f"{name}-test.raw").delete(0)
    provider.delete_disk(replica)


def test_a_test_copy_nic_without_a_test_network_has_no_link(provider: Any, conn: Any, name: str) -> None:
    import xml.etree.ElementTree as ET

    disk = provider.create_disk(request(name))
    network = provider.inventory().networks[0]
    vm = provider.create_vm(
        VmRequest(
            name=name,
            host=None,
            cpus=1,
            memory=64 * MiB,
            firmware="bios",
            disks=(disk,),
            nics=(NicRequest(network=network, mac="52:54:00:aa:bb:01", connected=False),),
        )
    )
    try:
        link = ET.fromstring(conn.lookupByName(name).XMLDesc(0)).find("devices/interface/link")
        assert link is not None and link.get("state") == "down"
    finally:
        provider.delete_vm(vm)
        provider.delete_disk(disk)
