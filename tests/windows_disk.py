"""Small Windows replica disks for the staging tests: a real NTFS (mkntfs) in an MBR or GPT partition,
holding Windows\\System32\\config\\{SYSTEM,SOFTWARE} hives filled in with hivexsh.

Debian ships no empty hive (hivex's own test image stays in its source tree) and hivex cannot create one,
so `minimal_hive` writes the few KiB the format needs: a "regf" base block with its XOR checksum, one
"hbin" holding the root key ("nk") and its security record ("sk"), the rest a free cell. hivexsh opens
it, adds keys and values and commits, which is how the tests know it is a hive hivex accepts.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator.guest.ntfs import NtfsPartition, attached
from orchestrator.quickstart import EFI_SYSTEM, GptPartition, MbrPartition, MiB, write_gpt, write_mbr

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASIC_DATA = uuid.UUID("ebd0a0a2-b9e5-4433-87c0-68b6b7c7ad2a")  # a Windows data partition on GPT
TOOLS = ("mkntfs", "ntfscat", "ntfsls", "hivexsh", "hivexget", "losetup")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool, path=SBIN_PATH) is None]


def _cell(body: bytes) -> bytes:
    size = (4 + len(body) + 7) // 8 * 8
    return struct.pack("<i", -size) + body + bytes(size - 4 - len(body))


def minimal_hive(root_name: str = "ROOT") -> bytes:
    """An empty registry hive: base block, one 4 KiB bin with the root key and its security record."""
    first = 0x20  # the root key's cell, from the start of the first bin
    name = root_name.encode()
    nk_size = (4 + 0x4C + len(name) + 7) // 8 * 8
    sk_offset = first + nk_size
    none = 0xFFFFFFFF
    descriptor = struct.pack("<BBHIIII", 1, 0, 0x8004, 0, 0, 0, 0)  # self-relative, NULL DACL
    nk = b"nk" + struct.pack(
        "<HQIIIIIIIIIIIIIIIHH",
        0x2C,  # root key, cannot be deleted, ASCII name
        0, 0, 0, 0, 0, none, none, 0, none, sk_offset, none, 0, 0, 0, 0, 0, len(name), 0,
    ) + name  # fmt: skip
    sk = b"sk" + struct.pack("<HIIII", 0, sk_offset, sk_offset, 1, len(descriptor)) + descriptor
    cells = _cell(nk) + _cell(sk)
    free = 4096 - 32 - len(cells)
    hbin = b"hbin" + struct.pack("<III", 0, 4096, 0) + bytes(16) + cells + struct.pack("<i", free)
    hbin += bytes(free - 4)
    base = bytearray(4096)
    struct.pack_into("<4sIIQIIIIIII", base, 0, b"regf", 1, 1, 0, 1, 3, 0, 1, first, 4096, 1)
    checksum = 0
    for (word,) in struct.iter_unpack("<I", bytes(base[:508])):
        checksum ^= word
    struct.pack_into("<I", base, 508, checksum)
    return bytes(base) + hbin


def hivexsh(hive: Path, commands: str) -> None:
    subprocess.run(["hivexsh", "-w", str(hive)], input=commands + "commit\n", text=True, check=True)


def system_hive(path: Path, setup_type: int = 0) -> Path:
    """A SYSTEM hive as a normally installed Windows has it where staging looks: Setup and Select."""
    path.write_bytes(minimal_hive("SYSTEM"))
    hivexsh(
        path,
        "add Setup\ncd Setup\nsetval 4\n"
        f"SetupType\ndword:{setup_type}\nCmdLine\nstring:\nOOBEInProgress\ndword:0\nSystemSetupInProgress\ndword:0\n"
        "cd ..\nadd Select\ncd Select\nsetval 1\nCurrent\ndword:1\ncd ..\nadd ControlSet001\n",
    )
    return path


def software_hive(path: Path) -> Path:
    path.write_bytes(minimal_hive("SOFTWARE"))
    hivexsh(
        path,
        "add Microsoft\ncd Microsoft\nadd Windows NT\ncd Windows NT\nsetval 1\nProductName\nstring:Test\n",
    )
    return path


def windows_disk(
    path: Path, *, table: str = "mbr", windows: bool = True, setup_type: int = 0, temp: bool = True
) -> Path:
    """A 12 MiB disk: on GPT an ESP-typed first partition (left empty) and Windows second; on MBR Windows
    alone. ``windows=False`` leaves the NTFS volume without a Windows folder."""
    ntfs_offset, ntfs_size = (2 * MiB, 9 * MiB) if table == "gpt" else (MiB, 10 * MiB)
    with open(path, "wb") as handle:
        handle.truncate(12 * MiB)
    area = path.with_name(path.name + ".ntfs")
    with open(area, "wb") as handle:
        handle.truncate(ntfs_size)
    subprocess.run(
        [
            "mkntfs",
            "-q",
            "-F",
            "-f",
            "-s",
            "512",
            "-p",
            str(ntfs_offset // 512),
            "-H",
            "0",
            "-S",
            "0",
            "-L",
            "Windows",
            str(area),
        ],
        check=True,
        capture_output=True,
        env={"PATH": SBIN_PATH},
    )
    with open(path, "r+b") as disk:
        disk.seek(ntfs_offset)
        disk.write(area.read_bytes())
    area.unlink()
    if table == "gpt":
        parts = [GptPartition(MiB, MiB, EFI_SYSTEM, "EFI"), GptPartition(ntfs_offset, ntfs_size, BASIC_DATA)]
        write_gpt(path, parts, uuid.UUID(int=6))
    else:
        write_mbr(path, [MbrPartition(ntfs_offset, ntfs_size, 0x07, bootable=True)], 0x0606)
    if windows:
        partition = NtfsPartition(path, ntfs_offset, ntfs_size, 2 if table == "gpt" else 1)
        hives = path.with_name(path.name + ".hives")
        hives.mkdir()
        with attached(partition, writable=True) as volume:
            for folder in ("/Windows", "/Windows/System32", "/Windows/System32/config"):
                volume.mkdir(folder)
            if temp:
                volume.mkdir("/Windows/Temp")
            volume.write("/Windows/System32/config/SYSTEM", system_hive(hives / "S", setup_type).read_bytes())
            volume.write("/Windows/System32/config/SOFTWARE", software_hive(hives / "W").read_bytes())
        shutil.rmtree(hives)
    return path


@contextmanager
def loop(disk: Path, offset: int, size: int) -> Iterator[str]:
    """A read-only loop device over a partition, made here with losetup (not by the code under test)."""
    device = subprocess.run(
        ["losetup", "-f", "--show", "-r", "-o", str(offset), "--sizelimit", str(size), str(disk)],
        check=True,
        capture_output=True,
        text=True,
        env={"PATH": SBIN_PATH},
    ).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=True, env={"PATH": SBIN_PATH})


def ntfscat(device: str, path: str) -> bytes | None:
    done = subprocess.run(["ntfscat", device, path], capture_output=True, env={"PATH": SBIN_PATH})
    return done.stdout if done.returncode == 0 else None


def hivexget(hive: Path, key: str, value: str | None = None) -> str:
    argv = ["hivexget", str(hive), key] + ([value] if value is not None else [])
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
