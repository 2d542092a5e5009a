"""The MCP gateway never hands an agent the brokered credential an upstream echoes,
with real servers on loopback ports: a control plane (uvicorn, SQLite), upstream MCP
servers made with the official SDK (``MCPServer``) that take only the brokered API key
and whose tools return the request's header fields or quote ``Authorization`` in an
error, and the real gateway (``build_app`` and its runtime), called by the stock SDK
``Client`` with real DPoP-bound tokens.

1. a tool returning the request's headers, an error quoting ``Authorization``, a tool
   description holding the key: the agent sees ``*`` where the key was, never the
   key; the upstream did get it; the call's ``tool.call`` event says how often it was
   masked (``details.echoed``), a warning names the server (never the value), and
   ``agentiam_gateway_credential_echoes_total{where="body"}`` counts the answers;
2. the key split across two body chunks of the upstream's answer is masked too;
3. an answer in gzip is masked once decoded;
4. a call whose answer holds no key records no ``echoed``;
5. the key echoed encoded (base64 at each offset, base64url, hex) and, for a key
   holding the characters JSON escapes, a tool returning the request's headers as
   JSON (so JSON in the JSON-RPC message) or an error quoting it: masked too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from prometheus_client.parser import text_string_to_metric_families
from starlette.datastructures import Headers
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until

from agentiam.adapters.gateway.broker import KEY_ENV, Secret, SecretKind, SecretStore
from agentiam.adapters.gateway.mcp_proxy import build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.credentials.sealing import MasterKey
from agentiam.sdk import AgentClient, AgentKey
from agentiam.sdk.proofs import dpop_proof
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
UPSTREAM_KEY = "echoed-api-key-" + secrets.token_hex(8)  # the brokered credential's value
KEY = UPSTREAM_KEY.encode()
MASKED = "*" * len(UPSTREAM_KEY)
# a key with characters JSON escapes (ASCII: httpx2 writes field values as ASCII)
SPECIAL_KEY = 'k3y"with\\back/slash+plus&amp<lt>' + secrets.token_hex(8)
GATEWAY = "echo-gw"


# -- the upstreams ---------------------------------------------------------------------------


@dataclass
class Echoing:
    """An MCP server (official SDK) that takes only the brokered API key, whose tools
    hand it back: ``headers`` returns the request's header fields, ``refuse`` fails
    quoting ``Authorization``, ``keyed``'s description holds the key; ``clean``
    returns none of it. ``split``: every body message holding the key is sent as two,
    cut in the key's middle, a moment apart (two chunks on the wire). ``zipped``:
    JSON answers, compressed with gzip."""

    split: bool = False
    zipped: bool = False
    key: str = UPSTREAM_KEY  # the only key it takes
    secret: str = "upstream"  # the name of that key in the gateway's secret store
    authorizations: set[str | None] = field(default_factory=set)
    splits: int = 0  # body messages sent cut in two
    codings: set[str] = field(default_factory=set)  # the answers' Content-Encoding
    server: MCPServer = field(init=False)

    def __post_init__(self) -> None:
        self.server = MCPServer("echo")

        @self.server.tool()
        def headers(ctx: Context) -> str:
            """The request's header fields, as JSON."""
            return json.dumps(dict(ctx.headers or {}))

        @self.server.tool()
        def refuse(ctx: Context) -> str:
            """Fails, quoting the request's Authorization field."""
            raise ToolError(f"not allowed with {(ctx.headers or {}).get('authorization')}")

        @self.server.tool(description=f"Calls the API with the key {UPSTREAM_KEY}.")
        def keyed() -> str:
            return "done"

        @self.server.tool()
        def encoded(ctx: Context) -> str:
            """The request's Authorization field base64-encoded (as an echoed Basic
            credential, at each offset modulo 3), in base64url and in hex."""
            field = ((ctx.headers or {}).get("authorization") or "").encode()
            return json.dumps(
                {
                    "b64": [base64.b64encode(b"x" * n + field).decode() for n in range(3)],
                    "url": base64.urlsafe_b64encode(field).decode(),
                    "hex": field.hex(),
                }
            )

        @self.server.tool()
        def clean() -> str:
            """Returns nothing secret."""
            return "nothing to see"

    def app(self) -> ASGIApp:
        inner: ASGIApp = self.server.streamable_http_app(json_response=self.zipped)
        if self.zipped:
            inner = GZipMiddleware(inner, minimum_size=1)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            headers = Headers(scope=scope)
            self.authorizations.add(headers.get("authorization"))
            if headers.get("authorization") != f"Bearer {self.key}":
                await Response(status_code=401)(scope, receive, send)
                return
            await inner(scope, receive, self._splitting(send) if self.split else self._noting(send))

        return app

    def _noting(self, send: Send) -> Send:
        async def noting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                fields = Headers(raw=message.get("headers", []))
                self.codings.add(fields.get("content-encoding", "identity"))
            await send(message)

        return noting_send

    def _splitting(self, send: Send) -> Send:
        async def split_send(message: Message) -> None:
            body = message.get("body", b"")
            at = body.find(KEY) if message["type"] == "http.response.body" else -1
            if at == -1:
                await send(message)
                return
            cut = at + len(KEY) // 2
            self.splits += 1
            await send({**message, "body": body[:cut], "more_body": True})
            await anyio.sleep(0.1)  # the first half leaves alone, in a chunk of its own
            await send({**message, "body": body[cut:]})

        return split_send


