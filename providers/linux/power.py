"""Shutting a running Linux source down at cutover, and knowing when it has gone.

The replica takes over the source's addresses, so it may only boot once the source is off the network.
After asking for a poweroff, the host counts as down when its SSH port stops answering: sshd is stopped
late in a clean shutdown, after the applications, and a forced poweroff takes everything at once.
"""

from __future__ import annotations

import socket
import time

from providers.base import ProviderError, TransientProviderError

from .shell import RemoteShell

PROBE_TIMEOUT = 3.0
PROBE_INTERVAL = 1.0
LAUNCH_WAIT = 10.0  # systemctl poweroff returns once the job is queued; poweroff -f never returns
# A clean poweroff through whichever init the host runs (systemd, or sysvinit's shutdown).
CLEAN_POWEROFF = "if [ -d /run/systemd/system ]; then exec systemctl poweroff; else exec shutdown -h now; fi"


def answers_ssh(host: str, port: int) -> bool:
    """True while something on host:port speaks SSH (its banner starts with ``SSH-``)."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as connection:
            connection.settimeout(PROBE_TIMEOUT)
            return connection.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def wait_until_silent(host: str, port: int, timeout: float) -> bool:
    """Probe until host:port stops answering SSH (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while answers_ssh(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(PROBE_INTERVAL)
    return True


def power_off(shell: RemoteShell, host: str, port: int, *, timeout: float, force: bool) -> None:
    """Ask ``host`` to power off (``force``: at once, without stopping services or unmounting), then
    wait until it stops answering; raises when it refused or still answers after ``timeout``."""
    argv = ["poweroff", "-f"] if force else ["sh", "-c", CLEAN_POWEROFF]
    result = shell.launch(argv, wait=LAUNCH_WAIT)
    if result is not None and result.status not in (0, None):
        hint = "" if force else ", or shut it down by hand and run the cutover again"
        raise ProviderError(
            f"powering off {host} failed: {result.reason()}; check the host's init system{hint}"
        )
    shell.transport.close()  # our session must not keep sshd's per-connection process alive
    if not wait_until_silent(host, port, timeout):
        raise TransientProviderError(
            f"{host} still answers SSH on port {port} {timeout:.0f}s after the poweroff was asked for: it "
            "may still be stopping services; look at its console, then run the cutover again"
        )
