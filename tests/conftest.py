"""Suite-wide test layout: which tests share a worker when the suite runs in parallel (pytest-xdist).

Everything that drives libvirtd runs on one worker, one test after another: there is one libvirtd per
machine, its TCG guests take a whole core each, and the fault tests restart it. Everything else (sim,
sshd, BIND, vcsim, each started per worker on free ports) runs on the other worker meanwhile.
"""

from __future__ import annotations

import os

import pytest

# pytest-xdist's workers get COLUMNS=80; a serial run has none, so `migrate` assumes 150 in a pipe. Both
# runs render the command's tables alike this way.
os.environ["COLUMNS"] = "150"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups off the items
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("libvirt") is not None:
            item.add_marker(pytest.mark.xdist_group("libvirt"))


# The secrets audit (tests/faults/secrets_audit.py): after every suite, no secret value in any written file.
from tests.faults.secrets_audit import (  # noqa: E402, F401 - fixtures and a hook, registered by being here
    _no_secret_in_any_output,
    pytest_fixture_setup,
    secrets_audit,
)
