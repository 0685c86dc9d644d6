"""A running Linux server migrated live onto KVM, end to end through the real `migrate` command.

The source is the test bed's Debian guest (tests/testbed/source_vm.py) running under libvirt on
192.168.213.0/24. A process in it keeps appending numbered lines to a file for the whole run. The playbook
moves it onto the same libvirtd as a new domain on another network (192.168.214.0/24) with another static
address, a new MAC and a new hostname, its volume in a scratch pool and written in place by the host
(``appliance: host``); the DNS name moves in a real BIND, PTR included.

What the test proves afterwards is what a user would check: the replica boots by itself and answers SSH
on the new address with the source's host key (its disk is a copy of the source's), under its new name;
the file the writer appended to until the cutover stopped it is on the replica complete, byte for byte
what the source held at that moment (the writer reports that moment on the source's serial console, which
the host logs: a witness outside the disk being copied); the name and the PTR resolve to the new address;
the source is shut off; every step is done and the report carries a measured downtime. Before that, a
test cutover boots a copy of the replica on an isolated test network with a test address while the
source keeps running; it answers SSH there, and `migrate undo --test` removes it and its volume, keeping
the replica's, and the next sync goes on. Then `migrate
undo` removes the replica, its volume and the DNS change, and leaves the source's disk as it was; it
cannot start a source reached over SSH and says so (exit 1). Started by hand, the source still holds what
the writer wrote, and undo then completes.

Three TCG boots and a mirror read by a TCG guest: minutes. The time of each phase is printed (pytest -s).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.planner import TEST_CHAIN
from tests.e2e.conftest import Migration
from tests.services.bind import BindServer, ask, started_bind
from tests.testbed import libvirt as testbed
from tests.testbed import source_vm as source_vm_bed
from tests.testbed.source_vm import SourceVm

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.libvirt]

source_vm = source_vm_bed.source_vm  # the fixture, by the name the test asks for

PB = "kvm.yaml"
COMMAND_TIMEOUT = 1500.0  # one `migrate` command: the full mirror from a TCG guest takes minutes
REPLICA_SSH_TIMEOUT = 300.0

# The replica's network: like the source's (tests/testbed/source_vm.network_xml), its own bridge and subnet.
REPLICA_NETWORK = "hvmigrate-dst-net"
REPLICA_BRIDGE = "hvmdst0"
REPLICA_GATEWAY = "192.168.214.1"
REPLICA_IP = "192.168.214.10"
SOURCE_IP = "192.168.213.10"
REPLICA_HOSTNAME = "db01"
TEST_NETWORK = "hvmigrate-test-net"
TEST_BRIDGE = "hvmtest0"
TEST_GATEWAY = "192.168.215.1"
TEST_IP = "192.168.215.10"

ZONE = "corp.test"
REVERSE_ZONE = "168.192.in-addr.arpa"
FQDN = f"db01.{ZONE}."
SOURCE_PTR = "10.213.168.192.in-addr.arpa."
REPLICA_PTR = "10.214.168.192.in-addr.arpa."

# The writer: a service that appends a numbered line every 0.2 s and never syncs (most applications do
# not). Stopped by systemd (quiesce: services), it reports on the serial console how many lines the file
# held and its digest, as the source's own kernel saw the file at that moment. The report ignores SIGTERM
# first: systemd signals every process of the unit, also those forked while it stops it.
WRITER_UNIT = "hvwriter"
WRITER_FILE = "/var/lib/hvwriter/data.log"
WRITER_PROGRAM = "/run/hvwriter.sh"  # on a tmpfs: not part of the disk that is copied
WRITER_SCRIPT = f"""\
#!/bin/sh
file={WRITER_FILE}
report() {{
    trap '' TERM
    echo "HVWRITER-STOPPED lines=$(wc -l < "$file") sha256=$(sha256sum < "$file" | cut -c1-64)" > /dev/ttyS0
    exit 0
}}
trap report TERM
i=0
while :; do
    i=$((i + 1))
    printf '%08d the source kept writing while it was mirrored\\n' "$i" >> "$file"
    sleep 0.2
