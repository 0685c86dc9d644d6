# ruff: noqa: E501
"""Every PowerShell body the Windows source sends, in one place to read against Microsoft's reference.

As for Hyper-V (providers/hyperv/scripts.py), bodies are fixed text and read user values only as
``$hv.<field>``. Discovery is one round trip; BitLocker is asked separately, because Get-BitLockerVolume
exists only where the BitLocker feature is installed (its absence means no volume is encrypted).
Cmdlets: Win32_OperatingSystem and Win32_ComputerSystem through Get-CimInstance (CimCmdlets), Get-ComputerInfo
(BiosFirmwareType: 1 BIOS, 2 UEFI), Get-Disk / Get-Partition / Get-Volume (Storage), Get-NetAdapter and
Get-NetIPConfiguration (NetAdapter, NetTCPIP), Get-BitLockerVolume (BitLocker), Win32_ShadowCopy's Create
method through Invoke-CimMethod and Remove-CimInstance for VSS, Stop-Computer to shut down, Get-Service,
Stop-Service and Start-Service (with Where-Object's -Property/-EQ/-Value form) for `source.services`.
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

# Services (Microsoft.PowerShell.Management). The playbook's names go to -Name, which resolves a service
# or display name as Windows does and fails on one that does not exist (NoServiceFoundForGivenName); the
# playbook refuses wildcard characters, so each names exactly one service. -DependentServices lists every
# service depending on them, directly or not. Status and StartType print as numbers
# (ServiceControllerStatus, ServiceStartMode).
SERVICES_FIND = (
    "@(Get-Service -Name $hv.names | Select-Object -Property Name, DisplayName, Status, StartType) "
    "| ConvertTo-Json -Compress"
)
SERVICES_DEPENDENT = (
    "@(Get-Service -Name $hv.names -DependentServices | Select-Object -Property Name, Status, StartType) "
    "| ConvertTo-Json -Compress"
)
SERVICES_ALL = "@(Get-Service | Select-Object -Property Name, Status, StartType) | ConvertTo-Json -Compress"
# Names Windows reported (a dependant's may hold wildcard characters) select by equality, never as a
# -Name pattern. -Force stops the running dependants first, as Windows requires; -NoWait returns once
# the stop control is sent, and source.py polls SERVICES_ALL with a timeout (Stop-Service alone waits
# for ever on a service that never stops). Start-Service starts what the service depends on first.
SERVICE_STOP = "Get-Service | Where-Object -Property Name -EQ -Value $hv.name | Stop-Service -Force -NoWait"
SERVICE_START = "Get-Service | Where-Object -Property Name -EQ -Value $hv.name | Start-Service"
