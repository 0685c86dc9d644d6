"""A running Linux server read over SSH, end to end through the real `migrate` command.

The server is this machine, reached through a real sshd on loopback; its "disks" are image files on it (a
file stands for /dev/vda). The reader agent runs there, the writer here, the orchestrator relays: the
path every SSH source takes. The source is never shut down here (shutdown_source: false): it is us.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from tests.e2e.conftest import Migration
from tests.images import sha256
from tests.services import sshd as sshd_service
from tests.services.sshd import SshServer

sshd_server = sshd_service.sshd_server

PB = "over-ssh.yaml"
CHUNK = 1024**2


def playbook(m: Migration, server: SshServer, markers: Path) -> None:
    root, data = m.images / "db01.raw", m.images / "db01-data.raw"
    (m.root / PB).write_text(
        f"""apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: over-ssh
defaults:
  mirror: {{chunk_size: 1MiB, compression: zstd}}
  cutover: {{mode: manual, shutdown_source: false}}
providers:
  local: {{type: sim, root: ./sim-hypervisor, datastores: {{default: 4GiB}}, networks: [prod]}}
servers:
  - name: db01
    source:
      type: ssh
      host: {server.host}
      port: {server.port}
      user: {server.user}
      key: {server.client_key}
      known_hosts: {server.known_hosts}
      quiesce_command: "echo frozen >> {markers}"
      thaw_command: "echo thawed >> {markers}"
    target:
      provider: local
      vm_name: db01
      disks:
        - {{source: {root}, format: raw}}
        - {{source: {data}, format: raw}}
"""
    )


def test_a_server_read_over_ssh_is_mirrored_synced_and_cut_over(
    migration: Migration, sshd_server: SshServer, tmp_path: Path
) -> None:
    m = migration
    markers = tmp_path / "quiesce.log"
    playbook(m, sshd_server, markers)
    source_data = m.images / "db01-data.raw"
    m.run("execute", PB)
    assert sha256(m.disk("db01-disk1")) == sha256(source_data)
    mirror = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["state"] for s in mirror["servers"]} == {"ready for cutover"}

    # The server keeps running and writes: two chunks change, and only those travel.
    with open(source_data, "r+b") as disk:
        for chunk in (3, 17):
            disk.seek(chunk * CHUNK)
            disk.write(os.urandom(CHUNK))
    m.run("sync", PB)
    db = sqlite3.connect(f"file:{m.state / 'journal.sqlite'}?mode=ro", uri=True)
    events = [row[0] for row in db.execute("SELECT data FROM events WHERE step_id='db01/sync' ORDER BY id")]
    db.close()
    passes = [json.loads(line) for line in events if '"bytes_sent"' in line]
    data_pass = [p for p in passes if p["disk"] == "db01-disk1"][-1]  # this sync, not execute's
    assert data_pass["bytes_written"] == 2 * CHUNK
    assert data_pass["bytes_sent"] < 2.2 * CHUNK  # random data: no compression, little framing
    assert sha256(m.disk("db01-disk1")) == sha256(source_data)

    m.run("cutover", PB)
    assert markers.read_text().split() == ["frozen", "thawed"]  # quiesced for the final pass, then thawed
    assert sha256(m.disk("db01-disk1")) == sha256(source_data)
    final = json.loads(m.run("status", PB, "--json").stdout)
    assert {s["state"] for s in final["servers"]} == {"cut over"}
