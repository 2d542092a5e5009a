"""The MCP gateway's upstream sessions: one per agent and subject, never shared, with
real servers on loopback ports: a control plane (uvicorn, SQLite), handshake-era
upstream MCP servers that keep state per session (the SDK's ``MCPServer`` behind a
wrapper that refuses the stateless 2026-07-28 era, so the gateway's client falls back
to the initialize handshake, and that takes only the brokered API key), a stateless
(2026-07-28) one, and the real gateway (``build_app`` and its runtime), called by the
stock SDK ``Client`` with real DPoP-bound tokens.

1. an agent's state upstream is its own: it sees it again over new connections, in
   either era; another agent tries to read it and finds none; two humans delegating
   to one agent get two sessions (and the agent alone a third); a stateless upstream
   is called over its one session, whoever calls;
2. bounded (``servers[].sessions``): at ``max_open`` the least recently used idle
   session is closed for a new one; when every one has a call in flight the call is
   refused at once with a JSON-RPC error and a failed ``tool.call`` (status 503); a
   session with no call in flight for ``idle_seconds`` is closed (not one in flight);
   churn leaves no task and no upstream session behind;
3. the gateway's shutdown ends every upstream session (the upstream forgets them).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from tests.api.mcp_support import refuse_modern_probe
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until

from agentiam.adapters.gateway.broker import KEY_ENV, Secret, SecretKind, SecretStore
from agentiam.adapters.gateway.mcp_proxy import McpGateway, build_app, load_config
from agentiam.adapters.gateway.mcp_sdk_state import open_sessions
from agentiam.adapters.gateway.mcp_upstream import Upstream
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.credentials.sealing import MasterKey
from agentiam.sdk import AgentClient, AgentKey
from agentiam.sdk.proofs import dpop_proof
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.grants import NewGrant
from agentiam.services.humans import NewHuman

CTX = CallContext.system("test")
UPSTREAM_KEY = "upstream-api-key-" + "51d0"  # the brokered credential's value
GATEWAYS = ("sess-main", "sess-bounded", "sess-shut")
T = TypeVar("T")


# -- the upstreams ---------------------------------------------------------------------------


@dataclass
class Stateful:
    """A handshake-era MCP server keeping a list per session (``remember``/``recall``),
    telling its session id (``whoami``), and holding a call until ``gate`` is set
    (``block``). ``stateless``: it serves the 2026-07-28 era instead (no sessions)."""

    stateless: bool = False
    state: dict[str, list[str]] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)  # sessions with a block() in flight
    gate: threading.Event = field(default_factory=threading.Event)
    authorizations: set[str | None] = field(default_factory=set)  # every one it was sent
    server: MCPServer = field(init=False)

    def __post_init__(self) -> None:
        self.server = MCPServer("shell")

        def sid(ctx: Context) -> str:
            return (ctx.headers or {}).get("mcp-session-id", "")

        @self.server.tool()
        def remember(value: str, ctx: Context) -> str:
            """Adds ``value`` to this session's list; returns the session id."""
            self.state.setdefault(sid(ctx), []).append(value)
            return sid(ctx)

        @self.server.tool()
        def recall(ctx: Context) -> str:
            """This session's list, comma-separated."""
            return ",".join(self.state.get(sid(ctx), []))

        @self.server.tool()
        def whoami(ctx: Context) -> str:
            """This session's id."""
            return sid(ctx)

        @self.server.tool()
        async def block(ctx: Context) -> str:
            """Holds the call until the test sets the gate."""
            self.blocked.append(sid(ctx))
            try:
                await anyio.to_thread.run_sync(self.gate.wait, 30)
            finally:
                self.blocked.remove(sid(ctx))
            return "released"

    def app(self) -> ASGIApp:
        inner = self.server.streamable_http_app()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            headers = Headers(scope=scope)
            self.authorizations.add(headers.get("authorization"))
            if headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
                await Response(status_code=401)(scope, receive, send)
                return
            if not self.stateless and await refuse_modern_probe(scope, receive, send):
                return
            await inner(scope, receive, send)

        return app

    def open_sessions(self) -> int:
        """The sessions the upstream holds (the SDK's session manager's table)."""
        return len(open_sessions(self.server.session_manager))


# -- the gateway and its callers -------------------------------------------------------------


