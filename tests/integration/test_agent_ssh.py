"""Agents over a real OpenSSH server: copies through SSH exec channels, and host key checking."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from orchestrator.mirror import protocol as wire
from orchestrator.mirror.agent_session import AgentSession, discover
from orchestrator.mirror.errors import MirrorError
from orchestrator.mirror.protocol import StreamClosed
from orchestrator.mirror.remote import mirror_remote
from orchestrator.transport import HostKeyError, TransportError
from orchestrator.transport.local import LocalTransport
from orchestrator.transport.ssh import SshTransport
from tests.images import sha256
from tests.services import sshd as sshd_service
from tests.services.sshd import SshServer

sshd_server = sshd_service.sshd_server  # the fixture, by the name the tests ask for

pytestmark = pytest.mark.integration

KiB, MiB = 1024, 1024**2
CHUNK = 256 * KiB
SIZE = 8 * MiB
TEXT = (b"Jan 01 00:00:00 db01 sshd[1]: Accepted publickey for root\n" * 5000)[:CHUNK]
# The agent runs with the system's python3 over SSH (sshd's PATH), typically without xxhash: realistic.
REMOTE_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or "python3"


def ssh(server: SshServer, **overrides: object) -> SshTransport:
    options: dict[str, object] = {
        "port": server.port,
        "user": server.user,
        "key_file": server.client_key,
        "known_hosts": server.known_hosts,
        "python": REMOTE_PYTHON,
    }
    options.update(overrides)
    return SshTransport(server.host, **options)  # type: ignore[arg-type]


def make_source(path: Path) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(SIZE)
        handle.write(os.urandom(CHUNK))
        handle.seek(5 * CHUNK)
        handle.write(TEXT * 2)
        handle.seek(SIZE - 10)
        handle.write(b"last bytes")
    return path


def test_agent_over_ssh_reads_a_file_and_the_copy_is_identical(
    sshd_server: SshServer, tmp_path: Path
) -> None:
    source = make_source(tmp_path / "source.img")
    target = tmp_path / "target.img"
    transport = ssh(sshd_server)
    try:
        stats = mirror_remote(
            transport,
            str(source),
            LocalTransport(),
            str(target),
            chunk_size=CHUNK,
            mode="full",
            source_identity="db01:/dev/vda",
        )
        assert sha256(target) == sha256(source)
        assert stats.chunks_written == 4 and stats.data_frames == 4
        assert stats.wire_bytes < stats.bytes_written  # the text compressed on the way

        with open(source, "r+b") as handle:
            handle.seek(3 * CHUNK)
            handle.write(b"changed over ssh")
        again = mirror_remote(
            transport,
            str(source),
            LocalTransport(),
            str(target),
            chunk_size=CHUNK,
            mode="incremental",
            source_identity="db01:/dev/vda",
        )
        assert again.chunks_written == 1 and sha256(target) == sha256(source)
    finally:
        transport.close()


def test_both_agents_over_ssh_with_a_pinned_fingerprint(sshd_server: SshServer, tmp_path: Path) -> None:
    source = make_source(tmp_path / "source.img")
    target = tmp_path / "target.img"
    pinned = ssh(sshd_server, known_hosts=tmp_path / "empty_known_hosts", host_key=sshd_server.fingerprint)
    try:
        mirror_remote(
            pinned,
            str(source),
            pinned,
            str(target),
            chunk_size=CHUNK,
            mode="full",
            source_identity="db01:/dev/vda",
        )
        assert sha256(target) == sha256(source)
        assert pinned.server_fingerprint == sshd_server.fingerprint
    finally:
        pinned.close()


def test_unknown_host_key_is_refused_with_the_way_to_accept_it(
    sshd_server: SshServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    transport = ssh(sshd_server, known_hosts=empty)
    with pytest.raises(HostKeyError) as caught:
        transport.connect()
    message = str(caught.value)
    assert f"[127.0.0.1]:{sshd_server.port}" in message and "is not in" in message
    assert sshd_server.fingerprint in message and "ssh-keyscan" in message
    assert not caught.value.retryable
    # and through the agent: the same refusal, as a mirror error a step reports
    with pytest.raises(MirrorError, match="is not in"):
        AgentSession.start(ssh(sshd_server, known_hosts=empty))


def test_wrong_pinned_fingerprint_and_changed_host_key_are_refused(
    sshd_server: SshServer, tmp_path: Path
) -> None:
    wrong = "SHA256:" + "A" * 43
    with pytest.raises(HostKeyError, match="not the pinned"):
        ssh(sshd_server, host_key=wrong).connect()
    other_key = "AAAAC3NzaC1lZDI1NTE5AAAAIFUHBrfhxmVb6bmU6zDcMhJ/C2AHI4hXQ/9aYoP7Y5M0"
    changed = tmp_path / "known_hosts"
    changed.write_text(f"[127.0.0.1]:{sshd_server.port} ssh-ed25519 {other_key}\n")
    with pytest.raises(HostKeyError, match="CHANGED"):
        ssh(sshd_server, known_hosts=changed).connect()


def test_insecure_accepts_any_host_key_only_when_asked(sshd_server: SshServer, tmp_path: Path) -> None:
    transport = ssh(sshd_server, known_hosts=tmp_path / "none", insecure=True)
    try:
        with AgentSession.start(transport) as session:
            assert session.info.protocol == wire.PROTOCOL_VERSION
    finally:
        transport.close()


def test_a_refused_login_says_so(sshd_server: SshServer, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(TransportError, match=rf"SSH login as {sshd_server.user}@.* failed: key .* refused"):
        ssh(sshd_server, key_file=stranger).connect()


def test_discovery_over_ssh_matches_discovery_here(sshd_server: SshServer) -> None:
    transport = ssh(sshd_server)
    try:
        there = discover(transport)
    finally:
        transport.close()
    here = discover(LocalTransport())
    assert there["hostname"] == here["hostname"]
    assert [d["name"] for d in there["disks"]] == [d["name"] for d in here["disks"]]
    assert there["nics"] == here["nics"]


def test_a_link_that_drops_silently_ends_the_stream_instead_of_stalling_it(sshd_server: SshServer) -> None:
    """iptables DROP on the session's port: no reset arrives, so only the dead-link timeout can end it."""
    if shutil.which("iptables") is None:
        pytest.skip("iptables is not installed")
    transport = ssh(sshd_server, dead_link_timeout=3.0, keepalive=1.0)
    process = transport.start_python(
        ["-c", "import sys; sys.stdout.write('up\\n'); sys.stdout.flush(); sys.stdin.read()"]
    )
    rule = ["INPUT", "-p", "tcp", "-i", "lo", "--dport", str(sshd_server.port), "-j", "DROP"]
    try:
        assert bytes(process.read_exact(3)) == b"up\n"
        subprocess.run(["iptables", "-I", *rule], check=True)
        outcome: list[BaseException | None] = []

        def read() -> None:
            try:
                process.read_exact(1)
                outcome.append(None)
            except BaseException as exc:  # what ended the read is the result
                outcome.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout=120)  # a hang guard; with TCP's own timeout this would take ~15 minutes
        assert outcome, "the read still hangs on a dead link"
        assert isinstance(outcome[0], StreamClosed)
    finally:
        subprocess.run(["iptables", "-D", *rule], check=False)
        transport.close()
