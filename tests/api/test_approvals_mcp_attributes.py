"""Human approval at the MCP gateway for a tool whose attributes the gateway derived
from a trusted server's annotations (``trust_annotations``: ``readOnlyHint`` /
``destructiveHint`` as ``read_only`` / ``destructive``), end to end with real servers:
a control plane (uvicorn, SQLite), an upstream MCP server (the official SDK's
``MCPServer`` over Streamable HTTP, whose annotations the test changes at run time)
that the gateway routes to as two servers, ``bank`` (prefix ``bank.``, annotations
trusted) and ``plain`` (prefix ``plain.``, not trusted), the real MCP gateway and an
agent using the official MCP client SDK. No tool but ``bank.safe`` is in the catalog.

- a policy asking for approval ``when { resource.destructive }`` opens a request for a
  tool that is destructive by its annotation only; the request shows the attributes
  (API, ``approval.requested`` event); once approved the retry reaches the upstream
  tool, once; the same tool through the untrusted server needs no approval;
- an approval opened while the tool was ``destructive: false`` is not used once the
  gateway derives ``destructive: true`` (the upstream changed its annotation): the
  retry is refused as not for this call, never reaches the upstream, and the approval
  stays approved;
- attributes the agent puts in its request (``_meta``, arguments) are ignored;
- the control plane refuses attributes the schema does not declare, of the wrong type,
  too many or too large (422, on open and use); it decides with the attributes as the
  gateway's snapshot does (the catalog's win); and binds them as the gateway does (a
  request it opened with the gateway's attributes is the one the gateway's call finds).
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
from mcp_types import ToolAnnotations
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until

from agentiam.adapters.gateway.mcp_proxy import McpGateway, build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.approvals_wire import META_KEY
from agentiam.core.policy.entities import MAX_DERIVED_ATTRIBUTES
from agentiam.core.policy.model import ResourceRecord
from agentiam.sdk import AgentClient, AgentKey
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
NAME = "mcp-attributes"
DESTRUCTIVE = ToolAnnotations(destructive_hint=True, read_only_hint=False)
HARMLESS = ToolAnnotations(destructive_hint=False, read_only_hint=False)
DERIVED_DESTRUCTIVE = {"destructive": True, "read_only": False}


@dataclass
class World:
    cp: OAuthLive
    url: str
    verifier: str
    agent_id: str
    agent: AgentClient
    gateway: McpGateway
    hints: dict[str, ToolAnnotations]
    ran: list[str] = field(default_factory=list)

    def admin(self) -> httpx.Client:
        return self.cp.admin_client()

    def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        approval: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Any:
        async def main() -> Any:
            sent = dict(meta or {})
            if approval is not None:
                sent[META_KEY] = approval
            async with self.agent.mcp_session(self.url) as session:
                return await session.call_tool(tool, arguments, meta=sent or None)

        return anyio.run(main)

    def list_tools(self) -> set[str]:
        async def main() -> Any:
            async with self.agent.mcp_session(self.url) as session:
                return await session.list_tools()

        return {t.name for t in anyio.run(main).tools}

    def approval(self, approval: str) -> dict[str, Any]:
        with self.admin() as admin:
            r = admin.get(f"/v1/approvals/{approval}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def approve(self, approval: str) -> None:
        with self.admin() as admin:
            r = admin.post(f"/v1/approvals/{approval}/approve", json={"reason": "checked"})
        assert r.status_code == 200, r.text

    def requested(self, approval: str) -> dict[str, Any]:
        with self.admin() as admin:
            r = admin.get("/v1/audit/events", params={"limit": 200, "type": "approval.requested"})
        assert r.status_code == 200, r.text
        [event] = [e for e in r.json()["items"] if e["details"]["approval_id"] == approval]
        return dict(event)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.verifier}"}
        return httpx.post(self.cp.url + path, json=body, headers=headers, timeout=10)


def _upstream(ran: list[str], hints: dict[str, ToolAnnotations]) -> MCPServer:
    """The bank: each tool listed with the annotations ``hints`` holds for it now."""

    class Hinting(MCPServer):
        async def list_tools(self) -> Any:
            return [
                t.model_copy(update={"annotations": hints.get(t.name)})
                for t in await super().list_tools()
            ]

    def tool(name: str) -> Any:
        def run(amount: int, to: str = "acme") -> str:
            ran.append(f"{name}:{amount}:{to}")
            return f"{name} {amount} to {to}"

        return run

    server = Hinting("bank")
    for name in ("transfer", "sweep", "wire", "safe"):
        server.add_tool(tool(name), name=name, description=f"{name}.")
    return server


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("approvals-mcp-attributes")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    ran: list[str] = []
    hints = {
        "transfer": DESTRUCTIVE,
        "sweep": HARMLESS,
        "wire": DESTRUCTIVE,
        "safe": DESTRUCTIVE,
    }
    with oauth_live(
        f"sqlite:///{db}", approval_sweep_seconds=0.1, policy_refresh_seconds=0.1
    ) as cp:
        c = cp.container
        key = AgentKey.generate()
        agent = c.agents.register(
            CTX,
            NewAgent(
                name=f"mcp-attributes-{secrets.token_hex(3)}",
                owners=[cp.owner_id],
                purpose="moves money through a trusted and an untrusted server",
                environment="production",
                activate=True,
                keys=[key.public_jwk()],
                audiences=[url],
            ),
        )
        a = f'Agent::"{agent.id}"'
        tool = 'Action::"invoke_tool"'
        policies = {
            "tools": f"permit (principal == {a}, action == {tool}, resource);",
            "destructive-needs-approval": (
                f"forbid (principal == {a}, action == {tool}, resource) when "
                "{ resource has destructive && resource.destructive "
                '&& context.approval.state != "approved" };'
            ),
            "sweep-needs-approval": (
                f'forbid (principal == {a}, action == {tool}, resource == Tool::"bank.sweep") '
                'when { context.approval.state != "approved" };'
            ),
        }
        for policy_id, text in policies.items():
            c.policies.put(CTX, policy_id, text=text)
        # the catalog says bank.safe is not destructive, whatever its annotation
        c.resources.put(CTX, ResourceRecord("Tool", "bank.safe", {"destructive": False}, ()))
        verifier = c.admin_keys.create(
            CTX, name=NAME, role="verifier", sources=[f"gateway/{NAME}"]
        ).secret
        env = f"AGENTIAM_TEST_MCP_ATTRIBUTES_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        try:
            with serve_in_thread(_upstream(ran, hints).streamable_http_app(), lifespan="on") as up:
                config = load_config(
                    {
                        "name": NAME,
                        "public_url": url,
                        "listen": {"host": "127.0.0.1", "port": port},
                        "control_plane": {"url": cp.url, "key_env": env},
                        "spool": {"directory": str(tmp / "spool")},
                        "approvals": {"retry_after_seconds": 1},
                        "servers": [
                            {
                                "name": "bank",
                                "url": up + "/mcp",
                                "prefix": "bank.",
                                "trust_annotations": True,
                            },
                            {"name": "plain", "url": up + "/mcp", "prefix": "plain."},
                        ],
                        "catalog_seconds": 0,  # every listing is fetched afresh
                    }
                )
                app = build_app(config, GatewayRuntime.start(config.gateway))
                with serve_in_thread(app, port, lifespan="on"):
                    client = AgentClient(cp.url, client_id=agent.id, key=key, resource=url)
                    try:
                        yield World(
                            cp, url, verifier, agent.id, client, app.state.gateway, hints, ran
                        )
                    finally:
                        client.close()
        finally:
            os.environ.pop(env, None)


def _approval(result: Any, state: str = "pending") -> dict[str, Any]:
    assert result.is_error, result
    approval: dict[str, Any] = (result.meta or {}).get(META_KEY) or {}
    assert approval.get("state") == state, result
    return approval


def test_a_tool_destructive_by_its_annotation_waits_for_approval(world: World) -> None:
    """The gap: without the derived attribute the control plane saw a harmless tool
    and refused to open a request (409), so the call stayed a plain deny."""
    approval = _approval(world.call("bank.transfer", {"amount": 11}))["id"]
    assert world.ran == []
    shown = world.approval(approval)
    assert shown["resource"] == {"type": "Tool", "id": "bank.transfer"}
    assert shown["resource_parents"] == [{"type": "McpServer", "id": "bank"}]
    assert shown["resource_attributes"] == DERIVED_DESTRUCTIVE
    assert shown["policies"] == ["destructive-needs-approval"]
    event = world.requested(approval)
    assert event["details"]["resource_attributes"] == DERIVED_DESTRUCTIVE
    world.approve(approval)
    through = world.call("bank.transfer", {"amount": 11}, approval)
    assert not through.is_error, through
    assert world.ran.count("transfer:11:acme") == 1
    _approval(world.call("bank.transfer", {"amount": 11}, approval), "consumed")
    assert world.ran.count("transfer:11:acme") == 1
    # the same tool through the server whose annotations are not trusted: no attribute
    plain = world.call("plain.transfer", {"amount": 11})
    assert not plain.is_error, plain
    assert world.ran.count("transfer:11:acme") == 2


def test_an_approval_for_a_harmless_tool_is_not_used_once_it_is_destructive(
    world: World,
) -> None:
    approval = _approval(world.call("bank.sweep", {"amount": 7}))["id"]
    shown = world.approval(approval)
    assert shown["resource_attributes"] == {"destructive": False, "read_only": False}
    assert shown["policies"] == ["sweep-needs-approval"]
    world.approve(approval)
    # the upstream now says sweep is destructive; the gateway sees it at its next listing
    world.hints["sweep"] = DESTRUCTIVE
    assert "bank.sweep" not in world.list_tools()  # fetched afresh; denied, so not shown
    assert _until(lambda: world.gateway.tools.attributes("bank.sweep") == DERIVED_DESTRUCTIVE)
    refused = _approval(world.call("bank.sweep", {"amount": 7}, approval), "mismatch")
    assert refused["code"] == "approval-mismatch"
    assert not any(r.startswith("sweep:") for r in world.ran)
    assert world.approval(approval)["state"] == "approved"  # not consumed
    # asked again, the call opens a request of its own, showing what it is now
    again = _approval(world.call("bank.sweep", {"amount": 7}))["id"]
    assert again != approval
    now = world.approval(again)
    assert now["resource_attributes"] == DERIVED_DESTRUCTIVE
    assert sorted(now["policies"]) == ["destructive-needs-approval", "sweep-needs-approval"]
    assert now["fingerprint"] != shown["fingerprint"]


def test_attributes_in_the_agents_request_are_ignored(world: World) -> None:
    claimed = {"destructive": False, "read_only": True}
    meta = {"resource_attributes": claimed, "destructive": False, "annotations": claimed}
    arguments = {"amount": 5, "resource_attributes": claimed, "destructive": False}
    approval = _approval(world.call("bank.wire", arguments, meta=meta))["id"]
    assert world.approval(approval)["resource_attributes"] == DERIVED_DESTRUCTIVE
    assert not any(r.startswith("wire:") for r in world.ran)
    # through the untrusted server, claiming destructive makes nothing wait either
    meta = {"resource_attributes": {"destructive": True}}
    plain = world.call("plain.wire", {"amount": 6}, meta=meta)
    assert not plain.is_error, plain
    assert world.ran.count("wire:6:acme") == 1


def _body(world: World, tool: str, amount: int, **extra: Any) -> dict[str, Any]:
    return {
        "principal": {"type": "Agent", "id": world.agent_id},
        "action": "invoke_tool",
        "resource": {"type": "Tool", "id": tool},
        "context": {"args": {"amount": amount}},
        "resource_parents": [{"type": "McpServer", "id": "bank"}],
        **extra,
    }


BAD_ATTRIBUTES: list[Any] = [
    {"colour": "red"},  # not declared for a Tool
    {"destructive": "yes"},  # not a Boolean
    {"destructive": 1},
    {"owner": {"type": "Agent", "id": "agt_x"}},  # an entity of the wrong type
    {f"a{i}": True for i in range(MAX_DERIVED_ATTRIBUTES + 1)},  # too many
    {"name": "x" * 5000},  # too large
    ["destructive"],  # not an object
    {"": True},
]


@pytest.mark.parametrize("attributes", BAD_ATTRIBUTES)
def test_the_control_plane_refuses_bad_attributes(world: World, attributes: Any) -> None:
    opened = world.post(
        "/v1/approvals", _body(world, "bank.transfer", 21, resource_attributes=attributes)
    )
    assert opened.status_code == 422, opened.text
    used = world.post(
        "/v1/approvals/apr_01JF0000000000000000000000/use",
        _body(world, "bank.transfer", 21, resource_attributes=attributes),
    )
    assert used.status_code == 422, used.text


def test_an_attribute_of_another_type_is_refused(world: World) -> None:
    body = {
        "principal": {"type": "Agent", "id": world.agent_id},
        "action": "POST",
        "resource": {"type": "Endpoint", "id": "POST /pay"},
        "resource_attributes": {"destructive": True},
    }
    r = world.post("/v1/approvals", body)
    assert r.status_code == 422, r.text
    assert "is not declared for a Endpoint" in r.text


def test_the_control_plane_decides_and_binds_the_attributes_as_the_gateway(
    world: World,
) -> None:
    # without the attribute no policy asks; the catalog's attribute wins over a derived one
    assert world.post("/v1/approvals", _body(world, "bank.transfer", 13)).status_code == 409
    safe = _body(world, "bank.safe", 13, resource_attributes={"destructive": True})
    assert world.post("/v1/approvals", safe).status_code == 409
    safe_call = world.call("bank.safe", {"amount": 13})  # the gateway agrees: allowed
    assert not safe_call.is_error, safe_call
    # opened with the attributes the gateway derives, it is the request the gateway's
    # own call finds: the same call, bound alike
    body = _body(world, "bank.transfer", 13, resource_attributes=DERIVED_DESTRUCTIVE)
    body["context"]["args"]["to"] = "acme"
    opened = world.post("/v1/approvals", body)
    assert opened.status_code == 200, opened.text
    assert opened.json()["resource_attributes"] == DERIVED_DESTRUCTIVE
    assert (
        _approval(world.call("bank.transfer", {"amount": 13, "to": "acme"}))["id"]
        == (opened.json()["id"])
    )
    # with other attributes it is another request
    other = _body(world, "bank.transfer", 13, resource_attributes={"destructive": True})
    other["context"]["args"]["to"] = "acme"
    second = world.post("/v1/approvals", other)
    assert second.status_code == 200, second.text
    assert second.json()["id"] != opened.json()["id"]
