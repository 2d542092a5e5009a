"""Token-bucket rate limits per agent and per (agent, tool), decided locally by an
enforcement point.

A :class:`RateLimit` is a bucket of ``burst`` tokens refilled at ``rate_per_second``
(the classic token bucket, as the committed-rate bucket of RFC 2697 section 3): a call takes one
token, a call that finds less than one token is refused and told how long to wait.
:class:`RateLimiter` keeps one bucket per agent (``per_agent``) and one per
(agent, tool name) (``per_tool`` / ``default_per_tool``):

- **Both must pass.** A call is allowed only if every bucket that applies holds a
  token; then it takes one from each. A refused call takes nothing from any bucket, so
  a per-tool refusal does not eat into the agent's overall allowance and vice versa.
- **Retry-After.** A refused call gets the seconds after which every bucket that
  applies holds a token again, rounded up to a whole second and at least 1: the
  ``delay-seconds`` form of ``Retry-After`` (RFC 9110 section 10.2.3) that goes with a
  429 answer (RFC 6585 section 4).
- **Which per-tool limit.** ``per_tool`` maps tool-name globs (:func:`fnmatch.fnmatchcase`:
  ``*``, ``?``, ``[seq]``; case-sensitive) to limits. For a tool name the limit used
  is, in order: the pattern equal to the name (no wildcard), else the matching glob
  with the most literal characters (``payments.transfer*`` beats ``payments.*`` beats
  ``*``), ties going to the pattern listed first; if no pattern matches,
  ``default_per_tool``; if that is unset, the tool has no per-tool limit. The bucket is
  per actual tool name: ``payments.*`` at 1/s lets an agent call each payments tool
  once a second, not all of them together (use ``per_agent`` for a total).
- **Bounded memory.** At most ``max_keys`` buckets are kept (agent buckets and tool
  buckets together); beyond that the least recently used is forgotten. A forgotten
  bucket comes back **full**, so an agent idle long enough to be evicted, or whose
  bucket is pushed out by a flood of other keys, gets a fresh burst. A bucket idle for
  ``burst / rate_per_second`` seconds is full anyway, so size ``max_keys`` above the
  number of keys active within that time. Tool names come from the caller: an agent
  sending many distinct names creates many tool buckets, each bounded by
  ``per_agent`` when that is set.
- **Time** is passed in (``now``, seconds on a monotonic clock such as
  :func:`time.monotonic`); a clock that goes backwards refills nothing.
- **Thread-safe**: one lock around each check (constant work per call, plus glob
  matching for tool names not seen recently).
- **Throttles** (automatic response, docs/response.md): :meth:`RateLimiter.set_throttles`
  installs time-bounded caps on single agents, a :class:`Throttle` each: while one is
  in force (until its ``until``, Unix seconds on ``wall_clock``), the agent's calls
  also need a token from a bucket of ``per_minute`` tokens refilled at ``per_minute``
  a minute, on top of every configured limit. The control plane carries the table to
  gateways in the policy bundle; a limiter with no configured limit still applies it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

__all__ = [
    "MAX_THROTTLES",
    "BucketKey",
    "RateLimit",
    "RateLimiter",
    "Throttle",
    "TokenBucket",
    "retry_after",
]

_RESOLVED_CACHE = 4096  # tool names whose per-tool limit is remembered
_EPSILON = 1e-9  # float slack: token counts and waits are sums of float steps
MAX_THROTTLES = 100_000  # agents under a throttle at once


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``burst`` calls at once, ``rate_per_second`` calls a second sustained."""

    rate_per_second: float
    burst: int

    def __post_init__(self) -> None:
        rate = self.rate_per_second
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise ValueError("rate_per_second must be a number")
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError("rate_per_second must be a positive finite number")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError("burst must be a whole number of at least 1")

    @classmethod
    def from_config(cls, value: Any) -> RateLimit:
        """Read ``{"rate_per_second": 5, "burst": 10}`` (unknown keys refused)."""
        if not isinstance(value, Mapping):
            raise ValueError("a rate limit is a mapping with rate_per_second and burst")
        unknown = set(value) - {"rate_per_second", "burst"}
        if unknown:
            raise ValueError(f"unknown rate limit keys: {', '.join(sorted(map(str, unknown)))}")
        if "rate_per_second" not in value or "burst" not in value:
            raise ValueError("a rate limit needs rate_per_second and burst")
        return cls(rate_per_second=value["rate_per_second"], burst=value["burst"])


