"""One libvirt connection per provider, opened on first use and reopened when the daemon dropped it.

Whatever URI the playbook gives goes to libvirt, which owns remote access (``qemu+ssh://``, ``qemu+tls://``,
``qemu+libssh2://``...). Only three things are added, and only when the URI does not say them itself: the
provider's SSH key (``keyfile``), its known_hosts file (``known_hosts``, which only the libssh transports
understand), and ``no_tty=1`` for the ssh binary, because an orchestrator that waits on a password prompt
nobody sees is worse than one that fails at once and says why.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import libvirt

from providers.base import ProviderError, TransientProviderError

SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")
LOCAL_TRANSPORTS = ("", "unix")


def _quiet(_context: Any, _error: Any) -> None:
    """libvirt prints every error to stderr by default; the provider reports them itself, once."""


libvirt.registerErrorHandler(_quiet, None)


@dataclass(frozen=True)
class LibvirtUri:
    """What the provider needs to know about a URI: where the host is and how to reach its shell."""

    uri: str
    driver: str
    transport: str
    host: str | None
    user: str | None
    port: int | None
    path: str
    params: dict[str, str]

    @classmethod
    def parse(cls, uri: str) -> LibvirtUri:
        parts = urlsplit(uri)
        if not parts.scheme:
            raise ProviderError(
                f"{uri!r} is not a libvirt URI; write it like qemu:///system or qemu+ssh://host/system"
            )
        driver, _, transport = parts.scheme.partition("+")
        try:
            port = parts.port
        except ValueError:
            raise ProviderError(f"libvirt URI {uri!r} has an invalid port") from None
        return cls(
            uri=uri,
            driver=driver,
            transport=transport,
            host=parts.hostname or None,
            user=parts.username or None,
            port=port,
            path=parts.path,
            params=dict(parse_qsl(parts.query)),
        )

    @property
    def is_local(self) -> bool:
        """The daemon runs on this machine: volume paths here are paths the orchestrator can open."""
        return self.transport in LOCAL_TRANSPORTS and self.host in (None, "localhost")

    @property
    def is_system(self) -> bool:
        """The privileged daemon (``/system``), not a user's session one."""
        return self.path.rstrip("/") == "/system"

    @property
    def uses_ssh(self) -> bool:
        return self.transport in SSH_TRANSPORTS

    @property
    def display(self) -> str:
        """The URI for messages: without a password, should anyone have put one in it."""
        parts = urlsplit(self.uri)
        if parts.password:
            netloc = (f"{parts.username}:***@" if parts.username else "***@") + (parts.hostname or "")
            if parts.port:
                netloc += f":{parts.port}"
            return urlunsplit(parts._replace(netloc=netloc))
        return self.uri


def effective_uri(config: Any) -> str:
    """The URI handed to libvirt: the playbook's, plus the SSH options the provider config carries."""
    parsed = LibvirtUri.parse(config.uri)
    if not parsed.uses_ssh:
        return config.uri
    params = dict(parsed.params)
    if config.ssh_key and "keyfile" not in params:
        params["keyfile"] = str(config.ssh_key.expanduser())
    if parsed.transport in ("libssh", "libssh2") and config.known_hosts and "known_hosts" not in params:
        params["known_hosts"] = str(config.known_hosts.expanduser())
    if parsed.transport == "ssh":
        params.setdefault("no_tty", "1")
        if config.insecure:
            params.setdefault("no_verify", "1")
    if params == parsed.params:
        return config.uri
    parts = urlsplit(config.uri)
    return urlunsplit(parts._replace(query=urlencode(params)))


def reason(exc: libvirt.libvirtError) -> str:
    """libvirt's own sentence, without the error-code prefix noise."""
    return (exc.get_error_message() or str(exc)).strip()


_TRANSIENT_CODES = {
    getattr(libvirt, name)
    for name in (
        "VIR_ERR_OPERATION_TIMEOUT",
        "VIR_ERR_AGENT_UNRESPONSIVE",
        "VIR_ERR_RPC",
        "VIR_ERR_NO_CONNECT",
    )
    if hasattr(libvirt, name)
}


def failure(exc: libvirt.libvirtError, what: str) -> ProviderError:
    """A ProviderError for ``what`` failing; a dropped connection or a timeout is worth a retry."""
    message = f"{what}: {reason(exc)}"
    if exc.get_error_domain() == libvirt.VIR_FROM_RPC:  # the daemon went away under the call
        return TransientProviderError(
            f"{message}; the connection to libvirtd dropped: check that it is running there, then run "
            "the command again (what was done is kept)"
        )
    if exc.get_error_code() in _TRANSIENT_CODES:
        return TransientProviderError(message)
    return ProviderError(message)


class Connection:
    """A thread-safe, lazily opened libvirt connection (libvirt's own objects are thread-safe)."""

    def __init__(self, uri: LibvirtUri, effective: str) -> None:
        self.uri = uri
        self._effective = effective
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    def get(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self._close_quietly()
            self._conn = self._open()
            return self._conn

    def _open(self) -> libvirt.virConnect:
        try:
            return libvirt.open(self._effective)
        except libvirt.libvirtError as exc:
            hint = "check that libvirtd is running on that host and reachable from here"
            if self.uri.uses_ssh:
                hint += (
                    " (for SSH URIs: that ssh logs in there without a prompt and libvirt is installed there)"
                )
            elif self.uri.transport == "tls":
                hint += " (for qemu+tls://: the client certificate and the CA in /etc/pki)"
            raise TransientProviderError(
                f"cannot connect to libvirt at {self.uri.display}: libvirtd not running or unreachable "
                f"({reason(exc)}); {hint}"
            ) from None

    def _close_quietly(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close_quietly()
