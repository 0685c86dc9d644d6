"""The local transport between the reader side and the writer side: a thread and a bounded queue.

With both sides on one machine the writer runs on its own thread, so reading and hashing the next chunks
overlaps with writing, fdatasync and the read-back check of the previous ones (the profile of a 1 GiB copy
is about a third each). A remote agent over a framed protocol will replace this module and keep its
interface: the reader borrows a buffer, fills it, and hands it over with ``write``; the writer gives it
back once stored. The number of buffers bounds the memory, whatever the disk size.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from .hashing import aligned_buffer
from .writer import TargetWriter

BUFFER_BUDGET = 16 * 1024**2  # bytes of chunk buffers in flight per disk
MAX_QUEUED_MESSAGES = 1024
TICK_SECONDS = 0.5  # an idle writer (reader throttled or slow) still settles and records on time
_STOP = ("stop",)


class ThreadedWriter:
    """Feeds one TargetWriter on a dedicated thread; the TargetWriter is touched by that thread only until
    ``join`` returns, after which the caller owns it again (to finish, abort or close it)."""

    def __init__(self, writer: TargetWriter, chunk_size: int, *, depth: int | None = None) -> None:
        self._writer = writer
        self._depth = depth or max(2, min(4, BUFFER_BUDGET // chunk_size))
        self._free: queue.Queue[memoryview] = queue.Queue()
        for _ in range(self._depth):
            self._free.put(aligned_buffer(chunk_size))
        # bounded too: a sparse terabyte is 262144 zero messages the reader could queue in a second
        self._ops: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=MAX_QUEUED_MESSAGES)
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"mirror-writer:{writer.path.name}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------ reader side

    def borrow(self) -> memoryview:
        buffer = self._free.get()
        self._raise_if_failed()
        return buffer

    def try_borrow(self, timeout: float) -> memoryview | None:
        """A free buffer, or None after ``timeout`` seconds without one (a read-ahead thread's way)."""
        try:
            return self._free.get(timeout=timeout)
        except queue.Empty:
            return None

    def give_back(self, buffer: memoryview) -> None:
        self._free.put(buffer)

    def write(self, offset: int, buffer: memoryview, length: int, digest: bytes) -> None:
        """Hand ``buffer`` (its first ``length`` bytes) over; it returns to the pool once stored."""
        self._raise_if_failed()
        self._ops.put(("write", offset, buffer, length, digest))

    def zero(self, offset: int, length: int) -> None:
        self._raise_if_failed()
        self._ops.put(("zero", offset, length))

    def confirm(self, offset: int, digest: bytes) -> None:
        self._raise_if_failed()
        self._ops.put(("confirm", offset, digest))

    def join(self) -> None:
        """Let the writer apply everything queued, stop its thread, and raise its error if it had one."""
        if self._thread.is_alive():
            self._ops.put(_STOP)
            self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    # ------------------------------------------------------------ writer thread

    def _run(self) -> None:
        writer = self._writer
        while True:
            try:
                op = self._ops.get(timeout=TICK_SECONDS)
            except queue.Empty:
                op = ("tick",)
            kind = op[0]
            if kind == "stop":
                return
            try:
                if self.error is None:
                    if kind == "write":
                        _, offset, buffer, length, digest = op
                        writer.write(offset, buffer[:length], digest)
                    elif kind == "zero":
                        writer.zero(op[1], op[2])
                    elif kind == "confirm":
                        writer.confirm(op[1], op[2])
                    else:
                        writer.tick()
            except BaseException as exc:  # MirrorError, or a bug: either must surface in the caller's thread
                self.error = exc
            finally:
                if kind == "write":
                    self._free.put(op[2])
