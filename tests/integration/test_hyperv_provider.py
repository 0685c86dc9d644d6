"""The Hyper-V provider through pywinrm over real HTTP(S) to the WS-Management stand-in (tests/fakes).

No Windows runs here: the stand-in checks logins for real (NTLM by pyspnego's acceptor, with channel
binding to its minted TLS certificate), decodes every script the provider sends and runs it through a
strict interpreter of the cmdlets Microsoft documents, against a host model whose VHDX files are real
(raw, sparse) files. What it cannot show: real Hyper-V's timing, a guest booting, integration services.

The tests marked ``both_paths`` run twice: over WinRM, and over ``transport: local`` (the orchestrator on
the host itself), where the same scripts go through the stand-in ``powershell.exe`` on PATH
(tests/fakes/local_host.py) to the same host model and interpreter.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.base import DiskRequest, NicRequest, NotFound, ProviderError, VmRequest
from tests.fakes.hyperv_bed import PASSWORD, USER, hyperv_bed, hyperv_config
from tests.fakes.hyperv_host import VM as HostVM
from tests.fakes.hyperv_host import HypervHost, Nic
from tests.fakes.local_host import LocalHostStandIn
from tests.fakes.winrm_server import WinRMStandIn, mint_tls

pytestmark = pytest.mark.integration
pytest.importorskip("winrm", reason="pywinrm is missing: pip install 'hvmigrate[hyperv]'")

MiB = 1024**2


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hyperv")
    with hyperv_bed(root, HypervHost(root / "host", volumes={"C": 8 * 1024 * MiB, "D": 64 * MiB})) as made:
        local = LocalHostStandIn(made["host"]).start()  # the same host, reached as transport: local does
        try:
            yield {**made, "local": local}
        finally:
            local.stop()


def make_provider(bed: dict[str, Any], **overrides: Any) -> Any:
    from providers.hyperv import HypervProvider

    config = hyperv_config(bed, host_device_dir=bed["host"].root / "devices", **overrides)
    return HypervProvider("hv01", config)


@pytest.fixture
def provider(
    bed: dict[str, Any], request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Over WinRM; over transport: local when a test is parametrized with "local" (both_paths)."""
    if getattr(request, "param", "winrm") == "local":
        monkeypatch.setenv("PATH", bed["local"].path_with_bin(os.environ.get("PATH", "")))
        made = make_provider(bed, transport="local", user=None, password=None)
    else:
        made = make_provider(bed)
    yield made
    made.close()


both_paths = pytest.mark.parametrize("provider", ["winrm", "local"], indirect=True)


def sent(bed: dict[str, Any], provider: Any) -> list[Any]:
    """The scripts the stand-in that served ``provider`` received, oldest first."""
    return bed["local" if provider.config.transport == "local" else "endpoint"].scripts


def vm_request(name: str, disks: tuple[Any, ...], **overrides: Any) -> VmRequest:
    options: dict[str, Any] = {
        "name": name,
        "host": None,
        "cpus": 2,
        "memory": 512 * MiB,
        "firmware": "uefi",
        "disks": disks,
        "nics": (NicRequest("LAN", "52:54:00:aa:bb:01", vlan=42),),
        "generation": 2,
        "tags": {"hvmigrate.server": name},
    }
    options.update(overrides)
    return VmRequest(**options)


