"""Staging of a Windows replica: its first-boot script placed on the system volume and registered to run.

How the script gets to run, before anyone logs on, once: through Winlogon's setup hook. At boot Winlogon
reads ``HKLM\\SYSTEM\\Setup``; when ``SetupType`` is 2 it runs ``CmdLine`` as LocalSystem, waits for it,
then shows the logon screen (1 would reboot afterwards). Microsoft documents the hook in KB 939857 ("The
Windows Vista Setup program runs a script file to enable custom deployment tasks": CmdLine, SetupType,
SetupShutdownRequired); the values are the ones deployment tools and offline recovery use on current
Windows and Windows Server. The command first puts both values back, so the script runs once and a hung
script cannot block every later boot, then runs PowerShell on the script with its output in a log beside it.

Why not the others:
- ``RunOnce`` (SOFTWARE hive) runs at the first interactive logon, which a server may not see for weeks.
- A service entry in SYSTEM is what virt-v2v does (libguestfs-common ``mlcustomize/firstboot.ml``:
  ``ControlSet\\services\\firstboot``, Type 0x10, Start 2, ImagePath ``rhsrvany.exe -s firstboot``). The
  wrapper matters: a program that is not a service (cmd.exe, powershell.exe) never connects to the service
  control manager, which gives up after 30 s (event 7009, ServicesPipeTimeout), and rhsrvany is not in
  Debian, so this project has no binary to ship there.
- A scheduled task needs the undocumented binary TaskCache records; a local Group Policy startup script
  needs new folders and a gpt.ini version the policy engine agrees with.

The SYSTEM hive is edited with hivex (`hive`); the volume with ntfs-3g's tools (`ntfs`), never mounted.
Every change is recorded first: the original ``SetupType`` and ``CmdLine`` and whatever was at the script's
path go to a record file beside the script (written once, like Linux staging's /var/lib/hvmigrate), which
`revert_windows_staging` uses to put everything back. The script and the record live in
``Windows\\Temp``, where virt-v2v puts its PowerShell first-boot scripts too (ntfs-3g cannot make folders).
"""

from __future__ import annotations

import base64
import json
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .hive import REG_DWORD, RegValue, open_hive
from .ntfs import NtfsError, NtfsPartition, NtfsVolume, attached, ntfs_partitions
from .windows_firstboot import SCRIPT_NAME

__all__ = [
    "RECORD_PATH",
    "SCRIPT_PATH",
    "SYSTEM_HIVE",
    "StagingResult",
    "WindowsStagingError",
    "find_windows_volume",
    "firstboot_command",
    "revert_windows_staging",
    "script_bytes",
    "stage_windows",
]

SYSTEM_HIVE = "/Windows/System32/config/SYSTEM"
SCRIPT_DIR = "/Windows/Temp"
SCRIPT_PATH = f"{SCRIPT_DIR}/{SCRIPT_NAME}"
RECORD_PATH = f"{SCRIPT_DIR}/hvmigrate-staging.json"
LOG_NAME = "hvmigrate-firstboot.log"
SETUP_KEY = "Setup"
_HOOK = ("SetupType", "CmdLine")


class WindowsStagingError(RuntimeError):
    """Staging cannot go on; the message names the disk and says what to do."""


@dataclass(frozen=True)
class StagingResult:
    log: list[str]
    warnings: list[str]
    volume: str


def script_bytes(script: str) -> bytes:
    """The script file's bytes: UTF-8 with a byte-order mark, which Windows PowerShell 5.1 needs to read
    anything but ASCII as UTF-8 (it reads a file without one in the ANSI code page)."""
    return b"\xef\xbb\xbf" + script.encode()


def firstboot_command() -> str:
    """What Winlogon runs: reset the hook, then the script. cmd.exe expands %SystemRoot%; none of it is
    user data (addresses and names are inside the script's data block)."""
    script = "%SystemRoot%\\Temp\\" + SCRIPT_NAME
    log = "%SystemRoot%\\Temp\\" + LOG_NAME
    reset = "reg.exe add HKLM\\SYSTEM\\Setup /f /v"
    return (
        f"cmd.exe /d /c {reset} SetupType /t REG_DWORD /d 0"
        f' & {reset} CmdLine /t REG_SZ /d ""'
        " & %SystemRoot%\\System32\\WindowsPowerShell\\v1.0\\powershell.exe -NoProfile -NonInteractive"
        f" -ExecutionPolicy Bypass -File {script} > {log} 2>&1"
    )


def _hook_values() -> dict[str, RegValue]:
    return {"SetupType": RegValue.dword(2), "CmdLine": RegValue.sz(firstboot_command())}


def find_windows_volume(disk_path: Path | str) -> NtfsPartition | None:
    """The NTFS partition holding Windows\\System32\\config\\SYSTEM; None when the disk has none."""
    disk_path = Path(disk_path)
    if not disk_path.exists():
        raise WindowsStagingError(f"disk image {disk_path} does not exist")
    for partition in ntfs_partitions(disk_path):
        try:
            with attached(partition, writable=False) as volume:
                found = volume.resolve(SYSTEM_HIVE)
        except NtfsError:
            continue  # a damaged or foreign NTFS volume is not the one to stage
        if found is not None and not found[1]:
            return partition
    return None


