"""A bound on the audit events that refusals naming nobody may cost a gateway.

A gateway audits every refusal before it answers (``api.request.rejected``, fsynced in
its spool, shipped and stored by the control plane). A refusal of a request that names
nobody (no token, a token that does not verify, a request malformed before
authentication) costs the sender nothing: without a bound, a client with no credential
could make the gateway write one event per request as fast as it can send, filling the
spool's disk and the trail and drowning what a security team reads in it (log
flooding; OWASP ASVS 5.0 V16.4 "Log Protection", CWE-400 "Uncontrolled Resource
Consumption").

:class:`AnonymousRefusals` keeps the budget of such *anonymous* refusals:

- **Key.** The network peer of the connection (never a header the client sends):
  an IPv4 address; an IPv6 address's /64 network (RFC 4291 section 2.5.1: the
  interface identifier a host picks freely, so one host holds a /64 at least);
  ``unknown`` when the peer is not known (:func:`peer_key`).
- **Budget.** A token bucket per peer (:attr:`AnonymousRefusalLimits.per_peer`) and
  one for all peers together (:attr:`AnonymousRefusalLimits.overall`), the token
  buckets of :mod:`agentiam.core.enforcement.ratelimit`. A refusal that finds a token
  in both takes one from each and is audited on its own, as every refusal was. One
  that does not takes none, gets no event of its own, and is counted in its peer's
  pending summary instead. The client's answer is the same either way: the transport
  renders it before asking, and never learns which it was.
- **Summaries.** :meth:`AnonymousRefusals.drain` hands over every pending summary
  (a :class:`RefusalSummary` per peer: the count, first and last time, counts by
  status and by reason code, the trace ids of the first and last refusal) and starts
  new ones; the gateway writes one event each, every ``summary_seconds`` and at stop.
- **Bounded memory.** At most ``max_peers`` peers are tracked (least recently refused
  forgotten first). A forgotten peer's pending count is folded into the summary of
  the peer ``other``, so no refusal goes uncounted: the refusals audited on their own
  plus the counts of every summary are exactly the anonymous refusals. A forgotten
  peer's bucket comes back full; the overall bucket bounds what that gives a sender
  with many addresses.
- **Reason codes** are the refusal's reason up to its first ``:`` (the OAuth error
  code of an authentication refusal, ``path refused`` ...): the gateway's own words,
  never what the request presented, which a reason may quote after the colon. At most
  :data:`MAX_REASONS` distinct codes per summary, the rest counted under ``other``.

Time is passed in through ``clock`` (seconds, monotonic) and ``wall`` (the times a
summary records). Thread-safe: one lock around each step.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agentiam.core.enforcement.ratelimit import RateLimit, TokenBucket

__all__ = [
    "MAX_REASONS",
    "OTHER",
    "UNKNOWN_PEER",
    "AnonymousRefusalLimits",
    "AnonymousRefusals",
    "RefusalSummary",
    "peer_key",
    "reason_code",
]

MAX_REASONS = 8
"""Distinct reason codes a summary counts apart; the rest are counted as :data:`OTHER`."""

OTHER = "other"
"""The peer of the summary that takes forgotten peers' counts, and the reason code of
the reasons past :data:`MAX_REASONS`."""

UNKNOWN_PEER = "unknown"
"""The key of every refusal whose network peer is not known."""

_MAX_CODE = 64
_SUMMARY_SECONDS = 10.0
_PER_PEER = RateLimit(rate_per_second=1.0, burst=20)
_OVERALL = RateLimit(rate_per_second=20.0, burst=200)
_MAX_PEERS = 10_000
_KEYS = frozenset({"per_peer", "overall", "summary_seconds", "max_peers"})


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AnonymousRefusalLimits:
    """The budget of anonymous refusals audited one by one (see the module)."""

    per_peer: RateLimit = _PER_PEER
    overall: RateLimit = _OVERALL
    summary_seconds: float = _SUMMARY_SECONDS
    max_peers: int = _MAX_PEERS

    @classmethod
    def from_config(cls, value: Any) -> AnonymousRefusalLimits | None:
        """Read ``{per_peer: {rate_per_second, burst}, overall: {...},
        summary_seconds, max_peers}`` (every key optional, unknown keys refused); None
        (or ``"off"``) turns the bound off: every refusal gets its own event. A
        ValueError names the key."""
        if value is None or value == "off":
            return None
        if not isinstance(value, Mapping):
            raise ValueError('a mapping, or null or "off" to audit every refusal on its own')
        unknown = sorted(set(map(str, value)) - _KEYS)
        if unknown:
            raise ValueError(f"unknown keys {', '.join(unknown)}")
        limits = {}
        for name in ("per_peer", "overall"):
            if name in value:
                try:
                    limits[name] = RateLimit.from_config(value[name])
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
                if limits[name].rate_per_second > 1e6 or limits[name].burst > 1_000_000:
                    raise ValueError(f"{name}: at most 1000000 a second and a burst of 1000000")
        seconds = value.get("summary_seconds", _SUMMARY_SECONDS)
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 1 <= seconds <= 3600
        ):
            raise ValueError("summary_seconds: a number between 1 and 3600")
        peers = value.get("max_peers", _MAX_PEERS)
        if isinstance(peers, bool) or not isinstance(peers, int) or not 1 <= peers <= 1_000_000:
            raise ValueError("max_peers: an integer between 1 and 1000000")
        return cls(summary_seconds=float(seconds), max_peers=peers, **limits)


def peer_key(host: str | None) -> str:
    """The budget's key for the network peer ``host`` (an address as the server saw
    it: ASGI ``scope["client"][0]``): the IPv4 address; an IPv4-mapped IPv6 address
    as its IPv4 address; another IPv6 address as its /64 network
    (``2001:db8:1:2::/64``, the zone dropped); :data:`UNKNOWN_PEER` for None or
    anything that is not an IP address (a Unix socket)."""
    if not host:
        return UNKNOWN_PEER
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return UNKNOWN_PEER
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def reason_code(reason: str) -> str:
    """A refusal reason's code: its text before the first ``:`` (see the module),
    stripped and cut to 64 characters; ``other`` when that leaves nothing."""
    return reason.partition(":")[0].strip()[:_MAX_CODE] or OTHER


@dataclass(frozen=True, slots=True)
class RefusalSummary:
    """The anonymous refusals of one peer (or :data:`OTHER`) that got no event of
    their own: ``statuses`` and ``reasons`` are (value, count) pairs, most first."""

    peer: str
    count: int
    first: datetime
    last: datetime
    statuses: tuple[tuple[int, int], ...]
    reasons: tuple[tuple[str, int], ...]
    first_trace_id: str
    last_trace_id: str


@dataclass(slots=True)
class _Tally:
    first: datetime
    first_trace_id: str
    last: datetime
    last_trace_id: str
    count: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    def add_reason(self, code: str, count: int) -> None:
        if code not in self.reasons and len(self.reasons) >= MAX_REASONS:
            code = OTHER
        self.reasons[code] = self.reasons.get(code, 0) + count

    def fold(self, other: _Tally) -> None:
        """Add ``other``'s counts (a forgotten peer's) to this one's."""
        self.count += other.count
        if other.first < self.first:
            self.first, self.first_trace_id = other.first, other.first_trace_id
        if other.last >= self.last:
            self.last, self.last_trace_id = other.last, other.last_trace_id
        for status, n in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        for code, n in other.reasons.items():
            self.add_reason(code, n)

    def summary(self, peer: str) -> RefusalSummary:
        return RefusalSummary(
            peer=peer,
            count=self.count,
            first=self.first,
            last=self.last,
            statuses=tuple(sorted(self.statuses.items(), key=lambda kv: (-kv[1], kv[0]))),
            reasons=tuple(sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
            first_trace_id=self.first_trace_id,
            last_trace_id=self.last_trace_id,
        )


@dataclass(slots=True)
class _Peer:
    bucket: TokenBucket
    pending: _Tally | None = None


class AnonymousRefusals:
    """The budget of one gateway's anonymous refusals (see the module)."""

    def __init__(
        self,
        limits: AnonymousRefusalLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._peers: OrderedDict[str, _Peer] = OrderedDict()  # least recently refused first
        self._overall = TokenBucket(limits.overall, clock())
        self._other: _Tally | None = None  # forgotten peers' pending counts
        self._audited = 0
        self._summarized: dict[int, int] = {}  # by status, since start

    def admit(self, host: str | None, *, status: int, reason: str, trace_id: str) -> bool:
        """True: the refusal is within the budget and must be audited on its own (a
        token was taken from its peer's bucket and the overall one). False: it is
        counted in its peer's pending summary instead."""
        key = peer_key(host)
        limits = self.limits
        with self._lock:
            now = self._clock()
            peer = self._peers.get(key)
            if peer is None:
                peer = self._peers[key] = _Peer(TokenBucket(limits.per_peer, now))
                self._forget_beyond_bound()
            else:
                self._peers.move_to_end(key)
                peer.bucket.refill(limits.per_peer, now)
            self._overall.refill(limits.overall, now)
            if peer.bucket.has_token() and self._overall.has_token():
                peer.bucket.tokens -= 1.0
                self._overall.tokens -= 1.0
                self._audited += 1
                return True
            at = self._wall()
            tally = peer.pending
            if tally is None:
                tally = peer.pending = _Tally(at, trace_id, at, trace_id)
            tally.count += 1
            tally.last, tally.last_trace_id = at, trace_id
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
            tally.add_reason(reason_code(reason), 1)
            self._summarized[status] = self._summarized.get(status, 0) + 1
            return False

    def _forget_beyond_bound(self) -> None:
        while len(self._peers) > self.limits.max_peers:
            _, gone = self._peers.popitem(last=False)
            if gone.pending is not None:
                if self._other is None:
                    self._other = gone.pending
                else:
                    self._other.fold(gone.pending)

    def drain(self) -> list[RefusalSummary]:
        """Every pending summary (each peer with refusals counted since the last
        drain, then :data:`OTHER`'s), reset to nothing pending."""
        out: list[RefusalSummary] = []
        with self._lock:
            for key, peer in self._peers.items():
                if peer.pending is not None:
                    out.append(peer.pending.summary(key))
                    peer.pending = None
            if self._other is not None:
                out.append(self._other.summary(OTHER))
                self._other = None
        return out

    @property
    def audited(self) -> int:
        """Anonymous refusals let through to be audited on their own, since start."""
        with self._lock:
            return self._audited

    def summarized(self) -> dict[int, int]:
        """Anonymous refusals counted in a summary instead, by status, since start."""
        with self._lock:
            return dict(self._summarized)

    def pending(self) -> int:
        """Refusals counted in summaries not yet drained."""
        with self._lock:
            held = sum(p.pending.count for p in self._peers.values() if p.pending is not None)
            return held + (self._other.count if self._other is not None else 0)

    def __len__(self) -> int:
        """Peers tracked now (at most ``max_peers``)."""
        with self._lock:
            return len(self._peers)
