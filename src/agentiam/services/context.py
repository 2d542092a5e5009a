"""Who is calling, from where, under which trace: passed explicitly to every use case."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentiam.core.audit.events import (
    Actor,
    ActorType,
    AuditEvent,
    Outcome,
    ResourceRef,
    TraceContext,
)

__all__ = ["SYSTEM", "CallContext", "SystemClock"]

SYSTEM = Actor(type=ActorType.SYSTEM, id="agentiam")


@dataclass(frozen=True, slots=True)
class CallContext:
    actor: Actor
    source: str
    trace: TraceContext

    @classmethod
    def system(cls, source: str) -> CallContext:
        return cls(actor=SYSTEM, source=source, trace=TraceContext.new())

    def event(
        self,
        type_: str,
        *,
        now: datetime,
        resource: ResourceRef | None = None,
        outcome: Outcome = Outcome.SUCCESS,
        action: str | None = None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        initiating_human: str | None = None,
        delegation_chain: tuple[str, ...] = (),
    ) -> AuditEvent:
        """An audit event done by this caller; an agent resource also sets ``agent_id``.
        A delegated action names the human it traces back to and the agents between."""
        return AuditEvent.create(
            type=type_,
            actor=self.actor,
            action=action or type_,
            source=self.source,
            trace=self.trace,
            now=now,
            outcome=outcome,
            resource=resource,
            agent_id=resource.id if resource is not None and resource.type == "agent" else None,
            reason=reason,
            details=details,
            initiating_human=initiating_human,
            delegation_chain=delegation_chain,
        )


class SystemClock:
    """The real clock. Tests pass their own object with a ``now()`` method."""

    def now(self) -> datetime:
        return datetime.now(UTC)
