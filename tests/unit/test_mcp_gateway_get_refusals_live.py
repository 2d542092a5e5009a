"""Every GET the MCP gateway's SDK refuses is in the audit trail (the endpoint's
``_streamed``): a GET asks for a handshake-era session's standalone SSE stream
(Streamable HTTP, "Listening for Messages from the Server"), and the SDK refuses one
for an unknown or expired session (404), another principal's session (404, as if
unknown), no session (400), an ``Accept`` without ``text/event-stream`` (406), or a
second GET stream of a session (409). Each refusal of an authenticated agent's GET is
one ``api.request.rejected`` (action ``GET``, the status the client got, the SDK's
JSON-RPC error), durable before the client sees the answer (else a 503 in its place),
recorded one by one, never an ``mcp.stream.opened``. A GET that names nobody (no
token) is refused at authentication within the budget of refusals naming nobody
(``audit.anonymous_refusals``, adapters/gateway/refusal_summaries.py): ``burst`` events
of their own, the rest counted in a summary.

Real servers on loopback ports (test_mcp_gateway_streams_live.py's world): a control
plane (uvicorn, SQLite), a stateless upstream MCP server, and the real gateway (its
budget: a burst of 3 per peer), driven by raw HTTP with real DPoP-bound tokens.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from tests.support.live import until as _until
from tests.unit.test_mcp_gateway_listen_live import HANDSHAKE, World, _drain, _Pinned
from tests.unit.test_mcp_gateway_streams_live import _world

from agentiam.adapters.gateway.enforcer import STREAM_OPENED_EVENT_TYPE

OPENED = STREAM_OPENED_EVENT_TYPE
REJECTED = "api.request.rejected"
SUMMARY = "api.request.rejected.summary"
BURST = 3  # anonymous refusals per peer with an event of their own
AGENTS = ("lost", "owner", "intruder", "picky", "sessionless", "twice", "unrecorded", "many")
SSE_ONLY = {"Accept": "text/event-stream", "MCP-Protocol-Version": HANDSHAKE}
POST = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@contextmanager
def refusals_world(tmp: Path, sqlite_template: Path, agents: Sequence[str]) -> Iterator[World]:
    """A control plane, one upstream and the gateway, every agent of ``agents``
    allowed everything; refusals naming nobody: a burst of :data:`BURST` per peer,
    summaries every second."""
    budget = {
        "anonymous_refusals": {
            "per_peer": {"rate_per_second": 0.001, "burst": BURST},
            "summary_seconds": 1,
        }
    }
    with _world(tmp, sqlite_template, agents, audit=budget) as w:
        yield w


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    with refusals_world(tmp_path_factory.mktemp("mcp-get-refusals"), sqlite_template, AGENTS) as w:
        yield w


def _traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01", trace_id


def _auth(world: World, who: str) -> _Pinned:
    agent = world.agents[who]
    return _Pinned(agent, agent.token().value)


async def _session(http: httpx2.AsyncClient, url: str) -> str:
    """A handshake-era session opened (initialize, then initialized): its id."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": HANDSHAKE,
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
    r = await http.post(url, json=init, headers=POST)
    assert r.status_code == 200, r.text
    session = r.headers["mcp-session-id"]
    done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    headers = {**POST, "Mcp-Session-Id": session, "MCP-Protocol-Version": HANDSHAKE}
    assert (await http.post(url, json=done, headers=headers)).status_code == 202
    return session


def _get(world: World, who: str, headers: dict[str, str]) -> httpx2.Response:
    """One GET as ``who``, read whole (a refusal is short)."""
    with httpx2.Client(auth=_auth(world, who), timeout=10) as http:
        return http.get(world.url, headers=headers)


def _of_trace(world: World, who: str, kind: str, trace_id: str) -> list[dict[str, Any]]:
    return [e for e in world.trail(who, kind) if e["trace"]["trace_id"] == trace_id]


def _refused_get(world: World, who: str, trace_id: str) -> dict[str, Any]:
    """The one ``api.request.rejected`` of ``who``'s GET in trace ``trace_id``, and no
    ``mcp.stream.opened`` for it."""
    assert _until(lambda: _of_trace(world, who, REJECTED, trace_id)), world.trail(who)
    assert not _of_trace(world, who, OPENED, trace_id)
    (event,) = _of_trace(world, who, REJECTED, trace_id)
    assert event["action"] == "GET"
    assert event["agent_id"] == world.agents[who].client_id
    assert event["outcome"] == "denied"
    assert event["details"]["peer"] == "127.0.0.1"
    return event


def test_a_get_for_an_unknown_session_is_an_audited_refusal(world: World) -> None:
    traceparent, trace_id = _traceparent()
    headers = {**SSE_ONLY, "Mcp-Session-Id": "0" * 32, "traceparent": traceparent}
    r = _get(world, "lost", headers)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["message"] == "Session not found"  # the SDK's own answer
    event = _refused_get(world, "lost", trace_id)
    assert event["details"]["status"] == 404
    assert event["reason"] == "refused by the MCP server: Session not found (JSON-RPC error -32600)"


