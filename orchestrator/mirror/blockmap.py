"""The block map: what the target disk holds, chunk by chunk, persisted beside it (``<target>.hvmap``).

It is what makes a re-run cheap (only chunks whose digest changed are sent) and a killed copy resumable
(chunks written in the open pass are skipped without reading). It is only worth anything if a record never
claims data the target does not hold, so the writer side follows two rules and this module persists them:

* a record is written only after its chunk's data was fdatasync'd (records are batched, see ``flush``);
* before any byte of a chunk is overwritten, the chunk's extent (a run of chunks, 256 MiB) is marked *hot*
  durably in a write-intent bitmap, the way md's bitmap and DRBD's activity log do. A chunk overwritten
  and then lost to a kill -9 or a power cut still has its old record on disk; the hot bit says that record
  may lie. On open, records in hot extents that the open pass did not itself write are downgraded to
  *absent*, so the next pass re-sends them. Without this, a block that changes and changes back (a
  bitmap, a superblock flag) would be skipped while the target holds the intermediate version.

Layout (little endian): a 4 KiB header (magic, format version, chunk size, disk size, pass number and
state, the target's inode, the source identity, a CRC), the hot-extent bitmap padded to 4 KiB, then one
32-byte record per chunk: 16-byte xxh3_128 digest, u32 pass that last wrote or confirmed it, u8 state,
a CRC32 of the record. 32 bytes never straddle a sector, and the CRC turns a torn record into *absent*.

Memory is bounded by the chunk count: 21 bytes per chunk in memory (5.5 MB for 1 TiB at 4 MiB chunks); the
file is allocated in full when created, so updating records in place never needs free space.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import portable_io
from .errors import BlockMapMismatch, MirrorError
from .hashing import DIGEST_SIZE, zero_digest
from .portable_io import fdatasync, pread, pwrite_all

log = logging.getLogger(__name__)

MAGIC = b"HVMBMAP\x00"
FORMAT_VERSION = 1
HEADER_SIZE = 4096
EXTENT_BYTES = 256 * 1024**2
IDENTITY_MAX = 384

ABSENT, ZERO, DATA = 0, 1, 2
NO_PASS, FULL_PASS, INCREMENTAL_PASS = 0, 1, 2

_HEADER = struct.Struct(f"<8sIIQQQQBBH{IDENTITY_MAX}s")
_CRC = struct.Struct("<I")
_BODY = struct.Struct(f"<{DIGEST_SIZE}sIB3x")  # digest, pass, state (24 bytes, covered by the CRC)
_RECORD = struct.Struct(f"<{DIGEST_SIZE}sIB3xI4x")  # body + crc + padding = 32 bytes
RECORD_SIZE = _RECORD.size
_NO_DIGEST = bytes(DIGEST_SIZE)
_LOAD_RECORDS = 32768  # records read per pread when loading (1 MiB)


def map_path_for(target: Path) -> Path:
    return Path(str(target) + ".hvmap")


def stored_identity(identity: str) -> bytes:
    """The identity as stored: the string itself, or a digest of it when it does not fit the header."""
    raw = identity.encode()
    if len(raw) <= IDENTITY_MAX:
        return raw
    import xxhash

    return b"xxh3:" + xxhash.xxh3_128_hexdigest(raw).encode()


def _pack_record(digest: bytes, pass_number: int, state: int) -> bytes:
    body = _BODY.pack(digest, pass_number, state)
    return body + _CRC.pack(zlib.crc32(body)) + bytes(4)


@dataclass(frozen=True)
class MapSnapshot:
    """A copy of the map as the writer holds it at the start of a run: what the reader side needs.

    It is a copy (not a view) because later it crosses a wire to a remote reader; the reader decides from
    it which chunks to send, the writer stays the owner of the map.
    """

    chunk_size: int
    disk_size: int
    pass_number: int
    resuming: bool
    states: bytes
    passes: array
    digests: bytes

    @property
    def chunk_count(self) -> int:
        return len(self.states)

    def digest(self, index: int) -> bytes:
        return self.digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]


class BlockMap:
    """The persisted per-chunk record of one target disk; owned by the writer side, one writer at a time."""

    def __init__(
        self,
        path: Path,
        fd: int,
        *,
        chunk_size: int,
        disk_size: int,
        identity: bytes,
        target_ino: int,
        pass_number: int,
        pass_mode: int,
        pass_open: bool,
        chunks_per_extent: int,
    ) -> None:
        self.path = path
        self._fd = fd
        self.chunk_size = chunk_size
        self.disk_size = disk_size
        self.identity = identity
        self.target_ino = target_ino
        self.pass_number = pass_number
        self.pass_mode = pass_mode
        self.pass_open = pass_open
        self.chunks_per_extent = chunks_per_extent
        self.chunk_count = -(-disk_size // chunk_size)
        self.extent_count = -(-self.chunk_count // chunks_per_extent)
        self.bitmap_size = _bitmap_size(self.extent_count)
        self.records_offset = HEADER_SIZE + self.bitmap_size
        self._states = bytearray(self.chunk_count)
        self._passes = array("I", bytes(4 * self.chunk_count))
        self._digests = bytearray(DIGEST_SIZE * self.chunk_count)
        self._hot = bytearray(self.bitmap_size)
        self._hot_count = 0
        self._dirty: list[int] = []
        self.reset_reason: str | None = None  # why the map started over this run (None: it was reused)
        self.downgraded = 0  # records distrusted on open because their extent was hot
        self.damaged = 0  # records whose CRC did not match

    # ------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        chunk_size: int,
        disk_size: int,
        source_identity: str,
        target_ino: int,
        fresh_target: bool,
        seed_zero: Callable[[], Iterable[int]],
    ) -> BlockMap:
        """Open the map of a target, or start it over.

        ``seed_zero`` yields the chunk indices known to read as zero on the target right now (its holes);
        it is called when the map starts over, so a new or replaced target is not re-zeroed needlessly,
        and after a crash, to keep distrusted chunks that are holes as *zero*.
        A different source identity, a replaced target file or a damaged header mean "start over"; a
        different chunk size or disk size is refused, because it means the plan changed under the mirror.
        """
        identity = stored_identity(source_identity)
        reason = "new target" if fresh_target else None
        if reason is None:
            reason = cls._reason_to_start_over(path, chunk_size, disk_size, identity, target_ino)
        if reason is not None:
            blockmap = cls._create(
                path,
                chunk_size=chunk_size,
                disk_size=disk_size,
                identity=identity,
                target_ino=target_ino,
                seed_zero=seed_zero,
            )
            blockmap.reset_reason = reason
            if reason not in ("new target", "no block map yet"):
                log.warning(
                    "block map %s starts over (%s): the next pass copies the whole disk", path, reason
                )
            return blockmap
        blockmap = cls._load(path)
        blockmap._resolve_hot_extents(seed_zero)
        return blockmap

    @staticmethod
    def _reason_to_start_over(
        path: Path, chunk_size: int, disk_size: int, identity: bytes, target_ino: int
    ) -> str | None:
        try:
            with open(path, "rb") as handle:
                raw = handle.read(_HEADER.size + _CRC.size)
        except FileNotFoundError:
            return "no block map yet"
        except OSError as exc:
            raise MirrorError(
                f"cannot read the block map {path}: {exc.strerror}; fix access or delete it"
            ) from None
        if raw[:8] != MAGIC:
            raise MirrorError(
                f"{path} is not a block map (bad magic): move it away so the mirror can create one"
            )
        if len(raw) < _HEADER.size + _CRC.size:
            return "block map header is truncated"
        (crc,) = _CRC.unpack_from(raw, _HEADER.size)
        if zlib.crc32(raw[: _HEADER.size]) != crc:
            return "block map header is damaged"
        fields = _HEADER.unpack_from(raw)
        version, stored_chunk, stored_size = fields[1], fields[3], fields[4]
        stored_ino, id_len = fields[6], fields[9]
        if version != FORMAT_VERSION:
            return f"block map format {version} is not {FORMAT_VERSION}"
        if fields[10][:id_len] != identity:
            return "different source"
        if stored_chunk != chunk_size:
            raise BlockMapMismatch(
                f"block map {path} was made with chunk size {stored_chunk}, this run asks for "
                f"{chunk_size}: set mirror.chunk_size back to {stored_chunk}, or delete the map to copy "
                "the whole disk again"
            )
        if stored_size != disk_size:
            raise BlockMapMismatch(
                f"the source disk was {stored_size} bytes at the last pass and is {disk_size} bytes now "
                f"(block map {path}): re-plan the disk size, or delete the map to copy the whole disk again"
            )
        if target_ino and stored_ino and stored_ino != target_ino:
            return "target file was replaced"
        return None

    @classmethod
    def _create(
        cls,
        path: Path,
        *,
        chunk_size: int,
        disk_size: int,
        identity: bytes,
        target_ino: int,
        seed_zero: Callable[[], Iterable[int]],
    ) -> BlockMap:
        """Write a whole new map beside the old one and rename it over, so a crash leaves one or the other."""
        count = -(-disk_size // chunk_size)
        blockmap = cls(
            path,
            -1,
            chunk_size=chunk_size,
            disk_size=disk_size,
            identity=identity,
            target_ino=target_ino,
            pass_number=0,
            pass_mode=NO_PASS,
            pass_open=False,
            chunks_per_extent=max(1, EXTENT_BYTES // chunk_size),
        )
        for index in seed_zero():
            blockmap._states[index] = ZERO
        tmp = Path(str(path) + ".tmp")
        fd = os.open(tmp, portable_io.open_flags(os.O_RDWR | os.O_CREAT | os.O_TRUNC), 0o600)
        try:
            pwrite_all(fd, blockmap._header_bytes().ljust(HEADER_SIZE + blockmap.bitmap_size, b"\0"), 0)
            absent = _pack_record(_NO_DIGEST, 0, ABSENT)
            zero = _pack_record(_NO_DIGEST, 0, ZERO)
            for start in range(0, count, _LOAD_RECORDS):
                states = blockmap._states[start : start + _LOAD_RECORDS]
                block = b"".join(zero if state == ZERO else absent for state in states)
                pwrite_all(fd, block, blockmap.records_offset + start * RECORD_SIZE)
            os.fsync(fd)
        except OSError as exc:
            portable_io.close(fd)
            tmp.unlink(missing_ok=True)
            raise MirrorError(
                f"cannot write the block map {path}: {exc.strerror}; free space beside the "
                "target disk and run again"
            ) from None
        # Windows renames no file that is open: closed first, opened again under its new name
        portable_io.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        blockmap._fd = os.open(path, portable_io.open_flags(os.O_RDWR))
        return blockmap

    @classmethod
    def _load(cls, path: Path) -> BlockMap:
        fd = os.open(path, portable_io.open_flags(os.O_RDWR))
        raw = pread(fd, _HEADER.size, 0)
        (
            _m,
            _v,
            per_extent,
            chunk_size,
            disk_size,
            pass_number,
            target_ino,
            pass_mode,
            pass_open,
            id_len,
            identity,
        ) = _HEADER.unpack(raw)
        blockmap = cls(
            path,
            fd,
            chunk_size=chunk_size,
            disk_size=disk_size,
            identity=identity[:id_len],
            target_ino=target_ino,
            pass_number=pass_number,
            pass_mode=pass_mode,
            pass_open=bool(pass_open),
            chunks_per_extent=per_extent,
        )
        expected = blockmap.records_offset + blockmap.chunk_count * RECORD_SIZE
        if os.fstat(fd).st_size < expected:
            portable_io.close(fd)
            raise MirrorError(f"block map {path} is truncated: delete it to copy the whole disk again")
        blockmap._hot[:] = pread(fd, blockmap.bitmap_size, HEADER_SIZE)
        blockmap._hot_count = sum(bin(byte).count("1") for byte in blockmap._hot)
        states, passes, digests = blockmap._states, blockmap._passes, blockmap._digests
        for start in range(0, blockmap.chunk_count, _LOAD_RECORDS):
            wanted = min(_LOAD_RECORDS, blockmap.chunk_count - start)
            block = pread(fd, wanted * RECORD_SIZE, blockmap.records_offset + start * RECORD_SIZE)
            for k, (digest, pass_number_k, state, crc) in enumerate(_RECORD.iter_unpack(block)):
                if state == ABSENT:
                    continue
                index = start + k
                if state > DATA or zlib.crc32(block[k * RECORD_SIZE : k * RECORD_SIZE + _BODY.size]) != crc:
                    blockmap.damaged += 1
                    continue
                states[index] = state
                passes[index] = pass_number_k
                digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE] = digest
        if blockmap.damaged:
            log.warning("block map %s: %d damaged records will be copied again", path, blockmap.damaged)
        return blockmap

    @classmethod
    def existing(cls, path: Path) -> BlockMap | None:
        """The map at ``path`` as it is, for a change outside the mirror (see ``forget``); None when
        there is none the mirror would reuse (no file, not a map, truncated)."""
        try:
            with open(path, "rb") as handle:
                if handle.read(len(MAGIC)) != MAGIC:
                    return None
            return cls._load(path)
        except (OSError, MirrorError):
            return None

    def forget(self, indices: Iterable[int]) -> int:
        """Mark chunks absent, durably, so the next pass sends them again: their target bytes were
        changed by something other than the mirror (staging edits a replica's boot disk in place).
        Hot extents are left as they are. Returns how many records changed."""
        changed = sorted({i for i in indices if 0 <= i < self.chunk_count and self._states[i] != ABSENT})
        for index in changed:
            self._states[index] = ABSENT
            self._passes[index] = 0
            self._digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE] = _NO_DIGEST
            self._write_records(index, index + 1)
        if changed:
            fdatasync(self._fd)
        return len(changed)

    def _resolve_hot_extents(self, seed_zero: Callable[[], Iterable[int]]) -> None:
        """Distrust every record of a hot extent that the open pass did not write itself (see module doc).

        A distrusted chunk that is a hole of the target right now is known to read as zeros, whatever
        happened before the crash, so it becomes *zero* rather than *absent* and costs nothing to resume.
        """
        if not self._hot_count:
            return
        hole_now = bytearray(self.chunk_count)
        for index in seed_zero():
            hole_now[index] = 1
        for extent in range(self.extent_count):
            if not self._hot[extent >> 3] & (1 << (extent & 7)):
                continue
            first = extent * self.chunks_per_extent
            for index in range(first, min(first + self.chunks_per_extent, self.chunk_count)):
                if self._states[index] != ABSENT and self._passes[index] != self.pass_number:
                    self.set(index, ZERO if hole_now[index] else ABSENT, 0, _NO_DIGEST)
                    self.downgraded += 1
        self.flush()
        os.fsync(self._fd)

    # ------------------------------------------------------------ records

    def state(self, index: int) -> int:
        return self._states[index]

    def pass_of(self, index: int) -> int:
        return self._passes[index]

    def digest(self, index: int) -> bytes:
        return bytes(self._digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE])

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.disk_size - index * self.chunk_size)

    def set(self, index: int, state: int, pass_number: int, digest: bytes) -> None:
        """Change a record in memory; it reaches the file at the next ``flush``."""
        self._states[index] = state
        self._passes[index] = pass_number
        self._digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE] = (
            digest if state == DATA else _NO_DIGEST
        )
        self._dirty.append(index)

    @property
    def memory_bytes(self) -> int:
        """What the records cost in memory: 21 bytes per chunk."""
        return len(self._states) + len(self._digests) + self._passes.itemsize * len(self._passes)

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)

    def mark_hot(self, index: int) -> None:
        """Durably note that chunk ``index`` may be overwritten; must return before the first byte is."""
        extent = index // self.chunks_per_extent
        byte, bit = extent >> 3, 1 << (extent & 7)
        if self._hot[byte] & bit:
            return
        self._hot[byte] |= bit
        self._hot_count += 1
        pwrite_all(self._fd, bytes(self._hot[byte : byte + 1]), HEADER_SIZE + byte)
        fdatasync(self._fd)

    def flush(self, keep_hot: Iterable[int] = ()) -> None:
        """Persist changed records, then cool the hot extents, except those of the chunks in ``keep_hot``
        (written but not durable yet).

        The caller must have made the data behind every changed record durable first. Records are made
        durable before the hot bits are cleared, since a cleared bit vouches for the records under it; the
        cleared bits themselves need no fsync (a bit that stays set only costs a re-send).
        """
        if self._dirty:
            indices = sorted(set(self._dirty))
            self._dirty.clear()
            run_start = previous = indices[0]
            for index in [*indices[1:], -1]:
                if index == previous + 1:
                    previous = index
                    continue
                self._write_records(run_start, previous + 1)
                run_start = previous = index
            fdatasync(self._fd)
        if self._hot_count:
            hot = bytearray(self.bitmap_size)
            for index in keep_hot:
                extent = index // self.chunks_per_extent
                hot[extent >> 3] |= 1 << (extent & 7)
            if hot != self._hot:
                self._hot[:] = hot
                self._hot_count = sum(bin(byte).count("1") for byte in hot)
                pwrite_all(self._fd, bytes(hot), HEADER_SIZE)

    def _write_records(self, start: int, stop: int) -> None:
        states, passes, digests = self._states, self._passes, self._digests
        block = b"".join(
            _pack_record(bytes(digests[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE]), passes[i], states[i])
            for i in range(start, stop)
        )
        pwrite_all(self._fd, block, self.records_offset + start * RECORD_SIZE)

    # ------------------------------------------------------------ passes

    def begin_pass(self, mode: int, *, resume: bool) -> bool:
        """Open a pass; returns True when it resumes the interrupted pass of the same mode."""
        if resume and self.pass_open and self.pass_mode == mode:
            return True
        self.pass_number += 1
        self.pass_mode = mode
        self.pass_open = True
        self._write_header()
        return False

    def end_pass(self) -> None:
        self.flush()
        self.pass_open = False
        self._write_header()

    def _header_bytes(self) -> bytes:
        header = _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            self.chunks_per_extent,
            self.chunk_size,
            self.disk_size,
            self.pass_number,
            self.target_ino,
            self.pass_mode,
            int(self.pass_open),
            len(self.identity),
            self.identity,
        )
        return header + _CRC.pack(zlib.crc32(header))

    def _write_header(self) -> None:
        pwrite_all(self._fd, self._header_bytes(), 0)
        fdatasync(self._fd)

    # ------------------------------------------------------------ reading it back

    def snapshot(self, resuming: bool) -> MapSnapshot:
        return MapSnapshot(
            chunk_size=self.chunk_size,
            disk_size=self.disk_size,
            pass_number=self.pass_number,
            resuming=resuming,
            states=bytes(self._states),
            passes=array("I", self._passes),
            digests=bytes(self._digests),
        )

    def chunk_digests(self) -> Iterable[bytes | None]:
        """Per-chunk digests in disk order (None for a chunk the map knows nothing about)."""
        for index in range(self.chunk_count):
            state = self._states[index]
            if state == DATA:
                yield bytes(self._digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE])
            elif state == ZERO:
                yield zero_digest(self.chunk_length(index))
            else:
                yield None

    def close(self) -> None:
        if self._fd >= 0:
            portable_io.close(self._fd)
            self._fd = -1


def _bitmap_size(extent_count: int) -> int:
    """One bit per extent, padded to whole 4 KiB pages so the records stay page aligned."""
    needed = -(-extent_count // 8)
    return max(HEADER_SIZE, -(-needed // HEADER_SIZE) * HEADER_SIZE)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; Windows opens no directory (and NTFS journals the rename itself)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
