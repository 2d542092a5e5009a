"""A request the MCP gateway cannot decide or record (its own state: the audit spool
full, the control plane lost past the outage bound) is a JSON-RPC error at HTTP 503
with ``Retry-After``, its message the error's detail as before, and the error's hint
(what to do next, the ``hint`` of the HTTP gateway's RFC 9457 problem for the same
state) in the error's ``data.hint``: the stock ``mcp`` client surfaces it as
``MCPError.data``. The hints are fixed texts that name no path or secret.

Real servers on loopback ports (test_mcp_gateway_sdk_refusals_live.py's
``refusals_world``): a control plane, a stateless upstream MCP server and the real
gateway, driven by the official SDK client with real DPoP-bound tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR
from tests.unit.test_mcp_gateway_get_refusals_live import refusals_world
from tests.unit.test_mcp_gateway_listen_live import World

AGENTS = ("spooled", "lost")
SPOOL_FULL_HINT = "Restore the connection to the control plane, or raise max_bytes."
LOST_HINT = "Check the control plane and the gateway's link to it."


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    with refusals_world(tmp_path_factory.mktemp("mcp-hints"), sqlite_template, AGENTS) as w:
        yield w


def _refused_while(world: World, who: str, method: str, broken: Any, restore: Any) -> MCPError:
    """``method`` (``tools/call`` of the upstream's first tool, or ``tools/list``) in a
    session of ``who``'s opened while the gateway was well, asked after ``broken()``
    (and before ``restore()``): the stock client's error."""

    async def go() -> MCPError:
        async with world.client(who) as client:
            [tool] = [t.name for t in (await client.list_tools()).tools]

            async def ask() -> Any:
                if method == "tools/call":
                    return await client.call_tool(tool, {})
                return await client.list_tools(cache_mode="refresh")

            broken()
            try:
                with pytest.raises(MCPError) as caught:
                    await ask()
            finally:
                restore()
            return caught.value

    return anyio.run(go)


@pytest.mark.parametrize("method", ["tools/call", "tools/list"])
def test_a_full_spools_refusal_carries_its_hint(world: World, method: str) -> None:
    spool = world.runtime.spool
    bound = spool.max_bytes

    def fill() -> None:
        spool.max_bytes = 1  # no event fits

    def restore() -> None:
        spool.max_bytes = bound

    refused = _refused_while(world, "spooled", method, fill, restore)
    assert refused.code == INTERNAL_ERROR
    assert refused.message.startswith("the audit spool holds "), refused.message
    assert refused.data == {"hint": SPOOL_FULL_HINT}
    assert str(spool.directory) not in f"{refused.message} {refused.data}"  # no path


@pytest.mark.parametrize("method", ["tools/call", "tools/list"])
def test_past_the_outage_bound_the_refusal_carries_its_hint(world: World, method: str) -> None:
    link = world.runtime.link

    def lose() -> None:
        link.seconds_since_contact = lambda: 10**9  # type: ignore[method-assign]

    def restore() -> None:
        del link.seconds_since_contact

    refused = _refused_while(world, "lost", method, lose, restore)
    assert refused.code == INTERNAL_ERROR
    assert "lost the control plane" in refused.message
    assert refused.data == {"hint": LOST_HINT}
