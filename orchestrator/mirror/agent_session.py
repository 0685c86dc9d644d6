"""The orchestrator's end of one agent: ship it, shake hands, send requests, turn its errors into ours.

An agent that dies says why on its stderr; every error raised here carries the last of that text, because
"the agent on db01 exited (code 127): python3: command not found" is what the operator must read, not
"stream closed".
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from orchestrator import __version__, audit
from orchestrator.transport import TransportError
from providers.base import SourceDisk, SourceFacts, SourceNic

from . import protocol as wire
from .agent_bundle import agent_program, bootstrap_args
from .errors import BlockMapMismatch, MirrorCancelled, MirrorError

_ERROR_KINDS: dict[str, type[MirrorError]] = {
    "MirrorError": MirrorError,
    "MirrorCancelled": MirrorCancelled,
    "BlockMapMismatch": BlockMapMismatch,
    "ProtocolError": wire.ProtocolError,
    "StreamClosed": wire.StreamClosed,
    "VersionMismatch": wire.VersionMismatch,
}


@dataclass(frozen=True)
class AgentInfo:
    """What an agent said about itself in its HELLO."""

    host: str
    protocol: int
    agent_version: str
    python: str
    hashes: tuple[str, ...]
    compressors: tuple[str, ...]
    pid: int

    @classmethod
    def from_hello(cls, hello: dict[str, Any]) -> AgentInfo:
        return cls(
            host=str(hello.get("host", "?")),
            protocol=int(hello.get("protocol", 0)),
            agent_version=str(hello.get("agent_version", "?")),
            python=str(hello.get("python", "?")),
            hashes=tuple(hello.get("hashes", ())),
            compressors=tuple(hello.get("compressors", ())),
            pid=int(hello.get("pid", 0)),
        )


class AgentSession:
    """One running agent. Not thread-safe for receiving: one thread reads its frames at a time."""

    def __init__(self, process: Any, channel: wire.FrameChannel, info: AgentInfo, where: str) -> None:
        self.process = process
        self.channel = channel
        self.info = info
        self.where = where

    @classmethod
    def start(cls, transport: Any, *, program: bytes | None = None) -> AgentSession:
        """Start the agent through ``transport`` and complete the handshake (or raise why not)."""
        where = getattr(transport, "name", "?")
        program = program if program is not None else agent_program()
        try:
            process = transport.start_python(bootstrap_args(program))
        except TransportError as exc:
            raise MirrorError(f"cannot start the agent on {where}: {exc}", retryable=exc.retryable) from None
        channel = wire.FrameChannel(process, f"the agent on {where}")
        session = cls(process, channel, AgentInfo("?", 0, "?", "?", (), (), 0), where)
        try:
            process.write(program)
            frame = channel.receive()
            if frame.type == wire.ERROR:
                session._raise_error(frame)
            if frame.type != wire.HELLO:
                raise wire.ProtocolError(f"the agent on {where} opened with {frame.name} instead of HELLO")
            theirs = frame.json()
            ours = wire.hello(wire.this_host(), __version__, role="orchestrator")
            channel.send_json(wire.HELLO, ours)
            if theirs.get("protocol") != wire.PROTOCOL_VERSION:
                # The agent got our HELLO too and refuses on its side (its stderr says the same): let it
                # say so and exit before we go.
                with contextlib.suppress(wire.ProtocolError):
                    channel.receive()
                process.close()
                raise wire.VersionMismatch(wire.version_mismatch(theirs, ours))
            session.info = AgentInfo.from_hello(theirs)
        except wire.VersionMismatch:
            raise
        except wire.StreamClosed:
            error = session.died("before its handshake")
            session.kill()
            raise error from None
        except BaseException:
            session.kill()
            raise
        return session

    # ------------------------------------------------------------ frames

    def request(self, op: str, **params: Any) -> None:
        audit.record(f"agent on {self.where}", audit.call_text(op, (), params))
        try:
            self.channel.send_json(wire.REQUEST, {"op": op, **params})
        except wire.StreamClosed:
            raise self.died(f"before it took the {op} request") from None

    def receive(self, *expected: int, check: bool = True) -> wire.Frame:
        """The next frame, one of ``expected`` (any when empty); an ERROR frame is raised as our error."""
        try:
            frame = self.channel.receive(check=check)
        except wire.StreamClosed:
            raise self.died("in the middle of its work") from None
        if frame.type == wire.ERROR:
            self._raise_error(frame)
        if expected and frame.type not in expected:
            names = " or ".join(wire.FRAME_NAMES.get(t, str(t)) for t in expected)
            raise wire.ProtocolError(f"the agent on {self.where} sent {frame.name}, expected {names}")
        return frame

    def _raise_error(self, frame: wire.Frame) -> None:
        error = frame.json()
        kind = _ERROR_KINDS.get(str(error.get("kind")), MirrorError)
        message = str(error.get("message", "unknown error"))
        if kind is wire.VersionMismatch:
            raise wire.VersionMismatch(message)
        if kind in (wire.ProtocolError, wire.StreamClosed):
            raise kind(message, retryable=bool(error.get("retryable", True)))
        raise kind(message, retryable=bool(error.get("retryable", False)))

    def died(self, when: str) -> MirrorError:
        """The error for an agent that went away: its exit code and the end of its stderr."""
        code = self.process.exit_status(timeout=5)
        lines = [line.strip() for line in self.process.stderr_tail().splitlines() if line.strip()]
        last = " | ".join(lines[-3:])  # a traceback's last line alone rarely says enough
        status = "is not answering" if code is None else f"exited with code {code}"
        if code is not None and code < 0:
            status = f"was killed by signal {-code}"
        hint = (
            f": {last}"
            if last
            else ": run again (what was durably copied stays; the mirror resumes where it stopped)"
        )
        if code == 127 or "not found" in last:
            hint += "; install python3 (3.8 or later) there"
        return wire.StreamClosed(f"the agent on {self.where} {status} {when}{hint}")

    # ------------------------------------------------------------ requests

    def discover(self, paths: list[str] | None = None) -> dict[str, Any]:
        """The host's facts; ``paths`` (disks by path, files standing for disks) are described too."""
        self.request("discover", **({"paths": paths} if paths else {}))
        return self.receive(wire.RESULT).json()

    # ------------------------------------------------------------ ending

    def close(self) -> None:
        """Say BYE and let it exit; what it had to say on stderr stays readable."""
        with contextlib.suppress(wire.ProtocolError, OSError):
            self.channel.send_json(wire.BYE, {})
        with contextlib.suppress(OSError):
            self.process.close()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(OSError):
            self.process.close()

    def __enter__(self) -> AgentSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def discover(transport: Any, paths: list[str] | None = None) -> dict[str, Any]:
    """Run the agent's discovery on the far end of ``transport``."""
    with AgentSession.start(transport) as session:
        return session.discover(paths)


def source_facts(discovery: dict[str, Any]) -> SourceFacts:
    """The agent's discovery as the planner's SourceFacts."""
    return SourceFacts(
        hostname=discovery["hostname"],
        os=discovery.get("os", "unknown"),
        os_detail=discovery.get("os_detail", ""),
        firmware="uefi" if discovery.get("firmware") == "uefi" else "bios",
        disks=tuple(
            SourceDisk(
                name=disk["name"],
                size=int(disk["size"]),
                used=disk.get("used"),
                partition_table=disk.get("partition_table", "none"),
                filesystems=tuple(disk.get("filesystems", ())),
            )
            for disk in discovery.get("disks", ())
        ),
        nics=tuple(
            SourceNic(name=nic["name"], mac=nic["mac"], addresses=tuple(nic.get("addresses", ())))
            for nic in discovery.get("nics", ())
        ),
    )