# -- the gateway and its caller --------------------------------------------------------------


@dataclass
class Caller:
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
async def connect(url: str, caller: Caller) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(auth=AgentAuth(caller), timeout=30) as http:
        client = Client(streamable_http_client(url, http_client=http), cache=None)
        async with client:
            yield client


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


@dataclass
class World:
    cp: OAuthLive
    url: str
    agent_id: str
    caller: Caller
    upstreams: dict[str, Echoing]

    def tool_calls(self) -> list[dict[str, Any]]:
        with self.cp.admin_client() as admin:
            r = admin.get(
                "/v1/audit/events",
                params={"type": "tool.call", "agent_id": self.agent_id, "limit": 200},
            )
            assert r.status_code == 200, r.text
            return list(r.json()["items"])

    def event(self, tool: str) -> dict[str, Any]:
        """The ``tool.call`` event of the one call of ``tool``."""
        found = _until(lambda: [e for e in self.tool_calls() if e["details"]["tool"] == tool])
        assert len(found) == 1, found
        return dict(found[0])

    def echoes(self) -> float:
        """``agentiam_gateway_credential_echoes_total{where="body"}`` now."""
        origin = self.url.removesuffix("/mcp")
        for family in text_string_to_metric_families(httpx.get(origin + "/metrics").text):
            for sample in family.samples:
                name, labels = sample.name, sample.labels
                if name == "agentiam_gateway_credential_echoes_total" and labels["where"] == "body":
                    return sample.value
        return 0.0


