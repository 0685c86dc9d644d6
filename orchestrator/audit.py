"""The audit trail: every operation the tool runs against a source or a target, with who, when and how it
ended, in the journal beside the steps that ran it.

Layering: providers, transports and the DNS updaters do not know steps or the journal. The executor opens
a *scope* around each step (server, step id, and a sink that writes to the journal); what runs inside it
reports through `operation` or `record`, which do nothing outside a scope (a `migrate validate` looking
around changes nothing and records nothing). The scope is a context variable, so concurrent steps in
worker threads never mix their entries; a step that fans out to a thread pool passes its scope on with
`carry`.

What is recorded: each mutating call on a provider (through `AuditedProxy`, which the step context puts
in front of every provider and source), each shell command on a source (``providers/linux/shell.py``),
each agent request (read/write of a disk), each disk pass, each guest staging write into a replica disk,
each pre/post script and each DNS change. Pure reads (inventory, find_*, discovery, wait_booted) are left
out: they change nothing. An operation is journaled as ``running`` before it starts and gets its outcome
after, so a crash in the middle still leaves a line saying it was attempted. Every string goes through
`redact`, and `Secret` arguments render as ``***``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import shlex
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from orchestrator.playbook.secrets import Secret, redact
from orchestrator.run_lock import who

MAX_OPERATION = 2000  # characters of an operation's text kept (a long debugfs script is cut)
MAX_DETAIL = 1000

PROVIDER_WRITES = frozenset(
    {
        "provision_appliance",
        "release_appliance",
        "create_disk",
        "delete_disk",
        "clone_disk",
        "attach_disk",
        "detach_disk",
        "create_vm",
        "delete_vm",
        "power_on",
        "power_off",
    }
)
SOURCE_WRITES = frozenset({"quiesce", "thaw", "shutdown", "start"})
DNS_WRITES = frozenset({"replace", "delete", "restore"})


@dataclass(frozen=True)
class AuditEntry:
    """One operation; ``outcome`` is ``running`` until it ends, then ``ok`` or ``error``."""

    ts: float
    who: str
    server: str | None
    step_id: str | None
    endpoint: str
    operation: str
    outcome: str = "running"
    exit_code: int | None = None
    detail: str | None = None
    ended_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class AuditSink(Protocol):
    """Where entries go (the journal); ``start`` returns an id that ``finish`` gives back."""

    def start(self, entry: AuditEntry) -> int: ...

    def finish(self, entry_id: int, outcome: str, exit_code: int | None, detail: str | None) -> None: ...


class JournalSink:
    """Writes entries to a `Journal`'s audit table under the run that is current when they start."""

    def __init__(self, journal: Any, run_id: Callable[[], int | None]) -> None:
        self.journal = journal
        self.run_id = run_id

    def start(self, entry: AuditEntry) -> int:
        return int(self.journal.audit_start(self.run_id(), entry))

    def finish(self, entry_id: int, outcome: str, exit_code: int | None, detail: str | None) -> None:
        self.journal.audit_finish(entry_id, outcome, exit_code, detail)


@dataclass(frozen=True)
class _Scope:
    sink: AuditSink
    server: str | None
    step_id: str | None
    who: str


_current: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("hvmigrate_audit", default=None)
_WHO = who()


@contextmanager
def scope(sink: AuditSink, *, server: str | None, step_id: str | None) -> Iterator[None]:
    """Operations run inside are recorded for this server and step."""
    token = _current.set(_Scope(sink, server, step_id, _WHO))
    try:
        yield
    finally:
        _current.reset(token)


def active() -> bool:
    return _current.get() is not None


_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def carry(function: _Fn) -> _Fn:
    """``function`` to run in another thread with this thread's audit scope (a pool does not pass it)."""
    context = contextvars.copy_context()

    def run(*args: Any, **kwargs: Any) -> Any:
        return context.copy().run(function, *args, **kwargs)

    return run  # type: ignore[return-value]


class Operation:
    """Handed to the body of `operation`: a command that exits non-zero sets its code (and is an error)."""

    def __init__(self) -> None:
        self.exit_code: int | None = None
        self.detail: str | None = None
        self.failed = False

    def exited(self, status: int | None, detail: str | None = None) -> None:
        self.exit_code = status
        self.failed = status != 0
        self.detail = detail if self.failed else None

    def note(self, detail: str) -> None:
        self.detail = detail


