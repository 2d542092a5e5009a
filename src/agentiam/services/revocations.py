"""Revoke access tokens, by token or by agent, and keep verifiers' in-memory
revocation sets fresh.

How verifiers learn of a revocation within a second:

* a revocation is a row in the ``revocations`` table, written in the same transaction
  as its audit event (and, for a suspended agent, as the lifecycle change);
* the process that wrote it applies it to its own in-memory set at once;
* every control-plane replica runs :meth:`RevocationService.sync` every
  ``revocation_poll_seconds`` (0.25 s by default), an indexed read of rows after its
  cursor;
* a verifier in another process (a gateway) holds a long poll on
  ``GET /v1/revocations?after=<cursor>&wait=<s>``, answered as soon as the serving
  replica's set moves past the cursor (see ``adapters/verification``).

A set that has not synced for ``revocation_max_staleness_seconds`` reports itself
stale and every verification using it fails closed.
"""

from __future__ import annotations

from datetime import datetime

from agentiam.core.audit.events import ResourceRef
from agentiam.core.credentials.revocations import (
    MAX_CLOCK_SKEW,
    MAX_TOKEN_LIFETIME,
    Revocation,
    RevocationKind,
    RevocationSet,
)
from agentiam.core.ids import is_id
from agentiam.errors import InvalidInput, NotFound
from agentiam.ports import Clock, UnitOfWork, UnitOfWorkFactory
from agentiam.services.context import CallContext

__all__ = ["RevocationService", "revoke_agent_tokens"]

_FEED_PAGE = 1000


def revoke_agent_tokens(uow: UnitOfWork, agent_id: str, now: datetime) -> int:
    """Within ``uow``: revoke every token issued to ``agent_id`` up to ``now``."""
    cutoff = int(now.timestamp())
    uow.revocations.add(
        RevocationKind.AGENT,
        agent_id,
        cutoff=cutoff,
        expires=cutoff + MAX_TOKEN_LIFETIME,
        now=now,
    )
    return cutoff


class RevocationService:
    def __init__(self, uow: UnitOfWorkFactory, clock: Clock, revoked: RevocationSet) -> None:
        self._uow = uow
        self._clock = clock
        self.revoked = revoked

    def _epoch(self) -> int:
        return int(self._clock.now().timestamp())

    def revoke_token(
        self,
        ctx: CallContext,
        jti: str,
        *,
        expires: int | None,
        agent_id: str | None,
        reason: str,
    ) -> None:
        """Revoke one token by ``jti`` until ``expires`` (its ``exp``; the longest
        possible lifetime when unknown) plus the largest clock skew a verifier allows,
        since verifiers accept a token that long past its ``exp``."""
        if not is_id(jti, "token"):
            raise InvalidInput("jti is not an AgentIAM token id")
        now = self._clock.now()
        epoch = int(now.timestamp())
        longest = epoch + MAX_TOKEN_LIFETIME
        until = min(expires + MAX_CLOCK_SKEW, longest) if expires else longest
        with self._uow() as uow:
            uow.revocations.add(RevocationKind.TOKEN, jti, cutoff=epoch, expires=until, now=now)
            uow.audit.append(
                ctx.event(
                    "token.revoked",
                    now=now,
                    resource=ResourceRef("agent", agent_id) if agent_id else None,
                    reason=reason,
                    details={"jti": jti, "expires": until},
                )
            )
            uow.commit()
        self.sync()

    def revoke_agent(self, ctx: CallContext, agent_id: str, reason: str) -> int:
        """Revoke every token issued to the agent until now; returns the cut-off."""
        now = self._clock.now()
        with self._uow() as uow:
            if uow.agents.get(agent_id) is None:
                raise NotFound(f"agent {agent_id} does not exist")
            cutoff = revoke_agent_tokens(uow, agent_id, now)
            uow.audit.append(
                ctx.event(
                    "agent.tokens_revoked",
                    now=now,
                    resource=ResourceRef("agent", agent_id),
                    reason=reason,
                    details={"cutoff": cutoff},
                )
            )
            uow.commit()
        self.sync()
        return cutoff

    def feed(self, after: int, limit: int = _FEED_PAGE) -> list[Revocation]:
        with self._uow(read_only=True) as uow:
            return uow.revocations.after(after, min(limit, _FEED_PAGE))

    def sync(self) -> int:
        """Apply every entry after the set's cursor; mark the set fresh. Returns how
        many entries were applied."""
        applied = 0
        while True:
            entries = self.feed(self.revoked.cursor)
            self.revoked.apply(entries, now=self._epoch())
            applied += len(entries)
            if len(entries) < _FEED_PAGE:
                break
        self.revoked.mark_fresh()
        return applied

    def ensure_fresh(self) -> None:
        """Sync now if the in-memory set is stale (for the control plane's own
        endpoints, which may read the database; enforcement points never call this)."""
        if self.revoked.is_stale():
            self.sync()

    def purge(self, *, limit: int = 1000) -> int:
        """Forget expired entries and expired single-use values."""
        with self._uow() as uow:
            removed = uow.revocations.purge(self._epoch(), limit)
            removed += uow.replay.purge(self._clock.now(), limit)
            uow.commit()
        return removed
