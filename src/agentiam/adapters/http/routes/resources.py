"""/v1/resources: the resource catalog policies name (tools, MCP servers, APIs,
endpoints, data sets and operator-defined types)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from agentiam.adapters.http.policy_schemas import ResourceOut, ResourcePage, ResourcePut
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, audited_read
from agentiam.adapters.http.security import container_of, require
from agentiam.core.access.admin_keys import Permission
from agentiam.core.audit.events import ResourceRef
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.errors import BadRequest
from agentiam.ports import ResourceQuery
from agentiam.services.context import CallContext

router = APIRouter(prefix="/v1/resources", tags=["resources"], responses=PROBLEM_RESPONSES)
Read = Annotated[CallContext, Depends(require(Permission.POLICIES_READ))]
Write = Annotated[CallContext, Depends(require(Permission.POLICIES_WRITE))]
TypePath = Annotated[str, Path(min_length=1, max_length=63, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
IdPath = Annotated[str, Path(min_length=1, max_length=512)]
_CURSOR_PREFIX = "res:"


def _encode(after: str | None) -> str | None:
    if after is None:
        return None
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + after).encode()).decode().rstrip("=")


def _decode(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("cursor is not valid", hint="Pass next_cursor back unchanged.") from None
    if not raw.startswith(_CURSOR_PREFIX):
        raise BadRequest("cursor is not valid for this list", hint="Start again without it.")
    return raw.removeprefix(_CURSOR_PREFIX)


@router.get("", response_model=ResourcePage)
def list_resources(
    request: Request,
    ctx: Read,
    type: Annotated[str | None, Query(max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=1200)] = None,
) -> ResourcePage:
    page = container_of(request).resources.find(
        ResourceQuery(limit=limit, after=_decode(cursor), type=type)
    )
    audited_read(request, ctx, "resources.list", details={"type": type, "limit": limit})
    return ResourcePage(
        items=[ResourceOut.of(r) for r in page.items], next_cursor=_encode(page.next_after)
    )


@router.get("/{type_}/{id_}", response_model=ResourceOut)
def get_resource(type_: TypePath, id_: IdPath, request: Request, ctx: Read) -> ResourceOut:
    record = container_of(request).resources.get(type_, id_)
    audited_read(request, ctx, "resources.get", resource=ResourceRef(type_, id_))
    return ResourceOut.of(record)


@router.put("/{type_}/{id_}", response_model=ResourceOut)
def put_resource(
    type_: TypePath, id_: IdPath, body: ResourcePut, request: Request, ctx: Write
) -> ResourceOut:
    stored = container_of(request).resources.put(
        ctx,
        ResourceRecord(
            type=type_,
            id=id_,
            attributes=body.attributes,
            parents=tuple(EntityRef(p.type, p.id) for p in body.parents),
            tags=body.tags,
        ),
    )
    return ResourceOut.of(stored)


@router.delete("/{type_}/{id_}", status_code=204)
def delete_resource(type_: TypePath, id_: IdPath, request: Request, ctx: Write) -> Response:
    container_of(request).resources.delete(ctx, type_, id_)
    return Response(status_code=204)
