"""Both ends of a files-and-folders copy: walking a tree, reading a file, and writing what arrives.

Standard-library only and Python 3.8 compatible: the files agent runs this on the source (walk, read) and
on the target (walk, block hashes, write); when an end is this machine the mirror calls it in-process.

What is kept: type, content, holes (sparse files are read by SEEK_DATA/SEEK_HOLE and written by seeking
past the holes), hard links (one content, the other names linked to it), symlinks (as links, never
followed), owner and group (numeric), mode, times (ns), and extended attributes, POSIX ACLs included
(they live in ``system.posix_acl_access`` and ``system.posix_acl_default``). Paths are bytes throughout.
The source is only ever opened read-only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, NamedTuple

from orchestrator.mirror.hashing import BLAKE2B_128, chunk_hasher

from .case import fold
from .rules import RuleSet

READ_SIZE = 1024 * 1024
HOLE_CHECK = 512  # st_blocks unit
NAME_MAX = 255
IN_PLACE_SIZE = 8 * 1024 * 1024  # a delta update of a file this large is written in place (TreeWriter)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class Meta(NamedTuple):
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: tuple[tuple[bytes, bytes], ...] | None


class Entry(NamedTuple):
    path: bytes  # relative to the root; b"" is the root itself
    kind: bytes  # b"f" file, b"d" folder, b"l" symlink, b"o" other (fifo, socket, device: skipped)
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ino: int
    dev: int
    nlink: int
    sparse: bool
    link: bytes | None
    xattrs: tuple[tuple[bytes, bytes], ...] | None
    member: bool  # in the set (False: a folder walked through only to reach a rule below it)

    @property
    def meta(self) -> Meta:
        return Meta(self.mode, self.uid, self.gid, self.mtime_ns, self.xattrs)


def join(root: bytes, rel: bytes) -> bytes:
    return root + b"/" + rel if rel else root


_KINDS = {stat.S_IFREG: b"f", stat.S_IFDIR: b"d", stat.S_IFLNK: b"l"}
new_entry = partial(tuple.__new__, Entry)  # Entry(...) without the Python frame of its __new__


class XattrReader:
    """A path's xattrs, sorted by name: () when it has none, None where they cannot be read (EPERM, or a
    filesystem without xattr support: ENOTSUP). Such a filesystem is asked only once: every entry on
    that device then has None, without one more system call each."""

    def __init__(self) -> None:
        self.unsupported: set[int] = set()

    def __call__(self, path: bytes, device: int) -> tuple[tuple[bytes, bytes], ...] | None:
        if device in self.unsupported:
            return None
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENOTSUP:
                self.unsupported.add(device)
                return None
            if exc.errno == errno.EPERM:
                return None
            raise
        if not names:
            return ()
        values = []
        for name in sorted(names):
            try:
                values.append(
                    (name.encode("utf-8", "surrogateescape"), os.getxattr(path, name, follow_symlinks=False))
                )
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                    raise
        return tuple(values)


def entry_for(full: bytes, rel: bytes, st: os.stat_result, member: bool, reader: XattrReader | None) -> Entry:
    """The entry for ``full``, its xattrs read by ``reader`` (None: not read). scan's loop makes the same
    entry inline (it runs once per file of a tree; a call there costs about 5% of a scan)."""
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), b"o")
    link = os.readlink(full) if kind == b"l" else None
    sparse = kind == b"f" and st.st_blocks * HOLE_CHECK < st.st_size
    attrs = reader(full, st.st_dev) if reader and (kind == b"f" or kind == b"d") else None
    return new_entry(
        (
            rel,
            kind,
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            st.st_dev,
            st.st_nlink,
            sparse,
            link,
            attrs,
            member,
        )
    )


class ScanProblem(NamedTuple):
    path: bytes
    message: str


def scan(
    root: bytes, rules: RuleSet, rule_root: bytes, *, xattrs: bool = True, problems: list | None = None
) -> Iterator[Entry]:
    """Every entry under ``root`` the rules reach, folders before their contents.

    ``rule_root`` is the source path ``root`` stands for (the same on the source; the mapped-from path on
    the target), so one rule set decides both ends. Folders that cannot be read are recorded in
    ``problems`` and skipped; the walk goes on.
    """
    problems = problems if problems is not None else []
    reader = XattrReader() if xattrs else None
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return
    except OSError as exc:
        problems.append(ScanProblem(root, exc.strerror or str(exc)))
        return
    member = rules.included(rule_root)
    yield entry_for(root, b"", st, member, reader)
    if not stat.S_ISDIR(st.st_mode) or not rules.must_walk(rule_root):
        return
    # (folder's full path, relative path, the decision when everything below is decided alike, or None)
    stack: list[tuple[bytes, bytes, bool | None]] = [
        (root, b"", member if rules.uniform_below(rule_root) else None)
    ]
    make = new_entry
    kinds = _KINDS
    while stack:
        folder, rel_folder, uniform = stack.pop()
        try:
            with os.scandir(folder) as listing:
                children = list(listing)
        except OSError as exc:
            problems.append(ScanProblem(folder, exc.strerror or str(exc)))
            continue
        descend = []
        prefix = rel_folder + b"/" if rel_folder else b""
        for child in children:
            rel = prefix + child.name
            full = child.path
            try:
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                problems.append(ScanProblem(full, exc.strerror or str(exc)))
                continue
            mode = st.st_mode
            kind = kinds.get(mode & 0o170000, b"o")
            is_dir = kind == b"d"
            if uniform is not None:
                if not uniform:
                    continue
                member = True
            else:
                rule_path = rule_root + b"/" + rel
                member = rules.included(rule_path)
                if not member and not (is_dir and rules.must_walk(rule_path)):
                    continue
            # entry_for, inlined: this loop runs once per file of the tree
            try:
                if kind == b"f":
                    link = None
                    size = st.st_size
                    sparse = st.st_blocks * HOLE_CHECK < size
                else:
                    link = os.readlink(full) if kind == b"l" else None
                    size = st.st_size
                    sparse = False
                attrs = reader(full, st.st_dev) if reader and (kind == b"f" or is_dir) else None
            except OSError as exc:
                problems.append(ScanProblem(full, exc.strerror or str(exc)))
                continue
            yield make(
                (
                    rel,
                    kind,
                    mode,
                    st.st_uid,
                    st.st_gid,
                    size,
                    st.st_mtime_ns,
                    st.st_ino,
                    st.st_dev,
                    st.st_nlink,
                    sparse,
                    link,
                    attrs,
                    member,
                )
            )
            if is_dir:
                if uniform is not None:
                    descend.append((full, rel, uniform))
                else:
                    rule_path = rule_root + b"/" + rel
                    below = member if rules.uniform_below(rule_path) else None
                    descend.append((full, rel, below))
        stack.extend(reversed(descend))


# ---------------------------------------------------------------- reading


class Changed(Exception):
    """The file changed while it was read."""


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def block_digester(algorithm: str = BLAKE2B_128) -> Callable[[bytes | memoryview], bytes]:
    """The block digest both ends agreed on (mirror.py negotiates it as the disk mirror does): xxh3-128
    where both have xxhash, else BLAKE2b-128 from hashlib, which every Python has."""
    return chunk_hasher(algorithm).digest


def signed_block_hashes(
    path: bytes, block_size: int, algorithm: str = BLAKE2B_128
) -> tuple[tuple[int, int, int, int] | None, list[bytes]]:
    """Digests of every block of a file (a delta's or a full-data compare's) and the file's signature
    (size, times, inode) they are true for; None when the file changed while it was hashed. A source
    file's digests computed while the target computes its own let the read that follows fetch only the
    differing blocks (``read_file``'s ``plan``), as long as the file still has that signature when it is
    read."""
    block_digest = block_digester(algorithm)
    digests = []
    with open(path, "rb", buffering=0) as handle:
        before = os.fstat(handle.fileno())
        while True:
            data = handle.read(block_size)
            if not data:
                break
            digests.append(block_digest(data))
        after = os.fstat(handle.fileno())
    signature = _signature(before)
    return (signature if signature == _signature(after) else None), digests


def data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of the data in a sparse file; the rest are holes."""
    ranges = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            return [(0, size)]
        end = os.lseek(fd, start, os.SEEK_HOLE)
        ranges.append((start, min(end, size)))
        offset = end
    return ranges


class FileRead(NamedTuple):
    size: int
    stable: bool  # False: it kept changing for every attempt; what was sent is the last read


def read_file(
    path: bytes,
    emit: Any,
    *,
    sparse: bool,
    block_size: int = 0,
    theirs: list[bytes] | None = None,
    retries: int = 3,
    after_read: Any = None,
    algorithm: str = BLAKE2B_128,
    plan: tuple[tuple, tuple[int, ...]] | None = None,
) -> FileRead:
    """Read one source file and hand its pieces to ``emit(kind, offset, data)``; kinds: b"s" start of an
    attempt (data = size as bytes), b"d" data at offset. With ``theirs`` (the target's block digests)
    only differing blocks are emitted; with ``plan`` (the signature the file had when both ends hashed
    it, and the blocks that differed then) only those blocks are read, while the file still has that
    signature. A file that changed while it was read is read again from the start (the writer discards
    the earlier attempt), up to ``retries`` more times."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NOATIME", 0))
    except PermissionError as exc:
        if exc.errno != errno.EPERM:
            raise
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # O_NOATIME is for the file's owner only
    sent: set[int] = set()  # blocks a delta attempt wrote: a later attempt writes them again
    try:
        for attempt in range(retries + 1):
            before = os.fstat(fd)
            size = before.st_size
            emit(b"s", size, b"")
            if plan is not None and attempt == 0 and tuple(plan[0]) == _signature(before):
                for index in plan[1]:
                    offset = index * block_size
                    data = os.pread(fd, min(block_size, size - offset), offset)
                    if data:
                        sent.add(index)
                        emit(b"d", offset, data)
            elif theirs is not None:
                _emit_blocks(fd, size, block_size, theirs, emit, sent, block_digester(algorithm))
            else:
                ranges = data_ranges(fd, size) if sparse else [(0, size)]
                for start, end in ranges:
                    offset = start
                    while offset < end:
                        data = os.pread(fd, min(READ_SIZE, end - offset), offset)
                        if not data:
                            break
                        emit(b"d", offset, data)
                        offset += len(data)
            if after_read is not None:
                after_read(path, attempt)
            after = os.fstat(fd)
            if _signature(before) == _signature(after):
                return FileRead(size, True)
        return FileRead(size, False)
    finally:
        os.close(fd)


SMALL_FILE = 256 * 1024  # sent in one piece: most files of a tree are this small


def _emit_blocks(
    fd: int,
    size: int,
    block_size: int,
    theirs: list[bytes],
    emit: Any,
    sent: set[int],
    block_digest: Callable,
) -> None:
    """The blocks that differ from the target's, and those an earlier attempt changed there: a block that
    changed back on the source since must be written back too."""
    index = 0
    offset = 0
    while offset < size:
        data = os.pread(fd, min(block_size, size - offset), offset)
        if not data:
            break
        if index >= len(theirs) or index in sent or block_digest(data) != theirs[index]:
            sent.add(index)
            emit(b"d", offset, data)
        offset += len(data)
        index += 1


# ---------------------------------------------------------------- writing


class Skipped(Exception):
    """This entry cannot exist on the target as it is (a name past its limits): skipped and logged."""


def _remove(path: bytes) -> None:
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return  # gone already, with a folder the source replaced by a file
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


class TreeWriter:
    """Applies a mirror's operations under one target root.

    A file the target scan did not see is created straight under its name (``O_EXCL``: if something put
    it there since, the careful path below takes over); its time is set last, so a torn one is seen as
    different by the next pass. A file that exists is written beside its name and renamed over it, so a
    reader of the target never sees half of it, except a large single-link file updated by a delta: its
    differing blocks are written in place (copying the rest first would cost as much as sending it whole),
    made durable with one ``fdatasync`` and only then given the source's time, so a crash in the middle
    leaves the old time and the next pass compares it again.

    Durability is settled once per pass, not per file: ``finish`` runs one ``syncfs`` of each target
    filesystem before the pass reports done (see ``sync_filesystem``).
    """

    def __init__(
        self, root: bytes, *, owners: bool = True, xattrs: bool = True, durable: bool = True
    ) -> None:
        self.root = root
        self.owners = owners
        self.xattrs = xattrs
        self.durable = durable
        self.folders: list[tuple[bytes, Meta]] = []
        self._fd = -1
        self._final = b""
        self._temp = b""
        self._meta: Meta | None = None
        self._size = 0
        self._empty = False  # the open file holds nothing yet: no truncation needed before writing
        self._created = False  # this writer created the open file (O_EXCL) with the source's permissions
        self._end = 0  # how far the writes of this attempt reached
        self._in_place = False
        self._umask = current_umask()
        self._acl_default: dict[bytes, bool] = {}
        self._touched = False

    def _check_name(self, path: bytes) -> None:
        if len(path) >= 4096 or any(len(part) > NAME_MAX for part in path.split(b"/")):
            raise Skipped("the name is longer than the target allows")

    def _guard(self, path: bytes) -> bytes:
        self._check_name(path)
        return path

    def folder(self, rel: bytes, meta: Meta) -> None:
        path = self._guard(join(self.root, rel))
        self._touched = True
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(path)  # a file (or link) where the source now has a folder
                os.mkdir(path, 0o700)
        except FileNotFoundError:
            os.makedirs(path, 0o700, exist_ok=True)
        self.folders.append((path, meta))

    def symlink(self, rel: bytes, meta: Meta, target: bytes) -> None:
        path = self._guard(join(self.root, rel))
        self._touched = True
        _remove(path)
        os.symlink(target, path)
        if self.owners:
            os.lchown(path, meta.uid, meta.gid)
        os.utime(path, ns=(meta.mtime_ns, meta.mtime_ns), follow_symlinks=False)

    def hardlink(self, rel: bytes, first: bytes) -> None:
        path = self._guard(join(self.root, rel))
        self._touched = True
        source = join(self.root, first)
        try:
            if os.lstat(path).st_ino == os.lstat(source).st_ino:
                return
        except FileNotFoundError:
            pass
        _remove(path)
        os.link(source, path, follow_symlinks=False)

    def attributes(self, rel: bytes, meta: Meta) -> None:
        path = join(self.root, rel)
        self._touched = True
        self._apply_meta(path, meta, fd=None)

    def remove(self, rel: bytes) -> None:
        self._touched = True
        _remove(join(self.root, rel))

    def remove_orphan(self, rel: bytes) -> None:
        """An orphan goes; an orphan folder only once empty: its orphans went first (deepest first), and
        what is left is outside the rules (a wildcard exclude), which orphan processing never touches."""
        path = join(self.root, rel)
        self._touched = True
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(OSError):
                os.rmdir(path)
        else:
            os.unlink(path)

    def move(self, rel: bytes, destination: bytes) -> None:
        path = join(self.root, rel)
        self._touched = True
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return  # moved along with its folder
        if stat.S_ISDIR(st.st_mode):
            os.makedirs(destination, exist_ok=True)  # its orphans were moved into it first
            with contextlib.suppress(OSError):
                os.rmdir(path)
            return
        os.makedirs(os.path.dirname(destination) or b"/", exist_ok=True)
        _remove(destination)
        os.rename(path, destination)

    def rename(self, rel: bytes, new: bytes) -> None:
        """A rename seen on the source (continuous replication): the same rename here, replacing what is
        at the new name; a missing old name raises FileNotFoundError (the replicator then runs a
        difference pass)."""
        path, destination = join(self.root, rel), self._guard(join(self.root, new))
        self._touched = True
        os.lstat(path)
        if rel != new and fold(rel) == fold(new):
            # a case-only rename: on a target that ignores case the two spellings are one name, and the
            # kernel treats a rename between them as a no-op, so it goes through a temporary name
            head, name = os.path.split(destination)
            temp = os.path.join(head, b".hvm-case-" + name[:200])
            os.rename(path, temp)
            path = temp
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(destination).st_mode) != stat.S_ISDIR(os.lstat(path).st_mode):
                _remove(destination)
        os.rename(path, destination)

    def whole(self, rel: bytes, meta: Meta, data: bytes | memoryview, fresh: bool) -> None:
        """A small file's whole content in one call (read_small's other side)."""
        self.begin(rel, meta, False, fresh)
        try:
            self.restart(len(data))
            self.data(0, data)
        except BaseException:
            self.abort()
            raise
        self.end()

    # -- files, in pieces: begin, data..., end

    def begin(self, rel: bytes, meta: Meta, delta: bool, fresh: bool = False, through: bool = False) -> None:
        """Open the file to write; ``fresh``: the target scan did not see it (the fast path);
        ``through``: the source file has other names (replication): a target file with other names too is
        written in place, through the link, so every name keeps seeing the same content."""
        final = self._guard(join(self.root, rel))
        self._touched = True
        self._meta, self._final, self._in_place, self._end = meta, final, False, 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | O_CLOEXEC
        # Created with its final permission bits when the umask keeps them all (no fchmod then); the
        # special bits are set after the owner, which clears them.
        create_mode = stat.S_IMODE(meta.mode) & 0o777
        if fresh:
            try:
                self._fd = os.open(final, flags | os.O_EXCL, create_mode)
                self._temp, self._empty, self._created = final, True, True
                return
            except FileExistsError:
                pass  # something is there after all: the careful path
        existing = None
        with contextlib.suppress(FileNotFoundError):
            existing = os.lstat(final)
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            shutil.rmtree(final)  # a folder where the source now has a file
            existing = None
        if existing is None:
            self._fd = os.open(final, flags | os.O_TRUNC, create_mode)
            self._temp, self._empty, self._created = final, True, False
            return
        regular = stat.S_ISREG(existing.st_mode)
        if through and regular and existing.st_nlink > 1:
            self._fd = os.open(final, os.O_WRONLY | os.O_NOFOLLOW | O_CLOEXEC)
            self._temp, self._empty, self._created = final, False, False
            return
        if delta and regular and existing.st_nlink == 1 and existing.st_size >= IN_PLACE_SIZE:
            self._fd = os.open(final, os.O_WRONLY | os.O_NOFOLLOW | O_CLOEXEC)
            self._temp, self._empty, self._in_place, self._created = final, False, True, False
            return
        head, name = os.path.split(final)
        temp = os.path.join(head, b".hvm-" + name[:200] + b".part")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)  # left by an interrupted pass
        fd = os.open(temp, flags | os.O_EXCL, create_mode)
        self._fd, self._temp, self._empty, self._created = fd, temp, True, True
        if delta and regular:
            with open(final, "rb", buffering=0) as old:
                _copy_all(old.fileno(), fd, existing.st_size)
            self._empty = False

    def restart(self, size: int) -> None:
        """A new read attempt of the same file (it changed while read) or the first: set the size."""
        self._size = size
        if not self._empty or self._end:
            os.ftruncate(self._fd, size)
            self._empty = False

    def data(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        fd = self._fd
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
        if offset > self._end:
            self._end = offset

    def end(self) -> None:
        fd, meta = self._fd, self._meta
        assert meta is not None
        try:
            if self._empty and self._end != self._size:
                os.ftruncate(fd, self._size)  # a hole at the end of a sparse file, or it shrank
            if self._in_place:
                os.fdatasync(fd)  # the blocks before the time: the time says "this content is current"
            self._apply_meta(self._final, meta, fd=fd, created=self._created)
        finally:
            os.close(fd)
            self._fd = -1
        if self._temp != self._final:
            os.rename(self._temp, self._final)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if self._temp != self._final:
                _remove(self._temp)

    def _inherits_acl(self, path: bytes) -> bool:
        """Whether a file created at ``path`` starts with an ACL (its folder has a default one)."""
        folder = os.path.dirname(path)
        known = self._acl_default.get(folder)
        if known is None:
            try:
                known = bool(os.getxattr(folder, "system.posix_acl_default"))
            except OSError:
                known = False  # ENODATA (none), ENOTSUP (no ACLs here)
            self._acl_default[folder] = known
        return known

    def _apply_meta(self, path: bytes, meta: Meta, fd: int | None, created: bool = False) -> None:
        """Owner, mode, xattrs, time. ``created``: a file this writer just created with ``meta``'s
        permission bits, whose only xattrs can be an inherited ACL: the calls that would change nothing
        are left out."""
        target: Any = fd if fd is not None else path
        mode = stat.S_IMODE(meta.mode)
        if self.owners:
            if fd is not None:
                os.fchown(fd, meta.uid, meta.gid)
            else:
                os.lchown(path, meta.uid, meta.gid)
        if not created or mode & ~0o777 or mode & self._umask:
            if fd is not None:
                os.fchmod(fd, mode)
            else:
                os.chmod(path, mode)
        if self.xattrs and meta.xattrs is not None:
            inherited = created and self._inherits_acl(path)
            if not created or meta.xattrs or inherited:
                _set_xattrs(target, meta.xattrs, None if not created or inherited else ())
        os.utime(target, ns=(meta.mtime_ns, meta.mtime_ns))

    def finish(self) -> None:
        """Folder attributes last, deepest first: writing inside a folder changes its time. Then one
        ``syncfs``: the pass reports done only once what it wrote is on disk."""
        for path, meta in sorted(self.folders, key=lambda item: -item[0].count(b"/")):
            with contextlib.suppress(FileNotFoundError):
                self._apply_meta(path, meta, fd=None)
        self.folders.clear()
        if self.durable and self._touched:
            sync_filesystem(self.root)
        self._touched = False


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), else set and put back."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sync_filesystem(path: bytes) -> None:
    """Flush the filesystem holding ``path`` (``syncfs``: that filesystem only, not every one as
    ``sync`` would); where ``syncfs`` is missing, fall back to ``sync``.

    Why once per pass and not ``fsync`` per file: a pass is recorded as done only after this returns, so
    a crash before it leaves a pass the journal does not count, and the next pass compares again. What it
    then finds is safe to compare: a new file's size grows on disk only with its data (ext4 and XFS
    allocate at writeback), a replaced file's rename reaches the disk after its data (ext4's
    replace-by-rename rule), and an in-place delta is ``fdatasync``'ed before its time is set; a torn file
    therefore keeps a size or time that differs from the source's and is sent again.
    """
    try:
        fd = os.open(path if os.path.isdir(path) else os.path.dirname(path) or b"/", os.O_RDONLY | O_CLOEXEC)
    except OSError:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) == 0:
            return
    except (OSError, AttributeError, ImportError):
        pass
    finally:
        os.close(fd)
    os.sync()


def _copy_all(src: int, dst: int, size: int) -> None:
    offset = 0
    while offset < size:
        try:
            copied = os.copy_file_range(src, dst, size - offset, offset, offset)
        except (AttributeError, OSError):
            data = os.pread(src, min(READ_SIZE, size - offset), offset)
            copied = os.pwrite(dst, data, offset) if data else 0
        if copied <= 0:
            break
        offset += copied


def _set_xattrs(target: Any, wanted: tuple[tuple[bytes, bytes], ...], known: tuple | None = None) -> None:
    """Make ``target``'s xattrs ``wanted``; ``known``: the names it has when the caller knows them."""
    try:
        have = set(os.listxattr(target)) if known is None else set(known)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return  # a target with no xattrs at all (exFAT, FAT): nothing to keep there
        raise
    names = set()
    for name, value in wanted:
        text = name.decode("utf-8", "surrogateescape")
        names.add(text)
        try:
            if text not in have or os.getxattr(target, text) != value:
                os.setxattr(target, text, value)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
    for name in have - names:
        if name.startswith(("user.", "system.posix_acl", "trusted.")):
            try:
                os.removexattr(target, name)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.ENODATA):
                    raise


