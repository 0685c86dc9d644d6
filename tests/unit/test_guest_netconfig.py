"""Network staging in each format a Linux guest uses, on real ext4 images, read back and checked clean."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator.guest.changes import ORIGINALS_DIR
from orchestrator.guest.extfs import check_clean
from orchestrator.guest.linux import (
    NicConfig,
    apply_edits,
    find_linux_root,
    link_rules,
    parse_interfaces,
    plan_network,
    read_file,
    revert_staging,
)
from orchestrator.quickstart import Symlink, Tree
from providers.sim.boot import Console, boot
from tests.unit.test_guest_volumes import SBIN, guest_disk, pytestmark  # noqa: F401  (skip without e2fsprogs)

OLD_MAC = "52:54:00:0a:0b:01"
NEW_MAC = "52:54:00:0a:0b:99"
STATIC = NicConfig(0, OLD_MAC, "10.1.0.13/24", "10.1.0.1", ("10.1.0.2",), "ens3", OLD_MAC)

BASE: dict[str, bytes | Symlink] = {
    "/etc/hostname": b"app01\n",
    "/etc/hosts": b"127.0.0.1\tlocalhost\n127.0.1.1\tapp01.corp.test app01\n",
    "/etc/fstab": b"UUID=0b0b0b0b-1111-4222-8333-444444444444 / ext4 errors=remount-ro 0 1\n",
    "/usr/lib/os-release": b'PRETTY_NAME="Test Linux"\nID=debian\n',
    "/etc/os-release": Symlink("../usr/lib/os-release"),
    "/etc/resolv.conf": b"nameserver 10.0.0.2\nsearch corp.test\n",
}


def staged(
    tmp_path: Path, tree: Tree, nics: list[NicConfig], hostname: str = "app01"
) -> tuple[Path, list[str]]:
    """Build the guest, plan and apply its network; returns the disk and the plan's log."""
    disk = guest_disk(tmp_path / "guest.raw", {**BASE, **tree})
    plan = plan_network([disk], 0, hostname, nics)
    apply_edits(disk, plan.edits)
    root = find_linux_root(disk)
    assert root is not None
    clean, output = check_clean(root.fs)
    assert clean, output
    again = plan_network([disk], 0, hostname, nics)  # a re-run after a crash plans the same edits
    assert again.edits == plan.edits and again.findings == plan.findings
    assert all(": unchanged " in line for line in apply_edits(disk, plan.edits))
    return disk, plan.log


def text(disk: Path, path: str) -> str:
    root = find_linux_root(disk)
    assert root is not None
    data = read_file(root, path)
    return "" if data is None else data.decode()


def owner_and_mode(disk: Path, path: str) -> tuple[int, int]:
    """Straight from debugfs, independent of the code under test."""
    root = find_linux_root(disk)
    assert root is not None
    out = subprocess.run(
        ["debugfs", "-R", f"stat {path}", root.fs.spec], capture_output=True, text=True, env=SBIN, check=True
    ).stdout
    user = int(out.split("User:")[1].split()[0])
    mode = int(out.split("Mode:")[1].split()[0], 8)
    return user, mode


# ---------------------------------------------------------------- ifupdown


IFUPDOWN: Tree = {
    "/sbin/ifup": b"#!/bin/sh\n",
    "/etc/network/interfaces": (
        b"source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\n"
        b"allow-hotplug ens3\niface ens3 inet static\n    address 10.0.0.13/24\n    gateway 10.0.0.1\n\n"
        b"auto br0\niface br0 inet static\n    address 192.168.50.1/24\n    bridge_ports ens4\n"
    ),
    "/etc/network/interfaces.d/50-cloud-init": b"auto ens3\niface ens3 inet dhcp\n",
    "/etc/network/interfaces.d/README": b"# drop-ins\n",
}


