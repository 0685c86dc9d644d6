"""Read and write files of an ext2/3/4 filesystem inside a disk image, without mounting it.

Staging runs on the orchestrator as an ordinary user, on replica files and source images that must not
be attached to the host's kernel (no loop device, no root, no risk of the host auto-mounting a guest's
filesystem). e2fsprogs' ``debugfs`` edits an image through libext2fs in user space, and its
``image?offset=N`` syntax reaches a filesystem inside a partitioned disk, so a partition never has to be
mapped. debugfs reports most errors on stderr with exit status 0, so every write is read back and
compared: a write that did not land is an error, whatever debugfs said.
"""

from __future__ import annotations

import errno
import fcntl
import os
import posixpath
import re
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestrator import audit

_COPY_BLOCK = 4 * 1024 * 1024
_SYMLINK_HOPS = 40  # as the Linux kernel's MAXSYMLINKS
_TIMEOUT = 120.0
_EXT_INCOMPAT_RECOVER = 0x4
_SAFE_PATH_RE = re.compile(r'^/[^"\n\r\0]*$')
InodeType = Literal["regular", "directory", "symlink", "other"]
_INODE_TYPES: dict[str, InodeType] = {"regular": "regular", "directory": "directory", "symlink": "symlink"}


class GuestFsError(Exception):
    """The guest filesystem could not be read or changed; the message says what to check."""


class ToolMissing(GuestFsError):
    """e2fsprogs is not installed: not a property of the guest, so never read as "no Linux here"."""


@dataclass(frozen=True)
class FsOp:
    """One change to a guest filesystem: a regular file, a symlink (``data`` is its target), or removal."""

    kind: Literal["file", "symlink", "absent"]
    path: str
    data: bytes = b""
    mode: int = 0o644


@dataclass(frozen=True)
class Inode:
    type: InodeType
    mode: int  # permission bits only
    size: int
    link_target: str | None = None


