"""The files mirror's fast paths keep what the slow ones kept: batches with file data as separate frame
parts, new files created with their final mode, in-place deltas of large files, delta retries."""

from __future__ import annotations

import os
import stat
import struct
import threading
from pathlib import Path

import pytest

from orchestrator.files import codec, tree
from orchestrator.files.mirror import LocalTree, Options, Pair, mirror_pass
from orchestrator.files.rules import RuleSet, make_rule
from orchestrator.mirror import protocol as wire

MiB = 1024**2
NONE = 0xFFFFFFFF
ACL_USER_1000_READ = struct.pack(
    "<I" + "HHI" * 5, 2, 0x01, 6, NONE, 0x02, 4, 1000, 0x04, 4, NONE, 0x10, 4, NONE, 0x20, 0, NONE
)


def test_batches_cross_a_real_pipe_with_large_data_as_separate_parts() -> None:
    read_fd, write_fd = os.pipe()
    sender = wire.FrameChannel(wire.FdStream(-1, write_fd), "test")
    receiver = wire.FrameChannel(wire.FdStream(read_fd, -1), "test")
    big = os.urandom(codec.SEPARATE_BYTES * 3)
    items = [
        (b"s", 0, b"bad\xff\nname", len(big)),
        (b"d", 0, big),
        (b"d", len(big), memoryview(big)[:100]),
        (b"x", (1, (b"user.a", None)), True, False, -5),
    ]
    frames: list[wire.Frame] = []
    reading = threading.Thread(target=lambda: frames.append(receiver.receive()))
    reading.start()
    batch = codec.Batcher(sender, codec.PIECES)
    for item in items:
        batch.add(item)
    batch.flush()
    reading.join()
    os.close(write_fd)
    os.close(read_fd)
    got = codec.decode(frames[0].payload)
    assert [tuple(bytes(v) if isinstance(v, memoryview) else v for v in g) for g in got] == [
        (b"s", 0, b"bad\xff\nname", len(big)),
        (b"d", 0, big),
        (b"d", len(big), big[:100]),
        (b"x", (1, (b"user.a", None)), True, False, -5),
    ]


@pytest.mark.parametrize(
    "damaged",
    [b"t\x02\x00\x00\x00i", b"t\x01\x00\x00\x00b\xff\x00\x00\x00ab", b"t\x01\x00\x00\x00z", b"i" + bytes(8)],
)
def test_damaged_batches_are_refused(damaged: bytes) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode(bytearray(damaged))


ENTRIES = [
    tree.Entry(b"", b"d", 0o40755, 0, 0, 4096, 1, 2, 3, 2, False, None, (), True),
    tree.Entry(
        b"bad\xff\nname", b"f", 0o100600, 1000, 1001, 2**40, -5, 2**63, 2**64 - 1, 1, True, None, None, True
    ),
    tree.Entry(b"a/link", b"l", 0o120777, 4294967295, 7, 6, 9, 10, 3, 1, False, b"../t\x00?", None, False),
    tree.Entry(
        b"x", b"f", 0o100644, 0, 0, 0, 0, 0, 0, 3, False, None, ((b"user.a", b"1" * 40000), (b"b", b"")), True
    ),
    tree.Entry(b"empty-link", b"l", 0o120777, 0, 0, 0, 0, 0, 0, 1, False, b"", None, True),
]


def test_scan_entries_cross_in_their_fixed_layout_unchanged() -> None:
    out = bytearray()
    for index, entry in enumerate(ENTRIES):
        codec.put_entry(out, index, entry)
    got = codec.decode_entries(out, tree.Entry._make)
    assert got == list(enumerate(ENTRIES))
    assert all(type(entry) is tree.Entry for _, entry in got)
    with pytest.raises(codec.CodecError):
        codec.decode_entries(out[:-1], tree.Entry._make)  # the last xattr value cut short
    with pytest.raises(codec.CodecError):
        codec.decode_entries(out[:30], tree.Entry._make)


