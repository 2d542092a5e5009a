"""Token-bucket rate limits per agent, per (agent, tool), per human and per delegation
chain, decided locally by an enforcement point.

A :class:`RateLimit` is a bucket of ``burst`` tokens refilled at ``rate_per_second``
(the classic token bucket, as the committed-rate bucket of RFC 2697 section 3): a call takes one
token, a call that finds less than one token is refused and told how long to wait.
:class:`RateLimiter` keeps one bucket per agent (``per_agent``) and one per
(agent, tool name) (``per_tool`` / ``default_per_tool``):

- **Per human, per chain** (``per_human``, ``per_chain``): one human can start many
  agents, and an agent can hand its chain on to sub-agents (RFC 8693 token exchange),
  so per-agent buckets do not bound what they do together. The caller passes the
  human a call is made for (``human``: the token's ``sub`` when it is a human, the
  root of its delegation chain) and the chain's root and first agent (``chain``);
  :func:`~agentiam.core.delegation.enforcement.rate_parties` reads both from a
  verified token. ``per_human`` is one bucket per human, whichever agent calls;
  ``per_chain`` one per (root, first agent), so a sub-agent tree shares its first
  agent's budget. A call that names no human (an agent acting for itself) takes no
  per-human token. Unset (the default), neither costs anything.
- **All must pass.** A call is allowed only if every bucket that applies holds a
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
- **Bounded memory.** At most ``max_keys`` buckets are kept (agent, tool, human and
  chain buckets together); beyond that the least recently used is forgotten. A forgotten
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

__all__ = [
    "LIMIT_NAMES",
    "MAX_THROTTLES",
    "BucketKey",
    "RateLimit",
    "RateLimiter",
    "RateRefusal",
    "Throttle",
    "TokenBucket",
    "pooled_limits",
    "refusal_reason",
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


BucketKey = tuple[str, ...]
"""("agent", id), ("throttle", id, …), ("tool", id, name), ("human", id),
("chain", root, first agent)."""

LIMIT_NAMES = {
    "agent": "per_agent",
    "throttle": "throttle",
    "tool": "per_tool",
    "human": "per_human",
    "chain": "per_chain",
}
"""The configured limit (its ``rate_limits`` key, or ``throttle``) of each kind of
bucket (a :data:`BucketKey`'s first member)."""

# Limits that pool several agents' calls: a refusal names them (the agent's own are
# the ones an agent expects, and their refusal reason is unchanged).
_POOLED = ("per_human", "per_chain")


def retry_after(wait: float) -> int:
    """A wait in seconds as ``Retry-After`` delay-seconds: rounded up to a whole
    second (the float slack forgiven), at least 1."""
    return max(1, math.ceil(wait - _EPSILON))


@dataclass(frozen=True, slots=True)
class RateRefusal:
    """A call refused by the rate limits: the ``Retry-After`` delay (RFC 9110 section
    10.2.3; whole seconds, at least 1) and the limits whose bucket held no token
    (:data:`LIMIT_NAMES` values, in the order the buckets were checked)."""

    retry_after: int
    limits: tuple[str, ...]

    @classmethod
    def of(cls, wait: float, short: Iterable[BucketKey]) -> RateRefusal:
        """The refusal of a wait (seconds) and the buckets that held no token."""
        return cls(retry_after(wait), tuple(LIMIT_NAMES.get(key[0], key[0]) for key in short))

    @property
    def pooled(self) -> tuple[str, ...]:
        """:func:`pooled_limits` of :attr:`limits`."""
        return pooled_limits(self.limits)


def pooled_limits(limits: Iterable[str]) -> tuple[str, ...]:
    """The limits among ``limits`` that pool several agents (``per_human``,
    ``per_chain``), each once, in that order."""
    given = set(limits)
    return tuple(name for name in _POOLED if name in given)


def refusal_reason(what: str, pooled: Sequence[str] = ()) -> str:
    """The reason of a rate-limit refusal of ``what`` (a tool, route or method name),
    for the 429's body and the audit event: ``rate limit for <what> exceeded``, then
    the pooled limits that refused it, e.g. ``(per_human limit)``. Never the human's
    or the chain's id (the event names the token's subject already)."""
    reason = f"rate limit for {what} exceeded"
    if not pooled:
        return reason
    plural = "s" if len(pooled) > 1 else ""
    return f"{reason} ({' and '.join(pooled)} limit{plural})"


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
    """Token buckets per agent, per (agent, tool), per human and per delegation chain;
    see the module docstring.

    ``take(agent_id, tool, now, human=…, chain=…)`` returns None when the call is
    allowed (its tokens are taken) or a :class:`RateRefusal`; ``check`` returns the
    whole seconds to put in ``Retry-After`` instead.
    """

    def __init__(
        self,
        per_agent: RateLimit | None = None,
        per_tool: Mapping[str, RateLimit] | None = None,
        default_per_tool: RateLimit | None = None,
        *,
        per_human: RateLimit | None = None,
        per_chain: RateLimit | None = None,
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
        for name, value in (
            ("per_agent", per_agent),
            ("default_per_tool", default_per_tool),
            ("per_human", per_human),
            ("per_chain", per_chain),
        ):
            if value is not None and not isinstance(value, RateLimit):
                raise ValueError(f"{name} must be a RateLimit")
        self.per_agent = per_agent
        self.default_per_tool = default_per_tool
        self.per_human = per_human
        self.per_chain = per_chain
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
            per_human: {rate_per_second: 20, burst: 40}
            per_chain: {rate_per_second: 15, burst: 30}
            max_keys: 100000

        Every key is optional; unknown keys are refused (ValueError)."""
        if not isinstance(config, Mapping):
            raise ValueError("rate_limits is a mapping")
        unknown = set(config) - {
            "per_agent",
            "per_tool",
            "default_per_tool",
            "per_human",
            "per_chain",
            "max_keys",
        }
        if unknown:
            raise ValueError(f"unknown rate_limits keys: {', '.join(sorted(map(str, unknown)))}")
        per_tool = config.get("per_tool") or {}
        if not isinstance(per_tool, Mapping):
            raise ValueError("per_tool maps tool-name globs to rate limits")
        return cls(
            per_agent=_optional(config.get("per_agent"), "per_agent"),
            per_tool={str(p): _limit(v, f"per_tool[{p!r}]") for p, v in per_tool.items()},
            default_per_tool=_optional(config.get("default_per_tool"), "default_per_tool"),
            per_human=_optional(config.get("per_human"), "per_human"),
            per_chain=_optional(config.get("per_chain"), "per_chain"),
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

    def buckets(
        self,
        agent_id: str,
        tool: str | None,
        *,
        human: str | None = None,
        chain: tuple[str, str] | None = None,
    ) -> list[tuple[BucketKey, RateLimit]]:
        """The buckets a call by ``agent_id`` to ``tool`` must find a token in, each
        with its limit: the agent's (``per_agent``), its throttle's while one is in
        force, the (agent, tool) one when a per-tool limit applies, the ``human``'s
        (``per_human``) and the ``chain``'s (``per_chain``: its root and first
        agent) when given and configured. Empty: no limit applies. What :meth:`take`
        takes from here, and what replicas sharing their buckets take from Redis
        (``adapters/gateway/shared_ratelimit.py``)."""
        with self._lock:
            return self._wanted(agent_id, tool, human, chain)

    def _wanted(
        self,
        agent_id: str,
        tool: str | None,
        human: str | None = None,
        chain: tuple[str, str] | None = None,
    ) -> list[tuple[BucketKey, RateLimit]]:
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
        if human is not None and self.per_human is not None:
            wanted.append((("human", human), self.per_human))
        if chain is not None and self.per_chain is not None:
            wanted.append((("chain", *chain), self.per_chain))
        return wanted

    def check(
        self,
        agent_id: str,
        tool: str | None,
        now: float,
        *,
        human: str | None = None,
        chain: tuple[str, str] | None = None,
    ) -> float | None:
        """:meth:`take`, answering only the ``Retry-After`` delay: whole seconds (an
        int), at least 1; None when the call is allowed."""
        refused = self.take(agent_id, tool, now, human=human, chain=chain)
        return None if refused is None else refused.retry_after

    def take(
        self,
        agent_id: str,
        tool: str | None,
        now: float,
        *,
        human: str | None = None,
        chain: tuple[str, str] | None = None,
    ) -> RateRefusal | None:
        """Take one token from each bucket that applies to this call
        (:meth:`buckets`) and return None, or take nothing and return the refusal:
        the ``Retry-After`` delay and the limits that held no token. ``tool`` None
        (a call that names no tool) checks no per-tool limit."""
        with self._lock:
            wanted = self._wanted(agent_id, tool, human, chain)
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
                result: RateRefusal | None = None
            else:
                result = RateRefusal.of(
                    max(b.wait(lim) for b, lim in buckets),
                    (
                        key
                        for (key, _), (b, _) in zip(wanted, buckets, strict=True)
                        if not b.has_token()
                    ),
                )
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


def _optional(value: Any, name: str) -> RateLimit | None:
    """An optional limit; ``name`` (its key) prefixes the error of a bad one."""
    if value is None:
        return None
    return _limit(value, name)


def _limit(value: Any, name: str) -> RateLimit:
    try:
        return RateLimit.from_config(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
