# ruff: noqa: E501
"""A WS-Management endpoint standing in for a Windows Hyper-V host in tests (no Windows runs here).

It speaks the part of MS-WSMV that pywinrm uses, over real HTTP or HTTPS on 127.0.0.1: shell Create,
Command, Send (stdin), Receive, Signal and Delete, with SOAP faults shaped as Windows sends them. Logins
are checked for real: Basic against the configured users, NTLM by pyspnego acting as the acceptor (the
same NTLMv2 exchange a Windows host performs, channel binding to the TLS certificate included, and NTLM
message encryption over plain HTTP as pywinrm does it). A command must be
``powershell[.exe] [-NoProfile] [-NonInteractive] [-ExecutionPolicy X] -EncodedCommand <base64 UTF-16LE>``
within cmd.exe's 8191-character command line; the script runs through `powershell.Interpreter` against a
`hyperv_host.HypervHost`, and a PowerShell error comes back as a CLIXML error record on stderr with exit
code 1, as from a real host. Every script received is kept in ``scripts`` so tests can read exactly what
was sent.

The one other program it runs is the hvmigrate agent (agent_process.py): only when the command is the
machine's configured Python (``python`` on the host or source model; a machine without one has no
Python) with exactly the agent's bootstrap, and then it streams: Send feeds the agent's stdin, each
Receive returns what it wrote to stdout and stderr so far, as WinRM does for a running command.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import ipaddress
import os
import re
import ssl
import struct
import tempfile
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .agent_process import AgentProcess, agent_machine, parse_agent_command, windows_argv
from .hyperv_host import HypervHost, build_cmdlets
from .powershell import Interpreter, PSError

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
}
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
ACTION = {
    "create": "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create",
    "delete": "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete",
    "command": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command",
    "send": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send",
    "receive": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive",
    "signal": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal",
}
CMD_LINE_LIMIT = 8191  # cmd.exe's limit: WINRS_SKIP_CMD_SHELL is FALSE, so cmd.exe starts powershell
MAX_ENVELOPE = 512000  # WinRM's default MaxEnvelopeSizekb (500)
SHELL_NOT_FOUND = 2150858843
ENVELOPE_TOO_LARGE = 2150858817
ACCESS_DENIED = 5
STDIN_BOOTSTRAP = (
    "$ErrorActionPreference = 'Stop'\n"
    "$s = [Console]::In.ReadToEnd()\n"
    "& ([ScriptBlock]::Create([System.Text.Encoding]::UTF8.GetString([System.Convert]::FromBase64String($s))))\n"
)
_BOUNDARY = b"--Encrypted Boundary"


@dataclass
class Received:
    """One command as the endpoint saw it: the flags it ran with and the script it decoded."""

    flags: tuple[str, ...]
    script: str
    via_stdin: bool
    exit_code: int = 0
    stderr: str = ""


@dataclass
class _Command:
    flags: tuple[str, ...]
    stdin: bytearray | None = None  # set while waiting for the script on stdin
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    done: bool = False
    agent: AgentProcess | None = None  # a streaming command: the agent standing for python.exe


@dataclass
class _Shell:
    commands: dict[str, _Command] = field(default_factory=dict)


@dataclass
class Tls:
    ca_file: Path
    cert_file: Path
    key_file: Path


def mint_tls(directory: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Tls:
    """A CA and a server certificate it signs for ``names``: as a domain CA issues a WinRM listener's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hvmigrate test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    tls = Tls(directory / "ca.pem", directory / "winrm.pem", directory / "winrm.key")
    tls.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return tls


