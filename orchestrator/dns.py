"""Move a server's DNS records at cutover, and put them back on undo.

Every change is journaled with the records it replaces before it is made, so undo restores exactly what
was there (same values, same TTL) rather than deleting what it created. An A/AAAA record moves together
with the PTR of its address in the provider's reverse zones, and the old address's PTR is dropped when it
named this host. Three backends: a zone file rewritten in place (the embedded default, and any server that
loads its zone from a file), RFC 2136 dynamic updates signed with TSIG (BIND, Knot, PowerDNS, and Windows
DNS where TSIG is accepted), and Windows DNS through its DnsServer cmdlets over WinRM (dns_windows.py).

Before cutover, `check_access` proves the server takes the key for every RRset the move will touch, with an
update that changes nothing; after the move, `wait_until_answered` asks the server itself until it answers
with the new records.
"""

from __future__ import annotations

import binascii
import fcntl
import ipaddress
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.resolver
import dns.reversename
import dns.tsig
import dns.update
import dns.zone

from orchestrator import audit
from orchestrator.playbook.models import Rfc2136Dns, WindowsDns, ZonefileDns

Record = tuple[str, int]  # (value as text, TTL); a CNAME target is absolute, with its final dot
MANAGED_TYPES = ("A", "AAAA", "CNAME", "PTR")  # PTR only in reverse zones, moved along with A/AAAA
ADDRESS_TYPES = ("A", "AAAA")
# What the pre-cutover check deletes: values its prerequisites prove absent, so the server judges the key
# for these names and types and nothing changes.
_ABSENT = {
    "A": "192.0.2.{}",
    "AAAA": "2001:db8::{:x}",
    "CNAME": "hvmigrate-check-{}.invalid.",
    "PTR": "hvmigrate-check-{}.invalid.",
}


class DnsError(Exception):
    """A DNS change failed; the message says what to fix. Never contains a TSIG secret."""

    retryable = False


class TransientDnsError(DnsError):
    retryable = True


class DnsUnavailable(DnsError, NotImplementedError):
    """This DNS backend is not part of this build yet."""


@runtime_checkable
class DnsUpdater(Protocol):
    zone: str

    @property
    def where(self) -> str:
        """The server or file, as messages name it."""
        ...

    def get(self, name: str, rtype: str) -> list[Record]: ...

    def replace(self, name: str, rtype: str, value: str, ttl: int) -> list[Record]:
        """Make ``value`` the only record of that name and type; returns the records it replaced."""
        ...

    def delete(self, name: str, rtype: str) -> None: ...

    def restore(self, name: str, rtype: str, previous: list[Record]) -> None:
        """Put back what `replace` returned (deleting the records when there were none)."""
        ...

    def check_access(self, names: Sequence[tuple[str, str]]) -> None:
        """Prove, changing nothing, that these (name, type) RRsets could be changed now."""
        ...

    def answers(self, name: str, rtype: str) -> list[str] | str:
        """What clients are told for that name and type: its values, or why there are none (NXDOMAIN)."""
        ...

    def close(self) -> None: ...


def open_dns(config: Any, *, base_dir: Path | None = None, zone: str | None = None) -> DnsUpdater:
    """The updater of the provider's zone, or (``zone``) of one of its reverse zones: same server and key.

    Its changes (replace, delete, restore) go to the audit trail when a step runs them.
    """
    updater: DnsUpdater
    if isinstance(config, ZonefileDns):
        updater = ZonefileUpdater(config, base_dir=base_dir, zone=zone)
    elif isinstance(config, Rfc2136Dns):
        updater = Rfc2136Updater(config, zone=zone)
    elif isinstance(config, WindowsDns):
        from orchestrator.dns_windows import WindowsDnsUpdater

        updater = WindowsDnsUpdater(config, zone=zone)
    else:
        updater = _unavailable(config)
    endpoint = f"dns {updater.zone} on {updater.where}"
    return audit.audited(updater, endpoint, audit.DNS_WRITES)  # type: ignore[no-any-return]


