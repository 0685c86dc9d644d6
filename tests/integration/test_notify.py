"""Notifications delivered for real: a local SMTP server (aiosmtpd) that demands STARTTLS and AUTH, an HTTP
server receiving the webhook, endpoints that refuse or never answer, and a real run on the sim provider.

The TLS certificate is minted once per module (cryptography); nothing here leaves 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import json
import random
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.executor import Executor, NullObserver
from orchestrator.journal import Journal
from orchestrator.notify import Notifier, TeeObserver, notifier_for
from orchestrator.planner import build_plan
from orchestrator.playbook.models import Playbook
from orchestrator.quickstart import build_web01
from orchestrator.session import open_session
from orchestrator.steps.base import StepNode
from tests.images import make_image

MiB = 1024**2

pytestmark = pytest.mark.integration

USER, PASSWORD = "hvmigrate", "correct-horse-battery-staple"


# ---------------------------------------------------------------- a real SMTP server


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hvmigrate test relay")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Inbox:
    """The relay's side: every message accepted, with the session it came in on, and every login tried."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.logins: list[tuple[str, bool]] = []
        self.secrets_seen: list[bytes] = []  # raw AUTH and DATA bytes, to look for passwords in
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.secrets_seen.append(envelope.original_content or envelope.content)
            self.messages.append(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": list(envelope.rcpt_tos),
                    "tls": session.ssl is not None,
                    "authenticated": session.authenticated,
                    "message": email.message_from_bytes(envelope.content, policy=email.policy.default),
                }
            )
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = data.login.decode() == USER and data.password.decode() == PASSWORD
        with self.lock:
            self.logins.append((data.login.decode(), ok))
        return AuthResult(success=ok, handled=False)  # not handled: the server answers 535 itself


class Relay:
    def __init__(self, inbox: Inbox, port: int) -> None:
        self.inbox = inbox
        self.host = "127.0.0.1"
        self.port = port


@pytest.fixture
def relay(tls_files: tuple[Path, Path]) -> Iterator[Relay]:
    """aiosmtpd with STARTTLS required before MAIL and AUTH allowed only over TLS (a submission port)."""
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=context,
        require_starttls=True,
        auth_require_tls=True,
        authenticator=inbox.authenticate,
    )
    controller.start()
    try:
        yield Relay(inbox, controller.port)
    finally:
        controller.stop()


@pytest.fixture
def plain_relay() -> Iterator[Relay]:
    """An SMTP server that offers no STARTTLS at all."""
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), authenticator=inbox.authenticate)
    controller.start()
    try:
        yield Relay(inbox, controller.port)
    finally:
        controller.stop()


def email_settings(relay: Relay, cert: Path | None, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "server": relay.host,
        "port": relay.port,
        "user": USER,
        "password": PASSWORD,
        "sender": "hvmigrate@corp.test",
        "to": ["ops@corp.test", "dba@corp.test"],
        "timeout": 10,
    }
    if cert is not None:
        settings["ca_bundle"] = str(cert)
    settings.update(overrides)
    return {k: v for k, v in settings.items() if v is not None}


# ---------------------------------------------------------------- a real HTTP server


