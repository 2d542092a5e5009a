"""The MCP gateway hardened after review r5, with real servers on loopback ports: a
control plane (uvicorn, SQLite), an upstream MCP server (the SDK's ``MCPServer``) and
the real gateway (``build_app`` and its runtime), called with raw HTTP and real
DPoP-bound tokens.

- an upstream answer past the response bound (lowered here) is a 502 and a failed
  ``tool.call`` with status 502, never relayed;
- an upstream JSON-RPC error reaches the agent without its ``data``;
- an allowed call the SDK refuses (``Mcp-Name`` mismatch) ends with a failed
  ``tool.call`` carrying the 400 the agent got;
- past the outage bound a listing is an audited 503, as calls are;
- a body with ``NaN`` or ``Infinity`` (not JSON, RFC 8259 section 6) is an audited
  400 parse error, never decided nor forwarded.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until

from agentiam.adapters.gateway import mcp_proxy, upstream_transport
from agentiam.adapters.gateway.mcp_proxy import McpGateway, build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.sdk import AgentClient, AgentKey
from agentiam.sdk.proofs import dpop_proof
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
MODERN = "2026-07-28"
LIMIT = 64 * 1024  # the upstream response bound, lowered for the test
TRACE = "File /srv/bank/app.py, line 42, in boom\n"
NOTED: list[Any] = []  # every value the upstream's ``noted`` tool got


def _upstream() -> MCPServer:
    server = MCPServer("bank")

    @server.tool()
    def big(kib: int) -> str:
        """A result of ``kib`` KiB."""
        return "x" * (kib * 1024)

    @server.tool()
    def noted(value: float | None = None) -> str:
        """Notes and echoes what it got."""
        NOTED.append(value)
        return repr(value)

    @server.tool()
    def boom() -> str:
        """Fails with internals in its error's data."""
        raise MCPError(-32000, "db error", {"traceback": TRACE * 100})

    return server


@dataclass
class World:
    cp: OAuthLive
    url: str
    agent: AgentClient
    gateway: McpGateway

    def post(self, method: str, params: dict[str, Any], **headers: str) -> httpx.Response:
        """One modern-era (2026-07-28) request of the agent's, with a fresh proof."""
        token = self.agent.token().value
        proof = dpop_proof(self.agent.dpop_key, method="POST", url=self.url, access_token=token)
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
        name = params.get("name") or params.get("uri")
        sent = {
            "Authorization": f"DPoP {token}",
            "DPoP": proof,
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": method,
            **({"Mcp-Name": name} if name else {}),
            **headers,
        }
        return httpx.post(self.url, content=json.dumps(body), headers=sent, timeout=30)

    def trail(self, **params: Any) -> list[dict[str, Any]]:
        with self.cp.admin_client() as admin:
            r = admin.get("/v1/audit/events", params={"limit": 200, **params})
            assert r.status_code == 200, r.text
            return list(r.json()["items"])


