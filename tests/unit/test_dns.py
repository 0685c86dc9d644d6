"""DNS updates: a real zone file through dnspython, and RFC 2136 against a real BIND when installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import dns.rdatatype
import dns.zone
import pytest

from orchestrator.dns import (
    DnsError,
    DnsUnavailable,
    DnsUpdater,
    Rfc2136Updater,
    TransientDnsError,
    ZonefileUpdater,
    open_dns,
)
from orchestrator.playbook.models import Rfc2136Dns, WindowsDns, ZonefileDns
from tests.services.bind import BindServer, bind_server  # noqa: F401 - the fixture

HAND_WRITTEN = """\
$ORIGIN corp.test.
$TTL 3600
@       IN SOA ns1 hostmaster ( 2026010501 3600 600 604800 60 )
        IN NS  ns1
ns1     IN A   10.0.0.2
db01    300 IN A 10.0.0.12
db01    300 IN A 10.0.0.13
mail    IN CNAME db01
"""


def zonefile(path: Path, zone: str = "corp.test") -> ZonefileUpdater:
    updater = open_dns(ZonefileDns(type="zonefile", path=path, zone=zone))
    assert isinstance(updater, ZonefileUpdater) and isinstance(updater, DnsUpdater)
    return updater


def serial(path: Path) -> int:
    zone = dns.zone.from_file(str(path), origin="corp.test.", relativize=True)
    return zone.get_rdataset("@", dns.rdatatype.SOA)[0].serial


def checkzone(path: Path) -> None:
    """BIND's own parser agrees the file is a loadable zone (when BIND's tools are installed)."""
    if shutil.which("named-checkzone"):
        result = subprocess.run(["named-checkzone", "corp.test", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- zone file


def test_a_missing_zone_file_is_created_with_soa_and_ns(tmp_path: Path) -> None:
    path = tmp_path / "dns" / "corp.test.zone"
    updater = zonefile(path)
    assert updater.get("db01", "A") == []
    assert not path.exists()  # reading creates nothing
    assert updater.replace("db01", "A", "10.1.0.12", 60) == []
    zone = dns.zone.from_file(str(path), origin="corp.test.", relativize=True)
    assert zone.get_rdataset("@", "NS") is not None and serial(path) == 2
    assert updater.get("db01", "A") == [("10.1.0.12", 60)]
    checkzone(path)


def test_replace_returns_what_it_replaced_and_restore_puts_it_back(tmp_path: Path) -> None:
    path = tmp_path / "corp.test.zone"
    path.write_text(HAND_WRITTEN)
    updater = zonefile(path)
    previous = updater.replace("db01", "A", "10.1.0.12", 60)
    assert sorted(previous) == [("10.0.0.12", 300), ("10.0.0.13", 300)]
    assert updater.get("db01.corp.test.", "A") == [("10.1.0.12", 60)]  # absolute names work too
    assert serial(path) == 2026010502
    updater.restore("db01", "A", previous)
    assert sorted(updater.get("db01", "A")) == sorted(previous)
    assert serial(path) == 2026010503
    assert updater.get("mail", "CNAME") == [("db01.corp.test.", 3600)]  # untouched records stay
    assert updater.get("ns1", "A") == [("10.0.0.2", 3600)]
    checkzone(path)


def test_restore_of_nothing_deletes_and_delete_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "corp.test.zone"
    path.write_text(HAND_WRITTEN)
    updater = zonefile(path)
    previous = updater.replace("web01", "A", "10.1.0.11", 60)
    assert previous == []
    updater.restore("web01", "A", previous)
    assert updater.get("web01", "A") == []
    before = serial(path)
    updater.delete("web01", "A")
    assert serial(path) == before  # nothing to delete: the file is not rewritten


def test_cname_targets_and_conflicts(tmp_path: Path) -> None:
    updater = zonefile(tmp_path / "corp.test.zone")
    updater.replace("www", "CNAME", "web01", 60)
    assert updater.get("www", "CNAME") == [("web01.corp.test.", 60)]
    updater.replace("ext", "CNAME", "cdn.example.net.", 60)
    assert updater.get("ext", "CNAME") == [("cdn.example.net.", 60)]
    with pytest.raises(DnsError, match="www already has CNAME records"):
        updater.replace("www", "A", "10.1.0.11", 60)
    updater.replace("db01", "A", "10.1.0.12", 60)
    with pytest.raises(DnsError, match="db01 already has A records"):
        updater.replace("db01", "CNAME", "web01", 60)


def test_refusals(tmp_path: Path) -> None:
    updater = zonefile(tmp_path / "corp.test.zone")
    with pytest.raises(DnsError, match=r"outside zone corp\.test"):
        updater.replace("db01.other.test.", "A", "10.0.0.1", 60)
    with pytest.raises(DnsError, match="not a valid A record value"):
        updater.replace("db01", "A", "10.0.0.300", 60)
    with pytest.raises(DnsError, match="not a valid AAAA record value"):
        updater.replace("db01", "AAAA", "10.0.0.1", 60)
    with pytest.raises(DnsError, match="record type MX is not managed"):
        updater.replace("db01", "MX", "10 mail", 60)
    with pytest.raises(DnsError, match="TTL -1 is out of range"):
        updater.replace("db01", "A", "10.0.0.1", -1)
    broken = tmp_path / "broken.zone"
    broken.write_text("$ORIGIN corp.test.\nthis is not a zone\n")
    with pytest.raises(DnsError, match=r"cannot be read as zone corp\.test"):
        zonefile(broken).get("db01", "A")


def test_concurrent_replacements_all_land(tmp_path: Path) -> None:
    """Two updaters (as two processes would have) and eight threads: every change and serial bump lands."""
    path = tmp_path / "corp.test.zone"
    updaters = [zonefile(path), zonefile(path)]
    updaters[0].replace("seed", "A", "10.0.0.1", 60)
    threads = [
        threading.Thread(target=updaters[i % 2].replace, args=(f"host{i}", "A", f"10.2.0.{i}", 60))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(updaters[0].get(f"host{i}", "A") == [(f"10.2.0.{i}", 60)] for i in range(8))
    assert serial(path) == 2 + 8
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_windows_dns_is_not_part_of_this_build() -> None:
    config = WindowsDns(type="windows", host="dc01", user="u", password="p", zone="corp.test")
    with pytest.raises(DnsUnavailable, match="added by the Hyper-V provider issue"):
        open_dns(config)


# ---------------------------------------------------------------- RFC 2136 against BIND


def rfc2136(server: BindServer, **overrides: Any) -> Rfc2136Updater:
    tsig = {"name": server.key_name, "algorithm": server.algorithm, "secret": server.secret}
    tsig.update(overrides.pop("tsig", {}))
    config = {
        "type": "rfc2136",
        "server": server.host,
        "port": server.port,
        "zone": "corp.test",
        "tsig": tsig,
        "timeout": 3,
        **overrides,
    }
    updater = open_dns(Rfc2136Dns.model_validate(config))
    assert isinstance(updater, Rfc2136Updater)
    return updater


def test_rfc2136_replace_and_restore(bind_server: BindServer) -> None:  # noqa: F811 - fixture
    updater = rfc2136(bind_server)
    assert updater.get("db01", "A") == [("10.0.0.12", 300)]
    previous = updater.replace("db01", "A", "10.1.0.12", 60)
    assert previous == [("10.0.0.12", 300)]
    assert updater.get("db01", "A") == [("10.1.0.12", 60)]
    updater.restore("db01", "A", previous)
    assert updater.get("db01", "A") == [("10.0.0.12", 300)]
    assert updater.replace("web01", "A", "10.1.0.11", 60) == []
    updater.restore("web01", "A", [])
    assert updater.get("web01", "A") == []
    updater.replace("www", "CNAME", "web01", 60)
    assert updater.get("www", "CNAME") == [("web01.corp.test.", 60)]
    with pytest.raises(DnsError, match="www already has CNAME records"):
        updater.replace("www", "A", "10.1.0.11", 60)
    updater.delete("www", "CNAME")


def test_rfc2136_errors_are_actionable_and_never_show_the_secret(bind_server: BindServer) -> None:  # noqa: F811
    wrong_secret = "c2VjcmV0LXRoYXQtaXMtd3JvbmctYnV0LWJhc2U2NC0hIQ=="
    cases = [
        (
            rfc2136(bind_server, tsig={"name": "otherkey"}),
            re.escape("does not know TSIG key otherkey (BADKEY)"),
        ),
        (
            rfc2136(bind_server, tsig={"secret": wrong_secret}),
            re.escape("rejected the signature of TSIG key migkey (BADSIG)"),
        ),
        (
            rfc2136(bind_server, zone="locked.test"),
            r"refused replace db01 A in zone locked.test; allow it "
            r"with allow-update \{ key migkey; \}",
        ),
    ]
    for updater, message in cases:
        with pytest.raises(DnsError, match=message) as caught:
            updater.replace("db01", "A", "10.9.9.9", 60)
        assert bind_server.secret not in str(caught.value) and wrong_secret not in str(caught.value)
    with pytest.raises(DnsError, match=r"not authoritative for zone other.test .*\(NOTAUTH\)"):
        rfc2136(bind_server, zone="other.test").delete("db01", "A")
    unsigned = open_dns(
        Rfc2136Dns.model_validate(
            {"type": "rfc2136", "server": bind_server.host, "port": bind_server.port, "zone": "corp.test"}
        )
    )
    with pytest.raises(DnsError, match="REFUSED"):
        unsigned.delete("db01", "A")
    assert rfc2136(bind_server).get("db01", "A") == [("10.0.0.12", 300)]  # none of that changed anything


def test_rfc2136_unreachable_server_is_transient(bind_server: BindServer) -> None:  # noqa: F811
    closed = rfc2136(bind_server, port=1)
    with pytest.raises(TransientDnsError, match=re.escape("cannot reach DNS server 127.0.0.1:1")):
        closed.get("db01", "A")


def test_rfc2136_secret_must_be_base64() -> None:
    config = {
        "type": "rfc2136",
        "server": "127.0.0.1",
        "zone": "corp.test",
        "tsig": {"name": "k", "secret": "not base64 at all!"},
    }
    with pytest.raises(DnsError, match="not valid base64") as caught:
        open_dns(Rfc2136Dns.model_validate(config))
    assert "not base64 at all" not in str(caught.value)
