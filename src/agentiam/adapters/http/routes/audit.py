"""/v1/audit: query and export the event store; the trail's signed heads and proofs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from agentiam.adapters.http.pagination import decode_cursor, encode_cursor
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, audited_read
from agentiam.adapters.http.schemas import AuditPage
from agentiam.adapters.http.security import container_of, require
from agentiam.core.access.admin_keys import Permission
from agentiam.core.audit.events import AuditEvent, Outcome
from agentiam.core.audit.query_export import csv_lines, jsonl_lines, paged
from agentiam.errors import BadRequest
from agentiam.ports import AuditQuery
from agentiam.services.context import CallContext

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=PROBLEM_RESPONSES)
Read = Annotated[CallContext, Depends(require(Permission.AUDIT_READ))]

EXPORT_MAX_ROWS = 100_000
Short = Annotated[str | None, Query(min_length=1, max_length=64)]


@dataclass(frozen=True, slots=True)
class EventFilters:
    """The filters shared by the list and the export, combined with AND. They select
    on indexed columns derived from each event; the events returned are the stored
    records the trail covers."""

    agent_id: str | None
    human_id: str | None
    action: str | None
    resource_type: str | None
    resource_id: str | None
    decision_id: str | None
    trace_id: str | None
    outcome: str | None
    type: str | None
    since: datetime | None
    until: datetime | None

    def query(self, limit: int, **more: Any) -> AuditQuery:
        return AuditQuery(limit=limit, **asdict(self), **more)

    def details(self) -> dict[str, Any]:
        """The filters for the read's own audit event (set ones only)."""
        return {
            k: (v.isoformat() if isinstance(v, datetime) else v)
            for k, v in asdict(self).items()
            if v is not None
        }


def event_filters(
    agent_id: Short = None,
    human_id: Annotated[
        str | None,
        Query(min_length=1, max_length=255, description="the initiating human"),
    ] = None,
    action: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    resource_type: Short = None,
    resource_id: Annotated[
        str | None,
        Query(min_length=1, max_length=512, description="best with resource_type"),
    ] = None,
    decision_id: Short = None,
    trace_id: Annotated[
        str | None,
        Query(pattern=r"^[0-9a-f]{32}$", description="W3C trace id (32 lowercase hex)"),
    ] = None,
    outcome: Outcome | None = None,
    type: Short = None,
    since: Annotated[datetime | None, Query(description="at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="strictly before (ISO 8601)")] = None,
) -> EventFilters:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise BadRequest(f"{name} needs a time zone", hint="Add Z or an offset: ...T12:00Z.")
    if since is not None and until is not None and until <= since:
        raise BadRequest("until must be after since", hint="Swap or widen the time range.")
    return EventFilters(
        agent_id=agent_id,
        human_id=human_id,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        decision_id=decision_id,
        trace_id=trace_id,
        outcome=outcome.value if outcome is not None else None,
        type=type,
        since=since,
        until=until,
    )


Filters = Annotated[EventFilters, Depends(event_filters)]


@router.get("/events", response_model=AuditPage)
def list_events(
    request: Request,
    ctx: Read,
    filters: Filters,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AuditPage:
    """Events in append order, filtered; pass ``next_cursor`` back for the next page."""
    c = container_of(request)
    page = c.audit.find(filters.query(limit, after=decode_cursor("e", cursor, numeric=True)))
    audited_read(request, ctx, "audit.list", details=filters.details())
    return AuditPage(
        items=[e.to_dict() for e in page.items], next_cursor=encode_cursor("e", page.next_after)
    )


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


_MEDIA = {ExportFormat.JSONL: "application/x-ndjson", ExportFormat.CSV: "text/csv"}


@router.get(
    "/events/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The matching events, streamed",
            "content": {"application/x-ndjson": {}, "text/csv": {}},
        }
    },
)
def export_events(
    request: Request,
    ctx: Read,
    filters: Filters,
    fmt: Annotated[ExportFormat, Query(alias="format")] = ExportFormat.JSONL,
    limit: Annotated[int, Query(ge=1, le=EXPORT_MAX_ROWS)] = EXPORT_MAX_ROWS,
    after_event: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            description="resume after this event id (the last line of a capped export)",
        ),
    ] = None,
) -> StreamingResponse:
    """Stream the matching events in append order as JSON Lines (each line the stored
    record, verifiable against the trail) or CSV (a fixed flat column set, escaped
    against formula injection). At most ``limit`` (≤ 100,000) rows per request: an
    export that returns exactly ``limit`` rows may continue with ``after_event``."""
    c = container_of(request)
    # Recorded before the first byte: an export that cannot be audited is refused (503).
    audited_read(
        request,
        ctx,
        "audit.export",
        details={**filters.details(), "format": fmt.value, "limit": limit},
    )

    def fetch(after: str | None, size: int) -> tuple[Sequence[AuditEvent], str | None]:
        page = c.audit.find(filters.query(size, after=after, after_event=after_event))
        return page.items, page.next_after

    def events() -> Iterator[dict[str, Any]]:
        for event in paged(fetch, limit):
            yield event.to_dict()

    lines = jsonl_lines(events()) if fmt is ExportFormat.JSONL else csv_lines(events())
    name = f"audit-events.{fmt.value}"
    return StreamingResponse(
        lines,
        media_type=_MEDIA[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Export-Max-Rows": str(limit),
            "Cache-Control": "no-store",
        },
    )


