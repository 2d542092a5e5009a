"""The MCP gateway decides resources, resource templates and prompts in the
``McpServer`` it routes them to, whatever the catalog says (``resource_call``,
``prompt_call``, ``Visibility``; ``AuthzRequest.resource_parents``). Real servers on
loopback ports: a control plane (uvicorn, SQLite), two upstream MCP servers (the
SDK's ``MCPServer``) recording every JSON-RPC request, and the real gateway, driven
by the official SDK client with real DPoP-bound tokens.

- ``forbid (principal, action, resource in McpServer::"bank")`` under a permit for
  everything: bank's resources (plain and template-instantiated URIs) and prompts
  are refused and audited, never reach bank, and bank's resources, templates and
  prompts are not listed; ops' are read and listed;
- a catalog entry putting a bank resource in another ``McpServer``, or a bank prompt
  in none, does not take it out of bank; one whose parents leave no room for bank's
  is refused (fail closed);
- ``permit ... resource in McpServer::"ops"`` allows and lists only ops'.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError
from tests.api.oauth_support import oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until
from tests.unit.test_mcp_gateway_metrics_live import World as Agentside
from tests.unit.test_mcp_gateway_metrics_live import _register
from tests.unit.test_mcp_gateway_tool_entities_live import Recorded

from agentiam.adapters.gateway.mcp_proxy import POLICY_DENIED, build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.policy.entities import MAX_PARENTS
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.sdk import AgentClient
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
SOURCE = "gateway/mcp-resource-entities"


def _upstream(name: str) -> Recorded:
    """An upstream with two resources, a template and a prompt, named after it."""
    up = Recorded(name)
    server = up.server

    @server.resource(f"{name}://rates")
    def rates() -> str:
        return f"{name} rates"

    @server.resource(f"{name}://secrets")
    def vault() -> str:
        return f"{name} vault"

    @server.resource(f"{name}://crowded")
    def crowded() -> str:
        return f"{name} crowded"

    @server.resource(f"{name}://statements/{{id}}")
    def statement(id: str) -> str:
        return f"{name} statement {id}"

    @server.prompt()
    def summarize(text: str) -> str:
        return f"Summarize: {text}"

    return up


@dataclass
class World:
    forbidden: Agentside  # permit everything, forbid bank
    ops_only: Agentside  # permit only in McpServer::"ops"
    bank: Recorded
    ops: Recorded

    def reached(self, up: Recorded, method: str) -> int:
        return sum(1 for m, _ in up.seen if m == method)


def _read(side: Agentside, uri: str) -> Any:
    async def go() -> Any:
        async with side.client() as client:
            try:
                return await client.read_resource(uri)
            except MCPError as exc:
                return exc

    return anyio.run(go)


def _prompt(side: Agentside, name: str) -> Any:
    async def go() -> Any:
        async with side.client() as client:
            try:
                return await client.get_prompt(name, {"text": "q3"})
            except MCPError as exc:
                return exc

    return anyio.run(go)


def _listed(side: Agentside) -> tuple[set[str], set[str], set[str]]:
    async def go() -> tuple[set[str], set[str], set[str]]:
        async with side.client() as client:
            resources = await client.list_resources()
            templates = await client.list_resource_templates()
            prompts = await client.list_prompts()
        return (
            {str(r.uri) for r in resources.resources},
            {t.uri_template for t in templates.resource_templates},
            {p.name for p in prompts.prompts},
        )

    return anyio.run(go)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-resource-entities")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = base + "/mcp"
    bank, ops = _upstream("bank"), _upstream("ops")
    with oauth_live(f"sqlite:///{db}", policy_refresh_seconds=0.1) as cp:
        c = cp.container
        a_id, a_key = _register(cp, "forbidden-bot", url)
        b_id, b_key = _register(cp, "ops-bot", url)
        a, b = f'Agent::"{a_id}"', f'Agent::"{b_id}"'
        policies = {
            "a-all": f"permit (principal == {a}, action, resource);",
            "a-no-bank": f'forbid (principal == {a}, action, resource in McpServer::"bank");',
            "b-ops": f'permit (principal == {b}, action, resource in McpServer::"ops");',
        }
        for policy_id, text in policies.items():
            c.policies.put(CTX, policy_id, text=text)
        # the catalog tries to take bank's resource and prompt out of bank
        other = (EntityRef("McpServer", "ops"),)
        c.resources.put(CTX, ResourceRecord("DataSet", "bank.bank://secrets", {}, other))
        c.resources.put(CTX, ResourceRecord("DataSet", "prompt:bank.summarize", {}, ()))
        full = tuple(EntityRef("McpServer", f"g{i}") for i in range(MAX_PARENTS))
        c.resources.put(CTX, ResourceRecord("DataSet", "ops.ops://crowded", {}, full))
        verifier = c.admin_keys.create(CTX, name="mcp-gw", role="verifier", sources=[SOURCE]).secret
        env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        try:
            with (
                serve_in_thread(bank.app, lifespan="on") as bank_url,
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
                            {"name": "ops", "url": ops_url + "/mcp"},
                        ],
                    }
                )
                app = build_app(config, GatewayRuntime.start(config.gateway))
                with serve_in_thread(app, port, lifespan="on"):
                    agent_a = AgentClient(cp.url, client_id=a_id, key=a_key, resource=url)
                    agent_b = AgentClient(cp.url, client_id=b_id, key=b_key, resource=url)
                    try:
                        yield World(
                            Agentside(cp, url, base, agent_a, agent_a),
                            Agentside(cp, url, base, agent_b, agent_b),
                            bank,
                            ops,
                        )
                    finally:
                        agent_a.close()
                        agent_b.close()
        finally:
            os.environ.pop(env, None)


def _denied(outcome: Any, policy: str) -> None:
    assert isinstance(outcome, MCPError), outcome
    assert outcome.code == POLICY_DENIED
    assert f"forbidden by policy {policy}" in outcome.message


@pytest.mark.parametrize(
    "uri", ["bank.bank://rates", "bank.bank://statements/7", "bank.bank://secrets"]
)
def test_a_server_forbid_refuses_its_resources(world: World, uri: str) -> None:
    """Plain, template-instantiated (in no listing), and catalogued in another
    server: all in bank."""
    reads = world.reached(world.bank, "resources/read")
    _denied(_read(world.forbidden, uri), "a-no-bank")
    assert world.reached(world.bank, "resources/read") == reads

    def denial() -> list[dict[str, Any]]:
        return [
            e
            for e in world.forbidden.trail_of("authz.decision")
            if uri in json.dumps(e) and "a-no-bank" in json.dumps(e)
        ]

    events = _until(denial)
    assert events, f"no audited denial of {uri}"


def test_a_server_forbid_refuses_its_prompts_whatever_the_catalog(world: World) -> None:
    gets = world.reached(world.bank, "prompts/get")
    _denied(_prompt(world.forbidden, "bank.summarize"), "a-no-bank")
    assert world.reached(world.bank, "prompts/get") == gets


def test_the_other_servers_resources_and_prompts_are_allowed(world: World) -> None:
    read = _read(world.forbidden, "ops.ops://rates")
    assert not isinstance(read, MCPError), read
    assert read.contents[0].text == "ops rates"
    templated = _read(world.forbidden, "ops.ops://statements/9")
    assert not isinstance(templated, MCPError), templated
    assert templated.contents[0].text == "ops statement 9"
    prompt = _prompt(world.forbidden, "ops.summarize")
    assert not isinstance(prompt, MCPError), prompt


def test_a_server_forbid_hides_its_resources_templates_and_prompts(world: World) -> None:
    resources, templates, prompts = _listed(world.forbidden)
    assert not [r for r in resources if r.startswith("bank.")], resources
    assert not [t for t in templates if t.startswith("bank.")], templates
    assert not [p for p in prompts if p.startswith("bank.")], prompts
    assert {"ops.ops://rates", "ops.ops://secrets"} <= resources
    assert templates == {"ops.ops://statements/{id}"}
    assert prompts == {"ops.summarize"}


def test_a_resource_that_cannot_be_placed_in_its_server_is_refused(world: World) -> None:
    """``ops.ops://crowded`` has as many catalog parents as an entity may have, so
    ``McpServer::"ops"`` cannot be added: refused (fail closed) and not listed, though
    a permit for everything would allow it without its server."""
    outcome = _read(world.forbidden, "ops.ops://crowded")
    assert isinstance(outcome, MCPError), outcome
    assert outcome.code == POLICY_DENIED
    assert "cannot be placed" in outcome.message
    assert "ops.ops://crowded" not in _listed(world.forbidden)[0]


def test_a_server_permit_allows_and_lists_only_that_servers(world: World) -> None:
    ok = _read(world.ops_only, "ops.ops://statements/3")
    assert not isinstance(ok, MCPError), ok
    assert not isinstance(_prompt(world.ops_only, "ops.summarize"), MCPError)
    for uri in ("bank.bank://rates", "bank.bank://statements/3"):
        refused = _read(world.ops_only, uri)
        assert isinstance(refused, MCPError), refused
        assert refused.code == POLICY_DENIED
        assert "no policy permits" in refused.message
    # catalogued in McpServer::"ops": the permit on ops matches (the catalog adds)
    assert not isinstance(_read(world.ops_only, "bank.bank://secrets"), MCPError)
    assert isinstance(_prompt(world.ops_only, "bank.summarize"), MCPError)
    resources, templates, prompts = _listed(world.ops_only)
    assert {r for r in resources if r.startswith("bank.")} == {"bank.bank://secrets"}
    assert templates == {"ops.ops://statements/{id}"}
    assert prompts == {"ops.summarize"}
