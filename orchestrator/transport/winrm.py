"""PowerShell on a Windows host over WinRM (pywinrm), with user values passed as data, never as code.

Every script is a fixed body written in this repository plus a data block: the values (VM names, paths,
sizes) travel as base64 JSON that a fixed prelude decodes into ``$hv``; the body only ever reads
``$hv.<field>``. A VM name such as ``x'; Remove-VM *; '`` therefore stays a string: nothing a user writes
is ever parsed as PowerShell. The prelude also makes every error terminating (``$ErrorActionPreference =
'Stop'``) and strict, so a half-run script stops at its first failure and says which.

Transport: HTTPS (5986) with the certificate checked against the system store or ``ca_bundle``; plain
HTTP (5985) only when the playbook says ``transport: http`` (NTLM, Kerberos and CredSSP then encrypt the
messages themselves, as WinRM requires). Scripts run as ``powershell.exe -NoProfile -NonInteractive
-EncodedCommand``; one too long for cmd.exe's 8191-character command line is sent on stdin in chunks
that each fit well inside WinRM's envelope limit, read by a fixed bootstrap.

Errors come back as one-line exceptions: a refused login (`WinRMAuthError`), a certificate that does not
verify (`WinRMCertificateError`), an unreachable or failing endpoint (`WinRMError`), and a script that
failed (`PowerShellError`: the PowerShell error record's message and id, read from the CLIXML on stderr).
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.transport import TransportError

PRELUDE = (
    "$ErrorActionPreference = 'Stop'\n"
    "$ProgressPreference = 'SilentlyContinue'\n"
    "Set-StrictMode -Version 2.0\n"
    "$hv = [System.Text.Encoding]::UTF8.GetString("
    "[System.Convert]::FromBase64String('{data}')) | ConvertFrom-Json\n"
)
STDIN_BOOTSTRAP = (
    "$ErrorActionPreference = 'Stop'\n"
    "$s = [Console]::In.ReadToEnd()\n"
    "& ([ScriptBlock]::Create([System.Text.Encoding]::UTF8.GetString("
    "[System.Convert]::FromBase64String($s))))\n"
)
POWERSHELL = "powershell.exe"
FLAGS = ("-NoProfile", "-NonInteractive")
CMD_LINE_LIMIT = 8191  # cmd.exe starts powershell.exe (WINRS_SKIP_CMD_SHELL is FALSE)
STDIN_CHUNK = 48 * 1024  # bytes of script per Send: base64 twice, still far below 150 KiB envelopes
JSON_DEPTH = 6
AUTHS = ("ntlm", "kerberos", "credssp", "basic")


class WinRMError(TransportError):
    """The WinRM endpoint could not be reached or failed the request."""


class WinRMAuthError(WinRMError):
    """The host refused the login: a person must fix the user or password."""

    retryable = False


class WinRMCertificateError(WinRMError):
    """The host's TLS certificate does not verify: never retried, never ignored silently."""

    retryable = False


