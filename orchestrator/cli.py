"""The `migrate` command. Thin on purpose: it parses, calls the orchestrator, and renders.

Exit codes (the contract): 0 done, 1 validation or step failure, 2 usage error, 130 interrupted (state kept).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console

from orchestrator import __version__


def _width() -> int | None:
    """Tables stay readable in a pipe or CI log, where rich would otherwise assume 80 columns."""
    return None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "150"))


console = Console(highlight=False, width=_width())
err = Console(stderr=True, highlight=False, soft_wrap=True)  # one error, one line, even in a pipe

STATE_HELP = "where the journal lives (default: .hvmigrate/ beside the playbook)"
EPILOG = """\b
Typical wave:
  migrate validate wave1.yaml          check the playbook and the targets
  migrate plan wave1.yaml              see every step, in order
  migrate execute wave1.yaml --dry-run predict time, bandwidth, downtime
  migrate execute wave1.yaml           mirror and stage, stop at the cutover gate
  migrate sync wave1.yaml              one more incremental pass (repeatable)
  migrate cutover wave1.yaml           final sync and switch
  migrate status wave1.yaml            where each server is
Exit codes: 0 done, 1 validation or step failure, 2 usage error, 130 interrupted (state kept).
"""


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    sys.exit(code)


def playbook_argument(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--state", "state_dir", type=click.Path(file_okay=False, path_type=Path), help=STATE_HELP
    )(func)
    return click.argument("playbook", type=click.Path(dir_okay=False, path_type=Path))(func)


def _session(playbook: Path, state_dir: Path | None) -> Any:
    from orchestrator.planner import PlanError
    from orchestrator.playbook import PlaybookError
    from orchestrator.session import open_session

    if not playbook.exists():
        fail(f"playbook {playbook} does not exist", 2)
    try:
        return open_session(playbook, state_dir)
    except PlaybookError as exc:
        err.print(f"[bold red]{len(exc.errors)} problem(s) in {playbook}:[/]")
        for line in str(exc).splitlines():
            err.print(f"  {line}", markup=False)
        sys.exit(1)
    except PlanError as exc:
        fail(f"{playbook}: {exc}")


class _InOrder(click.Group):
    """Commands in the order a migration uses them, not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(
    cls=_InOrder,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.version_option(__version__, prog_name="hvmigrate")
def main() -> None:
    """Migrate whole servers onto and between ESX, Hyper-V and KVM with minutes of downtime.

    A YAML playbook names the servers and where each goes; every command takes it as its first argument.
    `migrate schema` prints the playbook format; docs/playbook.md explains every field.
    """


@main.command()
@playbook_argument
@click.option("--offline", is_flag=True, help="check the playbook only; do not contact providers or sources")
@click.option("--discover", is_flag=True, help="also discover remote sources (SSH/WinRM), not only images")
@click.option("--json", "as_json", is_flag=True, help="print findings as JSON")
def validate(playbook: Path, state_dir: Path | None, offline: bool, discover: bool, as_json: bool) -> None:
    """Check the playbook against the rule catalog and the live targets; exit 1 on any critical finding."""
    session = _session(playbook, state_dir)
    findings = _findings(session, offline=offline, discover=discover)
    if as_json:
        console.print_json(json.dumps([f.to_json() for f in findings]))
    else:
        _print_findings(findings)
    if any(_severity(f) == "critical" for f in findings):
        sys.exit(1)


@main.command()
def rules() -> None:
    """List every validation rule: id, severity, what it checks, how to fix it."""
    from orchestrator.report.findings import catalog_table

    console.print(catalog_table())


def _severity(finding: Any) -> str:
    return str(getattr(finding.severity, "value", finding.severity))


def _findings(session: Any, *, offline: bool, discover: bool = False) -> list[Any]:
    from orchestrator import validation
    from orchestrator.session import inspect

    seen = inspect(session.playbook, offline=offline, discover_all=discover)
    for problem in seen.problems:
        err.print(f"[yellow]warning:[/] {problem}")
    return validation.validate(
        session.playbook,
        inventories=seen.inventories or None,
        facts=seen.facts or None,
        locate=session.loaded.location,
    )


def _print_findings(findings: list[Any]) -> None:
    from orchestrator.report.findings import findings_summary, findings_table

    if findings:
        console.print(findings_table(findings))
    console.print(f"validation: {findings_summary(findings)}")


@main.command()
@playbook_argument
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="write the plan as JSON here"
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tree", "json", "dot", "mermaid"]),
    default="tree",
    show_default=True,
    help="what to print",
)
def plan(playbook: Path, state_dir: Path | None, output: Path | None, fmt: str) -> None:
    """Show the step graph the playbook turns into (per server, in order, with cross-server edges)."""
    from orchestrator.report.plan_view import plan_tree, to_dot, to_mermaid

    session = _session(playbook, state_dir)
    if output:
        output.write_text(json.dumps(session.plan.to_json(), indent=2) + "\n")
        err.print(f"plan written to {output}")
    if fmt == "tree":
        console.print(plan_tree(session.plan))
    elif fmt == "json":
        click.echo(json.dumps(session.plan.to_json(), indent=2))
    elif fmt == "dot":
        click.echo(to_dot(session.plan), nl=False)
    else:
        click.echo(to_mermaid(session.plan), nl=False)


