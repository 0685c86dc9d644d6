"""fstab and root= checked against the replica's real disks; device names remapped to UUIDs."""

from __future__ import annotations

import uuid
from pathlib import Path

from orchestrator.guest.extfs import check_clean
from orchestrator.guest.fstab import TargetDisk, parse_fstab, target_device_names
from orchestrator.guest.linux import StagingTarget, apply_edits, find_linux_root, plan_system_state, read_file
from orchestrator.quickstart import MiB
from tests.unit.test_guest_volumes import ROOT_UUID, data_disk, guest_disk, pytestmark  # noqa: F401

DATA_UUID = uuid.UUID("da7ada7a-0000-4000-8000-000000000001")
SWAP_UUID = uuid.uuid5(ROOT_UUID, "swap")
BASE = {"/etc/hostname": b"db01\n", "/etc/hosts": b"127.0.0.1\tlocalhost\n"}


def kvm(*controllers: str, sources: tuple[str, ...] = ()) -> StagingTarget:
    disks = tuple(
        TargetDisk(i, c, sources[i] if i < len(sources) else None) for i, c in enumerate(controllers)
    )
    return StagingTarget("kvm", disks, 0, ())


def plan_for(
    tmp_path: Path, fstab: str, target: StagingTarget, *, data: bool = True, extra: dict | None = None
):
    tree = {**BASE, "/etc/fstab": fstab.encode(), **(extra or {})}
    disks = [guest_disk(tmp_path / "root.raw", tree, size=32 * MiB, swap=4 * MiB)]
    if data:
        disks.append(data_disk(tmp_path / "data.raw", DATA_UUID, "pgdata"))
    return disks, plan_system_state(disks, target, "db01")


def fstab_findings(plan) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(f.rule_id, f.severity) for f in plan.findings if f.rule_id.startswith("guest.fstab")]


def test_entries_by_uuid_label_and_partuuid_that_exist_pass(tmp_path: Path) -> None:
    fstab = (
        f"# <file system> <mount point> <type> <options> <dump> <pass>\n"
        f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n"
        f"LABEL=pgdata /srv/pg ext4 defaults 0 2\n"
        f"PARTUUID=1234abcd-02 none swap sw 0 0\n"
        f"/dev/disk/by-uuid/{DATA_UUID} /mnt/again ext4 defaults 0 2\n"
        "proc /proc proc defaults 0 0\ntmpfs /tmp tmpfs defaults 0 0\nnas:/export /mnt/nas nfs defaults 0 0\n"
    )
    _, plan = plan_for(tmp_path, fstab, kvm("virtio", "virtio"))
    assert fstab_findings(plan) == []
    assert "/etc/fstab" not in {e.path for e in plan.edits}


def test_a_filesystem_on_an_unmapped_disk_is_critical_unless_nofail(tmp_path: Path) -> None:
    fstab = f"UUID={ROOT_UUID} / ext4 defaults 0 1\nUUID={DATA_UUID} /srv/pg ext4 defaults 0 2\n"
    _, plan = plan_for(tmp_path, fstab, kvm("virtio"), data=False)
    (missing,) = [f for f in plan.findings if f.rule_id == "guest.fstab.missing"]
    assert (
        missing.severity == "critical" and "line 2" in missing.message and str(DATA_UUID) in missing.message
    )
    assert missing.fix and "target.disks" in missing.fix
    _, plan = plan_for(
        tmp_path, fstab.replace("defaults 0 2", "defaults,nofail 0 2"), kvm("virtio"), data=False
    )
    assert fstab_findings(plan) == [("guest.fstab.missing", "warning")]


