"""Admin API routes, one module per resource. Every read is audited before it answers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Request

from agentiam.adapters.http.security import container_of
from agentiam.core.audit.events import Outcome, ResourceRef
from agentiam.services.context import CallContext

__all__ = ["PROBLEM_RESPONSES", "IdPath", "audited_read"]

IdPath = Annotated[str, Path(min_length=1, max_length=64)]

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"content": {"application/problem+json": {}}, "description": desc}
    for code, desc in {
        400: "Bad request (problem details)",
        401: "Authentication required",
        403: "Role lacks the permission",
        404: "Not found",
        409: "Conflict or lifecycle transition not allowed",
        413: "Body too large",
        422: "Invalid input",
        503: "Audit trail or database unavailable",
    }.items()
}


def audited_read(
    request: Request,
    ctx: CallContext,
    action: str,
    *,
    resource: ResourceRef | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Write the audit event for a read; raises 503 if it cannot be made durable."""
    container_of(request).audit.record(
        ctx,
        type="api.read",
        action=action,
        outcome=Outcome.SUCCESS,
        resource=resource,
        details=details,
    )
