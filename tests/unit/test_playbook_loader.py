"""The playbook loader: YAML positions, translated pydantic errors, secrets, paths, schema and reference."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import textwrap
import typing
from pathlib import Path

import pytest
import yaml

from orchestrator.playbook import (
    LoadedPlaybook,
    Playbook,
    PlaybookError,
    PlaybookIssue,
    load_playbook,
    load_playbook_text,
    loader,
    playbook_json_schema,
    reference,
)
from orchestrator.playbook.introspect import field_type, is_model
from orchestrator.playbook.secrets import Secret

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "playbooks"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "playbook.md"

HEADER = """\
apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: test
providers:
  local: {type: sim}
"""
# A valid playbook is HEADER + a servers list; HEADER is 5 lines, so the first server starts on line 7.


def playbook(servers: str) -> str:
    return HEADER + "servers:\n" + textwrap.dedent(servers)


def errors_of(text: str, name: str = "pb.yaml") -> list[PlaybookIssue]:
    with pytest.raises(PlaybookError) as caught:
        load_playbook_text(text, name)
    return caught.value.errors


def only_error(text: str) -> PlaybookIssue:
    issues = errors_of(text)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


@pytest.fixture
def design_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The environment the DESIGN.md example expects; returns the file standing for /run/secrets/hv01."""
    monkeypatch.setenv("VC_PASSWORD", "vc-password-from-env")
    monkeypatch.setenv("TSIG_SECRET", "tsig-secret-from-env")
    secret_file = tmp_path / "hv01-secret"
    secret_file.write_text("hv01-password-from-file\n")
    return secret_file


# ---------------------------------------------------------------- valid playbooks


def test_design_example_loads(design_env: Path, tmp_path: Path) -> None:
    text = (FIXTURES / "design_example.yaml").read_text().replace("/run/secrets/hv01", str(design_env))
    path = tmp_path / "wave-1.yaml"
    path.write_text(text)

    loaded = load_playbook(path)

    book = loaded.playbook
    assert [s.name for s in book.servers] == ["db01", "web01"]
    assert set(book.providers) == {"lab-kvm", "vcenter", "hv01", "local"}
    assert book.providers["vcenter"].password.reveal() == "vc-password-from-env"
    assert book.providers["hv01"].password.reveal() == "hv01-password-from-file"
    assert book.providers["hv01"].user == "CORP\\admin"
    assert book.dns["corp"].tsig.secret.reveal() == "tsig-secret-from-env"
    assert book.defaults.mirror.chunk_size == 4 * 1024**2
    assert book.defaults.mirror.bandwidth.limit == 200 * 1024**2
    assert book.defaults.mirror.bandwidth.schedule[0].limit == 20 * 1024**2
    db01 = book.server("db01")
    assert db01.target.memory == 4 * 1024**3
    assert str(db01.target.nics[0].ip) == "10.1.0.6/24"
    assert db01.target.nics[0].source_mac == "52:54:00:00:00:06"
    assert db01.source.key == Path.home() / ".ssh" / "id_ed25519"
    assert book.server("web01").source.path == tmp_path / "images" / "web01.raw"
    assert book.server("web01").depends_on == ["db01"]


def test_docs_example_loads(design_env: Path, tmp_path: Path) -> None:
    block = re.search(r"```yaml\n(.*?)```", reference.render_document(), re.S)
    assert block is not None
    text = block.group(1).replace("/run/secrets/hv01", str(design_env))
    loaded = load_playbook_text(text, tmp_path / "docs-example.yaml")
    assert [s.name for s in loaded.playbook.servers] == ["db01", "web01"]


def test_loaded_playbook_records_where_it_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = FIXTURES / "minimal.yaml"
    monkeypatch.chdir(source.parent)

    loaded = load_playbook("minimal.yaml")

    assert isinstance(loaded, LoadedPlaybook)
    assert isinstance(loaded.playbook, Playbook)
    assert loaded.path == source and loaded.path.is_absolute()
    assert loaded.base_dir == source.parent
    assert loaded.text == source.read_text()
    assert loaded.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()


