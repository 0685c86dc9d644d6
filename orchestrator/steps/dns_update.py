"""Move the server's DNS names (and their PTRs) to the replica, remembering the old records for undo.

Every RRset is journaled with what it held before it changes, so `migrate undo` puts back exactly those
records, TTLs included. The step is done only when the DNS server itself answers with the new records.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import dns.name

from orchestrator.dns import (
    Change,
    DnsError,
    Expected,
    Record,
    move_record,
    undo_change,
    wait_until_answered,
)
from orchestrator.playbook.models import DnsRecord, Rfc2136Dns
from orchestrator.steps.base import Step, StepContext, StepFailed
from orchestrator.steps.common import optional_output

RESOURCE = "dns_record"


def record_value(ctx: StepContext, value: str) -> str:
    """``nicN`` means the address the replica's NIC N was given; anything else is literal."""
    if not value.startswith("nic") or not value[3:].isdigit():
        return value
    nics = (optional_output(ctx, "remap_nics") or {}).get("nics", [])
    index = int(value[3:])
    if index >= len(nics) or nics[index]["ip"] in ("dhcp", "keep"):
        raise StepFailed(
            f"DNS record value {value} has no static address on the replica; give that NIC an ip"
        )
    return str(ipaddress.ip_interface(nics[index]["ip"]).ip)


def dns_config(ctx: StepContext, record: DnsRecord) -> Any:
    config = ctx.playbook.dns.get(record.provider)
    if config is None:
        raise StepFailed(f"dns provider {record.provider!r} is not defined in the playbook's dns")
    return config


def step_failed(error: DnsError, suffix: str = "") -> StepFailed:
    return StepFailed(f"{error}{suffix}", retryable=error.retryable)


class UpdateDns(Step):
    kind = "update_dns"
    retryable = True
    description = (
        "point the server's DNS records (and PTRs) at the replica, then wait until the server says so"
    )

    def run(self, ctx: StepContext) -> dict[str, Any]:
        changed = []
        for record in ctx.server.dns_records:
            config = dns_config(ctx, record)
            value = record_value(ctx, record.value)

            def journal(change: Change, provider: str = record.provider) -> None:
                if not _journaled(ctx, provider, change):  # a rerun: the first entry holds the original
                    ctx.record_resource(RESOURCE, provider, change.to_json())

            try:
                expected = move_record(
                    config,
                    record.name,
                    record.type,
                    value,
                    record.ttl,
                    ptr=record.ptr,
                    before=self._first_previous(ctx, record),
                    journal=journal,
                    base_dir=ctx.base_dir,
                )
                timeout = float(config.verify_timeout) if isinstance(config, Rfc2136Dns) else 0.0
                wait_until_answered(config, expected, timeout=timeout, base_dir=ctx.base_dir)
            except DnsError as exc:
                raise step_failed(exc) from None
            for answer in expected:
                ctx.event(
                    f"{answer.name} {answer.type} -> {answer.value} (ttl {record.ttl}) on {record.provider}"
                )
            changed.extend(_shown(answer, record.ttl) for answer in expected)
        return {"records": changed}

    def undo(self, ctx: StepContext) -> None:
        """Newest change first, so a name changed twice (a retried run) ends as it was before the first."""
        for resource in reversed(ctx.resources()):
            config = ctx.playbook.dns.get(resource.provider)
            if config is None:
                raise StepFailed(
                    f"dns provider {resource.provider!r} is gone from the playbook; put it back to undo "
                    f"the change of {resource.ref['name']} {resource.ref['type']}"
                )
            try:
                undo_change(config, Change.from_json(dict(resource.ref)), base_dir=ctx.base_dir)
            except DnsError as exc:
                raise step_failed(exc, "; run `migrate undo` again once that is fixed") from None
            ctx.forget_resource(resource)

    @staticmethod
    def _first_previous(ctx: StepContext, record: DnsRecord) -> list[Record] | None:
        """What the name held before this step first touched it (a rerun sees its own new value instead)."""
        origin = dns.name.from_text(ctx.playbook.dns[record.provider].zone)
        wanted = dns.name.from_text(record.name, origin)
        for resource in ctx.resources():
            ref = resource.ref
            if (
                resource.provider == record.provider
                and dns.name.from_text(ref.get("zone") or origin.to_text()) == origin
                and ref["type"] == record.type
                and dns.name.from_text(ref["name"], origin) == wanted
            ):
                return Change.from_json(dict(ref)).previous
        return None


def _journaled(ctx: StepContext, provider: str, change: Change) -> bool:
    """This RRset already has its change on record: what it held before the step first touched it."""
    for resource in ctx.resources():
        earlier = Change.from_json(dict(resource.ref))
        if resource.provider == provider and (earlier.zone, earlier.name, earlier.type) == (
            change.zone,
            change.name,
            change.type,
        ):
            return True
    return False


def _shown(answer: Expected, ttl: int) -> dict[str, Any]:
    return {"zone": answer.zone, "name": answer.name, "type": answer.type, "value": answer.value, "ttl": ttl}