def _unavailable(config: Any) -> DnsUpdater:
    raise DnsUnavailable(f"dns type {getattr(config, 'type', config)!r} is not supported")


# ---------------------------------------------------------------- shared helpers


class _ZoneNames:
    def __init__(self, zone: str) -> None:
        try:
            self.origin = dns.name.from_text(zone)
        except dns.exception.DNSException as exc:
            raise DnsError(f"{zone!r} is not a valid zone name: {exc}") from None
        self.zone = self.origin.to_text(omit_final_dot=True)

    def absolute(self, name: str) -> dns.name.Name:
        """``db01`` and ``db01.corp.test.`` both name db01 in zone corp.test; ``@`` is the apex."""
        try:
            full = self.origin if name in ("@", "") else dns.name.from_text(name, self.origin)
        except dns.exception.DNSException as exc:
            raise DnsError(f"{name!r} is not a valid DNS name: {exc}") from None
        if not full.is_subdomain(self.origin):
            raise DnsError(f"{name} is outside zone {self.zone}; give a name inside it, or a relative name")
        return full

    def relative(self, name: str) -> dns.name.Name:
        return self.absolute(name).relativize(self.origin)


def _rtype(rtype: str) -> dns.rdatatype.RdataType:
    if rtype.upper() not in MANAGED_TYPES:
        raise DnsError(
            f"record type {rtype} is not managed by hvmigrate; use one of {', '.join(MANAGED_TYPES)}"
        )
    return dns.rdatatype.from_text(rtype.upper())


def _records(rdataset: dns.rdataset.Rdataset | None, origin: dns.name.Name | None) -> list[Record]:
    if rdataset is None:
        return []
    return [(rdata.to_text(origin=origin, relativize=False), int(rdataset.ttl)) for rdata in rdataset]


def _check_value(rtype: dns.rdatatype.RdataType, value: str, origin: dns.name.Name) -> None:
    try:
        dns.rdata.from_text(dns.rdataclass.IN, rtype, value, origin=origin)
    except (dns.exception.DNSException, ValueError) as exc:
        kind = dns.rdatatype.to_text(rtype)
        raise DnsError(f"{value!r} is not a valid {kind} record value: {exc}") from None


def _rdataset(
    kind: dns.rdatatype.RdataType, ttl: int, values: list[str], origin: dns.name.Name
) -> dns.rdataset.Rdataset:
    """Records as a zone file stores them: names relative to the zone's origin."""
    rdatas = [
        dns.rdata.from_text(
            dns.rdataclass.IN, kind, value, origin=origin, relativize=True, relativize_to=origin
        )
        for value in values
    ]
    return dns.rdataset.from_rdata_list(ttl, rdatas)


def _ttl(ttl: int) -> int:
    if not 0 <= ttl <= 2**31 - 1:
        raise DnsError(f"TTL {ttl} is out of range (0 to 2147483647 seconds)")
    return ttl


def _same_values(kind: str, values: Iterable[str], origin: dns.name.Name) -> set[str]:
    """Values in one spelling: 2001:DB8:0::1 matches 2001:db8::1, DB01.corp.test. matches db01.corp.test."""
    rdtype = dns.rdatatype.from_text(kind)
    return {
        dns.rdata.from_text(dns.rdataclass.IN, rdtype, v, origin=origin).to_text().lower() for v in values
    }


def _absent_value(kind: str, current: Sequence[str], origin: dns.name.Name) -> str:
    """A value the RRset does not hold (the prerequisite that goes with it guarantees so on the server)."""
    taken = _same_values(kind, current, origin)
    for n in range(1, 255):
        value = _ABSENT[kind].format(n)
        if value.lower() not in taken:
            return value
    raise DnsError(f"cannot test an RRset of {len(current)} {kind} records; shrink it")  # pragma: no cover


