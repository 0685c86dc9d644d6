"""Files-and-folders passes on real trees, in-process and through the shipped files agent (a local pipe)."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.files.mirror import LocalTree, Options, Pair, RemoteTree, mirror_pass, pairs_for
from orchestrator.files.rules import RuleSet, make_rule
from orchestrator.transport.local import LocalTransport

# a POSIX ACL as the kernel stores it: user::rw- user:1000:r-- group::r-- mask::r-- other::---
NONE = 0xFFFFFFFF
ACL_USER_1000_READ = struct.pack(
    "<I" + "HHI" * 5, 2, 0x01, 6, NONE, 0x02, 4, 1000, 0x04, 4, NONE, 0x10, 4, NONE, 0x20, 0, NONE
)


@pytest.fixture(params=["in-process", "agent"])
def source(request: pytest.FixtureRequest) -> Iterator[object]:
    tree = LocalTree() if request.param == "in-process" else RemoteTree(LocalTransport())
    yield tree
    tree.close()


def one_pair(tmp_path: Path, *extra: tuple[str, bool, bool]) -> tuple[RuleSet, list[Pair]]:
    src = str(tmp_path / "src")
    rules = RuleSet([make_rule(src), *(make_rule(src + p, inc, rec) for p, inc, rec in extra)])
    return rules, pairs_for(rules, "all_to_one", "s1", str(tmp_path / "dst"), [])


def dst(tmp_path: Path, rel: str = "") -> Path:
    return Path(str(tmp_path / "dst" / "s1") + str(tmp_path / "src")) / rel


def build_source(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "x.txt").write_bytes(b"hello\n")
    os.link(root / "a" / "x.txt", root / "a" / "x-link.txt")
    (root / "a" / "b" / "y.log").write_text("log line\n")
    os.symlink("../../../../etc/passwd", root / "a" / "b" / "outside")  # out of the set: copied as a link
    with open(root / "sparse.img", "wb") as handle:
        handle.seek(64 * 1024**2)
        handle.write(b"tail")
    weird = os.fsencode(root) + b"/bad\xff\nname"
    with open(weird, "wb") as handle:
        handle.write(b"bytes name")
    secret = root / "a" / "secret"
    secret.write_bytes(b"s")
    os.chown(secret, 1234, 5678)
    os.chmod(secret, 0o640)
    os.setxattr(secret, "user.origin", b"db01")
    os.setxattr(secret, "system.posix_acl_access", ACL_USER_1000_READ)
    os.utime(secret, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def test_first_pass_keeps_every_kind_of_entry_and_second_pass_sends_nothing(
    tmp_path: Path, source: object
) -> None:
    build_source(tmp_path / "src")
    rules, pairs = one_pair(tmp_path, ("/*.log", False, True))
    first = mirror_pass(source, LocalTree(), pairs, rules, Options())
    assert first.problems == [] and first.hardlinks == 1
    out = dst(tmp_path)
    assert (out / "a" / "x.txt").read_bytes() == b"hello\n"
    assert os.stat(out / "a" / "x.txt").st_ino == os.stat(out / "a" / "x-link.txt").st_ino
    assert not (out / "a" / "b" / "y.log").exists()  # excluded by the wildcard
    assert os.readlink(out / "a" / "b" / "outside") == "../../../../etc/passwd"
    sparse = os.stat(out / "sparse.img")
    assert sparse.st_size == 64 * 1024**2 + 4 and sparse.st_blocks * 512 < 1024**2
    assert (
        out.parent / (out.name.encode() + b"/bad\xff\nname").decode("utf-8", "surrogateescape")
    ).exists() or (os.path.exists(os.fsencode(out) + b"/bad\xff\nname"))
    st = os.stat(out / "a" / "secret")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (
        1234,
        5678,
        0o640,
        1_600_000_000_123_456_789,
    )
    assert os.getxattr(out / "a" / "secret", "user.origin") == b"db01"
    assert os.getxattr(out / "a" / "secret", "system.posix_acl_access") == ACL_USER_1000_READ
    again = mirror_pass(source, LocalTree(), pairs, rules, Options())
    assert (again.files_sent, again.bytes_sent, again.attributes_only) == (0, 0, 0)
    assert (
        mirror_pass(
            source, LocalTree(), pairs, rules, Options(compare="full_data"), verify_only=True
        ).differences
        == []
    )


def test_a_target_reached_through_a_files_agent_is_probed_written_and_verified(tmp_path: Path) -> None:
    """A target on another host (``target_host``) is a files agent: its case probe, writer and hashes
    answer through the agent's requests (here over a local pipe)."""
    build_source(tmp_path / "src")
    rules, pairs = one_pair(tmp_path)
    target = RemoteTree(LocalTransport())
    try:
        first = mirror_pass(LocalTree(), target, pairs, rules, Options())
        verify = mirror_pass(
            LocalTree(), target, pairs, rules, Options(compare="full_data"), verify_only=True
        )
    finally:
        target.close()
    assert first.problems == [] and first.hardlinks == 1
    assert (dst(tmp_path, "a") / "b" / "y.log").read_text() == "log line\n"
    assert verify.differences == []


