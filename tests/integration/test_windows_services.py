"""A Windows source's services stopped before the final pass and started again, over pywinrm and real
HTTPS to the WS-Management stand-in.

The services are tests/fakes/windows_services.py: Get-Service, Stop-Service and Start-Service with the
parameters, dependant rules and error records of Windows PowerShell 5.1. What passes says the scripts
stay inside those and that exactly the services that ran are started again, from this process's record
or from the journaled state; it cannot say how long a real service takes to stop, or what its VSS writer
does meanwhile.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.playbook.models import WinrmSource
from orchestrator.transport.winrm import compose
from providers.base import ProviderError
from tests.fakes.powershell import Interpreter, PSError
from tests.fakes.windows_services import Service
from tests.fakes.windows_source_model import Volume, WindowsMachine
from tests.fakes.winrm_server import WinRMStandIn, mint_tls
from tests.windows_source_bed import open_windows_source, over_winrm

pytestmark = pytest.mark.integration
pytest.importorskip("winrm", reason="pywinrm is missing: pip install 'hvmigrate[hyperv]'")

MiB = 1024**2
USER, PASSWORD = "migrator", "Pa$$w0rd"
PYTHON = "C:\\Python311\\python.exe"
C_AT, C_SIZE = MiB, 2 * MiB
EVIL = 'app\'; Stop-Computer -Force; $x = "q" #'  # quotes, $, ; and a comment: a name, never code


def services() -> list[Service]:
    return [
        Service("MSSQLSERVER", "SQL Server (MSSQLSERVER)"),
        Service("SQLSERVERAGENT", "SQL Server Agent (MSSQLSERVER)", depends_on=("MSSQLSERVER",)),
        Service("SQLTelemetry", status="Stopped", start_type="Manual", depends_on=("SQLSERVERAGENT",)),
        Service("W3SVC", "World Wide Web Publishing Service", status="Stopped"),
        Service("Spooler", "Print Spooler"),
        Service("Hung", "A service that never stops", hangs_on_stop=True),
        Service(EVIL),
    ]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("winsvc")
    disk = root / "disk0.img"
    disk.write_bytes(hashlib.shake_256(b"app05").digest(4 * MiB))
    machine = WindowsMachine(hostname="APP05", python=PYTHON, disk_files={0: disk})
    machine.disks = [{"Number": 0, "Size": 4 * MiB, "PartitionStyle": "GPT"}]
    machine.partitions = [{"DiskNumber": 0, "PartitionNumber": 1, "Offset": C_AT, "Size": C_SIZE}]
    machine.volumes = [Volume("C", "NTFS", C_SIZE, MiB, 0, 1)]
    tls = mint_tls(root / "tls")
    endpoint = WinRMStandIn(None, users={USER: PASSWORD}, tls=tls, models=(machine,)).start()
    yield {"machine": machine, "endpoint": endpoint, "tls": tls}
    endpoint.stop()


@pytest.fixture
def machine(bed: dict[str, Any]) -> Iterator[WindowsMachine]:
    made: WindowsMachine = bed["machine"]
    made.services = services()
    yield made
    made.after_shadow = None
    assert made.shadows == {}  # every test leaves no shadow copy behind


def statuses(machine: WindowsMachine) -> dict[str, str]:
    return {s.name: s.status for s in machine.services}


def windows_source(bed: dict[str, Any], **extra: Any) -> Any:
    return open_windows_source("app05", **(over_winrm(bed, USER, PASSWORD, PYTHON) | extra))


def test_quiesce_stops_services_and_dependants_before_the_shadow_and_thaw_starts_exactly_those(
    bed: dict[str, Any], machine: WindowsMachine
) -> None:
    before = statuses(machine)
    at_shadow: list[dict[str, str]] = []
    machine.after_shadow = lambda shadow_id: at_shadow.append(statuses(machine))
    source = windows_source(bed, services=["SQL Server (MSSQLSERVER)", "W3SVC"])
    try:
        state = source.quiesce()
        assert state["services"] == ["SQLSERVERAGENT", "MSSQLSERVER"]  # the dependant stopped first
        assert state["live"] == ["service W3SVC was not running: left alone"]
        assert at_shadow and at_shadow[0]["MSSQLSERVER"] == at_shadow[0]["SQLSERVERAGENT"] == "Stopped"
        (shadow,) = state["shadows"].values()
        assert set(machine.shadows) == {shadow["id"]}
        assert source.disk_location("PhysicalDrive0").overlay == ((C_AT, C_SIZE, shadow["device"]),)
    finally:
        source.close()
    assert statuses(machine)["Spooler"] == "Running" and machine.services[4].stops == 0

    restarted = windows_source(bed, services=["SQL Server (MSSQLSERVER)", "W3SVC"])  # a new process
    try:
        restarted.restore_quiesce_state(state)  # the final pass after a restart reads the same shadow
        assert restarted.disk_location("PhysicalDrive0").overlay == ((C_AT, C_SIZE, shadow["device"]),)
        restarted.thaw(state)  # from the journal
        assert statuses(machine) == before  # the telemetry service and W3SVC stay stopped
        assert machine.shadows == {} and restarted.disk_location("PhysicalDrive0").overlay == ()
        restarted.thaw(state)  # a retried undo: starting what runs changes nothing
    finally:
        restarted.close()
    assert [s.starts for s in machine.services[:4]] == [1, 1, 0, 0]
    assert all(r.exit_code == 0 for r in bed["endpoint"].scripts)


def test_a_missing_service_is_windows_own_error_and_nothing_is_stopped(
    bed: dict[str, Any], machine: WindowsMachine
) -> None:
    before = statuses(machine)
    source = windows_source(bed, services=["MSSQLSERVER", "NoSuchService"])
    try:
        with pytest.raises(ProviderError) as caught:
            source.quiesce()
    finally:
        source.close()
    assert str(caught.value) == (
        "server app05: quiesce on localhost failed: looking up source.services on localhost failed: Cannot "
        "find any service with service name 'NoSuchService'.; fix source.services (names as Get-Service "
        "shows them); nothing was stopped"
    )
    assert bed["endpoint"].scripts[-1].stderr == "Cannot find any service with service name 'NoSuchService'."
    assert statuses(machine) == before and all(s.stops == 0 for s in machine.services)


def test_a_service_that_will_not_stop_times_out_and_the_others_start_again(
    bed: dict[str, Any], machine: WindowsMachine
) -> None:
    source = windows_source(bed, services=["MSSQLSERVER", "Hung"], service_timeout=1)
    try:
        with pytest.raises(ProviderError) as caught:
            source.quiesce()
        message = str(caught.value)
        assert "failed: Hung (StopPending) did not stop within 1.0s on localhost;" in message
        assert "raise source.service_timeout" in message
        assert "Service 'A service that never stops (Hung)' cannot be started" in message  # still stopping
        now = statuses(machine)
        assert (now["MSSQLSERVER"], now["SQLSERVERAGENT"], now["Hung"]) == (
            "Running",
            "Running",
            "StopPending",
        )
        assert machine.shadows == {}  # no shadow was taken of a source that was not quiet
        assert source.quiesce_state["services"] == ["Hung"]  # kept for the next thaw

        machine.services[5].status = "Stopped"  # someone killed its process on the server
        source.thaw()  # from this process's record
        assert statuses(machine)["Hung"] == "Running" and source.quiesce_state["services"] == []
    finally:
        source.close()


def test_service_names_travel_as_data_never_as_script_text(
    bed: dict[str, Any], machine: WindowsMachine
) -> None:
    first = len(bed["endpoint"].scripts)
    source = windows_source(bed, services=[EVIL], vss=False)
    try:
        state = source.quiesce()
        assert state == {"version": 1, "services": [EVIL], "shadows": {}, "live": []}
        assert statuses(machine)[EVIL] == "Stopped" and not machine.stopped
        source.thaw(state)
    finally:
        source.close()
    assert statuses(machine)[EVIL] == "Running" and not machine.stopped
    sent = [r.script for r in bed["endpoint"].scripts[first:]]
    assert sent and not any("Stop-Computer" in script or "app'" in script for script in sent)
    for bad in ("SQL*", "MSSQL[1]", "a\\b", "a/b", "tab\there", "", "back`tick"):
        with pytest.raises(ValidationError, match="not a Windows service name hvmigrate can address"):
            WinrmSource(type="winrm", host="h", user="u", password="p", services=[bad])


def test_no_services_and_no_vss_leaves_the_source_as_it_is(
    bed: dict[str, Any], machine: WindowsMachine
) -> None:
    count = len(bed["endpoint"].scripts)
    source = windows_source(bed, vss=False)
    try:
        assert source.quiesce() is None
        source.thaw(None)  # no record, no services listed: nothing to start
    finally:
        source.close()
    assert len(bed["endpoint"].scripts) == count


def test_the_stand_in_holds_to_windows_service_rules(machine: WindowsMachine) -> None:
    def run(body: str, **data: Any) -> list[Any]:
        return Interpreter(machine.cmdlets()).run_script(compose(body, data))

    refused = {
        "Stop-Service -Name $hv.n": (
            "MSSQLSERVER",
            "ServiceHasDependentServices,",
            "because it has dependent",
        ),
        "Stop-Service -Name $hv.n -Force": ("Hung", "StandInWouldWaitForEver,", "does not wait for ever"),
        "Start-Service -Name $hv.n": ("Hung", "CouldNotStartService,", "cannot be started"),
        "Get-Service -Name $hv.n -Status": ("Spooler", "NamedParameterNotFound,", "matches parameter name"),
        "Get-Service -Name $hv.n -ComputerName 'x'": ("Spooler", "NamedParameterNotFound,", "'ComputerName'"),
        "Stop-Service $hv.n": ("Spooler", "PositionalParameterNotFound,", "positional parameter"),
        "Get-Service -Name $hv.n": ("nosuch", "NoServiceFoundForGivenName,", "Cannot find any service"),
    }
    for body, (name, error_id, message) in refused.items():
        with pytest.raises(PSError) as caught:
            run(body, n=name)
        assert caught.value.error_id.startswith(error_id) and message in caught.value.message, body
    assert run("@(Get-Service -Name 'NoSuch*') | ConvertTo-Json -Compress") == []  # a pattern: no error
    assert run(
        "Get-Service -Name 'Print Spooler' | Select-Object -Property Name | ConvertTo-Json -Compress"
    ) == ['{"Name":"Spooler"}']
    machine.services[1].accepts_stop = False
    with pytest.raises(PSError, match=r"Cannot stop SQLSERVERAGENT service on computer '\.'") as caught:
        run("Stop-Service -Name 'MSSQLSERVER' -Force -NoWait")
    assert caught.value.category == "CloseError" and statuses(machine)["MSSQLSERVER"] == "Running"
    machine.services[3].start_type = "Disabled"
    with pytest.raises(PSError, match=r"'World Wide Web Publishing Service \(W3SVC\)' cannot be started"):
        run("Start-Service -Name 'W3SVC'")


def test_a_login_is_required_only_over_winrm() -> None:
    with pytest.raises(ValidationError, match="user and password are required with transport https"):
        WinrmSource(type="winrm", host="app01.corp.test")
    local = WinrmSource(type="winrm", host="app01", transport="local", python="python.exe")
    assert local.user is None and local.password is None
    with pytest.raises(ValidationError, match="python"):
        WinrmSource(type="winrm", host="app01", transport="local", python="/usr/bin/python3")


def test_shutdown_removes_quiesce_shadows_and_keeps_services_stopped(
    bed: dict[str, Any], machine: WindowsMachine
) -> None:
    source = windows_source(bed, services=["Spooler"])
    try:
        source.quiesce()
        assert len(machine.shadows) == 1
        source.shutdown(timeout=60, force=False)
    finally:
        source.close()
    assert machine.stopped and machine.shadows == {} and statuses(machine)["Spooler"] == "Stopped"
    machine.stopped = False