@main.command()
@playbook_argument
@click.option("--dry-run", is_flag=True, help="simulate the whole migration in virtual time; touch nothing")
@click.option(
    "--replan", is_flag=True, help="adopt a changed playbook; re-runs only steps whose definition changed"
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="also write a report (.html, .json or .md) of the run or simulation",
)
@click.option("-v", "--verbose", is_flag=True, help="show every step start and event")
def execute(
    playbook: Path,
    state_dir: Path | None,
    dry_run: bool,
    replan: bool,
    report_path: Path | None,
    verbose: bool,
) -> None:
    """Run every step up to the cutover gate (past it if cutover.mode is auto).

    \b
    Finished steps are never redone: run it again after a failure, a crash or Ctrl-C and it resumes
    (a mirror resumes at the chunk where it stopped). Ctrl-C stops at a safe point with exit 130.
    With --dry-run nothing is touched: the whole migration is simulated in virtual time.
    """
    session = _session(playbook, state_dir)
    if dry_run:
        _dry_run(session, report_path)
        return
    _run(
        session,
        phases=["replicate"],
        servers=None,
        command="execute",
        replan=replan,
        verbose=verbose,
        report_path=report_path,
    )


def _dry_run(session: Any, report_path: Path | None) -> None:
    from orchestrator.report import write_report
    from orchestrator.report.terminal import render_report
    from orchestrator.simulate import simulate

    views = _finding_views(_findings(session, offline=False))
    result = simulate(session.plan, session.playbook, findings=views)
    render_report(result.report, console)
    if report_path:
        write_report(result.report, _fmt(report_path), report_path)
        err.print(f"report written to {report_path}")


def _fmt(path: Path) -> str:
    """Report format from the file name; HTML unless it says .json or .md."""
    return {".json": "json", ".md": "md", ".markdown": "md"}.get(path.suffix.lower(), "html")