def test_inventory_over_https_with_ntlm(provider: Any, bed: dict[str, Any]) -> None:
    host: HypervHost = bed["host"]
    foreign = HostVM("dc01", 1, 1024 * MiB, "C:\\VMs", processors=2, notes="domain controller")
    foreign.nics.append(Nic("Network Adapter", "LAN", "00155D000099", False, False, vlan=7))
    host.vms["dc01"] = foreign
    try:
        facts = provider.details()
        assert facts.name == "HV01"
        assert {s.name: s.type for s in facts.switches} == {"LAN": "External", "Isolated": "Private"}
        volumes = {v.letter: v for v in facts.volumes}
        assert volumes["D"].size == 64 * MiB and 0 < volumes["D"].free <= 64 * MiB
        dc01 = facts.vm("dc01")
        assert dc01 is not None and not dc01.owned
        assert (dc01.generation, dc01.processors, dc01.memory, dc01.state) == (1, 2, 1024 * MiB, "Off")
        assert (
            dc01.nics[0].switch == "LAN"
            and dc01.nics[0].vlan == 7
            and dc01.nics[0].mac == "00:15:5d:00:00:99"
        )
        inventory = provider.inventory()
        assert inventory.type == "hyperv" and "dc01" in inventory.vms
        assert set(inventory.datastores) == {"C:", "D:"} and inventory.networks == ("LAN", "Isolated")
        assert inventory.limits.appliance_modes == ("shared", "dedicated", "host")
        assert inventory.limits.native_format == "vhdx"
        sent = bed["endpoint"].scripts[-1]
        assert "-NonInteractive" in sent.flags and sent.exit_code == 0
    finally:
        del host.vms["dc01"]


def test_wrong_password_is_refused_without_showing_it(bed: dict[str, Any]) -> None:
    provider = make_provider(bed, password="not-it")
    with pytest.raises(ProviderError) as caught:
        provider.inventory()
    message = str(caught.value)
    assert "refused the login of CORP\\migrator: wrong user name or password" in message
    assert "not-it" not in message and "not-it" not in repr(provider)


def test_certificate_not_issued_for_the_name_is_refused(bed: dict[str, Any], tmp_path: Path) -> None:
    other = mint_tls(tmp_path / "other", names=("hv99.corp.test",))
    endpoint = WinRMStandIn(bed["host"], users={USER: PASSWORD}, tls=other).start()
    try:
        provider = make_provider(bed, port=endpoint.port, ca_bundle=other.ca_file)
        with pytest.raises(ProviderError, match=r"TLS certificate of localhost .* cannot be verified"):
            provider.inventory()
        # the right name, but signed by a CA the provider was not given
        with pytest.raises(ProviderError, match=r"certificate verify failed.*give its CA as ca_bundle"):
            make_provider(bed, ca_bundle=other.ca_file).inventory()
    finally:
        endpoint.stop()


def test_plain_http_with_basic_auth_when_the_playbook_says_so(bed: dict[str, Any]) -> None:
    endpoint = WinRMStandIn(bed["host"], users={USER: PASSWORD}, auth=("basic",)).start()
    try:
        provider = make_provider(bed, transport="http", auth="basic", user=USER, port=endpoint.port)
        assert provider.inventory().hosts == ("HV01",)
    finally:
        endpoint.stop()


@both_paths
def test_disks_vm_and_undo_leave_nothing_behind(provider: Any, bed: dict[str, Any]) -> None:
    host: HypervHost = bed["host"]
    boot = provider.create_disk(DiskRequest("web01-disk0", 8 * MiB, "vhdx", "D:"))
    data = provider.create_disk(DiskRequest("web01-disk1", 4 * MiB, "vhdx", "D:", provisioning="thick"))
    assert boot.id == "D:\\hvmigrate\\web01-disk0.vhdx"
    assert provider.create_disk(DiskRequest("web01-disk0", 8 * MiB, "vhdx", "D:")) == boot  # idempotent
    assert host.vhds[data.id.lower()]["type"] == "Fixed" and host.vhds[boot.id.lower()]["type"] == "Dynamic"

    endpoint = provider.attach_disk(None, boot)
    assert endpoint.transport["device"].startswith("\\\\.\\PhysicalDrive")
    with open(endpoint.path, "r+b") as device:  # the data plane's write, through the mounted disk
        device.seek(MiB)
        device.write(b"replica bytes")
    assert provider.attach_disk(None, boot) == endpoint  # mounted once
    with pytest.raises(ProviderError, match="being used by another process"):
        provider.delete_disk(boot)
    provider.detach_disk(None, boot)
    with open(host.raw_file(boot.id), "rb") as raw:
        raw.seek(MiB)
        assert raw.read(13) == b"replica bytes"

    vm = provider.create_vm(vm_request("web01", (boot, data)))
    facts = provider.details().vm("web01")
    assert facts.owned and (facts.generation, facts.processors, facts.memory) == (2, 2, 512 * MiB)
    assert [(d.controller, d.number, d.location, d.vhd_type) for d in facts.disks] == [
        ("SCSI", 0, 0, "Dynamic"),
        ("SCSI", 0, 1, "Fixed"),
    ]
    assert [(n.switch, n.mac, n.static_mac, n.vlan) for n in facts.nics] == [
        ("LAN", "52:54:00:aa:bb:01", True, 42)
    ]
    assert provider.find_vm("web01") == vm
    provider.power_on(vm)
    booted = provider.wait_booted(vm, 0.2)  # Running, but empty disks boot nothing: no heartbeat
    assert (
        not booted.running and "runs but its guest gave no heartbeat (heartbeat NoContact)" in booted.detail
    )
    with pytest.raises(ProviderError, match="running; power it off first"):
        provider.delete_vm(vm)
    provider.power_off(vm, force=True)
    provider.delete_vm(vm)
    provider.delete_disk(boot)
    provider.delete_disk(data)
    assert provider.find_vm("web01") is None and not host.vhds
    with pytest.raises(NotFound):
        provider.delete_disk(boot)


