"""``transport: local``: the orchestrator on the Hyper-V host itself, no WinRM.

The scripts are the ones sent over WinRM, run by the stand-in ``powershell.exe`` found on PATH
(tests/fakes/powershell_exe.py, reached through tests/fakes/local_host.py), which takes exactly the switches
the provider gives and runs the decoded script through the WinRM stand-in's interpreter against the same
host model. The agent writing a mounted VHDX is a local process: the stand-in ``python.exe`` runs the real
agent with Windows' ``os`` in a folder where ``\\\\.\\PhysicalDriveN`` is the mounted VHDX's raw file.
The provider-level behaviour over this path (VMs, disks, NICs, undo, bad input, injection) runs in
test_hyperv_provider.py, parametrized over both paths.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.mirror.errors import MirrorError
from orchestrator.playbook.models import HypervProviderConfig
from orchestrator.transport.local import LocalTransport
from orchestrator.transport.local_powershell import LocalPowerShell
from orchestrator.transport.winrm import PowerShellError, WinRMError, compose
from providers.base import DiskRequest, ProviderError
from providers.hyperv import HypervProvider
from tests.fakes.hyperv_bed import CHUNK, host_pass
from tests.fakes.hyperv_host import HypervHost
from tests.fakes.local_host import LocalHostStandIn

pytestmark = pytest.mark.integration

MiB = 1024**2


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHostStandIn]:
    root = tmp_path_factory.mktemp("hvlocal")
    host = HypervHost(root / "host", volumes={"C": 1024 * MiB, "D": 64 * MiB})
    made = LocalHostStandIn(host).start()
    yield made
    made.stop()


@pytest.fixture
def on_path(stand_in: LocalHostStandIn, monkeypatch: pytest.MonkeyPatch) -> LocalHostStandIn:
    monkeypatch.setenv("PATH", stand_in.path_with_bin(os.environ.get("PATH", "")))
    return stand_in


def local_provider(**options: Any) -> HypervProvider:
    return HypervProvider(
        "hv01", HypervProviderConfig(type="hyperv", host="hv01", transport="local", **options)
    )


def powershell(stand_in: LocalHostStandIn, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([str(stand_in.bin / "powershell.exe"), *args], input=stdin, capture_output=True)


def encoded(script: str) -> str:
    return base64.b64encode(script.encode("utf-16-le")).decode()


def test_the_scripts_run_through_local_powershell_with_exactly_its_switches(
    on_path: LocalHostStandIn,
) -> None:
    provider = local_provider()
    assert isinstance(provider.winrm, LocalPowerShell)
    assert provider.inventory().hosts == ("HV01",)
    received = on_path.scripts[-1]
    assert received.flags == ("-NoProfile", "-NonInteractive") and not received.via_stdin
    assert received.script == provider.winrm.sent[-1]  # the very script composed for WinRM
    assert "password" not in repr(provider).lower() and "powershell.exe on hv01" in repr(provider)


def test_the_stand_in_refuses_what_powershell_exe_refuses(stand_in: LocalHostStandIn) -> None:
    script = compose("Get-VMHost | Select-Object -Property ComputerName | ConvertTo-Json -Compress")
    good = powershell(stand_in, "-noprofile", "-NONINTERACTIVE", "-EncodedCommand", encoded(script))
    assert good.returncode == 0 and b'"ComputerName":"HV01"' in good.stdout
    count = len(stand_in.scripts)
    refused = {
        ("-NoProfile", "-Command", "Get-VM"): b"only -EncodedCommand",
        ("-NoProfile", "-ExecutionPolicy", "Bypass", "-EncodedCommand", encoded(script)): (
            b"does not accept the powershell option '-ExecutionPolicy'"
        ),
        ("-NoProfile", "-Fast", "-EncodedCommand", encoded(script)): b"The term '-Fast' is not recognized",
        ("-NoProfile", "-NoProfile", "-EncodedCommand", encoded(script)): b"The term '-NoProfile' is not",
        ("-NoProfile", "-NonInteractive"): b"only -EncodedCommand",
        ("-EncodedCommand",): b"A command must follow -EncodedCommand",
        ("-EncodedCommand", "not base64!"): b"is not properly encoded",
    }
    for args, message in refused.items():
        done = powershell(stand_in, *args)
        assert done.returncode == 1 and message in done.stderr and done.stdout == b"", args
    assert len(stand_in.scripts) == count  # nothing refused reached the host


def test_a_failing_script_is_the_same_powershell_error_as_over_winrm(on_path: LocalHostStandIn) -> None:
    provider = local_provider()
    with pytest.raises(PowerShellError) as caught:
        provider.winrm.run("Get-VM -Name $hv.name", {"name": "nope"})
    assert caught.value.message == 'Hyper-V was unable to find a virtual machine with name "nope".'
    assert caught.value.error_id.startswith("InvalidParameter,") and caught.value.exit_code == 1
    with pytest.raises(ProviderError, match=r"^removing VM ghost on Hyper-V host hv01 failed: Hyper-V was"):
        provider._run("Remove-VM -Name $hv.name -Force", {"name": "ghost"}, "removing VM ghost")


def test_plain_stderr_and_a_missing_powershell_are_clear_errors(tmp_path: Path, monkeypatch: Any) -> None:
    fake = tmp_path / "powershell.exe"  # a powershell.exe failing before any script runs: plain text
    fake.write_text("#!/bin/sh\necho 'The Windows PowerShell snap-in is broken.' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PowerShellError) as caught:
        LocalPowerShell("hv01").run("Get-VMHost")
    assert (caught.value.message, caught.value.exit_code) == ("The Windows PowerShell snap-in is broken.", 3)
    fake.unlink()
    monkeypatch.delenv("SystemRoot", raising=False)
    with pytest.raises(
        WinRMError, match=r"powershell.exe is not on the PATH of hv01: .*use transport: https"
    ):
        LocalPowerShell("hv01").run("Get-VMHost")
    with pytest.raises(ProviderError, match="is not on the PATH of hv01"):
        local_provider().inventory()


def test_a_login_is_required_only_over_winrm() -> None:
    with pytest.raises(ValidationError, match="user and password are required with transport https"):
        HypervProviderConfig(type="hyperv", host="hv01.corp.test")
    assert HypervProviderConfig(type="hyperv", host="hv01", transport="local").user is None
    assert HypervProviderConfig(type="hyperv", host=".", transport="local", python="python.exe").python
    with pytest.raises(ValidationError, match="python"):
        HypervProviderConfig(type="hyperv", host=".", transport="local", python="/usr/bin/python3")


def test_the_agent_on_the_host_is_a_local_process_writing_the_mounted_vhdx(
    on_path: LocalHostStandIn, tmp_path: Path
) -> None:
    host: HypervHost = on_path.host
    provider = local_provider(python="python.exe")
    source = tmp_path / "db02.raw"
    source.write_bytes(hashlib.shake_256(b"db02").digest(2 * MiB) + bytes(2 * MiB))
    disk = provider.create_disk(DiskRequest("db02-disk0", 4 * MiB, "vhdx", "D:"))

    def one_pass(endpoint: Any, mode: str) -> Any:
        writer = provider.writer_location(endpoint)
        assert isinstance(writer.transport, LocalTransport) and writer.path == endpoint.path
        return host_pass(source, endpoint, writer, mode)

    try:
        endpoint = provider.attach_disk(None, disk)
        assert (endpoint.kind, endpoint.path) == ("block", "\\\\.\\PhysicalDrive1")
        assert endpoint.transport["map_path"] == "D:/hvmigrate/db02-disk0.vhdx.hvmap"
        full = one_pass(endpoint, "full")
        raw = host.raw_file(disk.id)
        assert raw.read_bytes() == source.read_bytes() and full.bytes_written == 2 * MiB
        assert host.local("D:\\hvmigrate\\db02-disk0.vhdx.hvmap").is_file()  # beside the VHDX
        with source.open("r+b") as handle:
            handle.seek(3 * CHUNK + 5)
            handle.write(b"a change on the running source")
        again = one_pass(endpoint, "incremental")
        assert raw.read_bytes() == source.read_bytes() and again.bytes_written == CHUNK
        provider.detach_disk(None, disk)
        with pytest.raises(MirrorError, match=re.escape("\\\\.\\PhysicalDrive1")):
            one_pass(endpoint, "incremental")  # dismounted: the name is gone on the host
    finally:
        provider.detach_disk(None, disk)
        provider.delete_disk(disk)
        provider.close()
    assert not host.vhds and not host.local("D:\\hvmigrate\\db02-disk0.vhdx.hvmap").exists()


def test_the_stand_in_python_runs_the_agent_and_nothing_else(on_path: LocalHostStandIn) -> None:
    done = subprocess.run(
        [str(on_path.bin / "python.exe"), "-c", "print('anything')"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "only as the hvmigrate agent" in done.stderr and done.stdout == ""
