"""The files agent: walks, reads and writes trees on a source or target host for a data-only migration.

Shipped and started exactly as the disk agent is (orchestrator/mirror/agent_bundle.py: ``python3 -c
BOOTSTRAP N``, then the program), with the same framed protocol and handshake; standard-library only.
Requests (JSON REQUEST frames), each answered by batches and then one RESULT:

* ``scan`` {pairs: [[root, rule_root]], rules, xattrs} -> ENTRIES batches (codec.put_entry);
* ``read`` {roots, block_size, retries, algorithm}, then OPS batches of (pair, rel, sparse, theirs) ended
  by an empty one -> PIECES batches (see tree.read_items);
* ``hashes`` {roots, block_size, algorithm, signed}, then OPS batches of (pair, rel) -> HASHES batches of
  (pair, rel, digests[, signature]) (tree.signed_block_hashes);
* ``apply`` {roots, owners, xattrs}, then OPS batches of writer operations -> RESULT {problems, written};
* ``case`` {roots} -> RESULT {folds: whether each root ignores the case of names};
* ``watch`` {pairs, rules, memory, limit, block_size, retries} -> OPS batches of writer operations and
  markers (replicate_source.py) until the orchestrator sends any frame -> RESULT {ended, sent}.

Paths travel as hex in JSON and as bytes in batches.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import traceback
from typing import Any

from orchestrator import __version__ as AGENT_VERSION
from orchestrator.files import codec
from orchestrator.files.rules import RuleSet, make_rule
from orchestrator.files.tree import (
    Applier,
    TreeWriter,
    join,
    problem_text,
    read_items,
    scan,
    signed_block_hashes,
)
from orchestrator.mirror import protocol as wire


def log(message: str) -> None:
    sys.stderr.write(f"hvmigrate files agent on {wire.this_host()}: {message}\n")
    sys.stderr.flush()


def unhex(value: str) -> bytes:
    return bytes.fromhex(value)


def rules_from(request: dict[str, Any]) -> RuleSet:
    return RuleSet(make_rule(unhex(p), bool(inc), bool(rec)) for p, inc, rec in request["rules"])


class SendingThread:
    """Sends frames on a thread of its own, so the agent reads files (or walks) while the previous batch is
    still crossing the pipe or the SSH channel; at most ``depth`` batches wait, so memory stays bounded."""

    def __init__(self, channel: wire.FrameChannel, depth: int = 8) -> None:
        self.channel = channel
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="files-agent-send", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            frame = self.queue.get()
            if frame is None:
                return
            if self.error is None:
                try:
                    self.channel.send(frame[0], *frame[1])
                except BaseException as exc:  # raised on the agent's main thread by the next send
                    self.error = exc

    def send(self, frame_type: int, *parts: Any) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((frame_type, parts))

    def close(self) -> None:
        """Wait until every queued frame went (the RESULT that follows must come after them)."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


