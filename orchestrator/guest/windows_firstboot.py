"""The first-boot script of a Windows replica: its NICs by MAC, static addresses, guest tools removed.

A Windows replica boots with new NICs (new hardware to Windows): the source's static addresses stay
bound to adapters that no longer exist, and the new ones ask DHCP. The script finds each new adapter by the
MAC the NIC map gave it (Get-NetAdapter -Physical | Where-Object MacAddress), turns DHCP off and sets the
address, gateway and DNS servers, or turns DHCP on for ``ip: dhcp``; ``ip: keep`` leaves the adapter as it
comes up. The hostname is the source's already (the disk is a block copy) and the script never renames the
machine: a rename would also change its domain account. The tools of the source platform (VMware Tools
from ESX, the QEMU guest agent from KVM) are uninstalled through PackageManagement; Hyper-V's integration
services ship with Windows and stay.

As everything sent over WinRM, the script is a fixed body plus a data block (orchestrator/transport/winrm.py
`compose`): addresses, MACs and package names are data, never PowerShell. Which lines the body has depends
only on the shape of the NIC map (a gateway or not, DNS servers or not).

`orchestrator.guest.windows` places the script in the replica's Windows volume (ntfs-3g, not mounted)
and registers it to run once before the first logon (Winlogon's SYSTEM\\Setup hook, edited with hivex).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.transport.winrm import compose

# The source platform's tools as PackageManagement (Programs and Features) names them.
GUEST_TOOLS: dict[str, tuple[str, ...]] = {
    "esx": ("VMware Tools",),
    "kvm": ("QEMU guest agent", "Virtio-win-guest-tools"),
    "hyperv": (),  # integration services are part of Windows
}
SCRIPT_NAME = "hvmigrate-firstboot.ps1"


@dataclass(frozen=True)
class WindowsNic:
    """One replica NIC as the first-boot script sets it; ``ip`` is CIDR, "dhcp" or "keep"."""

    mac: str
    ip: str = "keep"
    gateway: str | None = None
    dns: tuple[str, ...] = field(default_factory=tuple)


def windows_mac(mac: str) -> str:
    """52:54:00:aa:bb:01 as Get-NetAdapter prints it: 52-54-00-AA-BB-01."""
    digits = mac.replace(":", "").replace("-", "").upper()
    if len(digits) != 12 or any(c not in "0123456789ABCDEF" for c in digits):
        raise ValueError(f"{mac!r} is not a MAC address")
    return "-".join(digits[i : i + 2] for i in range(0, 12, 2))


def firstboot_script(nics: Sequence[WindowsNic], *, source_platform: str | None) -> str:
    """The whole script (prelude, data block, body), ready to be written as SCRIPT_NAME."""
    lines: list[str] = []
    data: dict[str, Any] = {}
    for index, nic in enumerate(nics):
        if nic.ip == "keep":
            continue
        var, key = f"$nic{index}", f"nic{index}"
        entry: dict[str, Any] = {"mac": windows_mac(nic.mac)}
        lines.append(
            f"{var} = Get-NetAdapter -Physical | Where-Object -Property MacAddress -EQ -Value $hv.{key}.mac"
        )
        if nic.ip == "dhcp":
            lines.append(f"Set-NetIPInterface -InterfaceIndex {var}.ifIndex -Dhcp Enabled")
        else:
            address = ipaddress.ip_interface(nic.ip)
            family = "IPv4" if address.version == 4 else "IPv6"
            entry.update(ip=str(address.ip), prefix=address.network.prefixlen)
            lines.append(
                f"Set-NetIPInterface -InterfaceIndex {var}.ifIndex -AddressFamily {family} -Dhcp Disabled"
            )
            add = (
                f"$null = New-NetIPAddress -InterfaceIndex {var}.ifIndex -AddressFamily {family} "
                f"-IPAddress $hv.{key}.ip -PrefixLength $hv.{key}.prefix"
            )
            if nic.gateway:
                entry["gateway"] = str(ipaddress.ip_address(nic.gateway))
                add += f" -DefaultGateway $hv.{key}.gateway"
            lines.append(add)
        if nic.dns:
            entry["dns"] = [str(ipaddress.ip_address(server)) for server in nic.dns]
            lines.append(
                f"Set-DnsClientServerAddress -InterfaceIndex {var}.ifIndex -ServerAddresses $hv.{key}.dns"
            )
        data[key] = entry
    tools = GUEST_TOOLS.get(source_platform or "", ())
    if tools:
        data["tools"] = list(tools)
        lines.append("Get-Package -Name $hv.tools -ErrorAction SilentlyContinue | Uninstall-Package -Force")
    return compose("\n".join(lines), data)
