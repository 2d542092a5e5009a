"""agentiam tokens: revoke access tokens."""

from __future__ import annotations

from typing import Annotated

import typer

from agentiam.cli.common import cli_context, container
from agentiam.cli.output import console, handle_errors

app = typer.Typer(help="Access tokens: revoke by token id or by agent.", no_args_is_help=True)
Reason = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded in the audit trail).")]


@app.command()
def revoke(
    jti: Annotated[str, typer.Argument(help="The token's jti (tok_…).")],
    reason: Reason,
) -> None:
    """Revoke one token; verifiers refuse it within a second."""
    with handle_errors(), container() as c:
        c.revocations.revoke_token(cli_context(), jti, expires=None, agent_id=None, reason=reason)
    console.print(f"revoked {jti}")


@app.command("revoke-agent")
def revoke_agent(
    agent: Annotated[str, typer.Argument(help="Agent id or name.")],
    reason: Reason,
) -> None:
    """Revoke every token issued to an agent until now."""
    with handle_errors(), container() as c:
        found = c.agents.resolve(agent)
        cutoff = c.revocations.revoke_agent(cli_context(), found.id, reason)
    console.print(f"revoked every token of {found.id} issued at or before {cutoff}")
