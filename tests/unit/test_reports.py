"""Reports: the model round-trips, and every renderer copes with real, huge, empty and hostile reports."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.playbook.secrets import Secret
from orchestrator.report import (
    SCHEMA,
    FindingView,
    RunReport,
    ServerSummary,
    StepTiming,
    from_json,
    redacted,
    render_gantt_text,
    render_report,
    to_html,
    to_json,
    to_markdown,
    write_report,
)
from orchestrator.report.html import STEP_LANES_MAX_SERVERS, nice_tick_step, tick_label

GiB = 1024**3
MiB = 1024**2

REPLICATE = [
    ("validate", 2),
    ("discover_source", 14),
    ("create_disks", 9),
    ("attach_disks", 7),
    ("mirror", None),
    ("sync", 95),
    ("stage_system_state", 41),
    ("remap_nics", 6),
]
CUTOVER = [
    ("run_pre_script", 11),
    ("quiesce_source", 28),
    ("final_sync", 64),
    ("detach_disks", 5),
    ("create_replica", 12),
    ("power_on_replica", 9),
    ("verify_replica", 46),
    ("update_dns", 4),
    ("run_post_script", 8),
    ("release_appliance", 6),
]


def sample_report() -> RunReport:
    """Three servers on three hypervisors; web01 cuts over after db01; app01 fails verifying its replica."""
    servers = [
        # name, source, target, appliance node, used bytes, mirror rate, cuts over after
        ("db01", "ssh root@10.0.0.6", "lab-kvm / db01", "appliance/lab-kvm/h1", 120 * GiB, 180 * MiB, None),
        (
            "web01",
            "image ./web01.raw",
            "vcenter / web01",
            "appliance/vcenter/esx01",
            40 * GiB,
            95 * MiB,
            "db01",
        ),
        ("app01", "winrm app01.corp.test", "hv01 / app01", "appliance/hv01/hv01", 75 * GiB, 120 * MiB, None),
    ]
    steps: list[StepTiming] = []
    summaries: list[ServerSummary] = []
    verified_at: dict[str, float] = {}
    for offset, (name, source, target, appliance, used, rate, after) in enumerate(servers):
        t = offset * 20.0
        steps.append(
            StepTiming(
                f"{appliance}/provision_appliance",
                None,
                "provision_appliance",
                "replicate",
                "done",
                t,
                t + 95.0,
            )
        )
        t += 95.0
        own: list[StepTiming] = []
        for kind, seconds in REPLICATE:
            length = used / rate if seconds is None else float(seconds)
            moved = used if kind == "mirror" else (3 * GiB if kind == "sync" else 0)
            own.append(
                StepTiming(f"{name}/{kind}", name, kind, "replicate", "done", t, t + length, bytes=moved)
            )
            t += length
        if after:
            t = max(t, verified_at[after])
        churn = {"db01": 1.0, "web01": 0.4, "app01": 1.6}[name]  # how busy the source is at cutover
        for kind, seconds in CUTOVER:
            length = seconds * churn if kind in ("quiesce_source", "final_sync") else seconds
            moved = int(900 * MiB * churn) if kind == "final_sync" else 0
            own.append(
                StepTiming(f"{name}/{kind}", name, kind, "cutover", "done", t, t + length, bytes=moved)
            )
            t += length
            if kind == "verify_replica":
                verified_at[name] = t
        summaries.append(ServerSummary(name, source, target, "done", len(own), len(own), used * 2, 0))
        steps.extend(own)

    app01 = {s.step_id: s for s in steps if s.server == "app01"}
    verify = app01["app01/verify_replica"]
    verify.state, verify.attempts, verify.end = "failed", 3, verify.start + 300.0
    verify.message = "replica app01 did not answer WinRM on 10.1.0.8:5986 within 5m; check the NIC mapping"
    for kind in ("update_dns", "run_post_script", "release_appliance"):
        step = app01[f"app01/{kind}"]
        step.state, step.start, step.end = "skipped", None, None
    for kind in ("create_replica", "power_on_replica"):
        app01[f"app01/{kind}"].state = "undone"
    steps.append(
        StepTiming("app01/cleanup", "app01", "cleanup", "cleanup", "done", verify.end, verify.end + 21)
    )

    critical = ["appliance/lab-kvm/h1/provision_appliance"]
    critical += [f"db01/{k}" for k, _ in REPLICATE + CUTOVER[:7]]
    critical += [f"web01/{k}" for k, _ in CUTOVER]
    for step in steps:
        step.critical = step.step_id in critical

    by_server: dict[str, list[StepTiming]] = {}
    for step in steps:
        if step.server:
            by_server.setdefault(step.server, []).append(step)
    for summary in summaries:
        own = by_server[summary.name]
        summary.steps_done = sum(1 for s in own if s.state == "done")
        summary.steps_total = len(own)
        summary.bytes_moved = sum(s.bytes for s in own)
        summary.duration = max(s.end for s in own if s.end is not None) - min(
            s.start for s in own if s.start is not None
        )
        parts = {s.kind: s.duration or 0.0 for s in own}
        summary.downtime_breakdown = {
            "quiesce": parts["quiesce_source"],
            "final_delta": parts["final_sync"],
            "detach": parts["detach_disks"],
            "boot": parts["power_on_replica"],
            "verify": 46.0,
            "dns_ttl": 60.0,
        }
        summary.downtime_estimate = sum(summary.downtime_breakdown.values()) * 0.93
        summary.lag = 4.0
        if summary.name == "app01":
            summary.state = "failed"
        else:
            summary.downtime_measured = sum(summary.downtime_breakdown.values())
    movers = [s for s in steps if s.bytes and s.start is not None and s.end is not None]
    series = _bandwidth(movers)
    return RunReport(
        kind="run",
        title="wave-1",
        playbook="playbooks/wave-1.yaml",
        plan_hash="sha256:3f9a61c2d4e5b6a7",
        generated_at="2024-05-04T09:41:00Z",
        started_at="2024-05-04T08:12:03Z",
        duration=max(s.end for s in steps if s.end is not None),
        servers=summaries,
        steps=steps,
        findings=[
            FindingView(
                "HV-TLS-001",
                "warning",
                "vcenter: TLS certificate is not verified",
                "set providers.vcenter.thumbprint to the SHA-1 thumbprint shown by `migrate validate`",
                None,
                "playbooks/wave-1.yaml:14:5",
            ),
            FindingView(
                "HV-DISK-004",
                "info",
                "web01: disk format raw on a VMFS datastore will be thick",
                "use format: vmdk for thin provisioning",
                "web01",
                "playbooks/wave-1.yaml:40:9",
            ),
            FindingView(
                "HV-NET-002",
                "warning",
                "app01: source MAC not pinned on the target NIC",
                "add mac: preserve to the NIC so DHCP reservations keep working",
                "app01",
                None,
            ),
        ],
        bytes_moved=sum(s.bytes for s in steps),
        peak_bandwidth=max(rate for _, rate in series),
        bandwidth_series=series,
        critical_path=critical,
        notes=[
            "insecure TLS to vcenter",
            "app01 failed: `migrate undo playbooks/wave-1.yaml app01` removes its copy",
        ],
    )


def _bandwidth(movers: list[StepTiming]) -> list[tuple[float, float]]:
    """The sum of every data-moving step's average rate, as a step function."""
    edges = sorted({s.start for s in movers} | {s.end for s in movers})  # type: ignore[arg-type]
    series = []
    for t in edges:
        rate = sum(s.bytes / (s.duration or 1.0) for s in movers if s.start <= t < s.end)  # type: ignore[operator]
        series.append((t, rate))
    return series


