"""Per-human and per-delegation-chain rate limits at the enforcer
(adapters/gateway/enforcer.py), on this process's buckets and on the replicas' shared
buckets in the real Redis (adapters/gateway/shared_ratelimit.py): the agents of one
human share the human's budget, in every call, listing and session open; another
human's agents do not; a refusal is the same 429 with ``Retry-After``, audited with a
reason that names the limit and nothing of the human beyond the event's
``initiating_human``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from tests.conftest import REDIS_URL
from tests.unit.gateway_support import Parties
from tests.unit.policy_support import agent as agent_record
from tests.unit.policy_support import authorizer as make_authorizer
from tests.unit.policy_support import human as human_record
from tests.unit.test_gateway_enforcer import _access, _call

from agentiam.adapters.gateway.enforcer import SharedLimit
from agentiam.adapters.gateway.shared_ratelimit import SharedRateLimits
from agentiam.adapters.gateway.shared_redis import SharedRedis
from agentiam.adapters.gateway.shared_replay import SharedReplayCache
from agentiam.core.audit.events import TraceContext
from agentiam.core.credentials.verifier import ProofUse, VerifiedAccess
from agentiam.core.delegation.enforcement import chain_root, initiating_human, rate_parties
from agentiam.core.enforcement.ratelimit import RateLimit, RateLimiter
from agentiam.core.ids import new_id

TRACE = TraceContext.new()
ALLOW = "permit (principal, action, resource);"
ADA, BOB = new_id("human"), new_id("human")
PLANNER, MAILER, WORKER, STRANGER, SOLO = (new_id("agent") for _ in range(5))
AGENTS = (PLANNER, MAILER, WORKER, STRANGER, SOLO)
SLOW = 1 / 60  # one token a minute: Retry-After 60 once a bucket is empty
OWN = RateLimit(rate_per_second=SLOW, burst=5)  # each agent's own: never reached here
HUMAN = RateLimit(rate_per_second=SLOW, burst=3)


def _parties(limiter: RateLimiter) -> Parties:
    parties = Parties(ALLOW, limiter=limiter, agents=AGENTS)
    # the policy checks that a delegation's human is registered: register both
    parties.link._authorizer = make_authorizer(
        ALLOW,
        agents=[agent_record(a, owners=(ADA,)) for a in AGENTS],
        humans=[human_record(ADA), human_record(BOB)],
    )
    return parties


def _for(parties: Parties, human: str | None, *actors: str) -> VerifiedAccess:
    """A verified token of ``actors[0]`` acting for ``human`` (RFC 8693 ``act``, the
    current actor outermost), or the agent's own token when ``human`` is None."""
    if human is None:
        return _access(parties, sub=actors[0], client_id=actors[0])
    act: dict[str, Any] | None = None
    for actor in reversed(actors):
        act = {"sub": actor} if act is None else {"sub": actor, "act": act}
    return _access(parties, sub=human, client_id=actors[0], act=act)


def _status(parties: Parties, access: VerifiedAccess, limit: SharedLimit | None = None) -> int:
    return parties.enforcer.decide(access, _call(), trace=TRACE, limit=limit).status


def _rejected(parties: Parties) -> list[dict[str, Any]]:
    return [e for e in parties.sink.events if e["type"] == "api.request.rejected"]


# -- who counts -------------------------------------------------------------------------------


def test_the_human_is_the_token_subject_when_it_is_a_human() -> None:
    parties = _parties(RateLimiter())
    planner = _for(parties, ADA, PLANNER)
    worker = _for(parties, ADA, WORKER, PLANNER)  # a sub-agent of the planner, for Ada
    solo = _for(parties, None, SOLO)  # an agent acting for itself
    assert initiating_human(planner) == initiating_human(worker) == ADA
    assert initiating_human(solo) is None  # no owner claim in the token: no human
    assert chain_root(planner) == chain_root(worker) == (ADA, PLANNER)
    assert chain_root(_for(parties, ADA, MAILER)) == (ADA, MAILER)
    assert chain_root(solo) == (SOLO, SOLO)
    # an agent handing its own authority on: the tree below it is its chain
    handed = _access(parties, sub=SOLO, client_id=WORKER, act={"sub": WORKER})
    assert (initiating_human(handed), chain_root(handed)) == (None, (SOLO, SOLO))
    assert rate_parties(worker, human=False, chain=False) == (None, None)
    assert rate_parties(worker, human=True, chain=True) == (ADA, (ADA, PLANNER))


# -- this process's buckets -------------------------------------------------------------------