class LoopProbe:
    """ASGI wrapper that remembers the event loop the app's lifespan runs on, so the
    test can look at the gateway's tasks from its own thread."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)


@dataclass
class Gateway:
    url: str
    gateway: McpGateway
    probe: LoopProbe

    def upstream(self, name: str) -> Upstream:
        return self.gateway.upstreams[name]

    def on_loop(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the gateway's event loop (where its state changes)."""
        assert self.probe.loop is not None

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.probe.loop).result(10)

    def tasks(self, server: str) -> int:
        """The gateway's live tasks that hold sessions of ``server``."""
        name = f"mcp-upstream-{server}"
        return self.on_loop(lambda: sum(1 for t in asyncio.all_tasks() if t.get_name() == name))


@dataclass
class Caller:
    """Whom a call is for: an agent's token (its own, or one acting for a human)."""

    agent_id: str
    token: str
    key: AgentKey


class AgentAuth(httpx2.Auth):
    """RFC 9449 for the stock MCP client: the token and a fresh proof per request."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    def auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        token = self.caller.token
        request.headers["Authorization"] = f"DPoP {token}"
        request.headers["DPoP"] = dpop_proof(
            self.caller.key, method=request.method, url=str(request.url), access_token=token
        )
        yield request


@asynccontextmanager
async def connect(url: str, caller: Caller, *, mode: str = "auto") -> AsyncIterator[Client]:
    """The stock SDK client on the gateway (``mode``: "auto" picks 2026-07-28; "legacy"
    opens a handshake-era session at the gateway)."""
    async with httpx2.AsyncClient(auth=AgentAuth(caller), timeout=30) as http:
        client = Client(streamable_http_client(url, http_client=http), mode=mode, cache=None)
        async with client:
            yield client


async def call(url: str, caller: Caller, tool: str, mode: str = "auto", **args: Any) -> str:
    """One tool call over a new connection; its text."""
    async with connect(url, caller, mode=mode) as client:
        result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    return " ".join(getattr(block, "text", "") for block in result.content)


async def until_async(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """:func:`tests.support.live.until` for async code (polls every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        await anyio.sleep(0.02)
    return value


@dataclass
class World:
    cp: OAuthLive
    tmp: Path
    ports: dict[str, int]
    env: str  # the variable holding the gateways' verifier key
    upstreams: dict[str, tuple[Stateful, str]]  # name -> the server and its URL
    clients: list[AgentClient] = field(default_factory=list)

    def url(self, gateway: str) -> str:
        return f"http://127.0.0.1:{self.ports[gateway]}/mcp"

    @contextmanager
    def gateway(self, name: str, servers: dict[str, dict[str, Any]]) -> Iterator[Gateway]:
        """A running gateway ``name`` in front of ``servers`` (upstream name -> extra
        keys of its entry), each with the brokered API key."""
        config = load_config(
            {
                "name": name,
                "public_url": self.url(name),
                "listen": {"host": "127.0.0.1", "port": self.ports[name]},
                "control_plane": {"url": self.cp.url, "key_env": self.env},
                "spool": {"directory": str(self.tmp / name / "spool")},
                "secrets": {"store": str(self.tmp / "secrets.json")},
                "servers": [
                    {
                        "name": upstream,
                        "url": self.upstreams[upstream][1],
                        "credential": {
                            "secret": "upstream",
                            "header": "Authorization",
                            "prefix": "Bearer ",
                        },
                        **extra,
                    }
                    for upstream, extra in servers.items()
                ],
                "catalog_seconds": 0,
            }
        )
        app = build_app(config, GatewayRuntime.start(config.gateway))
        probe = LoopProbe(app)
        with serve_in_thread(probe, self.ports[name], lifespan="on"):
            yield Gateway(self.url(name), app.state.gateway, probe)

    def agent(self, *ready: Gateway) -> tuple[AgentClient, Caller]:
        """A new agent of the owner's, allowed at every gateway of the module, known to
        the ``ready`` ones; its client and its own token's caller."""
        key = AgentKey.generate()
        agent = self.cp.container.agents.register(
            CTX,
            NewAgent(
                name=f"shell-bot-{secrets.token_hex(3)}",
                owners=[self.cp.owner_id],
                purpose="keeps state upstream",
                environment="production",
                activate=True,
                keys=[key.public_jwk()],
                scopes=["mcp"],
                audiences=[self.url(name) for name in GATEWAYS],
            ),
        )
        client = AgentClient(self.cp.url, client_id=agent.id, key=key, resource=ready[0].url)
        self.clients.append(client)
        for gateway in ready:  # they learn of it with the next policy bundle (long poll)
            link = gateway.gateway.runtime.link
            assert _until(lambda link=link: agent.id in link.authorizer().entities.agents)
        return client, self.caller(client, ready[0].url)

    def caller(self, client: AgentClient, url: str) -> Caller:
        return Caller(client.client_id, client.token(url).value, client.dpop_key)

    def acting_for(self, client: AgentClient, gateway: Gateway) -> Caller:
        """A token of ``client``'s agent acting for a new human who granted it, once
        ``gateway`` knows the human."""
        c, url = self.cp.container, gateway.url
        human = c.humans.create(
            CTX,
            NewHuman(display_name="Hal", email=f"hal-{secrets.token_hex(4)}@example.com"),
        )
        c.grants.create(
            CTX,
            NewGrant(
                human_id=human.id,
                agent_id=client.client_id,
                scopes=["mcp"],
                audiences=[url],
                ttl_seconds=3600,
            ),
        )
        subject, _ = c.grants.human_token(CTX, human.id, agent_id=client.client_id)
        token = client.act_for(subject, resource=url)
        link = gateway.gateway.runtime.link
        assert _until(lambda: human.id in link.authorizer().entities.humans)
        return Caller(client.client_id, token.value, client.dpop_key)

    def tool_calls(self, agent_id: str) -> list[dict[str, Any]]:
        with self.cp.admin_client() as admin:
            r = admin.get(
                "/v1/audit/events", params={"type": "tool.call", "agent_id": agent_id, "limit": 200}
            )
            assert r.status_code == 200, r.text
            return list(r.json()["items"])


UPSTREAMS = {
    "state": False,  # handshake-era, default bounds
    "plain": True,  # stateless (2026-07-28)
    "tight": False,  # sessions.max_open: 2
    "brief": False,  # sessions.idle_seconds: 1
    "shut": False,  # behind the gateway that is shut down
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-sessions")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    secrets_key = MasterKey.generate_text()
    SecretStore(tmp / "secrets.json", MasterKey.from_text(secrets_key)).put(
        "upstream", SecretKind.API_KEY, Secret(UPSTREAM_KEY)
    )
    env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
    with (
        pytest.MonkeyPatch.context() as patch,
        oauth_live(f"sqlite:///{db}", policy_refresh_seconds=0.1) as cp,
        contextlib.ExitStack() as stack,
    ):
        patch.setenv(KEY_ENV, secrets_key)
        c = cp.container
        c.policies.put(CTX, "all", text="permit (principal, action, resource);")
        verifier = c.admin_keys.create(
            CTX, name="mcp-gw", role="verifier", sources=[f"gateway/{n}" for n in GATEWAYS]
        ).secret
        patch.setenv(env, verifier)
        upstreams: dict[str, tuple[Stateful, str]] = {}
        for name, stateless in UPSTREAMS.items():
            server = Stateful(stateless=stateless)
            base = stack.enter_context(serve_in_thread(server.app(), lifespan="on"))
            upstreams[name] = (server, base + "/mcp")
        world = World(cp, tmp, {n: free_port() for n in GATEWAYS}, env, upstreams)
        try:
            yield world
        finally:
            for client in world.clients:
                client.close()


@pytest.fixture(scope="module")
def main(world: World) -> Iterator[Gateway]:
    """The default bounds: a handshake-era upstream and a stateless one."""
    with world.gateway("sess-main", {"state": {}, "plain": {}}) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def bounded(world: World) -> Iterator[Gateway]:
    """Small bounds: two sessions for calls (tight), one second of idleness (brief)."""
    servers = {"tight": {"sessions": {"max_open": 2}}, "brief": {"sessions": {"idle_seconds": 1}}}
    with world.gateway("sess-bounded", servers) as gateway:
        yield gateway


def _upstream(world: World, name: str) -> Stateful:
    return world.upstreams[name][0]


# -- 1. one upstream session per agent and subject --------------------------------------------


def test_an_agent_keeps_its_own_state_and_another_cannot_read_it(
    world: World, main: Gateway
) -> None:
    _, alice = world.agent(main)
    _, bob = world.agent(main)
    secret = f"alice-{secrets.token_hex(4)}"

    async def scenario() -> None:
        alice_session = await call(main.url, alice, "state.remember", value=secret)
        assert len(alice_session) == 32  # the upstream's session id: a handshake-era one
        # Alice sees her state again over new connections to the gateway, in either era
        assert await call(main.url, alice, "state.recall") == secret
        assert await call(main.url, alice, "state.recall", mode="legacy") == secret
        # Bob tries to read it: his calls go over a session of his own, empty
        assert await call(main.url, bob, "state.recall") == ""
        assert await call(main.url, bob, "state.recall", mode="legacy") == ""
        bob_session = await call(main.url, bob, "state.whoami")
        assert len(bob_session) == 32
        assert bob_session != alice_session
        await call(main.url, bob, "state.remember", value="bob's")
        assert await call(main.url, alice, "state.recall") == secret

    anyio.run(scenario)
    upstream = _upstream(world, "state")
    assert secret in ",".join(v for values in upstream.state.values() for v in values)
    # every upstream request carried the brokered key, never an agent's token or proof
    assert upstream.authorizations == {f"Bearer {UPSTREAM_KEY}"}


def test_two_humans_delegating_to_one_agent_get_separate_sessions(
    world: World, main: Gateway
) -> None:
    client, own = world.agent(main)
    hanna = world.acting_for(client, main)
    hugo = world.acting_for(client, main)
    secret = f"hanna-{secrets.token_hex(4)}"

    async def scenario() -> None:
        sessions = {
            await call(main.url, hanna, "state.remember", value=secret),
            await call(main.url, hugo, "state.whoami"),
            await call(main.url, own, "state.whoami"),
        }
        assert len(sessions) == 3  # the agent for Hanna, for Hugo, and on its own
        assert await call(main.url, hanna, "state.recall") == secret
        # the same agent acting for Hugo, or for itself, cannot read Hanna's state
        assert await call(main.url, hugo, "state.recall") == ""
        assert await call(main.url, own, "state.recall") == ""

    anyio.run(scenario)


def test_a_session_the_upstream_ended_is_opened_anew(world: World, main: Gateway) -> None:
    """The upstream ends an agent's session (as on its restart or its own idle expiry):
    the agent's next call fails (its state is gone), the one after gets a new session
    (Streamable HTTP, "Session Management": a 404 to the session's id)."""
    _, alice = world.agent(main)
    upstream_url = world.upstreams["state"][1]
    first = anyio.run(partial(call, main.url, alice, "state.remember", value="lost"))
    ended = httpx.delete(
        upstream_url,
        headers={
            "Authorization": f"Bearer {UPSTREAM_KEY}",
            "Mcp-Session-Id": first,
            "MCP-Protocol-Version": "2025-06-18",
        },
        timeout=10,
    )
    assert ended.status_code in (200, 204), ended.text

    async def scenario() -> None:
        async with connect(main.url, alice) as client:
            with pytest.raises(MCPError) as failed:
                await client.call_tool("state.recall", {})
        assert failed.value.error.message == "upstream state: Session not found"
        second = await call(main.url, alice, "state.whoami")
        assert len(second) == 32
        assert second != first
        assert await call(main.url, alice, "state.recall") == ""

    anyio.run(scenario)


def test_a_stateless_upstream_is_called_over_its_one_session(world: World, main: Gateway) -> None:
    """A 2026-07-28 upstream keeps no session: every caller's calls go over the
    catalog session, as before (the benchmark's hot path opens no more sessions)."""
    _, alice = world.agent(main)
    _, bob = world.agent(main)

    async def scenario() -> None:
        for caller in (alice, bob, alice):
            assert await call(main.url, caller, "plain.whoami") == ""  # no session id

    anyio.run(scenario)
    plain = main.upstream("plain")
    assert main.on_loop(lambda: (plain.open_for_calls, plain.holding)) == (0, 1)
    assert main.tasks("plain") == 1


# -- 2. bounded: LRU eviction, all busy, idle expiry --------------------------------------


def test_at_the_bound_the_least_recently_used_idle_session_is_closed(
    world: World, bounded: Gateway
) -> None:
    (_, a), (_, b), (_, c) = (world.agent(bounded) for _ in range(3))
    upstream = _upstream(world, "tight")

    async def scenario() -> None:
        await call(bounded.url, a, "tight.remember", value="a1")
        await call(bounded.url, b, "tight.remember", value="b1")
        assert await call(bounded.url, a, "tight.recall") == "a1"  # a: most recently used
        await call(bounded.url, c, "tight.remember", value="c1")  # closes b's, the LRU one
        # the upstream holds the catalog session and two for calls, no more
        assert await until_async(lambda: upstream.open_sessions() == 3)
        assert await call(bounded.url, a, "tight.recall") == "a1"
        assert await call(bounded.url, c, "tight.recall") == "c1"
        assert await call(bounded.url, b, "tight.recall") == ""  # its state went with it

    anyio.run(scenario)
    tight = bounded.upstream("tight")
    assert bounded.on_loop(lambda: tight.open_for_calls) == 2


def test_when_every_session_is_busy_a_call_fails_closed_at_once(
    world: World, bounded: Gateway
) -> None:
    (_, a), (_, b), (_, c) = (world.agent(bounded) for _ in range(3))
    upstream = _upstream(world, "tight")
    results: list[str] = []

    async def scenario() -> None:
        async def blocked(caller: Caller) -> None:
            results.append(await call(bounded.url, caller, "tight.block"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked, a)
            tg.start_soon(blocked, b)
            assert await until_async(lambda: len(upstream.blocked) == 2)
            started = time.monotonic()
            async with connect(bounded.url, c) as client:
                with pytest.raises(MCPError) as refused:
                    await client.call_tool("tight.remember", {"value": "c1"})
            assert time.monotonic() - started < 5  # refused at once, not queued
            upstream.gate.set()
        assert results == ["released", "released"]
        assert "all 2 upstream sessions are in use; retry later" in refused.value.error.message
        # once the others are idle again, C gets a session (the LRU one is closed)
        assert await call(bounded.url, c, "tight.remember", value="c1")

    try:
        anyio.run(scenario)
    finally:
        upstream.gate.clear()

    def outcomes() -> list[tuple[str, int, str]]:
        events = world.tool_calls(c.agent_id)
        found = [(e["outcome"], e["details"]["status"], e["details"]["tool"]) for e in events]
        return found if len(found) == 2 else []

    assert sorted(_until(outcomes)) == [
        ("failure", 503, "tight.remember"),
        ("success", 200, "tight.remember"),
    ]
    # /metrics counts the refusal as the gateway's own unavailability, not the upstream's
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(bounded.url))
    counted = {
        (s.labels["method"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(httpx.get(origin + "/metrics").text)
        for s in family.samples
        if s.name == "agentiam_mcp_gateway_requests_total"
    }
    assert counted[("tools/call", "unavailable")] == 1
    assert ("tools/call", "upstream_error") not in counted


def test_a_session_idle_too_long_is_closed_and_one_in_flight_is_not(
    world: World, bounded: Gateway
) -> None:
    _, a = world.agent(bounded)
    upstream = _upstream(world, "brief")
    brief = bounded.upstream("brief")

    async def scenario() -> None:
        await call(bounded.url, a, "brief.remember", value="kept")
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, bounded.url, a, "brief.block")
            assert await until_async(lambda: len(upstream.blocked) == 1)
            await anyio.sleep(2.5)  # the time under test: past idle_seconds (1)
            assert bounded.on_loop(lambda: brief.open_for_calls) == 1  # a call in flight
            upstream.gate.set()
        assert await call(bounded.url, a, "brief.recall") == "kept"
        # with no call in flight it is closed after a second: at the gateway and upstream
        assert await until_async(lambda: bounded.on_loop(lambda: brief.open_for_calls) == 0)
        assert await until_async(lambda: upstream.open_sessions() == 1)  # the catalog's
        assert await call(bounded.url, a, "brief.recall") == ""  # a new session

    try:
        anyio.run(scenario)
    finally:
        upstream.gate.clear()


def test_churn_leaves_no_task_and_no_upstream_session_behind(
    world: World, bounded: Gateway
) -> None:
    """Four agents in turn on two sessions: each call closes another's session; what
    stays is the bound, in tasks at the gateway and sessions upstream."""
    callers = [world.agent(bounded)[1] for _ in range(4)]
    upstream = _upstream(world, "tight")
    tight = bounded.upstream("tight")

    async def scenario() -> None:
        for _ in range(3):
            for caller in callers:
                assert len(await call(bounded.url, caller, "tight.whoami")) == 32

    anyio.run(scenario)
    assert _until(lambda: upstream.open_sessions() == 3)  # the catalog and two for calls
    assert _until(lambda: bounded.tasks("tight") == 3)
    assert bounded.on_loop(lambda: (tight.open_for_calls, tight.holding)) == (2, 3)


# -- 3. shutdown ----------------------------------------------------------------------------


def test_shutdown_ends_every_upstream_session(world: World) -> None:
    upstream = _upstream(world, "shut")
    with world.gateway("sess-shut", {"shut": {}}) as gateway:
        _, a = world.agent(gateway)
        _, b = world.agent(gateway)

        async def scenario() -> None:
            await call(gateway.url, a, "shut.remember", value="a")
            await call(gateway.url, b, "shut.remember", value="b")

        anyio.run(scenario)
        assert upstream.open_sessions() == 3
        shut = gateway.upstream("shut")
    # the lifespan closed them before the gateway stopped: the upstream was told (DELETE)
    assert upstream.open_sessions() == 0
    assert (shut.open_for_calls, shut.holding) == (0, 0)