def _message(response: httpx.Response) -> Any:
    """The JSON-RPC answer, from a JSON body or the last event of an SSE stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads([d for d in data if d.strip()][-1])
    return response.json()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-hardening")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    with (
        pytest.MonkeyPatch.context() as patch,
        oauth_live(f"sqlite:///{db}", policy_refresh_seconds=0.1) as cp,
    ):
        patch.setattr(upstream_transport, "MAX_RESPONSE_BYTES", LIMIT)
        c = cp.container
        key = AgentKey.generate()
        agent = c.agents.register(
            CTX,
            NewAgent(
                name="hardening-bot",
                owners=[cp.owner_id],
                purpose="probes the gateway",
                environment="production",
                activate=True,
                keys=[key.public_jwk()],
                audiences=[url],
            ),
        )
        c.policies.put(CTX, "all", text="permit (principal, action, resource);")
        verifier = c.admin_keys.create(
            CTX, name="mcp-gw", role="verifier", sources=["gateway/mcp-hardening"]
        ).secret
        env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        try:
            with serve_in_thread(_upstream().streamable_http_app(), lifespan="on") as up:
                config = load_config(
                    {
                        "name": "mcp-hardening",
                        "public_url": url,
                        "listen": {"host": "127.0.0.1", "port": port},
                        "control_plane": {"url": cp.url, "key_env": env},
                        "spool": {"directory": str(tmp / "spool")},
                        "servers": [{"name": "bank", "url": up + "/mcp", "prefix": "bank."}],
                        "catalog_seconds": 0,
                    }
                )
                app = build_app(config, GatewayRuntime.start(config.gateway))
                with serve_in_thread(app, port, lifespan="on"):
                    client = AgentClient(cp.url, client_id=agent.id, key=key, resource=url)
                    try:
                        yield World(cp, url, client, app.state.gateway)
                    finally:
                        client.close()
        finally:
            os.environ.pop(env, None)


def _tool_calls(world: World, tool: str) -> list[dict[str, Any]]:
    return [
        e
        for e in world.trail(type="tool.call", agent_id=world.agent.client_id)
        if e["details"]["tool"] == tool
    ]


def test_an_upstream_answer_past_the_bound_is_a_502_and_a_failed_tool_call(world: World) -> None:
    small = world.post("tools/call", {"name": "bank.big", "arguments": {"kib": 4}})
    assert small.status_code == 200
    assert not _message(small)["result"].get("isError")
    big = world.post("tools/call", {"name": "bank.big", "arguments": {"kib": 128}})
    answer = _message(big)
    assert "x" * 1024 not in big.text  # nothing of the result is relayed
    # the SDK client reports the cut stream as a closed connection
    assert answer["error"]["message"] == "upstream bank: Connection closed"
    calls = _until(lambda: [e for e in _tool_calls(world, "bank.big") if e["outcome"] == "failure"])
    assert [e["details"]["status"] for e in calls] == [502]
    # the upstream is used again afterwards
    assert (
        world.post("tools/call", {"name": "bank.big", "arguments": {"kib": 1}}).status_code == 200
    )


def test_an_upstream_error_reaches_the_agent_without_its_data(world: World) -> None:
    answer = _message(world.post("tools/call", {"name": "bank.boom", "arguments": {}}))
    error = answer.get("error") or {}
    if not error:  # the SDK's MCPServer may answer a tool's error as an error result
        pytest.skip(f"the upstream answered {answer}")
    assert error["message"] == "upstream bank: db error"
    assert "data" not in error


def test_a_call_the_sdk_will_refuse_is_an_audited_refusal_not_a_decision(world: World) -> None:
    """A call the SDK refuses before its handler (here an Mcp-Name that is not the
    body's tool) is foreseen: audited as refused with the status the agent gets, never
    decided, and nothing goes upstream."""
    refused = world.post(
        "tools/call", {"name": "bank.big", "arguments": {"kib": 1}}, **{"Mcp-Name": "bank.boom"}
    )
    assert refused.status_code == 400
    rejected = _until(
        lambda: [
            e
            for e in world.trail(type="api.request.rejected", agent_id=world.agent.client_id)
            if e["details"].get("status") == 400
            and (e.get("resource") or {}).get("id") == "bank.big"
        ]
    )
    assert len(rejected) == 1
    assert "refused by the MCP transport" in rejected[0]["reason"]
    assert not [e for e in _tool_calls(world, "bank.big") if e["details"]["status"] == 400]


def test_past_the_outage_bound_a_listing_is_an_audited_503(world: World) -> None:
    link = world.gateway.runtime.link
    link.seconds_since_contact = lambda: 10**9  # type: ignore[method-assign]
    try:
        refused = world.post("tools/list", {})
    finally:
        del link.seconds_since_contact
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert "lost the control plane" in refused.json()["error"]["message"]
    rejected = _until(
        lambda: [
            e
            for e in world.trail(type="api.request.rejected", agent_id=world.agent.client_id)
            if e["details"].get("status") == 503
        ]
    )
    assert rejected
    assert world.post("tools/list", {}).status_code == 200


def test_an_agent_opens_at_most_its_share_of_handshake_sessions(world: World) -> None:
    """With the SDK's own session table: the agent's sessions past the cap are an
    audited 429; ending one (DELETE) makes room again."""
    cap = mcp_proxy.MAX_SESSIONS_PER_OWNER

    def initialize(**headers: str) -> httpx.Response:
        token = world.agent.token().value
        method = "DELETE" if headers.pop("delete", None) else "POST"
        proof = dpop_proof(world.agent.dpop_key, method=method, url=world.url, access_token=token)
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        return httpx.request(
            method,
            world.url,
            content=json.dumps(body) if method == "POST" else None,
            headers={
                "Authorization": f"DPoP {token}",
                "DPoP": proof,
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
                **headers,
            },
            timeout=30,
        )

    sessions = [initialize() for _ in range(cap)]
    assert {r.status_code for r in sessions} == {200}
    refused = initialize()
    assert refused.status_code == 429
    assert _until(
        lambda: [
            e
            for e in world.trail(type="api.request.rejected", agent_id=world.agent.client_id)
            if e["details"].get("status") == 429
        ]
    )
    first = sessions[0].headers["mcp-session-id"]
    ended = initialize(
        delete="1", **{"Mcp-Session-Id": first, "MCP-Protocol-Version": "2025-06-18"}
    )
    assert ended.status_code == 200
    assert initialize().status_code == 200


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_body_with_nan_or_infinity_is_refused_not_decided(world: World, constant: str) -> None:
    """Python's decoder and the SDK's accept ``NaN``, and the SDK's client would send
    it upstream as ``null``: policy would decide on a value the upstream never gets.
    The gateway refuses the body as not JSON: audited, never decided, never sent."""
    NOTED.clear()
    token = world.agent.token().value
    proof = dpop_proof(world.agent.dpop_key, method="POST", url=world.url, access_token=token)
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = (
        '{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "bank.noted", '
        f'"arguments": {{"value": {constant}}}, "_meta": {json.dumps(meta)}}}}}'
    )
    decisions = len(world.trail(type="authz.decision", agent_id=world.agent.client_id))
    refused = httpx.post(
        world.url,
        content=body,
        headers={
            "Authorization": f"DPoP {token}",
            "DPoP": proof,
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "bank.noted",
        },
        timeout=30,
    )
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == -32700
    assert "NaN and Infinity are not numbers" in error["message"]
    assert NOTED == []
    # the same call with a number is decided and forwarded; its events come after
    # the refusal's, so once they are in the trail the refusal is too
    answer = _message(world.post("tools/call", {"name": "bank.noted", "arguments": {"value": 2}}))
    assert "error" not in answer, answer
    assert NOTED == [2.0]
    after = _until(
        lambda: (
            (found := world.trail(type="authz.decision", agent_id=world.agent.client_id))
            and len(found) > decisions
            and found
        )
    )
    assert len(after) == decisions + 1  # only the numeric call was decided
    rejected = [
        e
        for e in world.trail(type="api.request.rejected", agent_id=world.agent.client_id)
        if "NaN and Infinity" in str(e.get("reason"))
    ]
    assert rejected
