# ruff: noqa: E501
"""An in-memory Hyper-V host for the WinRM stand-in, with its virtual disks as real files on disk.

The cmdlets, their parameter names, types and value sets follow Microsoft's Hyper-V and Storage module
reference (learn.microsoft.com/powershell/module/hyper-v, .../storage); only the parameters hvmigrate
uses are accepted, every other name is refused as PowerShell refuses an unknown one. The rules Hyper-V
enforces and a migration can trip over are enforced here with Hyper-V's wording: one VM per name, IDE only
on generation 1 (2 controllers x 2 locations, the DVD drive New-VM adds on IDE 1:0), SCSI 4 controllers x
64 locations, 8 synthetic + 4 legacy NICs (legacy on generation 1 only), switches that exist, a volume
that is full, a VHD in use by a VM or mounted on the host; and a running VM's hot-plug rules: a VHDX is
hot-added and hot-removed on SCSI only (IDE changes need the VM off), and no controller is added to it.

A VM's guest boots from its disk's bytes (hyperv_guest.py); a test bed may instead have a service here
play it (``played``: the heartbeat and the addresses the guest's KVP daemon would report), as the test
sshd plays a recovery appliance's guest.

Each VHDX is a *raw sparse file standing for the VHDX's contents*: ``D:\\VMs\\a.vhdx`` lives at
``<root>/D/VMs/a.vhdx.raw``. Mount-VHD gives it a disk number N and publishes it as
``<root>/devices/PhysicalDriveN`` (a symlink to the raw file): the stand-in's view of ``\\\\.\\PhysicalDriveN``,
which the data plane writes in tests. Enums are kept as `PSEnum` so ConvertTo-Json prints their numbers,
as Windows PowerShell 5.1 does.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hyperv_guest import GuestState, boot, boot_drive
from .powershell import Cmdlet, Param, PSError, PSObject

GiB = 1024**3
MAX_SYNTHETIC_NICS = 8
MAX_LEGACY_NICS = 4
MAX_SCSI_CONTROLLERS = 4
SCSI_LOCATIONS = 64


@dataclass(frozen=True)
class PSEnum:
    name: str
    value: int

    def __str__(self) -> str:
        return self.name


# Microsoft.HyperV.PowerShell enums (numbers as ConvertTo-Json prints them)
VM_STATE = {"Running": 2, "Off": 3}
CONTROLLER_TYPE = {"IDE": 0, "SCSI": 1, "PMEM": 2}
VHD_TYPE = {"Fixed": 2, "Dynamic": 3, "Differencing": 4}
VHD_FORMAT = {"VHD": 2, "VHDX": 3}
SWITCH_TYPE = {"Private": 0, "Internal": 1, "External": 2}
VLAN_MODE = {"Untagged": 0, "Access": 1, "Trunk": 2}
VM_HEARTBEAT = {  # Microsoft.HyperV.PowerShell.VMHeartbeatStatus
    "Unknown": 0,
    "Disabled": 1,
    "NoContact": 2,
    "Error": 3,
    "LostCommunication": 4,
    "OkApplicationsUnknown": 5,
    "OkApplicationsHealthy": 6,
    "OkApplicationsCritical": 7,
    "Paused": 8,
}


def enum(table: dict[str, int], name: str) -> PSEnum:
    return PSEnum(name, table[name])


@dataclass
class Drive:
    controller: str  # IDE | SCSI
    number: int
    location: int
    path: str | None  # None: a DVD drive


@dataclass
class Nic:
    name: str
    switch: str | None
    mac: str
    static: bool
    legacy: bool
    vlan: int | None = None


@dataclass
class VM:
    name: str
    generation: int
    memory: int
    path: str
    processors: int = 1
    notes: str = ""
    state: str = "Off"
    scsi_controllers: int = 1
    drives: list[Drive] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    guest: GuestState | None = None  # what the guest's integration services report while it runs


class HypervHost:
    """The host: volumes (drive letter -> capacity), switches, VMs, VHD files, mounted disks."""

    def __init__(
        self,
        root: Path,
        *,
        name: str = "HV01",
        volumes: dict[str, int] | None = None,
        switches: dict[str, str] | None = None,
        python: str | None = None,
    ) -> None:
        self.root = root
        self.name = name
        self.python = python  # where CPython is installed (C:\Python311\python.exe); None: not at all
        self.volumes = volumes or {"C": 40 * GiB, "D": 2 * GiB}
        self.switches = switches or {"LAN": "External", "Isolated": "Private"}
        self.vms: dict[str, VM] = {}  # lower-case name -> VM
        self.vhds: dict[str, dict[str, Any]] = {}  # lower-case path -> {path, type, size}
        self.mounted: dict[str, int] = {}  # lower-case path -> disk number
        self.offline: set[int] = set()  # mounted disks set offline (Set-Disk -IsOffline $true)
        self.lock = threading.RLock()
        self._mac_counter = 0
        self.fail_on: dict[str, str] = {}  # cmdlet -> error message: a host failing half-way, for tests
        self.played: dict[str, GuestState] = {}  # lower-case VM name -> the guest a test-bed service plays
        (root / "devices").mkdir(parents=True, exist_ok=True)
        for letter in self.volumes:
            (root / letter).mkdir(exist_ok=True)

    # ------------------------------------------------------------ files

    def local(self, win_path: str) -> Path:
        """The real file standing for a Windows path on one of the host's volumes."""
        match = re.fullmatch(r"([A-Za-z]):\\(.+)", win_path)
        if match is None or match.group(1).upper() not in self.volumes:
            raise PSError(
                f"Cannot find drive. A drive with the name '{win_path.split(':')[0]}' does not exist."
                if ":" in win_path
                else f"The path '{win_path}' is not an absolute path on the host.",
                category="ObjectNotFound",
                error_id="DriveNotFound",
            )
        parts = match.group(2).split("\\")
        if any(p in ("", ".", "..") or "/" in p or "\0" in p for p in parts):
            raise PSError(f"The path '{win_path}' is not valid.", error_id="InvalidPath")
        return self.root.joinpath(match.group(1).upper(), *parts)

    def raw_file(self, win_path: str) -> Path:
        local = self.local(win_path)
        return local.with_name(local.name + ".raw")

    def device(self, number: int) -> Path:
        return self.root / "devices" / f"PhysicalDrive{number}"

    def agent_names(self) -> dict[str, Path]:
        """Windows names an agent on the host can open: each mounted disk and each volume's root."""
        with self.lock:
            names = {f"\\\\.\\PhysicalDrive{n}": self.device(n) for n in self.mounted.values()}
            names.update({f"{letter}:": self.root / letter for letter in self.volumes})
        return names

    def _used(self, letter: str) -> int:
        used = 0
        for info in self.vhds.values():
            if info["path"][0].upper() != letter:
                continue
            raw = self.raw_file(info["path"])
            used += info["size"] if info["type"] == "Fixed" else raw.stat().st_blocks * 512 + 4 * 1024**2
        return used

    def free(self, letter: str) -> int:
        return max(0, self.volumes[letter] - self._used(letter))

    # ------------------------------------------------------------ lookups

    def vm(self, name: str, cmdlet: str) -> VM:
        found = self.vms.get(name.lower())
        if found is None:
            raise PSError(
                f'Hyper-V was unable to find a virtual machine with name "{name}".',
                category="InvalidArgument",
                error_id=f"InvalidParameter,Microsoft.HyperV.PowerShell.Commands.{cmdlet.replace('-', '')}",
                cmdlet=cmdlet,
            )
        return found

    def _in_use(self, path: str) -> str | None:
        for vm in self.vms.values():
            if any(d.path and d.path.lower() == path.lower() for d in vm.drives):
                return f"virtual machine '{vm.name}'"
        if path.lower() in self.mounted:
            return "the host (mounted)"
        return None

    def check_fault(self, cmdlet: str) -> None:
        message = self.fail_on.pop(cmdlet, None)
        if message:
            raise PSError(message, category="NotSpecified", error_id=f"Unspecified,{cmdlet}", cmdlet=cmdlet)

    # ------------------------------------------------------------ objects

    def vm_object(self, vm: VM) -> PSObject:
        return PSObject(
            "Microsoft.HyperV.PowerShell.VirtualMachine",
            {
                "Name": vm.name,
                "Generation": vm.generation,
                "ProcessorCount": vm.processors,
                "MemoryStartup": vm.memory,
                "State": enum(VM_STATE, vm.state),
                "Path": vm.path,
                "Notes": vm.notes,
                "Heartbeat": (
                    None
                    if vm.state != "Running"
                    else enum(VM_HEARTBEAT, (vm.guest and vm.guest.heartbeat) or "NoContact")
                ),  # hyperv_guest.py: what the guest's integration services say, from its disk's bytes
            },
        )

    def drive_object(self, vm: VM, drive: Drive) -> PSObject:
        return PSObject(
            "Microsoft.HyperV.PowerShell.HardDiskDrive",
            {
                "VMName": vm.name,
                "ControllerType": enum(CONTROLLER_TYPE, drive.controller),
                "ControllerNumber": drive.number,
                "ControllerLocation": drive.location,
                "Path": drive.path,
            },
        )

    def vhd_object(self, info: dict[str, Any]) -> PSObject:
        path = info["path"]
        number = self.mounted.get(path.lower())
        raw = self.raw_file(path)
        return PSObject(
            "Microsoft.Vhd.PowerShell.VirtualHardDisk",
            {
                "Path": path,
                "VhdFormat": enum(VHD_FORMAT, "VHDX" if path.lower().endswith(".vhdx") else "VHD"),
                "VhdType": enum(VHD_TYPE, info["type"]),
                "Size": info["size"],
                "FileSize": info["size"] if info["type"] == "Fixed" else raw.stat().st_blocks * 512,
                "Attached": number is not None or self._in_use(path) is not None,
                "DiskNumber": number,
            },
        )


