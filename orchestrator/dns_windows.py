"""Windows DNS: the same DnsUpdater as RFC 2136 and zone files, through the DnsServer cmdlets over WinRM.

Windows DNS servers (Active Directory-integrated zones above all) often take no TSIG-signed updates, only
changes by an account with rights on the zone; those changes are made with the DnsServer PowerShell module
on the server itself. Every body below is fixed text: the zone, the record's name, its values and TTLs
travel as data (``$hv``, see orchestrator/transport/winrm.py), so a name holding quotes, ``$`` or ``;``
reaches Windows as that name and nothing else.

What differs from RFC 2136, and why:
- Windows keeps a TTL per record, not per RRset: `restore` puts each old record back with its own TTL.
- There is no update that changes nothing, so `check_access` proves what can be proven without writing:
  the server hosts the zone as a primary (a secondary takes no updates), and the login may read each
  RRset. A login that may read but not write is found only by the change itself; the journal holds what
  was there before, so `migrate undo` can still put it back once the rights are fixed.
- `answers` is the DNS Server service's own data (Get-DnsServerResourceRecord), which is what it serves.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Sequence
from typing import Any

import dns.name

from orchestrator.dns import (
    DnsError,
    Record,
    TransientDnsError,
    _check_value,
    _rtype,
    _ZoneNames,
)
from orchestrator.playbook.models import WindowsDns
from orchestrator.transport.local_powershell import LocalPowerShell
from orchestrator.transport.winrm import PowerShellError, WinRM, WinRMError, WinRMTarget

# Which cmdlet adds a record of each type, and the parameter that takes its data.
ADD = {
    "A": ("Add-DnsServerResourceRecordA", "IPv4Address"),
    "AAAA": ("Add-DnsServerResourceRecordAAAA", "IPv6Address"),
    "CNAME": ("Add-DnsServerResourceRecordCName", "HostNameAlias"),
    "PTR": ("Add-DnsServerResourceRecordPtr", "PtrDomainName"),
}
ZONE = (
    "Get-DnsServerZone -Name $hv.zone | Select-Object -Property ZoneName, ZoneType, IsReverseLookupZone "
    "| ConvertTo-Json -Compress"
)
# The zone is asked first: a missing zone or a refused login stops the script, while a name without
# records (a non-terminating error of Get-DnsServerResourceRecord) is only silenced.
_FIND = (
    "Get-DnsServerResourceRecord -ZoneName $hv.zone -Name $hv.name -RRType $hv.type "
    "-ErrorAction SilentlyContinue"
)
GET = (
    "$null = Get-DnsServerZone -Name $hv.zone\n"
    f"@({_FIND} | Select-Object -Property HostName, RecordType, TimeToLive, RecordData) "
    "| ConvertTo-Json -Depth 4 -Compress"
)
REMOVE_ALL = (
    "$null = Get-DnsServerZone -Name $hv.zone\n"
    f"{_FIND} | Remove-DnsServerResourceRecord -ZoneName $hv.zone -Force"
)


DATA_FIELD = {"A": "IPv4Address", "AAAA": "IPv6Address", "CNAME": "HostNameAlias", "PTR": "PtrDomainName"}


def add_lines(rtype: str, count: int) -> str:
    """One Add per record (each keeps its own TTL); ``count`` picks how many fixed lines, never their text."""
    cmdlet, parameter = ADD[rtype]
    return "\n".join(
        f"{cmdlet} -ZoneName $hv.zone -Name $hv.name -{parameter} $hv.value{i} -TimeToLive $hv.ttl{i}"
        for i in range(count)
    )


def timespan(seconds: int) -> str:
    """A TTL as PowerShell converts it to [TimeSpan] ("d.hh:mm:ss"); a bare number would count ticks."""
    days, rest = divmod(seconds, 86400)
    return f"{days}.{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"


class WindowsDnsUpdater:
    """One zone (forward, or one of the reverse zones) on a Windows DNS server reached over WinRM."""

    def __init__(self, config: WindowsDns, *, zone: str | None = None) -> None:
        self._names = _ZoneNames(zone or config.zone)
        self.zone = self._names.zone
        self.host = config.host
        self.user = config.user or "the user running hvmigrate"
        # WinRM, or this machine's powershell.exe when the orchestrator runs on the DNS server (local)
        self.winrm: WinRM | LocalPowerShell = (
            LocalPowerShell(config.host)
            if config.transport == "local"
            else _session(WinRMTarget.from_config(config))
        )

    def __repr__(self) -> str:
        return f"WindowsDnsUpdater({self.zone} at {self.winrm.where})"

    @property
    def where(self) -> str:
        return f"Windows DNS server {self.host}"

    # ------------------------------------------------------------ the DnsUpdater protocol

    def get(self, name: str, rtype: str) -> list[Record]:
        kind = _rtype(rtype).name
        found = self._run(GET, self._data(name, kind), f"read {name} {kind}")
        return [_record(kind, item) for item in _listed(found)]

    def replace(self, name: str, rtype: str, value: str, ttl: int) -> list[Record]:
        kind = _rtype(rtype).name
        _check_value(_rtype(rtype), value, self._names.origin)
        previous = self.get(name, kind)
        others = ("CNAME",) if kind != "CNAME" else ("A", "AAAA")
        for other in others:
            if self.get(name, other):
                raise DnsError(
                    f"{name} already has {other} records in zone {self.zone}; a CNAME cannot coexist "
                    f"with other records: delete the {other} records first"
                )
        self._write(name, kind, [(self._value(kind, value), _checked_ttl(ttl))], f"replace {name} {kind}")
        return previous

    def delete(self, name: str, rtype: str) -> None:
        kind = _rtype(rtype).name
        self._run(REMOVE_ALL, self._data(name, kind), f"delete {name} {kind}")

    def restore(self, name: str, rtype: str, previous: list[Record]) -> None:
        kind = _rtype(rtype).name
        records = [(self._value(kind, v), _checked_ttl(t)) for v, t in previous]
        self._write(name, kind, records, f"restore {name} {kind}")

    def check_access(self, names: Sequence[tuple[str, str]]) -> None:
        """The zone is a primary on this server and each RRset can be read; see the module docstring."""
        zone = self._run(ZONE, {"zone": self.zone}, f"look up zone {self.zone}")
        kind = (zone or {}).get("ZoneType", "")
        if str(kind).lower() != "primary":
            raise DnsError(
                f"{self.where} holds zone {self.zone} as a {kind or 'non-primary'} zone, which takes no "
                "updates; give the server that holds its primary copy (for an AD-integrated zone: a domain "
                "controller running DNS)"
            )
        for name, rtype in names:
            self._names.absolute(name)
            self.get(name, rtype)

    def answers(self, name: str, rtype: str) -> list[str] | str:
        """The DNS Server service's own records for the name: what it answers with."""
        return [value for value, _ in self.get(name, rtype)]

    def close(self) -> None:
        """The WinRM session is shared by every zone of this server (see `_session`) and stays open."""

    # ------------------------------------------------------------ internals

    def _write(self, name: str, kind: str, records: list[tuple[str, int]], what: str) -> None:
        """Remove the RRset and add ``records`` in one script, so a failure stops before anything is half-set
        as far as Windows lets it (an Add failing after the Remove leaves the name empty; the journal holds
        what was there)."""
        data = self._data(name, kind)
        for index, (value, ttl) in enumerate(records):
            data[f"value{index}"] = value
            data[f"ttl{index}"] = timespan(ttl)
        body = REMOVE_ALL + ("\n" + add_lines(kind, len(records)) if records else "")
        self._run(body, data, what)

    def _data(self, name: str, kind: str) -> dict[str, Any]:
        return {"zone": self.zone, "name": _plain(self._names.relative(name)), "type": kind}

    def _value(self, kind: str, value: str) -> str:
        """Addresses as Windows prints them; names absolute with their final dot, without DNS escapes."""
        if kind in ("A", "AAAA"):
            return str(ipaddress.ip_address(value))
        return _plain(dns.name.from_text(value, self._names.origin)) + "."

    def _run(self, body: str, data: dict[str, Any], what: str) -> Any:
        try:
            return self.winrm.run(body, data)
        except PowerShellError as exc:
            raise self._refused(exc, what) from None
        except WinRMError as exc:
            error = TransientDnsError if exc.retryable else DnsError
            raise error(f"{what} in zone {self.zone}: {exc}") from None

    def _refused(self, exc: PowerShellError, what: str) -> DnsError:
        code = exc.error_id.split(",")[0]
        where = self.where
        if code == "WIN32 5":
            return DnsError(
                f"{where} denied {self.user} access to zone {self.zone} ({what}); add the account to "
                "DnsAdmins or grant it write on the zone (DNS Manager > zone > Properties > Security)"
            )
        if code == "WIN32 9601":
            return DnsError(
                f"{where} does not host zone {self.zone}; check the dns zone name (and reverse_zones), or "
                "point host at the server that holds it"
            )
        if code == "WIN32 9611":
            return DnsError(f"{where} holds zone {self.zone} as a secondary copy, which takes no updates")
        if code == "WIN32 9709":
            return DnsError(f"{where} refused {what}: a CNAME cannot share its name with other records")
        if code == "WIN32 9711":
            return TransientDnsError(
                f"{where} refused {what}: the record exists already (someone changed the name meanwhile); "
                "run it again"
            )
        if exc.error_id.startswith("CommandNotFoundException"):
            return DnsError(
                f"{where} has no DnsServer PowerShell module ({exc.message}); install the DNS Server tools "
                "(Install-WindowsFeature RSAT-DNS-Server) or point host at a DNS server"
            )
        return DnsError(f"{where}: {what} in zone {self.zone} failed: {exc.message}")