class FilesAgent:
    def __init__(self, channel: wire.FrameChannel) -> None:
        self.channel = channel

    def serve(self) -> int:
        channel = self.channel
        mine = wire.hello(wire.this_host(), AGENT_VERSION, role="files-agent")
        channel.send_json(wire.HELLO, mine)
        try:
            frame = channel.receive()
        except wire.StreamClosed:
            return 0
        if frame.type != wire.HELLO or frame.json().get("protocol") != wire.PROTOCOL_VERSION:
            self._error(wire.version_mismatch(mine, frame.json()) if frame.type == wire.HELLO else "no HELLO")
            return 3
        while True:
            try:
                frame = channel.receive()
            except wire.StreamClosed:
                return 0
            if frame.type == wire.BYE:
                return 0
            request = frame.json()
            op = request.pop("op", None)
            try:
                handler = getattr(self, f"op_{op}", None)
                if handler is None:
                    raise ValueError(f"unknown request {op!r}: this files agent is {AGENT_VERSION}")
                channel.send_json(wire.RESULT, handler(request))
            except Exception as exc:
                traceback.print_exc()
                self._error(f"files agent failure in {op}: {type(exc).__name__}: {exc}")
                return 1

    def _error(self, message: str) -> None:
        with contextlib.suppress(wire.StreamClosed):
            self.channel.send_json(
                wire.ERROR, {"message": message, "kind": "MirrorError", "retryable": False}
            )

    def _batches(self) -> Any:
        """The OPS batches the orchestrator streams after a request, up to the empty one."""
        while True:
            frame = self.channel.receive()
            if frame.type != codec.OPS:
                raise wire.ProtocolError(f"expected OPS, got {frame.name}")
            if not frame.payload:
                return
            yield from codec.decode(frame.payload)

    def op_scan(self, request: dict[str, Any]) -> dict[str, Any]:
        rules = rules_from(request)
        sender = SendingThread(self.channel)
        out = codec.EntryBatcher(sender)
        problems: list = []
        try:
            for index, (root, rule_root) in enumerate(request["pairs"]):
                for entry in scan(
                    unhex(root), rules, unhex(rule_root), xattrs=request["xattrs"], problems=problems
                ):
                    out.add(index, entry)
            out.flush()
        finally:
            sender.close()
        return {"problems": [[p.path.hex(), p.message] for p in problems]}

    def op_read(self, request: dict[str, Any]) -> dict[str, Any]:
        roots = [unhex(r) for r in request["roots"]]
        items = list(self._batches())
        sender = SendingThread(self.channel)
        out = codec.Batcher(sender, codec.PIECES)
        try:
            read_items(
                roots,
                items,
                out.add,
                block_size=request["block_size"],
                retries=request["retries"],
                algorithm=request["algorithm"],
            )
            out.flush()
        finally:
            sender.close()
        return {}

    def op_hashes(self, request: dict[str, Any]) -> dict[str, Any]:
        roots = [unhex(r) for r in request["roots"]]
        out = codec.Batcher(self.channel, codec.HASHES)
        problems = []
        signed = request.get("signed")
        for pair, rel in list(self._batches()):
            try:
                signature, digests = signed_block_hashes(
                    join(roots[pair], rel), request["block_size"], request["algorithm"]
                )
                out.add((pair, rel, tuple(digests), signature) if signed else (pair, rel, tuple(digests)))
            except OSError as exc:
                problems.append([pair, rel.hex(), problem_text(exc)])
        out.flush()
        return {"problems": problems}

    def op_apply(self, request: dict[str, Any]) -> dict[str, Any]:
        writers = [
            TreeWriter(
                unhex(r),
                owners=request["owners"],
                xattrs=request["xattrs"],
                durable=request.get("durable", True),
            )
            for r in request["roots"]
        ]
        applier = Applier(writers)
        try:
            for op in self._batches():
                applier.apply(op)
        finally:
            applier.finish()
        return {"problems": [[p, r.hex(), m] for p, r, m in applier.problems], "written": applier.written}

    def op_case(self, request: dict[str, Any]) -> dict[str, Any]:
        """Whether each target root ignores the case of names (case.py)."""
        from orchestrator.files.case import folds

        return {"folds": [folds(unhex(r)) for r in request["roots"]]}

    def op_watch(self, request: dict[str, Any]) -> dict[str, Any]:
        """Continuous replication's source half: stream changes until told to stop (replicate_source.py)."""
        from orchestrator.files.replicate_source import ChangeStream
        from orchestrator.files.watch import SpillQueue, Watcher

        pairs = [(unhex(root), unhex(rule_root)) for root, rule_root in request["pairs"]]
        watcher = Watcher([p[0] for p in pairs], rules_from(request), [p[1] for p in pairs])
        queue = SpillQueue(memory=request["memory"], limit=request["limit"])
        stream = ChangeStream(
            self.channel,
            codec.Batcher(self.channel, codec.OPS),
            [p[0] for p in pairs],
            watcher,
            queue,
            request["block_size"],
            request["retries"],
        )
        return stream.run()


def main() -> int:
    return wire.serve_stdio(lambda channel: FilesAgent(channel).serve(), log)


if __name__ == "__main__":
    sys.exit(main())
