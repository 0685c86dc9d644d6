"""ifupdown (Debian's /etc/network/interfaces and interfaces.d): the guest's stanzas for moved NICs are
commented out in place, and staging's own stanzas are appended between markers.

Commenting instead of rewriting keeps everything else the administrator wrote (bridges, routes, hooks)
and leaves the old stanzas readable. ifupdown reads interfaces.d through ``source`` globs that include
any file name, so a stanza there cannot be disabled by renaming its file: it is commented out too.
"""

from __future__ import annotations

import ipaddress
import posixpath
from dataclasses import dataclass, field

from ..changes import ChangeSet, GuestView
from ..findings import Finding, finding
from .common import Moved, NicConfig, mentions

__all__ = [
    "INTERFACES",
    "InterfaceStanza",
    "Neutralised",
    "neutralise",
    "parse_interfaces",
    "plan_ifupdown",
    "plan_resolver",
    "stanzas_text",
]

INTERFACES = "/etc/network/interfaces"
INTERFACES_D = "/etc/network/interfaces.d"
BEGIN = "# BEGIN hvmigrate"
END = "# END hvmigrate"
COMMENT = "#hvmigrate# "
_STANZA_KEYS = (
    "iface",
    "mapping",
    "auto",
    "source",
    "source-directory",
    "rename",
    "no-auto-down",
    "no-scripts",
)


@dataclass(frozen=True)
class InterfaceStanza:
    name: str
    family: str  # inet, inet6
    method: str  # static, dhcp, loopback, manual
    auto: bool  # brought up at boot (auto / allow-hotplug)
    addresses: tuple[str, ...] = ()  # CIDR
    gateway: str | None = None
    hwaddress: str | None = None
    dns: tuple[str, ...] = ()


def parse_interfaces(text: str) -> list[InterfaceStanza]:
    """The ``iface`` stanzas of an ifupdown /etc/network/interfaces (continuation lines joined)."""
    lines = text.replace("\\\n", " ").splitlines()
    auto: set[str] = set()
    stanzas: list[dict] = []
    current: dict | None = None
    for raw in lines:
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        key = words[0]
        if key == "auto" or key.startswith("allow-"):
            auto.update(words[1:])
            current = None
        elif key == "iface" and len(words) >= 4:
            current = {
                "name": words[1],
                "family": words[2],
                "method": words[3],
                "address": [],
                "netmask": None,
                "gateway": None,
                "hwaddress": None,
                "dns": [],
            }
            stanzas.append(current)
        elif key in ("mapping", "source", "source-directory", "rename"):
            current = None
        elif current is not None and len(words) >= 2:
            if key == "address":
                current["address"].append(words[1])
            elif key == "netmask":
                current["netmask"] = words[1]
            elif key == "gateway":
                current["gateway"] = words[1]
            elif key == "hwaddress":
                current["hwaddress"] = words[-1].lower()
            elif key == "dns-nameservers":
                current["dns"].extend(words[1:])
    return [_stanza(s, s["name"] in auto) for s in stanzas]


def _stanza(raw: dict, auto: bool) -> InterfaceStanza:
    addresses = []
    for address in raw["address"]:
        text = address if "/" in address or not raw["netmask"] else f"{address}/{raw['netmask']}"
        try:
            addresses.append(str(ipaddress.ip_interface(text)))
        except ValueError:
            addresses.append(address)
    return InterfaceStanza(
        raw["name"],
        raw["family"],
        raw["method"],
        auto,
        tuple(addresses),
        raw["gateway"],
        raw["hwaddress"],
        tuple(raw["dns"]),
    )


def _key(line: str) -> str:
    words = line.split("#", 1)[0].split()
    return words[0] if words else ""


def _is_stanza_start(line: str) -> bool:
    key = _key(line)
    return key in _STANZA_KEYS or key.startswith("allow-")


@dataclass
class Neutralised:
    text: str
    removed: list[str] = field(default_factory=list)  # interface names whose definitions were commented
    kept_refs: dict[str, set[str]] = field(default_factory=dict)  # kept stanza -> stale names it uses


