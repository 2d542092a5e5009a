"""/v1/agents: registration, changes, lifecycle actions, keys, transitions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from agentiam.adapters.http.pagination import decode_cursor, encode_cursor
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, IdPath, audited_read
from agentiam.adapters.http.schemas import (
    AgentCreate,
    AgentKeyIn,
    AgentKeyList,
    AgentKeyOut,
    AgentOut,
    AgentPage,
    AgentUpdate,
    OptionalReasonIn,
    ReasonIn,
    TransitionList,
    TransitionOut,
)
from agentiam.adapters.http.security import container_of, require
from agentiam.core.access.admin_keys import Permission
from agentiam.core.audit.events import ResourceRef
from agentiam.core.identities.lifecycle import AgentStatus, LifecycleAction
from agentiam.core.identities.validation import validate_label_filters
from agentiam.core.normalize import normalize_identifier
from agentiam.ports import AgentQuery
from agentiam.services.agents import AgentChanges, NewAgent
from agentiam.services.context import CallContext

router = APIRouter(prefix="/v1/agents", tags=["agents"], responses=PROBLEM_RESPONSES)
Read = Annotated[CallContext, Depends(require(Permission.AGENTS_READ))]
Write = Annotated[CallContext, Depends(require(Permission.AGENTS_WRITE))]
Lifecycle = Annotated[CallContext, Depends(require(Permission.AGENTS_LIFECYCLE))]
KeysWrite = Annotated[CallContext, Depends(require(Permission.AGENT_KEYS_WRITE))]


@router.post("", status_code=201, response_model=AgentOut)
def register_agent(body: AgentCreate, request: Request, ctx: Write) -> AgentOut:
    agent = container_of(request).agents.register(
        ctx,
        NewAgent(
            name=body.name,
            owners=body.owners,
            sponsors=body.sponsors,
            purpose=body.purpose,
            environment=body.environment,
            autonomy=body.autonomy.value,
            runtime=body.runtime.model_dump() if body.runtime else None,
            labels=body.labels,
            next_access_review=body.next_access_review,
            parent_id=body.parent_id,
            ttl_seconds=body.ttl_seconds,
            activate=body.activate,
            keys=body.keys,
            scopes=body.scopes,
            audiences=body.audiences,
            dpop_required=body.dpop_required,
            expectations=body.expectations,
        ),
    )
    return AgentOut.of(agent)


@router.get("", response_model=AgentPage)
def list_agents(
    request: Request,
    ctx: Read,
    owner: Annotated[str | None, Query(max_length=64)] = None,
    sponsor: Annotated[str | None, Query(max_length=64)] = None,
    status: AgentStatus | None = None,
    environment: Annotated[str | None, Query(max_length=63)] = None,
    label: Annotated[
        list[str] | None,
        Query(max_length=8, description="key or key=value; repeat to require several"),
    ] = None,
    parent_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AgentPage:
    c = container_of(request)
    lim = c.settings.limits
    labels = validate_label_filters(label or [], lim)
    query = AgentQuery(
        limit=limit,
        after=decode_cursor("a", cursor),
        owner=owner,
        sponsor=sponsor,
        status=status,
        environment=(
            normalize_identifier(environment, field="environment", max_length=lim.max_name_length)
            if environment
            else None
        ),
        labels=labels,
        parent_id=parent_id,
    )
    page = c.agents.find(query)
    audited_read(
        request,
        ctx,
        "agents.list",
        details={
            "owner": owner,
            "sponsor": sponsor,
            "status": status.value if status else None,
            "environment": query.environment,
            "labels": labels,
            "limit": limit,
        },
    )
    return AgentPage(
        items=[AgentOut.of(a) for a in page.items], next_cursor=encode_cursor("a", page.next_after)
    )


@router.get("/{agent_id}", response_model=AgentOut)
def get_agent(agent_id: IdPath, request: Request, ctx: Read) -> AgentOut:
    agent = container_of(request).agents.get(agent_id)
    audited_read(request, ctx, "agents.get", resource=ResourceRef("agent", agent.id))
    return AgentOut.of(agent)


@router.patch("/{agent_id}", response_model=AgentOut)
def update_agent(agent_id: IdPath, body: AgentUpdate, request: Request, ctx: Write) -> AgentOut:
    agent = container_of(request).agents.update(
        ctx,
        agent_id,
        AgentChanges(
            owners=body.owners,
            sponsors=body.sponsors,
            purpose=body.purpose,
            environment=body.environment,
            autonomy=body.autonomy.value if body.autonomy else None,
            runtime=body.runtime.model_dump() if body.runtime else None,
            labels=body.labels,
            next_access_review=body.next_access_review,
            scopes=body.scopes,
            audiences=body.audiences,
            dpop_required=body.dpop_required,
            expectations=body.expectations,
        ),
    )
    return AgentOut.of(agent)


@router.post("/{agent_id}/activate", response_model=AgentOut)
def activate_agent(
    agent_id: IdPath, request: Request, ctx: Lifecycle, body: OptionalReasonIn | None = None
) -> AgentOut:
    reason = body.reason if body else None
    return AgentOut.of(
        container_of(request).agents.transition(ctx, agent_id, LifecycleAction.ACTIVATE, reason)
    )


@router.post("/{agent_id}/suspend", response_model=AgentOut)
def suspend_agent(agent_id: IdPath, body: ReasonIn, request: Request, ctx: Lifecycle) -> AgentOut:
    return AgentOut.of(
        container_of(request).agents.transition(ctx, agent_id, LifecycleAction.SUSPEND, body.reason)
    )


@router.post("/{agent_id}/resume", response_model=AgentOut)
def resume_agent(agent_id: IdPath, body: ReasonIn, request: Request, ctx: Lifecycle) -> AgentOut:
    return AgentOut.of(
        container_of(request).agents.transition(ctx, agent_id, LifecycleAction.RESUME, body.reason)
    )


@router.post("/{agent_id}/decommission", response_model=AgentOut)
def decommission_agent(
    agent_id: IdPath, body: ReasonIn, request: Request, ctx: Lifecycle
) -> AgentOut:
    return AgentOut.of(
        container_of(request).agents.transition(
            ctx, agent_id, LifecycleAction.DECOMMISSION, body.reason
        )
    )


@router.get("/{agent_id}/transitions", response_model=TransitionList)
def list_transitions(agent_id: IdPath, request: Request, ctx: Read) -> TransitionList:
    items = container_of(request).agents.transitions(agent_id)
    audited_read(request, ctx, "agents.transitions", resource=ResourceRef("agent", agent_id))
    return TransitionList(items=[TransitionOut.of(t) for t in items])


@router.get("/{agent_id}/keys", response_model=AgentKeyList)
def list_keys(agent_id: IdPath, request: Request, ctx: Read) -> AgentKeyList:
    keys = container_of(request).agents.keys(agent_id)
    audited_read(request, ctx, "agents.keys.list", resource=ResourceRef("agent", agent_id))
    return AgentKeyList(items=[AgentKeyOut.of(k) for k in keys])


@router.post("/{agent_id}/keys", status_code=201, response_model=AgentKeyOut)
def add_key(agent_id: IdPath, body: AgentKeyIn, request: Request, ctx: KeysWrite) -> AgentKeyOut:
    return AgentKeyOut.of(container_of(request).agents.add_key(ctx, agent_id, body.jwk))


@router.post("/{agent_id}/keys/{key_id}/retire", response_model=AgentKeyOut)
def retire_key(
    agent_id: IdPath, key_id: IdPath, body: ReasonIn, request: Request, ctx: KeysWrite
) -> AgentKeyOut:
    return AgentKeyOut.of(
        container_of(request).agents.retire_key(ctx, agent_id, key_id, body.reason)
    )
