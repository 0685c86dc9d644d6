"""One vSphere session per provider: TLS that is verified, a login that comes back by itself.

Certificate verification is on by default, in one of three ways, chosen by the provider config:

- ``ca_bundle`` (or none of the options): the server's chain must verify against that bundle (or the
  system's CAs) and name the host, as for any HTTPS site;
- ``thumbprint``: the server must present exactly the certificate with that SHA-256 (or SHA-1)
  thumbprint, as ESXi and vCenter show it. It is checked on *every* TLS handshake, not only the first:
  pyVmomi's own pinning checks the first connection of a pool and then trusts the rest;
- ``insecure: true``: no check at all, only when said explicitly (reports show it as a warning).

A session that the server forgets (idle timeout, restart of vpxd, an administrator terminating it) comes
back through `ReloginStub`: the call refused with NotAuthenticated never ran, so logging in again and
repeating it is safe. Nothing else is retried here: a dropped connection in the middle of CreateVM_Task
may have created the VM, so that decision belongs to the caller, who can look first.

The password is only ever handed to SessionManager.Login; no message or repr here contains it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import quote, urlencode

from pyVmomi import SoapStubAdapter, VmomiSupport, vim, vmodl
from pyVmomi.SoapAdapter import StubAdapterBase

from orchestrator.playbook.models import EsxProviderConfig
from providers.base import ProviderError, TransientProviderError

FALLBACK_VERSION = "vim.version.version9"  # vSphere 5.5: every supported server speaks it


class ThumbprintMismatch(ssl.SSLError):
    """The server presented another certificate than the pinned one."""

    def __init__(self, presented: str, expected: str) -> None:
        super().__init__(f"certificate thumbprint {presented} is not the pinned {expected}")
        self.presented = presented
        self.expected = expected


def normalize_thumbprint(text: str) -> str:
    """``AB:CD:...`` or ``abcd...`` as lower-case hex; refuses anything but a SHA-1 or SHA-256 digest."""
    digest = text.replace(":", "").replace(" ", "").lower()
    if len(digest) not in (40, 64) or any(c not in "0123456789abcdef" for c in digest):
        raise ProviderError(
            f"thumbprint {text!r} is not a SHA-256 (64 hex digits) or SHA-1 (40) certificate thumbprint; "
            "copy it from the host's certificate, e.g. openssl x509 -noout -fingerprint -sha256"
        )
    return digest


def thumbprint_of(der: bytes, length: int = 64) -> str:
    """The colon-separated thumbprint of a DER certificate, SHA-256 unless ``length`` asks for SHA-1."""
    digest = (hashlib.sha1 if length == 40 else hashlib.sha256)(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class _PinnedSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        expected = self.context.pinned  # type: ignore[attr-defined]
        der = self.getpeercert(binary_form=True) or b""
        presented = thumbprint_of(der, len(expected))
        if presented.replace(":", "").lower() != expected:
            raise ThumbprintMismatch(presented, thumbprint_of_hex(expected))


def thumbprint_of_hex(digest: str) -> str:
    upper = digest.upper()
    return ":".join(upper[i : i + 2] for i in range(0, len(upper), 2))


class PinnedContext(ssl.SSLContext):
    """A TLS context that accepts exactly one certificate, by thumbprint, at every handshake."""

    sslsocket_class = _PinnedSocket
    pinned: str

    def __new__(cls, digest: str) -> PinnedContext:
        context = super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)
        context.pinned = digest
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the pin replaces the chain; _PinnedSocket checks it
        return context


def tls_context(config: EsxProviderConfig) -> ssl.SSLContext:
    if config.insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if config.thumbprint:
        return PinnedContext(normalize_thumbprint(config.thumbprint))
    try:
        return ssl.create_default_context(cafile=str(config.ca_bundle) if config.ca_bundle else None)
    except (OSError, ssl.SSLError) as exc:
        raise ProviderError(
            f"CA bundle {config.ca_bundle} cannot be loaded ({exc}); check the path"
        ) from None


class ReloginStub(StubAdapterBase):
    """Logs in on first use and again when the server says the session is gone (NotAuthenticated)."""

    def __init__(self, soap_stub: SoapStubAdapter, login: Any) -> None:
        StubAdapterBase.__init__(self, version=soap_stub.version)
        self.soapStub = soap_stub
        self.DropConnections = soap_stub.DropConnections
        self._login = login
        self._lock = threading.Lock()
        self._session_generation = 0  # bumped at every login; tests and logs read ``logins``
        self._authenticated = False
        self.logins = 0

    def ensure_login(self) -> None:
        with self._lock:
            if not self._authenticated:
                self._login(self.soapStub)
                self._authenticated = True
                self.logins += 1
                self._session_generation += 1

    def expire(self, generation: int | None = None) -> None:
        """Forget the session (only the one ``generation`` names, so two threads log in once)."""
        with self._lock:
            if generation is None or generation == self._session_generation:
                self._authenticated = False

    def InvokeMethod(self, mo: Any, info: Any, args: Any) -> Any:
        for attempt in (1, 2):
            self.ensure_login()
            generation = self._session_generation
            status, obj = self.soapStub.InvokeMethod(mo, info, args, self)
            if status == 200:
                return obj
            if isinstance(obj, vim.fault.NotAuthenticated) and attempt == 1:
                self.expire(generation)  # refused before it ran: safe to repeat after a new login
                continue
            raise obj
        raise AssertionError("unreachable")


class Connection:
    """The session to one vCenter or ESXi endpoint, opened on first use."""

    def __init__(self, config: EsxProviderConfig) -> None:
        self.config = config
        self.where = f"{config.host}:{config.port}" if config.port != 443 else config.host
        self._context = tls_context(config)
        self._lock = threading.Lock()
        self._stub: ReloginStub | None = None
        self._content: vim.ServiceContent | None = None

    def __repr__(self) -> str:
        return f"Connection({self.config.user}@{self.where})"

    # ------------------------------------------------------------ session

    @property
    def stub(self) -> ReloginStub:
        if self._stub is None:
            with self._lock:
                if self._stub is None:
                    self._stub = self._open()
        return self._stub

    @property
    def content(self) -> vim.ServiceContent:
        if self._content is None:
            instance = vim.ServiceInstance("ServiceInstance", self.stub)
            self._content = self.call(lambda: instance.RetrieveContent(), "reading the service content")
        return self._content

    @property
    def is_vcenter(self) -> bool:
        return self.content.about.apiType == "VirtualCenter"

    def _open(self) -> ReloginStub:
        version = self._api_version()
        soap = SoapStubAdapter(
            host=self.config.host,
            port=self.config.port,
            version=version,
            sslContext=self._context,
            httpConnectionTimeout=self.config.api_timeout,
            connectionPoolTimeout=-1,
        )
        stub = ReloginStub(soap, self._login)
        try:
            stub.ensure_login()
        except BaseException as exc:
            soap.DropConnections()
            raise self.failure(exc, "logging in") from None
        return stub

    def _login(self, soap_stub: SoapStubAdapter) -> None:
        instance = vim.ServiceInstance("ServiceInstance", soap_stub)
        manager = instance.RetrieveContent().sessionManager
        try:
            manager.Login(self.config.user, self.config.password.reveal(), None)
        except vim.fault.InvalidLogin:
            raise ProviderError(
                f"{self.where} refused the login of {self.config.user}: wrong user name or password "
                "(check the provider's user and password:)"
            ) from None

    def _api_version(self) -> str:
        """The newest API version both pyVmomi and the server know (vimServiceVersions.xml)."""
        try:
            status, body = self.http("GET", "/sdk/vimServiceVersions.xml", authenticated=False)
        except ProviderError:
            raise
        if status != 200:
            return FALLBACK_VERSION
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            return FALLBACK_VERSION
        offered = {v.text for v in root.iter("version") if v.text}
        for version in VmomiSupport.GetServiceVersions("vim25"):
            if VmomiSupport.versionIdMap.get(version) in offered:
                return version
        return FALLBACK_VERSION

    def call(self, operation: Any, what: str) -> Any:
        """Run ``operation()`` (pyVmomi calls) and turn what it raises into a ProviderError about ``what``."""
        try:
            return operation()
        except ProviderError:
            raise
        except Exception as exc:
            raise self.failure(exc, what) from None

    def failure(self, exc: BaseException, what: str) -> ProviderError:
        """A one-line error for ``what`` failing against this endpoint."""
        from .tasks import fault_error

        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, ThumbprintMismatch):
            return ProviderError(
                f"{self.where} presented a certificate with thumbprint {exc.presented}, not the pinned "
                f"{exc.expected}: refusing to talk to it. If its certificate was renewed, check the new one "
                "and update thumbprint:"
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            return ProviderError(
                f"the certificate of {self.where} cannot be verified ({exc.verify_message}); give its CA as "
                "ca_bundle:, pin its SHA-256 thumbprint with thumbprint:, or (test labs only) insecure: true"
            )
        if isinstance(exc, ssl.SSLError):
            return TransientProviderError(f"{what} on {self.where}: TLS failed ({exc.reason or exc})")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return TransientProviderError(
                f"{what} on {self.where}: no answer within {self.config.api_timeout:.0f} s; check the "
                "endpoint is up, or raise api_timeout"
            )
        if isinstance(exc, (ConnectionError, OSError, http.client.HTTPException)):
            return TransientProviderError(
                f"{what} on {self.where}: cannot reach the vSphere API ({exc}); check host:, port: and "
                "that vCenter/ESXi is running"
            )
        if isinstance(exc, (vim.fault.VimFault, vmodl.MethodFault)):
            return fault_error(exc, f"{what} on {self.where}")
        return ProviderError(f"{what} on {self.where}: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        with self._lock:
            stub, self._stub, self._content = self._stub, None, None
        if stub is None:
            return
        with contextlib.suppress(Exception):  # a session already gone needs no logout
            vim.ServiceInstance("ServiceInstance", stub.soapStub).RetrieveContent().sessionManager.Logout()
        stub.DropConnections()

    @property
    def session_key(self) -> str | None:
        """The current session's key (what SessionManager.TerminateSession takes)."""
        session = self.call(lambda: self.content.sessionManager.currentSession, "reading the session")
        return session.key if session is not None else None

    # ------------------------------------------------------------ datastore files over HTTPS

    def http(
        self, method: str, path: str, body: bytes | None = None, *, authenticated: bool = True
    ) -> tuple[int, bytes]:
        """One HTTPS request to the endpoint with the same TLS checks as the API (and its session)."""
        for attempt in (1, 2):
            headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
            generation = 0
            if authenticated:
                stub = self.stub
                stub.ensure_login()
                generation = stub._session_generation
                headers["Cookie"] = stub.soapStub.cookie
            conn = http.client.HTTPSConnection(
                self.config.host, self.config.port, context=self._context, timeout=self.config.api_timeout
            )
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except ThumbprintMismatch as exc:
                raise self.failure(exc, f"{method} {path.split('?')[0]}") from None
            except (OSError, http.client.HTTPException) as exc:
                raise self.failure(exc, f"{method} {path.split('?')[0]}") from None
            finally:
                conn.close()
            if response.status in (401, 403) and authenticated and attempt == 1:
                self.stub.expire(generation)
                continue
            return response.status, data
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any, bytes]:
        """One authenticated request (logged in again once on 401/403); (status, headers, body read)."""
        for attempt in (1, 2):
            stub = self.stub
            stub.ensure_login()
            generation = stub._session_generation
            conn = http.client.HTTPSConnection(
                self.config.host, self.config.port, context=self._context, timeout=self.config.api_timeout
            )
            try:
                conn.request(method, path, body=body, headers={**headers, "Cookie": stub.soapStub.cookie})
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise self.failure(exc, f"{method} {path.split('?')[0]}") from None
            finally:
                conn.close()
            if response.status in (401, 403) and attempt == 1 and not hasattr(body, "__next__"):
                stub.expire(generation)
                continue
            return response.status, response.headers, data
        raise AssertionError("unreachable")

    def stream_put(self, path: str, chunks: Any, size: int) -> int:
        """PUT ``size`` bytes from the iterator ``chunks`` (never held in memory whole); the status."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        status, _, _ = self._send("PUT", path, chunks, headers)
        return status

    def remote_size(self, path: str) -> int | None:
        """The size of a datastore file (HEAD), None when it does not exist."""
        status, headers, _ = self._send("HEAD", path, None, {})
        if status != 200:
            return None
        length = headers.get("Content-Length")
        return int(length) if length and length.isdigit() else None

    def get_range(self, path: str, offset: int, length: int) -> tuple[int, bytes]:
        """Bytes ``offset`` to ``offset + length`` of a datastore file: (206, them) when the server honours
        Range, (200, the whole file) when it does not."""
        return self._send("GET", path, None, {"Range": f"bytes={offset}-{offset + length - 1}"})[::2]

    def datastore_path_url(self, datacenter: str, datastore: str, path: str) -> str:
        """The /folder URL of ``path`` inside ``datastore`` (the datastore HTTP file interface)."""
        query = urlencode({"dcPath": datacenter, "dsName": datastore})
        return f"/folder/{quote(path)}?{query}"

    def read_datastore_file(self, datacenter: str, datastore: str, path: str) -> bytes | None:
        status, data = self.http("GET", self.datastore_path_url(datacenter, datastore, path))
        if status == 404:
            return None
        if status != 200:
            raise ProviderError(f"reading [{datastore}] {path} on {self.where} failed: HTTP {status}")
        return data

    def write_datastore_file(self, datacenter: str, datastore: str, path: str, data: bytes) -> None:
        status, _ = self.http("PUT", self.datastore_path_url(datacenter, datastore, path), data)
        if status not in (200, 201, 204):
            raise ProviderError(
                f"writing [{datastore}] {path} on {self.where} failed: HTTP {status}; check the user may "
                "browse and write the datastore (Datastore.FileManagement)"
            )
