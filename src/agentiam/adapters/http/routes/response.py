"""Automatic response: the loaded playbooks and the response actions taken
(docs/response.md). Both are reads of what the audit trail and the configuration
hold, so they take ``audit:read`` (admin, operator, auditor). Also the throttle check
of ``POST /v1/authorize`` (:func:`refuse_throttled`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from agentiam.adapters.http.pagination import decode_cursor, encode_cursor
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, audited_read
from agentiam.adapters.http.security import require
from agentiam.core.access.admin_keys import Permission
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.errors import TooManyRequests
from agentiam.services.context import CallContext
from agentiam.services.response import ResponseService

__all__ = ["refuse_throttled", "router"]

router = APIRouter(tags=["response"], responses=PROBLEM_RESPONSES)
Read = Annotated[CallContext, Depends(require(Permission.AUDIT_READ))]


def _service(request: Request) -> ResponseService:
    service: ResponseService = request.app.state.container.response
    return service


def refuse_throttled(request: Request, calls: list[AuthzRequest]) -> None:
    """429 with ``Retry-After`` (RFC 6585 section 4) when a ``throttle`` response
    caps an agent principal of ``calls`` and its allowance is spent."""
    service = _service(request)
    if not service.throttles:
        return
    for call in calls:
        if call.principal.type != "Agent":
            continue
        retry = service.check_throttle(call.principal.id)
        if retry is not None:
            raise TooManyRequests(
                f"agent {call.principal.id} is throttled by an automatic response",
                retry_after=retry,
                hint="Retry after the Retry-After seconds; GET /v1/responses shows why.",
            )


@router.get("/v1/playbooks")
def list_playbooks(request: Request, ctx: Read) -> dict[str, Any]:
    """The playbook file in force: its version, playbooks (mode, cool-down, conditions,
    actions), webhooks (URL and where the secret comes from, never the secret) and the
    step-ups and throttles in force."""
    service = _service(request)
    audited_read(request, ctx, "playbooks.list")
    return {**service.playbooks.to_dict(), "measures": service.measures()}


@router.get("/v1/responses")
def list_responses(
    request: Request,
    ctx: Read,
    agent_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """``response.action`` events from the trail (in append order; pass
    ``next_cursor`` back for the next page), each naming the playbook, the action, the
    alert and the result."""
    events, next_after = _service(request).recent(
        agent_id=agent_id, limit=limit, after=decode_cursor("e", cursor, numeric=True)
    )
    audited_read(request, ctx, "responses.list", details={"agent_id": agent_id})
    return {
        "items": [
            {
                "event_id": e.event_id,
                "time": e.time.isoformat(),
                "agent_id": e.agent_id,
                "action": e.action,
                "outcome": e.outcome.value,
                **{
                    k: e.details.get(k)
                    for k in ("playbook", "dry_run", "alert_id", "detector", "result")
                },
                "details": dict(e.details),
            }
            for e in events
        ],
        "next_cursor": encode_cursor("e", next_after),
    }
