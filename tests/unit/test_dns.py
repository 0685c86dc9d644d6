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
from pydantic import ValidationError

from orchestrator.dns import (
    Change,
    DnsError,
    DnsUpdater,
    Rfc2136Updater,
    TransientDnsError,
    ZonefileUpdater,
    check_access,
    move_record,
    open_dns,
    reverse_name,
    reverse_zone_for,
    touched_rrsets,
    undo_change,
    wait_until_answered,
)
from orchestrator.playbook.models import DnsRecord, Rfc2136Dns, WindowsDns, ZonefileDns
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


REVERSE = """\
$ORIGIN 10.in-addr.arpa.
$TTL 3600
@         IN SOA ns1.corp.test. hostmaster.corp.test. ( 7 3600 600 604800 60 )
          IN NS  ns1.corp.test.
12.0.0    300 IN PTR db01.corp.test.
13.0.0    300 IN PTR db01.corp.test.
13.0.0    300 IN PTR db01-alias.corp.test.
99.0.0    300 IN PTR printer.corp.test.
"""


def with_reverse(tmp_path: Path, **fields: Any) -> ZonefileDns:
    (tmp_path / "corp.test.zone").write_text(HAND_WRITTEN)
    (tmp_path / "10.in-addr.arpa.zone").write_text(REVERSE)
    return ZonefileDns(
        type="zonefile",
        path=tmp_path / "corp.test.zone",
        zone="corp.test",
        reverse_zones=fields.pop("reverse_zones", ["10.in-addr.arpa"]),
    )


def ptrs(config: ZonefileDns, address: str) -> list[tuple[str, int]]:
    return sorted(
        open_dns(config, zone=reverse_zone_for(address, config.reverse_zones)).get(
            reverse_name(address), "PTR"
        )
    )


