"""The MCP gateway tells agents of list changes on both protocol eras
(adapters/gateway/mcp_listen.py): 2026-07-28 agents on a ``subscriptions/listen``
stream (SEP-2575), handshake-era agents on their session's standalone GET stream;
tools, resources and prompts alike; only agents whose last listing showed them
something of the server that changed. Long-lived streams obey the token they were
opened with: revocation ends them within a second, expiry and the outage bound end
them too, and listen streams are bounded per agent.

Real servers on loopback ports: a control plane (uvicorn, SQLite), two stateless
(2026-07-28) upstream MCP servers (the SDK's low-level ``Server`` with its
``ListenHandler``) whose tools, resources and prompts the test changes at run time,
and the real gateway with ``catalog_seconds`` 3600, driven by the official SDK
client (and by raw HTTP where the client would hide the answer).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import Subscription, SubscriptionLost
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    ListPromptsResult,
    ListResourcesResult,
    ListToolsResult,
    PaginatedRequestParams,
    Prompt,
    Resource,
    TextContent,
    Tool,
)
from prometheus_client.parser import text_string_to_metric_families
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until
from tests.unit.test_mcp_gateway_metrics_live import _DPoP, _register

from agentiam.adapters.gateway.mcp_proxy import MAX_SESSIONS_PER_OWNER, build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.sdk import AgentClient, AgentKey
from agentiam.sdk.proofs import dpop_proof
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
SOURCE = "gateway/mcp-listen"
MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
ADMIN = "change"
LISTEN = "subscriptions/listen"


class Lists:
    """A stateless upstream MCP server listing ``tools``, ``resources`` and
    ``prompts``; its unlisted ``change`` tool, called directly by the test, adds names
    to them and announces the change on every ``subscriptions/listen`` stream."""

    def __init__(self, name: str) -> None:
        self.tools = {"keep"}
        self.resources = {"file:///keep"}
        self.prompts = {"greet"}
        self.bus = InMemorySubscriptionBus()
        self.server: Server[Any] = Server(
            name,
            on_list_tools=self._list_tools,
            on_list_resources=self._list_resources,
            on_list_prompts=self._list_prompts,
            on_call_tool=self._call_tool,
            on_subscriptions_listen=ListenHandler(self.bus),
        )

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        schema = {"type": "object"}
        return ListToolsResult(
            tools=[Tool(name=n, input_schema=schema) for n in sorted(self.tools)]
        )

    async def _list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        items = [Resource(uri=u, name=u.rsplit("/", 1)[-1]) for u in sorted(self.resources)]
        return ListResourcesResult(resources=items)

    async def _list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams | None
    ) -> ListPromptsResult:
        return ListPromptsResult(prompts=[Prompt(name=n) for n in sorted(self.prompts)])

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams
    ) -> CallToolResult:
        args = params.arguments or {}
        if params.name == ADMIN:
            group = str(args["group"])
            added = str(args["add"])
            if group == "tools":
                self.tools.add(added)
                await self.bus.publish(ToolsListChanged())
            elif group == "resources":
                self.resources.add(added)
                await self.bus.publish(ResourcesListChanged())
            else:
                self.prompts.add(added)
                await self.bus.publish(PromptsListChanged())
            return CallToolResult(content=[TextContent(text="changed")])
        return CallToolResult(content=[TextContent(text=f"{params.name} ran")])

    def app(self) -> Any:
        return self.server.streamable_http_app(
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False)
        )


class _Pinned(httpx2.Auth):
    """One given token on every request, with a fresh proof (RFC 9449)."""

    def __init__(self, agent: AgentClient, token: str) -> None:
        self.agent, self.token = agent, token

    def auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers["Authorization"] = f"DPoP {self.token}"
        request.headers["DPoP"] = dpop_proof(
            self.agent.dpop_key,
            method=request.method,
            url=str(request.url),
            access_token=self.token,
        )
        yield request


@dataclass
class World:
    cp: OAuthLive
    url: str
    upstreams: dict[str, Lists]
    urls: dict[str, str]
    agents: dict[str, AgentClient]
    runtime: GatewayRuntime
    gateway: Any

    @asynccontextmanager
    async def client(
        self, who: str, mode: str = MODERN, handler: Any = None, auth: Any = None
    ) -> AsyncIterator[Client]:
        async with httpx2.AsyncClient(auth=auth or _DPoP(self.agents[who]), timeout=30) as http:
            client = Client(
                streamable_http_client(self.url, http_client=http),
                mode=mode,
                **({"message_handler": handler} if handler is not None else {}),
            )
            async with client:
                yield client

    def change(self, server: str, group: str, add: str) -> None:
        """Call the upstream's ``change`` tool directly (not through the gateway)."""

        async def go() -> None:
            async with (
                httpx2.AsyncClient(timeout=30) as http,
                Client(streamable_http_client(self.urls[server], http_client=http)) as client,
            ):
                result = await client.call_tool(ADMIN, {"group": group, "add": add})
                assert not result.is_error, result

        anyio.run(go)

    def trail(self, who: str | None, kind: str = "api.request.rejected") -> list[dict[str, Any]]:
        """The control plane's events of ``kind`` for agent ``who`` (None: any)."""
        with self.cp.admin_client() as admin:
            params = {"limit": "200", "type": kind}
            if who is not None:
                params["agent_id"] = self.agents[who].client_id
            r = admin.get("/v1/audit/events", params=params)
            assert r.status_code == 200, r.text
            items: list[dict[str, Any]] = r.json()["items"]
            return items


