"""netplan (/etc/netplan/*.yaml, Ubuntu and cloud images): one hvmigrate file, old definitions taken out.

netplan merges every YAML file, so a definition left in 50-cloud-init.yaml for ``ens3`` (typically
``match: {macaddress: ...}`` plus ``set-name: ens3``) would fight staging's own for the same MAC. The
guest's files are rewritten without their Ethernet definitions; a definition a bond, bridge or VLAN
still refers to is kept (removing it would make netplan reject the whole configuration) and reported.
The original of each rewritten file stays under /var/lib/hvmigrate/original.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from ..changes import ChangeSet, GuestView
from ..findings import Finding, finding
from .common import Moved, NicConfig

__all__ = ["NETPLAN_DIR", "OUR_FILE", "netplan_yaml", "plan_netplan"]

NETPLAN_DIR = "/etc/netplan"
OUR_FILE = f"{NETPLAN_DIR}/90-hvmigrate.yaml"
_LINKING = ("bonds", "bridges", "vlans", "vrfs")


def _q(value: str) -> str:
    """A YAML scalar that no YAML 1.1 reader turns into a number or a sexagesimal (MACs would be)."""
    return json.dumps(value)


def netplan_yaml(nics: list[NicConfig]) -> str:
    lines = [
        "# Written by hvmigrate: each NIC matched by its MAC and pinned to its nicN name.",
        "network:",
        "  version: 2",
        "  ethernets:",
    ]
    for nic in nics:
        lines += [
            f"    {nic.name}:",
            "      match:",
            f"        macaddress: {_q(nic.mac)}",
            f"      set-name: {nic.name}",
        ]
        address = nic.address
        if address is None:
            lines += ["      dhcp4: true"]
        else:
            lines += [f"      dhcp{address.version}: false", "      addresses:", f"        - {_q(nic.ip)}"]
            if nic.gateway:
                default = "0.0.0.0/0" if address.version == 4 else "::/0"  # every netplan version
                lines += [
                    "      routes:",
                    f"        - to: {_q(default)}",
                    f"          via: {_q(nic.gateway)}",
                ]
        if nic.dns:
            lines += ["      nameservers:", f"        addresses: [{', '.join(_q(d) for d in nic.dns)}]"]
    return "\n".join(lines) + "\n"


def _linked(network: dict[str, Any]) -> dict[str, str]:
    """Interface id -> the bond/bridge/VLAN that uses it."""
    used: dict[str, str] = {}
    for kind in _LINKING:
        for name, spec in (network.get(kind) or {}).items():
            if not isinstance(spec, dict):
                continue
            for member in spec.get("interfaces") or []:
                used[str(member)] = f"{kind[:-1]} {name}"
            if spec.get("link"):
                used[str(spec["link"])] = f"{kind[:-1]} {name}"
    return used


def plan_netplan(view: GuestView, changes: ChangeSet, nics: list[NicConfig], moved: Moved) -> list[Finding]:
    findings: list[Finding] = []
    documents: dict[str, dict[str, Any]] = {}
    for name in view.listdir(NETPLAN_DIR):
        path = f"{NETPLAN_DIR}/{name}"
        if not name.endswith(".yaml") or path == OUR_FILE:
            continue
        try:
            data = yaml.safe_load(view.text(path) or "") or {}
        except yaml.YAMLError as exc:
            findings.append(
                finding(
                    "guest.net.kept_definition",
                    f"{path} is not valid YAML ({str(exc).splitlines()[0]}); left as it is",
                    f"fix {path}: netplan rejects the whole configuration while one file is invalid",
                )
            )
            continue
        if isinstance(data, dict) and isinstance(data.get("network"), dict):
            documents[path] = data
    used: dict[str, str] = {}
    for data in documents.values():
        used.update(_linked(data["network"]))
    for path, data in documents.items():
        ethernets = data["network"].get("ethernets")
        if not isinstance(ethernets, dict) or not ethernets:
            continue
        removed = []
        for ident in list(ethernets):
            if ident in used:
                findings.append(
                    finding(
                        "guest.net.kept_definition",
                        f"{path}: ethernet {ident} is kept because {used[ident]} uses it; the replica's NICs "
                        f"are {', '.join(sorted(moved.ours))}",
                        f"point {used[ident]} at the nicN names in {path} on the replica",
                    )
                )
                continue
            removed.append(str(ident))
            del ethernets[ident]
        if not removed:
            continue
        if not ethernets:
            del data["network"]["ethernets"]
        header = (
            f"# Edited by hvmigrate: ethernets {', '.join(removed)} moved to {OUR_FILE}.\n"
            f"# The original is /var/lib/hvmigrate/original{path}.\n"
        )
        state = view.original(path)
        changes.write(
            path,
            header + yaml.safe_dump(data, default_flow_style=False, sort_keys=False),
            state.mode if state.kind == "file" else 0o600,
            why=f"take out the definitions of {', '.join(removed)}, which {OUR_FILE} replaces",
        )
    changes.write(OUR_FILE, netplan_yaml(nics), 0o600, why="; ".join(n.summary() for n in nics))
    return findings
