"""What a VM in the Hyper-V stand-in reports once started: as far as a stand-in can, from its disk's bytes.

Real Hyper-V says "Running" as soon as the VM's worker process starts, whatever the guest does; what shows
that a guest came up is its integration services: the heartbeat (Get-VM's Heartbeat: hv_utils in every
Debian kernel) and, when the guest runs the KVP daemon (Debian's hyperv-daemons, /usr/sbin/hv_kvp_daemon),
the addresses it reports per NIC (Get-VMNetworkAdapter's IPAddresses). So a replica that cannot boot here
stays at no heartbeat: the firmware looks for what real firmware needs (a 0x55AA boot signature on the IDE
boot disk for generation 1's BIOS, an EFI System Partition on GPT for generation 2's UEFI), and the guest
brings up only the ifupdown stanzas whose interface exists. Synthetic NICs (hv_netvsc) have no PCI path, so
the kernel names them eth0, eth1... in VMBus order unless a .link file pins a name to the MAC: a source
configured for another name comes up without an address unless staging pinned it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.guest.extfs import GuestFsError
from orchestrator.guest.linux import disk_layout, find_linux_root, link_rules, parse_interfaces

if TYPE_CHECKING:
    from .hyperv_host import VM

KVP_DAEMONS = ("/usr/sbin/hv_kvp_daemon", "/usr/sbin/hypervkvpd")


@dataclass
class GuestState:
    """What the integration services report: heartbeat (None: no contact) and addresses per NIC name."""

    heartbeat: str | None = None
    addresses: dict[str, list[str]] = field(default_factory=dict)  # NIC (adapter) name -> addresses
    console: list[str] = field(default_factory=list)


def boot_drive(vm: VM) -> str | None:
    """The path of the disk the firmware boots: IDE 0:0 on generation 1, the first SCSI disk on 2."""
    wanted = "IDE" if vm.generation == 1 else "SCSI"
    drives = sorted(
        (d for d in vm.drives if d.path and d.controller == wanted), key=lambda d: (d.number, d.location)
    )
    return drives[0].path if drives else None


def boot(vm: VM, raw_file: Path | None) -> GuestState:
    """Boot ``vm`` from ``raw_file`` (the raw file standing for its boot VHDX)."""
    state = GuestState()
    say = state.console.append
    if raw_file is None or not raw_file.exists():
        say("firmware: no bootable disk")
        return state
    layout = disk_layout(raw_file)
    if vm.generation == 1 and not layout.boot_signature:
        say("firmware (BIOS): the IDE boot disk has no boot signature")
        return state
    if vm.generation == 2 and not layout.has_efi_system_partition:
        say("firmware (UEFI): no EFI System Partition on the boot disk")
        return state
    try:
        root = find_linux_root(raw_file)
    except GuestFsError as exc:
        say(f"kernel: cannot read the root filesystem: {exc}")
        return state
    if root is None:
        say("kernel: no Linux root the stand-in can read; no integration services answer")
        return state
    state.heartbeat = "OkApplicationsUnknown"  # hv_utils: Linux reports no application health
    say("hv_utils: heartbeat")
    if not any(root.fs.stat(path) for path in KVP_DAEMONS):
        say("no KVP daemon (hyperv-daemons): the host learns no addresses")
        return state
    rules = link_rules(root)
    present: dict[str, str] = {}  # interface name -> adapter name
    for index, nic in enumerate(vm.nics):
        mac = ":".join(nic.mac[i : i + 2] for i in range(0, 12, 2)).lower()
        rule = next((r for r in rules if mac in r.macs and r.name), None)
        name = rule.name if rule and rule.name else f"eth{index}"
        present[name] = nic.name
        state.addresses[nic.name] = []
        say(f"hv_netvsc: {name} ({mac}, switch {nic.switch or 'none'})")
    raw = root.fs.read("/etc/network/interfaces")
    for stanza in parse_interfaces(raw.decode(errors="replace") if raw else ""):
        if stanza.method == "loopback" or not stanza.auto or stanza.name not in present:
            continue
        adapter = next(n for n in vm.nics if n.name == present[stanza.name])
        if stanza.method == "static" and adapter.switch is not None:
            state.addresses[adapter.name].extend(a.split("/")[0] for a in stanza.addresses)
            say(f"ifup: {stanza.name}: {', '.join(stanza.addresses)}")
    return state
