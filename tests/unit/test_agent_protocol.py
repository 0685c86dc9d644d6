"""The agent wire protocol on real pipes: framing, damage detection, compression choices, negotiation."""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator

import pytest

from orchestrator.mirror import protocol as wire
from orchestrator.mirror.hashing import (
    BLAKE2B_128,
    SHA256_128,
    XXH3_128,
    DiskDigest,
    chunk_digest,
    chunk_hasher,
    negotiate_algorithm,
    zero_digest,
)
from orchestrator.mirror.writer import map_identity

TEXT = b"The quick brown fox jumps over the lazy dog 0123456789\n" * 20000


@pytest.fixture
def pipe() -> Iterator[tuple[wire.FrameChannel, wire.FrameChannel, wire.FdStream]]:
    """A sending channel and a receiving channel over one real pipe, plus the raw sending stream."""
    read_fd, write_fd = os.pipe()
    wire.widen_pipe(read_fd)
    sender_stream = wire.FdStream(-1, write_fd, "test sender")
    receiver = wire.FrameChannel(wire.FdStream(read_fd, -1, "test sender"), "test sender")
    yield wire.FrameChannel(sender_stream, "receiver"), receiver, sender_stream
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


def test_frames_cross_a_pipe_intact(pipe: tuple) -> None:
    sender, receiver, _ = pipe
    payload = os.urandom(300_000)
    sender.send(wire.DATA, wire.DATA_PREFIX.pack(7, bytes(16)), payload, flags=wire.RAW)
    sender.send_json(wire.END, {"digest": "abc", "n": 1})
    sender.send(wire.ACK, wire.ACK_BODY.pack(42))

    data = receiver.receive()
    assert data.type == wire.DATA and data.codec == wire.RAW
    assert bytes(data.payload) == wire.DATA_PREFIX.pack(7, bytes(16)) + payload
    assert receiver.receive().json() == {"digest": "abc", "n": 1}
    assert wire.ACK_BODY.unpack(receiver.receive().payload) == (42,)
    assert receiver.received_bytes == sender.sent_bytes


@pytest.mark.parametrize("position", ["type", "length", "payload"])
def test_a_flipped_bit_anywhere_is_caught(pipe: tuple, position: str) -> None:
    _, receiver, raw = pipe
    payload = bytearray(b"x" * 1000)
    header = bytearray(wire.frame_header(wire.SAME, (payload,)))
    if position == "type":
        header[2] ^= 0x01
    elif position == "length":
        header[4] ^= 0x01  # 1000 -> 1001: one byte more is read, then the CRC disagrees
        payload += b"y"
    else:
        payload[500] ^= 0x10
    raw.write(header, payload)
    with pytest.raises(wire.ProtocolError, match="arrived damaged"):
        receiver.receive()


def test_a_banner_on_stdout_is_named_as_such(pipe: tuple) -> None:
    _, receiver, raw = pipe
    raw.write(b"Welcome to db01! Last login: yesterday\n")
    with pytest.raises(wire.ProtocolError, match="login banner") as caught:
        receiver.receive()
    assert not caught.value.retryable


def test_an_absurd_length_is_refused_before_reading(pipe: tuple) -> None:
    _, receiver, raw = pipe
    raw.write(wire.HEADER.pack(wire.MAGIC, wire.DATA, 0, wire.MAX_PAYLOAD + 1, 0))
    with pytest.raises(wire.ProtocolError, match="damaged"):
        receiver.receive()


def test_end_of_stream_mid_frame_is_stream_closed(pipe: tuple) -> None:
    _, receiver, raw = pipe
    raw.write(wire.frame_header(wire.SAME, (b"12345678",)), b"1234")
    os.close(raw.write_fd)
    with pytest.raises(wire.StreamClosed, match="middle of a frame"):
        receiver.receive()


def test_a_lent_buffer_receives_the_payload(pipe: tuple) -> None:
    sender, receiver, _ = pipe
    buffer = bytearray(100_000)
    sender.send(wire.DATA, b"p" * 24, b"q" * 5000)
    frame = receiver.receive(into=lambda _type, n: (buffer, memoryview(buffer)[:n]))
    assert frame.buffer is buffer and bytes(frame.payload) == b"p" * 24 + b"q" * 5000


# ---------------------------------------------------------------- compression


@pytest.mark.parametrize("name", wire.available_compressors())
def test_compressible_chunks_shrink_and_come_back(name: str) -> None:
    compressor = wire.ChunkCompressor(name, 3)
    codec, packed = compressor.compress(TEXT)
    assert codec == wire.CODECS[name] and len(packed) < len(TEXT) // 10
    assert bytes(wire.decompress(codec, packed, len(TEXT))) == TEXT


