"""The guard on an official-SDK MCP server (``MCPServer``, formerly FastMCP), against a
real control plane: in memory the guard's own agent token decides; over Streamable
HTTP the calling agent's DPoP-bound token and proof do, and the guard's own token is
never used for an HTTP caller."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from tests.api.guard_support import guard_live
from tests.api.mcp_support import serve_with_lifespan
from tests.api.oauth_support import OAuthLive
from tests.api.test_guard import trail

from agentiam.adapters.gateway.guard_mcp import REFUSAL_META
from agentiam.guard import Guard
from agentiam.sdk import AgentClient

RESOURCE_ID = "search"


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with guard_live(sqlite_url) as server:
        yield server


def tools_server(guard: Guard, ran: list[str]) -> MCPServer:
    server = MCPServer("tools")
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
    def broken() -> str:
        ran.append("broken")
        raise RuntimeError("tool failed")

    return server


def _text(result: Any) -> str:
    return str(result.content[0].text)


def test_in_memory_the_guards_agent_decides(live: OAuthLive, guard: Guard) -> None:
    ran: list[str] = []
    server = tools_server(guard, ran)

    async def main() -> tuple[Any, Any]:
        async with Client(server) as client:
            allowed = await client.call_tool("search", {"query": "invoices"})
            denied = await client.call_tool("delete", {"path": "/etc"})
            return allowed, denied

    allowed, denied = asyncio.run(main())
    assert not allowed.is_error
    assert _text(allowed) == "found invoices"
    assert denied.is_error
    assert "AgentIAM refused the call to delete" in _text(denied)
    refusal = (denied.meta or {})[REFUSAL_META]
    assert refusal["error"] == "insufficient_scope"
    assert refusal["decision_id"].startswith("dec")
    assert ran == ["search:invoices"]  # the denied tool never ran
    assert guard.drain(10)
    events = trail(live, agent_id=live.agent_id, resource_id="search")
    assert {e["type"] for e in events} == {"authz.decision", "tool.call"}
    assert all(e["source"] == "guard/test-agent" for e in events)


def test_a_tool_error_is_recorded_as_a_failure(live: OAuthLive, guard: Guard) -> None:
    with live.admin_client() as admin:
        allow = (
            'permit (principal is Agent, action == Action::"invoke_tool", '
            'resource == Tool::"broken");'
        )
        assert admin.put("/v1/policies/allow-broken", json={"text": allow}).status_code == 200
    ran: list[str] = []
    server = tools_server(guard, ran)

    async def main() -> Any:
        await asyncio.sleep(1.0)  # the new policy reaches the guard
        async with Client(server) as client:
            return await client.call_tool("broken", {})

    result = asyncio.run(main())
    assert result.is_error
    assert ran == ["broken"]
    assert guard.drain(10)
    outcome = trail(live, resource_id="broken", outcome="failure")
    assert [e["details"]["error"] for e in outcome] == ["tool_error"]


def test_over_http_the_callers_dpop_token_decides(
    live: OAuthLive, guard: Guard, agent: AgentClient
) -> None:
    ran: list[str] = []
    server = tools_server(guard, ran)
    with serve_with_lifespan(server.streamable_http_app()) as url:
        endpoint = url + "/mcp"

        async def as_agent() -> tuple[Any, Any]:
            async with agent.mcp_session(endpoint, resource=guard.resource) as session:
                allowed = await session.call_tool("search", {"query": "a"})
                denied = await session.call_tool("delete", {"path": "/"})
                return allowed, denied

        allowed, denied = asyncio.run(as_agent())
        assert not allowed.is_error
        assert denied.is_error
        assert ran == ["search:a"]

        async def anonymous(headers: dict[str, str]) -> Any:
            async with (
                httpx2.AsyncClient(headers=headers) as http,
                streamable_http_client(endpoint, http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                return await session.call_tool("search", {"query": "b"})

        # no token: refused, although the guard holds the agent's own token
        result = asyncio.run(anonymous({}))
        assert result.is_error
        assert (result.meta or {})[REFUSAL_META]["error"] == "invalid_token"
        # the agent's token without its DPoP proof (stolen): refused
        stolen = agent.token().value
        for scheme in ("DPoP", "Bearer"):
            result = asyncio.run(anonymous({"Authorization": f"{scheme} {stolen}"}))
            assert result.is_error
            assert (result.meta or {})[REFUSAL_META]["error"] in (
                "invalid_dpop_proof",
                "invalid_token",
            )
    assert ran == ["search:a"]
    assert guard.drain(10)
    refused = trail(live, action="authenticate", outcome="denied")
    assert len([e for e in refused if e["source"] == "guard/test-agent"]) == 3


def test_principal_configured_over_http_must_be_chosen(
    live: OAuthLive, guard: Guard, agent: AgentClient
) -> None:
    """For a local server the agent runs itself: its own token, by explicit choice."""
    ran: list[str] = []
    server = MCPServer("local")
    guard.protect(server, principal="configured")

    @server.tool()
    def search(query: str) -> str:
        ran.append(query)
        return query

    with serve_with_lifespan(server.streamable_http_app()) as url:

        async def main() -> Any:
            async with (
                httpx2.AsyncClient() as http,
                streamable_http_client(url + "/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                return await session.call_tool("search", {"query": "q"})

        assert not asyncio.run(main()).is_error
    assert ran == ["q"]


def test_the_middleware_refuses_a_bad_principal_mode(guard: Guard) -> None:
    with pytest.raises(ValueError, match="principal"):
        guard.mcp_middleware(principal="anyone")  # type: ignore[arg-type]
