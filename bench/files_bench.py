"""Files-and-folders bench: hvmigrate's files mirror against `rsync -a`, locally and over SSH.

A tree of small files (default 100,000 of 1-8 KiB, 100 per folder) and a few large ones is generated
under /tmp. Each round, each tool makes a first copy into an empty folder (initial mirror); then, round
after round, 1% of the small files change (and one 4 KiB block of each large file) and each tool runs a
difference pass. The tools take turns (hvmigrate, rsync, then rsync, hvmigrate in the next round, so
neither always runs second on a warmer cache) and the table shows the median of the rounds, because this
machine is shared and one run says little. Every timing includes a `sync` after the tool, so data still
in the page cache is not counted as copied. Copies are checked against the source (`diff -r`) after the
first and last round. Ratios: initial throughput rsync time / hvmigrate time (goal >= 1x) and
difference-pass time hvmigrate / rsync (goal <= 0.5x). Over SSH the bench starts its own sshd
(tests/services/sshd.py) on 127.0.0.1 and reads the source through it with both tools. Locally, the CPU
seconds (user + system) of each tool are shown too: they vary less than wall time on a loaded machine.

    python bench/files_bench.py [--files 100000] [--large 3] [--large-size 64MiB] [--rounds 3] [--no-ssh]
                                [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.files.mirror import LocalTree, Options, Pair, RemoteTree, mirror_pass
from orchestrator.files.rules import RuleSet, make_rule
from orchestrator.playbook.units import parse_size
from orchestrator.transport.local import LocalTransport
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


def change_one_percent(root: Path, small: list[Path], large: int, seed: int = 11) -> None:
    rng = random.Random(seed)
    for path in rng.sample(small, max(1, len(small) // 100)):
        path.write_bytes(os.urandom(rng.randint(1024, 8192)))
    for index in range(large):
        with open(root / f"large{index}.bin", "r+b") as handle:
            handle.seek(rng.randrange(0, os.fstat(handle.fileno()).st_size - 4096))
            handle.write(os.urandom(4096))


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def cpu_seconds() -> float:
    """CPU used so far by this process and its waited-for children (rsync, a local agent)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def timed(action: Callable[[], None]) -> tuple[float, float]:
    """Wall seconds and CPU seconds of ``action``, its writes flushed to disk."""
    subprocess.run(["sync"], check=True)  # earlier writes (the tree, the other tool) are not this one's cost
    cpu = cpu_seconds()
    started = time.perf_counter()
    action()
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - started, cpu_seconds() - cpu


