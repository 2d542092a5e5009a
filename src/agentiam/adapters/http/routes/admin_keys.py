"""/v1/admin-keys: API keys for the admin API (admin role only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from agentiam.adapters.http.routes import PROBLEM_RESPONSES, IdPath, audited_read
from agentiam.adapters.http.schemas import (
    AdminKeyCreate,
    AdminKeyList,
    AdminKeyOut,
    IssuedAdminKeyOut,
)
from agentiam.adapters.http.security import container_of, require
from agentiam.core.access.admin_keys import Permission
from agentiam.services.context import CallContext

router = APIRouter(prefix="/v1/admin-keys", tags=["admin keys"], responses=PROBLEM_RESPONSES)
Read = Annotated[CallContext, Depends(require(Permission.ADMIN_KEYS_READ))]
Manage = Annotated[CallContext, Depends(require(Permission.ADMIN_KEYS_MANAGE))]


@router.post("", status_code=201, response_model=IssuedAdminKeyOut)
def create_admin_key(body: AdminKeyCreate, request: Request, ctx: Manage) -> IssuedAdminKeyOut:
    """Issue a key (its secret is in this answer only). A verifier key names the
    enforcement points it reports for (``sources``) or asks for ``any_source``;
    without either the answer is a 422 naming ``sources``."""
    issued = container_of(request).admin_keys.create(
        ctx,
        name=body.name,
        role=body.role,
        expires_at=body.expires_at,
        sources=body.sources,
        agents=body.agents,
        any_source=body.any_source,
    )
    return IssuedAdminKeyOut.issued(issued)


@router.get("", response_model=AdminKeyList)
def list_admin_keys(request: Request, ctx: Read) -> AdminKeyList:
    keys = container_of(request).admin_keys.all()
    audited_read(request, ctx, "admin_keys.list")
    return AdminKeyList(items=[AdminKeyOut.of(k) for k in keys])


@router.post("/{key_id}/revoke", response_model=AdminKeyOut)
def revoke_admin_key(key_id: IdPath, request: Request, ctx: Manage) -> AdminKeyOut:
    return AdminKeyOut.of(container_of(request).admin_keys.revoke(ctx, key_id))
