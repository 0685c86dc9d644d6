"""LVM snapshots of source disks that are logical volumes: the final pass reads a frozen point in time.

``lvcreate --snapshot`` suspends the origin through device-mapper, which freezes the filesystem on it for
that instant, so the snapshot is consistent the way fsfreeze makes a disk consistent, while the source
keeps writing to its origin. Our snapshot of ``vg/lv`` is always named ``lv-hvmigrate``: a thaw (or a later
run after an interrupted one) finds it by name with ``lvs``, and removes it only if its origin is ``lv``.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.playbook.units import format_size
from providers.base import ProviderError

from .shell import RemoteShell, Result

SUFFIX = "-hvmigrate"
MiB = 1024**2
MIN_SNAPSHOT = 256 * MiB
SNAPSHOT_SHARE = 10  # percent of the origin, by default
LVM_TIMEOUT = 120.0
LVS = ("lvs", "--noheadings", "--nosuffix", "--units", "b", "--separator", "|")
NOT_FOUND = ("Failed to find logical volume", "not found")


@dataclass(frozen=True)
class LvmSnapshotPlan:
    disk: str  # the source disk as the playbook names it
    vg: str
    lv: str
    lv_size: int
    size: int  # copy-on-write space, whole MiB

    @property
    def snapshot(self) -> str:
        return self.lv + SUFFIX

    @property
    def path(self) -> str:
        return f"/dev/{self.vg}/{self.snapshot}"


class Lvm:
    def __init__(self, shell: RemoteShell) -> None:
        self.shell = shell

    def _lvs(self, target: str, columns: str) -> Result:
        result = self.shell.run([*LVS, "-o", columns, "--", target])
        if result.status == 127:
            raise ProviderError(
                f"lvs is not installed on {self.shell.where} (Debian/RHEL package lvm2), so no source disk "
                "there is an LV: choose quiesce fsfreeze, services or a quiesce_command"
            )
        return result

    def plan(self, disk: str, size: int | None) -> tuple[LvmSnapshotPlan | None, str]:
        """The snapshot of ``disk`` if it is an LV; else None and why not (lvs's own words)."""
        result = self._lvs(disk, "vg_name,lv_name,lv_size,lv_attr")
        fields = result.stdout.strip().split("|") if result.ok else []
        if len(fields) != 4:
            return None, f"not an LVM logical volume (lvs: {result.reason()})"
        vg, lv, lv_size, attr = (field.strip() for field in fields)
        if attr.startswith(("s", "S")):
            return None, f"{vg}/{lv} is itself a snapshot"
        wanted = size if size else max(int(lv_size) * SNAPSHOT_SHARE // 100, MIN_SNAPSHOT)
        return LvmSnapshotPlan(disk, vg, lv, int(lv_size), -(-wanted // MiB) * MiB), ""

    def check_space(self, plans: list[LvmSnapshotPlan]) -> None:
        """Refuse before anything is created when a volume group cannot hold its snapshots."""
        for vg in sorted({plan.vg for plan in plans}):
            mine = [plan for plan in plans if plan.vg == vg]
            needed = sum(plan.size for plan in mine)
            result = self.shell.check(
                ["vgs", "--noheadings", "--nosuffix", "--units", "b", "-o", "vg_free", "--", vg],
                f"reading the free space of volume group {vg}",
            )
            free = int(result.stdout.strip() or 0)
            if free < needed:
                names = ", ".join(f"{vg}/{plan.lv}" for plan in mine)
                raise ProviderError(
                    f"volume group {vg} has {format_size(free)} free but snapshots of {names} need "
                    f"{format_size(needed)}: extend the VG, or set snapshot_size to what the source "
                    "writes during the final pass"
                )

    def create(self, plan: LvmSnapshotPlan) -> None:
        self.shell.check(
            [
                "lvcreate", "--snapshot", "--name", plan.snapshot, "--size", f"{plan.size // MiB}m",
                "--", f"{plan.vg}/{plan.lv}",
            ],
            f"creating snapshot {plan.vg}/{plan.snapshot} of {plan.disk}",
            timeout=LVM_TIMEOUT,
        )  # fmt: skip

    def remove_ours(self, vg: str, lv: str, snapshot: str) -> bool:
        """Remove ``vg/snapshot`` if it exists and is a snapshot of ``lv``; True when one was removed."""
        result = self._lvs(f"{vg}/{snapshot}", "origin")
        if not result.ok:
            if any(text in result.stderr for text in NOT_FOUND):
                return False
            raise ProviderError(f"cannot tell whether snapshot {vg}/{snapshot} exists: {result.reason()}")
        origin = result.stdout.strip()
        if origin != lv:
            raise ProviderError(
                f"{vg}/{snapshot} exists but is not a snapshot of {lv} (origin: {origin or 'none'}); "
                "it is not this tool's: rename it"
            )
        self.shell.check(
            ["lvremove", "--force", "--", f"{vg}/{snapshot}"],
            f"removing snapshot {vg}/{snapshot}",
            timeout=LVM_TIMEOUT,
        )
        return True