def neutralise(text: str, moved: Moved) -> Neutralised:
    """Comment out every stanza, auto and allow- entry for a stale interface; drop an old hvmigrate block."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    result = Neutralised("")
    index = 0
    in_block = False
    while index < len(lines):
        line = lines[index]
        if line.startswith(BEGIN):
            in_block = True
        if in_block:
            in_block = not line.startswith(END)
            index += 1
            continue
        words = line.split("#", 1)[0].split()
        key = words[0] if words else ""
        if key in ("iface", "mapping") and len(words) >= 2:
            end = index + 1
            while end < len(lines) and not _is_stanza_start(lines[end]) and not lines[end].startswith(BEGIN):
                end += 1
            block = lines[index:end]
            while block and not block[-1].strip():  # trailing blank lines are not part of the stanza
                block.pop()
                end -= 1
            if moved.is_stale_name(words[1]):
                out += [COMMENT + b if b.strip() else b for b in block]
                if words[1] not in result.removed:
                    result.removed.append(words[1])
            else:
                out += block
                body = "".join(b.split("#", 1)[0] for b in block[1:])
                stale = {w for w in set(body.split()) if moved.is_stale_name(w)}
                if stale:
                    result.kept_refs[words[1]] = mentions(body, stale)
            index = end
            continue
        if (key == "auto" or key.startswith("allow-")) and len(words) >= 2:
            keep = [w for w in words[1:] if not moved.is_stale_name(w)]
            if len(keep) < len(words) - 1:
                out.append(COMMENT + line)
                if keep:
                    out.append(f"{key} {' '.join(keep)}\n")
                index += 1
                continue
        out.append(line)
        index += 1
    result.text = "".join(out)
    return result


def stanzas_text(nics: list[NicConfig], *, with_loopback: bool) -> str:
    """Staging's block: one auto stanza per NIC, by its pinned name."""
    lines = [
        f"{BEGIN}: each name below is pinned to its MAC by /etc/systemd/network/10-hvmigrate-<n>.link",
    ]
    if with_loopback:
        lines += ["auto lo", "iface lo inet loopback", ""]
    for nic in nics:
        lines.append(f"auto {nic.name}")
        address = nic.address
        if address is None:
            lines += [f"iface {nic.name} inet dhcp", f"    hwaddress ether {nic.mac}"]
        else:
            family = "inet" if address.version == 4 else "inet6"
            lines += [
                f"iface {nic.name} {family} static",
                f"    address {address.with_prefixlen}",
                f"    hwaddress ether {nic.mac}",
            ]
            if nic.gateway:
                lines.append(f"    gateway {nic.gateway}")
        if nic.dns:
            lines.append("    dns-nameservers " + " ".join(nic.dns))
        lines.append("")
    lines[-1] = END
    return "\n".join(lines) + "\n"


_FRESH_HEADER = (
    "# Written by hvmigrate: the source had no /etc/network/interfaces.\n"
    "source /etc/network/interfaces.d/*\n\n"
)


def plan_ifupdown(view: GuestView, changes: ChangeSet, nics: list[NicConfig], moved: Moved) -> list[Finding]:
    findings: list[Finding] = []
    original = view.text(INTERFACES)
    files = [(INTERFACES, original if original is not None else _FRESH_HEADER)]
    files += [
        (posixpath.join(INTERFACES_D, name), view.text(posixpath.join(INTERFACES_D, name)) or "")
        for name in view.listdir(INTERFACES_D)
    ]
    has_loopback = False
    for path, text in files:
        done = neutralise(text, moved)
        has_loopback = has_loopback or any(
            line.split()[:2] == ["iface", "lo"] for line in done.text.splitlines() if line.strip()
        )
        for stanza, names in done.kept_refs.items():
            findings.append(
                finding(
                    "guest.net.kept_definition",
                    f"{path}: iface {stanza} still uses {', '.join(sorted(names))}, which the replica "
                    "does not have",
                    f"edit {path} on the replica (or the source before the final sync) to use "
                    f"{', '.join(sorted(moved.ours))}",
                )
            )
        if path == INTERFACES:
            main, removed = done.text, done.removed
        elif done.text != text:
            changes.write(
                path,
                done.text,
                view.original(path).mode if view.original(path).kind == "file" else 0o644,
                why=f"comment out the stanzas for {', '.join(done.removed)}, which moved to the nicN names",
            )
    block = stanzas_text(nics, with_loopback=not has_loopback)
    content = main.rstrip("\n") + "\n\n" + block if main.strip() else block
    why = "; ".join(n.summary() for n in nics)
    if removed:
        why += f" (the source's stanzas for {', '.join(removed)} are commented out)"
    changes.write(INTERFACES, content, 0o644, why=why)
    return findings


def plan_resolver(view: GuestView, changes: ChangeSet, nics: list[NicConfig]) -> None:
    """Make ifupdown's ``dns-nameservers`` take effect where nothing else would carry them.

    ``dns-nameservers`` only reaches the resolver through the resolvconf package. Without it a static
    /etc/resolv.conf still lists the source's servers, and with systemd-resolved the servers belong in a
    resolved.conf drop-in.
    """
    servers = list(dict.fromkeys(d for n in nics for d in n.dns))
    if not servers:
        return
    if view.exists("/sbin/resolvconf") or view.exists("/usr/sbin/resolvconf"):
        return
    state = view.original("/etc/resolv.conf")
    why = f"the map gives DNS {' '.join(servers)}, and ifupdown alone does not write the resolver"
    if state.kind == "symlink" and b"systemd/resolve" in state.content:
        changes.write(
            "/etc/systemd/resolved.conf.d/90-hvmigrate.conf",
            f"# Written by hvmigrate\n[Resolve]\nDNS={' '.join(servers)}\n",
            why=why,
        )
        return
    if state.kind != "file" or b"generated by" in state.content.lower():
        return
    kept = [
        line for line in state.content.decode(errors="replace").splitlines() if _key(line) != "nameserver"
    ]
    lines = [*kept, *(f"nameserver {s}" for s in servers[:3])]  # the resolver reads three at most
    changes.write("/etc/resolv.conf", "\n".join(lines) + "\n", state.mode, why=why)
