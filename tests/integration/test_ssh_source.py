"""A running Linux server as a migration source, over a real OpenSSH server on this machine.

The "server" is this machine itself, logged into through sshd on loopback. Its "disks" are files and loop
devices the tests make (a real host whose disk is a file on it): the source is only ever read, and the
host's own disks are only ever discovered. Services are real SysV init scripts run by the real ``service``
command; fsfreeze freezes a real ext4 filesystem on a loop device; LVM runs the real lvm2 tools; shutdown
powers off a real sshd that runs in its own PID namespace, where the kernel turns poweroff into the end of
that namespace, not of this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.mirror.remote import mirror_remote
from orchestrator.playbook.models import Playbook, Server
from orchestrator.playbook.models import SshSource as SshSourceConfig
from orchestrator.quickstart import MbrPartition, make_ext4, write_mbr
from orchestrator.steps.base import StepFailed, StepNode
from orchestrator.steps.cutover import QuiesceSource
from orchestrator.transport.local import LocalTransport
from providers.base import AgentLocation, ProviderError, Source
from providers.linux import SshSource
from providers.linux.power import answers_ssh
from providers.registry import open_source
from tests.images import make_image, sha256
from tests.services import sshd as sshd_service
from tests.services.sshd import SshServer

sshd_server = sshd_service.sshd_server  # the fixture, by the name the tests ask for

pytestmark = pytest.mark.integration

KiB, MiB = 1024, 1024**2
CHUNK = 256 * KiB
IS_ROOT = os.geteuid() == 0
SYSTEMD_RUNNING = Path("/run/systemd/system").is_dir()
LVM_ENV = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (lvm2 reads its locks and devices as root)")


def ssh_config(server: SshServer, **fields: Any) -> SshSourceConfig:
    return SshSourceConfig.model_validate(
        {
            "type": "ssh",
            "host": server.host,
            "port": server.port,
            "user": server.user,
            "key": str(server.client_key),
            "known_hosts": str(server.known_hosts),
            **fields,
        }
    )


@pytest.fixture
def sources() -> Iterator[list[SshSource]]:
    """Every source a test opens is closed after it, whatever happened."""
    opened: list[SshSource] = []
    yield opened
    for source in opened:
        source.close()


def open_ssh(server: SshServer, opened: list[SshSource], disks: list[str], **fields: Any) -> SshSource:
    source = SshSource("db01", ssh_config(server, **fields), disks)
    opened.append(source)
    return source


def partitioned_disk(path: Path, size: int = 16 * MiB) -> Path:
    """A small disk image as a Linux server's disk looks: MBR, one ext4 partition at 1 MiB."""
    make_image(path, size)
    write_mbr(path, [MbrPartition(MiB, size - MiB, 0x83, bootable=True)], 0x1234ABCD)
    make_ext4(path, MiB, size - MiB, {"etc/hostname": b"db01\n"}, fs_uuid=uuid.uuid4(), label="root")
    return path


def lsblk_disks() -> list[str]:
    out = subprocess.run(
        ["lsblk", "-J", "-b", "-d", "-o", "NAME,SIZE,TYPE"], capture_output=True, check=True, text=True
    ).stdout
    return [
        f"/dev/{d['name']}"
        for d in json.loads(out)["blockdevices"]
        if d["type"] == "disk" and int(d["size"] or 0) > 0 and not d["name"].startswith(("zram", "ram"))
    ]


# ---------------------------------------------------------------- discovery and reading


def test_discovery_names_a_file_disk_as_the_playbook_does_and_lists_the_host(
    sshd_server: SshServer, sources: list[SshSource], tmp_path: Path
) -> None:
    disk = partitioned_disk(tmp_path / "db01-vda.img")
    facts = open_ssh(sshd_server, sources, [str(disk)]).discover()

    first = facts.disks[0]
    assert first.name == str(disk)  # the playbook's name, first, although lsblk does not list it
    assert first.size == 16 * MiB
    assert first.partition_table == "mbr" and first.filesystems == ("ext4",)
    assert first.used is not None and 0 < first.used <= first.size
    assert facts.hostname == socket.gethostname() and facts.os == "linux"
    assert facts.firmware == ("uefi" if Path("/sys/firmware/efi").is_dir() else "bios")
    # the host's own disks follow, as lsblk lists them
    if shutil.which("lsblk"):
        assert [d.name for d in facts.disks[1:]] == lsblk_disks()
    sysfs = {e.name: (e / "address").read_text().strip() for e in Path("/sys/class/net").iterdir()}
    assert {nic.name: nic.mac for nic in facts.nics} == {n: m for n, m in sysfs.items() if n != "lo"}
    # and the facts survive the journal
    assert type(facts).from_json(facts.to_json()) == facts


def test_a_missing_or_odd_disk_is_named_with_what_the_host_has(
    sshd_server: SshServer, sources: list[SshSource], tmp_path: Path
) -> None:
    source = open_ssh(sshd_server, sources, [str(tmp_path / "nope.img"), "/dev/null"])
    with pytest.raises(ProviderError) as caught:
        source.discover()
    message = str(caught.value)
    assert f"{tmp_path / 'nope.img'} does not exist" in message
    assert "/dev/null is neither a block device nor a regular file" in message
    assert "lsblk lists these disks there" in message and "target.disks" in message


