"""One files-and-folders pass: scan both ends, compare, send what differs, handle orphans, report.

Each end is a `Tree`: `LocalTree` calls orchestrator/files/tree.py in-process (an end on this machine),
`RemoteTree` asks a files agent (over SSH or a pipe) to run the very same code there. A pass is a list
of writer operations computed from the two scans, so a change stream (inotify, later) can feed the same
writer operations without a scan. Compare modes are the reference product's four:

* ``none``: every file sent whole;
* ``attributes``: size or time differ -> the whole file; only mode, owner or xattrs differ -> those only;
* ``attributes_then_delta``: size or time differ -> only the blocks whose digests differ;
* ``full_data``: every file's blocks compared, whatever its attributes say.
"""

from __future__ import annotations

import contextlib
import datetime
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from orchestrator.mirror import protocol as wire
from orchestrator.mirror.agent_session import AgentSession
from orchestrator.mirror.hashing import available_algorithms, negotiate_algorithm

from . import case, codec
from .bundle import files_agent_program
from .rules import RuleSet
from .tree import (
    Applier,
    Entry,
    TreeWriter,
    join,
    meta_tuple,
    new_entry,
    read_items,
    scan,
    signed_block_hashes,
)

COMPARE_MODES = ("none", "attributes", "attributes_then_delta", "full_data")


@dataclass(frozen=True)
class Pair:
    """A source folder and the target folder it is copied into."""

    source: bytes
    target: bytes


def pairs_for(
    rules: RuleSet, mapping: str, server: str, target_path: str | None, paths: Iterable
) -> list[Pair]:
    """The root pairs of a set: its outermost include anchors, placed as the path mapping says."""
    custom = sorted(((p.source.encode(), p.target.encode()) for p in paths), key=lambda p: -len(p[0]))
    out = []
    for top in rules.tops():
        if mapping == "one_to_one":
            out.append(Pair(top, top))
        elif mapping == "all_to_one":
            assert target_path is not None
            out.append(Pair(top, target_path.encode().rstrip(b"/") + b"/" + server.encode() + top))
        else:
            for source, target in custom:
                if top == source or top.startswith(source.rstrip(b"/") + b"/"):
                    out.append(Pair(top, target + top[len(source) :]))
                    break
            else:
                raise ValueError(f"no paths entry maps {top.decode(errors='replace')} (mapping: custom)")
    return out


# ---------------------------------------------------------------- ends


class LocalTree:
    """An end on this machine."""

    name = "local"

    def __init__(self, *, after_read: Callable | None = None) -> None:
        self.after_read = after_read  # tests: change a file between its read and the check
        self.algorithms = available_algorithms()

    def scan(self, pairs: list[tuple[bytes, bytes]], rules: RuleSet, xattrs: bool) -> tuple[list, list]:
        entries: list[tuple[int, Entry]] = []
        problems: list = []
        for index, (root, rule_root) in enumerate(pairs):
            entries.extend((index, e) for e in scan(root, rules, rule_root, xattrs=xattrs, problems=problems))
        return entries, [(p.path, p.message) for p in problems]

    def read(
        self, roots: list[bytes], items: list, emit: Callable, block_size: int, retries: int, algorithm: str
    ) -> None:
        read_items(
            roots,
            items,
            emit,
            block_size=block_size,
            retries=retries,
            after_read=self.after_read,
            algorithm=algorithm,
        )

    def hashes(
        self, roots: list[bytes], items: list, block_size: int, algorithm: str
    ) -> dict[tuple[int, bytes], list]:
        signed = _signed_hashes(roots, items, block_size, algorithm)
        return {key: digests for key, (_, digests) in signed.items()}

    def signed_hashes(
        self, roots: list[bytes], items: list, block_size: int, algorithm: str
    ) -> dict[tuple[int, bytes], tuple]:
        return _signed_hashes(roots, items, block_size, algorithm)

    def applier(self, roots: list[bytes], owners: bool, xattrs: bool, durable: bool = True) -> Any:
        writers = [TreeWriter(r, owners=owners, xattrs=xattrs, durable=durable) for r in roots]
        return _LocalApply(Applier(writers))

    def case_folds(self, roots: list[bytes]) -> list[bool]:
        return [case.folds(r) for r in roots]

    def close(self) -> None:
        pass


