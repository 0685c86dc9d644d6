"""The data mover side by side with cp, qemu-img and rsync: full copies, incremental syncs, hashing, memory.

Run it with ``.venv/bin/python bench/mirror_bench.py [--size 4GiB] [--quick] [--repeat N] [--json FILE]``
(as root, or with the peers installed: it installs rsync, qemu-utils and openssh with apt-get when one of
their programs is missing, and starts its own sshd on 127.0.0.1 with generated keys).

It generates one source image (30% random data, 20% repeated text, 50% zeros; most zeros are holes, as in
a real thin image, some are written zero blocks), in extents of 1 to 32 MiB so that some chunks mix data
and zeros, then measures, interleaving the tools so the noise of a shared machine hits all of them alike:

* full copy, local: hvmigrate in-process (``mirror_disk``) and through two local agents (``mirror_remote``)
  against ``cp --sparse=always``, ``qemu-img convert -O raw`` and ``rsync --sparse``;
* full copy over SSH to localhost: hvmigrate's reader agent over SSH (writer local) against
  ``rsync -e ssh --sparse`` pulling from the same sshd;
* incremental after 1% of the chunks were overwritten with random bytes: hvmigrate (in-process, local
  agents, SSH) against ``rsync --inplace --no-whole-file`` (local and over SSH), with the bytes each put on
  the wire;
* hashing throughput of one core (xxh3_128 and the stdlib fallback BLAKE2b-128) and the peak RSS of the
  hvmigrate processes of every run.

Fairness: every timed region ends with the target durable (hvmigrate's writer fdatasyncs; each peer is
followed by ``sync TARGET``, an fsync of that file, inside the timed region; ``sync -f`` would also flush
the other users' writes on a shared machine), every full copy starts from no target at all, incremental
targets are dropped from the page cache before each run, and the whole source is read (untimed) before
every run, so that each tool finds it in the page cache whatever other users of the machine evicted
meanwhile. Each copy's sha256 is compared with the source's
outside the timed region. Each hvmigrate pass runs in a fresh orchestrator process, timed from the call
to its return (the interpreter's start and imports excluded: a running orchestrator pays them once), so
that process's peak RSS is the pass's own. The figures are the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from orchestrator.mirror.agent_bundle import BOOTSTRAP
from orchestrator.mirror.blockmap import map_path_for
from orchestrator.mirror.copier import mirror_disk
from orchestrator.mirror.file_reader import FileDiskReader
from orchestrator.mirror.hashing import BLAKE2B_128, XXH3_128, aligned_buffer, chunk_hasher
from orchestrator.mirror.remote import mirror_remote
from orchestrator.playbook.units import parse_size
from orchestrator.transport.local import LocalTransport
from orchestrator.transport.ssh import SshTransport
from tests.services.sshd import SshServer, running_sshd

KiB, MiB, GiB = 1024, 1024**2, 1024**3
CHUNK = 4 * MiB
EXTENT_UNIT = MiB
EXTENT_MAX_UNITS = 32
KINDS = ("random", "text", "zero")
KIND_WEIGHTS = (3, 2, 5)  # 30% random, 20% text, 50% zeros
WRITTEN_ZERO_SHARE = 0.1  # of the zero extents, written as zero blocks instead of left as holes
CHANGED_SHARE = 0.01
LOCAL_AGENTS = "hvmigrate (local agents)"
HASH_BUFFER = 256 * MiB
# --ignore-times: a source changed in the same second as rsync last wrote its target has the target's size
# and mtime, and rsync's quick check would skip it without looking (it did, in a quick run)
RSYNC_DELTA = ("--inplace", "--no-whole-file", "--ignore-times")

GOAL_FULL_LOCAL = 0.9  # x the fastest local peer's throughput
GOAL_FULL_SSH = 1.0  # x rsync -e ssh's throughput
GOAL_INCREMENTAL = 0.2  # x rsync's time
GOAL_WIRE = 1.2  # x the changed bytes
GOAL_HASH = 1.0  # GB/s per core, xxh3_128
GOAL_RSS = 200 * MiB  # the bound is for a 1 TiB disk; a smaller one must stay under it too

# the program each peer needs -> its Debian package
PEERS = {
    "rsync": "rsync",
    "qemu-img": "qemu-utils",
    "/usr/sbin/sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


def say(message: str) -> None:
    """Progress for the operator on stderr; the results go to stdout."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- setup