TreeSize = Annotated[int, Query(ge=1, le=2**62)]


@router.get("/tree-heads")
def tree_heads(
    request: Request,
    ctx: Read,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    before: TreeSize | None = None,
) -> dict[str, Any]:
    """Signed tree heads of the tamper-evident trail, largest first (RFC 9162
    section 4.10 in spirit): each is a JWS anyone can check with the published JWKS."""
    c = container_of(request)
    heads = c.audit_trail.tree_heads(limit=limit, before=before)
    audited_read(request, ctx, "audit.tree_heads")
    return {"items": [h.to_dict() for h in heads]}


@router.get("/checkpoints")
def checkpoints(
    request: Request, ctx: Read, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> dict[str, Any]:
    """Retention checkpoints, latest first: each is a signed tree head below which the
    trail was archived and pruned, with its compact range (the subtree hashes that
    fold to its root) and the archive's name and SHA-256 (docs/audit.md#retention)."""
    c = container_of(request)
    items = c.audit_trail.checkpoints(limit=limit)
    audited_read(request, ctx, "audit.checkpoints")
    return {"items": [cp.describe() for cp in items]}


@router.get("/proofs/inclusion")
def inclusion_proof(
    request: Request,
    ctx: Read,
    event_id: Annotated[str, Query(min_length=1, max_length=64)],
    tree_size: TreeSize | None = None,
) -> dict[str, Any]:
    """RFC 9162 section 2.1.3 inclusion proof of an event in a signed tree head (the
    latest by default)."""
    c = container_of(request)
    proof = c.audit_trail.inclusion(event_id, tree_size)
    audited_read(request, ctx, "audit.inclusion_proof", details={"event_id": event_id})
    return proof


@router.get("/proofs/consistency")
def consistency_proof(
    request: Request, ctx: Read, first: TreeSize, second: TreeSize
) -> dict[str, Any]:
    """RFC 9162 section 2.1.4 consistency proof between two signed tree heads."""
    c = container_of(request)
    proof = c.audit_trail.consistency(first, second)
    audited_read(
        request, ctx, "audit.consistency_proof", details={"first": first, "second": second}
    )
    return proof


@router.get("/exporters")
def exporters(request: Request, ctx: Read) -> dict[str, Any]:
    """The health of every configured audit exporter (SIEM delivery): its cursor
    (the next log index it delivers), lag behind the trail, last success, consecutive
    failures, last error (redacted), next retry and whether it is healthy."""
    c = container_of(request)
    health = c.audit_export.health()
    audited_read(request, ctx, "audit.exporters")
    return {"items": [h.to_dict() for h in health]}
