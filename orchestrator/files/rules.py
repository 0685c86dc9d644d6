"""Which paths a files-and-folders set holds: include/exclude rules where the closest rule wins.

The reference product's semantics (Carbonite Migrate 8.2.1, replication rules): every path is decided by
the rule *closest* to it in the tree, so a deeper include overrides a shallower exclude and the other way
round. Closeness is the depth of the rule's folder: a plain rule ``/srv/www`` is anchored at ``/srv/www``;
a wildcard rule ``/srv/www/*.log`` at ``/srv/www``. When a plain and a wildcard rule share a folder, the
wildcard wins (it says more about the entry); when two rules tie exactly, exclude wins (leaving a file out
is the recoverable mistake). A consequence the reference product documents, kept here: an include of
``/srv/www/app`` is closer to ``/srv/www/app/x.log`` than the exclude ``/srv/www/*.log`` is, so the log is
copied unless the exclude is repeated for that folder.

``recursive`` decides how far a rule reaches: a plain rule covers its path and its direct entries, and with
``recursive`` everything below; a wildcard rule covers entries directly in its folder whose name matches,
and with ``recursive`` any entry below the folder with a matching name somewhere on its path (a matching
folder brings its whole subtree). Anything no rule covers is outside the set.

Paths are bytes (``os.fsencode``): names with newlines or invalid UTF-8 are ordinary names here. This module
is standard-library only: it ships inside the files agent, which prunes its walk with it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

_WILDCARD = re.compile(rb"[*?\[]")


class Rule(NamedTuple):
    path: bytes  # as written: /srv/www or /srv/www/*.log
    include: bool
    recursive: bool
    folder: bytes  # the anchor: the path itself, or a wildcard rule's folder
    pattern: bytes | None  # a wildcard rule's name pattern
    match: object  # compiled pattern (re.Pattern[bytes]) or None

    @property
    def depth(self) -> int:
        return _depth(self.folder)

    def describe(self) -> str:
        verb = "include" if self.include else "exclude"
        reach = "" if self.recursive else " (not recursive)"
        return f"{verb} {self.path.decode(errors='backslashreplace')}{reach}"


def _norm(path: str | bytes) -> bytes:
    raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else bytes(path)
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    return b"/" + b"/".join(parts)


def _depth(path: bytes) -> int:
    return 0 if path == b"/" else path.count(b"/")


def _under(path: bytes, folder: bytes) -> bool:
    """True when ``path`` is strictly inside ``folder``."""
    if folder == b"/":
        return path != b"/"
    return path.startswith(folder) and path[len(folder) : len(folder) + 1] == b"/"


def _parent(path: bytes) -> bytes:
    head = path.rsplit(b"/", 1)[0]
    return head or b"/"


def make_rule(path: str | bytes, include: bool = True, recursive: bool = True) -> Rule:
    normal = _norm(path)
    name = normal.rsplit(b"/", 1)[1]
    if _WILDCARD.search(_parent(normal)):
        raise ValueError(f"wildcards go in the last part of a rule path only: {normal!r}")
    if _WILDCARD.search(name):
        compiled = re.compile(fnmatch.translate(name.decode("latin-1")).encode("latin-1"), re.DOTALL)
        return Rule(normal, include, recursive, _parent(normal), name, compiled)
    return Rule(normal, include, recursive, normal, None, None)


class RuleSet:
    """The compiled rules of one set; ``decide`` is called once per walked entry, so it stays cheap."""

    def __init__(self, rules: Iterable[Rule | tuple[str | bytes, bool, bool]]) -> None:
        self.rules: tuple[Rule, ...] = tuple(r if isinstance(r, Rule) else make_rule(*r) for r in rules)
        # Folders a walk must enter even when they are outside the set: a rule is anchored below them.
        self._walk_through: set[bytes] = set()
        for rule in self.rules:
            folder = rule.folder if rule.pattern is not None else _parent(rule.path)
            while True:
                self._walk_through.add(folder)
                if folder == b"/":
                    break
                folder = _parent(folder)

    @classmethod
    def from_config(cls, rules: Sequence[object]) -> RuleSet:
        """From playbook FileRule models (or anything with path, is_include and recursive)."""
        return cls(make_rule(r.path, r.is_include, r.recursive) for r in rules)  # type: ignore[attr-defined]

    # ------------------------------------------------------------ decisions

    def applies(self, rule: Rule, path: bytes) -> bool:
        if rule.pattern is None:
            if path == rule.path:
                return True
            if not _under(path, rule.path):
                return False
            return rule.recursive or _parent(path) == rule.path
        if not _under(path, rule.folder):
            return False
        rest = path[len(rule.folder) :].lstrip(b"/")
        names = rest.split(b"/")
        if not rule.recursive:
            return len(names) == 1 and rule.match.match(names[0]) is not None  # type: ignore[attr-defined]
        return any(rule.match.match(name) is not None for name in names)  # type: ignore[attr-defined]

    def decide(self, path: str | bytes) -> Rule | None:
        """The closest rule that applies to ``path``, or None when no rule covers it."""
        normal = _norm(path)
        best: Rule | None = None
        best_key = (-1, -1, -1)
        for rule in self.rules:
            if not self.applies(rule, normal):
                continue
            key = (rule.depth, 1 if rule.pattern is not None else 0, 0 if rule.include else 1)
            if key > best_key:
                best, best_key = rule, key
        return best

    def included(self, path: str | bytes) -> bool:
        rule = self.decide(path)
        return rule is not None and rule.include

    def must_walk(self, folder: str | bytes) -> bool:
        """Enter this folder? Yes when it is in the set or a rule is anchored inside it."""
        normal = _norm(folder)
        if normal in self._walk_through or self.included(normal):
            return True
        # a recursive wildcard include finds matching names at any depth below its folder
        return any(
            r.include and r.recursive and r.pattern is not None and _under(normal, r.folder)
            for r in self.rules
        )

    def uniform_below(self, folder: bytes) -> bool:
        """True when everything inside ``folder`` is decided as ``folder`` itself is, so a walk may skip
        the per-entry checks: a recursive plain rule decides it and no rule reaches inside otherwise."""
        rule = self.decide(folder)
        if rule is None or rule.pattern is not None or not rule.recursive:
            return False
        if folder in self._walk_through:
            return False
        for other in self.rules:
            if other.pattern is not None and other.recursive and _under(folder, other.folder):
                return False
        return True

    def tops(self) -> list[bytes]:
        """The fewest folders (or files) whose walks reach every included path: the outermost anchors
        of include rules."""
        anchors = sorted({r.folder if r.pattern is not None else r.path for r in self.rules if r.include})
        tops: list[bytes] = []
        for anchor in anchors:
            if not any(anchor == top or _under(anchor, top) for top in tops):
                tops.append(anchor)
        return tops

    def overlaps(self, path: str | bytes) -> bool:
        """Would the set hold ``path`` or anything inside it (a target folder inside the source, say)?"""
        normal = _norm(path)
        return self.included(normal) or any(r.include and _under(r.folder, normal) for r in self.rules)
