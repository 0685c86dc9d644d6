"""One command's view of a migration: the playbook, its plan, and the journal that plan is run against.

The rule that protects users from themselves lives here: a journal belongs to one plan. If the playbook
changed since (anything but comments), the command refuses until ``--replan`` says to adopt the new plan,
and then only steps whose own definition changed are run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.journal import FILE_NAME, Journal
from orchestrator.planner import Plan, build_plan, node_hash
from orchestrator.playbook import LoadedPlaybook, load_playbook
from orchestrator.playbook.models import Playbook
from orchestrator.playbook.secrets import redact
from providers.base import Inventory, Provider, SourceFacts


class PlanChanged(Exception):
    """The playbook no longer matches the plan in the journal."""


@dataclass
class Session:
    loaded: LoadedPlaybook
    plan: Plan
    state_dir: Path

    @property
    def playbook(self) -> Playbook:
        return self.loaded.playbook

    @property
    def base_dir(self) -> Path:
        return self.loaded.base_dir

    @property
    def has_journal(self) -> bool:
        return (self.state_dir / FILE_NAME).exists()

    def open_journal(self, *, replan: bool = False) -> tuple[Journal, list[str]]:
        """The journal, bound to this plan; returns the finished steps a replan sent back to pending."""
        journal = Journal(self.state_dir)
        current = journal.current_plan_hash()
        if current is not None and current != self.plan.hash and not replan:
            journal.close()
            raise PlanChanged(
                f"{self.loaded.path.name} changed since the plan in {self.state_dir} was made "
                f"(plan {current} -> {self.plan.hash}). Nothing was run. Check the change with "
                "`migrate plan`, then run again with --replan to adopt it (unchanged finished steps are "
                "kept)."
            )
        reset: list[str] = []
        if current != self.plan.hash:
            hashes = {s.id: (s.server, s.kind, node_hash(s)) for s in self.plan.steps()}
            reset = journal.adopt_plan(self.plan.to_json(), hashes)
        return journal, reset

    def read_journal(self) -> Journal:
        return Journal(self.state_dir, readonly=True)


def default_state_dir(playbook_path: Path) -> Path:
    return playbook_path.resolve().parent / ".hvmigrate"


def open_session(playbook_path: str | Path, state_dir: str | Path | None = None) -> Session:
    loaded = load_playbook(playbook_path)
    plan = build_plan(loaded.playbook, loaded.sha256)
    state = Path(state_dir).resolve() if state_dir else default_state_dir(loaded.path)
    return Session(loaded=loaded, plan=plan, state_dir=state)


@dataclass
class Inspection:
    """What `migrate validate` could learn from the live targets and sources (all read-only)."""

    inventories: dict[str, Inventory]
    facts: dict[str, SourceFacts]
    problems: list[str]


def inspect(playbook: Playbook, *, offline: bool = False, discover_all: bool = False) -> Inspection:
    """Inventory every provider and discover cheap sources (images); remote sources only when asked."""
    from providers.registry import open_provider, open_source

    result = Inspection({}, {}, [])
    if offline:
        return result
    opened: dict[str, Provider] = {}
    for name, config in playbook.providers.items():
        try:
            opened[name] = open_provider(name, config)
            result.inventories[name] = opened[name].inventory()
        except Exception as exc:  # an unreachable provider is a finding
            result.problems.append(f"provider {name} ({config.type}) not inspected: {redact(str(exc))}")
    for server in playbook.servers:
        if server.source.type != "image" and not discover_all:
            continue
        try:
            source = open_source(server, opened)
            try:
                result.facts[server.name] = source.discover()
            finally:
                source.close()
        except Exception as exc:  # a source that cannot be read is a finding
            result.problems.append(f"source of {server.name} could not be discovered: {redact(str(exc))}")
    for provider in opened.values():
        provider.close()
    return result
