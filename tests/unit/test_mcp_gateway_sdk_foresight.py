"""The MCP gateway's foresight of the SDK's refusals (``_SdkRules``) against
the installed SDK itself: a real ``StreamableHTTPSessionManager`` and low-level
``Server`` (configured as the gateway configures them) under uvicorn, with handlers
that record that they ran. For every request of a matrix (both eras; good requests and
every refusal the SDK makes before a handler: Content-Type, Accept, the JSON-RPC
envelope, routing headers, ``Mcp-Param-*``, params, sessions), the rules' answer is
compared with what the SDK did: a foreseen refusal is exactly a request whose handler
did not run, at the status the SDK answered. A later SDK that checks something new
(or no longer) fails here, not in production."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from tests.support.live import serve_in_thread

from agentiam.adapters.gateway.mcp_proxy import (
    MAX_BODY_BYTES,
    _Foreseen,
    _parse,
    _replay,
    _SdkRules,
)

MODERN = "2026-07-28"
HANDSHAKE = "2025-06-18"
SCHEMA = {
    "type": "object",
    "properties": {"region": {"type": "string", "x-mcp-header": "Region"}},
}


@dataclass
class Sdk:
    """The SDK app behind a stand-in of the gateway's endpoint: it sets the principal
    (``X-Principal``), asks the rules, and records their answer and whether a
    handler ran."""

    url: str
    ran: list[str] = field(default_factory=list)
    foreseen: list[_Foreseen | None] = field(default_factory=list)


def _server(ran: list[str]) -> Server[Any]:
    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        ran.append(f"tools/call {params.name}")
        return types.CallToolResult(content=[types.TextContent(text="ok")])

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        ran.append("tools/list")
        return types.ListToolsResult(tools=[])

    async def read_resource(
        ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        ran.append(f"resources/read {params.uri}")
        return types.ReadResourceResult(contents=[])

    async def get_prompt(
        ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        ran.append(f"prompts/get {params.name}")
        return types.GetPromptResult(messages=[])

    server: Server[Any] = Server(
        "rules",
        get_tool_input_schema=lambda name: SCHEMA if name == "regional" else None,
        on_call_tool=call_tool,
        on_list_tools=list_tools,
        on_read_resource=read_resource,
        on_get_prompt=get_prompt,
    )
    server.middleware = []
    return server


@pytest.fixture(scope="module")
def sdk() -> Iterator[Sdk]:
    ran: list[str] = []
    server = _server(ran)
    sessions = StreamableHTTPSessionManager(
        app=server,
        json_response=False,
        stateless=False,
        security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    rules = _SdkRules(sessions, server)
    inner = StreamableHTTPASGIApp(sessions)
    record = Sdk("", ran)

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        principal = headers.get("x-principal", "agt_1")
        scope["user"] = AuthenticatedUser(
            AccessToken(
                token="t",
                client_id=principal,
                scopes=[],
                expires_at=2**40,
                subject=principal,
                claims={"iss": "https://iam.example"},
            )
        )
        if scope["method"] != "POST":
            await inner(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert len(body) <= MAX_BODY_BYTES
        record.foreseen.append(rules.refusal(scope, headers, body, _parse(body)))
        await inner(scope, _replay(body, receive), send)  # the body read above

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with sessions.run():
            yield

    class Endpoint:  # an instance: Starlette routes it as plain ASGI, as the gateway's
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await endpoint(scope, receive, send)

    app = Starlette(routes=[Route("/mcp", endpoint=Endpoint())], lifespan=lifespan)
    with serve_in_thread(app, lifespan="on") as url:
        record.url = url + "/mcp"
        yield record


ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}
GOOD_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
}


def _modern(
    method: str, params: dict[str, Any], **headers: str | None
) -> tuple[Any, dict[str, Any]]:
    """A 2026-07-28 request and its headers (None: leave one out)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": ENVELOPE}}
    name = params.get("name") or params.get("uri")
    sent: dict[str, Any] = {
        **GOOD_HEADERS,
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
        **({"Mcp-Name": name} if isinstance(name, str) else {}),
    }
    sent.update(headers)
    return body, {k: v for k, v in sent.items() if v is not None}


