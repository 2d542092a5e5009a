"""The MCP gateway's ``GET /metrics``, with real servers on loopback ports: a control
plane (uvicorn, SQLite), an upstream MCP server (the SDK's ``MCPServer``) and the real
gateway (``build_app`` and its runtime), called with the official ``mcp`` client over
Streamable HTTP and with raw HTTP for what a stock client does not send.

- an allowed call, a policy refusal, a call no upstream serves, an unauthenticated
  request and a listing are counted in ``agentiam_gateway_calls_total{outcome}`` and
  ``agentiam_mcp_gateway_requests_total{method,outcome}``, and each one is observed
  once in the request and decision histograms; an upstream failure (an answer past
  the response bound, lowered here) is counted as ``upstream_error``;
- an ``initialize`` is counted, and the session it opens appears in
  ``agentiam_mcp_gateway_sessions`` until the client ends it; the session's other
  requests (a notification, its GET stream, DELETE) are counted by method only;
- the event loop is watched (``agentiam_gateway_event_loop_lag_seconds``);
- an event the control plane refuses for good (the gateway's key may not report for
  the outsider agent) appears as set aside (``agentiam_gateway_spool_rejected_*``);
- a hostile tool name, method name or header never becomes a label value;
- ``/metrics`` is served as the HTTP gateway's: no token, Prometheus text 0.0.4.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import REQUEST_TIMEOUT
from prometheus_client.parser import text_string_to_metric_families
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until

from agentiam.adapters.gateway import upstream_transport
from agentiam.adapters.gateway.mcp_proxy import build_app, load_config
from agentiam.adapters.gateway.metrics import OUTCOMES
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.sdk import AgentClient, AgentKey
from agentiam.sdk.proofs import dpop_proof
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
MODERN = "2026-07-28"
SOURCE = "gateway/mcp-metrics"
POLICIES = {
    "all": "permit (principal, action, resource);",
    "no-transfers": 'forbid (principal, action, resource == Tool::"bank.transfer");',
}
METHODS = {
    "tools/call",
    "resources/read",
    "prompts/get",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
    "initialize",
    "other",
}
HOSTILE = "zq-hostile-7f3a"  # a marker no metric of the gateway's holds
LIMIT = 64 * 1024  # the upstream response bound, lowered for the test
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _upstream() -> MCPServer:
    server = MCPServer("bank")

    @server.tool()
    def search(query: str) -> str:
        """Search the bank's records."""
        return f"results for {query}"

    @server.tool()
    def transfer(amount: int) -> str:
        """Move money (policy forbids it)."""
        return f"sent {amount}"

    @server.tool()
    def big(kib: int) -> str:
        """A result of ``kib`` KiB."""
        return "x" * (kib * 1024)

    @server.tool()
    async def slow(seconds: float) -> str:
        """Answer after ``seconds``."""
        await anyio.sleep(seconds)
        return "late"

    return server


class _DPoP(httpx2.Auth):
    """An agent's DPoP-bound token and a fresh proof on every request (RFC 9449)."""

    def __init__(self, agent: AgentClient) -> None:
        self.agent = agent

    def auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        token = self.agent.token().value
        request.headers["Authorization"] = f"DPoP {token}"
        request.headers["DPoP"] = dpop_proof(
            self.agent.dpop_key, method=request.method, url=str(request.url), access_token=token
        )
        yield request


@dataclass
class World:
    cp: OAuthLive
    url: str
    base: str
    agent: AgentClient  # the gateway's key may report for it
    outsider: AgentClient  # its events are refused for good: set aside

    @asynccontextmanager
    async def client(self, mode: str = MODERN) -> AsyncIterator[Client]:
        """The official SDK client, connected through the gateway as the agent."""
        async with httpx2.AsyncClient(auth=_DPoP(self.agent), timeout=30) as http:
            client = Client(streamable_http_client(self.url, http_client=http), mode=mode)
            async with client:
                yield client

    def call(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """One ``tools/call`` through the stock client: the result, or the MCPError
        the call raised (caught inside the client's task group, which would wrap it)."""

        async def go() -> Any:
            async with self.client() as client:
                try:
                    return await client.call_tool(name, arguments or {})
                except MCPError as exc:
                    return exc

        return anyio.run(go)

    def post(
        self, body: Any, *, agent: AgentClient | None = None, **headers: str
    ) -> httpx.Response:
        """One raw modern-era POST; ``agent`` None: without a token."""
        sent = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN,
            **headers,
        }
        if agent is not None:
            token = agent.token().value
            proof = dpop_proof(agent.dpop_key, method="POST", url=self.url, access_token=token)
            sent.update({"Authorization": f"DPoP {token}", "DPoP": proof})
        return httpx.post(self.url, content=json.dumps(body), headers=sent, timeout=30)

    def trail_of(self, kind: str) -> list[dict[str, Any]]:
        """The control plane's audit events of ``kind`` for the agent, newest first."""
        with self.cp.admin_client() as admin:
            params = {"limit": "200", "type": kind, "agent_id": self.agent.client_id}
            r = admin.get("/v1/audit/events", params=params)
            assert r.status_code == 200, r.text
            items: list[dict[str, Any]] = r.json()["items"]
            return items

    def metrics(self) -> str:
        r = httpx.get(self.base + "/metrics", timeout=10)
        assert r.status_code == 200, r.text
        return r.text

    def samples(self) -> Samples:
        """Every sample of ``/metrics``: (name, labels) -> value."""
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(self.metrics())
            for s in family.samples
        }


