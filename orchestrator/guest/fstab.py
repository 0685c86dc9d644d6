"""/etc/fstab (and the kernel's ``root=``) against the disks the replica will really have.

Two things go wrong after a move. An entry by ``UUID=``/``LABEL=``/``PARTUUID=`` names a filesystem on a
disk the playbook did not map: systemd waits for it and then drops to an emergency shell. And an entry by
kernel device name (``/dev/sda1``) names a device that is called something else on the target (virtio
disks are ``/dev/vda`` under KVM; SCSI, SATA and Hyper-V disks are ``/dev/sdX``; NVMe ``/dev/nvme0n1``).
The first is reported; the second is reported and, where the filesystem's UUID could be read from the
replica's disk, rewritten to ``UUID=``, which holds on any platform. virt-v2v does the same remapping.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .changes import ChangeSet, GuestView
from .findings import Finding, finding
from .volume_ids import Volume

__all__ = ["FstabEntry", "TargetDisk", "check_fstab", "parse_fstab", "target_device_names"]

FSTAB = "/etc/fstab"
BOOT_CONFIGS = (
    "/boot/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/etc/default/grub",
    "/boot/extlinux/extlinux.conf",
    "/extlinux.conf",
    "/boot/syslinux/syslinux.cfg",
)
_PSEUDO = {"proc", "sysfs", "tmpfs", "devpts", "devtmpfs", "cgroup", "cgroup2", "securityfs", "debugfs",
           "nfs", "nfs4", "cifs", "smbfs", "fuse", "fuse.sshfs", "none", "overlay", "ramfs", "hugetlbfs",
           "binfmt_misc", "mqueue", "efivarfs", "autofs", "9p", "virtiofs"}  # fmt: skip
_DEVICE_RE = re.compile(r"^/dev/(?:(sd|vd|hd|xvd)([a-z]+)(\d*)|nvme(\d+)n1(?:p(\d+))?)$")
_BY_RE = re.compile(r"^/dev/disk/by-(uuid|label|partuuid|partlabel)/(.+)$")
_ROOT_ARG_RE = re.compile(r"\b((?:root|resume)=)(/dev/[A-Za-z0-9/_-]+)")
_FAMILY = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "sd", "nvme": "nvme"}
DEFAULT_CONTROLLER = {"kvm": "virtio", "sim": "virtio", "esx": "scsi", "hyperv": "scsi"}


@dataclass(frozen=True)
class FstabEntry:
    line: int  # 1-based
    text: str  # the line as written
    spec: str
    mountpoint: str
    fstype: str
    options: tuple[str, ...]

    @property
    def optional(self) -> bool:
        """A missing filesystem does not stop the boot (nofail), or is never mounted at boot (noauto)."""
        return "nofail" in self.options or "noauto" in self.options


@dataclass(frozen=True)
class TargetDisk:
    """One of the replica's disks as staging needs to know it: where it sits and what it was called."""

    index: int
    controller: str  # virtio, scsi, sata, ide, nvme
    source: str | None = None  # the playbook's name of the source disk (/dev/sda, web01.raw)


def parse_fstab(text: str) -> list[FstabEntry]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        spec = fields[0].replace("\\040", " ")
        fstype = fields[2] if len(fields) > 2 else "auto"
        options = tuple(fields[3].split(",")) if len(fields) > 3 else ()
        entries.append(FstabEntry(number, line, spec, fields[1], fstype, options))
    return entries


def target_device_names(disks: Sequence[TargetDisk]) -> dict[int, str]:
    """The kernel name each replica disk will get, by the order of disks on each kind of controller."""
    counters: dict[str, int] = {}
    names: dict[int, str] = {}
    for disk in disks:
        family = _FAMILY.get(disk.controller, "sd")
        count = counters.get(family, 0)
        counters[family] = count + 1
        names[disk.index] = f"/dev/nvme{count}n1" if family == "nvme" else f"/dev/{family}{_letters(count)}"
    return names


