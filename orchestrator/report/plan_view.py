"""The plan as a person reads it: a rich tree per server, or Graphviz dot / Mermaid for diagrams."""

from __future__ import annotations

import re

import networkx as nx
from rich.tree import Tree

from orchestrator.planner import Plan
from orchestrator.steps import registry

_PHASE_RANK = {"replicate": 0, "cutover": 1, "test": 2, "cleanup": 3}


def _order(plan: Plan) -> list[str]:
    """Dependency order; among steps ready at once, the phases in the order a migration meets them."""
    return list(
        nx.lexicographical_topological_sort(
            plan.graph, key=lambda n: (_PHASE_RANK.get(plan.node(n).phase, 9), n)
        )
    )


def plan_tree(plan: Plan, *, max_servers: int = 50) -> Tree:
    tree = Tree(
        f"[bold]{plan.playbook_name}[/]  plan {plan.hash}: {len(plan.servers)} server(s), {len(plan)} steps"
    )
    descriptions = {kind: cls.description for kind, cls in registry().items()}
    by_server: dict[str | None, list[str]] = {}
    for node_id in _order(plan):
        by_server.setdefault(plan.node(node_id).server, []).append(node_id)
    shared = by_server.pop(None, [])
    if shared:
        branch = tree.add("[bold magenta]shared[/] (appliances, wave barriers)")
        for node_id in shared:
            branch.add(f"{node_id}  [dim]{descriptions.get(plan.node(node_id).kind, '')}[/]")
    for index, server in enumerate(plan.servers):
        if index == max_servers:
            tree.add(
                f"[dim]... {len(plan.servers) - max_servers} more server(s); use -o plan.json for all[/]"
            )
            break
        branch = tree.add(f"[bold cyan]{server}[/]")
        phase = None
        for node_id in by_server.get(server, []):
            node = plan.node(node_id)
            if node.phase != phase:
                phase = node.phase
                label = {
                    "replicate": "replicate (execute, sync)",
                    "cutover": "cutover (migrate cutover)",
                    "test": "test copy (migrate cutover --test; undo --test)",
                    "cleanup": "on failure only",
                }.get(phase, phase)
                phase_branch = branch.add(f"[yellow]{label}[/]")
            outside = [p for p in plan.graph.predecessors(node_id) if plan.node(p).server != server]
            after = f"  [magenta]after {', '.join(sorted(outside))}[/]" if outside else ""
            undo = (
                f"  [dim]undoes {', '.join(k.split('/')[-1] for k in node.cleanup_of)}[/]"
                if node.cleanup_of
                else ""
            )
            phase_branch.add(f"{node.kind}{after}{undo}  [dim]{descriptions.get(node.kind, '')}[/]")
    return tree


def _dot_id(node_id: str) -> str:
    return '"' + node_id.replace('"', r"\"") + '"'


def to_dot(plan: Plan) -> str:
    lines = [f"digraph {_dot_id(plan.playbook_name)} {{", "  rankdir=LR;", "  node [shape=box, fontsize=10];"]
    clusters: dict[str | None, list[str]] = {}
    for node_id in _order(plan):
        clusters.setdefault(plan.node(node_id).server, []).append(node_id)
    for index, (server, nodes) in enumerate(clusters.items()):
        lines.append(f"  subgraph cluster_{index} {{")
        lines.append(f"    label={_dot_id(server or 'shared')};")
        for node_id in nodes:
            node = plan.node(node_id)
            style = ", style=dashed" if node.phase == "cleanup" else ""
            lines.append(f"    {_dot_id(node_id)} [label={_dot_id(node.kind)}{style}];")
        lines.append("  }")
    for a, b in sorted(plan.graph.edges):
        lines.append(f"  {_dot_id(a)} -> {_dot_id(b)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(plan: Plan) -> str:
    ids = {node_id: f"n{i}" for i, node_id in enumerate(_order(plan))}

    def label(text: str) -> str:
        return re.sub(r'["<>]', "_", text)

    lines = ["flowchart LR"]
    clusters: dict[str | None, list[str]] = {}
    for node_id in ids:
        clusters.setdefault(plan.node(node_id).server, []).append(node_id)
    for index, (server, nodes) in enumerate(clusters.items()):
        lines.append(f'  subgraph s{index}["{label(server or "shared")}"]')
        for node_id in nodes:
            lines.append(f'    {ids[node_id]}["{label(plan.node(node_id).kind)}"]')
        lines.append("  end")
    for a, b in sorted(plan.graph.edges):
        lines.append(f"  {ids[a]} --> {ids[b]}")
    return "\n".join(lines) + "\n"
