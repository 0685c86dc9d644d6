"""NetworkManager: one keyfile profile per NIC; the guest's own Ethernet profiles stop autoconnecting.

A keyfile (/etc/NetworkManager/system-connections/NAME.nmconnection) must be owned by root with mode
0600 or NetworkManager ignores it. The source's Ethernet profiles are not deleted: ``autoconnect=false``
keeps them for an administrator to look at while making sure they cannot take a moved NIC first. On
RHEL-like guests the same applies to ifcfg files (``ONBOOT=no``), which NetworkManager reads as well.
"""

from __future__ import annotations

import re
import uuid

from ..changes import ChangeSet, GuestView
from ..findings import Finding, finding
from .common import Moved, NicConfig

__all__ = ["CONNECTIONS_DIR", "keyfile", "plan_networkmanager"]

CONNECTIONS_DIR = "/etc/NetworkManager/system-connections"
IFCFG_DIR = "/etc/sysconfig/network-scripts"
_PROFILE_NAMESPACE = uuid.UUID("5d0c6a3e-9a59-4c1e-9a0e-6876d6b1c0de")


def keyfile(nic: NicConfig) -> str:
    lines = [
        "# Written by hvmigrate: the profile of the replica's NIC with this MAC.",
        "[connection]",
        f"id=hvmigrate-{nic.name}",
        f"uuid={uuid.uuid5(_PROFILE_NAMESPACE, f'{nic.name}/{nic.mac}')}",
        "type=ethernet",
        f"interface-name={nic.name}",
        "autoconnect=true",
        "autoconnect-priority=100",
        "",
        "[ethernet]",
        f"mac-address={nic.mac.upper()}",
        "",
    ]
    address = nic.address
    v4 = [d for d in nic.dns if ":" not in d]
    v6 = [d for d in nic.dns if ":" in d]
    if address is None:
        lines += ["[ipv4]", "method=auto", "", "[ipv6]", "method=auto", ""]
    else:
        gateway = f",{nic.gateway}" if nic.gateway else ""
        static = [f"address1={address.with_prefixlen}{gateway}", "method=manual"]
        if address.version == 4:
            lines += ["[ipv4]", *static, *([f"dns={';'.join(v4)};"] if v4 else []), ""]
            lines += ["[ipv6]", "method=auto", *([f"dns={';'.join(v6)};"] if v6 else []), ""]
        else:
            lines += ["[ipv4]", "method=disabled", ""]
            lines += ["[ipv6]", *static, *([f"dns={';'.join(v6)};"] if v6 else []), ""]
    return "\n".join(lines)


def _sections(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip(), {})
        elif current is not None and "=" in line:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return sections


def _without_autoconnect(text: str) -> str:
    """The same keyfile with ``autoconnect=false`` in [connection], everything else untouched."""
    out, section, done = [], "", False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if section == "connection" and not done:
                out.append("autoconnect=false")
                done = True
            section = stripped[1:-1].strip()
        elif section == "connection" and re.match(r"\s*autoconnect\s*=", line):
            out.append("autoconnect=false")
            done = True
            continue
        out.append(line)
    if not done:
        out.append("autoconnect=false")
    return "\n".join(out) + "\n"


def plan_networkmanager(
    view: GuestView, changes: ChangeSet, nics: list[NicConfig], moved: Moved
) -> list[Finding]:
    findings: list[Finding] = []
    ours = {f"hvmigrate-{n.name}.nmconnection" for n in nics}
    for name in view.listdir(CONNECTIONS_DIR):
        path = f"{CONNECTIONS_DIR}/{name}"
        if name in ours or name.startswith("hvmigrate-"):
            continue
        text = view.text(path)
        if text is None:
            continue
        profile = _sections(text)
        connection = profile.get("connection", {})
        if connection.get("type") not in ("ethernet", "802-3-ethernet"):
            continue
        if connection.get("autoconnect", "true").lower() in ("false", "no", "0"):
            continue
        controller = connection.get("master") or connection.get("controller")
        if controller:
            findings.append(
                finding(
                    "guest.net.kept_definition",
                    f"{path}: profile {connection.get('id', name)} is a port of {controller}; left as it is, "
                    f"but it names an interface the replica may not have",
                    f"bind it to one of {', '.join(sorted(moved.ours))} on the replica",
                )
            )
            continue
        changes.write(
            path,
            _without_autoconnect(text),
            view.original(path).mode,
            why=f"stop the source's profile {connection.get('id', name)} from taking a moved NIC",
        )
    for name in view.listdir(IFCFG_DIR):
        path = f"{IFCFG_DIR}/{name}"
        if not name.startswith("ifcfg-") or name == "ifcfg-lo":
            continue
        text = view.text(path) or ""
        values = dict(
            (k.strip(), v.strip().strip("\"'"))
            for k, _, v in (line.partition("=") for line in text.splitlines())
            if k.strip() and not k.lstrip().startswith("#")
        )
        device = values.get("DEVICE") or name[len("ifcfg-") :]
        if values.get("ONBOOT", "yes").lower() in ("no", "false"):
            continue
        if not (moved.is_stale_name(device) or moved.has_mac(values.get("HWADDR"))):
            continue
        parent = values.get("MASTER") or values.get("BRIDGE")
        if parent:
            findings.append(
                finding(
                    "guest.net.kept_definition",
                    f"{path}: {device} is a port of {parent}; left as it is, but the replica has no {device}",
                    f"make one of {', '.join(sorted(moved.ours))} the port of {parent} on the replica",
                )
            )
            continue
        lines = [ln for ln in text.splitlines() if not re.match(r"\s*ONBOOT\s*=", ln)]
        changes.write(
            path,
            "\n".join([*lines, "ONBOOT=no"]) + "\n",
            view.original(path).mode,
            why=f"stop the source's {device} configuration from taking a moved NIC",
        )
    for nic in nics:
        changes.write(
            f"{CONNECTIONS_DIR}/hvmigrate-{nic.name}.nmconnection", keyfile(nic), 0o600, why=nic.summary()
        )
    return findings
