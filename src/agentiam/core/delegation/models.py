"""Delegation records: a human's grant to an agent, and one node of the delegation
graph (a token and the token it was derived from)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = ["DelegationGrant", "GrantStatus", "TokenNode", "TokenOrigin"]


class GrantStatus(StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class DelegationGrant:
    """A human's standing permission for one agent to act on their behalf.

    A token exchange on the human's behalf gets at most ``scopes``, one of
    ``audiences`` and a narrowing of ``authorization_details`` (empty: the grant does
    not task-scope the agent; requested details then only narrow what scope allows).
    ``max_depth`` bounds the chain below the human: 1 lets only the agent
    act, 2 lets it hand a narrower task to one sub-agent, and so on (never above the
    server's cap)."""

    id: str
    human_id: str
    agent_id: str
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    authorization_details: tuple[Mapping[str, Any], ...]
    max_depth: int
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None

    def status(self, now: datetime) -> GrantStatus:
        if self.revoked_at is not None:
            return GrantStatus.REVOKED
        if now >= self.expires_at:
            return GrantStatus.EXPIRED
        return GrantStatus.ACTIVE

    def is_active(self, now: datetime) -> bool:
        return self.status(now) is GrantStatus.ACTIVE


class TokenOrigin(StrEnum):
    """How a token in the delegation graph came to be."""

    HUMAN = "human"  # a human's subject token minted by AgentIAM
    EXCHANGE = "exchange"  # RFC 8693 token exchange
    JIT = "jit"  # the first token of a just-in-time sub-agent


@dataclass(frozen=True, slots=True)
class TokenNode:
    """One issued token in the delegation graph.

    ``parent_jti`` is the subject token it was exchanged from (None for a root: a
    human's token, or a chain started from an external IdP's token, whose issuer and
    ``jti`` are kept in ``external_subject``). ``actor_jti`` is the actor token that was
    presented with it. ``actors`` is the ``act`` chain, current actor first."""

    jti: str
    parent_jti: str | None
    actor_jti: str | None
    root_jti: str
    origin: TokenOrigin
    subject: str
    client_id: str
    actors: tuple[str, ...]
    grant_id: str | None
    scope: tuple[str, ...]
    audience: str
    issued_at: datetime
    expires_at: datetime
    external_subject: str | None = None

    @property
    def depth(self) -> int:
        """Hops from the human: the number of agents in the ``act`` chain."""
        return len(self.actors)