def test_disk_location_feeds_the_mirror_an_identical_copy(
    sshd_server: SshServer, sources: list[SshSource], tmp_path: Path
) -> None:
    disk = make_image(
        tmp_path / "vdb.img",
        8 * MiB,
        {0: os.urandom(CHUNK), 5 * CHUNK: b"log line\n" * 20000, 8 * MiB - 10: b"last bytes"},
    )
    target = tmp_path / "replica.img"
    source = open_ssh(sshd_server, sources, [str(disk)])
    assert isinstance(source, Source)

    location = source.disk_location(str(disk))
    assert isinstance(location, AgentLocation) and location.path == str(disk)
    assert location.transport is source.transport()  # the one SSH connection, shared with the commands
    stats = mirror_remote(
        location.transport,
        location.path,
        LocalTransport(),
        str(target),
        chunk_size=CHUNK,
        mode="full",
        source_identity=f"db01:{disk}",
    )
    assert sha256(target) == sha256(disk)
    assert stats.chunks_written > 0

    with pytest.raises(ProviderError, match=r"read by an agent on 127\.0\.0\.1.*disk_location"):
        source.open_disk(str(disk))
    with pytest.raises(ProviderError, match="has no source disk '/dev/sdz'"):
        source.disk_location("/dev/sdz")


def test_the_registry_builds_an_ssh_source_without_connecting(tmp_path: Path) -> None:
    server = Server.model_validate(
        {
            "name": "db01",
            "source": {"type": "ssh", "host": "192.0.2.1", "key": "keys/db01", "quiesce": "services"},
            "target": {"provider": "kvm", "disks": [{"source": "/dev/vda"}, {"source": "/dev/vdb"}]},
        }
    )
    source = open_source(server, {}, base_dir=tmp_path)  # 192.0.2.1 (TEST-NET) would not answer
    assert isinstance(source, SshSource) and isinstance(source, Source)
    assert source.host == "192.0.2.1" and source.disks == ["/dev/vda", "/dev/vdb"]
    assert source.config.key == tmp_path / "keys/db01"  # beside the playbook, from wherever migrate runs
    with pytest.raises(ProviderError, match="cannot power it on"):
        source.start()
    source.close()


# One server onto the sim: what the `migrate validate --discover` tests below add their db01 to.
WAVE = """\
apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: ssh-wave
providers:
  local: {type: sim, root: ./sim}
servers:
  - name: db01
"""


def validate_discover(playbook: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "validate", "--discover", "--json", str(playbook)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_migrate_validate_discovers_an_ssh_source(sshd_server: SshServer, tmp_path: Path) -> None:
    """The command line end to end: the registry opens the source, the agent discovers it over SSH and
    the rule catalog checks the disk map against what it found."""
    disk = partitioned_disk(tmp_path / "db01-vda.img")
    playbook = tmp_path / "wave.yaml"
    playbook.write_text(
        WAVE
        + f"""\
    source: {{type: ssh, host: {sshd_server.host}, port: {sshd_server.port}, user: {sshd_server.user},
             key: {sshd_server.client_key}, known_hosts: {sshd_server.known_hosts}, quiesce: fsfreeze}}
    target:
      provider: local
      vm_name: db01
      disks: [{{source: {disk}, format: raw}}, {{source: {tmp_path / "gone.img"}, format: raw}}]
"""
    )
    done = validate_discover(playbook)
    # a disk that is not there makes the discovery a problem, said on stderr with the reason
    assert done.returncode in (0, 1), done.stderr
    assert "source of db01 could not be discovered" in done.stderr
    assert f"{tmp_path / 'gone.img'} does not exist" in done.stderr
    assert "facts.not_discovered" in {f["rule_id"] for f in json.loads(done.stdout)}

    gone = f", {{source: {tmp_path / 'gone.img'}, format: raw}}"
    playbook.write_text(playbook.read_text().replace(gone, ""))
    done = validate_discover(playbook)
    findings = json.loads(done.stdout)
    rules = {f["rule_id"] for f in findings}
    assert "facts.not_discovered" not in rules and "disk.unknown_source" not in rules
    unmapped = [f for f in findings if f["rule_id"] == "disk.unmapped_source"]
    host_disks = lsblk_disks() if shutil.which("lsblk") else []
    assert all(name in unmapped[0]["message"] for name in host_disks) if host_disks else not unmapped


def test_a_key_the_server_refuses_is_one_clear_line_without_the_password(
    sshd_server: SshServer, sources: list[SshSource], tmp_path: Path
) -> None:
    """Through `migrate validate --discover`, as an operator meets it: which login, which key, what to do
    next; no traceback, and the password tried after the key never shows."""
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    password = "pw-" + secrets.token_hex(8)
    disk = partitioned_disk(tmp_path / "db01-vda.img")
    playbook = tmp_path / "wave.yaml"
    playbook.write_text(
        WAVE
        + f"""\
    source: {{type: ssh, host: {sshd_server.host}, port: {sshd_server.port}, user: {sshd_server.user},
             key: {stranger}, known_hosts: {sshd_server.known_hosts}, password: "${{env:DB01_PASSWORD}}"}}
    target: {{provider: local, vm_name: db01, disks: [{{source: {disk}, format: raw}}]}}
"""
    )
    done = validate_discover(playbook, DB01_PASSWORD=password)
    assert done.returncode in (0, 1), done.stderr
    where = f"{sshd_server.user}@127.0.0.1:{sshd_server.port}"
    (line,) = [text for text in done.stderr.splitlines() if "could not be discovered" in text]
    assert f"SSH login as {where} failed: key {stranger} was refused" in line
    assert "password logins are off there (it allows: publickey)" in line  # sshd_config says so
    assert f"add its public key (ssh-keygen -y -f {stranger})" in line and "authorized_keys" in line
    assert "Traceback" not in done.stderr and password not in done.stderr + done.stdout
    assert "facts.not_discovered" in {f["rule_id"] for f in json.loads(done.stdout)}

    # a key that needs a passphrase is named as such, not as refused
    locked = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(locked)], check=True)
    with pytest.raises(ProviderError) as caught:
        open_ssh(sshd_server, sources, [str(disk)], key=str(locked)).discover()
    assert f"key {locked} is protected by a passphrase; use a key without one" in str(caught.value)