class PowerShellError(Exception):
    """A script stopped with a PowerShell error; ``message`` is the error record's first line."""

    def __init__(self, message: str, *, error_id: str = "", exit_code: int = 1, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.error_id = error_id
        self.exit_code = exit_code
        self.detail = detail


@dataclass(frozen=True)
class WinRMTarget:
    """Where and how to log in; the password is held here only and never printed (see __repr__)."""

    host: str
    user: str
    password: str
    transport: str = "https"
    port: int | None = None
    auth: str = "ntlm"
    ca_bundle: str | None = None
    insecure: bool = False
    read_timeout: int = 60

    def __repr__(self) -> str:
        return f"WinRMTarget({self.url!r}, user={self.user!r}, auth={self.auth!r}, password=***)"

    @classmethod
    def from_config(cls, config: Any) -> WinRMTarget:
        """From a playbook WinRM login: a Hyper-V provider, a WinRM source or a Windows DNS server."""
        return cls(
            host=config.host,
            user=config.user or "",
            password=config.password.reveal() if config.password is not None else "",
            transport=config.transport,
            port=config.port,
            auth=config.auth,
            ca_bundle=str(config.ca_bundle) if config.ca_bundle else None,
            insecure=config.insecure,
        )

    @property
    def url(self) -> str:
        port = self.port or (5986 if self.transport == "https" else 5985)
        return f"{self.transport}://{self.host}:{port}/wsman"


def compose(body: str, data: Mapping[str, Any] | None = None) -> str:
    """The whole script: the fixed prelude with ``data`` as base64 JSON, then ``body``."""
    encoded = base64.b64encode(json.dumps(dict(data or {}), ensure_ascii=False).encode("utf-8")).decode(
        "ascii"
    )
    return PRELUDE.replace("{data}", encoded) + body.rstrip("\n") + "\n"


def command_line(script: str) -> str:
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return " ".join((POWERSHELL, *FLAGS, "-EncodedCommand", encoded))


class WinRM:
    """One WinRM endpoint; ``run`` a body with data and get its JSON output back. Thread-safe."""

    def __init__(self, target: WinRMTarget) -> None:
        if target.auth not in AUTHS:
            raise WinRMError(f"auth {target.auth!r} is not one of {', '.join(AUTHS)}")
        self.target = target
        self._protocol: Any = None
        self._lock = threading.Lock()
        self.sent: list[str] = []  # every script sent, newest last (bodies and base64 data: no secrets)

    def __repr__(self) -> str:
        return f"WinRM({self.target!r})"

    @property
    def where(self) -> str:
        """Where the scripts run, for messages: the endpoint's URL."""
        return self.target.url

    def run(self, body: str, data: Mapping[str, Any] | None = None) -> Any:
        """Run ``body`` with ``data`` as ``$hv``; the JSON it printed (None when it printed nothing)."""
        stdout, stderr, code = self.execute(compose(body, data))
        return script_output(stdout, stderr, code, self.target.host)

    def execute(self, script: str) -> tuple[bytes, bytes, int]:
        """Run a whole script; (stdout, stderr, exit code)."""
        with self._lock:
            self.sent.append(script)
            protocol = self._connect()
            line = command_line(script)
            try:
                shell = protocol.open_shell()
                try:
                    if len(line) <= CMD_LINE_LIMIT:
                        command = protocol.run_command(shell, line)
                    else:
                        command = protocol.run_command(shell, command_line(STDIN_BOOTSTRAP))
                        payload = base64.b64encode(script.encode("utf-8"))
                        for start in range(0, len(payload), STDIN_CHUNK):
                            end = start + STDIN_CHUNK >= len(payload)
                            protocol.send_command_input(
                                shell, command, payload[start : start + STDIN_CHUNK], end
                            )
                    stdout, stderr, code = protocol.get_command_output(shell, command)
                    protocol.cleanup_command(shell, command)
                finally:
                    protocol.close_shell(shell, close_session=False)
            except Exception as exc:
                self._protocol = None  # a new session next time
                raise self.failure(exc) from None
        return stdout, stderr, code

    def close(self) -> None:
        with self._lock:
            if self._protocol is not None:
                self._protocol.transport.close_session()
                self._protocol = None

    # ------------------------------------------------------------ internals

    def _connect(self) -> Any:
        if self._protocol is None:
            self._protocol = self.open_protocol()
        return self._protocol

    def open_protocol(self, *, operation_timeout: int | None = None) -> Any:
        """A new pywinrm Protocol (its own HTTP connection and login) to this endpoint.

        The scripts share one; a streaming agent (winrm_agent.py) takes two more, so that a Receive
        waiting for output never holds up the Send that would let the far end produce it."""
        try:
            from winrm.protocol import Protocol
        except ImportError:
            raise WinRMError("WinRM needs pywinrm: pip install 'hvmigrate[hyperv]'") from None
        target = self.target
        try:
            return Protocol(
                target.url,
                transport=target.auth,
                username=target.user,
                password=target.password,
                server_cert_validation="ignore" if target.insecure else "validate",
                ca_trust_path=target.ca_bundle,
                read_timeout_sec=target.read_timeout,
                operation_timeout_sec=operation_timeout or max(1, target.read_timeout - 10),
                message_encryption="auto",
                proxy=None,
            )
        except Exception as exc:
            raise self.failure(exc) from None

    def failure(self, exc: Exception) -> WinRMError:
        """The one-line error for what pywinrm, requests or the endpoint raised (never the password)."""
        import requests
        from winrm.exceptions import InvalidCredentialsError, WinRMTransportError, WSManFaultError

        where = f"{self.target.host} ({self.target.url})"
        if isinstance(exc, InvalidCredentialsError):
            return WinRMAuthError(
                f"{where} refused the login of {self.target.user}: wrong user name or password, or the "
                f"account may not use WinRM ({self.target.auth}); fix user/password in the playbook"
            )
        if isinstance(exc, requests.exceptions.SSLError):
            return WinRMCertificateError(
                f"the TLS certificate of {where} cannot be verified ({_ssl_reason(exc)}); give its CA as "
                "ca_bundle, or connect by the name the certificate was issued for"
            )
        if isinstance(exc, WSManFaultError):
            return WinRMError(
                f"{where} refused the request: {exc.reason} (WS-Management fault {exc.wsman_fault_code})"
            )
        if isinstance(exc, WinRMTransportError):
            return WinRMError(f"{where} answered HTTP {exc.code}: {exc.response_text[:200]}")
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return WinRMError(
                f"cannot reach {where}: {type(exc).__name__}; check host, port and that WinRM listens on "
                f"{self.target.transport.upper()} (winrm quickconfig -transport:{self.target.transport})"
            )
        message = str(exc).replace(self.target.password, "***") if self.target.password else str(exc)
        if "requires" in message or "not installed" in message:
            return WinRMError(f"auth {self.target.auth} is not available: {message}")
        return WinRMError(f"WinRM to {where} failed: {type(exc).__name__}: {message}")


def _ssl_reason(exc: Exception) -> str:
    text = str(exc)
    for reason in (
        "certificate verify failed: [^(\"')]+",
        "Hostname mismatch[^\"')]+",
        "hostname '[^']+' doesn't match[^\"')]*",
    ):
        match = re.search(reason, text, re.IGNORECASE)
        if match:
            return match.group(0).strip().rstrip(",")
    return "certificate verify failed"


_XML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def parse_clixml(stderr: bytes) -> list[str]:
    """The error lines of a CLIXML stream (``<S S="Error">``), with PowerShell's _xHHHH_ escapes decoded."""
    import xml.etree.ElementTree as ET

    text = stderr.decode("utf-8", errors="replace")
    if not text.startswith("#< CLIXML"):
        return [line for line in text.splitlines() if line.strip()]
    lines: list[str] = []
    for document in re.findall(r"<Objs.*?</Objs>", text, re.DOTALL):
        try:
            root = ET.fromstring(document)
        except ET.ParseError:
            continue
        chunk = ""
        for node in root.iter():
            if node.tag.endswith("}S") and node.get("S") == "Error":
                chunk += _XML_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), node.text or "")
        lines.extend(line for line in chunk.splitlines() if line.strip())
    return lines


def script_output(stdout: bytes, stderr: bytes, code: int, host: str) -> Any:
    """What a script printed, as JSON (None when nothing); its error as a PowerShellError.

    The same for every way a script runs (WinRM, or a local powershell.exe): a non-zero exit or an error
    record on stderr (CLIXML, or plain lines) is a failure, whatever it printed before."""
    if code != 0 or stderr.startswith(b"#< CLIXML"):
        raise _script_error(stderr, code)
    text = stdout.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise WinRMError(f"{host} answered a script with output that is not JSON: {text[:120]!r}") from None


def _script_error(stderr: bytes, code: int) -> PowerShellError:
    lines = parse_clixml(stderr)
    if not lines:
        return PowerShellError(f"the script exited with code {code} and no error message", exit_code=code)
    error_id = ""
    for line in lines:
        match = re.search(r"FullyQualifiedErrorId\s*:\s*(\S.*?)\s*$", line)
        if match:
            error_id = match.group(1)
    return PowerShellError(lines[0].strip(), error_id=error_id, exit_code=code, detail="\n".join(lines))
