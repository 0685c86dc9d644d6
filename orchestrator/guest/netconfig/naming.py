"""Pin each NIC's name to its MAC, and take away the older rules that would name it otherwise.

The new hypervisor's bus layout decides the kernel name (enp0s2 under QEMU where the source said ens3 or
eth0). A systemd ``.link`` file matching the MAC gives the NIC a fixed name whatever the bus; udev applies
the first .link file that matches, in lexical order over /etc, /run and /usr/lib, and a NAME= set by an
older udev rule (70-persistent-net.rules) wins over any .link file. So staging writes
``10-hvmigrate-N.link`` and removes (or comments out) the guest's own rules for the moved MACs.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from ..changes import ChangeSet, GuestView
from .common import LINK_DIR, Moved, NicConfig

__all__ = ["LinkRule", "link_file", "parse_link_file", "plan_naming"]

UDEV_RULES_DIR = "/etc/udev/rules.d"
COMMENT = "#hvmigrate# "
_ADDRESS_RE = re.compile(r'ATTRS?\{address\}=="([^"]+)"')


@dataclass(frozen=True)
class LinkRule:
    """A systemd .link file reduced to what naming needs: which MACs it matches, what name it gives."""

    file: str
    macs: tuple[str, ...]
    name: str | None


def parse_link_file(file: str, text: str) -> LinkRule:
    section = ""
    macs: list[str] = []
    name = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        if section == "Match" and key.strip() in ("MACAddress", "PermanentMACAddress"):
            macs.extend(m.lower() for m in value.split())
        elif section == "Link" and key.strip() == "Name":
            name = value.strip() or None
    return LinkRule(file, tuple(macs), name)


def link_file(index: int) -> str:
    return f"{LINK_DIR}/10-hvmigrate-{index}.link"


def link_content(nic: NicConfig) -> str:
    return (
        "# Written by hvmigrate: this MAC keeps the name its network configuration uses.\n"
        f"[Match]\nMACAddress={nic.mac}\n\n[Link]\nName={nic.name}\n"
    )


def plan_naming(view: GuestView, changes: ChangeSet, nics: list[NicConfig], moved: Moved) -> None:
    for nic in nics:
        changes.write(link_file(nic.index), link_content(nic), why=f"pin {nic.mac} to the name {nic.name}")
    ours = {posixpath.basename(link_file(n.index)) for n in nics}
    for entry in view.listdir(LINK_DIR):
        if not entry.endswith(".link") or entry in ours or entry.startswith("10-hvmigrate-"):
            continue
        path = f"{LINK_DIR}/{entry}"
        rule = parse_link_file(entry, view.text(path) or "")
        hit = next((m for m in rule.macs if moved.has_mac(m)), None)
        if hit:
            changes.remove(path, why=f"it names {hit} {rule.name or '(no name)'}, which staging pins now")
    for entry in view.listdir(UDEV_RULES_DIR):
        if not entry.endswith(".rules"):
            continue
        path = f"{UDEV_RULES_DIR}/{entry}"
        text = view.text(path)
        if text is None:
            continue
        lines, hits = [], []
        for line in text.splitlines(keepends=True):
            match = _ADDRESS_RE.search(line)
            if (
                not line.lstrip().startswith("#")
                and "NAME=" in line
                and match
                and moved.has_mac(match.group(1))
            ):
                lines.append(COMMENT + line)
                hits.append(match.group(1).lower())
            else:
                lines.append(line)
        if hits:
            changes.write(
                path,
                "".join(lines),
                view.original(path).mode,
                why=f"its NAME= rules for {', '.join(hits)} would override the pinned names",
            )