def _run(
    session: Any,
    *,
    phases: list[str],
    servers: list[str] | None,
    command: str,
    replan: bool = False,
    verbose: bool = False,
    report_path: Path | None = None,
    prepare: Callable[[Any, Any], None] | None = None,
    conclude: Callable[[Any], int] | None = None,
) -> None:
    """Run the selected steps; ``conclude(journal)`` may print more and raise the exit code."""
    from orchestrator.executor import Executor
    from orchestrator.journal import JournalError
    from orchestrator.notify import TeeObserver, notifier_for
    from orchestrator.report.live import LiveObserver
    from orchestrator.session import PlanChanged

    _check_servers(session, servers)
    try:
        journal, reset = session.open_journal(replan=replan)
    except (PlanChanged, JournalError) as exc:
        fail(str(exc))
    if reset:
        err.print(
            f"replan: {len(reset)} finished step(s) will run again: {', '.join(reset[:8])}"
            + (" ..." if len(reset) > 8 else "")
        )
    notifier = notifier_for(
        session.playbook,
        plan=session.plan,
        journal=journal,
        playbook_file=session.loaded.path.name,
        warn=lambda text: err.print(text, style="yellow", markup=False, highlight=False),
    )
    with LiveObserver(console, verbose=verbose) as observer:
        executor = Executor(
            session.plan,
            session.playbook,
            journal,
            state_dir=session.state_dir,
            base_dir=session.base_dir,
            observer=TeeObserver(observer, notifier),
        )
        if prepare:
            prepare(executor, journal)
        selected = executor.select(phases, servers, auto_cutover=command == "execute")
        interrupted = {"count": 0}

        def on_signal(signum: int, _frame: object) -> None:
            interrupted["count"] += 1
            if interrupted["count"] > 1:
                raise KeyboardInterrupt
            err.print(
                f"[yellow]{signal.Signals(signum).name}: stopping at the next safe point (state is kept; "
                "run the same command again to resume; press Ctrl-C again to abort now)[/]"
            )
            executor.cancel()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            result = executor.run(selected, command=command)
        except KeyboardInterrupt:
            err.print("[red]aborted; steps that were running will run again next time[/]")
            sys.exit(130)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if notifier is not None:
                notifier.close()
    _summarize(result, session, command, journal.states())
    if report_path:
        _write_run_report(session, journal, report_path)
    code = result.exit_code
    if conclude is not None and result.status in ("done", "waiting"):
        code = max(code, conclude(journal))
    journal.close()
    sys.exit(code)


def _check_servers(session: Any, servers: list[str] | None) -> None:
    unknown = [s for s in servers or [] if s not in session.plan.servers]
    if unknown:
        fail(
            f"unknown server(s): {', '.join(unknown)}; the playbook has {', '.join(session.plan.servers)}", 2
        )


def _summarize(result: Any, session: Any, command: str, states: dict[str, str]) -> None:
    ready = [
        s
        for s in session.plan.servers
        if states.get(f"{s}/remap_nics") == "done" and states.get(f"{s}/cutover_gate") != "done"
    ]
    console.print()
    if result.status == "cancelled":
        console.print(
            f"[yellow]interrupted[/]: {len(result.done)} step(s) finished; run `migrate {command}` "
            "again to resume"
        )
    for step_id, error in result.failed.items():
        console.print(f"[bold red]failed[/] {step_id}: {error}", markup=True, highlight=False)
    if result.blocked:
        console.print(f"[red]{len(result.blocked)} step(s) not run because a step they depend on failed[/]")
    if result.cleaned:
        console.print(
            f"cleanup ran: {', '.join(result.cleaned)} (replica disks are kept so a re-run resumes)"
        )
    if result.status in ("done", "waiting"):
        console.print(f"[green]{command}: {len(result.done)} step(s) done[/]")
        if ready:
            console.print(
                f"ready for cutover: {', '.join(ready)} - run `migrate cutover {session.loaded.path.name}`"
            )
        if result.unreached:
            console.print(f"waiting on steps outside this command: {', '.join(result.unreached[:5])}")


@main.command()
@playbook_argument
@click.argument("servers", nargs=-1)
@click.option(
    "--verify",
    is_flag=True,
    help="compare source and replica chunk by chunk without copying; list the ranges that differ "
    "(exit 1 if any) so the next plain sync repairs exactly those",
)
@click.option("-v", "--verbose", is_flag=True)
def sync(
    playbook: Path, state_dir: Path | None, servers: tuple[str, ...], verify: bool, verbose: bool
) -> None:
    """One more incremental pass for SERVERS (default: all) - only changed chunks travel."""
    session = _session(playbook, state_dir)
    names = list(servers) or session.plan.servers

    def again(_executor: Any, journal: Any) -> None:
        states = journal.states()
        not_mirrored = [s for s in names if states.get(f"{s}/mirror") != "done"]
        if not_mirrored:
            fail(f"no full mirror yet for {', '.join(not_mirrored)}: run `migrate execute` first")
        for name in names:  # read (and cleared) by the server's sync step
            journal.checkpoint(f"{name}/pass_request", {"mode": "verify"} if verify else None)
        journal.reset([f"{s}/sync" for s in names])

    def differences(journal: Any) -> int:
        from orchestrator.report.verify_view import render_verify

        return render_verify(console, {name: journal.output(f"{name}/sync") for name in names})

    _run(
        session,
        phases=["replicate"],
        servers=names,
        command="sync",
        verbose=verbose,
        prepare=again,
        conclude=differences if verify else None,
    )