done
"""
STOPPED = re.compile(r"HVWRITER-STOPPED lines=(\d+) sha256=([0-9a-f]{64})")


class KvmMigration(Migration):
    """`migrate` on a playbook of the test's own, with room for a mirror that takes minutes."""

    timeout = COMMAND_TIMEOUT

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.playbook = root / PB
        self.timings: dict[str, float] = {}
        self.steps: dict[str, float] = {}  # taken before undo, which rewrites the steps' records

    def timed(self, phase: str, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        try:
            return self.run(*args, check=check)
        finally:
            self.timings[phase] = round(time.monotonic() - started, 1)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def conn(source_vm: SourceVm) -> Iterator[Any]:
    import libvirt

    connection = libvirt.open(testbed.URI)
    yield connection
    connection.close()


@contextlib.contextmanager
def host_network(conn: Any, name: str, bridge: str, gateway: str) -> Iterator[str]:
    """An isolated network with an address on the host side, so the host reaches the VMs on it.

    Transient, and created while the source VM's machine lock is held (the fixtures depend on it): one per
    machine at a time, like the source's. One left by a killed run is replaced.
    """
    import libvirt

    with contextlib.suppress(libvirt.libvirtError):
        conn.networkLookupByName(name).destroy()
    root = ET.Element("network")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "bridge", name=bridge, stp="off", delay="0")
    ET.SubElement(root, "dns", enable="no")
    ET.SubElement(root, "ip", address=gateway, prefix="24")
    network = conn.networkCreateXML(ET.tostring(root, encoding="unicode"))
    try:
        yield name
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            network.destroy()


@pytest.fixture(scope="module")
def replica_network(conn: Any) -> Iterator[str]:
    with host_network(conn, REPLICA_NETWORK, REPLICA_BRIDGE, REPLICA_GATEWAY) as name:
        yield name


@pytest.fixture(scope="module")
def test_network(conn: Any) -> Iterator[str]:
    """Where the test cutover's copy comes up: no route to the source's or the replica's network."""
    with host_network(conn, TEST_NETWORK, TEST_BRIDGE, TEST_GATEWAY) as name:
        yield name


@pytest.fixture(scope="module")
def pool(conn: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with testbed.scratch_pool(conn, testbed.unique_name("hve2e"), tmp_path_factory.mktemp("pool")) as made:
        yield made


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindServer]:
    """A real BIND with corp.test (db01 at the source's address) and the 192.168 reverse zone, both
    updatable with the TSIG key migkey."""
    soa = (
        "@ 3600 IN SOA ns1.corp.test. hostmaster.corp.test. 1 3600 600 604800 60\n"
        "@ 3600 IN NS ns1.corp.test.\n"
    )
    rule = 'allow-update { key "migkey"; };'
    zones = {
        ZONE: (f"{soa}ns1 3600 IN A 127.0.0.1\ndb01 300 IN A {SOURCE_IP}\n", rule),
        REVERSE_ZONE: (f"{soa}10.213 300 IN PTR {FQDN}\n", rule),
    }
    with started_bind(tmp_path_factory.mktemp("bind"), zones) as server:
        yield server


@pytest.fixture
def kvm_migration(tmp_path: Path, source_vm: SourceVm) -> Iterator[KvmMigration]:
    """The test's `migrate` runner; the time of each phase and step is printed at the end, also on failure."""
    m = KvmMigration(tmp_path)
    yield m
    print(f"\nsource VM boot: {source_vm.boot_seconds} s; `migrate` phases (s): {json.dumps(m.timings)}")
    if not m.steps and (m.state / "journal.sqlite").exists():
        m.steps = step_times(m)
    print(f"steps (s): {json.dumps(m.steps)}")


@pytest.fixture
def replica_name(conn: Any) -> Iterator[str]:
    """The replica's domain name, removed after the test whatever happened (undo normally has)."""
    name = testbed.unique_name("hve2e-db01")
    with testbed.scratch_domain_cleanup(conn, name, f"{name}-test"):
        yield name


# ---------------------------------------------------------------- helpers


def records(server: BindServer) -> dict[str, list[tuple[str, int]]]:
    return {
        "A": ask(server, FQDN, "A"),
        "source PTR": ask(server, SOURCE_PTR, "PTR"),
        "replica PTR": ask(server, REPLICA_PTR, "PTR"),
    }


