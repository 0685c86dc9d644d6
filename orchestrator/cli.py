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
    # measured per command, not at import: where stdout goes can change between calls in one process
    console.width = _width()  # type: ignore[assignment]  # None: rich asks the terminal


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


INSECURE_RULES = ("security.insecure_tls", "security.insecure_host_key")


def _warn_insecure(session: Any) -> None:
    """Turned-off certificate or host-key checks are said by every command, not only by validate: a lab
    setting that reached production must not go unnoticed (the dry run and the reports list them too)."""
    from orchestrator import validation

    for finding in validation.validate(session.playbook, locate=session.loaded.location):
        if finding.rule_id in INSECURE_RULES:
            where = f" ({finding.location})" if finding.location else ""
            err.print(
                f"warning: {finding.rule_id}: {finding.message}{where}; {finding.fix}",
                style="yellow",
                markup=False,
                highlight=False,
            )


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
    _warn_insecure(session)
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
@click.option(
    "--keep-syncing",
    is_flag=True,
    help="then stay at the cutover gate running incremental passes on the sync cadence (sync.interval, "
    "sync.adaptive) until Ctrl-C (exit 130, state kept) or until every server is cut over by another "
    "command",
)
@click.option("-v", "--verbose", is_flag=True, help="show every step start and event")
def execute(
    playbook: Path,
    state_dir: Path | None,
    dry_run: bool,
    replan: bool,
    report_path: Path | None,
    keep_syncing: bool,
    verbose: bool,
) -> None:
    """Run every step up to the cutover gate (past it if cutover.mode is auto).

    \b
    Finished steps are never redone: run it again after a failure, a crash or Ctrl-C and it resumes
    (a mirror resumes at the chunk where it stopped). Ctrl-C stops at a safe point with exit 130.
    With --dry-run nothing is touched: the whole migration is simulated in virtual time.
    With --keep-syncing it stays up and keeps the replicas warm; `migrate cutover` from another shell
    runs between its passes. Without it, let cron do the same: */5 * * * * migrate sync --due PLAYBOOK
    """
    session = _session(playbook, state_dir)
    if dry_run:
        _dry_run(session, report_path)
        return
    keeper = _keeper_lock(session) if keep_syncing else None
    _run(
        session,
        phases=["replicate"],
        servers=None,
        command="execute --keep-syncing" if keeper else "execute",
        replan=replan,
        verbose=verbose,
        report_path=report_path,
        conclude=(lambda journal: _keep_syncing(session, journal, verbose=verbose)) if keeper else None,
    )


def _plan_lock(session: Any, command: str, *, skip_if_busy: bool = False) -> Any:
    """The plan's run lock, or a one-line refusal naming who holds it (for cron: a skip, exit 0).

    Released when the command ends however it ends (an exit inside, or a caller running several
    commands in one process), and by the kernel if the process dies.
    """
    from orchestrator.run_lock import PlanBusy, PlanLock, describe

    try:
        return _released_at_end(PlanLock(session.state_dir).acquire(command))
    except PlanBusy as busy:
        if skip_if_busy:
            console.print(f"{command}: skipped, {describe(busy.holder)} is running this plan")
            sys.exit(0)
        fail(str(busy))


def _keeper_lock(session: Any) -> Any:
    """Held for the life of `execute --keep-syncing`: one keeper per plan, and cron knows it is there."""
    from orchestrator.run_lock import KEEPER, PlanBusy, PlanLock, describe

    try:
        return _released_at_end(PlanLock(session.state_dir, KEEPER).acquire("execute --keep-syncing"))
    except PlanBusy as busy:
        fail(f"this plan is already kept in sync by {describe(busy.holder)}; stop it first (Ctrl-C)")


def _released_at_end(lock: Any) -> Any:
    context = click.get_current_context(silent=True)
    if context is not None:
        context.call_on_close(lock.release)
    return lock


