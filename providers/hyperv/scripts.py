# ruff: noqa: E501
"""Every PowerShell body the Hyper-V provider sends, in one place to read against Microsoft's reference.

Each body reads user values only as ``$hv.<field>`` (decoded from the base64 JSON block of
orchestrator/transport/winrm.py's prelude); nothing here is ever formatted with a value. Switch
parameters (-Dynamic/-Fixed, -TurnOff) cannot be data, so they pick between fixed bodies. Output is
``ConvertTo-Json -Compress``; enums come back as their numbers (Windows PowerShell 5.1), mapped in
inventory.py.
"""

from __future__ import annotations

DEPTH = "-Depth 4 -Compress"

HOST = (
    "Get-VMHost | Select-Object -Property ComputerName, LogicalProcessorCount, MemoryCapacity, "
    f"VirtualHardDiskPath, VirtualMachinePath | ConvertTo-Json {DEPTH}"
)
VMS = (
    "@(Get-VM | Select-Object -Property Name, Generation, ProcessorCount, MemoryStartup, State, Path, Notes, "
    f"Heartbeat) | ConvertTo-Json {DEPTH}"
)
# The whole inventory in one round trip: one object whose properties are the lists.
INVENTORY = """[pscustomobject]@{
Host = (Get-VMHost | Select-Object -Property ComputerName, LogicalProcessorCount, MemoryCapacity, VirtualHardDiskPath, VirtualMachinePath)
Volumes = @(Get-Volume | Select-Object -Property DriveLetter, FileSystem, Size, SizeRemaining)
Switches = @(Get-VMSwitch | Select-Object -Property Name, SwitchType)
VMs = @(Get-VM | Select-Object -Property Name, Generation, ProcessorCount, MemoryStartup, State, Path, Notes, Heartbeat)
Disks = @(Get-VM | Get-VMHardDiskDrive | Select-Object -Property VMName, ControllerType, ControllerNumber, ControllerLocation, Path)
Vhds = @(Get-VM | Get-VMHardDiskDrive | Get-VHD | Select-Object -Property Path, VhdFormat, VhdType, Size)
Nics = @(Get-VM | Get-VMNetworkAdapter | Select-Object -Property VMName, Name, SwitchName, MacAddress, DynamicMacAddressEnabled, IsLegacy, VlanSetting)
Checkpoints = @(Get-VM | Get-VMSnapshot | Select-Object -Property VMName, Name)
} | ConvertTo-Json -Depth 5 -Compress"""

VM_STATE = (
    f"Get-VM -Name $hv.name | Select-Object -Property Name, State, Notes, Heartbeat | ConvertTo-Json {DEPTH}"
)

# IPAddresses is what the guest's KVP daemon reports (empty without one): the replica's proof of its network.
VM_ADDRESSES = f"@(Get-VMNetworkAdapter -VMName $hv.name | Select-Object -Property Name, MacAddress, IPAddresses) | ConvertTo-Json {DEPTH}"

TEST_PATH = f"Test-Path -LiteralPath $hv.path | ConvertTo-Json {DEPTH}"
GET_VHD = f"Get-VHD -Path $hv.path | Select-Object -Property Path, VhdType, Size, Attached, DiskNumber | ConvertTo-Json {DEPTH}"
NEW_VHD = {
    "Dynamic": "$null = New-VHD -Path $hv.path -SizeBytes $hv.size -Dynamic",
    "Fixed": "$null = New-VHD -Path $hv.path -SizeBytes $hv.size -Fixed",
}
REMOVE_FILE = "Remove-Item -LiteralPath $hv.path -Force"
COPY_FILE = "Copy-Item -LiteralPath $hv.source -Destination $hv.path"
MOUNT_VHD = f"Mount-VHD -Path $hv.path -NoDriveLetter -Passthru | Select-Object -Property Path, DiskNumber | ConvertTo-Json {DEPTH}"
DISMOUNT_VHD = "Dismount-VHD -Path $hv.path"
# Storage module: an offline disk has no volumes mounted from it, so the host neither mounts the
# partitions a pass writes nor refuses the agent's raw writes to sectors of a mounted volume.
SET_DISK_OFFLINE = "Set-Disk -Number $hv.number -IsOffline $true"

NEW_VM = (
    "$null = New-VM -Name $hv.name -Generation $hv.generation -MemoryStartupBytes $hv.memory -Path $hv.path -NoVHD\n"
    "Set-VM -Name $hv.name -ProcessorCount $hv.cpus -Notes $hv.notes\n"
    "Remove-VMNetworkAdapter -VMName $hv.name -Name 'Network Adapter'"
)
REMOVE_GEN1_DVD = "Remove-VMDvdDrive -VMName $hv.name -ControllerNumber 1 -ControllerLocation 0"
SCSI_CONTROLLERS = f"@(Get-VMScsiController -VMName $hv.name | Select-Object -Property ControllerNumber) | ConvertTo-Json {DEPTH}"
ADD_SCSI_CONTROLLER = "Add-VMScsiController -VMName $hv.name"
ADD_DISK = (
    "Add-VMHardDiskDrive -VMName $hv.name -Path $hv.path -ControllerType $hv.controller "
    "-ControllerNumber $hv.number -ControllerLocation $hv.location"
)


def add_nic(*, switch: bool, static_mac: bool) -> str:
    """Add-VMNetworkAdapter, with -SwitchName (a connected NIC) and -StaticMacAddress (a kept MAC) when asked."""
    body = "Add-VMNetworkAdapter -VMName $hv.name -Name $hv.nic -IsLegacy $hv.legacy"
    if switch:
        body += " -SwitchName $hv.switch"
    if static_mac:
        body += " -StaticMacAddress $hv.mac"
    return body


SET_VLAN = "Set-VMNetworkAdapterVlan -VMName $hv.name -VMNetworkAdapterName $hv.nic -Access -VlanId $hv.vlan"
REMOVE_VM = "Remove-VM -Name $hv.name -Force"
START_VM = "Start-VM -Name $hv.name"
STOP_VM = {
    "shutdown": "Stop-VM -Name $hv.name -Force",
    "turnoff": "Stop-VM -Name $hv.name -TurnOff",
}

# The recovery appliance (appliance.py): its drives, a VHDX hot-added on SCSI and hot-removed again.
VM_DRIVES = f"@(Get-VMHardDiskDrive -VMName $hv.name | Select-Object -Property ControllerType, ControllerNumber, ControllerLocation, Path) | ConvertTo-Json {DEPTH}"
REMOVE_DISK = (
    "Remove-VMHardDiskDrive -VMName $hv.name -ControllerType $hv.controller "
    "-ControllerNumber $hv.number -ControllerLocation $hv.location"
)