def test_relative_paths_become_absolute_from_the_playbook_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # somewhere else entirely: the playbook's folder must still be the anchor

    book = load_playbook(FIXTURES / "relative_paths.yaml").playbook

    base = FIXTURES
    assert book.providers["local"].root == base / "sim-hypervisor"
    assert book.providers["kvm"].ssh_key == base / "keys" / "kvm_ed25519"
    assert book.providers["kvm"].known_hosts == Path.home() / ".ssh" / "known_hosts"
    assert book.providers["vc"].ca_bundle == base / "certs" / "vc.pem"
    assert book.providers["hv"].ca_bundle == Path("/etc/ssl/hv.pem")
    assert book.dns["zone"].path == base / "dns" / "corp.test.zone"
    web01 = book.server("web01").source
    assert web01.path == base / "images" / "web01.raw"
    assert web01.extra_disks == [base / "images" / "web01-data.raw", Path("/srv/images/abs.raw")]
    db01 = book.server("db01").source
    assert db01.key == base / "keys" / "id_ed25519"
    assert db01.known_hosts == base / ".." / "known_hosts"


def test_default_sim_root_is_relative_to_the_playbook(tmp_path: Path) -> None:
    book = load_playbook_text(
        playbook("- {name: a, source: {type: vm, provider: local, vm: a}, target: {provider: local}}\n"),
        tmp_path / "pb.yaml",
    ).playbook
    assert book.providers["local"].root == tmp_path / "sim-hypervisor"


def test_file_secret_is_read_relative_to_the_playbook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    book = load_playbook(FIXTURES / "relative_paths.yaml").playbook
    assert book.dns["bind"].tsig.secret.reveal() == "tsig-secret-from-a-file"
    assert book.providers["vc"].password.reveal() == "vc-password-from-a-file"


def test_missing_secret_file_is_named_with_its_resolved_path(tmp_path: Path) -> None:
    text = playbook("""\
        - name: a
          source: {type: winrm, host: w, user: u, password: "${file:secrets/nope}"}
          target: {provider: local}
        """)
    issue = only_error(text)
    assert (issue.line, issue.field) == (8, "servers[0].source.password")
    assert str(Path("pb.yaml").absolute().parent / "secrets" / "nope") in issue.message


def test_extension_keys_hold_anchors_for_merge_keys(tmp_path: Path) -> None:
    text = "x-target: &target {provider: local, cpus: 4, memory: 8GiB}\n" + playbook("""\
        - name: a
          source: {type: vm, provider: local, vm: a}
          target: {<<: *target, cpus: 8}
        - name: b
          source: {type: vm, provider: local, vm: b}
          target: *target
        """)
    book = load_playbook_text(text, tmp_path / "pb.yaml").playbook
    assert (book.server("a").target.cpus, book.server("a").target.memory) == (8, 8 * 1024**3)
    assert book.server("b").target.cpus == 4


def test_unquoted_mac_and_leading_zero_stay_text_as_in_yaml_1_2(tmp_path: Path) -> None:
    text = playbook("""\
        - name: a
          source: {type: vm, provider: local, vm: a}
          target:
            provider: local
            vm_name: 010
            nics: [{source_mac: 52:54:00:00:00:06, vlan: 010}]
        """)
    target = load_playbook_text(text, tmp_path / "pb.yaml").playbook.servers[0].target
    assert target.nics[0].source_mac == "52:54:00:00:00:06"
    assert target.vm_name == "010"
    assert target.nics[0].vlan == 10


# ---------------------------------------------------------------- location()


def test_location_points_at_the_value_or_its_nearest_ancestor(design_env: Path, tmp_path: Path) -> None:
    text = (FIXTURES / "design_example.yaml").read_text().replace("/run/secrets/hv01", str(design_env))
    loaded = load_playbook_text(text, "wave-1.yaml")
    lines = text.splitlines()

    def line_col(*loc: str | int) -> tuple[int, int]:
        where = loaded.location(*loc)
        assert where is not None
        name, line, col = where.rsplit(":", 2)
        assert name == "wave-1.yaml"
        return int(line), int(col)

    line, col = line_col("servers", 0, "target", "nics", 0)
    assert lines[line - 1][col - 1 :].startswith('{source_mac: "52:54:00:00:00:06"')
    line, col = line_col("servers", 0, "target", "nics", 0, "ip")
    assert lines[line - 1][col - 1 :].startswith("10.1.0.6/24")
    line, col = line_col("servers", 1, "source", "path")
    assert lines[line - 1][col - 1 :].startswith("./images/web01.raw")
    line, col = line_col("providers", "vcenter", "password")
    assert lines[line - 1][col - 1 :].startswith('"${env:VC_PASSWORD}"')
    # Not in the file: the nearest ancestor that is.
    assert line_col("servers", 0, "target", "nics", 7, "ip") == line_col("servers", 0, "target", "nics")
    assert line_col("servers", 0, "target", "no_such_field") == line_col("servers", 0, "target")
    assert line_col("no_such_section", 3) == (1, 1)


