"""Behavioural detection: its state and the risk scores (docs/detection.md).

Alerts themselves are audit events (``GET /v1/audit/events?type=detection.alert``);
these reads take ``audit:read`` like the trail they come from."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from agentiam.adapters.http.routes import PROBLEM_RESPONSES, audited_read
from agentiam.adapters.http.security import require
from agentiam.core.access.admin_keys import Permission
from agentiam.errors import NotFound
from agentiam.services.context import CallContext
from agentiam.services.detection import DetectionService

__all__ = ["router"]

router = APIRouter(tags=["detection"], responses=PROBLEM_RESPONSES)
Read = Annotated[CallContext, Depends(require(Permission.AUDIT_READ))]
AgentId = Annotated[str, Path(min_length=1, max_length=64)]


def _service(request: Request) -> DetectionService:
    service: DetectionService | None = request.app.state.container.detection
    if service is None:
        raise NotFound(
            "behavioural detection is switched off on this control plane",
            hint="Unset AGENTIAM_DETECTION_ENABLED=false to switch it on.",
        )
    return service


@router.get("/v1/detection/status")
def detection_status(request: Request, ctx: Read) -> dict[str, Any]:
    """Where detection stands in the trail, what it has seen and raised, its errors."""
    service = _service(request)
    audited_read(request, ctx, "detection.status")
    return service.status().to_dict()


@router.get("/v1/risk")
def list_risk(
    request: Request,
    ctx: Read,
    min_score: Annotated[int, Query(ge=1, le=100)] = 1,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """Agents whose risk score is at least ``min_score`` now, highest first."""
    service = _service(request)
    audited_read(request, ctx, "risk.list", details={"min_score": min_score})
    return {
        "items": [
            {"agent_id": agent, "risk_score": score}
            for agent, score in service.top(minimum=min_score, limit=limit)
        ]
    }


@router.get("/v1/risk/{agent_id}")
def agent_risk(request: Request, ctx: Read, agent_id: AgentId) -> dict[str, Any]:
    """One agent's score now, the scores of the sessions its recent alerts named, and
    those alerts (newest last) with their evidence."""
    service = _service(request)
    alerts = service.recent_alerts(agent_id)
    audited_read(request, ctx, "risk.read", details={"agent_id": agent_id})
    return {
        "agent_id": agent_id,
        "risk_score": service.agent_risk(agent_id),
        "sessions": [
            {"session": s, "risk_score": service.session_risk(s)}
            for s in service.alert_sessions(alerts)
        ],
        "alerts": [
            {"event_id": e.event_id, "time": e.time.isoformat(), **dict(e.details)} for e in alerts
        ],
    }