def _signed_hashes(
    roots: list[bytes], items: list, block_size: int, algorithm: str
) -> dict[tuple[int, bytes], tuple]:
    """Each file's (signature, block digests) (tree.signed_block_hashes); a file that cannot be read is
    left out."""
    out = {}
    for pair, rel in items:
        with contextlib.suppress(OSError):
            out[(pair, rel)] = signed_block_hashes(join(roots[pair], rel), block_size, algorithm)
    return out


class _LocalApply:
    def __init__(self, applier: Applier) -> None:
        self._applier = applier

    def __call__(self, op: tuple) -> None:
        self._applier.apply(op)

    def finish(self) -> tuple[list, int]:
        self._applier.finish()
        return self._applier.problems, self._applier.written


def _hex(value: bytes) -> str:
    return value.hex()


class RemoteTree:
    """An end reached through a files agent (SSH or a local pipe); one request at a time."""

    def __init__(self, transport: Any) -> None:
        self.session = AgentSession.start(transport, program=files_agent_program())
        self.name = self.session.where
        self.algorithms = self.session.info.hashes

    def _ops(self, items: Iterable[tuple]) -> None:
        batch = codec.Batcher(self.session.channel, codec.OPS)
        for item in items:
            batch.add(item)
        batch.flush()
        self.session.channel.send(codec.OPS)

    def _stream(self, frame_type: int) -> Iterator[tuple]:
        while True:
            frame = self.session.receive(frame_type, wire.RESULT)
            if frame.type == wire.RESULT:
                self.result = frame.json()
                return
            yield from codec.decode(frame.payload)

    def scan(self, pairs: list[tuple[bytes, bytes]], rules: RuleSet, xattrs: bool) -> tuple[list, list]:
        self.session.request(
            "scan",
            pairs=[[_hex(a), _hex(b)] for a, b in pairs],
            rules=[[_hex(r.path), r.include, r.recursive] for r in rules.rules],
            xattrs=xattrs,
        )
        entries: list[tuple[int, Entry]] = []
        while True:
            frame = self.session.receive(codec.ENTRIES, wire.RESULT)
            if frame.type == wire.RESULT:
                break
            entries.extend(codec.decode_entries(frame.payload, new_entry))
        problems = frame.json()["problems"]
        return entries, [(bytes.fromhex(p), m) for p, m in problems]

    def read(
        self, roots: list[bytes], items: list, emit: Callable, block_size: int, retries: int, algorithm: str
    ) -> None:
        self.session.request(
            "read",
            roots=[_hex(r) for r in roots],
            block_size=block_size,
            retries=retries,
            algorithm=algorithm,
        )
        self._ops(
            (p, rel, sparse, tuple(theirs) if theirs is not None else None, plan)
            for p, rel, sparse, theirs, plan in items
        )
        for piece in self._stream(codec.PIECES):
            emit(piece)

    def hashes(
        self, roots: list[bytes], items: list, block_size: int, algorithm: str
    ) -> dict[tuple[int, bytes], list]:
        self.session.request(
            "hashes", roots=[_hex(r) for r in roots], block_size=block_size, algorithm=algorithm
        )
        self._ops(items)
        return {(p, rel): list(digests) for p, rel, digests in self._stream(codec.HASHES)}

    def signed_hashes(
        self, roots: list[bytes], items: list, block_size: int, algorithm: str
    ) -> dict[tuple[int, bytes], tuple]:
        self.session.request(
            "hashes", roots=[_hex(r) for r in roots], block_size=block_size, algorithm=algorithm, signed=True
        )
        self._ops(items)
        return {(p, rel): (sig, list(digests)) for p, rel, digests, sig in self._stream(codec.HASHES)}

    def applier(self, roots: list[bytes], owners: bool, xattrs: bool, durable: bool = True) -> Any:
        self.session.request(
            "apply", roots=[_hex(r) for r in roots], owners=owners, xattrs=xattrs, durable=durable
        )
        return _RemoteApply(self)

    def case_folds(self, roots: list[bytes]) -> list[bool]:
        self.session.request("case", roots=[_hex(r) for r in roots])
        return [bool(f) for f in self.session.receive(wire.RESULT).json()["folds"]]

    def close(self) -> None:
        self.session.close()


class _RemoteApply:
    def __init__(self, tree: RemoteTree) -> None:
        self.tree = tree
        self.batch = codec.Batcher(tree.session.channel, codec.OPS)

    def __call__(self, op: tuple) -> None:
        self.batch.add(op)

    def finish(self) -> tuple[list, int]:
        self.batch.flush()
        self.tree.session.channel.send(codec.OPS)
        result = self.tree.session.receive(wire.RESULT).json()
        return [(p, bytes.fromhex(r), m) for p, r, m in result["problems"]], int(result["written"])


