"""Audit event schema, version 1.

One event shape for every security-relevant fact: admin changes and lifecycle
transitions now; token issuance, authorization decisions, tool-call outcomes,
detection alerts and responses later. The fields that later issues fill
(``decision_id``, ``policy_version``, ``risk_score``, ``delegation_chain``) are part of
the schema from version 1 so the tamper-evident trail can take events over unchanged.

``to_dict`` returns plain JSON types with a fixed key set, ready for canonical JSON
(RFC 8785) hashing. ``details`` passes through :func:`redact` before an event exists,
so secrets never reach the trail.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from agentiam.core.ids import new_id

__all__ = [
    "EVENT_MEMBERS",
    "SCHEMA_VERSION",
    "Actor",
    "ActorType",
    "AuditEvent",
    "Outcome",
    "ResourceRef",
    "TraceContext",
    "event_time_text",
    "redact",
]

SCHEMA_VERSION = "1"

_TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_SECRET_KEY_RE = re.compile(
    r"(secret|password|passwd|token|api[_-]?key|authorization|cookie|private|credential|^d$)",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def event_time_text(moment: datetime) -> str:
    """A time as events write it (``time`` and any other time they record): RFC 3339
    in UTC with a ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class ActorType(StrEnum):
    ADMIN_KEY = "admin_key"
    CLI = "cli"
    SYSTEM = "system"
    AGENT = "agent"
    HUMAN = "human"
    ANONYMOUS = "anonymous"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performed an action. ``id`` never holds a secret (key prefixes only)."""

    type: ActorType
    id: str
    role: str | None = None

    @property
    def label(self) -> str:
        return f"{self.type.value}:{self.id}"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """W3C Trace Context (``traceparent``, version 00)."""

    trace_id: str
    span_id: str

    @classmethod
    def new(cls) -> TraceContext:
        return cls(trace_id=secrets.token_hex(16), span_id=secrets.token_hex(8))

    @classmethod
    def from_traceparent(cls, header: str | None) -> TraceContext:
        """Continue the caller's trace with a new span, or start a new trace.

        An invalid header (wrong shape, all-zero ids) is ignored, per the W3C spec.
        """
        if header:
            match = _TRACEPARENT_RE.match(header.strip().lower())
            if match and set(match.group(1)) != {"0"} and set(match.group(2)) != {"0"}:
                return cls(trace_id=match.group(1), span_id=secrets.token_hex(8))
        return cls.new()


@dataclass(frozen=True, slots=True)
class ResourceRef:
    type: str
    id: str


# Exact types returned as they are (subclasses take the general path below).
_SCALARS = frozenset({str, int, float, bool, type(None)})
# The verdict of _SECRET_KEY_RE per member name: the same few names recur in every
# event, and the search costs about a microsecond each. Bounded in count and name
# length; past the bound names are just searched.
_KEY_VERDICTS: dict[str, bool] = {}
_MAX_VERDICTS = 4096
_MAX_REMEMBERED_NAME = 64


def _secret_name(name: str) -> bool:
    verdict = _KEY_VERDICTS.get(name)
    if verdict is None:
        verdict = _SECRET_KEY_RE.search(name) is not None
        if len(name) <= _MAX_REMEMBERED_NAME and len(_KEY_VERDICTS) < _MAX_VERDICTS:
            _KEY_VERDICTS[name] = verdict
    return verdict


def redact(value: Any, *, depth: int = 0) -> Any:
    """Return ``value`` with every member whose name looks secret replaced.

    Applied to event details before an event is built; deep structures are cut at
    depth 8 so a hostile payload cannot make an event unbounded.
    """
    if depth > 8:
        return REDACTED
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list or kind is tuple:  # never a Mapping: the same as the order below
        if depth < 8:
            return [v if type(v) in _SCALARS else redact(v, depth=depth + 1) for v in value]
        return [redact(v, depth=depth + 1) for v in value]
    if kind is dict or isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            name = str(k)
            if _secret_name(name):
                out[name] = REDACTED
            elif depth < 8 and type(v) in _SCALARS:  # what the call below would return
                out[name] = v
            else:
                out[name] = redact(v, depth=depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [redact(v, depth=depth + 1) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One security-relevant fact. Build with :meth:`create`."""

    event_id: str
    time: datetime
    type: str
    outcome: Outcome
    actor: Actor
    action: str
    resource: ResourceRef | None
    source: str
    trace: TraceContext
    agent_id: str | None = None
    initiating_human: str | None = None
    delegation_chain: tuple[str, ...] = ()
    decision_id: str | None = None
    policy_version: str | None = None
    risk_score: float | None = None
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION

    @classmethod
    def create(
        cls,
        *,
        type: str,
        actor: Actor,
        action: str,
        source: str,
        trace: TraceContext,
        now: datetime,
        outcome: Outcome = Outcome.SUCCESS,
        resource: ResourceRef | None = None,
        agent_id: str | None = None,
        initiating_human: str | None = None,
        delegation_chain: tuple[str, ...] = (),
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        decision_id: str | None = None,
        policy_version: str | None = None,
        risk_score: float | None = None,
    ) -> AuditEvent:
        return cls(
            event_id=new_id("event"),
            time=now.astimezone(UTC),
            type=type,
            outcome=outcome,
            actor=actor,
            action=action,
            resource=resource,
            source=source,
            trace=trace,
            agent_id=agent_id,
            initiating_human=initiating_human,
            delegation_chain=delegation_chain,
            decision_id=decision_id,
            policy_version=policy_version,
            risk_score=risk_score,
            reason=reason,
            details=redact(dict(details or {})),
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire and storage form: JSON types only, every key always present."""
        return {
            "schema_version": self.schema_version,
            "event_id": self.event_id,
            "time": event_time_text(self.time),
            "type": self.type,
            "outcome": self.outcome.value,
            "actor": {"type": self.actor.type.value, "id": self.actor.id, "role": self.actor.role},
            "action": self.action,
            "resource": (
                {"type": self.resource.type, "id": self.resource.id} if self.resource else None
            ),
            "source": self.source,
            "agent_id": self.agent_id,
            "initiating_human": self.initiating_human,
            "delegation_chain": list(self.delegation_chain),
            "decision_id": self.decision_id,
            "policy_version": self.policy_version,
            "risk_score": self.risk_score,
            "trace": {"trace_id": self.trace.trace_id, "span_id": self.trace.span_id},
            "reason": self.reason,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        resource = data.get("resource")
        return cls(
            schema_version=str(data["schema_version"]),
            event_id=data["event_id"],
            time=datetime.fromisoformat(str(data["time"]).replace("Z", "+00:00")),
            type=data["type"],
            outcome=Outcome(data["outcome"]),
            actor=Actor(
                type=ActorType(data["actor"]["type"]),
                id=data["actor"]["id"],
                role=data["actor"].get("role"),
            ),
            action=data["action"],
            resource=ResourceRef(resource["type"], resource["id"]) if resource else None,
            source=data["source"],
            agent_id=data.get("agent_id"),
            initiating_human=data.get("initiating_human"),
            delegation_chain=tuple(data.get("delegation_chain") or ()),
            decision_id=data.get("decision_id"),
            policy_version=data.get("policy_version"),
            risk_score=data.get("risk_score"),
            trace=TraceContext(data["trace"]["trace_id"], data["trace"]["span_id"]),
            reason=data.get("reason"),
            details=data.get("details") or {},
        )


EVENT_MEMBERS = frozenset(f.name for f in fields(AuditEvent))
"""The members of an event's wire form (:meth:`AuditEvent.to_dict`), every one always
present."""