def test_generation_1_boots_from_ide_and_legacy_nics_fit(provider: Any, bed: dict[str, Any]) -> None:
    disks = tuple(provider.create_disk(DiskRequest(f"old-disk{i}", 4 * MiB, "vhdx", "D:")) for i in range(3))
    nics = (NicRequest("LAN", None, model="legacy"), NicRequest("Isolated", None))
    vm = provider.create_vm(
        vm_request(
            "old", disks, firmware="bios", generation=1, nics=nics, disk_controllers=("ide", "ide", None)
        )
    )
    facts = provider.details().vm("old")
    assert [(d.controller, d.number, d.location) for d in facts.disks] == [
        ("IDE", 0, 0),
        ("IDE", 0, 1),
        ("SCSI", 0, 0),
    ]
    assert [(n.switch, n.legacy, n.static_mac) for n in facts.nics] == [
        ("LAN", True, False),
        ("Isolated", False, False),
    ]
    provider.delete_vm(vm)
    for disk in disks:
        provider.delete_disk(disk)


def test_generation_1_boot_disk_on_scsi_is_refused_before_anything_is_created(
    provider: Any, bed: dict[str, Any]
) -> None:
    disk = provider.create_disk(DiskRequest("g1-disk0", 4 * MiB, "vhdx", "D:"))
    before = len(bed["endpoint"].scripts)
    with pytest.raises(ProviderError, match="generation 1 boots only from IDE"):
        provider.create_vm(
            vm_request("g1", (disk,), firmware="bios", generation=1, disk_controllers=("scsi",))
        )
    created = [s.script for s in bed["endpoint"].scripts[before:] if "New-VM" in s.script]
    assert created == [] and "g1" not in {k for k in bed["host"].vms}
    provider.delete_disk(disk)


@both_paths
def test_missing_switch_and_foreign_vm_name_are_refused(provider: Any, bed: dict[str, Any]) -> None:
    host: HypervHost = bed["host"]
    disk = provider.create_disk(DiskRequest("sw-disk0", 4 * MiB, "vhdx", "D:"))
    with pytest.raises(
        ProviderError, match=r"virtual switch 'Prod' does not exist .*switches: Isolated, LAN"
    ):
        provider.create_vm(vm_request("sw", (disk,), nics=(NicRequest("Prod", None),)))
    assert "sw" not in host.vms
    host.vms["fileserver"] = HostVM("fileserver", 2, 1024 * MiB, "C:\\VMs", notes="")
    try:
        with pytest.raises(ProviderError, match="was not created by hvmigrate; it is never overwritten"):
            provider.create_vm(vm_request("FileServer", (disk,)))
        assert provider.find_vm("fileserver") is None
        assert host.vms["fileserver"].notes == ""
    finally:
        del host.vms["fileserver"]
    provider.delete_disk(disk)