# ---------------------------------------------------------------- the pass


@dataclass
class Difference:
    path: str
    reason: str
    source_mtime: str | None
    target_mtime: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PassResult:
    files: int = 0
    folders: int = 0
    links: int = 0
    hardlinks: int = 0
    bytes_total: int = 0  # size of the set's files on the source (each name of a hard link counted)
    files_sent: int = 0
    attributes_only: int = 0
    bytes_sent: int = 0
    orphans: list[str] = field(default_factory=list)
    orphan_action: str = "keep"
    problems: list[dict[str, str]] = field(default_factory=list)  # path, message: logged, pass went on
    unstable: list[str] = field(default_factory=list)  # kept changing while read: the next pass sends again
    differences: list[Difference] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "differences"}
        out["differences"] = [d.to_json() for d in self.differences]
        return out


def shown(path: bytes) -> str:
    """A path for logs and reports: invalid UTF-8 bytes as \\xNN, a newline as \\n."""
    return path.decode("utf-8", "backslashreplace").replace("\n", "\\n")


def utc(ns: int | None) -> str | None:
    if ns is None:
        return None
    moment = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Options:
    compare: str = "attributes_then_delta"
    orphans: str = "delete"
    orphans_path: bytes | None = None
    block_size: int = 128 * 1024
    xattrs: bool = True
    owners: bool = True
    retries: int = 3
    durable: bool = True  # one syncfs of each target filesystem before the pass reports done
    target_case: str = "auto"  # auto (probe each target root), sensitive, insensitive: see case.py

    @classmethod
    def from_data(cls, data: Any, compare: str | None = None) -> Options:
        """A server's ``data:`` settings (the passes and `migrate replicate` read the same ones)."""
        return cls(
            compare=compare or data.compare,
            orphans=data.orphans,
            orphans_path=data.orphans_path.encode() if data.orphans_path else None,
            block_size=data.block_size,
            xattrs=data.xattrs,
            owners=data.owners,
            retries=data.retries,
            target_case=data.target_case,
        )


def _meta_differs(a: Entry, b: Entry, options: Options) -> bool:
    alike = a.mode == b.mode and a.mtime_ns == b.mtime_ns and a.uid == b.uid and a.gid == b.gid
    if alike and (a.xattrs == b.xattrs or not options.xattrs or a.xattrs is None):
        return False  # the common case, decided in one test
    if stat.S_IMODE(a.mode) != stat.S_IMODE(b.mode) or a.mtime_ns != b.mtime_ns:
        return True
    if options.owners and (a.uid, a.gid) != (b.uid, b.gid):
        return True
    return options.xattrs and a.xattrs is not None and (a.xattrs or ()) != (b.xattrs or ())