def e2fs_tool(name: str) -> str:
    """e2fsprogs lives in /usr/sbin, which is not on an ordinary user's PATH on Debian."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None
    )
    if not found:
        raise ToolMissing(f"{name} not found: install e2fsprogs (apt-get install e2fsprogs)")
    return found


class ExtFs:
    """One ext filesystem at byte ``offset`` of the disk image file ``image``."""

    def __init__(self, image: Path, offset: int = 0) -> None:
        if "?" in str(image):
            raise GuestFsError(f"{image}: debugfs cannot open a path containing '?'; rename the image")
        self.image = Path(image)
        self.offset = offset

    @property
    def spec(self) -> str:
        """How debugfs and e2fsck name this filesystem (unix_io's offset option)."""
        return f"{self.image}?offset={self.offset}" if self.offset else str(self.image)

    def __repr__(self) -> str:
        return f"ExtFs({self.spec})"

    # ------------------------------------------------------------ reading

    def stat(self, path: str) -> Inode | None:
        """The inode at ``path`` itself (a final symlink is not followed); None when absent."""
        out = self._run([f"stat {_quote(path)}"]).stdout.decode(errors="replace")
        kind = re.search(r"Type: (\w+)", out)
        if not kind:
            return None
        mode = re.search(r"Mode:\s+([0-7]+)", out)
        size = re.search(r"\bSize: (\d+)", out)
        inode_type = _INODE_TYPES.get(kind.group(1), "other")
        target = None
        if inode_type == "symlink":
            fast = re.search(r'Fast link dest: "(.*)"', out)
            target = (
                fast.group(1) if fast else self._run([f"cat {_quote(path)}"]).stdout.decode(errors="replace")
            )
        return Inode(
            inode_type,
            int(mode.group(1), 8) & 0o7777 if mode else 0,
            int(size.group(1)) if size else 0,
            target,
        )

    def resolve(self, path: str) -> tuple[str, Inode] | None:
        """Follow symlinks in the last component (debugfs follows the inner ones) from the guest's root."""
        path = posixpath.normpath("/" + path.lstrip("/"))
        for _ in range(_SYMLINK_HOPS):
            inode = self.stat(path)
            if inode is None:
                return None
            if inode.type != "symlink":
                return path, inode
            assert inode.link_target is not None
            base = "/" if inode.link_target.startswith("/") else posixpath.dirname(path)
            path = posixpath.normpath(posixpath.join(base, inode.link_target))
        raise GuestFsError(f"{self.spec}: too many levels of symbolic links at {path}")

    def read(self, path: str) -> bytes | None:
        """Contents of a regular file, following symlinks; None when it does not exist."""
        found = self.resolve(path)
        if found is None:
            return None
        real, inode = found
        if inode.type != "regular":
            raise GuestFsError(f"{self.spec}: {path} is a {inode.type}, not a file")
        data = self._run([f"cat {_quote(real)}"]).stdout
        if len(data) != inode.size:
            raise GuestFsError(
                f"{self.spec}: read {len(data)} of {inode.size} bytes of {path}; "
                "run e2fsck -fn on the image to check it"
            )
        return data

    def listdir(self, path: str) -> list[str]:
        """Entry names of a directory (following symlinks); empty when it does not exist."""
        found = self.resolve(path)
        if found is None or found[1].type != "directory":
            return []
        out = self._run([f"ls -p {_quote(found[0])}"]).stdout.decode(errors="replace")
        names = []
        for line in out.splitlines():
            fields = line.split("/")
            if len(fields) >= 7 and fields[5] not in (".", ".."):
                names.append(fields[5])
        return sorted(names)

    def needs_recovery(self) -> bool:
        """The journal holds transactions not yet written home: true of a copy of a mounted filesystem."""
        with open(self.image, "rb") as handle:
            handle.seek(self.offset + 1024 + 0x60)
            raw = handle.read(4)
        return len(raw) == 4 and bool(struct.unpack("<I", raw)[0] & _EXT_INCOMPAT_RECOVER)

    # ------------------------------------------------------------ writing

    def replay_journal(self) -> None:
        """Bring a crash-consistent copy to a consistent state before editing it, as mounting would.

        Every replica of a running source has this flag (a mounted ext4 carries it on disk), and editing
        it without a replay would let the guest's first mount replay stale metadata over our edits.
        e2fsck loses the ``?offset=`` option when it re-opens the filesystem after a replay, so a
        filesystem inside a partition is replayed in a sparse copy of just that partition, and only the
        blocks the replay changed are written back.
        """
        with image_lock(self.image):
            if self.offset == 0:
                self._e2fsck_journal_only(self.image)
            else:
                self._replay_in_window()
        if self.needs_recovery():
            raise GuestFsError(
                f"{self.spec}: journal replay left the filesystem needing recovery; run "
                "e2fsck -f on the image by hand"
            )

    def _e2fsck_journal_only(self, image: Path) -> None:
        result = subprocess.run(
            [e2fs_tool("e2fsck"), "-p", "-E", "journal_only", str(image)],
            capture_output=True,
            timeout=_TIMEOUT,
            check=False,
        )
        if result.returncode not in (0, 1):
            raise GuestFsError(
                f"{self.spec}: journal replay failed (e2fsck exit {result.returncode}): "
                f"{_stderr(result)}; run e2fsck -f on the image by hand"
            )

    def _replay_in_window(self) -> None:
        length = self.filesystem_size()
        window = self.image.with_name(f".{self.image.name}.replay-{os.getpid()}")
        try:
            with open(self.image, "rb") as src, open(window, "wb") as dst:
                dst.truncate(length)
                for offset, size in _data_ranges(src.fileno(), self.offset, length):
                    for start in range(offset, offset + size, _COPY_BLOCK):
                        count = min(_COPY_BLOCK, offset + size - start)
                        os.pwrite(dst.fileno(), os.pread(src.fileno(), count, self.offset + start), start)
            self._e2fsck_journal_only(window)
            with open(window, "rb") as replayed, open(self.image, "r+b") as dst:
                for offset, size in _data_ranges(replayed.fileno(), 0, length):
                    for start in range(offset, offset + size, _COPY_BLOCK):
                        count = min(_COPY_BLOCK, offset + size - start)
                        new = os.pread(replayed.fileno(), count, start)
                        if os.pread(dst.fileno(), count, self.offset + start) != new:
                            os.pwrite(dst.fileno(), new, self.offset + start)
                os.fsync(dst.fileno())
        finally:
            window.unlink(missing_ok=True)

    def filesystem_size(self) -> int:
        """Bytes the filesystem spans, from its superblock (block count times block size)."""
        with open(self.image, "rb") as handle:
            handle.seek(self.offset + 1024)
            superblock = handle.read(1024)
        if len(superblock) < 1024 or superblock[56:58] != b"\x53\xef":
            raise GuestFsError(f"{self.spec}: no ext2/3/4 superblock here")
        blocks_lo, log_block = (
            struct.unpack_from("<I", superblock, 4)[0],
            struct.unpack_from("<I", superblock, 24)[0],
        )
        incompat = struct.unpack_from("<I", superblock, 0x60)[0]
        blocks_hi = struct.unpack_from("<I", superblock, 0x150)[0] if incompat & 0x80 else 0
        return ((blocks_hi << 32) | blocks_lo) * (1024 << log_block)

    def write_files(self, files: Sequence[tuple[str, bytes, int]]) -> None:
        """Create or replace regular files (path, data, mode) owned by root, creating parent directories."""
        self.apply([FsOp("file", path, data, mode) for path, data, mode in files])

    def apply(self, ops: Sequence[FsOp]) -> None:
        """Create files and symlinks, or remove entries, in one debugfs run; then check each took effect.

        Removal of a directory is refused: staging only ever takes away files it can put back.
        """
        if not ops:
            return
        with image_lock(self.image):
            if self.needs_recovery():
                self.replay_journal()
            with tempfile.TemporaryDirectory(prefix="hvmigrate-stage-") as tmp:
                commands: list[str] = []
                made: set[str] = set()
                for index, op in enumerate(ops):
                    if op.kind == "absent" and self.stat(op.path) is None:
                        continue  # nothing to remove; and no parent directory to create for it
                    real = self._writable_path(op.path, commands, made)
                    existing = self.stat(real)
                    if existing is not None and existing.type == "directory":
                        raise GuestFsError(f"{self.spec}: cannot replace {op.path}: it is a directory")
                    if existing is not None:
                        commands.append(f"rm {_quote(real)}")
                    if op.kind == "file":
                        local = Path(tmp) / f"f{index}"
                        local.write_bytes(op.data)
                        commands += [
                            f"write {local} {_quote(real)}",
                            f"sif {_quote(real)} mode 0{0o100000 | op.mode:o}",
                            f"sif {_quote(real)} uid 0",
                            f"sif {_quote(real)} gid 0",
                        ]
                    elif op.kind == "symlink":
                        target = op.data.decode()
                        if not target or "\n" in target or '"' in target or any(c.isspace() for c in target):
                            raise GuestFsError(f"cannot create a symlink to {target!r}: not a plain path")
                        commands.append(f"symlink {_quote(real)} {target}")
                result = self._run(commands, writable=True) if commands else None
            for op in ops:
                if not self._took_effect(op):
                    why = _stderr(result) if result is not None else "nothing was run"
                    raise GuestFsError(f"{self.spec}: {op.kind} {op.path} did not take effect: {why}")

    def _took_effect(self, op: FsOp) -> bool:
        if op.kind == "absent":
            return self.stat(op.path) is None
        if op.kind == "symlink":
            found = self.stat(op.path)
            return found is not None and found.type == "symlink" and found.link_target == op.data.decode()
        found = self.resolve(op.path)
        return found is not None and found[1].mode == op.mode and self.read(op.path) == op.data

    def dump(self, path: str, local: Path) -> int:
        """Copy a guest file (symlinks followed) to ``local`` without holding it in memory; its size."""
        found = self.resolve(path)
        if found is None or found[1].type != "regular":
            raise GuestFsError(f"{self.spec}: {path} is not a regular file")
        result = self._run([f"dump {_quote(found[0])} {local}"])
        size = local.stat().st_size if local.exists() else -1
        if size != found[1].size:
            raise GuestFsError(
                f"{self.spec}: copied {size} of {found[1].size} bytes of {path}: {_stderr(result)}"
            )
        return size

    def _writable_path(self, path: str, commands: list[str], made: set[str] | None = None) -> str:
        """The real path to write ``path`` at: parent symlinks resolved, missing parents queued for mkdir.

        ``made`` holds the directories already queued by earlier operations of the same run.
        """
        made = set() if made is None else made
        path = posixpath.normpath("/" + path.lstrip("/"))
        if not _SAFE_PATH_RE.match(path) or path == "/":
            raise GuestFsError(f"cannot stage a file at {path!r}: not a plain absolute path")
        parent = "/"
        parts = [p for p in posixpath.dirname(path).split("/") if p]
        for position, name in enumerate(parts):
            candidate = posixpath.join(parent, name)
            if candidate in made:
                parent = candidate
                continue
            found = self.resolve(candidate)
            if found is None:
                for missing in parts[position:]:
                    parent = posixpath.join(parent, missing)
                    if parent not in made:
                        made.add(parent)
                        commands.append(f"mkdir {_quote(parent)}")
                break
            if found[1].type != "directory":
                raise GuestFsError(f"{self.spec}: cannot create {path}: {candidate} is a {found[1].type}")
            parent = found[0]
        return posixpath.join(parent, posixpath.basename(path))

    # ------------------------------------------------------------ plumbing

    @contextmanager
    def _audited(self, commands: Sequence[str], writable: bool) -> Iterator[audit.Operation]:
        """A write into a replica's filesystem is a change to the target: it goes to the audit trail."""
        if not writable:
            yield audit.Operation()
            return
        with audit.operation(f"replica disk {self.spec}", "debugfs -w: " + "; ".join(commands)) as op:
            yield op

    def _run(self, commands: Sequence[str], *, writable: bool = False) -> subprocess.CompletedProcess[bytes]:
        if not self.image.exists():
            raise GuestFsError(f"disk image {self.image} does not exist")
        args = [e2fs_tool("debugfs")]
        args += ["-w"] if writable else []
        env = {**os.environ, "DEBUGFS_PAGER": "__none__", "PAGER": "__none__"}
        with tempfile.NamedTemporaryFile("w", prefix="hvmigrate-debugfs-", suffix=".cmd") as script:
            # -f echoes each command on stdout, which would corrupt a `cat`: one command goes by -R.
            if len(commands) == 1:
                args += ["-R", commands[0]]
            else:
                script.write("\n".join(commands) + "\n")
                script.flush()
                args += ["-f", script.name]
            with image_lock(self.image), self._audited(commands, writable) as op:
                result = subprocess.run(
                    [*args, self.spec], capture_output=True, timeout=_TIMEOUT, env=env, check=False
                )
                op.exited(result.returncode, _stderr(result) or None)
        err = _stderr(result)
        if "while trying to open" in err or "Filesystem not open" in err:
            raise GuestFsError(f"{self.spec}: not an ext2/3/4 filesystem debugfs can open ({err})")
        return result


_image_locks: dict[str, threading.RLock] = {}
_image_locks_guard = threading.Lock()
_flocks_held = threading.local()


@contextmanager
def image_lock(image: Path) -> Iterator[None]:
    """Exclusive use of a disk image, across threads and processes; re-entrant within a thread.

    Staging reads, plans and writes as one unit, and two stagers (or a stager and a journal replay) on
    one replica would corrupt it. flock belongs to an open file, so a thread that already holds it must
    not open another descriptor and wait on itself: the thread-local set remembers what it holds.
    """
    key = str(Path(image).resolve())
    with _image_locks_guard:
        lock = _image_locks.setdefault(key, threading.RLock())
    with lock:
        held: set[str] = getattr(_flocks_held, "paths", None) or set()
        _flocks_held.paths = held
        if key in held:
            yield
            return
        fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)  # a read-only descriptor can hold a flock
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held.add(key)
            try:
                yield
            finally:
                held.discard(key)
        finally:
            os.close(fd)


