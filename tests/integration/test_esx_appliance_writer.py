"""The writer inside an ESX recovery appliance (disk_writer: appliance), against vcsim and a real sshd.

vcsim has no guest, so the test sshd plays the appliance's: vcsim reports its address (127.0.0.1) as
VMware Tools would (``SET.guest.ipAddress``), the provider logs in there with the configured
appliance_login (host key pinned), and ``guest_devices`` maps the hot-added slot to the VMDK's
``-flat.vmdk`` in vcsim's datastore folder, standing for the device the guest would see. The agent's
writer runs over that SSH login, as in a real appliance; its block map sits in the appliance's
``maps_dir``. The sysfs lookup a real appliance uses (SCSI bus:unit, SATA port) runs on a sysfs tree
laid out as a VMware guest's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from providers.base import DiskRequest, ProviderError
from tests.appliance_passes import full_then_incremental, make_source
from tests.services import sshd as sshd_service
from tests.services import vcsim as vcsim_service

pytestmark = pytest.mark.integration
pytest.importorskip("pyVmomi", reason="pyvmomi is missing: pip install 'hvmigrate[esx]'")

vcenter_sim = vcsim_service.vcenter_sim
admin = vcsim_service.vcenter_admin  # the administrator's own session, by the name the tests ask for
sshd_server = sshd_service.sshd_server

MiB = 1024**2
APPLIANCE = "hvm-appliance-w"


datastore_dir = vcsim_service.datastore_dir


@pytest.fixture(scope="module")
def appliance_vm(admin: Any) -> Any:
    """The administrator's appliance VM, whose Tools report the test sshd's address."""
    return vcsim_service.report_tools_address(vcsim_service.deploy_appliance(admin, APPLIANCE), "127.0.0.1")


def make_provider(server: Any, sshd: Any, maps: Path, devices: dict[str, str], **login: Any) -> Any:
    from providers.esx import EsxProvider

    options = {
        "port": sshd.port,
        "user": sshd.user,
        "key": str(sshd.client_key),
        "host_key": sshd.fingerprint,
        "maps_dir": str(maps),
        "guest_devices": devices,
        "boot_timeout": 5,
        "device_timeout": 2,
        **login,
    }
    config = server.config(
        datacenter="DC0",
        cluster="DC0_C0",
        datastore="LocalDS_0",
        appliance=APPLIANCE,
        appliance_login=options,
    )
    return EsxProvider("vcenter", config)


def own_disks(vm: Any) -> list[tuple[int, str]]:
    return [
        (d.unitNumber, d.backing.fileName)
        for d in vm.config.hardware.device
        if type(d).__name__.endswith("VirtualDisk")
    ]


def test_full_and_incremental_pass_through_the_agent_inside_the_appliance(
    vcenter_sim: Any, admin: Any, appliance_vm: Any, sshd_server: Any, tmp_path: Path
) -> None:
    from orchestrator.transport.ssh import SshTransport

    flat = datastore_dir(admin, "LocalDS_1") / "hvmigrate" / "w-disk" / "w-disk-flat.vmdk"
    maps = tmp_path / "appliance-root" / "maps"
    provider = make_provider(vcenter_sim, sshd_server, maps, {"0:1": str(flat)})
    source = make_source(tmp_path / "source.raw")
    disk = provider.create_disk(DiskRequest("w-disk", 8 * MiB, "vmdk", "LocalDS_1"))
    before = own_disks(appliance_vm)
    try:
        appliance = provider.provision_appliance(provider.host_for(None), APPLIANCE)  # logs in already
        endpoint = provider.attach_disk(appliance, disk)
        assert (endpoint.kind, endpoint.path, endpoint.host) == ("block", "scsi:0:1", APPLIANCE)
        map_path = endpoint.transport["map_path"]
        assert map_path.startswith(str(maps) + "/") and maps.is_dir()
        writer = provider.writer_location(endpoint)
        assert isinstance(writer.transport, SshTransport) and writer.path == str(flat)
        assert writer.transport.server_fingerprint == sshd_server.fingerprint  # checked, not learnt

        full_then_incremental(provider, endpoint, source, flat, map_path, "w:disk0")

        provider.detach_disk(appliance, disk)
        assert own_disks(appliance_vm) == before
        assert Path(map_path).is_file()  # kept until the disk is hot-added again ...
        again = provider.attach_disk(appliance, disk)
        assert again.transport["map_path"] == map_path and not Path(map_path).exists()  # ... never trusted
        provider.detach_disk(appliance, disk)
    finally:
        provider.detach_disk(provider.find_appliance("DC0_C0", APPLIANCE), disk)
        provider.delete_disk(disk)
        provider.close()


def test_a_wrong_host_key_and_a_missing_device_are_refused(
    vcenter_sim: Any, admin: Any, appliance_vm: Any, sshd_server: Any, tmp_path: Path
) -> None:
    wrong = "SHA256:" + "A" * 43
    provider = make_provider(vcenter_sim, sshd_server, tmp_path / "maps", {}, host_key=wrong)
    try:
        with pytest.raises(ProviderError, match=r"appliance hvm-appliance-w: .*host key"):
            provider.provision_appliance(provider.host_for(None), APPLIANCE)
    finally:
        provider.close()

    # The device a slot maps to is missing in the guest: the hot-add is kept, the error says what to do.
    provider = make_provider(vcenter_sim, sshd_server, tmp_path / "maps", {"0:1": str(tmp_path / "none")})
    disk = provider.create_disk(DiskRequest("w-missing", MiB, "vmdk", "LocalDS_1"))
    try:
        appliance = provider.provision_appliance(provider.host_for(None), APPLIANCE)
        with pytest.raises(ProviderError, match=r"did not show in it within 2 s"):
            provider.attach_disk(appliance, disk)
        provider.detach_disk(appliance, disk)
    finally:
        provider.delete_disk(disk)
        provider.close()


def test_the_login_keeps_host_key_checking_on() -> None:
    from pydantic import ValidationError

    from orchestrator.playbook.models import ApplianceLogin

    with pytest.raises(ValidationError, match=r"host_key .* or known_hosts"):
        ApplianceLogin(key=Path("/k"))
    with pytest.raises(ValidationError, match=r"extra|not permitted|insecure"):
        ApplianceLogin(key=Path("/k"), host_key="SHA256:x", insecure=True)


# ---------------------------------------------------------------- finding the device in a real guest


def _sysfs(root: Path) -> Path:
    """A VMware guest's sysfs and /dev: two pvscsi controllers behind PCI bridges (the second one probed
    first, so its host number is lower), an AHCI controller with two ports, and a CD-ROM on ata_piix."""
    sys_root, dev = root / "sys", root / "dev"
    pci = sys_root / "devices" / "pci0000:00"
    hosts = {
        0: ("ata_piix", pci / "0000:00:07.1"),
        1: ("vmw_pvscsi", pci / "0000:00:16.0" / "0000:0b:00.0"),  # SCSI bus 1
        2: ("vmw_pvscsi", pci / "0000:00:15.0" / "0000:03:00.0"),  # SCSI bus 0
        3: ("ahci", pci / "0000:00:11.0" / "0000:02:01.0"),  # SATA 0, port 0
        4: ("ahci", pci / "0000:00:11.0" / "0000:02:01.0"),  # SATA 0, port 1
    }
    disks = {(2, 0): "sda", (2, 1): "sdb", (1, 3): "sdc", (4, 0): "sdd"}
    for number, (driver, device) in hosts.items():
        (device / f"host{number}").mkdir(parents=True)
        entry = sys_root / "class" / "scsi_host" / f"host{number}"
        entry.mkdir(parents=True)
        (entry / "proc_name").write_text(driver + "\n")
        (entry / "device").symlink_to(device / f"host{number}")
    dev.mkdir()
    for (host, target), name in disks.items():
        entry = sys_root / "class" / "scsi_disk" / f"{host}:0:{target}:0" / "device" / "block" / name
        entry.mkdir(parents=True)
        (dev / name).write_bytes(bytes(512 * (1 + len(disks) - ord(name[-1]) + ord("a"))))
    return sys_root


@pytest.mark.parametrize(
    ("slot", "device"), [("0:0", "sda"), ("0:1", "sdb"), ("1:3", "sdc"), ("sata0:1", "sdd"), ("1:1", None)]
)
def test_the_device_of_a_slot_is_found_in_sysfs(tmp_path: Path, slot: str, device: str | None) -> None:
    from providers.appliance_guest import DEVICE_PROGRAM, parse_slot

    sys_root = _sysfs(tmp_path)
    args = {"slot": parse_slot(slot), "timeout": 0, "sysfs": str(sys_root), "dev": str(tmp_path / "dev")}
    done = subprocess.run(
        [sys.executable, "-c", DEVICE_PROGRAM, json.dumps(args)], capture_output=True, check=True
    )
    answer = json.loads(done.stdout[8:])
    if device is None:
        assert answer == {"missing": True}
    else:
        assert answer["path"] == str(tmp_path / "dev" / device)
        assert answer["size"] == (tmp_path / "dev" / device).stat().st_size
