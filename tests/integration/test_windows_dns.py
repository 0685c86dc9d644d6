"""Windows DNS through the DnsServer cmdlets, over pywinrm and real HTTPS to the WS-Management stand-in.

No Windows runs here: the stand-in (tests/fakes/dns_server_model.py) checks the NTLM login for real, runs
each script through the strict interpreter against an in-memory DNS server whose cmdlets take only the
parameters Microsoft documents, and refuses what Windows refuses (a zone it does not host, a duplicate
record, access denied). The calls are those steps/dns_check.py and steps/dns_update.py make.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.dns import (
    Change,
    DnsError,
    check_access,
    move_record,
    open_dns,
    touched_rrsets,
    undo_change,
    wait_until_answered,
)
from orchestrator.playbook.models import WindowsDns
from orchestrator.transport.winrm import PowerShellError
from tests.fakes.dns_server_model import DnsServer
from tests.fakes.local_host import LocalHostStandIn
from tests.fakes.winrm_server import WinRMStandIn, mint_tls

pytestmark = pytest.mark.integration
pytest.importorskip("winrm", reason="pywinrm is missing: pip install 'hvmigrate[hyperv]'")

USER, PASSWORD = "dnsadmin", "S3cr;'$x\"pw"
REVERSE = "1.10.in-addr.arpa"


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("windns")
    server = DnsServer("DC01", zones=("corp.test", REVERSE))
    tls = mint_tls(root / "tls")
    endpoint = WinRMStandIn(None, users={USER: PASSWORD}, tls=tls, models=(server,)).start()
    local = LocalHostStandIn(None, models=(server,)).start()  # the same server, as transport: local has it
    yield {"server": server, "endpoint": endpoint, "tls": tls, "local": local}
    local.stop()
    endpoint.stop()


@pytest.fixture
def server(bed: dict[str, Any]) -> Iterator[DnsServer]:
    """A fresh set of records per test: db01 at its old address, with its PTR and an unrelated PTR."""
    dns_server: DnsServer = bed["server"]
    for zone in dns_server.zones.values():
        zone.records.clear()
        zone.type = "Primary"
    dns_server.access = "full"
    dns_server.put("corp.test", "db01", "A", "10.1.0.5", 600)
    dns_server.put(REVERSE, "5.0", "PTR", "db01.corp.test.", 600)
    dns_server.put(REVERSE, "7.0", "PTR", "other.corp.test.", 900)
    yield dns_server
    dns_server.zones.pop("gone.test", None)


def config(bed: dict[str, Any], **overrides: Any) -> WindowsDns:
    options: dict[str, Any] = {
        "type": "windows",
        "host": "localhost",
        "port": bed["endpoint"].port,
        "user": f"CORP\\{USER}",
        "password": PASSWORD,
        "ca_bundle": bed["tls"].ca_file,
        "zone": "corp.test",
        "reverse_zones": [REVERSE],
    }
    options.update(overrides)
    return WindowsDns(**options)


@pytest.mark.parametrize("transport", ["https", "local"])
def test_check_move_verify_and_undo_restore_the_old_records(
    bed: dict[str, Any], server: DnsServer, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over WinRM, and with the orchestrator on the DNS server itself (its powershell.exe: the stand-in's)."""
    if transport == "local":
        monkeypatch.setenv("PATH", bed["local"].path_with_bin(os.environ.get("PATH", "")))
        windows = config(bed, transport="local", user=None, password=None)
    else:
        windows = config(bed)
    received_by = bed["local" if transport == "local" else "endpoint"]
    touched = touched_rrsets(windows, "db01", "A", "10.1.0.12", None)
    assert touched == {
        "corp.test": [("db01", "A")],
        REVERSE: [("12.0.1.10.in-addr.arpa.", "PTR"), ("5.0.1.10.in-addr.arpa.", "PTR")],
    }
    check_access(windows, touched)
    assert server.records("corp.test", "db01", "A") == [("10.1.0.5", 600)]  # the check changed nothing

    journal: list[Change] = []
    expected = move_record(windows, "db01", "A", "10.1.0.12", 60, journal=journal.append)
    assert server.records("corp.test", "db01", "A") == [("10.1.0.12", 60)]
    assert server.records(REVERSE, "12.0", "PTR") == [("db01.corp.test.", 60)]
    assert server.records(REVERSE, "5.0", "PTR") == []  # the old address no longer names db01
    assert server.records(REVERSE, "7.0", "PTR") == [("other.corp.test.", 900)]
    wait_until_answered(windows, expected, timeout=0)
    assert [(c.zone, c.name, c.type, c.previous) for c in journal] == [
        ("corp.test", "db01.corp.test.", "A", [("10.1.0.5", 600)]),
        (REVERSE, "12.0.1.10.in-addr.arpa.", "PTR", []),
        (REVERSE, "5.0.1.10.in-addr.arpa.", "PTR", [("db01.corp.test.", 600)]),
    ]

    for change in reversed([Change.from_json(c.to_json()) for c in journal]):  # as the journal gives them
        undo_change(windows, change)
    assert server.records("corp.test", "db01", "A") == [("10.1.0.5", 600)]
    assert server.records(REVERSE, "5.0", "PTR") == [("db01.corp.test.", 600)]
    assert server.records(REVERSE, "12.0", "PTR") == []

    # only the fixed bodies are code: every value went as base64 data, and the password nowhere
    for received in received_by.scripts:
        assert "10.1.0.12" not in received.script and PASSWORD not in received.script
    assert "-TimeToLive $hv.ttl0" in received_by.scripts[-1].script


