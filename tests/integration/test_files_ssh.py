"""A files-and-folders pass whose source is read by the files agent over a real OpenSSH server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.files.mirror import LocalTree, Options, RemoteTree, mirror_pass, pairs_for
from orchestrator.files.rules import RuleSet, make_rule
from orchestrator.transport.ssh import SshTransport
from tests.services import sshd as sshd_service
from tests.services.sshd import SshServer

sshd_server = sshd_service.sshd_server

pytestmark = pytest.mark.integration


def transport_to(server: SshServer) -> SshTransport:
    return SshTransport(
        server.host,
        port=server.port,
        user=server.user,
        key_file=server.client_key,
        known_hosts=server.known_hosts,
    )


def test_mirror_and_difference_pass_over_ssh(tmp_path: Path, sshd_server: SshServer) -> None:
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    for index in range(50):
        (src / "docs" / f"f{index}.txt").write_text(f"file {index}\n" * 100)
    (src / "docs" / "skip.tmp").write_text("excluded")
    os.link(src / "docs" / "f0.txt", src / "docs" / "f0-again.txt")
    rules = RuleSet([make_rule(str(src)), make_rule(str(src) + "/*.tmp", False)])
    pairs = pairs_for(rules, "all_to_one", "files01", str(tmp_path / "dst"), [])
    transport = transport_to(sshd_server)
    source = RemoteTree(transport)
    try:
        first = mirror_pass(source, LocalTree(), pairs, rules, Options())
        assert (first.files, first.hardlinks, first.problems) == (51, 1, [])
        (src / "docs" / "f7.txt").write_text("changed\n")
        (src / "docs" / "f8.txt").unlink()
        second = mirror_pass(source, LocalTree(), pairs, rules, Options())
        assert second.files_sent == 1 and len(second.orphans) == 1
        verify = mirror_pass(
            source, LocalTree(), pairs, rules, Options(compare="full_data"), verify_only=True
        )
        assert verify.differences == []
    finally:
        source.close()
        transport.close()
    out = Path(pairs[0].target.decode())
    assert (out / "docs" / "f7.txt").read_text() == "changed\n"
    assert not (out / "docs" / "f8.txt").exists() and not (out / "docs" / "skip.tmp").exists()