def _keep_syncing(session: Any, journal: Any, *, verbose: bool) -> int:
    """Incremental passes on the sync cadence until Ctrl-C (130) or every server is cut over (0).

    Between passes the run lock is free, so `migrate cutover` or a manual `migrate sync` from another
    shell runs; a pass that finds the plan busy waits for it.
    """
    import threading

    from orchestrator.notify import TeeObserver, notifier_for
    from orchestrator.report.live import LiveObserver
    from orchestrator.run_lock import PlanBusy, PlanLock, describe
    from orchestrator.sync_schedule import keep_syncing, schedules

    stopped = threading.Event()
    running: dict[str, Any] = {}

    def on_signal(signum: int, _frame: object) -> None:
        if stopped.is_set():
            raise KeyboardInterrupt
        stopped.set()
        err.print(
            f"[yellow]{signal.Signals(signum).name}: no more passes; state is kept (press Ctrl-C again to "
            "abort a pass now)[/]"
        )
        if "executor" in running:
            running["executor"].cancel()

    notifier = notifier_for(
        session.playbook,
        plan=session.plan,
        journal=journal,
        playbook_file=session.loaded.path.name,
        warn=lambda text: err.print(text, style="yellow", markup=False, highlight=False),
    )
    said: list[str] = []

    def say(text: str) -> None:
        if said[-1:] != [text]:
            console.print(text, markup=False, highlight=False)
            said.append(text)

    def run_pass(due: list[str]) -> str:
        if journal.current_plan_hash() != session.plan.hash:
            say("the plan changed in the journal (a --replan elsewhere); stopping: run this command again")
            return "changed"
        try:
            lock = PlanLock(session.state_dir).acquire("sync (by execute --keep-syncing)")
        except PlanBusy as busy:
            say(f"pass of {', '.join(due)} waits: {describe(busy.holder)} is running this plan")
            return "busy"
        try:
            for name in due:
                journal.checkpoint(f"{name}/pass_request", None)
            journal.reset([_pass_step(session, name, "sync") for name in due])
            with LiveObserver(console, verbose=verbose) as observer:
                executor = _executor(session, journal, TeeObserver(observer, notifier))
                running["executor"] = executor
                if stopped.is_set():
                    return "cancelled"
                result = executor.run(executor.select(["replicate"], due, auto_cutover=False), command="sync")
                running.pop("executor", None)
            for step_id, error in result.failed.items():
                console.print(f"[bold red]failed[/] {step_id}: {error}", highlight=False)
            return "done" if result.status in ("done", "waiting") else result.status
        finally:
            lock.release()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        outcome = keep_syncing(
            session.plan.servers,
            clock=lambda names, now: schedules(journal, session.playbook, names, now),
            run_pass=run_pass,
            stopped=stopped,
            say=say,
        )
    except KeyboardInterrupt:
        err.print("[red]aborted; the pass that was running will run again next time[/]")
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if notifier is not None:
            notifier.close()
    if outcome.status == "cut over":
        console.print(f"keep-syncing: every server is past the cutover gate ({outcome.passes} pass(es) run)")
        return 0
    if outcome.status == "plan changed":
        return 1
    console.print(
        f"[yellow]interrupted[/]: {outcome.passes} pass(es) run while waiting; run `migrate execute "
        f"{session.loaded.path.name} --keep-syncing` again to go on, or `migrate cutover`"
    )
    return 130


def _dry_run(session: Any, report_path: Path | None) -> None:
    from orchestrator.report import write_report
    from orchestrator.report.terminal import render_report
    from orchestrator.simulate import simulate

    views = _finding_views(_findings(session, offline=False))
    result = simulate(session.plan, session.playbook, findings=views, source_sizes=_scanned_sets(session))
    render_report(result.report, console)
    if report_path:
        write_report(result.report, _fmt(report_path), report_path)
        err.print(f"report written to {report_path}")


