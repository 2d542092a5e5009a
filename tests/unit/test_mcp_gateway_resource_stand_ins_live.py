"""The MCP gateway keeps listed resources, resource templates and prompts, and the
catalog's data sets it routes, in its entity snapshot in their ``McpServer``, with a
stand-in per server for everything else (adapters/gateway/mcp_tools.py): a read of a
URI no listing names (made from a template) is decided without a copy of the
snapshot. Real servers on loopback ports: a control plane (uvicorn, SQLite), an
upstream MCP server (the SDK's ``MCPServer``) and the real gateway in this process,
driven by the official SDK client with real DPoP-bound tokens.

The denial of service this closes: each distinct unlisted URI cost a copy of the
gateway's entities (O(catalog entries), about 22 ms with 20,000) on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError
from tests.unit.mcp_gateway_support import control_plane, gateway, gateway_address
from tests.unit.test_mcp_gateway_metrics_live import World as Agentside
from tests.unit.test_mcp_gateway_metrics_live import _register
from tests.unit.test_mcp_gateway_resource_entities_live import _upstream

from agentiam.adapters.gateway.mcp_proxy import POLICY_DENIED
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.policy.entities import EntitySnapshot
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.sdk import AgentClient
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
SOURCE = "gateway/mcp-resource-stand-ins"
BANK = EntityRef("McpServer", "bank")


@dataclass
class World:
    side: Agentside
    runtime: GatewayRuntime


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-resource-stand-ins")
    at = gateway_address()
    bank = _upstream("bank")
    with control_plane(tmp, sqlite_template) as cp:
        c = cp.container
        agent_id, key = _register(cp, "reader-bot", at.url)
        who = f'Agent::"{agent_id}"'
        c.policies.put(CTX, "all", text=f"permit (principal == {who}, action, resource);")
        c.policies.put(
            CTX,
            "no-bank-statements",
            text=(
                f'forbid (principal == {who}, action, resource in McpServer::"bank") '
                'unless { resource == DataSet::"bank.bank://rates" };'
            ),
        )
        # a catalog data set of bank's with no server: the gateway places it in bank
        c.resources.put(CTX, ResourceRecord("DataSet", "bank.bank://catalogued", {}, ()))
        with gateway(cp, tmp, SOURCE, at, {"bank": bank.app}) as runtime:
            agent = AgentClient(cp.url, client_id=agent_id, key=key, resource=at.url)
            try:
                yield World(Agentside(cp, at.url, at.base, agent, agent), runtime)
            finally:
                agent.close()


def _list_and_read(side: Agentside, uris: list[str]) -> list[Any]:
    async def go() -> list[Any]:
        out: list[Any] = []
        async with side.client() as client:
            await client.list_resources()
            await client.list_resource_templates()
            await client.list_prompts()
            for uri in uris:
                try:
                    out.append(await client.read_resource(uri))
                except MCPError as exc:
                    out.append(exc)
        return out

    return anyio.run(go)


def test_listed_items_and_routed_catalog_entries_are_in_the_snapshot(world: World) -> None:
    _list_and_read(world.side, [])
    entities = world.runtime.link.entities()
    assert entities is not None
    for entity in (
        "bank.bank://rates",
        "bank.bank://statements/{id}",
        "prompt:bank.summarize",
        "bank.bank://catalogued",
    ):
        assert BANK in entities.parents[EntityRef("DataSet", entity)], entity
    assert entities.stand_in("DataSet", (BANK,)) is not None


def test_reads_of_unlisted_uris_copy_nothing(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forty template-made URIs, each in no listing: each is refused by the forbid on
    bank (so it was decided in bank), and no copy of the entities was made.

    A decision's copy is one of the snapshot in force with a record or a stand-in
    merged in (the authorizer's ``_copy``: ``with_more``, ``with_attributes``); those
    are counted. Not counted: a new bundle's entities derived with the listings'
    records (``ListedTools.derive``, ``with_derived``), which is no copy per URI and
    comes when the control plane publishes one. It does, at a time of its own: the
    forty denials raise the agent's risk score, which the next bundle carries, about
    a second after the reads (sooner or later under load)."""
    copies: list[str] = []

    def counting(name: str) -> None:
        real = getattr(EntitySnapshot, name)

        def counted(self: EntitySnapshot, *args: Any, **kwargs: Any) -> EntitySnapshot:
            copies.append(name)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(EntitySnapshot, name, counted)

    _list_and_read(world.side, [])  # the listings' records are in (a rederive, if any)
    counting("with_more")
    counting("with_attributes")
    uris = [f"bank.bank://statements/{i}" for i in range(40)]
    outcomes = _list_and_read(world.side, [*uris, "bank.bank://rates"])
    for outcome in outcomes[:-1]:
        assert isinstance(outcome, MCPError), outcome
        assert outcome.code == POLICY_DENIED
        assert "forbidden by policy no-bank-statements" in outcome.message
    assert outcomes[-1].contents[0].text == "bank rates"
    assert copies == []
    assert world.runtime.link.authorizer()._placed[1] == {}
