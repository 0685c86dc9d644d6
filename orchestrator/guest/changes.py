"""The guest as it was before staging, and a builder of changes that records every original it replaces.

Staging computes its edits once and re-applies them after every sync pass, and a step may run again after
a crash between writing the disk and journaling its output. Planning must therefore give the same edits
whether or not some were already applied. So every change carries, as a first edit written only once
(``merge="keep"``), a record of what it replaced: the original file under /var/lib/hvmigrate/original,
or a marker under /var/lib/hvmigrate/created when nothing was there. `GuestView` reads the guest through
those records, so a planner always sees the source's state, and the records also tell an administrator
(and `revert_edits`) exactly what staging changed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field

from .edits import GuestEdit, merge_hosts
from .extfs import ExtFs, GuestFsError

__all__ = ["CREATED_DIR", "ORIGINALS_DIR", "ChangeSet", "GuestView", "Original", "revert_edits"]

RECORDS_DIR = "/var/lib/hvmigrate"
ORIGINALS_DIR = f"{RECORDS_DIR}/original"
CREATED_DIR = f"{RECORDS_DIR}/created"
_HOPS = 40


@dataclass(frozen=True)
class Original:
    """What a path held before staging: a file (content, mode), a symlink (target) or nothing."""

    kind: str  # file, symlink, absent
    content: bytes = b""
    mode: int = 0o644

    @property
    def exists(self) -> bool:
        return self.kind != "absent"


_ABSENT = Original("absent")


class GuestView:
    """Read-only access to the guest's pre-staging state: live files, overlaid by staging's records."""

    def __init__(self, fs: ExtFs) -> None:
        self.fs = fs
        self._records = dict(self._walk_records())
        self._cache: dict[str, Original] = {}

    def _walk_records(self) -> Iterator[tuple[str, Original]]:
        for base in (ORIGINALS_DIR, CREATED_DIR):
            stack = [base]
            while stack:
                directory = stack.pop()
                for name in self.fs.listdir(directory):
                    child = posixpath.join(directory, name)
                    inode = self.fs.stat(child)
                    if inode is None:
                        continue
                    guest_path = child[len(base) :]
                    if inode.type == "directory":
                        stack.append(child)
                    elif base == CREATED_DIR:
                        yield guest_path, _ABSENT
                    elif inode.type == "symlink":
                        yield guest_path, Original("symlink", (inode.link_target or "").encode())
                    elif inode.type == "regular":
                        yield guest_path, Original("file", self.fs.read(child) or b"", inode.mode)

    def original(self, path: str) -> Original:
        """The state of ``path`` itself before staging (a final symlink is not followed)."""
        path = _norm(path)
        if path in self._records:
            return self._records[path]
        if path not in self._cache:
            inode = self.fs.stat(path)
            if inode is None:
                self._cache[path] = _ABSENT
            elif inode.type == "symlink":
                self._cache[path] = Original("symlink", (inode.link_target or "").encode())
            elif inode.type == "regular":
                self._cache[path] = Original("file", self.fs.read(path) or b"", inode.mode)
            else:
                self._cache[path] = Original(inode.type)
        return self._cache[path]

    def resolve(self, path: str) -> tuple[str, Original]:
        """Follow symlinks in the last component, as the guest would have before staging."""
        path = _norm(path)
        for _ in range(_HOPS):
            state = self.original(path)
            if state.kind != "symlink":
                return path, state
            target = state.content.decode(errors="replace")
            base = "/" if target.startswith("/") else posixpath.dirname(path)
            path = _norm(posixpath.join(base, target))
        raise GuestFsError(f"{self.fs.spec}: too many levels of symbolic links at {path}")

    def read(self, path: str) -> bytes | None:
        """A file's original content (symlinks followed); None when there was none."""
        _, state = self.resolve(path)
        return state.content if state.kind == "file" else None

    def text(self, path: str) -> str | None:
        data = self.read(path)
        return None if data is None else data.decode(errors="replace")

    def exists(self, path: str) -> bool:
        return self.resolve(path)[1].exists

    def is_dir(self, path: str) -> bool:
        return self.resolve(path)[1].kind == "directory"

    def listdir(self, path: str) -> list[str]:
        """Entries of a directory as they were: staging's own new files left out, removed ones put back."""
        path = _norm(path)
        names = set(self.fs.listdir(path))
        prefix = path.rstrip("/") + "/"
        for recorded, state in self._records.items():
            if recorded.startswith(prefix) and "/" not in recorded[len(prefix) :]:
                name = recorded[len(prefix) :]
                if state.exists:
                    names.add(name)
                else:
                    names.discard(name)
        return sorted(names)