def test_delta_sends_only_changed_blocks_and_full_data_finds_what_attributes_miss(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    big.write_bytes(os.urandom(4 * 1024**2))
    rules, pairs = one_pair(tmp_path)
    mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options())
    with open(big, "r+b") as handle:
        handle.seek(1024**2)
        handle.write(b"X" * 100)
    delta = mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options(compare="attributes_then_delta"))
    assert delta.files_sent == 1 and delta.bytes_sent == 128 * 1024
    assert dst(tmp_path, "big.bin").read_bytes() == big.read_bytes()
    # same size, same time, other content: only full_data sees it
    stamp = os.stat(big).st_mtime_ns
    with open(big, "r+b") as handle:
        handle.write(b"Y" * 10)
    os.utime(big, ns=(stamp, stamp))
    assert mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options(compare="attributes")).files_sent == 0
    report = mirror_pass(
        LocalTree(), LocalTree(), pairs, rules, Options(compare="full_data"), verify_only=True
    )
    assert [d.reason for d in report.differences] == ["content differs"]
    assert report.differences[0].source_mtime.endswith("Z")
    full = mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options(compare="full_data"))
    assert full.bytes_sent == 128 * 1024 and dst(tmp_path, "big.bin").read_bytes() == big.read_bytes()
    whole = mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options(compare="none"))
    assert whole.bytes_sent == 4 * 1024**2


def test_only_attributes_travel_when_only_attributes_changed(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x" * 1000)
    rules, pairs = one_pair(tmp_path)
    mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options())
    os.chmod(tmp_path / "src" / "f", 0o600)
    result = mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options(compare="attributes"))
    assert (result.attributes_only, result.bytes_sent) == (1, 0)
    assert stat.S_IMODE(os.stat(dst(tmp_path, "f")).st_mode) == 0o600


def test_file_changing_while_read_is_sent_again(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    moving = tmp_path / "src" / "moving"
    moving.write_bytes(b"first")
    rules, pairs = one_pair(tmp_path)
    attempts: list[int] = []

    def grow(path: bytes, attempt: int) -> None:
        attempts.append(attempt)
        if attempt == 0:
            with open(path, "ab") as handle:
                handle.write(b"+second")

    result = mirror_pass(LocalTree(after_read=grow), LocalTree(), pairs, rules, Options())
    assert attempts == [0, 1] and result.unstable == []
    assert dst(tmp_path, "moving").read_bytes() == b"first+second"

    def always(path: bytes, attempt: int) -> None:
        with open(path, "ab") as handle:
            handle.write(b"!")

    result = mirror_pass(LocalTree(after_read=always), LocalTree(), pairs, rules, Options(retries=1))
    assert result.unstable == [str(moving)]  # reported; the next pass sends it again


def test_file_replaced_by_folder_and_back_between_passes(tmp_path: Path, source: object) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "thing").write_text("a file")
    rules, pairs = one_pair(tmp_path)
    mirror_pass(source, LocalTree(), pairs, rules, Options())
    (src / "thing").unlink()
    (src / "thing").mkdir()
    (src / "thing" / "inner").write_text("now a folder")
    mirror_pass(source, LocalTree(), pairs, rules, Options())
    assert dst(tmp_path, "thing/inner").read_text() == "now a folder"
    shutil.rmtree(src / "thing")
    (src / "thing").write_text("a file again")
    result = mirror_pass(source, LocalTree(), pairs, rules, Options())
    assert result.problems == [] and dst(tmp_path, "thing").read_text() == "a file again"


