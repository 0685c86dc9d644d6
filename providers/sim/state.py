"""The sim host's state directory: JSON documents beside sparse disk files, changed under one lock.

Steps run in threads and a user may run `migrate status` while `migrate execute` works, so every change
holds a thread lock *and* an flock on ``root/.lock`` (the flock serialises processes, the thread lock
serialises this process's threads, which flock alone would not when they share one descriptor). Each
document is replaced atomically (temporary file, fsync, rename), so a crash leaves either the old or the
new version, never half of one; that is what lets the journal trust what it finds after a restart.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

INITIALIZED = ".initialized"  # written once the host's layout is complete


class HostState:
    def __init__(self, root: Path, initialize: Callable[[], None] | None = None) -> None:
        self.root = root
        self._initialize = initialize  # builds the host's folders on its first write, never on a read
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._lock_fd = -1
        self._swept = False

    @contextmanager
    def locked(self, *, write: bool = True) -> Iterator[None]:
        """Exclusive access to the whole state; re-entrant within a thread.

        A read of a host that was never written creates nothing, so validation and dry runs touch nothing.
        """
        with self._thread_lock:
            if self._depth == 0 and not write and not self.root.exists():
                yield
                return
            if self._depth == 0:
                self.root.mkdir(parents=True, exist_ok=True)
                self._lock_fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                # a writer killed while laying the host out left no marker: the next one lays it out again
                fresh = not (self.root / INITIALIZED).exists()
            self._depth += 1
            try:
                if self._depth == 1 and not self._swept:
                    self._swept = True
                    self._sweep_orphans()
                if self._depth == 1 and fresh:
                    if self._initialize is not None:
                        self._initialize()
                    (self.root / INITIALIZED).touch()
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    os.close(self._lock_fd)  # closing the descriptor releases the flock
                    self._lock_fd = -1

    def _sweep_orphans(self) -> None:
        """Remove the temporary files of writers that died between creating and renaming them (kill -9,
        a power cut): a document's ``.<name>.*.tmp``, a half-made disk's ``.<disk>.raw.tmp``.

        Called once per process, holding the flock, which every writer holds for as long as its temporary
        file exists: whatever is found belongs to nobody alive.
        """
        folders = [self.root, self.root / "vms", self.root / "appliances"]
        datastores = self.root / "datastores"
        if datastores.is_dir():
            folders += [d for d in datastores.iterdir() if d.is_dir()]
        for folder in folders:
            for orphan in folder.glob(".*.tmp"):
                orphan.unlink(missing_ok=True)

    def read(self, relative: str) -> dict[str, Any] | None:
        path = self.root / relative
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path} is not valid JSON ({exc}); restore it or delete it to forget that object"
            ) from None

    def write(self, relative: str, data: dict[str, Any]) -> None:
        self.write_text(relative, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def write_text(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def delete(self, relative: str) -> bool:
        try:
            (self.root / relative).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir((self.root / relative).parent)
        return True

    def documents(self, folder: str) -> list[dict[str, Any]]:
        """Every ``*.json`` document of a folder, by file name order."""
        directory = self.root / folder
        if not directory.is_dir():
            return []
        found = []
        for path in sorted(directory.glob("*.json")):
            data = self.read(f"{folder}/{path.name}")
            if data is not None:
                found.append(data)
        return found


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: without this a power cut can bring the old name back."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