# ---------------------------------------------------------------- quiesce: user commands


def test_user_commands_run_around_the_final_pass_and_thaw_is_idempotent(
    sshd_server: SshServer, sources: list[SshSource], tmp_path: Path
) -> None:
    log = tmp_path / "events.log"
    source = open_ssh(
        sshd_server,
        sources,
        [],
        quiesce_command=f"echo quiesce >> {log}; touch {tmp_path / 'quiesced'}",
        thaw_command=f"echo thaw >> {log}; rm -f {tmp_path / 'quiesced'}",
    )
    state = source.quiesce()
    assert log.read_text().split() == ["quiesce"] and (tmp_path / "quiesced").exists()
    assert [a["kind"] for a in state["actions"]] == ["command"]

    source.thaw()
    assert log.read_text().split() == ["quiesce", "thaw"] and not (tmp_path / "quiesced").exists()
    source.thaw()  # nothing is paused any more: nothing runs again
    assert log.read_text().split() == ["quiesce", "thaw"]


def test_a_failing_quiesce_command_is_followed_by_the_thaw_command(
    sshd_server: SshServer, sources: list[SshSource], tmp_path: Path
) -> None:
    log = tmp_path / "events.log"
    source = open_ssh(
        sshd_server,
        sources,
        [],
        quiesce_command=f"echo quiesce >> {log}; echo 'database refused to flush' >&2; exit 3",
        thaw_command=f"echo thaw >> {log}",
    )
    with pytest.raises(ProviderError) as caught:
        source.quiesce()
    message = str(caught.value)
    assert "quiesce_command on 127.0.0.1" in message and "database refused to flush (exit 3)" in message
    assert "thawed again" in message
    assert log.read_text().split() == ["quiesce", "thaw"]


def test_a_journaled_state_thaws_after_a_restart_and_failures_are_reported_together(
    sshd_server: SshServer, sources: list[SshSource], tmp_path: Path
) -> None:
    log = tmp_path / "events.log"
    blocker = tmp_path / "thaw-blocked"
    fields = {
        "quiesce_command": f"echo quiesce >> {log}",
        "thaw_command": f"echo thaw >> {log}; test ! -e {blocker} || {{ echo 'blocked' >&2; exit 4; }}",
    }
    journaled = open_ssh(sshd_server, sources, [], **fields).quiesce()
    blocker.touch()
    restarted = open_ssh(sshd_server, sources, [], **fields)  # a fresh orchestrator: nothing in memory
    with pytest.raises(ProviderError, match=r"left 1 item\(s\) paused: thaw_command .* blocked \(exit 4\)"):
        restarted.thaw(journaled)
    blocker.unlink()
    restarted.thaw()  # retries what failed, and only that
    assert log.read_text().split() == ["quiesce", "thaw", "thaw"]
    assert restarted.quiesce_state == {"version": 1, "actions": [], "live": []}


# ---------------------------------------------------------------- quiesce: services


@dataclass
class InitServices:
    """Throwaway SysV services: each a sleeping process, logging start and stop to one file."""

    directory: Path
    names: list[str]
    log: Path

    def script(self, name: str) -> Path:
        return Path("/etc/init.d") / name

    def running(self, name: str) -> bool:
        return subprocess.run(["service", name, "status"], capture_output=True).returncode == 0

    def start(self, name: str) -> None:
        subprocess.run(["service", name, "start"], check=True, capture_output=True)

    def refuse(self, name: str, verb: str) -> Path:
        flag = self.directory / f"{name}.refuse-{verb}"
        flag.touch()
        return flag

    def events(self) -> list[str]:
        return log.read_text().splitlines() if (log := self.log).exists() else []


INIT_SCRIPT = """#!/bin/sh
# A throwaway service of tests/integration/test_ssh_source.py; removed when the test ends.
PIDFILE={dir}/{name}.pid
running() {{ [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }}
case "$1" in
  start)
    if [ -e {dir}/{name}.refuse-start ]; then echo "{name} cannot start" >&2; exit 1; fi
    echo "start {name}" >> {log}
    running && exit 0
    sleep 3600 </dev/null >/dev/null 2>&1 &
    echo $! > "$PIDFILE" ;;
  stop)
    if [ -e {dir}/{name}.refuse-stop ]; then echo "{name} refuses to stop" >&2; exit 1; fi
    echo "stop {name}" >> {log}
    running && kill "$(cat "$PIDFILE")"
    rm -f "$PIDFILE" ;;
  status) running || exit 3 ;;
  *) exit 2 ;;
esac
"""