def _rpc(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": method,
        "params": {**(params or {}), "_meta": meta},
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return _value(after, name, **labels) - _value(before, name, **labels)


def _register(cp: OAuthLive, name: str, url: str) -> tuple[str, AgentKey]:
    key = AgentKey.generate()
    agent = cp.container.agents.register(
        CTX,
        NewAgent(
            name=name,
            owners=[cp.owner_id],
            purpose="probes the gateway's metrics",
            environment="production",
            activate=True,
            keys=[key.public_jwk()],
            audiences=[url],
        ),
    )
    return agent.id, key


@contextmanager
def _serving(
    tmp: Path, sqlite_template: Path, timeouts: dict[str, float] | None = None
) -> Iterator[World]:
    """A control plane, the bank upstream and a gateway in front of it (with
    ``timeouts`` for its ``timeouts`` section, when given)."""
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = base + "/mcp"
    with (
        pytest.MonkeyPatch.context() as patch,
        oauth_live(f"sqlite:///{db}", policy_refresh_seconds=0.1) as cp,
    ):
        patch.setattr(upstream_transport, "MAX_RESPONSE_BYTES", LIMIT)
        c = cp.container
        for policy_id, text in POLICIES.items():
            c.policies.put(CTX, policy_id, text=text)
        agent_id, agent_key = _register(cp, "metrics-bot", url)
        outsider_id, outsider_key = _register(cp, "outsider-bot", url)
        # the gateway's key may report only for metrics-bot (and for no agent at all)
        verifier = c.admin_keys.create(
            CTX, name="mcp-gw", role="verifier", sources=[SOURCE], agents=[agent_id]
        ).secret
        env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        try:
            with serve_in_thread(_upstream().streamable_http_app(), lifespan="on") as up:
                config = load_config(
                    {
                        "name": SOURCE.removeprefix("gateway/"),
                        "public_url": url,
                        "listen": {"host": "127.0.0.1", "port": port},
                        "control_plane": {"url": cp.url, "key_env": env},
                        "spool": {"directory": str(tmp / "spool")},
                        "servers": [{"name": "bank", "url": up + "/mcp", "prefix": "bank."}],
                        "catalog_seconds": 0,
                        **({"timeouts": timeouts} if timeouts is not None else {}),
                    }
                )
                app = build_app(config, GatewayRuntime.start(config.gateway))
                with serve_in_thread(app, port, lifespan="on"):
                    agent = AgentClient(cp.url, client_id=agent_id, key=agent_key, resource=url)
                    outsider = AgentClient(
                        cp.url, client_id=outsider_id, key=outsider_key, resource=url
                    )
                    try:
                        yield World(cp, url, base, agent, outsider)
                    finally:
                        agent.close()
                        outsider.close()
        finally:
            os.environ.pop(env, None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    with _serving(tmp_path_factory.mktemp("mcp-metrics"), sqlite_template) as running:
        yield running


async def _calls_and_a_listing(world: World) -> dict[str, Any]:
    async with world.client() as client:
        tools = await client.list_tools()
        allowed = await client.call_tool("bank.search", {"query": "invoices"})
        refused = await client.call_tool("bank.transfer", {"amount": 5})
        with pytest.raises(MCPError, match="unknown tool"):
            await client.call_tool("elsewhere.search", {"query": "x"})
    return {"tools": tools, "allowed": allowed, "refused": refused}


def test_calls_refusals_and_listings_are_counted_by_method_and_outcome(world: World) -> None:
    before = world.samples()
    seen = anyio.run(_calls_and_a_listing, world)
    assert {t.name for t in seen["tools"].tools} == {"bank.search", "bank.big", "bank.slow"}
    assert not seen["allowed"].is_error
    assert seen["refused"].is_error  # a policy denial is a tool error result (HTTP 200)
    unauthenticated = world.post(_rpc("tools/call", {"name": "bank.search"}))
    assert unauthenticated.status_code == 401
    after = world.samples()

    calls = "agentiam_gateway_calls_total"
    by_method = "agentiam_mcp_gateway_requests_total"
    assert _delta(before, after, by_method, method="tools/list", outcome="allowed") == 1
    assert _delta(before, after, by_method, method="tools/call", outcome="allowed") == 1
    assert _delta(before, after, by_method, method="tools/call", outcome="forbidden") == 1
    assert _delta(before, after, by_method, method="tools/call", outcome="not_found") == 1
    # refused before its body is read: its method is never known
    assert _delta(before, after, by_method, method="other", outcome="unauthenticated") == 1
    assert _delta(before, after, calls, outcome="allowed") == 2
    assert _delta(before, after, calls, outcome="forbidden") == 1
    assert _delta(before, after, calls, outcome="not_found") == 1
    assert _delta(before, after, calls, outcome="unauthenticated") == 1
    # five requests: each timed once, each decided once (the pinned client sends no other)
    assert _delta(before, after, "agentiam_gateway_request_seconds_count") == 5
    assert _delta(before, after, "agentiam_gateway_decision_seconds_count") == 5
    assert _value(after, "agentiam_gateway_outcomes_lost_total") == 0


async def _too_big(world: World) -> None:
    async with world.client() as client:
        with pytest.raises(MCPError, match="upstream bank"):
            await client.call_tool("bank.big", {"kib": 128})


def test_an_upstream_failure_is_counted_as_one(world: World) -> None:
    """An upstream answer past the response bound fails the call (a JSON-RPC error in
    a 200 stream): counted as upstream_error, not as allowed."""
    before = world.samples()
    anyio.run(_too_big, world)
    after = world.samples()
    by_method = "agentiam_mcp_gateway_requests_total"
    assert _delta(before, after, by_method, method="tools/call", outcome="upstream_error") == 1
    assert _delta(before, after, by_method, method="tools/call", outcome="allowed") == 0
    assert _delta(before, after, "agentiam_gateway_calls_total", outcome="upstream_error") == 1


async def _a_session(world: World) -> tuple[float, float]:
    """The sessions gauge before and while a handshake-era client is connected."""
    before = _value(world.samples(), "agentiam_mcp_gateway_sessions")
    async with world.client(mode="legacy") as client:
        await client.list_tools()
        during = _value(world.samples(), "agentiam_mcp_gateway_sessions")
    return before, during


def test_an_initialize_is_counted_and_its_session_is_open_until_it_ends(world: World) -> None:
    before = world.samples()
    opened, during = anyio.run(_a_session, world)
    assert during == opened + 1
    ended = _until(
        lambda: _value(world.samples(), "agentiam_mcp_gateway_sessions") == opened or None
    )
    assert ended, "the session the client ended (DELETE) is still counted"
    after = world.samples()
    by_method = "agentiam_mcp_gateway_requests_total"
    assert _delta(before, after, by_method, method="initialize", outcome="allowed") == 1
    assert _delta(before, after, by_method, method="tools/list", outcome="allowed") == 1
    # the session's other requests (notifications/initialized, DELETE) are no calls
    assert _delta(before, after, by_method, method="other", outcome="allowed") >= 1
    assert _delta(before, after, "agentiam_gateway_calls_total", outcome="allowed") == 2


def test_the_event_loop_is_watched(world: World) -> None:
    lag = "agentiam_gateway_event_loop_lag_seconds_count"
    first = _value(world.samples(), lag)
    assert _until(lambda: _value(world.samples(), lag) > first)


def test_events_the_control_plane_sets_aside_appear(world: World) -> None:
    """The gateway's key may not report for the outsider agent: the control plane
    refuses its call's decision event for good, the spool sets it aside, and
    ``/metrics`` shows it."""
    before = world.samples()
    answer = world.post(
        _rpc("tools/call", {"name": "bank.search", "arguments": {"query": "q"}}),
        agent=world.outsider,
        **{"Mcp-Method": "tools/call", "Mcp-Name": "bank.search"},
    )
    assert answer.status_code == 200
    rejected = "agentiam_gateway_spool_rejected_events_total"

    def set_aside() -> Samples | None:
        now = world.samples()
        return now if _delta(before, now, rejected) >= 1 else None

    after = _until(set_aside)
    assert after is not None, "no event was set aside"
    assert _value(after, "agentiam_gateway_spool_rejected_bytes") > _value(
        before, "agentiam_gateway_spool_rejected_bytes"
    )
    assert _value(after, "agentiam_gateway_spool_rejected_full") == 0
    assert ("agentiam_gateway_spool_pending_events", frozenset()) in after
    assert _value(after, "agentiam_gateway_control_plane_seconds_since_contact") >= 0


def test_no_client_string_becomes_a_label_value(world: World) -> None:
    """A hostile tool name, method name and header (each with label syntax and the
    marker) are counted under fixed label values only: the call as ``tools/call``,
    the unknown method as ``other``."""
    before = world.samples()
    name = f'bank.{HOSTILE}"}} 1 agentiam_fake{{x="'  # decided (policy allows any tool)
    call = world.post(
        _rpc("tools/call", {"name": name, "arguments": {}}),
        agent=world.agent,
        **{"Mcp-Method": "tools/call", "Mcp-Name": name, "X-Hostile": HOSTILE},
    )
    method = f'{HOSTILE}"}} 1 agentiam_fake{{x="'
    unknown = world.post(_rpc(method), agent=world.agent, **{"Mcp-Method": method})
    assert call.status_code == 200  # allowed; the upstream knows no such tool (isError)
    assert unknown.status_code == 404  # the MCP transport: method not found
    text = world.metrics()
    assert HOSTILE not in text
    assert "agentiam_fake" not in text
    after = world.samples()
    series = [dict(labels) for (n, labels) in after if n == "agentiam_mcp_gateway_requests_total"]
    assert {labels["method"] for labels in series} <= METHODS
    assert {labels["outcome"] for labels in series} <= OUTCOMES
    assert {dict(k)["outcome"] for (n, k) in after if n == "agentiam_gateway_calls_total"} <= (
        OUTCOMES
    )

    def counted(method: str) -> float:
        return sum(
            _delta(before, after, "agentiam_mcp_gateway_requests_total", **labels)
            for labels in series
            if labels["method"] == method
        )

    assert (counted("tools/call"), counted("other")) == (1, 1)


def test_metrics_are_served_as_the_http_gateways(world: World) -> None:
    """No token (as ``/healthz``), Prometheus text format 0.0.4, GET and HEAD."""
    r = httpx.get(world.base + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE agentiam_gateway_decision_seconds histogram" in r.text
    assert "# TYPE agentiam_mcp_gateway_sessions gauge" in r.text
    assert httpx.head(world.base + "/metrics", timeout=10).status_code == 200
    assert httpx.post(world.base + "/metrics", timeout=10).status_code == 405


# -- an upstream that does not answer in time --------------------------------------------


@pytest.fixture(scope="module", params=["total", "read"])
def slow_world(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
) -> Iterator[tuple[str, World]]:
    """A gateway whose bound on a call is short: ``timeouts.total`` (the whole call),
    or ``timeouts.read`` (the wait for the upstream's next bytes) below it."""
    timeouts = {"total": 0.5} if request.param == "total" else {"read": 0.5, "total": 20}
    with _serving(tmp_path_factory.mktemp("mcp-slow"), sqlite_template, timeouts) as running:
        yield request.param, running


async def _too_slow(world: World) -> MCPError:
    async with world.client() as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("bank.slow", {"seconds": 3})
    return caught.value


def test_an_upstream_past_its_timeout_is_counted_as_upstream_timeout(
    slow_world: tuple[str, World],
) -> None:
    """An upstream tool that answers after 3 s, behind a bound of 0.5 s: the call fails
    (a JSON-RPC error to the agent), is counted as ``upstream_timeout`` (not as
    ``upstream_error``, nor as allowed) in both families, and its ``tool.call`` event
    records the failure with status 504, as the HTTP gateway's does. Past
    ``timeouts.total`` the SDK raises its own timeout; past ``timeouts.read`` the
    transport's timeout ends the SDK's session, which the SDK reports as a closed
    connection: the agent is told it timed out all the same."""
    bound, world = slow_world
    before = world.samples()
    error = anyio.run(_too_slow, world)
    after = world.samples()
    assert (error.code, error.message) == (REQUEST_TIMEOUT, "upstream bank: timed out"), bound
    by_method = "agentiam_mcp_gateway_requests_total"
    calls = "agentiam_gateway_calls_total"
    assert _delta(before, after, by_method, method="tools/call", outcome="upstream_timeout") == 1
    assert _delta(before, after, by_method, method="tools/call", outcome="upstream_error") == 0
    assert _delta(before, after, by_method, method="tools/call", outcome="allowed") == 0
    assert _delta(before, after, calls, outcome="upstream_timeout") == 1
    assert _delta(before, after, calls, outcome="upstream_error") == 0
    assert _delta(before, after, calls, outcome="allowed") == 0

    def failed() -> list[dict[str, Any]]:
        return [e for e in world.trail_of("tool.call") if e["details"]["tool"] == "bank.slow"]

    events = _until(failed)
    assert [(e["outcome"], e["details"]["status"]) for e in events] == [("failure", 504)], bound
    assert 400 <= events[0]["details"]["duration_ms"] < 2500  # the bound, not the tool's 3 s
