"""Windows staging on real NTFS images (mkntfs) with real hives: the first-boot script on the volume,
registered in SYSTEM\\Setup, read back with ntfscat and hivexget; revert puts the originals back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.guest.ntfs import ntfs_partitions
from orchestrator.guest.windows import (
    RECORD_PATH,
    SCRIPT_PATH,
    SYSTEM_HIVE,
    WindowsStagingError,
    find_windows_volume,
    firstboot_command,
    revert_windows_staging,
    script_bytes,
    stage_windows,
)
from orchestrator.guest.windows_firstboot import WindowsNic, firstboot_script, windows_mac
from orchestrator.mirror import FileDiskReader, mirror_disk
from orchestrator.steps.guest import RemapNics, StageSystemState, reapply_staged_state
from providers.base import SourceDisk, SourceFacts, SourceNic
from tests.fakes.powershell import Interpreter
from tests.fakes.windows_source_model import Adapter, WindowsMachine
from tests.unit.test_guest_staging_steps import Context, playbook
from tests.windows_disk import hivexget, loop, missing_tools, ntfscat, windows_disk

pytestmark = [
    pytest.mark.skipif(
        bool(missing_tools()), reason=f"missing: {', '.join(missing_tools())} (ntfs-3g, libhivex-bin)"
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root"),
]

SOFTWARE = "/Windows/System32/config/SOFTWARE"
SCRIPT = firstboot_script(
    [WindowsNic("00:15:5d:00:00:08", "10.1.0.8/24", "10.1.0.1", ("10.1.0.2",))], source_platform="esx"
)


def read_volume(disk: Path, tmp_path: Path, *paths: str) -> dict[str, bytes | None]:
    """Files of the Windows volume as ntfscat reads them through a loop device the test makes itself."""
    partition = find_windows_volume(disk)
    assert partition is not None
    with loop(disk, partition.offset, partition.size) as device:
        return {path: ntfscat(device, path) for path in paths}


def hive_file(disk: Path, tmp_path: Path, path: str = SYSTEM_HIVE) -> Path:
    data = read_volume(disk, tmp_path, path)[path]
    assert data is not None
    local = tmp_path / f"hive-{os.urandom(4).hex()}"
    local.write_bytes(data)
    return local


@pytest.mark.parametrize("table", ["mbr", "gpt"])
def test_stage_installs_and_registers_the_script_then_revert_restores(tmp_path: Path, table: str) -> None:
    disk = windows_disk(tmp_path / "app01.raw", table=table)
    software_before = read_volume(disk, tmp_path, SOFTWARE)[SOFTWARE]
    partition = find_windows_volume(disk)
    assert partition is not None and partition.number == (2 if table == "gpt" else 1)

    result = stage_windows(disk, SCRIPT)
    assert any("registered the script" in line for line in result.log) and not result.warnings
    files = read_volume(disk, tmp_path, SCRIPT_PATH, RECORD_PATH, SOFTWARE)
    assert files[SCRIPT_PATH] == script_bytes(SCRIPT)  # byte-exact, BOM included
    assert files[SOFTWARE] == software_before  # only SYSTEM is edited
    record = json.loads(files[RECORD_PATH] or b"")
    assert record["script"] is None and record["setup"]["SetupType"] == {"type": 4, "hex": "00000000"}
    system = hive_file(disk, tmp_path)
    assert hivexget(system, "\\Setup", "SetupType").strip() == "2"
    assert hivexget(system, "\\Setup", "CmdLine").rstrip("\n") == firstboot_command()
    assert '"OOBEInProgress"=dword:00000000' in hivexget(system, "\\Setup")  # the key's other values stay
    assert "-File %SystemRoot%\\Temp\\hvmigrate-firstboot.ps1" in firstboot_command()

    again = stage_windows(disk, SCRIPT)  # a re-run (after a crash, or a sync pass) changes nothing
    assert [line.split(": ", 1)[1] for line in again.log] == [
        f"unchanged {SCRIPT_PATH}",
        "unchanged the script in SYSTEM\\Setup (SetupType=2, CmdLine): "
        "Winlogon runs it once before the first logon",
    ]

    log = revert_windows_staging(disk)
    assert any("removed /Windows/Temp/hvmigrate-firstboot.ps1" in line for line in log)
    files = read_volume(disk, tmp_path, SCRIPT_PATH, RECORD_PATH)
    assert files == {SCRIPT_PATH: None, RECORD_PATH: None}
    system = hive_file(disk, tmp_path)
    assert hivexget(system, "\\Setup", "SetupType").strip() == "0"
    assert hivexget(system, "\\Setup", "CmdLine").strip() == ""
    assert "OOBEInProgress" in hivexget(system, "\\Setup")


def test_no_windows_volume_fails_naming_the_disk(tmp_path: Path) -> None:
    empty = windows_disk(tmp_path / "data.raw", windows=False)
    assert ntfs_partitions(empty) and find_windows_volume(empty) is None
    with pytest.raises(WindowsStagingError) as failure:
        stage_windows(empty, SCRIPT)
    message = str(failure.value)
    assert message.startswith(f"{empty}: no Windows system volume") and "\n" not in message

    blank = tmp_path / "blank.raw"
    blank.write_bytes(bytes(1024 * 1024))
    with pytest.raises(WindowsStagingError, match=rf"^{blank}: no Windows system volume"):
        stage_windows(blank, SCRIPT)


def test_windows_in_setup_mode_is_refused_and_left_alone(tmp_path: Path) -> None:
    disk = windows_disk(tmp_path / "sysprep.raw", setup_type=1)
    with pytest.raises(WindowsStagingError, match=r"setup mode .*SetupType=1\); finish or cancel setup"):
        stage_windows(disk, SCRIPT)
    assert read_volume(disk, tmp_path, SCRIPT_PATH, RECORD_PATH) == {SCRIPT_PATH: None, RECORD_PATH: None}


def one_pass(source: Path, target: Path, mode: str) -> int:
    with FileDiskReader(source) as reader:
        copied = mirror_disk(reader, target, chunk_size=64 * 1024, mode=mode, source_identity="src")
    return copied.bytes_written


def windows_context(tmp_path: Path) -> Context:
    """A replica mirrored from a Windows source image, as the staging steps find it after the full pass."""
    source = windows_disk(tmp_path / "source.raw")
    disk = tmp_path / "web01.raw"
    one_pass(source, disk, "full")
    nic = {"source_mac": "00:50:56:00:00:08", "network": "prod", "ip": "keep", "mac": "new"}
    ctx = Context(playbook({"type": "hyperv", "host": "hv01", "user": "u", "password": "p"}, nic), disk)
    facts = SourceFacts(
        "WEB01", "windows", "Windows Server 2022", "bios", (SourceDisk("web01.raw", 12 * 1024 * 1024),),
        (SourceNic("Ethernet0", "00:50:56:00:00:08", ("10.0.0.8/24",)),),
    )  # fmt: skip
    ctx.outputs["web01/discover_source"] = {"facts": facts.to_json()}
    return ctx


def test_staging_steps_on_a_windows_replica_reapply_and_undo(tmp_path: Path) -> None:
    ctx = windows_context(tmp_path)
    stage = json.loads(json.dumps(StageSystemState().run(ctx)))  # type: ignore[arg-type]
    ctx.outputs["web01/stage_system_state"] = stage
    remap = RemapNics().run(ctx)  # type: ignore[arg-type]
    assert remap["nics"] == stage["windows"]["nics"] and remap["nics"][0]["ip"] == "10.0.0.8/24"
    staged = read_volume(ctx.disk, tmp_path, SCRIPT_PATH)[SCRIPT_PATH] or b""
    assert staged == script_bytes(stage["windows"]["script"])
    # the script as Windows would read it, run by the stand-in's interpreter on the replica's new NIC
    new_mac = windows_mac(remap["nics"][0]["mac"])
    replica = WindowsMachine(hostname="WEB01")
    replica.adapters = [Adapter("Ethernet 2", 7, new_mac, [("169.254.3.4", 16)])]
    Interpreter(replica.cmdlets()).run_script(staged.decode("utf-8-sig"))
    assert (replica.adapters[0].addresses, replica.adapters[0].dhcp) == ([("10.0.0.8", 24)], False)
    assert any("first-boot script" in m for _, m in ctx.events)

    # staging told the block map what it changed: the next pass sends exactly that back from the source
    source = tmp_path / "source.raw"
    assert 0 < one_pass(source, ctx.disk, "incremental") <= 2 * 1024 * 1024
    assert ctx.disk.read_bytes() == source.read_bytes()
    assert hivexget(hive_file(ctx.disk, tmp_path), "\\Setup", "SetupType").strip() == "0"
    assert reapply_staged_state(ctx) == 3  # type: ignore[arg-type]  # and staging re-applies from the journal
    assert hivexget(hive_file(ctx.disk, tmp_path), "\\Setup", "SetupType").strip() == "2"

    StageSystemState().undo(ctx)  # type: ignore[arg-type]
    assert read_volume(ctx.disk, tmp_path, SCRIPT_PATH)[SCRIPT_PATH] is None
    assert hivexget(hive_file(ctx.disk, tmp_path), "\\Setup", "SetupType").strip() == "0"
