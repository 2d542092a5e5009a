"""What behavioural detection reads and what it raises.

Detection is a pure consumer of the audit trail: each trail entry that concerns an
agent becomes an :class:`Observation`; detectors turn observations into
:class:`Alert` objects, each carrying the :class:`Evidence` that raised it (the
numbers compared, the threshold, and the event ids), so every alert can be explained
and traced back into the trail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any

__all__ = [
    "MAX_EVIDENCE_EVENTS",
    "Alert",
    "Category",
    "Evidence",
    "Expectations",
    "Observation",
    "Severity",
]

MAX_EVIDENCE_EVENTS = 20


class Severity(IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class Category(StrEnum):
    """The five families of behaviour the detectors watch (docs/detection.md)."""

    ESCALATION = "privilege_escalation"
    UNEXPECTED_USE = "unexpected_use"
    SEQUENCE = "impossible_sequence"
    BOUNDARY = "boundary_crossing"
    VELOCITY = "velocity"


@dataclass(frozen=True, slots=True)
class Observation:
    """One audit trail entry as detection sees it.

    ``kind`` is the audit event type (``authz.decision``, ``tool.call``,
    ``api.request.rejected``, ``token.issued``, ``token.exchanged``, ``token.denied``,
    ``agent.created`` ...). ``allowed`` is the outcome of a decision or call (None for
    facts without one). ``session`` groups one run of an agent: the root token id of its
    delegation tree when known, else the token id, else the trace id. ``resource`` is
    ``Type::id``. ``attributes`` holds the few details detectors read, already
    normalised: ``host``, ``environment`` (the target's), ``data_domain``, ``tenant``,
    ``jkt`` (the DPoP key thumbprint), ``requested_scope``, ``granted_scope``,
    ``parent_id`` (for a spawned agent), ``reason``.
    """

    index: int
    event_id: str
    time: datetime
    kind: str
    agent_id: str
    action: str
    resource: str | None = None
    allowed: bool | None = None
    session: str | None = None
    initiating_human: str | None = None
    chain: tuple[str, ...] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Expectations:
    """What an agent's owner declared it does (its ``expectations``, set at
    registration or update). Declared expectations take precedence over the learned
    baseline: a declared action is never "unexpected", an undeclared one is, from the
    first call, with no warm-up. Every field is optional; empty means "not declared".

    - ``actions``: ``action`` or ``action@Type::id`` patterns; ``*`` matches within one
      part (``tool:crm_*@Tool::*``).
    - ``hosts``: upstream host names it calls (``*.example.com`` allowed).
    - ``environments``, ``data_domains``, ``tenants``: the only ones it may touch.
    - ``max_calls_per_minute``: a hard ceiling, instead of the learned rate.
    - ``max_spawns_per_hour``: sub-agents it may create per hour.
    - ``workflow``: allowed transitions ``{action: [next actions]}``; ``"*start"``
      lists the actions a session may begin with. An action not in the mapping may be
      followed by anything.
    """

    actions: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    data_domains: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    max_calls_per_minute: int | None = None
    max_spawns_per_hour: int | None = None
    workflow: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (
            self.actions
            or self.hosts
            or self.environments
            or self.data_domains
            or self.tenants
            or self.max_calls_per_minute is not None
            or self.max_spawns_per_hour is not None
            or self.workflow
        )


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why an alert was raised, in numbers: ``summary`` is one plain sentence;
    ``facts`` holds what was observed against what was expected (counts, rates,
    probabilities, the baseline, the threshold); ``events`` are the ids of the trail
    events that raised it (at most :data:`MAX_EVIDENCE_EVENTS`, the latest last)."""

    summary: str
    facts: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "facts": dict(self.facts), "events": list(self.events)}


@dataclass(frozen=True, slots=True)
class Alert:
    """One detection: ``detector`` names the rule (``velocity.runaway_loop``),
    ``score`` the risk points it adds to the agent and the session (0-100)."""

    alert_id: str
    detector: str
    category: Category
    severity: Severity
    agent_id: str
    time: datetime
    score: int
    evidence: Evidence
    session: str | None = None
    initiating_human: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "detector": self.detector,
            "category": self.category.value,
            "severity": self.severity.label,
            "agent_id": self.agent_id,
            "session": self.session,
            "initiating_human": self.initiating_human,
            "time": self.time.isoformat(),
            "score": self.score,
            "evidence": self.evidence.to_dict(),
        }
