"""Audit events shaped as the trail stores them (``AuditEvent.to_dict()``), for the
exporters' tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from agentiam.core.audit.events import Actor, ActorType, AuditEvent, TraceContext

WHEN = dt.datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=dt.UTC)
ADMIN = Actor(ActorType.ADMIN_KEY, "adm_1")


def stored_event(
    type: str = "agent.created",
    *,
    actor: Actor = ADMIN,
    action: str = "create",
    source: str = "api",
    trace: TraceContext | None = None,
    now: dt.datetime = WHEN,
    **fields: Any,
) -> dict[str, Any]:
    """An event of ``type`` (by default an admin creating something, at :data:`WHEN`,
    in a new trace); ``fields`` are the other arguments of ``AuditEvent.create``."""
    return AuditEvent.create(
        type=type,
        actor=actor,
        action=action,
        source=source,
        trace=trace or TraceContext.new(),
        now=now,
        **fields,
    ).to_dict()
