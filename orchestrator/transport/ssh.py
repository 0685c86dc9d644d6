"""Agents over SSH: one paramiko connection per host, one exec channel per agent.

Host keys are checked by default, against a known_hosts file or a pinned ``SHA256:`` fingerprint (what
``ssh-keygen -lf`` prints); ``insecure=True`` accepts any key and must be asked for explicitly. The login
is by key file or password; with ``sudo`` the interpreter runs under ``sudo -n`` (a non-interactive sudo:
NOPASSWD must be configured for it). Passwords never appear in messages.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import logging
import shlex
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paramiko
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout

from orchestrator.mirror.protocol import ExactReader, StreamClosed

from . import HostKeyError, TransportError
from .local import StderrTail

log = logging.getLogger(__name__)

WINDOW_SIZE = 16 * 1024**2  # per channel: a 4 MiB chunk never waits for a window adjustment
# The largest packet we accept on a channel. paramiko's default (32 KiB) caps a reader agent's stream at
# 35-50 MB/s, by the per-packet cost in Python; OpenSSH sends up to what we ask, within its 256 KiB packet
# limit (measured here: 280 MB/s with this and AES-GCM).
MAX_PACKET_SIZE = 256 * 1024 - 4096
# AEAD ciphers first: AES-GCM (AES-NI) needs no separate MAC pass, so it moves twice the bytes per CPU
# second of the default aes128-ctr + hmac-sha2-256; the rest stay as fallbacks for older servers.
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
CONNECT_TIMEOUT = 15.0
KEEPALIVE_SECONDS = 30
# A link that drops silently (no reset: a pulled cable, a firewall that starts dropping) would otherwise
# stall a pass until TCP gives up on its own, about 15 minutes later. The keepalive above always leaves
# something unacknowledged on a dead link, so the kernel aborts the connection once data stays
# unacknowledged this long; the step then fails with a clear error and is retried, resuming from its map.
DEAD_LINK_SECONDS = 90.0


def fingerprint(key: paramiko.PKey) -> str:
    """The OpenSSH form: ``SHA256:`` and the unpadded base64 of the key blob's SHA-256."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _normalise_fingerprint(text: str) -> str:
    text = text.strip()
    if text.upper().startswith("SHA256:"):
        text = text[7:]
    return "SHA256:" + text.rstrip("=")


class PacketPipe(BufferedPipe):
    """A channel's receive buffer that keeps the packets as they arrived instead of one growing array.

    paramiko's BufferedPipe appends every packet to an ``array`` and serves a read by slicing it (a copy),
    converting the slice (another) and deleting it from the front (moving everything behind it): with a
    16 MiB window, reading a 12-byte frame header moves megabytes, and the orchestrator spent most of a
    relayed copy doing that. Here a read returns (a part of) the oldest packet itself: a read may return
    fewer bytes than asked for, as a socket's does, and every caller of ``Channel.recv`` expects that.
    """

    def __init__(self) -> None:
        super().__init__()
        self._parts: collections.deque[bytes] = collections.deque()
        self._offset = 0  # bytes of _parts[0] already read
        self._size = 0

    def _buffer_frombytes(self, data: bytes) -> None:  # called by feed(), under the lock
        if data:
            self._parts.append(bytes(data))
            self._size += len(data)

    def _take(self, limit: int | None) -> bytes:
        """Up to ``limit`` bytes from the oldest packet (caller holds the lock, the pipe is not empty)."""
        first, offset = self._parts[0], self._offset
        end = len(first) if limit is None else min(len(first), offset + limit)
        whole = offset == 0 and end == len(first)
        out = first if whole else bytes(memoryview(first)[offset:end])
        if end == len(first):
            self._parts.popleft()
            self._offset = 0
        else:
            self._offset = end
        self._size -= len(out)
        return out

    def set_event(self, event: threading.Event) -> None:
        with self._lock:
            self._event = event
            if self._closed or self._size > 0:
                event.set()
            else:
                event.clear()

    def read_ready(self) -> bool:
        with self._lock:
            return self._size > 0

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        with self._lock:
            while self._size == 0:
                if self._closed:
                    return b""
                if timeout == 0.0:
                    raise PipeTimeout()
                then = time.monotonic()
                self._cv.wait(timeout)
                if timeout is not None:
                    timeout -= time.monotonic() - then
                    if timeout <= 0.0 and self._size == 0:
                        raise PipeTimeout()
            out = self._take(nbytes)
            if self._size == 0 and self._event is not None and not self._closed:
                self._event.clear()
            return out

    def empty(self) -> bytes:
        with self._lock:
            parts = []
            while self._size:
                parts.append(self._take(None))
            if self._event is not None and not self._closed:
                self._event.clear()
            return b"".join(parts)

    def __len__(self) -> int:
        with self._lock:
            return self._size


