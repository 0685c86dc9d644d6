"""What staging found on a guest that an operator must know, with a stable id and a fix, as validation does.

Staging is where the guest's own files are first read, so this is where a replica that cannot boot (no
virtio driver in its initramfs, an fstab entry naming a disk the target will not have) is first seen.
Each finding says so in one line with the way out, and travels in the step's output and as an event.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["critical", "warning", "info"]

# id -> (severity, title): the catalog of what staging can report; users grep for the ids.
GUEST_RULES: dict[str, tuple[Severity, str]] = {
    "guest.net.no_manager": ("warning", "no network configuration system was recognised on the guest"),
    "guest.net.kept_definition": ("warning", "a bond, bridge or VLAN still names an interface that moved"),
    "guest.net.other_manager": ("info", "a second network configuration system also holds definitions"),
    "guest.fstab.missing": ("critical", "an fstab entry names a filesystem none of the replica's disks has"),
    "guest.fstab.not_checked": ("info", "an fstab entry could not be checked against the replica's disks"),
    "guest.fstab.device_name": ("warning", "an fstab or boot entry names a disk device the target renames"),
    "guest.initramfs.missing_driver": (
        "critical",
        "the initramfs lacks the driver of the target's boot disk controller",
    ),
    "guest.initramfs.missing_nic_driver": ("critical", "the guest's kernel has no driver for the target NIC"),
    "guest.initramfs.not_checked": (
        "warning",
        "the initramfs could not be read, so drivers were not checked",
    ),
    "guest.tools.masked": ("info", "the source platform's guest tools were disabled for the new platform"),
    "guest.tools.not_disabled": (
        "warning",
        "the source platform's guest tools could not be disabled offline",
    ),
}


@dataclass(frozen=True)
class Finding:
    rule_id: str
    severity: Severity
    message: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        return cls(data["rule_id"], data["severity"], data["message"], data.get("fix"))


def finding(rule_id: str, message: str, fix: str | None = None) -> Finding:
    """A finding of a catalogued rule, with the catalog's severity."""
    severity, _ = GUEST_RULES[rule_id]
    return Finding(rule_id, severity, message, fix)