@pytest.fixture
def init_services(tmp_path: Path) -> Iterator[InitServices]:
    if not IS_ROOT:
        pytest.skip("needs root: the test services are init scripts in /etc/init.d")
    if SYSTEMD_RUNNING:
        pytest.skip("systemd runs this machine: these tests drive SysV init scripts through `service`")
    if shutil.which("service") is None:
        pytest.skip("the service command is missing (Debian package init-system-helpers)")
    tag = secrets.token_hex(3)
    services = InitServices(
        tmp_path, [f"hvmigrate-test-{tag}-{n}" for n in ("db", "app", "cron")], tmp_path / "log"
    )
    try:
        for name in services.names:
            script = services.script(name)
            script.write_text(INIT_SCRIPT.format(dir=tmp_path, name=name, log=services.log))
            script.chmod(0o755)
        yield services
    finally:
        for name in services.names:
            pidfile = tmp_path / f"{name}.pid"
            if pidfile.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pidfile.read_text()), signal.SIGTERM)
            services.script(name).unlink(missing_ok=True)


def test_services_stop_in_order_and_start_in_reverse_and_a_stopped_one_is_left_alone(
    sshd_server: SshServer, sources: list[SshSource], init_services: InitServices
) -> None:
    db, app, cron = init_services.names
    init_services.start(db)
    init_services.start(app)  # cron is not running before the cutover
    source = open_ssh(sshd_server, sources, [], quiesce="services", services=[db, cron, app])

    state = source.quiesce()
    assert init_services.events()[2:] == [f"stop {db}", f"stop {app}"]
    assert not init_services.running(db) and not init_services.running(app)
    assert [a["name"] for a in state["actions"]] == [db, app]
    assert any(cron in note and "not running" in note for note in state["live"])

    source.thaw()
    assert init_services.events()[4:] == [f"start {app}", f"start {db}"]
    assert init_services.running(db) and init_services.running(app) and not init_services.running(cron)


def test_a_service_that_does_not_exist_stops_nothing(
    sshd_server: SshServer, sources: list[SshSource], init_services: InitServices
) -> None:
    db = init_services.names[0]
    init_services.start(db)
    source = open_ssh(
        sshd_server, sources, [], quiesce="services", services=[db, "hvmigrate-no-such-service"]
    )
    with pytest.raises(ProviderError) as caught:
        source.quiesce()
    assert "service hvmigrate-no-such-service does not exist on 127.0.0.1" in str(caught.value)
    assert "(sysv)" in str(caught.value) and "nothing was paused" in str(caught.value)
    assert init_services.running(db) and init_services.events() == [f"start {db}"]


def test_a_quiesce_failing_halfway_thaws_what_it_did_in_reverse_order(
    sshd_server: SshServer, sources: list[SshSource], init_services: InitServices, tmp_path: Path
) -> None:
    db, app, _ = init_services.names
    init_services.start(db)
    init_services.start(app)
    init_services.refuse(app, "stop")
    log = init_services.log
    source = open_ssh(
        sshd_server,
        sources,
        [],
        quiesce="services",
        services=[db, app],
        quiesce_command=f"echo quiesce_command >> {log}",
        thaw_command=f"echo thaw_command >> {log}",
    )
    with pytest.raises(ProviderError) as caught:
        source.quiesce()
    assert f"stopping service {app}" in str(caught.value) and "refuses to stop" in str(caught.value)
    assert init_services.events()[2:] == [
        "quiesce_command",
        f"stop {db}",
        f"start {app}",  # its stop was attempted, so its start is too (a no-op for a running service)
        f"start {db}",
        "thaw_command",
    ]
    assert init_services.running(db) and init_services.running(app)


def test_every_failed_start_is_reported_and_retried(
    sshd_server: SshServer, sources: list[SshSource], init_services: InitServices
) -> None:
    db, app, _ = init_services.names
    init_services.start(db)
    init_services.start(app)
    source = open_ssh(sshd_server, sources, [], quiesce="services", services=[db, app])
    source.quiesce()
    flags = [init_services.refuse(db, "start"), init_services.refuse(app, "start")]
    with pytest.raises(ProviderError) as caught:
        source.thaw()
    message = str(caught.value)
    assert "left 2 item(s) paused" in message
    assert f"{db} cannot start" in message and f"{app} cannot start" in message
    for flag in flags:
        flag.unlink()
    source.thaw()
    assert init_services.running(db) and init_services.running(app)


def test_without_a_record_thaw_starts_the_listed_services_that_are_down(
    sshd_server: SshServer, sources: list[SshSource], init_services: InitServices
) -> None:
    db, app, _ = init_services.names
    init_services.start(db)
    init_services.start(app)
    open_ssh(sshd_server, sources, [], quiesce="services", services=[db, app]).quiesce()
    restarted = open_ssh(sshd_server, sources, [], quiesce="services", services=[db, app])
    restarted.thaw()  # the orchestrator lost its state: it looks at the host
    assert init_services.running(db) and init_services.running(app)


# ---------------------------------------------------------------- quiesce: fsfreeze


@dataclass
class MountedDisk:
    image: Path  # the disk as a file
    loop: str  # the loop device its filesystem is mounted from
    mountpoint: Path


