"""The source platform's guest tools, disabled on a replica that runs on another platform.

VMware Tools, the Hyper-V daemons and the QEMU guest agent talk to a hypervisor the replica no longer
has: at best they log errors at every boot, at worst they wait for a device and delay it. Packages cannot
be removed offline (that needs the guest's own package manager running), so their systemd units are
masked, a link to /dev/null in /etc/systemd/system, which the record under /var/lib/hvmigrate lets
anyone undo (``systemctl unmask``, or `revert_edits`). The tools of the target's own platform are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from .changes import ChangeSet, GuestView
from .findings import Finding, finding

__all__ = ["GUEST_TOOLS", "GuestTools", "detect_tools", "plan_guest_tools"]

UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
SYSTEMD = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")
DPKG_STATUS = "/var/lib/dpkg/status"


@dataclass(frozen=True)
class GuestTools:
    platform: str  # esx, hyperv, kvm: where they belong
    name: str
    packages: tuple[str, ...]
    units: tuple[str, ...]
    evidence: tuple[str, ...]  # files whose presence shows the tools are installed


GUEST_TOOLS = (
    GuestTools(
        "esx",
        "VMware Tools",
        ("open-vm-tools", "open-vm-tools-desktop"),
        (
            "open-vm-tools.service",
            "vmtoolsd.service",
            "vgauth.service",
            "vgauthd.service",
            "vmware-tools.service",
        ),
        ("/usr/bin/vmtoolsd", "/etc/vmware-tools", "/etc/init.d/vmware-tools"),
    ),
    GuestTools(
        "hyperv",
        "Hyper-V daemons",
        ("hyperv-daemons",),
        (
            "hv-kvp-daemon.service",
            "hv-vss-daemon.service",
            "hv-fcopy-daemon.service",
            "hypervkvpd.service",
            "hypervvssd.service",
            "hypervfcopyd.service",
        ),
        ("/usr/sbin/hv_kvp_daemon", "/usr/sbin/hypervkvpd", "/usr/sbin/hv_vss_daemon"),
    ),
    GuestTools(
        "kvm",
        "QEMU guest agent",
        ("qemu-guest-agent",),
        ("qemu-guest-agent.service",),
        ("/usr/sbin/qemu-ga", "/usr/bin/qemu-ga"),
    ),
)


def _installed_packages(view: GuestView) -> set[str]:
    """Debian packages dpkg marks installed (RPM databases cannot be read offline without rpm)."""
    installed, package = set(), None
    for line in (view.text(DPKG_STATUS) or "").splitlines():
        if line.startswith("Package: "):
            package = line[len("Package: ") :].strip()
        elif line.startswith("Status: ") and line.rstrip().endswith(" installed") and package:
            installed.add(package)
    return installed


def _unit_present(view: GuestView, unit: str) -> bool:
    if any(view.exists(f"{d}/{unit}") for d in UNIT_DIRS):
        return True
    return unit == "vmware-tools.service" and view.exists("/etc/init.d/vmware-tools")  # sysv, via generator


def detect_tools(view: GuestView) -> list[tuple[GuestTools, list[str], list[str]]]:
    """(tools, their units present, their packages installed) for each kind found on the guest."""
    packages = _installed_packages(view)
    found = []
    for tools in GUEST_TOOLS:
        units = [u for u in tools.units if _unit_present(view, u)]
        installed = [p for p in tools.packages if p in packages]
        if units or installed or any(view.exists(e) for e in tools.evidence):
            found.append((tools, units, installed))
    return found


def plan_guest_tools(view: GuestView, changes: ChangeSet, platform: str) -> list[Finding]:
    findings: list[Finding] = []
    systemd = any(view.exists(p) for p in SYSTEMD)
    for tools, units, packages in detect_tools(view):
        what = tools.name + (f" ({', '.join(packages)})" if packages else "")
        if tools.platform == platform:
            changes.log.append(f"{what}: kept, it belongs to the target platform")
            continue
        if not systemd or not units:
            findings.append(
                finding(
                    "guest.tools.not_disabled",
                    f"{what} is installed but no systemd unit of it was found to mask",
                    f"remove {', '.join(tools.packages)} on the replica after it boots",
                )
            )
            continue
        for unit in units:
            changes.symlink(
                f"/etc/systemd/system/{unit}",
                "/dev/null",
                why=f"mask {unit}: {tools.name} has no {tools.platform} hypervisor to talk to here",
            )
        findings.append(
            finding(
                "guest.tools.masked",
                f"{what}: masked {', '.join(units)} (the package stays installed)",
                f"remove {', '.join(packages or tools.packages)} on the replica when convenient",
            )
        )
    return findings
