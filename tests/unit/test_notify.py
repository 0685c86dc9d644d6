"""Notifications, the pure parts: which happenings become events, what a notice says, the config's checks.

Delivery over real SMTP and HTTP is in tests/integration/test_notify.py.
"""

from __future__ import annotations

import json
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.convergence import Convergence
from orchestrator.notify import (
    NOT_CONVERGING,
    QUEUE_SIZE,
    DeliveryError,
    Notice,
    Notifier,
    TeeObserver,
    Watcher,
    WebhookChannel,
    last_cutover_steps,
    notifier_for,
)
from orchestrator.planner import build_plan
from orchestrator.playbook import PlaybookError, load_playbook_text
from orchestrator.playbook.models import Notifications, Playbook
from orchestrator.playbook.secrets import Secret
from orchestrator.steps.base import StepNode

WHEN = datetime(2026, 1, 5, 20, 14, 3, tzinfo=UTC)
WEBHOOK = {"url": "https://hooks.example.test/services/T0/B0/tokentokentoken"}


def playbook(notifications: dict[str, Any] | None = None, **server: Any) -> Playbook:
    servers = [
        {
            "name": "db01",
            "source": {"type": "image", "path": "/x/db01.raw"},
            "target": {"provider": "local", "vm_name": "db01-new"},
            **server,
        },
        {
            "name": "web01",
            "source": {"type": "image", "path": "/x/web01.raw"},
            "target": {"provider": "local"},
            "cutover": {"mode": "auto", "shutdown_source": False},
        },
    ]
    return Playbook.model_validate(
        {
            "apiVersion": "hvmigrate/v1",
            "kind": "MigrationPlaybook",
            "name": "wave-1",
            "providers": {"local": {"type": "sim", "root": "/nonexistent"}},
            "dns": {"corp": {"type": "zonefile", "path": "/x/corp.zone", "zone": "corp.test"}},
            "servers": servers,
            "notifications": notifications if notifications is not None else {"webhook": WEBHOOK},
        }
    )


def watcher(pb: Playbook, **kwargs: Any) -> Watcher:
    return Watcher(pb, last_cutover_steps(build_plan(pb)), now=lambda: WHEN, **kwargs)


def step(pb: Playbook, step_id: str) -> StepNode:
    return build_plan(pb).node(step_id)


# ---------------------------------------------------------------- which happenings are events


def test_a_failed_step_is_a_critical_notice_naming_plan_server_step_and_error() -> None:
    pb = playbook()
    w = watcher(pb, playbook_file="wave-1.yaml")

    (notice,) = w.step_finished(step(pb, "db01/final_sync"), "failed", "db01: source unreachable")

    assert notice.subject == "[hvmigrate] wave-1 db01 CRITICAL step_failed: db01/final_sync"
    assert (notice.event, notice.severity, notice.server, notice.step) == (
        "step_failed",
        "critical",
        "db01",
        "db01/final_sync",
    )
    assert "db01/final_sync failed: db01: source unreachable" in notice.message
    # A failure during cutover says to look at the source first, and how to go on or back.
    assert "check the source first" in notice.next_step
    assert "`migrate cutover wave-1.yaml db01`" in notice.next_step
    assert "`migrate undo wave-1.yaml db01`" in notice.next_step
    body = notice.body()
    for line in ("Plan:      wave-1", "Server:    db01", "Step:      db01/final_sync", "2026-01-05 20:14:03"):
        assert line in body
    assert w.step_finished(step(pb, "db01/final_sync"), "failed", "again") == []  # told once


def test_a_failure_while_replicating_says_a_rerun_resumes() -> None:
    pb = playbook()
    (notice,) = watcher(pb).step_finished(step(pb, "db01/mirror"), "failed", "disk full (/var/lib)")
    assert "run the same migrate command again" in notice.next_step
    assert "`migrate status PLAYBOOK`" in notice.next_step  # no file given: a placeholder, not a guess


@pytest.mark.parametrize("state", ["done", "cancelled", "pending"])
def test_steps_that_did_not_fail_are_no_failure(state: str) -> None:
    pb = playbook()
    assert watcher(pb).step_finished(step(pb, "db01/mirror"), state, None) == []


