"""A verifier for enforcement points that run apart from the control plane.

It keeps two things fresh in the background and never calls out on the request path
except to learn a key it has not seen:

* :class:`JwksCache`: the control plane's JWKS, re-read every ``max_age`` seconds and at
  most once per ``min_refresh_interval`` when a token names an unknown ``kid`` (so a
  stream of bogus kids cannot turn into a stream of fetches). Each key's algorithm is
  pinned from its JWK ``alg``; keys without an allowed ``alg`` are ignored, and so are
  keys the revocation feed says are retired.
* :class:`RevocationFeedClient`: a long poll on
  ``GET /v1/revocations?after=&wait=&kinds=``; each answer is applied to the in-memory
  :class:`~agentiam.core.credentials.revocations.RevocationSet` and marks it fresh. The
  control plane answers a waiting poll within its own poll interval (0.25 s) of a
  revocation, so verifiers learn of it well within one second. If the feed fails for
  longer than the set's ``max_staleness``, verification fails closed.

A signing key's retirement comes by the same feed (kind ``signing_key``, named in
``kinds``): from the answer that brings it, the key is refused (the revocation set
says so, whatever the JWKS copy held says and whether or not it can be re-read), it
leaves the key set, and :attr:`RemoteVerifier.keys_changed` is set so the JWKS is
re-read. A control plane that predates this answers without ``kinds``
(:attr:`RevocationFeedClient.pushes_key_retirements` stays False): a retirement there
reaches the verifier only by a JWKS re-read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from agentiam.core.credentials.jose import JoseRejected, VerificationKey, import_public_jwk
from agentiam.core.credentials.nonces import NonceIssuer
from agentiam.core.credentials.revocations import (
    Revocation,
    RevocationKind,
    RevocationSet,
    staleness_clock,
)
from agentiam.core.credentials.verifier import AccessTokenVerifier, VerifierConfig

__all__ = ["JwksCache", "RemoteVerifier", "RevocationFeedClient"]

log = logging.getLogger("agentiam.verification")
_MAX_DOCUMENT = 256 * 1024


def _get_json(http: httpx.Client, url: str, **kwargs: Any) -> Any:
    response = http.get(url, **kwargs)
    response.raise_for_status()
    if len(response.content) > _MAX_DOCUMENT:
        raise ValueError(f"{url} answered more than {_MAX_DOCUMENT} bytes")
    return response.json()


class JwksCache:
    def __init__(
        self,
        jwks_url: str,
        http: httpx.Client,
        *,
        max_age: float = 30.0,
        min_refresh_interval: float = 5.0,
        max_stale: float | None = None,
        background: bool = False,
        monotonic: Callable[[], float] = staleness_clock,
        retired: Callable[[str], bool] | None = None,
    ) -> None:
        """``retired``: whether the revocation feed says a ``kid`` is retired; such a
        key is never served nor kept, whatever the JWKS lists (a replica that has not
        caught up may still list it). Keys older than ``max_age`` are re-fetched;
        while that fails they are still served until ``max_stale`` (default:
        ``max_age``) after the last good fetch, then no key is (fail closed). A
        fetch is tried at most once per ``min_refresh_interval``, and while a usable
        copy exists only one caller waits for it: the others go on with the copy.
        With ``background``, no caller ever waits (an event loop must not): the
        fetch runs on a thread of its own and callers get what is usable now (an
        unknown ``kid`` is refused until the fetch has brought it); the first fetch
        is :meth:`refresh`, called at start."""
        self._url = jwks_url
        self._http = http
        self._max_age = max_age
        self._max_stale = max(max_age, max_stale if max_stale is not None else max_age)
        self._min_interval = min_refresh_interval
        self._monotonic = monotonic
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._background = background
        self._retired = retired if retired is not None else _never
        self._lock = threading.Lock()

    def refresh(self) -> None:
        document = _get_json(self._http, self._url)
        keys: dict[str, VerificationKey] = {}
        for jwk in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
                continue
            if self._retired(jwk["kid"]):
                continue
            try:
                keys[jwk["kid"]] = import_public_jwk(jwk, str(jwk.get("alg")), kid=jwk["kid"])
            except JoseRejected:
                continue
        self._keys = keys
        self._fetched_at = self._monotonic()

    def age(self) -> float | None:
        """Seconds since the last successful fetch (None before the first)."""
        fetched = self._fetched_at
        return None if fetched is None else self._monotonic() - fetched

    def forget(self, kids: Iterable[str]) -> None:
        """Drop ``kids`` from the copy held (retired: the feed said so)."""
        gone = set(kids)
        self._keys = {kid: key for kid, key in self._keys.items() if kid not in gone}

    def get(self, kid: str) -> VerificationKey | None:
        if self._retired(kid):
            return None  # refused, and no reason to fetch
        now = self._monotonic()
        fetched = self._fetched_at
        key = self._keys.get(kid)
        stale = fetched is None or now - fetched > self._max_age
        may_refetch = fetched is None or now - fetched > self._min_interval
        if (stale or (key is None and may_refetch)) and self._may_attempt(now):
            usable = fetched is not None and now - fetched <= self._max_stale
            # With a usable copy, a caller that finds a fetch under way does not wait.
            if self._background:
                self._refresh_in_background(fetched, now)
            elif self._lock.acquire(blocking=not usable):
                try:
                    # nobody refreshed (or tried to) while we waited
                    if self._fetched_at == fetched and self._may_attempt(now):
                        self._attempted_at = now
                        try:
                            self.refresh()
                        except (httpx.HTTPError, ValueError):
                            log.warning("JWKS refresh failed", exc_info=True)
                finally:
                    self._lock.release()
        fetched = self._fetched_at
        if fetched is None or self._monotonic() - fetched > self._max_stale:
            return None  # no copy recent enough: fail closed
        return self._keys.get(kid)

    def _refresh_in_background(self, fetched: float | None, now: float) -> None:
        if not self._lock.acquire(blocking=False):
            return  # a fetch is under way
        if self._fetched_at != fetched or not self._may_attempt(now):
            self._lock.release()
            return
        self._attempted_at = now

        def run() -> None:
            try:
                self.refresh()
            except (httpx.HTTPError, ValueError):
                log.warning("JWKS refresh failed", exc_info=True)
            finally:
                self._lock.release()

        threading.Thread(target=run, daemon=True, name="jwks-refresh").start()

    def _may_attempt(self, now: float) -> bool:
        attempted = self._attempted_at
        return attempted is None or now - attempted >= self._min_interval


def _never(kid: str) -> bool:
    return False


# Every kind this reader understands, named on each poll (``?kinds=``).
_KINDS = ",".join(sorted(k.value for k in RevocationKind))


class RevocationFeedClient:
    def __init__(
        self,
        base_url: str,
        admin_key: str,
        revoked: RevocationSet,
        *,
        wait: float = 10.0,
        retry_delay: float = 0.5,
        http: httpx.Client | None = None,
        on_keys_retired: Callable[[list[str]], None] | None = None,
    ) -> None:
        """``on_keys_retired``: called on the polling thread, after an answer that
        retires signing keys is applied, with their kids (keep it short: the next
        poll waits for it)."""
        self._url = base_url.rstrip("/") + "/v1/revocations"
        self._revoked = revoked
        self._on_keys_retired = on_keys_retired
        # Whether the control plane's last answer said it pushes key retirements.
        self.pushes_key_retirements = False
        self._wait = wait
        self._retry = retry_delay
        self._http = http or httpx.Client(
            headers={"Authorization": f"Bearer {admin_key}"}, timeout=wait + 10
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self, wait: float) -> int:
        """One long poll; returns how many entries were applied."""
        body = _get_json(
            self._http,
            self._url,
            params={"after": self._revoked.cursor, "wait": wait, "kinds": _KINDS},
        )
        entries = [
            Revocation(
                seq=int(e["seq"]),
                kind=RevocationKind(e["kind"]),
                subject=str(e["subject"]),
                cutoff=int(e["cutoff"]),
                expires=int(e["expires"]),
            )
            for e in body["entries"]
        ]
        self._revoked.apply(entries, now=int(time.time()))
        self._revoked.mark_fresh()
        served = body.get("kinds")
        self.pushes_key_retirements = (
            isinstance(served, list) and RevocationKind.SIGNING_KEY.value in served
        )
        kids = [e.subject for e in entries if e.kind is RevocationKind.SIGNING_KEY]
        if kids and self._on_keys_retired is not None:
            self._on_keys_retired(kids)
        return len(entries)

    def start(self) -> None:
        """Read the whole feed once (so the first request sees every revocation),
        then keep long-polling in a daemon thread."""
        while self.poll_once(0):
            pass
        self._thread = threading.Thread(target=self._run, daemon=True, name="revocation-feed")
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.poll_once(self._wait)
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    log.warning("revocation feed poll failed; retrying", exc_info=True)
                    self._stop.wait(self._retry)
        finally:
            self._http.close()

    def stop(self) -> None:
        """Stop polling. A poll in flight is abandoned (the thread is a daemon and
        exits when its request returns); closing does not wait for it."""
        self._stop.set()
        if self._thread is None:
            self._http.close()
        else:
            self._thread.join(timeout=0.5)


class RemoteVerifier:
    """Everything a remote enforcement point needs, wired: ``verifier.verify_request``
    on the hot path, background refresh of keys and revocations."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        admin_key: str,
        max_staleness: float = 30.0,
        accept_bearer: bool = False,
        feed_wait: float = 10.0,
        background_keys: bool = False,
        http: httpx.Client | None = None,
        monotonic: Callable[[], float] = staleness_clock,
        nonces: NonceIssuer | None = None,
    ) -> None:
        """``max_staleness``: how long the revocation set and the key set may go
        without a successful read of the control plane before every token is
        refused; ``feed_wait``: how long one revocation long poll is held (keep it
        well under ``max_staleness``: a held poll is not a sign of life);
        ``background_keys``: never fetch the JWKS on a verifying thread (see
        :class:`JwksCache`); ``monotonic``: the revocation set's clock; ``nonces``:
        require a current nonce of this issuer in every proof (RFC 9449 section 9),
        None for none."""
        self._http = http or httpx.Client(timeout=10)
        metadata = _get_json(
            self._http, issuer.rstrip("/") + "/.well-known/oauth-authorization-server"
        )
        if metadata.get("issuer") != issuer.rstrip("/"):
            raise ValueError("authorization server metadata names another issuer")
        self.revoked = RevocationSet(max_staleness=max_staleness, monotonic=monotonic)
        self.keys = JwksCache(
            metadata["jwks_uri"],
            self._http,
            max_stale=max_staleness,
            background=background_keys,
            retired=self.revoked.is_key_retired,
        )
        # Set when the feed retires a signing key: whoever keeps the JWKS fresh (the
        # gateway link's key thread) re-reads it now.
        self.keys_changed = threading.Event()
        self.feed = RevocationFeedClient(
            issuer,
            admin_key,
            self.revoked,
            wait=feed_wait,
            on_keys_retired=self._keys_retired,
        )
        self.verifier = AccessTokenVerifier(
            VerifierConfig(
                issuer=issuer.rstrip("/"),
                audience=audience,
                accept_bearer=accept_bearer,
                require_nonce=nonces is not None,
            ),
            self.keys,
            self.revoked,
            nonces=nonces,
        )

    def _keys_retired(self, kids: list[str]) -> None:
        self.keys.forget(kids)
        self.keys_changed.set()

    def start(self) -> RemoteVerifier:
        self.keys.refresh()
        self.feed.start()
        return self

    def close(self) -> None:
        self.feed.stop()
        self._http.close()