def ensure_peers() -> list[str]:
    """Install the Debian packages of missing peer programs; returns what was installed."""
    missing = sorted({pkg for prog, pkg in PEERS.items() if not (shutil.which(prog) or Path(prog).exists())})
    if not missing:
        return []
    if os.geteuid() != 0:
        raise SystemExit(f"missing peers: run as root, or apt-get install -y {' '.join(missing)}")
    say(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    return missing


class RandomStream:
    """Incompressible bytes at GB/s (AES-128-CTR over zeros), reproducible from a seed."""

    def __init__(self, seed: int) -> None:
        key = hashlib.sha256(f"hvmigrate-bench-{seed}".encode()).digest()
        self._encryptor = Cipher(algorithms.AES(key[:16]), modes.CTR(key[16:])).encryptor()
        self._zeros = bytes(8 * MiB)

    def take(self, count: int) -> bytes:
        parts = []
        while count > 0:
            step = min(count, len(self._zeros))
            parts.append(self._encryptor.update(self._zeros[:step]))
            count -= step
        return parts[0] if len(parts) == 1 else b"".join(parts)


def text_block(size: int) -> bytes:
    """Log-like lines: repeated text that compresses well, but not to nothing."""
    rng = random.Random(7)
    services = ["sshd", "cron", "kernel", "systemd", "postgres", "nginx", "dockerd", "kubelet"]
    verbs = ["Accepted publickey for", "Started session of", "connection from", "checkpoint complete for"]
    lines, total, n = [], 0, 0
    while total < size:
        line = (
            f"Jan {1 + n // 86400 % 28:02d} {n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d} db01 "
            f"{rng.choice(services)}[{rng.randint(100, 65000)}]: {rng.choice(verbs)} "
            f"user{rng.randint(1, 40)} from 10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)} port "
            f"{rng.randint(1024, 65535)}\n"
        ).encode()
        lines.append(line)
        total += len(line)
        n += 1
    return b"".join(lines)[:size]


@dataclass
class Image:
    path: Path
    size: int
    random_bytes: int = 0
    text_bytes: int = 0
    hole_bytes: int = 0
    written_zero_bytes: int = 0
    allocated: int = 0
    sha256: str = ""

    def describe(self) -> str:
        share = {k: 100 * v / self.size for k, v in asdict(self).items() if k.endswith("_bytes")}
        return (
            f"{human(self.size)} apparent, {human(self.allocated)} allocated: "
            f"{share['random_bytes']:.0f}% random, {share['text_bytes']:.0f}% text, "
            f"{share['hole_bytes']:.0f}% holes, {share['written_zero_bytes']:.0f}% written zeros"
        )


def layout(size: int, rng: random.Random) -> list[tuple[str, int]]:
    """(kind, length) extents covering ``size`` in a random order, each kind exactly its share."""
    units = size // EXTENT_UNIT
    budget = {
        kind: units * weight // sum(KIND_WEIGHTS) for kind, weight in zip(KINDS, KIND_WEIGHTS, strict=True)
    }
    budget["zero"] += units - sum(budget.values())
    pieces = []
    for kind, left in budget.items():
        while left:
            step = min(left, rng.randint(1, EXTENT_MAX_UNITS))
            pieces.append((kind, step * EXTENT_UNIT))
            left -= step
    rng.shuffle(pieces)
    if size % EXTENT_UNIT:
        pieces.append(("zero", size % EXTENT_UNIT))
    return pieces


def generate_image(path: Path, size: int, seed: int = 1) -> Image:
    rng = random.Random(seed)
    noise = RandomStream(seed)
    text = text_block(8 * MiB)
    image = Image(path, size)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        offset = 0
        for kind, length in layout(size, rng):
            if kind == "zero" and rng.random() >= WRITTEN_ZERO_SHARE:
                image.hole_bytes += length
            else:
                done = 0
                while done < length:
                    step = min(length - done, 8 * MiB)
                    if kind == "random":
                        data: bytes = noise.take(step)
                    elif kind == "text":
                        start = (offset + done) % (len(text) - step + 1)
                        data = text[start : start + step]
                    else:
                        data = bytes(step)
                    os.pwrite(fd, data, offset + done)
                    done += step
                field_name = {"random": "random_bytes", "text": "text_bytes"}.get(kind, "written_zero_bytes")
                setattr(image, field_name, getattr(image, field_name) + length)
            offset += length
        os.fsync(fd)
    finally:
        os.close(fd)
    image.allocated = allocated(path)
    return image


def change_chunks(path: Path, share: float, seed: int) -> tuple[int, int]:
    """Overwrite ``share`` of the chunks, chosen at random, with random bytes: (chunks, bytes) changed."""
    size = path.stat().st_size
    count = -(-size // CHUNK)
    rng = random.Random(seed)
    chosen = rng.sample(range(count), max(1, round(count * share)))
    noise = RandomStream(10_000 + seed)
    changed = 0
    fd = os.open(path, os.O_WRONLY)
    try:
        for index in chosen:
            length = min(CHUNK, size - index * CHUNK)
            os.pwrite(fd, noise.take(length), index * CHUNK)
            changed += length
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(chosen), changed


def warm(path: Path) -> float:
    """Read the whole source (holes too: a peer that reads them finds cached zero pages) so that the next
    tool finds it in the page cache whatever the machine's other users evicted meanwhile; seconds taken."""
    began = time.perf_counter()
    view = aligned_buffer(8 * MiB)
    with open(path, "rb", buffering=0) as handle:
        offset = 0
        while True:
            got = os.preadv(handle.fileno(), [view], offset)
            if got <= 0:
                break
            offset += got
    return time.perf_counter() - began


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def drop_cached(path: Path) -> None:
    """Evict one (synced) file from the page cache: a target is read from the disk, not from memory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def remove_target(path: Path) -> None:
    for leftover in (path, map_path_for(path)):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def human(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


# ---------------------------------------------------------------- memory


def vm_hwm(pid: int | str = "self") -> int | None:
    """Peak resident set size of a process (VmHWM), in bytes."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2 :].split()[1])


class AgentWatcher:
    """Samples the peak RSS of this bench's hvmigrate agents while a run lasts.

    An agent, local or started by sshd, runs as ``python -c BOOTSTRAP N``: that command line finds it,
    and its ancestry (this process, or the bench's own sshd) tells it from the agents of anyone else
    testing on this machine. VmHWM only grows, so the last sample of each is its peak up to at most one
    interval before it ended.
    """

    INTERVAL = 0.25

    def __init__(self, roots: set[int]) -> None:
        self.peaks: dict[int, int] = {}
        self._roots = roots
        self._marker = BOOTSTRAP.encode()[:40]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-watcher", daemon=True)

    def __enter__(self) -> AgentWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.INTERVAL):
                return

    def sample(self) -> None:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            if self._marker in cmdline and self._ours(int(name)):
                peak = vm_hwm(name)
                if peak:
                    self.peaks[int(name)] = max(peak, self.peaks.get(int(name), 0))

    def _ours(self, pid: int) -> bool:
        while pid > 1:
            if pid in self._roots:
                return True
            pid = parent(pid)
        return False

    @property
    def peak(self) -> int | None:
        return max(self.peaks.values()) if self.peaks else None


# ---------------------------------------------------------------- runs


@dataclass
class Run:
    seconds: float
    identical: bool = False
    target_allocated: int = 0
    wire_bytes: int | None = None  # both directions, what a network would carry (before SSH's own framing)
    payload_bytes: int | None = None
    rss_orchestrator: int | None = None
    rss_agents: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Case:
    group: str
    tool: str
    ours: bool
    runs: list[Run] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    def median(self, name: str) -> float | None:
        values = [getattr(run, name) for run in self.runs if getattr(run, name) is not None]
        return statistics.median(values) if values else None

    def peak(self, name: str) -> int | None:
        values = [getattr(run, name) for run in self.runs if getattr(run, name) is not None]
        return max(values) if values else None

    @property
    def identical(self) -> bool:
        return all(run.identical for run in self.runs)


def run_peer(argv: list[str], target: Path) -> Run:
    """A peer command, then an fsync of its target, both timed."""
    began = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        subprocess.run(["sync", str(target)], check=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    run = Run(seconds)
    if "--stats" in argv:
        sent = re.search(r"Total bytes sent: ([\d,.]+)", done.stdout)
        received = re.search(r"Total bytes received: ([\d,.]+)", done.stdout)
        if sent and received:
            run.wire_bytes = sum(int(re.sub(r"[,.]", "", m.group(1))) for m in (sent, received))
    return run


def one_pass(spec: dict[str, Any]) -> dict[str, Any]:
    """One hvmigrate pass as ``spec`` says, in this process (a fresh one: the pass's orchestrator, whose
    peak RSS is then the pass's alone). Timed from the call to its return, when the target is durable."""
    source, target, mode = spec["source"], spec["target"], spec["mode"]
    began = time.perf_counter()
    if spec["engine"] == "in-process":
        with FileDiskReader(source) as reader:
            stats: Any = mirror_disk(
                reader, Path(target), chunk_size=CHUNK, mode=mode, source_identity=spec["identity"]
            )
    else:
        ssh = spec.get("ssh")
        transport: Any = (
            SshTransport(
                ssh["host"],
                port=ssh["port"],
                user=ssh["user"],
                key_file=ssh["key"],
                known_hosts=ssh["known_hosts"],
                python=ssh["python"],
            )
            if ssh
            else LocalTransport()
        )
        try:
            stats = mirror_remote(
                transport,
                source,
                LocalTransport(),
                target,
                chunk_size=CHUNK,
                mode=mode,
                source_identity=spec["identity"],
                compression=spec["compression"],
            )
        finally:
            transport.close()
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "stats": stats.to_json(), "rss": vm_hwm()}


def run_ours(spec: dict[str, Any], roots: set[int]) -> Run:
    """An hvmigrate pass in a fresh orchestrator process, with the peak RSS of it and of its agents."""
    with AgentWatcher(roots) as agents:
        done = subprocess.run(
            [sys.executable, __file__, "--one-pass", json.dumps(spec)], capture_output=True, text=True
        )
    if done.returncode != 0:
        raise SystemExit(f"the hvmigrate pass failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    stats = result["stats"]
    run = Run(result["seconds"], rss_orchestrator=result["rss"], rss_agents=agents.peak)
    if "wire_bytes" in stats:
        run.wire_bytes = stats["wire_bytes"] + stats["control_bytes"]
        run.payload_bytes = stats["payload_bytes"]
    keep = ("bytes_written", "bytes_read", "zero_bytes_skipped", "unchanged_bytes_skipped", "data_frames")
    keep += ("compression", "compression_ratio", "hash_algorithm")
    run.detail.update({key: stats[key] for key in keep if key in stats})
    return run


@dataclass
class Tool:
    name: str
    ours: bool
    run: Callable[[Path, Path], Run]  # (source, target) -> the timed run


class Bench:
    def __init__(self, args: argparse.Namespace, image: Image, server: SshServer, work: Path) -> None:
        self.args = args
        self.image = image
        self.server = server
        self.work = work
        self.cases: list[Case] = []
        self.identity = f"bench:{image.path}"
        self.ssh_command = shlex.join(
            [
                "ssh",
                "-p",
                str(server.port),
                "-i",
                str(server.client_key),
                "-o",
                f"UserKnownHostsFile={server.known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
            ]
        )
        self.remote = f"{server.user}@{server.host}:"
        sshd_pid = (server.directory / "sshd.pid").read_text().strip()
        self.roots = {os.getpid(), int(sshd_pid)}  # whose agents count in the RSS figures

    # ------------------------------------------------------------ tools

    def spec(self, engine: str, mode: str, source: Path, target: Path, *, over_ssh: bool) -> dict[str, Any]:
        ssh = None
        if over_ssh:
            server = self.server
            ssh = {"host": server.host, "port": server.port, "user": server.user}
            ssh.update(key=str(server.client_key), known_hosts=str(server.known_hosts))
            ssh["python"] = self.args.remote_python
        return {
            "engine": engine,
            "mode": mode,
            "source": str(source),
            "target": str(target),
            "identity": self.identity,
            "compression": self.args.compression,
            "ssh": ssh,
        }

    def in_process(self, mode: str) -> Callable[[Path, Path], Run]:
        def run(source: Path, target: Path) -> Run:
            return run_ours(self.spec("in-process", mode, source, target, over_ssh=False), self.roots)

        return run

    def agents(self, mode: str, *, over_ssh: bool) -> Callable[[Path, Path], Run]:
        def run(source: Path, target: Path) -> Run:
            return run_ours(self.spec("agents", mode, source, target, over_ssh=over_ssh), self.roots)

        return run

    def rsync(self, *options: str, over_ssh: bool) -> Callable[[Path, Path], Run]:
        def run(source: Path, target: Path) -> Run:
            if over_ssh:
                argv = ["rsync", *options, "--stats", "-e", self.ssh_command, f"{self.remote}{source}"]
            else:
                argv = ["rsync", *options, "--stats", str(source)]
            return run_peer([*argv, str(target)], target)

        return run

    @staticmethod
    def command(*argv: str) -> Callable[[Path, Path], Run]:
        return lambda source, target: run_peer([*argv, str(source), str(target)], target)

    # ------------------------------------------------------------ groups

    def _case(self, group: str, tool: Tool) -> Case:
        for case in self.cases:
            if case.group == group and case.tool == tool.name:
                return case
        case = Case(group, tool.name, tool.ours)
        self.cases.append(case)
        return case

    def full_copies(self, group: str, tools: list[Tool], repeat: int, keep: dict[str, Path]) -> None:
        """Each tool copies the source to a fresh target; the last copy of the tools in ``keep`` stays
        there (for the incremental runs), every other target is removed after its check."""
        source = self.image.path
        for round_number in range(repeat):
            shift = round_number % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                target = keep.get(tool.name) or self.work / f"target-{slug(tool.name)}.img"
                remove_target(target)
                say(f"  {group}: {tool.name} (run {round_number + 1}/{repeat})")
                warm(source)
                run = tool.run(source, target)
                self._check(run, target, self.image.sha256)
                self._case(group, tool).runs.append(run)
                say(f"    {run.seconds:.2f} s, identical: {run.identical}, du {human(run.target_allocated)}")
                if tool.name not in keep or round_number < repeat - 1:
                    remove_target(target)

    def incremental(self, groups: dict[str, list[Tool]], targets: dict[str, Path], repeat: int) -> list[Any]:
        """Each round changes another 1% of the chunks, then every tool brings its own target up to date."""
        changes = []
        source = self.image.path
        for round_number in range(repeat):
            chunks, changed = change_chunks(source, CHANGED_SHARE, seed=100 + round_number)
            digest = sha256(source)
            changes.append({"chunks": chunks, "bytes": changed})
            say(
                f"  incremental round {round_number + 1}/{repeat}: {chunks} chunks changed ({human(changed)})"
            )
            everyone = [(group, tool) for group, tools in groups.items() for tool in tools]
            shift = round_number % len(everyone)
            for group, tool in everyone[shift:] + everyone[:shift]:
                target = targets[tool.name]
                drop_cached(target)
                warm(source)
                run = tool.run(source, target)
                run.detail["changed_bytes"] = changed
                self._check(run, target, digest)
                self._case(group, tool).runs.append(run)
                wire = "" if run.wire_bytes is None else f", wire {human(run.wire_bytes)}"
                say(f"    {group}: {tool.name}: {run.seconds:.2f} s{wire}, identical: {run.identical}")
        return changes

    def _check(self, run: Run, target: Path, digest: str) -> None:
        run.identical = sha256(target) == digest
        run.target_allocated = allocated(target)
        if not run.identical:
            say(f"    WARNING: {target} differs from the source")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ---------------------------------------------------------------- hashing


def hashing_throughput(repeat: int = 3) -> dict[str, float]:
    """GB/s of one core over a 256 MiB in-memory buffer, digested in 4 MiB chunks as the mirror does."""
    buffer = RandomStream(99).take(HASH_BUFFER)
    view = memoryview(buffer)
    results = {}
    for name in (XXH3_128, BLAKE2B_128):
        digest = chunk_hasher(name).digest
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            for offset in range(0, HASH_BUFFER, CHUNK):
                digest(view[offset : offset + CHUNK])
            times.append(time.perf_counter() - began)
        results[name] = HASH_BUFFER / statistics.median(times) / 1e9
    return results


# ---------------------------------------------------------------- report


@dataclass
class Verdict:
    what: str
    value: float
    goal: float
    at_most: bool  # True: the value must not exceed the goal
    unit: str = "x"
    info: bool = False  # shown, not counted: a goal's figure for a path the product does not take here

    @property
    def passed(self) -> bool:
        return self.value <= self.goal if self.at_most else self.value >= self.goal

    def row(self, width: int) -> str:
        sign = "<=" if self.at_most else ">="
        value = f"{self.value:.2f}{self.unit}" if self.unit == "x" else f"{self.value:.2f} {self.unit}"
        goal = (
            f"{sign} {self.goal:.2f}{self.unit}" if self.unit == "x" else f"{sign} {self.goal:g} {self.unit}"
        )
        result = ("PASS" if self.passed else "MISS") + (" (info)" if self.info else "")
        return f"{self.what:<{width}} {value:>10}  {goal:>12}  {result}"


def rate(case: Case, size: int) -> float:
    return size / case.seconds / MiB


def verdicts(bench: Bench, hashing: dict[str, float], changes: list[dict[str, int]]) -> list[Verdict]:
    size = bench.image.size
    by = {(case.group, case.tool): case for case in bench.cases}
    out = []
    local = [c for c in bench.cases if c.group == "full copy, local"]
    peers = [c for c in local if not c.ours]
    if peers:
        fastest = max(peers, key=lambda c: rate(c, size))
        for case in (c for c in local if c.ours):
            out.append(
                Verdict(
                    f"full copy local: {case.tool} / fastest peer ({fastest.tool})",
                    rate(case, size) / rate(fastest, size),
                    GOAL_FULL_LOCAL,
                    at_most=False,
                    info=case.tool == LOCAL_AGENTS,
                )
            )
    ours_ssh, rsync_ssh = (
        by.get(("full copy, SSH", "hvmigrate (SSH)")),
        by.get(("full copy, SSH", "rsync -e ssh")),
    )
    if ours_ssh and rsync_ssh:
        out.append(
            Verdict(
                "full copy SSH: hvmigrate / rsync -e ssh (throughput)",
                rate(ours_ssh, size) / rate(rsync_ssh, size),
                GOAL_FULL_SSH,
                at_most=False,
            )
        )
    changed = statistics.median(c["bytes"] for c in changes) if changes else 0
    for group, peer in (
        ("incremental, local", "rsync --inplace"),
        ("incremental, SSH", "rsync --inplace -e ssh"),
    ):
        reference = by.get((group, peer))
        for case in (c for c in bench.cases if c.group == group and c.ours):
            if reference:
                out.append(
                    Verdict(
                        f"incremental: {case.tool} / {peer} (time)",
                        case.seconds / reference.seconds,
                        GOAL_INCREMENTAL,
                        at_most=True,
                        info=case.tool == LOCAL_AGENTS,
                    )
                )
            wire = case.median("wire_bytes")
            if wire is not None and changed:
                out.append(
                    Verdict(
                        f"incremental: {case.tool} wire / changed bytes",
                        wire / changed,
                        GOAL_WIRE,
                        at_most=True,
                        info=case.tool == LOCAL_AGENTS,
                    )
                )
    out.append(
        Verdict("hashing xxh3_128, one core", hashing[XXH3_128], GOAL_HASH, at_most=False, unit="GB/s")
    )
    peaks = [
        value
        for case in bench.cases
        if case.ours
        for value in (case.peak("rss_orchestrator"), case.peak("rss_agents"))
        if value is not None
    ]
    if peaks:
        out.append(
            Verdict("peak RSS of any hvmigrate process", max(peaks) / MiB, GOAL_RSS / MiB, True, "MiB")
        )
    return out


def table(bench: Bench, changes: list[dict[str, int]]) -> str:
    size = bench.image.size
    lines = [
        f"{'case':<20} {'tool':<26} {'median':>8} {'MiB/s':>7} {'runs':>4} {'sha256':>6} "
        f"{'target du':>10} {'wire':>10} {'wire/chg':>8} {'RSS orch/agent':>15}"
    ]
    changed = statistics.median(c["bytes"] for c in changes) if changes else 0
    for case in bench.cases:
        wire = case.median("wire_bytes")
        rss = "/".join(
            "-" if value is None else f"{value / MiB:.0f}"
            for value in (case.peak("rss_orchestrator"), case.peak("rss_agents"))
        )
        per_changed = (
            f"{wire / changed:.2f}" if wire is not None and changed and "incremental" in case.group else ""
        )
        lines.append(
            f"{case.group:<20} {case.tool:<26} {case.seconds:>7.2f}s {rate(case, size):>7.0f} "
            f"{len(case.runs):>4} {'ok' if case.identical else 'DIFF':>6} "
            f"{human(case.median('target_allocated') or 0):>10} "
            f"{'' if wire is None else human(wire):>10} {per_changed:>8} {rss if case.ours else '':>15}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default=None, help="source image size (default 4GiB; 512MiB with --quick)")
    parser.add_argument("--quick", action="store_true", help="512 MiB images: a fast sanity run")
    parser.add_argument("--repeat", type=int, default=None, help="runs per case (default 3 quick, 2 full)")
    parser.add_argument("--workdir", default="/var/tmp", help="where the images go (default /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument(
        "--remote-python",
        default=sys.executable,
        help="the interpreter sshd starts the reader agent with (default: this one, which has xxhash and "
        "zstandard; a bare python3 measures the stdlib fallbacks)",
    )
    parser.add_argument("--compression", default="zstd", choices=("zstd", "zlib", "none"))
    parser.add_argument("--one-pass", default=None, help=argparse.SUPPRESS)  # a child running one pass
    args = parser.parse_args(argv)
    if args.one_pass:
        print(json.dumps(one_pass(json.loads(args.one_pass))))
        return 0
    size = parse_size(args.size or ("512MiB" if args.quick else "4GiB"))
    size -= size % 4096
    repeat = args.repeat or (3 if size <= GiB else 2)

    installed = ensure_peers()
    work = Path(tempfile.mkdtemp(prefix="hvmigrate-bench-", dir=args.workdir))
    say(f"work directory {work}" + (f" (installed {', '.join(installed)})" if installed else ""))
    try:
        return _main(args, size, repeat, work)
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _main(args: argparse.Namespace, size: int, repeat: int, work: Path) -> int:
    began = time.perf_counter()
    say(f"generating a {human(size)} source image")
    image = generate_image(work / "source.img", size)
    image.sha256 = sha256(image.path)
    warmed = warm(image.path)
    say(f"  {image.describe()}; warmed into the page cache in {warmed:.1f} s")

    with running_sshd(work / "sshd") as server:
        bench = Bench(args, image, server, work)
        kept = ("hvmigrate (in-process)", LOCAL_AGENTS, "rsync --sparse")
        kept += ("hvmigrate (SSH)", "rsync -e ssh")
        keep = {name: work / f"kept-{slug(name)}.img" for name in kept}
        say("full copies, local")
        bench.full_copies(
            "full copy, local",
            [
                Tool("hvmigrate (in-process)", True, bench.in_process("full")),
                Tool(LOCAL_AGENTS, True, bench.agents("full", over_ssh=False)),
                Tool("cp --sparse=always", False, bench.command("cp", "--sparse=always")),
                Tool(
                    "qemu-img convert", False, bench.command("qemu-img", "convert", "-f", "raw", "-O", "raw")
                ),
                Tool("rsync --sparse", False, bench.rsync("--sparse", over_ssh=False)),
            ],
            repeat,
            keep,
        )
        say("full copies over SSH to localhost")
        bench.full_copies(
            "full copy, SSH",
            [
                Tool("hvmigrate (SSH)", True, bench.agents("full", over_ssh=True)),
                Tool("rsync -e ssh", False, bench.rsync("--sparse", over_ssh=True)),
            ],
            repeat,
            keep,
        )
        say("incremental syncs")
        targets = {
            "hvmigrate (in-process)": keep["hvmigrate (in-process)"],
            LOCAL_AGENTS: keep[LOCAL_AGENTS],
            "rsync --inplace": keep["rsync --sparse"],
            "hvmigrate (SSH)": keep["hvmigrate (SSH)"],
            "rsync --inplace -e ssh": keep["rsync -e ssh"],
        }
        changes = bench.incremental(
            {
                "incremental, local": [
                    Tool("hvmigrate (in-process)", True, bench.in_process("incremental")),
                    Tool(LOCAL_AGENTS, True, bench.agents("incremental", over_ssh=False)),
                    Tool("rsync --inplace", False, bench.rsync(*RSYNC_DELTA, over_ssh=False)),
                ],
                "incremental, SSH": [
                    Tool("hvmigrate (SSH)", True, bench.agents("incremental", over_ssh=True)),
                    Tool(
                        "rsync --inplace -e ssh",
                        False,
                        bench.rsync(*RSYNC_DELTA, over_ssh=True),
                    ),
                ],
            },
            targets,
            repeat,
        )
    say("hashing throughput")
    hashing = hashing_throughput()
    results = verdicts(bench, hashing, changes)

    print(f"\nhvmigrate mirror bench: {image.describe()}, chunks of {human(CHUNK)}, median of {repeat} runs")
    print(
        "source read into the page cache (untimed) before every run: each tool reads it from memory; each "
        "target made durable inside the timed region (hvmigrate fdatasyncs; peers: sync TARGET)"
    )
    print(
        "hvmigrate: each pass in a fresh orchestrator process, timed call to return (imports excluded); "
        f"reader agent over SSH runs {args.remote_python}; compression {args.compression}"
    )
    if changes:
        print(
            f"incremental rounds: {changes[0]['chunks']} chunks ({100 * CHANGED_SHARE:.0f}%) overwritten "
            f"with random bytes each round, {human(changes[0]['bytes'])} changed; wire = both directions"
        )
    print()
    print(table(bench, changes))
    print()
    print(
        f"hashing, one core, 256 MiB in memory: xxh3_128 {hashing[XXH3_128]:.2f} GB/s, "
        f"blake2b-128 (stdlib fallback) {hashing[BLAKE2B_128]:.2f} GB/s"
    )
    print()
    width = max(len(v.what) for v in results)
    print(f"{'ratio':<{width}} {'value':>10}  {'goal':>12}  result")
    for verdict in results:
        print(verdict.row(width))
    if any(v.info for v in results):
        print(
            f"(info) {LOCAL_AGENTS}: the agents that serve a remote end, shown without SSH; a copy with both "
            "ends on one host runs in-process (orchestrator/mirror/route.py), so these rows are not counted"
        )
    counted = [v for v in results if not v.info]
    missed = [v.what for v in counted if not v.passed]
    wrong = [f"{c.group}: {c.tool}" for c in bench.cases if not c.identical]
    took = time.perf_counter() - began
    print(f"\n{len(counted) - len(missed)}/{len(counted)} goals met; bench took {took:.0f} s")
    if wrong:
        print(f"COPIES DIFFERING FROM THE SOURCE: {', '.join(wrong)}")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "image": {**asdict(image), "path": str(image.path)},
                    "chunk_size": CHUNK,
                    "repeat": repeat,
                    "remote_python": args.remote_python,
                    "compression": args.compression,
                    "hashing_gb_per_s": hashing,
                    "incremental_changes": changes,
                    "cases": [
                        {**asdict(case), "median_seconds": case.seconds, "mib_per_s": rate(case, image.size)}
                        for case in bench.cases
                    ],
                    "ratios": [{**asdict(v), "passed": v.passed} for v in results],
                },
                indent=2,
            )
        )
        say(f"results written to {args.json}")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