@main.command()
@playbook_argument
@click.argument("servers", nargs=-1)
@click.option(
    "--test",
    is_flag=True,
    help="boot a copy of the replica from clones of its disks on each NIC's test_network (no link where "
    "none is set) while the source keeps running and syncing; `migrate undo --test` removes it",
)
@click.option("--force", is_flag=True, help="cut over even if the last sync is older than sync.max_lag")
@click.option("-v", "--verbose", is_flag=True)
def cutover(
    playbook: Path, state_dir: Path | None, servers: tuple[str, ...], test: bool, force: bool, verbose: bool
) -> None:
    """Final sync and switch for SERVERS (default: all), in depends_on and wave order.

    A live cutover first removes a test copy still up for those servers (its disks are clones; the
    replica's are untouched), as the reference product does.
    """
    session = _session(playbook, state_dir)
    names = list(servers) or None
    if test:
        _run(session, phases=["replicate", "test"], servers=names, command="cutover --test", verbose=verbose)

    def forced(executor: Any, journal: Any) -> None:
        tests = _undo_order(session, journal, set(names or session.plan.servers), phase="test")
        if tests:
            console.print(f"removing the test copy first: {', '.join(tests)}")
            _, errors = executor.undo(tests)
            if errors:
                problems = "; ".join(f"{k}: {v}" for k, v in errors.items())
                fail(f"{problems} - fix it, or run `migrate undo --test`")
        if force:  # read (and cleared) by each server's cutover gate
            for name in names or session.plan.servers:
                journal.checkpoint(f"{name}/force_cutover", {"by": "migrate cutover --force"})

    _run(
        session,
        phases=["replicate", "cutover"],
        servers=names,
        command="cutover",
        verbose=verbose,
        prepare=forced,
    )


def _undo_order(session: Any, journal: Any, names: set[str], phase: str | None = None) -> list[str]:
    """Steps with live resources for these servers (and shared nodes only they use), newest first."""
    import networkx as nx

    plan = session.plan
    live = {r.step_id for r in journal.resources()}
    users = {
        node.id: {plan.node(s).server for s in nx.descendants(plan.graph, node.id)}
        for node in plan.steps()
        if node.server is None
    }
    return [
        n
        for n in reversed(list(nx.topological_sort(plan.graph)))
        if n in live
        and (phase is None or plan.node(n).phase == phase)
        and (
            plan.node(n).server in names
            or (plan.node(n).server is None and users.get(n, set()) - {None} <= names)
        )
    ]


@main.command()
@playbook_argument
@click.argument("servers", nargs=-1)
@click.option(
    "--test", "test_only", is_flag=True, help="remove only the test copy and its disks; replication goes on"
)
@click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation")
def undo(
    playbook: Path, state_dir: Path | None, servers: tuple[str, ...], test_only: bool, yes: bool
) -> None:
    """Remove what the tool created for SERVERS (default: all): replica VMs, disks, appliances, DNS changes.

    Never touches the source's data; a source this tool shut down is started again. With --test, only
    what `migrate cutover --test` made goes: the replica and its sync state stay as they are.
    """
    from orchestrator.executor import Executor

    session = _session(playbook, state_dir)
    _check_servers(session, list(servers))
    if not session.has_journal:
        fail(f"nothing to undo: no journal in {session.state_dir}")
    journal, _ = session.open_journal(replan=True)
    chosen = _undo_order(
        session, journal, set(servers) or set(session.plan.servers), phase="test" if test_only else None
    )
    if not chosen:
        what = "test copy" if test_only else "live resources"
        console.print(f"nothing to undo: the journal records no {what} for these servers")
        journal.close()
        return
    console.print("will undo, in this order:")
    for step_id in chosen:
        kinds = sorted({r.kind for r in journal.resources(step_id)})
        console.print(f"  {step_id}  [dim]({', '.join(kinds)})[/]")
    if not yes and not click.confirm("proceed?", default=False):
        fail("nothing undone", 1)
    executor = Executor(
        session.plan, session.playbook, journal, state_dir=session.state_dir, base_dir=session.base_dir
    )
    undone, errors = executor.undo(chosen)
    for step_id in undone:
        console.print(f"[magenta]   undone[/]  {step_id}")
    for step_id, message in errors.items():
        console.print(f"[red]   failed[/]  {step_id}: {message}")
    left = journal.resources()
    journal.close()
    if errors:
        fail(f"{len(errors)} step(s) could not be undone; {len(left)} resource(s) remain in the journal")
    console.print(f"[green]undo: {len(undone)} step(s) undone[/]")


