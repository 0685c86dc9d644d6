"""A Windows source's discovery output (see scripts.DISCOVERY) as the project's SourceFacts.

Windows PowerShell 5.1 prints enums as numbers and a one-element array as the element itself; both are
read either way here, so the same code reads PowerShell 7's output. Disks are named as the playbook names
them, ``PhysicalDrive<N>`` (``\\\\.\\PhysicalDriveN`` on the source).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from providers.base import (
    SourceDisk,
    SourceFacts,
    SourceNic,
    WindowsFacts,
    WindowsNicConfig,
    WindowsVolume,
)

# Partitions that make a disk dynamic (LDM): MBR type 0x42, and the GPT LDM metadata / data types.
LDM_MBR_TYPE = 0x42
LDM_GPT_TYPES = {
    "{5808c8aa-7e8f-42e0-85d2-e1e90434cfb3}",  # LDM metadata
    "{af9b60a0-1431-4f62-bc68-3311714a69ad}",  # LDM data
}
PARTITION_STYLE = {0: "none", 1: "mbr", 2: "gpt", "raw": "none", "mbr": "mbr", "gpt": "gpt"}
FIRMWARE = {1: "bios", 2: "uefi", "bios": "bios", "uefi": "uefi"}
# Get-BitLockerVolume: ProtectionStatus Off=0 On=1 Unknown=2; VolumeStatus FullyDecrypted=0
# FullyEncrypted=1 EncryptionInProgress=2 DecryptionInProgress=3 EncryptionPaused=4 DecryptionPaused=5
_PROTECTION = {0: "off", 1: "on", 2: "unknown", "off": "off", "on": "on", "unknown": "unknown"}
_VOLUME_STATUS = {
    0: "fullydecrypted",
    1: "fullyencrypted",
    2: "encryptioninprogress",
    3: "decryptioninprogress",
    4: "encryptionpaused",
    5: "decryptionpaused",
}


def listed(value: Any) -> list[Any]:
    """ConvertTo-Json's view of a collection: nothing, one element, or a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _enum(table: Mapping[Any, str], value: Any, default: str) -> str:
    key = value.lower() if isinstance(value, str) else value
    return table.get(key, default)


def _letter(value: Any) -> str:
    """A drive letter, upper case; "" for none (null, or the char 0 Get-Partition prints)."""
    return str(value or "").strip("\x00 ").upper()


def disk_name(number: int) -> str:
    return f"PhysicalDrive{number}"


def bitlocker_states(found: Any) -> dict[str, str]:
    """Drive ("C:") -> off | on | suspended | in_progress."""
    states = {}
    for volume in listed(found):
        protection = _enum(_PROTECTION, volume.get("ProtectionStatus"), "unknown")
        status = _VOLUME_STATUS.get(volume.get("VolumeStatus"), str(volume.get("VolumeStatus", "")).lower())
        if protection == "on":
            state = "on"
        elif status == "fullydecrypted":
            state = "off"
        elif status == "fullyencrypted":
            state = "suspended"
        else:
            state = "in_progress"
        states[str(volume.get("MountPoint", "")).upper()] = state
    return states


