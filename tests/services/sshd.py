"""A real OpenSSH server on 127.0.0.1 and a free high port, with its own host key and one authorized key.

``running_sshd`` starts one (the benchmarks use it directly); the ``sshd_server`` fixture wraps it and
skips the test when /usr/sbin/sshd (Debian package ``openssh-server``) is missing. It logs in the user
running the tests (root in CI) with a generated ed25519 key; ``known_hosts`` lists the host key under
``[127.0.0.1]:PORT`` and ``fingerprint`` is its ``SHA256:`` form, as ``ssh-keygen -lf`` shows.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    client_key: Path  # private key that may log in
    known_hosts: Path  # holds this server's host key
    fingerprint: str  # SHA256:... of the host key
    directory: Path

    def log(self) -> str:
        return (self.directory / "sshd.log").read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hvmigrate-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def _fingerprint(public_line: str) -> str:
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            return conn.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def missing_tools() -> list[str]:
    """What is missing to run a server here, as Debian package hints (empty: everything is there)."""
    missing = []
    if not Path(SSHD).exists():
        missing.append(f"sshd (Debian package openssh-server): {SSHD} is missing")
    if shutil.which("ssh-keygen") is None:
        missing.append("ssh-keygen (Debian package openssh-client) is missing")
    return missing


@contextlib.contextmanager
def running_sshd(directory: Path) -> Iterator[SshServer]:
    """Start sshd with keys and config in ``directory`` (created, mode 0700), stop it on exit.

    Not a fixture, so the benchmarks start the very same server the tests use.
    """
    if missing := missing_tools():
        raise RuntimeError("cannot start sshd: " + "; ".join(missing))
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # sshd's StrictModes-like checks on key files
    host_public = _keygen(directory / "host_ed25519")
    client_public = _keygen(directory / "client_ed25519")
    (directory / "authorized_keys").write_text(client_public + "\n")
    os.chmod(directory / "authorized_keys", 0o600)
    port = _free_port()
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {' '.join(host_public.split()[:2])}\n")
    (directory / "sshd_config").write_text(
        f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {directory / "host_ed25519"}
PidFile {directory / "sshd.pid"}
AuthorizedKeysFile {directory / "authorized_keys"}
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
Subsystem sftp internal-sftp
"""
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    log = open(directory / "sshd.log", "wb")  # noqa: SIM115 - stays open while sshd runs
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(directory / "sshd_config")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            log.close()
            raise RuntimeError(f"sshd did not start:\n{(directory / 'sshd.log').read_text()}")
        time.sleep(0.05)
    try:
        yield SshServer(
            host="127.0.0.1",
            port=port,
            user=getpass.getuser(),
            client_key=directory / "client_ed25519",
            known_hosts=known_hosts,
            fingerprint=_fingerprint(host_public),
            directory=directory,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    if missing := missing_tools():
        pytest.skip("; ".join(missing))
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server
