"""How a VM on the sim host "boots": as far as a simulator can, from the bytes of its boot disk.

A sim that always answered "booted" would let a broken migration pass the quickstart. So the firmware
looks for what real firmware needs (a 0x55AA boot signature for BIOS, an EFI System Partition on GPT for
UEFI), and the "kernel" names the NICs the way QEMU's PCI layout makes systemd name them (enp0s2,
enp0s3, ...), applies the guest's own ``.link`` files, and brings up only the ifupdown stanzas whose
interface then exists. A source configured for ``eth0`` therefore comes up without an address unless
staging pinned the names: the interface-rename problem real migrations hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.guest.disk_layout import DiskLayout
from orchestrator.guest.extfs import GuestFsError
from orchestrator.guest.linux import (
    RootFs,
    disk_layout,
    find_linux_root,
    link_rules,
    os_release,
    parse_interfaces,
)
from orchestrator.playbook.units import format_size
from providers.base import BootReport


@dataclass
class Console:
    lines: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.lines.append(text)

    @property
    def text(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)


def kernel_nic_name(index: int) -> str:
    """What systemd's predictable naming calls the NIC in PCI slot 2 + index of a QEMU i440fx machine."""
    return f"enp0s{2 + index}"


def boot(vm: dict[str, Any], console: Console) -> BootReport:
    """Boot the VM described by its state document; everything seen is also told to ``console``."""
    console.say(
        f"sim: power on {vm['name']}: {vm['cpus']} vCPU, {format_size(vm['memory'])}, "
        f"firmware {vm['firmware']}"
    )
    if not vm["disks"]:
        console.say("firmware: no disks attached")
        return BootReport(running=False, detail="no bootable disk: the VM has no disks")
    disk = Path(vm["disks"][0]["path"])
    if not disk.exists():
        console.say(f"firmware: boot disk {disk} is missing")
        return BootReport(running=False, detail=f"no bootable disk: {disk} is missing")
    layout = disk_layout(disk)
    console.say(
        f"firmware: boot disk {vm['disks'][0]['name']}: partition table {layout.table}, "
        f"{len(layout.partitions)} partition(s), boot signature {'yes' if layout.boot_signature else 'no'}"
    )
    refusal = _firmware_refusal(vm["firmware"], layout)
    if refusal:
        console.say(f"firmware: {refusal}")
        return BootReport(running=False, detail=refusal)
    try:
        root = find_linux_root(disk)
    except GuestFsError as exc:
        console.say(f"kernel: cannot read the root filesystem: {exc}")
        root = None
    if root is None:
        console.say("kernel: no Linux root the sim can read; the guest runs but says nothing about itself")
        return BootReport(
            running=True, detail="booted; no readable Linux root, so hostname and addresses are unknown"
        )
    return _linux_boot(vm, root, console)


def _firmware_refusal(firmware: str, layout: DiskLayout) -> str | None:
    if firmware == "uefi" and not layout.has_efi_system_partition:
        return (
            "no bootable disk: UEFI firmware found no EFI System Partition on the boot disk; "
            "set the target's firmware: bios if the source booted with BIOS"
        )
    if firmware == "bios" and not layout.boot_signature:
        return "no bootable disk: the boot disk has no boot signature (0x55AA at byte 510)"
    return None


def _linux_boot(vm: dict[str, Any], root: RootFs, console: Console) -> BootReport:
    release = os_release(root)
    console.say(
        f"kernel: root filesystem {root.fstype} on {root.device_hint} (offset {root.offset}); "
        f"{release.get('PRETTY_NAME', 'Linux')}"
    )
    raw_hostname = root.fs.read("/etc/hostname")
    hostname = raw_hostname.decode(errors="replace").strip() if raw_hostname else None
    console.say(f"systemd: hostname {hostname or '(none: /etc/hostname is missing)'}")

    present: dict[str, dict[str, Any]] = {}
    rules = link_rules(root)
    for index, nic in enumerate(vm["nics"]):
        name = kernel_nic_name(index)
        rule = next((r for r in rules if nic["mac"] in r.macs and r.name), None)
        if rule:
            console.say(
                f"udev: {name} ({nic['mac']}, network {nic['network']}) renamed {rule.name} by {rule.file}"
            )
            name = rule.name or name
        else:
            console.say(f"udev: {name} ({nic['mac']}, network {nic['network']})")
        present[name] = nic

    raw_interfaces = root.fs.read("/etc/network/interfaces")
    addresses: list[str] = []
    notes: list[str] = []
    for stanza in parse_interfaces(raw_interfaces.decode(errors="replace") if raw_interfaces else ""):
        if stanza.method == "loopback" or not stanza.auto:
            continue
        if stanza.name not in present:
            console.say(f"ifup: {stanza.name}: no such interface (present: {', '.join(present) or 'none'})")
            notes.append(f"{stanza.name} is configured but no NIC has that name")
            continue
        if stanza.method == "dhcp":
            console.say(
                f"ifup: {stanza.name}: DHCP gets no answer on sim network {present[stanza.name]['network']}"
            )
            notes.append(f"{stanza.name} uses DHCP, which the sim does not serve")
            continue
        for address in stanza.addresses:
            console.say(
                f"ifup: {stanza.name}: {address}" + (f" via {stanza.gateway}" if stanza.gateway else "")
            )
            addresses.append(address)
    detail = f"booted {release.get('PRETTY_NAME', 'Linux')} as {hostname or '(no hostname)'}"
    detail += f"; addresses: {', '.join(addresses)}" if addresses else "; no address came up"
    if notes:
        detail += " (" + "; ".join(notes) + ")"
    console.say(f"sim: {detail}")
    return BootReport(running=True, hostname=hostname, addresses=tuple(addresses), detail=detail)
