"""A Windows source's disks read by the hvmigrate agent running "on the source", over WinRM.

pywinrm talks real HTTPS with NTLM to the WS-Management stand-in (tests/fakes), which starts the real
agent as the source's ``python.exe`` (tests/fakes/agent_process.py): the agent program arrives on stdin,
and every frame crosses as base64 in Send and Receive envelopes. The disks are small files the model
publishes as ``\\\\.\\PhysicalDriveN``; the target is a local file written by a local agent, so the pass
is the real two-agent relay. What this cannot show: Windows' own Python reading a raw disk (sharing
modes; alignment is enforced by the Windows-os stand-in), and real VSS (test_windows_vss.py reads the
model's frozen shadow copies).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.mirror.errors import MirrorError
from orchestrator.transport import TransportError
from orchestrator.transport.winrm import WinRM, WinRMTarget
from orchestrator.transport.winrm_agent import WinRMTransport, windows_command
from providers.base import ProviderError
from tests.fakes.agent_process import windows_argv
from tests.fakes.windows_source_model import Volume, WindowsMachine
from tests.fakes.winrm_server import WinRMStandIn, mint_tls
from tests.windows_source_bed import CHUNK, one_pass, open_windows_source, over_winrm

pytestmark = pytest.mark.integration
pytest.importorskip("winrm", reason="pywinrm is missing: pip install 'hvmigrate[hyperv]'")

MiB = 1024**2
USER, PASSWORD = "migrator", "Pa$$;'w\"rd"
PYTHON = "C:\\Program Files\\Python311\\python.exe"  # a space in it: quoted on the command line


def disk_bytes(seed: int, size: int) -> bytes:
    """Random, text and zero regions, as a real disk has."""
    random = hashlib.shake_256(str(seed).encode()).digest(size // 2)
    line = b"a log line of a running server\n"
    text = (line * (size // len(line)))[: size // 4]
    return random + text + bytes(size - len(random) - len(text))


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("winagent")
    disks = {0: root / "disk0.img", 1: root / "disk1.img"}
    disks[0].write_bytes(disk_bytes(0, 4 * MiB))
    disks[1].write_bytes(disk_bytes(1, 2 * MiB))
    machine = WindowsMachine(hostname="APP02", python=PYTHON, disk_files=disks)
    machine.disks = [
        {"Number": n, "Size": path.stat().st_size, "PartitionStyle": "GPT"} for n, path in disks.items()
    ]
    machine.partitions = [
        {"DiskNumber": n, "PartitionNumber": 1, "Offset": MiB, "Size": path.stat().st_size - 2 * MiB}
        for n, path in disks.items()
    ]
    machine.volumes = [
        Volume("C", "NTFS", 2 * MiB, MiB, 0, 1),
        Volume("D", "NTFS", MiB // 2, MiB // 4, 1, 1),
    ]
    tls = mint_tls(root / "tls")
    endpoint = WinRMStandIn(None, users={USER: PASSWORD}, tls=tls, models=(machine,)).start()
    yield {"root": root, "machine": machine, "endpoint": endpoint, "tls": tls, "disks": disks}
    endpoint.stop()


def windows_source(bed: dict[str, Any], **extra: Any) -> Any:
    return open_windows_source("app02", **(over_winrm(bed, USER, PASSWORD, PYTHON) | extra))


def test_full_and_incremental_passes_read_the_source_through_its_own_agent(
    bed: dict[str, Any], tmp_path: Path
) -> None:
    source = windows_source(bed)
    try:
        location = source.disk_location("PhysicalDrive0")
        assert isinstance(location.transport, WinRMTransport)
        assert (location.path, location.size) == ("\\\\.\\PhysicalDrive0", 4 * MiB)
        target = tmp_path / "replica0.raw"

        full = one_pass(location, target, "full", "app02")
        disk0: Path = bed["disks"][0]
        assert target.read_bytes() == disk0.read_bytes()
        assert full.bytes_written == 3 * MiB  # the zero quarter stays a hole
        assert full.zero_bytes_skipped == MiB

        with disk0.open("r+b") as handle:  # the running server writes while it is being migrated
            handle.seek(CHUNK * 5 + 77)
            handle.write(b"changed while mirrored" * 100)
        again = one_pass(source.disk_location("PhysicalDrive0"), target, "incremental", "app02")
        assert target.read_bytes() == disk0.read_bytes()
        assert again.bytes_written == CHUNK and again.unchanged_bytes_skipped == 2 * MiB + 3 * CHUNK
    finally:
        source.close()
    ran = [r for r in bed["endpoint"].scripts if "python" in r.flags]
    assert ran == []  # the agent is no PowerShell script: nothing of it reached the interpreter


def test_the_stand_in_runs_python_only_as_the_agent(bed: dict[str, Any]) -> None:
    winrm = WinRM(
        WinRMTarget(
            "localhost",
            f"CORP\\{USER}",
            PASSWORD,
            port=bed["endpoint"].port,
            ca_bundle=str(bed["tls"].ca_file),
        )
    )
    try:
        for args in (["-c", "import os; os.system('calc')", "12"], ["-m", "http.server"]):
            process = WinRMTransport(winrm, PYTHON).start_python(args)
            assert process.exit_status(timeout=30) == 2
            assert "runs" in process.stderr_tail() and "hvmigrate agent" in process.stderr_tail()
            process.close()
        process = WinRMTransport(winrm, "C:\\Windows\\System32\\cmd.exe").start_python(["-c", "x", "1"])
        assert process.exit_status(timeout=30) == 1 and "is not recognized" in process.stderr_tail()
        process.close()
    finally:
        winrm.close()


def test_no_python_on_the_source_is_one_clear_line(bed: dict[str, Any]) -> None:
    source = windows_source(bed, python=None)
    try:
        with pytest.raises(ProviderError, match=r"install CPython 3\.8\+ there and set source\.python"):
            source.disk_location("PhysicalDrive0")
        with pytest.raises(ProviderError, match="has no disk PhysicalDrive7"):
            windows_source(bed).disk_location("PhysicalDrive7")
    finally:
        source.close()
    machine: WindowsMachine = bed["machine"]
    machine.python = None  # configured, but not installed there
    try:
        source = windows_source(bed)
        with pytest.raises(MirrorError, match=r"exited with code 1.*is not recognized"):
            one_pass(source.disk_location("PhysicalDrive1"), bed["root"] / "never.raw", "full", "app02")
        source.close()
    finally:
        machine.python = PYTHON
    assert not (bed["root"] / "never.raw").exists() or os.path.getsize(bed["root"] / "never.raw") == 0


def test_the_command_line_survives_windows_parsing_and_refuses_unsafe_arguments() -> None:
    command, arguments = windows_command(PYTHON, ["-c", "import os\nprint('a \"b\"')\n", "42"])
    assert command == f'"{PYTHON}"'
    assert windows_argv(" ".join([command, *arguments])) == [PYTHON, "-c", arguments[1], "42"]
    assert (
        bytes.fromhex(arguments[1][len("exec(bytes.fromhex('") : -3]).decode()
        == "import os\nprint('a \"b\"')\n"
    )
    for bad in ("a b", 'a"b', "x&calc"):
        with pytest.raises(TransportError, match="cannot be passed safely"):
            windows_command(PYTHON, [bad])
    with pytest.raises(TransportError, match="not a usable interpreter"):
        windows_command('C:\\Python"\\python.exe', [])
