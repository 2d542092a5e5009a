"""Delegation grants: a human's standing permission for an agent to act for them, and
their revocation (one grant, or all of a human's), with the cut-offs that make
verifiers refuse every token issued under them within a second. Also the short-lived
subject token AgentIAM mints for a registered human where no external IdP is used."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agentiam.config import Limits
from agentiam.core.audit.events import ResourceRef
from agentiam.core.credentials.access_tokens import AccessTokenClaims
from agentiam.core.credentials.revocations import MAX_TOKEN_LIFETIME, RevocationKind
from agentiam.core.delegation.authorization_details import DetailsRejected, DetailTypeRegistry
from agentiam.core.delegation.chain import ChainClaims
from agentiam.core.delegation.models import DelegationGrant, TokenNode, TokenOrigin
from agentiam.core.identities.validation import (
    entitlements_beyond,
    validate_audiences,
    validate_scopes,
)
from agentiam.core.ids import is_id, new_id
from agentiam.errors import InvalidInput, NotFound
from agentiam.ports import Clock, GrantQuery, Page, UnitOfWork, UnitOfWorkFactory
from agentiam.services.context import CallContext
from agentiam.services.revocations import RevocationService

__all__ = ["GrantService", "NewGrant"]


@dataclass(frozen=True, slots=True)
class NewGrant:
    human_id: str
    agent_id: str
    scopes: Sequence[str]
    audiences: Sequence[str]
    ttl_seconds: int
    authorization_details: Any = None
    max_depth: int = 1


class GrantService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        *,
        issuer: str,
        limits: Limits,
        max_depth: int,
        human_token_ttl: int,
        details: DetailTypeRegistry,
        revocations: RevocationService,
        sign: Callable[[AccessTokenClaims], str],
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._issuer = issuer
        self._limits = limits
        self._max_depth = max_depth
        self._human_token_ttl = human_token_ttl
        self._details = details
        self._revocations = revocations
        self._sign = sign

    def _now(self) -> tuple[datetime, int]:
        now = self._clock.now()
        return now, int(now.timestamp())

    def create(self, ctx: CallContext, spec: NewGrant) -> DelegationGrant:
        """Record that ``spec.human_id`` lets ``spec.agent_id`` act for them, within the
        agent's own entitlements."""
        now, _ = self._now()
        limits = self._limits
        if not 1 <= spec.ttl_seconds <= limits.max_grant_days * 86400:
            raise InvalidInput(f"ttl_seconds must be between 1 and {limits.max_grant_days} days")
        if not 1 <= spec.max_depth <= self._max_depth:
            raise InvalidInput(
                f"max_depth must be between 1 and the server's cap {self._max_depth}"
            )
        scopes = validate_scopes(list(spec.scopes))
        audiences = validate_audiences(list(spec.audiences), limits)
        if not scopes or not audiences:
            raise InvalidInput("a grant names at least one scope and one audience")
        try:
            details = self._details.parse(spec.authorization_details or [])
        except DetailsRejected as exc:
            raise InvalidInput(f"authorization_details: {exc}") from None
        with self._uow() as uow:
            if uow.humans.get(spec.human_id) is None:
                raise NotFound(f"human {spec.human_id} does not exist")
            agent = uow.agents.get(spec.agent_id)
            if agent is None:
                raise NotFound(f"agent {spec.agent_id} does not exist")
            wider = entitlements_beyond(agent, scopes, audiences)
            if wider:
                raise InvalidInput(
                    f"the agent is not entitled to {', '.join(wider)}",
                    hint="A grant cannot give an agent more than its own entitlements.",
                )
            grant = DelegationGrant(
                id=new_id("grant"),
                human_id=spec.human_id,
                agent_id=spec.agent_id,
                scopes=scopes,
                audiences=audiences,
                authorization_details=details,
                max_depth=spec.max_depth,
                created_at=now,
                created_by=ctx.actor.label,
                expires_at=now + timedelta(seconds=spec.ttl_seconds),
            )
            uow.grants.add(grant)
            uow.audit.append(
                ctx.event(
                    "delegation.granted",
                    now=now,
                    resource=ResourceRef("agent", agent.id),
                    details={
                        "grant_id": grant.id,
                        "human_id": grant.human_id,
                        "scopes": list(scopes),
                        "audiences": list(audiences),
                        "authorization_details": [dict(d) for d in details],
                        "max_depth": grant.max_depth,
                        "expires_at": grant.expires_at.isoformat(),
                    },
                )
            )
            uow.commit()
        return grant

    def get(self, grant_id: str) -> DelegationGrant:
        with self._uow(read_only=True) as uow:
            grant = uow.grants.get(grant_id) if is_id(grant_id, "grant") else None
        if grant is None:
            raise NotFound(f"delegation grant {grant_id} does not exist")
        return grant

    def find(self, query: GrantQuery) -> Page[DelegationGrant]:
        with self._uow(read_only=True) as uow:
            return uow.grants.find(query)

    def revoke(self, ctx: CallContext, grant_id: str, reason: str) -> DelegationGrant:
        """Revoke a grant and, through a cut-off on its id, every token issued under it."""
        now, epoch = self._now()
        with self._uow() as uow:
            grant = uow.grants.get(grant_id) if is_id(grant_id, "grant") else None
            if grant is None:
                raise NotFound(f"delegation grant {grant_id} does not exist")
            uow.grants.revoke(grant_id, at=now, by=ctx.actor.label, reason=reason)
            self._cut_off(uow, RevocationKind.GRANT, grant_id, now)
            uow.audit.append(
                ctx.event(
                    "delegation.revoked",
                    now=now,
                    resource=ResourceRef("agent", grant.agent_id),
                    reason=reason,
                    details={"grant_id": grant_id, "human_id": grant.human_id, "cutoff": epoch},
                )
            )
            uow.commit()
            grant = uow.grants.get(grant_id) or grant
        self._revocations.sync()
        return grant

    def revoke_human(self, ctx: CallContext, human_id: str, reason: str) -> list[str]:
        """Revoke all of a human's grants and every token acting for them."""
        now, epoch = self._now()
        with self._uow() as uow:
            if uow.humans.get(human_id) is None:
                raise NotFound(f"human {human_id} does not exist")
            revoked = uow.grants.revoke_for_human(
                human_id, at=now, by=ctx.actor.label, reason=reason
            )
            self._cut_off(uow, RevocationKind.HUMAN, human_id, now)
            uow.audit.append(
                ctx.event(
                    "delegation.human_revoked",
                    now=now,
                    resource=ResourceRef("human", human_id),
                    reason=reason,
                    details={"grants": revoked, "cutoff": epoch},
                )
            )
            uow.commit()
        self._revocations.sync()
        return revoked

    @staticmethod
    def _cut_off(uow: UnitOfWork, kind: RevocationKind, subject: str, now: datetime) -> None:
        cutoff = int(now.timestamp())
        uow.revocations.add(
            kind, subject, cutoff=cutoff, expires=cutoff + MAX_TOKEN_LIFETIME, now=now
        )

    def human_token(
        self,
        ctx: CallContext,
        human_id: str,
        *,
        agent_id: str | None = None,
        purpose: str = "delegation",
    ) -> tuple[str, int]:
        """Mint a short-lived token for a registered human, for deployments without an
        external IdP (and for tests). For ``delegation`` (a subject token) its audience
        is this authorization server, so no resource server accepts it; with
        ``agent_id`` it carries ``may_act`` naming the one agent that may use it (RFC
        8693 section 4.4). For ``approval`` its audience is the approvals API
        (``<issuer>/v1/approvals``) only: the human decides approval requests with it,
        and it can start no delegation chain. The two never stand in for each other,
        so a token handed to an agent cannot approve that agent's requests."""
        if purpose not in ("delegation", "approval"):
            raise InvalidInput('purpose must be "delegation" or "approval"')
        if purpose == "approval" and agent_id is not None:
            raise InvalidInput("an approval token is the human's own: it names no agent")
        audience = self._issuer if purpose == "delegation" else self._issuer + "/v1/approvals"
        now, epoch = self._now()
        expires = epoch + self._human_token_ttl
        with self._uow() as uow:
            if uow.humans.get(human_id) is None:
                raise NotFound(f"human {human_id} does not exist")
            if agent_id is not None and uow.agents.get(agent_id) is None:
                raise NotFound(f"agent {agent_id} does not exist")
            claims = AccessTokenClaims(
                issuer=self._issuer,
                subject=human_id,
                audience=audience,
                client_id=human_id,
                issued_at=epoch,
                expires_at=expires,
                jti=new_id("token"),
                scope=(),
                chain=ChainClaims(may_act={"sub": agent_id} if agent_id else None),
            )
            uow.token_graph.add(
                TokenNode(
                    jti=claims.jti,
                    parent_jti=None,
                    actor_jti=None,
                    root_jti=claims.jti,
                    origin=TokenOrigin.HUMAN,
                    subject=human_id,
                    client_id=human_id,
                    actors=(),
                    grant_id=None,
                    scope=(),
                    audience=audience,
                    issued_at=now,
                    expires_at=datetime.fromtimestamp(expires, now.tzinfo),
                )
            )
            uow.audit.append(
                ctx.event(
                    "token.issued",
                    now=now,
                    action="token",
                    resource=ResourceRef("human", human_id),
                    details={
                        "grant_type": "human_subject_token",
                        "purpose": purpose,
                        "jti": claims.jti,
                        "exp": expires,
                        "may_act": agent_id,
                    },
                )
            )
            uow.commit()
        return self._sign(claims), expires