def write_playbook(
    m: KvmMigration, vm: SourceVm, bind: BindServer, pool: str, network: str, test_network: str, replica: str
) -> None:
    (m.root / "tsig.secret").write_text(bind.secret)
    m.playbook.write_text(
        f"""apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: kvm-e2e
defaults:
  cutover:
    mode: manual
    shutdown_source: true
    boot_timeout: 2m
    pre_script: 'echo "$HVM_PHASE $HVM_SERVER $HVM_VM_NAME" > pre-script.marker'
    post_script: 'echo "$HVM_PHASE $HVM_SERVER $HVM_VM_NAME" > post-script.marker'
providers:
  lab-kvm: {{type: kvm, uri: "{testbed.URI}", storage_pool: {pool}, domain_type: qemu, shutdown_timeout: 60}}
dns:
  corp:
    type: rfc2136
    server: {bind.host}
    port: {bind.port}
    zone: {ZONE}
    reverse_zones: [{REVERSE_ZONE}]
    tsig: {{name: migkey, algorithm: hmac-sha256, secret: "${{file:./tsig.secret}}"}}
servers:
  - name: db01
    source:
      type: ssh
      host: {vm.host}
      user: {vm.user}
      key: {vm.key}
      known_hosts: {vm.known_hosts}
      quiesce: services
      services: [{WRITER_UNIT}]
      quiesce_command: sync
    target:
      provider: lab-kvm
      vm_name: {replica}
      cpus: 1
      memory: 512MiB
      appliance: host
      hostname: {REPLICA_HOSTNAME}
      disks: [{{source: /dev/vda, format: raw}}]
      nics:
        - source_mac: "{vm.mac}"
          network: {network}
          test_network: {test_network}
          test_ip: {TEST_IP}/24
          mac: new
          ip: {REPLICA_IP}/24
          gateway: {REPLICA_GATEWAY}
    dns_records: [{{provider: corp, name: db01, type: A, value: nic0, ttl: 60}}]
"""
    )


def lines_in(vm: SourceVm) -> int:
    status, out, err = vm.run(f"wc -l < {WRITER_FILE}")
    assert status == 0, err
    return int(out)


