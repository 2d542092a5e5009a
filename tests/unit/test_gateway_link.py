"""The gateway's link to the control plane: the outage bound (decide from cache, then
refuse), long polls held well inside that bound (so a quiet control plane is never
mistaken for a lost one), and a key set that stays usable, without stalling requests,
while the control plane is away.

The link tests run against a live control plane in this process (a real server on a
loopback port); the key-set tests use a mock transport and a fake clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.api.oauth_support import OAuthLive, oauth_live

from agentiam.adapters.gateway.link import ControlPlaneLink
from agentiam.adapters.verification import JwksCache
from agentiam.core.access.admin_keys import Role
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.core.policy.model import EntityRef
from agentiam.errors import ServiceUnavailable
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


def test_a_retired_signing_key_leaves_the_links_key_set_within_a_second(
    live: OAuthLive,
) -> None:
    """Rotation after a compromise (``keys rotate --immediate``, then ``keys retire``):
    the link re-reads the JWKS every second on a thread of its own, whatever its long
    polls are doing (held here up to 7.5 s), so the retired key leaves the key set
    the verifier looks in within about a second, and the new one is in it."""
    ctx = CallContext.system("test")
    link = ControlPlaneLink(
        live.url, AUDIENCE, admin_key=_verifier_key(live), outage_seconds=30
    ).start()
    try:
        signing = live.container.signing_keys
        (old,) = [k["kid"] for k in signing.jwks()["keys"]]
        keys = link.remote.keys
        assert keys.get(old) is not None
        new = signing.rotate(ctx, immediate=True)
        signing.retire(ctx, old, "compromised")
        started = time.monotonic()
        while keys.get(old) is not None:
            assert time.monotonic() - started < 1.5, "the retired key is still in the key set"
            time.sleep(0.01)
        assert keys.get(new.kid) is not None
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
