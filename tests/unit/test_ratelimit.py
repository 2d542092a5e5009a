"""Token-bucket rate limits, with a fake clock: steady rate, burst, per-tool glob
precedence, both buckets or none, bounded memory, Retry-After values, thread safety."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from agentiam.core.enforcement import RateLimit, RateLimiter
from agentiam.core.enforcement.ratelimit import RateRefusal, pooled_limits, refusal_reason


def _allowed(limiter: RateLimiter, agent: str, tool: str | None, now: float, n: int) -> int:
    return sum(limiter.check(agent, tool, now) is None for _ in range(n))


def test_burst_then_refused_with_retry_after() -> None:
    limiter = RateLimiter(per_agent=RateLimit(rate_per_second=2, burst=5))
    assert _allowed(limiter, "a", None, 0.0, 5) == 5
    assert limiter.check("a", None, 0.0) == 1  # 0.5 s to the next token, rounded up
    assert limiter.check("a", "any-tool", 0.0) == 1  # no per-tool limit: per_agent only


def test_steady_rate() -> None:
    limiter = RateLimiter(per_agent=RateLimit(rate_per_second=10, burst=1))
    allowed = 0
    for step in range(1000):  # 10 s of attempts every 10 ms
        allowed += limiter.check("a", None, step * 0.01) is None
    assert allowed == 100  # at 0 s, then one every 100 ms up to 9.9 s


def test_tokens_never_exceed_burst_after_a_long_idle() -> None:
    limiter = RateLimiter(per_agent=RateLimit(rate_per_second=1, burst=3))
    assert _allowed(limiter, "a", None, 0.0, 3) == 3
    assert _allowed(limiter, "a", None, 10_000.0, 10) == 3


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    slow = RateLimiter(per_agent=RateLimit(rate_per_second=0.1, burst=1))
    assert slow.check("a", None, 0.0) is None
    assert slow.check("a", None, 0.0) == 10
    assert slow.check("a", None, 2.5) == 8  # 7.5 s left
    assert slow.check("a", None, 9.0) == 1  # 1 s left, exactly
    assert slow.check("a", None, 9.99) == 1  # never 0
    assert slow.check("a", None, 10.0) is None
    value = slow.check("a", None, 10.0)
    assert isinstance(value, int)  # an int: "Retry-After: 10", not "10.0"
    assert value == 10


def test_clock_going_back_refills_nothing() -> None:
    limiter = RateLimiter(per_agent=RateLimit(rate_per_second=1, burst=1))
    assert limiter.check("a", None, 100.0) is None
    assert limiter.check("a", None, 50.0) is not None
    assert limiter.check("a", None, 100.5) is not None
    assert limiter.check("a", None, 101.0) is None


def test_agents_are_independent() -> None:
    limiter = RateLimiter(per_agent=RateLimit(rate_per_second=1, burst=2))
    assert _allowed(limiter, "a", None, 0.0, 5) == 2
    assert _allowed(limiter, "b", None, 0.0, 5) == 2


def test_per_tool_glob_precedence() -> None:
    exact = RateLimit(1, 1)
    long_glob = RateLimit(1, 2)
    short_glob = RateLimit(1, 3)
    star = RateLimit(1, 4)
    default = RateLimit(1, 5)
    limiter = RateLimiter(
        per_tool={
            "*": star,  # listed first, yet the least specific
            "payments.*": short_glob,
            "payments.transfer*": long_glob,
            "payments.transfer": exact,
        },
        default_per_tool=default,
    )
    assert limiter.limit_for_tool("payments.transfer") is exact
    assert limiter.limit_for_tool("payments.transfer_batch") is long_glob
    assert limiter.limit_for_tool("payments.refund") is short_glob
    assert limiter.limit_for_tool("search") is star
    assert limiter.limit_for_tool("Payments.refund") is star  # case-sensitive

    no_star = RateLimiter(per_tool={"payments.*": short_glob}, default_per_tool=default)
    assert no_star.limit_for_tool("search") is default
    assert RateLimiter(per_tool={"payments.*": short_glob}).limit_for_tool("search") is None


def test_equally_specific_globs_go_to_the_first_listed() -> None:
    first, second = RateLimit(1, 1), RateLimit(1, 2)
    limiter = RateLimiter(per_tool={"fs.*": first, "*ead": second})  # 3 literals each
    assert limiter.limit_for_tool("fs.read") is first
    swapped = RateLimiter(per_tool={"*ead": second, "fs.*": first})
    assert swapped.limit_for_tool("fs.read") is second


def test_tool_buckets_are_per_agent_and_per_tool_name() -> None:
    limiter = RateLimiter(per_tool={"payments.*": RateLimit(rate_per_second=1, burst=1)})
    assert limiter.check("a", "payments.transfer", 0.0) is None
    assert limiter.check("a", "payments.transfer", 0.0) == 1
    assert limiter.check("a", "payments.refund", 0.0) is None  # its own bucket
    assert limiter.check("b", "payments.transfer", 0.0) is None  # another agent's
    assert limiter.check("a", "search", 0.0) is None  # no limit applies
    assert limiter.check("a", "search", 0.0) is None


def test_a_refusal_by_one_bucket_takes_nothing_from_the_other() -> None:
    limiter = RateLimiter(
        per_agent=RateLimit(rate_per_second=1, burst=3),
        per_tool={"transfer": RateLimit(rate_per_second=0.1, burst=1)},
    )
    assert limiter.check("a", "transfer", 0.0) is None  # agent 2 left, tool 0 left
    for _ in range(10):
        assert limiter.check("a", "transfer", 0.0) == 10  # the tool refuses ...
    assert _allowed(limiter, "a", "search", 0.0, 5) == 2  # ... the agent's tokens stay

    # and the other way round: the agent refuses, the tool's bucket stays full
    limiter = RateLimiter(
        per_agent=RateLimit(rate_per_second=1, burst=1),
        per_tool={"transfer": RateLimit(rate_per_second=0.01, burst=1)},
    )
    assert limiter.check("a", "search", 0.0) is None
    assert limiter.check("a", "transfer", 0.0) == 1
    assert limiter.check("a", "transfer", 1.0) is None  # the tool still had its token


def test_retry_after_waits_for_every_refusing_bucket() -> None:
    limiter = RateLimiter(
        per_agent=RateLimit(rate_per_second=0.5, burst=1),
        per_tool={"t": RateLimit(rate_per_second=0.25, burst=1)},
    )
    assert limiter.check("a", "t", 0.0) is None
    assert limiter.check("a", "t", 0.0) == 4  # agent needs 2 s, tool 4 s
    assert limiter.check("a", "t", 3.0) == 1
    assert limiter.check("a", "t", 4.0) is None


def test_memory_is_bounded_and_an_evicted_bucket_comes_back_full() -> None:
    limiter = RateLimiter(per_agent=RateLimit(rate_per_second=0.001, burst=1), max_keys=100)
    assert limiter.check("victim", None, 0.0) is None
    assert limiter.check("victim", None, 0.0) is not None
    for i in range(1000):
        limiter.check(f"agent-{i}", None, 0.0)
        assert len(limiter) <= 100
    assert len(limiter) == 100
    assert limiter.check("victim", None, 0.0) is None  # forgotten, so full again (documented)


def test_recently_used_buckets_survive_eviction() -> None:
    limiter = RateLimiter(per_agent=RateLimit(rate_per_second=0.001, burst=1), max_keys=10)
    assert limiter.check("busy", None, 0.0) is None
    for i in range(100):
        assert limiter.check("busy", None, 0.0) is not None  # used on every round
        limiter.check(f"agent-{i}", None, 0.0)
    assert limiter.check("busy", None, 0.0) is not None  # never evicted: still empty


def test_concurrent_checks_never_allow_more_than_the_burst() -> None:
    limiter = RateLimiter(
        per_agent=RateLimit(rate_per_second=0.001, burst=50),
        per_tool={"*": RateLimit(rate_per_second=0.001, burst=80)},
    )
    allowed: list[int] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        allowed.append(_allowed(limiter, "a", "t", 1.0, 100))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 50


def test_from_config() -> None:
    limiter = RateLimiter.from_config(
        {
            "per_agent": {"rate_per_second": 10, "burst": 20},
            "default_per_tool": {"rate_per_second": 2, "burst": 5},
            "per_tool": {"payments.*": {"rate_per_second": 0.5, "burst": 2}},
            "max_keys": 1000,
        }
    )
    assert limiter.per_agent == RateLimit(10, 20)
    assert limiter.limit_for_tool("payments.x") == RateLimit(0.5, 2)
    assert limiter.limit_for_tool("other") == RateLimit(2, 5)
    assert limiter.max_keys == 1000
    assert RateLimiter.from_config({}).check("a", "t", 0.0) is None


@pytest.mark.parametrize(
    "config",
    [
        {"per_agent": {"rate_per_second": 0, "burst": 1}},
        {"per_agent": {"rate_per_second": float("inf"), "burst": 1}},
        {"per_agent": {"rate_per_second": float("nan"), "burst": 1}},
        {"per_agent": {"rate_per_second": 1, "burst": 0}},
        {"per_agent": {"rate_per_second": 1, "burst": 1.5}},
        {"per_agent": {"rate_per_second": True, "burst": 1}},
        {"per_agent": {"rate_per_second": "1", "burst": 1}},
        {"per_agent": {"rate_per_second": 1}},
        {"per_agent": {"rate_per_second": 1, "burst": 1, "extra": 1}},
        {"per_agent": [1, 1]},
        {"per_tool": {"": {"rate_per_second": 1, "burst": 1}}},
        {"per_tool": ["*"]},
        {"max_keys": 0},
        {"burst": 1},
    ],
)
def test_bad_config_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"rate|burst|per_tool|max_keys|keys|mapping"):
        RateLimiter.from_config(config)


# -- per human, per delegation chain ---------------------------------------------------------

HUMAN_LIMIT = RateLimit(rate_per_second=0.5, burst=3)


def _take(limiter: RateLimiter, agent: str, human: str | None, now: float = 0.0) -> Any:
    return limiter.take(agent, "t", now, human=human)


def test_per_human_is_one_bucket_for_all_the_agents_of_one_human() -> None:
    """Two agents of one human, each well under its own limit, together get the
    human's burst and no more; another human's agent is not touched."""
    limiter = RateLimiter(per_agent=RateLimit(1, 10), per_human=HUMAN_LIMIT)
    answers = [_take(limiter, agent, "hum_ada", 0.0) for agent in ("a", "b", "a", "b", "a")]
    assert answers[:3] == [None, None, None]
    refused = answers[3]
    assert refused == RateRefusal(retry_after=2, limits=("per_human",))  # (1 - 0) / 0.5 s
    assert refused.pooled == ("per_human",)
    assert answers[4] == refused
    assert _take(limiter, "c", "hum_bob", 0.0) is None  # another human's agent
    assert limiter.check("a", "t", 2.0, human="hum_ada") is None  # one token back after 2 s
    assert limiter.check("b", "t", 2.0, human="hum_ada") == 2


def test_a_per_human_refusal_takes_nothing_from_the_agent_buckets() -> None:
    limiter = RateLimiter(
        per_agent=RateLimit(0.001, 2),
        per_tool={"t": RateLimit(0.001, 2)},
        per_human=RateLimit(0.001, 1),
    )
    assert _take(limiter, "a", "hum_ada") is None
    for _ in range(5):
        assert _take(limiter, "a", "hum_ada").limits == ("per_human",)
    # the agent's and the tool's buckets kept their second token
    assert _take(limiter, "a", None) is None
    assert _take(limiter, "a", None).limits == ("per_agent", "per_tool")


def test_no_human_no_per_human_bucket() -> None:
    """An agent acting for itself (its token names no human) takes no per-human token:
    the limit pools the agents of one human, and the token names no owner."""
    limiter = RateLimiter(per_human=RateLimit(0.001, 1))
    assert [_take(limiter, "a", None) for _ in range(5)] == [None] * 5
    assert len(limiter) == 0
    assert limiter.buckets("a", "t", human=None) == []


def test_unset_pooled_limits_take_no_bucket_whatever_the_caller_names() -> None:
    limiter = RateLimiter(per_agent=RateLimit(0.001, 1))
    assert limiter.buckets("a", "t", human="hum_ada", chain=("hum_ada", "a")) == [
        (("agent", "a"), RateLimit(0.001, 1))
    ]
    assert limiter.check("a", None, 0.0, human="hum_ada", chain=("hum_ada", "a")) is None
    assert len(limiter) == 1


def test_per_chain_is_shared_by_a_sub_agent_tree_and_not_by_other_chains() -> None:
    limiter = RateLimiter(per_chain=RateLimit(0.001, 2), per_human=RateLimit(0.001, 10))
    tree = ("hum_ada", "planner")  # the planner and the sub-agents below it
    assert limiter.take("planner", "t", 0.0, human="hum_ada", chain=tree) is None
    assert limiter.take("worker", "t", 0.0, human="hum_ada", chain=tree) is None
    refused = limiter.take("worker-2", "t", 0.0, human="hum_ada", chain=tree)
    assert refused is not None
    assert refused.limits == ("per_chain",)
    # another first agent of the same human is another chain (the human's bucket is shared)
    assert limiter.take("mailer", "t", 0.0, human="hum_ada", chain=("hum_ada", "mailer")) is None
    both = RateLimiter(per_chain=RateLimit(0.001, 1), per_human=RateLimit(0.001, 1))
    assert both.take("a", "t", 0.0, human="h", chain=("h", "a")) is None
    refused = both.take("a", "t", 0.0, human="h", chain=("h", "a"))
    assert refused is not None
    assert refused.limits == ("per_human", "per_chain")


def test_max_keys_bounds_human_and_chain_buckets_too() -> None:
    limiter = RateLimiter(
        per_agent=RateLimit(0.001, 1),
        per_human=RateLimit(0.001, 1),
        per_chain=RateLimit(0.001, 1),
        max_keys=10,
    )
    for i in range(100):
        limiter.take(f"agent-{i}", None, 0.0, human=f"hum_{i}", chain=(f"hum_{i}", f"agent-{i}"))
        assert len(limiter) <= 10
    assert len(limiter) == 10


def test_refusal_reason_names_the_pooled_limits_only() -> None:
    assert refusal_reason("invoices.read") == "rate limit for invoices.read exceeded"
    assert refusal_reason("invoices.read", ("per_human",)) == (
        "rate limit for invoices.read exceeded (per_human limit)"
    )
    assert refusal_reason("tools/list", ("per_human", "per_chain")) == (
        "rate limit for tools/list exceeded (per_human and per_chain limits)"
    )
    assert pooled_limits(("per_agent", "per_chain", "per_tool", "per_human")) == (
        "per_human",
        "per_chain",
    )


def test_from_config_reads_per_human_and_per_chain() -> None:
    limiter = RateLimiter.from_config(
        {
            "per_human": {"rate_per_second": 20, "burst": 40},
            "per_chain": {"rate_per_second": 15, "burst": 30},
        }
    )
    assert limiter.per_human == RateLimit(20, 40)
    assert limiter.per_chain == RateLimit(15, 30)
    assert limiter.per_agent is None
    assert RateLimiter.from_config({}).per_human is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"per_human": {"rate_per_second": 0, "burst": 1}}, "per_human: rate_per_second"),
        ({"per_human": {"rate_per_second": -1, "burst": 1}}, "per_human: rate_per_second"),
        ({"per_human": {"rate_per_second": 1, "burst": 0}}, "per_human: burst"),
        ({"per_human": {"rate_per_second": 1, "burst": True}}, "per_human: burst"),
        ({"per_human": {"rate_per_second": "1", "burst": 1}}, "per_human: rate_per_second"),
        ({"per_human": {"rate_per_second": 1}}, "per_human: a rate limit needs"),
        ({"per_human": {"rate_per_second": 1, "burst": 1, "per": "x"}}, "per_human: unknown"),
        ({"per_human": 5}, "per_human: a rate limit is a mapping"),
        ({"per_chain": {"rate_per_second": float("inf"), "burst": 1}}, "per_chain: rate"),
        ({"per_chain": [1, 1]}, "per_chain: a rate limit is a mapping"),
        ({"per_humans": {"rate_per_second": 1, "burst": 1}}, "unknown rate_limits keys"),
        ({"per_owner": {"rate_per_second": 1, "burst": 1}}, "unknown rate_limits keys"),
    ],
)
def test_bad_per_human_and_per_chain_config_is_refused(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimiter.from_config(config)


def test_a_pooled_limit_must_be_a_rate_limit() -> None:
    with pytest.raises(ValueError, match="per_human must be a RateLimit"):
        RateLimiter(per_human={"rate_per_second": 1, "burst": 1})  # type: ignore[arg-type]