# ---------------------------------------------------------------- YAML problems


def test_malformed_yaml_is_one_issue_at_the_problem() -> None:
    text = "apiVersion: hvmigrate/v1\nkind: MigrationPlaybook\nname: a: b\n"
    issue = only_error(text)
    assert (issue.file, issue.line, issue.col, issue.field) == ("pb.yaml", 3, 8, "")
    assert "':'" in issue.message
    assert str(issue) == f"pb.yaml:3:8: {issue.message}"


def test_unclosed_flow_sequence_is_reported_where_the_parser_stopped() -> None:
    issue = only_error("apiVersion: hvmigrate/v1\nservers: [a, b\nkind: MigrationPlaybook\n")
    assert (issue.line, issue.col) == (3, 5)
    assert "while parsing a flow sequence at line 2" in issue.message


def test_unclosed_quote_points_at_the_opening_quote() -> None:
    issue = only_error("apiVersion: hvmigrate/v1\nname: 'wave-1\nkind: x\n")
    assert (issue.line, issue.col) == (2, 7)
    assert "never closed" in issue.message


def test_tab_indentation_is_named_as_such() -> None:
    text = "apiVersion: hvmigrate/v1\nservers:\n\t- name: a\n"
    issue = only_error(text)
    assert (issue.line, issue.col) == (3, 1)
    assert "tab" in issue.message and "spaces" in issue.message


def test_misaligned_line_is_reported_as_indentation() -> None:
    text = playbook("""\
        - name: a
          source: {type: vm, provider: local, vm: a}
         target: {provider: local}
        """)
    issue = only_error(text)
    assert (issue.line, issue.col) == (9, 2)
    assert "indentation" in issue.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(PlaybookError) as caught:
        load_playbook(path)
    [issue] = caught.value.errors
    assert issue.file == str(path)
    assert "empty" in issue.message and "apiVersion" in issue.message


@pytest.mark.parametrize(("text", "what"), [("- a\n- b\n", "a list"), ("just text\n", "a single value")])
def test_top_level_must_be_a_mapping(text: str, what: str) -> None:
    issue = only_error(text)
    assert (issue.line, issue.col) == (1, 1)
    assert "mapping" in issue.message and what in issue.message


def test_unreadable_file_is_an_issue_without_position(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PlaybookError) as caught:
        load_playbook(missing)
    [issue] = caught.value.errors
    assert issue.line == 0
    assert str(caught.value) == f"{missing}: cannot be read: No such file or directory"


def test_non_utf8_file_points_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"apiVersion: hvmigrate/v1\nname: caf\xe9\n")
    with pytest.raises(PlaybookError) as caught:
        load_playbook(path)
    [issue] = caught.value.errors
    assert (issue.line, issue.col) == (2, 10)
    assert "UTF-8" in issue.message


def test_two_documents_are_rejected() -> None:
    issue = only_error(HEADER + "---\nname: other\n")
    assert issue.line == 6
    assert "more than one YAML document" in issue.message


def test_duplicate_keys_are_errors_naming_both_lines() -> None:
    text = playbook("""\
        - name: a
          source: {type: vm, provider: local, vm: a}
          target:
            provider: local
            cpus: 2
            memory: 4GiB
            cpus: 4
        """)
    issue = only_error(text)
    assert (issue.line, issue.col, issue.field) == (13, 5, "servers[0].target.cpus")
    assert "duplicate key 'cpus'" in issue.message
    assert "lines 11 and 13" in issue.message


def test_duplicate_top_level_key_is_reported_with_other_errors() -> None:
    text = (
        HEADER + "name: again\nservers:\n  - {name: a, source: {type: vm, provider: local, vm: a}, "
        "target: {provider: local, cpus: 0}}\n"
    )
    issues = errors_of(text)
    assert [(i.line, i.field) for i in issues] == [(6, "name"), (8, "servers[0].target.cpus")]
    assert "lines 3 and 6" in issues[0].message


