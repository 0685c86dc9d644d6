# ruff: noqa: E501
"""Every PowerShell body the Windows source sends, in one place to read against Microsoft's reference.

As for Hyper-V (providers/hyperv/scripts.py), bodies are fixed text and read user values only as
``$hv.<field>``. Discovery is one round trip; BitLocker is asked separately, because Get-BitLockerVolume
exists only where the BitLocker feature is installed (its absence means no volume is encrypted).
Cmdlets: Win32_OperatingSystem and Win32_ComputerSystem through Get-CimInstance (CimCmdlets), Get-ComputerInfo
(BiosFirmwareType: 1 BIOS, 2 UEFI), Get-Disk / Get-Partition / Get-Volume (Storage), Get-NetAdapter and
Get-NetIPConfiguration (NetAdapter, NetTCPIP), Get-BitLockerVolume (BitLocker), Win32_ShadowCopy's Create
method through Invoke-CimMethod and Remove-CimInstance for VSS, Stop-Computer to shut down.
"""

from __future__ import annotations

DISCOVERY = """[pscustomobject]@{
Os = (Get-CimInstance -ClassName 'Win32_OperatingSystem' | Select-Object -Property Caption, Version, BuildNumber, OSArchitecture)
System = (Get-CimInstance -ClassName 'Win32_ComputerSystem' | Select-Object -Property DNSHostName, Domain, PartOfDomain, Workgroup)
Firmware = (Get-ComputerInfo -Property BiosFirmwareType | Select-Object -Property BiosFirmwareType)
Disks = @(Get-Disk | Select-Object -Property Number, Size, PartitionStyle, IsBoot, IsSystem, FriendlyName)
Partitions = @(Get-Partition | Select-Object -Property DiskNumber, PartitionNumber, DriveLetter, Offset, Size, MbrType, GptType, AccessPaths)
Volumes = @(Get-Volume | Select-Object -Property DriveLetter, FileSystemLabel, FileSystem, Size, SizeRemaining, UniqueId)
Adapters = @(Get-NetAdapter -Physical | Select-Object -Property Name, InterfaceIndex, MacAddress, Status)
IpConfig = @(Get-NetIPConfiguration | Select-Object -Property InterfaceIndex, IPv4Address, IPv6Address, IPv4DefaultGateway, DNSServer, NetIPv4Interface)
} | ConvertTo-Json -Depth 5 -Compress"""

BITLOCKER = "@(Get-BitLockerVolume | Select-Object -Property MountPoint, VolumeStatus, ProtectionStatus, EncryptionPercentage) | ConvertTo-Json -Depth 3 -Compress"

# Win32_ShadowCopy.Create: ClientAccessible is the only context the WMI method takes; the shadow
# persists until removed, which is why each one is journaled before the pass reads from it.
VSS_CREATE = (
    "Invoke-CimMethod -ClassName 'Win32_ShadowCopy' -MethodName Create "
    "-Arguments @{Volume = $hv.volume; Context = 'ClientAccessible'} "
    "| Select-Object -Property ReturnValue, ShadowID | ConvertTo-Json -Compress"
)
VSS_GET = (
    "@(Get-CimInstance -ClassName 'Win32_ShadowCopy' -Filter $hv.filter "
    "| Select-Object -Property ID, DeviceObject, VolumeName) | ConvertTo-Json -Compress"
)
# -Filter is WQL built from a GUID the code checked to be one (see source.py `_shadow_filter`).
VSS_REMOVE = "Get-CimInstance -ClassName 'Win32_ShadowCopy' -Filter $hv.filter | Remove-CimInstance"

SHUTDOWN = {True: "Stop-Computer -Force", False: "Stop-Computer"}