def test_two_agents_of_one_human_are_refused_together_by_per_human() -> None:
    """The attack: one human's agents each stay under their own limit and together go
    far past what the human may do. Refused at the human's burst; another human's
    agent is unaffected; the refusal is audited naming per_human, not the human."""
    parties = _parties(RateLimiter(per_agent=OWN, per_human=HUMAN))
    planner, mailer = _for(parties, ADA, PLANNER), _for(parties, ADA, MAILER)
    assert [_status(parties, a) for a in (planner, mailer, planner)] == [200, 200, 200]
    refused = parties.enforcer.decide(mailer, _call(), trace=TRACE)
    assert (refused.status, refused.error) == (429, "rate_limited")
    assert refused.headers == {"Retry-After": "60"}
    assert refused.reason == "rate limit for invoices.read exceeded (per_human limit)"
    assert _status(parties, planner) == 429
    assert _status(parties, _for(parties, BOB, STRANGER)) == 200  # another human
    events = _rejected(parties)
    assert [e["agent_id"] for e in events] == [MAILER, PLANNER]
    for event in events:
        assert event["reason"] == "rate limit for invoices.read exceeded (per_human limit)"
        assert event["details"]["status"] == 429
        assert event["initiating_human"] == ADA  # the id the events already carry
        assert ADA not in event["reason"]


def test_an_agent_acting_for_itself_takes_no_per_human_token() -> None:
    parties = _parties(RateLimiter(per_human=RateLimit(SLOW, 1)))
    solo = _for(parties, None, SOLO)
    assert [_status(parties, solo) for _ in range(4)] == [200] * 4
    assert _status(parties, _for(parties, ADA, PLANNER)) == 200
    assert _status(parties, _for(parties, ADA, PLANNER)) == 429


def test_session_opens_and_listings_take_a_per_human_token() -> None:
    """An MCP ``initialize`` or listing takes from the human's bucket too: a human's
    agents cannot get round per_human by opening sessions and listing."""
    parties = _parties(RateLimiter(per_agent=OWN, per_human=HUMAN))
    planner, mailer = _for(parties, ADA, PLANNER), _for(parties, ADA, MAILER)
    admit = parties.enforcer.admit_request
    assert admit(planner, "initialize", trace=TRACE) is None
    assert admit(mailer, "initialize", trace=TRACE) is None
    assert _status(parties, planner) == 200  # the third token
    refused = admit(mailer, "tools/list", trace=TRACE)
    assert refused is not None
    assert (refused.status, refused.headers) == (429, {"Retry-After": "60"})
    assert refused.reason == "rate limit for tools/list exceeded (per_human limit)"
    event = _rejected(parties)[-1]
    assert (event["action"], event["reason"]) == ("tools/list", refused.reason)
    assert admit(_for(parties, BOB, STRANGER), "tools/list", trace=TRACE) is None


def test_a_sub_agent_tree_shares_its_chain_budget() -> None:
    """per_chain: the planner and the worker it delegated to (RFC 8693 ``act``) share
    one bucket; a second chain of the same human (the mailer's) has its own."""
    parties = _parties(RateLimiter(per_chain=RateLimit(SLOW, 2)))
    planner, worker = _for(parties, ADA, PLANNER), _for(parties, ADA, WORKER, PLANNER)
    assert [_status(parties, a) for a in (planner, worker)] == [200, 200]
    refused = parties.enforcer.decide(worker, _call(), trace=TRACE)
    assert refused.status == 429
    assert refused.reason == "rate limit for invoices.read exceeded (per_chain limit)"
    assert _status(parties, _for(parties, ADA, MAILER)) == 200


def test_the_agent_own_limit_keeps_its_reason() -> None:
    parties = _parties(RateLimiter(per_agent=RateLimit(SLOW, 1), per_human=HUMAN))
    planner = _for(parties, ADA, PLANNER)
    assert _status(parties, planner) == 200
    refused = parties.enforcer.decide(planner, _call(), trace=TRACE)
    assert (refused.status, refused.reason) == (429, "rate limit for invoices.read exceeded")


# -- the replicas' shared buckets (real Redis) -----------------------------------------------


def _replicas(prefix: str, limiter: dict[str, Any]) -> list[Parties]:
    """Two gateway processes with the same configured limits, sharing one Redis."""
    replicas = []
    for _ in range(2):
        parties = _parties(RateLimiter.from_config(limiter))
        shared = SharedRateLimits(SharedRedis(REDIS_URL, prefix=prefix, timeout=1.0))
        parties.enforcer.shared_limits = shared
        replicas.append(parties)
    return replicas


async def _through(replica: Parties, access: VerifiedAccess) -> tuple[int, str | None, str]:
    enforcer = replica.enforcer
    admission = await enforcer.shared_admit(access, charge=True, tool="invoices.read")
    assert admission.refusal is None
    verdict = enforcer.decide(access, _call(), trace=TRACE, limit=admission.limit)
    return verdict.status, verdict.headers.get("Retry-After"), verdict.reason