@pytest.mark.parametrize("name", wire.available_compressors())
def test_incompressible_chunks_are_sent_raw(name: str) -> None:
    noise = os.urandom(1024**2)
    codec, payload = wire.ChunkCompressor(name, 3).compress(noise)
    assert codec == wire.RAW and bytes(payload) == noise
    # a chunk that shrinks by less than 5% is raw too: random data with a short compressible tail
    almost = os.urandom(1_000_000) + bytes(30_000)
    codec, _ = wire.ChunkCompressor(name, 3).compress(almost)
    assert codec == wire.RAW


def test_compression_none_sends_everything_raw() -> None:
    codec, payload = wire.ChunkCompressor("none", 3).compress(TEXT)
    assert codec == wire.RAW and payload is TEXT


def test_decompression_never_allocates_beyond_the_chunk() -> None:
    bomb = zlib.compress(bytes(64 * 1024**2))
    with pytest.raises(wire.ProtocolError, match="instead of 4096"):
        wire.decompress(wire.ZLIB, bomb, 4096)
    with pytest.raises(wire.ProtocolError, match="cannot decompress"):
        wire.decompress(wire.ZLIB, b"not zlib at all", 4096)
    if "zstd" in wire.available_compressors():
        with pytest.raises(wire.ProtocolError, match="cannot decompress"):
            wire.decompress(wire.ZSTD, b"not zstd at all", 4096)


def test_compressor_negotiation() -> None:
    both, old = ("zstd", "zlib"), ("zlib",)
    assert wire.negotiate_compressor("zstd", both, both) == "zstd"
    assert wire.negotiate_compressor("zstd", both, old) == "zlib"
    assert wire.negotiate_compressor("zlib", both, both) == "zlib"
    assert wire.negotiate_compressor("none", both, both) == "none"


# ---------------------------------------------------------------- digests


def test_hash_negotiation_prefers_xxh3_only_when_both_have_it() -> None:
    assert negotiate_algorithm([XXH3_128, BLAKE2B_128], [XXH3_128, BLAKE2B_128]) == XXH3_128
    assert negotiate_algorithm([XXH3_128, BLAKE2B_128], [BLAKE2B_128]) == BLAKE2B_128
    with pytest.raises(ValueError, match="no digest algorithm"):
        negotiate_algorithm([XXH3_128], ["md5"])


def test_hashers_agree_with_the_module_functions_and_differ_between_algorithms() -> None:
    xxh, blake = chunk_hasher(XXH3_128), chunk_hasher(BLAKE2B_128)
    assert xxh.digest(TEXT) == chunk_digest(TEXT) and xxh.zero(4096) == zero_digest(4096)
    assert len(blake.digest(TEXT)) == 16 and blake.digest(TEXT) != xxh.digest(TEXT)
    assert blake.zero(4096) == blake.digest(bytes(4096))
    whole = DiskDigest(BLAKE2B_128)
    whole.update(blake.digest(TEXT))
    assert whole.hexdigest() != DiskDigest(XXH3_128).hexdigest()
    with pytest.raises(ValueError, match="unknown digest algorithm"):
        chunk_hasher("md5")


def test_sha256_is_offered_only_where_the_cpu_computes_it_and_is_negotiated_before_blake2b(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hashlib

    from orchestrator.mirror import hashing

    sha = chunk_hasher(SHA256_128)
    assert sha.digest(TEXT) == hashlib.sha256(TEXT).digest()[:16] and sha.zero(512) == sha.digest(bytes(512))
    whole = DiskDigest(SHA256_128)
    whole.update(sha.digest(TEXT))
    assert whole.hexdigest() == hashlib.sha256(sha.digest(TEXT)).hexdigest()
    assert negotiate_algorithm([SHA256_128, BLAKE2B_128], [XXH3_128, SHA256_128, BLAKE2B_128]) == SHA256_128
    assert negotiate_algorithm([SHA256_128, BLAKE2B_128], [XXH3_128, BLAKE2B_128]) == BLAKE2B_128
    for hardware in (True, False):
        monkeypatch.setattr(hashing, "sha_in_hardware", lambda hardware=hardware: hardware)
        assert (SHA256_128 in hashing.available_algorithms()) is hardware
        assert hashing.available_algorithms()[-1] == BLAKE2B_128


def test_map_identity_keeps_xxh3_maps_and_tags_the_others() -> None:
    assert map_identity("db01:/dev/vda", XXH3_128) == "db01:/dev/vda"
    assert map_identity("db01:/dev/vda", BLAKE2B_128) == "db01:/dev/vda [hash blake2b-128]"


def test_version_mismatch_message_names_both_versions_and_the_host() -> None:
    agent = {"protocol": 1, "host": "db01", "agent_version": "0.1.0"}
    orchestrator = {"protocol": 2, "agent_version": "0.2.0"}
    message = wire.version_mismatch(agent, orchestrator)
    assert message.startswith("agent protocol 1 on host db01, orchestrator speaks 2: ")
    assert "older" in message
