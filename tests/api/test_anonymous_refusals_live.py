"""The audit budget of refusals naming nobody, with real servers on loopback ports: a
control plane (uvicorn, SQLite, its real ``POST /v1/audit/ingest``), the real HTTP
and MCP gateways (their runtimes: control-plane link, spool on disk, shipper), an
upstream API and an upstream MCP server, agents using the SDK, and anonymous clients
sending requests with no credential as fast as they can.

- A flood of anonymous requests from one peer: every one gets the same refusal (the
  bytes of the first and the last answer are the same but for ``date``); the trail
  then holds ``burst`` of them as events of their own, and summary events whose
  counts are the rest, exactly.
- In the same window an agent's calls are audited one by one as ever, and a stolen
  token shown with the thief's proof is audited on its own however far past the
  budget.
- A gateway with ``summary_seconds`` far off writes the summary when it stops.
- ``anonymous_refusals: null`` restores one event per refusal.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.server.mcpserver import MCPServer
from prometheus_client.parser import text_string_to_metric_families
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.echo_upstream import Echo
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until

from agentiam.adapters.gateway import mcp_proxy
from agentiam.adapters.gateway.http_proxy import HttpGateway, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.audit.cef import cef
from agentiam.core.audit.ocsf import to_ocsf
from agentiam.sdk import AgentClient, AgentKey, dpop_proof
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
BURST = 5
FLOOD = 100
SUMMARY = "api.request.rejected.summary"
NAMES = ("flood-http", "flood-late", "flood-off", "flood-mcp")


def _budget(summary_seconds: float) -> dict[str, Any]:
    return {
        "anonymous_refusals": {
            "per_peer": {"rate_per_second": 0.001, "burst": BURST},
            "overall": {"rate_per_second": 0.001, "burst": 1000},
            "summary_seconds": summary_seconds,
        }
    }


def _http_config(name: str, port: int, cp: OAuthLive, env: str, tmp: Path, up: str, audit: Any):
    return load_config(
        {
            "name": name,
            "public_url": f"http://127.0.0.1:{port}",
            "listen": {"host": "127.0.0.1", "port": port},
            "control_plane": {"url": cp.url, "key_env": env},
            "spool": {"directory": str(tmp / name)},
            "audit": audit,
            "upstreams": {"api": {"url": up}},
            "routes": [
                {
                    "match": {"method": "GET", "path": "/v1/invoices/{id}"},
                    "upstream": "api",
                    "action": "GET",
                    "resource": {"type": "Endpoint", "id": "invoice-{id}"},
                }
            ],
        }
    )


@dataclass
class World:
    cp: OAuthLive
    tmp: Path
    env: str
    up: str
    mcp_up: str
    agent: AgentClient
    http_url: str
    http: HttpGateway

    def trail(self, type_: str, source: str) -> list[dict[str, Any]]:
        """Every stored event of ``type_`` from ``source`` (all pages)."""
        out: list[dict[str, Any]] = []
        cursor = None
        with self.cp.admin_client() as admin:
            while True:
                params: dict[str, Any] = {"type": type_, "limit": 200}
                if cursor:
                    params["cursor"] = cursor
                r = admin.get("/v1/audit/events", params=params)
                assert r.status_code == 200, r.text
                page = r.json()
                out += [e for e in page["items"] if e["source"] == source]
                cursor = page.get("next_cursor")
                if not cursor:
                    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("flood")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    http_url = f"http://127.0.0.1:{port}"
    with oauth_live(f"sqlite:///{db}", policy_refresh_seconds=0.1) as cp:
        c = cp.container
        c.policies.put(CTX, "all", text="permit (principal, action, resource);")
        verifier = c.admin_keys.create(
            CTX, name="flood-gw", role="verifier", sources=[f"gateway/{n}" for n in NAMES]
        ).secret
        key = AgentKey.generate()
        agent = c.agents.register(
            CTX,
            NewAgent(
                name=f"reader-{secrets.token_hex(3)}",
                owners=[cp.owner_id],
                purpose="reads invoices",
                environment="production",
                activate=True,
                keys=[key.public_jwk()],
                audiences=[http_url],
            ),
        )
        env = f"AGENTIAM_TEST_FLOOD_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        mcp_server = MCPServer("bank")

        @mcp_server.tool()
        def echo(text: str) -> str:
            """Echo."""
            return text

        try:
            with (
                serve_in_thread(Echo()) as up,
                serve_in_thread(mcp_server.streamable_http_app(), lifespan="on") as mcp_up,
            ):
                config = _http_config("flood-http", port, cp, env, tmp, up, _budget(1))
                runtime = GatewayRuntime.start(config.gateway)
                try:
                    gateway = HttpGateway(config, runtime)
                    # as run() serves it: the peer is the TCP peer, never a header
                    with serve_in_thread(gateway, port, lifespan="on", proxy_headers=False):
                        client = AgentClient(cp.url, client_id=agent.id, key=key, resource=http_url)
                        try:
                            yield World(cp, tmp, env, up, mcp_up, client, http_url, gateway)
                        finally:
                            client.close()
                finally:
                    runtime.close()
        finally:
            os.environ.pop(env, None)


def _traced() -> tuple[str, dict[str, str]]:
    trace = secrets.token_hex(16)
    return trace, {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}


def _flood(
    url: str,
    n: int,
    method: str = "GET",
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> tuple[list[str], list[httpx.Response]]:
    """``n`` requests with no credential, one after the other, each with a trace of
    its own: the traces and the answers."""
    traces, answers = [], []
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            trace, traced = _traced()
            traces.append(trace)
            sent = (headers or {}) | traced
            answers.append(client.request(method, url, headers=sent, content=content))
    return traces, answers


def _same_answer(first: httpx.Response, last: httpx.Response) -> None:
    """Byte for byte, but for the date."""

    def strip(r: httpx.Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return r.status_code, [(k, v) for k, v in r.headers.raw if k.lower() != b"date"], r.content

    assert strip(first) == strip(last)


def _of(events: list[dict[str, Any]], traces: list[str], n: int) -> list[dict[str, Any]] | None:
    """The events of ``traces`` once there are ``n`` of them."""
    found = [e for e in events if e["trace"]["trace_id"] in traces]
    return found if len(found) == n else None


def _counted(world: World, source: str, traces: list[str]) -> tuple[int, int] | None:
    """(individual events of these traces, sum of the summaries' counts) once they add
    up to the flood, else None."""
    individual = sum(
        e["trace"]["trace_id"] in traces for e in world.trail("api.request.rejected", source)
    )
    summarized = sum(e["details"]["count"] for e in world.trail(SUMMARY, source))
    return (individual, summarized) if individual + summarized >= len(traces) else None


def test_a_flood_of_anonymous_requests_costs_burst_events_and_summaries(world: World) -> None:
    url = world.http_url + "/v1/invoices/1"
    traces, answers = _flood(url, FLOOD)
    assert {r.status_code for r in answers} == {401}
    _same_answer(answers[0], answers[-1])
    assert answers[-1].headers["www-authenticate"].startswith("DPoP ")

    # an agent's calls in the same window: allowed and audited one by one
    trace, headers = _traced()
    with world.agent.http(world.http_url, timeout=30) as client:
        ok = client.get("/v1/invoices/2", headers=headers)
    assert ok.status_code == 200, ok.text

    # a stolen token with the thief's proof, past the budget: audited on its own
    token = world.agent.token().value
    thief = AgentKey.generate()
    stolen = []
    for _ in range(3):
        t, h = _traced()
        stolen.append(t)
        h |= {
            "Authorization": f"DPoP {token}",
            "DPoP": dpop_proof(thief, method="GET", url=url, access_token=token),
        }
        assert httpx.get(url, headers=h, timeout=30).status_code == 401

    source = "gateway/flood-http"
    counted = _until(lambda: _counted(world, source, traces), timeout=20)
    assert counted == (BURST, FLOOD - BURST)
    # each refusal audited on its own names the connection's peer, as its summary does
    own = _of(world.trail("api.request.rejected", source), traces, BURST)
    assert own
    assert [e["details"].get("peer") for e in own] == ["127.0.0.1"] * BURST
    summaries = world.trail(SUMMARY, source)
    assert all(s["details"]["peer"] == "127.0.0.1" for s in summaries)
    assert all(s["actor"]["type"] == "anonymous" and s["outcome"] == "denied" for s in summaries)
    assert sum(x["count"] for s in summaries for x in s["details"]["statuses"]) == FLOOD - BURST
    assert token not in json.dumps(summaries)
    first = min(summaries, key=lambda s: s["details"]["first_time"])
    assert first["details"]["first_trace_id"] == traces[BURST]
    decided = _until(
        lambda: [
            e for e in world.trail("authz.decision", source) if e["trace"]["trace_id"] == trace
        ]
    )
    assert len(decided) == 1
    named = _until(lambda: _of(world.trail("api.request.rejected", source), stolen, 3))
    assert named
    assert all(e["details"]["client_id"] == world.agent.client_id for e in named)
    assert all(e["details"]["jkt"] == thief.key.thumbprint() for e in named)
    assert all(e["details"]["peer"] == "127.0.0.1" for e in named)

    metrics = httpx.get(world.http_url + "/metrics", timeout=10).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    key = ("agentiam_gateway_refusals_summarized_total", (("outcome", "unauthenticated"),))
    assert samples[key] == FLOOD - BURST
    assert samples[("agentiam_gateway_refusal_summaries_lost_total", ())] == 0


def test_an_agents_refusals_and_decisions_name_the_peer(world: World) -> None:
    """Not only refusals naming nobody: an agent's request no route matches, and the
    decision of its call, name the connection's network address (never a header the
    client sends: the X-Forwarded-For below is not it)."""
    source = "gateway/flood-http"
    forged = {"X-Forwarded-For": "203.0.113.66", "Forwarded": "for=203.0.113.66"}
    unrouted, headers = _traced()
    decided, more = _traced()
    with world.agent.http(world.http_url, timeout=30) as client:
        assert client.get("/v1/nothing", headers=headers | forged).status_code == 404
        assert client.get("/v1/invoices/3", headers=more | forged).status_code == 200
    [refusal] = _until(lambda: _of(world.trail("api.request.rejected", source), [unrouted], 1))
    assert (refusal["details"]["status"], refusal["details"]["peer"]) == (404, "127.0.0.1")
    [decision] = _until(lambda: _of(world.trail("authz.decision", source), [decided], 1))
    assert decision["details"]["peer"] == "127.0.0.1"
    # as the exporters write the stored event (core/audit/ocsf.py, cef.py)
    assert to_ocsf(0, refusal)["src_endpoint"] == {"name": source, "ip": "127.0.0.1"}
    assert " src=127.0.0.1 " in cef(0, refusal)


def _spooled(directory: Path, type_: str) -> list[dict[str, Any]]:
    events = []
    for segment in sorted(directory.glob("*.jsonl")):
        for line in segment.read_text().splitlines():
            if line.strip():
                event = json.loads(line)["event"]  # {"spooled_at", "event"}
                if event.get("type") == type_:
                    events.append(event)
    return events


def test_the_summary_is_written_when_the_gateway_stops(world: World) -> None:
    port = free_port()
    config = _http_config(
        "flood-late", port, world.cp, world.env, world.tmp, world.up, _budget(3600)
    )
    runtime = GatewayRuntime.start(config.gateway)
    url = f"http://127.0.0.1:{port}/v1/invoices/1;x=1"  # a path parameter: refused
    try:
        with serve_in_thread(HttpGateway(config, runtime), port, lifespan="on"):
            traces, answers = _flood(url, 30)
            assert {r.status_code for r in answers} == {400}  # refused before authentication
            _same_answer(answers[0], answers[-1])
    finally:
        runtime.close()
    source = "gateway/flood-late"
    # stopped: the summary is in the spool (or shipped already, in the trail)
    late = _spooled(world.tmp / "flood-late", SUMMARY) or world.trail(SUMMARY, source)
    assert [s["details"]["count"] for s in late] == [30 - BURST]
    assert late[0]["details"]["statuses"] == [{"status": 400, "count": 30 - BURST}]
    assert late[0]["details"]["reasons"] == [{"reason": "path refused", "count": 30 - BURST}]
    assert late[0]["details"]["first_trace_id"] == traces[BURST]
    assert late[0]["details"]["last_trace_id"] == traces[-1]


def test_with_the_bound_off_every_refusal_is_its_own_event(world: World) -> None:
    port = free_port()
    config = _http_config(
        "flood-off", port, world.cp, world.env, world.tmp, world.up, {"anonymous_refusals": None}
    )
    assert config.gateway.anonymous_refusals is None
    runtime = GatewayRuntime.start(config.gateway)
    source = "gateway/flood-off"
    try:
        with serve_in_thread(HttpGateway(config, runtime), port, lifespan="on"):
            traces, answers = _flood(f"http://127.0.0.1:{port}/v1/invoices/1", 40)
            assert {r.status_code for r in answers} == {401}
            stored = _until(
                lambda: _of(world.trail("api.request.rejected", source), traces, 40), timeout=20
            )
            assert stored
            assert world.trail(SUMMARY, source) == []
    finally:
        runtime.close()


def test_a_flood_at_the_mcp_gateway(world: World) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    config = mcp_proxy.load_config(
        {
            "name": "flood-mcp",
            "public_url": url,
            "listen": {"host": "127.0.0.1", "port": port},
            "control_plane": {"url": world.cp.url, "key_env": world.env},
            "spool": {"directory": str(world.tmp / "flood-mcp")},
            "audit": _budget(1),
            "servers": [{"name": "bank", "url": world.mcp_up + "/mcp", "prefix": "bank."}],
        }
    )
    app = mcp_proxy.build_app(config, GatewayRuntime.start(config.gateway))
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    source = "gateway/flood-mcp"
    with serve_in_thread(app, port, lifespan="on"):
        traces, answers = _flood(
            url, 60, "POST", headers=headers, content=json.dumps(body).encode()
        )
        assert {r.status_code for r in answers} == {401}
        _same_answer(answers[0], answers[-1])
        counted = _until(lambda: _counted(world, source, traces), timeout=20)
        assert counted == (BURST, 60 - BURST)
        own = _of(world.trail("api.request.rejected", source), traces, BURST)
        assert own
        assert [e["details"].get("peer") for e in own] == ["127.0.0.1"] * BURST
