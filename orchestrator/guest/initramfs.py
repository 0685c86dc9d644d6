"""Does the guest's default kernel have what the target's virtual hardware needs to boot and network?

The root disk must be reachable before the root filesystem is mounted, so the driver of the target's disk
controller (virtio_blk on KVM's default virtio bus) must be built into the kernel or be in the initramfs.
A server installed on VMware with ``MODULES=dep`` has an initramfs holding only the VMware drivers, and on
KVM it stops at "Gave up waiting for root device". The NIC's driver only has to be installed for the kernel.

An initramfs cannot honestly be regenerated offline: that needs the guest's own update-initramfs or dracut
running in the guest (a chroot of a foreign system is no place for it). So a missing driver is a critical
finding that names the fix, and staging writes the driver into /etc/initramfs-tools/modules (or a dracut
drop-in) so the next regeneration, on the source before a final sync or in a rescue boot, includes it.
"""

from __future__ import annotations

import posixpath
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .changes import ChangeSet, GuestView
from .cpio import UnreadableInitramfs, read_initramfs
from .extfs import ExtFs, GuestFsError
from .findings import Finding, finding
from .fstab import FSTAB, parse_fstab
from .volume_ids import Volume

__all__ = ["DriverNeed", "KernelImage", "check_initramfs", "driver_needs", "find_boot", "find_kernel"]

INITRAMFS_TOOLS_MODULES = "/etc/initramfs-tools/modules"
DRACUT_DROPIN = "/etc/dracut.conf.d/90-hvmigrate.conf"
_MODULE_RE = re.compile(r"(?:^|/)lib/modules/([^/]+)/.*?([^/]+)\.ko(?:\.(?:xz|zst|gz))?$")

# (platform, controller) -> groups of drivers; each group is satisfied by any one of its members.
DISK_DRIVERS: dict[tuple[str, str], tuple[tuple[str, ...], ...]] = {
    ("kvm", "virtio"): (("virtio_blk",), ("virtio_pci",)),
    ("kvm", "scsi"): (("virtio_scsi",), ("virtio_pci",), ("sd_mod",)),
    ("kvm", "sata"): (("ahci",), ("sd_mod",)),
    ("kvm", "ide"): (("ata_piix",), ("sd_mod",)),
    ("kvm", "nvme"): (("nvme",),),
    ("esx", "scsi"): (("vmw_pvscsi", "mptspi", "mptsas"), ("sd_mod",)),
    ("esx", "sata"): (("ahci",), ("sd_mod",)),
    ("esx", "ide"): (("ata_piix",), ("sd_mod",)),
    ("esx", "nvme"): (("nvme",),),
    ("hyperv", "scsi"): (("hv_storvsc",), ("hv_vmbus",), ("sd_mod",)),
    ("hyperv", "ide"): (("hv_storvsc", "ata_piix"), ("sd_mod",)),
}
NIC_DRIVERS: dict[str, tuple[str, ...]] = {
    "virtio": ("virtio_net",),
    "e1000": ("e1000",),
    "e1000e": ("e1000e",),
    "rtl8139": ("8139cp", "8139too"),
    "vmxnet3": ("vmxnet3",),
    "synthetic": ("hv_netvsc",),
    "legacy": ("tulip",),
}
DEFAULT_NIC = {"kvm": "virtio", "esx": "vmxnet3", "hyperv": "synthetic"}
PLATFORM_NAMES = {"kvm": "KVM", "esx": "ESX", "hyperv": "Hyper-V", "sim": "the simulator"}


@dataclass(frozen=True)
class DriverNeed:
    what: str  # "the virtio boot disk", "the virtio NIC"
    any_of: tuple[str, ...]
    early: bool  # needed before the root filesystem is mounted (in the initramfs or built in)


def driver_needs(platform: str, controller: str, nic_models: Iterable[str | None]) -> list[DriverNeed]:
    """What the target's boot disk controller and NICs require of the guest's kernel."""
    needs = [
        DriverNeed(f"the {controller} boot disk controller", group, True)
        for group in DISK_DRIVERS.get((platform, controller), ())
    ]
    for model in dict.fromkeys(m or DEFAULT_NIC.get(platform) for m in nic_models):
        if model in NIC_DRIVERS:
            needs.append(DriverNeed(f"the {model} NIC", NIC_DRIVERS[model], False))
    return needs


@dataclass(frozen=True)
class KernelImage:
    version: str
    initrd: str | None  # path on ``fs``, None when no initramfs was found for it
    how: str  # how it was chosen as the default
    fs: ExtFs  # the root filesystem, or a separate /boot
    prefix: str  # "/boot" on the root, "" on a separate /boot filesystem


def _version_key(version: str) -> list[tuple[int, int | str]]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.\-+~]", version)]


