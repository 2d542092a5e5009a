"""The MCP gateway acts on an upstream's ``notifications/tools/list_changed`` (MCP,
server/tools, "List Changed Notification"; adapters/gateway/mcp_upstream.py,
``Upstream.follow``). Real servers on loopback ports: a control plane (uvicorn,
SQLite), two upstream MCP servers (the SDK's low-level ``Server``) whose tool list the
test changes at run time, one of the stateless 2026-07-28 era (its notifications reach
the gateway over a ``subscriptions/listen`` stream) and one of the handshake era (over
the standalone GET stream of the session that listed its tools), and the real gateway
with ``catalog_seconds`` 3600, driven by the official SDK client.

- a tool the upstream drops is refused as unknown, and no longer listed, within about
  a second, and never reaches the upstream again; a tool it adds is listed and callable;
- a flood of notifications costs the upstream about one ``tools/list`` a second, and
  the change announced last is seen;
- a fetch that fails after a list_changed leaves the server's tools unknown (fail
  closed) until a fetch succeeds;
- the notifications and refetches are counted in ``/metrics``;
- an agent's handshake-era session (the stock SDK client) that was shown a tool of the
  server is told ``notifications/tools/list_changed`` on its standalone stream, and
  lists again; one that listed no tools is not told.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Receive, Scope, Send
from tests.api.mcp_support import refuse_modern_probe
from tests.api.oauth_support import oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until
from tests.unit.test_mcp_gateway_metrics_live import World as Agentside
from tests.unit.test_mcp_gateway_metrics_live import _delta, _DPoP, _register, _value

from agentiam.adapters.gateway.mcp_proxy import build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.sdk import AgentClient
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
SOURCE = "gateway/mcp-list-changed"
POLICIES = {"all-tools": 'permit (principal, action == Action::"invoke_tool", resource);'}
NOTICES = "agentiam_mcp_gateway_upstream_list_changed_total"
REFETCHES = "agentiam_mcp_gateway_upstream_refetches_total"
ADMIN = "change"
ADMIN_HEADER = "x-test-admin"  # the upstream's tool the test calls directly; never listed


class Changing:
    """An upstream MCP server (the SDK's low-level ``Server``) listing the tools in
    ``tools``, counting the gateway's ``tools/list`` requests, and changing its list when the
    test calls its unlisted ``change`` tool directly: ``remove`` and ``add`` names,
    then ``times`` notifications ``pause`` seconds apart; ``failing``: its
    ``tools/list`` fails until a later change clears it. A notification goes to every
    ``subscriptions/listen`` stream (2026-07-28) and, for a handshake-era server
    (``stateless`` False: it refuses the 2026-07-28 probe), to the standalone stream of
    every session that listed its tools."""

    def __init__(self, name: str, tools: set[str], *, stateless: bool) -> None:
        self.tools = set(tools)
        self.listings = 0
        self.ran: list[str] = []
        self.failing = False
        self.stateless = stateless
        self.sessions: list[Any] = []  # the handshake-era sessions that listed
        self.bus = InMemorySubscriptionBus()
        self.server: Server[Any] = Server(
            name,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_subscriptions_listen=ListenHandler(self.bus),
        )

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        # the test's own client (which lists to validate results) is neither counted nor failed
        gateway = ADMIN_HEADER not in getattr(ctx.request, "headers", {})
        self.listings += gateway
        if self.failing and gateway:
            raise MCPError(INTERNAL_ERROR, "the listing is broken")
        handshake = ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
        if handshake and all(s is not ctx.session for s in self.sessions):
            self.sessions.append(ctx.session)
        schema = {"type": "object"}
        return ListToolsResult(
            tools=[Tool(name=n, input_schema=schema) for n in sorted(self.tools)]
        )

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams
    ) -> CallToolResult:
        args = params.arguments or {}
        if params.name == ADMIN:
            self.tools -= set(args.get("remove", ()))
            self.tools |= set(args.get("add", ()))
            self.failing = bool(args.get("failing", False))
            for _ in range(int(args.get("times", 1))):
                await self.announce()
                await anyio.sleep(float(args.get("pause", 0)))
            return CallToolResult(content=[TextContent(text="changed")])
        self.ran.append(params.name)  # served whether listed or not: the gateway decides
        return CallToolResult(content=[TextContent(text=f"{params.name} ran")])

    async def announce(self) -> None:
        await self.bus.publish(ToolsListChanged())
        for session in list(self.sessions):
            try:
                await session.send_tool_list_changed()
            except Exception:  # a session that has gone
                self.sessions.remove(session)

    def app(self) -> ASGIApp:
        inner = self.server.streamable_http_app(
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False)
        )

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if not self.stateless and await refuse_modern_probe(scope, receive, send):
                return
            await inner(scope, receive, send)

        return app


@dataclass
class World:
    agentside: Agentside
    upstreams: dict[str, Changing]
    urls: dict[str, str]

    def call(self, name: str) -> Any:
        """The tool result, or the MCPError the call raised."""
        return self.agentside.call(name)

    def listed(self) -> set[str]:
        async def go() -> Any:
            async with self.agentside.client() as client:
                return await client.list_tools()

        return {t.name for t in anyio.run(go).tools}

    def change(self, server: str, **args: Any) -> None:
        """Call the upstream's ``change`` tool directly (not through the gateway)."""

        async def go() -> None:
            headers = {ADMIN_HEADER: "1"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=30) as http,
                Client(streamable_http_client(self.urls[server], http_client=http)) as client,
            ):
                result = await client.call_tool(ADMIN, args)
                assert not result.is_error, result

        anyio.run(go)