# who may see what: "seer" everything; "blind" only the "other" server's tools
AGENTS = ("seer", "blind", "revoked", "revoked-get", "expiring", "bounded", "outage")
ELSEWHERE = "https://elsewhere.example/mcp"  # another resource the "foreign" agent may ask for
SHORT_LIVED = 5  # seconds: the ephemeral agent of the expiry test, and so its token


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-listen")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    upstreams = {"live": Lists("live"), "other": Lists("other")}
    with oauth_live(
        f"sqlite:///{db}",
        policy_refresh_seconds=0.1,
        access_token_ttl_seconds=30,
        # the short-lived agent of the expiry test is not decommissioned (which would
        # revoke its token) while the test watches its token expire
        expiry_sweep_seconds=3600,
    ) as cp:
        c = cp.container
        registered: dict[str, tuple[str, AgentKey]] = {
            who: _register(cp, f"listen-{who}-bot", url) for who in AGENTS
        }
        key = AgentKey.generate()
        foreign = c.agents.register(
            CTX,
            NewAgent(
                name="listen-foreign-bot",
                owners=[cp.owner_id],
                purpose="holds a token for another resource",
                environment="production",
                activate=True,
                keys=[key.public_jwk()],
                audiences=[url, ELSEWHERE],
            ),
        )
        registered["foreign"] = (foreign.id, key)
        blind = registered["blind"][0]
        c.policies.put(
            CTX,
            "all-but-blind",
            text=(
                f'permit (principal, action, resource) unless {{ principal == Agent::"{blind}" }};'
            ),
        )
        c.policies.put(
            CTX,
            "blind-sees-other-tools",
            text=(
                f'permit (principal == Agent::"{blind}", action == Action::"invoke_tool", '
                'resource in McpServer::"other");'
            ),
        )
        verifier = c.admin_keys.create(CTX, name="mcp-gw", role="verifier", sources=[SOURCE]).secret
        env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        try:
            with (
                serve_in_thread(upstreams["live"].app(), lifespan="on") as live_url,
                serve_in_thread(upstreams["other"].app(), lifespan="on") as other_url,
            ):
                urls = {"live": live_url + "/mcp", "other": other_url + "/mcp"}
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
                runtime = GatewayRuntime.start(config.gateway)
                app = build_app(config, runtime)
                with serve_in_thread(app, port, lifespan="on"):
                    agents = {
                        who: AgentClient(cp.url, client_id=i, key=k, resource=url)
                        for who, (i, k) in registered.items()
                    }
                    try:
                        yield World(cp, url, upstreams, urls, agents, runtime, app.state.gateway)
                    finally:
                        for agent in agents.values():
                            agent.close()
        finally:
            os.environ.pop(env, None)