# ---------------------------------------------------------------- serving batches (agent and in-process)


def problem_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def read_items(
    roots: list[bytes],
    items: Any,
    emit: Any,
    *,
    block_size: int,
    retries: int,
    after_read: Any = None,
    algorithm: str = BLAKE2B_128,
) -> None:
    """Read each (pair, rel, sparse, theirs[, plan]) and emit pieces: (b"s", pair, rel, size) when an
    attempt starts, (b"d", offset, data), (b"e", stable) at the end, or (b"x", pair, rel, message) when the
    file cannot be read (permission denied, gone): logged by the caller, and the rest goes on."""
    for item in items:
        pair, rel, sparse, theirs = item[:4]
        plan = item[4] if len(item) > 4 else None
        path = join(roots[pair], rel)
        started = [False]
        # A small whole file's attempt is held and goes as one piece (b"f", pair, rel, data) once read
        # stable: one tuple on the wire and one call on the writer (TreeWriter.whole) instead of three.
        held: list = [None]  # [size, data] of the current attempt while held; None: pieces pass through
        # once an attempt's pieces went out (a larger file), later attempts of the file go out too
        can_hold = [theirs is None and not sparse]

        def piece(
            kind: bytes,
            offset: int,
            data: Any,
            pair: int = pair,
            rel: bytes = rel,
            started: list = started,
            held: list = held,
            can_hold: list = can_hold,
        ) -> None:
            if kind == b"s":
                started[0] = True
                if can_hold[0] and offset <= SMALL_FILE:
                    held[0] = [offset, b""]
                    return
                held[0] = None
                can_hold[0] = False
                emit((b"s", pair, rel, offset))
            elif held[0] is not None:
                held[0][1] += data
            else:
                emit((kind, offset, data))

        try:
            result = read_file(
                path,
                piece,
                sparse=bool(sparse) and theirs is None,
                block_size=block_size,
                theirs=list(theirs) if theirs is not None else None,
                retries=retries,
                after_read=after_read,
                algorithm=algorithm,
                plan=plan,
            )
        except OSError as exc:
            if started[0] and held[0] is None:
                emit((b"e", False))
            emit((b"x", pair, rel, problem_text(exc).encode()))
            continue
        if held[0] is not None:
            size, data = held[0]
            if result.stable and len(data) == size:
                emit((b"f", pair, rel, data))
                continue
            emit((b"s", pair, rel, size))  # kept changing: sent as read, marked unstable
            if data:
                emit((b"d", 0, data))
        emit((b"e", result.stable))


