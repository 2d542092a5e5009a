"""Revoked access tokens, as the verifiers hold them in memory.

Two shapes of entry (RFC 7009 describes the first; the rest are ours):

* a token, by ``jti``: kept until the token's own ``exp``. A delegated token lists
  the jtis it was derived from (``delegation.lineage``), and is refused when any of
  them is revoked, so revoking a token revokes every token derived from it;
* a cut-off for a party: every token issued at or before the cut-off (compared in
  whole seconds, as ``iat`` is) that involves the party is refused. The party is an
  agent (the token's client, or any actor in its ``act`` chain; suspending or
  decommissioning an agent writes one), a human (every token acting for them: "revoke
  all of this human's delegations"), or a delegation grant (every token issued under
  it);
* a retired signing key, by ``kid``: every token whose JOSE header names it is
  refused, whenever it was issued (``agentiam keys retire``, a suspected compromise:
  a replica that had not yet re-read the key ring may still have signed with it a
  moment after the retirement). The entry lets a verifier refuse the key within the
  feed's latency whatever its copy of the JWKS (RFC 7517 section 5) still says, and
  tells it to re-read that copy; it is kept as long as the key's tokens may live.

The feed's readers name the kinds they understand (``BASE_KINDS`` is what every
reader has always understood, the default): one that predates an entry kind is not
sent it, so a new kind never breaks an old reader.

:class:`RevocationSet` is what a verifier consults on every request. It never reads a
database: a feed keeps it fresh (see ``services/credentials.py`` and the remote client
in ``adapters/verification``), and if the feed has not succeeded for ``max_staleness``
seconds the set reports itself stale and the verifier refuses every token: it fails
closed rather than miss a revocation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "BASE_KINDS",
    "MAX_CLOCK_SKEW",
    "MAX_TOKEN_LIFETIME",
    "Revocation",
    "RevocationKind",
    "RevocationSet",
    "parties_of",
    "staleness_clock",
]

# The largest clock skew a verifier may allow (``clock_skew_seconds``): a token is
# accepted until its ``exp`` plus the skew, so an entry revoking it is kept that long.
MAX_CLOCK_SKEW = 120

# No access token lives longer than this (the lifetime cap plus the largest clock
# skew), so no revocation entry needs to be kept longer.
MAX_TOKEN_LIFETIME = 3600 + MAX_CLOCK_SKEW


def parties_of(subject: str, actors: Iterable[str], grant_id: str | None) -> tuple[str, ...]:
    """Everyone besides its client whose cut-off revokes a token: its subject, every
    actor of its delegation chain, and the grant it was issued under."""
    return (subject, *actors, *((grant_id,) if grant_id else ()))


class RevocationKind(StrEnum):
    TOKEN = "token"  # noqa: S105 - a kind name, not a secret
    AGENT = "agent"
    HUMAN = "human"
    GRANT = "grant"
    SIGNING_KEY = "signing_key"


# The kinds every reader of the feed understands, including those that predate
# ``signing_key``: what the feed serves a reader that does not name its kinds.
BASE_KINDS = frozenset(
    {RevocationKind.TOKEN, RevocationKind.AGENT, RevocationKind.HUMAN, RevocationKind.GRANT}
)


@dataclass(frozen=True, slots=True)
class Revocation:
    """One entry of the revocation feed. ``seq`` orders the feed; ``expires`` (epoch
    seconds) is when the entry can be forgotten because no token it covers is alive."""

    seq: int
    kind: RevocationKind
    subject: str  # the jti, the agent, human or grant id, or the signing key's kid
    # cut-off entries: tokens with iat <= cutoff are revoked; a token or a signing key:
    # when it was revoked (informational)
    cutoff: int
    expires: int


_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)  # Linux


def staleness_clock() -> float:
    """Seconds on the clock staleness bounds are measured with (how long the control
    plane has been away, how old a feed is): CLOCK_BOOTTIME where the system has it,
    which never goes back and also counts time the host spent suspended, so a suspend
    cannot stretch the outage bound; ``time.monotonic`` elsewhere."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


