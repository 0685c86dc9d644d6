"""A real BIND 9 on 127.0.0.1 and a free high port, with a TSIG key allowed to update one zone.

``bind_server`` skips the test when named (Debian package ``bind9``) is not installed. It serves:
``corp.test`` (updates allowed with the key), ``locked.test`` (no updates allowed) and nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ZONE = """\
@ 3600 IN SOA ns1 hostmaster 1 3600 600 604800 60
@ 3600 IN NS ns1
ns1 3600 IN A 127.0.0.1
db01 300 IN A 10.0.0.12
"""


@dataclass(frozen=True)
class BindServer:
    host: str
    port: int
    key_name: str
    algorithm: str
    secret: str
    directory: Path

    def log(self) -> str:
        return (self.directory / "named.log").read_text(errors="replace")


def _named() -> str | None:
    return shutil.which("named") or next(
        (p for p in ("/usr/sbin/named", "/sbin/named") if Path(p).exists()), None
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(port: int, zone: str) -> bool:
    import dns.message
    import dns.query

    try:
        dns.query.tcp(dns.message.make_query(f"{zone}.", "SOA"), "127.0.0.1", port=port, timeout=0.5)
    except Exception:  # not up yet, whatever the reason
        return False
    return True


@pytest.fixture(scope="module")
def bind_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindServer]:
    rule = 'allow-update { key "migkey"; };'
    zones = {"corp.test": (ZONE, rule), "locked.test": (ZONE, "")}
    with started_bind(tmp_path_factory.mktemp("bind"), zones) as server:
        yield server


@contextlib.contextmanager
def started_bind(
    directory: Path, zones: Mapping[str, tuple[str, str]], other_keys: Sequence[str] = ()
) -> Iterator[BindServer]:
    """named on 127.0.0.1 and a free port until the block ends, serving ``zones`` (name -> (its records,
    SOA first, after ``$ORIGIN``; its update rule)), with TSIG key ``migkey`` (hmac-sha256) and each of
    ``other_keys`` with a secret of its own. Skips the test when named is not installed."""
    if _named() is None:
        pytest.skip("named is not installed (Debian package bind9)")
    server = BindServer(
        "127.0.0.1",
        _free_port(),
        "migkey",
        "hmac-sha256",
        base64.b64encode(os.urandom(32)).decode(),
        directory,
    )
    keys = {server.key_name: server.secret} | {
        k: base64.b64encode(os.urandom(32)).decode() for k in other_keys
    }
    stanzas = [
        f'key "{name}" {{ algorithm hmac-sha256; secret "{secret}"; }};' for name, secret in keys.items()
    ]
    stanzas.append(f"""options {{
    directory "{directory}";
    listen-on port {server.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    managed-keys-directory "{directory}";
    recursion no;
    dnssec-validation no;
}};
controls {{ }};""")
    for zone, (records, rule) in zones.items():
        (directory / f"{zone}.zone").write_text(f"$ORIGIN {zone}.\n{records}")
        stanzas.append(f'zone "{zone}" {{ type primary; file "{directory}/{zone}.zone"; {rule} }};')
    (directory / "named.conf").write_text("\n".join(stanzas) + "\n")
    with running_named(directory, lambda: _answers(server.port, next(iter(zones)))):
        yield server


def ask(server: BindServer, name: str, rtype: str) -> list[tuple[str, int]]:
    """(value, ttl) of every record of ``name`` and ``rtype``, as the server answers now."""
    import dns.message
    import dns.name
    import dns.query
    import dns.rdatatype

    response = dns.query.tcp(dns.message.make_query(name, rtype), server.host, port=server.port, timeout=3)
    found = response.get_rrset(
        response.answer, dns.name.from_text(name), "IN", dns.rdatatype.from_text(rtype)
    )
    return sorted((r.to_text(), found.ttl) for r in found) if found else []


@contextlib.contextmanager
def running_named(directory: Path, ready: Callable[[], bool]) -> Iterator[None]:
    """Run named on ``directory``/named.conf until the block ends; ``ready()`` says it serves."""
    named = _named()
    assert named is not None, "callers skip first when bind9 is missing"
    log_path = directory / "named.log"
    user = ["-u", "root"] if os.geteuid() == 0 else []
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [named, "-g", "-c", str(directory / "named.conf"), *user], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        for _ in range(100):
            if process.poll() is not None:
                log = log_path.read_text(errors="replace")
                pytest.fail(f"named exited with {process.returncode}:\n{log}")
            if ready():
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"named did not answer:\n{log_path.read_text(errors='replace')}")
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