def test_zonefile_moves_the_ptr_with_the_address_and_undo_restores_every_record(tmp_path: Path) -> None:
    config = with_reverse(tmp_path)
    before = {a: ptrs(config, a) for a in ("10.0.0.12", "10.0.0.13", "10.1.0.12", "10.0.0.99")}
    journal: list[Change] = []
    expected = move_record(config, "db01", "A", "10.1.0.12", 60, journal=journal.append)
    assert [(c.zone, c.name, c.type) for c in journal] == [
        ("corp.test", "db01.corp.test.", "A"),
        ("10.in-addr.arpa", "12.0.1.10.in-addr.arpa.", "PTR"),
        ("10.in-addr.arpa", "12.0.0.10.in-addr.arpa.", "PTR"),
        ("10.in-addr.arpa", "13.0.0.10.in-addr.arpa.", "PTR"),
    ]
    assert ptrs(config, "10.1.0.12") == [("db01.corp.test.", 60)]
    assert ptrs(config, "10.0.0.12") == []  # named only db01: gone
    assert ptrs(config, "10.0.0.13") == [("db01-alias.corp.test.", 300)]  # the other name stays
    assert ptrs(config, "10.0.0.99") == before["10.0.0.99"]
    wait_until_answered(config, expected, timeout=0)  # the file is the answer
    checkzone(tmp_path / "corp.test.zone")
    if shutil.which("named-checkzone"):
        reverse = tmp_path / "10.in-addr.arpa.zone"
        done = subprocess.run(
            ["named-checkzone", "10.in-addr.arpa", str(reverse)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
    for change in reversed(journal):
        undo_change(config, Change.from_json(change.to_json()))  # as the journal would give it back
    assert {a: ptrs(config, a) for a in before} == before
    assert sorted(zonefile(tmp_path / "corp.test.zone").get("db01", "A")) == [
        ("10.0.0.12", 300),
        ("10.0.0.13", 300),
    ]


def test_ptr_false_and_cnames_leave_reverse_zones_alone(tmp_path: Path) -> None:
    config = with_reverse(tmp_path)
    journal: list[Change] = []
    move_record(config, "db01", "A", "10.1.0.12", 60, ptr=False, journal=journal.append)
    move_record(config, "www", "CNAME", "db01", 60, journal=journal.append)
    assert {c.zone for c in journal} == {"corp.test"}
    assert (tmp_path / "10.in-addr.arpa.zone").read_text() == REVERSE


def test_a_missing_reverse_zone_file_is_created_beside_the_forward_zone(tmp_path: Path) -> None:
    config = ZonefileDns(
        type="zonefile",
        path=tmp_path / "corp.test.zone",
        zone="corp.test",
        reverse_zones=["1.10.in-addr.arpa"],
    )
    move_record(config, "web01", "A", "10.1.0.11", 60, journal=lambda change: None)
    reverse = tmp_path / "1.10.in-addr.arpa.zone"
    zone = dns.zone.from_file(str(reverse), origin="1.10.in-addr.arpa.", relativize=False)
    assert zone.get_rdataset("11.0.1.10.in-addr.arpa.", "PTR")[0].to_text() == "web01.corp.test."
    assert zone.get_rdataset("1.10.in-addr.arpa.", "NS")[0].to_text() == "ns1.corp.test."


def test_aaaa_records_move_their_ip6_arpa_ptr(tmp_path: Path) -> None:
    zone = "8.b.d.0.1.0.0.2.ip6.arpa"
    config = ZonefileDns(
        type="zonefile", path=tmp_path / "corp.test.zone", zone="corp.test", reverse_zones=[zone]
    )
    move_record(config, "db01", "AAAA", "2001:db8::12", 60, journal=lambda change: None)
    journal: list[Change] = []
    expected = move_record(config, "db01", "AAAA", "2001:DB8:1::12", 60, journal=journal.append)
    wait_until_answered(config, expected, timeout=0)
    reverse = open_dns(config, zone=zone)
    assert reverse.get(reverse_name("2001:db8:1::12"), "PTR") == [("db01.corp.test.", 60)]
    assert reverse.get(reverse_name("2001:db8::12"), "PTR") == []
    for change in reversed(journal):
        undo_change(config, change)
    assert reverse.get(reverse_name("2001:db8::12"), "PTR") == [("db01.corp.test.", 60)]
    assert reverse.get(reverse_name("2001:db8:1::12"), "PTR") == []


def test_zonefile_check_finds_an_unwritable_folder_and_a_broken_file(tmp_path: Path) -> None:
    config = with_reverse(tmp_path)
    check_access(config, touched_rrsets(config, "db01", "A", "10.1.0.12", None))  # writes nothing
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "10.in-addr.arpa.zone",
        "corp.test.zone",
    ]
    (tmp_path / "not-a-folder").write_text("")
    blocked = ZonefileDns(
        type="zonefile", path=tmp_path / "not-a-folder" / "corp.test.zone", zone="corp.test"
    )
    with pytest.raises(DnsError, match=r"cannot be rewritten: Not a directory .*give this user write access"):
        check_access(blocked, {"corp.test": [("db01", "A")]})
    (tmp_path / "10.in-addr.arpa.zone").write_text("$ORIGIN 10.in-addr.arpa.\nnot a zone\n")
    with pytest.raises(DnsError, match=r"cannot be read as zone 10.in-addr.arpa"):
        check_access(config, touched_rrsets(config, "db01", "A", "10.1.0.12", None))


def test_reverse_zone_choice_and_ptr_settings() -> None:
    zones = ["10.in-addr.arpa", "1.10.in-addr.arpa", "8.b.d.0.1.0.0.2.ip6.arpa"]
    assert reverse_zone_for("10.1.0.12", zones) == "1.10.in-addr.arpa"  # the most specific
    assert reverse_zone_for("10.2.0.12", zones) == "10.in-addr.arpa"
    assert reverse_zone_for("2001:db8::5", zones) == "8.b.d.0.1.0.0.2.ip6.arpa"
    assert reverse_zone_for("192.0.2.1", zones) is None
    with pytest.raises(DnsError, match="not an IP address"):
        reverse_name("db01")
    with pytest.raises(ValidationError, match="ptr: true needs an A or AAAA record"):
        DnsRecord(provider="corp", name="www", type="CNAME", value="db01", ptr=True)
    with pytest.raises(ValidationError, match=r"'corp\.test' is not a reverse zone"):
        ZonefileDns(type="zonefile", path=Path("z"), zone="corp.test", reverse_zones=["corp.test"])
    config = Rfc2136Dns(type="rfc2136", server="ns", zone="corp.test", reverse_zones=["1.10.IN-ADDR.ARPA."])
    assert config.reverse_zones == ["1.10.in-addr.arpa"]


def test_windows_dns_opens_without_connecting_and_hides_its_password() -> None:
    """The updater itself is tested over WinRM in tests/integration/test_windows_dns.py."""
    config = WindowsDns(type="windows", host="dc01", user="u", password="p4ss", zone="corp.test")
    updater = open_dns(config)
    assert updater.zone == "corp.test" and updater.where == "Windows DNS server dc01"
    assert "p4ss" not in repr(updater)


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
