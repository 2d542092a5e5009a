"""The budget of refusals naming nobody (core/enforcement/anonymous.py) with an injected
clock: the per-peer and overall token buckets, the peer key (IPv4, IPv6 by /64, never
unbounded), the LRU bound folding a forgotten peer's count into ``other``, the
reason codes, the configuration, and the accounting property: every anonymous refusal
is either let through to its own event or counted in exactly one summary."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from agentiam.core.enforcement import RateLimit
from agentiam.core.enforcement.anonymous import (
    MAX_REASONS,
    OTHER,
    UNKNOWN_PEER,
    AnonymousRefusalLimits,
    AnonymousRefusals,
    peer_key,
    reason_code,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.now)


def budget(
    per_peer: tuple[float, int] = (1.0, 3),
    overall: tuple[float, int] = (100.0, 1000),
    max_peers: int = 100,
) -> tuple[AnonymousRefusals, Clock]:
    clock = Clock()
    limits = AnonymousRefusalLimits(
        per_peer=RateLimit(*per_peer), overall=RateLimit(*overall), max_peers=max_peers
    )
    return AnonymousRefusals(limits, clock=clock, wall=clock.wall), clock


def refuse(b: AnonymousRefusals, host: str | None, n: int = 1, status: int = 401) -> list[bool]:
    return [
        b.admit(
            host,
            status=status,
            reason="invalid_token: no Authorization header",
            trace_id=f"{i:032x}",
        )
        for i in range(n)
    ]


def test_a_peer_gets_its_burst_then_refills_at_its_rate() -> None:
    b, clock = budget(per_peer=(0.5, 3))
    assert refuse(b, "198.51.100.7", 5) == [True, True, True, False, False]
    clock.now += 1.9  # 0.95 of a token: not yet
    assert refuse(b, "198.51.100.7") == [False]
    clock.now += 0.1
    assert refuse(b, "198.51.100.7", 2) == [True, False]
    clock.now += 3600  # refills to the burst, no more
    assert refuse(b, "198.51.100.7", 4) == [True, True, True, False]
    clock.now -= 50  # a clock going back refills nothing
    assert refuse(b, "198.51.100.7") == [False]
    # another peer has a bucket of its own
    assert refuse(b, "198.51.100.8", 3) == [True, True, True]


def test_the_overall_bucket_bounds_all_peers_together() -> None:
    b, clock = budget(per_peer=(1.0, 5), overall=(2.0, 10))
    admitted = sum(sum(refuse(b, f"203.0.113.{i}", 5)) for i in range(1, 11))
    assert admitted == 10  # 50 refusals from 10 peers, each within its own burst
    assert b.audited == 10
    assert sum(s.count for s in b.drain()) == 40
    clock.now += 1.0  # two overall tokens back
    assert sum(sum(refuse(b, f"203.0.113.{i}")) for i in range(20, 25)) == 2


def test_a_refusal_past_one_bucket_takes_no_token_from_the_other() -> None:
    b, _ = budget(per_peer=(0.001, 1), overall=(0.001, 3))
    assert refuse(b, "192.0.2.1", 10) == [True] + [False] * 9  # the peer's bucket is empty
    # the nine refused took nothing from the overall bucket: two tokens are left
    assert refuse(b, "192.0.2.2") + refuse(b, "192.0.2.3") + refuse(b, "192.0.2.4") == [
        True,
        True,
        False,
    ]


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("2001:db8:0:1:ffff:eeee:dddd:cccc", "2001:db8:0:1::/64"),
        ("2001:db8:0:2::1", "2001:db8:0:2::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # IPv4-mapped: the IPv4 peer
        ("fe80::1%eth0", "fe80::/64"),
        (None, UNKNOWN_PEER),
        ("", UNKNOWN_PEER),
        ("/run/gw.sock", UNKNOWN_PEER),
        ("not an address" * 100, UNKNOWN_PEER),  # never a key of its own
    ],
)
def test_the_peer_key(host: str | None, key: str) -> None:
    assert peer_key(host) == key


def test_an_ipv6_slash_64_shares_one_bucket() -> None:
    """An attacker holding a /64 cannot get a burst per address."""
    b, _ = budget(per_peer=(0.001, 3))
    hosts = [f"2001:db8:aa:bb:{i:x}::1" for i in range(1, 11)]
    assert [b.admit(h, status=401, reason="r", trace_id="0" * 31 + "1") for h in hosts] == [
        True,
        True,
        True,
    ] + [False] * 7
    assert [s.peer for s in b.drain()] == ["2001:db8:aa:bb::/64"]
    assert refuse(b, "2001:db8:aa:bc::1") == [True]  # the next /64 is another peer


def test_a_forgotten_peer_s_count_is_folded_into_other() -> None:
    b, clock = budget(per_peer=(0.001, 1), max_peers=2)
    assert refuse(b, "192.0.2.1", 3) == [True, False, False]  # 2 pending for .1
    clock.now += 1
    refuse(b, "192.0.2.2", 2)  # 1 pending for .2
    clock.now += 1
    refuse(b, "192.0.2.3", 1)  # a third peer: .1, least recently refused, is forgotten
    assert len(b) == 2
    clock.now += 1
    refuse(b, "192.0.2.4", 2)  # .2 is forgotten too: its count joins .1's in "other"
    summaries = {s.peer: s for s in b.drain()}
    assert set(summaries) == {"192.0.2.4", OTHER}
    other = summaries[OTHER]
    assert other.count == 3
    assert other.first == T0 + timedelta(seconds=100)  # .1's first
    assert other.last == T0 + timedelta(seconds=101)  # .2's last
    assert other.statuses == ((401, 3),)
    assert summaries["192.0.2.4"].count == 1
    assert b.drain() == []  # drained: nothing pending
    # .1 comes back with a full bucket (forgotten), and is audited
    assert refuse(b, "192.0.2.1") == [True]


def test_a_summary_counts_statuses_reasons_and_names_first_and_last_trace() -> None:
    b, clock = budget(per_peer=(0.001, 1))
    b.admit("192.0.2.9", status=401, reason="invalid_token: x", trace_id="a" * 32)
    reasons = [f"code{i}: detail" for i in range(MAX_REASONS + 3)]
    for i, reason in enumerate(reasons):
        clock.now += 1
        b.admit("192.0.2.9", status=400 if i % 2 else 401, reason=reason, trace_id=f"{i + 1:032x}")
    (summary,) = b.drain()
    assert summary.count == len(reasons)
    assert summary.first_trace_id == f"{1:032x}"
    assert summary.last_trace_id == f"{len(reasons):032x}"
    assert summary.first == T0 + timedelta(seconds=101)
    assert summary.last == T0 + timedelta(seconds=100 + len(reasons))
    assert dict(summary.statuses) == {401: 6, 400: 5}
    codes = dict(summary.reasons)
    assert len(codes) == MAX_REASONS + 1
    assert codes[OTHER] == 3
    assert sum(codes.values()) == summary.count


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("invalid_token: typ 'eyJhbGciOi-presented' is not accepted", "invalid_token"),
        ("invalid_dpop_proof: duplicate member 'x-attacker-words'", "invalid_dpop_proof"),
        ("path refused: a ';' path parameter", "path refused"),
        ("invalid Content-Length", "invalid Content-Length"),
        (": leading colon", OTHER),
        ("x" * 500, "x" * 64),
    ],
)
def test_a_reason_code_never_holds_what_the_request_presented(reason: str, code: str) -> None:
    assert reason_code(reason) == code


def test_every_anonymous_refusal_is_audited_or_summarized_exactly_once() -> None:
    """The accounting property, over random peers, times, drains and evictions."""
    rng = random.Random(1729)
    b, clock = budget(per_peer=(0.5, 3), overall=(5.0, 20), max_peers=7)
    total = audited = summarized = 0
    for _ in range(5000):
        clock.now += rng.choice((0.0, 0.0, 0.01, 0.1, 1.0))
        host = rng.choice(
            [f"192.0.2.{rng.randrange(12)}", f"2001:db8:{rng.randrange(5)}::9", None, "x"]
        )
        total += 1
        if b.admit(host, status=rng.choice((400, 401, 413)), reason="r", trace_id="1" * 32):
            audited += 1
        assert len(b) <= 7
        if rng.random() < 0.01:
            summarized += sum(s.count for s in b.drain())
    summarized += sum(s.count for s in b.drain())
    assert audited + summarized == total
    assert audited == b.audited
    assert sum(b.summarized().values()) == summarized
    assert 0 < audited < total


def test_limits_from_config() -> None:
    assert AnonymousRefusalLimits.from_config(None) is None
    assert AnonymousRefusalLimits.from_config("off") is None
    assert AnonymousRefusalLimits.from_config({}) == AnonymousRefusalLimits()
    defaults = AnonymousRefusalLimits()
    assert (defaults.per_peer, defaults.overall) == (RateLimit(1.0, 20), RateLimit(20.0, 200))
    assert (defaults.summary_seconds, defaults.max_peers) == (10.0, 10_000)
    limits = AnonymousRefusalLimits.from_config(
        {
            "per_peer": {"rate_per_second": 2, "burst": 5},
            "overall": {"rate_per_second": 50, "burst": 500},
            "summary_seconds": 30,
            "max_peers": 100,
        }
    )
    assert limits == AnonymousRefusalLimits(RateLimit(2, 5), RateLimit(50, 500), 30.0, 100)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("on", "a mapping, or null"),
        ({"per_peer": {"per_second": 1, "burst": 2}}, "per_peer: unknown rate limit keys"),
        ({"per_peer": {"rate_per_second": 0, "burst": 2}}, "per_peer: rate_per_second"),
        ({"overall": {"rate_per_second": 1, "burst": 0}}, "overall: burst"),
        ({"overall": {"rate_per_second": 1, "burst": 10**7}}, "overall: at most"),
        ({"summary_seconds": 0.5}, "summary_seconds: a number between 1 and 3600"),
        ({"summary_seconds": True}, "summary_seconds"),
        ({"max_peers": 0}, "max_peers: an integer between 1 and 1000000"),
        ({"max_peers": 2.5}, "max_peers"),
        ({"burst": 3}, "unknown keys burst"),
    ],
)
def test_bad_limits_are_refused_naming_the_key(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AnonymousRefusalLimits.from_config(value)
