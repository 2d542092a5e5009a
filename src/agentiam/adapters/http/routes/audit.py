"""/v1/audit/events: read the append-only event store."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from agentiam.adapters.http.pagination import decode_cursor, encode_cursor
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, audited_read
from agentiam.adapters.http.schemas import AuditPage
from agentiam.adapters.http.security import container_of, require
from agentiam.core.access.admin_keys import Permission
from agentiam.ports import AuditQuery
from agentiam.services.context import CallContext

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=PROBLEM_RESPONSES)
Read = Annotated[CallContext, Depends(require(Permission.AUDIT_READ))]


@router.get("/events", response_model=AuditPage)
def list_events(
    request: Request,
    ctx: Read,
    agent_id: Annotated[str | None, Query(max_length=64)] = None,
    type: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AuditPage:
    c = container_of(request)
    page = c.audit.find(
        AuditQuery(
            limit=limit,
            after=decode_cursor("e", cursor, numeric=True),
            agent_id=agent_id,
            type=type,
        )
    )
    audited_read(request, ctx, "audit.list", details={"agent_id": agent_id, "type": type})
    return AuditPage(
        items=[e.to_dict() for e in page.items], next_cursor=encode_cursor("e", page.next_after)
    )
