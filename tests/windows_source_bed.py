"""A Windows source as the Windows-source tests open it, and one disk pass read from it by its agent.

The tests differ in the stand-in they run (WinRM over HTTPS, or `transport: local`) and in the source's
options (services, vss, python); the playbook around the source and the pass are the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.mirror.route import DiskCopy, copy_disk
from orchestrator.playbook.models import Playbook
from providers.base import AgentLocation
from providers.registry import open_source

CHUNK = 256 * 1024


def over_winrm(bed: dict[str, Any], user: str, password: str, python: str | None) -> dict[str, Any]:
    """The source fields that reach a WinRMStandIn bed (``endpoint``, ``tls``) as CORP\\user."""
    return {
        "host": "localhost",
        "port": bed["endpoint"].port,
        "user": f"CORP\\{user}",
        "password": password,
        "ca_bundle": str(bed["tls"].ca_file),
        "python": python,
    }


def open_windows_source(server: str, **source: Any) -> Any:
    """The source of a one-server playbook whose server reads PhysicalDrive0 from a `winrm` source."""
    book = Playbook.model_validate(
        {
            "apiVersion": "hvmigrate/v1",
            "kind": "MigrationPlaybook",
            "name": "win",
            "providers": {"local": {"type": "sim", "root": "./sim"}},
            "servers": [
                {
                    "name": server,
                    "source": {"type": "winrm", **source},
                    "target": {
                        "provider": "local",
                        "vm_name": server,
                        "disks": [{"source": "PhysicalDrive0"}],
                    },
                }
            ],
        }
    )
    return open_source(book.servers[0], {})


def one_pass(location: AgentLocation, target: Path, mode: str, server: str) -> Any:
    """One pass of PhysicalDrive0 into the raw file ``target``, by the source's agent and a local one."""
    copy = DiskCopy(
        source=location,
        target=AgentLocation(None, str(target)),
        source_identity=f"{server}:PhysicalDrive0",
        chunk_size=CHUNK,
        mode=mode,  # type: ignore[arg-type]
        compression="zstd",
    )
    return copy_disk(copy, open_reader=lambda: pytest.fail("a Windows disk is never read in-process"))
