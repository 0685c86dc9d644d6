"""Re-check the server's rules against the live target just before work starts.

`migrate validate` ran the same catalog when the plan was made; inventories drift (a datastore fills up,
a VM of the same name appears), so each server checks again, and a critical finding stops only that server.
"""

from __future__ import annotations

from typing import Any

from orchestrator import validation
from orchestrator.steps.base import Step, StepContext, StepFailed


class ValidateServer(Step):
    kind = "validate"
    retryable = True
    description = "re-check the rule catalog for this server against the target's live inventory"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        server = ctx.server
        inventories = {}
        if server.target is not None:  # a data-only server's target is a running host, no provider
            name = server.target.provider
            inventories[name] = ctx.provider(name).inventory()
        findings = [
            f
            for f in validation.validate(ctx.playbook, inventories=inventories)
            if f.server == server.name and f.rule_id != "vm.exists_on_target"
        ]
        critical = [f for f in findings if f.severity == "critical"]
        for finding in findings:
            ctx.event(f"{finding.rule_id}: {finding.message}", level=finding.severity)
        if critical:
            raise StepFailed("; ".join(f"{f.rule_id}: {f.message}" for f in critical))
        return {"findings": [f.to_json() for f in findings]}

    def undo(self, ctx: StepContext) -> None:
        """Validation creates nothing."""