def _scanned_sets(session: Any) -> dict[str, Any]:
    """Data-only servers' sets as their last files pass found them (size and count), when there was one."""
    from orchestrator.journal import JournalError
    from orchestrator.simulate import SizeInfo

    data = [s.name for s in session.playbook.servers if s.data is not None]
    if not data or not session.has_journal:
        return {}
    try:
        journal = session.read_journal()
    except JournalError:
        return {}
    sizes = {}
    for name in data:
        last = journal.load_checkpoint(f"{name}/files_last_pass")
        if last:
            total = int(last.get("bytes_total", 0))
            sizes[name] = SizeInfo([total], [total], None, int(last["files"]) + int(last["folders"]))
    journal.close()
    return sizes


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
    skip_if_busy: bool = False,
) -> None:
    """Run the selected steps; ``conclude(journal)`` may print more and raise the exit code.

    The plan's run lock is held while steps run (one orchestrator per plan) and released before
    ``conclude``, which may take it again (`execute --keep-syncing`).
    """
    from orchestrator.journal import JournalError
    from orchestrator.notify import TeeObserver, notifier_for
    from orchestrator.report.live import LiveObserver
    from orchestrator.session import PlanChanged

    _check_servers(session, servers)
    _warn_insecure(session)
    lock = _plan_lock(session, command, skip_if_busy=skip_if_busy)
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
        executor = _executor(session, journal, TeeObserver(observer, notifier))
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
    lock.release()
    if conclude is not None and result.status in ("done", "waiting"):
        code = max(code, conclude(journal))
    journal.close()
    sys.exit(code)


def _executor(session: Any, journal: Any, observer: Any = None) -> Any:
    from orchestrator.executor import Executor

    return Executor(
        session.plan,
        session.playbook,
        journal,
        state_dir=session.state_dir,
        base_dir=session.base_dir,
        observer=observer,
    )


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
        if "done" in (states.get(f"{s}/remap_nics"), states.get(f"{s}/sync_files"))
        and states.get(f"{s}/cutover_gate") != "done"
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
@click.option(
    "--due",
    is_flag=True,
    help="only servers whose next pass is due by the sync cadence, quietly (exit 0) when none is or "
    "another orchestrator is at work: for cron, */5 * * * * migrate sync --due PLAYBOOK",
)
@click.option("-v", "--verbose", is_flag=True)
def sync(
    playbook: Path,
    state_dir: Path | None,
    servers: tuple[str, ...],
    verify: bool,
    due: bool,
    verbose: bool,
) -> None:
    """One more incremental pass for SERVERS (default: all) - only changed chunks travel."""
    session = _session(playbook, state_dir)
    names = list(servers) or list(session.plan.servers)
    if due and verify:
        fail("--due and --verify do not go together: a verify pass is asked for by hand", 2)
    if due:
        _check_servers(session, names)
        _skip_if_kept(session)

    def again(_executor: Any, journal: Any) -> None:
        if due:
            names[:] = _due_servers(session, journal, names)
        states = journal.states()
        not_mirrored = [s for s in names if states.get(_pass_step(session, s, "mirror")) != "done"]
        if not_mirrored:
            fail(f"no full mirror yet for {', '.join(not_mirrored)}: run `migrate execute` first")
        for name in names:  # read (and cleared) by the server's sync step
            journal.checkpoint(f"{name}/pass_request", {"mode": "verify"} if verify else None)
        journal.reset([_pass_step(session, s, "sync") for s in names])

    def differences(journal: Any) -> int:
        from orchestrator.report.verify_view import render_files_verify, render_verify

        data = [n for n in names if session.playbook.server(n).data is not None]
        disks = [n for n in names if n not in data]
        code = (
            render_verify(console, {name: journal.output(f"{name}/sync") for name in disks}) if disks else 0
        )
        if data:
            outputs = {name: journal.load_checkpoint(f"{name}/files_verify") for name in data}
            code = max(code, render_files_verify(console, outputs))
        return code

    _run(
        session,
        phases=["replicate"],
        servers=names,
        command="sync --due" if due else "sync",
        verbose=verbose,
        prepare=again,
        conclude=differences if verify else None,
        skip_if_busy=due,
    )


def _pass_step(session: Any, server: str, kind: str) -> str:
    """The step id of a server's ``mirror`` or ``sync`` pass: a data-only server has its files kinds."""
    if session.playbook.server(server).data is not None:
        kind = {"mirror": "mirror_files", "sync": "sync_files"}[kind]
    return f"{server}/{kind}"


def _skip_if_kept(session: Any) -> None:
    """A keeper (`execute --keep-syncing`) runs the passes itself: a cron `sync --due` steps aside."""
    from orchestrator.run_lock import KEEPER, PlanLock, describe

    holder = PlanLock(session.state_dir, KEEPER).holder()
    if holder is not None:
        console.print(f"sync --due: skipped, {describe(holder)} keeps this plan in sync")
        sys.exit(0)


