"""/v1/authorize (one request or a batch) and the least-privilege analysis of an agent."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request

from agentiam.adapters.http.policy_schemas import (
    AuthorizeBatchIn,
    AuthorizeIn,
    DecisionBatchOut,
    DecisionOut,
)
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, IdPath, audited_read
from agentiam.adapters.http.routes.approvals import decide_with_approval, split_approval_id
from agentiam.adapters.http.routes.response import refuse_throttled
from agentiam.adapters.http.security import container_of, require
from agentiam.core.access.admin_keys import Permission
from agentiam.core.audit.events import ResourceRef
from agentiam.core.policy.authorizer import AuthzRequest, RequestError
from agentiam.errors import InvalidInput
from agentiam.services.context import CallContext

router = APIRouter(tags=["authorization"], responses=PROBLEM_RESPONSES)
Decide = Annotated[CallContext, Depends(require(Permission.AUTHZ_DECIDE))]
Read = Annotated[CallContext, Depends(require(Permission.POLICIES_READ))]


def _requests(request: Request, bodies: list[AuthorizeIn]) -> list[AuthzRequest]:
    """Build and shape-check the requests: unknown types or actions and contexts that
    do not fit the schema are the caller's error (422), not a decision."""
    authorizer = container_of(request).decisions.authorizer
    out: list[AuthzRequest] = []
    errors: list[dict[str, Any]] = []
    for i, body in enumerate(bodies):
        req = body.to_request()
        if "approval" in body.context:
            # The control plane owns approval state: it sets it from an approved,
            # unused request named by context.approval_id (docs/approvals.md). A caller
            # asserting its own would bypass every step-up policy.
            errors.append(
                {
                    "index": i,
                    "message": "context.approval is set by the control plane; "
                    "pass context.approval_id of an approved request",
                }
            )
            continue
        try:
            authorizer.validate_request(req)
        except RequestError as exc:
            errors.append({"index": i, "message": str(exc)})
        out.append(req)
    if errors:
        raise InvalidInput("the authorization request is not valid", errors=errors)
    refuse_throttled(request, out)  # 429 while an automatic response caps the agent
    return out


@router.post("/v1/authorize", response_model=DecisionOut)
async def authorize(
    body: AuthorizeIn,
    request: Request,
    ctx: Decide,
    wait: Annotated[float, Query(ge=0, le=300)] = 0,
) -> DecisionOut:
    """Decide one request. Every decision is written to the audit trail first. A deny
    that a human's approval would lift opens an approval request (``approval`` in the
    answer; ``wait=N`` blocks up to N seconds for the human's decision), and
    ``context.approval_id`` uses an approved one, once (docs/approvals.md)."""
    body, approval_id = split_approval_id(body)
    call = (await anyio.to_thread.run_sync(_requests, request, [body]))[0]
    return await decide_with_approval(request, ctx, call, approval_id, wait)


@router.post("/v1/authorize/batch", response_model=DecisionBatchOut)
def authorize_batch(body: AuthorizeBatchIn, request: Request, ctx: Decide) -> DecisionBatchOut:
    limit = container_of(request).settings.limits.max_authorize_batch
    if len(body.requests) > limit:
        raise InvalidInput(f"a batch holds at most {limit} requests")
    decisions = container_of(request).decisions.decide(ctx, _requests(request, body.requests))
    return DecisionBatchOut(decisions=[DecisionOut.of(d) for d in decisions])


@router.get("/v1/agents/{agent_id}/permissions", tags=["analysis"])
def agent_permissions(agent_id: IdPath, request: Request, ctx: Read) -> dict[str, Any]:
    """What the agent's policies allow: per action and catalog resource, plus pattern
    grants, each ``allowed`` or ``conditional`` (depends on the request context)."""
    permissions = container_of(request).analysis.permissions(agent_id)
    audited_read(request, ctx, "agents.permissions", resource=ResourceRef("agent", agent_id))
    return {"agent_id": agent_id, "permissions": [p.to_dict() for p in permissions]}


@router.get("/v1/agents/{agent_id}/blast-radius", tags=["analysis"])
def agent_blast_radius(agent_id: IdPath, request: Request, ctx: Read) -> dict[str, Any]:
    report = container_of(request).analysis.blast_radius(agent_id)
    audited_read(request, ctx, "agents.blast_radius", resource=ResourceRef("agent", agent_id))
    return report.to_dict()


@router.get("/v1/agents/{agent_id}/unused-permissions", tags=["analysis"])
def agent_unused_permissions(
    agent_id: IdPath,
    request: Request,
    ctx: Read,
    days: Annotated[int, Query(ge=1, le=366)] = 90,
) -> dict[str, Any]:
    """Permissions not used in the last ``days`` days, and a tighter policy set that
    still allows everything the agent did."""
    report = container_of(request).analysis.unused(agent_id, days)
    audited_read(
        request,
        ctx,
        "agents.unused_permissions",
        resource=ResourceRef("agent", agent_id),
        details={"days": days},
    )
    return report.to_dict()
