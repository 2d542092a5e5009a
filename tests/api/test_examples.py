"""The runnable examples' core logic, for real: a live control plane, a verifier key,
a guard with its spool and shipper, a policy that permits one tool and not another,
a real MCP server served over HTTP and agents with real keys. Only the command-line
parsing of the examples is not run here."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tests.api.mcp_support import DPoPChecker, serve_with_lifespan
from tests.api.oauth_support import CTX, RESOURCE, OAuthLive, oauth_live
from tests.api.test_guard import agent_of, connect, setup_policy, trail, verifier_env
from tests.support.live import serve_in_thread

from agentiam.adapters.verification import RemoteVerifier
from agentiam.core.access.admin_keys import Role
from agentiam.guard import Guard
from agentiam.sdk import AgentClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with oauth_live(sqlite_url) as server:
        setup_policy(server)
        yield server


def _run_guarded(live: OAuthLive, tmp_path: Path, name: str) -> tuple[list[str], list[str]]:
    """Run example ``name``'s ``run(guard, out)`` with a connected guard: what ran,
    and the lines it printed."""
    lines: list[str] = []
    with connect(live, tmp_path / "spool", agent_of(live)) as guard:
        ran = example(name).run(guard, lines.append)
    return ran, lines


def test_guarded_functions(live: OAuthLive, tmp_path: Path) -> None:
    ran, lines = _run_guarded(live, tmp_path, "guarded_functions")
    assert ran == ["search:invoices", "async search:refunds"]
    assert lines[0] == "search('invoices') -> 3 results for 'invoices'"
    assert lines[1].startswith("delete('/reports/q3.pdf') refused: ")
    assert "(decision dec_" in lines[1]
    assert lines[3].startswith("async delete refused: ")
    assert lines[-1] == "events shipped: True"
    events = trail(live, agent_id=live.agent_id, action="invoke_tool")
    assert {(e["type"], e["resource"]["id"], e["outcome"]) for e in events} == {
        ("authz.decision", "search", "success"),
        ("tool.call", "search", "success"),
        ("authz.decision", "delete", "denied"),
    }


def test_guarded_langchain_tools(live: OAuthLive, tmp_path: Path) -> None:
    """LangChain tools guarded in process: the allowed calls ran, the denied one did
    not and its tool message says why, and all of it is in the trail."""
    ran, lines = _run_guarded(live, tmp_path, "guarded_langchain_tools")
    assert ran == ["search:invoices", "search:refunds"]
    assert lines[0] == "search -> success: 3 results for 'invoices'"
    assert lines[1].startswith(
        "delete -> error: AgentIAM refused this call (403 insufficient_scope): "
    )
    assert "Decision: dec_" in lines[1]
    assert lines[2] == "async search -> success: 3 results for 'refunds'"
    assert lines[-1] == "events shipped: True"
    events = trail(live, agent_id=live.agent_id, action="invoke_tool")
    assert sorted((e["type"], e["resource"]["id"], e["outcome"]) for e in events) == [
        ("authz.decision", "delete", "denied"),
        ("authz.decision", "search", "success"),
        ("authz.decision", "search", "success"),
        ("tool.call", "search", "success"),
        ("tool.call", "search", "success"),
    ]


def test_agent_mcp_through_the_guarded_fastmcp_server(live: OAuthLive, tmp_path: Path) -> None:
    """The two MCP examples together: the agent's session, the guarded server."""
    server_example, client_example = example("guarded_fastmcp_server"), example("agent_mcp")
    with Guard.connect(
        live.url,
        resource=RESOURCE,
        spool_dir=tmp_path / "spool",
        name="guarded-mcp",
        environ=verifier_env(live, "guarded-mcp"),
        poll_wait=1.0,
    ) as guard:
        app = server_example.build_server(guard, principal="request").streamable_http_app()
        agent = AgentClient(live.url, client_id=live.agent_id, key=live.key)
        with serve_with_lifespan(app) as url:

            def call(tool: str, arguments: dict[str, str]) -> Any:
                return asyncio.run(
                    client_example.list_and_call(
                        agent, url + "/mcp", tool, arguments, resource=RESOURCE
                    )
                )

            found = call("search", {"query": "q3"})
            denied = call("delete", {"path": "/reports/q3.pdf"})
        assert guard.drain(10)
    # the listing shows only what policy lets this agent call; delete, hidden, is
    # still refused when called by name
    assert found.tools == ["search"]
    assert denied.tools == ["search"]
    assert not found.is_error
    assert "/reports/q3.pdf" in found.text
    assert denied.is_error
    assert "AgentIAM refused the call to delete" in denied.text
    assert "/reports/q3.pdf" in server_example.FILES  # the denied tool did not run
    events = trail(live, agent_id=live.agent_id, action="invoke_tool")
    assert {e["source"] for e in events} == {"guard/guarded-mcp"}


def test_agent_http(live: OAuthLive) -> None:
    key = live.container.admin_keys.create(
        CTX, name="rs", role=Role.VERIFIER, sources=["gateway/rs"]
    ).secret
    remote = RemoteVerifier(live.url, RESOURCE, admin_key=key).start()
    try:

        async def invoices(request: Request) -> Response:
            return JSONResponse({"invoices": [1, 2]})

        rs = DPoPChecker(Starlette(routes=[Route("/v1/invoices", invoices)]), remote.verifier)
        with serve_in_thread(rs) as url:
            agent = AgentClient(live.url, client_id=live.agent_id, key=live.key)
            response = example("agent_http").fetch(agent, url + "/v1/invoices", resource=RESOURCE)
        assert response.status_code == 200
        assert response.json() == {"invoices": [1, 2]}
        assert rs.seen[0].agent == live.agent_id
    finally:
        remote.close()
