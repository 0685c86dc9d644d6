"""Chunk digests shared by the reader side and the writer side.

Both sides must agree bit for bit on how a chunk and a whole disk are digested (the writer checks what it
received and what it wrote; the orchestrator compares the two whole-disk digests), so the definitions live
in one place. A zero chunk has a real digest (that of its zero bytes) so that the whole-disk digest of a
sparse source and of its sparse replica are computed the same way without reading any hole.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import xxhash

DIGEST_SIZE = 16  # xxh3_128


def chunk_digest(data: bytes | bytearray | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


@lru_cache(maxsize=16)
def zero_digest(length: int) -> bytes:
    """Digest of ``length`` zero bytes; cached because a disk has at most two chunk lengths."""
    return xxhash.xxh3_128_digest(bytes(length))


@lru_cache(maxsize=8)
def zero_block(length: int) -> bytes:
    """A shared read-only zero buffer: comparing a bytearray to it runs at memcmp speed."""
    return bytes(length)


class DiskDigest:
    """Whole-disk digest: xxh3_128 over the ordered per-chunk digests.

    Equal for two disks iff every chunk digest is equal (up to hash collisions), whichever side computed
    it and whether a chunk was read, skipped as a hole or taken from the block map.
    """

    def __init__(self) -> None:
        self._hasher = xxhash.xxh3_128()

    def update(self, chunk: bytes) -> None:
        self._hasher.update(chunk)

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


def disk_digest(chunk_digests: Iterable[bytes]) -> str:
    digest = DiskDigest()
    for chunk in chunk_digests:
        digest.update(chunk)
    return digest.hexdigest()