def test_ifupdown_keeps_the_rest_comments_out_the_moved_nic_and_boots_with_the_new_address(
    tmp_path: Path,
) -> None:
    disk, log = staged(tmp_path, IFUPDOWN, [STATIC])
    assert log[0].startswith("network configuration: ifupdown")
    main = text(disk, "/etc/network/interfaces")
    stanzas = {s.name: s for s in parse_interfaces(main)}
    assert set(stanzas) == {"lo", "br0", "nic0"}  # ens3 gone, the bridge kept
    assert stanzas["nic0"].addresses == ("10.1.0.13/24",) and stanzas["nic0"].gateway == "10.1.0.1"
    assert stanzas["nic0"].dns == ("10.1.0.2",) and stanzas["nic0"].auto
    assert "#hvmigrate# iface ens3 inet static" in main
    assert parse_interfaces(text(disk, "/etc/network/interfaces.d/50-cloud-init")) == []
    assert text(disk, "/etc/network/interfaces.d/README") == "# drop-ins\n"
    assert text(disk, "/etc/resolv.conf") == "search corp.test\nnameserver 10.1.0.2\n"
    assert "10.1.0.13\tapp01.corp.test app01\t# hvmigrate" in text(disk, "/etc/hosts")
    assert (
        text(disk, ORIGINALS_DIR + "/etc/network/interfaces") == IFUPDOWN["/etc/network/interfaces"].decode()
    )

    root = find_linux_root(disk)
    assert root is not None and [(r.macs, r.name) for r in link_rules(root)] == [((OLD_MAC,), "nic0")]
    vm = {
        "name": "app01",
        "cpus": 1,
        "memory": 2**30,
        "firmware": "bios",
        "disks": [{"name": "app01-disk0", "path": str(disk)}],
        "nics": [{"mac": OLD_MAC, "network": "prod"}],
    }
    console = Console()
    report = boot(vm, console)  # the sim's kernel calls the NIC enp0s2; the .link renames it
    assert report.addresses == ("10.1.0.13/24",), console.text
    assert "ens3" not in console.text  # (the sim knows no bridges: br0 stays down there)


def test_ifupdown_bridge_on_a_moved_port_is_reported(tmp_path: Path) -> None:
    disk = guest_disk(tmp_path / "g.raw", {**BASE, **IFUPDOWN})
    plan = plan_network([disk], 0, "app01", [STATIC])
    (kept,) = [f for f in plan.findings if f.rule_id == "guest.net.kept_definition"]
    assert kept.severity == "warning" and "br0 still uses ens4" in kept.message


def test_ifupdown_dhcp_and_revert(tmp_path: Path) -> None:
    dhcp = NicConfig(0, NEW_MAC, "dhcp", source_name="ens3", source_mac=OLD_MAC)
    disk, _ = staged(tmp_path, IFUPDOWN, [dhcp])
    stanzas = {s.name: s for s in parse_interfaces(text(disk, "/etc/network/interfaces"))}
    assert stanzas["nic0"].method == "dhcp" and stanzas["nic0"].hwaddress == NEW_MAC
    assert "127.0.1.1\tapp01.corp.test app01\t# hvmigrate" in text(disk, "/etc/hosts")
    revert_staging(disk)
    assert text(disk, "/etc/network/interfaces") == IFUPDOWN["/etc/network/interfaces"].decode()
    assert text(disk, "/etc/systemd/network/10-hvmigrate-0.link") == ""
    assert text(disk, "/etc/hosts") == BASE["/etc/hosts"].decode()
    root = find_linux_root(disk)
    assert root is not None and check_clean(root.fs)[0]


# ---------------------------------------------------------------- netplan


NETPLAN: Tree = {
    "/usr/sbin/netplan": b"#!/usr/bin/python3\n",
    "/etc/cloud/cloud.cfg": b"users: [default]\n",
    "/etc/netplan/50-cloud-init.yaml": (
        b"# This file is generated from information provided by the datasource.\n"
        b"network:\n  version: 2\n  ethernets:\n    ens3:\n      match:\n"
        b"        macaddress: '52:54:00:0a:0b:01'\n      set-name: ens3\n      dhcp4: true\n"
    ),
    "/etc/netplan/60-bond.yaml": (
        b"network:\n  version: 2\n  ethernets:\n    ens4: {}\n    ens5: {}\n"
        b"  bonds:\n    bond0:\n      interfaces: [ens4]\n      addresses: [192.168.9.2/24]\n"
    ),
}