async def _close(replicas: list[Parties]) -> None:
    for parties in replicas:
        if parties.enforcer.shared_limits is not None:
            await parties.enforcer.shared_limits.aclose()


def test_replicas_share_the_human_bucket(redis_prefix: str) -> None:
    """Ada's planner on one replica and her mailer on the other: the human's burst of 3
    is handed out once in all, atomically with each agent's own bucket."""
    config = {
        "per_agent": {"rate_per_second": SLOW, "burst": 5},
        "per_human": {"rate_per_second": SLOW, "burst": 3},
    }
    replicas = _replicas(redis_prefix, config)
    planner = _for(replicas[0], ADA, PLANNER)
    mailer = _for(replicas[1], ADA, MAILER)
    stranger = _for(replicas[1], BOB, STRANGER)

    async def scenario() -> list[tuple[int, str | None, str]]:
        try:
            answers = [await _through(replicas[i % 2], (planner, mailer)[i % 2]) for i in range(5)]
            return [*answers, await _through(replicas[0], stranger)]
        finally:
            await _close(replicas)

    answers = asyncio.run(scenario())
    assert [status for status, _, _ in answers] == [200, 200, 200, 429, 429, 200]
    per_human = "rate limit for invoices.read exceeded (per_human limit)"
    assert answers[3][1:] == answers[4][1:] == ("60", per_human)
    for parties in replicas:
        assert len(parties.enforcer._limiter or ()) == 0  # nothing charged locally
    assert [e["reason"] for e in _rejected(replicas[1]) + _rejected(replicas[0])] == [
        per_human,
        per_human,
    ]
    # the human's bucket is a digest in Redis: no human id in any key
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [k.decode() for k in client.scan_iter(match=redis_prefix + "*")]
        assert keys
        assert not any(ADA in k or BOB in k for k in keys)
        human_key = replicas[0].enforcer.shared_limits.key(("human", ADA))  # type: ignore[union-attr]
        assert human_key in keys
        assert float(client.hget(human_key, "tokens") or b"nan") == pytest.approx(0.0, abs=0.01)
    finally:
        client.close()


def test_replicas_share_the_human_bucket_for_listings(redis_prefix: str) -> None:
    config = {"per_human": {"rate_per_second": SLOW, "burst": 1}}
    replicas = _replicas(redis_prefix, config)
    planner, mailer = _for(replicas[0], ADA, PLANNER), _for(replicas[1], ADA, MAILER)

    async def scenario() -> list[SharedLimit | None]:
        try:
            first = await replicas[0].enforcer.shared_admit(planner, charge=True)
            second = await replicas[1].enforcer.shared_admit(mailer, charge=True)
            return [first.limit, second.limit]
        finally:
            await _close(replicas)

    first, second = asyncio.run(scenario())
    assert first == SharedLimit(None)
    assert second == SharedLimit(60, ("per_human",))
    refused = replicas[1].enforcer.admit_request(mailer, "tools/list", trace=TRACE, limit=second)
    assert refused is not None
    assert refused.reason == "rate limit for tools/list exceeded (per_human limit)"


def test_shared_refusal_names_every_short_bucket(redis_prefix: str) -> None:
    """The script answers which buckets held no token, so the reason is the same as
    a single process's."""
    store = SharedRedis(REDIS_URL, prefix=redis_prefix, timeout=1.0)
    shared = SharedRateLimits(store)
    agent = (("agent", PLANNER), RateLimit(SLOW, 5))
    human = (("human", ADA), RateLimit(SLOW, 1))
    chain = (("chain", ADA, PLANNER), RateLimit(SLOW, 1))

    cache = SharedReplayCache(store)
    now = int(time.time())

    async def scenario() -> list[Any]:
        try:
            answers = [await shared.take([agent, human, chain]) for _ in range(2)]
            # with a proof recorded first (KEYS[1]), the positions still name the buckets
            record = cache.record(ProofUse("jkt:proof-1", now + 60), now=now)
            return [*answers, await shared.take([agent, human], proof=record)]
        finally:
            await shared.aclose()

    first, second, third = asyncio.run(scenario())
    assert first is None
    assert second.retry_after == 60
    assert second.limits == ("per_human", "per_chain")
    assert third.limits == ("per_human",)
    # nothing taken by the refusal: the agent's bucket still holds 4
    client = redis.Redis.from_url(REDIS_URL)
    try:
        tokens = float(client.hget(shared.key(agent[0]), "tokens") or b"nan")
        assert tokens == pytest.approx(4.0, abs=0.01)
    finally:
        client.close()