class RevocationSet:
    """A thread-safe, bounded-by-expiry, in-memory view of the revocation feed."""

    def __init__(
        self,
        *,
        max_staleness: float,
        monotonic: Callable[[], float] = staleness_clock,
    ) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, int] = {}
        # agent, human and grant ids (their prefixes keep them apart): (cutoff, expires)
        self._cutoffs: dict[str, tuple[int, int]] = {}
        self._kids: dict[str, int] = {}  # retired signing keys: kid -> expires
        self._cursor = 0
        self._kind_cursors: dict[RevocationKind, int] = {}  # the highest seq, per kind
        self._next_expiry: int | None = None  # the earliest expiry held
        self._max_staleness = max_staleness
        self._monotonic = monotonic
        self._fresh_at: float | None = None

    @property
    def cursor(self) -> int:
        """The highest ``seq`` applied: the feed is read after it."""
        return self._cursor

    def cursor_for(self, kinds: Iterable[RevocationKind]) -> int:
        """The highest ``seq`` applied among entries of ``kinds``: a reader that
        understands only those has nothing new while its cursor is at or past it."""
        cursors = self._kind_cursors
        return max((cursors.get(kind, 0) for kind in kinds), default=0)

    def apply(self, entries: Iterable[Revocation], *, now: int) -> None:
        """Add feed entries (idempotent) and drop those past their expiry."""
        with self._lock:
            for entry in entries:
                if entry.kind is RevocationKind.TOKEN:
                    self._tokens[entry.subject] = max(
                        entry.expires, self._tokens.get(entry.subject, 0)
                    )
                elif entry.kind is RevocationKind.SIGNING_KEY:
                    self._kids[entry.subject] = max(entry.expires, self._kids.get(entry.subject, 0))
                else:
                    cutoff, expires = self._cutoffs.get(entry.subject, (0, 0))
                    self._cutoffs[entry.subject] = (
                        max(cutoff, entry.cutoff),
                        max(expires, entry.expires),
                    )
                self._cursor = max(self._cursor, entry.seq)
                self._kind_cursors[entry.kind] = max(
                    self._kind_cursors.get(entry.kind, 0), entry.seq
                )
                if self._next_expiry is None or entry.expires < self._next_expiry:
                    self._next_expiry = entry.expires
            # The feed is applied every poll; rebuild only when something has expired.
            if self._next_expiry is not None and self._next_expiry <= now:
                self._tokens = {k: v for k, v in self._tokens.items() if v > now}
                self._cutoffs = {k: v for k, v in self._cutoffs.items() if v[1] > now}
                self._kids = {k: v for k, v in self._kids.items() if v > now}
                expiries = [
                    *self._tokens.values(),
                    *(e for _, e in self._cutoffs.values()),
                    *self._kids.values(),
                ]
                self._next_expiry = min(expiries, default=None)

    def mark_fresh(self) -> None:
        """Record a successful read of the feed (even one with no new entries)."""
        self._fresh_at = self._monotonic()

    def seconds_since_fresh(self) -> float | None:
        """Seconds since the last successful read of the feed (None: never)."""
        fresh_at = self._fresh_at
        return None if fresh_at is None else self._monotonic() - fresh_at

    def is_stale(self) -> bool:
        since = self.seconds_since_fresh()
        return since is None or since > self._max_staleness

    def is_revoked(
        self,
        *,
        jti: str,
        agent_id: str,
        issued_at: int,
        lineage: Iterable[str] = (),
        parties: Iterable[str] = (),
    ) -> bool:
        """Is a token revoked: itself or any token in its ``lineage`` by jti, or its
        client ``agent_id`` or any of its other ``parties`` (actors, the human it acts
        for, its grant) by a cut-off at or after its ``issued_at``?"""
        tokens, cutoffs = self._tokens, self._cutoffs
        if jti in tokens or any(j in tokens for j in lineage):
            return True
        cut = cutoffs.get(agent_id)
        if cut is not None and issued_at <= cut[0]:
            return True
        for party in parties:
            cut = cutoffs.get(party)
            if cut is not None and issued_at <= cut[0]:
                return True
        return False

    def is_key_retired(self, kid: str) -> bool:
        """Has the signing key ``kid`` been retired (every token it signed refused)?"""
        return kid in self._kids

    def __len__(self) -> int:
        return len(self._tokens) + len(self._cutoffs) + len(self._kids)