def many_servers_report(count: int, *, steps_each: int = 18) -> RunReport:
    """A simulated wave of ``count`` identical servers started in batches of 8, one failing in fifty."""
    servers, steps = [], []
    for i in range(count):
        name = f"srv{i:05d}"
        t = (i // 8) * 300.0
        for j in range(steps_each):
            phase = "replicate" if j < steps_each // 2 else "cutover"
            state = "failed" if i % 50 == 7 and j == steps_each - 3 else "done"
            steps.append(
                StepTiming(f"{name}/s{j}", name, f"s{j}", phase, state, t, t + 30.0, critical=i == 0)
            )
            t += 30.0
        summary = ServerSummary(
            name, f"ssh {name}", f"kvm / {name}", "done", steps_each, steps_each, GiB, GiB
        )
        summary.duration, summary.downtime_estimate = 30.0 * steps_each, 95.0
        servers.append(summary)
    end = max(s.end or 0.0 for s in steps)
    return RunReport(
        "simulation",
        "wave-big",
        "big.yaml",
        "sha256:00",
        "2024-05-04T09:41:00Z",
        None,
        end,
        servers,
        steps,
        bandwidth_series=[(float(t), float(100 * MiB + (t % 7) * MiB)) for t in range(0, int(end), 3)],
        peak_bandwidth=106 * MiB,
        bytes_moved=count * GiB,
        critical_path=[s.step_id for s in steps[:18]],
    )


def empty_report(**changes: object) -> RunReport:
    report = RunReport("run", "nothing", "empty.yaml", "sha256:0", "2024-05-04T09:41:00Z")
    for key, value in changes.items():
        setattr(report, key, value)
    return report


def all_pending_report() -> RunReport:
    steps = [StepTiming(f"db01/{k}", "db01", k, "replicate", "pending") for k, _ in REPLICATE]
    return empty_report(
        servers=[ServerSummary("db01", "ssh db01", "kvm / db01", "pending", 0, len(steps), 10 * GiB, 0)],
        steps=steps,
    )


def external_references(document: str) -> list[str]:
    """Every src/href/url() that points off the page (scheme or protocol-relative)."""
    attrs = re.findall(r"""(?:src|href)\s*=\s*["']?\s*([^"'\s>]+)""", document, flags=re.I)
    urls = re.findall(r"url\(\s*['\"]?([^)'\"]+)", document, flags=re.I)
    return [u for u in attrs + urls if re.match(r"^(https?:)?//", u.strip(), flags=re.I)]


# -- model ------------------------------------------------------------------------------------------


def test_to_dict_from_dict_round_trips_a_full_report() -> None:
    report = sample_report()
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-safe: no tuples, no objects
    back = RunReport.from_dict(json.loads(json.dumps(data)))
    assert back == report
    assert isinstance(back.bandwidth_series[0], tuple)
    assert back.servers[0].downtime_breakdown == report.servers[0].downtime_breakdown


def test_from_dict_refuses_something_that_is_not_a_report() -> None:
    with pytest.raises(ValueError, match="not an hvmigrate report"):
        RunReport.from_dict({"servers": []})


def test_sample_report_is_realistic() -> None:
    report = sample_report()
    assert len(report.servers) == 3
    assert all(18 <= sum(1 for s in report.steps if s.server == srv.name) <= 20 for srv in report.servers)
    assert [s.step_id for s in report.steps if s.state == "failed"] == ["app01/verify_replica"]
    # web01 cuts over only after db01's replica is verified, which is what puts both on the critical path.
    web_pre = next(s for s in report.steps if s.step_id == "web01/run_pre_script")
    db_verify = next(s for s in report.steps if s.step_id == "db01/verify_replica")
    assert web_pre.start == db_verify.end


# -- JSON -------------------------------------------------------------------------------------------


def test_json_has_schema_first_and_every_server() -> None:
    report = sample_report()
    text = to_json(report)
    data = json.loads(text)
    assert next(iter(data)) == "schema" and data["schema"] == SCHEMA
    assert [s["name"] for s in data["servers"]] == ["db01", "web01", "app01"]
    assert list(data["servers"][0]["downtime_breakdown"]) == [
        "quiesce",
        "final_delta",
        "detach",
        "boot",
        "verify",
        "dns_ttl",
    ]
    assert from_json(text) == report
    assert to_json(from_json(text)) == text  # stable: re-rendering changes nothing


def test_json_turns_non_finite_numbers_into_null() -> None:
    report = sample_report()
    report.servers[0].lag = float("inf")
    data = json.loads(to_json(report))
    assert data["servers"][0]["lag"] is None


def test_from_json_names_the_problem() -> None:
    with pytest.raises(ValueError, match="schema"):
        from_json('{"schema": "something/else"}')
    with pytest.raises(ValueError, match="not valid JSON"):
        from_json("{")


# -- HTML -------------------------------------------------------------------------------------------


def test_html_is_self_contained_with_a_gantt_chart() -> None:
    report = sample_report()
    document = to_html(report)
    assert document.startswith("<!DOCTYPE html>")
    assert document.count("<svg") == 2  # Gantt and bandwidth
    assert external_references(document) == []
    assert "<script" not in document and "<link" not in document and "@import" not in document
    # one lane label per step, every critical step outlined, the failure explained on hover
    assert document.count('class="lane"') == len(report.steps)
    assert document.count('<rect class="crit"') == len(report.critical_path)
    assert "did not answer WinRM on 10.1.0.8:5986" in document
    assert "failed after 3 attempts" in document
    for server in report.servers:
        assert f'<td class="name">{server.name}</td>' in document


def test_the_external_reference_check_would_catch_a_remote_asset() -> None:
    assert external_references('<img src="https://x.test/a.png"><a href=//cdn.test/s.css>') == [
        "https://x.test/a.png",
        "//cdn.test/s.css",
    ]


def test_html_escapes_names_and_messages() -> None:
    report = sample_report()
    hostile = "<script>x</script>"
    report.servers[0].name = hostile
    for step in report.steps:
        if step.server == "db01":
            step.server = hostile
            step.step_id = step.step_id.replace("db01", hostile)
    report.critical_path = [i.replace("db01", hostile) for i in report.critical_path]
    report.title = 'wave "1" & <b>friends</b>'
    report.notes.append("<img src=x onerror=alert(1)>")
    document = to_html(report)
    assert hostile not in document
    assert "&lt;script&gt;x&lt;/script&gt;" in document
    assert "<b>friends</b>" not in document and "<img" not in document
    assert "<script" not in document


def test_html_switches_to_one_lane_per_server_above_the_limit() -> None:
    small = to_html(many_servers_report(STEP_LANES_MAX_SERVERS, steps_each=2))
    assert small.count('class="lane"') == STEP_LANES_MAX_SERVERS * 2
    assert "one lane per server" not in small

    big_report = many_servers_report(STEP_LANES_MAX_SERVERS + 1)
    big = to_html(big_report)
    assert "one lane per server" in big
    assert big.count('class="lane"') == 0
    assert big.count('class="lanesmall"') == STEP_LANES_MAX_SERVERS + 1
    assert big.count('class="failmark"') == sum(1 for s in big_report.steps if s.state == "failed")
    servers_table = big[big.index("<h2>Servers</h2>") :]
    assert servers_table.count('<td class="name">') == STEP_LANES_MAX_SERVERS + 1  # the table lists them all


def test_html_for_ten_thousand_servers_stays_bounded() -> None:
    report = many_servers_report(10_000, steps_each=4)
    document = to_html(report)
    assert document.count('class="lanesmall"') == 10_000
    # failures are listed, but not two hundred of them in the page header
    assert "The first 20 of 200 failed or cancelled steps" in document
    # Per server: a lane label, a few phase rects and a table row; nothing per step.
    assert len(document) < 10_000 * 1_400
    # the bandwidth chart keeps one point per pixel column however long the series
    bandwidth_svg = document[document.index('aria-label="Bandwidth over time"') :]
    path = re.search(r'class="area" d="([^"]+)"', bandwidth_svg)
    assert path is not None and path.group(1).count("L") <= 2 * 880 + 2


def test_html_copes_with_nothing_started_and_zero_duration() -> None:
    pending = to_html(all_pending_report())
    assert "No step has started yet" in pending
    assert "No data has moved yet" in pending
    assert "<svg" in pending

    instant = sample_report()
    for step in instant.steps:
        step.start, step.end = (0.0, 0.0) if step.start is not None else (None, None)
    instant.duration, instant.bandwidth_series = 0.0, []
    document = to_html(instant)
    assert not re.search(r'="[^"]*nan', document, flags=re.I)  # no NaN coordinates from a 0/0
    assert 'width="2.0"' in document  # zero-length steps still show as thin bars

    assert "No servers in this report" in to_html(empty_report())


def test_tick_steps_and_labels_read_naturally() -> None:
    assert nice_tick_step(1.0) == 0.1
    assert nice_tick_step(90) == 10
    assert nice_tick_step(3 * 3600) == 1800
    assert nice_tick_step(10 * 86400) == 86400
    assert [tick_label(t, 1800) for t in (0, 1800, 3600, 5400)] == ["0", "30m", "1h", "1h30m"]
    assert (
        tick_label(45, 15) == "45s"
        and tick_label(0.3, 0.1) == "0.3s"
        and tick_label(2 * 86400, 86400) == "2d"
    )


# -- Markdown -------------------------------------------------------------------------------------


def test_markdown_has_a_table_row_per_server_and_escapes_cells() -> None:
    report = sample_report()
    report.servers[1].name = "web|01 <x>"
    text = to_markdown(report)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| Server |"))
    rows = [line for line in lines if line.startswith(("| db01 |", r"| web\|01 \<x\> |", "| app01 |"))]
    assert len(rows) == 3
    for row in rows:  # an escaped pipe does not split a cell, so every row has the header's columns
        assert len(re.split(r"(?<!\\)\|", row)) == len(header.split("|"))
    assert "## Critical path" in text and "| 6 | `db01/mirror` |" in text
    assert "| warning | `HV-TLS-001` |" in text and "## Notes" in text
    assert "| `app01/verify_replica` | failed | 3 |" in text


def test_markdown_code_spans_keep_pipes_and_markup_inert() -> None:
    report = sample_report()
    report.steps[0].step_id = report.critical_path[0] = "shared|<b>`x`"
    text = to_markdown(report)
    assert r"| 1 | shared\|\<b\>\`x\` |" in text  # a backtick cannot be in a code span: escaped text
    report.steps[0].step_id = report.critical_path[0] = "shared|<b>"
    assert r"| 1 | `shared\|<b>` |" in to_markdown(report)


# -- terminal -------------------------------------------------------------------------------------


def render(report: RunReport, width: int = 140) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    render_report(report, console)
    render_gantt_text(report, console, width)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_terminal_shows_servers_failure_and_critical_path() -> None:
    out = render(sample_report())
    for name in ("db01", "web01", "app01"):
        assert name in out
    assert "failed" in out and "Critical path" in out and "HV-NET-002" in out
    gantt_rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("db01 ", "app01 "))}
    assert "✗" in gantt_rows["app01"] and "✗" not in gantt_rows["db01"]