def _windows_volume(disk_path: Path | str) -> NtfsPartition:
    partition = find_windows_volume(disk_path)
    if partition is None:
        raise WindowsStagingError(
            f"{disk_path}: no Windows system volume (NTFS holding Windows\\System32\\config\\SYSTEM) "
            "found to stage; check that the boot disk is the one the source boots from"
        )
    return partition


def _load_record(volume: NtfsVolume) -> dict[str, Any] | None:
    raw = volume.read(RECORD_PATH)
    return None if raw is None else json.loads(raw)


def _hive_dirty(data: bytes) -> bool:
    """The header's two sequence numbers differ: changes still sit in SYSTEM.LOG1/LOG2 only."""
    return data[:4] == b"regf" and data[4:8] != data[8:12]


def _edit_hive(volume: NtfsVolume, changes: dict[str, RegValue | None], data: bytes | None = None) -> bool:
    """Apply ``changes`` to SYSTEM\\Setup of the hive ``data`` (read from the volume when not given);
    whether anything changed."""
    data = data or volume.read(SYSTEM_HIVE)
    if data is None:
        raise WindowsStagingError(f"{volume.partition.describe()}: {SYSTEM_HIVE} vanished")
    with tempfile.TemporaryDirectory(prefix="hvmigrate-hive-") as tmp:
        local = Path(tmp) / "SYSTEM"
        local.write_bytes(data)
        with open_hive(local, write=True) as hive:
            before = hive.values(SETUP_KEY)
            wanted = {name: value for name, value in changes.items() if before.get(name) != value}
            if wanted:
                hive.set_values(SETUP_KEY, wanted)
                hive.commit()
        if wanted:
            volume.write(SYSTEM_HIVE, local.read_bytes())
    return bool(wanted)


def stage_windows(disk_path: Path | str, script: str) -> StagingResult:
    """Install the first-boot script and register it; idempotent (a re-run after a sync pass or a crash
    changes only what is not already so, and the record of the originals is written once)."""
    partition = _windows_volume(disk_path)
    where = partition.describe()
    log: list[str] = []
    warnings: list[str] = []
    with attached(partition, writable=True) as volume:
        if volume.resolve(SCRIPT_DIR) is None:
            raise WindowsStagingError(
                f"{where}: Windows\\Temp is missing; create it on the source (it is where the first-boot "
                "script goes) and sync again"
            )
        hive = volume.read(SYSTEM_HIVE) or b""
        if _hive_dirty(hive):
            warnings.append(
                f"{where}: the SYSTEM hive was copied with changes only in SYSTEM.LOG1/LOG2 (not flushed);"
                " those changes are dropped: copy from a VSS snapshot or a shut-down source"
            )
        current_script = volume.read(SCRIPT_PATH)
        record = _load_record(volume)
        if record is None:
            with tempfile.TemporaryDirectory(prefix="hvmigrate-hive-") as tmp:
                (Path(tmp) / "SYSTEM").write_bytes(hive)
                with open_hive(Path(tmp) / "SYSTEM") as reader:
                    setup = reader.values(SETUP_KEY)
            setup_type = setup.get("SetupType")
            if setup_type is not None and setup_type.type == REG_DWORD and setup_type.as_int():
                raise WindowsStagingError(
                    f"{where}: Windows is in setup mode (HKLM\\SYSTEM\\Setup SetupType="
                    f"{setup_type.as_int()}); finish or cancel setup (sysprep) on the source, then sync again"
                )
            record = {
                "setup": {name: (setup[name].to_json() if name in setup else None) for name in _HOOK},
                "script": None if current_script is None else base64.b64encode(current_script).decode(),
            }
            volume.write(RECORD_PATH, json.dumps(record, indent=1).encode())
            log.append(f"recorded the originals in {RECORD_PATH}")
        data = script_bytes(script)
        if current_script != data:
            volume.write(SCRIPT_PATH, data)
            log.append(f"wrote {SCRIPT_PATH} ({len(data)} bytes)")
        else:
            log.append(f"unchanged {SCRIPT_PATH}")
        changed = _edit_hive(volume, dict(_hook_values()), hive or None)
        log.append(
            f"{'registered' if changed else 'unchanged'} the script in SYSTEM\\Setup "
            "(SetupType=2, CmdLine): Winlogon runs it once before the first logon"
        )
    return StagingResult([f"{where}: {line}" for line in log], warnings, where)


def revert_windows_staging(disk_path: Path | str) -> list[str]:
    """Put SYSTEM\\Setup and the script's path back as the record says, then remove the record."""
    partition = _windows_volume(disk_path)
    where = partition.describe()
    with attached(partition, writable=True) as volume:
        record = _load_record(volume)
        if record is None:
            return [f"{where}: nothing staged (no {RECORD_PATH})"]
        originals = {
            name: (RegValue.from_json(value) if value is not None else None)
            for name, value in record["setup"].items()
        }
        _edit_hive(volume, originals)
        log = [f"restored SYSTEM\\Setup {', '.join(sorted(originals))}"]
        if record.get("script") is None:
            volume.remove(SCRIPT_PATH)
            log.append(f"removed {SCRIPT_PATH}")
        else:
            volume.write(SCRIPT_PATH, base64.b64decode(record["script"]))
            log.append(f"restored {SCRIPT_PATH}")
        volume.remove(RECORD_PATH)
        log.append(f"removed {posixpath.basename(RECORD_PATH)}")
    return [f"{where}: {line}" for line in log]
