# ruff: noqa: E501
"""An in-memory Windows DNS Server for the WinRM stand-in: zones, records and the DnsServer cmdlets.

Parameter names and types follow Microsoft's DnsServer module reference
(learn.microsoft.com/powershell/module/dnsserver): Get-DnsServerZone, Get-DnsServerResourceRecord,
Add-DnsServerResourceRecordA / AAAA / CName / Ptr, Remove-DnsServerResourceRecord. Only the parameters
hvmigrate uses are accepted; any other name is refused as PowerShell refuses an unknown one. The server's
refusals come back with Windows' wording and its WIN32 error ids: a zone it does not host (9601), a name
with no records (9714, non-terminating, so -ErrorAction SilentlyContinue hides it), a record that exists
already (9711), a CNAME beside other data (9709), access denied (5), a secondary zone (9611, it takes no
updates). -TimeToLive is a TimeSpan, converted as PowerShell converts: a string "d.hh:mm:ss" parses, a bare
number counts 100-nanosecond ticks, so a script passing 60 gets a TTL of 0 seconds, as on Windows.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from .powershell import Cmdlet, Param, PSError, PSObject
from .ps_generic import common_error_action, generic_cmdlets

RECORD_TYPE = (
    "Microsoft.Management.Infrastructure.CimInstance#root/Microsoft/Windows/DNS/DnsServerResourceRecord"
)
ZONE_TYPE = "Microsoft.Management.Infrastructure.CimInstance#root/Microsoft/Windows/DNS/DnsServerZone"
RR_TYPES = (
    "A",
    "AAAA",
    "CName",
    "Ptr",
    "Ns",
    "Soa",
    "Mx",
    "Txt",
    "Srv",
)  # of -RRType's value set, those a zone here holds
DATA_FIELD = {"A": "IPv4Address", "AAAA": "IPv6Address", "CNAME": "HostNameAlias", "PTR": "PtrDomainName"}
Access = Literal["full", "read", "none"]


@dataclass
class Zone:
    name: str
    type: str = "Primary"  # Primary | Secondary | Stub | Forwarder
    records: dict[tuple[str, str], list[tuple[str, int]]] = field(
        default_factory=dict
    )  # (node, TYPE) -> [(data, ttl)]

    @property
    def reverse(self) -> bool:
        return self.name.lower().endswith((".in-addr.arpa", ".ip6.arpa"))


class _NonTerminating(PSError):
    """An error a CIM cmdlet writes without stopping; -ErrorAction SilentlyContinue drops it."""


class DnsServer:
    """One DNS server: its zones, and who may change them (``access``: full, read, none)."""

    def __init__(self, name: str = "DC01", zones: tuple[str, ...] = ("corp.test",)) -> None:
        self.name = name
        self.zones: dict[str, Zone] = {z.lower(): Zone(z) for z in zones}
        self.access: Access = "full"
        self.lock = threading.RLock()

    def add_zone(self, name: str, type: str = "Primary") -> Zone:
        zone = Zone(name, type)
        self.zones[name.lower()] = zone
        return zone

    def records(self, zone: str, node: str, rtype: str) -> list[tuple[str, int]]:
        return list(self.zones[zone.lower()].records.get((node.lower(), rtype.upper()), []))

    def put(self, zone: str, node: str, rtype: str, data: str, ttl: int) -> None:
        self.zones[zone.lower()].records.setdefault((node.lower(), rtype.upper()), []).append((data, ttl))

    def cmdlets(self) -> dict[str, Cmdlet]:
        return {**generic_cmdlets(), **_build(self)}


# ---------------------------------------------------------------- conversions


def timespan_seconds(cmdlet: str, value: Any) -> int:
    """PowerShell's conversion of a -TimeToLive argument to System.TimeSpan, in whole seconds."""
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        raise _bind_error(cmdlet, "TimeToLive", value, "System.TimeSpan")
    if isinstance(value, int):
        return value // 10_000_000  # ticks
    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        return int(text) * 86400  # TimeSpan.Parse("60") is 60 days
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?", text)
    if match is None or int(match.group(2)) > 23 or int(match.group(3)) > 59 or int(match.group(4) or 0) > 59:
        raise _bind_error(cmdlet, "TimeToLive", value, "System.TimeSpan")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _address(cmdlet: str, name: str, value: Any, version: int) -> list[str]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        try:
            address = ipaddress.ip_address(str(item))
        except ValueError:
            raise _bind_error(cmdlet, name, item, "System.Net.IPAddress") from None
        if address.version != version:
            raise PSError(
                f"Failed to create resource record: {item} is not an IPv{version} address.",
                error_id=f"WIN32 87,{cmdlet}",
                cmdlet=cmdlet,
            )
        out.append(str(address))
    return out


def _bind_error(cmdlet: str, name: str, value: Any, dotnet: str) -> PSError:
    return PSError(
        f"Cannot process argument transformation on parameter '{name}'. Cannot convert value \"{value}\" to type "
        f'"{dotnet}".',
        error_id=f"ParameterArgumentTransformationError,{cmdlet}",
        cmdlet=cmdlet,
    )


