"""Notifications through the real `migrate` command: a webhook hears the events of a quickstart run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.e2e.conftest import Migration

PB = "quickstart.yaml"


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({**json.loads(body), "authorization": self.headers.get("Authorization")})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


def test_execute_and_cutover_post_their_events_and_a_changed_hook_is_no_plan_change(
    migration: Migration, webhook: tuple[str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    m = migration
    url, received = webhook
    m.edit(
        "\nservers:",
        f'\nnotifications:\n  webhook: {{url: "{url}", headers: {{Authorization: "${{env:HOOK_TOKEN}}"}}}}\n'
        "\nservers:",
    )
    monkeypatch.setenv("HOOK_TOKEN", "Bearer s3cr3t-token")  # `migrate` reads it from its environment
    m.run("execute", PB)
    ready = sorted(r["server"] for r in received if r["event"] == "ready_for_cutover")
    assert ready == ["app01", "db01", "web01"]
    assert all(r["plan"] == "quickstart" and r["authorization"] == "Bearer s3cr3t-token" for r in received)

    m.edit(f'url: "{url}"', f'url: "{url}?changed=1"')  # where notices go is not the plan: no --replan
    m.run("cutover", PB, "db01")
    done = [r for r in received if r["event"] == "cutover_done"]
    assert [r["server"] for r in done] == ["db01"] and done[0]["severity"] == "info"
    journal = (m.state / "journal.sqlite").read_bytes()
    assert b"s3cr3t-token" not in journal
