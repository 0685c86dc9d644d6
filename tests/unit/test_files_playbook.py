"""A data-only server in a playbook: its model, its errors at file:line, and the steps it plans to."""

from __future__ import annotations

import pytest

from orchestrator.planner import build_plan
from orchestrator.playbook.loader import PlaybookError, load_playbook_text

PLAYBOOK = """\
apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: files-wave
servers:
  - name: files01
    source: {type: ssh, host: 10.0.0.7, quiesce: services, services: [smbd]}
    data:
      target_host: {type: ssh, host: 10.0.0.8}
      mapping: all_to_one
      target_path: /srv/migrated
      rules:
        - {path: /srv/share}
        - {path: /srv/share/*.tmp, exclude: true}
      orphans: move
      orphans_path: /srv/orphans
"""


def test_data_server_plans_its_own_chain_without_vm_steps() -> None:
    loaded = load_playbook_text(PLAYBOOK, "files.yaml")
    server = loaded.playbook.servers[0]
    assert server.target is None and server.data is not None
    assert not server.data.rules[1].is_include
    plan = build_plan(loaded.playbook)
    kinds = [step.kind for step in plan.server_steps("files01")]
    assert kinds == [
        "validate",
        "mirror_files",
        "sync_files",
        "cutover_gate",
        "drain_replication",
        "quiesce_source",
        "final_files_pass",
        "shutdown_source",
    ]
    slots = dict(plan.node("files01/mirror_files").slots)
    assert slots["source_host"] == "10.0.0.7" and slots["target_host"] == "10.0.0.8"


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        ("        - {path: /srv/share}", "files.yaml:12:18: servers[0].data.rules[0].path", "absolute"),
        ("      orphans_path: /srv/orphans", "files.yaml:8:7: servers[0].data", "needs orphans_path"),
    ],
)
def test_bad_data_sections_are_named_at_file_line(change: str, where: str, message: str) -> None:
    text = PLAYBOOK.replace("        - {path: /srv/share}\n", "        - {path: srv/share}\n")
    if "orphans_path" in change:
        text = PLAYBOOK.replace(change + "\n", "")
    with pytest.raises(PlaybookError) as caught:
        load_playbook_text(text, "files.yaml")
    shown = str(caught.value)
    assert where in shown and message in shown


def test_a_server_needs_a_target_or_data_not_both() -> None:
    text = PLAYBOOK.replace("    data:\n", "    target: {provider: x}\n    data:\n")
    with pytest.raises(PlaybookError, match="exactly one"):
        load_playbook_text(text, "files.yaml")
