"""Notices for the people who are not watching a run: e-mail (SMTP, STARTTLS, AUTH) and a JSON webhook.

A `Notifier` is one more executor `Observer`. A `Watcher` turns what the executor reports into the four
events worth waking someone for (step_failed, not_converging, ready_for_cutover, cutover_done); one
`_Courier` thread per channel delivers them. Delivery is the migration's guest, never its master: the
executor only ever puts a notice in a bounded queue (never blocks, never raises), every connection has a
timeout, a failed delivery is a warning, and at the end of a command `close()` waits at most
``flush_timeout`` and reports what it could not send. Secrets (the SMTP password, the webhook URL and its
header values) are revealed only into the connection itself; every message, warning and exception text
that leaves this module goes through `redact` first.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Protocol

from orchestrator import __version__
from orchestrator.playbook.models import (
    EmailNotifications,
    Notifications,
    Playbook,
    WebhookNotifications,
)
from orchestrator.playbook.secrets import redact
from orchestrator.steps.base import StepNode

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "[hvmigrate]"
SEVERITY = {
    "step_failed": "critical",
    "not_converging": "warning",
    "ready_for_cutover": "info",
    "cutover_done": "info",
}
# The sync step's warning starts with the convergence state's name (orchestrator.convergence); the
# unit tests hold the two together.
NOT_CONVERGING = "NOT_CONVERGING"
QUEUE_SIZE = 100  # notices waiting per channel; beyond that they are dropped (and counted), never waited for


# ---------------------------------------------------------------- what is told


@dataclass(frozen=True)
class Notice:
    """One event worth telling; everything in it is already free of secrets."""

    event: str
    plan: str
    server: str | None  # None for a node shared by several servers (an appliance)
    severity: str
    step: str | None
    message: str
    next_step: str
    time: datetime

    @property
    def subject(self) -> str:
        """``[hvmigrate] wave-1 db01 CRITICAL step_failed: db01/final_sync`` - sortable, greppable."""
        what = self.step or self.server or self.plan
        server = self.server or "shared"
        text = f"{SUBJECT_PREFIX} {self.plan} {server} {self.severity.upper()} {self.event}: {what}"
        return " ".join(text.split())  # a header holds no line break, whatever a name held

    def body(self) -> str:
        lines = [
            f"hvmigrate {self.event} ({self.severity})",
            "",
            f"Plan:      {self.plan}",
            f"Server:    {self.server or 'shared (several servers)'}",
            f"Step:      {self.step or '-'}",
            f"Time:      {self.time.isoformat(sep=' ', timespec='seconds')}",
            f"Severity:  {self.severity}",
            "",
            "What happened:",
            *(f"  {line}" for line in self.message.splitlines() or [""]),
            "",
            "What to do next:",
            *(f"  {line}" for line in self.next_step.splitlines() or [""]),
            "",
            f"-- hvmigrate {__version__}",
        ]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": "hvmigrate",
            "event": self.event,
            "plan": self.plan,
            "server": self.server,
            "severity": self.severity,
            "step": self.step,
            "message": self.message,
            "next": self.next_step,
            "time": self.time.isoformat(timespec="seconds"),
            "subject": self.subject,
            "text": f"{self.subject}\n{self.message}",  # what Slack / Mattermost incoming webhooks show
        }


class Watcher:
    """Decides which of a run's happenings are events, once each; thread-safe (workers report events).

    - step_failed: a step finished "failed" (cleanup nodes too: what they left is for `migrate undo`).
    - not_converging: a sync pass warned NOT_CONVERGING; once per server per command, because a warm
      migration that syncs every hour would otherwise mail every hour.
    - ready_for_cutover: a server's remap_nics finished while its cutover gate has not been passed.
    - cutover_done: a server's last cutover step finished (after DNS and the post script, if any).
    """

    def __init__(
        self,
        playbook: Playbook,
        last_cutover_steps: Mapping[str, str],
        *,
        gate_passed: Callable[[str], bool] | None = None,
        playbook_file: str | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.playbook = playbook
        self.last_cutover_steps = dict(last_cutover_steps)
        self._last_of = {step: server for server, step in self.last_cutover_steps.items()}
        self._gate_passed = gate_passed or (lambda _server: False)
        self._file = playbook_file or "PLAYBOOK"
        self._now = now or (lambda: datetime.now().astimezone())
        self._told: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def _once(self, event: str, key: str) -> bool:
        with self._lock:
            if (event, key) in self._told:
                return False
            self._told.add((event, key))
            return True

    def _notice(self, event: str, node: StepNode, message: str, next_step: str) -> Notice:
        return Notice(
            event=event,
            plan=self.playbook.name,
            server=node.server,
            severity=SEVERITY[event],
            step=node.id,
            message=redact(message),
            next_step=redact(next_step),
            time=self._now(),
        )

    def step_finished(self, node: StepNode, state: str, error: str | None) -> list[Notice]:
        if state == "failed" and self._once("step_failed", node.id):
            return [
                self._notice(
                    "step_failed",
                    node,
                    f"{node.id} failed: {error or 'no reason given'}",
                    self._after_failure(node),
                )
            ]
        if state != "done" or node.server is None:
            return []
        server = node.server
        if node.kind == "remap_nics" and not self._gate_passed(server) and self._once("ready", server):
            return [self._ready(node)]
        if self._last_of.get(node.id) == server and self._once("cutover_done", server):
            return [self._cutover_done(node)]
        return []

    def event(self, node: StepNode | None, level: str, message: str) -> list[Notice]:
        if (
            node is None
            or node.server is None
            or level != "warning"
            or not message.startswith(NOT_CONVERGING)
            or node.kind == "final_sync"  # at cutover the trend no longer matters: the source is quiet
            or not self._once("not_converging", node.server)
        ):
            return []
        return [
            self._notice(
                "not_converging",
                node,
                f"{node.server}: {message}",
                "waiting longer will not shrink the final sync: cut over in a quiet window, raise the "
                f"bandwidth limit or quiesce the busy service. `migrate status {self._file}` shows the lag.",
            )
        ]

    def _after_failure(self, node: StepNode) -> str:
        where = f"`migrate status {self._file}` shows every step and the full error"
        if node.kind == "cleanup_on_error":
            return (
                f"the cleanup after a failure did not finish: `migrate undo {self._file} {node.server}` "
                f"removes what is left; {where}"
            )
        if node.server is None:
            return (
                f"fix the cause, then run the same migrate command again; the servers waiting on this "
                f"step go on from there. {where}"
            )
        if node.phase == "cutover":
            return (
                f"the cutover of {node.server} stopped at {node.kind}: check the source first (whether it "
                f"still runs) and {where}. Fix the cause and run `migrate cutover {self._file} "
                f"{node.server}` again (finished steps are kept), or `migrate undo {self._file} "
                f"{node.server}` to remove the replica."
            )
        return (
            f"fix the cause, then run the same migrate command again: finished steps are kept and a mirror "
            f"resumes where it stopped. {where}"
        )

    def _ready(self, node: StepNode) -> Notice:
        server = self.playbook.server(node.server or "")
        target = f"{server.vm_name} on {server.target.provider}"
        if self.playbook.cutover_for(server).mode == "auto":
            message = (
                f"{server.name} is mirrored, in sync and staged as {target}; cutover.mode is auto, so its "
                "cutover starts as soon as the servers it depends on (and earlier waves) allow"
            )
            next_step = "nothing: a cutover_done or step_failed notice follows"
        else:
            message = (
                f"{server.name} is mirrored, in sync and staged as {target}; it waits at the cutover gate"
            )
            next_step = (
                f"cut over in your window: `migrate cutover {self._file} {server.name}` (final sync, switch, "
                f"DNS). `migrate cutover --test {self._file} {server.name}` boots an isolated copy first; "
                f"`migrate sync {self._file} {server.name}` keeps the replica fresh meanwhile."
            )
        return self._notice("ready_for_cutover", node, message, next_step)

    def _cutover_done(self, node: StepNode) -> Notice:
        server = self.playbook.server(node.server or "")
        moved = " and its DNS records were moved" if server.dns_records else ""
        source = " The source was shut down." if self.playbook.cutover_for(server).shutdown_source else ""
        return self._notice(
            "cutover_done",
            node,
            f"{server.name} now runs as {server.vm_name} on {server.target.provider}: the replica answered"
            f"{moved}; every cutover step is done (last: {node.id}).{source}",
            f"check the application on the replica; `migrate report {self._file}` has the measured "
            "downtime. hvmigrate never deletes the source: retire it when you are satisfied.",
        )


# ---------------------------------------------------------------- how it is sent


class DeliveryError(Exception):
    """Notices could not be sent; the message is one line, free of secrets, and says what to check.

    ``sent`` counts the notices of the batch that did go out before it stopped.
    """

    def __init__(self, message: str, *, sent: int = 0) -> None:
        super().__init__(message)
        self.sent = sent


class Channel(Protocol):
    name: str  # "e-mail via smtp.corp.test:587", for warnings
    events: frozenset[str]

    def send(self, notices: list[Notice]) -> None: ...


def _tls_context(ca_bundle: Path | None, insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_bundle.expanduser()) if ca_bundle else None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _why(exc: BaseException | str) -> str:
    """The reason of a network failure in a few words (socket errors carry strerror, others a message)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class EmailChannel:
    """One SMTP session per batch of notices: connect, STARTTLS, AUTH, one message each, QUIT."""

    def __init__(self, config: EmailNotifications, events: Iterable[str]) -> None:
        self.config = config
        self.events = frozenset(events)
        self.name = f"e-mail via {config.server}:{config.port}"

    def message(self, notice: Notice) -> EmailMessage:
        config = self.config
        mail = EmailMessage()
        mail["From"] = config.sender
        mail["To"] = ", ".join(config.to)
        mail["Subject"] = notice.subject
        mail["Date"] = formatdate(localtime=True)
        mail["Message-ID"] = make_msgid("hvmigrate", domain=config.sender.rpartition("@")[2])
        mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
        mail["X-Hvmigrate-Event"] = notice.event
        mail["X-Hvmigrate-Severity"] = notice.severity
        mail["X-Hvmigrate-Plan"] = notice.plan
        if notice.server:
            mail["X-Hvmigrate-Server"] = notice.server
        mail.set_content(notice.body())
        return mail

    def send(self, notices: list[Notice]) -> None:
        config = self.config
        where = f"the SMTP relay {config.server}:{config.port}"
        sent = 0
        refused: set[str] = set()
        try:
            with smtplib.SMTP(
                config.server,
                config.port,
                local_hostname=socket.gethostname() or "hvmigrate",
                timeout=config.timeout,
            ) as smtp:
                smtp.ehlo()
                if config.starttls:
                    if not smtp.has_extn("starttls"):
                        raise DeliveryError(
                            f"{where} does not offer STARTTLS; nothing was sent. Use its submission port "
                            "(587) or, for a relay on a trusted network only, starttls: false"
                        )
                    smtp.starttls(context=_tls_context(config.ca_bundle, config.insecure))
                    smtp.ehlo()
                if config.user is not None and config.password is not None:
                    smtp.login(config.user, config.password.reveal())
                for notice in notices:
                    refused.update(smtp.send_message(self.message(notice)))
                    sent += 1
        except DeliveryError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"{where} refused the login of {config.user!r} ({_smtp_reply(exc)}): check "
                "notifications.email.user and password",
                sent=sent,
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"{where}: {exc}", sent=sent) from None
        except smtplib.SMTPRecipientsRefused as exc:
            everyone = ", ".join(sorted(exc.recipients))
            raise DeliveryError(
                f"{where} refused every recipient ({everyone}): check notifications.email.to", sent=sent
            ) from None
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 530:  # "must issue STARTTLS first" or "authentication required"
                raise DeliveryError(
                    f"{where} wants TLS or a login before it takes mail ({_smtp_reply(exc)}): set "
                    "notifications.email.starttls: true and user/password",
                    sent=sent,
                ) from None
            if isinstance(exc, smtplib.SMTPSenderRefused):
                raise DeliveryError(
                    f"{where} refused the sender {config.sender} ({_smtp_reply(exc)}): check "
                    "notifications.email.sender",
                    sent=sent,
                ) from None
            raise DeliveryError(f"{where} answered {_smtp_reply(exc)}", sent=sent) from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(
                f"{where}: {_why(exc)}; set notifications.email.ca_bundle to the CA that signed it", sent=sent
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"cannot reach {where}: {_why(exc)}", sent=sent) from None
        if refused:
            raise DeliveryError(
                f"{where} refused the recipient(s) {', '.join(sorted(refused))}; the others got it: check "
                "notifications.email.to",
                sent=sent,
            )


