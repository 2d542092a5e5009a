"""Key sets of trusted external issuers, and the verifier of their subject tokens.

:class:`JwksCache` holds each :class:`~agentiam.core.delegation.issuers.TrustedIssuer`'s
JWK Set (RFC 7517 section 5). A static ``jwks`` is used as configured. A ``jwks_uri``
(OIDC Discovery section 3) is fetched through :func:`~agentiam.adapters.outbound.fetch_json`,
so every fetch is SSRF-vetted, pinned to the vetted address and bounded in time and size:

* a set is refetched once it is ``ttl`` seconds old;
* a token naming a ``kid`` the set does not hold triggers a refetch (the IdP may have
  rotated keys, OIDC Core section 10.1.1), but fetches for one issuer happen at most
  once per ``min_refetch_seconds`` whatever the trigger, so a flood of tokens with
  bogus ``kid`` values cannot turn into a flood of requests to the IdP;
* when a fetch fails the last good set stays in use until it is ``max_age`` seconds
  old; after that :meth:`JwksCache.keys_for` fails closed with :class:`JwksUnavailable`;
* fetched keys are validated: public keys only (a set publishing private material is
  rejected whole), RSA of at least 2048 bits, EC P-256 or OKP Ed25519.

One lock per issuer serialises its fetches. A caller whose ``kid`` the cached set holds
never waits for a fetch in flight; one that lacks a set or its ``kid`` waits for it (at
most the fetch ``timeout``) rather than failing while the answer is on its way.

:class:`ExternalTokenVerifier` is the facade a token-exchange service (RFC 8693) calls:
it routes a subject token to its issuer by the unverified ``iss``, gets that issuer's
keys here and runs :func:`~agentiam.core.delegation.issuers.verify_external_token`.

Not to be confused with :class:`agentiam.adapters.verification.JwksCache`, which caches
AgentIAM's own signing keys for remote enforcement points.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import httpx

from agentiam.adapters.outbound import (
    DEFAULT_MAX_BYTES,
    OutboundError,
    Resolver,
    fetch_json,
)
from agentiam.core.credentials.jose import JoseRejected, parse_compact
from agentiam.core.delegation.issuers import (
    MAX_TOKEN_LENGTH,
    SUBJECT_TOKEN_PROFILE,
    ExternalSubject,
    IssuerKeySet,
    TrustedIssuer,
    parse_jwks,
    parse_subject_token,
    verify_external_token,
)
from agentiam.errors import ServiceUnavailable

__all__ = ["ExternalTokenVerifier", "JwksCache", "JwksUnavailable"]

log = logging.getLogger("agentiam.jwks")


class JwksUnavailable(ServiceUnavailable):
    """No usable key set for an issuer: never fetched successfully, or the last good
    set is older than ``max_age``. Fail closed (503); the message is safe to log."""


@dataclass
class _Entry:
    jwks_uri: str
    allow_private_network: bool
    current: tuple[IssuerKeySet, float] | None = None  # last good set, when fetched
    attempted_at: float | None = None  # last attempt, successful or not
    error: str | None = None  # why the last attempt failed
    fetches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class JwksCache:
    """Thread-safe cache of trusted issuers' key sets; see the module docstring.

    ``now`` passed to :meth:`keys_for` is any clock in seconds that does not jump
    (``time.monotonic()`` in production); the token's own time checks use wall-clock
    time separately. ``timeout``, ``max_bytes``, ``resolver``, ``ssl_context`` and
    ``transport`` go to :func:`~agentiam.adapters.outbound.fetch_json`."""

    def __init__(
        self,
        *,
        ttl: float = 300.0,
        min_refetch_seconds: float = 30.0,
        max_age: float = 3600.0,
        timeout: float = 5.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        resolver: Resolver = socket.getaddrinfo,
        ssl_context: ssl.SSLContext | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not 0 <= min_refetch_seconds <= ttl <= max_age:
            raise ValueError("need 0 <= min_refetch_seconds <= ttl <= max_age")
        self._ttl = ttl
        self._min_refetch = min_refetch_seconds
        self._max_age = max_age
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._resolver = resolver
        self._ssl_context = ssl_context
        self._transport = transport
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def fetch_count(self, issuer: TrustedIssuer) -> int:
        """How many fetches of ``issuer``'s ``jwks_uri`` were attempted (for metrics)."""
        entry = self._entries.get(issuer.issuer)
        return entry.fetches if entry else 0

    def _entry(self, issuer: TrustedIssuer) -> _Entry:
        assert issuer.jwks_uri is not None
        with self._lock:
            entry = self._entries.get(issuer.issuer)
            if (
                entry is None
                or entry.jwks_uri != issuer.jwks_uri
                or entry.allow_private_network != issuer.allow_private_network
            ):  # new issuer or changed configuration: start afresh
                entry = _Entry(issuer.jwks_uri, issuer.allow_private_network)
                self._entries[issuer.issuer] = entry
            return entry

    def _wants_fetch(self, entry: _Entry, kid: str | None, now: float) -> bool:
        if entry.attempted_at is not None and now - entry.attempted_at < self._min_refetch:
            return False  # rate limit: at most one attempt per min_refetch_seconds
        current = entry.current
        if current is None:
            return True
        if now - current[1] >= self._ttl:
            return True
        return kid is not None and kid not in current[0].kids

    def _lacks(self, entry: _Entry, kid: str | None, now: float) -> bool:
        """Whether the cached set cannot serve this call as it stands."""
        current = entry.current
        if current is None or now - current[1] > self._max_age:
            return True
        return kid is not None and kid not in current[0].kids

    def _fetch(self, entry: _Entry, now: float) -> None:
        entry.attempted_at = now
        entry.fetches += 1
        try:
            document = fetch_json(
                entry.jwks_uri,
                allow_private_network=entry.allow_private_network,
                timeout=self._timeout,
                max_bytes=self._max_bytes,
                resolver=self._resolver,
                transport=self._transport,
                ssl_context=self._ssl_context,
            )
            keys = parse_jwks(document, strict=False)
        except (OutboundError, JoseRejected) as exc:
            entry.error = str(exc)
            log.warning("JWKS fetch from %s failed: %s", entry.jwks_uri, exc)
            return
        entry.current, entry.error = (keys, now), None  # one assignment: readers see both

    def keys_for(self, issuer: TrustedIssuer, kid: str | None, *, now: float) -> IssuerKeySet:
        """``issuer``'s current key set, fetched or refetched as the rules above say.

        ``kid`` is the token's header ``kid``; an unknown one may trigger a
        (rate-limited) refetch. The set returned may still lack it: the verifier then
        refuses the token. Raise :class:`JwksUnavailable` if there is no set younger
        than ``max_age``."""
        if issuer.static_keys is not None:
            return issuer.static_keys
        entry = self._entry(issuer)
        if self._wants_fetch(entry, kid, now) or (
            entry.lock.locked() and self._lacks(entry, kid, now)
        ):  # a fetch is due, or one is in flight that may bring what we lack: wait for it
            with entry.lock:
                if self._wants_fetch(entry, kid, now):  # nobody fetched while we waited
                    self._fetch(entry, now)
        current = entry.current
        if current is None:
            raise JwksUnavailable(
                f"no key set for issuer {issuer.issuer[:100]!r} yet: {entry.error or 'not fetched'}"
            )
        keys, fetched_at = current
        if now - fetched_at > self._max_age:
            raise JwksUnavailable(
                f"key set for issuer {issuer.issuer[:100]!r} is older than {self._max_age:g} s"
                f" and cannot be refreshed: {entry.error or 'rate limited'}"
            )
        return keys


