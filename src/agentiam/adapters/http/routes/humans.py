"""/v1/humans: the people who own and sponsor agents."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from agentiam.adapters.http.pagination import decode_cursor, encode_cursor
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, IdPath, audited_read
from agentiam.adapters.http.schemas import HumanCreate, HumanOut, HumanPage, HumanUpdate
from agentiam.adapters.http.security import container_of, require
from agentiam.core.access.admin_keys import Permission
from agentiam.core.audit.events import ResourceRef
from agentiam.core.identities.validation import validate_email
from agentiam.ports import HumanQuery
from agentiam.services.context import CallContext
from agentiam.services.humans import HumanChanges, NewHuman

router = APIRouter(prefix="/v1/humans", tags=["humans"], responses=PROBLEM_RESPONSES)
Read = Annotated[CallContext, Depends(require(Permission.HUMANS_READ))]
Write = Annotated[CallContext, Depends(require(Permission.HUMANS_WRITE))]


@router.post("", status_code=201, response_model=HumanOut)
def create_human(body: HumanCreate, request: Request, ctx: Write) -> HumanOut:
    ext = body.external_identity
    human = container_of(request).humans.create(
        ctx,
        NewHuman(
            display_name=body.display_name,
            email=body.email,
            external_issuer=ext.issuer if ext else None,
            external_subject=ext.subject if ext else None,
        ),
    )
    return HumanOut.of(human)


@router.get("", response_model=HumanPage)
def list_humans(
    request: Request,
    ctx: Read,
    email: Annotated[str | None, Query(max_length=254)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> HumanPage:
    c = container_of(request)
    query = HumanQuery(
        limit=limit,
        after=decode_cursor("h", cursor),
        email=validate_email(email, c.settings.limits) if email else None,
    )
    page = c.humans.find(query)
    audited_read(request, ctx, "humans.list", details={"email": query.email, "limit": limit})
    return HumanPage(
        items=[HumanOut.of(h) for h in page.items], next_cursor=encode_cursor("h", page.next_after)
    )


@router.get("/{human_id}", response_model=HumanOut)
def get_human(human_id: IdPath, request: Request, ctx: Read) -> HumanOut:
    human = container_of(request).humans.get(human_id)
    audited_read(request, ctx, "humans.get", resource=ResourceRef("human", human.id))
    return HumanOut.of(human)


@router.patch("/{human_id}", response_model=HumanOut)
def update_human(human_id: IdPath, body: HumanUpdate, request: Request, ctx: Write) -> HumanOut:
    changes: dict[str, Any] = {"display_name": body.display_name, "email": body.email}
    if "external_identity" in body.model_fields_set:
        ext = body.external_identity
        changes["external_issuer"] = ext.issuer if ext else None
        changes["external_subject"] = ext.subject if ext else None
    human = container_of(request).humans.update(ctx, human_id, HumanChanges(**changes))
    return HumanOut.of(human)
