"""A staged change to a guest as plain data, so a plan of changes can be journaled, shown and re-applied."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["HOSTS_MARK", "EditKind", "GuestEdit", "Merge", "merge_hosts"]

HOSTS_MARK = "# hvmigrate"
EditKind = Literal["file", "symlink", "absent"]
Merge = Literal["replace", "hosts", "keep"]


@dataclass(frozen=True)
class GuestEdit:
    """One change to the guest's root filesystem.

    ``kind`` file puts ``content`` at ``path``; symlink makes ``path`` a symbolic link to ``content``
    (masking a systemd unit is a link to /dev/null); absent removes ``path``. ``merge`` hosts merges lines
    into /etc/hosts instead of replacing it; keep writes only where nothing exists yet, which is how the
    record of a file's original state is made once and never overwritten by a later re-apply.
    Plain data (no callables), so a plan of edits can be journaled and shown before it is applied.
    """

    path: str
    content: bytes = b""  # text is accepted and stored UTF-8 encoded; a symlink's target
    mode: int = 0o644
    merge: Merge = "replace"
    kind: EditKind = "file"

    def __post_init__(self) -> None:
        if isinstance(self.content, str):
            object.__setattr__(self, "content", self.content.encode())
        if self.merge not in ("replace", "hosts", "keep"):
            raise ValueError(f"unknown merge {self.merge!r} for {self.path}: use replace, hosts or keep")
        if self.kind not in ("file", "symlink", "absent"):
            raise ValueError(f"unknown kind {self.kind!r} for {self.path}: use file, symlink or absent")

    def to_json(self) -> dict[str, Any]:
        """A journal-safe form: text content as text, anything else base64."""
        try:
            content, encoding = self.content.decode(), "utf-8"
        except UnicodeDecodeError:
            content, encoding = base64.b64encode(self.content).decode(), "base64"
        data: dict[str, Any] = {
            "path": self.path,
            "content": content,
            "encoding": encoding,
            "mode": self.mode,
            "merge": self.merge,
        }
        if self.kind != "file":
            data["kind"] = self.kind
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GuestEdit:
        content = data["content"]
        raw = base64.b64decode(content) if data.get("encoding") == "base64" else content
        return cls(
            data["path"],
            raw,
            int(data.get("mode", 0o644)),
            data.get("merge", "replace"),
            data.get("kind", "file"),
        )

    def describe(self) -> str:
        if self.kind == "symlink":
            return f"{self.path} -> {self.content.decode(errors='replace')}"
        return self.path


def merge_hosts(current: bytes | None, managed: bytes) -> bytes:
    """Keep the guest's own /etc/hosts lines; replace ours, 127.0.1.1 and any other line for our names."""
    ours = managed.decode().splitlines()
    our_names = {name for line in ours for name in line.split("#", 1)[0].split()[1:]}
    kept = []
    for line in (current or b"127.0.0.1\tlocalhost\n").decode(errors="replace").splitlines():
        fields = line.split("#", 1)[0].split()
        if line.rstrip().endswith(HOSTS_MARK) or (fields and fields[0] == "127.0.1.1"):
            continue
        if (
            len(fields) > 1
            and not fields[0].startswith("127.")
            and fields[0] != "::1"
            and our_names & set(fields[1:])
        ):
            continue
        kept.append(line)
    return ("\n".join([*kept, *ours]) + "\n").encode()