def test_a_secret_in_an_error_never_reaches_the_notice() -> None:
    secret = Secret("hunter2-the-password")  # revealed values are known to redact()
    pb = playbook()
    (notice,) = watcher(pb).step_finished(
        step(pb, "db01/discover_source"), "failed", f"login with {secret.reveal()} refused"
    )
    assert secret.reveal() not in notice.message + notice.body() + json.dumps(notice.to_json())
    assert "login with *** refused" in notice.message


def test_ready_for_cutover_when_remap_nics_is_done_and_the_gate_is_not() -> None:
    pb = playbook()
    passed: set[str] = set()
    w = watcher(pb, gate_passed=lambda server: server in passed, playbook_file="wave-1.yaml")

    (notice,) = w.step_finished(step(pb, "db01/remap_nics"), "done", None)

    assert notice.subject == "[hvmigrate] wave-1 db01 INFO ready_for_cutover: db01/remap_nics"
    assert "waits at the cutover gate" in notice.message and "db01-new on local" in notice.message
    assert "`migrate cutover wave-1.yaml db01`" in notice.next_step
    assert w.step_finished(step(pb, "db01/remap_nics"), "done", None) == []  # once per server

    passed.add("web01")  # an earlier command passed web01's gate; remap_nics ran again after a replan
    assert w.step_finished(step(pb, "web01/remap_nics"), "done", None) == []


def test_ready_for_cutover_of_an_auto_server_says_nothing_is_to_be_done() -> None:
    pb = playbook()
    (notice,) = watcher(pb).step_finished(step(pb, "web01/remap_nics"), "done", None)
    assert "cutover.mode is auto" in notice.message
    assert notice.next_step.startswith("nothing")


@pytest.mark.parametrize(
    ("server", "last"),
    [
        ({}, "db01/verify_replica"),
        ({"dns_records": [{"provider": "corp", "name": "db01"}]}, "db01/update_dns"),
        (
            {"dns_records": [{"provider": "corp", "name": "db01"}], "cutover": {"post_script": "true"}},
            "db01/run_post_script",
        ),
    ],
    ids=["replica-only", "dns", "post-script"],
)
def test_cutover_done_follows_the_last_cutover_step_of_the_plan(server: dict[str, Any], last: str) -> None:
    pb = playbook(**server)
    w = watcher(pb)
    assert last_cutover_steps(build_plan(pb))["db01"] == last
    earlier = [
        s for s in ("db01/verify_replica", "db01/update_dns") if s != last and s in build_plan(pb).graph
    ]
    for step_id in earlier:
        assert w.step_finished(step(pb, step_id), "done", None) == []

    (notice,) = w.step_finished(step(pb, last), "done", None)

    assert notice.subject == f"[hvmigrate] wave-1 db01 INFO cutover_done: {last}"
    assert "db01 now runs as db01-new on local" in notice.message
    assert ("DNS records were moved" in notice.message) == bool(server.get("dns_records"))
    assert "The source was shut down." in notice.message


def test_not_converging_comes_from_the_sync_warning_once_per_server() -> None:
    warning = Convergence(60.0, "NOT_CONVERGING", 10**9, 3600.0, 3600.0).warning
    assert warning is not None and warning.startswith(NOT_CONVERGING)  # the signal the watcher relies on
    pb = playbook()
    w = watcher(pb)
    sync = step(pb, "db01/sync")

    assert w.event(sync, "info", warning) == []  # only the warning counts
    assert w.event(sync, "warning", "retrying in 5s: timed out") == []
    (notice,) = w.event(sync, "warning", warning)
    assert notice.subject == "[hvmigrate] wave-1 db01 WARNING not_converging: db01/sync"
    assert "incremental passes stopped shrinking" in notice.message
    assert w.event(sync, "warning", warning) == []  # the next hourly pass does not mail again
    assert w.event(step(pb, "web01/final_sync"), "warning", warning) == []  # at cutover: irrelevant
    assert w.event(None, "warning", warning) == []


