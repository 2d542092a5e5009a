"""/v1/approvals: the human approval (step-up) queue, and the approval part of
``POST /v1/authorize`` (docs/approvals.md).

* ``GET /v1/approvals?state=&agent_id=`` and ``GET /v1/approvals/{id}`` (``?wait=N``:
  held until the request is decided or N seconds pass, at most
  ``approval_max_wait_seconds``), for ``approvals:read``.
* ``POST /v1/approvals/{id}/approve`` and ``/deny`` with ``{"reason": …}``: an
  operator's admin key with ``approvals:decide``, or the bearer token of a human who
  owns or sponsors the agent (``ApproverTokens``).
* ``POST /v1/approvals`` (open, or find the pending request for, a denied call) and
  ``POST /v1/approvals/{id}/use`` (use an approved request for exactly that call,
  once), for enforcement points (``approvals:request``).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field

from agentiam.adapters.http.deps import SOURCE
from agentiam.adapters.http.longpoll import wait_until
from agentiam.adapters.http.pagination import decode_cursor, encode_cursor
from agentiam.adapters.http.policy_schemas import (
    ApprovalRefOut,
    AuthorizeIn,
    DecisionOut,
)
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, IdPath, audited_read
from agentiam.adapters.http.security import _bearer, container_of, require
from agentiam.core.access.admin_keys import Permission, permissions_of
from agentiam.core.approvals import ApprovalRequest, ApprovalState
from agentiam.core.audit.events import Actor, ActorType, ResourceRef
from agentiam.core.ids import is_id
from agentiam.core.policy.authorizer import AuthzRequest, RequestError
from agentiam.errors import AuthenticationRequired, Forbidden, InvalidInput
from agentiam.ports import ApprovalQuery
from agentiam.services.approvals import Authorized
from agentiam.services.context import CallContext

__all__ = ["decide_with_approval", "router", "split_approval_id"]

router = APIRouter(prefix="/v1/approvals", tags=["approvals"], responses=PROBLEM_RESPONSES)
Read = Annotated[CallContext, Depends(require(Permission.APPROVALS_READ))]
Requester = Annotated[CallContext, Depends(require(Permission.APPROVALS_REQUEST))]
State = Literal["pending", "approved", "denied", "expired", "consumed"]
_RECHECK = 1.0  # seconds: a long poll re-reads storage this often (other replicas' changes)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecideIn(_In):
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class OpenIn(AuthorizeIn):
    decision_id: Annotated[str | None, Field(max_length=64)] = None


class UseIn(AuthorizeIn):
    pass


class ResourceOut(BaseModel):
    type: str
    id: str


class ApprovalOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    state: State
    agent_id: str
    action: str
    resource: ResourceOut
    resource_parents: list[ResourceOut]
    resource_attributes: dict[str, Any]
    fingerprint: str
    created_at: datetime
    expires_at: datetime
    policies: list[str]
    initiating_human: str | None
    delegation_chain: list[str]
    argument_names: list[str]
    arguments: dict[str, Any]
    decision_id: str | None
    requested_by: str
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str | None
    consumed_at: datetime | None
    consumed_decision_id: str | None
    status_url: str

    @classmethod
    def of(cls, a: ApprovalRequest, base: str) -> ApprovalOut:
        return cls(
            id=a.id,
            state=a.state.value,
            agent_id=a.agent_id,
            action=a.action,
            resource=ResourceOut(type=a.resource.type, id=a.resource.id),
            resource_parents=[ResourceOut(type=p.type, id=p.id) for p in a.resource_parents],
            resource_attributes=dict(a.resource_attributes),
            fingerprint=a.fingerprint,
            created_at=a.created_at,
            expires_at=a.expires_at,
            policies=list(a.policies),
            initiating_human=a.initiating_human,
            delegation_chain=list(a.delegation_chain),
            argument_names=list(a.argument_names),
            arguments=dict(a.arguments),
            decision_id=a.decision_id,
            requested_by=a.requested_by,
            decided_by=a.decided_by,
            decided_at=a.decided_at,
            decision_reason=a.decision_reason,
            consumed_at=a.consumed_at,
            consumed_decision_id=a.consumed_decision_id,
            status_url=_status_url(base, a.id),
        )


class ApprovalPage(BaseModel):
    items: list[ApprovalOut]
    next_cursor: str | None


class UseOut(BaseModel):
    approval: ApprovalOut
    consumed: bool
    decision_id: str | None
    approver: str | None  # the approving human's id (None: an operator approved)


def _status_url(base: str, approval_id: str) -> str:
    return f"{base}/v1/approvals/{approval_id}"


def _base(request: Request) -> str:
    return container_of(request).settings.issuer_url


def _approval_ref(request: Request, a: ApprovalRequest) -> ApprovalRefOut:
    return ApprovalRefOut(
        id=a.id,
        state=a.state.value,
        expires_at=a.expires_at,
        status_url=_status_url(_base(request), a.id),
    )


def _call(request: Request, body: AuthorizeIn) -> AuthzRequest:
    """The call an enforcement point asks about, placed where it placed it and with
    the attributes it derived (:class:`AuthorizeIn`); 422 when it is not a valid
    request (its parents and attributes included)."""
    req = body.to_request()
    if req.principal.type != "Agent":
        raise InvalidInput("only an agent's call can wait for approval")
    try:
        container_of(request).decisions.authorizer.validate_request(req)
    except RequestError as exc:
        raise InvalidInput("the call is not valid", errors=[{"message": str(exc)}]) from None
    return req


# -- reads ------------------------------------------------------------------------------


@router.get("", response_model=ApprovalPage)
def list_approvals(
    request: Request,
    ctx: Read,
    state: State | None = None,
    agent_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ApprovalPage:
    """The queue, oldest first; ``state=pending`` for what waits on a human."""
    c = container_of(request)
    page = c.approvals.find(
        ApprovalQuery(
            limit=limit,
            after=decode_cursor("apr", cursor),
            state=ApprovalState(state) if state else None,
            agent_id=agent_id,
        )
    )
    audited_read(request, ctx, "approvals.list", details={"state": state, "agent_id": agent_id})
    base = _base(request)
    return ApprovalPage(
        items=[ApprovalOut.of(a, base) for a in page.items],
        next_cursor=encode_cursor("apr", page.next_after),
    )


async def wait_for_decision(request: Request, approval_id: str, wait: float) -> ApprovalRequest:
    """The request once it is no longer pending, or as it is after ``wait`` seconds.
    A change made by this replica wakes the wait at once; another replica's is seen
    within a second. No worker thread is held while waiting."""
    service = container_of(request).approvals
    wait = max(0.0, min(wait, service.policy.max_wait_seconds))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        seen = service.changes
        current = await anyio.to_thread.run_sync(service.get, approval_id)
        remaining = deadline - loop.time()
        if current.state is not ApprovalState.PENDING or remaining <= 0:
            return current
        await wait_until(
            lambda seen=seen: service.changes != seen,  # type: ignore[misc]
            wait=min(remaining, _RECHECK),
            changes=service,
        )


@router.get("/{approval_id}", response_model=ApprovalOut)
async def get_approval(
    approval_id: IdPath,
    request: Request,
    ctx: Read,
    wait: Annotated[float, Query(ge=0, le=300)] = 0,
) -> ApprovalOut:
    """One request. ``wait=N``: held until it is decided (or expires), at most N
    seconds (and at most ``approval_max_wait_seconds``): the poll of CIBA's poll mode
    without a request per interval."""
    approval = await wait_for_decision(request, approval_id, wait)
    await anyio.to_thread.run_sync(
        lambda: audited_read(
            request, ctx, "approvals.get", resource=ResourceRef("agent", approval.agent_id)
        )
    )
    return ApprovalOut.of(approval, _base(request))


# -- deciding ---------------------------------------------------------------------------


def _decider(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> CallContext:
    """An operator (an admin key whose role grants ``approvals:decide``) or a human
    (their own bearer token, see ``ApproverTokens``); anyone else is refused."""
    key = getattr(request.state, "admin_key", None)
    if key is not None:
        if Permission.APPROVALS_DECIDE not in permissions_of(key.role):
            raise Forbidden(
                f"role {key.role.value} may not {Permission.APPROVALS_DECIDE.value}",
                hint="Use an operator or admin key, or the owner's own token.",
            )
        return CallContext(actor=request.state.actor, source=SOURCE, trace=request.state.trace)
    token = getattr(request.state, "approver_token", None)
    if not isinstance(token, str):
        raise AuthenticationRequired("an admin API key or an approver's token is required")
    human = container_of(request).approver_tokens.authenticate(token)
    request.state.actor = Actor(ActorType.HUMAN, human)
    return CallContext(actor=request.state.actor, source=SOURCE, trace=request.state.trace)


Decider = Annotated[CallContext, Depends(_decider)]


@router.post("/{approval_id}/approve", response_model=ApprovalOut)
def approve(approval_id: IdPath, body: DecideIn, request: Request, ctx: Decider) -> ApprovalOut:
    """Approve: the call it was opened for may now go through, once, before the use
    deadline. A human must own or sponsor the agent; an agent never approves."""
    approval = container_of(request).approvals.decide(
        ctx, approval_id, approve=True, reason=body.reason
    )
    return ApprovalOut.of(approval, _base(request))


@router.post("/{approval_id}/deny", response_model=ApprovalOut)
def deny(approval_id: IdPath, body: DecideIn, request: Request, ctx: Decider) -> ApprovalOut:
    """Deny: the call stays refused."""
    approval = container_of(request).approvals.decide(
        ctx, approval_id, approve=False, reason=body.reason
    )
    return ApprovalOut.of(approval, _base(request))


# -- enforcement points -----------------------------------------------------------------


@router.post("", response_model=ApprovalOut)
def open_approval(body: OpenIn, request: Request, ctx: Requester) -> ApprovalOut:
    """Open (or find the pending) request for a call an enforcement point denied. The
    control plane decides the call again: 409 unless approval would allow it."""
    call = _call(request, UseIn.model_validate(body.model_dump(exclude={"decision_id"})))
    approval = container_of(request).approvals.open(ctx, call, decision_id=body.decision_id)
    return ApprovalOut.of(approval, _base(request))


@router.post("/{approval_id}/use", response_model=UseOut)
def use_approval(approval_id: IdPath, body: UseIn, request: Request, ctx: Requester) -> UseOut:
    """Use an approved request for exactly this call (same agent, action, resource and
    arguments): ``consumed`` true once, with the ``decision_id`` the allowing decision
    must carry and the approving human. Another call: 403."""
    use = container_of(request).approvals.use(ctx, approval_id, _call(request, body))
    approver = use.approval.approver
    return UseOut(
        approval=ApprovalOut.of(use.approval, _base(request)),
        consumed=use.consumed,
        decision_id=use.decision_id,
        approver=approver.id if approver is not None and approver.kind == "human" else None,
    )


# -- POST /v1/authorize -----------------------------------------------------------------


def split_approval_id(body: AuthorizeIn) -> tuple[AuthorizeIn, str | None]:
    """``context.approval_id`` taken out of the request (it is not a Cedar context
    attribute)."""
    if "approval_id" not in body.context:
        return body, None
    context = dict(body.context)
    value = context.pop("approval_id")
    if not isinstance(value, str) or not is_id(value, "approval"):
        raise InvalidInput("context.approval_id must be an approval request id (apr_…)")
    return body.model_copy(update={"context": context}), value


async def decide_with_approval(
    request: Request,
    ctx: CallContext,
    call: AuthzRequest,
    approval_id: str | None,
    wait: float,
) -> DecisionOut:
    """Decide one request with the approval flow (``ApprovalService.authorize``); with
    ``wait`` and an approval opened, block up to ``wait`` seconds for the human and,
    if approved meanwhile, use it and answer the approved decision."""
    service = container_of(request).approvals
    result: Authorized = await anyio.to_thread.run_sync(
        lambda: service.authorize(ctx, call, approval_id=approval_id)
    )
    approval = result.approval
    if (
        approval_id is None
        and approval is not None
        and approval.state is ApprovalState.PENDING
        and wait > 0
    ):
        final = await wait_for_decision(request, approval.id, wait)
        if final.state is ApprovalState.APPROVED:
            result = await anyio.to_thread.run_sync(
                lambda: service.authorize(ctx, call, approval_id=final.id)
            )
        else:
            result = Authorized(result.decision, final)
    out = DecisionOut.of(result.decision)
    if result.approval is not None:
        out.approval = _approval_ref(request, result.approval)
    return out
