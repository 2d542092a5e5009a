"""agentiam access: least-privilege analysis of one agent."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from agentiam.cli.common import container
from agentiam.cli.output import console, emit, handle_errors

app = typer.Typer(
    help="Least privilege: effective permissions, blast radius, unused rights.",
    no_args_is_help=True,
)
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Agent = Annotated[str, typer.Argument(help="Agent id or name.")]
_COLUMNS = ["action", "resource", "pattern", "status", "policies", "conditions"]


def _rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**p, "resource": "{type}::{id}".format(**p["resource"]) if p["resource"] else None}
        for p in items
    ]


@app.command()
def permissions(agent: Agent, as_json: Json = False) -> None:
    """What the agent's policies allow (allowed, or conditional on the context)."""
    with handle_errors(), container() as c:
        found = c.agents.resolve(agent)
        items = [p.to_dict() for p in c.analysis.permissions(found.id)]
    emit(_rows(items), as_json=as_json, columns=_COLUMNS, title=f"permissions of {found.id}")


@app.command("blast-radius")
def blast_radius(agent: Agent, as_json: Json = False) -> None:
    """The worst-case reach, with risky rights called out."""
    with handle_errors(), container() as c:
        found = c.agents.resolve(agent)
        report = c.analysis.blast_radius(found.id).to_dict()
    if as_json:
        emit(report, as_json=True, columns=[])
        return
    console.print(f"blast radius of {found.id}: [bold]{report['level']}[/]")
    emit(report["findings"], as_json=False, columns=["severity", "message", "action", "resource"])
    console.print(f"sub-agents: {', '.join(report['sub_agents']) or 'none'}")


@app.command()
def unused(
    agent: Agent,
    days: Annotated[int, typer.Option("--days", min=1, max=366)] = 90,
    as_json: Json = False,
    proposal_only: Annotated[
        bool, typer.Option("--proposal", help="Print only the proposed Cedar policies.")
    ] = False,
) -> None:
    """Rights not used in the last N days, and a tighter policy set."""
    with handle_errors(), container() as c:
        found = c.agents.resolve(agent)
        report = c.analysis.unused(found.id, days).to_dict()
    if proposal_only:
        sys.stdout.write(report["proposal"]["cedar"])
        return
    if as_json:
        emit(report, as_json=True, columns=[])
        return
    console.print(
        f"{found.id}: {report['decisions_considered']} decisions in {days} days; "
        f"{len(report['used'])} rights used, {len(report['unused'])} unused"
    )
    emit(_rows(report["unused"]), as_json=False, columns=_COLUMNS, title="unused")
    console.print("proposed policies:")
    console.print(report["proposal"]["cedar"], highlight=False, markup=False)
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False, markup=False)