def test_duplicate_server_names_point_at_the_second_server() -> None:
    text = playbook("""\
        - name: web01
          source: {type: vm, provider: local, vm: a}
          target: {provider: local}
        - name: web01
          source: {type: vm, provider: local, vm: b}
          target: {provider: local}
        """)
    issue = only_error(text)
    assert (issue.line, issue.col, issue.field) == (10, 9, "servers[1].name")
    assert "'web01'" in issue.message and "line 7" in issue.message


def test_unknown_yaml_tag_is_reported_once() -> None:
    text = HEADER.replace("name: test", "name: !vault test") + "servers: []\n"
    issues = errors_of(text)
    assert [(i.line, i.field) for i in issues] == [(3, "name"), (6, "servers")]
    assert "!vault" in issues[0].message


def test_alias_bomb_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_VALUES", 5_000)  # the real limit works the same, only slower to reach
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 8):
        lines.append(f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]")
    issue = only_error("\n".join(lines) + "\n")
    assert "aliases expand the YAML to more than 5,000 values" in issue.message


# ---------------------------------------------------------------- validation errors


def test_unknown_field_suggests_the_closest_at_the_key() -> None:
    text = playbook("""\
        - name: a
          source: {type: vm, provider: local, vm: a}
          target:
            provider: local
            cpu: 4
        """)
    issue = only_error(text)
    assert (issue.line, issue.col, issue.field) == (11, 5, "servers[0].target.cpu")
    assert issue.message == "unknown field 'cpu'; did you mean 'cpus'?"


def test_unknown_field_inside_a_target_nic() -> None:
    text = playbook("""\
        - name: a
          source: {type: vm, provider: local, vm: a}
          target:
            provider: local
            nics:
              - {network: prod}
              - {netwrk: test, ip: dhcp}
        """)
    issue = only_error(text)
    assert (issue.line, issue.col, issue.field) == (13, 10, "servers[0].target.nics[1].netwrk")
    assert issue.message == "unknown field 'netwrk'; did you mean 'network'?"


def test_unknown_field_without_a_close_match_lists_the_allowed_ones() -> None:
    text = playbook("- {name: a, source: {type: vm, provider: local, vm: a}, target: {provider: local}}\n")
    issue = only_error(text + "frobnicate: 1\n")
    assert (issue.line, issue.col) == (8, 1)
    assert issue.field == "frobnicate"
    assert "allowed here: apiVersion, kind, name, defaults, providers, dns, servers" in issue.message


def test_field_of_another_source_type_says_which_type_has_it() -> None:
    issue = only_error(
        playbook("""\
        - name: a
          source: {type: image, path: a.raw, key: ~/.ssh/id}
          target: {provider: local}
        """)
    )
    assert issue.field == "servers[0].source.key"
    assert issue.message == "unknown field 'key': it belongs to type ssh, and this one is type image"


def test_wrong_types_say_what_was_expected() -> None:
    text = playbook("""\
        - name: a
          source: {type: vm, provider: local, vm: a}
          target:
            provider: local
            cpus: two
            vm_name: 1234
            keep_hostname: maybe
            nics: {network: prod}
        """)
    messages = {i.field: (i.line, i.message) for i in errors_of(text)}
    assert messages["servers[0].target.cpus"] == (11, "expected a whole number, got 'two'")
    assert messages["servers[0].target.vm_name"] == (
        12,
        "expected text, got 1234; YAML reads 1234 as a number: put it in quotes",
    )
    assert messages["servers[0].target.keep_hostname"] == (13, "expected true or false, got 'maybe'")
    assert messages["servers[0].target.nics"][1].startswith("expected a list")


def test_size_errors() -> None:
    text = playbook("""\
        - name: a
          source: {type: image, path: a.raw, size: -5GiB}
          target:
            provider: local
            memory: four gigs
            disks: [{source: a.raw, size: 2EiB}]
        """)
    messages = {i.field: i.message for i in errors_of(text)}
    assert messages == {
        "servers[0].source.size": "a size cannot be negative",
        "servers[0].target.memory": "expected a size such as 4GiB, 512MiB or 100GB, got 'four gigs'",
        "servers[0].target.disks[0].size": "'2EiB' is larger than 1 EiB; check the unit",
    }


