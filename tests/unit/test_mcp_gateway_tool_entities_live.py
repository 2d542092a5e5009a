"""The MCP gateway's decisions see every tool an upstream lists as a member of its
``McpServer``, whatever the catalog says, and it forwards only listed tools
(adapters/gateway/mcp_tools.py). Real servers on loopback ports: a control plane
(uvicorn, SQLite), three upstream MCP servers (the SDK's ``MCPServer``) that record
every JSON-RPC request they get, and the real gateway, driven by the official SDK
client and raw HTTP with real DPoP-bound tokens.

- ``permit ... resource in McpServer::"bank"`` lists and allows bank's tools with no
  catalog entry; the other servers' tools are neither listed nor callable;
- ``forbid ... resource in McpServer::"payments"`` stops a payments tool a permit
  names, with no catalog entry;
- a catalog entry in another ``McpServer`` keeps it and gains the route's server;
- a tool the upstream serves but does not list is refused without a request reaching
  the upstream, audited and counted ``not_found``; a spray of unknown names fetches
  the listing at most once a second; a tool added to the upstream after start becomes
  callable after the refresh;
- ``trust_annotations``: off, a ``destructiveHint`` is not seen by policy; on, it is;
- a call is forwarded only to the server it was decided in: when the routing changes
  between the decision and the forward, it goes nowhere (not to the other server).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, ToolAnnotations
from starlette.types import Receive, Scope, Send
from tests.api.oauth_support import oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until
from tests.unit.test_mcp_gateway_hardening_live import _message
from tests.unit.test_mcp_gateway_metrics_live import World as Agentside
from tests.unit.test_mcp_gateway_metrics_live import _delta, _register, _rpc

from agentiam.adapters.gateway.mcp_proxy import McpGateway, build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.policy.entities import MAX_PARENTS
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.sdk import AgentClient
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
SOURCE = "gateway/mcp-entities"
TOOL = 'Action::"invoke_tool"'
POLICIES = {
    "bank-tools": f'permit (principal, action == {TOOL}, resource in McpServer::"bank");',
    "ops-tools": f'permit (principal, action == {TOOL}, resource in McpServer::"ops");',
    "pay-by-name": f'permit (principal, action == {TOOL}, resource == Tool::"payments.pay");',
    "no-payments": f'forbid (principal, action == {TOOL}, resource in McpServer::"payments");',
    "crowded-by-name": (
        f'permit (principal, action == {TOOL}, resource == Tool::"payments.crowded");'
    ),
    "no-destructive": (
        f"forbid (principal, action == {TOOL}, resource) "
        "when { resource has destructive && resource.destructive };"
    ),
}
DESTRUCTIVE = ToolAnnotations(destructive_hint=True, read_only_hint=False)


class Recorded:
    """An upstream MCP server (the SDK's ``MCPServer``) that hides the tools named in
    ``hidden`` from its listing (but serves them) and records every JSON-RPC request it
    gets: (method, tool name)."""

    def __init__(self, name: str, hidden: frozenset[str] = frozenset()) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.ran: list[str] = []
        hide = hidden

        class Hiding(MCPServer):
            async def list_tools(self) -> Any:
                return [t for t in await super().list_tools() if t.name not in hide]

        self.server = Hiding(name)
        inner = self.server.streamable_http_app()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["method"] != "POST":
                await inner(scope, receive, send)
                return
            chunks: list[bytes] = []
            more = True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(chunks)
            try:
                decoded = json.loads(body)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict) and isinstance(decoded.get("method"), str):
                params = decoded.get("params") or {}
                self.seen.append((decoded["method"], params.get("name")))
            sent = False

            async def replay() -> Any:
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await inner(scope, replay, send)

        self.app = app

    def tool(self, name: str, annotations: ToolAnnotations | None = None) -> None:
        ran = self.ran

        def run() -> str:
            ran.append(name)
            return f"{name} ran"

        self.server.add_tool(run, name=name, description=f"{name}.", annotations=annotations)

    def calls(self) -> list[str | None]:
        return [name for method, name in self.seen if method == "tools/call"]

    def listings(self) -> int:
        return sum(1 for method, _ in self.seen if method == "tools/list")


@dataclass
class World:
    agentside: Agentside
    gateway: McpGateway
    bank: Recorded
    payments: Recorded
    ops: Recorded

    def call(self, name: str) -> Any:
        """The tool result, or the MCPError the call raised."""
        return self.agentside.call(name)

    def refused(self, name: str) -> MCPError:
        outcome = self.call(name)
        assert isinstance(outcome, MCPError), outcome
        return outcome

    def listed(self) -> set[str]:
        async def go() -> Any:
            async with self.agentside.client() as client:
                return await client.list_tools()

        return {t.name for t in anyio.run(go).tools}

    def trail(self, **params: Any) -> list[dict[str, Any]]:
        with self.agentside.cp.admin_client() as admin:
            r = admin.get("/v1/audit/events", params={"limit": 200, **params})
            assert r.status_code == 200, r.text
            return list(r.json()["items"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-entities")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = base + "/mcp"
    bank = Recorded("bank", hidden=frozenset({"drain"}))
    for name in ("search", "drain", "report"):
        bank.tool(name)
    bank.tool("wipe", DESTRUCTIVE)  # trust_annotations off: policy does not see the hint
    payments = Recorded("payments")
    payments.tool("pay")
    payments.tool("search")  # as bank's: forbidden here, permitted there
    payments.tool("crowded")  # its catalog entry leaves no room for the server parent
    ops = Recorded("ops")
    ops.tool("look", ToolAnnotations(read_only_hint=True, destructive_hint=False))
    ops.tool("wipe", DESTRUCTIVE)  # trust_annotations on
    with oauth_live(f"sqlite:///{db}", policy_refresh_seconds=0.1) as cp:
        c = cp.container
        for policy_id, text in POLICIES.items():
            c.policies.put(CTX, policy_id, text=text)
        # the catalog puts bank.report in another server (and nothing else anywhere)
        c.resources.put(
            CTX,
            ResourceRecord(
                "Tool", "bank.report", {"domain": "ledger"}, (EntityRef("McpServer", "other"),)
            ),
        )
        crowded = tuple(EntityRef("McpServer", f"g{i}") for i in range(MAX_PARENTS))
        c.resources.put(CTX, ResourceRecord("Tool", "payments.crowded", {}, crowded))
        agent_id, agent_key = _register(cp, "entities-bot", url)
        verifier = c.admin_keys.create(CTX, name="mcp-gw", role="verifier", sources=[SOURCE]).secret
        env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        try:
            with (
                serve_in_thread(bank.app, lifespan="on") as bank_url,
                serve_in_thread(payments.app, lifespan="on") as payments_url,
                serve_in_thread(ops.app, lifespan="on") as ops_url,
            ):
                config = load_config(
                    {
                        "name": SOURCE.removeprefix("gateway/"),
                        "public_url": url,
                        "listen": {"host": "127.0.0.1", "port": port},
                        "control_plane": {"url": cp.url, "key_env": env},
                        "spool": {"directory": str(tmp / "spool")},
                        "servers": [
                            {"name": "bank", "url": bank_url + "/mcp"},
                            {"name": "payments", "url": payments_url + "/mcp"},
                            {"name": "ops", "url": ops_url + "/mcp", "trust_annotations": True},
                        ],
                        "catalog_seconds": 60,  # only a refresh for an unknown name fetches
                    }
                )
                app = build_app(config, GatewayRuntime.start(config.gateway))
                with serve_in_thread(app, port, lifespan="on"):
                    agent = AgentClient(cp.url, client_id=agent_id, key=agent_key, resource=url)
                    try:
                        side = Agentside(cp, url, base, agent, agent)
                        yield World(side, app.state.gateway, bank, payments, ops)
                    finally:
                        agent.close()
        finally:
            os.environ.pop(env, None)


def test_a_server_permit_lists_and_allows_its_tools_without_a_catalog_entry(
    world: World,
) -> None:
    shown = world.listed()
    assert {"bank.search", "bank.report", "bank.wipe"} <= shown
    assert "bank.drain" not in shown  # not listed by the upstream
    assert "payments.pay" not in shown  # forbidden by its server, though permitted by name
    result = world.call("bank.search")
    assert not result.is_error, result
    assert world.bank.ran.count("search") == 1


def test_a_server_forbid_stops_a_tool_a_permit_names(world: World) -> None:
    result = world.call("payments.pay")
    assert result.is_error
    assert "forbidden by policy no-payments" in result.content[0].text
    assert world.payments.calls() == []


def test_a_catalog_parent_is_kept_and_the_route_server_added(world: World) -> None:
    world.listed()
    entities = world.gateway.runtime.link.authorizer().entities
    report = EntityRef("Tool", "bank.report")
    assert entities.parents[report] == (
        EntityRef("McpServer", "other"),
        EntityRef("McpServer", "bank"),
    )
    assert dict(entities.resources[report].attributes) == {"domain": "ledger"}
    assert EntityRef("McpServer", "bank") in entities.ancestors(EntityRef("Tool", "bank.search"))
    assert not world.call("bank.report").is_error  # bank-tools matches it now


def test_a_hidden_tool_is_refused_and_never_reaches_the_upstream(world: World) -> None:
    before = world.agentside.samples()
    refused = world.refused("bank.drain")
    assert refused.code == INVALID_PARAMS
    assert "unknown tool" in refused.message
    # raw, too: a JSON-RPC error in an HTTP 200 (a 404 would tell the client that its
    # session is gone)
    raw = world.agentside.post(
        _rpc("tools/call", {"name": "bank.drain", "arguments": {}}),
        agent=world.agentside.agent,
        **{"Mcp-Method": "tools/call", "Mcp-Name": "bank.drain"},
    )
    assert raw.status_code == 200, raw.text
    assert _message(raw)["error"]["code"] == INVALID_PARAMS
    assert "bank.drain" not in world.bank.ran
    assert "drain" not in world.bank.calls()
    after = world.agentside.samples()
    counted = _delta(
        before,
        after,
        "agentiam_mcp_gateway_requests_total",
        method="tools/call",
        outcome="not_found",
    )
    assert counted == 2

    def refusals() -> list[dict[str, Any]]:
        return [
            e
            for e in world.trail(type="api.request.rejected")
            if "unknown tool 'bank.drain'" in str(e.get("reason"))
        ]

    events = _until(lambda: len(refusals()) >= 2 and refusals())
    assert events
    assert len(events) == 2
    assert all(e["details"]["status"] == 404 for e in events), events
    assert not [e for e in world.trail(type="authz.decision") if "bank.drain" in json.dumps(e)]


def test_a_tool_whose_record_cannot_carry_its_server_is_neither_shown_nor_called(
    world: World,
) -> None:
    """The catalog gives ``payments.crowded`` as many parents as an entity may have,
    so its derived record (one more: ``McpServer::"payments"``) is left out of the
    snapshot. Decided without that parent, the forbid on payments would not match and
    the permit by name would: the gateway must treat the tool as unknown instead."""
    entities = world.gateway.runtime.link.authorizer().entities
    assert EntityRef("McpServer", "payments") not in entities.parents.get(
        EntityRef("Tool", "payments.crowded"), ()
    )
    assert "payments.crowded" not in world.listed()
    refused = world.refused("payments.crowded")
    assert "unknown tool" in refused.message
    assert "crowded" not in world.payments.ran
    assert "crowded" not in world.payments.calls()


def test_a_spray_of_unknown_names_fetches_the_listing_at_most_once_a_second(world: World) -> None:
    time.sleep(1.1)  # past the last refresh of the other tests
    before = world.bank.listings()
    started = time.monotonic()

    async def spray() -> None:
        async with world.agentside.client() as client:
            for i in range(20):
                with pytest.raises(MCPError, match="unknown tool"):
                    await client.call_tool(f"bank.nope{i}", {})

    anyio.run(spray)
    took = time.monotonic() - started
    fetched = world.bank.listings() - before
    assert 1 <= fetched <= int(took) + 1, (fetched, took)


def test_a_tool_added_after_start_is_callable_after_the_refresh(world: World) -> None:
    time.sleep(1.1)
    assert "unknown tool" in world.refused("bank.late").message
    world.bank.tool("late")
    time.sleep(1.1)  # the refresh interval
    result = world.call("bank.late")
    assert not result.is_error, result
    assert world.bank.ran.count("late") == 1


def test_annotations_reach_policy_only_from_a_trusted_server(world: World) -> None:
    assert not world.call("bank.wipe").is_error  # untrusted: the hint is not seen
    assert not world.call("ops.look").is_error
    refused = world.call("ops.wipe")  # trusted: destructive
    assert refused.is_error
    assert "forbidden by policy no-destructive" in refused.content[0].text
    assert "wipe" not in world.ops.ran
    shown = world.listed()
    assert "ops.look" in shown
    assert "ops.wipe" not in shown
    assert "bank.wipe" in shown
    entities = world.gateway.runtime.link.authorizer().entities
    look = entities.resources[EntityRef("Tool", "ops.look")]
    assert dict(look.attributes) == {"read_only": True, "destructive": False}
    assert dict(entities.resources[EntityRef("Tool", "bank.wipe")].attributes) == {}


def test_a_call_decided_in_one_server_is_never_forwarded_to_another(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bank.search`` is decided in ``McpServer::"bank"`` (permitted there);
    ``payments`` serves a ``search`` too, forbidden in its server. The routing
    changes between the decision and the forward: once the call is decided, the
    prefix ``bank.`` names the payments server. The call was decided for bank, so it
    is forwarded to neither (``tools/call`` binds the call to its server:
    ``tool_call``'s ``resource_parents``, checked by ``McpGateway._decided_in``):
    the agent gets an error, the ``tool.call`` records a failure with status 404,
    and no upstream sees it."""
    world.listed()
    refused = world.call("payments.search")
    assert refused.is_error  # where payments' search would be decided
    assert "forbidden by policy no-payments" in refused.content[0].text
    gateway = world.gateway
    servers = gateway.namespace.servers
    payments = next(s for s in servers if s.name == "payments")
    rerouted = (replace(payments, prefix="bank."), *(s for s in servers if s.name != "bank"))
    decide = gateway.enforcer.decide

    def decide_then_reroute(*args: Any, **kwargs: Any) -> Any:
        verdict = decide(*args, **kwargs)
        gateway.namespace.servers = rerouted
        return verdict

    bank_runs = world.bank.ran.count("search")
    bank_calls = world.bank.calls().count("search")
    monkeypatch.setattr(gateway.enforcer, "decide", decide_then_reroute)
    try:
        outcome = world.call("bank.search")
    finally:
        monkeypatch.undo()
        gateway.namespace.servers = servers
    assert "search" not in world.payments.ran
    assert "search" not in world.payments.calls()
    assert world.bank.ran.count("search") == bank_runs
    assert world.bank.calls().count("search") == bank_calls
    assert isinstance(outcome, MCPError), outcome
    assert "no upstream server serves 'bank.search'" in outcome.message

    def failed() -> list[dict[str, Any]]:
        return [
            e
            for e in world.trail(type="tool.call")
            if e["details"]["tool"] == "bank.search" and e["outcome"] == "failure"
        ]

    events = _until(failed)
    assert events, world.trail(type="tool.call")
    assert [e["details"]["status"] for e in events] == [404]
    # and the routing restored, the same call goes to bank as before
    assert not world.call("bank.search").is_error
    assert world.bank.ran.count("search") == bank_runs + 1
