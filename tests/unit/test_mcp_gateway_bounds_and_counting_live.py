"""The MCP gateway's bounds, counting and foresight, with real servers on loopback ports: a
control plane (uvicorn, SQLite), an upstream MCP server (the SDK's ``MCPServer``,
behind a wrapper that answers one tool with a gzip bomb) and the real gateway
(``build_app`` and its runtime, with rate limits and approvals), called with raw HTTP
and real DPoP-bound tokens. Each test uses an agent of its own (its own buckets).

1. a gzip bomb from the upstream (256 MiB of zeros in 256 KiB, ``Content-Encoding:
   gzip``) fails the call (a failed ``tool.call`` with status 502) without the
   gateway's memory growing by the bomb;
2. ``initialize`` (and the four listings) take a token from the agent's bucket
   (``rate_limits.per_agent``): past it, the audited 429 with ``Retry-After`` calls
   get; a ``ping`` takes none;
3. a call the MCP transport refuses before its handler (bad ``Accept``, an
   ``Mcp-Name`` that is not the body's, an unknown session) takes no rate-limit token,
   is not decided (an ``api.request.rejected`` with the transport's status instead),
   and does not use up the approval it names;
4. a listing whose ``mcp.list`` event the spool cannot take (the spool full) is an
   HTTP 503 with ``Retry-After`` and no data, with the full spool's own message, as a
   call is.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.server.mcpserver import MCPServer
from starlette.types import Receive, Scope, Send
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until
from tests.unit.test_mcp_gateway_hardening_live import _message

from agentiam.adapters.gateway.mcp_proxy import McpGateway, _replay, build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.approvals_wire import META_KEY
from agentiam.sdk import AgentClient, AgentKey
from agentiam.sdk.proofs import dpop_proof
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
MODERN = "2026-07-28"
HANDSHAKE = "2025-06-18"
PER_AGENT_BURST = 6
BOMB_DECODED = 256 << 20  # bytes the bomb inflates to
POLICIES = {
    "all": "permit (principal, action, resource);",
    "transfer-needs-approval": 'forbid (principal, action == Action::"invoke_tool", '
    'resource == Tool::"bank.transfer") when { context.approval.state != "approved" };',
}


def _bomb() -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join([*(packer.compress(block) for _ in range(BOMB_DECODED >> 20)), packer.flush()])


BOMB = _bomb()


def _upstream(ran: list[str]) -> Any:
    """The SDK's MCPServer, behind a wrapper that answers ``tools/call`` of ``bomb``
    with a gzip bomb (a JSON answer with ``Content-Encoding: gzip``)."""
    server = MCPServer("bank")

    @server.tool()
    def echo(text: str) -> str:
        """Says it back."""
        return text

    @server.tool()
    def limited() -> str:
        """Limited to one call per agent."""
        ran.append("limited")
        return "done"

    @server.tool()
    def transfer(amount: int, to: str) -> str:
        """Move money."""
        ran.append(f"transfer:{amount}:{to}")
        return f"sent {amount} to {to}"

    @server.tool()
    def bomb() -> str:
        """Answered by the wrapper."""
        return "never"

    inner = server.streamable_http_app()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await inner(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = None
        if (
            isinstance(decoded, dict)
            and decoded.get("method") == "tools/call"
            and (decoded.get("params") or {}).get("name") == "bomb"
        ):
            headers = [
                (b"content-type", b"application/json"),
                (b"content-encoding", b"gzip"),
                (b"content-length", str(len(BOMB)).encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": BOMB})
            return
        await inner(scope, _replay(body, receive), send)  # the body read above

    return app


@dataclass
class World:
    cp: OAuthLive
    url: str
    gateway: McpGateway
    ran: list[str]
    clients: list[AgentClient] = field(default_factory=list)

    def agent(self, name: str) -> AgentClient:
        """A new agent of the owner's, allowed at the gateway."""
        key = AgentKey.generate()
        agent = self.cp.container.agents.register(
            CTX,
            NewAgent(
                name=f"{name}-{secrets.token_hex(3)}",
                owners=[self.cp.owner_id],
                purpose="probes the gateway",
                environment="production",
                activate=True,
                keys=[key.public_jwk()],
                audiences=[self.url],
            ),
        )
        client = AgentClient(self.cp.url, client_id=agent.id, key=key, resource=self.url)
        self.clients.append(client)
        # the gateway learns of it with the next policy bundle (long poll)
        link = self.gateway.runtime.link
        assert _until(lambda: agent.id in link.authorizer().entities.agents)
        return client

    def post(
        self,
        agent: AgentClient,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        meta: dict[str, Any] | None = None,
        era: str | None = MODERN,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request of ``agent``'s with a fresh proof: modern era (2026-07-28) by
        default, with its envelope in ``params._meta``; ``era`` a handshake version
        (or None: no ``MCP-Protocol-Version``, as an ``initialize``): no envelope."""
        params = dict(params or {})
        envelope: dict[str, Any] = dict(meta or {})
        if era == MODERN:
            envelope["io.modelcontextprotocol/protocolVersion"] = MODERN
            envelope["io.modelcontextprotocol/clientCapabilities"] = {}
        if envelope:
            params["_meta"] = envelope
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        name = params.get("name") or params.get("uri")
        sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if era is not None:
            sent["MCP-Protocol-Version"] = era
        if era == MODERN:
            sent["Mcp-Method"] = method
            if name:
                sent["Mcp-Name"] = name
        sent.update(headers or {})
        token = agent.token().value
        proof = dpop_proof(agent.dpop_key, method="POST", url=self.url, access_token=token)
        sent.update({"Authorization": f"DPoP {token}", "DPoP": proof})
        return httpx.post(self.url, content=json.dumps(body), headers=sent, timeout=60)

    def initialize(self, agent: AgentClient) -> httpx.Response:
        """A handshake-era ``initialize`` (opens a session)."""
        params = {
            "protocolVersion": HANDSHAKE,
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        }
        return self.post(agent, "initialize", params, era=None)

    def trail(self, **params: Any) -> list[dict[str, Any]]:
        with self.cp.admin_client() as admin:
            r = admin.get("/v1/audit/events", params={"limit": 200, **params})
            assert r.status_code == 200, r.text
            return list(r.json()["items"])

    def approval(self, approval_id: str) -> dict[str, Any]:
        with self.cp.admin_client() as admin:
            r = admin.get(f"/v1/approvals/{approval_id}")
            assert r.status_code == 200, r.text
            return dict(r.json())

    def approve(self, approval_id: str) -> None:
        with self.cp.admin_client() as admin:
            r = admin.post(
                f"/v1/humans/{self.cp.owner_id}/subject-tokens", json={"purpose": "approval"}
            )
            assert r.status_code == 201, r.text
            owner = r.json()["subject_token"]
        r = httpx.post(
            f"{self.cp.url}/v1/approvals/{approval_id}/approve",
            json={"reason": "checked"},
            headers={"Authorization": f"Bearer {owner}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-h1")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    ran: list[str] = []
    with oauth_live(
        f"sqlite:///{db}", policy_refresh_seconds=0.1, approval_sweep_seconds=0.1
    ) as cp:
        c = cp.container
        for policy_id, text in POLICIES.items():
            c.policies.put(CTX, policy_id, text=text)
        verifier = c.admin_keys.create(
            CTX, name="mcp-gw", role="verifier", sources=["gateway/mcp-h1"]
        ).secret
        env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        try:
            with serve_in_thread(_upstream(ran), lifespan="on") as up:
                config = load_config(
                    {
                        "name": "mcp-h1",
                        "public_url": url,
                        "listen": {"host": "127.0.0.1", "port": port},
                        "control_plane": {"url": cp.url, "key_env": env},
                        "spool": {"directory": str(tmp / "spool")},
                        "rate_limits": {
                            "per_agent": {"rate_per_second": 0.001, "burst": PER_AGENT_BURST},
                            "per_tool": {"bank.limited": {"rate_per_second": 0.001, "burst": 1}},
                        },
                        "approvals": {"retry_after_seconds": 1, "wait_seconds": 0},
                        "servers": [{"name": "bank", "url": up + "/mcp", "prefix": "bank."}],
                        "catalog_seconds": 0,
                    }
                )
                app = build_app(config, GatewayRuntime.start(config.gateway))
                with serve_in_thread(app, port, lifespan="on"):
                    world = World(cp, url, app.state.gateway, ran)
                    try:
                        yield world
                    finally:
                        for client in world.clients:
                            client.close()
        finally:
            os.environ.pop(env, None)


def _events(world: World, agent: AgentClient, kind: str, **where: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in world.trail(type=kind, agent_id=agent.client_id)
        if all(e["details"].get(k) == v for k, v in where.items())
    ]


def _peak_kib() -> int:
    """This process's peak resident memory since the last :func:`_reset_peak` (KiB)."""
    status = Path("/proc/self/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert found is not None
    return int(found.group(1))


def _reset_peak() -> int:
    """Reset the peak to the current resident memory (Linux, clear_refs 5); return it."""
    Path("/proc/self/clear_refs").write_text("5")
    return _peak_kib()


# -- 1. a compressed answer is bounded once decoded --------------------------------------


def test_a_gzip_bomb_fails_the_call_without_inflating_in_the_gateway(world: World) -> None:
    agent = world.agent("bomb")
    assert world.post(agent, "tools/call", {"name": "bank.echo", "arguments": {"text": "hi"}})
    assert len(BOMB) < 1 << 20  # within the wire bound (16 MiB) by far
    before = _reset_peak()
    answer = world.post(agent, "tools/call", {"name": "bank.bomb", "arguments": {}})
    grown_mib = (_peak_kib() - before) / 1024
    error = _message(answer)["error"]
    assert error["message"].startswith("upstream bank: ")
    # the bound (16 MiB) plus the copies the SDK client makes of what it read: nothing
    # near the bomb's 256 MiB (before the fix the gateway held it whole, twice)
    assert grown_mib < 96, f"the gateway's memory grew by {grown_mib:.0f} MiB"
    failed = _until(
        lambda: [
            e for e in _events(world, agent, "tool.call") if e["details"]["tool"] == "bank.bomb"
        ]
    )
    assert [(e["outcome"], e["details"]["status"]) for e in failed] == [("failure", 502)]
    # the upstream is used again afterwards
    echoed = world.post(agent, "tools/call", {"name": "bank.echo", "arguments": {"text": "again"}})
    assert "again" in echoed.text


# -- 2. initialize takes a token from the agent's bucket ---------------------------------


def test_initialize_and_listings_take_from_the_agents_bucket(world: World) -> None:
    """per_agent allows PER_AGENT_BURST requests: three sessions and three listings use
    it up, then initialize and a listing get the audited 429 with Retry-After that a
    call gets; a ping in an open session takes nothing and still passes."""
    agent = world.agent("opener")
    sessions = [world.initialize(agent) for _ in range(3)]
    assert [r.status_code for r in sessions] == [200] * 3
    session = {"Mcp-Session-Id": sessions[0].headers["mcp-session-id"]}

    def ping() -> httpx.Response:
        return world.post(agent, "ping", era=HANDSHAKE, headers=session)

    assert ping().status_code == 200
    listings = [world.post(agent, "tools/list") for _ in range(PER_AGENT_BURST - 3)]
    assert [r.status_code for r in listings] == [200] * (PER_AGENT_BURST - 3)
    assert "bank.echo" in listings[0].text

    refused = world.initialize(agent)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["message"] == "rate limit for initialize exceeded"
    assert "mcp-session-id" not in refused.headers
    listing = world.post(agent, "tools/list")
    assert listing.status_code == 429
    assert listing.json()["id"] == 1
    assert ping().status_code == 200  # not counted

    def both_refusals() -> list[dict[str, Any]]:  # they may ship in two batches
        events = _events(world, agent, "api.request.rejected", status=429)
        return events if len(events) >= 2 else []

    rejected = _until(both_refusals)
    assert sorted(e["reason"] for e in rejected) == [
        "rate limit for initialize exceeded",
        "rate limit for tools/list exceeded",
    ]
    assert sorted(e["action"] for e in rejected) == ["initialize", "tools/list"]


# -- 3. a call the transport refuses spends no token and no approval ---------------------

REFUSALS = {
    # what the MCP SDK's transport refuses before the handler, and its status
    "bad Accept": ({"Accept": "application/json"}, 406),
    "Mcp-Name mismatch": ({"Mcp-Name": "bank.echo"}, 400),
    "unknown session": (
        {"MCP-Protocol-Version": HANDSHAKE, "Mcp-Session-Id": "f" * 32},
        404,
    ),
}


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_a_call_the_transport_refuses_takes_no_token(world: World, refusal: str) -> None:
    """bank.limited allows one call per agent: a call the SDK's transport refuses
    first is not decided and leaves the token for the next, well-formed call."""
    headers, status = REFUSALS[refusal]
    agent = world.agent("limited")
    refused = world.post(
        agent, "tools/call", {"name": "bank.limited", "arguments": {}}, headers=headers
    )
    assert refused.status_code == status
    done = world.post(agent, "tools/call", {"name": "bank.limited", "arguments": {}})
    assert done.status_code == 200, done.text
    assert not _message(done)["result"].get("isError"), done.text
    # the refusal is audited as one (before the transport answered), not as a decision
    rejected = _until(lambda: _events(world, agent, "api.request.rejected", status=status))
    assert len(rejected) == 1
    assert rejected[0]["resource"] == {"type": "Tool", "id": "bank.limited"}
    assert rejected[0]["reason"].startswith("refused by the MCP transport: ")
    decided = _until(lambda: _events(world, agent, "authz.decision"))
    assert len(decided) == 1  # the well-formed call's
    outcomes = _until(lambda: _events(world, agent, "tool.call"))
    assert [(e["outcome"], e["details"]["status"]) for e in outcomes] == [("success", 200)]


def test_a_retry_the_transport_refuses_keeps_its_approval(world: World) -> None:
    """The approval named by a retry the SDK's transport refuses (here: Accept without
    text/event-stream, 406) stays approved; the well-formed retry then uses it."""
    agent = world.agent("payer")
    call = {"name": "bank.transfer", "arguments": {"amount": 5, "to": "acme"}}
    pending = _message(world.post(agent, "tools/call", call))["result"]
    assert pending["isError"]
    approval = pending["_meta"][META_KEY]["id"]
    world.approve(approval)
    refused = world.post(
        agent, "tools/call", call, meta={META_KEY: approval}, headers={"Accept": "application/json"}
    )
    assert refused.status_code == 406
    assert world.approval(approval)["state"] == "approved"
    assert world.ran.count("transfer:5:acme") == 0
    through = world.post(agent, "tools/call", call, meta={META_KEY: approval})
    result = _message(through)["result"]
    assert not result.get("isError"), through.text
    assert result["content"][0]["text"] == "sent 5 to acme"
    assert world.ran.count("transfer:5:acme") == 1
    assert world.approval(approval)["state"] == "consumed"


# -- 4. a listing that cannot be recorded is refused -------------------------------------


def test_a_listing_the_spool_cannot_record_is_a_503_without_data(world: World) -> None:
    agent = world.agent("lister")
    spool = world.gateway.runtime.spool
    bound = spool.max_bytes
    spool.max_bytes = 1  # the spool is full: no event fits
    try:
        refused = world.post(agent, "tools/list")
    finally:
        spool.max_bytes = bound
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    answer = refused.json()
    assert answer["id"] == 1
    # the full spool's own refusal, as a call gets it: it names what is full
    message = answer["error"]["message"]
    assert message.startswith("the audit spool holds "), message
    assert "its limit is 1;" in message
    assert "result" not in answer
    assert "bank." not in refused.text  # nothing of the listing
    listed = world.post(agent, "tools/list")
    assert listed.status_code == 200
    assert "bank.echo" in listed.text
