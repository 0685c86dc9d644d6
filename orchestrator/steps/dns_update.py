"""Move the server's DNS names to the replica, remembering the old records so undo can put them back."""

from __future__ import annotations

import ipaddress
from typing import Any

from orchestrator.dns import open_dns
from orchestrator.steps.base import Step, StepContext, StepFailed
from orchestrator.steps.common import optional_output


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


class UpdateDns(Step):
    kind = "update_dns"
    retryable = True
    description = "point the server's DNS records at the replica (RFC 2136 with TSIG, or the zone file)"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        changed = []
        for record in ctx.server.dns_records:
            config = ctx.playbook.dns.get(record.provider)
            if config is None:
                raise StepFailed(f"dns provider {record.provider!r} is not defined in the playbook's dns")
            updater = open_dns(config)
            value = record_value(ctx, record.value)
            previous = updater.get(record.name, record.type)
            ctx.record_resource(
                "dns_record",
                record.provider,
                {"name": record.name, "type": record.type, "previous": [list(p) for p in previous]},
            )
            updater.replace(record.name, record.type, value, record.ttl)
            ctx.event(f"{record.name} {record.type} -> {value} (ttl {record.ttl}) on {record.provider}")
            changed.append({"name": record.name, "type": record.type, "value": value, "ttl": record.ttl})
        return {"records": changed}

    def undo(self, ctx: StepContext) -> None:
        for resource in reversed(ctx.resources()):
            updater = open_dns(ctx.playbook.dns[resource.provider])
            previous = [tuple(p) for p in resource.ref["previous"]]
            updater.restore(resource.ref["name"], resource.ref["type"], previous)
            ctx.forget_resource(resource)
