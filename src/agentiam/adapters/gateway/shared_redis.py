"""The Redis a gateway's replicas share (``replay_cache`` in docs/gateway.md): one
connection pool per process, the start-up check, key naming and the fail-closed
error mapping, for the two things kept there:

- the DPoP replay records (:mod:`~agentiam.adapters.gateway.shared_replay`);
- the rate-limit buckets (:mod:`~agentiam.adapters.gateway.shared_ratelimit`).

- **Fail closed.** A command that does not answer within ``timeout`` seconds (Redis
  down, slow, out of memory, the pool of connections busy) raises
  :class:`~agentiam.errors.ServiceUnavailable`: the call is refused with 503, never
  let through unrecorded or uncounted.
- **Keys are digests.** :meth:`SharedRedis.key` is the prefix and a SHA-256 of the
  parts, so nothing a client chose ends up in a key name unhashed, and every key has
  the same length.
- **No secrets in logs.** The URL may carry a password; it is never logged, and
  errors name only their type.
- Redis should run with ``maxmemory-policy noeviction``: an evicting policy may drop
  a replay record or a bucket before it expires (a replay window re-opened, a burst
  handed out again). :meth:`SharedRedis.check` warns at start when it sees one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
import redis.asyncio as aioredis

from agentiam.errors import ServiceUnavailable

__all__ = ["SharedRedis"]

log = logging.getLogger("agentiam.gateway.shared")

T = TypeVar("T")

_MAX_CONNECTIONS = 64  # per process; a call waits up to the timeout for a free one
_EVICTING = ("allkeys-", "volatile-")


class SharedRedis:
    """One Redis, under ``prefix``, that every replica of a gateway uses."""

    def __init__(self, url: str, *, prefix: str, timeout: float) -> None:
        self._url = url
        self.prefix = prefix
        self.timeout = timeout
        self._client: aioredis.Redis | None = None

    def check(self) -> None:
        """Reach Redis once, at start (ValueError naming ``replay_cache`` if it cannot),
        and warn when its eviction policy could drop records early."""
        client = redis.Redis.from_url(
            self._url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
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
                        "pressure it may drop replay records and rate-limit buckets early; "
                        "use noeviction",
                        policy,
                    )
        except (redis.RedisError, OSError) as exc:
            raise ValueError(f"replay_cache: cannot reach Redis ({type(exc).__name__})") from None
        finally:
            client.close()

    def client(self) -> aioredis.Redis:
        """The process's client, created on the running loop and used only there."""
        if self._client is None:
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url,
                max_connections=_MAX_CONNECTIONS,
                timeout=self.timeout,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
            )
            self._client = aioredis.Redis(connection_pool=pool)
        return self._client

    def key(self, *parts: str) -> str:
        """The key of ``parts`` under the prefix: a digest of them, NUL-separated."""
        joined = "\0".join(parts).encode("utf-8", "surrogatepass")
        return self.prefix + hashlib.sha256(joined).hexdigest()

    async def run(
        self, command: Callable[[aioredis.Redis], Awaitable[T]], *, what: str, hint: str
    ) -> T:
        """Run ``command`` within the timeout, or raise ServiceUnavailable saying
        ``what`` cannot be reached (the error's type is logged, nothing else)."""
        try:
            async with asyncio.timeout(self.timeout * 2):  # connect, then the command
                return await command(self.client())
        except (redis.RedisError, OSError, TimeoutError) as exc:
            log.warning("replay_cache: Redis did not answer (%s)", type(exc).__name__)
            raise ServiceUnavailable(
                f"{what} cannot be reached; the call was refused", hint=hint
            ) from None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