def find_boot(view: GuestView, volumes: Sequence[Volume]) -> tuple[ExtFs, str]:
    """Where the kernels are: a separate /boot filesystem named in fstab, else the root's /boot."""
    for entry in parse_fstab(view.text(FSTAB) or ""):
        if entry.mountpoint.rstrip("/") != "/boot":
            continue
        key, _, value = entry.spec.partition("=")
        for volume in volumes:
            ids = {"UUID": volume.uuid, "LABEL": volume.label, "PARTUUID": volume.partuuid}
            same = bool(value and ids.get(key)) and str(ids[key]).lower() == value.strip("\"'").lower()
            if same and volume.fstype and volume.fstype.startswith("ext"):
                return ExtFs(Path(volume.disk_path), volume.offset), ""
    return view.fs, "/boot"


def find_kernel(view: GuestView, boot: ExtFs, prefix: str) -> KernelImage | None:
    """The kernel the guest boots by default, and its initramfs."""
    names = boot.listdir(prefix or "/")
    versions = [n[len("vmlinuz-") :] for n in names if n.startswith("vmlinuz-")]
    if not versions:
        return None
    version, how = None, ""
    for link in ("/vmlinuz", "/boot/vmlinuz"):
        state = view.original(link)
        if state.kind == "symlink":
            target = posixpath.basename(state.content.decode(errors="replace"))
            if target.startswith("vmlinuz-") and target[len("vmlinuz-") :] in versions:
                version, how = target[len("vmlinuz-") :], f"{link} points to it"
                break
    if version is None:
        for config in ("grub/grub.cfg", "grub2/grub.cfg"):
            text = boot.read(posixpath.join(prefix or "/", config))
            match = re.search(rb"^\s*linux(?:16|efi)?\s+\S*vmlinuz-(\S+)", text or b"", re.MULTILINE)
            if match and match.group(1).decode() in versions:
                version, how = match.group(1).decode(), f"the first entry of {config}"
                break
    if version is None:
        version, how = max(versions, key=_version_key), "the newest installed"
    for candidate in (f"initrd.img-{version}", f"initramfs-{version}.img", f"initrd-{version}"):
        if candidate in names:
            return KernelImage(version, posixpath.join(prefix or "/", candidate), how, boot, prefix)
    return KernelImage(version, None, how, boot, prefix)


def _module_names(lines: Iterable[str]) -> set[str]:
    found = set()
    for line in lines:
        path = line.split(":", 1)[0].strip()
        if path.endswith((".ko", ".ko.xz", ".ko.zst", ".ko.gz")):
            found.add(re.sub(r"\.ko(\.(xz|zst|gz))?$", "", posixpath.basename(path)).replace("-", "_"))
    return found


@dataclass
class DriverReport:
    kernel: KernelImage | None
    in_initramfs: set[str] = field(default_factory=set)
    builtin: set[str] = field(default_factory=set)
    installed: set[str] = field(default_factory=set)
    segments: list[str] = field(default_factory=list)
    unreadable: str | None = None


def inspect_drivers(view: GuestView, kernel: KernelImage) -> DriverReport:
    report = DriverReport(kernel)
    modules_dir = f"/lib/modules/{kernel.version}"
    builtin = view.text(f"{modules_dir}/modules.builtin") or ""
    report.builtin = _module_names(builtin.splitlines())
    report.installed = _module_names((view.text(f"{modules_dir}/modules.dep") or "").splitlines())
    if kernel.initrd is None:
        report.unreadable = f"no initramfs for kernel {kernel.version} in /boot"
        return report
    with tempfile.TemporaryDirectory(prefix="hvmigrate-initrd-") as tmp:
        local = Path(tmp) / "initrd"
        try:
            kernel.fs.dump(kernel.initrd, local)
            contents = read_initramfs(
                local, lambda name, size: name.endswith("/modules.builtin") and size < 1 << 20
            )
        except (UnreadableInitramfs, GuestFsError) as exc:
            report.unreadable = f"{kernel.initrd}: {exc}"
            return report
    report.segments = contents.segments
    for name in contents.entries:
        match = _MODULE_RE.search(name)
        if match and match.group(1) == kernel.version:
            report.in_initramfs.add(match.group(2).replace("-", "_"))
    for name, data in contents.captured.items():
        if f"/{kernel.version}/" in name:
            report.builtin |= _module_names(data.decode(errors="replace").splitlines())
    return report


def _tool(view: GuestView) -> str:
    if view.exists("/etc/initramfs-tools") or view.exists("/usr/sbin/update-initramfs"):
        return "initramfs-tools"
    if view.exists("/etc/dracut.conf") or view.exists("/usr/bin/dracut") or view.exists("/usr/sbin/dracut"):
        return "dracut"
    return "unknown"


