"""The SDK against a real resource server: a small Starlette app on uvicorn that checks
every request with the remote verifier (keys from the JWKS, revocations from the feed),
as an enforcement point will. Covers DPoPAuth, ath, htu over real URLs, the resource
server's nonce challenge, and token refresh."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tests.api.oauth_support import RESOURCE, OAuthLive, oauth_live
from tests.support.live import serve_in_thread

from agentiam.adapters.verification import RemoteVerifier
from agentiam.core.access.admin_keys import Role
from agentiam.core.credentials.nonces import NonceIssuer
from agentiam.core.credentials.verifier import AccessTokenVerifier
from agentiam.errors import OAuthError
from agentiam.sdk import AgentClient
from agentiam.services.context import CallContext

CTX = CallContext.system("test")


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with oauth_live(sqlite_url) as server:
        yield server


def resource_server(verifier: AccessTokenVerifier) -> Starlette:
    async def tools(request: Request) -> Response:
        try:
            access = verifier.verify_request(
                authorization=request.headers.getlist("authorization"),
                dpop=request.headers.getlist("dpop"),
                method=request.method,
                url=str(request.url),
                now=int(time.time()),
            )
        except OAuthError as exc:
            return JSONResponse(exc.to_oauth(), status_code=exc.oauth_status, headers=exc.headers)
        return JSONResponse({"agent": access.client_id, "scope": list(access.scope)})

    return Starlette(routes=[Route("/tools", tools, methods=["GET", "POST"])])


@pytest.fixture
def remote(live: OAuthLive) -> Iterator[RemoteVerifier]:
    key = live.container.admin_keys.create(
        CTX, name="rs", role=Role.VERIFIER, sources=["gateway/rs"]
    ).secret
    verifier = RemoteVerifier(live.url, RESOURCE, admin_key=key).start()
    yield verifier
    verifier.close()


def test_dpop_auth_calls_a_resource_server_and_a_stolen_token_fails(
    live: OAuthLive, remote: RemoteVerifier
) -> None:
    with serve_in_thread(resource_server(remote.verifier)) as rs:
        agent = AgentClient(live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE)
        with agent.http(base_url=rs) as http:
            r = http.get("/tools", params={"q": "invoices"})  # the query is not part of htu
            assert r.status_code == 200, r.text
            assert r.json()["agent"] == live.agent_id
            assert http.post("/tools").status_code == 200  # a new proof for each request
        import httpx

        stolen = agent.token().value  # without the DPoP key the token is useless
        r = httpx.get(rs + "/tools", headers={"Authorization": f"DPoP {stolen}"})
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_dpop_proof"
        r = httpx.get(rs + "/tools", headers={"Authorization": f"Bearer {stolen}"})
        assert (r.status_code, r.json()["error"]) == (401, "invalid_token")


def test_dpop_auth_answers_the_resource_servers_nonce_challenge(
    live: OAuthLive, remote: RemoteVerifier
) -> None:
    nonces = NonceIssuer(b"n" * 32)
    strict = AccessTokenVerifier(
        remote.verifier.config.__class__(issuer=live.url, audience=RESOURCE, require_nonce=True),
        remote.keys,
        remote.revoked,
        nonces=nonces,
    )
    with serve_in_thread(resource_server(strict)) as rs:
        agent = AgentClient(live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE)
        with agent.http(base_url=rs) as http:
            r = http.get("/tools")  # 401 use_dpop_nonce, then retried with the nonce
            assert r.status_code == 200, r.text
            assert http.get("/tools").status_code == 200  # the nonce is remembered


def test_sdk_refreshes_tokens_before_they_expire(live: OAuthLive) -> None:
    now = [time.time()]
    agent = AgentClient(
        live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE, clock=lambda: now[0]
    )
    first = agent.token()
    assert first.lifetime == 300
    now[0] += 269  # 31 s left: outside the 30 s refresh margin
    assert agent.token() is first
    now[0] += 2  # 29 s left
    second = agent.token()
    assert second.value != first.value
    assert second.expires_at > first.expires_at


def test_a_token_of_30_s_is_not_fetched_for_every_request(sqlite_url: str) -> None:
    """A lifetime at or under ``refresh_margin`` (the control plane allows 30 s tokens;
    the default margin is 30 s) is refreshed half way through it, not on every
    request (r3 finding 7)."""
    with oauth_live(sqlite_url, access_token_ttl_seconds=30) as live:
        fetched: list[str] = []

        def agent(**options: Any) -> AgentClient:
            http = httpx.Client(
                timeout=10, event_hooks={"request": [lambda r: fetched.append(r.url.path)]}
            )
            return AgentClient(
                live.url,
                client_id=live.agent_id,
                key=live.key,
                resource=RESOURCE,
                http=http,
                **options,
            )

        real = agent()
        try:
            first = real.token()
            for _ in range(10):
                assert real.token() is first
                assert real.cached_token() is first
            assert fetched.count("/oauth2/token") == 1
        finally:
            real.close()
        now = [time.time()]
        timed = agent(clock=lambda: now[0])
        try:
            first = timed.token()
            assert first.lifetime == 30
            now[0] += 14  # 16 s left: refreshed at 15 s (half of 30 s), not at 30 s
            assert timed.token() is first
            assert fetched.count("/oauth2/token") == 2
            now[0] += 2
            assert timed.cached_token() is None
            assert timed.token().value != first.value
            assert fetched.count("/oauth2/token") == 3
        finally:
            timed.close()