def test_a_shared_step_failing_names_no_server() -> None:
    node = StepNode(
        id="appliance/local/default/provision_appliance",
        kind="provision_appliance",
        server=None,
        phase="replicate",
    )
    (notice,) = watcher(playbook()).step_finished(node, "failed", "no room")
    assert notice.server is None
    assert notice.subject == (
        "[hvmigrate] wave-1 shared CRITICAL step_failed: appliance/local/default/provision_appliance"
    )
    assert notice.to_json()["server"] is None


def test_subject_holds_no_line_break() -> None:
    notice = Notice("step_failed", "p", "s", "critical", "s/x\r\nBcc: all@corp.test", "m", "n", WHEN)
    assert "\n" not in notice.subject and "\r" not in notice.subject


# ---------------------------------------------------------------- the notifier as an observer


class Recording:
    """A channel that keeps what it is given (the delivery itself is tested against real servers)."""

    def __init__(self, name: str, events: set[str], fail: Exception | None = None) -> None:
        self.name = name
        self.events = frozenset(events)
        self.sent: list[Notice] = []
        self.fail = fail
        self.called = threading.Event()

    def send(self, notices: list[Notice]) -> None:
        self.called.set()
        if self.fail:
            raise self.fail
        self.sent.extend(notices)


def test_each_channel_gets_only_its_events() -> None:
    pb = playbook()
    mail, hook = Recording("mail", {"step_failed"}), Recording("hook", {"ready_for_cutover", "step_failed"})
    notifier = Notifier(watcher(pb), [mail, hook])

    notifier.step_finished(step(pb, "db01/remap_nics"), "done", None)
    notifier.step_finished(step(pb, "db01/mirror"), "failed", "boom")
    flushed = notifier.close(timeout=30)

    assert [n.event for n in mail.sent] == ["step_failed"]
    assert sorted(n.event for n in hook.sent) == ["ready_for_cutover", "step_failed"]
    assert (flushed.delivered, flushed.failed, flushed.undelivered, flushed.dropped) == (3, 0, 0, 0)
    assert notifier.warnings == []


def test_a_channel_that_raises_anything_becomes_a_redacted_warning_not_an_error() -> None:
    secret = Secret("s3cret-header-value")
    pb = playbook()
    broken = Recording("hook", {"step_failed"}, fail=RuntimeError(f"bad {secret.reveal()}"))
    heard: list[str] = []
    notifier = Notifier(watcher(pb), [broken], warn=heard.append)

    notifier.step_finished(step(pb, "db01/mirror"), "failed", "boom")  # returns at once, raises nothing
    flushed = notifier.close(timeout=30)

    assert flushed.failed == 1
    assert heard == notifier.warnings
    assert len(heard) == 1 and "step_failed db01 not sent: internal error: RuntimeError" in heard[0]
    assert secret.reveal() not in heard[0]


def test_a_stuck_channel_never_holds_up_the_run_beyond_its_bounded_queue() -> None:
    release = threading.Event()

    class Stuck(Recording):
        def send(self, notices: list[Notice]) -> None:
            self.called.set()
            release.wait(60)  # a relay that takes its time: the observer calls must not wait for it
            self.sent.extend(notices)

    stuck = Stuck("hook", {"step_failed"})
    heard: list[str] = []
    notifier = Notifier(watcher(playbook()), [stuck], warn=heard.append)
    total = QUEUE_SIZE + 10
    try:
        for i in range(total):
            node = StepNode(id=f"db01/s{i}", kind="t", server="db01", phase="replicate")
            notifier.step_finished(node, "failed", "boom")  # each returns at once, stuck channel or not
        flushed = notifier.close(timeout=0.2)
    finally:
        release.set()

    # One batch is in the stuck send (1 notice, or more if the thread drained several), the queue holds
    # QUEUE_SIZE, and the rest were dropped rather than waited for.
    assert flushed.delivered == 0 and flushed.failed == 0
    assert flushed.undelivered + flushed.dropped == total
    assert 1 <= flushed.dropped <= total - QUEUE_SIZE
    assert any("further ones are dropped" in w for w in heard)
    assert any(f"{flushed.undelivered} notice(s) for the hook not sent within 0.2s" in w for w in heard)
    assert any(f"{flushed.dropped} notice(s) for the hook dropped" in w for w in heard)


