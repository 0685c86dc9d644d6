"""The shipped agent under Windows CPython's ``os``, as tests/fakes/windows_site/sitecustomize.py plays it.

Not Windows: Linux CPython with what Windows' ``os`` lacks taken away (fcntl, pread, pwrite, preadv,
readv, writev, fdatasync, O_CLOEXEC, SEEK_DATA, ...), and Windows' rules enforced where they bite
(O_BINARY, no rename of an open file, whole-sector raw-disk I/O, msvcrt locks). The agents here are the
real shipped program started through the real bootstrap; ``\\\\.\\PhysicalDriveN`` are files of that name
in their working directory, as in the WinRM stand-in.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.mirror import protocol as wire
from orchestrator.mirror.agent_bundle import SHIPPED_MODULES, program_source
from orchestrator.mirror.agent_session import AgentSession
from orchestrator.mirror.errors import MirrorError
from orchestrator.mirror.remote import mirror_remote
from orchestrator.transport.local import LocalTransport
from tests.fakes import windows_python

MiB = 1024**2
CHUNK = 256 * 1024
DISK0, DISK1 = "\\\\.\\PhysicalDrive0", "\\\\.\\PhysicalDrive1"

# Run inside the bundle instead of the agent's main: every shipped module, and the stand-in's own rules.
_PROBE = """
import errno, importlib, os
for name in NAMES:
    importlib.import_module(name)
missing = [n for n in ("pread", "pwrite", "preadv", "readv", "writev", "fdatasync", "O_CLOEXEC", "SEEK_DATA")
           if hasattr(os, n)]
assert not missing, missing
try:
    import fcntl
    raise SystemExit("fcntl imported")
except ImportError:
    pass
try:
    os.open("plain.bin", os.O_RDWR | os.O_CREAT)
    raise SystemExit("text mode open allowed")
except OSError as exc:
    assert exc.errno == errno.EINVAL
fd = os.open("plain.bin", os.O_RDWR | os.O_CREAT | os.O_BINARY)
try:
    os.replace("plain.bin", "other.bin")
    raise SystemExit("rename of an open file allowed")
except PermissionError:
    pass
os.close(fd)
device = os.open(DEVICE, os.O_RDONLY | os.O_BINARY)
try:
    os.read(device, 100)
    raise SystemExit("unaligned raw read allowed")
except OSError as exc:
    assert exc.errno == errno.EINVAL
assert len(os.read(device, 4096)) == 4096
print("windows-ok")
"""


def _disk(seed: int, size: int) -> bytes:
    random = hashlib.shake_256(str(seed).encode()).digest(size // 2)
    text = (b"a log line of a running server\n" * (size // 32 + 1))[: size // 4]
    return random + text + bytes(size - len(random) - len(text))


def test_every_shipped_module_imports_and_the_stand_in_has_teeth(tmp_path: Path) -> None:
    (tmp_path / "disk.img").write_bytes(_disk(0, MiB))
    (tmp_path / DISK0).symlink_to(tmp_path / "disk.img")
    names = [name for name, _file, _package in SHIPPED_MODULES]
    program = program_source().replace(
        "sys.exit(orchestrator.agent.main())", f"NAMES = {names!r}\nDEVICE = {DISK0!r}\n{_PROBE}"
    )
    assert "sys.exit(orchestrator.agent.main())" not in program  # the probe replaced the agent's start
    done = subprocess.run(
        [sys.executable, "-"],  # the program on stdin: too long for one argument
        input=program,
        cwd=tmp_path,
        env=windows_python.environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "windows-ok"


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    """A folder standing for the Windows machine: two disks published as PhysicalDrive0 and 1."""
    (tmp_path / "source.img").write_bytes(_disk(1, 4 * MiB))
    (tmp_path / "replica.img").write_bytes(bytes(4 * MiB))  # a mounted VHDX: exists, all zeros
    (tmp_path / DISK0).symlink_to(tmp_path / "source.img")
    (tmp_path / DISK1).symlink_to(tmp_path / "replica.img")
    return tmp_path


def _pass(windows: LocalTransport, mode: str, size: int = 4 * MiB) -> object:
    return mirror_remote(
        windows,
        DISK0,
        windows,
        DISK1,
        chunk_size=CHUNK,
        mode=mode,  # type: ignore[arg-type]
        source_identity="app03:PhysicalDrive0",
        map_path="replica.hvmap",
        source_size=size,
    )


def test_a_copy_between_windows_agents_is_byte_exact_and_a_second_writer_is_refused(machine: Path) -> None:
    windows = LocalTransport(windows_python.python_argv(machine), name="windows")
    source, replica = machine / "source.img", machine / "replica.img"

    full = _pass(windows, "full")
    assert replica.read_bytes() == source.read_bytes()
    assert full.bytes_written == 3 * MiB  # type: ignore[attr-defined]
    assert (machine / "replica.hvmap.lock").exists()  # no flock there: the msvcrt lock beside the map

    with source.open("r+b") as handle:  # the server writes between passes
        handle.seek(5 * CHUNK + 77)
        handle.write(b"changed between passes" * 50)
    again = _pass(windows, "incremental")
    assert replica.read_bytes() == source.read_bytes()
    assert again.bytes_written == CHUNK  # type: ignore[attr-defined]

    write = {"path": DISK1, "size": 4 * MiB, "chunk_size": CHUNK, "identity": "app03:PhysicalDrive0"}
    write.update(mode="incremental", hash="xxh3_128", map_path="replica.hvmap")
    first = AgentSession.start(windows)
    try:
        first.request("write", **write)
        first.receive(wire.MAP_HEAD)  # it holds the target now
        second = AgentSession.start(windows)
        try:
            second.request("write", **write)
            with pytest.raises(MirrorError, match="another mirror is writing"):
                second.receive(wire.MAP_HEAD)
        finally:
            second.close()
    finally:
        first.close()
    assert replica.read_bytes() == source.read_bytes()


def test_a_disk_size_that_is_not_whole_sectors_is_refused_before_any_read(machine: Path) -> None:
    windows = LocalTransport(windows_python.python_argv(machine), name="windows")
    with pytest.raises(MirrorError, match="whole 512-byte sectors"):
        _pass(windows, "full", size=4 * MiB - 100)
