"""Prove the DNS update will be accepted, before the cutover does anything it cannot take back.

It runs right after the cutover gate, so a rejected TSIG key (or a zone the key may not change, or a zone
file this user cannot rewrite) stops the cutover while the source is still running untouched, instead of
after it was quiesced and shut down with its name still pointing at it. It changes nothing: RFC 2136
servers get an update whose prerequisites hold and whose only operations delete records that do not exist.
"""

from __future__ import annotations

from typing import Any

from orchestrator.dns import DnsError, check_access, touched_rrsets
from orchestrator.playbook.models import Rfc2136Dns
from orchestrator.steps.base import Step, StepContext, StepFailed
from orchestrator.steps.dns_update import dns_config, record_value


class CheckDns(Step):
    kind = "check_dns"
    retryable = True
    description = "make sure the DNS server takes the key for every record to move (changes nothing)"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        per_provider: dict[str, dict[str, list[tuple[str, str]]]] = {}
        for record in ctx.server.dns_records:
            config = dns_config(ctx, record)
            value = record_value(ctx, record.value)
            try:
                touched = touched_rrsets(
                    config, record.name, record.type, value, record.ptr, base_dir=ctx.base_dir
                )
            except DnsError as exc:
                raise self._blocked(ctx, exc, record.provider, config.zone) from None
            zones = per_provider.setdefault(record.provider, {})
            for zone, names in touched.items():
                known = zones.setdefault(zone, [])
                known.extend(n for n in names if n not in known)
        checked = []
        for provider, zones in per_provider.items():
            config = ctx.playbook.dns[provider]
            for zone, names in zones.items():
                try:
                    check_access(config, {zone: names}, base_dir=ctx.base_dir)
                except DnsError as exc:
                    raise self._blocked(ctx, exc, provider, zone) from None
                ctx.event(f"{provider}: zone {zone} accepts {_who(config)} for {len(names)} RRset(s)")
                checked.append({"provider": provider, "zone": zone, "rrsets": [list(n) for n in names]})
        return {"checked": checked}

    def undo(self, ctx: StepContext) -> None:
        """The check changed nothing."""

    @staticmethod
    def _blocked(ctx: StepContext, error: DnsError, provider: str, zone: str) -> StepFailed:
        config = ctx.playbook.dns[provider]
        return StepFailed(
            f"DNS check failed for zone {zone} with {_who(config)} (dns provider {provider}): {error}. "
            f"Nothing was stopped: the cutover of {ctx.server.name} halted before quiesce, the source "
            "still runs and no replica was started; fix that, then run `migrate cutover` again",
            retryable=error.retryable,
        )


def _who(config: Any) -> str:
    if isinstance(config, Rfc2136Dns):
        return f"TSIG key {config.tsig.name}" if config.tsig else "unsigned updates"
    return "this user"