@contextmanager
def operation(endpoint: str, text: str) -> Iterator[Operation]:
    """Journal ``text`` against ``endpoint`` before it runs and its outcome after (an exception: error)."""
    current = _current.get()
    op = Operation()
    if current is None:
        yield op
        return
    entry = AuditEntry(
        ts=time.time(),
        who=current.who,
        server=current.server,
        step_id=current.step_id,
        endpoint=_clip(redact(endpoint), 300),
        operation=_clip(redact(text), MAX_OPERATION),
    )
    entry_id = current.sink.start(entry)
    try:
        yield op
    except BaseException as exc:
        reason = redact(str(exc).strip() or type(exc).__name__)
        current.sink.finish(entry_id, "error", op.exit_code, _clip(reason, MAX_DETAIL))
        raise
    outcome = "error" if op.failed else "ok"
    detail = _clip(redact(op.detail), MAX_DETAIL) if op.detail else None
    current.sink.finish(entry_id, outcome, op.exit_code, detail)


def record(endpoint: str, text: str, *, detail: str | None = None) -> None:
    """An operation that is over as soon as it is sent (an agent request): one line, outcome ok; what
    it then does is audited by the operation that carries it (the disk pass)."""
    with operation(endpoint, text) as op:
        if detail:
            op.note(detail)


def command_text(argv: Sequence[str]) -> str:
    return shlex.join(str(a) for a in argv)


# ---------------------------------------------------------------- proxies


class AuditedProxy:
    """Stands in front of a provider, a source or a DNS updater and audits the calls that change things.

    Everything else (attributes, reads, optional methods looked up with getattr, isinstance) passes
    straight through, so a step cannot tell the difference.
    """

    __slots__ = ("_endpoint", "_target", "_writes")

    def __init__(self, target: Any, endpoint: str, writes: frozenset[str]) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_endpoint", endpoint)
        object.__setattr__(self, "_writes", writes)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name not in self._writes or not callable(value):
            return value
        endpoint = self._endpoint

        def audited(*args: Any, **kwargs: Any) -> Any:
            with operation(endpoint, call_text(name, args, kwargs)):
                return value(*args, **kwargs)

        return audited

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __repr__(self) -> str:
        return repr(self._target)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(proxy, KvmProvider) holds, as callers expect
        return type(self._target)

    @property
    def audited_target(self) -> Any:
        return self._target


def audited(target: Any, endpoint: str, writes: frozenset[str]) -> Any:
    """``target`` behind an `AuditedProxy` (once: a proxy is not wrapped again)."""
    if type(target) is AuditedProxy:
        return target
    return AuditedProxy(target, endpoint, writes)


def call_text(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """``create_vm(VmRequest(name='db01', cpus=2, ...))`` with secrets as ``***``."""
    parts = [_value(a) for a in args] + [f"{k}={_value(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def _value(value: Any, depth: int = 0) -> str:
    if isinstance(value, Secret):
        return "***"
    if depth > 3:
        return "..."
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        inner = ", ".join(
            f"{f.name}={_value(getattr(value, f.name), depth + 1)}"
            for f in dataclasses.fields(value)
            if getattr(value, f.name) not in (None, (), [], {}, "")
        )
        return f"{type(value).__name__}({inner})"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_value(v, depth + 1)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, depth + 1) for v in value) + "]"
    return repr(value)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 12] + " ...(cut)"


# ---------------------------------------------------------------- endpoints, as the audit names them


def provider_endpoint(name: str, config: Any) -> str:
    """``target lab-kvm (kvm qemu:///system)``: the provider and where it lives (never its password)."""
    where = next(
        (str(getattr(config, field)) for field in ("uri", "host", "root") if getattr(config, field, None)),
        "",
    )
    kind = getattr(config, "type", "?")
    return f"target {name} ({kind}{' ' + where if where else ''})"


def source_endpoint(server: Any) -> str:
    """``source db01 (ssh root@10.0.0.6:22)`` or ``source web01 (image ./images/web01.raw)``."""
    source = server.source
    if getattr(source, "host", None):
        user = getattr(source, "user", None)
        port = getattr(source, "port", None)
        where = f"{user + '@' if user else ''}{source.host}{':' + str(port) if port else ''}"
    else:
        where = str(getattr(source, "path", None) or getattr(source, "vm", None) or "")
    return f"source {server.name} ({source.type}{' ' + where if where else ''})"
