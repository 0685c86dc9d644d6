"""Administrative commands on a Linux source, over the SSH connection its agent already uses.

The agent does the heavy work (discovery, reading disks); the few commands around it (fsfreeze, lvcreate,
systemctl, poweroff, the playbook's own quiesce commands) are plain exec channels on the same paramiko
connection, so a source costs one login. Each runs through ``sh`` with the sbin directories appended to
PATH (a non-root login's PATH lacks them) and, when the playbook sets ``sudo``, under ``sudo -n``, which
fails at once instead of waiting for a password nobody will type. What a command printed reaches a
message only through ``redact``, so a secret the orchestrator resolved cannot leak through it.
"""

from __future__ import annotations

import select
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass

import paramiko

from orchestrator import audit
from orchestrator.playbook.secrets import redact
from orchestrator.transport import TransportError
from orchestrator.transport.ssh import SshTransport
from providers.base import ProviderError, TransientProviderError

DEFAULT_TIMEOUT = 60.0
OUTPUT_LIMIT = 256 * 1024  # bytes kept per stream; a chatty command must not fill memory
POLL_SECONDS = 0.5
# Appending (not replacing) keeps the login's own PATH first: the user's tools win over ours.
WRAPPER = 'PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"; export PATH; exec "$@"'


@dataclass(frozen=True)
class Result:
    """How one command ended; ``status`` None: the connection dropped before it said (poweroff does)."""

    argv: tuple[str, ...]
    status: int | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0

    def reason(self) -> str:
        """The command's own last words (stderr, else stdout), made safe to show."""
        lines = [line.strip() for line in (self.stderr or self.stdout).splitlines() if line.strip()]
        said = " | ".join(lines[-3:])
        status = "no exit status (the connection dropped)" if self.status is None else f"exit {self.status}"
        return redact(f"{said} ({status})" if said else status)


class CommandFailed(ProviderError):
    """A command on the source exited non-zero; ``result`` holds what it said."""

    def __init__(self, message: str, result: Result) -> None:
        super().__init__(message)
        self.result = result


class RemoteShell:
    """Runs commands on the host behind one SshTransport."""

    def __init__(self, transport: SshTransport, *, sudo: bool) -> None:
        self.transport = transport
        self.sudo = sudo
        self.where = transport.name

    def command_line(self, argv: Sequence[str], *, privileged: bool = True) -> str:
        prefix = ["sudo", "-n"] if self.sudo and privileged else []
        return shlex.join([*prefix, "sh", "-c", WRAPPER, "hvmigrate", *argv])

    def shown(self, argv: Sequence[str], *, privileged: bool) -> str:
        """The command as the audit trail shows it: without the PATH wrapper, with sudo when used."""
        return ("sudo -n " if self.sudo and privileged else "") + shlex.join(argv)

    def run(
        self, argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT, privileged: bool = True
    ) -> Result:
        """Run ``argv`` to its end (or ``timeout``, then raise); a non-zero exit is returned, not raised."""
        with audit.operation(f"ssh {self.where}", self.shown(argv, privileged=privileged)) as op:
            channel = self._open(argv, privileged)
            try:
                result = self._collect(channel, tuple(argv), time.monotonic() + timeout)
            finally:
                channel.close()
            if result is None:
                raise TransientProviderError(
                    f"{shlex.join(argv)} on {self.where} did not finish within {timeout:.0f}s; "
                    "look at the host (it may be stuck on I/O), then run again"
                )
            op.exited(result.status, result.reason())
        return result

    def check(self, argv: Sequence[str], what: str, **options: float | bool) -> Result:
        """Like ``run``, but a non-zero exit raises CommandFailed naming ``what`` was being done."""
        result = self.run(argv, **options)  # type: ignore[arg-type]
        if not result.ok:
            raise CommandFailed(f"{what} on {self.where} failed: {result.reason()}", result)
        return result

    def launch(self, argv: Sequence[str], *, wait: float) -> Result | None:
        """Start ``argv`` and give it ``wait`` seconds: its result if it ended (or the connection dropped,
        status None), else None while it still runs. For commands that take the host down with them."""
        with audit.operation(f"ssh {self.where}", self.shown(argv, privileged=True)) as op:
            channel = self._open(argv, privileged=True)
            try:
                result = self._collect(channel, tuple(argv), time.monotonic() + wait)
            finally:
                channel.close()
            if result is None:
                op.note("still running when left to itself")
            elif result.status is not None:
                op.exited(result.status, result.reason())
            else:
                op.note("no exit status (the connection dropped)")
        return result

    # ------------------------------------------------------------ internals

    def _open(self, argv: Sequence[str], privileged: bool) -> paramiko.Channel:
        try:
            connection = self.transport.connect()
        except TransportError as exc:
            error_type = TransientProviderError if exc.retryable else ProviderError
            raise error_type(redact(str(exc))) from None
        try:
            channel = connection.open_session()
            channel.exec_command(self.command_line(argv, privileged=privileged))
            channel.shutdown_write()  # nothing to read on stdin: a command that asks sees EOF at once
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransientProviderError(
                f"cannot run {argv[0]} on {self.where} over SSH: {exc}; check the connection, then run again"
            ) from None
        return channel

    def _collect(self, channel: paramiko.Channel, argv: tuple[str, ...], deadline: float) -> Result | None:
        out, err = bytearray(), bytearray()

        def drain() -> None:
            while channel.recv_ready():
                out.extend(channel.recv(65536))
                del out[:-OUTPUT_LIMIT]
            while channel.recv_stderr_ready():
                err.extend(channel.recv_stderr(65536))
                del err[:-OUTPUT_LIMIT]

        try:
            while not channel.exit_status_ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                drain()
                if channel.closed:  # the far end went away without an exit status (poweroff)
                    break
                if channel.eof_received:  # output is complete; the exit status follows
                    channel.status_event.wait(min(remaining, POLL_SECONDS))
                else:
                    select.select([channel], [], [], min(remaining, POLL_SECONDS))
            drain()
        except (paramiko.SSHException, OSError, EOFError):
            pass  # the connection dropped: what arrived is all there is
        status = channel.exit_status if channel.exit_status_ready() else None
        if status == -1:
            status = None
        return Result(argv, status, out.decode(errors="replace"), err.decode(errors="replace"))