@dataclass(frozen=True, slots=True)
class Throttle:
    """A temporary cap on one agent: ``per_minute`` calls a minute (``per_minute`` at
    once at most) until ``until`` (Unix seconds)."""

    agent_id: str
    per_minute: int
    until: float

    def __post_init__(self) -> None:
        if not isinstance(self.agent_id, str) or not 0 < len(self.agent_id) <= 512:
            raise ValueError("agent_id must be a non-empty string")
        per = self.per_minute
        if isinstance(per, bool) or not isinstance(per, int) or not 1 <= per <= 1_000_000:
            raise ValueError("per_minute must be a whole number from 1 to 1000000")
        until = self.until
        if (
            isinstance(until, bool)
            or not isinstance(until, int | float)
            or not math.isfinite(until)
        ):
            raise ValueError("until must be a finite number of Unix seconds")

    @property
    def limit(self) -> RateLimit:
        return RateLimit(rate_per_second=self.per_minute / 60.0, burst=self.per_minute)

    def to_dict(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "per_minute": self.per_minute, "until": self.until}


BucketKey = tuple[str, ...]  # ("agent", id), ("throttle", id, …), ("tool", id, name)


def retry_after(wait: float) -> int:
    """A wait in seconds as ``Retry-After`` delay-seconds: rounded up to a whole
    second (the float slack forgiven), at least 1."""
    return max(1, math.ceil(wait - _EPSILON))


class TokenBucket:
    """One bucket of a :class:`RateLimit` (RFC 2697 section 3, the committed-rate
    bucket): full when made, refilled at ``rate_per_second`` up to ``burst``. Not
    locked: its owner holds the lock (:class:`RateLimiter`, and the gateways' budget
    for anonymous refusals, ``core/enforcement/anonymous.py``)."""

    __slots__ = ("tokens", "updated")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.tokens = float(limit.burst)
        self.updated = now

    def refill(self, limit: RateLimit, now: float) -> None:
        """Add what ``limit`` refilled since the last refill (a clock that went back
        refills nothing)."""
        if now > self.updated:
            self.tokens = min(
                float(limit.burst), self.tokens + (now - self.updated) * limit.rate_per_second
            )
            self.updated = now

    def has_token(self) -> bool:
        # the slack absorbs float drift: ten refills of 0.1 are 0.9999999999999999
        return self.tokens >= 1.0 - _EPSILON

    def wait(self, limit: RateLimit) -> float:
        """Seconds until the bucket holds a token again."""
        return (1.0 - self.tokens) / limit.rate_per_second


def _specificity(pattern: str) -> int:
    """Literal characters of a glob: ``*`` and ``?`` count nothing, a ``[...]`` set
    counts one."""
    count, i = 0, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch in "*?":
            i += 1
            continue
        if ch == "[":
            end = pattern.find("]", i + 2)  # "[]...]": a leading ] is a member
            if end != -1:
                count += 1
                i = end + 1
                continue
        count += 1
        i += 1
    return count


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