@pytest.fixture
def mounted_disk(tmp_path: Path) -> Iterator[MountedDisk]:
    if not IS_ROOT:
        pytest.skip("needs root: loop devices and mount")
    if not (shutil.which("losetup") and shutil.which("fsfreeze")):
        pytest.skip("losetup and fsfreeze (util-linux) are needed")
    image = make_image(tmp_path / "data.img", 16 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        subprocess.run(["mount", loop, str(mountpoint)], check=True, capture_output=True)
        try:
            yield MountedDisk(image, loop, mountpoint)
        finally:
            subprocess.run(["fsfreeze", "--unfreeze", str(mountpoint)], capture_output=True)  # if left frozen
            subprocess.run(["umount", str(mountpoint)], check=True)
    finally:
        subprocess.run(["losetup", "--detach", loop], check=True)


def frozen(mountpoint: Path) -> bool:
    """Asks the kernel without writing: freezing again fails with EBUSY only while it is frozen."""
    probe = subprocess.run(["fsfreeze", "--freeze", str(mountpoint)], capture_output=True, text=True)
    if probe.returncode == 0:
        subprocess.run(["fsfreeze", "--unfreeze", str(mountpoint)], check=True)
        return False
    assert "Device or resource busy" in probe.stderr, probe.stderr
    return True


def test_fsfreeze_freezes_the_disks_filesystem_for_a_consistent_read_then_thaws_it(
    sshd_server: SshServer, sources: list[SshSource], mounted_disk: MountedDisk, tmp_path: Path
) -> None:
    (mounted_disk.mountpoint / "before.txt").write_text("written before the final pass\n")
    # the disk is the file: its filesystem is mounted through a loop device, which discovery finds
    source = open_ssh(sshd_server, sources, [str(mounted_disk.image)], quiesce="fsfreeze")
    facts = source.discover()
    assert facts.disks[0].filesystems == ("ext4",)

    state = source.quiesce()
    try:
        assert frozen(mounted_disk.mountpoint)
        assert state["actions"] == [
            {"kind": "freeze", "device": mounted_disk.loop, "mountpoint": str(mounted_disk.mountpoint)}
        ]
        location = source.disk_location(str(mounted_disk.image))
        mirror_remote(
            location.transport,
            location.path,
            LocalTransport(),
            str(tmp_path / "replica.img"),
            chunk_size=CHUNK,
            mode="full",
            source_identity="db01:data",
        )
        assert sha256(tmp_path / "replica.img") == sha256(mounted_disk.image)  # nothing moved meanwhile
    finally:
        source.thaw()
    assert not frozen(mounted_disk.mountpoint)
    (mounted_disk.mountpoint / "after.txt").write_text("writes go on\n")
    # the replica holds a clean filesystem with the file written before the freeze
    check = subprocess.run(["e2fsck", "-fn", str(tmp_path / "replica.img")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listing = subprocess.run(
        ["debugfs", "-R", "cat /before.txt", str(tmp_path / "replica.img")], capture_output=True, text=True
    )
    assert listing.stdout == "written before the final pass\n"


def test_fsfreeze_never_plans_to_freeze_the_filesystem_the_session_lives_on(
    sshd_server: SshServer, sources: list[SshSource], mounted_disk: MountedDisk
) -> None:
    """Planning only: nothing is frozen here, so a wrong answer fails the test instead of hanging the host."""
    root = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", "/"], capture_output=True, text=True
    ).stdout.strip()
    if not root.startswith("/dev/") or not Path(root).is_block_device():
        pytest.skip(f"/ is not on a block device here ({root or 'unknown'})")
    from providers.linux.quiesce import QuiesceState

    source = open_ssh(sshd_server, sources, [root, mounted_disk.loop], quiesce="fsfreeze")
    state = QuiesceState()
    targets = source.quiescer().freeze_targets(state)
    assert targets == [(mounted_disk.loop, str(mounted_disk.mountpoint))]
    assert any(note.startswith(root) and "holds /" in note and "left live" in note for note in state.live)


# ---------------------------------------------------------------- quiesce: LVM snapshot


@dataclass
class VolumeGroup:
    name: str
    device_mapper: bool  # False: LVs exist in the metadata but cannot be activated here

    @property
    def lv_path(self) -> str:
        return f"/dev/{self.name}/data"

    def lvs(self) -> list[str]:
        out = subprocess.run(
            ["lvs", "--noheadings", "-o", "lv_name", self.name], capture_output=True, text=True, env=LVM_ENV
        ).stdout
        return sorted(out.split())


# An LV of 4 extents on the first PV, as lvcreate writes it, for vgcfgrestore where device-mapper is missing.
LV_STANZA = """
\tlogical_volumes {
\t\tdata {
\t\t\tid = "hvmigr-ABCD-ABCD-ABCD-ABCD-ABCD-testlv"
\t\t\tstatus = ["READ", "WRITE", "VISIBLE"]
\t\t\tflags = []
\t\t\tsegment_count = 1
\t\t\tsegment1 {
\t\t\t\tstart_extent = 0
\t\t\t\textent_count = 4
\t\t\t\ttype = "striped"
\t\t\t\tstripe_count = 1
\t\t\t\tstripes = ["pv0", 0]
\t\t\t}
\t\t}
\t}
"""


def lvm(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, env=LVM_ENV, check=check)


@pytest.fixture
def volume_group(tmp_path: Path) -> Iterator[VolumeGroup]:
    if not IS_ROOT:
        pytest.skip("needs root: LVM on a loop device")
    if not (shutil.which("lvs") and shutil.which("losetup")):
        pytest.skip("lvm2 is not installed (apt-get install -y lvm2)")
    image = make_image(tmp_path / "pv.img", 64 * MiB)
    loop = lvm("losetup", "--find", "--show", str(image)).stdout.strip()
    name = f"hvmigrate{secrets.token_hex(3)}"
    try:
        lvm("pvcreate", "-q", loop)
        lvm("vgcreate", "-q", "-s", "4m", name, loop)
        device_mapper = lvm("lvcreate", "-q", "-L", "16m", "-n", "data", name, check=False).returncode == 0
        if not device_mapper:
            # No device-mapper in this kernel: the LV can exist in LVM's metadata (written by LVM's own
            # vgcfgrestore) but never be activated, so a snapshot of it fails as it would on such a host.
            backup = tmp_path / "vg.conf"
            lvm("vgcfgbackup", "-q", "-f", str(backup), name)
            text = backup.read_text()
            cut = text.rindex("}")
            backup.write_text(text[:cut] + LV_STANZA + text[cut:])
            lvm("vgcfgrestore", "-q", "-f", str(backup), name)
        yield VolumeGroup(name, device_mapper)
    finally:
        lvm("vgremove", "-q", "-f", name, check=False)
        lvm("pvremove", "-q", loop, check=False)
        lvm("losetup", "--detach", loop, check=False)


def test_lvm_snapshot_refuses_when_the_volume_group_lacks_room(
    sshd_server: SshServer, sources: list[SshSource], volume_group: VolumeGroup
) -> None:
    source = open_ssh(sshd_server, sources, [volume_group.lv_path], quiesce="lvm_snapshot")
    with pytest.raises(
        ProviderError, match=rf"volume group {volume_group.name} has 44.0 ?MiB free .*256.0 ?MiB"
    ):
        source.quiesce()  # the default: 10% of the LV but at least 256 MiB
    assert volume_group.lvs() == ["data"]


def test_lvm_snapshot_is_read_instead_of_the_disk_and_removed_by_thaw(
    sshd_server: SshServer, sources: list[SshSource], volume_group: VolumeGroup, tmp_path: Path
) -> None:
    log = tmp_path / "events.log"
    source = open_ssh(
        sshd_server,
        sources,
        [volume_group.lv_path],
        quiesce="lvm_snapshot",
        snapshot_size="8MiB",
        thaw_command=f"echo thaw >> {log}",
    )
    if not volume_group.device_mapper:
        # This kernel has no device-mapper: lvcreate --snapshot really fails, and says why.
        with pytest.raises(ProviderError) as caught:
            source.quiesce()
        message = str(caught.value)
        assert f"creating snapshot {volume_group.name}/data-hvmigrate of {volume_group.lv_path}" in message
        assert "device-mapper" in message and "thawed again" in message
        assert volume_group.lvs() == ["data"] and log.read_text() == "thaw\n"
        assert source.disk_location(volume_group.lv_path).path == volume_group.lv_path
        return
    source.quiesce()
    snapshot = f"/dev/{volume_group.name}/data-hvmigrate"
    assert volume_group.lvs() == ["data", "data-hvmigrate"]
    assert source.disk_location(volume_group.lv_path).path == snapshot
    source.thaw()
    assert volume_group.lvs() == ["data"] and log.read_text() == "thaw\n"
    assert source.disk_location(volume_group.lv_path).path == volume_group.lv_path


@needs_root
def test_lvm_snapshot_of_disks_that_are_no_lvs_is_refused_with_lvs_own_words(
    sshd_server: SshServer, sources: list[SshSource], tmp_path: Path
) -> None:
    if shutil.which("lvs") is None:
        pytest.skip("lvm2 is not installed (apt-get install -y lvm2)")
    disk = make_image(tmp_path / "plain.img", MiB)
    source = open_ssh(sshd_server, sources, [str(disk)], quiesce="lvm_snapshot")
    with pytest.raises(ProviderError) as caught:
        source.quiesce()
    message = str(caught.value)
    assert "no source disk is an LVM logical volume" in message
    assert f'"{disk}": Invalid path for Logical Volume' in message  # lvs itself said so
    assert "choose fsfreeze, services or a quiesce_command" in message


# ---------------------------------------------------------------- shutdown


@dataclass
class NamespacedSshd:
    """sshd as the only service of a PID namespace with its own /run: what poweroff ends is that
    namespace (the kernel's rule for reboot(2) outside the initial PID namespace), and no init system
    of this machine can be reached from it."""

    process: subprocess.Popen[bytes]
    port: int


@pytest.fixture
def namespaced_sshd(sshd_server: SshServer, tmp_path: Path) -> Iterator[NamespacedSshd]:
    if not IS_ROOT or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (util-linux) to run sshd in its own PID namespace")
    port = sshd_service._free_port()
    init = (
        "mount -t tmpfs hvmigrate-run /run && mkdir -p /run/sshd && "
        'trap "exit 0" INT HUP TERM; '  # what a container's init does when the kernel says poweroff
        f"{sshd_service.SSHD} -D -e -f {sshd_server.directory / 'sshd_config'} -p {port} "
        f"-o PidFile={tmp_path / 'ns-sshd.pid'} & wait"
    )
    log = open(tmp_path / "ns-sshd.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", "sh", "-c", init],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for _ in range(300):
            if answers_ssh("127.0.0.1", port) or process.poll() is not None:
                break
            time.sleep(0.05)
        if not answers_ssh("127.0.0.1", port):
            pytest.fail(f"sshd in a PID namespace did not start: {(tmp_path / 'ns-sshd.log').read_text()}")
        # unshare's child is the namespace's init (pid 1 inside, so the pid file cannot tell)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        if not children or os.readlink(f"/proc/{children[0]}/ns/pid") == os.readlink("/proc/self/ns/pid"):
            pytest.skip("sshd did not get its own PID namespace: poweroff would reach this machine")
        yield NamespacedSshd(process, port)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()


def test_forced_shutdown_powers_the_host_off_and_waits_until_it_is_silent(
    sshd_server: SshServer, sources: list[SshSource], namespaced_sshd: NamespacedSshd, tmp_path: Path
) -> None:
    source = open_ssh(
        sshd_server,
        sources,
        [],
        port=namespaced_sshd.port,
        known_hosts=str(tmp_path / "none"),
        host_key=sshd_server.fingerprint,
    )
    source.shutdown(timeout=60, force=True)
    assert not answers_ssh("127.0.0.1", namespaced_sshd.port)
    # its init ended on the kernel's poweroff signal (SIGINT to a PID namespace's init), not on our kill
    assert namespaced_sshd.process.wait(timeout=30) in (0, -signal.SIGINT)
    source.shutdown(timeout=60, force=True)  # already down: a retried step is a no-op


@pytest.mark.skipif(SYSTEMD_RUNNING, reason="the clean poweroff is only tried where no systemd runs at all")
def test_a_clean_poweroff_the_host_cannot_do_is_reported(
    sshd_server: SshServer, sources: list[SshSource], namespaced_sshd: NamespacedSshd, tmp_path: Path
) -> None:
    source = open_ssh(
        sshd_server,
        sources,
        [],
        port=namespaced_sshd.port,
        known_hosts=str(tmp_path / "none"),
        host_key=sshd_server.fingerprint,
    )
    # no init system answers inside the namespace: systemctl's shutdown says so, and so does the error
    with pytest.raises(ProviderError, match=r"powering off 127\.0\.0\.1 failed: .*shut it down by hand"):
        source.shutdown(timeout=60, force=False)
    assert answers_ssh("127.0.0.1", namespaced_sshd.port)


# ---------------------------------------------------------------- cutover without quiesce


@dataclass
class CutoverContext:
    """The narrow StepContext quiesce_source sees: the playbook, its source, and the events it journals."""

    playbook: Any
    opened: list[SshSource]
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    checkpoints: dict[str, Any] = field(default_factory=dict)
    node: StepNode = field(
        default_factory=lambda: StepNode("db01/quiesce_source", "quiesce_source", "db01", "cutover")
    )
    state_dir: Path = Path(".")
    base_dir: Path = Path(".")
    _source: SshSource | None = None

    @property
    def server(self) -> Server:
        return self.playbook.servers[0]

    def source(self) -> SshSource:
        if self._source is None:
            self._source = open_source(self.server, {})  # type: ignore[assignment]
            self.opened.append(self._source)  # type: ignore[arg-type]
        return self._source  # type: ignore[return-value]

    def output(self, step_id: str) -> dict[str, Any]:
        raise KeyError(step_id)  # quiesce_source runs first in the cutover: nothing of its own yet

    def checkpoint(self, key: str, value: dict[str, Any] | None) -> None:
        if value is None:
            self.checkpoints.pop(key, None)
        else:
            self.checkpoints[key] = value

    def event(self, message: str, *, level: str = "info", **data: Any) -> None:
        self.events.append((level, message, data))

    def warnings(self) -> list[str]:
        return [message for level, message, _ in self.events if level == "warning"]


def cutover_context(
    server: SshServer, opened: list[SshSource], disk: Path, cutover: dict[str, Any], **source: Any
) -> CutoverContext:
    playbook = Playbook.model_validate(
        {
            "apiVersion": "hvmigrate/v1",
            "kind": "MigrationPlaybook",
            "name": "unquiesced",
            "defaults": {"cutover": cutover},
            "providers": {"local": {"type": "sim", "root": "./sim"}},
            "servers": [
                {
                    "name": "db01",
                    "source": ssh_config(server, **source).model_dump(exclude_none=True),
                    "target": {"provider": "local", "disks": [{"source": str(disk), "format": "raw"}]},
                }
            ],
        }
    )
    return CutoverContext(playbook, opened)


def test_unquiesced_rw_mount_is_a_warning_naming_disk_and_mountpoint(
    sshd_server: SshServer, sources: list[SshSource], mounted_disk: MountedDisk
) -> None:
    ctx = cutover_context(sshd_server, sources, mounted_disk.image, {"shutdown_source": False})
    assert ctx.playbook.defaults.cutover.unquiesced_writes == "warn"  # the default
    ctx.checkpoints["db01/thawed_before_final_sync"] = {"at": 1.0}  # left by a failed pass before an undo
    output = QuiesceSource().run(ctx)  # type: ignore[arg-type]
    assert ctx.checkpoints == {}  # quiesced now: the final pass must not quiesce a second time
    (warning,) = ctx.warnings()
    assert f"{mounted_disk.loop} on {mounted_disk.mountpoint} (disk {mounted_disk.image})" in warning
    assert "no quiesce is configured" in warning and "cutover.unquiesced_writes: allow" in warning
    assert "\n" not in warning
    assert output["unquiesced_mounts"] == [
        {
            "disk": str(mounted_disk.image),
            "device": mounted_disk.loop,
            "mountpoints": [str(mounted_disk.mountpoint)],
        }
    ]
    assert "source quiesced" in [message for _, message, _ in ctx.events]  # and the cutover went on


def test_unquiesced_rw_mount_is_refused_before_anything_is_paused(
    sshd_server: SshServer, sources: list[SshSource], mounted_disk: MountedDisk, tmp_path: Path
) -> None:
    log = tmp_path / "thaw.log"
    ctx = cutover_context(
        sshd_server,
        sources,
        mounted_disk.image,
        {"unquiesced_writes": "refuse"},
        thaw_command=f"echo thaw >> {log}",  # a thaw alone pauses nothing: still no quiesce
    )
    with pytest.raises(StepFailed) as caught:
        QuiesceSource().run(ctx)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith("db01: no quiesce is configured and ")
    assert f"{mounted_disk.loop} on {mounted_disk.mountpoint} (disk {mounted_disk.image})" in message
    assert "source.quiesce (fsfreeze, lvm_snapshot or services) or source.quiesce_command" in message
    assert "cutover.unquiesced_writes: warn" in message and "nothing was stopped" in message
    assert "\n" not in message and not caught.value.retryable
    assert ctx.source().quiesce_state is None  # quiesce never ran
    assert not log.exists() and ctx.events == []


def test_configured_quiesce_read_only_mounts_and_allow_say_nothing(
    sshd_server: SshServer, sources: list[SshSource], mounted_disk: MountedDisk, tmp_path: Path
) -> None:
    refuse = {"unquiesced_writes": "refuse"}
    # fsfreeze configured: the filesystem is frozen for the pass, nothing is said about it
    frozen_ctx = cutover_context(sshd_server, sources, mounted_disk.image, refuse, quiesce="fsfreeze")
    output = QuiesceSource().run(frozen_ctx)  # type: ignore[arg-type]
    try:
        assert frozen(mounted_disk.mountpoint)
    finally:
        frozen_ctx.source().thaw(output["source_state"])
    assert frozen_ctx.warnings() == [] and "unquiesced_mounts" not in output
    # the playbook's own quiesce command counts as quiesce too
    command_ctx = cutover_context(
        sshd_server, sources, mounted_disk.image, refuse, quiesce_command=f"touch {tmp_path / 'flushed'}"
    )
    QuiesceSource().run(command_ctx)  # type: ignore[arg-type]
    assert (tmp_path / "flushed").exists() and command_ctx.warnings() == []
    # allow: accepted without asking the host
    allow_ctx = cutover_context(sshd_server, sources, mounted_disk.image, {"unquiesced_writes": "allow"})
    assert "unquiesced_mounts" not in QuiesceSource().run(allow_ctx)  # type: ignore[arg-type]
    assert allow_ctx.warnings() == []
    # mounted read-only: nothing can change under the copy
    subprocess.run(["mount", "-o", "remount,ro", str(mounted_disk.mountpoint)], check=True)
    read_only = cutover_context(sshd_server, sources, mounted_disk.image, refuse)
    QuiesceSource().run(read_only)  # type: ignore[arg-type]
    assert read_only.warnings() == []
    assert read_only.source().unquiesced_mounts() == []


def test_a_partition_mounted_through_an_offset_loop_is_traced_to_its_disk(
    sshd_server: SshServer, sources: list[SshSource], tmp_path: Path
) -> None:
    """A partition of a disk (here a file, its partition mapped with losetup -o) is reported under the
    disk the playbook names; the disk's other, unmounted image is not reported at all."""
    if not IS_ROOT or shutil.which("losetup") is None:
        pytest.skip("needs root: loop devices and mount")
    disk = partitioned_disk(tmp_path / "db01-vda.img")
    idle = partitioned_disk(tmp_path / "db01-vdb.img")
    mountpoint = tmp_path / "root mnt"  # a space: the mount table escapes it as \040
    mountpoint.mkdir()
    loop = subprocess.run(
        ["losetup", "--find", "--show", "-o", str(MiB), str(disk)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        subprocess.run(["mount", loop, str(mountpoint)], check=True, capture_output=True)
        try:
            source = open_ssh(sshd_server, sources, [str(idle), str(disk)])
            (live,) = source.unquiesced_mounts()
            assert (live.disk, live.device, live.mountpoints) == (str(disk), loop, (str(mountpoint),))
            ctx = cutover_context(sshd_server, sources, disk, {"unquiesced_writes": "refuse"})
            with pytest.raises(StepFailed, match=f"{loop} on {mountpoint} \\(disk {disk}\\) is mounted"):
                QuiesceSource().run(ctx)  # type: ignore[arg-type]
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True)
    finally:
        subprocess.run(["losetup", "--detach", loop], check=True)
