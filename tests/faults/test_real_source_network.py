"""The network to the source cut in the middle of a mirror pass: the step retries and resumes.

The source is reached through a real sshd; the cut is the sshd process serving the session killed with
SIGKILL while chunks are still to come (the TCP connection dies with it, the agent on the source end gets
SIGHUP), the listener stays, as when a link drops and comes back. The source disk is larger than what the
SSH window and the socket buffers hold in flight, so the cut lands while the reader still has chunks to
send. What arrived before the cut must not travel again: the mirror's output counts it as already there.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.faults.real_parts import BYSTANDER, PB, SERVER, MiB, RealBed, write_playbook, write_source
from tests.faults.real_parts import real_bed as real_bed
from tests.images import sha256
from tests.services import sshd as sshd_service
from tests.services.sshd import SshServer
from tests.testbed import libvirt as testbed

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]

libvirt_uri = testbed.libvirt_uri
sshd_server = sshd_service.sshd_server

SOURCE_SIZE = 48 * MiB  # the SSH window (16 MiB) and socket buffers must not hold all that is left
CUT_AT = 16 * MiB  # relayed to the writer when the session is killed


def sessions(server: SshServer) -> list[int]:
    """The sshd processes serving connections: the listener's children."""
    listener = (server.directory / "sshd.pid").read_text().strip()
    found = subprocess.run(["pgrep", "-P", listener], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def test_ssh_session_killed_mid_mirror_is_retried_and_resumes_where_it_stopped(
    real_bed: RealBed,
    sshd_server: SshServer,
) -> None:
    bed, m = real_bed, real_bed.m
    source_digest = sha256(write_source(bed.source, SOURCE_SIZE, seed=7))
    write_playbook(bed, sshd_server, rate="8MiB/s", retries=3, backoff=1)
    mirror = f"{SERVER}/mirror"

    process = m.start("execute", PB)
    m.wait_until(
        f"{mirror} relaying {CUT_AT // MiB} MiB",
        lambda: m.step(mirror)[0] == "running" and m.step(mirror)[1] >= CUT_AT,
    )
    cut = sessions(sshd_server)
    assert cut, "no sshd session serves the mirror"
    for pid in cut:
        os.kill(pid, signal.SIGKILL)
    out, err = process.communicate(timeout=m.timeout)
    assert process.returncode == 0, f"{out}\n{err}"

    # the step failed once, with one line saying what happened and that it resumes, and was retried
    retried = [e for e in m.events(mirror, "warning") if e.startswith("attempt 1 failed")]
    assert len(retried) == 1, m.events(mirror)
    assert "\n" not in retried[0] and "internal error" not in retried[0], retried[0]
    assert "resumes" in retried[0], retried[0]
    assert f"retrying in 1s: the agent on {sshd_server.host}:{sshd_server.port}" in " ".join(out.split())

    # the retry sent only what had not arrived: not from zero, and every byte accounted for once
    (disk,) = m.output(mirror)["disks"]
    assert disk["resumed_bytes_skipped"] >= CUT_AT, disk
    assert 0 < disk["bytes_written"] < SOURCE_SIZE - CUT_AT, disk
    assert disk["resumed_bytes_skipped"] + disk["bytes_written"] == SOURCE_SIZE, disk
    assert sha256(bed.replica_disk()) == source_digest == sha256(bed.source)  # and the source only read

    # the retry wrote into the same volume: one replica volume with its sidecars, nothing else
    disk_file = bed.replica_disk().name
    assert bed.volumes() == sorted(
        [BYSTANDER, disk_file, f"{disk_file}.hvattach", f"{disk_file}.hvmap", f"{disk_file}.hvmigrate"]
    )
