"""What remote enforcement points (gateways, guards) need from the control plane and
give back: the policy bundle, long-polled and pushed on change, and the ingest of
their audit events. See ``services/enforcement_sync.py``.

``GET /v1/enforcement/bundle?etag=&wait=`` follows RFC 9110's validator model: the
etag a gateway holds is sent back, 304 Not Modified (section 15.4.5) with the ``ETag``
header answers "still current", 200 carries the new bundle and its ``ETag``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field

from agentiam.adapters.http.longpoll import wait_until
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, audited_read
from agentiam.adapters.http.schemas import _In, _Out
from agentiam.adapters.http.security import container_of, require
from agentiam.core.access.admin_keys import Permission
from agentiam.core.audit.events import ResourceRef
from agentiam.errors import BadRequest
from agentiam.services.context import CallContext

__all__ = ["MAX_WAIT_SECONDS", "router"]

router = APIRouter(tags=["enforcement"], responses=PROBLEM_RESPONSES)
Sync = Annotated[CallContext, Depends(require(Permission.ENFORCEMENT_SYNC))]
Ingest = Annotated[CallContext, Depends(require(Permission.AUDIT_INGEST))]
MAX_WAIT_SECONDS = 25.0
_ETAG_RE = re.compile(r'^(?:W/)?"?([A-Za-z0-9_-]{1,64})"?$')


class BundleOut(_Out):
    """The 200 answer (its ``ETag`` header repeats ``etag``)."""

    etag: str = Field(description="the bundle's version; send it back as ?etag=")
    policy_version: int
    bundle: dict[str, Any] = Field(
        description="format agentiam.policy-bundle/1 (agentiam.core.policy.bundle)"
    )


class IngestIn(_In):
    events: list[Any] = Field(
        description="audit events as AuditEvent.to_dict() gives them (schema version 1), "
        "at most AGENTIAM_LIMIT_MAX_INGEST_EVENTS (1000) per request"
    )


class IngestOut(_Out):
    accepted: int = Field(description="events stored by this request")
    duplicates: int = Field(description="events skipped: their event_id was already stored")


def _known_etag(value: str | None) -> str | None:
    if value is None:
        return None
    match = _ETAG_RE.fullmatch(value)
    if match is None:
        raise BadRequest(
            "etag is not a bundle etag",
            hint="Send back the etag of the last bundle received, or omit it.",
        )
    return match.group(1)


def _wait_seconds(value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise BadRequest(
            f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}",
            hint="Use wait=20 for a long poll, or omit it to answer at once.",
        )
    return seconds


def _headers(etag: str) -> dict[str, str]:
    return {"ETag": f'"{etag}"', "Cache-Control": "no-store"}


@router.get(
    "/v1/enforcement/bundle",
    response_model=None,
    responses={
        200: {"model": BundleOut, "description": "The bundle in force (it differs from etag)"},
        304: {"description": "Not modified: the bundle named by etag is still in force"},
    },
)
async def enforcement_bundle(
    request: Request,
    ctx: Sync,
    etag: Annotated[
        str | None, Query(description="the etag of the bundle the caller holds")
    ] = None,
    wait: Annotated[
        str | None,
        Query(description=f"seconds (0-{MAX_WAIT_SECONDS:g}) to hold the request for a change"),
    ] = None,
) -> Response:
    """The policy set and entity data an enforcement point decides with. Without
    ``etag``, or when the bundle in force differs from it, the bundle is answered at
    once; otherwise the request is held (``wait``) until the bundle changes, which the
    refresh that loads a change signals (200), or the wait ends (304)."""
    known = _known_etag(etag)
    seconds = _wait_seconds(wait)
    sync = container_of(request).enforcement
    # Also the staleness check: stale policy data is a 503, never a 304.
    current = await anyio.to_thread.run_sync(sync.current_etag)
    if known is not None and current == known and seconds > 0:
        await wait_until(lambda: sync.etag != known, wait=seconds, changes=sync)
        current = await anyio.to_thread.run_sync(sync.current_etag)
    if known is not None and current == known:
        await anyio.to_thread.run_sync(
            lambda: audited_read(
                request,
                ctx,
                "enforcement.bundle",
                resource=ResourceRef("policy_bundle", known),
                details={"changed": False},
            )
        )
        return Response(status_code=304, headers=_headers(known))
    published = await anyio.to_thread.run_sync(sync.published)
    await anyio.to_thread.run_sync(
        lambda: audited_read(
            request,
            ctx,
            "enforcement.bundle",
            resource=ResourceRef("policy_bundle", published.etag),
            details={
                "changed": True,
                "previous_etag": known,
                "policy_version": published.policy_version,
                "bytes": len(published.body),
            },
        )
    )
    return Response(
        content=published.body, media_type="application/json", headers=_headers(published.etag)
    )


@router.post("/v1/audit/ingest", response_model=IngestOut)
def audit_ingest(body: IngestIn, request: Request, ctx: Ingest) -> IngestOut:
    """Add an enforcement point's batch of audit events to the trail. Idempotent: an
    event whose ``event_id`` is stored already is counted in ``duplicates`` and
    skipped. Answers only once the events are durable (else 503). The request is
    recorded as one ``audit.ingested`` event."""
    key = request.state.admin_key  # set by the authentication the dependency checked
    result = container_of(request).enforcement.ingest(ctx, body.events, reporter=key)
    return IngestOut(accepted=result.accepted, duplicates=result.duplicates)
