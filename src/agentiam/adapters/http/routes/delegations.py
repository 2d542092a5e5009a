"""Delegation administration: grants (/v1/delegation-grants), a human's subject token
and the revocation of all their delegations (/v1/humans/{id}/...), and the delegation
graph (/v1/delegations/{jti})."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field

from agentiam.adapters.http.pagination import decode_cursor, encode_cursor
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, IdPath, audited_read
from agentiam.adapters.http.schemas import Audiences, Reason, Scopes, _In, _Out
from agentiam.adapters.http.security import container_of, require
from agentiam.core.access.admin_keys import Permission
from agentiam.core.audit.events import ResourceRef
from agentiam.core.delegation.models import DelegationGrant
from agentiam.ports import GrantQuery
from agentiam.services.context import CallContext
from agentiam.services.delegation_graph import DelegationTree, TreeNode
from agentiam.services.grants import NewGrant

router = APIRouter(tags=["delegation"], responses=PROBLEM_RESPONSES)
Read = Annotated[CallContext, Depends(require(Permission.DELEGATIONS_READ))]
Write = Annotated[CallContext, Depends(require(Permission.DELEGATIONS_WRITE))]
MintHuman = Annotated[CallContext, Depends(require(Permission.HUMAN_TOKENS_ISSUE))]
Details = Annotated[list[dict[str, Any]], Field(max_length=16)]


class GrantCreate(_In):
    human_id: Annotated[str, Field(min_length=1, max_length=64)]
    agent_id: Annotated[str, Field(min_length=1, max_length=64)]
    scopes: Scopes
    audiences: Audiences
    authorization_details: Details | None = Field(
        default=None,
        description="RFC 9396 entries the agent's tasks must stay within (none: scope only).",
    )
    ttl_seconds: Annotated[int, Field(ge=1, le=3660 * 86400)] = Field(
        description="How long the grant lasts."
    )
    max_depth: Annotated[int, Field(ge=1, le=16)] = Field(
        default=1,
        description="Agents allowed in the chain: 1 = only this agent, 2 = one sub-agent "
        "below it, and so on (at most the server's delegation_max_depth).",
    )


class GrantOut(_Out):
    id: str
    human_id: str
    agent_id: str
    scopes: list[str]
    audiences: list[str]
    authorization_details: list[dict[str, Any]]
    max_depth: int
    status: str
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None

    @classmethod
    def of(cls, grant: DelegationGrant, now: datetime) -> GrantOut:
        return cls(
            id=grant.id,
            human_id=grant.human_id,
            agent_id=grant.agent_id,
            scopes=list(grant.scopes),
            audiences=list(grant.audiences),
            authorization_details=[dict(d) for d in grant.authorization_details],
            max_depth=grant.max_depth,
            status=grant.status(now).value,
            created_at=grant.created_at,
            created_by=grant.created_by,
            expires_at=grant.expires_at,
            revoked_at=grant.revoked_at,
            revoked_by=grant.revoked_by,
            revoke_reason=grant.revoke_reason,
        )


class GrantPage(_Out):
    items: list[GrantOut]
    next_cursor: str | None


class RevokeIn(_In):
    reason: Reason


class HumanRevokedOut(_Out):
    human_id: str
    revoked_grants: list[str]


class HumanTokenIn(_In):
    agent_id: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="Put may_act naming this agent: only it may use the token."
    )
    purpose: Literal["delegation", "approval"] = Field(
        default="delegation",
        description="delegation: a subject token for token exchange; approval: the "
        "human's own token for deciding approval requests (docs/approvals.md).",
    )


class HumanTokenOut(_Out):
    subject_token: str
    subject_token_type: str = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
    expires_at: int


class NodeOut(_Out):
    jti: str
    parent_jti: str | None
    actor_jti: str | None
    root_jti: str
    origin: str
    sub: str
    client_id: str
    actors: list[str] = Field(description="The act chain, current actor first.")
    depth: int
    grant_id: str | None
    scope: list[str]
    aud: str
    issued_at: datetime
    expires_at: datetime
    external_subject: str | None
    revoked: bool
    expired: bool

    @classmethod
    def of(cls, item: TreeNode) -> NodeOut:
        n = item.node
        return cls(
            jti=n.jti,
            parent_jti=n.parent_jti,
            actor_jti=n.actor_jti,
            root_jti=n.root_jti,
            origin=n.origin.value,
            sub=n.subject,
            client_id=n.client_id,
            actors=list(n.actors),
            depth=n.depth,
            grant_id=n.grant_id,
            scope=list(n.scope),
            aud=n.audience,
            issued_at=n.issued_at,
            expires_at=n.expires_at,
            external_subject=n.external_subject,
            revoked=item.revoked,
            expired=item.expired,
        )


class TreeOut(_Out):
    token: NodeOut
    ancestors: list[NodeOut] = Field(description="Root first, ending with the parent.")
    descendants: list[NodeOut] = Field(description="Breadth first; parent_jti links them.")
    grant: GrantOut | None
    truncated: bool

    @classmethod
    def of(cls, tree: DelegationTree, now: datetime) -> TreeOut:
        return cls(
            token=NodeOut.of(tree.token),
            ancestors=[NodeOut.of(a) for a in tree.ancestors],
            descendants=[NodeOut.of(d) for d in tree.descendants],
            grant=GrantOut.of(tree.grant, now) if tree.grant else None,
            truncated=tree.truncated,
        )


@router.post("/v1/delegation-grants", status_code=201, response_model=GrantOut)
def create_grant(body: GrantCreate, request: Request, ctx: Write) -> GrantOut:
    """Record that a human lets an agent act on their behalf (RFC 8693 delegation)."""
    c = container_of(request)
    grant = c.grants.create(
        ctx,
        NewGrant(
            human_id=body.human_id,
            agent_id=body.agent_id,
            scopes=body.scopes,
            audiences=body.audiences,
            ttl_seconds=body.ttl_seconds,
            authorization_details=body.authorization_details,
            max_depth=body.max_depth,
        ),
    )
    return GrantOut.of(grant, c.clock.now())


@router.get("/v1/delegation-grants", response_model=GrantPage)
def list_grants(
    request: Request,
    ctx: Read,
    human_id: Annotated[str | None, Query(max_length=64)] = None,
    agent_id: Annotated[str | None, Query(max_length=64)] = None,
    active: bool = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> GrantPage:
    c = container_of(request)
    now = c.clock.now()
    page = c.grants.find(
        GrantQuery(
            limit=limit,
            after=decode_cursor("g", cursor),
            human_id=human_id,
            agent_id=agent_id,
            active_at=now if active else None,
        )
    )
    audited_read(
        request,
        ctx,
        "delegation_grants.list",
        details={"human_id": human_id, "agent_id": agent_id, "active": active},
    )
    return GrantPage(
        items=[GrantOut.of(g, now) for g in page.items],
        next_cursor=encode_cursor("g", page.next_after),
    )


@router.get("/v1/delegation-grants/{grant_id}", response_model=GrantOut)
def get_grant(grant_id: IdPath, request: Request, ctx: Read) -> GrantOut:
    c = container_of(request)
    grant = c.grants.get(grant_id)
    audited_read(
        request, ctx, "delegation_grants.get", resource=ResourceRef("agent", grant.agent_id)
    )
    return GrantOut.of(grant, c.clock.now())


@router.post("/v1/delegation-grants/{grant_id}/revoke", response_model=GrantOut)
def revoke_grant(grant_id: IdPath, body: RevokeIn, request: Request, ctx: Write) -> GrantOut:
    """Revoke the grant and every token issued under it, at every depth."""
    c = container_of(request)
    grant = c.grants.revoke(ctx, grant_id, body.reason)
    return GrantOut.of(grant, c.clock.now())


@router.post("/v1/humans/{human_id}/revoke-delegations", response_model=HumanRevokedOut)
def revoke_human_delegations(
    human_id: IdPath, body: RevokeIn, request: Request, ctx: Write
) -> HumanRevokedOut:
    """Revoke all of a human's grants and every token acting for them."""
    revoked = container_of(request).grants.revoke_human(ctx, human_id, body.reason)
    return HumanRevokedOut(human_id=human_id, revoked_grants=revoked)


@router.post("/v1/humans/{human_id}/subject-tokens", status_code=201, response_model=HumanTokenOut)
def mint_human_token(
    human_id: IdPath, body: HumanTokenIn, request: Request, ctx: MintHuman
) -> HumanTokenOut:
    """Mint a short-lived subject token for a registered human (for deployments
    without an external IdP). Admin role only: it starts chains in the human's name."""
    token, expires = container_of(request).grants.human_token(
        ctx, human_id, agent_id=body.agent_id, purpose=body.purpose
    )
    return HumanTokenOut(subject_token=token, expires_at=expires)


@router.get("/v1/delegations/{jti}", response_model=TreeOut)
def delegation_tree(jti: IdPath, request: Request, ctx: Read) -> TreeOut:
    """The token, its ancestors up to the initiating human's and its descendants."""
    c = container_of(request)
    tree = c.delegation_graph.tree(jti)
    audited_read(
        request,
        ctx,
        "delegations.get",
        resource=ResourceRef("agent", tree.token.node.client_id),
        details={"jti": jti, "descendants": len(tree.descendants)},
    )
    return TreeOut.of(tree, c.clock.now())