def _smtp_reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
    return f"{exc.smtp_code} {' '.join(str(text).split())}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the secret headers to wherever it points: treat it as an answer instead."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


class WebhookChannel:
    """One JSON POST per notice; any 2xx answer is a delivery, anything else a failure."""

    def __init__(self, config: WebhookNotifications, events: Iterable[str]) -> None:
        self.config = config
        self.events = frozenset(events)
        parts = urllib.parse.urlsplit(config.url.reveal())
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        # The host is no secret; a token lives in the path or query, which are never named.
        self.name = f"webhook to {parts.scheme.lower()}://{parts.hostname}:{port}"
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if parts.scheme.lower() == "https":
            handlers.append(
                urllib.request.HTTPSHandler(context=_tls_context(config.ca_bundle, config.insecure))
            )
        self._opener = urllib.request.build_opener(*handlers)

    def request(self, notice: Notice) -> urllib.request.Request:
        headers = {name: value.reveal() for name, value in self.config.headers.items()}
        headers.update({"Content-Type": "application/json", "User-Agent": f"hvmigrate/{__version__}"})
        body = json.dumps(notice.to_json()).encode()
        return urllib.request.Request(self.config.url.reveal(), data=body, headers=headers, method="POST")

    def send(self, notices: list[Notice]) -> None:
        for sent, notice in enumerate(notices):
            try:
                with self._opener.open(self.request(notice), timeout=self.config.timeout) as answer:
                    answer.read(64 * 1024)
            except urllib.error.HTTPError as exc:
                exc.close()
                moved = " (redirects are not followed: give the final URL)" if 300 <= exc.code < 400 else ""
                raise DeliveryError(
                    f"the {self.name} answered HTTP {exc.code} {exc.reason}{moved}", sent=sent
                ) from None
            except urllib.error.URLError as exc:
                raise DeliveryError(f"cannot reach the {self.name}: {_why(exc.reason)}", sent=sent) from None
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise DeliveryError(f"cannot reach the {self.name}: {_why(exc)}", sent=sent) from None


