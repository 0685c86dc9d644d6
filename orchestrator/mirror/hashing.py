"""Chunk digests shared by the reader side and the writer side.

Both sides must agree bit for bit on how a chunk and a whole disk are digested (the writer checks what it
received and what it wrote; the orchestrator compares the two whole-disk digests), so the definitions live
in one place. A zero chunk has a real digest (that of its zero bytes) so that the whole-disk digest of a
sparse source and of its sparse replica are computed the same way without reading any hole.

This module also ships inside the agent (orchestrator/agent.py), which runs on hosts where only the
standard library can be counted on: xxhash is optional there, and ``chunk_hasher`` gives the algorithm two
ends negotiated (xxh3_128 when both have xxhash, else SHA-256 truncated to 128 bits where both CPUs
compute it in hardware, else BLAKE2b-128 from hashlib). The module-level
functions below stay xxh3_128, the orchestrator's own (xxhash is one of its dependencies).
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Callable, Iterable
from functools import lru_cache

try:
    import xxhash
except ImportError:  # an agent on a host without xxhash: BLAKE2b only
    xxhash = None  # type: ignore[assignment]

DIGEST_SIZE = 16  # xxh3_128, and BLAKE2b truncated to 128 bits: the block map's record holds 16 bytes
XXH3_128 = "xxh3_128"
SHA256_128 = "sha256-128"
BLAKE2B_128 = "blake2b-128"
PREFERRED_ALGORITHMS = (XXH3_128, SHA256_128, BLAKE2B_128)  # best first; the first one both ends have wins


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


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """True when ``data`` holds zero bytes only, at memcmp speed whatever buffer it is.

    ``memoryview == bytes`` compares item by item (30x slower); ``bytes.startswith`` takes any buffer and
    memcmps it, and stops at the first non-zero byte of a data chunk.
    """
    return zero_block(len(data)).startswith(data)


def aligned_buffer(size: int) -> memoryview:
    """A zeroed, writable buffer of ``size`` bytes that starts on a page boundary.

    A large bytearray starts 16 bytes into its page (malloc's header), and some CPUs copy from the kernel
    into a destination that is not 32-byte aligned four times slower (measured on AMD EPYC: preadv of a
    cached file at 2.5 GB/s into a bytearray, 10 GB/s into this), so every chunk buffer a mirror reads
    into comes from here. Anonymous memory: pages cost RSS only once touched.
    """
    return memoryview(mmap.mmap(-1, max(1, size)))[:size]


class DiskDigest:
    """Whole-disk digest: the chunk algorithm over the ordered per-chunk digests.

    Equal for two disks iff every chunk digest is equal (up to hash collisions), whichever side computed
    it and whether a chunk was read, skipped as a hole or taken from the block map.
    """

    def __init__(self, algorithm: str = XXH3_128) -> None:
        if algorithm == XXH3_128:
            self._hasher = xxhash.xxh3_128()
        elif algorithm == BLAKE2B_128:
            self._hasher = hashlib.blake2b(digest_size=DIGEST_SIZE)
        elif algorithm == SHA256_128:
            self._hasher = hashlib.sha256()
        else:
            raise ValueError(f"unknown digest algorithm {algorithm!r}")

    def update(self, chunk: bytes) -> None:
        self._hasher.update(chunk)

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


def disk_digest(chunk_digests: Iterable[bytes], algorithm: str = XXH3_128) -> str:
    digest = DiskDigest(algorithm)
    for chunk in chunk_digests:
        digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=1)
def sha_in_hardware() -> bool:
    """Whether this CPU computes SHA-256 in hardware (x86 SHA extensions, ARMv8 SHA-2 instructions).

    A host without xxhash then digests with hashlib's SHA-256 at 1.4 GB/s against BLAKE2b's 0.4 GB/s
    (measured here, one core); without those instructions SHA-256 is slower than BLAKE2b, so it is not
    offered at all. Read from /proc/cpuinfo: elsewhere (Windows) it is not offered either.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return bool({"sha_ni", "sha2"} & set(line.split()))
    except OSError:
        pass
    return False


def available_algorithms() -> tuple[str, ...]:
    """The chunk digest algorithms this process can compute, best first."""
    return tuple(
        name
        for name in PREFERRED_ALGORITHMS
        if (name != XXH3_128 or xxhash is not None) and (name != SHA256_128 or sha_in_hardware())
    )


def _blake2b_128(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


def _sha256_128(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()[:DIGEST_SIZE]


class ChunkHasher:
    """One digest algorithm, as both ends of a stream must use it: chunks, zero chunks and whole disks."""

    def __init__(self, name: str, digest: Callable[[bytes | bytearray | memoryview], bytes]) -> None:
        self.name = name
        self.digest = digest
        self.zero = lru_cache(maxsize=16)(lambda length: digest(zero_block(length)))

    def disk(self) -> DiskDigest:
        return DiskDigest(self.name)

    def __repr__(self) -> str:
        return f"ChunkHasher({self.name!r})"


@lru_cache(maxsize=8)
def chunk_hasher(name: str = XXH3_128) -> ChunkHasher:
    """The hasher for ``name``; refuses an algorithm this process cannot compute rather than substitute."""
    if name == XXH3_128:
        if xxhash is None:
            raise ValueError("xxh3_128 needs the xxhash module, which this Python does not have")
        return ChunkHasher(XXH3_128, xxhash.xxh3_128_digest)
    if name == BLAKE2B_128:
        return ChunkHasher(BLAKE2B_128, _blake2b_128)
    if name == SHA256_128:
        return ChunkHasher(SHA256_128, _sha256_128)
    raise ValueError(f"unknown digest algorithm {name!r} (known: {', '.join(PREFERRED_ALGORITHMS)})")


def negotiate_algorithm(*sides: Iterable[str]) -> str:
    """The best algorithm every side offers; BLAKE2b-128 is always among them (hashlib has it)."""
    offered = [set(side) for side in sides]
    for name in PREFERRED_ALGORITHMS:
        if all(name in names for names in offered):
            return name
    raise ValueError("the two ends share no digest algorithm: upgrade the agent")
