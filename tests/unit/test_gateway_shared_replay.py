"""The replicas' shared DPoP replay cache (adapters/gateway/shared_replay.py) on the real
Redis server: a proof one replica accepted is refused by every other, atomically, and
a cache that cannot answer refuses the call (fail closed)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import pytest
import redis
from tests.conftest import REDIS_URL
from tests.support.live import free_port
from tests.unit.gateway_support import GATEWAY, ISSUER, METADATA, FakeLink, Keys, Parties, Sink

from agentiam.adapters.gateway.enforcer import Enforcer, SharedAdmission, SharedLimit
from agentiam.adapters.gateway.shared_ratelimit import SharedRateLimits
from agentiam.adapters.gateway.shared_redis import SharedRedis
from agentiam.adapters.gateway.shared_replay import SharedReplayCache
from agentiam.core.audit.events import TraceContext
from agentiam.core.credentials.verifier import (
    AccessTokenVerifier,
    ProofUse,
    VerifiedAccess,
    VerifierConfig,
)
from agentiam.core.enforcement.ratelimit import RateLimit, RateLimiter
from agentiam.errors import OAuthError, ServiceUnavailable

URL = GATEWAY + "/v1/invoices/7"
TRACE = TraceContext.new()


def _cache(prefix: str, url: str = REDIS_URL, timeout: float = 1.0) -> SharedReplayCache:
    return SharedReplayCache(_redis(prefix, url, timeout))


def _redis(prefix: str, url: str = REDIS_URL, timeout: float = 1.0) -> SharedRedis:
    return SharedRedis(url, prefix=prefix, timeout=timeout)


def _use(jti: str = "proof-1", seconds: int = 60) -> ProofUse:
    return ProofUse(f"thumbprint:{jti}", int(time.time()) + seconds)


async def _first_use(cache: SharedReplayCache, use: ProofUse) -> bool:
    try:
        return await cache.first_use(use, now=int(time.time()))
    finally:
        await cache.aclose()


def test_a_proof_is_accepted_once_across_replicas(redis_prefix: str) -> None:
    use = _use()
    assert asyncio.run(_first_use(_cache(redis_prefix), use)) is True
    # another process's cache (a second replica) on the same Redis refuses it
    assert asyncio.run(_first_use(_cache(redis_prefix), use)) is False
    assert asyncio.run(_first_use(_cache(redis_prefix), _use("proof-2"))) is True
    # another deployment (prefix) keeps its own records
    assert asyncio.run(_first_use(_cache(redis_prefix + "other:"), use)) is True


def test_the_record_is_a_digest_kept_as_long_as_the_proof_is_accepted(redis_prefix: str) -> None:
    use = _use("a jti the client chose", seconds=90)
    cache = _cache(redis_prefix)
    assert asyncio.run(_first_use(cache, use))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [k.decode() for k in client.scan_iter(match=redis_prefix + "*")]
        digest = hashlib.sha256(use.key.encode()).hexdigest()
        assert keys == [redis_prefix + digest] == [cache.key(use)]
        assert 85_000 < client.pttl(keys[0]) <= 90_000
    finally:
        client.close()


def test_the_record_lapses_when_the_proof_would_be_too_old_anyway(redis_prefix: str) -> None:
    use = _use(seconds=1)  # kept at least a second
    assert asyncio.run(_first_use(_cache(redis_prefix), use))
    time.sleep(1.2)
    assert asyncio.run(_first_use(_cache(redis_prefix), use))


def test_replicas_racing_on_one_proof_accept_it_exactly_once(redis_prefix: str) -> None:
    use = _use()

    async def race() -> list[bool]:
        caches = [_cache(redis_prefix), _cache(redis_prefix)]
        try:
            return await asyncio.gather(
                *(caches[i % 2].first_use(use, now=int(time.time())) for i in range(40))
            )
        finally:
            for cache in caches:
                await cache.aclose()

    assert sorted(asyncio.run(race())) == [False] * 39 + [True]


def test_a_cache_that_cannot_answer_refuses_the_call(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.WARNING), pytest.raises(ServiceUnavailable) as refused:
        asyncio.run(_first_use(_cache("t:", dead, timeout=0.3), _use()))
    assert refused.value.status == 503
    with pytest.raises(ValueError, match=r"^replay_cache: cannot reach Redis \(ConnectionError\)"):
        _redis("t:", dead, timeout=0.3).check()
    assert "hunter2" not in caplog.text + str(refused.value)


def _replica(parties: Parties, prefix: str, *, limiter: RateLimiter | None = None) -> Enforcer:
    """Another gateway process: its own verifier (and local replay cache), the same
    authorization server keys, the shared cache on the same Redis (and, with a
    ``limiter``, the shared rate-limit buckets in it too, as ``replay_cache`` sets up)."""
    verifier = AccessTokenVerifier(
        VerifierConfig(issuer=ISSUER, audience=GATEWAY), Keys(parties.as_key), parties.revoked
    )
    shared = _redis(prefix)
    return Enforcer(
        "test-gw",
        FakeLink(verifier, parties.link.authorizer()),  # type: ignore[arg-type]
        Sink(),
        resource_metadata=METADATA,
        limiter=limiter,
        shared_replay=SharedReplayCache(shared),
        shared_limits=None if limiter is None else SharedRateLimits(shared),
    )


def test_the_enforcer_refuses_a_proof_another_replica_accepted(redis_prefix: str) -> None:
    parties = Parties("permit (principal, action, resource);")
    parties.enforcer.shared_replay = _cache(redis_prefix)
    replica = _replica(parties, redis_prefix)
    headers = parties.headers("GET", URL)

    async def check(enforcer: Enforcer, access: VerifiedAccess) -> Exception | None:
        try:
            return (await enforcer.shared_admit(access, charge=False)).refusal
        finally:
            assert enforcer.shared_replay is not None
            await enforcer.shared_replay.aclose()

    first = parties.enforcer.authenticate(**headers, method="GET", url=URL, trace=TRACE)
    assert first.proof is not None
    assert asyncio.run(check(parties.enforcer, first)) is None
    # the replica's own cache has never seen the proof: its verifier passes it ...
    again = replica.authenticate(**headers, method="GET", url=URL, trace=TRACE)
    # ... and the shared cache refuses it, as the local cache would (RFC 9449 section 11.1)
    error = asyncio.run(check(replica, again))
    assert isinstance(error, OAuthError)
    assert (error.oauth_status, error.error) == (401, "invalid_dpop_proof")
    assert f'resource_metadata="{METADATA}"' in error.headers["WWW-Authenticate"]
    replica.refuse_shared(again, error, trace=TRACE)
    sink = replica._sink
    assert isinstance(sink, Sink)
    (event,) = sink.events
    assert event["type"] == "api.request.rejected"
    assert event["details"]["status"] == 401
    assert "replayed (shared cache)" in event["reason"]


def test_without_a_proof_or_a_shared_cache_there_is_nothing_to_record(redis_prefix: str) -> None:
    parties = Parties("permit (principal, action, resource);")
    access = parties.enforcer.authenticate(
        **parties.headers("GET", URL), method="GET", url=URL, trace=TRACE
    )
    nothing = SharedAdmission()
    assert asyncio.run(parties.enforcer.shared_admit(access, charge=False)) == nothing
    parties.enforcer.shared_replay = _cache(redis_prefix)
    bearer = VerifiedAccess(
        subject="s", client_id="c", scope=(), jti="j", issued_at=0, expires_at=1, jkt=None,
        claims={},
    )  # fmt: skip
    assert asyncio.run(parties.enforcer.shared_admit(bearer, charge=True)) == nothing


class _Counted(SharedRedis):
    """The replicas' Redis, counting the round trips made through it."""

    runs = 0

    async def run(self, command: Any, *, what: str, hint: str) -> Any:
        type(self).runs += 1
        return await super().run(command, what=what, hint=hint)