def reverse_name(address: str) -> str:
    """The PTR owner of an address, absolute: 10.1.0.12 -> 12.0.1.10.in-addr.arpa."""
    try:
        return dns.reversename.from_address(str(ipaddress.ip_address(address))).to_text()
    except ValueError:
        raise DnsError(f"{address!r} is not an IP address, so it has no PTR record") from None


def reverse_zone_for(address: str, zones: Iterable[str]) -> str | None:
    """The most specific of ``zones`` holding the address's PTR (1.10.in-addr.arpa before 10.in-addr.arpa)."""
    owner = dns.name.from_text(reverse_name(address))
    holding = [z for z in zones if owner.is_subdomain(dns.name.from_text(z))]
    return max(holding, key=lambda z: len(dns.name.from_text(z)), default=None)


def ptr_zone(config: Any, rtype: str, address: str, ptr: bool | None) -> str | None:
    """The reverse zone whose PTR follows this record, or None when no PTR moves with it.

    ``ptr`` None (the default) means: yes when the provider names a reverse zone for the address.
    """
    if rtype.upper() not in ADDRESS_TYPES or ptr is False:
        return None
    zones = getattr(config, "reverse_zones", [])
    zone = reverse_zone_for(address, zones)
    if zone is None and ptr:
        listed = ", ".join(zones) or "none"
        raise DnsError(
            f"ptr: true but no reverse zone of zone {config.zone} holds {address} (reverse_zones: "
            f"{listed}); add its zone (such as {_suggested_zone(address)}) or set ptr: false"
        )
    return zone


def _suggested_zone(address: str) -> str:
    """The zone of the address's /24 (IPv4) or /64 (IPv6): where reverse zones are usually cut."""
    drop = 1 if ipaddress.ip_address(address).version == 4 else 16
    return ".".join(reverse_name(address).split(".")[drop:]).rstrip(".")


def _other_addresses(records: Iterable[Record], address: str) -> list[str]:
    """The addresses among ``records`` that are not ``address`` (2001:db8::1 and 2001:DB8:0::1 are one)."""
    new = ipaddress.ip_address(address)
    return sorted({v for v, _ in records if ipaddress.ip_address(v) != new})


# ---------------------------------------------------------------- moving a name, and putting it back


