"""A real BIND 9 with forward and reverse zones, each with its own update rule, fresh for every test.

``bind_zones`` skips the test when named (Debian package ``bind9``) is not installed; it starts in well
under a second, so each test gets zones in their initial state. It serves, with TSIG key ``migkey``:

- ``corp.test``: updates allowed with the key (allow-update); db01 A 10.0.0.12, ttl 300
- ``10.in-addr.arpa``: updates allowed with the key; 10.0.0.12 PTR db01.corp.test. and
  10.0.0.99 PTR printer.corp.test., ttl 300
- ``policy.test``: update-policy granting the key A records only (Forklift-style least privilege)
- ``20.in-addr.arpa`` and ``locked.test``: no updates at all (REFUSED)

Key ``otherkey`` exists too (same algorithm, its own secret) but may update nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest

from tests.services.bind import BindServer, started_bind

SOA = "@ 3600 IN SOA ns1.corp.test. hostmaster.corp.test. 1 3600 600 604800 60\n@ 3600 IN NS ns1.corp.test.\n"
ZONES = {
    "corp.test": ("ns1 3600 IN A 127.0.0.1\ndb01 300 IN A 10.0.0.12\n", 'allow-update { key "migkey"; };'),
    "10.in-addr.arpa": (
        "12.0.0 300 IN PTR db01.corp.test.\n99.0.0 300 IN PTR printer.corp.test.\n",
        'allow-update { key "migkey"; };',
    ),
    "policy.test": ("db01 300 IN A 10.0.0.12\n", "update-policy { grant migkey zonesub A; };"),
    "20.in-addr.arpa": ("", ""),
    "locked.test": ("db01 300 IN A 10.0.0.12\n", ""),
}


def serial(server: BindServer, zone: str) -> int:
    answer = dns.query.tcp(
        dns.message.make_query(f"{zone}.", "SOA"), server.host, port=server.port, timeout=3
    )
    return answer.find_rrset(answer.answer, dns.name.from_text(f"{zone}."), "IN", dns.rdatatype.SOA)[0].serial


@pytest.fixture
def bind_zones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindServer]:
    zones = {zone: (SOA + records, rule) for zone, (records, rule) in ZONES.items()}
    with started_bind(tmp_path_factory.mktemp("bind-zones"), zones, other_keys=["otherkey"]) as server:
        yield server


def other_key_secret(server: BindServer) -> str:
    """The secret of ``otherkey``, read back from the configuration (a valid key that may update nothing)."""
    text = (server.directory / "named.conf").read_text()
    return text.split('key "otherkey"', 1)[1].split('secret "', 1)[1].split('"', 1)[0]
