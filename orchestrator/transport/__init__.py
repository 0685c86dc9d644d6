"""Byte streams to the places an agent runs: a local subprocess (local.py) or an SSH exec channel (ssh.py).

A transport only starts a Python interpreter with the given arguments and hands back its stdin/stdout as
a ``Stream``; shipping the agent and speaking the protocol over it is orchestrator/mirror/agent_session.py's
job, so one more transport (WinRM, a TLS socket) is one small module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from orchestrator.mirror.protocol import StreamClosed


class TransportError(Exception):
    """Could not reach or start anything on the far end; the message says what to fix."""

    retryable: bool = True


class HostKeyError(TransportError):
    """The SSH host key is unknown or changed: never retried, a human must look."""

    retryable = False


@runtime_checkable
class Stream(Protocol):
    """An ordered, reliable byte stream: what the frame protocol needs and nothing more."""

    def read_exact(self, count: int) -> bytearray:
        """Exactly ``count`` bytes, or StreamClosed."""
        ...

    def write(self, *parts: bytes | bytearray | memoryview) -> None:
        """Send the parts back to back (a frame header and its payload without joining them)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Process(Stream, Protocol):
    """A started interpreter: its stdin/stdout as a Stream, plus what tells why it stopped."""

    name: str

    def exit_status(self, timeout: float | None = None) -> int | None:
        """The exit code once it stopped (None: still running after ``timeout`` seconds)."""
        ...

    def stderr_tail(self) -> str:
        """The last lines it wrote to stderr: the agent's own explanation when it stops."""
        ...

    def kill(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """Starts interpreters somewhere; ``name`` says where (a host name, "local")."""

    name: str

    def start_python(self, args: Sequence[str]) -> Process: ...

    def close(self) -> None: ...


__all__ = ["HostKeyError", "Process", "Stream", "StreamClosed", "Transport", "TransportError"]
