"""The files-and-folders rule engine: the closest rule in the tree wins (the reference semantics)."""

from __future__ import annotations

import pytest

from orchestrator.files.rules import RuleSet, make_rule


def rules(*specs: tuple[str, bool, bool]) -> RuleSet:
    return RuleSet(make_rule(p, inc, rec) for p, inc, rec in specs)


def test_nothing_outside_the_rules_and_recursive_include_covers_the_tree() -> None:
    rs = rules(("/srv/www", True, True))
    assert rs.included("/srv/www")
    assert rs.included("/srv/www/a/b/c.html")
    assert not rs.included("/srv")
    assert not rs.included("/srv/wwwx/a")  # a prefix of the name is not the folder
    assert not rs.included("/etc/passwd")


def test_non_recursive_rule_reaches_direct_entries_only() -> None:
    rs = rules(("/data", True, False))
    assert rs.included("/data/top.txt")
    assert rs.included("/data/sub")  # the folder itself is a direct entry
    assert not rs.included("/data/sub/deep.txt")


def test_deeper_exclude_beats_shallower_include_and_back_again() -> None:
    rs = rules(("/data", True, True), ("/data/cache", False, True), ("/data/cache/keep", True, True))
    assert rs.included("/data/x")
    assert not rs.included("/data/cache/tmp/x")
    assert rs.included("/data/cache/keep/x")
    assert rs.decide("/data/cache/keep/x").path == b"/data/cache/keep"


def test_wildcard_beats_plain_rule_of_the_same_folder() -> None:
    rs = rules(("/data", True, True), ("/data/*.log", False, True))
    assert not rs.included("/data/a.log")
    assert not rs.included("/data/deep/er/a.log")
    assert rs.included("/data/a.txt")


def test_closer_folder_include_overrides_a_wildcard_exclude_as_documented() -> None:
    # Carbonite: "Rules are applied to files that are closest in the directory tree to them", so the
    # wildcard exclude must be repeated for each included folder.
    rs = rules(("/data", True, True), ("/data/*.log", False, True), ("/data/app", True, True))
    assert rs.included("/data/app/x.log")
    repeated = rules(
        ("/data", True, True),
        ("/data/*.log", False, True),
        ("/data/app", True, True),
        ("/data/app/*.log", False, True),
    )
    assert not repeated.included("/data/app/x.log")


def test_non_recursive_wildcard_and_matching_folders() -> None:
    rs = rules(("/data", True, True), ("/data/*.tmp", False, False))
    assert not rs.included("/data/a.tmp")
    assert rs.included("/data/sub/a.tmp")  # not recursive: only entries directly in /data
    rs2 = rules(("/data", True, True), ("/data/*cache*", False, True))
    assert not rs2.included("/data/xcache/inner/file")  # a matching folder takes its subtree along
    assert rs2.included("/data/other/file")


def test_wildcard_include_leaves_non_matching_files_out() -> None:
    rs = rules(("/data/*.doc", True, True))
    assert rs.included("/data/a.doc")
    assert not rs.included("/data/a.txt")
    assert rs.must_walk("/data") and rs.must_walk("/data/sub")
    assert rs.tops() == [b"/data"]


def test_exact_tie_goes_to_exclude() -> None:
    rs = rules(("/data", True, True), ("/data", False, True))
    assert not rs.included("/data/x")


def test_bytes_paths_with_newlines_and_invalid_utf8() -> None:
    rs = rules(("/data", True, True), ("/data/*.log", False, True))
    assert rs.included(b"/data/bad\xff\nname")
    assert not rs.included(b"/data/\xfe.log")


def test_walk_pruning_tops_and_uniform_subtrees() -> None:
    rs = rules(("/srv/a", True, True), ("/srv/a/b", True, True), ("/srv/c/d", True, False))
    assert rs.tops() == [b"/srv/a", b"/srv/c/d"]
    assert rs.must_walk("/srv") and rs.must_walk("/srv/c")
    assert not rs.must_walk("/srv/e")
    assert rs.uniform_below(b"/srv/a/b")
    assert not rs.uniform_below(b"/srv/a")  # a rule is anchored inside it
    assert not rs.uniform_below(b"/srv/c/d")  # not recursive


def test_overlaps_finds_a_target_inside_the_source() -> None:
    rs = rules(("/srv", True, True), ("/srv/tmp", False, True))
    assert rs.overlaps("/srv/copy")
    assert not rs.overlaps("/srv/tmp/copy")
    assert rs.overlaps("/")  # the set lies inside /
    assert not rs.overlaps("/backup")


def test_wildcards_only_in_the_last_part() -> None:
    with pytest.raises(ValueError, match="last part"):
        make_rule("/data/*/x")
