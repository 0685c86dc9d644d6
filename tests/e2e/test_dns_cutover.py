"""The quickstart with its DNS on a real BIND: a rejected TSIG key blocks the cutover before anything stops;
with the right key the names and their PTRs move, and `migrate undo` puts every record back as it was.
"""

from __future__ import annotations

import json

from tests.e2e.conftest import Migration
from tests.images import sha256
from tests.services.bind import BindServer, ask
from tests.services.bind_zones import bind_zones  # noqa: F401 - the fixture

PB = "quickstart.yaml"
WRONG_SECRET = "c2VjcmV0LXRoYXQtaXMtd3JvbmctYnV0LWJhc2U2NC0hIQ=="
SERVERS = ("db01", "web01", "app01")


def records(server: BindServer) -> dict[str, list[tuple[str, int]]]:
    return {
        "db01 A": ask(server, "db01.corp.test.", "A"),
        "web01 A": ask(server, "web01.corp.test.", "A"),
        "www CNAME": ask(server, "www.corp.test.", "CNAME"),
        "db01 PTR": ask(server, "12.0.1.10.in-addr.arpa.", "PTR"),
        "web01 PTR": ask(server, "11.0.1.10.in-addr.arpa.", "PTR"),
        "old db01 PTR": ask(server, "12.0.0.10.in-addr.arpa.", "PTR"),
    }


INITIAL = {
    "db01 A": [("10.0.0.12", 300)],
    "web01 A": [],
    "www CNAME": [],
    "db01 PTR": [],
    "web01 PTR": [],
    "old db01 PTR": [("db01.corp.test.", 300)],
}


def point_at_bind(m: Migration, server: BindServer, secret: str) -> None:
    """The quickstart's zone file becomes the BIND zone, signed with a key read from a file; a marker
    pre-script shows whether the cutover got as far as touching anything."""
    (m.root / "tsig.secret").write_text(secret)
    m.edit(
        "corp: {type: zonefile, path: ./sim-dns/corp.test.zone, zone: corp.test}",
        f"corp: {{type: rfc2136, server: {server.host}, port: {server.port}, zone: corp.test, "
        'reverse_zones: [10.in-addr.arpa], tsig: {name: migkey, secret: "${file:./tsig.secret}"}}',
    )
    m.edit(
        "cutover: {mode: manual, shutdown_source: true}",
        'cutover: {mode: manual, shutdown_source: true, pre_script: "touch pre-script-ran-$HVM_SERVER"}',
    )


def test_a_rejected_dns_key_blocks_cutover_before_anything_stops_then_the_right_one_moves_and_undo_restores(
    migration: Migration,
    bind_zones: BindServer,  # noqa: F811 - fixture
) -> None:
    m = migration
    point_at_bind(m, bind_zones, WRONG_SECRET)
    sources = {p.name: sha256(p) for p in sorted(m.images.iterdir())}
    m.run("execute", PB)

    blocked = m.run("cutover", PB, check=1)
    out = blocked.stdout + blocked.stderr
    assert "db01/check_dns" in out and "app01/check_dns" in out, out
    assert "TSIG key migkey" in out and "zone corp.test" in out and "(BADSIG)" in out, out
    assert "Nothing was stopped" in out, out
    assert WRONG_SECRET not in out and bind_zones.secret not in out
    states = {s["step_id"]: s["state"] for s in json.loads(m.run("status", PB, "--json").stdout)["steps"]}
    for server in SERVERS:
        for kind in ("run_pre_script", "quiesce_source", "final_sync", "shutdown_source", "create_replica"):
            assert states[f"{server}/{kind}"] == "pending", (server, kind, states[f"{server}/{kind}"])
        assert not (m.sim / "vms" / f"{server}.json").exists()  # no replica VM
        assert not (m.root / f"pre-script-ran-{server}").exists()
    assert states["db01/cutover_gate"] == "done" and states["db01/check_dns"] == "failed"
    assert states["app01/cutover_gate"] == "done" and states["app01/check_dns"] == "failed"
    assert {p.name: sha256(p) for p in sorted(m.images.iterdir())} == sources
    assert records(bind_zones) == INITIAL

    (m.root / "tsig.secret").write_text(bind_zones.secret)
    m.run("cutover", PB)
    assert records(bind_zones) == {
        "db01 A": [("10.1.0.12", 60)],
        "web01 A": [("10.1.0.11", 60)],
        "www CNAME": [("web01.corp.test.", 60)],
        "db01 PTR": [("db01.corp.test.", 60)],
        "web01 PTR": [("web01.corp.test.", 60)],
        "old db01 PTR": [],
    }
    assert ask(bind_zones, "13.0.1.10.in-addr.arpa.", "PTR") == [("app01.corp.test.", 60)]
    status = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["state"] for s in status["servers"]} == {"cut over"}

    undo = m.run("undo", PB, "--yes").stdout
    assert "db01/update_dns" in undo
    assert records(bind_zones) == INITIAL  # values and TTLs as they were
    assert ask(bind_zones, "app01.corp.test.", "A") == []
    assert ask(bind_zones, "13.0.1.10.in-addr.arpa.", "PTR") == []
    assert {p.name: sha256(p) for p in sorted(m.images.iterdir())} == sources