def test_size_or_auto_is_one_message() -> None:
    issue = only_error(
        playbook("""\
        - name: a
          source: {type: vm, provider: local, vm: a}
          target: {provider: local, disks: [{source: x, size: lots}]}
        """)
    )
    assert issue.message == "expected a size such as 4GiB, 512MiB or 100GB, or 'auto', got 'lots'"


def test_zero_rate_and_bad_duration() -> None:
    text = HEADER + textwrap.dedent("""\
        defaults:
          mirror: {bandwidth: {limit: 0MiB/s}}
          cutover: {script_timeout: 5 minutes}
        servers: [{name: a, source: {type: vm, provider: local, vm: a}, target: {provider: local}}]
        """)
    issues = errors_of(text)
    assert [(i.line, i.field) for i in issues] == [
        (7, "defaults.mirror.bandwidth.limit"),
        (8, "defaults.cutover.script_timeout"),
    ]
    assert "0 would never finish" in issues[0].message
    assert issues[1].message == "expected a duration such as 30s, 5m, 1h or 1h30m, got '5 minutes'"


def test_bad_days_and_hours_in_a_bandwidth_schedule() -> None:
    text = HEADER + textwrap.dedent("""\
        defaults:
          mirror:
            bandwidth:
              schedule:
                - {days: mon-fri, hours: "08:00-18:00", limit: 20MiB/s}
                - days: funday
                  hours: "25:00-26:00"
        servers: [{name: a, source: {type: vm, provider: local, vm: a}, target: {provider: local}}]
        """)
    issues = errors_of(text)
    assert [(i.line, i.field) for i in issues] == [
        (11, "defaults.mirror.bandwidth.schedule[1].days"),
        (12, "defaults.mirror.bandwidth.schedule[1].hours"),
    ]
    assert issues[0].message == "expected days like mon-fri or sat,sun, got 'funday'"
    assert issues[1].message == "'25:00-26:00' is not a valid time range"


def test_ip_union_error_is_one_readable_message() -> None:
    issue = only_error(
        playbook("""\
        - name: a
          source: {type: vm, provider: local, vm: a}
          target: {provider: local, nics: [{ip: 10.0.0.300/24, gateway: 10.0.0.1}]}
        """)
    )
    assert issue.field == "servers[0].target.nics[0].ip"
    assert issue.message == (
        "expected an IP address with a prefix length such as 10.1.0.6/24 or fd00::6/64, "
        "or one of 'dhcp', 'keep', got '10.0.0.300/24'"
    )


def test_literal_typo_suggests_the_value() -> None:
    issue = only_error(
        playbook("""\
        - name: a
          source: {type: vm, provider: local, vm: a}
          target: {provider: local}
          cutover: {mode: manul}
        """)
    )
    assert issue.message == "expected 'manual' or 'auto', got 'manul'; did you mean 'manual'?"


def test_unknown_provider_type_lists_the_allowed_types() -> None:
    text = HEADER.replace("local: {type: sim}", "local: {type: sim}\n  vc: {type: vmware, host: vc}") + (
        "servers: [{name: a, source: {type: vm, provider: local, vm: a}, target: {provider: local}}]\n"
    )
    issue = only_error(text)
    assert (issue.line, issue.col, issue.field) == (6, 14, "providers.vc.type")
    assert issue.message == "unknown provider type 'vmware'; expected one of: sim, kvm, esx, hyperv"


def test_unknown_source_type_suggests_the_closest() -> None:
    issue = only_error(
        playbook("""\
        - name: a
          source: {type: sshh, host: h}
          target: {provider: local}
        """)
    )
    assert issue.field == "servers[0].source.type"
    assert (
        issue.message
        == "unknown source type 'sshh'; expected one of: image, ssh, winrm, vm; did you mean 'ssh'?"
    )


def test_missing_fields_point_at_the_mapping_that_lacks_them() -> None:
    text = HEADER.replace("local: {type: sim}", "local: {type: sim}\n  vc:\n    type: esx\n    host: vc") + (
        "servers: [{name: a, source: {type: vm, provider: local, vm: a}, target: {provider: local}}]\n"
    )
    issues = errors_of(text)
    assert [(i.line, i.col, i.field, i.message) for i in issues] == [
        (6, 3, "providers.vc.user", "missing required field 'user' (needed when type is esx)"),
        (6, 3, "providers.vc.password", "missing required field 'password' (needed when type is esx)"),
    ]


