"""agentiam grants: humans' delegation grants to agents (RFC 8693 token exchange)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from agentiam.adapters.http.routes.delegations import GrantOut
from agentiam.cli.common import cli_context, container
from agentiam.cli.output import console, emit, fail, handle_errors
from agentiam.ports import GrantQuery
from agentiam.services.grants import NewGrant

app = typer.Typer(
    help="Delegation grants: which agent may act for which human, within what.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Reason = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded in the audit trail).")]
COLUMNS = ["id", "human_id", "agent_id", "scopes", "audiences", "max_depth", "status", "expires_at"]


@app.command()
def create(
    human: Annotated[str, typer.Option(help="The human's id (hum_…).")],
    agent: Annotated[str, typer.Option(help="The agent's id or name.")],
    scope: Annotated[list[str], typer.Option("--scope", help="A scope (repeat).")],
    audience: Annotated[list[str], typer.Option("--audience", help="An audience (repeat).")],
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.", min=1)] = 86400,
    max_depth: Annotated[
        int, typer.Option(help="Agents allowed in the chain (1 = no sub-agents).", min=1)
    ] = 1,
    details: Annotated[
        str | None,
        typer.Option(help="RFC 9396 authorization_details as a JSON array."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Let an agent act on a human's behalf."""
    try:
        parsed = json.loads(details) if details else None
    except ValueError:
        fail("--details is not valid JSON", "Pass a JSON array of objects with a 'type'.")
    with handle_errors(), container() as c:
        found = c.agents.resolve(agent)
        grant = c.grants.create(
            cli_context(),
            NewGrant(
                human_id=human,
                agent_id=found.id,
                scopes=scope,
                audiences=audience,
                ttl_seconds=ttl,
                authorization_details=parsed,
                max_depth=max_depth,
            ),
        )
        out = GrantOut.of(grant, c.clock.now())
    emit(out, as_json=as_json, columns=COLUMNS)


@app.command("list")
def list_grants(
    human: Annotated[str | None, typer.Option(help="Only this human's grants.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's grants.")] = None,
    active: Annotated[bool, typer.Option(help="Only active grants.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List delegation grants."""
    with handle_errors(), container() as c:
        agent_id = c.agents.resolve(agent).id if agent else None
        now = c.clock.now()
        page = c.grants.find(
            GrantQuery(
                limit=limit, human_id=human, agent_id=agent_id, active_at=now if active else None
            )
        )
        items = [GrantOut.of(g, now) for g in page.items]
    emit(items, as_json=as_json, columns=COLUMNS, title="Delegation grants")


@app.command()
def show(grant_id: str, as_json: JsonOpt = False) -> None:
    """Show one grant."""
    with handle_errors(), container() as c:
        out = GrantOut.of(c.grants.get(grant_id), c.clock.now())
    emit(out, as_json=as_json, columns=[*COLUMNS, "authorization_details", "revoke_reason"])


@app.command()
def revoke(grant_id: str, reason: Reason) -> None:
    """Revoke a grant and every token issued under it (all depths)."""
    with handle_errors(), container() as c:
        c.grants.revoke(cli_context(), grant_id, reason)
    console.print(f"revoked {grant_id} and every token issued under it")


@app.command("revoke-human")
def revoke_human(
    human: Annotated[str, typer.Argument(help="The human's id (hum_…).")], reason: Reason
) -> None:
    """Revoke all of a human's grants and every token acting for them."""
    with handle_errors(), container() as c:
        revoked = c.grants.revoke_human(cli_context(), human, reason)
    console.print(f"revoked {len(revoked)} grants of {human} and every token acting for them")


@app.command("subject-token")
def subject_token(
    human: Annotated[str, typer.Argument(help="The human's id (hum_…).")],
    agent: Annotated[str | None, typer.Option(help="Only this agent may use it (may_act).")] = None,
    approval: Annotated[
        bool, typer.Option("--approval", help="A token for deciding approvals instead.")
    ] = False,
) -> None:
    """Mint a short-lived subject token for a human (no external IdP), or with
    --approval the human's token for deciding approval requests. Prints the token."""
    with handle_errors(), container() as c:
        agent_id = c.agents.resolve(agent).id if agent else None
        token, _ = c.grants.human_token(
            cli_context(),
            human,
            agent_id=agent_id,
            purpose="approval" if approval else "delegation",
        )
    typer.echo(token)