async def _next(sub: Subscription, seconds: float) -> Any:
    """The next event within ``seconds``, or None."""
    with anyio.move_on_after(seconds):
        return await sub.__anext__()
    return None


async def _names(client: Client, group: str) -> set[str]:
    if group == "tools":
        return {t.name for t in (await client.list_tools()).tools}
    if group == "resources":
        return {r.uri for r in (await client.list_resources()).resources}
    return {p.name for p in (await client.list_prompts()).prompts}


LISTEN_FLAGS = {
    "tools": "tools_list_changed",
    "resources": "resources_list_changed",
    "prompts": "prompts_list_changed",
}
EVENTS = {
    "tools": ToolsListChanged,
    "resources": ResourcesListChanged,
    "prompts": PromptsListChanged,
}


@pytest.mark.parametrize("group", ["tools", "resources", "prompts"])
def test_a_listen_stream_is_told_only_if_its_agent_was_shown_the_server(
    world: World, group: str
) -> None:
    """2026-07-28: the stock client's ``listen`` gets the change of a server its
    agent's listing showed (listed after the stream was opened, as a client does);
    an agent shown nothing of that server is not told, on a stream of its own."""

    async def go() -> tuple[Any, Any, set[str], Any]:
        flag = {LISTEN_FLAGS[group]: True}
        async with (
            world.client("seer") as seer,
            world.client("blind") as blind,
            seer.listen(**flag) as heard,
            blind.listen(**flag) as unheard,
        ):
            assert getattr(heard.honored, LISTEN_FLAGS[group]) is True
            assert heard.honored.resource_subscriptions is None
            assert any(n.startswith("live.") for n in await _names(seer, group))
            if group == "tools":  # the blind agent is shown the other server's tools only
                seen = await _names(blind, group)
                assert seen
                assert not any(n.startswith("live.") for n in seen)
            else:
                assert not await _names(blind, group)
            added = f"file:///new-{group}" if group == "resources" else f"new-{group}"
            await anyio.to_thread.run_sync(lambda: world.change("live", group, added))
            event = await _next(heard, 5)
            quiet = await _next(unheard, 1.5)
            again = await _names(seer, group)
            return event, quiet, again, added

    event, quiet, again, added = anyio.run(go)
    assert isinstance(event, EVENTS[group])
    assert quiet is None  # never told of a server it was shown nothing of
    assert f"live.{added}" in again


@pytest.mark.parametrize("group", ["resources", "prompts"])
def test_a_handshake_session_is_told_of_resource_and_prompt_changes(
    world: World, group: str
) -> None:
    """The handshake era: a session whose last listing showed it something of the
    server gets ``notifications/<group>/list_changed`` on its standalone stream; a
    session that listed nothing is not told."""

    async def go() -> tuple[list[str], list[str]]:
        heard: dict[str, list[str]] = {"lister": [], "quiet": []}

        def handler(who: str) -> Any:
            async def handle(message: Any) -> None:
                heard[who].append(str(getattr(message, "method", type(message).__name__)))

            return handle

        async with (
            world.client("seer", "legacy", handler("lister")) as lister,
            world.client("seer", "legacy", handler("quiet")) as quiet,
        ):
            assert lister.server_capabilities is not None
            assert any(n.startswith("live.") for n in await _names(lister, group))
            await quiet.list_tools()  # shown tools, but no listing of this group
            await anyio.sleep(0.3)  # the standalone GET streams are open
            added = "file:///hs-" + group if group == "resources" else "hs-" + group
            await anyio.to_thread.run_sync(lambda: world.change("live", group, added))
            wanted = f"notifications/{group}/list_changed"
            with anyio.move_on_after(5):
                while wanted not in heard["lister"]:
                    await anyio.sleep(0.05)
            await anyio.sleep(0.5)
        return heard["lister"], heard["quiet"]

    lister, quiet = anyio.run(go)
    assert f"notifications/{group}/list_changed" in lister
    assert f"notifications/{group}/list_changed" not in quiet


