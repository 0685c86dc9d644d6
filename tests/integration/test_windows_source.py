"""A Windows source over pywinrm and real HTTPS to the WS-Management stand-in: discovery, validation, VSS,
and the replica's first-boot script run through the same strict interpreter.

No Windows runs here (tests/fakes/windows_source_model.py stands for the server): what passes says the
scripts use only documented cmdlets and parameters and that the answers are read right; it cannot say how
a real Windows server's VSS writers or NIC drivers behave. Reading the disks through the agent is
tests/integration/test_windows_agent.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.guest.windows_firstboot import WindowsNic, firstboot_script
from orchestrator.playbook.models import Playbook
from orchestrator.validation import Severity, validate
from providers.base import ProviderError
from providers.registry import open_source
from tests.fakes.powershell import Interpreter, PSError
from tests.fakes.windows_source_model import Adapter, Volume, WindowsMachine
from tests.fakes.winrm_server import WinRMStandIn, mint_tls

pytestmark = pytest.mark.integration
pytest.importorskip("winrm", reason="pywinrm is missing: pip install 'hvmigrate[hyperv]'")

GiB = 1024**3
USER, PASSWORD = "migrator", "Pa$$;'w\"rd"
LDM_GPT = "{AF9B60A0-1431-4F62-BC68-3311714A69AD}"


def source_machine() -> WindowsMachine:
    machine = WindowsMachine(hostname="APP01", domain="corp.test")
    machine.disks = [
        {"Number": 0, "Size": 60 * GiB, "PartitionStyle": "GPT"},
        {"Number": 1, "Size": 20 * GiB, "PartitionStyle": "GPT"},
    ]
    machine.partitions = [
        {"DiskNumber": 0, "PartitionNumber": 1, "Offset": 1024**2, "Size": 100 * 1024**2},
        {"DiskNumber": 0, "PartitionNumber": 2, "Offset": 101 * 1024**2, "Size": 59 * GiB},
        {"DiskNumber": 1, "PartitionNumber": 1, "Offset": 1024**2, "Size": 19 * GiB, "GptType": LDM_GPT},
    ]
    machine.volumes = [
        Volume(None, "FAT32", 100 * 1024**2, 70 * 1024**2, 0, 1),
        Volume("C", "NTFS", 59 * GiB, 39 * GiB, 0, 2, bitlocker=(1, 1)),  # encrypted, protection on
        Volume("D", "NTFS", 19 * GiB, 18 * GiB, 1, 1),
    ]
    machine.adapters = [
        Adapter(
            "Ethernet0",
            4,
            "00-50-56-00-00-08",
            [("10.0.0.8", 24), ("fe80::1", 64)],
            gateway="10.0.0.1",
            dns=["10.0.0.2", "10.0.0.3"],
            dhcp=False,
        )
    ]
    return machine


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("winsrc")
    machine = source_machine()
    tls = mint_tls(root / "tls")
    endpoint = WinRMStandIn(None, users={USER: PASSWORD}, tls=tls, models=(machine,)).start()
    yield {"machine": machine, "endpoint": endpoint, "tls": tls}
    endpoint.stop()


def playbook(bed: dict[str, Any], **source: Any) -> Playbook:
    return Playbook.model_validate(
        {
            "apiVersion": "hvmigrate/v1",
            "kind": "MigrationPlaybook",
            "name": "win",
            "providers": {"local": {"type": "sim", "root": "./sim"}},
            "servers": [
                {
                    "name": "app01",
                    "source": {
                        "type": "winrm",
                        "host": "localhost",
                        "port": bed["endpoint"].port,
                        "user": f"CORP\\{USER}",
                        "password": PASSWORD,
                        "ca_bundle": str(bed["tls"].ca_file),
                        **source,
                    },
                    "target": {
                        "provider": "local",
                        "vm_name": "app01",
                        "disks": [{"source": "PhysicalDrive0"}, {"source": "PhysicalDrive1"}],
                    },
                }
            ],
        }
    )


@pytest.fixture
def source(bed: dict[str, Any]) -> Iterator[Any]:
    book = playbook(bed)
    opened = open_source(book.servers[0], {})
    yield opened
    opened.close()
    bed["machine"].shadows.clear()
    bed["machine"].vss_full = False


def test_discovery_maps_to_source_facts_and_validation_flags_bitlocker(
    bed: dict[str, Any], source: Any
) -> None:
    facts = source.discover()
    assert (facts.hostname, facts.os, facts.firmware) == ("APP01", "windows", "uefi")
    assert facts.os_detail == "Microsoft Windows Server 2019 Standard 10.0.17763"
    assert [(d.name, d.size, d.used, d.partition_table, d.filesystems) for d in facts.disks] == [
        ("PhysicalDrive0", 60 * GiB, 30 * 1024**2 + 20 * GiB, "gpt", ("fat32", "ntfs")),
        ("PhysicalDrive1", 20 * GiB, 1 * GiB, "gpt", ("ntfs",)),
    ]
    (nic,) = facts.nics
    assert (nic.name, nic.mac, nic.addresses) == ("Ethernet0", "00:50:56:00:00:08", ("10.0.0.8/24",))
    windows = facts.windows
    assert windows is not None and windows.domain == "corp.test" and windows.version == "10.0.17763"
    assert [(v.letter, v.disk, v.bitlocker) for v in windows.volumes] == [
        (None, "PhysicalDrive0", "off"),
        ("C", "PhysicalDrive0", "on"),
        ("D", "PhysicalDrive1", "off"),
    ]
    assert windows.dynamic_disks == ("PhysicalDrive1",)
    assert windows.nics[0].gateways == ("10.0.0.1",) and windows.nics[0].dns_servers == (
        "10.0.0.2",
        "10.0.0.3",
    )
    assert not windows.nics[0].dhcp

    findings = validate(playbook(bed), facts={"app01": facts})
    by_rule = {f.rule_id: f for f in findings}
    bitlocker = by_rule["windows.bitlocker_on"]
    assert bitlocker.severity is Severity.CRITICAL and "Suspend-BitLocker -MountPoint C:" in bitlocker.fix
    assert by_rule["windows.dynamic_disk"].severity is Severity.WARNING
    sent = [r.script for r in bed["endpoint"].scripts]
    assert PASSWORD not in "".join(sent) and all(r.exit_code == 0 for r in bed["endpoint"].scripts)


def test_a_server_without_the_bitlocker_feature_counts_as_unencrypted(
    bed: dict[str, Any], source: Any
) -> None:
    bed["machine"].bitlocker_feature = False
    try:
        facts = source.discover()
    finally:
        bed["machine"].bitlocker_feature = True
    assert all(v.bitlocker == "off" for v in facts.windows.volumes)


def test_vss_shadow_copies_live_for_one_pass_and_are_released_from_the_journal(
    bed: dict[str, Any], source: Any
) -> None:
    machine: WindowsMachine = bed["machine"]
    with source.pass_snapshot() as state:
        journaled = state.to_json()
        assert sorted(journaled["shadows"]) == ["C:\\", "D:\\"]
        assert {s["id"] for s in journaled["shadows"].values()} == set(machine.shadows)
        assert all("HarddiskVolumeShadowCopy" in s["device"] for s in journaled["shadows"].values())
    assert machine.shadows == {}

    with pytest.raises(RuntimeError), source.pass_snapshot():
        raise RuntimeError("the pass failed")
    assert machine.shadows == {}  # removed whatever happened

    held = source.pass_snapshot()  # a crash: the block never ends, the journal keeps its state
    state = held.__enter__().to_json()
    assert len(machine.shadows) == 2
    source.release_snapshot(state)
    source.release_snapshot(state)  # again after a retry: gone counts as removed
    assert machine.shadows == {}


def test_vss_without_storage_fails_and_leaves_no_shadow_copy(bed: dict[str, Any], source: Any) -> None:
    machine: WindowsMachine = bed["machine"]
    source.discover()
    machine.vss_full = True
    with (
        pytest.raises(ProviderError, match=r"VSS could not snapshot C:\\ .*not enough storage"),
        source.pass_snapshot(),
    ):
        pass
    assert machine.shadows == {}
    with pytest.raises(ProviderError, match="is not a shadow copy id"):
        source.release_snapshot({"shadows": {"C:\\": {"id": "x' OR ID<>'", "device": ""}}})


def test_reading_the_disks_without_python_says_what_to_set(source: Any) -> None:
    """Reading is the agent's (tests/integration/test_windows_agent.py); without python, one line."""
    with pytest.raises(ProviderError, match=r"needs the hvmigrate agent on localhost: install CPython"):
        source.disk_location("PhysicalDrive0")
    with pytest.raises(ProviderError, match="read by the hvmigrate agent on localhost, not in this process"):
        source.open_disk("PhysicalDrive0")


