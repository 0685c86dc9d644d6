"""Agents on a Windows host over WinRM: the interpreter runs in a WinRM shell, its stdin and stdout are
the shell's Send and Receive.

A WinRM shell is the only stream Windows offers without installing anything: ``python.exe`` (the path the
playbook configures, ``python: C:\\Python311\\python.exe``) starts in a shell with WINRS_SKIP_CMD_SHELL, so
no cmd.exe parses its command line; the agent program follows on stdin as over SSH
(orchestrator/mirror/agent_bundle.py), and then frames flow both ways:

* orchestrator -> agent: every ``write`` becomes WS-Management Send requests of at most ``SEND_CHUNK``
  bytes each (base64 in a SOAP envelope: 4/3 of the bytes plus about 1.5 KiB, inside the 150 KiB
  MaxEnvelopeSize of older hosts, far inside today's 500 KiB);
* agent -> orchestrator: a thread issues Receive requests in a loop and queues what comes back, up to
  ``INBOX_LIMIT`` bytes; when the queue is full it stops asking, the host's pipe fills and the agent
  waits: memory stays bounded whatever the disk size.

Send and Receive go over two connections of their own (each logs in as the scripts' connection does,
through ``WinRM.open_protocol``): a Receive waits on the host until there is output, and on one
connection it would hold up the Send that the agent is waiting for.

Throughput is what SOAP allows, not what the link does: every byte crosses as base64 inside XML, each
Send is one HTTP round trip, and with NTLM over HTTP each message is sealed too. README "Limits" has
the figures measured against the stand-in; it serves a writer on a Hyper-V host or a reader on a Windows
source where nothing else can run, not bulk copies where SSH or an appliance can.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from orchestrator.mirror.protocol import ExactReader, StreamClosed

from . import TransportError
from .local import StderrTail
from .winrm import WinRM, WinRMError

SEND_CHUNK = 96 * 1024  # raw bytes per Send: 128 KiB of base64 plus the envelope, under 150 KiB
INBOX_LIMIT = 8 * 1024**2  # received stdout waiting for read_exact: the Receive thread pauses above it
RECEIVE_TIMEOUT = 20  # seconds a Receive may wait on the host for output before it is asked again
_PLAIN_ARG = re.compile(r"[A-Za-z0-9_.,:=+\\/-]+")


def windows_command(python: str, args: Sequence[str]) -> tuple[str, list[str]]:
    """The command and arguments a WinRM shell runs, as CreateProcess and the C runtime will split them.

    ``-c CODE`` travels as ``exec(bytes.fromhex('...'))``: hex needs no quoting by any Windows parser,
    where the agent's multi-line bootstrap would need rules that differ between cmd.exe, CreateProcess
    and the C runtime. Every other argument must be plain (no spaces or quotes): nothing a user wrote
    reaches this line."""
    if not python or '"' in python or any(ch in python for ch in "\r\n\t"):
        raise TransportError(f"python {python!r} is not a usable interpreter path on a Windows host")
    command = f'"{python}"' if " " in python else python
    out: list[str] = []
    items = list(args)
    index = 0
    while index < len(items):
        arg = items[index]
        if arg == "-c" and index + 1 < len(items):
            out += ["-c", f"exec(bytes.fromhex('{items[index + 1].encode().hex()}'))"]
            index += 2
            continue
        if not _PLAIN_ARG.fullmatch(arg):
            raise TransportError(f"argument {arg!r} cannot be passed safely on a Windows command line")
        out.append(arg)
        index += 1
    return command, out


class WinRMProcess(ExactReader):
    """A command in a WinRM shell as a stream: Send for its stdin, a Receive loop for stdout/stderr."""

    def __init__(self, winrm: WinRM, sender: Any, receiver: Any, shell: str, command: str, name: str) -> None:
        self.winrm = winrm
        self.name = name
        self._sender = sender
        self._receiver = receiver
        self._shell = shell
        self._command = command
        self._send_lock = threading.Lock()
        self._inbox: deque[bytes] = deque()
        self._offset = 0  # bytes of _inbox[0] already read
        self._buffered = 0
        self._eof = False
        self._error: str | None = None
        self._code: int | None = None
        self._stdin_open = True
        self._closed = False
        self._cond = threading.Condition()
        self._stopped = threading.Event()
        self._stderr = StderrTail()
        self.sent_bytes = 0
        self.received_bytes = 0
        self._thread = threading.Thread(target=self._receive_loop, name=f"winrm-receive:{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ agent -> orchestrator

    def _receive_loop(self) -> None:
        from winrm.exceptions import WinRMOperationTimeoutError

        try:
            while True:
                with self._cond:
                    while self._buffered >= INBOX_LIMIT and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                try:
                    stdout, stderr, code, done = self._receiver.get_command_output_raw(
                        self._shell, self._command
                    )
                except WinRMOperationTimeoutError:
                    continue  # no output within the operation timeout: ask again
                if stderr:
                    self._stderr.feed(stderr)
                with self._cond:
                    if stdout:
                        self._inbox.append(stdout)
                        self._buffered += len(stdout)
                        self.received_bytes += len(stdout)
                    if done:
                        self._code = code
                        self._eof = True
                    self._cond.notify_all()
                if done:
                    return
        except Exception as exc:  # the connection broke or the host dropped the shell
            with self._cond:
                if not self._closed:
                    self._error = str(self.winrm.failure(exc))
                self._eof = True
                self._cond.notify_all()
        finally:
            self._stopped.set()

    def _recv_into(self, view: memoryview) -> int:
        with self._cond:
            while not self._inbox and not self._eof:
                self._cond.wait()
            if not self._inbox:
                if self._error:
                    raise StreamClosed(f"receiving from {self.name} failed: {self._error}")
                return 0
            first = self._inbox[0]
            take = min(len(view), len(first) - self._offset)
            view[:take] = memoryview(first)[self._offset : self._offset + take]
            self._offset += take
            if self._offset == len(first):
                self._inbox.popleft()
                self._offset = 0
            was_full = self._buffered >= INBOX_LIMIT
            self._buffered -= take
            if was_full and self._buffered < INBOX_LIMIT:
                self._cond.notify_all()
            return take

    # ------------------------------------------------------------ orchestrator -> agent

    def write(self, *parts: bytes | bytearray | memoryview) -> None:
        """Send the parts as few Send requests as their size allows (a small frame: one request)."""
        with self._send_lock:
            if not self._stdin_open:
                raise StreamClosed(f"writing to {self.name} failed: its stdin is closed")
            pending: list[memoryview] = []
            size = 0
            for part in parts:
                view = memoryview(part).cast("B")
                while len(view):
                    take = min(len(view), SEND_CHUNK - size)
                    pending.append(view[:take])
                    size += take
                    view = view[take:]
                    if size == SEND_CHUNK:
                        self._send(b"".join(pending))
                        pending, size = [], 0
            if size:
                self._send(b"".join(pending))

    def _send(self, data: bytes, end: bool = False) -> None:
        try:
            self._sender.send_command_input(self._shell, self._command, data, end)
        except Exception as exc:
            raise StreamClosed(f"writing to {self.name} failed: {self.winrm.failure(exc)}") from None
        self.sent_bytes += len(data)

    # ------------------------------------------------------------ process

    def exit_status(self, timeout: float | None = None) -> int | None:
        if not self._stopped.wait(timeout):
            return None
        return self._code if self._code is not None else -1

    def stderr_tail(self) -> str:
        return self._stderr.text()

    def kill(self) -> None:
        """Signal terminate: the host stops the interpreter; then the shell goes."""
        self._end()

    def close(self) -> None:
        """End its stdin (the agent exits at EOF), wait a little, then stop it and remove the shell."""
        with self._send_lock:
            if self._stdin_open and not self._closed:
                self._stdin_open = False
                with contextlib.suppress(StreamClosed):
                    self._send(b"", end=True)
        self.exit_status(timeout=10)
        self._end()

    def _end(self) -> None:
        """Stop the command (the host ends the interpreter), remove the shell, drop both connections."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._stdin_open = False
            self._cond.notify_all()
        with contextlib.suppress(Exception):
            self._sender.cleanup_command(self._shell, self._command)
        with contextlib.suppress(Exception):
            self._sender.close_shell(self._shell, close_session=False)
        self._thread.join(timeout=RECEIVE_TIMEOUT + 5)
        for protocol in (self._sender, self._receiver):
            with contextlib.suppress(Exception):
                protocol.transport.close_session()