def _fix(tool: str, modules: list[str], kernel: KernelImage, platform: str) -> str:
    names = " ".join(modules)
    if tool == "dracut":
        regenerate = (
            f'on the source, add add_drivers+=" {names} " to /etc/dracut.conf.d/virtio.conf and run '
            f"dracut -f --kver {kernel.version}"
        )
    else:
        regenerate = (
            f"on the source, add {names} to /etc/initramfs-tools/modules (or set MODULES=most in "
            f"/etc/initramfs-tools/initramfs.conf) and run update-initramfs -u -k {kernel.version}"
        )
    fallback = " or give the boot disk controller: sata in target.disks and regenerate it on the replica"
    return f"{regenerate}, then sync again;" + (fallback if platform == "kvm" else "")


def check_initramfs(
    view: GuestView,
    changes: ChangeSet,
    platform: str,
    controller: str,
    nic_models: Sequence[str | None],
    volumes: Sequence[Volume] = (),
) -> list[Finding]:
    """Findings about drivers; and, for missing early drivers, the configuration edit for the next rebuild."""
    needs = driver_needs(platform, controller, nic_models)
    target = PLATFORM_NAMES.get(platform, platform)
    if not needs:
        changes.log.append(f"drivers: nothing to check for {target}")
        return []
    boot, prefix = find_boot(view, volumes)
    kernel = find_kernel(view, boot, prefix)
    if kernel is None:
        return [
            finding(
                "guest.initramfs.not_checked",
                f"no kernel (vmlinuz-*) found in /boot, so the drivers {target} needs were not checked",
                "check that /boot is on a filesystem of the migrated disks",
            )
        ]
    report = inspect_drivers(view, kernel)
    findings: list[Finding] = []
    if report.unreadable:
        findings.append(
            finding(
                "guest.initramfs.not_checked",
                f"kernel {kernel.version}: {report.unreadable}; early drivers were not checked",
                "check on the source that lsinitramfs (or lsinitrd) lists "
                + ", ".join(n.any_of[0] for n in needs if n.early),
            )
        )
    missing_early: list[str] = []
    missing_what: list[str] = []
    absent: list[str] = []
    for need in needs:
        have = report.builtin | (
            report.in_initramfs if need.early else report.installed | report.in_initramfs
        )
        if any(m in have for m in need.any_of):
            continue
        if need.early and report.unreadable:
            continue
        if not need.early and not report.installed and not report.builtin:
            findings.append(
                finding(
                    "guest.initramfs.not_checked",
                    f"kernel {kernel.version}: no modules.dep, so the driver of {need.what} was not checked",
                )
            )
            continue
        choices = " or ".join(need.any_of)
        if need.early:
            missing_early.append(need.any_of[0])
            if not any(m in report.installed for m in need.any_of):
                absent.append(choices)
            missing_what.append(choices)
            continue
        findings.append(
            finding(
                "guest.initramfs.missing_nic_driver",
                f"kernel {kernel.version} has no {choices} driver for {need.what} on {target}: the "
                "replica would come up without network",
                "install a kernel with that driver on the source, or choose another NIC type in target.nics",
            )
        )
    if missing_early:
        controller_need = next(n.what for n in needs if n.early)
        findings.append(
            finding(
                "guest.initramfs.missing_driver",
                f"kernel {kernel.version}: {', '.join(missing_what)} (for {controller_need} on {target}) "
                f"neither built in nor in {kernel.initrd}"
                + (f"; the kernel has no {', '.join(absent)} at all" if absent else "")
                + ": the replica cannot find its root disk",
                _fix(_tool(view), [n.any_of[0] for n in needs if n.early], kernel, platform),
            )
        )
    summary = (
        f"drivers for {target}: kernel {kernel.version} ({kernel.how}), initramfs "
        f"{kernel.initrd or '(none)'} [{'+'.join(report.segments) or 'unread'}]: "
    )
    early = sorted(
        {m for n in needs if n.early for m in n.any_of if m in report.builtin | report.in_initramfs}
    )
    changes.log.append(summary + (", ".join(early) if early else "no boot disk driver found") + " present")
    if missing_early:
        _plan_module_config(view, changes, _tool(view), missing_early, target)
    return findings


def _plan_module_config(
    view: GuestView, changes: ChangeSet, tool: str, modules: list[str], target: str
) -> None:
    why = f"the next initramfs rebuild includes {', '.join(modules)} for {target}"
    if tool == "dracut":
        changes.write(
            DRACUT_DROPIN,
            f'# Written by hvmigrate: drivers {target} boots from.\nadd_drivers+=" {" ".join(modules)} "\n',
            why=why,
        )
        return
    current = view.text(INITRAMFS_TOOLS_MODULES)
    listed = {
        line.split("#", 1)[0].split()[0]
        for line in (current or "").splitlines()
        if line.split("#", 1)[0].split()
    }
    extra = [m for m in modules if m not in listed]
    if not extra:
        return
    base = (
        current if current is not None else "# List of modules that you want to include in your initramfs.\n"
    )
    base = base if base.endswith("\n") or not base else base + "\n"
    changes.write(
        INITRAMFS_TOOLS_MODULES,
        base + f"# Added by hvmigrate: drivers {target} boots from.\n" + "".join(f"{m}\n" for m in extra),
        why=why,
    )
