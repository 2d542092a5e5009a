"""Identity records: humans (owners and sponsors), agents, agent keys, transitions.

Records are immutable values; changes produce a new value with ``version`` + 1, which
the stores use for optimistic concurrency.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from agentiam.core.detection.model import Expectations
from agentiam.core.identities.lifecycle import AgentStatus, LifecycleAction

__all__ = [
    "Agent",
    "AgentKey",
    "AutonomyLevel",
    "ClientRecord",
    "ExternalIdentity",
    "Human",
    "KeyStatus",
    "RuntimeInfo",
    "Transition",
]


class AutonomyLevel(StrEnum):
    """How far an agent acts without a human in the loop (lowest to highest)."""

    SUGGEST = "suggest"  # proposes actions; a human carries them out
    APPROVE_EACH = "approve_each"  # acts only after a human approves each action
    APPROVE_RISKY = "approve_risky"  # acts alone; a human approves risky actions
    MONITORED = "monitored"  # acts alone; humans watch and can intervene
    UNSUPERVISED = "unsupervised"  # acts alone with no routine human oversight


class KeyStatus(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    """The human's identity at an external IdP: OIDC ``iss`` and ``sub``."""

    issuer: str
    subject: str


@dataclass(frozen=True, slots=True)
class Human:
    id: str
    display_name: str
    email: str
    external_identity: ExternalIdentity | None
    created_at: datetime
    updated_at: datetime
    version: int = 1


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    framework: str | None = None
    model: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    name: str
    owners: tuple[str, ...]
    purpose: str
    environment: str
    autonomy: AutonomyLevel
    runtime: RuntimeInfo
    labels: Mapping[str, str]
    status: AgentStatus
    next_access_review: date
    created_at: datetime
    updated_at: datetime
    parent_id: str | None = None
    expires_at: datetime | None = None
    sponsors: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    dpop_required: bool = True
    # RFC 9396 authorization_details its every token carries; set when a parent spawns
    # it for one task, so even its own client-credentials tokens stay task-scoped.
    task_scope: tuple[Mapping[str, Any], ...] = ()
    # What the owner declared it does; behavioural detection holds it to this.
    expectations: Expectations = field(default_factory=Expectations)
    version: int = 1

    @property
    def is_ephemeral(self) -> bool:
        return self.expires_at is not None

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def is_usable(self, now: datetime) -> bool:
        """Active and, if ephemeral, not past its TTL (even before the sweeper runs)."""
        return self.status is AgentStatus.ACTIVE and not self.is_expired(now)


@dataclass(frozen=True, slots=True)
class AgentKey:
    id: str
    agent_id: str
    kid: str
    alg: str
    jwk: Mapping[str, str]
    thumbprint: str
    status: KeyStatus
    created_at: datetime
    created_by: str
    retired_at: datetime | None = None
    retired_by: str | None = None
    retire_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """One lifecycle transition: who moved the agent, from where to where, and why."""

    id: str
    agent_id: str
    action: LifecycleAction
    from_status: AgentStatus
    to_status: AgentStatus
    actor: str
    reason: str
    at: datetime
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientRecord:
    """What the token endpoint needs of an agent acting as an OAuth client: its state,
    entitlements and active public keys, read in one short query set."""

    id: str
    status: AgentStatus
    expires_at: datetime | None
    dpop_required: bool
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    keys: tuple[AgentKey, ...]
    task_scope: tuple[Mapping[str, Any], ...] = ()

    def is_usable(self, now: datetime) -> bool:
        expired = self.expires_at is not None and now >= self.expires_at
        return self.status is AgentStatus.ACTIVE and not expired
