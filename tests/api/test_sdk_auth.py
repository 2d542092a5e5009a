"""The agent SDK's httpx ``Auth`` and MCP session against a real control plane and
real resource servers that verify every request's token and DPoP proof (RFC 9449
section 7) with the remote verifier, as an enforcement point does: a token per
resource, one proof per request with the right ``htm``/``htu``/``ath``, refresh
before expiry and on ``invalid_token``, the nonce challenge, and an official-SDK MCP
session over Streamable HTTP whose every request is checked."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator

import pytest
from mcp import MCPError
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tests.api.mcp_support import DPoPChecker, serve_with_lifespan
from tests.api.oauth_support import CTX, RESOURCE, OAuthLive, oauth_live
from tests.support.live import serve_in_thread

from agentiam.adapters.verification import RemoteVerifier
from agentiam.core.access.admin_keys import Role
from agentiam.core.credentials.dpop import access_token_hash
from agentiam.core.credentials.nonces import NonceIssuer
from agentiam.core.credentials.verifier import AccessTokenVerifier, VerifierConfig
from agentiam.errors import OAuthError
from agentiam.sdk import AgentClient, AgentKey
from agentiam.services.agents import NewAgent

OTHER = "https://api.example.com"


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with oauth_live(sqlite_url) as server:
        yield server


@pytest.fixture
def two_audiences(live: OAuthLive) -> tuple[str, AgentKey]:
    """An agent entitled to two resources."""
    key = AgentKey.generate()
    agent = live.container.agents.register(
        CTX,
        NewAgent(
            name=f"two-{secrets.token_hex(3)}",
            owners=[live.owner_id],
            purpose="calls two APIs",
            environment="production",
            activate=True,
            keys=[key.public_jwk()],
            scopes=["tools:read"],
            audiences=[RESOURCE, OTHER],
        ),
    )
    return agent.id, key


def _verifier_key(live: OAuthLive) -> str:
    return live.container.admin_keys.create(
        CTX, name="rs", role=Role.VERIFIER, sources=["gateway/rs"]
    ).secret


@pytest.fixture
def remote(live: OAuthLive) -> Iterator[RemoteVerifier]:
    verifier = RemoteVerifier(live.url, RESOURCE, admin_key=_verifier_key(live)).start()
    yield verifier
    verifier.close()


def _for(remote: RemoteVerifier, audience: str, *, nonce: bool = False) -> AccessTokenVerifier:
    """Another verifier on the same keys and revocations (another resource server)."""
    return AccessTokenVerifier(
        VerifierConfig(
            issuer=remote.verifier.config.issuer, audience=audience, require_nonce=nonce
        ),
        remote.keys,
        remote.revoked,
        nonces=NonceIssuer(b"n" * 32) if nonce else None,
    )


def _echo(request: Request) -> Response:
    return JSONResponse({"ok": True})


def checked(verifier: AccessTokenVerifier) -> DPoPChecker:
    app = Starlette(routes=[Route("/{path:path}", _echo, methods=["GET", "POST", "DELETE"])])
    return DPoPChecker(app, verifier)


# -- the Auth ------------------------------------------------------------------------------


def test_each_request_gets_the_token_and_a_fresh_proof_for_its_method_and_url(
    live: OAuthLive, remote: RemoteVerifier
) -> None:
    rs = checked(remote.verifier)
    with serve_in_thread(rs) as url:
        agent = AgentClient(live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE)
        with agent.http(base_url=url) as http:
            assert http.get("/a/b", params={"q": "1"}).status_code == 200
            assert http.post("/a/b#frag", json={"x": 1}).status_code == 200
            assert http.delete("/c").status_code == 200
    token = agent.token().value
    assert [(s.method, s.proof["htm"], s.proof["htu"]) for s in rs.seen] == [
        ("GET", "GET", url + "/a/b"),  # no query (RFC 9449 section 4.2)
        ("POST", "POST", url + "/a/b"),
        ("DELETE", "DELETE", url + "/c"),
    ]
    assert {s.token for s in rs.seen} == {token}
    assert {s.proof["ath"] for s in rs.seen} == {access_token_hash(token)}
    assert len({s.proof["jti"] for s in rs.seen}) == 3  # a new proof each time
    assert {s.agent for s in rs.seen} == {live.agent_id}


def test_tokens_are_per_resource(
    live: OAuthLive, remote: RemoteVerifier, two_audiences: tuple[str, AgentKey]
) -> None:
    agent_id, key = two_audiences
    tools, api = checked(remote.verifier), checked(_for(remote, OTHER))
    with serve_in_thread(tools) as tools_url, serve_in_thread(api) as api_url:
        agent = AgentClient(live.url, client_id=agent_id, key=key, resource=RESOURCE)
        with agent.http(tools_url) as a, agent.http(api_url, resource=OTHER) as b:
            assert a.get("/").status_code == 200
            assert b.get("/").status_code == 200
            assert tools.seen[0].token == agent.token().value
            assert api.seen[0].token == agent.token(OTHER).value
            assert agent.token().value != agent.token(OTHER).value
            # a token for the other audience is refused (invalid_token): after one
            # fresh token, which is refused too, the 401 is the answer
            with agent.http(api_url) as wrong:
                r = wrong.get("/")
                assert r.status_code == 401
                assert r.json()["error"] == "invalid_token"
    assert len(api.seen) == 1


def test_refreshes_before_expiry_and_once_on_invalid_token(
    live: OAuthLive, remote: RemoteVerifier
) -> None:
    rs = checked(remote.verifier)
    with serve_in_thread(rs) as url:
        now = [time.time()]
        agent = AgentClient(
            live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE, clock=lambda: now[0]
        )
        with agent.http(url) as http:
            assert http.get("/").status_code == 200
            now[0] += 271  # within the 30 s refresh margin of the 300 s lifetime
            assert http.get("/").status_code == 200
            assert rs.seen[0].token != rs.seen[1].token
            # the resource server refuses a revoked token: one fresh token, one retry
            agent.refresh_margin = 0
            stale = agent.token().value
            with live.admin_client() as admin:
                r = admin.post("/v1/tokens/revoke", json={"token": stale, "reason": "test"})
                assert r.status_code == 200, r.text
            deadline = time.monotonic() + 2
            while True:  # the verifier learns of it through the feed
                try:
                    remote.verifier.verify_token(stale, now=int(time.time()))
                except OAuthError:
                    break
                assert time.monotonic() < deadline
                time.sleep(0.02)
            before = len(rs.seen)
            r = http.get("/")
            assert r.status_code == 200
            assert len(rs.seen) == before + 1  # the refused try never got through
            assert rs.seen[-1].token != stale


def test_a_fixed_token_is_never_refreshed(live: OAuthLive, remote: RemoteVerifier) -> None:
    rs = checked(remote.verifier)
    with serve_in_thread(rs) as url:
        agent = AgentClient(live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE)
        fixed = agent.token()
        with live.admin_client() as admin:
            admin.post("/v1/tokens/revoke", json={"token": fixed.value, "reason": "test"})
        time.sleep(0.6)
        with agent.http(url, token=fixed) as http:
            r = http.get("/")
            assert r.status_code == 401  # a delegated token is the caller's to replace
            assert r.json()["error"] == "invalid_token"
    assert rs.seen == []


def test_the_nonce_challenge_is_answered_once_and_remembered_per_server(
    live: OAuthLive, remote: RemoteVerifier
) -> None:
    rs = checked(_for(remote, RESOURCE, nonce=True))
    with serve_in_thread(rs) as url:
        agent = AgentClient(live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE)
        with agent.http(url) as http:
            assert http.get("/").status_code == 200
            assert http.get("/").status_code == 200
    assert len(rs.seen) == 2
    assert all("nonce" in s.proof for s in rs.seen)


def test_a_server_that_keeps_asking_for_a_nonce_gets_one_retry(live: OAuthLive) -> None:
    calls: list[str | None] = []

    def always(request: Request) -> Response:
        calls.append(request.headers.get("dpop"))
        return JSONResponse(
            {"error": "use_dpop_nonce"},
            status_code=401,
            headers={
                "WWW-Authenticate": 'DPoP error="use_dpop_nonce"',
                "DPoP-Nonce": secrets.token_urlsafe(8),
            },
        )

    with serve_in_thread(Starlette(routes=[Route("/", always)])) as url:
        agent = AgentClient(live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE)
        with agent.http(url) as http:
            assert http.get("/").status_code == 401
    assert len(calls) == 2  # no loop


def test_the_async_client(live: OAuthLive, remote: RemoteVerifier) -> None:
    rs = checked(_for(remote, RESOURCE, nonce=True))
    with serve_in_thread(rs) as url:
        agent = AgentClient(live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE)

        async def main() -> list[int]:
            async with agent.async_http(url) as http:
                first = await http.post("/x", json={"a": 1})  # token fetched off the loop
                rest = await asyncio.gather(*(http.get(f"/y/{i}") for i in range(5)))
                return [first.status_code, *(r.status_code for r in rest)]

        assert asyncio.run(main()) == [200] * 6
    assert len({s.proof["jti"] for s in rs.seen}) == 6
    assert {s.proof["htu"] for s in rs.seen} >= {url + "/x", url + "/y/3"}


# -- the MCP session -------------------------------------------------------------------------


def test_mcp_session_sends_a_dpop_bound_token_and_proof_with_every_request(
    live: OAuthLive, remote: RemoteVerifier
) -> None:
    server = MCPServer("tools")

    @server.tool()
    def search(query: str) -> str:
        return f"found {query}"

    rs = DPoPChecker(server.streamable_http_app(), remote.verifier)
    with serve_with_lifespan(rs) as url:
        endpoint = url + "/mcp"
        agent = AgentClient(live.url, client_id=live.agent_id, key=live.key)

        async def main() -> tuple[list[str], str]:
            async with agent.mcp_session(endpoint, resource=RESOURCE) as session:
                tools = await session.list_tools()
                result = await session.call_tool("search", {"query": "invoices"})
                text = result.content[0].text  # type: ignore[union-attr]
                return [t.name for t in tools.tools], text

        names, text = asyncio.run(main())
    assert names == ["search"]
    assert text == "found invoices"
    token = agent.token(RESOURCE).value
    assert len(rs.seen) >= 3  # initialize, initialized, tools/list, tools/call (+ GET, DELETE)
    assert all(s.proof["htu"] == endpoint and s.proof["htm"] == s.method for s in rs.seen)
    assert {s.token for s in rs.seen} == {token}
    assert len({s.proof["jti"] for s in rs.seen}) == len(rs.seen)


def test_mcp_session_without_a_proof_is_refused(live: OAuthLive, remote: RemoteVerifier) -> None:
    """The checker is real: the SDK's own client with the bare token gets nowhere."""
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    server = MCPServer("tools")
    rs = DPoPChecker(server.streamable_http_app(), remote.verifier)
    agent = AgentClient(live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE)
    stolen = agent.token().value
    with serve_with_lifespan(rs) as url:

        async def main() -> None:
            headers = {"Authorization": f"DPoP {stolen}"}
            async with (
                httpx2.AsyncClient(headers=headers) as http,
                streamable_http_client(url + "/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()

        with pytest.raises(ExceptionGroup) as caught:
            asyncio.run(asyncio.wait_for(main(), 10))
        assert caught.group_contains(MCPError)  # the 401, as the SDK reports it
    assert rs.seen == []