class WinRMStandIn:
    """The endpoint: ``start()`` it, point a provider at ``host:port``, read ``scripts`` afterwards."""

    def __init__(
        self,
        host: HypervHost | None,
        *,
        users: dict[str, str],
        tls: Tls | None = None,
        auth: tuple[str, ...] = ("ntlm", "basic"),
        domain: str = "CORP",
        models: tuple[Any, ...] = (),
    ) -> None:
        self.host = host
        self.models = models  # other machines' cmdlets here (DNS server, Windows source): .cmdlets()
        self.users = users  # user -> password (NTLM users are DOMAIN\user)
        self.tls = tls
        self.auth = auth
        self.domain = domain
        self.scripts: list[Received] = []
        self.shells: dict[str, _Shell] = {}
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._cbt: bytes | None = None
        self._ntlm_file: str | None = None
        self._previous_ntlm_file: str | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def start(self) -> WinRMStandIn:
        if "ntlm" in self.auth:
            # pyspnego's NTLM acceptor reads its user store from NTLM_USER_FILE (DOMAIN:USER:PASSWORD lines)
            handle, self._ntlm_file = tempfile.mkstemp(prefix="winrm-standin-ntlm-")
            with os.fdopen(handle, "w") as out:
                for user, password in self.users.items():
                    out.write(f"{self.domain}:{user}:{password}\n")
            self._previous_ntlm_file = os.environ.get("NTLM_USER_FILE")
            os.environ["NTLM_USER_FILE"] = self._ntlm_file
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            server.socket = context.wrap_socket(server.socket, server_side=True)
            der = ssl.PEM_cert_to_DER_cert(self.tls.cert_file.read_text())
            self._cbt = b"tls-server-end-point:" + hashlib.sha256(der).digest()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="winrm-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self.lock:
            shells = list(self.shells.values())
            self.shells.clear()
        for shell in shells:
            _stop_agents(shell)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._ntlm_file:
            if os.environ.get("NTLM_USER_FILE") == self._ntlm_file:
                if self._previous_ntlm_file and Path(self._previous_ntlm_file).exists():
                    os.environ["NTLM_USER_FILE"] = self._previous_ntlm_file
                else:
                    os.environ.pop("NTLM_USER_FILE", None)
            Path(self._ntlm_file).unlink(missing_ok=True)

    # ------------------------------------------------------------ running commands

    def run_command(self, command_line: str) -> _Command:
        if len(command_line) > CMD_LINE_LIMIT:
            return _Command((), stderr=b"The command line is too long.\r\n", exit_code=1, done=True)
        words = command_line.split()
        machine = agent_machine(self.host, self.models)
        argv = windows_argv(command_line)
        if argv and machine is not None and machine.python and argv[0].lower() == machine.python.lower():
            return self._start_agent(machine, argv)
        if not words or words[0].lower() not in ("powershell", "powershell.exe"):
            name = argv[0] if argv else ""
            return _Command(
                (),
                exit_code=1,
                done=True,
                stderr=(
                    f"'{name}' is not recognized as an internal or external command,\r\noperable program or batch "
                    "file.\r\n"
                ).encode(),
            )
        flags: list[str] = []
        encoded = None
        rest = iter(words[1:])
        for word in rest:
            lower = word.lower()
            if lower in ("-noprofile", "-noninteractive"):
                flags.append(word)
            elif lower == "-executionpolicy":
                flags.append(f"{word} {next(rest, '')}")
            elif lower in ("-encodedcommand", "-enc"):
                encoded = next(rest, None)
            else:
                return _Command(
                    tuple(flags),
                    exit_code=1,
                    done=True,
                    stderr=_clixml(f"The stand-in does not accept the powershell option '{word}'."),
                )
        if encoded is None:
            return _Command(
                tuple(flags),
                exit_code=1,
                done=True,
                stderr=_clixml("The stand-in runs only -EncodedCommand scripts."),
            )
        try:
            script = base64.b64decode(encoded, validate=True).decode("utf-16-le")
        except (binascii.Error, UnicodeDecodeError):
            return _Command(
                tuple(flags),
                exit_code=1,
                done=True,
                stderr=_clixml(
                    "Cannot process the command because the value specified with "
                    "-EncodedCommand is not properly encoded."
                ),
            )
        if script == STDIN_BOOTSTRAP:
            return _Command(tuple(flags), stdin=bytearray())
        command = _Command(tuple(flags))
        self._execute(command, script, via_stdin=False)
        return command

    def run_local(
        self, flags: tuple[str, ...], script: str, read_stdin: Callable[[], bytes]
    ) -> tuple[bytes, bytes, int]:
        """One script a local powershell.exe decoded (tests/fakes/powershell_exe.py), run as a WinRM
        command's script runs here: the stdin bootstrap reads the script from ``read_stdin``, anything else
        goes to the interpreter as it is; recorded in ``scripts`` alike."""
        command = _Command(flags)
        if script == STDIN_BOOTSTRAP:
            command.stdin = bytearray(read_stdin())
            self.finish_stdin(command)
        else:
            self._execute(command, script, via_stdin=False)
        return command.stdout, command.stderr, command.exit_code

    def _start_agent(self, machine: Any, argv: list[str]) -> _Command:
        """python.exe with the agent's bootstrap, and nothing else: any other use of Python is refused."""
        problem, length = parse_agent_command(argv)
        if problem:
            return _Command((), stderr=f"{problem}\r\n".encode(), exit_code=2, done=True)
        return _Command(("python",), agent=AgentProcess.start(machine, length))

    def finish_stdin(self, command: _Command) -> None:
        assert command.stdin is not None
        try:
            script = base64.b64decode(bytes(command.stdin).strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            command.stderr, command.exit_code, command.done = _clixml("stdin is not base64 UTF-8"), 1, True
            return
        command.stdin = None
        self._execute(command, script, via_stdin=True)

    def _execute(self, command: _Command, script: str, *, via_stdin: bool) -> None:
        record = Received(command.flags, script, via_stdin)
        cmdlets = build_cmdlets(self.host) if self.host is not None else {}
        for model in self.models:
            cmdlets.update(model.cmdlets())
        interpreter = Interpreter(cmdlets)
        try:
            output = interpreter.run_script(script)
            command.stdout = "".join(
                (item if isinstance(item, str) else str(getattr(item, "type_name", item))) + "\r\n"
                for item in output
            ).encode("utf-8")
        except PSError as error:
            command.stdout = b""
            command.stderr = _clixml(_error_text(error))
            command.exit_code = 1
            record.stderr = error.message
        record.exit_code = command.exit_code
        command.done = True
        with self.lock:
            self.scripts.append(record)


def _stop_agents(shell: _Shell) -> None:
    for command in shell.commands.values():
        if command.agent is not None:
            command.agent.terminate()


def _error_text(error: PSError) -> str:
    """What PowerShell prints for a terminating error under -EncodedCommand."""
    lines = [error.message]
    if error.line:
        lines.append(f"At line:{error.line} char:1")
        lines.append(f"+ {error.text}")
    lines.append(
        f"    + CategoryInfo          : {error.category}: (:) [{error.cmdlet}], {error.category}Exception"
    )
    lines.append(f"    + FullyQualifiedErrorId : {error.error_id}")
    return "\r\n".join(lines) + "\r\n"


def _clixml(text: str) -> bytes:
    parts = []
    for line in text.split("\r\n"):
        if line:
            parts.append(f'<S S="Error">{escape(line)}_x000D__x000A_</S>')
    return (
        '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        + "".join(parts)
        + "</Objs>"
    ).encode("utf-8")


# ---------------------------------------------------------------- HTTP and SOAP


def _fault(code: int, reason: str, subcode: str = "w:InternalError", sender: bool = False) -> str:
    return (
        f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:w="{NS["w"]}"><s:Header>'
        "<a:Action>http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</a:Action></s:Header><s:Body><s:Fault>"
        f"<s:Code><s:Value>s:{'Sender' if sender else 'Receiver'}</s:Value><s:Subcode><s:Value>{subcode}"
        f'</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{escape(reason)}</s:Text></s:Reason>'
        '<s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" '
        f'Code="{code}" Machine="standin"><f:Message>{escape(reason)}</f:Message></f:WSManFault></s:Detail>'
        "</s:Fault></s:Body></s:Envelope>"
    )


def _envelope(action: str, relates_to: str, body: str) -> str:
    return (
        f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:w="{NS["w"]}" xmlns:rsp="{NS["rsp"]}" '
        'xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer"><s:Header>'
        f"<a:Action>{action}Response</a:Action><a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
        f"<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )


class _Fault(Exception):
    def __init__(self, status: int, body: str) -> None:
        self.status, self.body = status, body


def _handler(endpoint: WinRMStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as HTTP.sys: a reply's last segment never waits for an ACK
        ntlm: Any = None
        authenticated = False

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.path.rstrip("/").lower() != "/wsman":
                self._reply(404, b"", "text/plain")
                return
            if not self._authenticate():
                return
            encrypted = "multipart/encrypted" in (self.headers.get("Content-Type") or "")
            if encrypted:
                body = self._decrypt(body)
            elif self.ntlm is not None and self.headers.get("Content-Type") and endpoint.tls is None and body:
                self._reply(400, b"", "text/plain")  # Windows refuses unencrypted NTLM traffic over HTTP
                return
            if not body:
                self._reply(200, b"", "application/soap+xml;charset=UTF-8")
                return
            try:
                status, text = 200, self._soap(body)
            except _Fault as fault:
                status, text = fault.status, fault.body
            payload = text.encode("utf-8")
            if encrypted:
                self._reply(
                    status,
                    self._encrypt(payload),
                    'multipart/encrypted;protocol="application/'
                    'HTTP-SPNEGO-session-encrypted";boundary="Encrypted Boundary"',
                )
            else:
                self._reply(status, payload, "application/soap+xml;charset=UTF-8")

        # -- auth
        def _authenticate(self) -> bool:
            header = self.headers.get("Authorization") or ""
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "basic" and "basic" in endpoint.auth:
                try:
                    user, _, password = base64.b64decode(token).decode("utf-8").partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    user, password = "", None
                if endpoint.users.get(user.split("\\")[-1]) == password:
                    return True
                self._challenge()
                return False
            if scheme.lower() in ("negotiate", "ntlm") and "ntlm" in endpoint.auth:
                import spnego
                from spnego.channel_bindings import GssChannelBindings
                from spnego.exceptions import SpnegoError

                raw = base64.b64decode(token)
                if raw.startswith(b"NTLMSSP\x00\x01") or self.ntlm is None:
                    bindings = GssChannelBindings(application_data=endpoint._cbt) if endpoint._cbt else None
                    self.ntlm = spnego.server(protocol="ntlm", channel_bindings=bindings)
                    self.authenticated = False
                try:
                    answer = self.ntlm.step(raw)
                except SpnegoError:
                    self.ntlm = None
                    self._challenge()
                    return False
                if not self.ntlm.complete:
                    self._reply(
                        401,
                        b"",
                        "text/plain",
                        {"WWW-Authenticate": f"{scheme} {base64.b64encode(answer or b'').decode()}"},
                    )
                    return False
                self.authenticated = True
                return True
            if self.authenticated:
                return True  # NTLM authenticates the connection, as on Windows
            self._challenge()
            return False

        def _challenge(self) -> None:
            headers = []
            if "ntlm" in endpoint.auth:
                headers += [("WWW-Authenticate", "Negotiate")]
            if "basic" in endpoint.auth:
                headers += [("WWW-Authenticate", 'Basic realm="WSMAN"')]
            self.send_response(401)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _reply(
            self, status: int, payload: bytes, content_type: str, extra: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self._headers_buffer.append(b"\r\n" + payload)  # one write: no Nagle/delayed-ACK stall
            self.flush_headers()

        # -- NTLM sealing (MS-WSMV 2.2.9.1.1)
        def _decrypt(self, body: bytes) -> bytes:
            parts = [p for p in body.split(_BOUNDARY + b"\r\n") if p]
            message = b""
            for i in range(0, len(parts) - 1, 2):
                length = int(parts[i].split(b"Length=")[1].strip())
                payload = parts[i + 1]
                if payload.endswith(_BOUNDARY + b"--\r\n"):
                    payload = payload[: -len(_BOUNDARY + b"--\r\n")]
                data = payload.replace(b"\tContent-Type: application/octet-stream\r\n", b"")
                size = struct.unpack("<i", data[:4])[0]
                plain = self.ntlm.unwrap_winrm(data[4 : 4 + size], data[4 + size :])
                if len(plain) != length:
                    raise ValueError("encrypted length does not match")
                message += plain
            return message

        def _encrypt(self, payload: bytes) -> bytes:
            result = self.ntlm.wrap_winrm(payload)
            return (
                _BOUNDARY + b"\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n"
                b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
                + str(len(payload)).encode()
                + b"\r\n"
                + _BOUNDARY
                + b"\r\n\tContent-Type: application/octet-stream\r\n"
                + struct.pack("<i", len(result.header))
                + result.header
                + result.data
                + _BOUNDARY
                + b"--\r\n"
            )

        # -- WS-Management
        def _soap(self, body: bytes) -> str:
            if len(body) > MAX_ENVELOPE:
                raise _Fault(
                    400,
                    _fault(
                        ENVELOPE_TOO_LARGE,
                        "The WS-Management service cannot process the "
                        "request because the request envelope is larger than MaxEnvelopeSize.",
                        "w:EncodingLimit",
                        sender=True,
                    ),
                )
            root = ET.fromstring(body)
            header = root.find("s:Header", NS)
            payload = root.find("s:Body", NS)
            if header is None or payload is None:
                raise _Fault(400, _fault(2150858817, "The SOAP envelope has no header or body.", sender=True))
            action = (header.findtext("a:Action", "", NS) or "").strip()
            message_id = (header.findtext("a:MessageID", "", NS) or "").strip()
            resource = (header.findtext("w:ResourceURI", "", NS) or "").strip()
            if resource != SHELL_URI:
                raise _Fault(
                    400,
                    _fault(
                        2150858882,
                        f"The resource URI {resource} is not supported.",
                        "w:DestinationUnreachable",
                        sender=True,
                    ),
                )
            shell_id = None
            for selector in header.iterfind("w:SelectorSet/w:Selector", NS):
                if selector.get("Name") == "ShellId":
                    shell_id = (selector.text or "").strip()
            if action == ACTION["create"]:
                new_id = str(uuid.uuid4()).upper()
                with endpoint.lock:
                    endpoint.shells[new_id] = _Shell()
                return _envelope(
                    action,
                    message_id,
                    (
                        "<x:ResourceCreated><a:Address>http://127.0.0.1/wsman</a:Address><a:ReferenceParameters>"
                        f'<w:ResourceURI>{SHELL_URI}</w:ResourceURI><w:SelectorSet><w:Selector Name="ShellId">'
                        f"{new_id}</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>"
                        f"<rsp:Shell><rsp:ShellId>{new_id}</rsp:ShellId><rsp:ResourceUri>{SHELL_URI}</rsp:ResourceUri>"
                        "</rsp:Shell>"
                    ),
                )
            with endpoint.lock:
                shell = endpoint.shells.get(shell_id or "")
            if shell is None:
                raise _Fault(
                    500,
                    _fault(
                        SHELL_NOT_FOUND,
                        f"The request for the Windows Remote Shell with "
                        f"ShellId {shell_id} failed because the shell was not found on the "
                        "server. Possible causes are: the specified ShellId is incorrect or "
                        "the shell no longer exists on the server.",
                        "w:InvalidSelectors",
                    ),
                )
            if action == ACTION["delete"]:
                with endpoint.lock:
                    endpoint.shells.pop(shell_id or "", None)
                _stop_agents(shell)
                return _envelope(action, message_id, "")
            if action == ACTION["command"]:
                line = payload.find("rsp:CommandLine", NS)
                command_text = (line.findtext("rsp:Command", "", NS) if line is not None else "").strip()
                arguments = (
                    [a.text or "" for a in line.iterfind("rsp:Arguments", NS)] if line is not None else []
                )
                command = endpoint.run_command(" ".join([command_text, *arguments]).strip())
                command_id = str(uuid.uuid4()).upper()
                shell.commands[command_id] = command
                return _envelope(
                    action,
                    message_id,
                    f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>",
                )
            if action == ACTION["send"]:
                stream = payload.find("rsp:Send/rsp:Stream", NS)
                command = shell.commands.get(stream.get("CommandId", "") if stream is not None else "")
                end = stream is not None and stream.get("End", "false").lower() == "true"
                if stream is not None and command is not None and command.agent is not None:
                    if not command.agent.send(base64.b64decode(stream.text or ""), end=end):
                        raise _Fault(500, _fault(232, "The pipe is being closed.", "w:InternalError"))
                    return _envelope(action, message_id, "<rsp:SendResponse/>")
                if stream is None or command is None or command.stdin is None:
                    raise _Fault(
                        400, _fault(2150858843, "The command is not waiting for input.", sender=True)
                    )
                command.stdin += base64.b64decode(stream.text or "")
                if stream.get("End", "false").lower() == "true":
                    endpoint.finish_stdin(command)
                return _envelope(action, message_id, "<rsp:SendResponse/>")
            if action == ACTION["receive"]:
                desired = payload.find("rsp:Receive/rsp:DesiredStream", NS)
                command_id = desired.get("CommandId", "") if desired is not None else ""
                command = shell.commands.get(command_id)
                if command is None:
                    raise _Fault(
                        400, _fault(2150858843, f"The command {command_id} does not exist.", sender=True)
                    )
                if command.agent is not None:
                    return _envelope(action, message_id, _agent_output(command.agent, command_id, header))
                if not command.done:
                    raise _Fault(
                        500,
                        _fault(
                            2150858793,
                            "The WS-Management service cannot complete the "
                            "operation within the time specified in OperationTimeout.",
                            "w:TimedOut",
                        ),
                    )
                streams = "".join(
                    f'<rsp:Stream Name="{name}" CommandId="{command_id}">{base64.b64encode(data).decode()}'
                    "</rsp:Stream>"
                    for name, data in (("stdout", command.stdout), ("stderr", command.stderr))
                    if data
                )
                command.stdout = command.stderr = b""
                return _envelope(
                    action,
                    message_id,
                    (
                        f"<rsp:ReceiveResponse>{streams}"
                        f'<rsp:Stream Name="stdout" CommandId="{command_id}" End="true"></rsp:Stream>'
                        f'<rsp:Stream Name="stderr" CommandId="{command_id}" End="true"></rsp:Stream>'
                        f'<rsp:CommandState CommandId="{command_id}" State="{NS["rsp"]}/CommandState/Done">'
                        f"<rsp:ExitCode>{command.exit_code}</rsp:ExitCode></rsp:CommandState></rsp:ReceiveResponse>"
                    ),
                )
            if action == ACTION["signal"]:
                signal = payload.find("rsp:Signal", NS)
                if signal is not None:
                    stopped = shell.commands.pop(signal.get("CommandId", ""), None)
                    if stopped is not None and stopped.agent is not None:
                        stopped.agent.terminate()
                return _envelope(action, message_id, "<rsp:SignalResponse/>")
            raise _Fault(
                400,
                _fault(
                    2150858755,
                    f"The action {action} is not supported by the service.",
                    "a:ActionNotSupported",
                    sender=True,
                ),
            )

    return Handler


def _agent_output(agent: AgentProcess, command_id: str, header: ET.Element) -> str:
    """One Receive of a running agent: what it wrote since the last one, or a w:TimedOut fault when it
    wrote nothing within the request's OperationTimeout (pywinrm then asks again), as on Windows."""
    timeout = _seconds(header.findtext("w:OperationTimeout", "", NS) or "PT20S")
    stdout, stderr, exit_code = agent.receive(min(timeout, 20.0))
    if not stdout and not stderr and exit_code is None:
        raise _Fault(
            500,
            _fault(
                2150858793,
                "The WS-Management service cannot complete the operation within the time specified in "
                "OperationTimeout.",
                "w:TimedOut",
            ),
        )
    streams = "".join(
        f'<rsp:Stream Name="{name}" CommandId="{command_id}">{base64.b64encode(data).decode()}</rsp:Stream>'
        for name, data in (("stdout", stdout), ("stderr", stderr))
        if data
    )
    if exit_code is None:
        state = f'<rsp:CommandState CommandId="{command_id}" State="{NS["rsp"]}/CommandState/Running"/>'
    else:
        streams += (
            f'<rsp:Stream Name="stdout" CommandId="{command_id}" End="true"></rsp:Stream>'
            f'<rsp:Stream Name="stderr" CommandId="{command_id}" End="true"></rsp:Stream>'
        )
        state = (
            f'<rsp:CommandState CommandId="{command_id}" State="{NS["rsp"]}/CommandState/Done">'
            f"<rsp:ExitCode>{exit_code}</rsp:ExitCode></rsp:CommandState>"
        )
    return f"<rsp:ReceiveResponse>{streams}{state}</rsp:ReceiveResponse>"


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"PT(\d+(?:\.\d+)?)S", duration.strip())
    return float(match.group(1)) if match else 20.0


def user_file_line(domain: str, user: str, password: str) -> str:
    return f"{domain}:{user}:{password}"


def decode_command(command_line: str) -> str | None:
    """The script inside a ``powershell -EncodedCommand`` line (for tests that read what was sent)."""
    match = re.search(r"-encodedcommand\s+(\S+)", command_line, re.IGNORECASE)
    return base64.b64decode(match.group(1)).decode("utf-16-le") if match else None