class RateLimiter:
    """Token buckets per agent and per (agent, tool); see the module docstring.

    ``check(agent_id, tool, now)`` returns None when the call is allowed (its tokens
    are taken) or the whole seconds to put in ``Retry-After`` when it is not.
    """

    def __init__(
        self,
        per_agent: RateLimit | None = None,
        per_tool: Mapping[str, RateLimit] | None = None,
        default_per_tool: RateLimit | None = None,
        *,
        max_keys: int = 100_000,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError("max_keys must be a whole number of at least 1")
        patterns = dict(per_tool or {})
        for pattern, limit in patterns.items():
            if not isinstance(pattern, str) or not pattern:
                raise ValueError("per_tool patterns must be non-empty strings")
            if not isinstance(limit, RateLimit):
                raise ValueError(f"per_tool[{pattern!r}] must be a RateLimit")
        self.per_agent = per_agent
        self.default_per_tool = default_per_tool
        self.max_keys = max_keys
        self._exact = {p: lim for p, lim in patterns.items() if not _is_glob(p)}
        # most literal characters first; sorted() is stable, so ties keep config order
        self._globs = sorted(
            ((p, lim) for p, lim in patterns.items() if _is_glob(p)),
            key=lambda item: -_specificity(item[0]),
        )
        self._lock = threading.Lock()
        self._buckets: OrderedDict[BucketKey, TokenBucket] = OrderedDict()
        self._resolved: dict[str, RateLimit | None] = {}
        self._wall = wall_clock
        self._throttles: dict[str, Throttle] = {}

    def set_throttles(self, throttles: Iterable[Throttle]) -> None:
        """Replace the table of throttles (at most :data:`MAX_THROTTLES`, the latest
        ``until`` kept for an agent named twice); ended ones are dropped."""
        now = self._wall()
        table: dict[str, Throttle] = {}
        for throttle in throttles:
            if not isinstance(throttle, Throttle):
                raise ValueError("set_throttles takes Throttle objects")
            if throttle.until <= now:
                continue
            current = table.get(throttle.agent_id)
            if current is None or current.until < throttle.until:
                table[throttle.agent_id] = throttle
        if len(table) > MAX_THROTTLES:
            raise ValueError(f"at most {MAX_THROTTLES} throttles")
        with self._lock:
            self._throttles = table

    @property
    def throttles(self) -> list[Throttle]:
        """The throttles in force now."""
        now = self._wall()
        with self._lock:
            return [t for t in self._throttles.values() if t.until > now]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RateLimiter:
        """Build from configuration::

            per_agent: {rate_per_second: 10, burst: 20}
            default_per_tool: {rate_per_second: 2, burst: 5}
            per_tool:
              "payments.*": {rate_per_second: 0.5, burst: 2}
            max_keys: 100000

        Every key is optional; unknown keys are refused (ValueError)."""
        unknown = set(config) - {"per_agent", "per_tool", "default_per_tool", "max_keys"}
        if unknown:
            raise ValueError(f"unknown rate_limits keys: {', '.join(sorted(map(str, unknown)))}")
        per_tool = config.get("per_tool") or {}
        if not isinstance(per_tool, Mapping):
            raise ValueError("per_tool maps tool-name globs to rate limits")
        return cls(
            per_agent=_optional(config.get("per_agent")),
            per_tool={str(p): RateLimit.from_config(v) for p, v in per_tool.items()},
            default_per_tool=_optional(config.get("default_per_tool")),
            max_keys=config.get("max_keys", 100_000),
        )

    def limit_for_tool(self, tool: str) -> RateLimit | None:
        """The per-tool limit that applies to ``tool`` (see the module docstring)."""
        with self._lock:
            return self._resolve(tool)

    def __len__(self) -> int:
        """Buckets currently kept."""
        with self._lock:
            return len(self._buckets)

    def buckets(self, agent_id: str, tool: str | None) -> list[tuple[BucketKey, RateLimit]]:
        """The buckets a call by ``agent_id`` to ``tool`` must find a token in, each
        with its limit: the agent's (``per_agent``), its throttle's while one is in
        force, and the (agent, tool) one when a per-tool limit applies. Empty: no limit
        applies. What :meth:`check` takes from here, and what replicas sharing their
        buckets take from Redis (``adapters/gateway/shared_ratelimit.py``)."""
        with self._lock:
            return self._wanted(agent_id, tool)

    def _wanted(self, agent_id: str, tool: str | None) -> list[tuple[BucketKey, RateLimit]]:
        wanted: list[tuple[BucketKey, RateLimit]] = []
        if self.per_agent is not None:
            wanted.append((("agent", agent_id), self.per_agent))
        throttle = self._throttles.get(agent_id) if self._throttles else None
        if throttle is not None and throttle.until > self._wall():
            cap = ("throttle", agent_id, str(throttle.per_minute), repr(throttle.until))
            wanted.append((cap, throttle.limit))
        if tool is not None:
            tool_limit = self._resolve(tool)
            if tool_limit is not None:
                wanted.append((("tool", agent_id, tool), tool_limit))
        return wanted

    def check(self, agent_id: str, tool: str | None, now: float) -> float | None:
        """Take one token from each bucket that applies to this call and return None,
        or take nothing and return the ``Retry-After`` delay: whole seconds (an int),
        at least 1. ``tool`` None (a call that names no tool) checks ``per_agent`` only."""
        with self._lock:
            wanted = self._wanted(agent_id, tool)
            if not wanted:
                return None
            buckets: list[tuple[TokenBucket, RateLimit]] = []
            for key, limit in wanted:
                bucket = self._buckets.get(key)
                if bucket is None:
                    bucket = self._buckets[key] = TokenBucket(limit, now)
                else:
                    self._buckets.move_to_end(key)
                    bucket.refill(limit, now)
                buckets.append((bucket, limit))
            if all(bucket.has_token() for bucket, _ in buckets):
                for bucket, _ in buckets:
                    bucket.tokens -= 1.0
                result: float | None = None
            else:
                result = retry_after(max(b.wait(lim) for b, lim in buckets))
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return result

    def _resolve(self, tool: str) -> RateLimit | None:
        if tool in self._resolved:
            return self._resolved[tool]
        limit = self._exact.get(tool)
        if limit is None:
            limit = next(
                (lim for pattern, lim in self._globs if fnmatchcase(tool, pattern)),
                self.default_per_tool,
            )
        if len(self._resolved) >= _RESOLVED_CACHE:
            self._resolved.clear()
        self._resolved[tool] = limit
        return limit


def _optional(value: Any) -> RateLimit | None:
    return None if value is None else RateLimit.from_config(value)
