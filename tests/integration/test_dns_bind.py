"""DNS against a real BIND 9: A + PTR moves and their undo, the pre-cutover key check, the post-check.

The steps run under the real executor and journal, so what undo restores is what the journal kept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import networkx as nx
import pytest

from orchestrator.dns import (
    Change,
    DnsError,
    Expected,
    Rfc2136Updater,
    check_access,
    move_record,
    open_dns,
    touched_rrsets,
    undo_change,
    wait_until_answered,
)
from orchestrator.executor import Executor
from orchestrator.journal import Journal
from orchestrator.planner import Plan, node_hash
from orchestrator.playbook.models import Playbook, Rfc2136Dns
from orchestrator.steps.base import StepNode
from tests.services.bind import BindServer
from tests.services.bind_zones import bind_zones, other_key_secret, serial  # noqa: F401 - the fixture

WRONG_SECRET = "c2VjcmV0LXRoYXQtaXMtd3JvbmctYnV0LWJhc2U2NC0hIQ=="


def settings(server: BindServer, **overrides: Any) -> dict[str, Any]:
    """The playbook's dns entry for the fixture's server, as YAML would give it."""
    tsig = {"name": server.key_name, "algorithm": server.algorithm, "secret": server.secret}
    tsig.update(overrides.pop("tsig", {}))
    return {
        "type": "rfc2136",
        "server": server.host,
        "port": server.port,
        "zone": "corp.test",
        "tsig": tsig,
        "timeout": 3,
        "reverse_zones": ["10.in-addr.arpa", "20.in-addr.arpa"],
        **overrides,
    }


def config(server: BindServer, **overrides: Any) -> Rfc2136Dns:
    return Rfc2136Dns.model_validate(settings(server, **overrides))


def ask(server: BindServer, name: str, rtype: str) -> list[tuple[str, int]]:
    """What BIND answers, unsigned: (value, ttl) pairs, empty for NXDOMAIN or no data."""
    query = dns.message.make_query(name, rtype)
    response = dns.query.tcp(query, server.host, port=server.port, timeout=3)
    found = response.get_rrset(
        response.answer, dns.name.from_text(name), "IN", dns.rdatatype.from_text(rtype)
    )
    return sorted((r.to_text(), found.ttl) for r in found) if found else []


def everything(server: BindServer) -> dict[str, list[tuple[str, int]]]:
    return {
        "A": ask(server, "db01.corp.test.", "A"),
        "new PTR": ask(server, "12.0.1.10.in-addr.arpa.", "PTR"),
        "old PTR": ask(server, "12.0.0.10.in-addr.arpa.", "PTR"),
        "printer PTR": ask(server, "99.0.0.10.in-addr.arpa.", "PTR"),
    }


INITIAL = {
    "A": [("10.0.0.12", 300)],
    "new PTR": [],
    "old PTR": [("db01.corp.test.", 300)],
    "printer PTR": [("printer.corp.test.", 300)],
}


# ---------------------------------------------------------------- the steps, under the real executor


def playbook(dns_settings: dict[str, Any], records: list[dict[str, Any]]) -> Playbook:
    return Playbook.model_validate(
        {
            "apiVersion": "hvmigrate/v1",
            "kind": "MigrationPlaybook",
            "name": "dns",
            "defaults": {"limits": {"retry_backoff": 0.01, "retries": 0}},
            "providers": {"local": {"type": "sim", "root": "/nonexistent"}},
            "dns": {"corp": dns_settings},
            "servers": [
                {
                    "name": "db01",
                    "source": {"type": "image", "path": "/nonexistent/db01.raw"},
                    "target": {"provider": "local"},
                    "dns_records": records,
                }
            ],
        }
    )


def executor(pb: Playbook, state: Path) -> Executor:
    graph = nx.DiGraph()
    for kind in ("check_dns", "update_dns"):
        graph.add_node(
            f"db01/{kind}", step=StepNode(id=f"db01/{kind}", kind=kind, server="db01", phase="cutover")
        )
    graph.add_edge("db01/check_dns", "db01/update_dns")
    plan = Plan(graph=graph, playbook_name="dns", playbook_sha256="x", servers=["db01"])
    journal = Journal(state)
    journal.adopt_plan(
        {"plan_hash": plan.hash, "playbook_sha256": "x"},
        {s.id: (s.server, s.kind, node_hash(s)) for s in plan.steps()},
    )
    return Executor(plan, pb, journal, state_dir=state, base_dir=state)


def test_update_dns_moves_a_and_ptr_and_undo_restores_both_exactly(
    bind_zones: BindServer,  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    assert everything(bind_zones) == INITIAL
    pb = playbook(
        settings(bind_zones), [{"provider": "corp", "name": "db01", "value": "10.1.0.12", "ttl": 60}]
    )
    x = executor(pb, tmp_path)
    result = x.run({"db01/check_dns", "db01/update_dns"}, command="cutover")
    assert result.status == "done", result.failed
    assert everything(bind_zones) == {
        "A": [("10.1.0.12", 60)],
        "new PTR": [("db01.corp.test.", 60)],
        "old PTR": [],  # it named db01, whose address this no longer is
        "printer PTR": [("printer.corp.test.", 300)],  # someone else's: untouched
    }
    journaled = [
        (r.ref["zone"], r.ref["name"], r.ref["type"]) for r in x.journal.resources("db01/update_dns")
    ]
    assert journaled == [
        ("corp.test", "db01.corp.test.", "A"),
        ("10.in-addr.arpa", "12.0.1.10.in-addr.arpa.", "PTR"),
        ("10.in-addr.arpa", "12.0.0.10.in-addr.arpa.", "PTR"),
    ]
    undone, errors = x.undo(["db01/update_dns"])
    assert undone == ["db01/update_dns"] and not errors
    assert everything(bind_zones) == INITIAL  # values and TTLs
    assert x.journal.resources() == []


def test_check_dns_passes_with_the_right_key_and_changes_nothing(
    bind_zones: BindServer,  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    before = {zone: serial(bind_zones, zone) for zone in ("corp.test", "10.in-addr.arpa")}
    pb = playbook(
        settings(bind_zones),
        [
            {"provider": "corp", "name": "db01", "value": "10.1.0.12", "ttl": 60},
            {"provider": "corp", "name": "www", "type": "CNAME", "value": "db01", "ttl": 60},
        ],
    )
    x = executor(pb, tmp_path)
    result = x.run({"db01/check_dns"}, command="cutover")
    assert result.status == "done", result.failed
    output = x.journal.output("db01/check_dns")
    assert output is not None
    assert {c["zone"]: len(c["rrsets"]) for c in output["checked"]} == {"corp.test": 2, "10.in-addr.arpa": 2}
    assert everything(bind_zones) == INITIAL
    assert {zone: serial(bind_zones, zone) for zone in before} == before  # not even the serial moved
    assert "deleting an RR at db01.corp.test A" in bind_zones.log()  # the server did judge an update


@pytest.mark.parametrize(
    ("tsig", "zone", "expected"),
    [
        ({"secret": WRONG_SECRET}, "corp.test", r"rejected the signature of TSIG key migkey \(BADSIG\)"),
        ({"name": "nokey"}, "corp.test", r"does not know TSIG key nokey \(BADKEY\)"),
        ({}, "locked.test", r"refused a test update that changes nothing in zone locked.test.*\(REFUSED\)"),
        ({}, "other.test", r"it does not serve zone other.test .*\(REFUSED\)"),
    ],
    ids=["wrong-secret", "unknown-key", "zone-without-updates", "zone-not-served"],
)
def test_check_dns_fails_naming_key_and_zone_and_says_nothing_stopped(
    bind_zones: BindServer,  # noqa: F811 - fixture
    tmp_path: Path,
    tsig: dict[str, str],
    zone: str,
    expected: str,
) -> None:
    pb = playbook(
        settings(bind_zones, tsig=tsig, zone=zone),
        [{"provider": "corp", "name": "db01", "value": "10.1.0.12"}],
    )
    x = executor(pb, tmp_path)
    result = x.run({"db01/check_dns", "db01/update_dns"}, command="cutover")
    assert result.status == "failed"
    message = result.failed["db01/check_dns"]
    assert re.search(expected, message), message
    key = tsig.get("name", "migkey")
    assert f"DNS check failed for zone {zone} with TSIG key {key}" in message
    assert "Nothing was stopped" in message and "the source still runs" in message
    assert bind_zones.secret not in message and WRONG_SECRET not in message
    assert x.journal.states()["db01/update_dns"] == "pending"  # the update never ran
    assert everything(bind_zones) == INITIAL


def test_check_covers_update_policy_grants_and_reverse_zones(bind_zones: BindServer) -> None:  # noqa: F811
    """A key that may sign but not change this name or this PTR is refused by the check, not at cutover."""
    policy = config(bind_zones, zone="policy.test")
    check_access(policy, touched_rrsets(policy, "db01", "A", "10.1.0.12", False))  # granted: A records
    with pytest.raises(DnsError, match=r"refused a test update .* zone policy.test.*\(REFUSED\)"):
        check_access(policy, touched_rrsets(policy, "www", "CNAME", "db01.policy.test.", None))
    forward = config(bind_zones)
    touched = touched_rrsets(forward, "db01", "A", "20.0.0.5", None)
    assert touched == {
        "corp.test": [("db01", "A")],
        "20.in-addr.arpa": [("5.0.0.20.in-addr.arpa.", "PTR")],
        "10.in-addr.arpa": [("12.0.0.10.in-addr.arpa.", "PTR")],  # the old address's PTR goes too
    }
    with pytest.raises(DnsError, match=r"zone 20.in-addr.arpa.*\(REFUSED\)"):
        check_access(forward, touched)
    other = config(bind_zones, tsig={"name": "otherkey", "secret": other_key_secret(bind_zones)})
    with pytest.raises(DnsError, match=r"zone corp.test; allow it with allow-update \{ key otherkey; \}"):
        check_access(other, touched_rrsets(other, "db01", "A", "10.1.0.12", None))
    assert everything(bind_zones) == INITIAL


def test_ptr_true_without_a_reverse_zone_is_refused_before_anything_changes(
    bind_zones: BindServer,  # noqa: F811 - fixture
) -> None:
    no_reverse = config(bind_zones, reverse_zones=[])
    with pytest.raises(DnsError, match=r"no reverse zone .* holds 10.1.0.12 .*such as 0.1.10.in-addr.arpa"):
        touched_rrsets(no_reverse, "db01", "A", "10.1.0.12", True)
    assert touched_rrsets(no_reverse, "db01", "A", "10.1.0.12", None) == {"corp.test": [("db01", "A")]}


# ---------------------------------------------------------------- a retried move, and the post-check


def test_a_move_that_died_half_way_and_ran_again_undoes_to_the_original(
    bind_zones: BindServer,  # noqa: F811 - fixture
) -> None:
    corp = config(bind_zones)
    journal: list[Change] = []

    def dies_before_the_ptr(change: Change) -> None:
        if change.type == "PTR":
            raise RuntimeError("killed")
        journal.append(change)

    with pytest.raises(RuntimeError):
        move_record(corp, "db01", "A", "10.1.0.12", 60, journal=dies_before_the_ptr)
    assert ask(bind_zones, "db01.corp.test.", "A") == [("10.1.0.12", 60)]
    # The rerun reads the new address back from the server; the journal says what was there first.
    expected = move_record(
        corp, "db01", "A", "10.1.0.12", 60, before=journal[0].previous, journal=journal.append
    )
    assert everything(bind_zones)["old PTR"] == []  # found through the first attempt's record
    wait_until_answered(corp, expected, timeout=5)
    for change in reversed(journal):
        undo_change(corp, change)
    assert everything(bind_zones) == INITIAL


def test_post_check_reports_a_record_that_did_not_change(bind_zones: BindServer) -> None:  # noqa: F811
    corp = config(bind_zones)
    expected = move_record(corp, "db01", "A", "10.1.0.12", 60, journal=lambda change: None)
    wait_until_answered(corp, expected, timeout=5)
    # Something else (a DHCP server re-registering the old lease) puts the old address back.
    open_dns(corp).replace("db01", "A", "10.0.0.12", 300)
    with pytest.raises(DnsError) as caught:
        wait_until_answered(corp, expected, timeout=1.5)
    message = str(caught.value)
    assert f"DNS server 127.0.0.1:{bind_zones.port} still does not answer with the new records" in message
    assert "db01.corp.test. A is 10.0.0.12 (expected 10.1.0.12)" in message
    missing = [Expected("corp.test", "web01.corp.test.", "A", "10.1.0.11")]
    with pytest.raises(DnsError, match=r"web01.corp.test. A is NXDOMAIN \(expected 10.1.0.11\)"):
        wait_until_answered(corp, missing, timeout=0)


def test_answers_come_from_the_server_without_recursion(bind_zones: BindServer) -> None:  # noqa: F811
    updater = open_dns(config(bind_zones))
    assert isinstance(updater, Rfc2136Updater)
    assert updater.answers("db01", "A") == ["10.0.0.12"]
    assert updater.answers("ns1", "AAAA") == []  # the name exists, without that type
    assert updater.answers("nothing", "A") == "NXDOMAIN"
    reason = open_dns(config(bind_zones, port=1, timeout=1)).answers("db01", "A")
    assert reason == "no answer within 1s"  # why there is no answer, not a crash
