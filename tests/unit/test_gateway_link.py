"""The gateway's link to the control plane: the outage bound (decide from cache, then
refuse), long polls held well inside that bound (so a quiet control plane is never
mistaken for a lost one), and a key set that stays usable, without stalling requests,
while the control plane is away.

The link tests run against a live control plane in this process (a real server on a
loopback port); the key-set tests use a mock transport and a fake clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from tests.api.oauth_support import RESOURCE, OAuthLive, oauth_live

from agentiam.adapters.gateway.link import KEYS_SECONDS, LEGACY_KEYS_SECONDS, ControlPlaneLink
from agentiam.adapters.http.oauth import JWKS_PATH
from agentiam.adapters.verification import JwksCache, RevocationFeedClient
from agentiam.core.access.admin_keys import Role
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.errors import OAuthError, ServiceUnavailable
from agentiam.sdk.keys import AgentKey
from agentiam.services.context import CallContext

AUDIENCE = "https://gw.example"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with oauth_live(sqlite_url) as running:
        yield running


def _verifier_key(live: OAuthLive) -> str:
    return live.container.admin_keys.create(
        CallContext.system("test"), name="gw", role=Role.VERIFIER, sources=["gateway/gw"]
    ).secret


def _request(agent: str) -> AuthzRequest:
    return AuthzRequest(EntityRef("Agent", agent), "GET", EntityRef("Endpoint", "x"), {})


def test_past_the_outage_bound_the_link_refuses_until_contact_returns(live: OAuthLive) -> None:
    clock = Clock()
    link = ControlPlaneLink(
        live.url, AUDIENCE, admin_key=_verifier_key(live), outage_seconds=30, monotonic=clock
    )
    # without start(): no background thread, the test drives contact
    link.poll_once(0)
    link.remote.feed.poll_once(0)
    try:
        assert link.etag is not None
        link.authorizer().decide(_request(live.agent_id))
        clock.now += 29.9
        link.authorizer()
        clock.now += 0.2
        with pytest.raises(ServiceUnavailable, match="outage bound"):
            link.authorizer()
        assert link.poll_once(0) is False  # unchanged bundle (304): contact again
        link.remote.feed.poll_once(0)
        link.authorizer()
    finally:
        link.close()


def test_the_bound_counts_from_the_older_of_bundle_and_revocations(live: OAuthLive) -> None:
    """The revocation feed's last answer may be older than the bundle's (their long
    polls come back at different times). A stale revocation set refuses every
    token, so the link, its health and its metric must count from that one too:
    else /healthz says "deciding" while every call is refused."""
    clock = Clock()
    link = ControlPlaneLink(
        live.url, AUDIENCE, admin_key=_verifier_key(live), outage_seconds=30, monotonic=clock
    )
    try:
        assert link.seconds_since_contact() is None  # neither has answered yet
        link.remote.feed.poll_once(0)
        assert link.seconds_since_contact() is None  # nor has the bundle
        clock.now += 10
        link.poll_once(0)  # the bundle answers 10 s after the feed last did
        assert link.seconds_since_contact() == 10
        clock.now += 20.5
        assert link.remote.revoked.is_stale()
        with pytest.raises(ServiceUnavailable, match="outage bound"):
            link.authorizer()  # the bundle alone is 20.5 s old, within the bound
        link.remote.feed.poll_once(0)
        assert link.seconds_since_contact() == 20.5  # now the bundle is the older
        link.authorizer()
    finally:
        link.close()


def test_no_authorizer_before_the_first_bundle(live: OAuthLive) -> None:
    link = ControlPlaneLink(live.url, AUDIENCE, admin_key=_verifier_key(live))
    try:
        with pytest.raises(ServiceUnavailable):
            link.authorizer()
    finally:
        link.close()


def test_long_polls_are_held_well_inside_the_outage_bound(live: OAuthLive) -> None:
    """With a 2 s bound, a quiet but healthy control plane never trips it: both long
    polls come back within a quarter of the bound (they used to be held 10-20 s)."""
    link = ControlPlaneLink(live.url, AUDIENCE, admin_key=_verifier_key(live), outage_seconds=2)
    assert link.remote.feed._wait == 0.5
    link.start()
    try:
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            link.authorizer()
            assert not link.remote.revoked.is_stale()
            since = link.seconds_since_contact()
            assert since is not None
            assert since < 1.5
            time.sleep(0.1)
    finally:
        link.close()


def test_a_policy_change_reaches_the_link_at_once(live: OAuthLive) -> None:
    link = ControlPlaneLink(
        live.url, AUDIENCE, admin_key=_verifier_key(live), outage_seconds=4
    ).start()
    try:
        assert not link.authorizer().decide(_request(live.agent_id)).allowed
        policy = f'permit (principal == Agent::"{live.agent_id}", action, resource);'
        with live.admin_client() as admin:
            assert admin.put("/v1/policies/all", json={"text": policy}).status_code == 200
        started = time.monotonic()
        while not link.authorizer().decide(_request(live.agent_id)).allowed:
            assert time.monotonic() - started < 1.0
            time.sleep(0.01)
    finally:
        link.close()


def _until(done: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``done`` until it holds; fail with ``what`` past ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _refused(link: ControlPlaneLink, token: str) -> str | None:
    """Why the link refuses ``token`` now (None: it accepts it)."""
    try:
        link.verifier.verify_token(token, now=int(time.time()))
    except OAuthError as exc:
        return exc.reason
    return None


def test_a_retired_signing_key_leaves_the_links_key_set_within_a_second(
    live: OAuthLive,
) -> None:
    """Rotation after a compromise (``keys rotate --immediate``, then ``keys retire``):
    the retirement is pushed by the revocation feed the link long-polls, so the
    retired key leaves the key set the verifier looks in, and its tokens are refused,
    within about a second, and the new key is in the set. The JWKS safety net is set
    to far longer than the test (15 minutes: a quarter of the outage bound), so it is
    the push that does it (the old every-second re-read, set that long, does not)."""
    ctx = CallContext.system("test")
    link = ControlPlaneLink(
        live.url,
        RESOURCE,
        admin_key=_verifier_key(live),
        outage_seconds=3600,
        keys_seconds=3600,
    ).start()
    try:
        assert link.keys_interval() == 900
        token = live.token()
        assert link.verifier.verify_token(token, now=int(time.time())).subject == live.agent_id
        signing = live.container.signing_keys
        (old,) = [k["kid"] for k in signing.jwks()["keys"]]
        keys = link.remote.keys
        assert keys.get(old) is not None
        new = signing.rotate(ctx, immediate=True)
        signing.retire(ctx, old, "compromised")
        _until(lambda: keys.get(old) is None, 1.5, "the retired key is still in the key set")
        assert _refused(link, token) == "signing key no longer published"
        _until(lambda: keys.get(new.kid) is not None, 1.5, "the new key is not in the key set")
        assert link.remote.feed.pushes_key_retirements
    finally:
        link.close()


class _JwksGoesDown(httpx.HTTPTransport):
    """The link's own HTTP client (metadata and JWKS) to a real control plane, whose
    JWKS reads fail once ``down`` is set: the boundary is a JWKS endpoint that cannot
    be reached while the revocation feed still can, which a real server on one port
    cannot be made to do."""

    down = False
    refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.down and request.url.path == JWKS_PATH:
            self.refused += 1
            raise httpx.ConnectError("the JWKS is unreachable", request=request)
        return super().handle_request(request)


def test_a_key_the_feed_retires_is_refused_even_if_the_jwks_cannot_be_re_read(
    live: OAuthLive,
) -> None:
    """Fail closed: the feed names the retired kid and the link refuses its tokens
    from that answer on, although every JWKS read fails from just before the
    retirement, so the copy the link holds (still usable: well within the outage
    bound) still lists the key."""
    ctx = CallContext.system("test")
    transport = _JwksGoesDown()
    link = ControlPlaneLink(
        live.url,
        RESOURCE,
        admin_key=_verifier_key(live),
        outage_seconds=3600,
        keys_seconds=3600,
        http=httpx.Client(transport=transport, timeout=10),
    ).start()
    try:
        token = live.token()
        access = link.verifier.verify_token(token, now=int(time.time()))
        signing = live.container.signing_keys
        (old,) = [k["kid"] for k in signing.jwks()["keys"]]
        transport.down = True
        signing.rotate(ctx, immediate=True)
        signing.retire(ctx, old, "compromised")
        _until(lambda: _refused(link, token) is not None, 1.5, "the retired key's token passes")
        assert _refused(link, token) == "signing key no longer published"
        # the JWKS was tried, and could not be read (the re-read the retirement starts
        # runs on the link's own thread: it may come just after the refusal)
        _until(lambda: transport.refused > 0, 1.5, "the JWKS was not re-read")
        with pytest.raises(OAuthError, match="not valid"):
            link.verifier.still_valid(access, now=time.time())  # an open stream ends
        assert not link.remote.revoked.is_stale()
    finally:
        link.close()


# -- the revocation feed's kinds: older and newer readers ---------------------------------


def test_an_older_feed_reader_is_never_sent_a_key_retirement(live: OAuthLive) -> None:
    """Wire compatibility: a reader that names no ``kinds`` (a gateway of an older
    release, which knows only token, agent, human and grant entries and would fail on
    any other kind) gets the base kinds only; one that names ``signing_key`` gets the
    retirement too, and the answer says which kinds it covers. A name the control
    plane does not know is ignored; naming nothing it knows is a 422 problem."""
    ctx = CallContext.system("test")
    signing = live.container.signing_keys
    (old,) = [k["kid"] for k in signing.jwks()["keys"]]
    signing.rotate(ctx, immediate=True)
    signing.retire(ctx, old, "compromised")
    base = ["agent", "grant", "human", "token"]
    with live.admin_client() as admin:
        older = admin.get("/v1/revocations", params={"after": 0})
        assert older.status_code == 200, older.text
        assert {e["kind"] for e in older.json()["entries"]} <= set(base)
        assert older.json()["kinds"] == base
        newer = admin.get(
            "/v1/revocations",
            params={"after": 0, "kinds": "token,agent,human,grant,signing_key,later_kind"},
        ).json()
        assert [(e["kind"], e["subject"]) for e in newer["entries"]][-1] == ("signing_key", old)
        assert newer["kinds"] == [*base[:3], "signing_key", "token"]
        bad = admin.get("/v1/revocations", params={"after": 0, "kinds": "later_kind"})
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")


def test_against_a_control_plane_that_does_not_push_retirements_the_jwks_is_read_every_second(
    live: OAuthLive,
) -> None:
    """A newer gateway and an older control plane: the feed's answers have no
    ``kinds`` member (the older release's answer, served here by a mock transport:
    an older release cannot run in this test), so no retirement will be pushed and
    the link keeps the every-second JWKS re-read; against a control plane that
    pushes, it re-reads only at the safety net's interval."""
    link = ControlPlaneLink(live.url, RESOURCE, admin_key=_verifier_key(live))
    try:
        assert link.keys_interval() == LEGACY_KEYS_SECONDS  # before any answer
        link.remote.feed.poll_once(0)
        assert link.remote.feed.pushes_key_retirements
        assert link.keys_interval() == KEYS_SECONDS
        older = httpx.Client(
            transport=httpx.MockTransport(
                lambda request: httpx.Response(200, json={"entries": [], "cursor": 0})
            )
        )
        link.remote.feed = RevocationFeedClient(live.url, "unused", link.remote.revoked, http=older)
        link.remote.feed.poll_once(0)
        assert not link.remote.feed.pushes_key_retirements
        assert link.keys_interval() == LEGACY_KEYS_SECONDS
    finally:
        link.close()