def _timespan(seconds: int) -> PSObject:
    return PSObject(
        "System.TimeSpan",
        {
            "Ticks": seconds * 10_000_000,
            "Days": seconds // 86400,
            "Hours": seconds // 3600 % 24,
            "Minutes": seconds // 60 % 60,
            "Seconds": seconds % 60,
            "TotalSeconds": float(seconds),
        },
    )


def _record_data(rtype: str, data: str) -> PSObject:
    cim = "Microsoft.Management.Infrastructure.CimInstance#root/Microsoft/Windows/DNS/DnsServerResourceRecord"
    if rtype in ("A", "AAAA"):
        address = ipaddress.ip_address(data)
        value: Any = PSObject(
            "System.Net.IPAddress",
            {"AddressFamily": 2 if address.version == 4 else 23, "IPAddressToString": str(address)},
        )
    else:
        value = data
    return PSObject(f"{cim}{rtype.capitalize()}", {DATA_FIELD[rtype]: value})


# ---------------------------------------------------------------- the cmdlets


def _build(server: DnsServer) -> dict[str, Cmdlet]:
    S = Param("string")
    rrtype = Param("enum", RR_TYPES, "System.String")  # ValidateSet on a string: case-insensitive
    cmdlets: list[Cmdlet] = []

    def add(name: str, params: dict[str, Param], required: tuple[str, ...] = (), **pipe: Any):
        def register(fn):
            def run(bound: dict[str, Any], piped: list[Any]) -> list[Any]:
                with server.lock:
                    try:
                        return fn(bound, piped)
                    except _NonTerminating:
                        if bound.get("ErrorAction") in ("SilentlyContinue", "Ignore"):
                            return []
                        raise

            cmdlets.append(Cmdlet(name, params, run, required, **pipe))
            return fn

        return register

    def zone_of(name: str, cmdlet: str, *, write: bool) -> Zone:
        if server.access == "none" or (write and server.access != "full"):
            raise PSError(
                f"Failed to {'update' if write else 'get'} zone {name} on server {server.name}: Access was denied.",
                category="PermissionDenied",
                error_id=f"WIN32 5,{cmdlet}",
                cmdlet=cmdlet,
            )
        zone = server.zones.get(name.lower())
        if zone is None:
            raise _NonTerminating(
                f"The zone {name} was not found on server {server.name}.",
                category="ObjectNotFound",
                error_id=f"WIN32 9601,{cmdlet}",
                cmdlet=cmdlet,
            )
        if write and zone.type != "Primary":
            raise PSError(
                f"Failed to update zone {name} on server {server.name}: the zone is a {zone.type} zone and takes no "
                "updates.",
                category="InvalidOperation",
                error_id=f"WIN32 9611,{cmdlet}",
                cmdlet=cmdlet,
            )
        return zone

    def node_of(name: str) -> str:
        return "@" if name in ("@", "") else name.lower()

    def record_object(zone: Zone, node: str, rtype: str, data: str, ttl: int) -> PSObject:
        return PSObject(
            RECORD_TYPE,
            {
                "DistinguishedName": f"DC={node},DC={zone.name},cn=MicrosoftDNS,DC=DomainDnsZones",
                "HostName": node,
                "RecordType": "CNAME" if rtype == "CNAME" else rtype,
                "RecordClass": "IN",
                "TimeToLive": _timespan(ttl),
                "Timestamp": None,
                "RecordData": _record_data(rtype, data),
                "ZoneName": zone.name,  # the stand-in's note of where it came from (Remove by InputObject)
            },
        )

    @add("Get-DnsServerZone", {"Name": S, "ComputerName": S})
    def get_zone(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        if "Name" not in b:
            raise PSError("Get-DnsServerZone: the stand-in lists one named zone only.")
        zone = zone_of(b["Name"], "Get-DnsServerZone", write=False)
        return [
            PSObject(
                ZONE_TYPE,
                {
                    "ZoneName": zone.name,
                    "ZoneType": zone.type,
                    "IsAutoCreated": False,
                    "IsDsIntegrated": True,
                    "IsReverseLookupZone": zone.reverse,
                    "IsSigned": False,
                },
            )
        ]

    @add(
        "Get-DnsServerResourceRecord",
        {
            "ZoneName": S,
            "Name": S,
            "RRType": rrtype,
            "Node": Param("switch"),
            "ComputerName": S,
            "ErrorAction": common_error_action(),
        },
        ("ZoneName",),
    )
    def get_records(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        zone = zone_of(b["ZoneName"], "Get-DnsServerResourceRecord", write=False)
        if "Name" not in b or "RRType" not in b:
            raise PSError("Get-DnsServerResourceRecord: the stand-in answers -Name with -RRType only.")
        node, rtype = node_of(b["Name"]), b["RRType"].upper()
        found = zone.records.get((node, rtype), [])
        if not found and not any(n == node for n, _ in zone.records):
            raise _NonTerminating(
                f"Failed to get {b['Name']} record in {zone.name} zone on {server.name} server.",
                category="ObjectNotFound",
                error_id="WIN32 9714,Get-DnsServerResourceRecord",
                cmdlet="Get-DnsServerResourceRecord",
            )
        return [record_object(zone, node, rtype, data, ttl) for data, ttl in found]

    def add_record(cmdlet: str, rtype: str, bound: dict[str, Any], values: list[str]) -> list[Any]:
        zone = zone_of(bound["ZoneName"], cmdlet, write=True)
        node = node_of(bound["Name"])
        ttl = timespan_seconds(cmdlet, bound["TimeToLive"]) if "TimeToLive" in bound else 3600
        held = zone.records.setdefault((node, rtype), [])
        others = [t for (n, t), v in zone.records.items() if n == node and v and t != rtype]
        if (rtype == "CNAME" and (others or held)) or (rtype != "CNAME" and "CNAME" in others):
            raise PSError(
                f"Failed to create resource record {bound['Name']} in zone {zone.name} on server {server.name}: "
                "a CNAME cannot share its name with other records.",
                category="InvalidOperation",
                error_id=f"WIN32 9709,{cmdlet}",
                cmdlet=cmdlet,
            )
        for value in values:
            if any(_same(rtype, value, data) for data, _ in held):
                raise PSError(
                    f"Failed to create resource record {bound['Name']} in zone {zone.name} on server {server.name}.",
                    category="ResourceExists",
                    error_id=f"WIN32 9711,{cmdlet}",
                    cmdlet=cmdlet,
                )
            held.append((value, ttl))
        return []

    common = {"ZoneName": S, "Name": S, "TimeToLive": Param("object"), "ComputerName": S}

    @add(
        "Add-DnsServerResourceRecordA",
        {**common, "IPv4Address": Param("object"), "CreatePtr": Param("switch")},
        ("ZoneName", "Name", "IPv4Address"),
    )
    def add_a(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        values = _address("Add-DnsServerResourceRecordA", "IPv4Address", b["IPv4Address"], 4)
        return add_record("Add-DnsServerResourceRecordA", "A", b, values)

    @add(
        "Add-DnsServerResourceRecordAAAA",
        {**common, "IPv6Address": Param("object"), "CreatePtr": Param("switch")},
        ("ZoneName", "Name", "IPv6Address"),
    )
    def add_aaaa(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        values = _address("Add-DnsServerResourceRecordAAAA", "IPv6Address", b["IPv6Address"], 6)
        return add_record("Add-DnsServerResourceRecordAAAA", "AAAA", b, values)

    @add(
        "Add-DnsServerResourceRecordCName",
        {**common, "HostNameAlias": S},
        ("ZoneName", "Name", "HostNameAlias"),
    )
    def add_cname(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        return add_record("Add-DnsServerResourceRecordCName", "CNAME", b, [_fqdn(b["HostNameAlias"])])

    @add(
        "Add-DnsServerResourceRecordPtr",
        {**common, "PtrDomainName": S},
        ("ZoneName", "Name", "PtrDomainName"),
    )
    def add_ptr(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        return add_record("Add-DnsServerResourceRecordPtr", "PTR", b, [_fqdn(b["PtrDomainName"])])

    @add(
        "Remove-DnsServerResourceRecord",
        {"ZoneName": S, "InputObject": Param("object"), "Force": Param("switch"), "ComputerName": S},
        ("ZoneName", "InputObject"),
        pipeline="InputObject",
        by_value=RECORD_TYPE,
    )
    def remove(b: dict[str, Any], piped: list[Any]) -> list[Any]:
        if not b.get("Force"):
            raise PSError(
                "Remove-DnsServerResourceRecord would ask for confirmation, and the session is non-interactive: "
                "pass -Force.",
                error_id="Remove-DnsServerResourceRecord,NonInteractive",
            )
        zone = zone_of(b["ZoneName"], "Remove-DnsServerResourceRecord", write=True)
        record: PSObject = b["InputObject"]
        rtype = record.get_prop("RecordType").upper()
        data = record.get_prop("RecordData").get_prop(DATA_FIELD[rtype])
        data = data.get_prop("IPAddressToString") if isinstance(data, PSObject) else data
        held = zone.records.get((record.get_prop("HostName").lower(), rtype), [])
        keep = [(d, t) for d, t in held if not _same(rtype, d, data)]
        if len(keep) == len(held) or record.get_prop("ZoneName").lower() != zone.name.lower():
            raise _NonTerminating(
                f"Failed to remove {record.get_prop('HostName')} record in {zone.name} zone on {server.name} server.",
                category="ObjectNotFound",
                error_id="WIN32 9714,Remove-DnsServerResourceRecord",
                cmdlet="Remove-DnsServerResourceRecord",
            )
        held[:] = keep
        return []

    return {c.name.lower(): c for c in cmdlets}


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _same(rtype: str, a: str, b: str) -> bool:
    if rtype in ("A", "AAAA"):
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    return a.lower().rstrip(".") == b.lower().rstrip(".")