def same(a: Path, b: Path) -> None:
    result = subprocess.run(["diff", "-rq", str(a), str(b)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"copies differ: {result.stdout[:500]}")


def hvm(source_tree: object, src: Path, dst: Path) -> None:
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


class Samples:
    """Wall and CPU seconds per (pass, where, tool), one per round."""

    def __init__(self) -> None:
        self.wall: dict[tuple[str, str, str], list[float]] = {}
        self.cpu: dict[tuple[str, str, str], list[float]] = {}

    def add(self, key: tuple[str, str, str], measured: tuple[float, float]) -> None:
        self.wall.setdefault(key, []).append(measured[0])
        self.cpu.setdefault(key, []).append(measured[1])

    def median(self, key: tuple[str, str, str], cpu: bool = False) -> float:
        return statistics.median((self.cpu if cpu else self.wall)[key])


def run_rounds(
    kind: str,
    rounds: int,
    ends: list[tuple[str, object, list[str] | None]],
    src: Path,
    base: Path,
    samples: Samples,
    before_round: Callable[[int], None],
) -> None:
    for number in range(rounds):
        before_round(number)
        for where, tree, ssh in ends:
            mine, theirs = (
                base / f"hvm-{where.replace(', ', '-')}",
                base / f"rsync-{where.replace(', ', '-')}",
            )
            if kind == "initial":
                shutil.rmtree(mine, ignore_errors=True)
                shutil.rmtree(theirs, ignore_errors=True)
            turns = [
                ("hvmigrate", lambda t=tree, m=mine: hvm(t, src, m)),
                ("rsync", lambda s=ssh, r=theirs: rsync(src, r, s)),
            ]
            for tool, action in turns if number % 2 == 0 else reversed(turns):
                measured = timed(action)
                samples.add((kind, where, tool), measured)
                print(f"  {kind} {where} round {number + 1}: {tool} {measured[0]:.2f}s", flush=True)
            if number in (0, rounds - 1):
                same(src, mine)
                same(src, theirs)


def print_table(samples: Samples, ends: list, files: int, total: int, rounds: int) -> None:
    print(f"\n{files} small files + large ones, {total / 1e6:.0f} MB; medians of {rounds} rounds")
    print(f"{'pass':<27}{'hvmigrate':>11}{'rsync -a':>11}{'ratio':>9}  goal{'':<18}cpu hvm/rsync")
    for kind, goal in (("initial", "throughput >= 1x"), ("difference", "time <= 0.5x")):
        for where, _, _ in ends:
            key_h, key_r = (kind, where, "hvmigrate"), (kind, where, "rsync")
            h, r = samples.median(key_h), samples.median(key_r)
            ratio = r / h if kind == "initial" else h / r
            cpu = ""
            if where == "local, in-process":  # an agent's CPU is not counted until it exits
                cpu = f"{samples.median(key_h, True):.2f}s/{samples.median(key_r, True):.2f}s"
            print(f"{kind + ', ' + where:<27}{h:>10.2f}s{r:>10.2f}s{ratio:>8.2f}x  {goal:<22}{cpu}")


def ssh_end(base: Path) -> tuple[object, object, list[str]] | None:
    from tests.services.sshd import missing_tools, running_sshd

    if missing_tools():
        return None
    server_cm = running_sshd(base / "sshd")
    server = server_cm.__enter__()
    transport = SshTransport(
        server.host,
        port=server.port,
        user=server.user,
        key_file=server.client_key,
        known_hosts=server.known_hosts,
    )
    ssh = ["ssh", "-p", str(server.port), "-i", str(server.client_key)]
    ssh += ["-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "BatchMode=yes", "-l", server.user]
    return server_cm, RemoteTree(transport), ssh


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=3)
    parser.add_argument("--large-size", default="64MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-ssh", action="store_true")
    parser.add_argument(
        "--dir",
        default="/tmp",
        help="where the trees go; /dev/shm (tmpfs) takes this machine's disk, whose speed swings 2-3x "
        "from one minute to the next on a shared host, out of the comparison",
    )
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="hvm-files-bench-", dir=args.dir))
    server_cm = None
    ends: list[tuple[str, object, list[str] | None]] = []
    try:
        src = base / "src"
        started = time.perf_counter()
        small = build_tree(src, args.files, args.large, parse_size(args.large_size))
        total = tree_bytes(src)
        print(
            f"tree: {args.files} small + {args.large} large files, {total / 1e6:.0f} MB, "
            f"built in {time.perf_counter() - started:.1f}s"
        )
        # as `migrate` runs it: the source walked and read by a files agent (here a local process, not
        # SSH), the target written in-process; then both ends in-process (the library's LocalTree), where
        # the two walks share one interpreter
        ends.append(("local, agent", RemoteTree(LocalTransport()), None))
        ends.append(("local, in-process", LocalTree(), None))
        if not args.no_ssh:
            started_ssh = ssh_end(base)
            if started_ssh is not None:
                server_cm, tree, ssh = started_ssh
                ends.append(("ssh", tree, ssh))
        samples = Samples()
        run_rounds("initial", args.rounds, ends, src, base, samples, lambda number: None)
        run_rounds(
            "difference",
            args.rounds,
            ends,
            src,
            base,
            samples,
            lambda number: change_one_percent(src, small, args.large, seed=11 + number),
        )
        print_table(samples, ends, args.files, total, args.rounds)
    finally:
        for _, tree, _ in ends:
            tree.close()  # type: ignore[attr-defined]
        if server_cm is not None:
            server_cm.__exit__(None, None, None)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
