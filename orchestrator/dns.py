"""Move a server's DNS records at cutover, and put them back on undo.

Every change returns the records it replaced, so the update_dns step journals them and undo restores
exactly what was there (same values, same TTL) rather than deleting what it created. Two backends: a zone
file rewritten in place (the embedded default, and any server that loads its zone from a file) and RFC 2136
dynamic updates signed with TSIG (BIND, Knot, PowerDNS, and Windows DNS where TSIG is accepted).
"""

from __future__ import annotations

import binascii
import fcntl
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
import dns.tsig
import dns.update
import dns.zone

from orchestrator.playbook.models import Rfc2136Dns, WindowsDns, ZonefileDns

Record = tuple[str, int]  # (value as text, TTL); a CNAME target is absolute, with its final dot
MANAGED_TYPES = ("A", "AAAA", "CNAME")


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

    def get(self, name: str, rtype: str) -> list[Record]: ...

    def replace(self, name: str, rtype: str, value: str, ttl: int) -> list[Record]:
        """Make ``value`` the only record of that name and type; returns the records it replaced."""
        ...

    def delete(self, name: str, rtype: str) -> None: ...

    def restore(self, name: str, rtype: str, previous: list[Record]) -> None:
        """Put back what `replace` returned (deleting the records when there were none)."""
        ...

    def close(self) -> None: ...


def open_dns(config: Any, *, base_dir: Path | None = None) -> DnsUpdater:
    if isinstance(config, ZonefileDns):
        return ZonefileUpdater(config, base_dir=base_dir)
    if isinstance(config, Rfc2136Dns):
        return Rfc2136Updater(config)
    if isinstance(config, WindowsDns):
        raise DnsUnavailable(
            f"dns type windows (zone {config.zone} on {config.host} over WinRM) is added by "
            "the Hyper-V provider issue; until then use type: rfc2136 with a TSIG key"
        )
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


# ---------------------------------------------------------------- zone file


class ZonefileUpdater:
    """A zone file on disk, rewritten atomically with its SOA serial bumped on every change.

    Comments and formatting of a hand-written file are not kept (dnspython writes the zone back in its
    own layout); its records, TTLs and $ORIGIN are.
    """

    def __init__(self, config: ZonefileDns, *, base_dir: Path | None = None) -> None:
        path = Path(config.path).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        self.path = path.resolve()
        self._names = _ZoneNames(config.zone)
        self.zone = self._names.zone
        self._thread_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ZonefileUpdater({self.zone}, {str(self.path)!r})"

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
        """The smallest zone a DNS server will load: SOA, one NS, and the NS's address (this machine)."""
        origin = self._names.origin.to_text()
        text = (
            f"$ORIGIN {origin}\n"
            f"@ 3600 IN SOA ns1.{origin} hostmaster.{origin} 1 3600 600 604800 60\n"
            "@ 3600 IN NS ns1\n"
            "ns1 3600 IN A 127.0.0.1\n"
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

    def __init__(self, config: Rfc2136Dns) -> None:
        self._names = _ZoneNames(config.zone)
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

    def close(self) -> None:
        """Each message uses its own TCP connection."""

    # ------------------------------------------------------------ internals

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
                f"refused {what} in zone {self.zone}; allow it with allow-update {{ {key} }}; on the zone"
            )
        elif rcode == dns.rcode.NOTZONE:
            detail = f"says the name of {what} is not in zone {self.zone}"
        elif rcode == dns.rcode.SERVFAIL:
            raise TransientDnsError(f"{where} failed {what} (SERVFAIL); see the server's log, then retry")
        else:
            detail = f"answered {what} with {name}"
        raise DnsError(f"{where} {detail} ({name})")