def mirror_pass(
    source: Any,
    target: Any,
    pairs: list[Pair],
    rules: RuleSet,
    options: Options,
    *,
    verify_only: bool = False,
) -> PassResult:
    """Make the target hold what the source holds under the rules (or, ``verify_only``, list what differs)."""
    result = PassResult(orphan_action=options.orphans)
    src_pairs = [(p.source, p.source) for p in pairs]
    dst_pairs = [(p.target, p.source) for p in pairs]
    scanned: dict[str, Any] = {}

    def scan_target() -> None:
        try:
            scanned["target"] = target.scan(dst_pairs, rules, options.xattrs)
        except BaseException as exc:  # re-raised below, on the caller's thread
            scanned["error"] = exc

    thread = threading.Thread(target=scan_target, name="scan-target")
    thread.start()
    src_entries, src_problems = source.scan(src_pairs, rules, options.xattrs)
    thread.join()
    if "error" in scanned:
        raise scanned["error"]
    dst_entries, _ = scanned["target"]
    for path, message in src_problems:
        result.problems.append({"path": shown(path), "message": message})

    theirs: dict[tuple[int, bytes], Entry] = {(i, e.path): e for i, e in dst_entries}
    case_renames = _match_case(target, pairs, options, result, verify_only, src_entries, theirs)
    if case_renames is not None:
        src_entries, theirs, case_renames = case_renames
    ours: set[tuple[int, bytes]] = set()
    ops: list[tuple] = []  # folders, links, attribute updates, removals: in scan order (parents first)
    sends: list[tuple[int, bytes, bool, bool]] = []  # (pair, rel, sparse, delta)
    followers: list[tuple[int, bytes, bytes]] = []
    first_of: dict[tuple[int, int, int], bytes] = {}
    target_ino_of: dict[tuple[int, bytes], int] = {}
    full = options.compare == "full_data"
    for index, entry in src_entries:
        key = (index, entry.path)
        ours.add(key)
        mine = theirs.get(key)
        kind = entry.kind
        if kind == b"o":
            result.problems.append(
                {
                    "path": shown(join(pairs[index].source, entry.path)),
                    "message": "not a file, folder or link (a fifo, socket or device): skipped",
                }
            )
            continue
        if mine is not None and mine.kind != kind and kind != b"d":
            if verify_only:
                result.differences.append(_diff(pairs, index, entry, mine, "type differs"))
                continue
            ops.append((b"R", index, entry.path))  # a folder where the source now has a file or link
            mine = None
        if kind == b"d":
            result.folders += entry.member
            if mine is None or mine.kind != b"d" or _meta_differs(entry, mine, options):
                if verify_only:
                    result.differences.append(_diff(pairs, index, entry, mine, "folder differs"))
                else:
                    ops.append((b"D", index, entry.path, meta_tuple(entry.meta)))
            continue
        if kind == b"l":
            result.links += 1
            if (
                mine is None
                or mine.link != entry.link
                or (options.owners and (mine.uid, mine.gid) != (entry.uid, entry.gid))
            ):
                if verify_only:
                    result.differences.append(_diff(pairs, index, entry, mine, "link differs"))
                else:
                    ops.append((b"L", index, entry.path, meta_tuple(entry.meta), entry.link))
            continue
        result.files += 1
        result.bytes_total += entry.size
        if entry.nlink > 1:
            group = (index, entry.dev, entry.ino)
            first = first_of.get(group)
            if first is not None:
                result.hardlinks += 1
                followers.append((index, entry.path, first))
                continue
            first_of[group] = entry.path
            if mine is not None:
                target_ino_of[(index, entry.path)] = mine.ino
        if mine is None or options.compare == "none":
            sends.append((index, entry.path, entry.sparse, False))
            if verify_only:
                result.differences.append(_diff(pairs, index, entry, mine, "missing on the target"))
            continue
        same_content = mine.size == entry.size and mine.mtime_ns == entry.mtime_ns
        if full or not same_content:
            # A file of one block is sent whole when it differs: its digest would cost a read on each
            # end and a round trip to save nothing. full_data must still compare same-looking files.
            use_delta = (
                options.compare in ("attributes_then_delta", "full_data")
                and not entry.sparse
                and (same_content or (entry.size > options.block_size and mine.size > options.block_size))
            )
            sends.append((index, entry.path, entry.sparse, use_delta))
        elif _meta_differs(entry, mine, options):
            if verify_only:
                result.differences.append(_diff(pairs, index, entry, mine, "attributes differ"))
            else:
                ops.append((b"A", index, entry.path, meta_tuple(entry.meta)))
                result.attributes_only += 1

    orphans = sorted(
        (key for key, e in theirs.items() if key not in ours and e.member and e.path),
        key=lambda key: -key[1].count(b"/"),
    )
    for index, rel in orphans:
        result.orphans.append(shown(join(pairs[index].target, rel)))
        if verify_only:
            result.differences.append(
                Difference(
                    shown(join(pairs[index].target, rel)),
                    "orphan on the target",
                    None,
                    utc(theirs[(index, rel)].mtime_ns),
                )
            )
    src_by_key = {(i, e.path): e for i, e in src_entries}
    roots_src = [p.source for p in pairs]
    roots_dst = [p.target for p in pairs]

    if verify_only:
        for index, rel, first in followers:  # another name of one file: the same file on the target too
            mine, linked = theirs.get((index, rel)), theirs.get((index, first))
            if mine is None or linked is None or mine.ino != linked.ino:
                result.differences.append(
                    _diff(pairs, index, src_by_key[(index, rel)], mine, "hard link differs")
                )
        _verify_contents(source, target, pairs, sends, src_by_key, theirs, options, result)
        return result

    ops += _parents_to_retime(ops, sends, followers, orphans, src_by_key)

    # Delta and full-data sends need the target's block digests first.
    delta_items = [(i, rel) for i, rel, _, delta in sends if delta]
    algorithm = negotiate_algorithm(source.algorithms, target.algorithms)
    digests, plans = _delta_digests(source, target, roots_src, roots_dst, delta_items, options, algorithm)

    apply = target.applier(roots_dst, options.owners, options.xattrs, options.durable)
    for index, old, new in case_renames or ():
        apply((b"N", index, old, new))
    for op in ops:
        apply(op)
    state: dict[str, Any] = {"current": None}

    def on_piece(piece: tuple) -> None:
        kind = piece[0]
        if kind == b"d":
            result.bytes_sent += len(piece[2])
            apply((b"W", piece[1], piece[2]))
        elif kind == b"f":
            _, index, rel, data = piece
            key = (index, rel)
            result.files_sent += 1
            result.bytes_sent += len(data)
            apply((b"F", index, rel, meta_tuple(src_by_key[key].meta), data, key not in theirs))
        elif kind == b"s":
            _, index, rel, size = piece
            key = (index, rel)
            if state["current"] != key:
                state["current"] = key
                entry = src_by_key[key]
                apply((b"B", index, rel, meta_tuple(entry.meta), key in digests, key not in theirs))
                result.files_sent += 1
            apply((b"S", size))
        elif kind == b"e":
            if not piece[1]:
                index, rel = state["current"]
                result.unstable.append(shown(join(pairs[index].source, rel)))
            apply((b"E",))
            state["current"] = None
        elif kind == b"x":
            _, index, rel, message = piece
            result.problems.append(
                {"path": shown(join(pairs[index].source, rel)), "message": message.decode()}
            )

    items = [
        (i, rel, sparse, digests.get((i, rel)) if delta else None, plans.get((i, rel)))
        for i, rel, sparse, delta in sends
    ]
    if items:
        pipelined_read(source, roots_src, items, on_piece, options, algorithm)
    for index, rel, first in followers:
        apply((b"H", index, rel, first))
    if options.orphans == "delete":
        for index, rel in orphans:
            apply((b"O", index, rel))
    elif options.orphans == "move":
        assert options.orphans_path is not None
        for index, rel in orphans:
            apply((b"M", index, rel, options.orphans_path + join(pairs[index].target, rel)))
    problems, _ = apply.finish()
    for index, rel, message in problems:
        result.problems.append({"path": shown(join(pairs[index].target, rel)), "message": message})
    return result