def test_list_changed_is_declared_on_both_eras(world: World) -> None:
    async def go() -> tuple[Any, Any]:
        # "auto": the stock client's server/discover probe (2026-07-28), answered
        async with world.client("seer", "auto") as modern, world.client("seer", "legacy") as old:
            assert modern.session.protocol_version == MODERN
            return modern.server_capabilities, old.server_capabilities

    modern, old = anyio.run(go)
    for caps in (modern, old):
        assert caps is not None
        assert caps.tools is not None
        assert caps.tools.list_changed is True
        assert caps.prompts is not None
        assert caps.prompts.list_changed is True
        assert caps.resources is not None
        assert caps.resources.list_changed is True
        assert not caps.resources.subscribe  # resources/updated is not relayed


async def _held_until_it_ends(sub: Subscription) -> tuple[float, BaseException | None]:
    """Iterate until the stream ends: when (time.time()) and how."""
    try:
        async for _ in sub:
            pass
    except SubscriptionLost as exc:
        return time.time(), exc.__cause__ or exc
    return time.time(), None


def test_revocation_ends_an_open_listen_stream_within_a_second(world: World) -> None:
    ended: list[tuple[float, BaseException | None]] = []
    revoked_at: list[float] = []
    token = world.agents["revoked"].token().value

    async def go() -> None:
        auth = _Pinned(world.agents["revoked"], token)
        async with (
            world.client("revoked", auth=auth) as c,
            c.listen(tools_list_changed=True) as sub,
        ):

            async def revoke() -> None:
                await anyio.sleep(0.5)
                agent_id = world.agents["revoked"].client_id
                await anyio.to_thread.run_sync(
                    lambda: world.cp.container.revocations.revoke_agent(CTX, agent_id, "drill")
                )
                revoked_at.append(time.time())

            async with anyio.create_task_group() as tg:
                tg.start_soon(revoke)
                with anyio.move_on_after(10):
                    ended.append(await _held_until_it_ends(sub))

    anyio.run(go)
    assert ended, "the listen stream outlived its revoked token"
    at, why = ended[0]
    assert at - revoked_at[0] < 1.0, f"the stream ended {at - revoked_at[0]:.2f} s after"
    assert isinstance(why, MCPError)
    assert "revoked" in why.message
    # a new stream with the revoked token is refused (401), and the end is audited
    assert _raw_listen(world, "revoked", token=token).status_code == 401
    events = world.trail("revoked")
    assert any(
        e["action"] == LISTEN and "revoked" in e["reason"] and e["details"]["status"] == 401
        for e in events
    ), events


def test_revocation_ends_a_handshake_sessions_get_stream_within_a_second(world: World) -> None:
    """The handshake era's standalone GET stream obeys the revocation set too (it
    lived as long as the client kept it before)."""
    agent = world.agents["revoked-get"]
    token = agent.token().value
    auth = _Pinned(agent, token)
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}

    async def go() -> tuple[float, float]:
        async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
            init = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": HANDSHAKE,
                    "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"},
                },
            }
            r = await http.post(world.url, json=init, headers=base)
            assert r.status_code == 200, r.text
            session = r.headers["mcp-session-id"]
            headers = {**base, "Mcp-Session-Id": session, "MCP-Protocol-Version": HANDSHAKE}
            done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert (await http.post(world.url, json=done, headers=headers)).status_code == 202
            get = {"Accept": "text/event-stream", "Mcp-Session-Id": session}
            get["MCP-Protocol-Version"] = HANDSHAKE
            async with http.stream("GET", world.url, headers=get) as stream:
                assert stream.status_code == 200
                revoked_at = 0.0

                async def revoke() -> None:
                    nonlocal revoked_at
                    await anyio.sleep(0.5)
                    await anyio.to_thread.run_sync(
                        lambda: world.cp.container.revocations.revoke_agent(
                            CTX, agent.client_id, "drill"
                        )
                    )
                    revoked_at = time.time()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(revoke)
                    with anyio.move_on_after(10):
                        await _drain(stream)
                    ended_at = time.time()
                return revoked_at, ended_at

    revoked_at, ended_at = anyio.run(go)
    assert ended_at - revoked_at < 1.0, f"the GET stream ended {ended_at - revoked_at:.2f} s after"
    events = world.trail("revoked-get")
    assert any(e["action"] == "GET" and "revoked" in e["reason"] for e in events), events