def test_shutdown_stops_the_computer(bed: dict[str, Any], source: Any) -> None:
    source.shutdown(timeout=60, force=True)
    assert bed["machine"].stopped
    assert bed["endpoint"].scripts[-1].script.endswith("Stop-Computer -Force\n")
    bed["machine"].stopped = False


def test_first_boot_script_sets_the_nic_map_by_mac_and_removes_vmware_tools() -> None:
    """The generated text runs in the stand-in's interpreter against a replica just booted on new NICs."""
    replica = WindowsMachine(hostname="APP01")
    replica.adapters = [
        Adapter("Ethernet 2", 11, "00-15-5D-00-00-01", [("10.9.9.50", 24)]),  # DHCP lease on the new NIC
        Adapter("Ethernet 3", 12, "00-15-5D-00-00-02"),
        Adapter("Ethernet 4", 13, "00-15-5D-00-00-03", [("10.9.9.51", 24)]),
    ]
    replica.packages = ["VMware Tools", "7-Zip"]
    nics = [
        WindowsNic("00:15:5d:00:00:02", "10.1.0.8/24", "10.1.0.1", ("10.1.0.2", "10.1.0.3")),
        WindowsNic("00:15:5d:00:00:01", "dhcp"),
        WindowsNic("00:15:5d:00:00:03", "keep"),
    ]
    script = firstboot_script(nics, source_platform="esx")
    assert "10.1.0.8" not in script and "VMware" not in script  # values travel as data
    Interpreter(replica.cmdlets()).run_script(script)
    by_index = {a.index: a for a in replica.adapters}
    static = by_index[12]
    assert (static.addresses, static.gateway, static.dns, static.dhcp) == (
        [("10.1.0.8", 24)],
        "10.1.0.1",
        ["10.1.0.2", "10.1.0.3"],
        False,
    )
    assert by_index[11].dhcp and by_index[11].addresses == [("10.9.9.50", 24)]
    assert by_index[13].addresses == [("10.9.9.51", 24)]  # keep: left alone
    assert replica.packages == ["7-Zip"] and replica.hostname == "APP01"

    # a MAC the replica does not have stops the script there, instead of configuring another NIC
    missing = firstboot_script([WindowsNic("00:15:5d:00:00:99", "10.1.0.9/24")], source_platform="hyperv")
    with pytest.raises(PSError):
        Interpreter(replica.cmdlets()).run_script(missing)
    assert by_index[12].addresses == [("10.1.0.8", 24)]