UPSTREAMS = {
    "echo": Echoing(),
    "split": Echoing(split=True),
    "zipped": Echoing(zipped=True),
    "special": Echoing(key=SPECIAL_KEY, secret="special"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-echo")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    secrets_key = MasterKey.generate_text()
    store = SecretStore(tmp / "secrets.json", MasterKey.from_text(secrets_key))
    store.put("upstream", SecretKind.API_KEY, Secret(UPSTREAM_KEY))
    store.put("special", SecretKind.API_KEY, Secret(SPECIAL_KEY))
    env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    with (
        pytest.MonkeyPatch.context() as patch,
        oauth_live(f"sqlite:///{db}", policy_refresh_seconds=0.1) as cp,
        contextlib.ExitStack() as stack,
    ):
        patch.setenv(KEY_ENV, secrets_key)
        c = cp.container
        c.policies.put(CTX, "all", text="permit (principal, action, resource);")
        verifier = c.admin_keys.create(
            CTX, name="mcp-gw", role="verifier", sources=[f"gateway/{GATEWAY}"]
        ).secret
        patch.setenv(env, verifier)
        servers = []
        for name, upstream in UPSTREAMS.items():
            base = stack.enter_context(serve_in_thread(upstream.app(), lifespan="on"))
            credential = {
                "secret": upstream.secret,
                "header": "Authorization",
                "prefix": "Bearer ",
            }
            servers.append({"name": name, "url": base + "/mcp", "credential": credential})
        config = load_config(
            {
                "name": GATEWAY,
                "public_url": url,
                "listen": {"host": "127.0.0.1", "port": port},
                "control_plane": {"url": cp.url, "key_env": env},
                "spool": {"directory": str(tmp / "spool")},
                "secrets": {"store": str(tmp / "secrets.json")},
                "servers": servers,
                "catalog_seconds": 0,
            }
        )
        app = build_app(config, GatewayRuntime.start(config.gateway))
        stack.enter_context(serve_in_thread(app, port, lifespan="on"))
        key = AgentKey.generate()
        agent = c.agents.register(
            CTX,
            NewAgent(
                name=f"echo-bot-{secrets.token_hex(3)}",
                owners=[cp.owner_id],
                purpose="calls tools that echo",
                environment="production",
                activate=True,
                keys=[key.public_jwk()],
                scopes=["mcp"],
                audiences=[url],
            ),
        )
        client = AgentClient(cp.url, client_id=agent.id, key=key, resource=url)
        stack.callback(client.close)
        link = app.state.gateway.runtime.link
        assert _until(lambda: agent.id in link.authorizer().entities.agents)
        caller = Caller(client.token(url).value, client.dpop_key)
        yield World(cp, url, agent.id, caller, UPSTREAMS)


# -- 1. what the agent gets ------------------------------------------------------------------


def test_an_echoed_credential_reaches_the_agent_masked(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    before = world.echoes()

    async def scenario() -> tuple[str, str, str]:
        async with connect(world.url, world.caller) as client:
            echoed = await client.call_tool("echo.headers", {})
            refused = await client.call_tool("echo.refuse", {})
            listed = await client.list_tools()
        assert not echoed.is_error
        assert refused.is_error
        keyed = next(t for t in listed.tools if t.name == "echo.keyed")
        return _text(echoed), _text(refused), keyed.description or ""

    with caplog.at_level(logging.WARNING, logger="agentiam.gateway.mcp"):
        echoed, refused, description = anyio.run(scenario)
    # the upstream got the key, and handed it back in all three
    assert world.upstreams["echo"].authorizations == {f"Bearer {UPSTREAM_KEY}"}
    for text in (echoed, refused, description):
        assert UPSTREAM_KEY not in text
        assert MASKED in text
    assert json.loads(echoed)["authorization"] == f"Bearer {MASKED}"
    assert f"Bearer {MASKED}" in refused
    # the call's event counts the occurrences masked, never holds the key
    event = world.event("echo.headers")
    assert event["details"]["echoed"]["body"] >= 1
    assert world.event("echo.refuse")["details"]["echoed"]["body"] >= 1
    assert UPSTREAM_KEY not in json.dumps(event)
    # a warning names the server, never the value; the metric counts the answers
    warnings = [r.getMessage() for r in caplog.records if "echoed the brokered" in r.getMessage()]
    assert any(m.startswith("upstream echo:") for m in warnings)
    assert all(m.split(":")[0] in {f"upstream {n}" for n in UPSTREAMS} for m in warnings)
    assert not any(UPSTREAM_KEY in r.getMessage() for r in caplog.records)
    assert world.echoes() >= before + 3


def test_a_call_whose_answer_holds_no_credential_records_no_echo(world: World) -> None:
    async def scenario() -> str:
        async with connect(world.url, world.caller) as client:
            return _text(await client.call_tool("echo.clean", {}))

    assert anyio.run(scenario) == "nothing to see"
    assert "echoed" not in world.event("echo.clean")["details"]


# -- 2. split across chunks; 3. in gzip ------------------------------------------------------


def test_a_credential_split_across_two_body_chunks_is_masked(world: World) -> None:
    async def scenario() -> str:
        async with connect(world.url, world.caller) as client:
            return _text(await client.call_tool("split.headers", {}))

    splits = world.upstreams["split"].splits
    text = anyio.run(scenario)
    assert world.upstreams["split"].splits > splits  # the key left the upstream cut in two
    assert UPSTREAM_KEY not in text
    assert json.loads(text)["authorization"] == f"Bearer {MASKED}"
    assert world.event("split.headers")["details"]["echoed"]["body"] >= 1


def test_a_credential_in_a_gzip_answer_is_masked_once_decoded(world: World) -> None:
    async def scenario() -> str:
        async with connect(world.url, world.caller) as client:
            return _text(await client.call_tool("zipped.headers", {}))

    text = anyio.run(scenario)
    assert "gzip" in world.upstreams["zipped"].codings  # the answers left compressed
    assert UPSTREAM_KEY not in text
    assert json.loads(text)["authorization"] == f"Bearer {MASKED}"
    assert world.event("zipped.headers")["details"]["echoed"]["body"] >= 1


# -- 5. encoded --------------------------------------------------------------------------------


def test_an_encoded_credential_reaches_the_agent_masked(world: World) -> None:
    """The tool returns the Authorization field in base64 (three offsets), base64url
    and hex: the agent used to read the key in each (only the bytes as sent were
    looked for). Masked: what is left of each blob decodes (fill read as zero bits)
    to nothing holding the key or half of it."""

    async def scenario() -> str:
        async with connect(world.url, world.caller) as client:
            result = await client.call_tool("echo.encoded", {})
            assert not result.is_error
            return _text(result)

    data = json.loads(anyio.run(scenario))
    for blob in [*data["b64"], data["url"]]:
        assert "*" * 20 in blob
        decoded = base64.urlsafe_b64decode(blob.replace("*", "A").translate(_TO_URL) + "==")
        assert KEY[: len(KEY) // 2] not in decoded
        assert KEY[len(KEY) // 2 :] not in decoded
    assert KEY.hex() not in data["hex"]
    assert data["hex"].endswith("*" * 2 * len(KEY))
    assert world.event("echo.encoded")["details"]["echoed"]["body"] >= 5


_TO_URL = str.maketrans("+/", "-_")


def test_a_credential_escaped_in_json_reaches_the_agent_masked(world: World) -> None:
    """A key holding ``"`` ``\\`` ``/`` ``+`` ``&`` ``<``: the tool returns the request's
    headers as JSON, which the JSON-RPC message escapes again (``\\\\\\"``), and an
    error quotes it (escaped once). Neither is the key as sent; both reached the
    agent. Masked now: the agent's JSON still parses, holding only fill."""

    async def scenario() -> tuple[str, str]:
        async with connect(world.url, world.caller) as client:
            echoed = await client.call_tool("special.headers", {})
            refused = await client.call_tool("special.refuse", {})
        assert not echoed.is_error
        assert refused.is_error
        return _text(echoed), _text(refused)

    echoed, refused = anyio.run(scenario)
    assert world.upstreams["special"].authorizations == {f"Bearer {SPECIAL_KEY}"}
    authorization = json.loads(echoed)["authorization"]
    assert authorization.startswith("Bearer ")
    assert set(authorization.removeprefix("Bearer ")) == {"*"}
    assert "not allowed with Bearer ***" in refused
    for text in (echoed, refused):
        assert "k3y" not in text
    assert world.event("special.headers")["details"]["echoed"]["body"] >= 1
    assert world.event("special.refuse")["details"]["echoed"]["body"] >= 1