def ssh_to(host: str, vm: SourceVm, known_hosts: Path, timeout: float) -> Any:
    """A root login to ``host`` with the source's key and host key pinned, retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    last = "never tried"
    while time.monotonic() < deadline:
        try:
            return source_vm_bed._ssh_client(host, 22, vm.user, vm.key, known_hosts, 10.0)
        except Exception as exc:  # not up yet: retried, and reported if it lasts
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(2.0)
    raise AssertionError(f"the replica did not answer SSH at {host} within {timeout:.0f} s ({last})")


def run_on(client: Any, command: str) -> str:
    _, stdout, stderr = client.exec_command(command, timeout=60)
    status = stdout.channel.recv_exit_status()
    out = stdout.read().decode()
    assert status == 0, f"{command}: exit {status}: {stderr.read().decode()}"
    return out


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def domain_state(conn: Any, name: str) -> int:
    return conn.lookupByName(name).state()[0]


def volumes(pool: Any) -> list[str]:
    pool.refresh(0)
    return sorted(pool.listVolumes())


def step_times(m: KvmMigration) -> dict[str, float]:
    status = json.loads(m.run("status", PB, "--json").stdout)
    return {
        s["step_id"]: round(s["end"] - s["start"], 1)
        for s in status["steps"]
        if s.get("start") is not None and s.get("end") is not None
    }


# ---------------------------------------------------------------- the test


def test_a_running_linux_server_moves_live_onto_kvm_boots_there_and_undo_removes_the_replica(
    source_vm: SourceVm,
    conn: Any,
    pool: Any,
    replica_network: str,
    test_network: str,
    bind: BindServer,
    replica_name: str,
    kvm_migration: KvmMigration,
    tmp_path: Path,
) -> None:
    import libvirt

    vm, m = source_vm, kvm_migration
    write_playbook(m, vm, bind, pool.name(), replica_network, test_network, replica_name)
    image_mtime = vm.image.stat().st_mtime_ns
    assert records(bind) == {"A": [(SOURCE_IP, 300)], "source PTR": [(FQDN, 300)], "replica PTR": []}

    # The application: started as a transient unit, so that `quiesce: services` stops it.
    install = f"printf %s {shlex.quote(WRITER_SCRIPT)} > {WRITER_PROGRAM}"
    status, _, err = vm.run(
        f"mkdir -p {os.path.dirname(WRITER_FILE)} && {install} && "
        f"systemd-run --unit={WRITER_UNIT} --description='hvmigrate e2e writer' sh {WRITER_PROGRAM}"
    )
    assert status == 0, err
    deadline = time.monotonic() + 60
    while lines_in(vm) < 3:  # under TCG, its first lines take a moment
        assert time.monotonic() < deadline, "the writer in the source does not write"
        time.sleep(1)

    m.timed("validate", "validate", PB)

    m.timed("execute", "execute", PB)
    after_execute = lines_in(vm)
    mirrored = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["state"] for s in mirrored["servers"]} == {"ready for cutover"}, mirrored["servers"]

    # -------- test cutover: a copy of the replica boots on the isolated test network while the source runs
    m.timed("cutover --test", "cutover", PB, "--test")
    test_copy = f"{replica_name}-test"
    assert domain_state(conn, test_copy) == libvirt.VIR_DOMAIN_RUNNING
    test_known_hosts = tmp_path / "test_known_hosts"
    test_known_hosts.write_text(f"{TEST_IP} {vm.known_hosts.read_text().split(None, 1)[1]}")
    waited = time.monotonic()
    client = ssh_to(TEST_IP, vm, test_known_hosts, REPLICA_SSH_TIMEOUT)
    m.timings["test copy SSH"] = round(time.monotonic() - waited, 1)
    try:
        assert run_on(client, "hostname").strip() == REPLICA_HOSTNAME
        addresses = run_on(client, "ip -4 -o addr show")
        assert f"inet {TEST_IP}/24" in addresses and REPLICA_IP not in addresses
        assert 0 < int(run_on(client, f"wc -l < {WRITER_FILE}")) <= after_execute  # the mirrored data
    finally:
        client.close()
    assert domain_state(conn, vm.domain) == libvirt.VIR_DOMAIN_RUNNING  # the source never noticed
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(replica_name)  # the replica itself is not made by a test
    test_volumes = [v for v in volumes(pool) if "-test-" in v]
    assert test_volumes, volumes(pool)
    status_test = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["state"] for s in status_test["servers"]} == {"ready for cutover (test copy up)"}

    undo_test = " ".join(m.timed("undo --test", "undo", PB, "--test", "--yes").stdout.split())
    assert re.search(r"undone db01/create_test_copy", undo_test), undo_test
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(test_copy)
    assert not [v for v in volumes(pool) if "-test-" in v] and volumes(pool)  # the replica's volume stays
    assert domain_state(conn, vm.domain) == libvirt.VIR_DOMAIN_RUNNING

    m.timed("sync", "sync", PB)
    after_sync = lines_in(vm)
    assert after_sync > after_execute  # it kept writing through the passes

    console_before = len(vm.console())
    m.timed("cutover", "cutover", PB)

    # -------- the source: stopped by the cutover, the writer stopped before the final pass
    assert domain_state(conn, vm.domain) == libvirt.VIR_DOMAIN_SHUTOFF
    stopped = STOPPED.findall(vm.console()[console_before:])
    assert len(stopped) == 1, f"the writer's stop report is not on the console:\n{vm.console()[-3000:]}"
    lines_at_stop, digest_at_stop = int(stopped[0][0]), stopped[0][1]
    assert lines_at_stop > after_sync

    # -------- the replica: boots by itself, on the new network, as the same machine under its new name
    assert domain_state(conn, replica_name) == libvirt.VIR_DOMAIN_RUNNING
    known_hosts = tmp_path / "replica_known_hosts"
    host_key = vm.known_hosts.read_text().split(None, 1)[1]
    known_hosts.write_text(f"{REPLICA_IP} {host_key}")  # the source's own host key, at the new address
    waited = time.monotonic()
    client = ssh_to(REPLICA_IP, vm, known_hosts, REPLICA_SSH_TIMEOUT)
    m.timings["replica SSH after cutover"] = round(time.monotonic() - waited, 1)
    try:
        assert run_on(client, "hostname").strip() == REPLICA_HOSTNAME
        assert f"inet {REPLICA_IP}/24" in run_on(client, "ip -4 -o addr show")
        data = run_on(client, f"cat {WRITER_FILE}")
        assert run_on(client, f"systemctl is-active {WRITER_UNIT} || true").strip() != "active"
    finally:
        client.close()
    numbers = [int(line.split(" ", 1)[0]) for line in data.splitlines()]
    assert numbers == list(range(1, len(numbers) + 1)), "the replica's file has gaps or torn lines"
    assert len(numbers) == lines_at_stop, (len(numbers), lines_at_stop)
    assert hashlib.sha256(data.encode()).hexdigest() == digest_at_stop

    # -------- DNS moved through BIND, PTR with it
    assert records(bind) == {"A": [(REPLICA_IP, 60)], "source PTR": [], "replica PTR": [(FQDN, 60)]}

    # -------- scripts, steps, report
    assert (tmp_path / "pre-script.marker").read_text().split() == ["pre_script", "db01", replica_name]
    assert (tmp_path / "post-script.marker").read_text().split() == ["post_script", "db01", replica_name]
    status_json = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["state"] for s in status_json["servers"]} == {"cut over"}
    not_done = {s["step_id"]: s["state"] for s in status_json["steps"] if s["state"] != "done"}
    test_copy_steps = {f"db01/{kind}" for kind in TEST_CHAIN}  # removed by undo --test, as they should be
    assert not [
        k for k, v in not_done.items() if not k.endswith("cleanup_on_error") and k not in test_copy_steps
    ], not_done
    assert {v for k, v in not_done.items() if k in test_copy_steps} <= {"undone", "pending"}, not_done
    report = json.loads(m.run("report", PB, "--format", "json").stdout)
    (server,) = report["servers"]
    assert server["downtime_measured"] is not None and server["downtime_measured"] > 0

    # -------- undo: the replica, its volume and the DNS change go; the source's disk is left alone. The
    # source is a machine reached over SSH: the tool cannot start it again, and says so.
    m.steps = step_times(m)
    overlay = sha256(vm.overlay)
    undo = m.timed("undo", "undo", PB, "--yes", check=1)
    out = " ".join((undo.stdout + undo.stderr).split())  # rich wraps long lines
    for step in ("update_dns", "create_replica", "create_disks"):
        assert re.search(rf"undone\s+db01/{step}\b", out), (step, out)
    assert re.search(r"failed\s+db01/shutdown_source: .*start it by hand", out), out
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(replica_name)
    assert volumes(pool) == []
    assert records(bind) == {"A": [(SOURCE_IP, 300)], "source PTR": [(FQDN, 300)], "replica PTR": []}
    assert sha256(vm.overlay) == overlay
    assert vm.image.stat().st_mtime_ns == image_mtime
    assert domain_state(conn, vm.domain) == libvirt.VIR_DOMAIN_SHUTOFF

    # Started by hand (here through libvirt), the source holds what the writer left; undo then completes.
    conn.lookupByName(vm.domain).create()
    waited = time.monotonic()
    client = ssh_to(SOURCE_IP, vm, vm.known_hosts, REPLICA_SSH_TIMEOUT)
    m.timings["source SSH after restart"] = round(time.monotonic() - waited, 1)
    try:
        source_data = run_on(client, f"cat {WRITER_FILE}")
    finally:
        client.close()
    assert hashlib.sha256(source_data.encode()).hexdigest() == digest_at_stop
    again = " ".join(m.timed("undo again", "undo", PB, "--yes").stdout.split())
    assert re.search(r"undone db01/shutdown_source", again), again
    assert "nothing to undo" in m.run("undo", PB, "--yes").stdout

    print(f"\ndowntime measured: {server['downtime_measured']:.1f} s")
    print(f"writer: {after_execute} lines after execute, {after_sync} after sync, {lines_at_stop} at stop")