@main.command()
@playbook_argument
@click.option("--steps", "show_steps", is_flag=True, help="list every step of every server")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(playbook: Path, state_dir: Path | None, show_steps: bool, as_json: bool) -> None:
    """Where each server is: state, steps done, current step and progress, last pass and lag."""
    from orchestrator.journal import JournalError
    from orchestrator.report.from_journal import build_run_report
    from orchestrator.report.progress import running_progress
    from orchestrator.report.status_view import render_status

    session = _session(playbook, state_dir)
    try:
        journal = session.read_journal()
    except JournalError as exc:
        fail(str(exc))
    report = build_run_report(session.plan, session.playbook, journal, playbook_path=str(session.loaded.path))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "servers": report.to_dict()["servers"],
                    "steps": report.to_dict()["steps"],
                    "progress": running_progress(journal),
                },
                indent=2,
                default=str,
            )
        )
    else:
        render_status(console, report, journal, show_steps=show_steps)
    journal.close()


@main.command()
@playbook_argument
@click.option("--format", "fmt", type=click.Choice(["html", "json", "md"]), default="html", show_default=True)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="file to write (default: stdout)"
)
@click.option("--dry-run", is_flag=True, help="report the simulation instead of the recorded run")
def report(playbook: Path, state_dir: Path | None, fmt: str, output: Path | None, dry_run: bool) -> None:
    """Write a report of the run (or the simulation): per-server table, Gantt chart, findings."""
    from orchestrator.journal import JournalError
    from orchestrator.report import write_report

    session = _session(playbook, state_dir)
    if dry_run:
        from orchestrator.simulate import simulate

        run_report = simulate(session.plan, session.playbook).report
    else:
        try:
            journal = session.read_journal()
        except JournalError as exc:
            fail(f"{exc} (or use --dry-run for the simulation)")
        run_report = _run_report(session, journal)
        journal.close()
    text = write_report(run_report, fmt, output)
    if output:
        err.print(f"report written to {output}")
    else:
        click.echo(text, nl=False)


def _finding_views(findings: list[Any]) -> list[Any]:
    from orchestrator.report.model import FindingView

    return [
        FindingView(
            rule_id=f.rule_id,
            severity=_severity(f),
            message=f.message,
            fix=f.fix,
            server=f.server,
            location=f.location,
        )
        for f in findings
    ]


def _run_report(session: Any, journal: Any) -> Any:
    """The recorded run, with the dry run's downtime estimate beside each measured downtime."""
    from orchestrator.report.from_journal import build_run_report
    from orchestrator.simulate import simulate

    skipped = {"inventory.not_inspected", "facts.not_discovered"}  # a run report checks the playbook only
    findings = [f for f in _findings(session, offline=True) if f.rule_id not in skipped]
    report = build_run_report(
        session.plan,
        session.playbook,
        journal,
        playbook_path=str(session.loaded.path),
        findings=_finding_views(findings),
    )
    predicted = {s.name: s for s in simulate(session.plan, session.playbook).report.servers}
    for server in report.servers:
        if server.name in predicted:
            server.downtime_estimate = predicted[server.name].downtime_estimate
            server.downtime_breakdown = predicted[server.name].downtime_breakdown
    return report


def _write_run_report(session: Any, journal: Any, path: Path) -> None:
    from orchestrator.report import write_report

    write_report(_run_report(session, journal), _fmt(path), path)
    err.print(f"report written to {path}")


@main.command()
def schema() -> None:
    """Print the JSON Schema of the playbook format (for editors and CI linting)."""
    from orchestrator.playbook import playbook_json_schema

    click.echo(json.dumps(playbook_json_schema(), indent=2))


if __name__ == "__main__":
    main()
