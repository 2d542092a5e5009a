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

A signing key's retirement rides the same feed (:func:`retire_signing_key`, written in
the retirement's own transaction), so it crosses replicas as a revocation does: a
replica whose sync reads one re-reads its key ring first (:meth:`RevocationService.
on_signing_key_retired`), so its JWKS no longer lists the key by the time its feed
moves and a waiting gateway's long poll returns; the gateway refuses the ``kid`` at
once and re-reads the JWKS. Before this, another replica's JWKS listed a retired key
until its next key-ring refresh (``key_refresh_seconds``, 5 s).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
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

__all__ = ["RevocationService", "retire_signing_key", "revoke_agent_tokens"]

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


def retire_signing_key(uow: UnitOfWork, kid: str, now: datetime) -> None:
    """Within ``uow``: tell every verifier that the signing key ``kid`` is retired.
    The entry lives as long as any token the key signed may (the longest lifetime
    plus the largest clock skew), after which the JWKS, which never lists the key
    again, suffices."""
    epoch = int(now.timestamp())
    uow.revocations.add(
        RevocationKind.SIGNING_KEY, kid, cutoff=epoch, expires=epoch + MAX_TOKEN_LIFETIME, now=now
    )


class RevocationService:
    def __init__(self, uow: UnitOfWorkFactory, clock: Clock, revoked: RevocationSet) -> None:
        self._uow = uow
        self._clock = clock
        self.revoked = revoked
        self._keys_retired: Callable[[], None] | None = None

    def on_signing_key_retired(self, reload_keys: Callable[[], None]) -> None:
        """Have :meth:`sync` call ``reload_keys`` (the key ring's re-read) before it
        applies entries that retire a signing key, so this replica stops publishing
        and signing with the key before its feed moves past the retirement."""
        self._keys_retired = reload_keys

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

    def feed(
        self,
        after: int,
        limit: int = _FEED_PAGE,
        kinds: Collection[RevocationKind] | None = None,
    ) -> list[Revocation]:
        """Entries after ``after``, in order (only those of ``kinds`` when given)."""
        with self._uow(read_only=True) as uow:
            return uow.revocations.after(after, min(limit, _FEED_PAGE), kinds)

    def sync(self) -> int:
        """Apply every entry after the set's cursor; mark the set fresh. Returns how
        many entries were applied. A page that retires a signing key re-reads the key
        ring first (:meth:`on_signing_key_retired`)."""
        applied = 0
        while True:
            entries = self.feed(self.revoked.cursor)
            reload_keys = self._keys_retired
            if reload_keys is not None and any(
                e.kind is RevocationKind.SIGNING_KEY for e in entries
            ):
                reload_keys()
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
