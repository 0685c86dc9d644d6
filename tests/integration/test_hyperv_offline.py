"""`appliance: host` on Hyper-V sets each mounted VHDX offline (Set-Disk, Storage module) before the agent
writes it, so the host mounts none of the volumes a pass writes (WinRM stand-in, not real Hyper-V)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.transport.winrm import PowerShellError
from providers.base import DiskRequest
from providers.hyperv import HypervProvider
from tests.fakes.hyperv_bed import hyperv_bed, hyperv_config
from tests.fakes.hyperv_host import HypervHost

pytestmark = pytest.mark.integration
pytest.importorskip("winrm", reason="pywinrm is missing: pip install 'hvmigrate[hyperv]'")

MiB = 1024**2


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hvoffline")
    host = HypervHost(
        root / "host", volumes={"C": 1024 * MiB, "D": 64 * MiB}, python="C:\\Python311\\python.exe"
    )
    with hyperv_bed(root, host) as made:
        yield made


def test_a_mounted_disk_is_set_offline_and_the_stand_in_takes_only_set_disks_own_parameters(
    bed: dict[str, Any],
) -> None:
    host: HypervHost = bed["host"]
    provider = HypervProvider("hv01", hyperv_config(bed, python="C:\\Python311\\python.exe"))
    disk = provider.create_disk(DiskRequest("db05-disk0", 4 * MiB, "vhdx", "D:"))
    try:
        endpoint = provider.attach_disk(None, disk)
        number = host.mounted[disk.id.lower()]
        assert endpoint.path == f"\\\\.\\PhysicalDrive{number}" and host.offline == {number}
        sent = [r.script for r in bed["endpoint"].scripts if "Set-Disk" in r.script]
        assert sent and all("Set-Disk -Number $hv.number -IsOffline $true" in s for s in sent)

        host.offline.clear()  # brought online behind our back: a reused mount is set offline again
        provider.attach_disk(None, disk)
        assert host.offline == {number}

        for body, refused in (
            ("Set-Disk -Number $hv.number -Offline $true", "Offline"),  # no such parameter
            ("Set-Disk -Number $hv.number -IsOffline $true -IsReadOnly $true", "Parameter set"),
            ("Set-Disk -Number 9 -IsOffline $true", "No MSFT_Disk objects"),  # no disk 9
        ):
            with pytest.raises(PowerShellError, match=refused):
                provider.winrm.run(body, {"number": number})
        assert host.offline == {number}
    finally:
        provider.detach_disk(None, disk)
        provider.delete_disk(disk)
        provider.close()
    assert host.offline == set() and host.mounted == {}