def _data_ranges(fd: int, start: int, length: int) -> Iterator[tuple[int, int]]:
    """(offset from ``start``, length) of the data extents in [start, start+length); all of it if unknown."""
    end = start + length
    position = start
    while position < end:
        try:
            data = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield position - start, end - position
                return
            raise
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data - start, hole - data
        position = hole


def _quote(path: str) -> str:
    if not _SAFE_PATH_RE.match(path):
        raise GuestFsError(f"cannot address {path!r} in a guest filesystem: not a plain absolute path")
    return f'"{path}"' if any(c.isspace() for c in path) else path


def _stderr(result: subprocess.CompletedProcess[bytes]) -> str:
    """debugfs's stderr without its version banner and echo of commands, on one line."""
    lines = [line.strip() for line in result.stderr.decode(errors="replace").splitlines()]
    useful = [line for line in lines if line and not line.startswith(("debugfs 1.", "e2fsck 1."))]
    return "; ".join(useful) or f"exit status {result.returncode}"


def check_clean(fs: ExtFs) -> tuple[bool, str]:
    """e2fsck -fn: does the filesystem check clean? (Read only; used after staging and in tests.)"""
    result = subprocess.run(
        [e2fs_tool("e2fsck"), "-fn", fs.spec], capture_output=True, timeout=_TIMEOUT, check=False
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    return result.returncode == 0, output