async def _drain(stream: httpx2.Response) -> None:
    """Read until the stream ends, cleanly or cut."""
    try:
        async for _ in stream.aiter_bytes():
            pass
    except httpx2.HTTPError:  # cut: ended all the same
        return


def _exp(token: str) -> float:
    payload = token.split(".")[1]
    return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])


def test_an_expired_token_ends_its_listen_stream(world: World) -> None:
    """The stream ends when its token does (``exp`` plus the verifier's clock skew,
    set to 0 here). The token is short-lived without waiting out the control plane's
    30 s minimum lifetime: its agent is a just-in-time child of the "expiring" agent
    living :data:`SHORT_LIVED` seconds, and a token never outlives its ephemeral agent
    (services/tokens.py), so ``exp`` is that close."""
    verifier = world.runtime.link.verifier
    config = verifier.config
    verifier.config = replace(config, skew=0)
    key = AgentKey.generate()
    child = world.cp.container.agents.register(
        CTX,
        NewAgent(
            name=f"listen-expiring-child-{secrets.token_hex(3)}",
            owners=[],
            purpose="lives a few seconds",
            environment="production",
            parent_id=world.agents["expiring"].client_id,
            ttl_seconds=SHORT_LIVED,
            activate=True,
            keys=[key.public_jwk()],
            audiences=[world.url],
        ),
    )
    agent = AgentClient(world.cp.url, client_id=child.id, key=key, resource=world.url)
    token = agent.token().value
    exp = _exp(token)
    assert exp - time.time() <= SHORT_LIVED, "the token outlives its ephemeral agent"
    try:

        async def go() -> tuple[float, BaseException | None] | None:
            async with httpx2.AsyncClient(auth=_Pinned(agent, token), timeout=30) as http:
                client = Client(streamable_http_client(world.url, http_client=http), mode=MODERN)
                async with client, client.listen(tools_list_changed=True) as sub:
                    with anyio.move_on_after(exp - time.time() + 5):
                        return await _held_until_it_ends(sub)
            return None

        ended = anyio.run(go)
    finally:
        verifier.config = config
        agent.close()
    assert ended is not None, "the listen stream outlived its token"
    at, why = ended
    assert exp - 0.2 <= at <= exp + 1.0, at - exp
    assert isinstance(why, MCPError)
    assert "expired" in why.message


def test_past_the_outage_bound_a_listen_stream_ends(world: World) -> None:
    """Fail closed: once the control plane has been out of reach past the outage
    bound (here: the bound lowered to 0 s on the running gateway), open streams end
    as every request is refused."""
    link = world.runtime.link
    bound = link.outage_seconds

    async def go() -> tuple[float, BaseException | None] | None:
        async with world.client("outage") as c, c.listen(tools_list_changed=True) as sub:
            link.outage_seconds = 0.0
            started = time.time()
            with anyio.move_on_after(5):
                at, why = await _held_until_it_ends(sub)
                return at - started, why
        return None

    try:
        ended = anyio.run(go)
    finally:
        link.outage_seconds = bound
    assert ended is not None, "the listen stream outlived the outage bound"
    took, why = ended
    assert took < 1.0
    assert isinstance(why, MCPError)
    assert "outage bound" in why.message