# -- the key set ----------------------------------------------------------------------------


class Jwks:
    """A JWKS endpoint that can go down and can be made to hang."""

    def __init__(self) -> None:
        self.key = AgentKey.generate()
        self.up = True
        self.fetches = 0
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        self.hold.wait(5)
        if not self.up:
            raise httpx.ConnectError("down")
        jwk: dict[str, Any] = {**self.key.public_jwk(), "kid": "k1", "alg": "ES256"}
        return httpx.Response(200, json={"keys": [jwk]})


def _cache(jwks: Jwks, clock: Clock) -> JwksCache:
    http = httpx.Client(transport=httpx.MockTransport(jwks))
    return JwksCache(
        "https://iam.example/jwks",
        http,
        max_age=30,
        min_refresh_interval=5,
        max_stale=300,
        monotonic=clock,
    )


def test_keys_stay_usable_through_an_outage_up_to_max_stale() -> None:
    jwks, clock = Jwks(), Clock()
    cache = _cache(jwks, clock)
    cache.refresh()
    jwks.up = False
    clock.now += 31  # past max_age: a refresh is tried, fails, the copy is still used
    assert cache.get("k1") is not None
    assert jwks.fetches == 2
    for _ in range(50):  # ...and not tried again on every request
        assert cache.get("k1") is not None
    assert jwks.fetches == 2
    clock.now += 5  # once per min_refresh_interval
    cache.get("k1")
    assert jwks.fetches == 3
    clock.now = 1000 + 300.5  # past max_stale: fail closed
    assert cache.get("k1") is None
    jwks.up = True
    clock.now += 5
    assert cache.get("k1") is not None  # back


