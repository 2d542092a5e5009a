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
- **Fail closed.** If Redis cannot answer within ``timeout`` seconds (down, slow, out
  of memory, a connection pool exhausted), the call is refused with 503: a proof that
  could not be recorded is never accepted. Redis should run with
  ``maxmemory-policy noeviction``: an evicting policy may drop a record before it
  expires, which re-opens the replay window for that proof. :meth:`check` warns at
  start when it can see such a policy.
- **No secrets in logs.** The Redis URL may carry a password; it is never logged, and
  errors name only their type.

Not done: the rate limits and the audit spool stay per process (docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import redis
import redis.asyncio as aioredis

from agentiam.core.credentials.verifier import ProofUse
from agentiam.errors import ServiceUnavailable

__all__ = ["SharedReplayCache"]

log = logging.getLogger("agentiam.gateway.replay")

_MAX_CONNECTIONS = 64  # per process; a call waits up to the timeout for a free one
_EVICTING = ("allkeys-", "volatile-")


class SharedReplayCache:
    """``first_use`` across every process that shares ``url`` and ``prefix``."""

    def __init__(self, url: str, *, prefix: str, timeout: float) -> None:
        self._url = url
        self._prefix = prefix
        self._timeout = timeout
        self._client: aioredis.Redis | None = None

    def check(self) -> None:
        """Reach Redis once, at start (ValueError naming ``replay_cache`` if it cannot),
        and warn when its eviction policy could drop records early."""
        client = redis.Redis.from_url(
            self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
        )
        try:
            client.ping()
            try:
                policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
            except redis.RedisError:  # CONFIG may be disabled or not granted
                log.warning(
                    "replay_cache: cannot read Redis's maxmemory-policy; make sure it is noeviction"
                )
            else:
                if policy.startswith(_EVICTING):
                    log.warning(
                        "replay_cache: Redis's maxmemory-policy is %s: under memory "
                        "pressure it may drop replay records early; use noeviction",
                        policy,
                    )
        except (redis.RedisError, OSError) as exc:
            raise ValueError(f"replay_cache: cannot reach Redis ({type(exc).__name__})") from None
        finally:
            client.close()

    def _redis(self) -> aioredis.Redis:
        if self._client is None:  # created on the running loop, used only there
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url,
                max_connections=_MAX_CONNECTIONS,
                timeout=self._timeout,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
            )
            self._client = aioredis.Redis(connection_pool=pool)
        return self._client

    def key(self, use: ProofUse) -> str:
        """The Redis key that records ``use``."""
        return self._prefix + hashlib.sha256(use.key.encode("utf-8")).hexdigest()

    async def first_use(self, use: ProofUse, *, now: int) -> bool:
        """Record the proof; True the first time any replica records it, False on a
        replay. Raises ServiceUnavailable when Redis cannot answer in time."""
        ttl_ms = max(1, use.expires - now) * 1000
        try:
            async with asyncio.timeout(self._timeout * 2):  # connect, then the command
                stored = await self._redis().set(self.key(use), b"1", nx=True, px=ttl_ms)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            log.warning("replay_cache: Redis did not answer (%s)", type(exc).__name__)
            raise ServiceUnavailable(
                "the shared DPoP replay cache cannot be reached; the call was refused",
                hint="Check the gateway's replay_cache Redis; retry later.",
            ) from None
        return bool(stored)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
