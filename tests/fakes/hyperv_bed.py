"""A Hyper-V host model served by the WinRM stand-in over HTTPS with a minted CA, and the provider
settings that reach it: what every Hyper-V integration test starts from (test stand-in only)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from orchestrator.mirror.route import DiskCopy, copy_disk
from providers.base import AgentLocation

from .hyperv_host import HypervHost
from .winrm_server import WinRMStandIn, mint_tls

USER, PASSWORD = "migrator", "Pa$$w0rd;'\"x"  # quotes, $ and ; on purpose: passed as data, never shown
CHUNK = 256 * 1024


@contextmanager
def hyperv_bed(root: Path, host: HypervHost) -> Iterator[dict[str, Any]]:
    """``host`` served at https://localhost:<port>/wsman while the block runs."""
    tls = mint_tls(root / "tls")
    endpoint = WinRMStandIn(host, users={USER: PASSWORD}, tls=tls).start()
    try:
        yield {"host": host, "endpoint": endpoint, "tls": tls, "root": root}
    finally:
        endpoint.stop()


def hyperv_config(bed: dict[str, Any], **overrides: Any) -> Any:
    """A HypervProviderConfig for the bed's endpoint, as a playbook would give it."""
    from orchestrator.playbook.models import HypervProviderConfig

    options: dict[str, Any] = {
        "type": "hyperv",
        "host": "localhost",
        "port": bed["endpoint"].port,
        "user": f"CORP\\{USER}",
        "password": PASSWORD,
        "ca_bundle": bed["tls"].ca_file,
        **overrides,
    }
    return HypervProviderConfig(**options)


class _CopyOptions:
    """The mirror options of a Hyper-V writer test (what DiskCopy.for_endpoint reads)."""

    chunk_size = CHUNK
    verify = True
    compression = "zstd"
    compression_level = 3
    streams = 2


def host_pass(source: Path, endpoint: Any, writer: Any, mode: str) -> Any:
    """One pass of the local image ``source`` to the mounted VHDX ``endpoint``, written by ``writer`` (the
    agent on the host): never in this process."""
    copy = DiskCopy.for_endpoint(
        _CopyOptions(),
        AgentLocation(None, str(source)),
        endpoint,
        writer,
        "db02:disk0",
        mode,  # type: ignore[arg-type]
    )
    return copy_disk(copy, open_reader=lambda: pytest.fail("the target is on the host: never in-process"))
