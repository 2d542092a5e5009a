"""Least-privilege analysis over the live policy set, the registry and the decision
history (see :mod:`agentiam.core.policy.analysis` for the method)."""

from __future__ import annotations

from datetime import datetime, timedelta

from agentiam.core.audit.events import Outcome
from agentiam.core.policy.analysis import (
    BlastRadius,
    Permission,
    UnusedReport,
    Usage,
    blast_radius,
    effective_permissions,
    unused_permissions,
)
from agentiam.core.policy.engine import PolicyEngine
from agentiam.core.policy.entities import EntitySnapshot
from agentiam.core.policy.model import EntityRef
from agentiam.errors import InvalidInput, NotFound
from agentiam.ports import AuditQuery, Clock, UnitOfWorkFactory
from agentiam.services.decisions import DECISION_EVENT, DecisionPoint

__all__ = ["AccessAnalysisService"]

MAX_HISTORY = 100_000
_PAGE = 1000


class AccessAnalysisService:
    def __init__(self, uow: UnitOfWorkFactory, clock: Clock, pdp: DecisionPoint) -> None:
        self._uow = uow
        self._clock = clock
        self._pdp = pdp

    def _state(self, agent_id: str) -> tuple[PolicyEngine, EntitySnapshot]:
        authorizer = self._pdp.authorizer
        if agent_id not in authorizer.entities.agents:
            self._pdp.refresh()  # it may have been registered since the last poll
            authorizer = self._pdp.authorizer
            if agent_id not in authorizer.entities.agents:
                raise NotFound(f"agent {agent_id} does not exist")
        return authorizer.engine, authorizer.entities

    def permissions(self, agent_id: str) -> list[Permission]:
        engine, entities = self._state(agent_id)
        return effective_permissions(engine, entities, agent_id)

    def blast_radius(self, agent_id: str) -> BlastRadius:
        engine, entities = self._state(agent_id)
        return blast_radius(engine, entities, agent_id)

    def unused(self, agent_id: str, days: int) -> UnusedReport:
        if not 1 <= days <= 366:
            raise InvalidInput("days must be between 1 and 366")
        engine, entities = self._state(agent_id)
        usage, decisions, truncated = self._usage(
            agent_id, self._clock.now() - timedelta(days=days)
        )
        return unused_permissions(
            engine,
            entities,
            agent_id,
            usage,
            days=days,
            decisions=decisions,
            truncated=truncated,
        )

    def _usage(self, agent_id: str, since: datetime) -> tuple[list[Usage], int, bool]:
        """The agent's allowed decisions since ``since``, per (action, resource)."""
        seen: dict[tuple[str, EntityRef], Usage] = {}
        count = 0
        after: str | None = None
        with self._uow(read_only=True) as uow:
            while count < MAX_HISTORY:
                page = uow.audit.find(
                    AuditQuery(
                        limit=_PAGE,
                        after=after,
                        agent_id=agent_id,
                        type=DECISION_EVENT,
                        since=since,
                    )
                )
                for event in page.items:
                    count += 1
                    if event.outcome is not Outcome.SUCCESS or event.resource is None:
                        continue
                    ref = EntityRef(event.resource.type, event.resource.id)
                    key = (event.action, ref)
                    policies = tuple(event.details.get("policies") or ())
                    previous = seen.get(key)
                    if previous is None:
                        seen[key] = Usage(event.action, ref, policies, 1, event.time)
                    else:
                        seen[key] = Usage(
                            event.action,
                            ref,
                            tuple(dict.fromkeys((*previous.policies, *policies))),
                            previous.count + 1,
                            max(previous.last_used, event.time),
                        )
                if page.next_after is None:
                    return (
                        sorted(seen.values(), key=lambda u: (u.action, str(u.resource))),
                        count,
                        False,
                    )
                after = page.next_after
        return sorted(seen.values(), key=lambda u: (u.action, str(u.resource))), count, True
