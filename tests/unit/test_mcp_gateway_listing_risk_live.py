"""The MCP gateway's listings are decided with the agent's risk score, as its calls
are (``Visibility``; ``context.risk_score``). Real servers on loopback ports: a
control plane (uvicorn, SQLite), an upstream MCP server (the SDK's ``MCPServer``)
recording every JSON-RPC request, and the real gateway, driven by the official SDK
client with real DPoP-bound tokens. The risk scores reach the gateway as detection
hands them to the control plane (``EnforcementSync.set_risk``, what
``DetectionService.on_scores`` is wired to) and the bundle carries them.

- under ``forbid (...) when { context.risk_score > 70 }``, an agent whose score is 90
  is refused its calls and is shown no tool, resource, template or prompt; an agent
  whose score is low sees and calls them all;
- the risky agent's listing is audited with everything hidden.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError
from tests.api.oauth_support import OAuthLive
from tests.support.live import until as _until
from tests.unit.mcp_gateway_support import control_plane, gateway, gateway_address
from tests.unit.test_mcp_gateway_metrics_live import World as Agentside
from tests.unit.test_mcp_gateway_metrics_live import _register
from tests.unit.test_mcp_gateway_tool_entities_live import Recorded

from agentiam.sdk import AgentClient
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
SOURCE = "gateway/mcp-listing-risk"
RISKY_SCORE = 90


def _upstream() -> Recorded:
    up = Recorded("bank")
    up.tool("search")
    up.tool("transfer")
    server = up.server

    @server.resource("bank://rates")
    def rates() -> str:
        return "bank rates"

    @server.resource("bank://statements/{id}")
    def statement(id: str) -> str:
        return f"bank statement {id}"

    @server.prompt()
    def summarize(text: str) -> str:
        return f"Summarize: {text}"

    return up


@dataclass
class World:
    cp: OAuthLive
    risky: Agentside
    calm: Agentside
    risky_id: str
    bank: Recorded


Shown = tuple[set[str], set[str], set[str], set[str]]


def _listed(side: Agentside) -> Shown:
    """What ``side``'s agent is shown: tools, resources, templates, prompts."""

    async def go() -> Shown:
        async with side.client() as client:
            tools = await client.list_tools()
            resources = await client.list_resources()
            templates = await client.list_resource_templates()
            prompts = await client.list_prompts()
        return (
            {t.name for t in tools.tools},
            {str(r.uri) for r in resources.resources},
            {t.uri_template for t in templates.resource_templates},
            {p.name for p in prompts.prompts},
        )

    return anyio.run(go)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-listing-risk")
    at = gateway_address()
    bank = _upstream()
    with control_plane(tmp, sqlite_template) as cp:
        c = cp.container
        risky_id, risky_key = _register(cp, "risky-bot", at.url)
        calm_id, calm_key = _register(cp, "calm-bot", at.url)
        c.policies.put(CTX, "all", text="permit (principal, action, resource);")
        c.policies.put(
            CTX,
            "risky",
            text="forbid (principal, action, resource) when { context.risk_score > 70 };",
        )
        with gateway(cp, tmp, SOURCE, at, {"bank": bank.app}):
            risky = AgentClient(cp.url, client_id=risky_id, key=risky_key, resource=at.url)
            calm = AgentClient(cp.url, client_id=calm_id, key=calm_key, resource=at.url)
            try:
                yield World(
                    cp,
                    Agentside(cp, at.url, at.base, risky, risky),
                    Agentside(cp, at.url, at.base, calm, calm),
                    risky_id,
                    bank,
                )
            finally:
                risky.close()
                calm.close()


def _risky_now(world: World) -> None:
    """Detection scores the risky agent 90; wait until the gateway's calls see it."""
    world.cp.container.enforcement.set_risk({world.risky_id: RISKY_SCORE})

    def refused() -> bool:
        outcome = world.risky.call("bank.search")
        return not isinstance(outcome, MCPError) and bool(outcome.is_error)

    assert _until(refused), "the gateway never decided with the risk score"


def test_a_risky_agent_is_shown_nothing_its_calls_would_be_refused(world: World) -> None:
    everything = (
        {"bank.search", "bank.transfer"},
        {"bank.bank://rates"},
        {"bank.bank://statements/{id}"},
        {"bank.summarize"},
    )
    assert _listed(world.risky) == everything  # no score yet
    _risky_now(world)
    refused = world.risky.call("bank.transfer")
    assert not isinstance(refused, MCPError)
    assert refused.is_error
    assert "forbidden by policy risky" in refused.content[0].text
    # the attack: list what policy refuses to call. Nothing is shown.
    assert _listed(world.risky) == (set(), set(), set(), set())
    # an agent without a risk score still sees and calls everything
    assert _listed(world.calm) == everything
    allowed = world.calm.call("bank.search")
    assert not isinstance(allowed, MCPError)
    assert not allowed.is_error

    def hidden_listing() -> list[dict[str, Any]]:
        return [
            e
            for e in world.risky.trail_of("mcp.list")
            if e.get("agent_id") == world.risky_id
            and (e.get("details") or {}).get("shown_count") == 0
            and (e.get("details") or {}).get("hidden_count") == 2
            and e.get("action") == "tools/list"
        ]

    events = _until(hidden_listing)
    assert events, "no audited listing with the risky agent's tools hidden"
    assert json.dumps(events[-1]["details"]["shown"]) == "[]"
