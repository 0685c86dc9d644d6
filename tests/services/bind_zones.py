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

import base64
import os
from collections.abc import Iterator

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest

from tests.services.bind import BindServer, _free_port, _named, running_named

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


def _serving(port: int) -> bool:
    try:
        dns.query.tcp(dns.message.make_query("corp.test.", "SOA"), "127.0.0.1", port=port, timeout=0.5)
    except Exception:  # not up yet, whatever the reason
        return False
    return True


def serial(server: BindServer, zone: str) -> int:
    answer = dns.query.tcp(
        dns.message.make_query(f"{zone}.", "SOA"), server.host, port=server.port, timeout=3
    )
    return answer.find_rrset(answer.answer, dns.name.from_text(f"{zone}."), "IN", dns.rdatatype.SOA)[0].serial


@pytest.fixture
def bind_zones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindServer]:
    named = _named()
    if named is None:
        pytest.skip("named is not installed (Debian package bind9)")
    directory = tmp_path_factory.mktemp("bind-zones")
    secret = base64.b64encode(os.urandom(32)).decode()
    other = base64.b64encode(os.urandom(32)).decode()
    server = BindServer("127.0.0.1", _free_port(), "migkey", "hmac-sha256", secret, directory)
    zones = []
    for zone, (records, rule) in ZONES.items():
        (directory / f"{zone}.zone").write_text(f"$ORIGIN {zone}.\n{SOA}{records}")
        zones.append(f'zone "{zone}" {{ type primary; file "{directory}/{zone}.zone"; {rule} }};')
    (directory / "named.conf").write_text(
        f'key "migkey" {{ algorithm hmac-sha256; secret "{secret}"; }};\n'
        f'key "otherkey" {{ algorithm hmac-sha256; secret "{other}"; }};\n'
        f"""options {{
    directory "{directory}";
    listen-on port {server.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    managed-keys-directory "{directory}";
    recursion no;
    dnssec-validation no;
}};
controls {{ }};
""" + "\n".join(zones) + "\n"
    )
    with running_named(directory, lambda: _serving(server.port)):
        yield server


def other_key_secret(server: BindServer) -> str:
    """The secret of ``otherkey``, read back from the configuration (a valid key that may update nothing)."""
    text = (server.directory / "named.conf").read_text()
    return text.split('key "otherkey"', 1)[1].split('secret "', 1)[1].split('"', 1)[0]
