"""An enforcement point's link to the control plane: everything it decides from,
cached locally and kept fresh by the control plane's pushes.

* **Tokens**: :class:`~agentiam.adapters.verification.RemoteVerifier` (the JWKS, and
  the revocation feed as a long poll: a revocation reaches the gateway within the
  control plane's poll interval, well under a second). A signing key the control
  plane retires (``agentiam keys retire``, a suspected compromise) comes by that same
  feed, from whichever replica the gateway polls: every token it signed is refused
  from the answer that names it, open streams' included (their watch asks
  :meth:`~agentiam.core.credentials.verifier.AccessTokenVerifier.still_valid`), and
  the JWKS (RFC 7517 section 5) is re-read at once on a thread of its own. Apart from
  that, the thread re-reads the JWKS every ``keys_seconds`` (60 s, at most a quarter
  of the outage bound) as a safety net; a token naming a key it has not seen yet (a
  rotation) makes it fetch the JWKS then
  (:class:`~agentiam.adapters.verification.JwksCache`). A control plane that does not
  push retirements (an older release: its feed answers without ``kinds``) gets the
  former every-second re-read (``LEGACY_KEYS_SECONDS``) instead.
* **Policy and entities**: a long poll on ``GET /v1/enforcement/bundle`` that the
  control plane answers as soon as the policy set or the registry changes; the bundle
  becomes a local :class:`~agentiam.core.policy.authorizer.Authorizer`, so a decision
  never leaves the process. An enforcement point that knows resources the catalog
  does not (the MCP gateway: the tools its upstreams list) installs a ``derive``
  step (:meth:`ControlPlaneLink.derive_with`): every bundle's entities go through it
  before they are swapped in, and :meth:`ControlPlaneLink.rederive` applies it again
  when what it derives from changes, so no decision ever sees a bundle's entities
  without the derived ones.
* **Policy changes** (:meth:`ControlPlaneLink.watch_policy`): a bundle changes for
  many reasons (a catalog or registry edit, a risk score, a throttle); only a new
  ``policy_version`` means the policy set (or its schema extension) changed, since
  the control plane makes a new version of the set for every such change and for
  nothing else (``services/policies.py``). The watchers are told of that, once the
  new policy is in force, so the MCP gateway can tell agents their lists may have
  changed.
* **Throttles** (the ``throttle`` response action, docs/response.md) ride in the
  bundle and are installed in the gateway's rate limiter (``limiter``) as each bundle
  loads: a throttle reaches the gateway as fast as a policy change.
* **Outage bound**: while the control plane cannot be reached, decisions go on from
  the cached bundle and revocation set for ``outage_seconds`` (default 300) after the
  last successful contact; past that, :meth:`ControlPlaneLink.authorizer` raises and
  the gateway refuses every call (503): it fails closed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from agentiam.adapters.verification import RemoteVerifier
from agentiam.core.credentials.nonces import NonceIssuer
from agentiam.core.credentials.revocations import staleness_clock
from agentiam.core.credentials.verifier import AccessTokenVerifier
from agentiam.core.enforcement.ratelimit import RateLimiter
from agentiam.core.policy.authorizer import Authorizer
from agentiam.core.policy.bundle import load_bundle, risk_of, throttles_of, time_zone_of
from agentiam.core.policy.entities import EntitySnapshot
from agentiam.core.policy.model import EntityRef
from agentiam.errors import ServiceUnavailable

__all__ = ["ControlPlaneLink"]

log = logging.getLogger("agentiam.gateway")

_MAX_BUNDLE = 64 * 1024 * 1024
# seconds: the JWKS is re-read this often, on a thread of its own (requests never
# fetch it), as a safety net: a retirement is pushed by the revocation feed
KEYS_SECONDS = 60.0
# seconds: the re-read interval while the control plane does not push retirements
# (an older release), so that a retired key still leaves within about a second
LEGACY_KEYS_SECONDS = 1.0


class ControlPlaneLink:
    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        admin_key: str,
        outage_seconds: float = 300.0,
        wait: float = 20.0,
        monotonic: Callable[[], float] = staleness_clock,
        http: httpx.Client | None = None,
        limiter: RateLimiter | None = None,
        keys_seconds: float = KEYS_SECONDS,
        nonces: NonceIssuer | None = None,
    ) -> None:
        """``issuer`` is the control plane's URL, ``audience`` this gateway's resource
        URL (tokens must name it), ``admin_key`` a ``verifier``-role key, ``limiter``
        the rate limiter the bundle's throttles are installed in, ``keys_seconds``
        how often the JWKS is re-read when no retirement asks for it (at most a
        quarter of ``outage_seconds``, so a quiet gateway's copy never goes stale),
        ``nonces`` the issuer whose current nonce every DPoP proof must carry (RFC
        9449 section 9; None: no nonce is required).

        A long poll held open says nothing about the control plane being alive, so
        both long polls (bundle and revocations) are held at most a quarter of
        ``outage_seconds`` (and at most ``wait``): in normal operation an answer
        always comes well within the bound."""
        self.issuer = issuer.rstrip("/")
        self.outage_seconds = outage_seconds
        self._wait = max(0.25, min(wait, outage_seconds / 4))
        self._zone = "UTC"
        self._monotonic = monotonic
        self.limiter = limiter
        self.remote = RemoteVerifier(
            self.issuer,
            audience,
            admin_key=admin_key,
            max_staleness=outage_seconds,
            feed_wait=self._wait,
            background_keys=True,  # requests never wait on a JWKS fetch
            http=http,
            monotonic=monotonic,
            nonces=nonces,
        )
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=httpx.Timeout(self._wait + 5, connect=5),
        )
        self._url = self.issuer + "/v1/enforcement/bundle"
        self._authorizer: Authorizer | None = None
        self._base: EntitySnapshot | None = None  # the bundle's own entities
        self._derive: Callable[[EntitySnapshot], EntitySnapshot] | None = None
        self._swap = threading.Lock()  # derive and swap entities: one at a time
        self._risk: dict[str, int] = {}  # the control plane's risk scores, per agent
        self._etag: str | None = None
        self._policy_version: int | None = None  # of the bundle in force
        self._policy_watchers: list[Callable[[int], None]] = []
        self._contact: float | None = None
        if keys_seconds <= 0:
            raise ValueError("keys_seconds must be positive")
        self._keys_seconds = min(keys_seconds, outage_seconds / 4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._keys_thread: threading.Thread | None = None
        self.last_error: str | None = None

    # -- state -----------------------------------------------------------------------

    @property
    def verifier(self) -> AccessTokenVerifier:
        return self.remote.verifier

    @property
    def etag(self) -> str | None:
        """The bundle version in force (None before the first one)."""
        return self._etag

    @property
    def policy_version(self) -> int | None:
        """The version of the policy set in force (None before the first bundle)."""
        return self._policy_version

    def seconds_since_contact(self) -> float | None:
        """Seconds since the older of the control plane's two last answers: the
        policy bundle's and the revocation feed's (None before both). Calls are
        decided only while both are within ``outage_seconds`` (a stale revocation
        set refuses every token), so the outage bound, ``/healthz`` and the metric
        all count from the older one, and agree with what calls get."""
        revocations = self.remote.revoked.seconds_since_fresh()
        if self._contact is None or revocations is None:
            return None
        return max(self._monotonic() - self._contact, revocations)

    def authorizer(self) -> Authorizer:
        """The local authorizer, while the cached bundle is within the outage bound;
        otherwise ServiceUnavailable (every call is refused)."""
        since = self.seconds_since_contact()
        if self._authorizer is None or since is None or since > self.outage_seconds:
            raise ServiceUnavailable(
                "the gateway has lost the control plane for longer than its outage "
                "bound; calls are refused until it is back",
                hint="Check the control plane and the gateway's link to it.",
            )
        return self._authorizer

    # -- sync ------------------------------------------------------------------------

    def poll_once(self, wait: float) -> bool:
        """One long poll for a new bundle; True if one was loaded."""
        params: dict[str, Any] = {"wait": wait}
        if self._etag is not None:
            params["etag"] = self._etag
        response = self._http.get(self._url, params=params)
        if response.status_code == 304:
            self._contact = self._monotonic()
            return False
        response.raise_for_status()
        if len(response.content) > _MAX_BUNDLE:
            raise ValueError("the policy bundle is larger than 64 MiB")
        body = response.json()
        bundle = body["bundle"]
        previous = self._authorizer
        engine, base = load_bundle(bundle, previous=previous.engine if previous else None)
        throttles = throttles_of(bundle)
        self._risk = risk_of(bundle)  # read by _risk_score on every decision from now
        zone = time_zone_of(bundle)  # the control plane's: time-based policies agree
        with self._swap:
            self._base = base
            entities = base if self._derive is None else self._derive(base)
            current = self._authorizer
            if current is None or zone != self._zone:
                self._zone = zone
                self._authorizer = Authorizer(
                    engine,
                    entities,
                    clock=lambda: datetime.now(UTC),
                    zone=zone,
                    risk=self._risk_score,
                )
            else:
                current.update(engine, entities)
        if self.limiter is not None:
            self.limiter.set_throttles(throttles)
        self._etag = str(body["etag"])
        self._contact = self._monotonic()
        self.last_error = None
        log.info("policy bundle %s loaded (policy version %s)", self._etag, engine.version)
        before, self._policy_version = self._policy_version, engine.version
        if before is not None and before != engine.version:
            self._policy_changed(engine.version)
        return True

    def watch_policy(self, changed: Callable[[int], None]) -> None:
        """Call ``changed(version)`` each time a bundle with another policy version
        than the one in force is loaded (not for the first bundle, nor for a bundle
        whose entities, risk scores or throttles alone changed), once decisions use
        it. It runs on the bundle thread and must be quick."""
        self._policy_watchers.append(changed)

    def _policy_changed(self, version: int) -> None:
        for changed in list(self._policy_watchers):
            try:
                changed(version)
            except Exception:  # one watcher's failure must not stop the bundle sync
                log.exception("a policy watcher raised; continuing")

    def derive_with(self, derive: Callable[[EntitySnapshot], EntitySnapshot]) -> None:
        """Install the step every bundle's entities go through before decisions see
        them (see the module's docstring), and apply it to the bundle in force."""
        with self._swap:
            self._derive = derive
        self.rederive()

    def rederive(self) -> None:
        """Apply the ``derive`` step again to the bundle in force (what it derives
        from changed) and swap the result in. Returns once decisions see it."""
        with self._swap:
            current, base, derive = self._authorizer, self._base, self._derive
            if current is None or base is None or derive is None:
                return
            current.update(entities=derive(base))

    def entities(self) -> EntitySnapshot | None:
        """The entities decisions use now (the derived ones included), whatever the
        outage bound says; None before the first bundle."""
        current = self._authorizer
        return None if current is None else current.entities

    def _risk_score(self, principal: EntityRef) -> int:
        """The control plane's risk score of an agent, as the last bundle carried it."""
        return self._risk.get(principal.id, 0) if principal.type == "Agent" else 0

    def start(self) -> ControlPlaneLink:
        """Load keys, revocations and the first bundle (failing loudly if the control
        plane cannot be reached at start), then keep all three fresh in the
        background."""
        self.remote.start()
        self.poll_once(0)
        self._thread = threading.Thread(target=self._run, daemon=True, name="bundle-sync")
        self._thread.start()
        self._keys_thread = threading.Thread(
            target=self._run_keys, daemon=True, name="jwks-refresh"
        )
        self._keys_thread.start()
        return self

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self.poll_once(self._wait)
                delay = 0.5
            except Exception as exc:  # any failure: retry; the outage bound fails closed
                if self._stop.is_set():
                    return
                self.last_error = f"{type(exc).__name__}"
                log.warning("policy bundle poll failed (%s); retrying", type(exc).__name__)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def keys_interval(self) -> float:
        """Seconds between two JWKS re-reads that no retirement asked for: the
        safety net while the control plane pushes retirements, else one second."""
        if self.remote.feed.pushes_key_retirements:
            return self._keys_seconds
        return min(self._keys_seconds, LEGACY_KEYS_SECONDS)

    def _run_keys(self) -> None:
        """Re-read the JWKS when the revocation feed retires a key
        (``remote.keys_changed``) and every :meth:`keys_interval` otherwise, apart
        from the long polls (which may be held up to a quarter of the outage bound),
        so requests never fetch it. A failed read is retried at the next tick; the
        retired key is refused meanwhile (the revocation set), and the copy held
        serves up to the outage bound
        (:class:`~agentiam.adapters.verification.JwksCache`)."""
        changed = self.remote.keys_changed
        while True:
            changed.wait(self.keys_interval())
            changed.clear()  # before the read: a retirement during it asks again
            if self._stop.is_set():
                return
            try:
                self.remote.keys.refresh()
            except Exception as exc:  # any failure: retry; the copy's bound fails closed
                if self._stop.is_set():
                    return
                log.warning("JWKS refresh failed (%s)", type(exc).__name__)

    def close(self) -> None:
        self._stop.set()
        self.remote.keys_changed.set()  # wakes the key thread, which sees the stop
        self.remote.close()
        self._http.close()