def test_a_channel_down_for_the_whole_run_is_one_warning_and_a_count() -> None:
    entered = threading.Semaphore(0)

    class Down(Recording):
        def send(self, notices: list[Notice]) -> None:
            entered.release()
            raise DeliveryError("cannot reach the relay: Connection refused")

    heard: list[str] = []
    notifier = Notifier(watcher(playbook()), [Down("hook", {"step_failed"})], warn=heard.append)
    for i in range(3):
        notifier.step_finished(
            StepNode(id=f"db01/s{i}", kind="t", server="db01", phase="replicate"), "failed", "x"
        )
        assert entered.acquire(timeout=30)  # one batch per notice: the next is offered after this one failed
    flushed = notifier.close(timeout=30)

    assert flushed.failed == 3
    assert heard == [
        "notifications: step_failed db01 not sent: cannot reach the relay: Connection refused",
        "notifications: 2 more notice(s) for the hook not sent, for a reason already given above",
    ]


def test_after_close_nothing_more_is_queued() -> None:
    pb = playbook()
    hook = Recording("hook", {"step_failed"})
    notifier = Notifier(watcher(pb), [hook])
    notifier.close(timeout=30)
    notifier.step_finished(step(pb, "db01/mirror"), "failed", "late")
    assert hook.sent == [] and not hook.called.is_set()


def test_tee_observer_tells_every_observer_and_skips_none() -> None:
    heard: list[tuple[str, ...]] = []

    class Ear:
        def __init__(self, name: str) -> None:
            self.name = name

        def step_started(self, node: StepNode) -> None:
            heard.append((self.name, "started", node.id))

        def step_finished(self, node: StepNode, state: str, error: str | None) -> None:
            heard.append((self.name, state, node.id))

        def progress(self, node: StepNode, done: int, total: int, label: str, part: str = "") -> None:
            heard.append((self.name, "progress", f"{done}/{total}", part))

        def event(self, node: StepNode | None, level: str, message: str) -> None:
            heard.append((self.name, level, message))

    node = step(playbook(), "db01/mirror")
    tee = TeeObserver(Ear("a"), None, Ear("b"))
    tee.step_started(node)
    tee.progress(node, 1, 2, "mirror", "vda")
    tee.step_finished(node, "done", None)
    tee.event(node, "warning", "w")
    assert heard == [
        ("a", "started", "db01/mirror"),
        ("b", "started", "db01/mirror"),
        ("a", "progress", "1/2", "vda"),
        ("b", "progress", "1/2", "vda"),
        ("a", "done", "db01/mirror"),
        ("b", "done", "db01/mirror"),
        ("a", "warning", "w"),
        ("b", "warning", "w"),
    ]


# ---------------------------------------------------------------- from the playbook


def test_no_notifications_section_means_no_notifier() -> None:
    pb = playbook().model_copy(update={"notifications": None})
    assert notifier_for(pb) is None


def test_per_channel_events_override_the_common_list() -> None:
    pb = playbook(
        {
            "events": ["step_failed", "cutover_done"],
            "webhook": {**WEBHOOK, "events": ["ready_for_cutover"]},
            "email": {"server": "smtp.corp.test", "sender": "hvmigrate@corp.test", "to": ["ops@corp.test"]},
        }
    )
    notifier = notifier_for(pb)
    assert notifier is not None
    try:
        by_name = {c.channel.name: c.channel.events for c in notifier._couriers}
    finally:
        notifier.close(timeout=5)
    assert by_name == {
        "e-mail via smtp.corp.test:587": {"step_failed", "cutover_done"},
        "webhook to https://hooks.example.test:443": {"ready_for_cutover"},
    }


def test_webhook_request_is_json_and_its_secrets_stay_out_of_names_and_reprs() -> None:
    token = "Bearer tok-0123456789"
    pb = playbook({"webhook": {**WEBHOOK, "headers": {"Authorization": token}}})
    config = pb.notifications.webhook  # type: ignore[union-attr]
    channel = WebhookChannel(config, ["step_failed"])
    (notice,) = watcher(pb).step_finished(step(pb, "db01/mirror"), "failed", "boom")

    request = channel.request(notice)

    assert request.get_method() == "POST"
    assert request.get_header("Authorization") == token
    assert request.get_header("Content-type") == "application/json"
    payload = json.loads(request.data)  # type: ignore[arg-type]
    assert {k: payload[k] for k in ("event", "plan", "server", "severity", "step")} == {
        "event": "step_failed",
        "plan": "wave-1",
        "server": "db01",
        "severity": "critical",
        "step": "db01/mirror",
    }
    assert payload["time"] == "2026-01-05T20:14:03+00:00"
    shown = channel.name + repr(config) + config.model_dump_json() + repr(pb)
    assert "tokentokentoken" not in shown and token not in shown


