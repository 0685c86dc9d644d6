"""The source half of continuous replication: the files agent's ``watch`` request.

Standard-library only and Python 3.8 compatible (it ships inside the files agent). A thread reads the
inotify `Watcher` into a `SpillQueue` as fast as the kernel reports, so a slow link or a busy target
fills our queue (memory, then disk) rather than the kernel's; the request's own thread takes what is
queued, coalesces it and turns it into writer operations (see OPS in codec.py) that the orchestrator
applies on the target in the same order. A write is turned into the file's content *as it is when the
change is sent*, so ten writes in a row cost one send, and a file deleted since costs nothing (its
delete follows).

Markers in the stream, besides writer operations:

* ``(b"!", pid)`` watching has started: changes from here on are reported (the orchestrator runs its
  difference pass only after this, so nothing falls between the pass and the stream);
* ``(b"F", queued)`` the operations before it form a batch the target may apply and settle now; queued:
  the changes still waiting in our queue (a cutover waits for none to be left);
* ``(b"h", 0)`` a heartbeat when nothing happened for a second (the source is idle, the queue empty);
* ``(b"o",)`` changes were lost (the kernel's queue or ours overflowed): the stream ends; the
  orchestrator reconnects and runs a difference pass, as the reference product does when its queue is full;
* ``(b"r", pair)`` the root of a pair was renamed or deleted: the stream ends; the target copy is kept.

The orchestrator stops the stream by sending any frame; the request then answers its RESULT.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from typing import Any

from .tree import XattrReader, entry_for, join, meta_tuple, read_items
from .watch import Change, SpillQueue, Watcher, WatchError

BATCH_CHANGES = 2000  # changes taken from the queue at a time (then coalesced)
HEARTBEAT_SECONDS = 1.0
DELETE_GRACE = 0.3  # seconds a delete waits, so that a root being deleted is seen before its contents go
_BARRIERS = (b"m", b"d", b"o", b"r")


def coalesce(changes: list[Change]) -> list[tuple[Change, bool]]:
    """Each change with whether its content must be read (False: attributes only). A create, write or
    attribute change of a path that is refreshed again later in the batch, with no rename or delete in
    between, is dropped: the later one reads the current state anyway."""
    out: list[tuple[Change, bool]] = []
    later: dict[tuple[int, bytes], list] = {}  # path -> the kept record's [change, content] (mutable)
    for change in reversed(changes):
        if change.kind in _BARRIERS:
            later.clear()
            out.append((change, False))
            continue
        key = (change.pair, change.path)
        kept = later.get(key)
        content = change.kind != b"a"
        if kept is not None:
            kept[1] = kept[1] or content
            continue
        record = [change, content]
        later[key] = record
        out.append(record)  # type: ignore[arg-type]
    out.reverse()
    return [(c, bool(content)) for c, content in out]


class ChangeStream:
    """One ``watch`` request: the watcher's thread, the queue, and the conversion to operations."""

    def __init__(
        self,
        channel: Any,
        batcher: Any,
        roots: list[bytes],
        watcher: Watcher,
        queue: SpillQueue,
        block_size: int,
        retries: int,
    ) -> None:
        self.channel = channel
        self.out = batcher
        self.roots = roots
        self.watcher = watcher
        self.queue = queue
        self.block_size = block_size
        self.retries = retries
        self.lock = threading.Condition()
        self.stop = threading.Event()
        self.failure: str | None = None
        self.root_ids = [self._identity(root) for root in roots]
        self.sent = 0
        # (pair, dev, ino) -> a name of a file with other names, as this stream last sent it: a new name
        # made for it (``ln``) is linked on the target instead of travelling as a separate file
        self.linked: dict[tuple[int, int, int], bytes] = {}
        self.xattrs = XattrReader()

    @staticmethod
    def _identity(root: bytes) -> tuple[int, int] | None:
        try:
            st = os.lstat(root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _watch(self) -> None:
        while not self.stop.is_set():
            try:
                changes = self.watcher.read(0.2)
            except (WatchError, OSError) as exc:
                with self.lock:
                    self.failure = str(exc)
                    self.lock.notify()
                return
            if changes:
                with self.lock:
                    for change in changes:
                        self.queue.put(change)
                    self.lock.notify()

    def _listen(self) -> None:
        """Any frame from the orchestrator (or its going away) ends the stream."""
        with contextlib.suppress(Exception):
            self.channel.receive()
        self.stop.set()
        with self.lock:
            self.lock.notify()

    def run(self) -> dict[str, Any]:
        threads = [
            threading.Thread(target=self._watch, name="files-watch", daemon=True),
            threading.Thread(target=self._listen, name="files-watch-stop", daemon=True),
        ]
        for thread in threads:
            thread.start()
        self.out.add((b"!", os.getpid()))
        self.out.flush()
        ended = "stopped"
        try:
            while not self.stop.is_set():
                with self.lock:
                    if not len(self.queue) and not self.queue.overflowed and self.failure is None:
                        self.lock.wait(HEARTBEAT_SECONDS)
                    if self.failure is not None:
                        raise WatchError(self.failure)
                    lost = self.queue.take_overflow()
                    taken = []
                    while len(taken) < BATCH_CHANGES:
                        change = self.queue.get()
                        if change is None:
                            break
                        taken.append(change)
                if lost:
                    self.out.add((b"o",))
                    ended = "overflow"
                    break
                if not taken:
                    self.out.add((b"h", 0))
                    self.out.flush()
                    continue
                if any(change.kind == b"d" for change in taken):
                    taken += self._after_grace()
                ended = self._send(taken)
                with self.lock:
                    left = len(self.queue)
                self.out.add((b"F", left))
                self.out.flush()
                if ended != "stopped":
                    break
        finally:
            self.stop.set()
            self.out.flush()
            self.watcher.close()
            self.queue.close()
        return {"ended": ended, "sent": self.sent}

    def _after_grace(self) -> list[Change]:
        """Deletes wait DELETE_GRACE first, with what comes meanwhile: the deletes of an ``rm -rf`` of a
        root come before the root's own, and once the root is seen gone none of them is passed on."""
        self.stop.wait(DELETE_GRACE)
        more = []
        with self.lock:
            while True:
                change = self.queue.get()
                if change is None:
                    return more
                more.append(change)

    def _send(self, changes: list[Change]) -> str:
        # A folder's time moves when an entry in it is made, renamed or removed, and the target's writes
        # move the target folder's time too: the folders touched get their attributes again last.
        touched: dict[tuple[int, bytes], None] = {}
        ended = self._send_changes(changes, touched)
        for pair, folder in touched:
            self._refresh(pair, folder, False)
        return ended

    def _send_changes(self, changes: list[Change], touched: dict[tuple[int, bytes], None]) -> str:
        for change, content in coalesce(changes):
            if change.kind != b"a":
                touched[(change.pair, change.path.rpartition(b"/")[0])] = None
            if change.kind == b"m":
                touched[(change.pair, (change.old or b"").rpartition(b"/")[0])] = None
            kind = change.kind
            if kind == b"o":
                self.out.add((b"o",))
                return "overflow"
            if kind == b"r" or (kind == b"d" and self._root_gone(change.pair)):
                self.out.add((b"r", change.pair))
                return "root"
            self.sent += 1
            if kind == b"d":
                self.out.add((b"R", change.pair, change.path))
            elif kind == b"m":
                self.out.add((b"N", change.pair, change.old, change.path))
            else:
                self._refresh(change.pair, change.path, content, created=kind == b"c")
        return "stopped"

    def _root_gone(self, pair: int) -> bool:
        """A delete under a root that is no longer there (deleted, or renamed and replaced) is part of
        the root going: never passed on, so the target copy stays whole."""
        return self._identity(self.roots[pair]) != self.root_ids[pair]

    def _refresh(self, pair: int, rel: bytes, content: bool, created: bool = False) -> None:
        """The path as it is now: a folder's or link's entry, a file's attributes or its whole content."""
        full = join(self.roots[pair], rel)
        try:
            st = os.lstat(full)
            entry = entry_for(full, rel, st, True, self.xattrs)
        except OSError:
            return  # gone again: its delete (or rename) is queued behind
        meta = meta_tuple(entry.meta)
        if entry.kind == b"d":
            self.out.add((b"D", pair, rel, meta) if content else (b"A", pair, rel, meta))
        elif entry.kind == b"l":
            self.out.add((b"L", pair, rel, meta, entry.link))
        elif entry.kind == b"f" and not content:
            self.out.add((b"A", pair, rel, meta))
        elif entry.kind == b"f" and st.st_nlink > 1:
            self._send_linked(pair, rel, meta, st, created)
        elif entry.kind == b"f":
            self._send_file(pair, rel, meta, bool(entry.sparse) and stat.S_ISREG(st.st_mode))

    def _send_linked(self, pair: int, rel: bytes, meta: tuple, st: os.stat_result, created: bool) -> None:
        """A file with other names: a new name of a file this stream sent is linked to it on the target;
        content is written through the target's link, so the target's other names follow as the
        source's do (a pass links any name this stream has not seen)."""
        key = (pair, st.st_dev, st.st_ino)
        first = self.linked.get(key)
        if created and first is not None and first != rel:
            try:
                same = os.lstat(join(self.roots[pair], first)).st_ino == st.st_ino
            except OSError:
                same = False
            if same:
                self.out.add((b"H", pair, rel, first))
                self.out.add((b"A", pair, rel, meta))  # one inode: its attributes as they are now
                return
        self.linked[key] = rel
        self._send_file(pair, rel, meta, False, through=True)

    def _send_file(self, pair: int, rel: bytes, meta: tuple, sparse: bool, through: bool = False) -> None:
        begun = [False]

        def emit(piece: tuple) -> None:
            kind = piece[0]
            if kind == b"s":
                if not begun[0]:
                    begun[0] = True
                    self.out.add((b"B", pair, rel, meta, False, False, through))
                self.out.add((b"S", piece[3]))
            elif kind == b"d":
                self.out.add((b"W", piece[1], piece[2]))
            elif kind == b"e":
                self.out.add((b"E",))
            elif kind == b"f":  # a small file in one piece (tree.read_items)
                self.out.add((b"B", pair, rel, meta, False, False, through))
                self.out.add((b"S", len(piece[3])))
                self.out.add((b"W", 0, piece[3]))
                self.out.add((b"E",))

        read_items(
            self.roots, [(pair, rel, sparse, None)], emit, block_size=self.block_size, retries=self.retries
        )
