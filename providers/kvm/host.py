"""The libvirt host as a place to run things: this machine for local URIs, an SSH login for qemu+ssh://.

``appliance: host`` writes the replica volumes on the hypervisor host itself, so the writer agent and the
qemu-nbd exports must run there. For a local URI that is this process (the volumes are local paths); for
``qemu+ssh://`` it is the same login libvirt uses, opened with the project's SSH transport (host keys
checked as everywhere else). Other remote transports (tls, tcp) give libvirt access but no shell, so
there is nowhere to run a writer: that is refused with what to use instead.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from orchestrator.transport import TransportError
from orchestrator.transport.ssh import SshTransport
from providers.base import AgentLocation, ProviderError

from . import nbd
from .connection import LibvirtUri

NBD_SOURCE = Path(nbd.__file__).read_text()
REMOTE_TIMEOUT = 60.0


class LibvirtHost:
    """Runs the writer and qemu-nbd where the volumes are."""

    def __init__(self, uri: LibvirtUri, config: Any, hostname: str) -> None:
        self.uri = uri
        self.config = config
        self.hostname = hostname
        self._transport: SshTransport | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """How endpoints name the host: ``local`` when it is this machine."""
        return "local" if self.uri.is_local else (self.uri.host or self.hostname)

    def transport(self) -> SshTransport | None:
        """None for this machine; the shared SSH session for a qemu+ssh:// host."""
        if self.uri.is_local:
            return None
        if not self.uri.uses_ssh or not self.uri.host:
            raise ProviderError(
                f"appliance: host on {self.uri.display} runs the writer on the libvirt host over SSH, "
                "and this URI gives no SSH login; use a qemu+ssh://user@host/system URI for this provider"
            )
        with self._lock:
            if self._transport is None:
                config = self.config
                self._transport = SshTransport(
                    self.uri.host,
                    port=self.uri.port or 22,
                    user=self.uri.user or "root",
                    key_file=config.ssh_key or self.uri.params.get("keyfile"),
                    known_hosts=config.known_hosts or self.uri.params.get("known_hosts"),
                    host_key=config.host_key,
                    insecure=config.insecure,
                    sudo=config.sudo,
                )
            return self._transport

    def writer_location(self, path: str) -> AgentLocation | None:
        transport = self.transport()
        return None if transport is None else AgentLocation(transport, path)

    def nbd(self, operation: str, volume: str, fmt: str) -> dict[str, Any]:
        """Run nbd.start/stop/status for ``volume`` on the host; a failure is a ProviderError."""
        transport = self.transport()
        if transport is None:
            try:
                return nbd.OPERATIONS[operation](volume, fmt)
            except nbd.NbdError as exc:
                raise ProviderError(f"{exc} (on this host)") from None
        try:
            process = transport.start_python(["-c", NBD_SOURCE, operation, volume, fmt])
        except TransportError as exc:
            raise ProviderError(f"cannot reach the libvirt host {self.name} over SSH: {exc}") from None
        try:
            length = int(bytes(process.read_exact(8)), 16)
            result = json.loads(bytes(process.read_exact(length)))
        except Exception as exc:  # a broken channel or a Python that could not even start
            tail = process.stderr_tail()
            raise ProviderError(
                f"qemu-nbd {operation} for {volume} on {self.name} failed: {exc}"
                + (f" ({tail.strip()})" if tail.strip() else "")
            ) from None
        finally:
            process.close()
        if "error" in result:
            raise ProviderError(f"{result['error']} (on {self.name})")
        return result

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None