@pytest.mark.parametrize("policy", ["keep", "delete", "move"])
def test_orphans_only_within_the_rules(tmp_path: Path, policy: str) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "kept").write_text("k")
    rules, pairs = one_pair(tmp_path, ("/*.log", False, True))
    mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options())
    out = dst(tmp_path)
    (out / "d" / "orphan.txt").write_text("o")
    (out / "d" / "old").mkdir()
    (out / "d" / "old" / "deep.txt").write_text("o")
    (out / "d" / "old" / "inside-excluded.log").write_text("outside the rules even in an orphan folder")
    (out / "d" / "excluded.log").write_text("never touched: outside the rules")
    (out.parent / "beside.txt").write_text("outside the set")
    moved = tmp_path / "orphans"
    result = mirror_pass(
        LocalTree(), LocalTree(), pairs, rules, Options(orphans=policy, orphans_path=os.fsencode(moved))
    )
    assert sorted(result.orphans) == sorted(str(out / p) for p in ("d/orphan.txt", "d/old", "d/old/deep.txt"))
    assert (out / "d" / "excluded.log").exists() and (out.parent / "beside.txt").exists()
    assert (out / "d" / "orphan.txt").exists() == (policy == "keep")
    assert (out / "d" / "old" / "inside-excluded.log").exists()
    if policy == "move":
        assert (Path(str(moved) + str(out)) / "d" / "old" / "deep.txt").read_text() == "o"


def test_names_past_the_target_limits_are_skipped_and_logged(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "short").write_text("ok")
    deep = os.fsencode(src)  # as long as PATH_MAX (4096) allows with "/leaf", whatever tmp_path is
    while len(deep) + 201 < 4085:
        deep += b"/" + b"d" * 200
    deep += b"/" + b"d" * (4085 - len(deep) - 1)
    os.makedirs(deep)
    with open(deep + b"/leaf", "wb") as handle:
        handle.write(b"deep")
    rules = RuleSet([make_rule(str(src))])
    pairs = [Pair(os.fsencode(src), os.fsencode(tmp_path / "dst") + b"/" + b"p" * 200)]
    result = mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options())
    assert (Path(os.fsdecode(pairs[0].target)) / "short").read_text() == "ok"
    assert result.problems and all("longer than the target allows" in p["message"] for p in result.problems)


def test_permission_denied_file_is_reported_and_the_rest_copied(request: pytest.FixtureRequest) -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the source agent as another user")
    tmp_path = Path(tempfile.mkdtemp(prefix="hvm-files-"))  # pytest's folders are closed to other users
    request.addfinalizer(lambda: shutil.rmtree(tmp_path))
    src = tmp_path / "src"
    src.mkdir()
    (src / "open").write_text("readable")
    (src / "closed").write_text("root only")
    os.chmod(src / "closed", 0o600)
    os.chmod(tmp_path, 0o755)
    os.chmod(src, 0o755)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    rules, pairs = one_pair(tmp_path)
    tree = RemoteTree(LocalTransport(nobody))
    try:
        result = mirror_pass(tree, LocalTree(), pairs, rules, Options(owners=False))
    finally:
        tree.close()
    assert result.problems == [{"path": str(src / "closed"), "message": "Permission denied"}]
    assert dst(tmp_path, "open").read_text() == "readable"


def test_target_full_is_reported_per_file(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    if os.system(f"mount -t tmpfs -o size=1m tmpfs {small} 2>/dev/null") != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        src = tmp_path / "src"
        src.mkdir()
        (src / "a-small").write_bytes(b"x" * 1000)
        (src / "b-big").write_bytes(os.urandom(2 * 1024**2))
        rules = RuleSet([make_rule(str(src))])
        pairs = [Pair(os.fsencode(src), os.fsencode(small / "copy"))]
        result = mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options())
        assert [p["message"] for p in result.problems] == ["No space left on device"]
        assert (small / "copy" / "a-small").stat().st_size == 1000
    finally:
        os.system(f"umount {small}")


def test_folders_whose_entries_a_pass_replaced_keep_the_source_times(tmp_path: Path) -> None:
    """Replacing a file (written beside it and renamed over it), linking or removing an entry changes the
    folder's time on the target; the pass puts it back even where the folder itself did not differ."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "top.bin").write_bytes(os.urandom(300_000))
    (src / "d" / "inner.txt").write_text("one")
    (src / "d" / "gone.txt").write_text("bye")
    rules, pairs = one_pair(tmp_path)
    mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options())
    times = {p: os.stat(p).st_mtime_ns for p in (src, src / "d")}
    with open(src / "top.bin", "r+b") as handle:  # a delta, written beside the file and renamed over it
        handle.write(b"changed")
    (src / "d" / "inner.txt").write_text("two")
    os.utime(src / "d" / "gone.txt", ns=(1, 1))  # content and folder unchanged until the removal below
    (src / "d" / "gone.txt").unlink()
    for path, ns in times.items():  # the source's folders keep their times: only their entries changed
        os.utime(path, ns=(ns, ns))
    mirror_pass(LocalTree(), LocalTree(), pairs, rules, Options())
    verify = mirror_pass(
        LocalTree(), LocalTree(), pairs, rules, Options(compare="full_data"), verify_only=True
    )
    assert verify.differences == []
