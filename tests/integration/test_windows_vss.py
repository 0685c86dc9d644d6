"""A Windows source's pass reads its volumes from their VSS shadow copies while the server writes on.

pywinrm over real HTTPS to the WS-Management stand-in (tests/fakes); the source's agent is the real one,
run by the stand-in under Windows' ``os`` as tests/fakes/windows_site plays it. A shadow copy there is a
real frozen copy of the volume's bytes made when Win32_ShadowCopy.Create runs, and the machine model
writes into the live disk right after it, as a running server would. Not shown: real VSS (writers,
copy-on-write, the shadow device's own geometry).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.windows_source_model import Volume, WindowsMachine
from tests.fakes.winrm_server import WinRMStandIn, mint_tls
from tests.windows_source_bed import CHUNK, one_pass, open_windows_source, over_winrm

pytestmark = pytest.mark.integration
pytest.importorskip("winrm", reason="pywinrm is missing: pip install 'hvmigrate[hyperv]'")

MiB = 1024**2
USER, PASSWORD = "migrator", "Pa$$w0rd"
PYTHON = "C:\\Python311\\python.exe"
EFI_AT, EFI_SIZE = MiB, 64 * 1024  # FAT32, no letter: not snapshotted, read live
C_AT, C_SIZE = MiB + 64 * 1024, 2 * MiB  # NTFS C:, its start inside a chunk: reads cross the boundary


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("winvss")
    disk = root / "disk0.img"
    disk.write_bytes(hashlib.shake_256(b"app04").digest(3 * MiB) + bytes(MiB))
    machine = WindowsMachine(hostname="APP04", python=PYTHON, disk_files={0: disk})
    machine.disks = [{"Number": 0, "Size": 4 * MiB, "PartitionStyle": "GPT"}]
    machine.partitions = [
        {"DiskNumber": 0, "PartitionNumber": 1, "Offset": EFI_AT, "Size": EFI_SIZE},
        {"DiskNumber": 0, "PartitionNumber": 2, "Offset": C_AT, "Size": C_SIZE},
    ]
    machine.volumes = [
        Volume(None, "FAT32", EFI_SIZE, EFI_SIZE // 2, 0, 1),
        Volume("C", "NTFS", C_SIZE, MiB, 0, 2),
    ]
    tls = mint_tls(root / "tls")
    endpoint = WinRMStandIn(None, users={USER: PASSWORD}, tls=tls, models=(machine,)).start()
    yield {"root": root, "machine": machine, "endpoint": endpoint, "tls": tls, "disk": disk}
    endpoint.stop()


def windows_source(bed: dict[str, Any], **extra: Any) -> Any:
    return open_windows_source("app04", **(over_winrm(bed, USER, PASSWORD, PYTHON) | extra))


def test_each_pass_reads_the_volume_as_of_its_shadow_copy_and_the_rest_live(
    bed: dict[str, Any], tmp_path: Path
) -> None:
    machine: WindowsMachine = bed["machine"]
    disk: Path = bed["disk"]
    target = tmp_path / "replica0.raw"
    at_shadow = disk.read_bytes()

    def server_writes_on(shadow_id: str) -> None:  # the moment after the shadow copy was taken
        with disk.open("r+b") as handle:
            handle.seek(C_AT + 4096)  # inside C:
            handle.write(b"written after the shadow copy " * 2000)
            handle.seek(EFI_AT + 512)  # on the EFI partition, which has no shadow
            handle.write(b"efi " * 100)

    machine.after_shadow = server_writes_on
    source = windows_source(bed)
    try:
        with source.pass_snapshot() as state:
            assert set(state.shadows) == {"C:\\"}
            device = state.shadows["C:\\"]["device"]
            location = source.disk_location("PhysicalDrive0")
            assert location.overlay == ((C_AT, C_SIZE, device),)
            one_pass(location, target, "full", "app04")
        live, copied = disk.read_bytes(), target.read_bytes()
        volume = slice(C_AT, C_AT + C_SIZE)
        assert copied[volume] == at_shadow[volume] != live[volume]  # C: exactly as at the shadow copy
        assert copied[:C_AT] == live[:C_AT] != at_shadow[:C_AT]  # outside C: the live disk
        assert copied[C_AT + C_SIZE :] == live[C_AT + C_SIZE :]
        assert machine.shadows == {} and not list(disk.parent.glob("*.shadow*"))  # removed after the pass
        assert source.disk_location("PhysicalDrive0").overlay == ()  # no pass: no shadow to read

        machine.after_shadow = None  # the server is quiet now: the next pass catches up exactly
        with source.pass_snapshot():
            again = one_pass(source.disk_location("PhysicalDrive0"), target, "incremental", "app04")
        assert target.read_bytes() == disk.read_bytes()
        assert again.bytes_written == CHUNK  # the one chunk of C: the server wrote into
    finally:
        machine.after_shadow = None
        source.close()