CALL = {"name": "echo", "arguments": {"text": "x"}}
MODERN_CASES: dict[str, tuple[Any, Any]] = {
    "a call": _modern("tools/call", CALL),
    "a listing": _modern("tools/list", {}),
    "a read": _modern("resources/read", {"uri": "file:///a"}),
    "a prompt": _modern("prompts/get", {"name": "p", "arguments": {"a": "b"}}),
    "Accept: */*": _modern("tools/call", CALL, Accept="*/*"),
    "Content-Type with a charset": _modern(
        "tools/call", CALL, **{"Content-Type": "application/json; charset=utf-8"}
    ),
    "Mcp-Param that matches": _modern(
        "tools/call",
        {"name": "regional", "arguments": {"region": "eu"}},
        **{"Mcp-Param-Region": "eu"},
    ),
    "Accept without SSE": _modern("tools/call", CALL, Accept="application/json"),
    "an empty Accept": _modern("tools/call", CALL, Accept=""),
    "Content-Type text/plain": _modern("tools/call", CALL, **{"Content-Type": "text/plain"}),
    "no Content-Type": _modern("tools/call", CALL, **{"Content-Type": None}),
    "Mcp-Name of another tool": _modern("tools/call", CALL, **{"Mcp-Name": "other"}),
    "Mcp-Method of another method": _modern("tools/call", CALL, **{"Mcp-Method": "tools/list"}),
    "no Mcp-Method": _modern("tools/call", CALL, **{"Mcp-Method": None}),
    "Mcp-Param that differs": _modern(
        "tools/call",
        {"name": "regional", "arguments": {"region": "eu"}},
        **{"Mcp-Param-Region": "us"},
    ),
    "Mcp-Param missing": _modern("tools/call", {"name": "regional", "arguments": {"region": "eu"}}),
    "an unknown modern version": _modern(
        "tools/call", CALL, **{"MCP-Protocol-Version": "2099-01-01"}
    ),
    "a name that is not a string": (
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": 5, "_meta": ENVELOPE},
        },
        {**GOOD_HEADERS, "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call"},
    ),
    "no envelope": (
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": CALL},
        {
            **GOOD_HEADERS,
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "echo",
        },
    ),
    "jsonrpc 1.0": (
        {"jsonrpc": "1.0", "id": 1, "method": "tools/call", "params": {**CALL, "_meta": ENVELOPE}},
        {
            **GOOD_HEADERS,
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "echo",
        },
    ),
    "Mcp-Name twice": (
        _modern("tools/call", CALL)[0],
        [*_modern("tools/call", CALL)[1].items(), ("Mcp-Name", "echo")],
    ),
    "a modern initialize": _modern(
        "initialize",
        {
            "protocolVersion": MODERN,
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    ),
}


def _post(sdk: Sdk, body: Any, headers: Any) -> httpx.Response:
    return httpx.post(sdk.url, content=json.dumps(body), headers=headers, timeout=30)


def _check(sdk: Sdk, response: httpx.Response, ran_before: int) -> tuple[_Foreseen | None, bool]:
    """The rules' answer for the request just sent, and whether its handler ran; they
    must agree, and a foreseen refusal's status must be the SDK's."""
    foreseen = sdk.foreseen[-1]
    ran = len(sdk.ran) > ran_before
    assert (foreseen is None) == ran, (foreseen, response.status_code, response.text[:300])
    if foreseen is not None:
        assert foreseen.status == response.status_code, (foreseen, response.text[:300])
    return foreseen, ran


SERVED = {
    "a call",
    "a listing",
    "a read",
    "a prompt",
    "Accept: */*",
    "Content-Type with a charset",
    "Mcp-Param that matches",
}


@pytest.mark.parametrize("case", list(MODERN_CASES))
def test_the_rules_foresee_the_modern_entry(sdk: Sdk, case: str) -> None:
    body, headers = MODERN_CASES[case]
    before = len(sdk.ran)
    foreseen, ran = _check(sdk, _post(sdk, body, headers), before)
    assert ran == (case in SERVED), foreseen