class Hook:
    """Webhook receiver on 127.0.0.1: keeps every request; answers ``status`` (and ``location``)."""

    def __init__(self, status: int = 204, location: str | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = status
        self.location = location
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the http.server API names it so
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(hook.status)
                if hook.location:
                    self.send_header("Location", hook.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.close()


class Silent:
    """A TCP port that completes the handshake and then says nothing, ever (a black-holed relay)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)  # never accept()ed: the kernel queues connections, nobody answers
        self.port = self.sock.getsockname()[1]

    def pending_request(self, timeout: float = 10) -> bytes:
        """What the first client sent (proof that its request was still waiting for an answer)."""
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(timeout)
            return conn.recv(65536)


@pytest.fixture
def silent() -> Iterator[Silent]:
    port = Silent()
    yield port
    port.sock.close()


def refused_port() -> int:
    """A port nothing listens on (taken and released at once): connecting is refused."""
    return free_port()


# ---------------------------------------------------------------- driving the notifier directly


def book(notifications: dict[str, Any]) -> Playbook:
    return Playbook.model_validate(
        {
            "apiVersion": "hvmigrate/v1",
            "kind": "MigrationPlaybook",
            "name": "wave-1",
            "providers": {"local": {"type": "sim", "root": "/nonexistent"}},
            "servers": [
                {
                    "name": "db01",
                    "source": {"type": "image", "path": "/x/db01.raw"},
                    "target": {"provider": "local"},
                }
            ],
            "notifications": notifications,
        }
    )


def notifier(pb: Playbook, warnings: list[str]) -> Notifier:
    made = notifier_for(pb, playbook_file="wave-1.yaml", warn=warnings.append)
    assert made is not None
    return made


def node(pb: Playbook, step_id: str) -> StepNode:
    return build_plan(pb).node(step_id)


def fail_final_sync(n: Notifier, pb: Playbook) -> None:
    n.step_finished(node(pb, "db01/final_sync"), "failed", "db01: the source stopped answering")


def test_mail_arrives_over_starttls_after_auth_with_subject_and_body(
    relay: Relay, tls_files: tuple[Path, Path]
) -> None:
    pb = book({"email": email_settings(relay, tls_files[0])})
    warnings: list[str] = []
    n = notifier(pb, warnings)

    fail_final_sync(n, pb)
    flushed = n.close()

    assert warnings == [] and flushed.delivered == 1
    (got,) = relay.inbox.messages
    assert got["tls"] and got["authenticated"]  # STARTTLS happened before AUTH and MAIL
    assert relay.inbox.logins == [(USER, True)]
    assert got["mail_from"] == "hvmigrate@corp.test"
    assert got["rcpt_tos"] == ["ops@corp.test", "dba@corp.test"]
    mail: EmailMessage = got["message"]
    assert mail["Subject"] == "[hvmigrate] wave-1 db01 CRITICAL step_failed: db01/final_sync"
    assert mail["X-Hvmigrate-Event"] == "step_failed" and mail["Auto-Submitted"] == "auto-generated"
    body = mail.get_content()
    assert "db01/final_sync failed: db01: the source stopped answering" in body
    assert "Step:      db01/final_sync" in body
    assert "`migrate cutover wave-1.yaml db01`" in body  # what to do next
    assert PASSWORD.encode() not in b"".join(relay.inbox.secrets_seen)


def test_a_wrong_password_is_refused_and_reported_without_the_password(
    relay: Relay, tls_files: tuple[Path, Path]
) -> None:
    wrong = "not-the-password-42"
    pb = book({"email": email_settings(relay, tls_files[0], password=wrong)})
    warnings: list[str] = []
    n = notifier(pb, warnings)

    fail_final_sync(n, pb)  # returns at once; the refusal comes back as a warning, never an exception
    flushed = n.close()

    assert relay.inbox.messages == [] and relay.inbox.logins  # smtplib tries PLAIN, then LOGIN
    assert all(login == (USER, False) for login in relay.inbox.logins)
    assert flushed.failed == 1 and flushed.delivered == 0
    (warning,) = warnings
    assert "step_failed db01 not sent" in warning
    assert f"refused the login of '{USER}' (535" in warning
    assert "check notifications.email.user and password" in warning
    assert wrong not in warning and wrong not in repr(pb) and wrong not in repr(n.watcher.playbook)


def test_the_relay_requires_starttls_so_plain_mail_is_refused(relay: Relay) -> None:
    pb = book({"email": email_settings(relay, None, starttls=False, user=None, password=None)})
    warnings: list[str] = []
    n = notifier(pb, warnings)

    fail_final_sync(n, pb)
    n.close()

    assert relay.inbox.messages == []
    (warning,) = warnings
    assert "wants TLS or a login before it takes mail (530 Must issue a STARTTLS command first)" in warning
    assert "set notifications.email.starttls: true" in warning


def test_a_relay_without_starttls_is_refused_before_any_password_is_sent(plain_relay: Relay) -> None:
    pb = book({"email": email_settings(plain_relay, None)})
    warnings: list[str] = []
    n = notifier(pb, warnings)

    fail_final_sync(n, pb)
    n.close()

    assert plain_relay.inbox.messages == [] and plain_relay.inbox.logins == []
    (warning,) = warnings
    assert f"the SMTP relay 127.0.0.1:{plain_relay.port} does not offer STARTTLS; nothing was sent" in warning


def test_an_untrusted_relay_certificate_is_refused_and_says_which_setting_helps(relay: Relay) -> None:
    pb = book({"email": email_settings(relay, None)})  # no ca_bundle: the self-signed cert is not trusted
    warnings: list[str] = []
    n = notifier(pb, warnings)

    fail_final_sync(n, pb)
    n.close()

    assert relay.inbox.messages == [] and relay.inbox.logins == []
    (warning,) = warnings
    assert "certificate is not trusted" in warning and "notifications.email.ca_bundle" in warning


def test_webhook_posts_json_with_secret_headers(hook: Hook) -> None:
    token = "Bearer hook-token-0123456789"
    pb = book({"webhook": {"url": f"{hook.url}/hooks/abc", "headers": {"Authorization": token}}})
    warnings: list[str] = []
    n = notifier(pb, warnings)

    fail_final_sync(n, pb)
    n.step_finished(node(pb, "db01/remap_nics"), "done", None)
    flushed = n.close()

    assert warnings == [] and flushed.delivered == 2
    assert [r["path"] for r in hook.requests] == ["/hooks/abc", "/hooks/abc"]
    assert {r["headers"]["Authorization"] for r in hook.requests} == {token}
    assert {r["headers"]["Content-Type"] for r in hook.requests} == {"application/json"}
    failed, ready = hook.payloads()
    assert {k: failed[k] for k in ("event", "plan", "server", "severity", "step")} == {
        "event": "step_failed",
        "plan": "wave-1",
        "server": "db01",
        "severity": "critical",
        "step": "db01/final_sync",
    }
    assert failed["message"] == "db01/final_sync failed: db01: the source stopped answering"
    assert dt.datetime.fromisoformat(failed["time"]).tzinfo is not None
    assert ready["event"] == "ready_for_cutover" and ready["severity"] == "info"


def test_an_https_webhook_checks_the_certificate_against_ca_bundle(
    tls_files: tuple[Path, Path], hook: Hook
) -> None:
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    hook.server.socket = context.wrap_socket(hook.server.socket, server_side=True)
    url = hook.url.replace("http://", "https://")
    warnings: list[str] = []

    trusted = notifier(book({"webhook": {"url": url, "ca_bundle": str(cert)}}), warnings)
    fail_final_sync(trusted, trusted.watcher.playbook)
    trusted.close()
    untrusted = notifier(book({"webhook": {"url": url}}), warnings)
    fail_final_sync(untrusted, untrusted.watcher.playbook)
    untrusted.close()

    assert [p["event"] for p in hook.payloads()] == ["step_failed"]  # only the trusted one got through
    (warning,) = warnings
    assert "certificate is not trusted" in warning


@pytest.mark.parametrize(
    ("status", "expected"),
    [(500, "answered HTTP 500"), (302, "answered HTTP 302 Found (redirects are not followed")],
)
def test_a_webhook_error_or_redirect_is_a_warning_and_headers_never_follow_a_redirect(
    status: int, expected: str, hook: Hook
) -> None:
    elsewhere = Hook()
    try:
        failing = Hook(status=status, location=f"{elsewhere.url}/stolen")
        try:
            pb = book({"webhook": {"url": f"{failing.url}/h", "headers": {"X-Token": "tok-secret-value"}}})
            warnings: list[str] = []
            n = notifier(pb, warnings)
            fail_final_sync(n, pb)
            n.close()
        finally:
            failing.close()
    finally:
        elsewhere.close()
    assert len(failing.requests) == 1 and elsewhere.requests == []
    (warning,) = warnings
    assert expected in warning and "tok-secret-value" not in warning and "/h" not in warning


def test_unreachable_endpoints_are_warnings_and_close_does_not_wait_for_a_silent_one(silent: Silent) -> None:
    pb = book(
        {
            "email": {
                "server": "127.0.0.1",
                "port": refused_port(),
                "sender": "a@corp.test",
                "to": ["b@corp.test"],
            },
            "webhook": {"url": f"http://127.0.0.1:{silent.port}/hook/secret-path", "timeout": 600},
        }
    )
    warnings: list[str] = []
    n = notifier(pb, warnings)

    fail_final_sync(n, pb)
    flushed = n.close(timeout=0.5)

    # The refused relay failed at once; the silent webhook is still waiting for its answer (600 s timeout)
    # and close() returned anyway, counting it as undelivered.
    assert (flushed.delivered, flushed.failed, flushed.undelivered) == (0, 1, 1)
    assert any("cannot reach the SMTP relay" in w and "Connection refused" in w for w in warnings)
    assert any(
        "1 notice(s) for the webhook to http://127.0.0.1" in w and "not sent within 0.5s" in w
        for w in warnings
    )
    assert all("secret-path" not in w for w in warnings)
    assert b"POST /hook/secret-path" in silent.pending_request()


# ---------------------------------------------------------------- through a real run on the sim provider


def write_playbook(folder: Path, notifications: dict[str, Any], *, warm: bool = False) -> Path:
    """Two servers on the sim provider: web01 migrates; bad01's image does not exist, so it fails.

    ``warm``: web01 alone, with a second disk of plain data that a test rewrites between syncs.
    """
    images = folder / "images"
    images.mkdir()
    build_web01(images / "web01.raw")
    disks = [{"source": "web01.raw", "format": "raw"}]
    source: dict[str, Any] = {"type": "image", "path": "./images/web01.raw"}
    if warm:
        make_image(images / "web01-data.raw", 32 * MiB, {0: random.Random(1).randbytes(MiB)})
        source["extra_disks"] = ["./images/web01-data.raw"]
        disks.append({"source": "web01-data.raw", "format": "raw"})
    pb = {
        "apiVersion": "hvmigrate/v1",
        "kind": "MigrationPlaybook",
        "name": "wave-1",
        "defaults": {
            "mirror": {"chunk_size": "1MiB"},
            "cutover": {"mode": "manual", "shutdown_source": False},
            "limits": {"retries": 0},
        },
        "providers": {
            "local": {"type": "sim", "root": "./sim-hypervisor", "datastores": {"default": "1GiB"}}
        },
        "servers": [
            {
                "name": "web01",
                "source": source,
                "target": {
                    "provider": "local",
                    "disks": disks,
                    "nics": [{"source_mac": "52:54:00:00:01:01", "network": "prod", "ip": "10.1.0.11/24"}],
                },
            },
            {
                "name": "bad01",
                "source": {"type": "image", "path": "./images/missing.raw"},
                "target": {"provider": "local"},
            },
        ],
        "notifications": notifications,
    }
    if warm:
        del pb["servers"][1]
    path = folder / "wave-1.yaml"
    path.write_text(yaml.safe_dump(pb, sort_keys=False))
    return path


def run(
    path: Path,
    phases: list[str],
    servers: list[str] | None,
    command: str,
    warnings: list[str],
    prepare: Callable[[Journal], None] | None = None,
) -> tuple[Any, Notifier, Any]:
    """As `migrate` runs a command: session, journal, the playbook's notifier beside the terminal's observer,
    and the notifier flushed at the end. Returns the run's result, the notifier and what the flush said."""
    session = open_session(path)
    journal, _ = session.open_journal()
    if prepare is not None:
        prepare(journal)
    notifier = notifier_for(
        session.playbook, plan=session.plan, journal=journal, playbook_file=path.name, warn=warnings.append
    )
    assert notifier is not None
    try:
        executor = Executor(
            session.plan,
            session.playbook,
            journal,
            state_dir=session.state_dir,
            base_dir=session.base_dir,
            observer=TeeObserver(NullObserver(), notifier),
        )
        selected = executor.select(phases, servers, auto_cutover=command == "execute")
        result = executor.run(selected, command=command)
        in_flight = sum(c.undelivered for c in notifier._couriers)  # before any flush
        return result, notifier, (in_flight, notifier.close())
    finally:
        journal.close()


def test_a_real_run_mails_and_posts_only_the_chosen_events(
    tmp_path: Path, relay: Relay, tls_files: tuple[Path, Path], hook: Hook
) -> None:
    path = write_playbook(
        tmp_path,
        {
            "email": {**email_settings(relay, tls_files[0]), "events": ["step_failed", "cutover_done"]},
            "webhook": {"url": f"{hook.url}/hvmigrate", "events": ["ready_for_cutover", "cutover_done"]},
        },
    )
    warnings: list[str] = []

    result, _, _ = run(path, ["replicate"], None, "execute", warnings)

    assert result.status == "failed"
    (failed,) = result.failed  # bad01's first step; the rest of bad01 is blocked, web01 goes on
    assert failed.startswith("bad01/")
    (mail,) = (m["message"] for m in relay.inbox.messages)
    assert mail["Subject"] == f"[hvmigrate] wave-1 bad01 CRITICAL step_failed: {failed}"
    assert "missing.raw" in mail.get_content()  # the step's own error
    assert [(p["event"], p["server"], p["step"]) for p in hook.payloads()] == [
        ("ready_for_cutover", "web01", "web01/remap_nics")
    ]
    assert "`migrate cutover wave-1.yaml web01`" in hook.payloads()[0]["next"]

    result, _, _ = run(path, ["replicate"], None, "execute", warnings)  # a re-run: nothing new to tell
    assert len(relay.inbox.messages) == 2 and len(hook.requests) == 1  # bad01 fails again; web01 is quiet

    result, _, _ = run(path, ["replicate", "cutover"], ["web01"], "cutover", warnings)

    # "waiting": the shared appliance is released only once bad01, outside this command, is done with it
    assert result.status == "waiting" and not result.failed
    assert "web01/verify_replica" in result.done
    assert relay.inbox.messages[-1]["message"]["Subject"] == (
        "[hvmigrate] wave-1 web01 INFO cutover_done: web01/verify_replica"
    )
    assert [p["event"] for p in hook.payloads()] == ["ready_for_cutover", "cutover_done"]
    assert len(relay.inbox.messages) == 3
    assert warnings == []


def test_a_real_run_with_unreachable_endpoints_finishes_without_waiting_for_them(
    tmp_path: Path, silent: Silent
) -> None:
    path = write_playbook(
        tmp_path,
        {
            "email": {
                "server": "127.0.0.1",
                "port": refused_port(),
                "sender": "a@corp.test",
                "to": ["b@corp.test"],
            },
            "webhook": {"url": f"http://127.0.0.1:{silent.port}/hook", "timeout": 600},
            "flush_timeout": 0.5,
        },
    )
    warnings: list[str] = []

    result, _, (in_flight, flushed) = run(path, ["replicate"], None, "execute", warnings)

    # The run ended as it does without notifications (bad01 failed, web01 reached the gate) while the
    # webhook's first request still waited on a port that never answers (its timeout is 600 s).
    assert result.status == "failed" and all(step.startswith("bad01/") for step in result.failed)
    assert "web01/remap_nics" in result.done
    assert in_flight >= 1
    assert flushed.undelivered >= 1 and flushed.failed >= 1
    assert any("cannot reach the SMTP relay" in w and "Connection refused" in w for w in warnings)
    assert any("not sent within 0.5s; given up" in w for w in warnings)
    assert b"POST /hook" in silent.pending_request()


def test_a_warm_migration_that_stops_converging_is_posted_once_it_does(tmp_path: Path, hook: Hook) -> None:
    path = write_playbook(tmp_path, {"webhook": {"url": hook.url, "events": ["not_converging"]}}, warm=True)
    data = tmp_path / "images" / "web01-data.raw"
    warnings: list[str] = []
    result, _, _ = run(path, ["replicate"], None, "execute", warnings)
    assert result.status == "done", result.failed

    def sync_again(journal: Journal) -> None:  # what `migrate sync` does before it runs
        journal.reset(["web01/sync"])

    told = []
    for seed, size in ((2, 10 * MiB), (3, 14 * MiB)):  # the source writes more between passes, not less
        with data.open("r+b") as disk:
            disk.write(random.Random(seed).randbytes(size))
        result, _, _ = run(path, ["replicate"], ["web01"], "sync", warnings, prepare=sync_again)
        assert result.status == "done" and "web01/sync" in result.done
        told.append([p["event"] for p in hook.payloads()])

    # Passes of ~0, 10 and 14 MiB: the third incremental pass that did not shrink is the one that warns.
    assert told == [[], ["not_converging"]]
    (notice,) = hook.payloads()
    assert (notice["server"], notice["step"], notice["severity"]) == ("web01", "web01/sync", "warning")
    assert notice["subject"] == "[hvmigrate] wave-1 web01 WARNING not_converging: web01/sync"
    assert "NOT_CONVERGING: incremental passes stopped shrinking" in notice["message"]
    assert warnings == []