@dataclass(frozen=True)
class Change:
    """One RRset about to change and what it held: journaled first, so undo can put back exactly that."""

    zone: str
    name: str  # absolute, with its final dot
    type: str
    previous: list[Record]

    def to_json(self) -> dict[str, Any]:
        return {
            "zone": self.zone,
            "name": self.name,
            "type": self.type,
            "previous": [list(p) for p in self.previous],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        """Journals written before reverse zones existed carry no zone: theirs was the forward zone."""
        return cls(
            data.get("zone", ""), data["name"], data["type"], [(v, int(t)) for v, t in data["previous"]]
        )


@dataclass(frozen=True)
class Expected:
    """An answer the server must give once a move is done."""

    zone: str
    name: str
    type: str
    value: str


def move_record(
    config: Any,
    name: str,
    rtype: str,
    value: str,
    ttl: int,
    *,
    ptr: bool | None = None,
    before: Sequence[Record] | None = None,
    journal: Callable[[Change], None],
    base_dir: Path | None = None,
) -> list[Expected]:
    """Point ``name`` at ``value``, with its PTR, calling ``journal`` before each change is made.

    ``before`` is what the name held before the first attempt of this move: a run that died after the
    forward change and runs again still finds (and unlinks) the PTRs of the old addresses.
    Returns what the server should then answer.
    """
    forward = open_dns(config, base_dir=base_dir)
    owner = _ZoneNames(forward.zone).absolute(name).to_text()
    reverse = ptr_zone(config, rtype, value, ptr)
    previous = forward.get(name, rtype)
    journal(Change(forward.zone, owner, rtype.upper(), previous))
    forward.replace(name, rtype, value, ttl)
    expected = [Expected(forward.zone, owner, rtype.upper(), value)]
    if rtype.upper() not in ADDRESS_TYPES or ptr is False:
        return expected
    if reverse is not None:
        pointer = reverse_name(value)
        updater = open_dns(config, base_dir=base_dir, zone=reverse)
        journal(Change(reverse, pointer, "PTR", updater.get(pointer, "PTR")))
        updater.replace(pointer, "PTR", owner, ttl)
        expected.append(Expected(reverse, pointer, "PTR", owner))
    for old in _other_addresses(before if before is not None else previous, value):
        _unlink_old_pointer(config, old, owner, journal, base_dir)
    return expected


def _unlink_old_pointer(
    config: Any, address: str, owner: str, journal: Callable[[Change], None], base_dir: Path | None
) -> None:
    """The old address keeps its PTR only if it named someone else; one naming this host would now lie."""
    zone = reverse_zone_for(address, getattr(config, "reverse_zones", []))
    if zone is None:
        return
    updater = open_dns(config, base_dir=base_dir, zone=zone)
    pointer = reverse_name(address)
    previous = updater.get(pointer, "PTR")
    me = dns.name.from_text(owner)
    keep = [(v, t) for v, t in previous if dns.name.from_text(v) != me]
    if len(keep) == len(previous):
        return
    journal(Change(zone, pointer, "PTR", previous))
    updater.restore(pointer, "PTR", keep)


def undo_change(config: Any, change: Change, *, base_dir: Path | None = None) -> None:
    updater = open_dns(config, base_dir=base_dir, zone=change.zone or None)
    updater.restore(change.name, change.type, change.previous)


def touched_rrsets(
    config: Any, name: str, rtype: str, value: str, ptr: bool | None, *, base_dir: Path | None = None
) -> dict[str, list[tuple[str, str]]]:
    """Zone -> the (name, type) RRsets `move_record` would change: what the pre-cutover check must cover."""
    forward = open_dns(config, base_dir=base_dir)
    touched: dict[str, list[tuple[str, str]]] = {forward.zone: [(name, rtype.upper())]}
    other = ("CNAME",) if rtype.upper() != "CNAME" else ADDRESS_TYPES
    for kind in other:
        if forward.get(name, kind):
            raise DnsError(
                f"{name} already has {kind} records in zone {forward.zone}; a CNAME cannot coexist with "
                f"other records: delete the {kind} records first"
            )
    reverse = ptr_zone(config, rtype, value, ptr)
    if rtype.upper() not in ADDRESS_TYPES or ptr is False:
        return touched
    if reverse is not None:
        touched.setdefault(reverse, []).append((reverse_name(value), "PTR"))
    for old in _other_addresses(forward.get(name, rtype), value):
        zone = reverse_zone_for(old, getattr(config, "reverse_zones", []))
        if zone is not None:
            touched.setdefault(zone, []).append((reverse_name(old), "PTR"))
    return touched


def check_access(
    config: Any, touched: dict[str, list[tuple[str, str]]], *, base_dir: Path | None = None
) -> None:
    for zone, names in touched.items():
        open_dns(config, base_dir=base_dir, zone=zone).check_access(names)


def wait_until_answered(
    config: Any,
    expected: Sequence[Expected],
    *,
    timeout: float,
    base_dir: Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Ask until every name answers with its new value; a DnsError says what the server said instead.

    A server can accept an update and still answer with the old data (a zone reloaded from an older file,
    a second primary, a DHCP server re-registering the old address): only its answer proves the move.
    """
    deadline = time.monotonic() + timeout
    updaters = {want.zone: open_dns(config, base_dir=base_dir, zone=want.zone) for want in expected}
    waiting = list(expected)
    while True:
        seen: dict[Expected, list[str] | str] = {}
        for want in waiting:
            got = updaters[want.zone].answers(want.name, want.type)
            origin = dns.name.from_text(want.zone)
            wanted = _same_values(want.type, [want.value], origin)
            if not (isinstance(got, list) and _same_values(want.type, got, origin) == wanted):
                seen[want] = got
        if not seen:
            return
        if time.monotonic() >= deadline:
            said = "; ".join(
                f"{w.name} {w.type} is {_shown(g)} (expected {w.value})" for w, g in seen.items()
            )
            raise DnsError(
                f"{updaters[next(iter(seen)).zone].where} still does not answer with the new records after "
                f"{timeout:g}s: {said}; something else may be writing these names (DHCP, another "
                "primary): fix that, then run `migrate cutover` again"
            )
        waiting = list(seen)
        sleep(max(0.0, min(1.0, deadline - time.monotonic())))


def _shown(answer: list[str] | str) -> str:
    if isinstance(answer, str):
        return answer
    return ", ".join(answer) if answer else "empty"


# ---------------------------------------------------------------- zone file


class ZonefileUpdater:
    """A zone file on disk, rewritten atomically with its SOA serial bumped on every change.

    Comments and formatting of a hand-written file are not kept (dnspython writes the zone back in its
    own layout); its records, TTLs and $ORIGIN are. A reverse zone lives beside the forward zone's file,
    as ZONE.zone, so one folder holds everything a DNS server needs to load.
    """

    def __init__(self, config: ZonefileDns, *, base_dir: Path | None = None, zone: str | None = None) -> None:
        path = Path(config.path).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        forward = _ZoneNames(config.zone)
        self._names = forward if zone in (None, forward.zone) else _ZoneNames(zone)
        self.zone = self._names.zone
        self.path = path.resolve() if self._names is forward else path.resolve().parent / f"{self.zone}.zone"
        self._nameserver = dns.name.from_text("ns1", forward.origin)
        self._thread_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ZonefileUpdater({self.zone}, {str(self.path)!r})"

    @property
    def where(self) -> str:
        return f"zone file {self.path}"

    def get(self, name: str, rtype: str) -> list[Record]:
        kind = _rtype(rtype)
        with self._locked():
            zone = self._load(create=False)
            if zone is None:
                return []
            return _records(zone.get_rdataset(self._names.relative(name), kind), self._names.origin)

    def replace(self, name: str, rtype: str, value: str, ttl: int) -> list[Record]:
        kind = _rtype(rtype)
        _check_value(kind, value, self._names.origin)
        with self._locked():
            zone = self._load(create=True)
            assert zone is not None
            relative = self._names.relative(name)
            previous = _records(zone.get_rdataset(relative, kind), self._names.origin)
            self._refuse_cname_conflict(zone, relative, kind)
            rdataset = _rdataset(kind, _ttl(ttl), [value], self._names.origin)
            zone.replace_rdataset(relative, rdataset)
            self._save(zone)
        return previous

    def delete(self, name: str, rtype: str) -> None:
        kind = _rtype(rtype)
        with self._locked():
            zone = self._load(create=False)
            relative = self._names.relative(name)
            if zone is None or zone.get_rdataset(relative, kind) is None:
                return
            zone.delete_rdataset(relative, kind)
            self._save(zone)

    def restore(self, name: str, rtype: str, previous: list[Record]) -> None:
        if not previous:
            self.delete(name, rtype)
            return
        kind = _rtype(rtype)
        with self._locked():
            zone = self._load(create=True)
            assert zone is not None
            relative = self._names.relative(name)
            rdataset = _rdataset(
                kind, _ttl(min(t for _, t in previous)), [v for v, _ in previous], self._names.origin
            )
            zone.replace_rdataset(relative, rdataset)
            self._save(zone)

    def check_access(self, names: Sequence[tuple[str, str]]) -> None:
        """The file parses and its folder takes a new file (the atomic rewrite needs both); writes nothing."""
        for name, rtype in names:
            _rtype(rtype)
            self._names.absolute(name)
        folder = self.path.parent
        while not folder.exists():
            folder = folder.parent
        try:
            fd, probe = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".check", dir=folder)
            os.close(fd)
            os.unlink(probe)
            if self.path.exists():
                with open(self.path, "rb"):
                    pass
        except OSError as exc:
            raise DnsError(
                f"zone file {self.path} cannot be rewritten: {exc.strerror or exc} in {folder}; give this "
                "user write access to that folder"
            ) from None
        if self.path.exists():
            with self._locked():
                self._load(create=False)

    def answers(self, name: str, rtype: str) -> list[str] | str:
        """The file is what the DNS server loads: its records are the answer."""
        return [value for value, _ in self.get(name, rtype)]

    def close(self) -> None:
        """Nothing stays open between changes."""

    # ------------------------------------------------------------ internals

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Threads of this run and another `migrate` process may both edit the zone."""
        with self._thread_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _load(self, *, create: bool) -> dns.zone.Zone | None:
        if not self.path.exists():
            return self._new_zone() if create else None
        try:
            return dns.zone.from_file(str(self.path), origin=self._names.origin, relativize=True)
        except (dns.exception.DNSException, ValueError) as exc:
            raise DnsError(
                f"zone file {self.path} cannot be read as zone {self.zone}: {exc}; fix the file "
                "(named-checkzone shows where)"
            ) from None

    def _new_zone(self) -> dns.zone.Zone:
        """The smallest zone a DNS server will load: SOA, one NS, and the NS's address (this machine).

        A reverse zone names the forward zone's ns1, whose address lives there.
        """
        origin = self._names.origin.to_text()
        ns = self._nameserver.to_text()
        glue = "ns1 3600 IN A 127.0.0.1\n" if self._nameserver.parent() == self._names.origin else ""
        text = (
            f"$ORIGIN {origin}\n"
            f"@ 3600 IN SOA {ns} hostmaster.{origin} 1 3600 600 604800 60\n"
            f"@ 3600 IN NS {ns}\n{glue}"
        )
        return dns.zone.from_text(text, origin=self._names.origin, relativize=True)

    def _refuse_cname_conflict(
        self, zone: dns.zone.Zone, name: dns.name.Name, kind: dns.rdatatype.RdataType
    ) -> None:
        """A CNAME cannot share its name with other data (RFC 1034 3.6.2); servers would drop one."""
        node = zone.get_node(name)
        if node is None:
            return
        for rdataset in node.rdatasets:
            if (kind == dns.rdatatype.CNAME) != (rdataset.rdtype == dns.rdatatype.CNAME):
                other = dns.rdatatype.to_text(rdataset.rdtype)
                raise DnsError(
                    f"{name} already has {other} records in zone {self.zone}; a CNAME cannot "
                    f"coexist with other records: delete the {other} records first"
                )

    def _save(self, zone: dns.zone.Zone) -> None:
        soa_set = zone.get_rdataset("@", dns.rdatatype.SOA)
        if soa_set is None:
            raise DnsError(f"zone file {self.path} has no SOA record; add one")
        soa = soa_set[0]
        bumped = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.SOA)
        bumped.add(soa.replace(serial=(soa.serial + 1) % 2**32), soa_set.ttl)
        zone.replace_rdataset("@", bumped)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                zone.to_file(handle, relativize=True, want_origin=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# ---------------------------------------------------------------- RFC 2136


class Rfc2136Updater:
    """Dynamic updates over TCP, TSIG-signed when the playbook gives a key (queries are signed too)."""

    def __init__(self, config: Rfc2136Dns, *, zone: str | None = None) -> None:
        self._names = _ZoneNames(zone or config.zone)
        self.zone = self._names.zone
        self.server_name = config.server
        self.port = config.port
        self.timeout = float(config.timeout)
        self._server: str | None = None
        self._key: dns.tsig.Key | None = None
        self.key_name = config.tsig.name if config.tsig else None
        if config.tsig:
            try:
                self._key = dns.tsig.Key(config.tsig.name, config.tsig.secret.reveal(), config.tsig.algorithm)
            except (binascii.Error, ValueError, dns.exception.DNSException):
                raise DnsError(
                    f"the secret of TSIG key {config.tsig.name} is not valid base64; copy it from "
                    "the key file tsig-keygen wrote"
                ) from None

    def __repr__(self) -> str:
        return f"Rfc2136Updater({self.zone} at {self.server_name}:{self.port})"

    @property
    def where(self) -> str:
        return f"DNS server {self.server_name}:{self.port}"

    def get(self, name: str, rtype: str) -> list[Record]:
        kind = _rtype(rtype)
        full = self._names.absolute(name)
        query = dns.message.make_query(full, kind)
        if self._key:
            query.use_tsig(self._key)
        response = self._send(query, f"query {full} {rtype}")
        if response.rcode() == dns.rcode.NXDOMAIN:
            return []
        self._check(response, f"query {full} {rtype}")
        rrset = response.get_rrset(response.answer, full, dns.rdataclass.IN, kind)
        return _records(rrset, None)

    def replace(self, name: str, rtype: str, value: str, ttl: int) -> list[Record]:
        kind = _rtype(rtype)
        _check_value(kind, value, self._names.origin)
        previous = self.get(name, rtype)
        others = ("CNAME",) if rtype.upper() != "CNAME" else ("A", "AAAA")
        for other in others:
            if self.get(name, other):
                raise DnsError(
                    f"{name} already has {other} records in zone {self.zone}; a CNAME cannot coexist "
                    f"with other records: delete the {other} records first"
                )
        update = self._update()
        update.replace(self._names.relative(name), _ttl(ttl), kind, value)
        self._commit(update, f"replace {name} {rtype}")
        return previous

    def delete(self, name: str, rtype: str) -> None:
        kind = _rtype(rtype)
        update = self._update()
        update.delete(self._names.relative(name), kind)
        self._commit(update, f"delete {name} {rtype}")

    def restore(self, name: str, rtype: str, previous: list[Record]) -> None:
        if not previous:
            self.delete(name, rtype)
            return
        kind = _rtype(rtype)
        update = self._update()
        update.replace(
            self._names.relative(name), _ttl(min(t for _, t in previous)), kind, *[v for v, _ in previous]
        )
        self._commit(update, f"restore {name} {rtype}")

    def check_access(self, names: Sequence[tuple[str, str]]) -> None:
        """Send an update the server must judge like the real one, but that changes nothing.

        Its prerequisites hold (the apex exists; each RRset is exactly what was just read) and its only
        operations delete records the RRsets do not hold. The server still verifies the TSIG signature
        (BADKEY, BADSIG), its authority for the zone (NOTAUTH), allow-update, and update-policy grants
        name by name and type by type (REFUSED). No record changes, so the SOA serial does not move.
        """
        update = self._update()
        update.present(dns.name.empty)
        for name, rtype in names:
            kind = _rtype(rtype)
            relative = self._names.relative(name)
            current = [value for value, _ in self.get(name, rtype)]
            if current:
                update.present(relative, *[self._rdata(kind, value) for value in current])
            else:
                update.absent(relative, kind)
            update.delete(relative, self._rdata(kind, _absent_value(kind.name, current, self._names.origin)))
        self._commit(update, "a test update that changes nothing")

    def answers(self, name: str, rtype: str) -> list[str] | str:
        """Asked as a client asks, unsigned and without recursion, so the answer is the server's own data."""
        full = self._names.absolute(name)
        kind = _rtype(rtype)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self._address()]
        resolver.port = self.port
        resolver.flags = 0  # no recursion desired: the zone's own answer, not a cache's
        resolver.cache = None
        resolver.lifetime = self.timeout
        try:
            answer = resolver.resolve(full, kind, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return "NXDOMAIN"
        except dns.resolver.LifetimeTimeout:
            return f"no answer within {self.timeout:g}s"
        except dns.exception.DNSException as exc:
            return str(exc)
        assert answer.response is not None
        rrset = answer.response.get_rrset(answer.response.answer, full, dns.rdataclass.IN, kind)
        return [value for value, _ in _records(rrset, None)]

    def close(self) -> None:
        """Each message uses its own TCP connection."""

    # ------------------------------------------------------------ internals

    def _rdata(self, kind: dns.rdatatype.RdataType, value: str) -> dns.rdata.Rdata:
        return dns.rdata.from_text(dns.rdataclass.IN, kind, value, origin=self._names.origin)

    def _update(self) -> dns.update.UpdateMessage:
        update = dns.update.UpdateMessage(self._names.origin)
        if self._key:
            update.use_tsig(self._key)
        return update

    def _commit(self, update: dns.update.UpdateMessage, what: str) -> None:
        self._check(self._send(update, what), what)

    def _address(self) -> str:
        if self._server is None:
            try:
                self._server = socket.getaddrinfo(self.server_name, self.port, type=socket.SOCK_STREAM)[0][4][
                    0
                ]
            except socket.gaierror as exc:
                raise TransientDnsError(
                    f"DNS server name {self.server_name} does not resolve ({exc.strerror}); "
                    "give its IP address in dns.server"
                ) from None
        return self._server

    def _send(self, message: dns.message.Message, what: str) -> dns.message.Message:
        where = f"DNS server {self.server_name}:{self.port}"
        key = f"TSIG key {self.key_name}"
        try:
            return dns.query.tcp(message, self._address(), timeout=self.timeout, port=self.port)
        except dns.exception.Timeout:
            raise TransientDnsError(
                f"{where} did not answer {what} within {self.timeout:g}s; check the "
                "server address, port and firewall"
            ) from None
        except dns.tsig.PeerBadKey:
            raise DnsError(
                f"{where} does not know {key} (BADKEY); the key name and algorithm must match "
                "the server's key statement"
            ) from None
        except dns.tsig.PeerBadSignature:
            raise DnsError(
                f"{where} rejected the signature of {key} (BADSIG); the secret does not match the server's"
            ) from None
        except dns.tsig.PeerBadTime:
            raise DnsError(
                f"{where} rejected {key} for its time (BADTIME); this machine's clock and the "
                "server's differ by more than 5 minutes"
            ) from None
        except dns.message.UnknownTSIGKey:
            raise DnsError(
                f"{where} signed its answer with a key this playbook does not have; check dns.tsig"
            ) from None
        except (dns.exception.DNSException, ValueError) as exc:
            raise DnsError(f"{where}: {what} failed: {exc}") from None
        except OSError as exc:
            raise TransientDnsError(f"cannot reach {where} for {what}: {exc.strerror or exc}") from None

    def _check(self, response: dns.message.Message, what: str) -> None:
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        where = f"DNS server {self.server_name}:{self.port}"
        name = dns.rcode.to_text(rcode)
        if rcode == dns.rcode.NOTAUTH:
            detail = (
                f"is not authoritative for zone {self.zone} or does not accept "
                f"{'TSIG key ' + self.key_name if self.key_name else 'unsigned updates'}; check the zone "
                "name and the key"
            )
        elif rcode == dns.rcode.REFUSED and what.startswith("query"):
            detail = (
                f"refused to answer {what}: it does not serve zone {self.zone} to this machine; check "
                "dns.server, dns.zone and the zone's allow-query"
            )
        elif rcode == dns.rcode.REFUSED:
            key = f"key {self.key_name};" if self.key_name else "<this host>;"
            detail = (
                f"refused {what} in zone {self.zone}; allow it with allow-update {{ {key} }}; on the zone "
                "(or an update-policy grant for these names and types)"
            )
        elif rcode == dns.rcode.NOTZONE:
            detail = f"says the name of {what} is not in zone {self.zone}"
        elif rcode in (dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.YXDOMAIN):
            raise TransientDnsError(
                f"records of zone {self.zone} changed on {where} during {what} ({name}); run it again"
            )
        elif rcode == dns.rcode.SERVFAIL:
            raise TransientDnsError(f"{where} failed {what} (SERVFAIL); see the server's log, then retry")
        else:
            detail = f"answered {what} with {name}"
        raise DnsError(f"{where} {detail} ({name})")