class ExternalTokenVerifier:
    """Verifies subject tokens from the configured trusted issuers (RFC 8693 section
    2.1 ``subject_token``) and says which issuer vouched for them.

    ``skew`` is the clock tolerance for ``exp``/``nbf``/``iat``; ``monotonic`` is the
    cache's clock."""

    def __init__(
        self,
        issuers: Iterable[TrustedIssuer],
        cache: JwksCache | None = None,
        *,
        skew: int = 60,
        max_length: int = MAX_TOKEN_LENGTH,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuers: dict[str, TrustedIssuer] = {}
        for issuer in issuers:
            if issuer.issuer in self._issuers:
                raise ValueError(f"issuer {issuer.issuer[:100]!r} is configured twice")
            self._issuers[issuer.issuer] = issuer
        self._cache = cache or JwksCache()
        self._skew = skew
        self._max_length = max_length
        self._monotonic = monotonic
        self._profile = replace(SUBJECT_TOKEN_PROFILE, max_length=max_length)

    @property
    def issuers(self) -> tuple[TrustedIssuer, ...]:
        return tuple(self._issuers.values())

    def verify(self, token: str, *, now: int) -> tuple[TrustedIssuer, ExternalSubject]:
        """Route ``token`` by its unverified ``iss`` and verify it fully; ``now`` is the
        current Unix time. Raise :class:`~agentiam.core.credentials.jose.JoseRejected`
        for a bad or untrusted token ("untrusted issuer" when ``iss`` is not
        configured) and :class:`JwksUnavailable` when the issuer's keys cannot be had
        (a server-side condition: answer it as temporarily unavailable, not as a bad
        token)."""
        unverified = parse_compact(token, self._profile)  # structural checks, with reasons
        iss = unverified.claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise JoseRejected("untrusted issuer")
        parsed = parse_subject_token(token, issuer, max_length=self._max_length)
        keys = self._cache.keys_for(issuer, parsed.kid, now=self._monotonic())
        subject = verify_external_token(
            token, issuer, keys, now=now, skew=self._skew, max_length=self._max_length
        )
        return issuer, subject
