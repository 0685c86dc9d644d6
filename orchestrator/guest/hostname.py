"""The replica's hostname: /etc/hostname and the /etc/hosts lines that make it resolve locally.

Debian resolves its own name through a ``127.0.1.1`` line; most servers also carry a line mapping their
address to ``host.domain host``. When the address or the name changes, those lines must follow or
``hostname -f`` (and with it sudo, mail and Kerberos) stalls on DNS. The domain of the old fully
qualified name is kept when the playbook gives a short name.
"""

from __future__ import annotations

import re

from .changes import ChangeSet, GuestView
from .edits import HOSTS_MARK

__all__ = ["check_hostname", "hosts_lines", "plan_hostname"]

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*")


def check_hostname(hostname: str) -> str:
    if not _HOSTNAME_RE.fullmatch(hostname):
        raise ValueError(f"{hostname!r} is not a valid hostname: use letters, digits and hyphens")
    return hostname


def _old_names(view: GuestView) -> tuple[str | None, str | None]:
    """(short name, domain) the source had, from /etc/hostname and its /etc/hosts lines."""
    raw = (view.text("/etc/hostname") or "").strip().split()
    old = raw[0] if raw else None
    if not old:
        return None, None
    short = old.split(".")[0]
    if "." in old:
        return short, old.split(".", 1)[1]
    for line in (view.text("/etc/hosts") or "").splitlines():
        names = line.split("#", 1)[0].split()[1:]
        if short in names:
            for name in names:
                if name.startswith(short + ".") and len(name) > len(short) + 1:
                    return short, name.split(".", 1)[1]
    return short, None


def hosts_lines(view: GuestView, hostname: str, address: str | None) -> str:
    """The lines staging owns in /etc/hosts (each marked), for the new name and, if static, address."""
    check_hostname(hostname)
    _, domain = _old_names(view)
    short = hostname.split(".")[0]
    fqdn = hostname if "." in hostname else f"{hostname}.{domain}" if domain else None
    names = f"{fqdn} {short}" if fqdn else short
    lines = [f"127.0.1.1\t{names}"]
    if address:
        lines.insert(0, f"{address}\t{names}")
    return "".join(f"{line}\t{HOSTS_MARK}\n" for line in lines)


def plan_hostname(view: GuestView, changes: ChangeSet, hostname: str, address: str | None = None) -> None:
    check_hostname(hostname)
    old, _ = _old_names(view)
    changed = changes.write(
        "/etc/hostname",
        f"{hostname}\n",
        why=f"hostname {old or '(none)'} -> {hostname}" if old != hostname else f"hostname {hostname}",
    )
    if not changed:
        changes.log.append(f"hostname {hostname} kept")
    changes.merge_hosts(
        hosts_lines(view, hostname, address),
        why=f"{hostname} resolves to 127.0.1.1" + (f" and {address}" if address else ""),
    )
