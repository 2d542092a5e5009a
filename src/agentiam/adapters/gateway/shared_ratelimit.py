"""Rate-limit buckets shared by a gateway's replicas, kept in Redis.

Each gateway process keeps its own token buckets
(:class:`~agentiam.core.enforcement.ratelimit.RateLimiter`); three replicas behind a
load balancer, each allowing 10 calls a second, would allow 30 together. With
``replay_cache`` configured (docs/gateway.md), the replicas take their tokens from
buckets in that Redis instead, so the limits, and the control plane's throttles, hold
for the deployment as a whole:

- **Same buckets, same rules.** Which buckets a call needs, and their limits, come
  from the process's own limiter (:meth:`RateLimiter.buckets
  <agentiam.core.enforcement.ratelimit.RateLimiter.buckets>`): per agent, per
  (agent, tool), the agent's throttle, and the pooled ones, per human and per
  delegation chain, when configured. Every one must hold a token; a refused call
  takes none (RFC 2697 section 3's committed-rate bucket, as locally), and learns
  which held none (the refusal's reason names a pooled limit among them).
- **One atomic step.** A Lua script refills, checks and takes from every bucket of
  the call in one go (Redis runs a script alone), so two replicas cannot both spend
  the last token, of an agent's bucket or of a human's that two agents share.
- **One clock.** Refills are timed by the Redis server's clock (``TIME``), not the
  replicas' own, so replicas whose clocks disagree do not mint tokens; a clock that
  goes back refills nothing.
- **Bounded memory.** A bucket (a hash of ``tokens`` and ``updated``) expires one
  second after it would be full again (``burst / rate_per_second``): an expired
  bucket comes back full, exactly as if it had been kept.
- **One round trip with the replay record.** A call whose DPoP proof the shared
  replay cache must record (:mod:`.shared_replay`) has it recorded by the same script,
  first: ``SET NX PX`` on the same key :meth:`SharedReplayCache.first_use
  <agentiam.adapters.gateway.shared_replay.SharedReplayCache.first_use>` would set.
  A replayed proof takes no token (:class:`~agentiam.adapters.gateway.enforcer.ProofReplayed`);
  a fresh one stays recorded whatever the buckets answer, as the local cache records
  a proof before the local limiter refuses its call.
- **Retry-After** is the wait until every bucket holds a token, in whole seconds,
  at least 1 (RFC 9110 section 10.2.3, with the 429 of RFC 6585 section 4).
- **Fail closed**, keys as digests, no secrets in logs: :mod:`.shared_redis`. A call
  whose tokens could not be taken is refused (503), never let through uncounted.

A single Redis (or a primary with replicas) is supported; Redis Cluster is not (the
buckets of one call are keys in one script).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from agentiam.adapters.gateway.enforcer import ProofReplayed, ReplayRecord
from agentiam.adapters.gateway.shared_redis import SharedRedis
from agentiam.core.enforcement.ratelimit import BucketKey, RateLimit, RateRefusal

__all__ = ["SharedRateLimits"]

# ARGV[1]: the milliseconds to keep the proof's replay record, which is then KEYS[1],
# or "" for no record. KEYS (after it): the call's buckets; ARGV (after ARGV[1]):
# rate_per_second and burst of each, in turn. Returns "replayed" when the record
# existed (nothing is set or taken), "0" when every bucket held a token (one is taken
# from each), else the seconds until they all will, then the positions (1-based, among
# the buckets) of those that held none, space-separated (nothing is taken).
_TAKE = """
if redis.replicate_commands then redis.replicate_commands() end
local first = 1
if ARGV[1] ~= '' then
  if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
    return 'replayed'
  end
  first = 2
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local tokens, updated, wait, short = {}, {}, 0, {}
for i = first, #KEYS do
  local rate, burst = tonumber(ARGV[2 * (i - first) + 2]), tonumber(ARGV[2 * (i - first) + 3])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'updated')
  local have, since = tonumber(state[1]), tonumber(state[2])
  if have == nil or since == nil then
    have, since = burst, now
  elseif now > since then
    have, since = math.min(burst, have + (now - since) * rate), now
  end
  tokens[i], updated[i] = have, since
  if have < 1 - 1e-9 then
    wait = math.max(wait, (1 - have) / rate)
    short[#short + 1] = tostring(i - first + 1)
  end
end
if wait > 0 then
  return string.format('%.6f', wait) .. ' ' .. table.concat(short, ' ')
end
for i = first, #KEYS do
  local rate, burst = tonumber(ARGV[2 * (i - first) + 2]), tonumber(ARGV[2 * (i - first) + 3])
  redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', tokens[i] - 1),
             'updated', string.format('%.6f', updated[i]))
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
end
return '0'
"""


class SharedRateLimits:
    """``take`` from buckets every process sharing the Redis and its prefix uses."""

    def __init__(self, shared: SharedRedis) -> None:
        self._shared = shared
        self._script: AsyncScript | None = None
        self._script_client: aioredis.Redis | None = None

    def key(self, bucket: BucketKey) -> str:
        """The Redis key of a bucket (``("agent", id)``, ``("tool", id, name)``, …)."""
        return self._shared.key("ratelimit", *bucket)

    async def take(
        self,
        buckets: Sequence[tuple[BucketKey, RateLimit]],
        *,
        proof: ReplayRecord | None = None,
    ) -> RateRefusal | None:
        """Take a token from each bucket and return None, or take none and return
        the refusal: the ``Retry-After`` seconds and the limits whose bucket held no
        token. With ``proof``, record it first, in the same
        script: :class:`~agentiam.adapters.gateway.enforcer.ProofReplayed` when it
        was recorded already (nothing is taken). Raises ServiceUnavailable when Redis
        cannot answer in time."""
        if not buckets and proof is None:
            return None
        keys = [self.key(bucket) for bucket, _ in buckets]
        args = [""]
        if proof is not None:
            keys.insert(0, proof.key)
            args[0] = str(proof.ttl_ms)
        for _, limit in buckets:
            args += [repr(float(limit.rate_per_second)), str(limit.burst)]

        async def run(client: aioredis.Redis) -> object:
            return await self._take_script(client)(keys=keys, args=args)

        answer = await self._shared.run(
            run,
            what="the replicas' shared rate limits",
            hint="Check the gateway's replay_cache Redis; retry later.",
        )
        text = answer.decode("ascii") if isinstance(answer, bytes) else str(answer)
        if text == "replayed":
            raise ProofReplayed
        wait, *short = text.split()
        if float(wait) <= 0:
            return None
        return RateRefusal.of(float(wait), (buckets[int(i) - 1][0] for i in short))

    def _take_script(self, client: aioredis.Redis) -> AsyncScript:
        """The script, registered with the process's client (EVALSHA, loaded on a
        NOSCRIPT answer)."""
        if self._script is None or self._script_client is not client:
            self._script = client.register_script(_TAKE)
            self._script_client = client
        return self._script

    async def aclose(self) -> None:
        await self._shared.aclose()