class SshProcess(ExactReader):
    """An exec channel's stdin/stdout as a stream; stderr is kept aside for error messages."""

    def __init__(self, channel: paramiko.Channel, name: str) -> None:
        self.channel = channel
        self.name = name
        self._stderr = StderrTail()
        self._drain = threading.Thread(target=self._read_stderr, name=f"ssh-stderr:{name}", daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        try:
            while True:
                data = self.channel.recv_stderr(65536)
                if not data:
                    return
                self._stderr.feed(data)
        except (OSError, EOFError, paramiko.SSHException):
            return

    def _recv_into(self, view: memoryview) -> int:
        try:
            data = self.channel.recv(len(view))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise StreamClosed(f"reading from {self.name} failed: {exc}") from None
        view[: len(data)] = data
        return len(data)

    def write(self, *parts: bytes | bytearray | memoryview) -> None:
        try:
            for part in parts:
                if len(part):
                    self.channel.sendall(part)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise StreamClosed(f"writing to {self.name} failed: {exc}") from None

    def exit_status(self, timeout: float | None = None) -> int | None:
        if not self.channel.status_event.wait(timeout):
            return None
        self._drain.join(timeout=1)
        return self.channel.exit_status

    def stderr_tail(self) -> str:
        return self._stderr.text()

    def kill(self) -> None:
        """Closing the channel makes sshd close the agent's pipes: it stops at its next read or write."""
        self.channel.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.channel.shutdown_write()  # EOF on the agent's stdin: it exits
        self.exit_status(timeout=10)
        self.channel.close()


class SshTransport:
    """Starts interpreters on one host over SSH; the connection is opened on first use and shared."""

    def __init__(
        self,
        host: str,
        *,
        port: int = 22,
        user: str = "root",
        key_file: str | Path | None = None,
        key_passphrase: Any = None,
        password: Any = None,
        known_hosts: str | Path | None = None,
        host_key: str | None = None,
        insecure: bool = False,
        sudo: bool = False,
        python: str = "python3",
        connect_timeout: float = CONNECT_TIMEOUT,
        dead_link_timeout: float = DEAD_LINK_SECONDS,
        keepalive: float = KEEPALIVE_SECONDS,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.key_file = Path(key_file).expanduser() if key_file else None
        self._key_passphrase = key_passphrase
        self._password = password  # a str or a Secret; revealed only when logging in
        self.known_hosts = (
            Path(known_hosts).expanduser() if known_hosts else Path("~/.ssh/known_hosts").expanduser()
        )
        self.host_key = _normalise_fingerprint(host_key) if host_key else None
        self.insecure = insecure
        self.sudo = sudo
        self.python = python
        self.connect_timeout = connect_timeout
        self.dead_link_timeout = dead_link_timeout
        self.keepalive = keepalive
        self.name = host if port == 22 else f"{host}:{port}"
        self.server_fingerprint: str | None = None
        self._transport: paramiko.Transport | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_source(cls, source: Any) -> SshTransport:
        """From a playbook ``source: {type: ssh, ...}`` (orchestrator.playbook.models.SshSource)."""
        return cls(
            source.host,
            port=source.port,
            user=source.user,
            key_file=source.key,
            password=source.password,
            known_hosts=source.known_hosts,
            host_key=source.host_key,
            insecure=source.insecure,
            sudo=source.sudo,
        )

    # ------------------------------------------------------------ connection

    def connect(self) -> paramiko.Transport:
        with self._lock:
            if self._transport is not None and self._transport.is_active():
                return self._transport
            self._transport = self._connect()
            return self._transport

    def _connect(self) -> paramiko.Transport:
        where = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise TransportError(
                f"cannot connect to SSH on {where}: {exc.strerror or exc}; check the host, port and firewall"
            ) from None
        _abort_when_dead(sock, self.dead_link_timeout)
        transport = paramiko.Transport(
            sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE
        )
        try:
            _prefer_fast_ciphers(transport.get_security_options())
            known = self._known_keys()
            if known and not self.host_key and not self.insecure:
                # ask for a key type we can check, as OpenSSH does, rather than fail on the server's favourite
                options = transport.get_security_options()
                preferred = [t for t in options.key_types if t in known] or list(options.key_types)
                options.key_types = preferred
            try:
                transport.start_client(timeout=self.connect_timeout)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise TransportError(f"SSH negotiation with {where} failed: {exc}") from None
            self._check_host_key(transport.get_remote_server_key(), known)
            self._login(transport)
        except BaseException:
            transport.close()
            raise
        transport.set_keepalive(max(1, round(self.keepalive)))
        return transport

    def _known_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _known_keys(self) -> dict[str, paramiko.PKey]:
        if self.host_key or self.insecure or not self.known_hosts.exists():
            return {}
        try:
            keys = paramiko.HostKeys(str(self.known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"cannot read {self.known_hosts}: {exc}") from None
        entry = keys.lookup(self._known_name())
        return dict(entry) if entry else {}

    def _check_host_key(self, key: paramiko.PKey, known: dict[str, paramiko.PKey]) -> None:
        offered = fingerprint(key)
        self.server_fingerprint = offered
        name = self._known_name()
        if self.host_key:
            if offered != self.host_key:
                raise HostKeyError(
                    f"the SSH host key of {name} is {offered}, not the pinned {self.host_key}: the host was "
                    "reinstalled or someone is in the middle; check the host, then update host_key"
                )
            return
        if self.insecure:
            log.warning("accepting the SSH host key of %s unchecked (%s): insecure is set", name, offered)
            return
        stored = known.get(key.get_name())
        if stored is None:
            raise HostKeyError(
                f"the SSH host key of {name} ({key.get_name()} {offered}) is not in {self.known_hosts}: "
                f"verify it, then add it (ssh-keyscan -p {self.port} {self.host} >> {self.known_hosts}) or "
                f"pin it with host_key: {offered}"
            )
        if stored.asbytes() != key.asbytes():
            raise HostKeyError(
                f"the SSH host key of {name} CHANGED: {self.known_hosts} has {fingerprint(stored)}, the host "
                f"offers {offered}; if the host was reinstalled, replace its line there, else stop and check"
            )

    def _login(self, transport: paramiko.Transport) -> None:
        """Key first, then password; one line says what each attempt met and what to change."""
        who = f"{self.user}@{self.name}"
        if self.key_file is None and self._password is None:
            raise TransportError(f"no SSH key or password given for {who}: set key or password")
        failures: list[tuple[str, str]] = []  # (what happened, what to change)
        if self.key_file is not None:
            failure = self._try_key(transport, self.key_file)
            if failure is None:
                return
            failures.append(failure)
        if self._password is not None:
            try:
                transport.auth_password(self.user, _reveal(self._password))
                return
            except paramiko.BadAuthenticationType as exc:
                allowed = ", ".join(exc.allowed_types)
                change = "" if self.key_file else "set key"  # a key that was tried has its own fix
                failures.append((f"password logins are off there (it allows: {allowed})", change))
            except paramiko.AuthenticationException:
                failures.append(("the password was not accepted", "check password"))
        said = "; ".join(what for what, _ in failures)
        fix = "; ".join(dict.fromkeys(change for _, change in failures if change))
        error = TransportError(f"SSH login as {who} failed: {said}; {fix}")
        error.retryable = False
        raise error

    def _try_key(self, transport: paramiko.Transport, path: Path) -> tuple[str, str] | None:
        """None when the key logged in, else (what happened, what to change); never the passphrase."""
        try:
            key = paramiko.PKey.from_path(path, _reveal(self._key_passphrase))
        except FileNotFoundError:
            return f"key file {path} does not exist", "set key to the private key file"
        except paramiko.PasswordRequiredException:
            return f"key {path} is protected by a passphrase", "use a key without one"
        except OSError as exc:
            return f"key file {path} cannot be read ({exc.strerror or exc})", "make it readable"
        except (paramiko.SSHException, ValueError, TypeError) as exc:
            if isinstance(exc, TypeError) and "password" in str(exc):
                # cryptography's own words for an encrypted OpenSSH-format key opened without one
                return f"key {path} is protected by a passphrase", "use a key without one"
            return f"key {path} is unusable ({exc})", "set key to an OpenSSH private key file"
        try:
            transport.auth_publickey(self.user, key)
        except paramiko.BadAuthenticationType as exc:
            allowed = ", ".join(exc.allowed_types)
            return f"key logins are off there (it allows: {allowed})", "set password"
        except paramiko.AuthenticationException:
            return (
                f"key {path} was refused",
                f"add its public key (ssh-keygen -y -f {path}) to {self.user}'s ~/.ssh/authorized_keys "
                f"on {self.host}, or set key to one it accepts",
            )
        return None

    # ------------------------------------------------------------ processes

    def command(self, args: Sequence[str]) -> str:
        argv = (["sudo", "-n"] if self.sudo else []) + [self.python, *args]
        return " ".join(shlex.quote(arg) for arg in argv)

    def start_python(self, args: Sequence[str]) -> SshProcess:
        transport = self.connect()
        try:
            channel = transport.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE)
            channel.in_buffer = PacketPipe()  # before the command starts: nothing has arrived yet
            channel.exec_command(self.command(args))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"cannot start {self.python} on {self.name} over SSH: {exc}") from None
        return SshProcess(channel, self.name)

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None


def _abort_when_dead(sock: socket.socket, seconds: float) -> None:
    """Let the kernel drop the connection once sent data stays unacknowledged ``seconds`` (Linux)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))


def _prefer_fast_ciphers(options: paramiko.transport.SecurityOptions) -> None:
    offered = list(options.ciphers)
    fast = [name for name in FAST_CIPHERS if name in offered]
    options.ciphers = fast + [name for name in offered if name not in fast]


def _reveal(value: Any) -> str | None:
    if value is None:
        return None
    reveal = getattr(value, "reveal", None)
    return reveal() if callable(reveal) else str(value)