def test_device_names_the_target_renames_are_rewritten_to_uuid(tmp_path: Path) -> None:
    fstab = (
        "/dev/sda1 / ext4 errors=remount-ro 0 1\n"
        "/dev/sda2   none  swap  sw  0  0\n"
        "/dev/sdb /srv/pg ext4 defaults 0 2\n"
        "/dev/vda1 /also ext4 defaults 0 2\n"
    )
    extlinux = "DEFAULT debian\nLABEL debian\n\tLINUX /boot/vmlinuz\n\tAPPEND root=/dev/sda1 ro quiet\n"
    disks, plan = plan_for(
        tmp_path, fstab, kvm("virtio", "virtio"), extra={"/boot/extlinux/extlinux.conf": extlinux.encode()}
    )
    messages = [f.message for f in plan.findings if f.rule_id == "guest.fstab.device_name"]
    assert any("line 1" in m and "/dev/vda1 on the target" in m for m in messages)
    assert len(messages) == 4  # sda1, sda2, sdb and root= ; vda1 is right already
    apply_edits(disks[0], plan.edits)
    root = find_linux_root(disks[0])
    assert root is not None
    lines = (read_file(root, "/etc/fstab") or b"").decode().splitlines()
    assert lines == [
        f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1",
        f"UUID={SWAP_UUID}   none  swap  sw  0  0",
        f"UUID={DATA_UUID} /srv/pg ext4 defaults 0 2",
        "/dev/vda1 /also ext4 defaults 0 2",
    ]
    assert (
        f"APPEND root=UUID={ROOT_UUID} ro quiet"
        in (read_file(root, "/boot/extlinux/extlinux.conf") or b"").decode()
    )
    assert check_clean(root.fs)[0]


def test_sata_target_keeps_sd_names_and_source_device_names_map_by_playbook(tmp_path: Path) -> None:
    fstab = "/dev/sda1 / ext4 defaults 0 1\n/dev/vdc /srv/pg ext4 defaults 0 2\n"
    fstab += f"UUID={ROOT_UUID} /x ext4 ro 0 0\n"
    target = kvm("sata", "virtio", sources=("/dev/sda", "/dev/vdc"))
    _, plan = plan_for(tmp_path, fstab, target)
    messages = [f.message for f in plan.findings if f.rule_id == "guest.fstab.device_name"]
    assert len(messages) == 1 and "/dev/vdc is /dev/vda on the target" in messages[0]
    assert "UUID=" + str(DATA_UUID) in next(e.content.decode() for e in plan.edits if e.path == "/etc/fstab")


def test_unreadable_volumes_make_a_missing_uuid_not_checked(tmp_path: Path) -> None:
    lvm = tmp_path / "lvm.raw"
    with open(lvm, "wb") as handle:
        handle.write(bytes(512) + b"LABELONE")
        handle.truncate(MiB)
    fstab = (
        f"UUID={ROOT_UUID} / ext4 defaults 0 1\n/dev/mapper/vg-data /srv ext4 defaults 0 2\n"
        "UUID=abc /y xfs defaults 0 2\n"
    )
    root_disk = guest_disk(tmp_path / "root.raw", {**BASE, "/etc/fstab": fstab.encode()})
    plan = plan_system_state([root_disk, lvm], kvm("virtio", "virtio"), "db01")
    assert fstab_findings(plan) == [("guest.fstab.not_checked", "info")]
    plan = plan_system_state([root_disk, None], kvm("virtio", "virtio"), "db01")  # a disk not reachable here
    assert fstab_findings(plan) == [("guest.fstab.not_checked", "info")]


def test_target_device_names_follow_each_controller_family() -> None:
    disks = [TargetDisk(0, "virtio"), TargetDisk(1, "scsi"), TargetDisk(2, "virtio"), TargetDisk(3, "nvme")]
    assert target_device_names(disks) == {0: "/dev/vda", 1: "/dev/sda", 2: "/dev/vdb", 3: "/dev/nvme0n1"}
    many = target_device_names([TargetDisk(i, "scsi") for i in range(28)])
    assert (many[25], many[26], many[27]) == ("/dev/sdz", "/dev/sdaa", "/dev/sdab")


def test_parse_fstab_reads_escapes_and_skips_comments() -> None:
    (entry,) = parse_fstab("# comment\n\nLABEL=My\\040Disk /mnt/my\\040disk ext4 ro,nofail 0 0 # trailing\n")
    assert entry.spec == "LABEL=My Disk" and entry.options == ("ro", "nofail") and entry.optional
    assert entry.line == 3
