# ruff: noqa: E501
"""An in-memory Windows server for the WinRM stand-in: what a Windows source says about itself, its VSS
shadow copies, and the network and package cmdlets a replica's first-boot script runs.

Cmdlets and parameter names follow Microsoft's reference for CimCmdlets (Get-CimInstance, Invoke-CimMethod,
Remove-CimInstance), Microsoft.PowerShell.Management (Get-ComputerInfo, Stop-Computer), Storage (Get-Disk,
Get-Partition, Get-Volume), NetAdapter / NetTCPIP / DnsClient (Get-NetAdapter, Get-NetIPConfiguration,
Set-NetIPInterface, New-NetIPAddress, Set-DnsClientServerAddress), BitLocker (Get-BitLockerVolume) and
PackageManagement (Get-Package, Uninstall-Package), services (Get-Service, Stop-Service, Start-Service:
windows_services.py), plus Where-Object's simplified -Property/-EQ/-Value
form; only the parameters hvmigrate uses are accepted. Win32_ShadowCopy.Create returns its documented
codes (3: volume not found; 6: no storage), and a shadow copy is a real frozen copy of its volume's
bytes (the partition's range of the disk file, copied when the shadow is made), which an agent on the
machine opens by the shadow's device name; removing the shadow removes the copy. A machine without the
BitLocker feature has no Get-BitLockerVolume at all, as on Windows Server without it. Enums print as
numbers, as in 5.1.
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hyperv_host import PSEnum
from .powershell import Cmdlet, Param, PSError, PSObject
from .ps_generic import common_error_action, generic_cmdlets
from .windows_services import Service, ServiceControlManager

CIM = "Microsoft.Management.Infrastructure.CimInstance#"
GiB = 1024**3


@dataclass
class Volume:
    letter: str | None
    filesystem: str
    size: int
    free: int
    disk: int
    partition: int
    bitlocker: tuple[int, int] = (0, 0)  # (VolumeStatus, ProtectionStatus): FullyDecrypted, Off

    @property
    def unique_id(self) -> str:
        return f"\\\\?\\Volume{{{uuid.uuid5(uuid.NAMESPACE_OID, f'{self.disk}-{self.partition}')}}}\\"


@dataclass
class Adapter:
    name: str
    index: int
    mac: str  # 52-54-00-AA-BB-01, as Get-NetAdapter prints it
    addresses: list[tuple[str, int]] = field(default_factory=list)
    gateway: str | None = None
    dns: list[str] = field(default_factory=list)
    dhcp: bool = True


@dataclass
class WindowsMachine:
    """One Windows server; tests set its facts and read what scripts changed."""

    hostname: str = "APP01"
    domain: str | None = "corp.test"
    caption: str = "Microsoft Windows Server 2019 Standard"
    version: str = "10.0.17763"
    uefi: bool = True
    disks: list[dict[str, Any]] = field(default_factory=list)  # Number, Size, PartitionStyle
    partitions: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    adapters: list[Adapter] = field(default_factory=list)
    bitlocker_feature: bool = True
    packages: list[str] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)  # Get-/Stop-/Start-Service (windows_services.py)
    shadows: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {volume, device}
    vss_full: bool = False  # no storage for another shadow copy (return value 6)
    stopped: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)
    python: str | None = None  # where CPython is installed (C:\Python311\python.exe); None: not at all
    disk_files: dict[int, Path] = field(default_factory=dict)  # disk Number -> the file holding its bytes
    shadows_made: int = 0  # HarddiskVolumeShadowCopyN numbers are never reused while the machine runs
    # called with the shadow id right after a shadow copy is made: the running server writing on
    after_shadow: Callable[[str], None] | None = None

    def agent_names(self) -> dict[str, Path]:
        """Windows names an agent on this server can open: ``\\\\.\\PhysicalDriveN`` for each disk with a file,
        and each shadow copy's device (``\\\\?\\GLOBALROOT\\Device\\HarddiskVolumeShadowCopyN``) for its frozen
        copy of the volume's bytes."""
        names = {f"\\\\.\\PhysicalDrive{n}": path for n, path in self.disk_files.items()}
        names.update({s["device"]: s["file"] for s in self.shadows.values() if s.get("file")})
        return names

    def freeze(self, volume: Volume, number: int) -> Path | None:
        """The volume's bytes as they are now, in a file of their own (its partition's range of the disk
        file, reflinked where the file system can): what the shadow copy's device reads. None without a
        disk file."""
        disk = self.disk_files.get(volume.disk)
        part = next(
            (
                p
                for p in self.partitions
                if p["DiskNumber"] == volume.disk and p["PartitionNumber"] == volume.partition
            ),
            None,
        )
        if disk is None or part is None:
            return None
        frozen = disk.with_name(f"{disk.name}.shadow{number}")
        with disk.open("rb") as src, frozen.open("wb") as dst:
            offset, left = int(part["Offset"]), int(part["Size"])
            while left > 0:
                copy_range = getattr(os, "copy_file_range", None)
                done = copy_range(src.fileno(), dst.fileno(), left, offset) if copy_range else 0
                if not done:  # no copy_file_range here: a plain copy
                    src.seek(offset)
                    block = src.read(min(left, 1024**2))
                    if not block:
                        break
                    done = dst.write(block)
                offset += done
                left -= done
        return frozen

    def cmdlets(self) -> dict[str, Cmdlet]:
        cmdlets = {
            **generic_cmdlets(),
            **_build(self),
            **ServiceControlManager(self.services, self.lock).cmdlets(),
        }
        if not self.bitlocker_feature:
            del cmdlets["get-bitlockervolume"]
        return cmdlets


