"""Known secrets through every output path of `migrate`, then the audit reads everything that was written.

The secrets reach the tool the two ways a playbook allows: ``${env:}`` (the TSIG key, the SMTP password,
the webhook URL with its token) and ``${file:}`` (the webhook's Authorization header). Each is shown to
have been used for real (BIND accepted the key and moved the records; the webhook got the header; the
mail relay was tried), so a clean scan means they were kept out of the outputs, not that they never
arrived.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_dns_cutover import records
from tests.faults.conftest import PB, FaultMigration
from tests.faults.secrets_audit import SecretsAudit, fingerprint
from tests.services.bind import BindServer
from tests.services.bind_zones import bind_zones  # noqa: F401 - the fixture

HOOK_TOKEN = "hook-url-token-7f3a9c1e52"
HEADER_TOKEN = "Bearer header-token-b41d08e6"
SMTP_PASSWORD = "smtp-password-9e2c7a4f"


def test_the_audit_finds_a_secret_in_a_file_a_journal_column_and_a_compressed_plan(tmp_path: Path) -> None:
    audit = SecretsAudit()
    secret = audit.register("tsig-c2VjcmV0LXZhbHVl", holders=[tmp_path / "given"])
    (tmp_path / "given").mkdir()
    (tmp_path / "given" / "named.conf").write_text(f'secret "{secret}";')  # a holder: allowed
    (tmp_path / "tsig.secret").write_text(secret)  # what ${file:} reads: allowed
    (tmp_path / "report.html").write_text(f"<td>{secret}</td>")
    (tmp_path / "clean.md").write_text("secret: ***")
    journal = tmp_path / "journal.sqlite"
    db = sqlite3.connect(journal)
    db.execute("CREATE TABLE events (message TEXT)")
    db.execute("CREATE TABLE plans (body BLOB)")
    db.execute("INSERT INTO plans VALUES (?)", (zlib.compress(json.dumps({"tsig": secret}).encode()),))
    db.execute("INSERT INTO events VALUES ('tsig ***')")
    db.commit()
    db.close()
    found = sorted(str(leak).replace(str(tmp_path), "") for leak in audit.scan([tmp_path]))
    assert found == [
        f"/journal.sqlite: table plans, column body holds {fingerprint(secret)}",
        f"/report.html: file bytes holds {fingerprint(secret)}",
    ]
    assert secret not in "".join(found)


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[tuple[int, list[str]]]:
    """A local receiver; it keeps each request's body in a file (scanned too) and each header it got."""
    headers: list[str] = []
    bodies = tmp_path / "webhook-bodies.jsonl"

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with bodies.open("ab") as out:
                out.write(body + b"\n")
            headers.append(f"{self.path} {self.headers.get('Authorization')}")
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port, headers
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_no_secret_reaches_plan_journal_logs_reports_status_or_notices(
    small: FaultMigration,
    bind_zones: BindServer,  # noqa: F811 - fixture
    webhook: tuple[int, list[str]],
    secrets_audit: SecretsAudit,
) -> None:
    m = small
    port, headers = webhook
    (m.root / "hook.secret").write_text(HEADER_TOKEN)
    for secret in (HOOK_TOKEN, HEADER_TOKEN, SMTP_PASSWORD, bind_zones.secret):
        secrets_audit.register(secret, holders=[m.root / "hook.secret"])
    m.extra_env = {
        "HVM_AUDIT_TSIG": bind_zones.secret,
        "HVM_AUDIT_HOOK": f"http://127.0.0.1:{port}/hook/{HOOK_TOKEN}",
        "HVM_AUDIT_SMTP": SMTP_PASSWORD,
    }
    playbook = yaml.safe_load(m.playbook.read_text())
    playbook["dns"]["corp"] = {
        "type": "rfc2136",
        "server": bind_zones.host,
        "port": bind_zones.port,
        "zone": "corp.test",
        "reverse_zones": ["10.in-addr.arpa"],
        "tsig": {"name": "migkey", "secret": "${env:HVM_AUDIT_TSIG}"},
    }
    playbook["notifications"] = {
        "webhook": {"url": "${env:HVM_AUDIT_HOOK}", "headers": {"Authorization": "${file:./hook.secret}"}},
        "email": {
            "server": "127.0.0.1",
            "port": closed_port(),  # refused: the notices are reported undelivered, with the reason
            "user": "hvmigrate",
            "password": "${env:HVM_AUDIT_SMTP}",
            "sender": "hvmigrate@corp.test",
            "to": ["ops@corp.test"],
            "timeout": "2s",
        },
        "flush_timeout": "3s",
    }
    playbook["defaults"]["cutover"]["post_script"] = 'echo "post for $HVM_SERVER"'
    m.playbook.write_text(yaml.safe_dump(playbook, sort_keys=False))

    def logged(name: str, *args: str, check: int | None = 0) -> str:
        output = m.run_here(*args, check=check).output
        (m.root / f"{name}.log").write_text(output)
        return output

    logged("validate", "validate", PB, check=None)
    logged("plan", "plan", PB, "-o", str(m.root / "plan.json"))
    logged("plan-json", "plan", PB, "--format", "json")
    logged("dry-run", "execute", PB, "--dry-run", "--report", str(m.root / "dry-run.html"))
    logged("execute", "execute", PB, "--report", str(m.root / "execute.json"))
    logged("cutover", "cutover", PB)
    assert records(bind_zones)["db01 A"] == [("10.1.0.12", 60)]  # the TSIG key was used, and accepted
    logged("status", "status", PB, "--json")
    for fmt in ("html", "json", "md"):
        logged(f"report-{fmt}", "report", PB, "--format", fmt, "-o", str(m.root / f"report.{fmt}"))
    undo = logged("undo", "undo", PB, "--yes")
    assert "db01/update_dns" in undo

    assert headers and all(h == f"/hook/{HOOK_TOKEN} {HEADER_TOKEN}" for h in headers)  # both were used
    everything = "".join(p.read_text(errors="replace") for p in m.root.glob("*.log"))
    assert "not sent: cannot reach the SMTP relay" in everything, everything[-2000:]  # the password's path
    written = {p.name for p in m.root.rglob("*") if p.is_file()}
    assert {
        "plan.json",
        "dry-run.html",
        "report.html",
        "report.json",
        "report.md",
        "journal.sqlite",
    } <= written
    leaks = secrets_audit.scan([m.root])
    assert not leaks, "\n".join(map(str, leaks))
