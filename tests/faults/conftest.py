"""Fault-injection fixtures: one small server (db01 of the quickstart) run by the real `migrate` command.

The fault tests reuse the end-to-end `Migration` helper and the quickstart images; what they add is a
trimmed playbook (one server, so a case costs seconds), an environment per command (failpoints, secrets),
and checks of what a run left behind, read from the sim host's files and the journal, not from the tool's
own opinion of itself.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from orchestrator.guest.linux import find_linux_root
from tests.e2e.conftest import REPO, Migration
from tests.e2e.conftest import image_cache as image_cache  # the session's quickstart images
from tests.faults import forked
from tests.images import sha256

PB = "quickstart.yaml"
SERVER = "db01"
DISKS = {"db01-disk0": "db01.raw", "db01-disk1": "db01-data.raw"}  # replica disk -> source image
ZONE_BASE = {"@ 3600 IN NS ns1", "ns1 3600 IN A 127.0.0.1"}  # what the sim zone holds before any cutover


class FaultMigration(Migration):
    """A `Migration` whose commands can carry extra environment (a failpoint, a secret)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.extra_env: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra_env}

    def run_here(self, *args: str, check: int | None = 0) -> Result:
        """The same `migrate` command, run inside the test process: a re-run or an undo after a kill
        needs no fresh interpreter, and skipping one (imports, plan) per command is what keeps dozens of
        cases inside the time budget. Only the command that is to be killed must be a process of its own."""
        from orchestrator.cli import main

        playbook, *rest = args[1:] or ("",)
        argv = [args[0], *([str(self.root / playbook)] if playbook else []), *rest]
        done = CliRunner().invoke(
            main, argv, env={"COLUMNS": "200", **self.extra_env}, catch_exceptions=False
        )
        if check is not None:
            assert done.exit_code == check, f"migrate {' '.join(args)} -> {done.exit_code}\n{done.output}"
        return done

    def fork(self, *args: str) -> tuple[BaseProcess, Path]:
        """``migrate ARGS`` as a process of its own, forked from a warm interpreter (see `forked`): for
        the commands a test kills. Returns the process and the file its output goes to."""
        log = self.root / "migrate-forked.log"
        return forked.start(list(args), self.root, {"COLUMNS": "200", **self.extra_env}, log), log

    # ------------------------------------------------------------ what the run left behind

    def journal_rows(self, query: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        db = sqlite3.connect(f"file:{self.state / 'journal.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(query, args).fetchall()
        finally:
            db.close()

    def live_resources(self) -> Counter[tuple[str, str, str, str]]:
        """(step, kind, provider, ref) of every resource the journal says exists, with multiplicity."""
        rows = self.journal_rows(
            "SELECT step_id, kind, provider, ref FROM resources WHERE removed_at IS NULL"
        )
        return Counter((str(s), str(k), str(p), str(r)) for s, k, p, r in rows)

    def sim_inventory(self) -> dict[str, object]:
        """The sim host as its files show it: VMs, appliances, disks, attachments, leftovers."""
        root = self.sim
        vms = sorted(p.stem for p in (root / "vms").glob("*.json")) if (root / "vms").is_dir() else []
        appliances = sorted(p.stem for p in (root / "appliances").glob("*.json"))
        datastore = root / "datastores" / "default"
        files = sorted(p.name for p in datastore.iterdir()) if datastore.is_dir() else []
        attached: Counter[str] = Counter()
        for doc in [*(root / "appliances").glob("*.json"), root / "host-attachments.json"]:
            if doc.exists():
                attached.update(list(yaml.safe_load(doc.read_text())["attachments"]))
        return {
            "vms": vms,
            "appliances": appliances,
            "disks": [f for f in files if f.endswith(".raw")],
            "files": files,
            "attachments": attached,
            "temporary": sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp")),
        }

    def zone_records(self) -> set[str]:
        zone = self.root / "sim-dns" / "corp.test.zone"
        if not zone.exists():
            return set(ZONE_BASE)
        lines = zone.read_text().splitlines()
        return {line for line in lines if line and not line.startswith("$") and " SOA " not in line}


def small_playbook(root: Path, *, mirror_limit: str = "1GiB/s") -> None:
    """The quickstart cut to db01 (two disks: a partitioned Linux root and an ext4 data disk), with pre-
    and post-cutover scripts so those step boundaries exist too, and one bandwidth limit all week."""
    playbook = yaml.safe_load((REPO / "playbooks" / "quickstart.yaml").read_text())
    playbook["servers"] = [s for s in playbook["servers"] if s["name"] == SERVER]
    playbook["defaults"]["mirror"]["bandwidth"] = {"limit": mirror_limit}
    playbook["defaults"]["cutover"].update(
        pre_script="echo pre >> scripts.log", post_script="echo post >> scripts.log"
    )
    (root / PB).write_text(yaml.safe_dump(playbook, sort_keys=False))


def copy_images(image_cache: Path, images: Path) -> None:
    images.mkdir(parents=True, exist_ok=True)
    for name in sorted(set(DISKS.values())):
        subprocess.run(["cp", "--sparse=always", str(image_cache / name), str(images / name)], check=True)


@pytest.fixture
def small(tmp_path: Path, image_cache: Path) -> Iterator[FaultMigration]:
    copy_images(image_cache, tmp_path / "images")
    small_playbook(tmp_path)
    yield FaultMigration(tmp_path)


def restore_tree(snapshot: Path, root: Path) -> None:
    """Put a saved migration folder back at the same path (the sim and journal record absolute paths)."""
    if root.exists():
        shutil.rmtree(root)
    subprocess.run(["cp", "-a", "--sparse=always", str(snapshot), str(root)], check=True)


# ---------------------------------------------------------------- disk checks


def mbr_partitions(path: Path) -> list[tuple[int, int]]:
    """(offset, length) in bytes of each primary MBR partition, read from the image's own table."""
    with open(path, "rb") as handle:
        sector = handle.read(512)
    found = []
    for index in range(4):
        entry = sector[446 + 16 * index : 446 + 16 * (index + 1)]
        start, count = int.from_bytes(entry[8:12], "little"), int.from_bytes(entry[12:16], "little")
        if entry[4] and count:
            found.append((start * 512, count * 512))
    return found


def same_bytes(a: Path, b: Path, start: int, end: int) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        offset = start
        while offset < end:
            length = min(1 << 20, end - offset)
            if os.pread(fa.fileno(), length, offset) != os.pread(fb.fileno(), length, offset):
                return False
            offset += length
    return True


def assert_replica_matches_source(m: FaultMigration, workdir: Path) -> None:
    """The data disk is byte-identical to its source; the boot disk is byte-identical outside its root
    filesystem (MBR, gap, raw database area), and the root filesystem, which staging edits on purpose
    (hostname, network), is clean by e2fsck and still holds the source's own files."""
    data = m.disk("db01-disk1")
    assert sha256(data) == sha256(m.images / DISKS["db01-disk1"]), "data disk differs from its source"
    boot, source = m.disk("db01-disk0"), m.images / DISKS["db01-disk0"]
    assert boot.stat().st_size == source.stat().st_size
    (root_start, root_length), *_ = mbr_partitions(source)
    assert mbr_partitions(boot) == mbr_partitions(source)
    assert same_bytes(boot, source, 0, root_start), "boot disk differs before its root partition"
    assert same_bytes(boot, source, root_start + root_length, source.stat().st_size), (
        "boot disk differs after its root partition (the raw database area)"
    )
    extracted = workdir / "root.ext4"
    with open(boot, "rb") as src, open(extracted, "wb") as dst:
        dst.write(os.pread(src.fileno(), root_length, root_start))
    fsck = subprocess.run(["e2fsck", "-fn", str(extracted)], capture_output=True, text=True, check=False)
    extracted.unlink()
    assert fsck.returncode == 0, f"the replica's root filesystem is damaged:\n{fsck.stdout}{fsck.stderr}"
    replica_root, source_root = find_linux_root(boot), find_linux_root(source)
    assert replica_root is not None and source_root is not None
    for path in ("/etc/db/db.conf", "/etc/os-release"):
        assert replica_root.fs.read(path) == source_root.fs.read(path), path