def unknown(outcome: Any) -> bool:
    return isinstance(outcome, MCPError) and "unknown tool" in outcome.message


def allowed(outcome: Any) -> bool:
    return isinstance(outcome, CallToolResult) and not outcome.is_error


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-list-changed")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = base + "/mcp"
    upstreams = {
        "live": Changing("live", {"keep", "drop", "flaky"}, stateless=True),
        "old": Changing("old", {"keep", "drop", "flaky"}, stateless=False),
    }
    with oauth_live(f"sqlite:///{db}", policy_refresh_seconds=0.1) as cp:
        c = cp.container
        for policy_id, text in POLICIES.items():
            c.policies.put(CTX, policy_id, text=text)
        agent_id, agent_key = _register(cp, "list-changed-bot", url)
        verifier = c.admin_keys.create(CTX, name="mcp-gw", role="verifier", sources=[SOURCE]).secret
        env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        try:
            with (
                serve_in_thread(upstreams["live"].app(), lifespan="on") as live_url,
                serve_in_thread(upstreams["old"].app(), lifespan="on") as old_url,
            ):
                urls = {"live": live_url + "/mcp", "old": old_url + "/mcp"}
                config = load_config(
                    {
                        "name": SOURCE.removeprefix("gateway/"),
                        "public_url": url,
                        "listen": {"host": "127.0.0.1", "port": port},
                        "control_plane": {"url": cp.url, "key_env": env},
                        "spool": {"directory": str(tmp / "spool")},
                        "servers": [{"name": n, "url": u} for n, u in urls.items()],
                        "catalog_seconds": 3600,  # only a list_changed refreshes the lists
                    }
                )
                app = build_app(config, GatewayRuntime.start(config.gateway))
                with serve_in_thread(app, port, lifespan="on"):
                    agent = AgentClient(cp.url, client_id=agent_id, key=agent_key, resource=url)
                    try:
                        side = Agentside(cp, url, base, agent, agent)
                        yield World(side, upstreams, urls)
                    finally:
                        agent.close()
        finally:
            os.environ.pop(env, None)


SERVERS = ["live", "old"]  # the 2026-07-28 era (subscriptions/listen), the handshake era


@pytest.mark.parametrize("server", SERVERS)
def test_a_removed_tool_is_refused_within_a_second(world: World, server: str) -> None:
    assert f"{server}.drop" in world.listed()
    assert allowed(world.call(f"{server}.drop"))
    upstream = world.upstreams[server]
    ran = upstream.ran.count("drop")
    world.change(server, remove=["drop"])
    started = time.monotonic()
    assert _until(lambda: unknown(world.call(f"{server}.drop")), timeout=5)
    assert time.monotonic() - started < 1.5
    assert f"{server}.drop" not in world.listed()
    assert f"{server}.keep" in world.listed()
    assert upstream.ran.count("drop") == ran  # the refused call never reached it
    assert allowed(world.call(f"{server}.keep"))


@pytest.mark.parametrize("server", SERVERS)
def test_an_added_tool_is_listed_and_callable_within_a_second(world: World, server: str) -> None:
    assert f"{server}.late" not in world.listed()
    world.change(server, add=["late"])
    started = time.monotonic()
    assert _until(lambda: f"{server}.late" in world.listed(), timeout=5)
    assert time.monotonic() - started < 1.5
    assert allowed(world.call(f"{server}.late"))
    assert world.upstreams[server].ran.count("late") == 1


