"""``appliance: shared|dedicated`` on Hyper-V: each replica VHDX hot-added on SCSI to a recovery appliance
VM, the agent's writer running inside it over SSH.

pywinrm talks HTTPS + NTLM to the WS-Management stand-in, whose host model enforces Hyper-V's hot-plug
rules (SCSI on a running VM, never IDE; one VHDX on one VM at a time; never a mounted one). The stand-in
has no guest, so the test sshd plays the appliance's: the stand-in reports its address (127.0.0.1) as the
guest's KVP daemon would, the provider logs in there with appliance_login (host key pinned), and
``guest_devices`` maps the hot-added ``controller:location`` to the VHDX's raw file, standing for the
device the guest would see. The storvsc lookup a real appliance uses runs on a sysfs tree laid out as a
Hyper-V guest's.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.transport.winrm import PowerShellError
from providers.base import DiskRequest, ProviderError, VmRequest
from providers.hyperv import HypervProvider, scripts
from tests.appliance_passes import full_then_incremental, make_source
from tests.fakes.hyperv_bed import hyperv_bed, hyperv_config
from tests.fakes.hyperv_guest import GuestState
from tests.fakes.hyperv_host import VM, Drive, HypervHost, Nic
from tests.images import sha256
from tests.services import sshd as sshd_service

pytestmark = pytest.mark.integration
pytest.importorskip("winrm", reason="pywinrm is missing: pip install 'hvmigrate[hyperv]'")

sshd_server = sshd_service.sshd_server

MiB = 1024**2
APPLIANCE = "hvm-appliance-admin"
SYSTEM = "D:\\appliances\\admin-system.vhdx"


def played_guest(nic: str = "Network Adapter") -> GuestState:
    """What the appliance's integration services would say: the test sshd's address, from the KVP daemon."""
    return GuestState(heartbeat="OkApplicationsUnknown", addresses={nic: ["127.0.0.1"]})


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hvappliance")
    host = HypervHost(root / "host", volumes={"C": 1024 * MiB, "D": 256 * MiB})
    # The administrator's appliance, running: generation 2, its system disk on SCSI 0:0.
    raw = host.raw_file(SYSTEM)
    raw.parent.mkdir(parents=True)
    raw.write_bytes(hashlib.shake_256(b"appliance system").digest(MiB))
    host.vhds[SYSTEM.lower()] = {"path": SYSTEM, "type": "Dynamic", "size": MiB}
    host.vms[APPLIANCE.lower()] = VM(
        APPLIANCE,
        2,
        1024 * MiB,
        "D:\\appliances",
        state="Running",
        drives=[Drive("SCSI", 0, 0, SYSTEM)],
        nics=[Nic("Network Adapter", "LAN", "00155D00AA01", False, False)],
        guest=played_guest(),
    )
    with hyperv_bed(root, host) as made:
        yield made


def make_provider(
    bed: dict[str, Any], sshd: Any, devices: dict[str, str], **overrides: Any
) -> HypervProvider:
    login = {
        "port": sshd.port,
        "user": sshd.user,
        "key": str(sshd.client_key),
        "host_key": sshd.fingerprint,
        "maps_dir": str(bed["host"].root.parent / "appliance-root" / "maps"),
        "guest_devices": devices,
        "boot_timeout": 5,
        "device_timeout": 2,
    }
    config = hyperv_config(bed, **{"appliance": APPLIANCE, "appliance_login": login, **overrides})
    return HypervProvider("hv01", config)


def drives(host: HypervHost, name: str) -> list[tuple[str, int, int, str | None]]:
    return [(d.controller, d.number, d.location, d.path) for d in host.vms[name.lower()].drives]


def test_full_and_incremental_pass_through_the_agent_inside_the_appliance(
    bed: dict[str, Any], sshd_server: Any, tmp_path: Path
) -> None:
    from orchestrator.transport.ssh import SshTransport

    host: HypervHost = bed["host"]
    vhdx = "D:\\hvmigrate\\app-disk0.vhdx"
    raw = host.raw_file(vhdx)
    provider = make_provider(bed, sshd_server, {"0:1": str(raw)})
    source = make_source(tmp_path / "source.raw")
    system_before = sha256(host.raw_file(SYSTEM))
    disk = provider.create_disk(DiskRequest("app-disk0", 8 * MiB, "vhdx", "D:"))
    replica = None
    try:
        appliance = provider.provision_appliance(provider.host_for(None), APPLIANCE)  # logs in already
        assert appliance.name == APPLIANCE
        endpoint = provider.attach_disk(appliance, disk)
        assert (endpoint.kind, endpoint.path, endpoint.host) == ("block", "scsi:0:1", APPLIANCE)
        assert drives(host, APPLIANCE) == [("SCSI", 0, 0, SYSTEM), ("SCSI", 0, 1, vhdx)]  # hot-added, running
        assert provider.attach_disk(appliance, disk) == endpoint  # idempotent
        map_path = endpoint.transport["map_path"]
        writer = provider.writer_location(endpoint)
        assert isinstance(writer.transport, SshTransport) and writer.path == str(raw)
        assert writer.transport.server_fingerprint == sshd_server.fingerprint  # checked, not learnt

        full_then_incremental(provider, endpoint, source, raw, map_path, "app:disk0")
        assert sha256(host.raw_file(SYSTEM)) == system_before  # the appliance's own disk never touched

        # One VHDX on one VM at a time: the replica cannot take it while the appliance holds it.
        request = VmRequest("app01", None, 1, 512 * MiB, "uefi", (disk,), (), generation=2)
        with pytest.raises(ProviderError, match="being used by another process"):
            provider.create_vm(request)
        with pytest.raises(ProviderError, match="still has 1 replica disk"):
            provider.release_appliance(appliance)

        provider.detach_disk(appliance, disk)
        assert drives(host, APPLIANCE) == [("SCSI", 0, 0, SYSTEM)]
        provider.detach_disk(appliance, disk)  # idempotent
        replica = provider.create_vm(request)  # detached: the replica takes it
        assert drives(host, "app01") == [("SCSI", 0, 0, vhdx)]
        with pytest.raises(ProviderError, match="attached to another VM"):
            provider.attach_disk(appliance, disk)
        provider.delete_vm(replica)
        replica = None
        again = provider.attach_disk(appliance, disk)  # back on the appliance: a map of before is not trusted
        assert again.transport["map_path"] == map_path and not Path(map_path).exists()
        provider.detach_disk(appliance, disk)
        provider.release_appliance(appliance)  # the administrator's: kept
        assert APPLIANCE.lower() in host.vms and drives(host, APPLIANCE) == [("SCSI", 0, 0, SYSTEM)]
    finally:
        if replica is not None:
            provider.delete_vm(replica)
        provider.detach_disk(provider.find_appliance("HV01", APPLIANCE), disk)
        provider.delete_disk(disk)
        provider.close()
    assert sha256(host.raw_file(SYSTEM)) == system_before


def test_a_mounted_vhdx_is_not_attached_and_hyperv_hot_plug_rules_hold(
    bed: dict[str, Any], sshd_server: Any
) -> None:
    host: HypervHost = bed["host"]
    provider = make_provider(bed, sshd_server, {})
    disk = provider.create_disk(DiskRequest("app-mounted", 4 * MiB, "vhdx", "D:"))
    try:
        appliance = provider.provision_appliance("HV01", APPLIANCE)
        provider.attach_disk(None, disk)  # appliance: host mounts it on the host
        with pytest.raises(ProviderError, match="mounted on the Hyper-V host"):
            provider.attach_disk(appliance, disk)
        path = "D:\\hvmigrate\\app-mounted.vhdx"
        add = {"name": APPLIANCE, "path": path, "controller": "SCSI", "number": 0, "location": 2}
        with pytest.raises(PowerShellError, match="being used by another process"):
            provider.winrm.run(scripts.ADD_DISK, add)  # the host refuses it too
        provider.detach_disk(None, disk)
        with pytest.raises(PowerShellError, match="does not support IDE"):
            provider.winrm.run(scripts.ADD_DISK, {**add, "controller": "IDE", "number": 0, "location": 1})
        with pytest.raises(PowerShellError, match="is running"):
            provider.winrm.run(scripts.ADD_SCSI_CONTROLLER, {"name": APPLIANCE})
        assert drives(host, APPLIANCE) == [("SCSI", 0, 0, SYSTEM)]
    finally:
        provider.detach_disk(None, disk)
        provider.delete_disk(disk)
        provider.close()


def test_an_appliance_made_from_the_template_is_removed_with_its_copy_only(
    bed: dict[str, Any], sshd_server: Any
) -> None:
    host: HypervHost = bed["host"]
    template = "D:\\templates\\appliance.vhdx"
    raw = host.raw_file("D:\\hvmigrate\\app-made0.vhdx")
    provider = make_provider(
        bed,
        sshd_server,
        {"0:1": str(raw)},
        appliance=None,
        appliance_template=template,
        appliance_switch="LAN",
    )
    provider.winrm.run(scripts.NEW_VHD["Dynamic"], {"path": template, "size": 4 * MiB})
    name = "hvm-appliance-hv01-0"
    host.played[name] = played_guest("appliance")  # the NIC the provider adds
    disk = provider.create_disk(DiskRequest("app-made0", 4 * MiB, "vhdx", "D:"))
    try:
        appliance = provider.provision_appliance("HV01", name)
        vm = host.vms[name]
        system = "D:\\hvmigrate\\hvm-appliance-hv01-0-system.vhdx"
        assert (vm.generation, vm.state, vm.scsi_controllers) == (2, "Running", 4)
        assert drives(host, name) == [("SCSI", 0, 0, system)] and [n.switch for n in vm.nics] == ["LAN"]
        assert provider.provision_appliance("HV01", name) == appliance  # found again, not made twice
        assert provider.find_vm(name) is None  # an appliance is not a replica VM
        endpoint = provider.attach_disk(appliance, disk)
        assert endpoint.path == "scsi:0:1"  # the next free location; 0:0 is its own
        provider.detach_disk(appliance, disk)
        provider.release_appliance(appliance)
        assert name not in host.vms and system.lower() not in host.vhds
        assert template.lower() in host.vhds and disk.id.lower() in host.vhds  # what it did not make stays
    finally:
        made = provider.find_appliance("HV01", name)
        if made is not None:
            provider.detach_disk(made, disk)
            provider.release_appliance(made)
        provider.delete_disk(disk)
        provider.winrm.run(scripts.REMOVE_FILE, {"path": template})
        provider.close()


# ---------------------------------------------------------------- finding the device in a real guest


def _sysfs(root: Path) -> Path:
    """A Hyper-V generation 1 guest's sysfs and /dev: storvsc hosts on VMBus for the IDE class (host 0)
    and two SCSI controllers (hosts 2 and 3), and ata_piix for the emulated IDE (host 1)."""
    sys_root, dev = root / "sys", root / "dev"
    vmbus = sys_root / "devices" / "LNXSYSTM:00" / "LNXSYBUS:00" / "VMBUS:00"
    ide, scsi = "{32412632-86cb-44a2-9b5c-50d1417354f5}", "{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f}"
    hosts = {
        0: ("storvsc", vmbus / "00000000-0000-8899-0000-000000000000", ide),
        1: ("ata_piix", sys_root / "devices" / "pci0000:00" / "0000:00:07.1", None),
        2: ("storvsc", vmbus / "f8b3781a-1e82-4818-a1c3-63d806ec15bb", scsi),  # SCSI controller 0
        3: ("storvsc", vmbus / "f8b3781b-1e82-4818-a1c3-63d806ec15bb", scsi),  # SCSI controller 1
    }
    disks = {"0:0:0:0": "sda", "2:0:0:0": "sdb", "2:0:0:1": "sdc", "3:0:0:5": "sdd"}
    for number, (driver, device, class_id) in hosts.items():
        (device / f"host{number}").mkdir(parents=True)
        if class_id:
            (device / "class_id").write_text(class_id + "\n")
        entry = sys_root / "class" / "scsi_host" / f"host{number}"
        entry.mkdir(parents=True)
        (entry / "proc_name").write_text(driver + "\n")
        (entry / "device").symlink_to(device / f"host{number}")
    dev.mkdir()
    for index, (address, name) in enumerate(disks.items()):
        (sys_root / "class" / "scsi_disk" / address / "device" / "block" / name).mkdir(parents=True)
        (dev / name).write_bytes(bytes(512 * (index + 1)))
    return sys_root


@pytest.mark.parametrize(("slot", "device"), [("0:0", "sdb"), ("0:1", "sdc"), ("1:5", "sdd"), ("1:0", None)])
def test_the_device_at_a_controller_location_is_found_in_sysfs(
    tmp_path: Path, slot: str, device: str | None
) -> None:
    from providers.appliance_guest import DEVICE_PROGRAM
    from providers.hyperv.appliance import HypervApplianceAccess

    where = HypervApplianceAccess(None).slot_args(slot)
    args = {"slot": where, "timeout": 0, "sysfs": str(_sysfs(tmp_path)), "dev": str(tmp_path / "dev")}
    done = subprocess.run(
        [sys.executable, "-c", DEVICE_PROGRAM, json.dumps(args)], capture_output=True, check=True
    )
    answer = json.loads(done.stdout[8:])
    if device is None:
        assert answer == {"missing": True}
    else:
        assert answer["path"] == str(tmp_path / "dev" / device)
        assert answer["size"] == (tmp_path / "dev" / device).stat().st_size