_SESSIONS: dict[WinRMTarget, WinRM] = {}
_SESSIONS_LOCK = threading.Lock()


def _session(target: WinRMTarget) -> WinRM:
    """One WinRM session per server and login: a move opens an updater per zone, and each NTLM login
    costs round trips. WinRM serialises its own use, so threads may share it."""
    with _SESSIONS_LOCK:
        if target not in _SESSIONS:
            _SESSIONS[target] = WinRM(target)
        return _SESSIONS[target]


def _listed(found: Any) -> list[dict[str, Any]]:
    if found is None:
        return []
    return found if isinstance(found, list) else [found]


def _record(kind: str, item: dict[str, Any]) -> Record:
    """(value, TTL) from a DnsServerResourceRecord as ConvertTo-Json prints it."""
    ttl = item.get("TimeToLive")
    seconds = int(ttl.get("TotalSeconds", ttl.get("Ticks", 0) / 10_000_000)) if isinstance(ttl, dict) else 0
    data = item.get("RecordData") or {}
    field = DATA_FIELD[kind]
    value = data.get(field) if isinstance(data, dict) else None
    if isinstance(value, dict):
        value = value.get("IPAddressToString")
    if not isinstance(value, str) or not value:
        raise DnsError(f"the Windows DNS server returned a {kind} record without {field}: {item!r:.200}")
    if kind in ("CNAME", "PTR"):
        value = dns.name.from_text(value if value.endswith(".") else value + ".").to_text()
    return (value, seconds)


def _plain(name: dns.name.Name) -> str:
    """A relative or absolute name as Windows takes it: labels joined by dots, no zone-file escapes."""
    labels = [label.decode("utf-8", errors="replace") for label in name.labels if label]
    return ".".join(labels) if labels else "@"


def _checked_ttl(ttl: int) -> int:
    if not 0 <= ttl <= 2**31 - 1:
        raise DnsError(f"TTL {ttl} is out of range (0 to 2147483647 seconds)")
    return ttl