def test_digests_fall_back_to_blake2b_when_an_end_lacks_xxhash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent on a host without xxhash offers BLAKE2b only; both ends must then digest with it, or
    every block would look different and a delta would resend the whole file."""
    (tmp_path / "src").mkdir()
    big = tmp_path / "src" / "big.bin"
    big.write_bytes(os.urandom(1 * MiB))
    rules, pairs = one_pair(tmp_path)
    mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options())
    with open(big, "r+b") as handle:
        handle.write(b"changed")
    used: list[str] = []
    real = tree.block_digester
    monkeypatch.setattr(tree, "block_digester", lambda name="": used.append(name) or real(name))
    source = LocalTree()
    source.algorithms = ("blake2b-128",)
    delta = mirror_pass(source, LocalTree(), pairs, rules, Options(compare="attributes_then_delta"))
    assert (delta.files_sent, delta.bytes_sent) == (1, 128 * 1024)
    assert set(used) == {"blake2b-128"} and len(used) == 2  # the target's digests, the source's read
    assert (tmp_path / "dst" / "big.bin").read_bytes() == big.read_bytes()


def one_pair(tmp_path: Path) -> tuple[RuleSet, list[Pair]]:
    return RuleSet([make_rule(str(tmp_path / "src"))]), [
        Pair(os.fsencode(tmp_path / "src"), os.fsencode(tmp_path / "dst"))
    ]


def test_new_files_keep_modes_the_umask_or_the_owner_change_would_lose(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    modes = {"open": 0o666, "setuid": 0o4755, "sticky-dir-file": 0o1644, "none": 0o000}
    for name, mode in modes.items():
        (src / name).write_bytes(name.encode())
        os.chmod(src / name, mode)
    rules, pairs = one_pair(tmp_path)
    old = os.umask(0o027)
    try:
        result = mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options())
    finally:
        os.umask(old)
    assert result.problems == []
    for name, mode in modes.items():
        assert stat.S_IMODE(os.lstat(tmp_path / "dst" / name).st_mode) == mode, name


def test_an_acl_inherited_from_the_target_folder_is_removed(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "plain").write_bytes(b"no acl on the source")
    (tmp_path / "dst").mkdir()
    try:
        os.setxattr(tmp_path / "dst", "system.posix_acl_default", ACL_USER_1000_READ)
    except OSError:
        pytest.skip("no POSIX ACLs on this filesystem")
    rules, pairs = one_pair(tmp_path)
    assert mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options()).problems == []
    assert "system.posix_acl_access" not in os.listxattr(tmp_path / "dst" / "plain")


def test_large_delta_is_written_in_place_and_a_block_changed_back_while_read_is_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tree, "IN_PLACE_SIZE", 1 * MiB)
    (tmp_path / "src").mkdir()
    big = tmp_path / "src" / "big.bin"
    original = os.urandom(2 * MiB)
    big.write_bytes(original)
    rules, pairs = one_pair(tmp_path)
    mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options())
    copy = tmp_path / "dst" / "big.bin"
    inode = os.stat(copy).st_ino
    block = 128 * 1024

    def patch(offset: int, data: bytes) -> None:
        with open(big, "r+b") as handle:
            handle.seek(offset)
            handle.write(data)

    patch(5 * block, b"changed")
    delta = mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options(compare="attributes_then_delta"))
    assert (delta.files_sent, delta.bytes_sent) == (1, block)
    assert os.stat(copy).st_ino == inode and copy.read_bytes() == big.read_bytes()

    # the first read sees block 2 changed and sends it; then it changes back before the check: the
    # second read finds block 2 equal to the target's digest, yet the target holds the first read's
    # version of it now, so it is sent again
    patch(2 * block, b"transient")

    def revert(path: bytes, attempt: int) -> None:
        if attempt == 0:
            patch(2 * block, original[2 * block : 2 * block + 9])

    again = mirror_pass(
        LocalTree(after_read=revert), LocalTree(), pairs, rules, Options(compare="attributes_then_delta")
    )
    assert again.unstable == [] and copy.read_bytes() == big.read_bytes()


def test_a_delta_reads_only_the_blocks_both_ends_found_different_unless_the_file_changed_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ends hash at once; the read then fetches the differing blocks only. A file written between
    the hashing and the read has another signature: it is compared block by block as it is read."""
    (tmp_path / "src").mkdir()
    big = tmp_path / "src" / "big.bin"
    big.write_bytes(os.urandom(1 * MiB))
    rules, pairs = one_pair(tmp_path)
    mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options())
    block = 128 * 1024

    def patch(offset: int, data: bytes) -> None:
        with open(big, "r+b") as handle:
            handle.seek(offset)
            handle.write(data)

    compared: list[bytes] = []
    real_emit_blocks = tree._emit_blocks
    monkeypatch.setattr(
        tree, "_emit_blocks", lambda fd, *rest: compared.append(b"") or real_emit_blocks(fd, *rest)
    )
    patch(3 * block, b"changed")
    delta = mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options(compare="attributes_then_delta"))
    assert (delta.files_sent, delta.bytes_sent, compared) == (1, block, [])

    class WritesAfterHashing(LocalTree):
        def signed_hashes(self, *args: object) -> dict:
            out = super().signed_hashes(*args)
            patch(6 * block, b"late")  # after both ends hashed, before the read
            return out

    patch(1 * block, b"again")
    late = mirror_pass(
        WritesAfterHashing(), LocalTree(), pairs, rules, Options(compare="attributes_then_delta")
    )
    assert (late.files_sent, late.bytes_sent, len(compared)) == (1, 2 * block, 1)
    assert (tmp_path / "dst" / "big.bin").read_bytes() == big.read_bytes()


def test_a_file_that_shrinks_to_small_while_read_is_sent_as_pieces_to_the_end(tmp_path: Path) -> None:
    """The first attempt of a large file went out piece by piece: the second, now small, must follow as
    pieces of the same file, not as a whole small file begun a second time."""
    (tmp_path / "src").mkdir()
    big = tmp_path / "src" / "shrinks.bin"
    big.write_bytes(os.urandom(tree.SMALL_FILE + 4096))

    def shrink(path: bytes, attempt: int) -> None:
        if attempt == 0:
            big.write_bytes(b"small now")

    rules, pairs = one_pair(tmp_path)
    result = mirror_pass(LocalTree(after_read=shrink), LocalTree(), pairs, rules, Options())
    assert (result.files_sent, result.unstable, result.problems) == (1, [], [])
    assert (tmp_path / "dst" / "shrinks.bin").read_bytes() == b"small now"
    assert sorted(os.listdir(tmp_path / "dst")) == ["shrinks.bin"]  # no temporary file left