@dataclass
class ChangeSet:
    """Edits to one guest, each with the record of what it replaces and a line saying why."""

    view: GuestView
    log: list[str] = field(default_factory=list)
    _edits: dict[str, GuestEdit] = field(default_factory=dict)
    _touched: list[str] = field(default_factory=list)

    def write(self, path: str, content: bytes | str, mode: int = 0o644, why: str = "") -> bool:
        """Put ``content`` at ``path``; False (and nothing planned) when that is what was there."""
        data = content.encode() if isinstance(content, str) else content
        before = self.view.original(path)
        if before.kind == "file" and before.content == data and before.mode == mode:
            return False
        verb = "rewrite" if before.kind == "file" else "create" if not before.exists else "replace"
        self._plan(GuestEdit(_norm(path), data, mode), f"{verb} {_norm(path)}", why)
        return True

    def symlink(self, path: str, target: str, why: str = "") -> bool:
        before = self.view.original(path)
        if before.kind == "symlink" and before.content.decode(errors="replace") == target:
            return False
        self._plan(GuestEdit(_norm(path), target, kind="symlink"), f"link {_norm(path)} -> {target}", why)
        return True

    def remove(self, path: str, why: str = "") -> bool:
        before = self.view.original(path)
        if not before.exists:
            return False
        if before.kind not in ("file", "symlink"):
            raise GuestFsError(f"{self.view.fs.spec}: staging will not remove {path}: it is a {before.kind}")
        self._plan(GuestEdit(_norm(path), b"", kind="absent"), f"remove {_norm(path)}", why)
        return True

    def merge_hosts(self, managed: str, why: str = "") -> bool:
        original = self.view.read("/etc/hosts")
        if merge_hosts(original, managed.encode()) == original:
            return False
        self._plan(GuestEdit("/etc/hosts", managed, merge="hosts"), "merge into /etc/hosts", why)
        return True

    def _plan(self, edit: GuestEdit, what: str, why: str) -> None:
        if edit.path not in self._edits:
            self._touched.append(edit.path)
        self._edits[edit.path] = edit
        self.log.append(f"{what}: {why}" if why else what)

    def planned(self, path: str) -> GuestEdit | None:
        return self._edits.get(_norm(path))

    def edits(self) -> list[GuestEdit]:
        """The records of every original first (written once, never replaced), then the changes."""
        records = [_record(path, self.view.original(path)) for path in self._touched]
        return [*records, *(self._edits[path] for path in self._touched)]


def _record(path: str, state: Original) -> GuestEdit:
    if state.kind == "file":
        return GuestEdit(ORIGINALS_DIR + path, state.content, state.mode, merge="keep")
    if state.kind == "symlink":
        return GuestEdit(ORIGINALS_DIR + path, state.content, merge="keep", kind="symlink")
    return GuestEdit(CREATED_DIR + path, b"", 0o644, merge="keep")


def revert_edits(view: GuestView) -> list[GuestEdit]:
    """The edits that put every path staging changed back as it was, and remove the records.

    For a replica disk that is kept (a test cutover's copy that is to be staged differently, say); the
    usual undo deletes the replica's disks and needs none of this.
    """
    restore: list[GuestEdit] = []
    forget: list[GuestEdit] = []
    for path, state in sorted(view._records.items()):
        if state.kind == "file":
            restore.append(GuestEdit(path, state.content, state.mode))
            forget.append(GuestEdit(ORIGINALS_DIR + path, kind="absent"))
        elif state.kind == "symlink":
            restore.append(GuestEdit(path, state.content, kind="symlink"))
            forget.append(GuestEdit(ORIGINALS_DIR + path, kind="absent"))
        else:
            restore.append(GuestEdit(path, kind="absent"))
            forget.append(GuestEdit(CREATED_DIR + path, kind="absent"))
    return [*restore, *forget]


def _norm(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/"))