def json_enums(value: Any) -> Any:
    return value.value if isinstance(value, PSEnum) else value


# ---------------------------------------------------------------- the cmdlets


def build_cmdlets(host: HypervHost) -> dict[str, Cmdlet]:
    """The cmdlet registry the interpreter runs: name -> parameters (from Microsoft's docs) and behaviour."""
    S, S_ARR, SW = Param("string"), Param("string[]"), Param("switch")
    ctype = Param("enum", ("IDE", "SCSI", "PMEM"), "Microsoft.HyperV.PowerShell.ControllerType")
    cmdlets: list[Cmdlet] = []

    def add(
        name: str,
        params: dict[str, Param],
        required: tuple[str, ...] = (),
        pipeline: str | None = None,
        by_value: str | None = None,
    ):
        def register(fn):
            def run(bound: dict[str, Any], piped: list[Any]) -> list[Any]:
                with host.lock:
                    host.check_fault(name)
                    return fn(bound, piped)

            cmdlets.append(Cmdlet(name, params, run, required, pipeline, by_value))
            return fn

        return register

    def one(names: list[str], cmdlet: str) -> VM:
        if len(names) != 1:
            raise PSError(f"{cmdlet}: the stand-in takes exactly one VM name.", cmdlet=cmdlet)
        return host.vm(names[0], cmdlet)

    # -- host facts
    @add("Get-VMHost", {})
    def get_vmhost(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        return [
            PSObject(
                "Microsoft.HyperV.PowerShell.VMHost",
                {
                    "ComputerName": host.name,
                    "LogicalProcessorCount": 8,
                    "MemoryCapacity": 64 * GiB,
                    "VirtualHardDiskPath": "C:\\Users\\Public\\Documents\\Hyper-V\\Virtual Hard Disks",
                    "VirtualMachinePath": "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V",
                },
            )
        ]

    @add("Get-Volume", {})
    def get_volume(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        return [
            PSObject(
                "Microsoft.Management.Infrastructure.CimInstance#ROOT/Microsoft/Windows/Storage/MSFT_Volume",
                {
                    "DriveLetter": letter,
                    "FileSystem": "NTFS",
                    "Size": size,
                    "SizeRemaining": host.free(letter),
                },
            )
            for letter, size in sorted(host.volumes.items())
        ]

    @add("Get-VMSwitch", {})
    def get_vmswitch(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        return [
            PSObject("Microsoft.HyperV.PowerShell.VMSwitch", {"Name": n, "SwitchType": enum(SWITCH_TYPE, t)})
            for n, t in host.switches.items()
        ]

    # -- VMs
    @add("Get-VM", {"Name": S_ARR})
    def get_vm(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        if "Name" in b:
            return [host.vm_object(host.vm(n, "Get-VM")) for n in b["Name"]]
        return [host.vm_object(vm) for vm in host.vms.values()]

    @add(
        "New-VM",
        {
            "Name": S,
            "Generation": Param("int16", minimum=1, maximum=2),
            "MemoryStartupBytes": Param("int64"),
            "Path": S,
            "NoVHD": SW,
        },
        ("Name",),
    )
    def new_vm(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        name = b["Name"]
        if not name or len(name) > 100:
            raise PSError("The virtual machine name is not valid: use 1 to 100 characters.", cmdlet="New-VM")
        if name.lower() in host.vms:
            raise PSError(
                f"Failed to create a new virtual machine. An object named '{name}' already exists.",
                category="InvalidArgument",
                error_id="InvalidParameter,Microsoft.HyperV.PowerShell.Commands.NewVM",
                cmdlet="New-VM",
            )
        memory = b.get("MemoryStartupBytes", 512 * 1024**2)
        if memory < 32 * 1024**2 or memory % (2 * 1024**2):
            raise PSError(
                f"Failed to modify device 'Memory'. Invalid startup memory amount assigned for '{name}'. The "
                "minimum amount of memory you can assign to this virtual machine is '32' MB; the amount must "
                "be a multiple of 2 MB.",
                cmdlet="New-VM",
            )
        home = b.get("Path", "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V")
        host.local(home)  # the drive must exist
        generation = b.get("Generation", 1)
        vm = VM(name, generation, memory, home)
        if generation == 1:
            vm.drives.append(Drive("IDE", 1, 0, None))  # New-VM's DVD drive
        vm.nics.append(Nic("Network Adapter", None, _mac(host), False, False))
        host.vms[name.lower()] = vm
        return [host.vm_object(vm)]

    @add(
        "Set-VM",
        {"Name": S_ARR, "ProcessorCount": Param("int64", minimum=1, maximum=240), "Notes": S},
        ("Name",),
    )
    def set_vm(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["Name"], "Set-VM")
        if "ProcessorCount" in b:
            if vm.state != "Off":
                raise PSError(
                    "Cannot change the processor count of a running virtual machine.", cmdlet="Set-VM"
                )
            if b["ProcessorCount"] > 8:
                raise PSError(
                    f"Failed to modify device 'Processor'. The virtual machine '{vm.name}' asks for "
                    f"{b['ProcessorCount']} processors; the host has 8 logical processors.",
                    cmdlet="Set-VM",
                )
            vm.processors = b["ProcessorCount"]
        if "Notes" in b:
            vm.notes = b["Notes"]
        return []

    @add("Remove-VM", {"Name": S_ARR, "Force": SW}, ("Name",))
    def remove_vm(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["Name"], "Remove-VM")
        if vm.state != "Off":
            raise PSError(
                f"The operation cannot be performed while the virtual machine '{vm.name}' is in its current "
                "state.",
                category="InvalidOperation",
                cmdlet="Remove-VM",
            )
        del host.vms[vm.name.lower()]
        return []

    @add("Start-VM", {"Name": S_ARR}, ("Name",))
    def start_vm(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["Name"], "Start-VM")
        for drive in vm.drives:
            if drive.path and drive.path.lower() in host.mounted:
                raise PSError(
                    f"'{vm.name}' failed to start. The process cannot access the file '{drive.path}' because "
                    "it is being used by another process.",
                    cmdlet="Start-VM",
                )
        vm.state = "Running"
        drive = boot_drive(vm)
        played = host.played.get(vm.name.lower())
        vm.guest = played if played is not None else boot(vm, host.raw_file(drive) if drive else None)
        return []

    @add("Stop-VM", {"Name": S_ARR, "Force": SW, "TurnOff": SW}, ("Name",))
    def stop_vm(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["Name"], "Stop-VM")
        vm.state, vm.guest = "Off", None
        return []

    # -- virtual hard disks
    @add(
        "New-VHD",
        {"Path": S, "SizeBytes": Param("uint64", minimum=3 * 1024**2), "Dynamic": SW, "Fixed": SW},
        ("Path", "SizeBytes"),
    )
    def new_vhd(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        path, size = b["Path"], b["SizeBytes"]
        if b.get("Dynamic") and b.get("Fixed"):
            raise PSError(
                "Parameter set cannot be resolved using the specified named parameters.",
                error_id="AmbiguousParameterSet,Microsoft.Vhd.PowerShell.Cmdlets.NewVhd",
                cmdlet="New-VHD",
            )
        if not path.lower().endswith((".vhdx", ".vhd")):
            raise PSError(
                f"Failed to create the virtual hard disk. The file '{path}' must be a .vhd or .vhdx.",
                cmdlet="New-VHD",
            )
        if size % 512:
            raise PSError(
                "The size of the virtual hard disk must be a multiple of 512 bytes.", cmdlet="New-VHD"
            )
        raw = host.raw_file(path)
        if raw.exists() or path.lower() in host.vhds:
            raise PSError(
                f"Failed to create the virtual hard disk. The file '{path}' already exists.",
                category="ResourceExists",
                cmdlet="New-VHD",
            )
        kind = "Fixed" if b.get("Fixed") else "Dynamic"
        needed = size if kind == "Fixed" else 4 * 1024**2
        letter = path[0].upper()
        if needed > host.free(letter):
            raise PSError(
                f"Failed to create the virtual hard disk '{path}'. There is not enough space on the disk.",
                category="ResourceUnavailable",
                cmdlet="New-VHD",
            )
        raw.parent.mkdir(parents=True, exist_ok=True)
        with open(raw, "wb") as handle:
            handle.truncate(size)
        host.vhds[path.lower()] = {"path": path, "type": kind, "size": size}
        return [host.vhd_object(host.vhds[path.lower()])]

    def vhd(path: str, cmdlet: str) -> dict[str, Any]:
        info = host.vhds.get(path.lower())
        if info is None:
            raise PSError(
                f"The system cannot find the file specified: '{path}'.",
                category="ObjectNotFound",
                error_id=f"ObjectNotFound,{cmdlet}",
                cmdlet=cmdlet,
            )
        return info

    @add("Get-VHD", {"Path": S_ARR}, ("Path",), pipeline="Path")
    def get_vhd(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        return [host.vhd_object(vhd(p, "Get-VHD")) for p in b["Path"]]

    @add("Copy-Item", {"LiteralPath": S_ARR, "Destination": S}, ("LiteralPath", "Destination"))
    def copy_item(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        (source,) = b["LiteralPath"]
        info = vhd(source, "Copy-Item")
        target = b["Destination"]
        if target.lower() in host.vhds:
            raise PSError(f"The file '{target}' already exists.", cmdlet="Copy-Item")
        needed = info["size"] if info["type"] == "Fixed" else host.raw_file(source).stat().st_blocks * 512
        if needed > host.free(target[0].upper()):
            raise PSError(
                "There is not enough space on the disk.", category="ResourceUnavailable", cmdlet="Copy-Item"
            )
        destination = host.raw_file(target)
        destination.parent.mkdir(parents=True, exist_ok=True)
        _sparse_copy(host.raw_file(source), destination)
        host.vhds[target.lower()] = {**info, "path": target}
        return []

    @add("Test-Path", {"LiteralPath": S_ARR}, ("LiteralPath",))
    def test_path(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        out = []
        for path in b["LiteralPath"]:
            local = host.local(path)
            out.append(path.lower() in host.vhds or local.is_dir() or local.is_file())
        return out

    @add("Remove-Item", {"LiteralPath": S_ARR, "Force": SW}, ("LiteralPath",))
    def remove_item(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        for path in b["LiteralPath"]:
            if path.lower() not in host.vhds and host.local(path).is_file():
                host.local(path).unlink()  # a plain file (a block map the agent kept beside its VHDX)
                continue
            info = vhd(path, "Remove-Item")
            user = host._in_use(path)
            if user:
                raise PSError(
                    f"Cannot remove item {path}: The process cannot access the file '{path}' because it is "
                    f"being used by another process ({user}).",
                    category="WriteError",
                    cmdlet="Remove-Item",
                )
            host.raw_file(info["path"]).unlink()
            del host.vhds[path.lower()]
        return []

    @add("Mount-VHD", {"Path": S_ARR, "NoDriveLetter": SW, "Passthru": SW}, ("Path",))
    def mount_vhd(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        out = []
        for path in b["Path"]:
            info = vhd(path, "Mount-VHD")
            if path.lower() in host.mounted:
                raise PSError(
                    f"The disk '{path}' is already mounted.", category="ResourceExists", cmdlet="Mount-VHD"
                )
            user = host._in_use(path)
            if user:
                raise PSError(
                    f"Failed to mount the disk. The process cannot access the file because it is "
                    f"being used by another process ({user}).",
                    cmdlet="Mount-VHD",
                )
            if not b.get("NoDriveLetter"):
                raise PSError(
                    "The stand-in mounts only with -NoDriveLetter (hvmigrate never wants a drive "
                    "letter on the host).",
                    cmdlet="Mount-VHD",
                )
            number = 1 + max([0, *host.mounted.values()])
            host.mounted[path.lower()] = number
            device = host.device(number)
            device.unlink(missing_ok=True)
            device.symlink_to(host.raw_file(info["path"]))
            if b.get("Passthru"):
                out.append(host.vhd_object(info))
        return out

    @add("Dismount-VHD", {"Path": S_ARR}, ("Path",))
    def dismount_vhd(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        for path in b["Path"]:
            vhd(path, "Dismount-VHD")
            number = host.mounted.pop(path.lower(), None)
            if number is None:
                raise PSError(
                    f"The disk '{path}' is not attached.", category="InvalidOperation", cmdlet="Dismount-VHD"
                )
            host.device(number).unlink(missing_ok=True)
            host.offline.discard(number)
        return []

    # Set-Disk (Storage): the ByNumber parameter sets, one setting per call as Microsoft lists them
    # (PartitionStyle, IsOffline, IsReadOnly, Signature, Guid); the stand-in carries out IsOffline only.
    @add(
        "Set-Disk",
        {
            "Number": Param("int64", minimum=0, maximum=2**32 - 1),
            "IsOffline": Param("bool"),
            "IsReadOnly": Param("bool"),
            "Signature": Param("int64", minimum=0, maximum=2**32 - 1),
            "Guid": S,
            "PartitionStyle": Param("enum", ("MBR", "GPT"), "PartitionStyle"),
        },
        ("Number",),
    )
    def set_disk(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        settings = [
            name for name in ("IsOffline", "IsReadOnly", "Signature", "Guid", "PartitionStyle") if name in b
        ]
        if len(settings) != 1:
            raise PSError(
                "Parameter set cannot be resolved using the specified named parameters.",
                category="InvalidArgument",
                error_id="AmbiguousParameterSet,Set-Disk",
                cmdlet="Set-Disk",
            )
        number = b["Number"]
        if number not in host.mounted.values():
            raise PSError(
                f"No MSFT_Disk objects found with property 'Number' equal to '{number}'.  Verify the value of "
                "the property and retry.",
                category="ObjectNotFound",
                error_id="CmdletizationQuery_NotFound_Number,Set-Disk",
                cmdlet="Set-Disk",
            )
        if settings != ["IsOffline"]:
            raise PSError(f"The stand-in sets only -IsOffline, not -{settings[0]}.", cmdlet="Set-Disk")
        if b["IsOffline"]:
            host.offline.add(number)
        else:
            host.offline.discard(number)
        return []

    # -- drives and controllers
    @add(
        "Get-VMHardDiskDrive",
        {"VMName": S_ARR, "VM": Param("object")},
        pipeline="VM",
        by_value="Microsoft.HyperV.PowerShell.VirtualMachine",
    )
    def get_drives(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = (
            host.vm(b["VM"]["Name"], "Get-VMHardDiskDrive")
            if "VM" in b
            else one(b["VMName"], "Get-VMHardDiskDrive")
        )
        return [host.drive_object(vm, d) for d in vm.drives if d.path]

    @add("Get-VMScsiController", {"VMName": S_ARR}, ("VMName",))
    def get_scsi(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["VMName"], "Get-VMScsiController")
        return [
            PSObject(
                "Microsoft.HyperV.PowerShell.VMScsiController", {"VMName": vm.name, "ControllerNumber": n}
            )
            for n in range(vm.scsi_controllers)
        ]

    @add("Add-VMScsiController", {"VMName": S_ARR}, ("VMName",))
    def add_scsi(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["VMName"], "Add-VMScsiController")
        if vm.state != "Off":
            raise PSError(
                f"Failed to add device 'SCSI Controller'. The virtual machine '{vm.name}' is running: a "
                "controller is added while it is off.",
                category="InvalidOperation",
                cmdlet="Add-VMScsiController",
            )
        if vm.scsi_controllers >= MAX_SCSI_CONTROLLERS:
            raise PSError(
                f"Failed to add device 'SCSI Controller'. '{vm.name}' already has the maximum of "
                f"{MAX_SCSI_CONTROLLERS} SCSI controllers.",
                cmdlet="Add-VMScsiController",
            )
        vm.scsi_controllers += 1
        return []

    @add(
        "Add-VMHardDiskDrive",
        {
            "VMName": S_ARR,
            "Path": S,
            "ControllerType": ctype,
            "ControllerNumber": Param("int32"),
            "ControllerLocation": Param("int32"),
        },
        ("VMName", "Path", "ControllerType", "ControllerNumber", "ControllerLocation"),
    )
    def add_drive(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["VMName"], "Add-VMHardDiskDrive")
        kind, number, location, path = (
            b["ControllerType"],
            b["ControllerNumber"],
            b["ControllerLocation"],
            b["Path"],
        )
        vhd(path, "Add-VMHardDiskDrive")
        if kind == "PMEM":
            raise PSError(
                "The stand-in does not model persistent memory controllers.", cmdlet="Add-VMHardDiskDrive"
            )
        if kind == "IDE":
            if vm.generation == 2:
                raise PSError(
                    f"Failed to add device 'Virtual Hard Disk'. Generation 2 virtual machine '{vm.name}' does "
                    "not support IDE controllers; attach the disk to a SCSI controller.",
                    category="InvalidArgument",
                    cmdlet="Add-VMHardDiskDrive",
                )
            if vm.state != "Off":
                raise PSError(
                    f"Cannot add a disk to an IDE controller of running virtual machine '{vm.name}'.",
                    cmdlet="Add-VMHardDiskDrive",
                )
            if not (0 <= number <= 1 and 0 <= location <= 1):
                raise PSError(
                    f"IDE controller {number} location {location} does not exist (IDE has controllers "
                    "0-1, locations 0-1).",
                    cmdlet="Add-VMHardDiskDrive",
                )
        elif not (0 <= number < vm.scsi_controllers and 0 <= location < SCSI_LOCATIONS):
            raise PSError(
                f"SCSI controller {number} location {location} does not exist on '{vm.name}' (it has "
                f"{vm.scsi_controllers} SCSI controller(s), locations 0-{SCSI_LOCATIONS - 1}).",
                cmdlet="Add-VMHardDiskDrive",
            )
        if any(d.controller == kind and d.number == number and d.location == location for d in vm.drives):
            raise PSError(
                f"Failed to add device 'Virtual Hard Disk'. {kind} {number}:{location} of '{vm.name}' "
                "is already in use.",
                category="ResourceExists",
                cmdlet="Add-VMHardDiskDrive",
            )
        user = host._in_use(path)
        if user:
            raise PSError(
                f"Failed to add device 'Virtual Hard Disk'. The process cannot access the file "
                f"'{path}' because it is being used by another process ({user}).",
                cmdlet="Add-VMHardDiskDrive",
            )
        vm.drives.append(Drive(kind, number, location, path))
        return []

    @add(
        "Remove-VMHardDiskDrive",
        {
            "VMName": S_ARR,
            "ControllerType": ctype,
            "ControllerNumber": Param("int32"),
            "ControllerLocation": Param("int32"),
        },
        ("VMName", "ControllerType", "ControllerNumber", "ControllerLocation"),
    )
    def remove_drive(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["VMName"], "Remove-VMHardDiskDrive")
        if b["ControllerType"] == "IDE" and vm.state != "Off":
            raise PSError(
                f"Cannot remove a disk from an IDE controller of running virtual machine '{vm.name}'.",
                cmdlet="Remove-VMHardDiskDrive",
            )
        for drive in vm.drives:
            if (drive.controller, drive.number, drive.location) == (
                b["ControllerType"],
                b["ControllerNumber"],
                b["ControllerLocation"],
            ) and drive.path:
                vm.drives.remove(drive)
                return []
        raise PSError(
            "No hard disk drive at that controller location.",
            category="ObjectNotFound",
            cmdlet="Remove-VMHardDiskDrive",
        )

    @add(
        "Remove-VMDvdDrive",
        {"VMName": S_ARR, "ControllerNumber": Param("int32"), "ControllerLocation": Param("int32")},
        ("VMName", "ControllerNumber", "ControllerLocation"),
    )
    def remove_dvd(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["VMName"], "Remove-VMDvdDrive")
        for drive in vm.drives:
            if drive.path is None and (drive.number, drive.location) == (
                b["ControllerNumber"],
                b["ControllerLocation"],
            ):
                vm.drives.remove(drive)
                return []
        raise PSError(
            "No DVD drive at that controller location.", category="ObjectNotFound", cmdlet="Remove-VMDvdDrive"
        )

    # -- NICs
    @add(
        "Get-VMNetworkAdapter",
        {"VMName": S_ARR, "VM": Param("object")},
        pipeline="VM",
        by_value="Microsoft.HyperV.PowerShell.VirtualMachine",
    )
    def get_nics(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = (
            host.vm(b["VM"]["Name"], "Get-VMNetworkAdapter")
            if "VM" in b
            else one(b["VMName"], "Get-VMNetworkAdapter")
        )
        return [
            PSObject(
                "Microsoft.HyperV.PowerShell.VMNetworkAdapter",
                {
                    "VMName": vm.name,
                    "Name": nic.name,
                    "SwitchName": nic.switch,
                    "MacAddress": nic.mac,
                    "DynamicMacAddressEnabled": not nic.static,
                    "IsLegacy": nic.legacy,
                    "IPAddresses": list(vm.guest.addresses.get(nic.name, ())) if vm.guest else [],
                    "VlanSetting": PSObject(
                        "Microsoft.HyperV.PowerShell.VMNetworkAdapterVlanSetting",
                        {
                            "OperationMode": enum(VLAN_MODE, "Access" if nic.vlan else "Untagged"),
                            "AccessVlanId": nic.vlan or 0,
                        },
                    ),
                },
            )
            for nic in vm.nics
        ]

    @add(
        "Add-VMNetworkAdapter",
        {"VMName": S_ARR, "SwitchName": S, "Name": S, "StaticMacAddress": S, "IsLegacy": Param("bool")},
        ("VMName",),
    )
    def add_nic(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["VMName"], "Add-VMNetworkAdapter")
        legacy = b.get("IsLegacy", False)
        if legacy and vm.generation == 2:
            raise PSError(
                f"Generation 2 virtual machine '{vm.name}' does not support legacy network adapters.",
                cmdlet="Add-VMNetworkAdapter",
            )
        count = sum(1 for n in vm.nics if n.legacy == legacy)
        limit = MAX_LEGACY_NICS if legacy else MAX_SYNTHETIC_NICS
        if count >= limit:
            raise PSError(
                f"Failed to add device '{'Legacy Network Adapter' if legacy else 'Synthetic Ethernet Port'}'. "
                f"'{vm.name}' already has the maximum of {limit} such network adapters.",
                category="InvalidArgument",
                cmdlet="Add-VMNetworkAdapter",
            )
        switch = b.get("SwitchName")
        if switch is not None and switch not in host.switches:
            raise PSError(
                f'Hyper-V was unable to find a virtual switch with name "{switch}".',
                category="InvalidArgument",
                cmdlet="Add-VMNetworkAdapter",
            )
        mac = b.get("StaticMacAddress")
        if mac is not None and not re.fullmatch(r"[0-9A-Fa-f]{12}", mac):
            raise PSError(
                f"Cannot bind parameter 'StaticMacAddress'. '{mac}' is not a valid MAC address: give "
                "12 hexadecimal digits.",
                cmdlet="Add-VMNetworkAdapter",
            )
        vm.nics.append(
            Nic(
                b.get("Name", "Network Adapter"), switch, (mac or _mac(host)).upper(), mac is not None, legacy
            )
        )
        return []

    def nic(vm: VM, name: str, cmdlet: str) -> Nic:
        found = [n for n in vm.nics if n.name.lower() == name.lower()]
        if len(found) != 1:
            raise PSError(
                f"Hyper-V was unable to find exactly one network adapter named \"{name}\" on '{vm.name}'.",
                category="ObjectNotFound",
                cmdlet=cmdlet,
            )
        return found[0]

    @add("Remove-VMNetworkAdapter", {"VMName": S_ARR, "Name": S}, ("VMName", "Name"))
    def remove_nic(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["VMName"], "Remove-VMNetworkAdapter")
        vm.nics.remove(nic(vm, b["Name"], "Remove-VMNetworkAdapter"))
        return []

    @add("Set-VMNetworkAdapter", {"VMName": S_ARR, "Name": S, "StaticMacAddress": S}, ("VMName", "Name"))
    def set_nic(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["VMName"], "Set-VMNetworkAdapter")
        found = nic(vm, b["Name"], "Set-VMNetworkAdapter")
        if "StaticMacAddress" in b:
            found.mac, found.static = b["StaticMacAddress"].upper(), True
        return []

    @add(
        "Set-VMNetworkAdapterVlan",
        {
            "VMName": S_ARR,
            "VMNetworkAdapterName": S,
            "Access": SW,
            "VlanId": Param("int32", minimum=1, maximum=4094),
        },
        ("VMName", "VMNetworkAdapterName"),
    )
    def set_vlan(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["VMName"], "Set-VMNetworkAdapterVlan")
        found = nic(vm, b["VMNetworkAdapterName"], "Set-VMNetworkAdapterVlan")
        if not b.get("Access") or "VlanId" not in b:
            raise PSError(
                "The stand-in sets access-mode VLANs only: give -Access and -VlanId.",
                cmdlet="Set-VMNetworkAdapterVlan",
            )
        found.vlan = b["VlanId"]
        return []

    # -- checkpoints
    @add(
        "Get-VMSnapshot",
        {"VMName": S_ARR, "VM": Param("object")},
        pipeline="VM",
        by_value="Microsoft.HyperV.PowerShell.VirtualMachine",
    )
    def get_snapshots(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = host.vm(b["VM"]["Name"], "Get-VMSnapshot") if "VM" in b else one(b["VMName"], "Get-VMSnapshot")
        return [
            PSObject("Microsoft.HyperV.PowerShell.VMSnapshot", {"VMName": vm.name, "Name": s})
            for s in vm.snapshots
        ]

    @add("Checkpoint-VM", {"Name": S_ARR, "SnapshotName": S}, ("Name", "SnapshotName"))
    def checkpoint(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        one(b["Name"], "Checkpoint-VM").snapshots.append(b["SnapshotName"])
        return []

    @add("Remove-VMSnapshot", {"VMName": S_ARR, "Name": S_ARR}, ("VMName", "Name"))
    def remove_snapshot(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        vm = one(b["VMName"], "Remove-VMSnapshot")
        for name in b["Name"]:
            if name not in vm.snapshots:
                raise PSError(
                    f'Hyper-V was unable to find a checkpoint named "{name}".', cmdlet="Remove-VMSnapshot"
                )
            vm.snapshots.remove(name)
        return []

    from .ps_generic import generic_cmdlets  # it takes json_enums from here

    return {**generic_cmdlets(), **{c.name.lower(): c for c in cmdlets}}


def _mac(host: HypervHost) -> str:
    """A dynamic MAC from Hyper-V's default range (00-15-5D-xx-xx-xx)."""
    host._mac_counter += 1
    return f"00155D{host._mac_counter:06X}"


def _sparse_copy(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        dst.truncate(size)
        offset = 0
        while offset < size:
            try:
                data_at = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError:
                break
            hole_at = os.lseek(src.fileno(), data_at, os.SEEK_HOLE)
            src.seek(data_at)
            dst.seek(data_at)
            shutil.copyfileobj(_Limited(src, hole_at - data_at), dst)
            offset = hole_at


class _Limited:
    def __init__(self, handle: Any, remaining: int) -> None:
        self.handle, self.remaining = handle, remaining

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        size = self.remaining if size < 0 else min(size, self.remaining)
        data = self.handle.read(size)
        self.remaining -= len(data)
        return data
