"""``tools/list`` of an official-SDK MCP server the guard protects, against a real
control plane and with the official client SDK: each caller sees only the tools policy
lets it call (the MCP gateway's listing decision), a policy change shows in the next
listing within the guard's freshness bound, a hidden tool called by name is still
refused, every listing is one ``mcp.list`` event, and a listing the guard cannot
decide or record fails closed (a JSON-RPC error, no tools). In memory the guard's own
agent token decides; over Streamable HTTP (uvicorn, a real socket) the calling
agent's DPoP-bound token and proof do."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST, SERVER_INFO_META_KEY
from tests.api.guard_support import guard_live, put_policy
from tests.api.mcp_support import serve_with_lifespan
from tests.api.oauth_support import CTX, RESOURCE, OAuthLive, oauth_live
from tests.api.test_guard import (
    ALLOW_SEARCH,
    agent_of,
    connect,
    setup_policy,
    trail,
    verifier_env,
)

from agentiam.adapters.gateway.guard_mcp import REFUSAL_META
from agentiam.core.enforcement.ratelimit import RateLimiter
from agentiam.guard import Guard
from agentiam.sdk import AgentClient, AgentKey
from agentiam.services.agents import NewAgent

ALLOW_DELETE = ALLOW_SEARCH.replace('"search"', '"delete"')


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with guard_live(sqlite_url) as server:
        yield server


def tools_server(guard: Guard, ran: list[str], **settings: Any) -> MCPServer:
    server = MCPServer("tools", **settings)
    guard.protect(server)

    @server.tool()
    def search(query: str) -> str:
        ran.append(f"search:{query}")
        return f"found {query}"

    @server.tool()
    def delete(path: str) -> str:
        ran.append(f"delete:{path}")
        return "deleted"

    @server.tool()
    def export() -> str:
        ran.append("export")
        return "exported"

    return server


def listings(live: OAuthLive, agent_id: str) -> list[dict[str, Any]]:
    return [e for e in trail(live, agent_id=agent_id) if e["type"] == "mcp.list"]


def second_agent(live: OAuthLive) -> AgentClient:
    """Another registered agent of the same owner, with a key of its own."""
    key = AgentKey.generate()
    registered = live.container.agents.register(
        CTX,
        NewAgent(
            name=f"report-bot-{secrets.token_hex(3)}",
            owners=[live.owner_id],
            purpose="writes reports",
            environment="production",
            activate=True,
            keys=[key.public_jwk()],
            scopes=["tools:read"],
            audiences=[RESOURCE],
        ),
    )
    return AgentClient(live.url, client_id=registered.id, key=key, resource=RESOURCE)


# -- in memory: the guard's own agent --------------------------------------------------------


def test_in_memory_the_agent_is_shown_only_the_tools_it_may_call(
    live: OAuthLive, guard: Guard
) -> None:
    ran: list[str] = []
    # the server would let any client cache its listing for a minute, shared
    server = tools_server(
        guard, ran, cache_hints={"tools/list": CacheHint(ttl_ms=60_000, scope="public")}
    )

    async def main() -> Any:
        async with Client(server) as client:
            return await client.list_tools()

    listed = asyncio.run(main())
    assert [t.name for t in listed.tools] == ["search"]
    # what one caller is shown is for that caller only, and never fresh for long
    assert (listed.ttl_ms, listed.cache_scope) == (0, "private")
    assert ran == []
    assert guard.drain(10)
    [event] = listings(live, live.agent_id)
    assert event["source"] == "guard/test-agent"
    assert event["action"] == "tools/list"
    assert event["outcome"] == "success"
    assert event["details"]["shown"] == ["search"]
    assert (event["details"]["shown_count"], event["details"]["hidden_count"]) == (1, 2)
    assert event["details"]["jti"]


def test_a_policy_change_changes_the_listing_within_a_second(live: OAuthLive, guard: Guard) -> None:
    server = tools_server(guard, [])

    async def names(client: Client) -> list[str]:
        return sorted(t.name for t in (await client.list_tools()).tools)

    async def until(client: Client, expected: list[str]) -> float:
        started = time.monotonic()
        while await names(client) != expected:
            assert time.monotonic() - started < 1.0, f"not {expected} a second after"
            await asyncio.sleep(0.02)
        return time.monotonic() - started

    async def main() -> None:
        async with Client(server) as client:
            assert await names(client) == ["search"]
            put_policy(live, "allow-delete", ALLOW_DELETE)
            await until(client, ["delete", "search"])
            with live.admin_client() as admin:
                assert admin.delete("/v1/policies/allow-search").status_code in (200, 204)
            await until(client, ["delete"])

    asyncio.run(main())


def test_a_hidden_tool_called_by_name_is_still_refused(live: OAuthLive, guard: Guard) -> None:
    """The attack: the listing hides delete, the client calls it by name anyway."""
    ran: list[str] = []
    server = tools_server(guard, ran)

    async def main() -> tuple[list[str], Any]:
        async with Client(server) as client:
            shown = [t.name for t in (await client.list_tools()).tools]
            return shown, await client.call_tool("delete", {"path": "/etc"})

    shown, result = asyncio.run(main())
    assert "delete" not in shown
    assert result.is_error
    refusal = (result.meta or {})[REFUSAL_META]
    assert refusal["error"] == "insufficient_scope"
    assert refusal["decision_id"].startswith("dec")
    assert ran == []
    assert guard.drain(10)
    decisions = trail(live, resource_id="delete", type="authz.decision")
    assert [e["outcome"] for e in decisions] == ["denied"]


def test_a_refused_call_carries_the_servers_info_stamp(guard: Guard) -> None:
    """Results the guard answers itself have the SDK's serverInfo _meta stamp, as the
    SDK's own results have on a 2026-07-28 connection."""
    server = tools_server(guard, [])

    async def main() -> tuple[Any, Any]:
        async with Client(server) as client:
            allowed = await client.call_tool("search", {"query": "q"})
            return allowed, await client.call_tool("delete", {"path": "/"})

    allowed, denied = asyncio.run(main())
    assert denied.is_error
    stamp = (allowed.meta or {}).get(SERVER_INFO_META_KEY)
    assert stamp is not None
    assert stamp["name"] == "tools"
    assert (denied.meta or {})[SERVER_INFO_META_KEY] == stamp
    assert REFUSAL_META in (denied.meta or {})