def test_records_of_one_name_keep_each_their_own_ttl(bed: dict[str, Any], server: DnsServer) -> None:
    server.put("corp.test", "web", "A", "10.1.0.20", 300)
    server.put("corp.test", "web", "A", "10.1.0.21", 120)
    updater = open_dns(config(bed))
    previous = updater.replace("web", "A", "10.1.0.30", 30)
    assert previous == [("10.1.0.20", 300), ("10.1.0.21", 120)]
    updater.restore("web", "A", previous)
    assert server.records("corp.test", "web", "A") == previous
    updater.restore("web", "A", [])
    assert updater.get("web", "A") == [] and updater.answers("web", "A") == []


def test_a_zone_the_server_does_not_host(bed: dict[str, Any], server: DnsServer) -> None:
    missing = config(bed, zone="nothere.test")
    with pytest.raises(DnsError, match=r"does not host zone nothere\.test; check the dns zone name"):
        check_access(missing, {"nothere.test": [("db01", "A")]})
    server.add_zone("gone.test", "Secondary")
    with pytest.raises(DnsError, match=r"holds zone gone\.test as a Secondary zone, which takes no updates"):
        check_access(config(bed, zone="gone.test"), {"gone.test": [("db01", "A")]})


def test_access_denied_is_a_clear_error_and_changes_nothing(bed: dict[str, Any], server: DnsServer) -> None:
    windows = config(bed)
    server.access = "none"
    with pytest.raises(DnsError, match=r"denied CORP\\dnsadmin access to zone corp\.test .*DnsAdmins"):
        check_access(windows, {"corp.test": [("db01", "A")]})
    server.access = "read"  # reads pass the check; the write itself is refused, and nothing moved
    check_access(windows, {"corp.test": [("db01", "A")]})
    journal: list[Change] = []
    with pytest.raises(DnsError, match="denied") as caught:
        move_record(windows, "db01", "A", "10.1.0.12", 60, journal=journal.append)
    assert PASSWORD not in str(caught.value)
    assert server.records("corp.test", "db01", "A") == [("10.1.0.5", 600)]
    assert journal[0].previous == [("10.1.0.5", 600)]  # journaled first: undo could still put it back


def test_a_name_with_quotes_dollar_and_semicolon_is_data(bed: dict[str, Any], server: DnsServer) -> None:
    name = "x'; Remove-DnsServerZone -Name corp.test -Force; $a=\"b"
    windows = config(bed)
    updater = open_dns(windows)
    sent = len(bed["endpoint"].scripts)
    updater.replace(name, "A", "10.1.0.99", 60)
    assert server.records("corp.test", name, "A") == [("10.1.0.99", 60)]
    assert "corp.test" in server.zones and server.records("corp.test", "db01", "A")
    script = bed["endpoint"].scripts[-1].script
    assert name not in script and "Remove-DnsServerZone" not in script
    data = script.split("FromBase64String('")[1].split("'")[0]
    assert json.loads(base64.b64decode(data))["name"] == name
    assert all(r.exit_code == 0 for r in bed["endpoint"].scripts[sent:])


def test_the_stand_in_refuses_what_windows_refuses(bed: dict[str, Any], server: DnsServer) -> None:
    """Passing here means something: a wrong parameter, a bare TTL and a duplicate fail as on Windows."""
    winrm = open_dns(config(bed)).winrm  # type: ignore[attr-defined]
    data = {"zone": "corp.test", "name": "db01", "value": "10.1.0.5", "ttl": 60}
    with pytest.raises(
        PowerShellError, match="A parameter cannot be found that matches parameter name 'Ttl'"
    ):
        winrm.run(
            "Add-DnsServerResourceRecordA -ZoneName $hv.zone -Name $hv.name -IPv4Address $hv.value -Ttl 1",
            data,
        )
    with pytest.raises(PowerShellError, match="Failed to create resource record db01") as caught:
        winrm.run(
            "Add-DnsServerResourceRecordA -ZoneName $hv.zone -Name $hv.name -IPv4Address $hv.value", data
        )
    assert caught.value.error_id.startswith("WIN32 9711")
    # a number given to a TimeSpan counts ticks: why the updater sends "0.00:01:00"
    winrm.run(
        "Add-DnsServerResourceRecordA -ZoneName $hv.zone -Name 'ticks' -IPv4Address $hv.value "
        "-TimeToLive $hv.ttl",
        data,
    )
    assert server.records("corp.test", "ticks", "A") == [("10.1.0.5", 0)]
    with pytest.raises(PowerShellError, match=r"The zone nothere\.test was not found on server DC01"):
        winrm.run("Get-DnsServerZone -Name $hv.zone", {"zone": "nothere.test"})
