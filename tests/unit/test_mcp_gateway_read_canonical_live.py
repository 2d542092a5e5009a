"""The MCP gateway decides a ``resources/read`` on the resource's canonical URI (RFC 3986
section 6.2.2) and forwards that URI upstream, so a forbid on a URI cannot be evaded by
spelling it differently: the upstream SDK's URI template match percent-decodes each
variable, so ``users.file:///users/%61dmin`` forwarded as sent would run the template
function with ``name="admin"`` (security review, finding 1).

Real servers on loopback ports: a control plane (uvicorn, SQLite), an upstream MCP
server (the SDK's ``MCPServer``) whose template function would reveal the decoded name
and which records every URI it is asked to read, and the real gateway, driven by the
official SDK client with a real DPoP-bound token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from tests.support.live import until as _until
from tests.unit.mcp_gateway_support import control_plane, gateway, gateway_address
from tests.unit.test_mcp_gateway_metrics_live import World as Agentside
from tests.unit.test_mcp_gateway_metrics_live import _register
from tests.unit.test_mcp_gateway_resource_entities_live import _read

from agentiam.adapters.gateway.mcp_proxy import POLICY_DENIED
from agentiam.sdk import AgentClient
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
SOURCE = "gateway/mcp-read-canonical"
# each is read upstream as one of the forbidden users, were it forwarded as sent
ATTACKS = {
    "users.file:///users/%61dmin": "no-admin",  # the review's
    "users.file:///users/adm%69n": "no-admin",
    "users.file:///users/%61%64%6D%69%6E": "no-admin",  # upper-case hex
    "users.file:///users/%61%64%6d%69%6e": "no-admin",  # lower-case hex
    "users.FILE:///users/admin": "no-admin",  # the scheme is case-insensitive
    "users.file:///users/ops%2Dteam": "no-ops-team",  # an unreserved character
    "users.file:///users/ops%2dteam": "no-ops-team",
}

# the DataSet ids they are decided (and audited) as
CANONICAL = ("users.file:///users/admin", "users.file:///users/ops-team")


@dataclass
class Upstream:
    """The upstream: the URIs it was asked to read, and the names its template
    function ran with."""

    server: MCPServer
    asked: list[str]
    ran: list[str]


def _upstream() -> Upstream:
    up = Upstream(MCPServer("users"), [], [])

    async def record(ctx: Any, call_next: Any) -> Any:
        if ctx.method == "resources/read":
            up.asked.append(str((ctx.params or {}).get("uri")))
        return await call_next(ctx)

    up.server.middleware.append(record)

    @up.server.resource("file:///users/{name}")
    def user(name: str) -> str:
        up.ran.append(name)
        return f"profile of {name}"

    return up


@dataclass
class World:
    side: Agentside
    up: Upstream


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-read-canonical")
    at = gateway_address()
    up = _upstream()
    with control_plane(tmp, sqlite_template) as cp:
        c = cp.container
        a_id, a_key = _register(cp, "reader-bot", at.url)
        a = f'Agent::"{a_id}"'
        policies = {  # a deny-list: the style the attack evades
            "read-any": f"permit (principal == {a}, action, resource);",
            "no-admin": f"forbid (principal == {a}, action, "
            'resource == DataSet::"users.file:///users/admin");',
            "no-ops-team": f"forbid (principal == {a}, action, "
            'resource == DataSet::"users.file:///users/ops-team");',
        }
        for policy_id, text in policies.items():
            c.policies.put(CTX, policy_id, text=text)
        with gateway(cp, tmp, SOURCE, at, {"users": up.server.streamable_http_app()}):
            agent = AgentClient(cp.url, client_id=a_id, key=a_key, resource=at.url)
            try:
                yield World(Agentside(cp, at.url, at.base, agent, agent), up)
            finally:
                agent.close()


@pytest.mark.parametrize("uri", list(ATTACKS))
def test_no_spelling_of_a_forbidden_uri_reaches_the_upstream(world: World, uri: str) -> None:
    asked = len(world.up.asked)
    outcome = _read(world.side, uri)
    assert isinstance(outcome, MCPError), outcome
    assert outcome.code == POLICY_DENIED
    assert f"forbidden by policy {ATTACKS[uri]}" in outcome.message
    assert len(world.up.asked) == asked  # never forwarded
    assert not {"admin", "ops-team"} & set(world.up.ran)  # the function never ran

    def denial() -> list[dict[str, Any]]:
        return [
            e
            for e in world.side.trail_of("authz.decision")
            if ATTACKS[uri] in json.dumps(e) and e["resource"]["id"] in CANONICAL
        ]

    assert _until(denial), f"no audited denial of {uri}"


def test_an_allowed_read_is_forwarded_in_canonical_form(world: World) -> None:
    outcome = _read(world.side, "users.file:///users/b%6Fb")
    assert not isinstance(outcome, MCPError), outcome
    [content] = outcome.contents
    assert (content.text, str(content.uri)) == ("profile of bob", "users.file:///users/bob")
    assert world.up.asked[-1] == "file:///users/bob"  # what was decided, not what was sent
    assert world.up.ran[-1] == "bob"


def test_a_malformed_percent_encoding_is_refused_before_the_upstream(world: World) -> None:
    asked = len(world.up.asked)
    outcome = _read(world.side, "users.file:///users/%6")
    assert isinstance(outcome, MCPError), outcome
    assert outcome.code == INVALID_PARAMS
    assert "percent-encoding" in outcome.message
    assert len(world.up.asked) == asked