def test_provider_without_type_asks_for_it() -> None:
    text = HEADER.replace("local: {type: sim}", "local: {root: ./sim}")
    text += "servers: [{name: a, source: {type: vm, provider: local, vm: a}, target: {provider: local}}]\n"
    issue = only_error(text)
    assert (issue.line, issue.field) == (5, "providers.local")
    assert issue.message == "missing required field 'type': the provider type, one of sim, kvm, esx, hyperv"


def test_several_errors_are_reported_at_once_sorted_by_line() -> None:
    path = FIXTURES / "three_errors.yaml"
    with pytest.raises(PlaybookError) as caught:
        load_playbook(path)
    issues = caught.value.errors
    assert [(i.line, i.field) for i in issues] == [
        (12, "servers[0].target.cpu"),
        (13, "servers[0].target.memory"),
        (17, "servers[1].cutover.mode"),
    ]
    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert lines[0] == f"{path}:12:7: servers[0].target.cpu: unknown field 'cpu'; did you mean 'cpus'?"


def test_playbook_error_survives_pickling() -> None:
    error = PlaybookError(
        [PlaybookIssue("pb.yaml", 3, 1, "name", "b"), PlaybookIssue("pb.yaml", 1, 1, "", "a")]
    )
    copy = pickle.loads(pickle.dumps(error))
    assert copy.errors == error.errors and str(copy) == str(error) == "pb.yaml:1:1: a\npb.yaml:3:1: name: b"


def test_empty_servers_list() -> None:
    issue = only_error(HEADER + "servers: []\n")
    assert (issue.line, issue.field) == (6, "servers")
    assert issue.message == "needs at least 1 entry"


# ---------------------------------------------------------------- secrets


def test_missing_env_secret_names_the_variable_and_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HVM_TEST_MISSING", raising=False)
    monkeypatch.setenv("HVM_TEST_PRESENT", "present-secret-value")
    text = (
        HEADER.replace(
            "local: {type: sim}",
            'local: {type: sim}\n  vc: {type: esx, host: vc, user: u, password: "${env:HVM_TEST_MISSING}"}\n'
            '  hv: {type: hyperv, host: hv, user: u, password: "${env:HVM_TEST_PRESENT}", port: 0}',
        )
        + "servers: [{name: a, source: {type: vm, provider: local, vm: a}, target: {provider: local}}]\n"
    )
    with pytest.raises(PlaybookError) as caught:
        load_playbook_text(text, "pb.yaml")
    issues = caught.value.errors
    assert [(i.line, i.field) for i in issues] == [(6, "providers.vc.password"), (7, "providers.hv.port")]
    assert "HVM_TEST_MISSING" in issues[0].message
    assert "present-secret-value" not in str(caught.value)


def test_secret_inputs_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    clear = "hunter2-in-clear"
    long_value = "x" * 30 + "-looks-like-a-pasted-token"
    text = (
        HEADER.replace(
            "local: {type: sim}",
            f"local: {{type: sim}}\n  vc: {{type: esx, host: vc, user: u, password: [{clear}]}}\n"
            f"  hv: {{type: hyperv, host: hv, user: u, pasword: {clear}, password: {clear},\n"
            f"        auth: {long_value}, transport: {clear}}}",
        )
        + "servers: [{name: a, source: {type: vm, provider: local, vm: a}, target: {provider: local}}]\n"
    )
    with pytest.raises(PlaybookError) as caught:
        load_playbook_text(text, "pb.yaml")
    shown = str(caught.value)
    messages = {i.field: i.message for i in caught.value.errors}
    assert list(messages) == [
        "providers.vc.password",
        "providers.hv.pasword",
        "providers.hv.auth",
        "providers.hv.transport",
    ]
    assert clear not in shown
    assert long_value not in shown
    assert messages["providers.hv.pasword"] == "unknown field 'pasword'; did you mean 'password'?"
    assert messages["providers.hv.auth"] == "expected 'ntlm', 'kerberos', 'credssp' or 'basic'"
    # The same text was a valid password elsewhere, so it is masked even where a typo echoes it.
    assert messages["providers.hv.transport"] == "expected 'https', 'http' or 'local', got '***'"


