"""The in-process guard decides a ``resources/read`` on the resource's canonical URI (RFC
3986 section 6.2.2) and hands the SDK that URI, so a forbid on a URI cannot be evaded by
spelling it differently: the SDK's URI template match percent-decodes each variable, so
``file:///users/%61dmin`` would run the template function with ``name="admin"``
(security review, finding 1). Against a real control plane, with the official client SDK,
in memory (the guard's own agent) and over Streamable HTTP (uvicorn, the calling agent's
DPoP-bound token); the template function records every name it ran with, so a test can
tell that a refused read never ran it.

Also here: a listing authenticates and admits its caller before the server's listing
handler (user code) runs (finding 6), and non-object ``params`` are malformed, refused
and audited (finding 7)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, INVALID_REQUEST
from tests.api.guard_support import guard_live
from tests.api.mcp_support import serve_with_lifespan
from tests.api.oauth_support import OAuthLive
from tests.api.test_guard import connect, trail

from agentiam.adapters.gateway.guard_mcp import REFUSAL_META, GuardMiddleware
from agentiam.adapters.gateway.mcp_calls import POLICY_DENIED
from agentiam.core.enforcement.ratelimit import RateLimiter
from agentiam.guard import Guard
from agentiam.sdk import AgentClient

USERS = "file:///users/{name}"
# a deny-list: every user but three (the style the attack evades)
POLICIES = {
    "read-any": 'permit (principal is Agent, action == Action::"read", resource is DataSet);',
    "no-admin": 'forbid (principal, action == Action::"read", '
    'resource == DataSet::"file:///users/admin");',
    "no-ops-team": 'forbid (principal, action == Action::"read", '
    'resource == DataSet::"file:///users/ops-team");',
    "no-jorg": 'forbid (principal, action == Action::"read", '
    'resource == DataSet::"file:///users/j%C3%B6rg");',
}
# each is read by the SDK as one of the three forbidden users
ATTACKS = {
    "file:///users/%61dmin": "admin",  # the review's
    "file:///users/adm%69n": "admin",
    "file:///users/%61%64%6D%69%6E": "admin",  # upper-case hex
    "file:///users/%61%64%6d%69%6e": "admin",  # lower-case hex
    "FILE:///users/admin": "admin",  # the scheme is case-insensitive
    "file:///%75sers/admin": "admin",
    "file:///users/ops%2Dteam": "ops-team",  # an unreserved character encoded
    "file:///users/ops%2dteam": "ops-team",
    "file:///users/j%c3%b6rg": "jörg",  # lower-case hex of a non-ASCII one
}


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with guard_live(sqlite_url, POLICIES) as server:
        yield server


def users_server(guard: Guard, ran: list[str]) -> MCPServer:
    server = MCPServer("users")
    guard.protect(server)

    @server.resource(USERS)
    def user(name: str) -> str:
        ran.append(name)
        return f"profile of {name}"

    return server


async def attack(session: Any) -> tuple[list[MCPError], list[str]]:
    """Every attack spelling (each refused), then ``b%6Fb`` (allowed: read as bob)."""
    refused = []
    for uri in ATTACKS:
        with pytest.raises(MCPError) as caught:
            await session.read_resource(uri)
        refused.append(caught.value)
    bob = await session.read_resource("file:///users/b%6Fb")
    return refused, [str(c.text) for c in bob.contents] + [str(c.uri) for c in bob.contents]


def check_refused(live: OAuthLive, refused: list[MCPError], ran: list[str], agent_id: str) -> None:
    assert [e.code for e in refused] == [POLICY_DENIED] * len(ATTACKS)
    reasons = [e.message for e in refused]
    for reason, name in zip(reasons, ATTACKS.values(), strict=True):
        policy = {"admin": "no-admin", "ops-team": "no-ops-team", "jörg": "no-jorg"}[name]
        assert f"forbidden by policy {policy}" in reason, reason
    assert ran == ["bob"]  # the template function never ran for a forbidden user
    # each refusal is audited on the canonical URI, the allowed read too
    denied = {
        uri: [e["outcome"] for e in trail(live, resource_id=uri, type="authz.decision")]
        for uri in ("file:///users/admin", "file:///users/ops-team", "file:///users/j%C3%B6rg")
    }
    assert denied == {
        "file:///users/admin": ["denied"] * 6,
        "file:///users/ops-team": ["denied"] * 2,
        "file:///users/j%C3%B6rg": ["denied"],
    }
    [bob] = trail(live, resource_id="file:///users/bob", type="authz.decision")
    assert (bob["outcome"], bob["agent_id"]) == ("success", agent_id)


def test_in_memory_no_spelling_of_a_forbidden_uri_is_read(live: OAuthLive, guard: Guard) -> None:
    ran: list[str] = []
    server = users_server(guard, ran)

    async def main() -> tuple[list[MCPError], list[str]]:
        async with Client(server) as client:
            return await attack(client)

    refused, bob = asyncio.run(main())
    assert bob == ["profile of bob", "file:///users/bob"]  # the SDK read the canonical URI
    assert guard.drain(10)
    check_refused(live, refused, ran, live.agent_id)


def test_over_http_no_spelling_of_a_forbidden_uri_is_read(
    live: OAuthLive, guard: Guard, agent: AgentClient
) -> None:
    ran: list[str] = []
    server = users_server(guard, ran)
    with serve_with_lifespan(server.streamable_http_app()) as url:

        async def main() -> tuple[list[MCPError], list[str]]:
            async with agent.mcp_session(url + "/mcp", resource=guard.resource) as session:
                return await attack(session)

        refused, bob = asyncio.run(main())
    assert bob == ["profile of bob", "file:///users/bob"]
    assert guard.drain(10)
    check_refused(live, refused, ran, live.agent_id)


def test_a_malformed_percent_encoding_is_refused_and_audited(live: OAuthLive, guard: Guard) -> None:
    ran: list[str] = []
    server = users_server(guard, ran)

    async def main() -> list[MCPError]:
        refused = []
        async with Client(server) as client:
            for uri in ("file:///users/%6", "file:///users/ad%min", "file:///users/admin%"):
                with pytest.raises(MCPError) as caught:
                    await client.read_resource(uri)
                refused.append(caught.value)
        return refused

    refused = asyncio.run(main())
    assert [e.code for e in refused] == [INVALID_PARAMS] * 3
    assert {e.data[REFUSAL_META]["error"] for e in refused} == {"invalid_request"}
    assert "percent-encoding" in refused[0].message
    assert ran == []
    assert guard.drain(10)
    rejected = trail(live, agent_id=live.agent_id, type="api.request.rejected")
    assert [(e["action"], e["details"]["status"]) for e in rejected] == [
        ("resources/read", 400)
    ] * 3


# -- a listing admits its caller before the listing handler runs -------------------------------


class Counting(MCPServer):
    """An MCP server whose listing handlers (user code: a directory scan, a query)
    count their runs."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.listed = 0

    async def list_tools(self) -> Any:
        self.listed += 1
        return await super().list_tools()

    async def list_resources(self) -> Any:
        self.listed += 1
        return await super().list_resources()


