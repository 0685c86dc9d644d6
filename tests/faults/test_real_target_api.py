"""The target's API failing mid-step: libvirtd wedged, then killed under a call, then started again.

libvirtd is frozen (SIGSTOP) while the run is busy elsewhere, so the next step that asks libvirt anything
hangs inside its call; then the daemon is killed (SIGKILL), which drops the connection under that call,
and started again by the test bed's starter, as an operator or a supervisor would. Two moments:

- during `migrate execute` (the daemon goes while the source is discovered, so the replica volume's
  creation or attachment is what hangs), and it stays down through the step's retries: the run fails
  with one clear line; once it is back, the same command finishes, nothing exists twice;
- during `migrate cutover` (down before the final pass opens its target), and back while the step waits
  to retry: the same run finishes by itself.

Then undo leaves the pool as it was: only the volume the tool never created.
"""

from __future__ import annotations

import re

import pytest

from tests.faults.real_parts import (
    BYSTANDER,
    PB,
    SERVER,
    MiB,
    RealBed,
    libvirtd_fault,
    write_playbook,
    write_source,
)
from tests.faults.real_parts import real_bed as real_bed
from tests.images import sha256
from tests.services import sshd as sshd_service
from tests.services.sshd import SshServer
from tests.testbed import libvirt as testbed

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]

libvirt_uri = testbed.libvirt_uri
sshd_server = sshd_service.sshd_server

SOURCE_SIZE = 16 * MiB
REPLICATE = ("validate", "discover_source", "create_disks", "attach_disks", "mirror", "sync")


def replica_volumes(bed: RealBed) -> list[str]:
    disk = bed.replica_disk().name
    return sorted([disk, f"{disk}.hvmigrate", f"{disk}.hvattach", f"{disk}.hvmap"])


def one_line_failures(text: str) -> list[str]:
    """`failed <step>: <error>` lines of a command's summary (rich wraps them: joined first)."""
    flat = " ".join(text.split())
    return re.findall(rf"failed {SERVER}/\w+: .*?(?= failed {SERVER}/|\d+ step\(s\)|$)", flat)


def test_libvirtd_killed_under_a_step_fails_it_cleanly_and_the_rerun_finishes(
    real_bed: RealBed,
    sshd_server: SshServer,
) -> None:
    bed, m = real_bed, real_bed.m
    write_source(bed.source, SOURCE_SIZE, seed=21)
    write_playbook(bed, sshd_server, rate="64MiB/s", retries=1, backoff=1)
    assert bed.volumes() == [BYSTANDER]

    # -------- execute: the daemon wedges while the source is discovered, dies under the next call to it
    with libvirtd_fault() as libvirtd:
        process = m.start("execute", PB)
        m.wait_until("discovery running", lambda: m.step(f"{SERVER}/discover_source")[0] == "running")
        libvirtd.freeze()
        m.wait_until("discovery done", lambda: m.step(f"{SERVER}/discover_source")[0] == "done")
        m.wait_until(
            "a step hanging on libvirt",
            lambda: any(m.step(f"{SERVER}/{k}")[0] == "running" for k in REPLICATE[2:]),
        )
        (hung,) = [k for k in REPLICATE[2:] if m.step(f"{SERVER}/{k}")[0] == "running"]
        libvirtd.kill()
        out, err = process.communicate(timeout=m.timeout)  # down through every retry: the run fails
        assert process.returncode == 1, f"{out}\n{err}"
    failures = one_line_failures(out)
    assert len(failures) == 1 and failures[0].startswith(f"failed {SERVER}/{hung}: "), (hung, out)
    assert "libvirt" in failures[0] and "internal error" not in failures[0], failures[0]
    assert "Traceback" not in out + err
    attempts = [e for e in m.events(f"{SERVER}/{hung}", "warning") if e.startswith("attempt ")]
    assert len(attempts) == 1 and all("\n" not in e for e in attempts), attempts
    # the call the daemon died under, and the retries that found it gone, each say what to do
    assert all("libvirtd" in e and "check that" in e for e in [*attempts, failures[0]]), attempts

    m.run("execute", PB)  # libvirtd is back: the same command finishes
    assert bed.volumes() == sorted([BYSTANDER, *replica_volumes(bed)])  # one replica volume, once
    created = [r for r in m.live_resources().elements() if r[1] == "disk"]
    assert len(created) == 1, created
    assert sha256(bed.replica_disk()) == sha256(bed.source)

    m.run("undo", PB, "--yes")
    assert bed.volumes() == [BYSTANDER] and bed.pool_files() == [BYSTANDER]