def test_a_call_records_its_proof_and_takes_its_tokens_in_one_round_trip(
    redis_prefix: str,
) -> None:
    """A call to decide records its proof and takes its tokens in one round trip to
    the shared store; the same proof at another replica is refused and takes no token
    (the agent's second token is still there for its next call)."""
    parties = Parties("permit (principal, action, resource);")
    replicas = [
        _replica(parties, redis_prefix, limiter=RateLimiter(per_agent=RateLimit(1 / 60, 2)))
        for _ in range(2)
    ]
    for enforcer in replicas:
        counted = _Counted(REDIS_URL, prefix=redis_prefix, timeout=1.0)
        enforcer.shared_replay = SharedReplayCache(counted)
        enforcer.shared_limits = SharedRateLimits(counted)
    headers = parties.headers("GET", URL)

    async def admit(enforcer: Enforcer, access: VerifiedAccess) -> Any:
        return await enforcer.shared_admit(access, charge=True, tool="invoices.read")

    async def scenario() -> list[Any]:
        try:
            first = replicas[0].authenticate(**headers, method="GET", url=URL, trace=TRACE)
            answers = [await admit(replicas[0], first)]
            again = replicas[1].authenticate(**headers, method="GET", url=URL, trace=TRACE)
            answers.append(await admit(replicas[1], again))
            for enforcer in (replicas[1], replicas[0]):  # fresh proofs
                fresh = parties.headers("GET", URL)
                access = enforcer.authenticate(**fresh, method="GET", url=URL, trace=TRACE)
                answers.append(await admit(enforcer, access))
            return answers
        finally:
            for enforcer in replicas:
                assert enforcer.shared_limits is not None
                await enforcer.shared_limits.aclose()

    _Counted.runs = 0
    first, replayed, second, third = asyncio.run(scenario())
    assert _Counted.runs == 4  # one round trip per call
    assert first == SharedAdmission(limit=SharedLimit(None))
    assert isinstance(replayed.refusal, OAuthError)
    assert (replayed.refusal.oauth_status, replayed.refusal.error) == (401, "invalid_dpop_proof")
    assert replayed.limit is None
    assert second == SharedAdmission(limit=SharedLimit(None))  # the replay took no token
    assert third == SharedAdmission(limit=SharedLimit(60))
    assert all(len(enforcer._limiter or ()) == 0 for enforcer in replicas)
