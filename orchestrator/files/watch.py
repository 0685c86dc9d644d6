"""Change notification for continuous replication of a files-and-folders set: Linux inotify through ctypes.

Standard-library only and Python 3.8 compatible, because it ships inside the files agent, which may not
have dependencies (no watchdog). A `Watcher` puts a watch on every folder of the set (and on the folders
a rule below them needs) and turns the kernel's events into `Change` records in the order they happened:

* ``c`` created, ``w`` written (closed after writing), ``a`` attributes changed, ``d`` deleted;
* ``m`` renamed inside the set (``IN_MOVED_FROM`` and ``IN_MOVED_TO`` paired by their cookie); a rename
  out of the set is a ``d``, into it a ``c`` (a folder moved in is walked: its entries come as ``c``);
* ``o`` overflow: the kernel's queue (or ours, see `SpillQueue`) lost events, so only a difference pass
  can tell what changed;
* ``r`` a root of the set was renamed or deleted. The target copy must never be deleted for that (the
  reference product's rule): the replicator stops applying changes for that root and says so.

Paths are bytes relative to their root pair, as everywhere in the files code.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import os
import select
import struct
import tempfile
from typing import Any, NamedTuple

from .rules import RuleSet

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

WATCHED = (
    IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len


class Change(NamedTuple):
    kind: bytes  # c, w, a, d, m, o, r (see the module docstring)
    pair: int
    path: bytes  # relative to the pair's root; the new name for m
    old: bytes | None = None  # m: the name it had


class WatchError(Exception):
    pass


def _libc() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


class Watcher:
    """Watches every folder of the set under each root pair; `read` returns what happened, in order."""

    def __init__(self, roots: list[bytes], rules: RuleSet, rule_roots: list[bytes]) -> None:
        self.libc = _libc()
        self.fd = self.libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise WatchError(f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        self.roots = roots
        self.rules = rules
        self.rule_roots = rule_roots
        self.folders: dict[int, tuple[int, bytes]] = {}  # wd -> (pair, folder relative to its root)
        self.by_folder: dict[tuple[int, bytes], int] = {}
        self.moves: dict[int, tuple[int, bytes, bool]] = {}  # cookie -> (pair, old path, is a folder)
        for pair in range(len(roots)):
            self._watch_tree(pair, b"", None)

    # ------------------------------------------------------------ watches

    def _full(self, pair: int, rel: bytes) -> bytes:
        return self.roots[pair] + b"/" + rel if rel else self.roots[pair]

    def _member(self, pair: int, rel: bytes) -> bool:
        rule_path = self.rule_roots[pair] + b"/" + rel if rel else self.rule_roots[pair]
        return self.rules.included(rule_path)

    def _walks(self, pair: int, rel: bytes) -> bool:
        rule_path = self.rule_roots[pair] + b"/" + rel if rel else self.rule_roots[pair]
        return self.rules.must_walk(rule_path)

    def _add(self, pair: int, rel: bytes) -> bool:
        wd = self.libc.inotify_add_watch(self.fd, self._full(pair, rel), WATCHED)
        if wd < 0:
            code = ctypes.get_errno()
            if code in (errno.ENOENT, errno.ENOTDIR):
                return False  # gone again already: its delete event follows
            if code == errno.ENOSPC:
                raise WatchError(
                    "no inotify watches left (fs.inotify.max_user_watches): raise it with sysctl"
                )
            raise WatchError(f"inotify_add_watch {self._full(pair, rel)!r}: {os.strerror(code)}")
        self.folders[wd] = (pair, rel)
        self.by_folder[(pair, rel)] = wd
        return True

    def _watch_tree(self, pair: int, rel: bytes, created: list[Change] | None) -> None:
        """Watch a folder and every folder below it that the set reaches. ``created`` (None at start)
        receives a ``c`` for each member entry found below ``rel``: a folder moved in, or created and
        filled before its watch was in place."""
        stack = [rel]
        while stack:
            folder = stack.pop()
            if not self._walks(pair, folder) or not self._add(pair, folder):
                continue
            try:
                listing = list(os.scandir(self._full(pair, folder)))
            except OSError:
                continue
            for entry in listing:
                child = folder + b"/" + entry.name if folder else entry.name
                if created is not None and self._member(pair, child):
                    created.append(Change(b"c", pair, child))
                if entry.is_dir(follow_symlinks=False):
                    stack.append(child)

    def _forget_tree(self, pair: int, rel: bytes) -> None:
        prefix = rel + b"/"
        for key in [k for k in self.by_folder if k[0] == pair and (k[1] == rel or k[1].startswith(prefix))]:
            wd = self.by_folder.pop(key)
            self.folders.pop(wd, None)
            self.libc.inotify_rm_watch(self.fd, wd)

    def _rename_tree(self, pair: int, old: bytes, new: bytes) -> None:
        prefix = old + b"/"
        for key in [k for k in self.by_folder if k[0] == pair and (k[1] == old or k[1].startswith(prefix))]:
            wd = self.by_folder.pop(key)
            moved = new + key[1][len(old) :]
            self.folders[wd] = (pair, moved)
            self.by_folder[(pair, moved)] = wd

    # ------------------------------------------------------------ events

    def fileno(self) -> int:
        return self.fd

    def read(self, timeout: float = 0.0) -> list[Change]:
        """The changes the kernel has for us, waiting up to ``timeout`` seconds for the first."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return self._expire_moves()
        out: list[Change] = []
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = data[offset : offset + length].rstrip(b"\0")
                offset += length
                self._event(wd, mask, cookie, name, out)
        return out + self._expire_moves()

    def _expire_moves(self) -> list[Change]:
        """A rename whose other half never came left the set: the old name is gone."""
        out = [Change(b"d", pair, old) for pair, old, _ in self.moves.values()]
        for pair, old, is_dir in self.moves.values():
            if is_dir:
                self._forget_tree(pair, old)
        self.moves.clear()
        return out

    def _event(self, wd: int, mask: int, cookie: int, name: bytes, out: list[Change]) -> None:
        if mask & IN_Q_OVERFLOW:
            out.append(Change(b"o", -1, b""))
            return
        where = self.folders.get(wd)
        if where is None:
            return
        pair, folder = where
        if mask & (IN_MOVE_SELF | IN_DELETE_SELF) and not name:
            if folder == b"":
                out.append(Change(b"r", pair, b""))  # the root itself: never delete the target copy
            return
        if mask & IN_IGNORED:
            self.folders.pop(wd, None)
            self.by_folder.pop((pair, folder), None)
            return
        rel = folder + b"/" + name if folder else name
        is_dir = bool(mask & IN_ISDIR)
        member = self._member(pair, rel)
        if not member and mask & (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO):
            # an entry outside the set came or went: the folder's time moved all the same
            self._folder_changed(pair, folder, out)
        if mask & IN_MOVED_FROM:
            self.moves[cookie] = (pair, rel, is_dir)
            return
        if mask & IN_MOVED_TO:
            old = self.moves.pop(cookie, None)
            if old is not None and old[0] == pair:
                if is_dir:
                    self._rename_tree(pair, old[1], rel)
                if member and self._member(pair, old[1]):
                    out.append(Change(b"m", pair, rel, old[1]))
                    return
                if self._member(pair, old[1]):
                    out.append(Change(b"d", pair, old[1]))
            if member:
                out.append(Change(b"c", pair, rel))
            if is_dir and (pair, rel) not in self.by_folder:
                self._watch_tree(pair, rel, out)
            return
        if mask & IN_CREATE:
            if member:
                out.append(Change(b"c", pair, rel))
            if is_dir:
                self._watch_tree(pair, rel, out)
            return
        if mask & IN_DELETE:
            if is_dir:
                self._forget_tree(pair, rel)
            if member:
                out.append(Change(b"d", pair, rel))
            return
        if not member:
            return
        if mask & IN_CLOSE_WRITE:
            out.append(Change(b"w", pair, rel))
        elif mask & IN_ATTRIB:
            out.append(Change(b"a", pair, rel))

    def _folder_changed(self, pair: int, folder: bytes, out: list[Change]) -> None:
        """An excluded file made or removed in a folder of the set changes that folder's time on the
        source: its attributes are sent again, or a verify would find the target folder's time older."""
        if self._member(pair, folder):
            out.append(Change(b"a", pair, folder))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SpillQueue:
    """Changes waiting to be sent: up to ``memory`` in memory, then spilled to a file, up to ``limit`` in
    all. Past the limit the queue is *overflowed*: it drops everything and reports it once, which tells
    the replicator to do what the reference product does when its queue is full: disconnect, reconnect
    and run a difference pass (the pass finds whatever the dropped changes were)."""

    def __init__(self, memory: int = 10_000, limit: int = 1_000_000, folder: str | None = None) -> None:
        self.memory = memory
        self.limit = limit
        self.items: collections.deque[Change] = collections.deque()
        self.spill = tempfile.TemporaryFile(prefix="hvm-queue-", dir=folder)  # noqa: SIM115 - kept open
        self.spilled = 0  # records in the file not yet read back
        self.read_at = 0
        self.overflowed = False

    def __len__(self) -> int:
        return len(self.items) + self.spilled

    def put(self, change: Change) -> None:
        if self.overflowed:
            return
        if len(self) >= self.limit:
            self.overflowed = True
            self.items.clear()
            self.spill.truncate(0)
            self.spilled = self.read_at = 0
            return
        if self.spilled or len(self.items) >= self.memory:
            old = change.old if change.old is not None else b""
            record = struct.pack("<ciII", change.kind, change.pair, len(change.path), len(old))
            self.spill.seek(0, os.SEEK_END)
            self.spill.write(record + change.path + old)
            self.spilled += 1
            return
        self.items.append(change)

    def get(self) -> Change | None:
        """The oldest change; None when empty. Memory first, then the file, in the order put."""
        if self.items:
            return self.items.popleft()
        if not self.spilled:
            return None
        self.spill.seek(self.read_at)
        head = self.spill.read(13)
        kind, pair, plen, olen = struct.unpack("<ciII", head)
        path = self.spill.read(plen)
        old = self.spill.read(olen)
        self.read_at += 13 + plen + olen
        self.spilled -= 1
        if not self.spilled:
            self.spill.truncate(0)
            self.read_at = 0
        return Change(kind, pair, path, old if kind == b"m" else None)

    def take_overflow(self) -> bool:
        """True once after an overflow (then the queue accepts changes again)."""
        if not self.overflowed:
            return False
        self.overflowed = False
        return True

    def close(self) -> None:
        self.spill.close()
