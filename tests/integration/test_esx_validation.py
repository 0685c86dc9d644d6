"""`migrate validate --discover` against vcsim: the ESX rules fire on what a live vCenter reports.

Each test writes a playbook pointing at the vcsim fixture (pinned by its thumbprint), inspects it the way
the CLI does (orchestrator.session.inspect opens the provider and reads its inventory) and validates.
The first test shows the clean playbook yields nothing but the facts note, so each later finding is the
doing of the one thing its test changed. Host states are changed with the administrator's own session.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from orchestrator.playbook.models import Playbook
from orchestrator.session import inspect
from orchestrator.validation import DATASTORE_HEADROOM, ESX_VM_FILES, RULES, Finding, Severity, validate
from tests.services import vcsim as vcsim_service

pytestmark = pytest.mark.integration
pytest.importorskip("pyVmomi", reason="pyvmomi is missing: pip install 'hvmigrate[esx]'")

vcenter_sim = vcsim_service.vcenter_sim
admin = vcsim_service.vcenter_admin  # the administrator's own session, by the name the tests ask for

MiB, GiB = 1024**2, 1024**3
PASSWORD_ENV = "HVM_TEST_VCSIM_PASSWORD"
DATASTORE = "LocalDS_0"
HOSTS = ("DC0_C0_H0", "DC0_C0_H1")
FOREIGN_VM = "DC0_C0_RP0_VM0"  # made by vcsim's model: somebody else's VM


@pytest.fixture(autouse=True)
def _password(vcenter_sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, vcenter_sim.password)


def playbook_for(sim: Any, **target: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hvmigrate/v1",
        "kind": "MigrationPlaybook",
        "name": "esx-validation",
        "providers": {
            "vcenter": {
                "type": "esx",
                "host": sim.host,
                "port": sim.port,
                "user": sim.user,
                "password": f"${{env:{PASSWORD_ENV}}}",
                "thumbprint": sim.thumbprint,
                "datacenter": "DC0",
                "cluster": "DC0_C0",
                "datastore": DATASTORE,
                "appliance_login": {"key": "/root/.ssh/hvm-appliance", "host_key": "SHA256:" + "A" * 43},
            },
        },
        "servers": [
            {
                "name": "web01",
                "source": {"type": "ssh", "host": "10.0.0.7", "quiesce_command": "sync"},
                "target": {
                    "provider": "vcenter",
                    "memory": 1 * GiB,
                    "disks": [{"source": "/dev/sda", "size": 1 * GiB}],
                    "nics": [{"network": "VM Network"}],
                    **target,
                },
            }
        ],
    }


def validated(document: dict[str, Any]) -> list[Finding]:
    """What `migrate validate --discover` finds: the live inventory read through the provider."""
    playbook = Playbook.model_validate(copy.deepcopy(document))
    inspection = inspect(playbook)
    assert inspection.problems == []
    assert "vcenter" in inspection.inventories
    return validate(playbook, inventories=inspection.inventories, facts=inspection.facts)


def of(findings: list[Finding], rule_id: str) -> list[Finding]:
    return [f for f in findings if f.rule_id == rule_id]


def run_admin_task(task: Any) -> None:
    from pyVim.task import WaitForTask

    WaitForTask(task)


def admin_host(admin: Any, name: str) -> Any:
    from pyVmomi import vim

    content = admin.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    try:
        return next(h for h in view.view if h.name == name)
    finally:
        view.Destroy()


def admin_cluster(admin: Any, name: str) -> Any:
    from pyVmomi import vim

    content = admin.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.ClusterComputeResource], True)
    try:
        return next(c for c in view.view if c.name == name)
    finally:
        view.Destroy()


# ---------------------------------------------------------------- baseline


def test_clean_playbook_finds_only_the_undiscovered_source(vcenter_sim: Any) -> None:
    findings = validated(playbook_for(vcenter_sim))
    assert [f.rule_id for f in findings] == ["facts.not_discovered"], [f.message for f in findings]


def test_the_appliance_writer_needs_a_login(vcenter_sim: Any) -> None:
    data = playbook_for(vcenter_sim)
    del data["providers"]["vcenter"]["appliance_login"]
    findings = validated(data)
    assert [f.rule_id for f in findings] == ["esx.appliance_login_missing", "facts.not_discovered"]
    assert "has no appliance_login" in findings[0].message


# ---------------------------------------------------------------- esx.datastore_space


def test_disks_fit_but_swap_and_config_files_do_not(vcenter_sim: Any) -> None:
    """Sizes are taken from the same live inventory: the disks (+10%) and the config files fit, and half
    the memory would too, but a swap file of the whole memory does not."""
    probe = Playbook.model_validate(playbook_for(vcenter_sim))
    free = inspect(probe).inventories["vcenter"].datastores[DATASTORE].free
    if free < 4 * GiB:
        pytest.skip(f"{DATASTORE} has {free} bytes free: too little to place a disk beside a swap file")
    memory = min(free // 4, 24 * 1024**4) // MiB * MiB
    disk = int((free - memory // 2 - ESX_VM_FILES) / (1 + DATASTORE_HEADROOM)) // MiB * MiB
    findings = validated(
        playbook_for(vcenter_sim, memory=memory, disks=[{"source": "/dev/sda", "size": disk}])
    )
    assert of(findings, "datastore.free_space") == []  # the disks alone fit
    (space,) = of(findings, "esx.datastore_space")
    assert space.severity is Severity.CRITICAL
    assert space.field == "providers.vcenter.datastore"  # the first disk lands on the provider's default
    assert DATASTORE in space.message and "swap" in space.message and "web01" in space.message
    assert DATASTORE in space.fix

    small = validated(
        playbook_for(vcenter_sim, memory=64 * MiB, disks=[{"source": "/dev/sda", "size": disk}])
    )
    assert of(small, "esx.datastore_space") == []


def test_target_datastore_is_the_vms_home(vcenter_sim: Any) -> None:
    """target.datastore holds the .vmx and .vswp: a memory too large for it is reported there."""
    probe = Playbook.model_validate(playbook_for(vcenter_sim))
    free = inspect(probe).inventories["vcenter"].datastores["LocalDS_1"].free
    memory = free + 1 * GiB
    if memory > 24 * 1024**4:
        pytest.skip("LocalDS_1 has more free space than any VM can have memory")
    findings = validated(playbook_for(vcenter_sim, memory=memory, datastore="LocalDS_1"))
    (space,) = of(findings, "esx.datastore_space")
    assert space.field == "servers[0].target.datastore"
    assert "LocalDS_1" in space.message


def test_disks_too_large_are_reported_once_by_the_generic_rule(vcenter_sim: Any) -> None:
    probe = Playbook.model_validate(playbook_for(vcenter_sim))
    free = inspect(probe).inventories["vcenter"].datastores[DATASTORE].free
    findings = validated(
        playbook_for(vcenter_sim, disks=[{"source": "/dev/sda", "size": (free + GiB) // MiB * MiB}])
    )
    assert len(of(findings, "datastore.free_space")) == 1
    assert of(findings, "esx.datastore_space") == []


# ---------------------------------------------------------------- esx.host_unavailable


def test_host_in_maintenance_mode_is_critical(vcenter_sim: Any, admin: Any) -> None:
    host = admin_host(admin, HOSTS[0])
    run_admin_task(host.EnterMaintenanceMode_Task(timeout=0))
    try:
        findings = validated(playbook_for(vcenter_sim, host=HOSTS[0]))
        (unavailable,) = of(findings, "esx.host_unavailable")
        assert unavailable.severity is Severity.CRITICAL
        assert unavailable.field == "servers[0].target.host"
        assert f"{HOSTS[0]} on vcenter is in maintenance mode" in unavailable.message
        assert HOSTS[0] in unavailable.fix

        assert of(validated(playbook_for(vcenter_sim, host=HOSTS[1])), "esx.host_unavailable") == []
        assert of(validated(playbook_for(vcenter_sim)), "esx.host_unavailable") == []  # DRS uses H1

        document = playbook_for(vcenter_sim)
        document["providers"]["vcenter"]["esx_host"] = HOSTS[0]
        (by_provider,) = of(validated(document), "esx.host_unavailable")
        assert by_provider.field == "providers.vcenter.esx_host"
    finally:
        run_admin_task(host.ExitMaintenanceMode_Task(timeout=0))
    assert of(validated(playbook_for(vcenter_sim, host=HOSTS[0])), "esx.host_unavailable") == []


def test_every_host_unavailable_blocks_a_server_without_a_host(vcenter_sim: Any, admin: Any) -> None:
    hosts = [admin_host(admin, name) for name in HOSTS]
    entered = []
    try:
        for host in hosts:
            run_admin_task(host.EnterMaintenanceMode_Task(timeout=0))
            entered.append(host)
        (unavailable,) = of(validated(playbook_for(vcenter_sim)), "esx.host_unavailable")
        assert unavailable.field == "servers[0].target"
        assert all(name in unavailable.message for name in HOSTS)
    finally:
        for host in entered:
            run_admin_task(host.ExitMaintenanceMode_Task(timeout=0))


def test_disconnected_host_is_critical(vcenter_sim: Any, admin: Any) -> None:
    from pyVmomi import vim

    cluster = admin_cluster(admin, "DC0_C0")
    spec = vim.host.ConnectSpec(hostName="esx-gone.test", userName="root", password="unused", force=True)
    run_admin_task(cluster.AddHost_Task(spec=spec, asConnected=False))
    added = admin_host(admin, "esx-gone.test")
    try:
        (unavailable,) = of(
            validated(playbook_for(vcenter_sim, host="esx-gone.test")), "esx.host_unavailable"
        )
        assert "esx-gone.test on vcenter is disconnected" in unavailable.message
    finally:
        run_admin_task(added.Destroy_Task())


# ---------------------------------------------------------------- covered by the generic rules


def test_more_than_ten_nics_is_critical(vcenter_sim: Any) -> None:
    """nic.too_many already holds ESX to 10 NICs per VM (no esx.too_many_nics)."""
    ten = validated(playbook_for(vcenter_sim, nics=[{"network": "VM Network"}] * 10))
    assert of(ten, "nic.too_many") == []
    (too_many,) = of(
        validated(playbook_for(vcenter_sim, nics=[{"network": "VM Network"}] * 11)), "nic.too_many"
    )
    assert too_many.severity is Severity.CRITICAL
    assert "11 NICs; ESX allows 10" in too_many.message


def test_missing_port_group_is_critical(vcenter_sim: Any) -> None:
    """nic.unknown_network checks against the provider's port groups, standard and distributed."""
    present = validated(playbook_for(vcenter_sim, nics=[{"network": "DC0_DVPG_VLAN100"}]))
    assert of(present, "nic.unknown_network") == []
    (missing,) = of(
        validated(playbook_for(vcenter_sim, nics=[{"network": "DC0_DVPG9"}])), "nic.unknown_network"
    )
    assert missing.severity is Severity.CRITICAL
    assert "DC0_DVPG_VLAN100" in missing.fix and "VM Network" in missing.fix


def test_vm_name_taken_by_a_foreign_vm_is_critical(vcenter_sim: Any) -> None:
    (taken,) = of(validated(playbook_for(vcenter_sim, vm_name=FOREIGN_VM)), "vm.name_exists")
    assert taken.severity is Severity.CRITICAL
    assert FOREIGN_VM in taken.message


def test_insecure_esx_provider_is_a_warning(vcenter_sim: Any) -> None:
    document = playbook_for(vcenter_sim)
    document["providers"]["vcenter"]["insecure"] = True
    (insecure,) = of(validated(document), "security.insecure_tls")
    assert insecure.severity is Severity.WARNING
    assert insecure.field == "providers.vcenter.insecure"


def test_new_rules_are_in_the_catalog() -> None:
    assert RULES["esx.datastore_space"].severity is Severity.CRITICAL
    assert RULES["esx.host_unavailable"].severity is Severity.CRITICAL
    assert all("inventory" in RULES[r].needs for r in ("esx.datastore_space", "esx.host_unavailable"))
