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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ZONE = """\
$ORIGIN {zone}.
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


def _answers(port: int) -> bool:
    import dns.message
    import dns.query

    try:
        dns.query.tcp(dns.message.make_query("corp.test.", "SOA"), "127.0.0.1", port=port, timeout=0.5)
    except Exception:  # not up yet, whatever the reason
        return False
    return True


@pytest.fixture(scope="module")
def bind_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindServer]:
    named = _named()
    if named is None:
        pytest.skip("named is not installed (Debian package bind9)")
    directory = tmp_path_factory.mktemp("bind")
    secret = base64.b64encode(os.urandom(32)).decode()
    key = BindServer("127.0.0.1", _free_port(), "migkey", "hmac-sha256", secret, directory)
    for zone in ("corp.test", "locked.test"):
        (directory / f"{zone}.zone").write_text(ZONE.format(zone=zone))
    (directory / "named.conf").write_text(f"""
key "{key.key_name}" {{ algorithm {key.algorithm}; secret "{secret}"; }};
options {{
    directory "{directory}";
    listen-on port {key.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    managed-keys-directory "{directory}";
    recursion no;
    dnssec-validation no;
}};
controls {{ }};
zone "corp.test" {{
    type primary; file "{directory}/corp.test.zone"; allow-update {{ key "{key.key_name}"; }};
}};
zone "locked.test" {{ type primary; file "{directory}/locked.test.zone"; }};
""")
    with running_named(directory, lambda: _answers(key.port)):
        yield key


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
