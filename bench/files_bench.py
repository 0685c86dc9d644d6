"""Files-and-folders bench: hvmigrate's files mirror against `rsync -a`, locally and over SSH.

A tree of small files (default 100,000 of 1-8 KiB in 1,000 folders) and a few large ones is generated
under /tmp; each tool makes a first copy, then 1% of the small files change (and one block of each large
file) and each tool runs a difference pass. Every copy is checked against the source (`diff -r`) and the
ratios printed: initial throughput hvmigrate/rsync (goal >= 1x), difference-pass time hvmigrate/rsync
(goal <= 0.5x). Over SSH the bench starts its own sshd (tests/services/sshd.py) on 127.0.0.1.

    python bench/files_bench.py [--files 100000] [--large 3] [--large-size 64MiB] [--no-ssh]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.files.mirror import LocalTree, Options, Pair, RemoteTree, mirror_pass
from orchestrator.files.rules import RuleSet, make_rule
from orchestrator.playbook.units import parse_size
from orchestrator.transport.ssh import SshTransport


def build_tree(root: Path, files: int, large: int, large_size: int) -> list[Path]:
    rng = random.Random(7)
    per_folder = 100
    small: list[Path] = []
    noise = os.urandom(1 << 20)
    for index in range(files):
        folder = root / f"d{index // per_folder:04d}"
        if index % per_folder == 0:
            folder.mkdir(parents=True)
        size = rng.randint(1024, 8192)
        start = rng.randint(0, len(noise) - size)
        path = folder / f"f{index:06d}.dat"
        path.write_bytes(noise[start : start + size])
        small.append(path)
    for index in range(large):
        with open(root / f"large{index}.bin", "wb") as handle:
            for _ in range(large_size // (1 << 20)):
                handle.write(os.urandom(1 << 20))
    return small


def change_one_percent(root: Path, small: list[Path], large: int) -> None:
    rng = random.Random(11)
    for path in rng.sample(small, max(1, len(small) // 100)):
        path.write_bytes(os.urandom(rng.randint(1024, 8192)))
    for index in range(large):
        with open(root / f"large{index}.bin", "r+b") as handle:
            handle.seek(rng.randrange(0, os.fstat(handle.fileno()).st_size - 4096))
            handle.write(os.urandom(4096))


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def timed(action) -> float:
    subprocess.run(["sync"], check=True)  # earlier writes (the tree, the other tool) are not this one's cost
    started = time.perf_counter()
    action()
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - started


def same(a: Path, b: Path) -> None:
    result = subprocess.run(["diff", "-rq", str(a), str(b)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"copies differ: {result.stdout[:500]}")


def hvm(source_tree, src: Path, dst: Path) -> None:
    rules = RuleSet([make_rule(str(src))])
    result = mirror_pass(
        source_tree, LocalTree(), [Pair(os.fsencode(src), os.fsencode(dst))], rules, Options()
    )
    if result.problems:
        raise SystemExit(f"hvmigrate reported problems: {result.problems[:3]}")


def rsync(src: Path, dst: Path, ssh: list[str] | None = None) -> None:
    argv = ["rsync", "-a", "--delete"]
    if ssh:
        argv += ["-e", " ".join(ssh), f"127.0.0.1:{src}/", f"{dst}/"]
    else:
        argv += [f"{src}/", f"{dst}/"]
    subprocess.run(argv, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=3)
    parser.add_argument("--large-size", default="64MiB")
    parser.add_argument("--no-ssh", action="store_true")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="hvm-files-bench-", dir="/tmp"))
    rows: list[tuple[str, float, float]] = []
    try:
        src = base / "src"
        started = time.perf_counter()
        small = build_tree(src, args.files, args.large, parse_size(args.large_size))
        total = tree_bytes(src)
        print(
            f"tree: {args.files} small + {args.large} large files, {total / 1e6:.0f} MB, "
            f"built in {time.perf_counter() - started:.1f}s"
        )
        ends: list[tuple[str, object, list[str] | None]] = [("local", LocalTree(), None)]
        server_cm = None
        if not args.no_ssh:
            from tests.services.sshd import missing_tools, running_sshd

            if not missing_tools():
                server_cm = running_sshd(base / "sshd")
                server = server_cm.__enter__()
                transport = SshTransport(
                    server.host,
                    port=server.port,
                    user=server.user,
                    key_file=server.client_key,
                    known_hosts=server.known_hosts,
                )
                ssh = [
                    "ssh",
                    "-p",
                    str(server.port),
                    "-i",
                    str(server.client_key),
                    "-o",
                    f"UserKnownHostsFile={server.known_hosts}",
                    "-o",
                    "BatchMode=yes",
                    "-l",
                    server.user,
                ]
                ends.append(("ssh", RemoteTree(transport), ssh))
        first: dict[tuple[str, str], float] = {}
        for where, tree, ssh in ends:
            first[(where, "hvmigrate")] = timed(lambda t=tree, w=where: hvm(t, src, base / f"hvm-{w}"))
            first[(where, "rsync")] = timed(lambda w=where, s=ssh: rsync(src, base / f"rsync-{w}", s))
            same(src, base / f"hvm-{where}")
        change_one_percent(src, small, args.large)
        diff: dict[tuple[str, str], float] = {}
        for where, tree, ssh in ends:
            diff[(where, "hvmigrate")] = timed(lambda t=tree, w=where: hvm(t, src, base / f"hvm-{w}"))
            diff[(where, "rsync")] = timed(lambda w=where, s=ssh: rsync(src, base / f"rsync-{w}", s))
            same(src, base / f"hvm-{where}")
            same(src, base / f"rsync-{where}")
        print(f"\n{'pass':<22}{'hvmigrate':>12}{'rsync -a':>12}{'ratio':>10}  goal")
        for where, _, _ in ends:
            h, r = first[(where, "hvmigrate")], first[(where, "rsync")]
            print(f"{'initial, ' + where:<22}{h:>11.2f}s{r:>11.2f}s{r / h:>9.2f}x  throughput >= 1x")
            rows.append((f"initial {where}", h, r))
        for where, _, _ in ends:
            h, r = diff[(where, "hvmigrate")], diff[(where, "rsync")]
            print(f"{'difference, ' + where:<22}{h:>11.2f}s{r:>11.2f}s{h / r:>9.2f}x  time <= 0.5x")
        for _, tree, _ in ends:
            tree.close()
        if server_cm is not None:
            server_cm.__exit__(None, None, None)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
