"""Token-bucket rate limits, with a fake clock: steady rate, burst, per-tool glob
precedence, both buckets or none, bounded memory, Retry-After values, thread safety."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from agentiam.core.enforcement import RateLimit, RateLimiter


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
