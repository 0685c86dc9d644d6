"""The data mover's fast paths: aligned chunk buffers, zero detection on any buffer, the SSH channel's
packet buffer, and the reader's compression effort. Each is a speed-up that must not change a byte."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import queue
import threading
import time
from pathlib import Path

import pytest
from paramiko.buffered_pipe import PipeTimeout

from orchestrator.agent import _Effort
from orchestrator.mirror import protocol as wire
from orchestrator.mirror.file_reader import FileDiskReader, ReadAhead
from orchestrator.mirror.hashing import aligned_buffer, is_zero
from orchestrator.transport.ssh import PacketPipe

KiB, MiB = 1024, 1024**2
TEXT = b"Jan 01 00:00:00 db01 sshd[1]: Accepted publickey for root from 10.0.0.1\n" * 60000


# ---------------------------------------------------------------- buffers and zeros


def address(buffer: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


@pytest.mark.parametrize("size", [4096, 4 * MiB, 4 * MiB + 100, 1])
def test_an_aligned_buffer_starts_on_a_page_is_zeroed_and_writable(size: int) -> None:
    buffer = aligned_buffer(size)
    assert len(buffer) == size and address(buffer) % mmap.PAGESIZE == 0
    assert is_zero(buffer)
    buffer[size - 1 : size] = b"x"
    assert not is_zero(buffer) and bytes(buffer[-1:]) == b"x"


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "aligned", "slice"])
def test_zero_detection_is_exact_on_every_kind_of_buffer(kind: str) -> None:
    size = 256 * KiB

    def make(data: bytes) -> bytes | bytearray | memoryview:
        if kind == "bytes":
            return data
        if kind == "bytearray":
            return bytearray(data)
        buffer = aligned_buffer(size + 10)
        buffer[: len(data)] = data
        return buffer[: len(data)] if kind == "aligned" else memoryview(bytearray(b"\xff" + data))[1:]

    assert is_zero(make(bytes(size)))
    assert is_zero(make(b""))
    for position in (0, 1, size // 2, size - 1):
        data = bytearray(size)
        data[position] = 1
        assert not is_zero(make(bytes(data))), position


# ---------------------------------------------------------------- read-ahead

CHUNK = 64 * KiB


def sparse_disk(path: Path, data_chunks: set[int], count: int = 16) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(count * CHUNK)
        for index in sorted(data_chunks):
            handle.seek(index * CHUNK)
            handle.write(bytes([index + 1]) * CHUNK)
    return path


def pool(count: int) -> queue.Queue:
    buffers: queue.Queue = queue.Queue()
    for _ in range(count):
        buffers.put(aligned_buffer(CHUNK))
    return buffers


def read_ahead(reader: FileDiskReader, buffers: queue.Queue, wanted=lambda index: True) -> ReadAhead:
    return ReadAhead.from_pool(reader, buffers, chunk_size=CHUNK, size=reader.size, wanted=wanted)


def test_read_ahead_reads_data_chunks_in_order_and_announces_holes_and_skips_in_runs(tmp_path: Path) -> None:
    buffers = pool(3)
    with FileDiskReader(sparse_disk(tmp_path / "disk.img", {2, 3, 9, 15})) as reader:
        ahead = read_ahead(reader, buffers, wanted=lambda index: index != 9)
        seen = []
        for kind, first, count, buffer, got, error in ahead:
            assert error is None
            if kind == ReadAhead.DATA:
                assert count == 1 and got == CHUNK and bytes(buffer[:CHUNK]) == bytes([first + 1]) * CHUNK
                buffers.put(buffer)
            seen.append((kind, first, count))
        ahead.stop()
    hole, skip, data = ReadAhead.HOLE, ReadAhead.SKIP, ReadAhead.DATA
    assert seen == [
        (hole, 0, 2),
        (data, 2, 1),
        (data, 3, 1),
        (hole, 4, 5),
        (skip, 9, 1),
        (hole, 10, 5),
        (data, 15, 1),
    ]
    assert buffers.qsize() == 3


class FailingReader(FileDiskReader):
    """A real file whose chunk 3 cannot be read (as a disk with a bad sector answers)."""

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        if offset == 3 * CHUNK:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return super().read_into(offset, buf)


def test_read_ahead_hands_a_read_error_over_with_its_chunk_and_stops_there(tmp_path: Path) -> None:
    buffers = pool(2)
    with FailingReader(sparse_disk(tmp_path / "disk.img", set(range(8)), count=8)) as reader:
        ahead = read_ahead(reader, buffers)
        items = []
        for _kind, first, _count, buffer, _got, error in ahead:
            items.append((first, error.errno if error else None))
            buffers.put(buffer)
        ahead.stop()
    assert items == [(0, None), (1, None), (2, None), (3, errno.EIO)]
    assert buffers.qsize() == 2


def test_stopping_read_ahead_early_gives_every_buffer_back(tmp_path: Path) -> None:
    buffers = pool(3)
    with FileDiskReader(sparse_disk(tmp_path / "disk.img", set(range(16)))) as reader:
        ahead = read_ahead(reader, buffers)
        first = next(iter(ahead))
        time.sleep(0.2)  # let it fill the rest of the pool and block
        ahead.stop()
    assert first[0] == ReadAhead.DATA and buffers.qsize() == 2  # the caller still holds the first


# ---------------------------------------------------------------- the SSH channel's receive buffer


def test_the_packet_pipe_serves_packets_in_order_and_never_more_than_asked() -> None:
    pipe = PacketPipe()
    packets = [os.urandom(n) for n in (100, 258048, 7, 4096)]
    for packet in packets:
        pipe.feed(packet)
    assert len(pipe) == sum(map(len, packets)) and pipe.read_ready()
    received = bytearray()
    asks = [12, 12, 1, 300000, 5, 5, 10000]
    reads = 0
    while len(pipe):
        ask = asks[reads % len(asks)]
        got = pipe.read(ask)
        assert 0 < len(got) <= ask
        received += got
        reads += 1
    assert bytes(received) == b"".join(packets)
    assert not pipe.read_ready() and len(pipe) == 0


def test_the_packet_pipe_returns_a_whole_packet_without_copying_it() -> None:
    pipe = PacketPipe()
    packet = os.urandom(64 * KiB)
    pipe.feed(packet)
    assert pipe.read(1 * MiB) is packet


def test_the_packet_pipe_waits_for_data_then_ends_at_close() -> None:
    pipe = PacketPipe()
    with pytest.raises(PipeTimeout):
        pipe.read(10, timeout=0.05)

    def later() -> None:
        time.sleep(0.1)
        pipe.feed(b"late")
        pipe.close()

    threading.Thread(target=later).start()
    assert pipe.read(10) == b"late"
    assert pipe.read(10) == b""  # closed and drained: end of stream


def test_the_packet_pipe_event_follows_what_is_buffered() -> None:
    pipe = PacketPipe()
    event = threading.Event()
    pipe.set_event(event)
    assert not event.is_set()
    pipe.feed(b"abc")
    assert event.is_set()
    assert pipe.empty() == b"abc" and not event.is_set()
    pipe.close()
    assert event.is_set()


# ---------------------------------------------------------------- compression effort


def test_compression_effort_steps_down_while_the_stream_waits_and_back_up_when_it_does_not() -> None:
    compressor = wire.ChunkCompressor("zstd", 3)
    effort = _Effort(compressor)
    assert effort.level == 3
    for _ in range(10):
        effort.observe(waited=True, backlog=0)
    assert effort.level == compressor.min_level == 1  # never below the floor
    for _ in range(_Effort.UP_AFTER):
        effort.observe(waited=False, backlog=0)  # the reader is the slowest: nothing to learn
    assert effort.level == 1
    for _ in range(_Effort.UP_AFTER):
        effort.observe(waited=False, backlog=3)
    assert effort.level == 2
    for _ in range(10 * _Effort.UP_AFTER):
        effort.observe(waited=False, backlog=3)
    assert effort.level == 3  # never above the configured level


@pytest.mark.parametrize(("name", "codec"), [("zstd", wire.ZSTD), ("zlib", wire.ZLIB)])
def test_every_effort_level_round_trips_and_stays_within_the_configured_range(name: str, codec: int) -> None:
    compressor = wire.ChunkCompressor(name, 3)
    chunk = TEXT[: 1 * MiB]
    sizes = {}
    for level in (-20, 1, 2, 3, 50):
        got, payload = compressor.compress(chunk, level)
        assert got == codec
        assert bytes(wire.decompress(got, payload, len(chunk))) == chunk
        sizes[level] = len(payload)
    assert sizes[-20] == sizes[1] and sizes[50] == sizes[3]  # clamped to [min_level, configured level]