def test_a_script_failing_half_way_leaves_no_vm_behind(provider: Any, bed: dict[str, Any]) -> None:
    host: HypervHost = bed["host"]
    disk = provider.create_disk(DiskRequest("half-disk0", 4 * MiB, "vhdx", "D:"))
    host.fail_on["Set-VMNetworkAdapterVlan"] = (
        "Failed to modify device 'Ethernet Connection'. Insufficient resources."
    )
    with pytest.raises(ProviderError) as caught:
        provider.create_vm(vm_request("half", (disk,)))
    message = str(caught.value)
    assert "setting VLAN 42 on NIC 0 of VM half" in message and "Insufficient resources" in message
    assert "the half-made VM 'half' was removed" in message
    assert "half" not in host.vms and host._in_use(disk.id) is None
    provider.delete_disk(disk)


def test_a_full_volume_is_reported(provider: Any) -> None:
    with pytest.raises(ProviderError, match="There is not enough space on the disk"):
        provider.create_disk(DiskRequest("huge", 128 * MiB, "vhdx", "D:", provisioning="thick"))


@both_paths
def test_quotes_dollar_semicolon_and_newline_stay_data(provider: Any, bed: dict[str, Any]) -> None:
    host: HypervHost = bed["host"]
    host.vms["victim"] = HostVM("victim", 2, 512 * MiB, "C:\\VMs")
    name = 'x\'; Remove-VM -Name victim -Force; $a = "$(whoami)"\nStop-VM victim #'
    disk = provider.create_disk(DiskRequest("inj-disk0", 4 * MiB, "vhdx", "D:"))
    try:
        vm = provider.create_vm(vm_request(name, (disk,)))
        assert host.vms[name.lower()].name == name  # the whole string is the VM's name
        assert "victim" in host.vms and host.vms["victim"].state == "Off"
        assert provider.find_vm(name) == vm
        for received in sent(bed, provider):
            assert "whoami" not in received.script and "victim" not in received.script
        provider.delete_vm(vm)
    finally:
        del host.vms["victim"]
    provider.delete_disk(disk)


@both_paths
def test_a_script_longer_than_the_command_line_goes_through_stdin(provider: Any, bed: dict[str, Any]) -> None:
    # about 10 KB of data: past cmd.exe's 8191 (WinRM), and as UTF-16 base64 past CreateProcess's 32767
    names = [f"vm-{i:04d}-" + "n" * 40 for i in range(200)]
    result = provider.winrm.run("$hv.names | ConvertTo-Json -Depth 2 -Compress", {"names": names})
    assert result == names
    assert sent(bed, provider)[-1].via_stdin


@both_paths
def test_the_stand_in_refuses_unknown_cmdlets_parameters_and_types(provider: Any) -> None:
    from orchestrator.transport.winrm import PowerShellError

    cases = {
        "Invoke-Expression -Command $hv.x": "is not recognized as the name of a cmdlet",
        "Get-VM -Nme $hv.x": "A parameter cannot be found that matches parameter name 'Nme'",
        "Set-VM -Name $hv.x -ProcessorCount $hv.x": 'Cannot convert value "abc" to type "System.Int64"',
        "Get-VM $hv.x": "A positional parameter cannot be found",
        'Get-VM -Name "$hv.x"': "Unexpected token",
    }
    for body, expected in cases.items():
        with pytest.raises(PowerShellError, match=expected):
            provider.winrm.run(body, {"x": "abc"})


def test_vhdx_files_are_real_sparse_files(provider: Any, bed: dict[str, Any]) -> None:
    disk = provider.create_disk(DiskRequest("sparse", 32 * MiB, "vhdx", "D:"))
    raw = bed["host"].raw_file(disk.id)
    assert raw.stat().st_size == 32 * MiB and raw.stat().st_blocks * 512 < MiB
    assert os.path.basename(raw).endswith(".vhdx.raw")
    provider.delete_disk(disk)
