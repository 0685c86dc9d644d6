"""qemu-nbd exports of qcow2 volumes on the libvirt host, so the data plane writes guest blocks, not qcow2.

A qcow2 file cannot be written chunk by chunk as a raw image; qemu-nbd on the host presents the guest's
view of it on a Unix socket (``nbd+unix:///?socket=PATH``), which the writer opens. The export stays up
across connections (``--persistent``), admits a few writers at once (``--shared=4``) and discards what the
guest trims. Start is idempotent: a live export of the same volume is reused. The socket and pid file
names come from a hash of the volume path, so any path fits in a Unix socket name and the same volume
always maps to the same export.

This file is stdlib-only and self-contained: for a remote host its source is sent as ``python3 -c`` over
SSH and runs there as ``start|stop|status PATH FORMAT``, answering one JSON document prefixed by its length
in 8 hex digits. Remote Pythons may be old: keep it runnable on Python 3.7.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

ROOT_RUN_DIR = "/run/hvmigrate/nbd"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class NbdError(Exception):
    """The export could not be started or stopped; the message says why and what to check."""


def run_dir() -> str:
    if os.geteuid() == 0:
        return ROOT_RUN_DIR
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return os.path.join(base, f"hvmigrate-{os.geteuid()}", "nbd")


def export_paths(volume: str) -> tuple:
    key = hashlib.sha256(volume.encode()).hexdigest()[:20]
    directory = run_dir()
    return os.path.join(directory, key + ".sock"), os.path.join(directory, key + ".pid")


def _serving(pid: int, socket_path: str, volume: str) -> bool:
    """Is ``pid`` a qemu-nbd serving ``volume`` on ``socket_path``? (a recycled pid is not)"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return False
    return (
        bool(argv)
        and os.path.basename(argv[0]) == b"qemu-nbd"
        and ("--socket=" + socket_path).encode() in argv
        and volume.encode() in argv
    )


def _read_pid(pid_path: str) -> int:
    try:
        with open(pid_path) as handle:
            return int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def status(volume: str, fmt: str = "qcow2") -> dict:
    socket_path, pid_path = export_paths(volume)
    pid = _read_pid(pid_path)
    running = bool(pid) and _serving(pid, socket_path, volume) and os.path.exists(socket_path)
    return {
        "running": running,
        "pid": pid if running else None,
        "socket": socket_path,
        "uri": "nbd+unix:///?socket=" + socket_path,
        "volume": volume,
    }


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def start(volume: str, fmt: str = "qcow2") -> dict:
    current = status(volume, fmt)
    if current["running"]:
        return current
    if not os.path.exists(volume):
        raise NbdError(f"volume {volume} does not exist on this host")
    socket_path, pid_path = export_paths(volume)
    os.makedirs(os.path.dirname(socket_path), mode=0o700, exist_ok=True)
    _remove(socket_path, pid_path)  # left by an export that died: qemu-nbd refuses an existing socket
    argv = [
        "qemu-nbd",
        "--socket=" + socket_path,
        "--format=" + fmt,
        "--persistent",
        "--shared=4",
        "--discard=unmap",
        "--fork",
        "--pid-file=" + pid_path,
        volume,
    ]
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=START_TIMEOUT,
        )
    except FileNotFoundError:
        raise NbdError("qemu-nbd is not installed on this host (Debian package qemu-utils)") from None
    except subprocess.TimeoutExpired:
        raise NbdError(f"qemu-nbd did not start within {START_TIMEOUT:.0f} s for {volume}") from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        raise NbdError(f"qemu-nbd could not export {volume}: {message}")
    started = status(volume, fmt)
    if not started["running"]:
        raise NbdError(f"qemu-nbd exited right after exporting {volume}; run it by hand to see why")
    return started


def stop(volume: str, fmt: str = "qcow2") -> dict:
    """SIGTERM: qemu-nbd flushes the image and exits. It is never killed harder, which could lose data."""
    socket_path, pid_path = export_paths(volume)
    current = status(volume, fmt)
    if current["running"]:
        pid = current["pid"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _serving(pid, socket_path, volume):
            if time.monotonic() > deadline:
                raise NbdError(
                    f"qemu-nbd (pid {pid}) exporting {volume} did not exit within {STOP_TIMEOUT:.0f} s of "
                    "SIGTERM; a client may still be writing: stop the writer, then detach again"
                )
            time.sleep(0.05)
    _remove(socket_path, pid_path)
    return status(volume, fmt)


OPERATIONS = {"start": start, "stop": stop, "status": status}


def main(argv: list) -> int:
    try:
        operation, volume, fmt = argv[1], argv[2], argv[3]
        result = OPERATIONS[operation](volume, fmt)
    except NbdError as exc:
        result = {"error": str(exc)}
    except Exception as exc:  # a remote caller only sees what we print: say what broke
        result = {"error": f"{type(exc).__name__}: {exc}"}
    body = json.dumps(result).encode()
    sys.stdout.buffer.write(b"%08x" % len(body) + body)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
