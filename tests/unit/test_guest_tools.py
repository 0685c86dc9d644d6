"""The source platform's guest tools masked (never removed) on a replica of another platform, and undone."""

from __future__ import annotations

from pathlib import Path

from orchestrator.guest.changes import CREATED_DIR
from orchestrator.guest.extfs import check_clean
from orchestrator.guest.linux import (
    StagingTarget,
    apply_edits,
    find_linux_root,
    plan_system_state,
    revert_staging,
)
from orchestrator.quickstart import Symlink
from tests.unit.test_guest_volumes import guest_disk, pytestmark  # noqa: F401

DPKG = (
    b"Package: open-vm-tools\nStatus: install ok installed\nVersion: 2:12.2.0\n\n"
    b"Package: qemu-guest-agent\nStatus: install ok installed\nVersion: 1:7.2\n\n"
    b"Package: hyperv-daemons\nStatus: deinstall ok config-files\n\n"
)
TREE = {
    "/etc/hostname": b"web01\n",
    "/etc/fstab": b"",
    "/usr/lib/systemd/systemd": b"\x7fELF",
    "/lib": Symlink("usr/lib"),
    "/var/lib/dpkg/status": DPKG,
    "/usr/bin/vmtoolsd": b"\x7fELF",
    "/usr/lib/systemd/system/open-vm-tools.service": b"[Unit]\nConditionVirtualization=vmware\n",
    "/usr/lib/systemd/system/vgauth.service": b"[Unit]\n",
    "/etc/systemd/system/multi-user.target.wants/open-vm-tools.service": Symlink(
        "/lib/systemd/system/open-vm-tools.service"
    ),
    "/usr/lib/systemd/system/qemu-guest-agent.service": b"[Unit]\n",
    "/usr/sbin/qemu-ga": b"\x7fELF",
}


def state(disk: Path, path: str) -> tuple[str, str | None] | None:
    root = find_linux_root(disk)
    assert root is not None
    inode = root.fs.stat(path)
    return None if inode is None else (inode.type, inode.link_target)


def test_vmware_tools_masked_on_kvm_and_the_agent_kept(tmp_path: Path) -> None:
    disk = guest_disk(tmp_path / "g.raw", TREE)
    plan = plan_system_state([disk], StagingTarget("kvm"), "web01")
    (masked,) = [f for f in plan.findings if f.rule_id == "guest.tools.masked"]
    assert "open-vm-tools" in masked.message and masked.severity == "info"
    assert any("QEMU guest agent (qemu-guest-agent): kept" in line for line in plan.log)
    assert not any("Hyper-V" in f.message for f in plan.findings)  # only its config files remain
    apply_edits(disk, plan.edits)
    assert state(disk, "/etc/systemd/system/open-vm-tools.service") == ("symlink", "/dev/null")
    assert state(disk, "/etc/systemd/system/vgauth.service") == ("symlink", "/dev/null")
    assert state(disk, "/etc/systemd/system/qemu-guest-agent.service") is None
    assert state(disk, "/usr/lib/systemd/system/open-vm-tools.service") == ("regular", None)  # not deleted
    assert state(disk, CREATED_DIR + "/etc/systemd/system/open-vm-tools.service") == ("regular", None)
    root = find_linux_root(disk)
    assert root is not None and check_clean(root.fs)[0]

    assert all(": unchanged " in line for line in apply_edits(disk, plan.edits))
    revert_staging(disk)
    assert state(disk, "/etc/systemd/system/open-vm-tools.service") is None
    assert state(disk, CREATED_DIR + "/etc/systemd/system/open-vm-tools.service") is None
    assert check_clean(root.fs)[0]


def test_on_esx_the_agent_is_masked_and_vmware_tools_kept(tmp_path: Path) -> None:
    disk = guest_disk(tmp_path / "g.raw", TREE)
    plan = plan_system_state([disk], StagingTarget("esx"), "web01")
    links = {e.path for e in plan.edits if e.kind == "symlink"}
    assert links == {"/etc/systemd/system/qemu-guest-agent.service"}


def test_an_admin_unit_file_in_etc_is_kept_as_the_original(tmp_path: Path) -> None:
    tree = {**TREE, "/etc/systemd/system/vgauth.service": b"[Service]\nExecStart=/usr/bin/VGAuthService -s\n"}
    disk = guest_disk(tmp_path / "g.raw", tree)
    apply_edits(disk, plan_system_state([disk], StagingTarget("hyperv"), "web01").edits)
    assert state(disk, "/etc/systemd/system/vgauth.service") == ("symlink", "/dev/null")
    revert_staging(disk)
    root = find_linux_root(disk)
    assert root is not None
    assert root.fs.read("/etc/systemd/system/vgauth.service") == tree["/etc/systemd/system/vgauth.service"]


def test_tools_without_systemd_are_reported_not_touched(tmp_path: Path) -> None:
    tree = {k: v for k, v in TREE.items() if "systemd" not in k}
    disk = guest_disk(tmp_path / "g.raw", tree)
    plan = plan_system_state([disk], StagingTarget("kvm"), "web01")
    (finding,) = [f for f in plan.findings if f.rule_id.startswith("guest.tools")]
    assert finding.rule_id == "guest.tools.not_disabled" and finding.severity == "warning"
    assert not [e for e in plan.edits if e.kind == "symlink"]