# ---------------------------------------------------------------- delivery in the background


_STOP = object()


class _Courier:
    """A channel's own thread and bounded queue: a dead mail relay never delays the webhook, nor the run."""

    def __init__(self, channel: Channel, warn: Callable[[str], None]) -> None:
        self.channel = channel
        self._warn = warn
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_SIZE)
        self._lock = threading.Lock()
        self.offered = self.delivered = self.failed = self.dropped = 0
        self.repeated = 0  # failures not warned about again: same reason as one already told
        self._reasons: set[str] = set()
        self._thread = threading.Thread(
            target=self._run, name=f"notify-{channel.name.split()[0]}", daemon=True
        )
        self._thread.start()

    def offer(self, notice: Notice) -> None:
        with self._lock:  # counted first: the thread may deliver it before put_nowait returns
            self.offered += 1
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            with self._lock:
                self.offered -= 1
                self.dropped += 1
                first = self.dropped == 1
            if first:
                self._warn(
                    f"notifications: more than {QUEUE_SIZE} notices wait for the {self.channel.name}; "
                    "further ones are dropped (counted at the end)"
                )

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[Notice] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._deliver(batch)

    def _deliver(self, batch: list[Notice]) -> None:
        try:
            self.channel.send(batch)
        except Exception as exc:  # whatever it is, it must not reach the executor
            if isinstance(exc, DeliveryError):
                reason, sent = str(exc), min(max(exc.sent, 0), len(batch))
            else:
                reason, sent = f"internal error: {type(exc).__name__}", 0
            with self._lock:
                self.delivered += sent
                self.failed += len(batch) - sent
                told = reason in self._reasons  # a relay down for a whole wave is one line, not hundreds
                self._reasons.add(reason)
                if told:
                    self.repeated += len(batch)
            if told:
                return
            unsent = batch[sent:] or batch  # all went out, but not to everyone: name them all
            events = ", ".join(f"{n.event} {n.server or n.step}" for n in unsent[:3])
            more = f" and {len(unsent) - 3} more" if len(unsent) > 3 else ""
            verb = "not sent" if batch[sent:] else "sent with a problem"
            self._warn(redact(f"notifications: {events}{more} {verb}: {reason}"))
            return
        with self._lock:
            self.delivered += len(batch)

    def stop(self, deadline: float) -> None:
        try:
            self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            return
        self._thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def undelivered(self) -> int:
        with self._lock:
            return self.offered - self.delivered - self.failed