# ---------------------------------------------------------------- the playbook section


HEADER = """\
apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: wave-1
providers:
  local: {type: sim}
servers:
  - {name: db01, source: {type: image, path: db01.raw}, target: {provider: local}}
notifications:
"""


def load(section: str, tmp_path: Path) -> Notifications:
    loaded = load_playbook_text(
        HEADER + textwrap.indent(textwrap.dedent(section), "  "), tmp_path / "pb.yaml"
    )
    assert loaded.playbook.notifications is not None
    return loaded.playbook.notifications


def test_a_full_section_loads_with_secret_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "smtp-pass-from-env")
    (tmp_path / "hook-url").write_text("https://hooks.example.test/x/y/z\n")
    section = load(
        """\
        email:
          server: smtp.corp.test
          user: hvmigrate
          password: ${env:SMTP_PASSWORD}
          sender: hvmigrate@corp.test
          to: [ops@corp.test, dba@corp.test]
          ca_bundle: corp-ca.pem
        webhook:
          url: ${file:hook-url}
          headers: {Authorization: "Bearer x"}
          timeout: 5s
        events: [step_failed, cutover_done]
        flush_timeout: 1m
        """,
        tmp_path,
    )
    assert section.email is not None and section.webhook is not None
    assert section.email.port == 587 and section.email.starttls is True
    assert section.email.password is not None and section.email.password.reveal() == "smtp-pass-from-env"
    assert section.email.ca_bundle == tmp_path / "corp-ca.pem"  # beside the playbook
    assert section.webhook.url.reveal() == "https://hooks.example.test/x/y/z"
    assert section.webhook.timeout == 5.0 and section.flush_timeout == 60.0
    assert section.events == ["step_failed", "cutover_done"]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("webhook: {url: 'ftp://h/x'}\n", "expected an http:// or https:// URL with a host"),
        ("webhook: {url: 'https://h/x', headers: {'Bad Name': v}}\n", "is not a valid HTTP header name"),
        ("webhook: {url: 'https://h/x', headers: {Host: v}}\n", "is set by hvmigrate itself"),
        ("webhook: {url: 'https://h/x'}\nevents: [step_done]\n", "step_failed"),
        ("events: [step_failed]\n", "notifications needs email or webhook"),
        (
            "email: {server: s, sender: 'Ops <ops@corp.test>', to: [a@b.c]}\n",
            "expected a bare e-mail address",
        ),
        ("email: {server: s, sender: a@b.c, to: []}\n", "at least 1"),
        ("email: {server: s, sender: a@b.c, to: [a@b.c], user: u}\n", "give both user and password"),
        (
            "email: {server: s, sender: a@b.c, to: [a@b.c], user: u, password: pw-in-clear, starttls: no}\n",
            "a password is only sent over TLS",
        ),
    ],
    ids=[
        "scheme",
        "header-name",
        "header-reserved",
        "event",
        "no-channel",
        "display-name",
        "no-rcpt",
        "user-only",
        "password-in-clear-text",
    ],
)
def test_mistakes_are_named_with_their_place(section: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(PlaybookError) as caught:
        load(section, tmp_path)
    text = str(caught.value)
    assert expected in text
    assert "pb.yaml:" in text  # file:line:col
    assert "pw-in-clear" not in text


def test_a_secret_header_value_with_a_line_break_is_refused_without_showing_it(tmp_path: Path) -> None:
    with pytest.raises(PlaybookError) as caught:
        load('webhook: {url: "https://h/x", headers: {X-Token: "abc\\r\\nEvil: 1"}}\n', tmp_path)
    assert "the value of header X-Token holds a line break" in str(caught.value)
    assert "Evil" not in str(caught.value)