def _raw_listen(world: World, who: str | None, *, token: str | None = None) -> httpx2.Response:
    """One raw ``subscriptions/listen`` POST at 2026-07-28 (as ``who``, with
    ``token`` if given); a stream it opens is closed after its first bytes."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": "raw-listen",
        "method": LISTEN,
        "params": {"notifications": {"toolsListChanged": True}, "_meta": meta},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": LISTEN,
    }
    auth: Any = None
    if who is not None:
        agent = world.agents[who]
        auth = _Pinned(agent, token or agent.token().value)
    with (
        httpx2.Client(auth=auth, timeout=10) as http,
        http.stream("POST", world.url, json=body, headers=headers) as r,
    ):
        if r.status_code == 200:
            next(r.iter_bytes())  # the acknowledgement: the stream was open
        else:
            r.read()
        return r


def test_an_unauthenticated_or_foreign_audience_listen_is_refused_401(world: World) -> None:
    refused = _raw_listen(world, None)
    assert refused.status_code == 401
    assert "resource_metadata" in refused.headers["www-authenticate"]
    # a token for another resource (RFC 8707): its audience is not the gateway
    foreign = world.agents["foreign"]
    elsewhere = foreign.token(ELSEWHERE).value
    r = _raw_listen(world, "foreign", token=elsewhere)
    assert r.status_code == 401
    assert "resource_metadata" in r.headers["www-authenticate"]

    def refused() -> list[dict[str, Any]]:  # a token that does not verify names nobody
        return [
            e
            for e in world.trail(None)
            if e["details"]["status"] == 401 and "aud is not this resource" in (e["reason"] or "")
        ]

    assert _until(refused), world.trail(None)


def test_the_per_agent_bound_refuses_one_listen_stream_too_many(world: World) -> None:
    async def go() -> tuple[int, int]:
        async with world.client("bounded") as c:
            subs = [c.listen(tools_list_changed=True) for _ in range(MAX_SESSIONS_PER_OWNER)]
            async with subs[0]:
                for sub in subs[1:]:
                    await sub.__aenter__()
                try:
                    assert (
                        world.gateway.streams.listens((world.agents["bounded"].client_id,) * 2)
                        == MAX_SESSIONS_PER_OWNER
                    )
                    over = await anyio.to_thread.run_sync(lambda: _raw_listen(world, "bounded"))
                    other = await anyio.to_thread.run_sync(lambda: _raw_listen(world, "seer"))
                finally:
                    for sub in reversed(subs[1:]):
                        await sub.__aexit__(None, None, None)
        return over.status_code, other.status_code

    over, other = anyio.run(go)
    assert over == 429
    assert other == 200  # another agent is not held back
    # once they are closed, the agent may listen again
    assert _until(lambda: _raw_listen(world, "bounded").status_code == 200, timeout=5)

    def refused() -> bool:  # shipped to the control plane a moment after the answer
        events = world.trail("bounded")
        return any(e["action"] == LISTEN and e["details"]["status"] == 429 for e in events)

    assert _until(refused), world.trail("bounded")


def test_agents_told_and_streams_ended_are_counted(world: World) -> None:
    """Runs after the tests above (module order): they told listen streams and
    sessions, and ended streams for revocation and expiry."""
    base = world.url.removesuffix("/mcp")
    text = httpx2.get(base + "/metrics", timeout=10).text

    def value(name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    told = "agentiam_mcp_gateway_agents_told_total"
    assert value(told, list="tools", via="listen") >= 1
    assert value(told, list="resources", via="session") >= 1
    assert value(told, list="prompts", via="listen") >= 1
    ended = "agentiam_mcp_gateway_streams_ended_total"
    assert value(ended, reason="revoked") >= 2  # a listen stream and a GET stream
    assert value(ended, reason="expired") >= 1
    assert value(ended, reason="unavailable") >= 1
    assert "agentiam_mcp_gateway_listen_streams" in text