@dataclass(frozen=True)
class Flushed:
    """What became of the notices of one command (per channel, summed)."""

    delivered: int
    failed: int
    undelivered: int  # still queued or being sent when the flush deadline passed
    dropped: int  # the queue was full


class Notifier:
    """An executor `Observer` that notifies; every method returns at once and never raises."""

    def __init__(
        self,
        watcher: Watcher,
        channels: Iterable[Channel],
        *,
        flush_timeout: float = 10.0,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.watcher = watcher
        self.flush_timeout = flush_timeout
        self.warnings: list[str] = []
        self._warn_to = warn or (lambda text: log.warning("%s", text))
        self._warn_lock = threading.Lock()
        self._couriers = [_Courier(channel, self._warn) for channel in channels]
        self._closed = False

    def _warn(self, text: str) -> None:
        text = redact(text)
        with self._warn_lock:
            self.warnings.append(text)
        try:
            self._warn_to(text)
        except Exception:  # a broken warning sink must not break the run either
            log.warning("%s", text)

    def _tell(self, notices: list[Notice]) -> None:
        if self._closed:
            return
        for notice in notices:
            for courier in self._couriers:
                if notice.event in courier.channel.events:
                    courier.offer(notice)

    # -------------------------------------------------------- Observer

    def step_started(self, node: StepNode) -> None:
        pass

    def step_finished(self, node: StepNode, state: str, error: str | None) -> None:
        try:
            self._tell(self.watcher.step_finished(node, state, error))
        except Exception as exc:
            self._warn(
                f"notifications: {node.id} {state} not considered: internal error {type(exc).__name__}"
            )

    def progress(self, node: StepNode, done: int, total: int, label: str, part: str = "") -> None:
        pass

    def event(self, node: StepNode | None, level: str, message: str) -> None:
        try:
            self._tell(self.watcher.event(node, level, message))
        except Exception as exc:
            self._warn(f"notifications: an event was not considered: internal error {type(exc).__name__}")

    # -------------------------------------------------------- the end of a command

    def close(self, timeout: float | None = None) -> Flushed:
        """Wait at most ``timeout`` (default flush_timeout) for what is queued; report what is left."""
        self._closed = True
        deadline = time.monotonic() + (self.flush_timeout if timeout is None else timeout)
        for courier in self._couriers:
            courier.stop(deadline)
        for courier in self._couriers:
            if courier.undelivered:
                self._warn(
                    f"notifications: {courier.undelivered} notice(s) for the {courier.channel.name} not "
                    f"sent within {self.flush_timeout if timeout is None else timeout:g}s; given up"
                )
            if courier.repeated:
                self._warn(
                    f"notifications: {courier.repeated} more notice(s) for the {courier.channel.name} not "
                    "sent, for a reason already given above"
                )
            if courier.dropped:
                self._warn(
                    f"notifications: {courier.dropped} notice(s) for the {courier.channel.name} dropped: "
                    f"more than {QUEUE_SIZE} were waiting"
                )
        return Flushed(
            delivered=sum(c.delivered for c in self._couriers),
            failed=sum(c.failed for c in self._couriers),
            undelivered=sum(c.undelivered for c in self._couriers),
            dropped=sum(c.dropped for c in self._couriers),
        )


class TeeObserver:
    """Several observers heard as one (the terminal's and the notifier); None entries are left out, so an
    optional observer needs no ``if`` at the call site."""

    def __init__(self, *observers: Any) -> None:
        self.observers = tuple(o for o in observers if o is not None)

    def step_started(self, node: StepNode) -> None:
        for observer in self.observers:
            observer.step_started(node)

    def step_finished(self, node: StepNode, state: str, error: str | None) -> None:
        for observer in self.observers:
            observer.step_finished(node, state, error)

    def progress(self, node: StepNode, done: int, total: int, label: str, part: str = "") -> None:
        for observer in self.observers:
            observer.progress(node, done, total, label, part)

    def event(self, node: StepNode | None, level: str, message: str) -> None:
        for observer in self.observers:
            observer.event(node, level, message)


# ---------------------------------------------------------------- from the playbook


def last_cutover_steps(plan: Any) -> dict[str, str]:
    """Each server's last step of its cutover chain (post script, DNS update or replica check)."""
    from orchestrator.planner import CUTOVER_CHAIN

    order = {kind: index for index, kind in enumerate(CUTOVER_CHAIN)}
    last: dict[str, StepNode] = {}
    for node in plan.steps():
        if node.server is None or node.phase != "cutover" or node.kind not in order:
            continue
        best = last.get(node.server)
        if best is None or order[node.kind] > order[best.kind]:
            last[node.server] = node
    return {server: node.id for server, node in last.items()}


def channels_for(notifications: Notifications) -> list[Channel]:
    channels: list[Channel] = []
    if notifications.email is not None:
        channels.append(EmailChannel(notifications.email, notifications.email.events or notifications.events))
    if notifications.webhook is not None:
        channels.append(
            WebhookChannel(notifications.webhook, notifications.webhook.events or notifications.events)
        )
    return channels


def notifier_for(
    playbook: Playbook,
    *,
    plan: Any = None,
    journal: Any = None,
    playbook_file: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> Notifier | None:
    """The playbook's notifier, or None when it has no ``notifications`` section.

    ``plan`` (built from the playbook when omitted) tells which step ends each server's cutover;
    ``journal`` lets ready_for_cutover stay quiet for a server whose gate an earlier command passed.
    """
    notifications = playbook.notifications
    if notifications is None:
        return None
    if plan is None:
        from orchestrator.planner import build_plan

        plan = build_plan(playbook)
    gate_passed = None
    if journal is not None:

        def gate_passed(server: str) -> bool:
            record = journal.step(f"{server}/cutover_gate")
            return record is not None and record.state == "done"

    watcher = Watcher(
        playbook, last_cutover_steps(plan), gate_passed=gate_passed, playbook_file=playbook_file
    )
    return Notifier(
        watcher, channels_for(notifications), flush_timeout=notifications.flush_timeout, warn=warn
    )