def _due_servers(session: Any, journal: Any, names: list[str]) -> list[str]:
    """The named servers whose next pass is due now; none due: say when each is, exit 0."""
    import time

    from orchestrator.playbook.units import format_duration
    from orchestrator.sync_schedule import schedules

    now = time.time()
    clocks = schedules(journal, session.playbook, names, now)
    due = [c.server for c in clocks if c.due(now)]
    if not due:
        waiting = [
            f"{c.server} in {format_duration(max(0.0, (c.next_due or now) - now))}"
            for c in clocks
            if c.next_due is not None
        ]
        console.print(
            "sync --due: no pass is due"
            + (f"; next: {', '.join(waiting)}" if waiting else " (no server is between mirror and cutover)")
        )
        sys.exit(0)
    console.print(f"sync --due: {', '.join(due)}")
    return due


@main.command()
@playbook_argument
@click.argument("server")
def replicate(playbook: Path, state_dir: Path | None, server: str) -> None:
    """Replicate data-only SERVER continuously until Ctrl-C: inotify on the source, each change applied on
    the target as it happens (instead of the periodic passes of `execute --keep-syncing`).

    A difference pass runs first, and again after a dropped connection or a full change queue. If a
    root of the set is renamed or deleted on the source, nothing is deleted on the target: replication
    stops with a message (exit 1). It may go on into `migrate cutover`: the cutover waits for its queue to
    drain, stops it (data.cutover_queue: apply or discard what is still queued) and runs the final pass.
    """
    import threading

    from orchestrator.files.replicate_control import busy
    from orchestrator.files.replicate_run import replicate_server
    from orchestrator.run_lock import PlanBusy

    session = _session(playbook, state_dir)
    _check_servers(session, [server])
    # not held while replicating (a cutover must run meanwhile): only no step may be running now
    _plan_lock(session, f"replicate {server}").release()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        console.print(
            f"[yellow]{signal.Signals(signum).name}: stopping replication (the target keeps what it has)"
        )
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        console.print(f"replicating {server} continuously (Ctrl-C stops)")
        stats = replicate_server(
            session.playbook, server, stop, lambda m: console.print(m, markup=False), session.state_dir
        )
    except ValueError as exc:
        fail(str(exc), 2)
    except PlanBusy as exc:
        fail(busy(exc))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stats.ended == "root gone":
        sys.exit(1)


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

    session = _session(playbook, state_dir)
    _check_servers(session, list(servers))
    if not session.has_journal:
        fail(f"nothing to undo: no journal in {session.state_dir}")
    _plan_lock(session, "undo")  # held until the command ends
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
    undone, errors = _executor(session, journal).undo(chosen)
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
@click.option(
    "--audit",
    "show_audit",
    is_flag=True,
    help="also list every operation run against a source or target (who, when, where, what, outcome)",
)
def status(playbook: Path, state_dir: Path | None, show_steps: bool, as_json: bool, show_audit: bool) -> None:
    """Where each server is: state, steps done, current step and progress; the warm-migration clock (last
    pass, lag, converging or not, next pass due, estimated final delta)."""
    from orchestrator.journal import JournalError
    from orchestrator.report.from_journal import build_run_report
    from orchestrator.report.progress import running_progress
    from orchestrator.report.status_view import render_audit, render_status

    session = _session(playbook, state_dir)
    _warn_insecure(session)
    try:
        journal = session.read_journal()
    except JournalError as exc:
        fail(str(exc))
    report = build_run_report(session.plan, session.playbook, journal, playbook_path=str(session.loaded.path))
    if as_json:
        data = report.to_dict()
        click.echo(
            json.dumps(
                {"servers": data["servers"], "steps": data["steps"], "progress": running_progress(journal)}
                | ({"audit": data["audit"]} if show_audit else {}),
                indent=2,
                default=str,
            )
        )
    else:
        render_status(console, report, journal, show_steps=show_steps)
        if show_audit:
            render_audit(console, report.audit)
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
