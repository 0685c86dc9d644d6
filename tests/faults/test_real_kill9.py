"""kill -9 of the orchestrator in the middle of a KVM migration, three times, and nothing is lost or doubled.

The case moves an SSH source (a real sshd on loopback) onto the real libvirtd (`appliance: host`, a raw
volume in a scratch pool). The orchestrator is killed three times:

- at a seeded random moment of the full mirror (the process group: its local writer agent dies too);
- at two cutover step boundaries in turn, through the executor's failpoint (orchestrator/failpoints.py):
  ``after:`` a step means its work is done on libvirt but not journaled, the window where a re-run could
  make a second volume or domain, or power on what is already running.

After each kill the same command runs again and finishes. Then: the replica volume is byte-identical to
the source, exactly one volume and one domain exist, the journal holds each resource once, and `migrate
undo` leaves the pool and libvirt's domains as they were before (the bystander volume, which
the tool never created, included).
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from tests.faults.real_parts import (
    BYSTANDER,
    PB,
    SERVER,
    MiB,
    RealBed,
    kill_group,
    overwrite,
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

SOURCE_SIZE = 24 * MiB
RATE = 6 * MiB  # per second: the full mirror takes seconds, long enough to strike inside it

SEED = 1  # places the kill inside the mirror
# Where the cutover dies, one run after the other: each leaves a libvirt object made (the domain defined,
# then the domain running) that the journal never heard of as done.
BOUNDARIES = ("after:db01/create_replica", "after:db01/power_on_replica")


def replica_volumes(bed: RealBed) -> list[str]:
    disk = bed.replica_disk().name
    return [disk, f"{disk}.hvattach", f"{disk}.hvmap", f"{disk}.hvmigrate"]


def test_kill_9_mid_mirror_and_at_cutover_boundaries_then_rerun_and_undo(
    real_bed: RealBed,
    sshd_server: SshServer,
) -> None:
    bed, m = real_bed, real_bed.m
    rng = random.Random(SEED)
    write_source(bed.source, SOURCE_SIZE, seed=SEED)
    write_playbook(bed, sshd_server, rate=f"{RATE // MiB}MiB/s")
    before = {"volumes": bed.volumes(), "domains": bed.domains()}
    assert before == {"volumes": [BYSTANDER], "domains": []}
    mirror = f"{SERVER}/mirror"

    # -------- kill -9 at a seeded moment inside the full mirror
    strike_at = int(SOURCE_SIZE * rng.uniform(0.1, 0.6))
    process = m.start("execute", PB)
    m.wait_until(
        f"{mirror} past {strike_at} bytes",
        lambda: m.step(mirror)[0] == "running" and m.step(mirror)[1] >= strike_at,
    )
    time.sleep(rng.uniform(0.0, 0.5))
    kill_group(process)
    assert m.step(mirror)[0] == "running", "the kill did not land inside the mirror"
    assert sha256(bed.replica_disk()) != sha256(bed.source)  # it really was cut short

    m.run("execute", PB)
    assert sha256(bed.replica_disk()) == sha256(bed.source)
    assert bed.volumes() == sorted([BYSTANDER, *replica_volumes(bed)])

    # -------- kill -9 at cutover step boundaries, after a change the final pass must carry
    overwrite(bed.source, 8 * MiB, 4 * MiB, seed=SEED + 100)
    for boundary in BOUNDARIES:
        m.extra_env["HVMIGRATE_FAILPOINT"] = boundary
        killed = m.run("cutover", PB, check=None)
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        assert f"SIGKILL {boundary}" in killed.stderr
        step_id = boundary.split(":", 1)[1]
        assert m.step(step_id)[0] == "running"  # its work happened, the journal never heard it finish
        assert bed.domains() == [bed.vm_name]
    del m.extra_env["HVMIGRATE_FAILPOINT"]

    m.run("cutover", PB)
    assert sha256(bed.replica_disk()) == sha256(bed.source)
    assert bed.domains() == [bed.vm_name]
    assert bed.volumes() == sorted([BYSTANDER, *replica_volumes(bed)[:1], *replica_volumes(bed)[2:]])
    doubled = {r: n for r, n in m.live_resources().items() if n > 1}
    assert not doubled, doubled
    kinds = sorted(r[1] for r in m.live_resources().elements())
    assert kinds == ["disk", "vm"], kinds

    # -------- undo: libvirt as before the case
    m.run("undo", PB, "--yes")
    assert {"volumes": bed.volumes(), "domains": bed.domains()} == before
    assert bed.pool_files() == [BYSTANDER]
    assert not list(m.live_resources().elements())