def meta_tuple(meta: Meta) -> tuple:
    return (meta.mode, meta.uid, meta.gid, meta.mtime_ns, meta.xattrs)


def meta_from(value: tuple) -> Meta:
    return Meta(value[0], value[1], value[2], value[3], value[4])


class Applier:
    """Runs writer operations (see OPS in codec.py) against the writers of each root pair; an operation
    that fails is recorded as a problem and the rest goes on (a full target, a name too long...)."""

    def __init__(self, writers: list[TreeWriter]) -> None:
        self.writers = writers
        self.problems: list[tuple[int, bytes, str]] = []
        self.current: tuple[int, bytes] | None = None  # the file being written, while it is
        self.failed = False  # the current file's writing failed: skip its pieces
        self.written = 0

    def apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == b"W":
            if self.current is not None and not self.failed:
                try:
                    self.writers[self.current[0]].data(op[1], op[2])
                    self.written += len(op[2])
                except OSError as exc:
                    self._fail(exc)
            return
        if kind == b"S":
            if self.current is not None and not self.failed:
                try:
                    self.writers[self.current[0]].restart(op[1])
                except OSError as exc:
                    self._fail(exc)
            return
        if kind == b"E":
            if self.current is not None and not self.failed:
                try:
                    self.writers[self.current[0]].end()
                except OSError as exc:
                    self._fail(exc)
            self.current, self.failed = None, False
            return
        pair, rel = op[1], op[2]
        writer = self.writers[pair]
        try:
            if kind == b"F":
                writer.whole(rel, meta_from(op[3]), op[4], op[5])
                self.written += len(op[4])
            elif kind == b"B":
                self.current, self.failed = (pair, rel), False
                through = len(op) > 6 and bool(op[6])  # replication: written through a target link
                writer.begin(rel, meta_from(op[3]), bool(op[4]), len(op) > 5 and bool(op[5]), through)
            elif kind == b"D":
                writer.folder(rel, meta_from(op[3]))
            elif kind == b"L":
                writer.symlink(rel, meta_from(op[3]), op[4])
            elif kind == b"H":
                writer.hardlink(rel, op[3])
            elif kind == b"A":
                writer.attributes(rel, meta_from(op[3]))
            elif kind == b"R":
                writer.remove(rel)
            elif kind == b"O":
                writer.remove_orphan(rel)
            elif kind == b"M":
                writer.move(rel, op[3])
            elif kind == b"N":
                writer.rename(rel, op[3])
            else:
                raise ValueError(f"unknown operation {kind!r}")
        except (OSError, Skipped) as exc:
            if kind == b"B":
                self.failed = True
            self.problems.append((pair, rel, problem_text(exc)))

    def _fail(self, exc: OSError) -> None:
        assert self.current is not None
        self.failed = True
        self.writers[self.current[0]].abort()
        self.problems.append((self.current[0], self.current[1], problem_text(exc)))

    def finish(self) -> None:
        for writer in self.writers:
            writer.abort()
            writer.finish()