class WinRMTransport:
    """Starts ``python`` on a Windows host through WinRM; one shell and two connections per agent."""

    def __init__(self, winrm: WinRM, python: str, *, name: str | None = None) -> None:
        self.winrm = winrm
        self.python = python
        self.name = name or winrm.target.host

    def __repr__(self) -> str:
        return f"WinRMTransport({self.name!r}, python={self.python!r})"

    def start_python(self, args: Sequence[str]) -> WinRMProcess:
        command, arguments = windows_command(self.python, args)
        try:
            sender = self.winrm.open_protocol()
            receiver = self.winrm.open_protocol(operation_timeout=RECEIVE_TIMEOUT)
        except WinRMError as exc:
            raise TransportError(f"cannot start {self.python} on {self.name} over WinRM: {exc}") from None
        try:
            shell = sender.open_shell(codepage=65001)
        except Exception as exc:
            raise TransportError(
                f"cannot open a WinRM shell on {self.name}: {self.winrm.failure(exc)}"
            ) from None
        try:
            command_id = sender.run_command(shell, command, arguments, skip_cmd_shell=True)
        except Exception as exc:
            with contextlib.suppress(Exception):
                sender.close_shell(shell, close_session=False)
            raise TransportError(
                f"cannot start {self.python} on {self.name} over WinRM: {self.winrm.failure(exc)}"
            ) from None
        return WinRMProcess(self.winrm, sender, receiver, shell, command_id, self.name)

    def close(self) -> None:
        """Each process closes its own connections; the scripts' connection belongs to ``winrm``."""
