"""A target whose names ignore case, for real: an exFAT image mounted through FUSE (exfat-fuse; this
kernel has neither vfat nor ext4 casefold). A source rename a.txt -> A.txt must end with the target
holding A.txt, in a pass and in replication; two source names that differ only by case are reported and
never merged. exFAT keeps no modes, owners, xattrs or links and times to 10 ms, so these tests look at
names and contents only."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.files.case import folds
from orchestrator.files.mirror import LocalTree, Options, Pair, mirror_pass
from orchestrator.files.rules import RuleSet, make_rule
from tests.integration.test_files_replicate import Running, local_connect, read, wait_for

pytestmark = pytest.mark.integration

TOOLS = ("mkfs.exfat", "mount.exfat-fuse", "losetup", "fusermount")


@pytest.fixture
def exfat(tmp_path: Path) -> Iterator[Path]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing or os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip(f"needs root, /dev/fuse and {', '.join(missing or TOOLS)} (Debian exfat-fuse exfatprogs)")
    image, mount = tmp_path / "target.exfat", tmp_path / "mnt"
    mount.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(8 * 1024 * 1024)
    subprocess.run(["mkfs.exfat", str(image)], check=True, capture_output=True)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mount.exfat-fuse", device, str(mount)], check=True, capture_output=True)
        try:
            yield mount
        finally:
            subprocess.run(["fusermount", "-u", str(mount)], check=False, capture_output=True)
    finally:
        subprocess.run(["losetup", "--detach", device], check=False, capture_output=True)


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def one_pass(src: Path, dst: Path, **options: object) -> object:
    rules = RuleSet([make_rule(str(src))])
    return mirror_pass(
        LocalTree(), LocalTree(), [Pair(bytes(src), bytes(dst))], rules, Options(xattrs=False, **options)
    )


def test_the_probe_tells_an_exfat_target_from_a_case_keeping_one(exfat: Path, tmp_path: Path) -> None:
    assert folds(bytes(exfat / "not-there-yet" / "deeper"))  # judged by its nearest existing parent
    assert not folds(bytes(tmp_path))
    assert os.listdir(exfat) == []  # the probe file went again


def test_a_pass_renames_a_case_only_rename_and_keeps_the_file(exfat: Path, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", exfat / "dst"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("same content\n")
    (src / "docs" / "keep.txt").write_text("keep\n")
    one_pass(src, dst)
    os.rename(src / "docs" / "a.txt", src / "docs" / "A.txt")
    os.rename(src / "docs", src / "Docs")
    result = one_pass(src, dst)  # orphans: delete (the default)
    assert names(dst) == ["Docs"] and names(dst / "Docs") == ["A.txt", "keep.txt"]
    assert read(dst / "Docs" / "A.txt") == b"same content\n"
    assert result.orphans == [] and result.problems == []  # type: ignore[attr-defined]


def test_names_differing_only_by_case_are_reported_not_merged(exfat: Path, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", exfat / "dst"
    src.mkdir()
    (src / "b.txt").write_text("lower\n")
    (src / "B.txt").write_text("upper\n")
    result = one_pass(src, dst)
    problems = result.problems  # type: ignore[attr-defined]
    assert len(problems) == 1 and "differs only by case" in problems[0]["message"]
    kept = names(dst)
    assert len(kept) == 1  # one of the two, whole: never the other's content under its name
    assert read(dst / kept[0]) == (src / kept[0]).read_bytes()


def test_replication_applies_a_case_only_rename(exfat: Path, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", exfat / "dst"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("renamed by case\n")
    running = Running(local_connect, src, dst)
    try:
        os.rename(src / "docs" / "a.txt", src / "docs" / "A.txt")
        wait_for(lambda: "A.txt" in os.listdir(dst / "docs"), "the case-only rename")
    finally:
        running.finish()
    assert running.error is None
    assert names(dst / "docs") == ["A.txt"] and read(dst / "docs" / "A.txt") == b"renamed by case\n"


def test_a_target_declared_case_insensitive_is_matched_by_folded_names(tmp_path: Path) -> None:
    """The same logic where no case-insensitive filesystem can be mounted: declared in the playbook."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "x.txt").write_text("one\n")
    (src / "X.txt").write_text("two\n")
    result = one_pass(src, dst, target_case="insensitive")
    problems = result.problems  # type: ignore[attr-defined]
    assert len(problems) == 1 and "differs only by case" in problems[0]["message"]
    (kept,) = os.listdir(dst)  # this target keeps case, so only the declaration kept the second out
    assert read(dst / kept) == (src / kept).read_bytes()