def test_numeric_secret_asks_for_quotes_without_showing_it() -> None:
    text = playbook("""\
        - name: a
          source: {type: ssh, host: h, password: 987654321}
          target: {provider: local}
        """)
    issue = only_error(text)
    assert issue.field == "servers[0].source.password"
    assert "quotes" in issue.message
    assert "987654321" not in str(issue)


def test_secrets_are_masked_in_repr_str_and_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HVM_TEST_TSIG", "tsig-value-never-shown")
    text = HEADER.replace(
        "local: {type: sim}",
        "local: {type: sim}\n  vc: {type: esx, host: vc, user: u, password: esx-password-in-clear}",
    ) + textwrap.dedent("""\
        dns:
          corp:
            {type: rfc2136, server: 127.0.0.1, zone: corp.test,
             tsig: {name: k, secret: "${env:HVM_TEST_TSIG}"}}
        servers: [{name: a, source: {type: vm, provider: local, vm: a}, target: {provider: local}}]
        """)
    loaded = load_playbook_text(text, tmp_path / "pb.yaml")
    book = loaded.playbook
    secret = book.dns["corp"].tsig.secret
    assert isinstance(secret, Secret) and secret.reveal() == "tsig-value-never-shown"
    assert book.providers["vc"].password.reveal() == "esx-password-in-clear"
    for rendered in (
        repr(loaded),
        str(book),
        repr(book),
        book.model_dump_json(),
        json.dumps(book.model_dump(mode="json")),
        str(book.model_dump()),
        json.dumps(playbook_json_schema()),
    ):
        assert "tsig-value-never-shown" not in rendered
        assert "esx-password-in-clear" not in rendered
    assert json.loads(book.model_dump_json())["dns"]["corp"]["tsig"]["secret"] == "***"


# ---------------------------------------------------------------- schema and reference


def test_json_schema_describes_the_playbook() -> None:
    schema = playbook_json_schema()
    json.dumps(schema)  # serialisable as is
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] and schema["description"]
    assert schema["type"] == "object"
    assert set(schema["required"]) == {"apiVersion", "kind", "name", "servers"}
    assert schema["additionalProperties"] is False
    assert "^x-" in schema["patternProperties"]
    assert {"Server", "TargetSpec", "NicMap", "EsxProviderConfig"} <= set(schema["$defs"])
    provider = schema["properties"]["providers"]["additionalProperties"]
    assert provider["discriminator"]["propertyName"] == "type"


def test_json_schema_is_valid_and_accepts_the_example() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = playbook_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    example = yaml.safe_load((FIXTURES / "design_example.yaml").read_text())
    assert list(validator.iter_errors(example)) == []
    example["servers"][0]["target"]["cpu"] = 4
    example["x-anchors"] = {"anything": True}
    [error] = validator.iter_errors(example)
    assert "cpu" in error.message


def test_reference_covers_every_model_and_field() -> None:
    text = reference.render_reference()
    sections = re.split(r"\n#{3,4} ", text)
    by_model = {s.split("</a>", 1)[1].split("\n", 1)[0]: s for s in sections if "</a>" in s.split("\n", 1)[0]}
    seen: set[type] = set()
    pending: list[type] = [Playbook]

    def models_in(tp: object) -> list[type]:
        found = [tp] if is_model(tp) else []
        for arg in typing.get_args(tp):
            found += models_in(arg)
        return found

    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        assert model.__name__ in by_model, f"no section for {model.__name__}"
        section = by_model[model.__name__]
        for name, info in model.model_fields.items():
            assert f"| `{name}` |" in section, f"{model.__name__}.{name} missing from the reference"
            bare, _, _ = field_type(info)
            pending.extend(models_in(bare))
    assert len(seen) >= 20
    assert "[`sim`](#simproviderconfig)" in text and "[`zonefile`](#zonefiledns)" in text
    assert "| `chunk_size` | [size](#type-size) | `4MiB` |" in text
    assert "| `script_timeout` | [duration](#type-duration) | `10m` |" in text
    assert "| `cpus` | integer (≥ 1, ≤ 768) | `2` |" in text


def test_docs_page_is_the_generated_reference() -> None:
    assert DOCS.exists(), "write it with: python -m orchestrator.playbook.reference > docs/playbook.md"
    page = DOCS.read_text()
    assert reference.render_reference() in page
    assert page == reference.render_document(), (
        "docs/playbook.md is stale: python -m orchestrator.playbook.reference > docs/playbook.md"
    )