def _match_case(
    target: Any,
    pairs: list[Pair],
    options: Options,
    result: PassResult,
    verify_only: bool,
    src_entries: list,
    theirs: dict,
) -> tuple[list, dict, list] | None:
    """On a target that ignores case (case.py): the source's entries without names that differ only by
    case (each reported), the target's entries under the source's spelling, and the case renames to make
    (listed as differences by a verification). None where every target root keeps case."""
    if options.target_case == "sensitive":
        return None
    if options.target_case == "insensitive":
        folded = [True] * len(pairs)
    else:
        folded = target.case_folds([p.target for p in pairs])
    if not any(folded):
        return None
    kept, remapped, renames, collisions = case.match(src_entries, theirs, folded)
    for index, path, first in collisions:
        result.problems.append(
            {
                "path": shown(join(pairs[index].source, path)),
                "message": f"differs only by case from {shown(first)} and the target ignores case: skipped, "
                "not merged (rename one of them on the source)",
            }
        )
    if verify_only:
        for index, old, new in renames:
            result.differences.append(
                Difference(
                    shown(join(pairs[index].source, new)), f"named {shown(old)} on the target", None, None
                )
            )
        renames = []
    return kept, remapped, renames


def _parents_to_retime(
    ops: list[tuple], sends: list, followers: list, orphans: list, src_by_key: dict
) -> list[tuple]:
    """Folder operations for the folders this pass changes inside (a file created or replaced by a
    rename, a link made, an entry removed) whose own attributes matched: changing an entry changes its
    folder's time, and the writer sets a folder's time last only for the folders it was given."""
    given = {(op[1], op[2]) for op in ops if op[0] == b"D"}
    touched = [(op[1], op[2]) for op in ops if op[0] in (b"L", b"R")]
    touched += [(i, rel) for i, rel, _, _ in sends] + [(i, rel) for i, rel, _ in followers] + orphans
    out = []
    for index, rel in touched:
        parent = (index, rel.rpartition(b"/")[0])
        folder = src_by_key.get(parent)
        if parent not in given and folder is not None and folder.kind == b"d":
            given.add(parent)
            out.append((b"D", index, parent[1], meta_tuple(folder.meta)))
    return out