# -- over Streamable HTTP: the calling agent ------------------------------------------------


def test_over_http_each_agent_is_shown_what_its_own_token_may_call(
    live: OAuthLive, guard: Guard, agent: AgentClient
) -> None:
    other = second_agent(live)
    put_policy(
        live,
        "reports-may-delete",
        f'permit (principal == Agent::"{other.client_id}", action == Action::"invoke_tool", '
        'resource == Tool::"delete");',
    )
    ran: list[str] = []
    server = tools_server(guard, ran)
    try:
        with serve_with_lifespan(server.streamable_http_app()) as url:
            endpoint = url + "/mcp"

            async def as_agent(client: AgentClient) -> list[str]:
                async with client.mcp_session(endpoint, resource=guard.resource) as session:
                    return sorted(t.name for t in (await session.list_tools()).tools)

            time.sleep(1.0)  # the new policy reaches the guard
            assert asyncio.run(as_agent(agent)) == ["search"]
            assert asyncio.run(as_agent(other)) == ["delete", "search"]

            async def anonymous(headers: dict[str, str]) -> MCPError:
                async with (
                    httpx2.AsyncClient(headers=headers) as http,
                    streamable_http_client(endpoint, http_client=http) as (read, write),
                    ClientSession(read, write) as session,
                ):
                    await session.initialize()
                    with pytest.raises(MCPError) as caught:
                        await session.list_tools()
                    return caught.value

            # no token: refused, although the guard holds its agent's token
            refused = asyncio.run(anonymous({}))
            assert refused.code == INVALID_REQUEST
            assert refused.data[REFUSAL_META]["error"] == "invalid_token"
            # the agent's token without its DPoP proof (stolen): refused
            stolen = agent.token().value
            refused = asyncio.run(anonymous({"Authorization": f"DPoP {stolen}"}))
            assert refused.data[REFUSAL_META]["error"] in ("invalid_dpop_proof", "invalid_token")

            # the attack over HTTP: the hidden tool called by name
            async def call_hidden() -> Any:
                async with agent.mcp_session(endpoint, resource=guard.resource) as session:
                    return await session.call_tool("delete", {"path": "/"})

            assert asyncio.run(call_hidden()).is_error
        assert ran == []
        assert guard.drain(10)
        mine = listings(live, live.agent_id)  # (a client may list before its call too)
        assert mine
        assert all(e["details"]["shown"] == ["search"] for e in mine)
        [theirs] = listings(live, other.client_id)
        assert sorted(theirs["details"]["shown"]) == ["delete", "search"]
        refused = [
            e
            for e in trail(live, action="authenticate", outcome="denied")
            if e["source"] == "guard/test-agent"
        ]
        assert len(refused) == 2
    finally:
        other.close()


