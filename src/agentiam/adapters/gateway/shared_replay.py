"""A DPoP replay cache shared by a gateway's replicas, kept in Redis.

RFC 9449 section 11.1: a resource server must refuse a proof whose ``jti`` it has
seen within the time it would accept the proof. Each gateway process keeps its own
cache (:class:`agentiam.core.credentials.replay.ReplayCache`); replicas behind a load
balancer do not see each other's, so a proof captured on its way to one replica could
be replayed to another. With ``replay_cache`` configured (docs/gateway.md), every
replica also records each proof here, and the first to record it wins:

- **One atomic step.** ``SET <prefix><sha256(jkt:jti)> 1 NX PX <ms>``: the key is set
  only if absent, so of two replicas seeing the same proof at once exactly one
  succeeds. The key is a digest, so nothing the client chose ends up in a key name
  unhashed, and every key has the same length.
- **Kept as long as the proof is accepted.** The key expires when the proof would be
  too old anyway (its ``iat`` plus the verifier's window and clock skew), at least
  a second from now; memory is bounded by the request rate times that window.
- **Fail closed**, keys as digests, no secrets in logs: :mod:`.shared_redis`. A proof
  that could not be recorded is never accepted (503).
"""

from __future__ import annotations

from agentiam.adapters.gateway.enforcer import ReplayRecord
from agentiam.adapters.gateway.shared_redis import SharedRedis
from agentiam.core.credentials.verifier import ProofUse

__all__ = ["SharedReplayCache"]


class SharedReplayCache:
    """``first_use`` across every process that shares the Redis and its prefix."""

    def __init__(self, shared: SharedRedis) -> None:
        self._shared = shared

    def key(self, use: ProofUse) -> str:
        """The Redis key that records ``use``."""
        return self._shared.key(use.key)

    def record(self, use: ProofUse, *, now: int) -> ReplayRecord:
        """The key that records ``use`` and how long to keep it: until the proof would
        be refused as too old anyway, at least a second. :meth:`first_use` sets it;
        the shared rate limits' script sets it in the same round trip as a call's
        tokens (:mod:`.shared_ratelimit`)."""
        return ReplayRecord(self.key(use), max(1, use.expires - now) * 1000)

    async def first_use(self, use: ProofUse, *, now: int) -> bool:
        """Record the proof; True the first time any replica records it, False on a
        replay. Raises ServiceUnavailable when Redis cannot answer in time."""
        key, ttl_ms = self.record(use, now=now)
        stored = await self._shared.run(
            lambda client: client.set(key, b"1", nx=True, px=ttl_ms),
            what="the shared DPoP replay cache",
            hint="Check the gateway's replay_cache Redis; retry later.",
        )
        return bool(stored)

    async def aclose(self) -> None:
        await self._shared.aclose()