def _initialize(sdk: Sdk, principal: str = "agt_1") -> str:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": HANDSHAKE,
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    response = _post(sdk, body, {**GOOD_HEADERS, "X-Principal": principal})
    assert response.status_code == 200
    assert sdk.foreseen[-1] is None
    return str(response.headers["mcp-session-id"])


def _handshake(
    method: str, params: dict[str, Any], **headers: str | None
) -> tuple[Any, dict[str, Any]]:
    body = {"jsonrpc": "2.0", "id": 2, "method": method, "params": params}
    sent: dict[str, Any] = {**GOOD_HEADERS, "MCP-Protocol-Version": HANDSHAKE, **headers}
    return body, {k: v for k, v in sent.items() if v is not None}


def test_the_rules_foresee_the_handshake_era(sdk: Sdk) -> None:
    session = _initialize(sdk)
    other = _initialize(sdk, "agt_2")
    ended = _initialize(sdk)
    assert (
        httpx.delete(
            sdk.url,
            headers={
                "Mcp-Session-Id": ended,
                "MCP-Protocol-Version": HANDSHAKE,
                "X-Principal": "agt_1",
            },
            timeout=10,
        ).status_code
        == 200
    )
    mine = {"Mcp-Session-Id": session}
    seen: list[tuple[str, int | None]] = []
    cases: dict[str, tuple[tuple[Any, dict[str, Any]], bool]] = {
        # name: (request, whether the handler should run)
        "a call in the session": (_handshake("tools/call", CALL, **mine), True),
        "a listing in the session": (_handshake("tools/list", {}, **mine), True),
        "a call in the session with a 2026-07-28 envelope": (
            _handshake("tools/call", {**CALL, "_meta": ENVELOPE}, **mine),
            True,
        ),
        "no protocol version header": (
            _handshake("tools/call", CALL, **mine, **{"MCP-Protocol-Version": None}),
            True,
        ),
        "a call without a session": (_handshake("tools/call", CALL), False),
        "an unknown session": (
            _handshake("tools/call", CALL, **{"Mcp-Session-Id": "f" * 32}),
            False,
        ),
        "another principal's session": (
            _handshake("tools/call", CALL, **{"Mcp-Session-Id": other}),
            False,
        ),
        "an ended session": (_handshake("tools/call", CALL, **{"Mcp-Session-Id": ended}), False),
        "Accept without SSE": (
            _handshake("tools/call", CALL, **mine, Accept="application/json"),
            False,
        ),
        "Content-Type text/plain": (
            _handshake("tools/call", CALL, **mine, **{"Content-Type": "text/plain"}),
            False,
        ),
        "Content-Type application/json-seq": (
            _handshake("tools/call", CALL, **mine, **{"Content-Type": "application/json-seq"}),
            False,
        ),
        "a name that is not a string": (_handshake("tools/call", {"name": 5}, **mine), False),
        "jsonrpc 1.0": (
            (
                {"jsonrpc": "1.0", "id": 2, "method": "tools/call", "params": CALL},
                {**GOOD_HEADERS, "MCP-Protocol-Version": HANDSHAKE, **mine},
            ),
            False,
        ),
    }
    for name, ((body, headers), handled) in cases.items():
        before = len(sdk.ran)
        foreseen, ran = _check(sdk, _post(sdk, body, headers), before)
        assert ran == handled, (name, foreseen)
        seen.append((name, None if foreseen is None else foreseen.status))
    assert dict(seen) == {
        "a call in the session": None,
        "a listing in the session": None,
        "a call in the session with a 2026-07-28 envelope": None,
        "no protocol version header": None,
        "a call without a session": 400,
        "an unknown session": 404,
        "another principal's session": 404,
        "an ended session": 404,
        "Accept without SSE": 406,
        "Content-Type text/plain": 400,
        "Content-Type application/json-seq": 415,
        "a name that is not a string": 200,  # the session's stream carries the error
        "jsonrpc 1.0": 400,
    }
