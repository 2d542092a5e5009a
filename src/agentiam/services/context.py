"""Who is calling, from where, under which trace: passed explicitly to every use case."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from agentiam.core.audit.events import Actor, ActorType, TraceContext

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


class SystemClock:
    """The real clock. Tests pass their own object with a ``now()`` method."""

    def now(self) -> datetime:
        return datetime.now(UTC)
