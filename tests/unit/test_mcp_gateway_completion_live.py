"""The MCP gateway serves ``completion/complete`` (MCP 2026-07-28 "Completion"), decided
as the in-process guard decides it, with real servers on loopback ports.

* a control plane (uvicorn, SQLite) whose policy lets agents read what is in the
  ``docs`` and ``plain`` servers but the ``docs.leak`` prompt and the
  ``docs.admin://{id}/keys`` template, and the unrouted prompt ``ghost``;
* the ``docs`` upstream, an MCP server made with the official SDK (``MCPServer``) that
  registers a completion handler (``@server.completion()``) and takes only the
  brokered API key; it records every request's ``Authorization`` and ``DPoP`` fields
  and JSON-RPC method, and each completion its handler answers;
* the ``plain`` upstream: the same without a completion handler, so it declares no
  ``completions`` capability; the ``old`` upstream: ``docs`` but handshake-era only
  (it refuses ``server/discover``, so the gateway's sessions with it fall back);
* the real gateway (``build_app`` and its runtime, ``per_tool`` rate limit of 3 for
  ``completion/complete``), and a second one in front of ``plain`` only;
* agents: the stock SDK ``Client`` over ``streamable_http_client`` with DPoP-bound
  tokens and a fresh proof per request, on both eras; raw HTTP for malformed bodies.

What is checked: an allowed completion reaches the upstream under its upstream name
(the gateway's prefix stripped), with the brokered credential and never the agent's
token, and its values come back; a completion of what policy denies (and the listing
hides) is refused with ``-32003`` and never reaches the upstream; a malformed one is
``-32602`` with HTTP 400, audited; an unrouted one is decided and refused ``-32602``;
one for a server that declares no ``completions`` is refused ``-32601`` and never
sent; each decided completion is one ``authz.decision`` and no ``tool.call``; the
completion's rate-limit bucket is its own (``completion/complete``), not the
prompt's; and the gateway declares ``completions`` only when an upstream does.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import (
    Completion,
    CompletionArgument,
    CompletionContext,
    PromptReference,
    ResourceTemplateReference,
)
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until
from tests.unit.test_mcp_gateway_metrics_live import _DPoP

from agentiam.adapters.gateway.broker import KEY_ENV, Secret, SecretKind, SecretStore
from agentiam.adapters.gateway.mcp_calls import POLICY_DENIED
from agentiam.adapters.gateway.mcp_proxy import _replay, build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.credentials.sealing import MasterKey
from agentiam.sdk import AgentClient, AgentKey
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
COMPLETE = "completion/complete"
UPSTREAM_KEY = "completion-api-key-" + secrets.token_hex(8)  # the brokered credential
MODERN = "2026-07-28"
USERS = "users://{id}/profile"
ADMIN = "admin://{id}/keys"
GATEWAY = "complete-gw"
BARE = "complete-bare-gw"  # the second gateway: the plain server only
POLICIES = {
    "docs-reads": 'permit (principal, action == Action::"read", resource in McpServer::"docs");',
    "plain-reads": 'permit (principal, action == Action::"read", resource in McpServer::"plain");',
    "old-reads": 'permit (principal, action == Action::"read", resource in McpServer::"old");',
    "no-leak": 'forbid (principal, action, resource == DataSet::"prompt:docs.leak");',
    "no-admin": f'forbid (principal, action, resource == DataSet::"docs.{ADMIN}");',
    "ghost": 'permit (principal, action == Action::"read", resource == DataSet::"prompt:ghost");',
}
RATE_LIMITS = {"per_tool": {COMPLETE: {"rate_per_second": 0.001, "burst": 3}}}
AGENTS = (
    "modern",
    "legacy",
    "templates",
    "prober",
    "many",
    "plainer",
    "ghostly",
    "malformed",
    "typist",
    "declared",
)


# -- the upstreams ---------------------------------------------------------------------------


@dataclass
class Upstream:
    """An MCP server (official SDK) that takes only the brokered API key, with the
    prompts ``summarize`` and ``leak`` and the templates ``USERS`` and ``ADMIN``; with
    ``completes``, a completion handler suggesting ``<value>-suggested`` (for an
    argument named ``many``, 150 values: the SDK's server sends at most 100, so the
    other 50 are added to its answer on the wire, as a server not built with the SDK
    could send them). ``seen``: each request's ``Authorization`` and
    ``DPoP`` fields and JSON-RPC method; ``completed``: each completion answered."""

    name: str
    completes: bool
    handshake_only: bool = False  # refuses server/discover: its clients fall back
    seen: list[dict[str, Any]] = field(default_factory=list)
    completed: list[dict[str, Any]] = field(default_factory=list)
    server: MCPServer = field(init=False)

    def __post_init__(self) -> None:
        self.server = server = MCPServer(self.name)

        @server.prompt()
        def summarize(text: str) -> str:
            return f"Summarize: {text}"

        @server.prompt()
        def leak(secret: str) -> str:
            return f"the secret is {secret}"

        @server.resource(USERS)
        def profile(id: str) -> str:
            return f"user {id}"

        @server.resource(ADMIN)
        def keys(id: str) -> str:
            return f"keys of {id}"

        if not self.completes:
            return

        @server.completion()
        async def complete(
            ref: PromptReference | ResourceTemplateReference,
            argument: CompletionArgument,
            context: CompletionContext | None,
        ) -> Completion:
            item = ref.name if isinstance(ref, PromptReference) else ref.uri
            self.completed.append(
                {
                    "item": item,
                    "argument": argument.name,
                    "value": argument.value,
                    "context": context.arguments if context is not None else None,
                }
            )
            if argument.name == "many":  # 100 here (the SDK's own bound); 150 on the wire
                return Completion(values=[f"v{n}" for n in range(100)], total=150)
            return Completion(values=[argument.value + "-suggested"])

    def methods(self) -> list[str | None]:
        return [entry["method"] for entry in self.seen]

    def app(self) -> ASGIApp:
        inner: ASGIApp = self.server.streamable_http_app()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            headers = Headers(scope=scope)
            try:
                decoded = json.loads(body) if body else {}
            except ValueError:
                decoded = {}
            self.seen.append(
                {
                    "authorization": headers.get("authorization"),
                    "dpop": headers.get("dpop"),
                    "method": decoded.get("method") if isinstance(decoded, dict) else None,
                }
            )
            if headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
                await Response(status_code=401)(scope, receive, send)
                return
            discover = isinstance(decoded, dict) and decoded.get("method") == "server/discover"
            if self.handshake_only and discover:
                error = {"code": -32601, "message": "Method not found"}
                answer = {"jsonrpc": "2.0", "id": decoded.get("id"), "error": error}
                await JSONResponse(answer)(scope, receive, send)
                return
            many = b'"name":"many"' in body.replace(b" ", b"")
            await inner(scope, _replay(body, receive), _more_values(send) if many else send)

        return app


def _more_values(send: Send) -> Send:
    """``send``, with the answer's values ``v0`` .. ``v99`` followed by ``v100`` ..
    ``v149`` (an SSE answer: no ``Content-Length`` to change)."""
    more = "".join(f',"v{n}"' for n in range(100, 150)).encode()

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.body":
            body = message.get("body", b"").replace(b'"v99"]', b'"v99"' + more + b"]")
            message = {**message, "body": body}
        await send(message)

    return sending


# -- the world -------------------------------------------------------------------------------


@dataclass
class World:
    cp: OAuthLive
    url: str
    bare_url: str
    agents: dict[str, AgentClient]
    bare_agents: dict[str, AgentClient]  # the same agents, with tokens for the bare gateway
    docs: Upstream
    plain: Upstream
    old: Upstream

    @asynccontextmanager
    async def client(
        self, who: str, mode: str = MODERN, *, bare: bool = False
    ) -> AsyncIterator[Client]:
        agent = (self.bare_agents if bare else self.agents)[who]
        async with httpx2.AsyncClient(auth=_DPoP(agent), timeout=30) as http:
            url = self.bare_url if bare else self.url
            async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
                yield client

    def trail(self, who: str, kind: str, **params: str) -> list[dict[str, Any]]:
        with self.cp.admin_client() as admin:
            query = {"limit": "200", "type": kind, "agent_id": self.agents[who].client_id}
            r = admin.get("/v1/audit/events", params={**query, **params})
            assert r.status_code == 200, r.text
            items: list[dict[str, Any]] = r.json()["items"]
            return items


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-completion")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    secrets_key = MasterKey.generate_text()
    store = SecretStore(tmp / "secrets.json", MasterKey.from_text(secrets_key))
    store.put("upstream", SecretKind.API_KEY, Secret(UPSTREAM_KEY))
    env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
    port, bare_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    bare_url = f"http://127.0.0.1:{bare_port}/mcp"
    docs, plain = Upstream("docs", completes=True), Upstream("plain", completes=False)
    old = Upstream("old", completes=True, handshake_only=True)
    credential = {"secret": "upstream", "header": "Authorization", "prefix": "Bearer "}
    with (
        pytest.MonkeyPatch.context() as patch,
        oauth_live(f"sqlite:///{db}", policy_refresh_seconds=0.1) as cp,
        contextlib.ExitStack() as stack,
    ):
        patch.setenv(KEY_ENV, secrets_key)
        c = cp.container
        for name, text in POLICIES.items():
            c.policies.put(CTX, name, text=text)
        servers = {}
        for upstream in (docs, plain, old):
            base = stack.enter_context(serve_in_thread(upstream.app(), lifespan="on"))
            servers[upstream.name] = {
                "name": upstream.name,
                "url": base + "/mcp",
                "credential": credential,
            }
        apps = []
        for name, at, on, served in (
            (GATEWAY, url, port, [servers["docs"], servers["plain"], servers["old"]]),
            (BARE, bare_url, bare_port, [servers["plain"]]),
        ):
            verifier = c.admin_keys.create(
                CTX, name=name, role="verifier", sources=[f"gateway/{name}"]
            ).secret
            key_env = f"{env}_{len(apps)}"
            patch.setenv(key_env, verifier)
            config = load_config(
                {
                    "name": name,
                    "public_url": at,
                    "listen": {"host": "127.0.0.1", "port": on},
                    "control_plane": {"url": cp.url, "key_env": key_env},
                    "spool": {"directory": str(tmp / f"spool-{name}")},
                    "secrets": {"store": str(tmp / "secrets.json")},
                    "servers": served,
                    "rate_limits": RATE_LIMITS,
                }
            )
            app = build_app(config, GatewayRuntime.start(config.gateway))
            stack.enter_context(serve_in_thread(app, on, lifespan="on"))
            apps.append(app)
        agents, bare_agents = {}, {}
        for who in AGENTS:
            key = AgentKey.generate()
            agent_id = c.agents.register(
                CTX,
                NewAgent(
                    name=f"complete-{who}-bot",
                    owners=[cp.owner_id],
                    purpose="asks for completions",
                    environment="production",
                    activate=True,
                    keys=[key.public_jwk()],
                    audiences=[url, bare_url],
                ),
            ).id
            agents[who] = AgentClient(cp.url, client_id=agent_id, key=key, resource=url)
            bare_agents[who] = AgentClient(cp.url, client_id=agent_id, key=key, resource=bare_url)
            stack.callback(agents[who].close)
            stack.callback(bare_agents[who].close)
        for app in apps:
            link = app.state.gateway.runtime.link
            assert _until(
                lambda link=link: all(
                    a.client_id in link.authorizer().entities.agents for a in agents.values()
                )
            )
        yield World(cp, url, bare_url, agents, bare_agents, docs, plain, old)


def _ref(item: str) -> PromptReference | ResourceTemplateReference:
    """A prompt's reference, or a template's (an item with ``://``)."""
    if "://" in item:
        return ResourceTemplateReference(uri=item)
    return PromptReference(name=item)


async def _complete(
    client: Client, item: str, argument: str, context: dict[str, str] | None = None
) -> Completion | MCPError:
    """The completion of ``argument`` (``name=value``) of ``item``, or its refusal."""
    name, value = argument.split("=", 1)
    try:
        result = await client.complete(_ref(item), {"name": name, "value": value}, context)
    except MCPError as exc:
        return exc
    return result.completion


def _decisions(world: World, who: str, entity: str) -> list[dict[str, Any]]:
    """``who``'s ``authz.decision`` events about ``DataSet::"<entity>"``, once shipped."""
    found = _until(lambda: world.trail(who, "authz.decision", resource_id=entity))
    return list(found or [])


def _upstream_untouched_by_agents(upstream: Upstream) -> None:
    """Every request the upstream got carried the brokered key and no DPoP proof."""
    assert upstream.seen
    assert {e["authorization"] for e in upstream.seen} == {f"Bearer {UPSTREAM_KEY}"}
    assert {e["dpop"] for e in upstream.seen} == {None}


# -- allowed: relayed -------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "mode"), [("modern", MODERN), ("legacy", "legacy")])
def test_an_allowed_completion_is_relayed_under_the_upstream_name(
    world: World, who: str, mode: str
) -> None:
    """The agent asks for ``docs.summarize``; the upstream's handler sees
    ``summarize`` (the prefix stripped), the argument and the context as sent, over a
    request carrying the brokered key, never the agent's token; the agent gets its
    values. One ``authz.decision`` (allowed, ``read`` on ``prompt:docs.summarize``),
    no ``tool.call``."""
    value = f"{who}-{secrets.token_hex(3)}"

    async def go() -> Completion | MCPError:
        async with world.client(who, mode) as client:
            return await _complete(client, "docs.summarize", f"text={value}", {"tone": "dry"})

    answer = anyio.run(go)
    assert isinstance(answer, Completion), answer
    assert answer.values == [f"{value}-suggested"]
    (seen,) = [c for c in world.docs.completed if c["value"] == value]
    assert seen == {
        "item": "summarize",
        "argument": "text",
        "value": value,
        "context": {"tone": "dry"},
    }
    _upstream_untouched_by_agents(world.docs)
    (decision,) = _decisions(world, who, "prompt:docs.summarize")
    assert decision["outcome"] == "success"
    assert decision["action"] == "read"
    assert world.trail(who, "tool.call") == []
    assert world.trail(who, "api.request.rejected") == []


def test_a_templates_completion_is_relayed_under_its_upstream_template(world: World) -> None:
    value = f"t-{secrets.token_hex(3)}"

    async def go() -> Completion | MCPError:
        async with world.client("templates") as client:
            return await _complete(client, f"docs.{USERS}", f"id={value}")

    answer = anyio.run(go)
    assert isinstance(answer, Completion), answer
    assert answer.values == [f"{value}-suggested"]
    (seen,) = [c for c in world.docs.completed if c["value"] == value]
    assert seen["item"] == USERS
    (decision,) = _decisions(world, "templates", f"docs.{USERS}")
    assert decision["outcome"] == "success"
    assert world.trail("templates", "tool.call") == []


def test_an_upstreams_long_answer_is_cut_to_100_values(world: World) -> None:
    """MCP "Completion": at most 100 values (2026-07-28's schema says so; 2025-11-25's
    only in prose, so a handshake-era upstream's client session takes 150); the rest
    is said to exist (``hasMore``). Over a handshake-era upstream (``old``), to a
    2026-07-28 agent."""

    async def go() -> Completion | MCPError:
        async with world.client("many") as client:
            return await _complete(client, "old.summarize", "many=v")

    answer = anyio.run(go)
    assert isinstance(answer, Completion), answer
    assert answer.values == [f"v{n}" for n in range(100)]
    assert answer.has_more is True
    assert answer.total == 150
    assert "initialize" in world.old.methods()  # a handshake-era upstream
    _upstream_untouched_by_agents(world.old)


# -- refused -----------------------------------------------------------------------------------


def test_a_hidden_or_denied_items_completion_is_refused_and_never_sent(world: World) -> None:
    """The attack: the listings hide ``docs.leak`` and the admin template (policy
    forbids reading them); the agent asks for completions of their arguments anyway
    (the suggestions would name what they hold). Refused with ``-32003``, the
    upstream's handler never runs; each refusal is an ``authz.decision`` deny. An
    unrouted name no policy permits is denied alike."""
    before = len(world.docs.completed)

    async def go() -> tuple[set[str], list[Completion | MCPError]]:
        async with world.client("prober") as client:
            shown = {p.name for p in (await client.list_prompts()).prompts}
            templates = (await client.list_resource_templates()).resource_templates
            shown |= {t.uri_template for t in templates}
            answers = [
                await _complete(client, item, "secret=a")
                for item in ("docs.leak", f"docs.{ADMIN}", "nowhere.leak")
            ]
            return shown, answers

    shown, answers = anyio.run(go)
    assert "docs.summarize" in shown
    assert f"docs.{USERS}" in shown
    assert "docs.leak" not in shown
    assert f"docs.{ADMIN}" not in shown
    for answer in answers:
        assert isinstance(answer, MCPError), answer
        assert answer.code == POLICY_DENIED
        assert "AgentIAM refused this completion" in answer.message
    assert len(world.docs.completed) == before
    for entity in ("prompt:docs.leak", f"docs.{ADMIN}", "prompt:nowhere.leak"):
        (decision,) = _decisions(world, "prober", entity)
        assert decision["outcome"] == "denied"
    assert world.trail("prober", "tool.call") == []


def test_an_allowed_completion_no_server_serves_is_refused_after_its_decision(
    world: World,
) -> None:
    """``ghost`` is permitted but routes to no server (no prefix matches): decided,
    as a ``prompts/get`` of it is, then refused ``-32602`` and audited (status 404);
    nothing is sent upstream."""
    before = world.docs.methods() + world.plain.methods()

    async def go() -> Completion | MCPError:
        async with world.client("ghostly") as client:
            return await _complete(client, "ghost", "a=b")

    answer = anyio.run(go)
    assert isinstance(answer, MCPError), answer
    assert answer.code == -32602
    assert "no upstream server serves 'ghost'" in answer.message
    (decision,) = _decisions(world, "ghostly", "prompt:ghost")
    assert decision["outcome"] == "success"
    (refusal,) = _until(lambda: world.trail("ghostly", "api.request.rejected"))
    assert refusal["details"]["status"] == 404
    assert refusal["trace"]["trace_id"] == decision["trace"]["trace_id"]
    after = world.docs.methods() + world.plain.methods()
    assert after.count(COMPLETE) == before.count(COMPLETE)


def test_a_server_that_declares_no_completions_is_never_sent_one(world: World) -> None:
    """``plain`` declares no ``completions``: its prompt's completion, though
    policy allows it, is refused ``-32601`` and never sent there; audited."""

    async def go() -> Completion | MCPError:
        async with world.client("plainer") as client:
            return await _complete(client, "plain.summarize", "text=x")

    answer = anyio.run(go)
    assert isinstance(answer, MCPError), answer
    assert answer.code == -32601
    assert "does not serve completions" in answer.message
    assert COMPLETE not in world.plain.methods()
    (decision,) = _decisions(world, "plainer", "prompt:plain.summarize")
    assert decision["outcome"] == "success"
    (refusal,) = _until(lambda: world.trail("plainer", "api.request.rejected"))
    assert refusal["details"]["status"] == 404
    assert "does not serve completions" in refusal["reason"]


MALFORMED: list[tuple[dict[str, Any], str]] = [
    ({"ref": {"type": "ref/tool", "name": "docs.summarize"}}, "params.ref"),
    ({"ref": {"type": "ref/prompt", "name": "docs." + "p" * 300}}, "params.ref.name"),
    ({"ref": {"type": "ref/resource", "uri": "prompt:docs.summarize"}}, "params.ref.uri"),
    ({"argument": {"name": "text", "value": "v" * 501}}, "params.argument"),
    ({"argument": {"name": "", "value": "v"}}, "params.argument"),
    ({"argument": {"name": "text"}}, "params.argument"),
    ({"context": {"arguments": {"tone": 1}}}, "params.context.arguments"),
    ({"context": {"arguments": {f"a{n}": "x" for n in range(257)}}}, "params.context.arguments"),
]


def test_a_malformed_completion_is_refused_400_and_audited(world: World) -> None:
    """Each is refused before any decision, with ``-32602`` at HTTP 400, audited as
    ``api.request.rejected`` (action ``completion/complete``, status 400); the
    upstream's handler never runs."""
    before = len(world.docs.completed)
    base = {
        "ref": {"type": "ref/prompt", "name": "docs.summarize"},
        "argument": {"name": "text", "value": "q"},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2025-11-25",
    }
    with httpx2.Client(auth=_DPoP(world.agents["malformed"]), timeout=10) as http:
        for n, (change, why) in enumerate(MALFORMED):
            body = {"jsonrpc": "2.0", "id": n, "method": COMPLETE, "params": {**base, **change}}
            r = http.post(world.url, headers=headers, json=body)
            assert r.status_code == 400, (change, r.text)
            assert r.json()["error"]["code"] == -32602
            assert why in r.json()["error"]["message"], (why, r.text)
    assert len(world.docs.completed) == before

    def recorded() -> list[dict[str, Any]]:
        found = world.trail("malformed", "api.request.rejected")
        return found if len(found) >= len(MALFORMED) else []

    events = _until(recorded)
    assert len(events) == len(MALFORMED)
    assert {(e["action"], e["details"]["status"]) for e in events} == {(COMPLETE, 400)}
    assert world.trail("malformed", "authz.decision") == []


def test_completions_spend_their_own_bucket_not_the_prompts(world: World) -> None:
    """As at the guard: a completion takes its token from the per-tool bucket keyed
    ``completion/complete`` (3 here), so typing does not spend the prompt's own
    budget: the 4th completion is refused (rate limit, never sent), a
    ``prompts/get`` of the same prompt still goes through."""
    before = len(world.docs.completed)

    async def go() -> tuple[list[Completion | MCPError], str]:
        async with world.client("typist") as client:
            answers = [await _complete(client, "docs.summarize", f"text={n}") for n in range(4)]
            prompt = await client.get_prompt("docs.summarize", {"text": "hello"})
            return answers, str(prompt.messages[0].content)

    answers, prompt = anyio.run(go)
    assert [isinstance(a, Completion) for a in answers] == [True, True, True, False]
    refused = answers[3]
    assert isinstance(refused, MCPError)
    assert refused.code == -32600
    assert "Summarize: hello" in prompt
    assert len(world.docs.completed) == before + 3


# -- what the gateway declares ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_completions_are_declared_only_when_an_upstream_declares_them(
    world: World, mode: str
) -> None:
    """The gateway in front of ``docs`` and ``plain`` declares ``completions`` (docs
    does); the one in front of ``plain`` alone does not: in the handshake's
    ``initialize`` result (``legacy``) and 2026-07-28's ``server/discover`` (``auto``)."""

    async def go() -> tuple[Any, Any]:
        async with world.client("declared", mode) as client:
            both = client.server_capabilities
        async with world.client("declared", mode, bare=True) as client:
            bare = client.server_capabilities
        return both, bare

    both, bare = anyio.run(go)
    assert both.completions is not None
    assert both.prompts is not None
    assert bare.prompts is not None
    assert bare.completions is None