def test_netplan_one_file_of_ours_and_old_definitions_taken_out(tmp_path: Path) -> None:
    ipv6 = NicConfig(1, "52:54:00:0a:0b:02", "2001:db8::5/64", "2001:db8::1", ("2001:db8::53",))
    disk, log = staged(tmp_path, NETPLAN, [STATIC, ipv6])
    assert log[0].startswith("network configuration: netplan")
    ours = yaml.safe_load(text(disk, "/etc/netplan/90-hvmigrate.yaml"))["network"]
    nic0, nic1 = ours["ethernets"]["nic0"], ours["ethernets"]["nic1"]
    assert nic0["match"] == {"macaddress": OLD_MAC} and nic0["set-name"] == "nic0"
    assert nic0["addresses"] == ["10.1.0.13/24"] and nic0["routes"] == [
        {"to": "0.0.0.0/0", "via": "10.1.0.1"}
    ]
    assert nic0["nameservers"] == {"addresses": ["10.1.0.2"]}
    assert nic1["routes"] == [{"to": "::/0", "via": "2001:db8::1"}] and nic1["dhcp6"] is False
    assert owner_and_mode(disk, "/etc/netplan/90-hvmigrate.yaml") == (0, 0o600)
    cloud = yaml.safe_load(text(disk, "/etc/netplan/50-cloud-init.yaml"))
    assert cloud == {"network": {"version": 2}}
    bond = yaml.safe_load(text(disk, "/etc/netplan/60-bond.yaml"))["network"]
    assert set(bond["ethernets"]) == {"ens4"} and bond["bonds"]["bond0"]["interfaces"] == ["ens4"]
    assert yaml.safe_load(text(disk, "/etc/cloud/cloud.cfg.d/99-hvmigrate-network.cfg")) == {
        "network": {"config": "disabled"}
    }
    assert "ens3" in text(disk, ORIGINALS_DIR + "/etc/netplan/50-cloud-init.yaml")


def test_netplan_dhcp(tmp_path: Path) -> None:
    disk, _ = staged(tmp_path, NETPLAN, [NicConfig(0, NEW_MAC)])
    nic0 = yaml.safe_load(text(disk, "/etc/netplan/90-hvmigrate.yaml"))["network"]["ethernets"]["nic0"]
    assert nic0["dhcp4"] is True and "addresses" not in nic0


# ---------------------------------------------------------------- NetworkManager


NM: Tree = {
    "/usr/sbin/NetworkManager": b"\x7fELF",
    "/etc/network/interfaces": b"auto lo\niface lo inet loopback\n",
    "/sbin/ifup": b"#!/bin/sh\n",
    "/etc/NetworkManager/system-connections/Wired connection 1.nmconnection": (
        b"[connection]\nid=Wired connection 1\nuuid=6f1e0b49-1111-4bbb-8ccc-0123456789ab\ntype=ethernet\n"
        b"interface-name=ens3\n\n[ipv4]\nmethod=manual\naddress1=10.0.0.13/24,10.0.0.1\n"
    ),
    "/etc/NetworkManager/system-connections/wifi.nmconnection": (
        b"[connection]\nid=wifi\ntype=wifi\n\n[wifi]\nssid=office\n"
    ),
    "/etc/sysconfig/network-scripts/ifcfg-eth0": b'DEVICE=eth0\nBOOTPROTO=dhcp\nONBOOT="yes"\n',
}


def keyfile(disk: Path, name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text(disk, f"/etc/NetworkManager/system-connections/{name}"))
    return parser


def test_networkmanager_keyfile_mode_0600_and_old_profiles_stop_autoconnecting(tmp_path: Path) -> None:
    disk, log = staged(tmp_path, NM, [STATIC])
    assert log[0].startswith("network configuration: networkmanager")
    ours = keyfile(disk, "hvmigrate-nic0.nmconnection")
    assert ours["connection"]["interface-name"] == "nic0" and ours["connection"]["type"] == "ethernet"
    assert ours["ethernet"]["mac-address"] == OLD_MAC.upper()
    assert ours["ipv4"]["method"] == "manual" and ours["ipv4"]["address1"] == "10.1.0.13/24,10.1.0.1"
    assert ours["ipv4"]["dns"] == "10.1.0.2;"
    assert owner_and_mode(disk, "/etc/NetworkManager/system-connections/hvmigrate-nic0.nmconnection") == (
        0,
        0o600,
    )
    old = keyfile(disk, "Wired connection 1.nmconnection")
    assert old["connection"]["autoconnect"] == "false" and old["ipv4"]["address1"] == "10.0.0.13/24,10.0.0.1"
    assert "autoconnect" not in keyfile(disk, "wifi.nmconnection")["connection"]
    assert text(disk, "/etc/sysconfig/network-scripts/ifcfg-eth0").splitlines()[-1] == "ONBOOT=no"