def test_terminal_survives_edge_reports() -> None:
    assert "nothing" in render(empty_report())
    assert "No step has started yet" in render(all_pending_report())
    assert "db01" in render(all_pending_report())
    zero = sample_report()
    zero.duration, zero.bandwidth_series = 0.0, []
    for step in zero.steps:
        step.start, step.end = (0.0, 0.0) if step.start is not None else (None, None)
    assert "web01" in render(zero, width=40)


def test_terminal_prints_markup_literally_and_cuts_long_tables() -> None:
    report = many_servers_report(120, steps_each=2)
    report.servers[0].name = "[bold red]x[/]"
    report.servers[99].state = "failed"
    out = render(report)
    assert "[bold red]x[/]" in out
    assert "70 more servers not shown" in out
    assert "srv00099" in out  # the failed one is shown even though it is far down the list


# -- write_report -----------------------------------------------------------------------------------


def test_write_report_writes_each_format_and_never_a_secret(tmp_path: Path) -> None:
    secret = Secret("hunter2-Very-Secret")
    report = sample_report()
    failed = report.failed_steps()[0]
    failed.message = f"login failed for administrator with password {secret.reveal()}"
    for fmt, masked in (("html", "password ***"), ("json", "password ***"), ("md", r"password \*\*\*")):
        path = tmp_path / "out" / f"report.{fmt}"
        text = write_report(report, fmt, path)  # type: ignore[arg-type]
        assert path.read_text(encoding="utf-8") == text
        assert "hunter2-Very-Secret" not in text
        assert masked in text
    assert write_report(report, "json", None) == to_json(redacted(report))
    with pytest.raises(ValueError, match="use one of: html, json, md"):
        write_report(report, "pdf", None)  # type: ignore[arg-type]


def test_a_running_step_is_drawn_up_to_now() -> None:
    report = sample_report()
    step = next(s for s in report.steps if s.step_id == "web01/final_sync")
    step.state, step.end = "running", None
    report.duration = step.start + 30.0  # "now" is 30 s into the final sync
    document = to_html(report)
    assert "web01/final_sync\nstate: running" in document and "(still running)" in document
    assert "duration: 30.0s" in document


def test_fallback_findings_table_lists_every_finding() -> None:
    from orchestrator.report.terminal import findings_fallback_table

    report = sample_report()
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(findings_fallback_table(report.findings_by_severity()))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert [rule for rule in ("HV-TLS-001", "HV-NET-002", "HV-DISK-004") if rule in out] == [
        "HV-TLS-001",
        "HV-NET-002",
        "HV-DISK-004",
    ]
    assert out.index("HV-NET-002") < out.index("HV-DISK-004")  # warnings before info
