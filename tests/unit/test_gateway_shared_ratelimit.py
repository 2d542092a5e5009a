"""The replicas' shared rate-limit buckets (adapters/gateway/shared_ratelimit.py) on the
real Redis server: a limit holds for all replicas together, atomically; a refused call
takes nothing; buckets refill and expire; and a store that cannot answer refuses the
call (fail closed)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import pytest
import redis
from tests.conftest import REDIS_URL
from tests.support.live import free_port
from tests.unit.gateway_support import AGENT, NoApprovals, Parties
from tests.unit.test_gateway_enforcer import _access, _call

from agentiam.adapters.gateway.approval_flow import ApprovalFlow
from agentiam.adapters.gateway.enforcer import ProofReplayed, SharedAdmission, SharedLimit
from agentiam.adapters.gateway.shared_ratelimit import SharedRateLimits
from agentiam.adapters.gateway.shared_redis import SharedRedis
from agentiam.adapters.gateway.shared_replay import SharedReplayCache
from agentiam.core.audit.events import TraceContext
from agentiam.core.credentials.verifier import ProofUse
from agentiam.core.enforcement.ratelimit import (
    BucketKey,
    RateLimit,
    RateLimiter,
    RateRefusal,
    Throttle,
)
from agentiam.errors import ServiceUnavailable

TRACE = TraceContext.new()
ALLOW = "permit (principal, action, resource);"


def _limits(prefix: str, url: str = REDIS_URL, timeout: float = 1.0) -> SharedRateLimits:
    return SharedRateLimits(SharedRedis(url, prefix=prefix, timeout=timeout))


def _seconds(refused: RateRefusal | None) -> int | None:
    """The ``Retry-After`` of a refusal, None when the tokens were taken."""
    return None if refused is None else refused.retry_after


async def _take(
    limits: SharedRateLimits, buckets: Sequence[tuple[BucketKey, RateLimit]], times: int = 1
) -> list[int | None]:
    try:
        return [_seconds(await limits.take(buckets)) for _ in range(times)]
    finally:
        await limits.aclose()


def test_replicas_racing_for_a_burst_share_it(redis_prefix: str) -> None:
    """40 calls at once through two replicas' stores: the burst of 5 is handed out
    exactly once in all, and the rest are told when a token will be back."""
    buckets = [(("agent", AGENT), RateLimit(rate_per_second=0.5, burst=5))]

    async def race() -> list[int | None]:
        stores = [_limits(redis_prefix), _limits(redis_prefix)]
        try:
            answers = await asyncio.gather(*(stores[i % 2].take(buckets) for i in range(40)))
            return [_seconds(answer) for answer in answers]
        finally:
            for store in stores:
                await store.aclose()

    answers = asyncio.run(race())
    assert answers.count(None) == 5
    assert sorted({a for a in answers if a is not None}) == [2]  # (1 - 0) / 0.5 s


def test_a_refused_call_takes_nothing_from_the_other_buckets(redis_prefix: str) -> None:
    agent = (("agent", AGENT), RateLimit(rate_per_second=0.01, burst=3))
    payments = (("tool", AGENT, "payments.send"), RateLimit(rate_per_second=0.01, burst=1))
    reports = (("tool", AGENT, "reports.read"), RateLimit(rate_per_second=0.01, burst=5))
    assert asyncio.run(_take(_limits(redis_prefix), [agent, payments])) == [None]
    # the tool's bucket is empty: refused, and the agent's bucket keeps its 2 tokens
    assert asyncio.run(_take(_limits(redis_prefix), [agent, payments], times=3)) == [100] * 3
    assert asyncio.run(_take(_limits(redis_prefix), [agent, reports], times=3)) == [
        None,
        None,
        100,  # now the agent's bucket is the one that is empty
    ]


def test_a_bucket_refills_at_its_rate(redis_prefix: str) -> None:
    buckets = [(("agent", AGENT), RateLimit(rate_per_second=10, burst=1))]
    assert asyncio.run(_take(_limits(redis_prefix), buckets, times=2)) == [None, 1]
    time.sleep(0.15)
    assert asyncio.run(_take(_limits(redis_prefix), buckets, times=2)) == [None, 1]


def test_buckets_are_digests_that_expire_once_full_again(redis_prefix: str) -> None:
    tool = "a tool name the agent chose"
    buckets = [(("tool", AGENT, tool), RateLimit(rate_per_second=0.1, burst=3))]
    limits = _limits(redis_prefix)
    assert asyncio.run(_take(limits, buckets)) == [None]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [k.decode() for k in client.scan_iter(match=redis_prefix + "*")]
        assert keys == [limits.key(("tool", AGENT, tool))]
        assert AGENT not in keys[0]
        assert "tool" not in keys[0].removeprefix(redis_prefix)
        assert len(keys[0]) == len(redis_prefix) + 64
        # full again after burst / rate = 30 s; kept one second more
        assert 30_000 < client.pttl(keys[0]) <= 31_000
        assert float(client.hget(keys[0], "tokens") or b"nan") == pytest.approx(2.0)
    finally:
        client.close()


def test_a_store_that_cannot_answer_refuses_the_call(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    buckets = [(("agent", AGENT), RateLimit(rate_per_second=1, burst=1))]
    with caplog.at_level(logging.WARNING), pytest.raises(ServiceUnavailable) as refused:
        asyncio.run(_take(_limits("t:", dead, timeout=0.3), buckets))
    assert refused.value.status == 503
    assert "shared rate limits" in refused.value.detail
    assert "hunter2" not in caplog.text + str(refused.value)


def test_a_proof_recorded_with_the_tokens_takes_none_when_replayed(redis_prefix: str) -> None:
    """One script records the proof and takes the tokens. The same proof again is a
    replay that takes nothing, and the record is the replay cache's own: each sees
    what the other recorded, kept as long as the proof would be accepted."""
    shared = SharedRedis(REDIS_URL, prefix=redis_prefix, timeout=1.0)
    limits, cache = SharedRateLimits(shared), SharedReplayCache(shared)
    buckets = [(("agent", AGENT), RateLimit(rate_per_second=1 / 60, burst=2))]
    now = int(time.time())
    use, other = ProofUse("jkt:proof-1", now + 60), ProofUse("jkt:proof-2", now + 60)

    async def scenario() -> list[object]:
        try:
            answers: list[object] = [await limits.take(buckets, proof=cache.record(use, now=now))]
            with pytest.raises(ProofReplayed):
                await limits.take(buckets, proof=cache.record(use, now=now))
            answers.append(await cache.first_use(use, now=now))  # seen by the replay cache
            answers.append(await cache.first_use(other, now=now))
            with pytest.raises(ProofReplayed):  # ... and the script sees the cache's record
                await limits.take(buckets, proof=cache.record(other, now=now))
            answers += [_seconds(await limits.take(buckets)) for _ in range(2)]
            return answers
        finally:
            await shared.aclose()

    # the replays took no token: the burst's second one is there, then none
    assert asyncio.run(scenario()) == [None, False, True, None, 60]
    ttl = redis.Redis.from_url(REDIS_URL).pttl(cache.key(use))
    assert 58_000 < ttl <= 60_000


def test_no_bucket_no_redis_call() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    assert asyncio.run(_take(_limits("t:", dead, timeout=0.3), [])) == [None]


# -- the enforcer ------------------------------------------------------------------------


def _replicas(prefix: str | None) -> list[Parties]:
    """Two gateway processes with the same configured limit (2 calls, then 1 a
    minute), sharing one Redis when ``prefix`` is given."""
    replicas = []
    for _ in range(2):
        limiter = RateLimiter(per_agent=RateLimit(rate_per_second=1 / 60, burst=2))
        parties = Parties(ALLOW, limiter=limiter)
        if prefix is not None:
            parties.enforcer.shared_limits = _limits(prefix)
        replicas.append(parties)
    return replicas


async def _decide(parties: Parties, tool: str = "invoices.read") -> tuple[int, str | None]:
    enforcer = parties.enforcer
    access = _access(parties)
    admission = await enforcer.shared_admit(access, charge=True, tool=tool)
    assert admission.refusal is None
    limit = admission.limit
    verdict = enforcer.decide(access, _call(tool=tool), trace=TRACE, limit=limit)
    return verdict.status, verdict.headers.get("Retry-After")


async def _round(replicas: list[Parties], calls: int) -> list[tuple[int, str | None]]:
    try:
        return [await _decide(replicas[i % 2]) for i in range(calls)]
    finally:
        for parties in replicas:
            if parties.enforcer.shared_limits is not None:
                await parties.enforcer.shared_limits.aclose()


def test_the_limit_holds_across_replicas(redis_prefix: str) -> None:
    # without the shared store each replica hands out its own burst: 4 calls, not 2
    alone = asyncio.run(_round(_replicas(None), 6))
    assert [status for status, _ in alone] == [200, 200, 200, 200, 429, 429]
    replicas = _replicas(redis_prefix)
    shared = asyncio.run(_round(replicas, 6))
    assert shared[:2] == [(200, None), (200, None)]
    assert shared[2:] == [(429, "60")] * 4
    for parties in replicas:
        assert len(parties.enforcer._limiter or ()) == 0  # nothing charged locally
        rejected = [e for e in parties.sink.events if e["type"] == "api.request.rejected"]
        assert [e["details"]["status"] for e in rejected] == [429, 429]


def test_a_throttle_holds_across_replicas(redis_prefix: str) -> None:
    """The control plane's throttle (automatic response) is in every replica's bundle;
    with the shared store it caps the agent once, not once per replica."""
    throttle = Throttle(AGENT, per_minute=1, until=time.time() + 600)  # as the bundle has it
    replicas = []
    for _ in range(2):
        limiter = RateLimiter()
        limiter.set_throttles([throttle])
        parties = Parties(ALLOW, limiter=limiter)
        parties.enforcer.shared_limits = _limits(redis_prefix)
        replicas.append(parties)
    answers = asyncio.run(_round(replicas, 3))
    assert [status for status, _ in answers] == [200, 429, 429]


def test_a_store_that_cannot_answer_is_refused_and_audited_by_the_caller() -> None:
    parties = Parties(ALLOW, limiter=RateLimiter(per_agent=RateLimit(1, 1)))
    parties.enforcer.shared_limits = _limits("t:", f"redis://127.0.0.1:{free_port()}/0", 0.3)
    access = _access(parties)
    refused = asyncio.run(parties.enforcer.shared_admit(access, charge=True)).refusal
    assert isinstance(refused, ServiceUnavailable)
    parties.enforcer.refuse_shared(access, refused, trace=TRACE)
    event = parties.sink.events[-1]
    assert (event["type"], event["details"]["status"]) == ("api.request.rejected", 503)
    assert "shared rate limits cannot be reached" in event["reason"]


def test_without_a_shared_store_the_limit_is_this_process_own() -> None:
    limiter = RateLimiter(per_agent=RateLimit(rate_per_second=1 / 60, burst=1))
    parties = Parties(ALLOW, limiter=limiter)
    nothing = asyncio.run(parties.enforcer.shared_admit(_access(parties), charge=True))
    assert nothing == SharedAdmission()
    assert asyncio.run(_round([parties, parties], 2)) == [(200, None), (429, "60")]
    assert len(limiter) == 1  # the agent's bucket, kept in this process


def test_a_retry_with_an_approval_is_charged_by_the_shared_limit() -> None:
    """A retry naming an approval passes the rate limit first; with replicas that is
    the shared buckets' answer, and a refusal leaves the approval unused."""
    limiter = RateLimiter(per_agent=RateLimit(rate_per_second=1, burst=5))
    parties = Parties(ALLOW, limiter=limiter)
    flow = ApprovalFlow(parties.enforcer, NoApprovals())  # type: ignore[arg-type]
    outcome = flow.retry(
        _access(parties), _call(), "apr_01J00000000000000000000000", trace=TRACE,
        limit=SharedLimit(retry_after=9),
    )  # fmt: skip
    assert outcome.verdict is not None
    assert (outcome.verdict.status, outcome.verdict.headers["Retry-After"]) == (429, "9")
    assert outcome.state == "not_used"
    assert len(limiter) == 0  # this process's buckets were not charged