def counting_server(guard: Guard) -> Counting:
    server = Counting("counting")
    guard.protect(server)

    @server.tool()
    def search(query: str) -> str:
        return query

    return server


def test_an_unauthenticated_listing_never_runs_the_handler(
    live: OAuthLive, guard: Guard, agent: AgentClient
) -> None:
    server = counting_server(guard)
    with serve_with_lifespan(server.streamable_http_app()) as url:

        async def anonymous(headers: dict[str, str]) -> list[MCPError]:
            refused = []
            async with (
                httpx2.AsyncClient(headers=headers) as http,
                streamable_http_client(url + "/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                for listing in (session.list_tools, session.list_resources):
                    with pytest.raises(MCPError) as caught:
                        await listing()
                    refused.append(caught.value)
            return refused

        refused = asyncio.run(anonymous({}))
        stolen = agent.token().value  # without its DPoP proof
        refused += asyncio.run(anonymous({"Authorization": f"DPoP {stolen}"}))
        assert [e.code for e in refused] == [INVALID_REQUEST] * 4
        assert server.listed == 0

        async def as_agent() -> list[str]:
            async with agent.mcp_session(url + "/mcp", resource=guard.resource) as session:
                return [t.name for t in (await session.list_tools()).tools]

        assert asyncio.run(as_agent()) == ["search"]
        assert server.listed == 1  # an authenticated caller's listing runs it


def test_a_listing_over_the_rate_limit_never_runs_the_handler(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    limits = RateLimiter.from_config({"per_agent": {"rate_per_second": 0.01, "burst": 1}})
    with connect(live, tmp_path / "s", agent, rate_limits=limits) as guard:
        server = counting_server(guard)

        async def main() -> MCPError:
            async with Client(server) as client:
                await client.list_tools()
                with pytest.raises(MCPError) as caught:
                    await client.list_resources()
                return caught.value

        refused = asyncio.run(main())
        assert refused.data[REFUSAL_META]["error"] == "rate_limited"
        assert server.listed == 1  # the first listing's, not the refused one's
        assert guard.drain(10)
    limited = trail(live, agent_id=live.agent_id, type="api.request.rejected")
    assert [(e["action"], e["details"]["status"]) for e in limited] == [("resources/list", 429)]


# -- non-object params ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("resources/read", ["file:///users/bob"]),
        ("prompts/get", ["summarize", {"text": "x"}]),
        ("completion/complete", [{"type": "ref/prompt", "name": "summarize"}]),
    ],
)
def test_non_object_params_are_refused_and_audited(
    live: OAuthLive, guard: Guard, method: str, params: list[Any]
) -> None:
    """JSON-RPC 2.0 section 4.2 allows an array as ``params``; MCP's are objects. The
    installed SDK's transports refuse an array before any middleware runs, so the
    middleware is handed one directly, as an SDK or transport that passes it would
    (the middleware is the real one, the guard and control plane real): refused
    ``-32602``, audited with status 400, the handler never runs."""
    middleware = GuardMiddleware(guard, principal="configured")
    ran: list[str] = []

    async def call_next(ctx: Any) -> Any:
        ran.append(ctx.method)
        return {}

    ctx = ServerRequestContext[Any, Any](
        session=None,  # type: ignore[arg-type]  # not used by the guard's decision
        lifespan_context={},
        protocol_version="2026-07-28",
        method=method,
        params=params,  # type: ignore[arg-type]  # the point: not an object
        request_id=1,
    )
    with pytest.raises(MCPError) as caught:
        asyncio.run(middleware(ctx, call_next))
    assert caught.value.code == INVALID_PARAMS
    assert caught.value.data[REFUSAL_META]["reason"] == "params: an object"
    assert ran == []
    assert guard.drain(10)
    rejected = trail(live, agent_id=live.agent_id, type="api.request.rejected")
    assert [(e["action"], e["details"]["status"]) for e in rejected] == [(method, 400)]
