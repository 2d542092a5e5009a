"""agentiam approvals: the human approval (step-up) queue (docs/approvals.md).

The CLI works on the database directly, as an operator (``cli:<user>`` in the trail).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from agentiam.cli.common import cli_context, container
from agentiam.cli.output import emit, handle_errors
from agentiam.core.approvals import ApprovalRequest, ApprovalState
from agentiam.ports import ApprovalQuery

app = typer.Typer(help="Calls waiting for a human's approval.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Reason = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit trail).")]
COLUMNS = ["id", "state", "agent_id", "action", "resource", "expires_at", "policies"]


def _attributes(attributes: Mapping[str, Any]) -> str:
    """The attributes the enforcement point derived for the resource, as the resource
    column shows them: `` with destructive=true, read_only=false`` (JSON values)."""
    if not attributes:
        return ""
    shown = (f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(attributes.items()))
    return " with " + ", ".join(shown)


def _row(a: ApprovalRequest) -> dict[str, Any]:
    return {
        "id": a.id,
        "state": a.state.value,
        "agent_id": a.agent_id,
        "action": a.action,
        "resource": f"{a.resource.type}::{a.resource.id}"
        + "".join(f" in {p.type}::{p.id}" for p in a.resource_parents)
        + _attributes(a.resource_attributes),
        "resource_parents": [p.to_json() for p in a.resource_parents],
        "resource_attributes": dict(a.resource_attributes),
        "fingerprint": a.fingerprint,
        "created_at": a.created_at.isoformat(),
        "expires_at": a.expires_at.isoformat(),
        "policies": list(a.policies),
        "initiating_human": a.initiating_human,
        "delegation_chain": list(a.delegation_chain),
        "argument_names": list(a.argument_names),
        "arguments": dict(a.arguments),
        "decision_id": a.decision_id,
        "requested_by": a.requested_by,
        "decided_by": a.decided_by,
        "decided_at": a.decided_at.isoformat() if a.decided_at else None,
        "decision_reason": a.decision_reason,
        "consumed_at": a.consumed_at.isoformat() if a.consumed_at else None,
    }


@app.command("list")
def list_approvals(
    state: Annotated[
        ApprovalState | None, typer.Option(help="Only this state (pending: waiting).")
    ] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List approval requests, oldest first."""
    with handle_errors(), container() as c:
        page = c.approvals.find(ApprovalQuery(limit=limit, state=state, agent_id=agent))
    emit([_row(a) for a in page.items], as_json=as_json, columns=COLUMNS, title="Approvals")


@app.command()
def show(approval_id: str, as_json: JsonOpt = False) -> None:
    """Show one request: the call, its redacted arguments, who asked and why."""
    with handle_errors(), container() as c:
        approval = c.approvals.get(approval_id)
    emit(_row(approval), as_json=as_json, columns=[*COLUMNS, "arguments", "decided_by"])


@app.command()
def approve(approval_id: str, reason: Reason, as_json: JsonOpt = False) -> None:
    """Approve: the call may go through, once."""
    with handle_errors(), container() as c:
        approval = c.approvals.decide(cli_context(), approval_id, approve=True, reason=reason)
    emit(_row(approval), as_json=as_json, columns=[*COLUMNS, "decided_by"])


@app.command()
def deny(approval_id: str, reason: Reason, as_json: JsonOpt = False) -> None:
    """Deny: the call stays refused."""
    with handle_errors(), container() as c:
        approval = c.approvals.decide(cli_context(), approval_id, approve=False, reason=reason)
    emit(_row(approval), as_json=as_json, columns=[*COLUMNS, "decided_by"])


@app.command()
def watch(
    interval: Annotated[float, typer.Option(min=0.2, max=60, help="Seconds between checks.")] = 1.0,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent.")] = None,
) -> None:
    """Print each new pending request as it arrives (Ctrl-C to stop)."""
    seen: set[str] = set()
    with handle_errors(), container() as c:
        try:
            while True:
                page = c.approvals.find(
                    ApprovalQuery(limit=200, state=ApprovalState.PENDING, agent_id=agent)
                )
                for a in page.items:
                    if a.id not in seen:
                        seen.add(a.id)
                        row = _row(a)
                        typer.echo(
                            f"{row['id']}  {row['agent_id']}  {row['action']} {row['resource']}"
                            f"  until {row['expires_at']}  ({', '.join(row['policies'])})"
                        )
                time.sleep(interval)
        except KeyboardInterrupt:
            return
