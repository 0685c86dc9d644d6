"""``transport: local`` for a Windows source: the orchestrator on the source server itself, no WinRM.

The scripts are the ones sent over WinRM, run by the stand-in ``powershell.exe`` first on PATH
(tests/fakes/powershell_exe.py through tests/fakes/local_host.py) against the Windows server model; the
agent reading ``\\\\.\\PhysicalDrive0`` and the shadow copy's device is a local process, the stand-in
``python.exe`` running the real agent under Windows' ``os`` (tests/fakes/windows_site). The final pass runs
as the cutover runs it: quiesce stops the database service (which writes its last pages as it stops),
takes the shadow copy, and the pass reads the volume from it while the server writes on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.transport.local import LocalTransport
from orchestrator.transport.local_powershell import LocalPowerShell
from tests.fakes.local_host import LocalHostStandIn
from tests.fakes.windows_services import Service
from tests.fakes.windows_source_model import Volume, WindowsMachine
from tests.windows_source_bed import CHUNK, one_pass, open_windows_source

pytestmark = pytest.mark.integration

MiB = 1024**2
C_AT, C_SIZE = MiB, 2 * MiB


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    disk = tmp_path / "disk0.img"
    disk.write_bytes(hashlib.shake_256(b"app06").digest(3 * MiB) + bytes(MiB))
    machine = WindowsMachine(hostname="APP06", domain=None, python="python.exe", disk_files={0: disk})
    machine.disks = [{"Number": 0, "Size": 4 * MiB, "PartitionStyle": "GPT"}]
    machine.partitions = [{"DiskNumber": 0, "PartitionNumber": 1, "Offset": C_AT, "Size": C_SIZE}]
    machine.volumes = [Volume("C", "NTFS", C_SIZE, MiB, 0, 1)]
    made = LocalHostStandIn(None, models=(machine,)).start()
    monkeypatch.setenv("PATH", made.path_with_bin(os.environ.get("PATH", "")))
    yield {"machine": machine, "local": made, "disk": disk}
    made.stop()


def test_discovery_and_the_final_pass_run_on_the_source_itself(
    stand_in: dict[str, Any], tmp_path: Path
) -> None:
    machine: WindowsMachine = stand_in["machine"]
    disk: Path = stand_in["disk"]

    def write(offset: int, data: bytes) -> None:
        with disk.open("r+b") as handle:
            handle.seek(offset)
            handle.write(data)

    machine.services = [Service("AppDb", on_stop=lambda: write(C_AT + 8192, b"last pages at stop " * 100))]
    source = open_windows_source(
        "app06", host="app06", transport="local", python="python.exe", services=["AppDb"]
    )
    target = tmp_path / "replica0.raw"
    try:
        assert isinstance(source.winrm, LocalPowerShell) and "powershell.exe on app06" in repr(source)
        facts = source.discover()
        assert (facts.hostname, [(d.name, d.size) for d in facts.disks]) == (
            "APP06",
            [("PhysicalDrive0", 4 * MiB)],
        )
        received = stand_in["local"].scripts[-1]
        assert (
            received.flags == ("-NoProfile", "-NonInteractive") and received.script == source.winrm.sent[-1]
        )

        with source.pass_snapshot():  # a warm pass while the service runs
            location = source.disk_location("PhysicalDrive0")
            assert isinstance(location.transport, LocalTransport)
            full = one_pass(location, target, "full", "app06")
        assert target.read_bytes() == disk.read_bytes() and full.bytes_written == 3 * MiB

        machine.after_shadow = lambda _: write(C_AT + 64 * 1024, b"written after the shadow " * 100)
        state = source.quiesce()  # the cutover: the service stops, then the shadow copy is taken
        assert state["services"] == ["AppDb"] and machine.services[0].status == "Stopped"
        at_shadow = machine.shadows[state["shadows"]["C:\\"]["id"]]["file"].read_bytes()
        final = one_pass(source.disk_location("PhysicalDrive0"), target, "incremental", "app06")
        source.thaw(state)
    finally:
        machine.after_shadow = None
        source.close()
    copied, live = target.read_bytes(), disk.read_bytes()
    assert copied[C_AT : C_AT + C_SIZE] == at_shadow != live[C_AT : C_AT + C_SIZE]  # as the service left it
    assert b"last pages at stop" in copied and b"written after the shadow" not in copied
    assert copied[:C_AT] == live[:C_AT] and final.bytes_written == CHUNK
    assert machine.services[0].status == "Running" and machine.shadows == {}
