"""systemd-networkd: one ``10-hvmigrate-nicN.network`` per NIC; the guest's competing files moved aside.

networkd gives each interface the first .network file, in lexical order, whose [Match] fits it. A file
naming a moved NIC (by its old name or MAC) is stale and removed; so is a catch-all (``Name=*``, or a
[Match] on type only) that sorts before staging's and would take the NIC first. A file that makes the
NIC a bond, bridge or VLAN port is kept and reported. Removed files stay under /var/lib/hvmigrate/original.
"""

from __future__ import annotations

from ..changes import ChangeSet, GuestView
from ..findings import Finding, finding
from .common import LINK_DIR, Moved, NicConfig

__all__ = ["network_file", "network_unit", "plan_networkd"]

NETWORK_DIR = LINK_DIR  # /etc/systemd/network holds both .link and .network files
_PORT_KEYS = ("Bond", "Bridge", "VLAN", "MACVLAN", "VRF")


def network_file(nic: NicConfig) -> str:
    return f"{NETWORK_DIR}/10-hvmigrate-{nic.name}.network"


def network_unit(nic: NicConfig) -> str:
    lines = [
        "# Written by hvmigrate: the configuration of the replica's NIC with this MAC.",
        "[Match]",
        f"MACAddress={nic.mac}",
        f"Name={nic.name}",
        "",
        "[Network]",
    ]
    if nic.dhcp:
        lines.append("DHCP=yes")
    else:
        lines.append(f"Address={nic.ip}")
        if nic.gateway:
            lines.append(f"Gateway={nic.gateway}")
    lines += [f"DNS={d}" for d in nic.dns]
    return "\n".join(lines) + "\n"


def _parse(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip(), {})
        elif current is not None and "=" in line:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).extend(value.split())
    return sections


def plan_networkd(view: GuestView, changes: ChangeSet, nics: list[NicConfig], moved: Moved) -> list[Finding]:
    findings: list[Finding] = []
    ours = {network_file(n).rsplit("/", 1)[1] for n in nics}
    first_ours = min(ours) if ours else ""
    for name in view.listdir(NETWORK_DIR):
        if not name.endswith(".network") or name in ours or name.startswith("10-hvmigrate-"):
            continue
        path = f"{NETWORK_DIR}/{name}"
        unit = _parse(view.text(path) or "")
        match = unit.get("Match", {})
        names = match.get("Name", [])
        macs = match.get("MACAddress", []) + match.get("PermanentMACAddress", [])
        explicit = any(moved.has_mac(m) for m in macs) or any(
            moved.is_stale_name(n) for n in names if not any(c in n for c in "*?[!")
        )
        types = match.get("Type", [])
        catch_all = (
            not macs and (not types or "ether" in types) and moved.glob_hits_ours(names) and name < first_ours
        )
        if not (explicit or catch_all):
            continue
        ports = [k for k in _PORT_KEYS if unit.get("Network", {}).get(k)]
        if ports:
            findings.append(
                finding(
                    "guest.net.kept_definition",
                    f"{path} makes its interface a {'/'.join(ports)} port; left as it is",
                    f"match it to one of {', '.join(sorted(moved.ours))} on the replica",
                )
            )
            continue
        why = "it names a moved NIC" if explicit else f"it matches every NIC and sorts before {first_ours}"
        changes.remove(path, why=why)
    for nic in nics:
        changes.write(network_file(nic), network_unit(nic), why=nic.summary())
    return findings