def test_networkmanager_dhcp(tmp_path: Path) -> None:
    disk, _ = staged(tmp_path, NM, [NicConfig(0, NEW_MAC)])
    ours = keyfile(disk, "hvmigrate-nic0.nmconnection")
    assert ours["ipv4"]["method"] == "auto" and "address1" not in ours["ipv4"]


# ---------------------------------------------------------------- systemd-networkd


NETWORKD: Tree = {
    "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service": Symlink(
        "/lib/systemd/system/systemd-networkd.service"
    ),
    "/etc/systemd/network/20-wired.network": b"[Match]\nName=ens3\n\n[Network]\nAddress=10.0.0.13/24\n",
    "/etc/systemd/network/05-all.network": b"[Match]\nName=*\n\n[Network]\nDHCP=yes\n",
    "/etc/systemd/network/99-fallback.network": b"[Match]\nName=*\n\n[Network]\nDHCP=yes\n",
    "/etc/systemd/network/30-wlan.network": b"[Match]\nName=wlan0\n\n[Network]\nDHCP=yes\n",
    "/etc/systemd/network/10-eth0.link": f"[Match]\nMACAddress={OLD_MAC}\n\n[Link]\nName=eth0\n".encode(),
    "/etc/udev/rules.d/70-persistent-net.rules": (
        f'SUBSYSTEM=="net", ACTION=="add", ATTR{{address}}=="{OLD_MAC}", NAME="eth0"\n'
        'SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="52:54:00:ff:ff:ff", NAME="eth1"\n'
    ).encode(),
}


def test_networkd_unit_and_competing_files_removed(tmp_path: Path) -> None:
    disk, log = staged(tmp_path, NETWORKD, [STATIC])
    assert log[0].startswith("network configuration: networkd")
    unit = text(disk, "/etc/systemd/network/10-hvmigrate-nic0.network")
    assert "[Match]\nMACAddress=52:54:00:0a:0b:01\nName=nic0\n" in unit
    assert "Address=10.1.0.13/24\nGateway=10.1.0.1\nDNS=10.1.0.2\n" in unit
    root = find_linux_root(disk)
    assert root is not None
    present = set(root.fs.listdir("/etc/systemd/network"))
    assert "20-wired.network" not in present and "05-all.network" not in present  # stale; sorts first
    assert {"99-fallback.network", "30-wlan.network"} <= present  # after ours; not ethernet
    assert [(r.file, r.name) for r in link_rules(root)] == [("10-hvmigrate-0.link", "nic0")]
    rules = text(disk, "/etc/udev/rules.d/70-persistent-net.rules").splitlines()
    assert rules[0].startswith("#hvmigrate# ") and not rules[1].startswith("#")
    assert text(disk, ORIGINALS_DIR + "/etc/systemd/network/20-wired.network").startswith("[Match]")


def test_networkd_dhcp(tmp_path: Path) -> None:
    disk, _ = staged(tmp_path, NETWORKD, [NicConfig(0, NEW_MAC)])
    assert "DHCP=yes" in text(disk, "/etc/systemd/network/10-hvmigrate-nic0.network")


# ---------------------------------------------------------------- detection


def test_nothing_recognisable_writes_ifupdown_and_networkd_and_warns(tmp_path: Path) -> None:
    disk = guest_disk(tmp_path / "g.raw", dict(BASE))
    plan = plan_network([disk], 0, "app01", [STATIC])
    assert [f.rule_id for f in plan.findings] == ["guest.net.no_manager"]
    paths = {e.path for e in plan.edits}
    assert {"/etc/network/interfaces", "/etc/systemd/network/10-hvmigrate-nic0.network"} <= paths


def test_netplan_wins_over_ifupdown_and_the_other_is_mentioned(tmp_path: Path) -> None:
    disk = guest_disk(tmp_path / "g.raw", {**BASE, **NETPLAN, **IFUPDOWN})
    plan = plan_network([disk], 0, "app01", [STATIC])
    assert plan.facts["network"] == "netplan" and plan.facts["present"][:2] == ["netplan", "ifupdown"]
    assert any(f.rule_id == "guest.net.other_manager" and "ifupdown" in f.message for f in plan.findings)
    assert "/etc/network/interfaces" not in {e.path for e in plan.edits}


def test_bad_input_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="MAC"):
        NicConfig(0, "not-a-mac")
    with pytest.raises(ValueError):
        NicConfig(0, NEW_MAC, "10.1.0.300/24")
