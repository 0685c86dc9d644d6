"""`appliance: host` on Hyper-V without any test-bed shortcut: the writer is the hvmigrate agent running
on the host (its ``python``), started over WinRM, writing the VHDX that Mount-VHD mounted as
``\\\\.\\PhysicalDriveN``, with its block map beside the VHDX on the host.

pywinrm talks HTTPS + NTLM to the WS-Management stand-in, which runs the real agent for the host's
``python.exe`` (tests/fakes/agent_process.py) and resolves ``\\\\.\\PhysicalDriveN`` to the mounted VHDX's
raw file only while it is mounted. No ``host_device_dir``: nothing on this machine opens the disk.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.mirror.errors import MirrorError
from orchestrator.transport.winrm_agent import WinRMTransport
from providers.base import DiskRequest, ProviderError
from providers.hyperv import HypervProvider
from tests.fakes.hyperv_bed import CHUNK, host_pass, hyperv_bed, hyperv_config
from tests.fakes.hyperv_host import HypervHost

pytestmark = pytest.mark.integration
pytest.importorskip("winrm", reason="pywinrm is missing: pip install 'hvmigrate[hyperv]'")

MiB = 1024**2
PYTHON = "C:\\Python311\\python.exe"


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hvagent")
    host = HypervHost(root / "host", volumes={"C": 1024 * MiB, "D": 64 * MiB}, python=PYTHON)
    with hyperv_bed(root, host) as made:
        yield made


def make_provider(bed: dict[str, Any], **overrides: Any) -> HypervProvider:
    return HypervProvider("hv01", hyperv_config(bed, **{"python": PYTHON, **overrides}))


def source_image(path: Path, size: int) -> Path:
    random = hashlib.shake_256(b"db02").digest(size // 2)
    path.write_bytes(random + b"\0" * (size - len(random)))
    return path


def one_pass(provider: HypervProvider, source: Path, endpoint: Any, mode: str) -> Any:
    return host_pass(source, endpoint, provider.writer_location(endpoint), mode)


def test_the_agent_on_the_host_writes_the_mounted_vhdx(bed: dict[str, Any], tmp_path: Path) -> None:
    host: HypervHost = bed["host"]
    provider = make_provider(bed)
    source = source_image(tmp_path / "db02.raw", 4 * MiB)
    disk = provider.create_disk(DiskRequest("db02-disk0", 4 * MiB, "vhdx", "D:"))
    try:
        endpoint = provider.attach_disk(None, disk)
        assert (endpoint.kind, endpoint.host, endpoint.path) == ("block", "HV01", "\\\\.\\PhysicalDrive1")
        assert endpoint.transport["map_path"] == "D:/hvmigrate/db02-disk0.vhdx.hvmap"
        writer = provider.writer_location(endpoint)
        assert isinstance(writer.transport, WinRMTransport) and writer.path == endpoint.path

        full = one_pass(provider, source, endpoint, "full")
        raw = host.raw_file(disk.id)
        assert raw.read_bytes() == source.read_bytes() and full.bytes_written == 2 * MiB
        host_map = host.local("D:\\hvmigrate\\db02-disk0.vhdx.hvmap")
        assert host_map.is_file()  # on the host, beside the VHDX

        with source.open("r+b") as handle:
            handle.seek(3 * CHUNK + 5)
            handle.write(b"a change on the running source")
        again = one_pass(provider, source, endpoint, "incremental")
        assert raw.read_bytes() == source.read_bytes()
        assert again.bytes_written == CHUNK and again.wire_bytes < CHUNK + 64 * 1024

        provider.detach_disk(None, disk)
        with pytest.raises(
            MirrorError, match=re.escape("no disk \\\\.\\PhysicalDrive1 on ") + ".*not mounted"
        ):
            one_pass(provider, source, endpoint, "incremental")  # dismounted: the name is gone
    finally:
        provider.detach_disk(None, disk)
        provider.delete_disk(disk)
        provider.close()
    assert not host_map.exists() and not host.vhds  # undo removes the block map on the host too


def test_without_python_the_host_writer_says_what_to_set(bed: dict[str, Any]) -> None:
    provider = make_provider(bed, python=None)
    disk = provider.create_disk(DiskRequest("db03-disk0", 4 * MiB, "vhdx", "D:"))
    try:
        endpoint = provider.attach_disk(None, disk)
        with pytest.raises(
            ProviderError, match=r"install CPython 3\.8\+ there and set python on provider hv01"
        ):
            provider.writer_location(endpoint)
    finally:
        provider.detach_disk(None, disk)
        provider.delete_disk(disk)
        provider.close()