def _letters(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa, as the kernel names the 27th disk."""
    text = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        text = chr(ord("a") + rest) + text
    return text


def _letter_index(letters: str) -> int:
    value = 0
    for char in letters:
        value = value * 26 + (ord(char) - ord("a") + 1)
    return value - 1


@dataclass(frozen=True)
class _Device:
    disk_base: str  # /dev/sda
    family: str
    position: int  # among the disks of its family
    partition: int | None


def _parse_device(path: str) -> _Device | None:
    match = _DEVICE_RE.match(path)
    if not match:
        return None
    family, letters, number, nvme, nvme_part = match.groups()
    if family:
        return _Device(
            f"/dev/{family}{letters}", family, _letter_index(letters), int(number) if number else None
        )
    return _Device(f"/dev/nvme{nvme}n1", "nvme", int(nvme), int(nvme_part) if nvme_part else None)


class _Mapper:
    """Where a source device name lands on the replica, and which filesystem it holds."""

    def __init__(self, disks: Sequence[TargetDisk], volumes: Sequence[Volume]) -> None:
        self.disks = list(disks)
        self.names = target_device_names(disks)
        self.volumes = list(volumes)

    def disk_index(self, device: _Device) -> int | None:
        for disk in self.disks:  # the playbook names the source disk: exact
            if disk.source == device.disk_base:
                return disk.index
        if any(d.source and d.source.startswith("/dev/") for d in self.disks):
            return None  # the playbook names source devices and this is not one of them: not migrated
        return device.position if device.position < len(self.disks) else None  # by order

    def target_name(self, device: _Device) -> str | None:
        index = self.disk_index(device)
        if index is None or index not in self.names:
            return None
        base = self.names[index]
        if device.partition is None:
            return base
        return f"{base}p{device.partition}" if base.startswith("/dev/nvme") else f"{base}{device.partition}"

    def volume(self, device: _Device) -> Volume | None:
        index = self.disk_index(device)
        return next(
            (v for v in self.volumes if v.disk_index == index and v.partition == device.partition), None
        )

    def find(self, key: str, value: str) -> Volume | None:
        for volume in self.volumes:
            have = {
                "uuid": volume.uuid,
                "label": volume.label,
                "partuuid": volume.partuuid,
                "partlabel": volume.partlabel,
            }[key]
            if have is None:
                continue
            if (have == value) if key in ("label", "partlabel") else (have.lower() == value.lower()):
                return volume
        return None


def check_fstab(
    view: GuestView, changes: ChangeSet, disks: Sequence[TargetDisk], volumes: Sequence[Volume]
) -> list[Finding]:
    """Check every fstab entry and boot-loader ``root=``; rewrite device names that will not exist."""
    mapper = _Mapper(disks, volumes)
    findings: list[Finding] = []
    text = view.text(FSTAB)
    if text is not None:
        lines = text.splitlines(keepends=True)
        for entry in parse_fstab(text):
            new_spec = _check_entry(entry, mapper, findings)
            if new_spec:
                old = lines[entry.line - 1]
                lines[entry.line - 1] = old.replace(entry.text.split()[0], new_spec, 1)
        rewritten = "".join(lines)
        if rewritten != text:
            changes.write(
                FSTAB,
                rewritten,
                view.original(FSTAB).mode,
                why="name filesystems by UUID instead of device names the target does not have",
            )
    for path in BOOT_CONFIGS:
        config = view.text(path)
        if config is None:
            continue
        rewritten = _ROOT_ARG_RE.sub(lambda m, path=path: _boot_arg(path, m, mapper, findings), config)
        if rewritten != config:
            changes.write(
                path,
                rewritten,
                view.original(path).mode if view.original(path).kind == "file" else 0o644,
                why="the kernel's root= names a device the target renames",
            )
    return findings


def _check_entry(entry: FstabEntry, mapper: _Mapper, findings: list[Finding]) -> str | None:
    """Record findings for one entry; the replacement spec when it should be rewritten."""
    where = f"{FSTAB} line {entry.line}: {entry.text.strip()}"
    network = ":" in entry.spec and not entry.spec.startswith(
        ("/", "UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=")
    )
    if entry.fstype in _PSEUDO or "bind" in entry.options or network:
        return None
    key, value = None, None
    if "=" in entry.spec and entry.spec.split("=", 1)[0] in ("UUID", "LABEL", "PARTUUID", "PARTLABEL"):
        key, value = entry.spec.split("=", 1)
        key, value = key.lower(), value.strip("\"'")
    elif by := _BY_RE.match(entry.spec):
        key, value = by.group(1), by.group(2).replace("\\x2f", "/").replace("\\x20", " ")
    if key and value:
        if mapper.find(key, value):
            return None
        unreadable = [v for v in mapper.volumes if not v.readable]
        if unreadable:
            findings.append(
                finding(
                    "guest.fstab.not_checked",
                    f"{where}: no filesystem the replica's disks show has {key.upper()} {value}; "
                    f"{', '.join(v.where() + ' (' + (v.fstype or 'unknown') + ')' for v in unreadable)} "
                    "could not be read, so it may be inside one of them",
                )
            )
            return None
        message = f"{where}: no disk of the replica has a filesystem with {key.upper()} {value}"
        if entry.optional:
            findings.append(
                Finding("guest.fstab.missing", "warning", message + " (nofail/noauto: the boot goes on)")
            )
        else:
            findings.append(
                finding(
                    "guest.fstab.missing",
                    message + "; the replica would stop in an emergency shell",
                    "map the disk holding it in target.disks, or add nofail to the entry on the source",
                )
            )
        return None
    device = _parse_device(entry.spec)
    if device is None:
        if entry.spec.startswith("/dev/disk/by-id/") or entry.spec.startswith("/dev/disk/by-path/"):
            findings.append(
                finding(
                    "guest.fstab.device_name",
                    f"{where}: {entry.spec} names the source's hardware, which the target does not have",
                    "name it by UUID= in /etc/fstab on the source (blkid shows the UUID) and sync again",
                )
            )
        return None
    return _remap(where, entry.spec, device, mapper, findings)


def _remap(where: str, spec: str, device: _Device, mapper: _Mapper, findings: list[Finding]) -> str | None:
    target = mapper.target_name(device)
    if target == spec:
        return None
    volume = mapper.volume(device)
    if target is None:
        findings.append(
            finding(
                "guest.fstab.device_name",
                f"{where}: {device.disk_base} is not one of the disks the playbook migrates",
                "map that disk in target.disks, or remove the entry on the source",
            )
        )
        return None
    if volume is not None and volume.uuid:
        findings.append(
            finding(
                "guest.fstab.device_name",
                f"{where}: {spec} is {target} on the target; rewritten to UUID={volume.uuid}",
            )
        )
        return f"UUID={volume.uuid}"
    findings.append(
        finding(
            "guest.fstab.device_name",
            f"{where}: {spec} is {target} on the target, and its filesystem's UUID could not be read",
            f"change the entry to {target} or to UUID=... on the replica before it boots",
        )
    )
    return None


def _boot_arg(path: str, match: re.Match[str], mapper: _Mapper, findings: list[Finding]) -> str:
    device = _parse_device(match.group(2))
    if device is None:
        return match.group(0)
    spec = _remap(f"{path}: {match.group(0)}", match.group(2), device, mapper, findings)
    return f"{match.group(1)}{spec}" if spec else match.group(0)