# -- failing closed --------------------------------------------------------------------------


def test_a_listing_over_the_rate_limit_is_refused(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    """As a gateway's, a listing takes a token from the agent's own bucket."""
    limits = RateLimiter.from_config({"per_agent": {"rate_per_second": 0.01, "burst": 1}})
    with connect(live, tmp_path / "s", agent, rate_limits=limits) as guard:
        server = tools_server(guard, [])

        async def main() -> None:
            async with Client(server) as client:
                assert [t.name for t in (await client.list_tools()).tools] == ["search"]
                with pytest.raises(MCPError) as caught:
                    await client.list_tools()
                assert caught.value.code == INVALID_REQUEST
                assert caught.value.data[REFUSAL_META]["error"] == "rate_limited"

        asyncio.run(main())
        assert guard.drain(10)
    refused = trail(live, agent_id=live.agent_id, type="api.request.rejected")
    assert [(e["action"], e["details"]["status"]) for e in refused] == [("tools/list", 429)]


def test_past_the_outage_bound_a_listing_shows_nothing(sqlite_url: str, tmp_path: Path) -> None:
    """Stop the control plane: the guard lists from cache for outage_seconds, then
    refuses every listing (a JSON-RPC error, no tools), as it refuses every call."""
    with oauth_live(sqlite_url) as live:
        setup_policy(live)
        agent = agent_of(live)
        guard = Guard.connect(
            live.url,
            resource=RESOURCE,
            spool_dir=tmp_path / "s",
            name="outage",
            token=agent.token().value,
            outage_seconds=3,
            environ=verifier_env(live, "outage"),
            poll_wait=1.0,
        )
    stopped = time.monotonic()
    try:
        server = tools_server(guard, [])

        async def main() -> MCPError:
            async with Client(server) as client:
                shown = [t.name for t in (await client.list_tools()).tools]
                assert shown == ["search"]  # within the bound: decided from cache
                assert time.monotonic() - stopped < 3
                deadline = stopped + 8
                while True:
                    try:
                        await client.list_tools()
                    except MCPError as exc:
                        return exc
                    assert time.monotonic() < deadline, "still listing long past the bound"
                    await asyncio.sleep(0.1)

        refused = asyncio.run(main())
        assert time.monotonic() - stopped >= 2.5
        assert refused.code == INTERNAL_ERROR
        assert refused.data[REFUSAL_META]["error"] == "temporarily_unavailable"
    finally:
        guard.close()


def test_a_listing_whose_event_cannot_be_recorded_shows_nothing(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    """Nothing unlogged is shown: with the spool closed (or broken), a listing is
    refused as a call is."""
    guard = connect(live, tmp_path / "closed", agent)
    try:
        ran: list[str] = []
        server = tools_server(guard, ran)
        assert guard.spool is not None
        guard.spool.close()

        async def main() -> MCPError:
            async with Client(server) as client:
                with pytest.raises(MCPError) as caught:
                    await client.list_tools()
                return caught.value

        refused = asyncio.run(main())
        assert refused.code == INTERNAL_ERROR
        assert refused.data[REFUSAL_META]["error"] == "temporarily_unavailable"
        assert ran == []
    finally:
        guard.close()