def _cim(cls: str, props: dict[str, Any]) -> PSObject:
    return PSObject(f"{CIM}{cls}", props)


def _build(m: WindowsMachine) -> dict[str, Cmdlet]:
    S, S_ARR, SW, U32 = (
        Param("string"),
        Param("string[]"),
        Param("switch"),
        Param("int64", minimum=0, maximum=2**32 - 1),
    )
    cmdlets: list[Cmdlet] = []

    def add(name: str, params: dict[str, Param], required: tuple[str, ...] = (), **pipe: Any):
        def register(fn):
            def run(bound: dict[str, Any], piped: list[Any]) -> list[Any]:
                with m.lock:
                    return fn(bound, piped)

            cmdlets.append(Cmdlet(name, params, run, required, **pipe))
            return fn

        return register

    # -- CIM
    @add("Get-CimInstance", {"ClassName": S, "Filter": S, "Namespace": S}, ("ClassName",))
    def get_cim(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        cls = b["ClassName"].lower()
        if cls == "win32_operatingsystem":
            return [
                _cim(
                    "root/cimv2/Win32_OperatingSystem",
                    {
                        "Caption": m.caption,
                        "Version": m.version,
                        "BuildNumber": m.version.split(".")[-1],
                        "OSArchitecture": "64-bit",
                    },
                )
            ]
        if cls == "win32_computersystem":
            return [
                _cim(
                    "root/cimv2/Win32_ComputerSystem",
                    {
                        "DNSHostName": m.hostname,
                        "Domain": m.domain or "WORKGROUP",
                        "PartOfDomain": m.domain is not None,
                        "Workgroup": None if m.domain else "WORKGROUP",
                    },
                )
            ]
        if cls == "win32_shadowcopy":
            shadows = list(m.shadows.items())
            if "Filter" in b:
                match = re.fullmatch(r"ID='(\{[0-9A-Fa-f-]{36}\})'", b["Filter"])
                if match is None:
                    raise PSError(
                        "Invalid query",
                        category="InvalidArgument",
                        error_id="HRESULT 0x80041017,Microsoft.Management.Infrastructure.CimCmdlets.GetCimInstanceCommand",
                    )
                shadows = [(i, s) for i, s in shadows if i.lower() == match.group(1).lower()]
            return [
                _cim(
                    "root/cimv2/Win32_ShadowCopy",
                    {"ID": i, "DeviceObject": s["device"], "VolumeName": s["volume"]},
                )
                for i, s in shadows
            ]
        raise PSError(
            f"Invalid class {b['ClassName']} (the stand-in knows the classes hvmigrate reads)",
            category="ObjectNotFound",
            error_id="HRESULT 0x80041010,Microsoft.Management.Infrastructure.CimCmdlets.GetCimInstanceCommand",
        )

    @add(
        "Invoke-CimMethod",
        {"ClassName": S, "MethodName": S, "Arguments": Param("object")},
        ("ClassName", "MethodName"),
    )
    def invoke_cim(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        if b["ClassName"].lower() != "win32_shadowcopy" or b["MethodName"].lower() != "create":
            raise PSError(
                f"Method {b['MethodName']} of {b['ClassName']} is not one the stand-in runs.",
                error_id="MethodNotFound",
            )
        args = b.get("Arguments")
        if not isinstance(args, PSObject) or args.type_name != "System.Collections.Hashtable":
            raise PSError(
                "Cannot bind parameter 'Arguments': a hashtable is expected.",
                error_id="CannotConvertArgumentNoMessage,Invoke-CimMethod",
            )
        unknown = {k for k in args} - {"Volume", "Context"}
        if unknown:
            return [_cim("__PARAMETERS", {"ReturnValue": 2, "ShadowID": None})]
        volume = str(args.get_prop("Volume"))
        if args.get("Context", "ClientAccessible") != "ClientAccessible":
            return [_cim("__PARAMETERS", {"ReturnValue": 5, "ShadowID": None})]
        if not any(v.letter and f"{v.letter}:\\".lower() == volume.lower() for v in m.volumes):
            return [_cim("__PARAMETERS", {"ReturnValue": 3, "ShadowID": None})]
        if m.vss_full:
            return [_cim("__PARAMETERS", {"ReturnValue": 6, "ShadowID": None})]
        shadow_id = "{" + str(uuid.uuid4()).upper() + "}"
        m.shadows_made += 1
        m.shadows[shadow_id] = {
            "volume": volume,
            "device": f"\\\\?\\GLOBALROOT\\Device\\HarddiskVolumeShadowCopy{m.shadows_made}",
            "file": m.freeze(
                next(v for v in m.volumes if v.letter and f"{v.letter}:\\".lower() == volume.lower()),
                m.shadows_made,
            ),
        }
        if m.after_shadow is not None:
            m.after_shadow(shadow_id)
        return [_cim("__PARAMETERS", {"ReturnValue": 0, "ShadowID": shadow_id})]

    @add(
        "Remove-CimInstance",
        {"InputObject": Param("object")},
        ("InputObject",),
        pipeline="InputObject",
        by_value=f"{CIM}root/cimv2/Win32_ShadowCopy",
    )
    def remove_cim(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        shadow = m.shadows.pop(b["InputObject"].get_prop("ID"), None)
        if shadow and shadow.get("file"):
            shadow["file"].unlink(missing_ok=True)
        return []

    # -- the machine
    @add("Get-ComputerInfo", {"Property": S_ARR})
    def computer_info(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        return [
            PSObject(
                "Microsoft.PowerShell.Commands.ComputerInfo",
                {
                    "BiosFirmwareType": PSEnum("Uefi", 2) if m.uefi else PSEnum("Bios", 1),
                    "CsDomain": m.domain,
                },
            )
        ]

    @add("Stop-Computer", {"Force": SW})
    def stop_computer(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        m.stopped = True
        return []

    # -- storage
    @add("Get-Disk", {})
    def get_disk(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        styles = {"RAW": 0, "MBR": 1, "GPT": 2}
        return [
            _cim(
                "ROOT/Microsoft/Windows/Storage/MSFT_Disk",
                {
                    "Number": d["Number"],
                    "Size": d["Size"],
                    "PartitionStyle": PSEnum(d["PartitionStyle"], styles[d["PartitionStyle"]]),
                    "IsBoot": d["Number"] == 0,
                    "IsSystem": d["Number"] == 0,
                    "FriendlyName": "Virtual Disk",
                },
            )
            for d in m.disks
        ]

    @add("Get-Partition", {})
    def get_partition(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        out = []
        for p in m.partitions:
            volume = next(
                (v for v in m.volumes if v.disk == p["DiskNumber"] and v.partition == p["PartitionNumber"]),
                None,
            )
            paths = ([f"{volume.letter}:\\"] if volume and volume.letter else []) + (
                [volume.unique_id] if volume else []
            )
            out.append(
                _cim(
                    "ROOT/Microsoft/Windows/Storage/MSFT_Partition",
                    {
                        "DiskNumber": p["DiskNumber"],
                        "PartitionNumber": p["PartitionNumber"],
                        "DriveLetter": volume.letter if volume and volume.letter else "\x00",
                        "Offset": p["Offset"],
                        "Size": p["Size"],
                        "MbrType": p.get("MbrType"),
                        "GptType": p.get("GptType"),
                        "AccessPaths": paths,
                    },
                )
            )
        return out

    @add("Get-Volume", {})
    def get_volume(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        return [
            _cim(
                "ROOT/Microsoft/Windows/Storage/MSFT_Volume",
                {
                    "DriveLetter": v.letter,
                    "FileSystemLabel": "",
                    "FileSystem": v.filesystem,
                    "Size": v.size,
                    "SizeRemaining": v.free,
                    "UniqueId": v.unique_id,
                },
            )
            for v in m.volumes
        ]

    @add("Get-BitLockerVolume", {"MountPoint": S_ARR})
    def get_bitlocker(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        return [
            PSObject(
                "Microsoft.BitLocker.Structures.BitLockerVolume",
                {
                    "MountPoint": f"{v.letter}:",
                    "VolumeStatus": PSEnum("s", v.bitlocker[0]),
                    "ProtectionStatus": PSEnum("p", v.bitlocker[1]),
                    "EncryptionPercentage": 100.0 if v.bitlocker[0] == 1 else 0.0,
                },
            )
            for v in m.volumes
            if v.letter
        ]

    # -- network
    def adapter_object(a: Adapter) -> PSObject:
        return _cim(
            "ROOT/StandardCimv2/MSFT_NetAdapter",
            {
                "Name": a.name,
                "InterfaceIndex": a.index,
                "ifIndex": a.index,
                "MacAddress": a.mac,
                "Status": "Up",
            },
        )

    def adapter(index: int, cmdlet: str) -> Adapter:
        for a in m.adapters:
            if a.index == index:
                return a
        raise PSError(
            f"No MSFT_NetAdapter objects found with property 'InterfaceIndex' equal to '{index}'.",
            category="ObjectNotFound",
            error_id=f"CmdletizationQuery_NotFound_InterfaceIndex,{cmdlet}",
            cmdlet=cmdlet,
        )

    @add("Get-NetAdapter", {"Physical": SW, "Name": S_ARR})
    def get_adapter(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        return [adapter_object(a) for a in m.adapters]

    @add("Get-NetIPConfiguration", {"InterfaceIndex": Param("int32")})
    def get_ipconfig(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        out = []
        for a in m.adapters:
            v4 = [(ip, n) for ip, n in a.addresses if ipaddress.ip_address(ip).version == 4]
            v6 = [(ip, n) for ip, n in a.addresses if ipaddress.ip_address(ip).version == 6]
            out.append(
                PSObject(
                    "NetIPConfiguration",
                    {
                        "InterfaceIndex": a.index,
                        "IPv4Address": [
                            _cim("ROOT/StandardCimv2/MSFT_NetIPAddress", {"IPAddress": ip, "PrefixLength": n})
                            for ip, n in v4
                        ],
                        "IPv6Address": [
                            _cim("ROOT/StandardCimv2/MSFT_NetIPAddress", {"IPAddress": ip, "PrefixLength": n})
                            for ip, n in v6
                        ],
                        "IPv4DefaultGateway": [
                            _cim("ROOT/StandardCimv2/MSFT_NetRoute", {"NextHop": a.gateway})
                        ]
                        if a.gateway
                        else [],
                        "DNSServer": [
                            _cim(
                                "ROOT/StandardCimv2/MSFT_DNSClientServerAddress",
                                {"AddressFamily": 2, "ServerAddresses": list(a.dns)},
                            )
                        ],
                        "NetIPv4Interface": _cim(
                            "ROOT/StandardCimv2/MSFT_NetIPInterface",
                            {"Dhcp": PSEnum("Enabled" if a.dhcp else "Disabled", 1 if a.dhcp else 0)},
                        ),
                    },
                )
            )
        return out

    @add(
        "Where-Object",
        {"Property": S, "EQ": SW, "Value": Param("object")},
        ("Property", "Value"),
        pipeline="any",
    )
    def where_object(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        if not b.get("EQ"):
            raise PSError("Where-Object: the stand-in takes the -Property X -EQ -Value Y form only.")
        return [
            item
            for item in piped
            if isinstance(item, PSObject)
            and str(item.get_prop(b["Property"])).lower() == str(b["Value"]).lower()
        ]

    @add(
        "Set-NetIPInterface",
        {
            "InterfaceIndex": U32,
            "Dhcp": Param("enum", ("Disabled", "Enabled"), "Dhcp"),
            "AddressFamily": Param("enum", ("IPv4", "IPv6"), "AddressFamily"),
        },
        ("InterfaceIndex",),
    )
    def set_interface(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        a = adapter(b["InterfaceIndex"], "Set-NetIPInterface")
        if "Dhcp" in b:
            a.dhcp = b["Dhcp"] == "Enabled"
            if not a.dhcp:
                a.addresses.clear()  # the DHCP lease goes with DHCP
        return []

    @add(
        "New-NetIPAddress",
        {
            "InterfaceIndex": U32,
            "IPAddress": S,
            "PrefixLength": Param("int32", minimum=0, maximum=128),
            "DefaultGateway": S,
            "AddressFamily": Param("enum", ("IPv4", "IPv6"), "AddressFamily"),
        },
        ("InterfaceIndex", "IPAddress"),
    )
    def new_address(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        a = adapter(b["InterfaceIndex"], "New-NetIPAddress")
        try:
            ip = ipaddress.ip_address(b["IPAddress"])
        except ValueError:
            raise PSError(
                f"Invalid parameter IPAddress {b['IPAddress']}",
                error_id="Windows System Error 87,New-NetIPAddress",
            ) from None
        if any(ipaddress.ip_address(x) == ip for x, _ in a.addresses):
            raise PSError(
                "The object already exists.",
                category="ResourceExists",
                error_id="Windows System Error 5010,New-NetIPAddress",
            )
        a.addresses.append((str(ip), b.get("PrefixLength", 32 if ip.version == 4 else 128)))
        if b.get("DefaultGateway"):
            a.gateway = str(ipaddress.ip_address(b["DefaultGateway"]))
        return [_cim("ROOT/StandardCimv2/MSFT_NetIPAddress", {"IPAddress": str(ip)})]

    @add(
        "Set-DnsClientServerAddress",
        {"InterfaceIndex": Param("object"), "ServerAddresses": S_ARR, "ResetServerAddresses": SW},
        ("InterfaceIndex",),
    )
    def set_dns(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        a = adapter(int(b["InterfaceIndex"]), "Set-DnsClientServerAddress")
        a.dns = [str(ipaddress.ip_address(s)) for s in b.get("ServerAddresses", [])]
        return []

    # -- packages
    @add("Get-Package", {"Name": S_ARR, "ErrorAction": common_error_action()})
    def get_package(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        names = [n.lower() for n in b.get("Name", [])]
        found = [
            PSObject("Microsoft.PackageManagement.Packaging.SoftwareIdentity", {"Name": p})
            for p in m.packages
            if not names or p.lower() in names
        ]
        if names and not found and b.get("ErrorAction") not in ("SilentlyContinue", "Ignore"):
            raise PSError(
                f"No package found for '{b['Name'][0]}'.",
                category="ObjectNotFound",
                error_id="NoMatchFound,Microsoft.PowerShell.PackageManagement.Cmdlets.GetPackage",
            )
        return found

    @add(
        "Uninstall-Package",
        {"InputObject": Param("object"), "Force": SW},
        ("InputObject",),
        pipeline="InputObject",
        by_value="Microsoft.PackageManagement.Packaging.SoftwareIdentity",
    )
    def uninstall_package(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        m.packages.remove(b["InputObject"].get_prop("Name"))
        return []

    return {c.name.lower(): c for c in cmdlets}