def _delta_digests(
    source: Any,
    target: Any,
    roots_src: list[bytes],
    roots_dst: list[bytes],
    items: list[tuple[int, bytes]],
    options: Options,
    algorithm: str,
) -> tuple[dict, dict]:
    """The target's block digests of the files a delta updates, and the blocks to read of each.

    Both ends hash at the same time (each on its own host, or its own thread here) instead of the source
    hashing as it reads, after the target is done: the pass then costs the longer of the two instead of
    their sum. The plan of a file is the signature its source copy had while hashed and the blocks that
    differed; a file that changed since is compared block by block as it is read, as before."""
    if not items:
        return {}, {}
    got: dict[str, Any] = {}

    def target_side() -> None:
        try:
            got["digests"] = target.hashes(roots_dst, items, options.block_size, algorithm)
        except BaseException as exc:  # re-raised below, on the caller's thread
            got["error"] = exc

    thread = threading.Thread(target=target_side, name="hash-target")
    thread.start()
    try:
        signed = source.signed_hashes(roots_src, items, options.block_size, algorithm)
    finally:
        thread.join()
    if "error" in got:
        raise got["error"]
    digests = got["digests"]
    plans = {}
    for key, (signature, mine) in signed.items():
        theirs = digests.get(key)
        if signature is None or theirs is None:
            continue
        blocks = tuple(i for i, digest in enumerate(mine) if i >= len(theirs) or digest != theirs[i])
        plans[key] = (tuple(signature), blocks)
    return digests, plans


class _Stopped(Exception):
    """The writing side failed: the reading side stops too."""


PIPE_BATCHES = 16  # batches of read pieces in flight between the reading and the writing thread
PIPE_PIECES = 512
PIPE_BYTES = 1024 * 1024


def pipelined_read(
    source: Any, roots: list[bytes], items: list, on_piece: Callable, options: Options, algorithm: str
) -> None:
    """Read on a thread of its own while this one writes: the source's reads (or the agent's frames
    arriving), the wire and the target's writes overlap instead of taking turns. Pieces cross in
    batches (one queue operation per ~PIPE_PIECES pieces or ~PIPE_BYTES), at most PIPE_BATCHES at a time,
    so memory stays bounded whatever the tree."""
    pipe: queue.Queue = queue.Queue(maxsize=PIPE_BATCHES)
    stop = threading.Event()
    batch: list[tuple] = []
    held = [0]

    def emit(piece: tuple) -> None:
        batch.append(piece)
        if piece[0] == b"d":
            held[0] += len(piece[2])
        if len(batch) >= PIPE_PIECES or held[0] >= PIPE_BYTES:
            hand_over()

    def hand_over() -> None:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                pipe.put(batch.copy(), timeout=0.5)
                break
        if stop.is_set():
            raise _Stopped()
        batch.clear()
        held[0] = 0

    def produce() -> None:
        try:
            source.read(roots, items, emit, options.block_size, options.retries, algorithm)
            if batch:
                hand_over()
            pipe.put(None)
        except _Stopped:
            pass
        except BaseException as exc:  # re-raised on the writing thread
            pipe.put(exc)

    reader = threading.Thread(target=produce, name="files-read", daemon=True)
    reader.start()
    try:
        while True:
            got = pipe.get()
            if got is None:
                break
            if isinstance(got, BaseException):
                raise got
            for piece in got:
                on_piece(piece)
    except BaseException:
        stop.set()
        raise
    finally:
        reader.join()


def _diff(pairs: list[Pair], index: int, entry: Entry, mine: Entry | None, reason: str) -> Difference:
    return Difference(
        shown(join(pairs[index].source, entry.path)),
        reason,
        utc(entry.mtime_ns),
        utc(mine.mtime_ns) if mine is not None else None,
    )


def _verify_contents(
    source: Any,
    target: Any,
    pairs: list[Pair],
    sends: list,
    src_by_key: dict,
    theirs: dict,
    options: Options,
    result: PassResult,
) -> None:
    """The files whose content must be compared: missing ones were listed; the rest compared by blocks."""
    present = [(i, rel) for i, rel, _, _ in sends if (i, rel) in theirs]
    if not present:
        return
    algorithm = negotiate_algorithm(source.algorithms, target.algorithms)
    mine = target.hashes([p.target for p in pairs], present, options.block_size, algorithm)
    yours = source.hashes([p.source for p in pairs], present, options.block_size, algorithm)
    for key in present:
        entry, other = src_by_key[key], theirs[key]
        if mine.get(key) != yours.get(key) or entry.size != other.size:
            result.differences.append(_diff(pairs, key[0], entry, other, "content differs"))
        elif entry.mtime_ns != other.mtime_ns:
            result.differences.append(_diff(pairs, key[0], entry, other, "time differs"))
