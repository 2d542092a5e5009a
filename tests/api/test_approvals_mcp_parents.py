"""Human approval at the MCP gateway for a tool decided in its server's ``McpServer``,
end to end with real servers: a control plane (uvicorn, SQLite), an upstream MCP
server (the official SDK's ``MCPServer`` over Streamable HTTP) that the gateway routes
to as two servers, ``bank`` (prefix ``bank.``) and ``vault`` (prefix ``vault.``), the
real MCP gateway (its runtime: control-plane link, spool, shipper, approvals client)
and an agent using the official MCP client SDK through ``AgentClient.mcp_session``.
No tool is in the catalog: a tool is in its server's ``McpServer`` because the server
lists it.

- (b) a policy asking for approval only ``in McpServer::"bank"`` opens an approval
  request for ``bank.transfer``; the request names the server; once approved the
  retry reaches the upstream tool, once;
- (c) a forbid on ``McpServer::"vault"`` wins over approval: ``vault.transfer`` is a
  plain refusal and opens no request;
- the control plane opens a request only for the call as the gateway places it: for
  ``bank.transfer`` out of its server, or in ``vault``, it refuses (409).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.server.mcpserver import MCPServer
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until

from agentiam.adapters.gateway.mcp_proxy import build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.approvals_wire import META_KEY
from agentiam.sdk import AgentClient, AgentKey
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
NAME = "mcp-parents"


@dataclass
class World:
    cp: OAuthLive
    url: str
    verifier: str
    agent_id: str
    agent: AgentClient
    ran: list[str] = field(default_factory=list)

    def admin(self) -> httpx.Client:
        return self.cp.admin_client()

    def transfer(self, server: str, amount: int, approval: str | None = None) -> Any:
        async def main() -> Any:
            meta = {META_KEY: approval} if approval is not None else None
            async with self.agent.mcp_session(self.url) as session:
                return await session.call_tool(
                    f"{server}.transfer", {"amount": amount, "to": "acme"}, meta=meta
                )

        return anyio.run(main)

    def approval(self, approval: str) -> dict[str, Any]:
        with self.admin() as admin:
            r = admin.get(f"/v1/approvals/{approval}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def pending(self) -> list[str]:
        with self.admin() as admin:
            r = admin.get("/v1/approvals", params={"state": "pending", "agent_id": self.agent_id})
        return [i["id"] for i in r.json()["items"]]


def _upstream(ran: list[str]) -> MCPServer:
    server = MCPServer("bank")

    @server.tool()
    def transfer(amount: int, to: str) -> str:
        """Move money."""
        ran.append(f"transfer:{amount}:{to}")
        return f"sent {amount} to {to}"

    return server


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("approvals-mcp-parents")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    ran: list[str] = []
    with oauth_live(
        f"sqlite:///{db}", approval_sweep_seconds=0.1, policy_refresh_seconds=0.1
    ) as cp:
        c = cp.container
        key = AgentKey.generate()
        agent = c.agents.register(
            CTX,
            NewAgent(
                name=f"mcp-parents-{secrets.token_hex(3)}",
                owners=[cp.owner_id],
                purpose="moves money through two servers",
                environment="production",
                activate=True,
                keys=[key.public_jwk()],
                audiences=[url],
            ),
        )
        a = f'Agent::"{agent.id}"'
        policies: dict[str, str] = {}
        for server in ("bank", "vault"):
            where = f'resource in McpServer::"{server}"'
            policies[f"{server}-tools"] = (
                f'permit (principal == {a}, action == Action::"invoke_tool", {where});'
            )
            policies[f"{server}-approval"] = (
                f'forbid (principal == {a}, action == Action::"invoke_tool", {where}) '
                'when { context.approval.state != "approved" };'
            )
        policies["no-vault"] = f'forbid (principal == {a}, action, resource in McpServer::"vault");'
        for policy_id, text in policies.items():
            c.policies.put(CTX, policy_id, text=text)
        verifier = c.admin_keys.create(
            CTX, name=NAME, role="verifier", sources=[f"gateway/{NAME}"]
        ).secret
        env = f"AGENTIAM_TEST_MCP_PARENTS_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        try:
            with serve_in_thread(_upstream(ran).streamable_http_app(), lifespan="on") as up:
                config = load_config(
                    {
                        "name": NAME,
                        "public_url": url,
                        "listen": {"host": "127.0.0.1", "port": port},
                        "control_plane": {"url": cp.url, "key_env": env},
                        "spool": {"directory": str(tmp / "spool")},
                        "approvals": {"retry_after_seconds": 1},
                        "servers": [
                            {"name": "bank", "url": up + "/mcp", "prefix": "bank."},
                            {"name": "vault", "url": up + "/mcp", "prefix": "vault."},
                        ],
                        "catalog_seconds": 0,
                    }
                )
                app = build_app(config, GatewayRuntime.start(config.gateway))
                with serve_in_thread(app, port, lifespan="on"):
                    client = AgentClient(cp.url, client_id=agent.id, key=key, resource=url)
                    try:
                        yield World(cp, url, verifier, agent.id, client, ran)
                    finally:
                        client.close()
        finally:
            os.environ.pop(env, None)


def _approval(result: Any, state: str = "pending") -> dict[str, Any]:
    assert result.is_error, result
    approval: dict[str, Any] = (result.meta or {}).get(META_KEY) or {}
    assert approval.get("state") == state, result
    return approval


def test_a_server_scoped_approval_opens_for_a_tool_not_in_the_catalog(world: World) -> None:
    approval = _approval(world.transfer("bank", 11))["id"]
    assert world.ran == []
    shown = world.approval(approval)
    assert shown["resource"] == {"type": "Tool", "id": "bank.transfer"}
    assert shown["resource_parents"] == [{"type": "McpServer", "id": "bank"}]
    assert shown["policies"] == ["bank-approval"]
    with world.admin() as admin:
        r = admin.post(f"/v1/approvals/{approval}/approve", json={"reason": "checked"})
    assert r.status_code == 200, r.text
    through = world.transfer("bank", 11, approval)
    assert not through.is_error, through
    assert through.content[0].text == "sent 11 to acme"
    assert world.ran.count("transfer:11:acme") == 1
    _approval(world.transfer("bank", 11, approval), "consumed")
    assert world.ran.count("transfer:11:acme") == 1


def test_a_forbidden_server_opens_no_approval(world: World) -> None:
    before = world.pending()
    refused = world.transfer("vault", 12)
    assert refused.is_error
    assert META_KEY not in (refused.meta or {})
    assert "forbidden by policy no-vault" in refused.content[0].text
    assert world.pending() == before
    assert not any(r.startswith("transfer:12") for r in world.ran)


def test_the_control_plane_opens_a_request_only_for_the_call_in_its_server(
    world: World,
) -> None:
    body: dict[str, Any] = {
        "principal": {"type": "Agent", "id": world.agent_id},
        "action": "invoke_tool",
        "resource": {"type": "Tool", "id": "bank.transfer"},
        "context": {"args": {"amount": 13, "to": "acme"}},
    }
    headers = {"Authorization": f"Bearer {world.verifier}"}

    def open_(parents: list[dict[str, str]] | None) -> httpx.Response:
        sent = body if parents is None else {**body, "resource_parents": parents}
        return httpx.post(world.cp.url + "/v1/approvals", json=sent, headers=headers, timeout=10)

    assert open_(None).status_code == 409  # out of its server: no policy asks
    assert open_([{"type": "McpServer", "id": "vault"}]).status_code == 409  # forbidden there
    opened = open_([{"type": "McpServer", "id": "bank"}])
    assert opened.status_code == 200, opened.text
    assert opened.json()["resource_parents"] == [{"type": "McpServer", "id": "bank"}]
    # the gateway's own call finds the same request: the same call, placed alike
    assert _until(lambda: opened.json()["id"] in world.pending())
    assert _approval(world.transfer("bank", 13))["id"] == opened.json()["id"]
