"""The MCP SDK's private session table, read through adapters/gateway/mcp_sdk_state.py
(the one place the gateway reads SDK internals): against the installed SDK, a real
session opened by the official client over Streamable HTTP (uvicorn on loopback)
appears there and leaves when the client ends it; an SDK without the attributes
fails loudly, naming the version the module mirrors."""

from __future__ import annotations

from typing import Any, cast

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.connection import Connection
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from tests.support.live import serve_in_thread
from tests.support.live import until as _until

from agentiam.adapters.gateway.mcp_sdk_state import (
    SDK_VERSION,
    connection_of,
    open_sessions,
    session_owners,
)


def _server() -> MCPServer:
    server = MCPServer("probe")

    @server.tool()
    def echo(text: str) -> str:
        """Say it back."""
        return text

    return server


def test_the_installed_sdk_has_the_tables_this_module_reads() -> None:
    """Fails as soon as an SDK release renames or drops either private attribute."""
    server = _server()
    server.streamable_http_app()  # the manager is made with the app
    manager = server.session_manager
    assert isinstance(manager, StreamableHTTPSessionManager)
    assert dict(open_sessions(manager)) == {}
    assert dict(session_owners(manager)) == {}


def test_a_real_session_appears_while_it_is_open() -> None:
    server = _server()
    app = server.streamable_http_app()
    manager = server.session_manager

    ids: set[str] = set()

    async def seen(response: httpx2.Response) -> None:
        if "mcp-session-id" in response.headers:
            ids.add(response.headers["mcp-session-id"])

    async def session() -> dict[str, Any]:
        hooks = {"response": [seen]}
        async with httpx2.AsyncClient(timeout=30, event_hooks=hooks) as http:
            transport = streamable_http_client(url + "/mcp", http_client=http)
            async with Client(transport, mode="legacy") as client:
                await client.call_tool("echo", {"text": "hi"})
                return dict(open_sessions(manager))

    with serve_in_thread(app, lifespan="on") as url:
        during = anyio.run(session)
        assert len(ids) == 1  # the session the server gave the client
        assert list(during) == list(ids)
        assert isinstance(during[ids.pop()], StreamableHTTPServerTransport)
        # no principal (the server has no auth): the owners' table holds nobody
        assert dict(session_owners(manager)) == {}
        assert _until(lambda: not open_sessions(manager)), "the ended session is still open"


class _Renamed:
    """A session manager of a later SDK that keeps its sessions under other names."""

    def __init__(self) -> None:
        self.sessions: dict[str, Any] = {}
        self._server_instances = None  # not the dict this module reads


@pytest.mark.parametrize("read", [open_sessions, session_owners])
def test_an_sdk_without_the_tables_fails_loudly(read: Any) -> None:
    manager = cast(StreamableHTTPSessionManager, _Renamed())
    with pytest.raises(RuntimeError, match=f"as of mcp {SDK_VERSION}"):
        read(manager)


def test_a_requests_session_gives_its_connection() -> None:
    """A handshake-era request's ``ServerSession`` leads to the connection whose
    standalone stream the gateway tells of list changes."""
    server = MCPServer("probe")
    found: list[Any] = []

    @server.tool()
    def where(ctx: Context) -> str:
        """Which connection this is."""
        found.append(connection_of(ctx.session))
        return "here"

    async def call() -> None:
        async with Client(url + "/mcp", mode="legacy") as client:
            await client.call_tool("where", {})

    with serve_in_thread(server.streamable_http_app(), lifespan="on") as url:
        anyio.run(call)
    assert len(found) == 1
    assert isinstance(found[0], Connection)


def test_a_session_without_its_connection_fails_loudly() -> None:
    with pytest.raises(RuntimeError, match=f"as of mcp {SDK_VERSION}"):
        connection_of(cast(Any, _Renamed()))