def test_a_get_for_another_agents_session_is_an_audited_refusal(world: World) -> None:
    """``intruder`` names ``owner``'s session: the SDK answers as if it did not exist,
    and the refusal is ``intruder``'s."""

    async def opened() -> str:
        async with httpx2.AsyncClient(auth=_auth(world, "owner"), timeout=30) as http:
            return await _session(http, world.url)

    session = anyio.run(opened)
    traceparent, trace_id = _traceparent()
    headers = {**SSE_ONLY, "Mcp-Session-Id": session, "traceparent": traceparent}
    r = _get(world, "intruder", headers)
    assert r.status_code == 404, r.text
    event = _refused_get(world, "intruder", trace_id)
    assert event["details"]["status"] == 404
    assert session not in str(event)  # the session's id is not written down
    assert not world.trail("owner", REJECTED)


def test_a_get_that_does_not_accept_an_event_stream_is_an_audited_refusal(
    world: World,
) -> None:
    traceparent, trace_id = _traceparent()

    async def go() -> httpx2.Response:
        async with httpx2.AsyncClient(auth=_auth(world, "picky"), timeout=30) as http:
            session = await _session(http, world.url)
            headers = {
                "Accept": "application/json",
                "MCP-Protocol-Version": HANDSHAKE,
                "Mcp-Session-Id": session,
                "traceparent": traceparent,
            }
            return await http.get(world.url, headers=headers)

    r = anyio.run(go)
    assert r.status_code == 406, r.text
    event = _refused_get(world, "picky", trace_id)
    assert event["details"]["status"] == 406
    assert "Not Acceptable" in event["reason"]


def test_a_get_without_a_session_is_an_audited_refusal(world: World) -> None:
    traceparent, trace_id = _traceparent()
    r = _get(world, "sessionless", {**SSE_ONLY, "traceparent": traceparent})
    assert r.status_code == 400, r.text
    event = _refused_get(world, "sessionless", trace_id)
    assert event["details"]["status"] == 400
    assert "Missing session ID" in event["reason"]


def test_a_second_get_stream_of_a_session_is_an_audited_refusal(world: World) -> None:
    """The first GET opens the session's stream (one ``mcp.stream.opened``); a second
    while it is open is refused by the SDK (409), audited."""
    first_trace, first_id = _traceparent()
    second_trace, second_id = _traceparent()

    async def go() -> httpx2.Response:
        async with httpx2.AsyncClient(auth=_auth(world, "twice"), timeout=30) as http:
            session = await _session(http, world.url)
            headers = {**SSE_ONLY, "Mcp-Session-Id": session}
            first = {**headers, "traceparent": first_trace}
            async with http.stream("GET", world.url, headers=first) as stream:
                assert stream.status_code == 200
                second = await http.get(world.url, headers={**headers, "traceparent": second_trace})
                with anyio.move_on_after(0.2):
                    await _drain(stream)
            return second

    r = anyio.run(go)
    assert r.status_code == 409, r.text
    event = _refused_get(world, "twice", second_id)
    assert event["details"]["status"] == 409
    assert _until(lambda: _of_trace(world, "twice", OPENED, first_id))
    assert not _of_trace(world, "twice", REJECTED, first_id)


def test_a_refused_get_whose_refusal_cannot_be_recorded_is_answered_503(world: World) -> None:
    """Nothing unlogged is answered: with the spool full the client gets a 503
    problem (``Retry-After``) in place of the SDK's 404; once the spool takes events
    again, the SDK's answer, audited."""
    spool = world.gateway.runtime.spool
    bound = spool.max_bytes
    headers = {**SSE_ONLY, "Mcp-Session-Id": "1" * 32}
    spool.max_bytes = 1  # the spool is full: no event fits
    try:
        r = _get(world, "unrecorded", headers)
    finally:
        spool.max_bytes = bound
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "jsonrpc" not in r.text  # not the SDK's answer
    traceparent, trace_id = _traceparent()
    assert _get(world, "unrecorded", {**headers, "traceparent": traceparent}).status_code == 404
    assert _refused_get(world, "unrecorded", trace_id)["details"]["status"] == 404


def test_an_agents_refused_gets_are_recorded_one_by_one(world: World) -> None:
    """Twice the budget of refusals naming nobody, from one agent and one peer:
    every one an event of its own."""
    traces = []
    for _ in range(2 * BURST + 1):
        traceparent, trace_id = _traceparent()
        traces.append(trace_id)
        headers = {**SSE_ONLY, "Mcp-Session-Id": "2" * 32, "traceparent": traceparent}
        assert _get(world, "many", headers).status_code == 404

    def recorded() -> list[dict[str, Any]] | None:
        found = [e for e in world.trail("many", REJECTED) if e["trace"]["trace_id"] in traces]
        return found if len(found) == len(traces) else None

    events = _until(recorded)
    assert events, world.trail("many", REJECTED)
    assert {e["action"] for e in events} == {"GET"}


def test_gets_naming_nobody_are_within_the_budget_of_anonymous_refusals(world: World) -> None:
    """No token: refused at authentication (401) before the SDK sees the GET; of
    ``BURST + 4`` from one peer, ``BURST`` are events of their own and the other 4
    are counted in a summary (this module's only refusals naming nobody)."""
    traces = []
    with httpx2.Client(timeout=10) as http:
        for _ in range(BURST + 4):
            traceparent, trace_id = _traceparent()
            traces.append(trace_id)
            r = http.get(world.url, headers={**SSE_ONLY, "traceparent": traceparent})
            assert r.status_code == 401

    def counted() -> tuple[int, int] | None:
        own = sum(e["trace"]["trace_id"] in traces for e in world.trail(None, REJECTED))
        summarized = sum(e["details"]["count"] for e in world.trail(None, SUMMARY))
        return (own, summarized) if own + summarized >= len(traces) else None

    assert _until(counted, timeout=20) == (BURST, 4)