def facts_from_discovery(found: Mapping[str, Any], bitlocker: Mapping[str, str]) -> SourceFacts:
    os_info = found.get("Os") or {}
    system = found.get("System") or {}
    partitions = listed(found.get("Partitions"))
    volumes = listed(found.get("Volumes"))
    volume_disk: dict[str, int] = {}  # volume UniqueId or drive letter -> disk number
    for part in partitions:
        for path in listed(part.get("AccessPaths")):
            volume_disk[str(path).lower()] = part["DiskNumber"]
        if _letter(part.get("DriveLetter")):
            volume_disk[_letter(part.get("DriveLetter"))] = part["DiskNumber"]

    def disk_of(volume: Mapping[str, Any]) -> int | None:
        letter = _letter(volume.get("DriveLetter"))
        if letter in volume_disk:
            return volume_disk[letter]
        return volume_disk.get(str(volume.get("UniqueId", "")).lower())

    windows_volumes = []
    for volume in volumes:
        number = disk_of(volume)
        letter = _letter(volume.get("DriveLetter")) or None
        size = int(volume.get("Size") or 0)
        windows_volumes.append(
            WindowsVolume(
                letter=letter,
                filesystem=str(volume.get("FileSystem") or ""),
                size=size,
                used=size - int(volume.get("SizeRemaining") or 0),
                disk=disk_name(number) if number is not None else None,
                bitlocker=bitlocker.get(f"{letter}:", "off") if letter else "off",
            )
        )
    disks = []
    for disk in sorted(listed(found.get("Disks")), key=lambda d: d["Number"]):
        name = disk_name(disk["Number"])
        on_disk = [v for v in windows_volumes if v.disk == name]
        disks.append(
            SourceDisk(
                name=name,
                size=int(disk["Size"]),
                used=sum(v.used for v in on_disk) if on_disk else None,
                partition_table=_enum(PARTITION_STYLE, disk.get("PartitionStyle"), "none"),  # type: ignore[arg-type]
                filesystems=tuple(sorted({v.filesystem.lower() for v in on_disk if v.filesystem})),
            )
        )
    dynamic = sorted(
        {
            disk_name(p["DiskNumber"])
            for p in partitions
            if p.get("MbrType") == LDM_MBR_TYPE or str(p.get("GptType") or "").lower() in LDM_GPT_TYPES
        }
    )
    nics, configs = _nics(found)
    domain = system.get("Domain") if system.get("PartOfDomain") else None
    firmware = _enum(FIRMWARE, (found.get("Firmware") or {}).get("BiosFirmwareType"), "bios")
    caption = str(os_info.get("Caption") or "Windows").strip()
    return SourceFacts(
        hostname=str(system.get("DNSHostName") or ""),
        os="windows",
        os_detail=f"{caption} {os_info.get('Version', '')}".strip(),
        firmware=firmware,  # type: ignore[arg-type]
        disks=tuple(disks),
        nics=nics,
        windows=WindowsFacts(
            edition=caption,
            version=str(os_info.get("Version") or ""),
            domain=domain,
            volumes=tuple(windows_volumes),
            dynamic_disks=tuple(dynamic),
            nics=configs,
        ),
    )


def _nics(found: Mapping[str, Any]) -> tuple[tuple[SourceNic, ...], tuple[WindowsNicConfig, ...]]:
    configs = {c["InterfaceIndex"]: c for c in listed(found.get("IpConfig"))}
    nics, settings = [], []
    for adapter in sorted(listed(found.get("Adapters")), key=lambda a: a["InterfaceIndex"]):
        mac = str(adapter.get("MacAddress") or "").replace("-", ":").lower()
        config = configs.get(adapter["InterfaceIndex"], {})
        addresses = [
            str(ipaddress.ip_interface(f"{a['IPAddress']}/{a['PrefixLength']}"))
            for a in listed(config.get("IPv4Address")) + listed(config.get("IPv6Address"))
            if not ipaddress.ip_address(str(a["IPAddress"]).split("%")[0]).is_link_local
        ]
        gateways = [str(r["NextHop"]) for r in listed(config.get("IPv4DefaultGateway"))]
        dns_servers = [
            str(server)
            for entry in listed(config.get("DNSServer"))
            for server in listed(entry.get("ServerAddresses"))
        ]
        dhcp = (config.get("NetIPv4Interface") or {}).get("Dhcp")
        nics.append(SourceNic(name=str(adapter["Name"]), mac=mac, addresses=tuple(addresses)))
        settings.append(
            WindowsNicConfig(
                mac=mac,
                dhcp=dhcp in (1, "Enabled"),
                gateways=tuple(gateways),
                dns_servers=tuple(dns_servers),
            )
        )
    return tuple(nics), tuple(settings)


def volume_extents(found: Mapping[str, Any]) -> dict[str, tuple[str, int, int]]:
    """Drive letter ("C") -> (disk name, offset, length) of the partition holding that volume: where a
    shadow copy of the volume lies on its disk."""
    extents = {}
    for part in listed(found.get("Partitions")):
        letter = _letter(part.get("DriveLetter"))
        if letter and part.get("Offset") is not None and part.get("Size"):
            extents[letter] = (disk_name(part["DiskNumber"]), int(part["Offset"]), int(part["Size"]))
    return extents