def test_an_unknown_kid_does_not_trigger_a_fetch_per_request() -> None:
    jwks, clock = Jwks(), Clock()
    cache = _cache(jwks, clock)
    cache.refresh()
    clock.now += 6
    for _ in range(20):
        assert cache.get("nope") is None
    assert jwks.fetches == 2


def test_without_max_stale_a_stale_copy_is_refused() -> None:
    jwks, clock = Jwks(), Clock()
    cache = JwksCache(
        "https://iam.example/jwks",
        httpx.Client(transport=httpx.MockTransport(jwks)),
        max_age=30,
        monotonic=clock,
    )
    cache.refresh()
    jwks.up = False
    clock.now += 31
    assert cache.get("k1") is None


def test_a_hanging_refresh_does_not_stall_other_requests() -> None:
    jwks, clock = Jwks(), Clock()
    cache = _cache(jwks, clock)
    cache.refresh()
    clock.now += 31
    jwks.hold.clear()  # the next fetch hangs
    first = threading.Thread(target=cache.get, args=("k1",))
    first.start()
    while jwks.fetches < 2:
        time.sleep(0.001)
    started = time.monotonic()
    assert cache.get("k1") is not None  # served from the copy while the fetch hangs
    assert time.monotonic() - started < 0.5
    jwks.hold.set()
    first.join(5)


