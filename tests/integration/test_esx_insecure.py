"""``insecure: true`` on an ESX provider is said in every report, not only by `migrate validate`.

The commands run in this process (click's runner) against vcsim with certificate checks off: the plan,
the dry run and its report file, a real execute and its report file, status and `migrate report`. Each
must carry the security.insecure_tls warning; the same playbook with the thumbprint pinned carries none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import main
from tests.images import make_image
from tests.services import vcsim as vcsim_service

pytestmark = pytest.mark.integration
pytest.importorskip("pyVmomi", reason="pyvmomi is missing: pip install 'hvmigrate[esx]'")

vcenter_sim = vcsim_service.vcenter_sim

MiB = 1024**2
REPO = Path(__file__).resolve().parents[2]
RULE = "security.insecure_tls"


def write_playbook(tmp_path: Path, server: Any, *, insecure: bool) -> Path:
    data = yaml.safe_load((REPO / "playbooks" / "image-to-esx.yaml").read_text())
    vcenter = data["providers"]["vcenter"]
    vcenter.update(host=server.host, port=server.port, disk_writer="datastore_path")
    if insecure:
        del vcenter["thumbprint"]
        vcenter["insecure"] = True
    else:
        vcenter["thumbprint"] = server.thumbprint
    image = make_image(tmp_path / "disk.raw", 2 * MiB, {0: os.urandom(MiB)})
    (spec,) = data["servers"]
    spec["source"] = {"type": "image", "path": str(image)}
    spec["target"]["vm_name"] = "insecure01" if insecure else "pinned01"
    spec["target"]["disks"] = [{"source": "disk.raw", "datastore": "LocalDS_0"}]
    path = tmp_path / "esx.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def migrate(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_insecure_is_a_warning_in_every_report(
    tmp_path: Path, vcenter_sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = vcenter_sim.admin()
    vcsim_service.deploy_appliance(admin, "hvm-appliance")
    admin.content.sessionManager.Logout()
    monkeypatch.setenv("VC_PASSWORD", vcenter_sim.password)
    outputs: dict[str, str] = {}
    for insecure in (True, False):
        folder = tmp_path / ("insecure" if insecure else "pinned")
        folder.mkdir()
        book = str(write_playbook(folder, vcenter_sim, insecure=insecure))
        shown = {
            "plan": migrate("plan", book),
            "dry run": migrate("execute", book, "--dry-run", "--report", str(folder / "dry.json")),
            "execute": migrate("execute", book, "--report", str(folder / "run.json")),
            "status": migrate("status", book),
            "report": migrate("report", book, "--format", "md"),
        }
        for name, result in shown.items():
            assert result.exit_code == 0, (name, result.output)
            outputs[f"{insecure} {name}"] = result.output
        for report in ("dry.json", "run.json"):
            rules = [f["rule_id"] for f in json.loads((folder / report).read_text())["findings"]]
            outputs[f"{insecure} {report}"] = " ".join(rules)
        migrate("undo", book, "--yes")
    for key, text in outputs.items():
        insecure = key.startswith("True")
        assert (RULE in text) == insecure, (key, text)
    assert "skips certificate checks" in outputs["True plan"]
    assert vcenter_sim.password not in "".join(outputs.values())