@pytest.mark.parametrize("server", SERVERS)
def test_a_flood_of_notifications_costs_about_one_listing_a_second(
    world: World, server: str
) -> None:
    upstream = world.upstreams[server]
    time.sleep(1.1)  # past the last refetch of the other tests
    before = upstream.listings
    started = time.monotonic()
    # 150 notifications over about 3 seconds; the last one announces "last"
    world.change(server, times=150, pause=0.02)
    world.change(server, add=["last"])
    assert _until(lambda: f"{server}.last" in world.listed(), timeout=5)
    took = time.monotonic() - started
    fetched = upstream.listings - before
    assert 1 <= fetched <= int(took) + 2, (fetched, took)


@pytest.mark.parametrize("server", SERVERS)
def test_a_failed_refetch_leaves_the_servers_tools_unknown_until_one_succeeds(
    world: World, server: str
) -> None:
    """Fail closed: after the upstream said its list changed, the last listing is
    out of date by its own word; when it cannot be fetched again, none of its tools
    is forwarded (a tool it dropped must not stay callable for catalog_seconds)."""
    upstream = world.upstreams[server]
    assert allowed(world.call(f"{server}.flaky"))
    ran = upstream.ran.count("flaky")
    world.change(server, failing=True, remove=["flaky"])
    assert _until(lambda: unknown(world.call(f"{server}.keep")), timeout=5)
    assert unknown(world.call(f"{server}.flaky"))
    assert not {n for n in world.listed() if n.startswith(f"{server}.")}
    assert upstream.ran.count("flaky") == ran
    world.change(server, times=0)  # fixed, without a notification
    # a call naming a tool fetches the listing again (at most once a second)
    assert _until(lambda: allowed(world.call(f"{server}.keep")), timeout=5)
    assert unknown(world.call(f"{server}.flaky"))
    assert f"{server}.keep" in world.listed()


def test_notifications_and_refetches_are_counted(world: World) -> None:
    before = world.agentside.samples()
    for server in SERVERS:
        world.change(server, times=3)

    def counted() -> Any:
        now = world.agentside.samples()
        done = all(_delta(before, now, REFETCHES, server=n, outcome="fetched") for n in SERVERS)
        return done and now

    after = _until(counted)
    assert after
    for server in SERVERS:
        assert _delta(before, after, NOTICES, server=server) >= 3
        # the failed refetch of the test before
        assert _value(after, REFETCHES, server=server, outcome="failed") >= 1


@pytest.mark.filterwarnings("ignore:ping is removed")
def test_an_agent_session_shown_the_servers_tools_is_told(world: World) -> None:
    async def go() -> tuple[list[str], list[str], set[str]]:
        heard: dict[str, list[str]] = {"lister": [], "quiet": []}

        def handler(who: str) -> Any:
            async def handle(message: Any) -> None:
                heard[who].append(str(getattr(message, "method", type(message).__name__)))

            return handle

        url = world.agentside.url
        async with (
            httpx2.AsyncClient(auth=_DPoP(world.agentside.agent), timeout=30) as h1,
            httpx2.AsyncClient(auth=_DPoP(world.agentside.agent), timeout=30) as h2,
            Client(
                streamable_http_client(url, http_client=h1),
                mode="legacy",
                message_handler=handler("lister"),
            ) as lister,
            Client(
                streamable_http_client(url, http_client=h2),
                mode="legacy",
                message_handler=handler("quiet"),
            ) as quiet,
        ):
            assert "live.keep" in {t.name for t in (await lister.list_tools()).tools}
            await quiet.send_ping()  # a session, but no listing
            await anyio.sleep(0.3)  # the standalone GET streams are open
            await anyio.to_thread.run_sync(lambda: world.change("live", add=["told"]))
            with anyio.move_on_after(5):
                while "notifications/tools/list_changed" not in heard["lister"]:
                    await anyio.sleep(0.05)
            await anyio.sleep(0.5)
            again = {t.name for t in (await lister.list_tools()).tools}
        return heard["lister"], heard["quiet"], again

    lister, quiet, again = anyio.run(go)
    assert "notifications/tools/list_changed" in lister
    assert "notifications/tools/list_changed" not in quiet
    assert "live.told" in again