def test_only_a_new_policy_set_is_told_to_the_policy_watchers(live: OAuthLive) -> None:
    """A catalog entry and a risk score change the bundle but not the policy set: the
    watchers are not told. A policy change is, with its version, once decisions use
    it; the first bundle is not a change."""
    link = ControlPlaneLink(
        live.url, AUDIENCE, admin_key=_verifier_key(live), outage_seconds=4
    ).start()
    told: list[tuple[int, bool]] = []

    def watcher(version: int) -> None:  # on the bundle thread
        told.append((version, link.authorizer().decide(_request(live.agent_id)).allowed))

    link.watch_policy(watcher)
    c = live.container
    ctx = CallContext.system("test")
    try:
        first = link.policy_version
        assert first is not None

        def bundle_changes(change: Callable[[], object]) -> None:
            etag = link.etag
            change()
            _until(lambda: link.etag != etag, 5, "the bundle did not change")

        bundle_changes(lambda: c.resources.put(ctx, ResourceRecord("Tool", "t", {})))
        bundle_changes(lambda: c.enforcement.set_risk({live.agent_id: 30}))
        time.sleep(0.3)
        assert told == []
        assert link.policy_version == first
        policy = f'permit (principal == Agent::"{live.agent_id}", action, resource);'
        c.policies.put(ctx, "all", text=policy)
        _until(lambda: bool(told), 5, "the policy watcher was not told")
        assert told == [(first + 1, True)]  # the new policy already decides
        assert link.policy_version == first + 1
    finally:
        c.enforcement.set_risk({})
        link.close()
