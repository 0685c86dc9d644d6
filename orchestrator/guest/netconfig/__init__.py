"""The replica's network identity, written in whichever format the guest really uses.

Which system brings a Linux guest's network up is read from its files, most specific first: netplan
(it renders for networkd or NetworkManager, so its YAML is what counts), ifupdown when
/etc/network/interfaces configures more than loopback, NetworkManager when it is installed and enabled
or holds profiles, systemd-networkd when enabled or configured, then ifupdown if installed. Whatever the
format, names are pinned to MACs (`naming`), and cloud-init, if present, is told not to regenerate the
network configuration on its first boot on the new platform (it would, seeing a new instance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..changes import ChangeSet, GuestView
from ..findings import Finding, finding
from .common import Moved, NicConfig, interface_name
from .ifupdown import INTERFACES, plan_ifupdown, plan_resolver
from .naming import plan_naming
from .netplan import NETPLAN_DIR, plan_netplan
from .networkd import NETWORK_DIR, plan_networkd
from .networkmanager import CONNECTIONS_DIR, IFCFG_DIR, plan_networkmanager

__all__ = ["MANAGERS", "NetworkDetection", "NicConfig", "detect_manager", "interface_name", "plan_network"]

Planner = Callable[[GuestView, ChangeSet, list[NicConfig], Moved], list[Finding]]
MANAGERS: dict[str, Planner] = {
    "netplan": plan_netplan,
    "ifupdown": plan_ifupdown,
    "networkmanager": plan_networkmanager,
    "networkd": plan_networkd,
}
CLOUD_INIT_DROPIN = "/etc/cloud/cloud.cfg.d/99-hvmigrate-network.cfg"
_WANTS = ("/etc/systemd/system/multi-user.target.wants", "/etc/systemd/system/network-online.target.wants")


@dataclass(frozen=True)
class NetworkDetection:
    manager: str  # one of MANAGERS
    evidence: str  # why: shown in the log
    present: tuple[str, ...]  # every system that has configuration or is installed, active one first
    guessed: bool = False  # nothing recognisable: ifupdown written as the least surprising default


def _installed(view: GuestView, *paths: str) -> bool:
    return any(view.exists(p) for p in paths)


def _enabled(view: GuestView, unit: str) -> bool:
    return any(view.exists(f"{wants}/{unit}") for wants in _WANTS)


def _ifupdown_stanzas(view: GuestView) -> list[str]:
    from ..linux import parse_interfaces

    texts = [view.text(INTERFACES) or ""]
    texts += [
        view.text(f"/etc/network/interfaces.d/{n}") or "" for n in view.listdir("/etc/network/interfaces.d")
    ]
    return [s.name for t in texts for s in parse_interfaces(t) if s.method != "loopback" and s.name != "lo"]


def detect_manager(view: GuestView) -> NetworkDetection:
    netplan_files = [n for n in view.listdir(NETPLAN_DIR) if n.endswith(".yaml")]
    netplan = bool(netplan_files) and _installed(
        view,
        "/usr/sbin/netplan",
        "/usr/share/netplan/netplan.script",
        "/lib/netplan/generate",
        "/usr/lib/netplan/generate",
        "/usr/libexec/netplan/generate",
    )
    stanzas = _ifupdown_stanzas(view)
    ifupdown_installed = _installed(view, "/sbin/ifup", "/usr/sbin/ifup")
    nm_installed = _installed(view, "/usr/sbin/NetworkManager")
    nm_profiles = [n for n in view.listdir(CONNECTIONS_DIR)] + [
        n for n in view.listdir(IFCFG_DIR) if n.startswith("ifcfg-") and n != "ifcfg-lo"
    ]
    nm = nm_installed and (_enabled(view, "NetworkManager.service") or bool(nm_profiles))
    networkd_files = [n for n in view.listdir(NETWORK_DIR) if n.endswith(".network")]
    networkd = _enabled(view, "systemd-networkd.service") or bool(networkd_files)
    candidates: list[tuple[str, bool, str]] = [
        ("netplan", netplan, f"{NETPLAN_DIR} holds {', '.join(netplan_files)}"),
        ("ifupdown", bool(stanzas), f"{INTERFACES} configures {', '.join(dict.fromkeys(stanzas))}"),
        ("networkmanager", nm, "NetworkManager is installed and enabled or has profiles"),
        ("networkd", networkd, "systemd-networkd is enabled or has .network files"),
        ("ifupdown", ifupdown_installed, "ifupdown is installed"),
    ]
    active = [(name, why) for name, hit, why in candidates if hit]
    present = tuple(dict.fromkeys(name for name, _ in active))
    if not active:
        return NetworkDetection("ifupdown", "no network configuration system recognised", (), guessed=True)
    return NetworkDetection(active[0][0], active[0][1], present)


def plan_network(
    view: GuestView, changes: ChangeSet, nics: list[NicConfig]
) -> tuple[NetworkDetection, list[Finding]]:
    """Plan the network identity of every NIC; returns what was detected and what an operator must know."""
    moved = Moved.of(nics)
    detection = detect_manager(view)
    changes.log.append(f"network configuration: {detection.manager} ({detection.evidence})")
    findings: list[Finding] = []
    if detection.guessed:
        findings.append(
            finding(
                "guest.net.no_manager",
                "no netplan, ifupdown, NetworkManager or systemd-networkd configuration found; "
                "wrote ifupdown and systemd-networkd configuration",
                "check how this guest configures its network and configure the nicN interfaces by hand",
            )
        )
    for other in detection.present[1:]:
        findings.append(
            finding(
                "guest.net.other_manager",
                f"{other} is also present; staging wrote {detection.manager} configuration only",
            )
        )
    findings += MANAGERS[detection.manager](view, changes, nics, moved)
    if detection.guessed:
        findings += plan_networkd(view, changes, nics, moved)
    if detection.manager == "ifupdown":
        plan_resolver(view, changes, nics)
    plan_naming(view, changes, nics, moved)
    if view.exists("/etc/cloud/cloud.cfg"):
        changes.write(
            CLOUD_INIT_DROPIN,
            "# Written by hvmigrate: the network configuration was staged for the new platform.\n"
            "network: {config: disabled}\n",
            why="cloud-init would otherwise rewrite the network configuration on its first boot here",
        )
    return detection, findings
