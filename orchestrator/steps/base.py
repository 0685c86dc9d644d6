"""What a step is, and the narrow context it runs in.

A step is a small class with ``run`` and ``undo``. It sees the world only through `StepContext`: the
playbook, the providers and source it may touch, the outputs of the steps it depends on, and a way to
journal what it creates *before* it creates it. It never sees the executor, the graph or the journal,
so the same step runs under the real executor and is costed by the simulator without change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from orchestrator.playbook.models import Playbook, Server
from providers.base import Provider, Source

Phase = Literal["replicate", "cutover", "test", "cleanup"]


@dataclass(frozen=True, slots=True)
class StepNode:
    """One node of the plan graph; everything in it is JSON-serializable and deterministic."""

    id: str  # "db01/mirror", "appliance/lab-kvm/host1/provision_appliance"
    kind: str
    server: str | None  # None for nodes shared by several servers
    phase: Phase
    params: Mapping[str, Any] = field(default_factory=dict)
    # Concurrency slots held while the step runs: ("source_host", "10.0.0.6"), ("target_host", "kvm/h1").
    slots: tuple[tuple[str, str], ...] = ()
    # For cleanup nodes: the steps whose undo they run, in this order, when the server fails.
    cleanup_of: tuple[str, ...] = ()
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "server": self.server,
            "phase": self.phase,
            "params": dict(self.params),
            "slots": [list(s) for s in self.slots],
            "cleanup_of": list(self.cleanup_of),
            "label": self.label,
        }


@dataclass(frozen=True, slots=True)
class Resource:
    """Something a step created on a target; journaled before creation so undo can always find it."""

    step_id: str
    kind: str  # "disk", "vm", "appliance", "attachment", "dns_record", "file"
    provider: str
    ref: Mapping[str, Any]


class StepFailed(Exception):
    """A step could not do its job; the message is shown to the user as is, so make it actionable."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class Cancelled(Exception):
    """The user pressed Ctrl-C; the step stops at a safe point and will resume on the next run."""


class StepContext(Protocol):
    node: StepNode
    playbook: Playbook
    state_dir: Path
    base_dir: Path  # the playbook's folder; relative paths in it resolve from here

    @property
    def server(self) -> Server: ...

    def provider(self, name: str) -> Provider: ...

    def source(self) -> Source: ...

    def output(self, step_id: str) -> dict[str, Any]:
        """Output of a finished step (a dependency); KeyError when it has none."""
        ...

    def record_resource(self, kind: str, provider: str, ref: Mapping[str, Any]) -> None: ...

    def resources(self, step_id: str | None = None) -> list[Resource]: ...

    def forget_resource(self, resource: Resource) -> None: ...

    def checkpoint(self, key: str, value: Mapping[str, Any] | None) -> None:
        """Durable progress marker (mirror position); None removes it."""
        ...

    def load_checkpoint(self, key: str) -> dict[str, Any] | None: ...

    def progress(self, done: int, total: int, *, unit: str = "B", label: str = "", part: str = "") -> None:
        """Progress of the whole step, or (``part`` given) of one part of it, such as one disk."""
        ...

    def event(self, message: str, *, level: str = "info", **data: Any) -> None: ...

    def cancelled(self) -> bool: ...


class Step:
    """Base class: subclasses set ``kind`` and implement ``run`` (idempotent) and ``undo``."""

    kind: ClassVar[str]
    retryable: ClassVar[bool] = False  # may the executor run it again after a failure?
    transient: ClassVar[bool] = False  # undone by the server's cleanup node when the server fails
    description: ClassVar[str] = ""

    def run(self, ctx: StepContext) -> dict[str, Any]:
        """Do the work, or notice it is already done; return JSON-serializable outputs."""
        raise NotImplementedError

    def undo(self, ctx: StepContext) -> None:
        """Remove what ``run`` created (the journaled resources); never touch the source."""
        for resource in reversed(ctx.resources()):
            ctx.forget_resource(resource)

    def check_cancel(self, ctx: StepContext) -> None:
        if ctx.cancelled():
            raise Cancelled(f"{ctx.node.id} interrupted")
