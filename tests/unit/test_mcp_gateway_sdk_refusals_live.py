"""Every request the MCP gateway hands its SDK unchecked, and the SDK refuses, is in the
audit trail (the endpoint's ``_unchecked``); so is every refusal it foresees of an
``initialize`` or a listing (``_foreseen``).

The gateway asks the SDK's rules (``_SdkRules``) only of what takes a rate-limit token
(a call, an ``initialize``, a listing, a listen). The rest goes to the SDK unchecked: a
DELETE that ends a handshake-era session (Streamable HTTP, "Session Management"), and
POSTs of notifications (``notifications/initialized``, ``notifications/cancelled``),
of responses, of ``ping``, of bodies that are not one JSON-RPC message. The SDK refuses
one for an unknown, expired or another principal's session (404), no session (400), a
bad ``Accept`` (406), a bad ``Content-Type`` (400, 415), a body that does not parse or
validate (400), a method its era does not serve (405). Each refusal of an
authenticated agent's request is one ``api.request.rejected`` (the action: the
JSON-RPC method, else the HTTP method; the status the client got; the SDK's JSON-RPC
error, its first line only), durable before the client sees the answer (else a 503 in
its place), recorded one by one. A 2xx answer records nothing, as before. A request
naming nobody is refused at authentication, within the budget of refusals naming
nobody. A refused request without a session id leaves no SDK session behind.

A request the SDK answers with HTTP 200 but a JSON-RPC error (a method the gateway
serves no handler for: ``logging/setLevel``, ``resources/subscribe``, one no one
serves; params that do not validate) is a refusal
too, audited the same way (its status: 200). So is an ``initialize`` or a listing the
SDK's rules passed but the SDK then refused (its session ended in between).

Real servers on loopback ports (test_mcp_gateway_streams_live.py's world): a control
plane (uvicorn, SQLite), a stateless upstream MCP server, and the real gateway (its
budget: a burst of 3 per peer), driven by raw HTTP with real DPoP-bound tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError
from tests.support.live import until as _until
from tests.unit.test_mcp_gateway_get_refusals_live import (
    BURST,
    POST,
    REJECTED,
    SSE_ONLY,
    SUMMARY,
    _auth,
    _of_trace,
    _session,
    _traceparent,
    refusals_world,
)
from tests.unit.test_mcp_gateway_listen_live import HANDSHAKE, MODERN, World

from agentiam.adapters.gateway.mcp_sdk_state import open_sessions

AGENTS = (
    "lost",
    "owner",
    "intruder",
    "sessionless",
    "ender",
    "unrecorded",
    "noticer",
    "picky",
    "typist",
    "responder",
    "garbled",
    "leaky",
    "lister",
    "quiet",
    "many",
    "modern",
    "putter",
    "asker",
    "stock",
    "mute",
    "vanishing",
    "forgotten",
)
SECRET = "sk-live-4f1d9c2b7e6a"  # what a client put in a body that does not validate


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    with refusals_world(tmp_path_factory.mktemp("mcp-sdk-refusals"), sqlite_template, AGENTS) as w:
        yield w


def _send(
    world: World,
    who: str,
    method: str,
    headers: dict[str, str],
    body: Any = None,
    content: bytes | None = None,
) -> httpx2.Response:
    """One request as ``who``, read whole (a refusal is short)."""
    with httpx2.Client(auth=_auth(world, who), timeout=10) as http:
        return http.request(method, world.url, headers=headers, json=body, content=content)


def _opened(world: World, who: str) -> str:
    """A handshake-era session of ``who``'s, opened (initialize, initialized): its id."""

    async def go() -> str:
        async with httpx2.AsyncClient(auth=_auth(world, who), timeout=30) as http:
            return await _session(http, world.url)

    return anyio.run(go)


def _in(session: str) -> dict[str, str]:
    """The headers of a POST in ``session``."""
    return {**POST, "Mcp-Session-Id": session, "MCP-Protocol-Version": HANDSHAKE}


def _refused(world: World, who: str, trace_id: str, action: str, status: int) -> dict[str, Any]:
    """The one ``api.request.rejected`` of ``who``'s request in trace ``trace_id``."""
    assert _until(lambda: _of_trace(world, who, REJECTED, trace_id)), world.trail(who)
    (event,) = _of_trace(world, who, REJECTED, trace_id)
    assert event["action"] == action
    assert event["agent_id"] == world.agents[who].client_id
    assert event["outcome"] == "denied"
    assert event["details"]["status"] == status
    assert event["details"]["peer"] == "127.0.0.1"
    return event


def _notification(method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, **({"params": params} if params else {})}


# -- DELETE: ending a session -------------------------------------------------------------


def test_a_delete_for_an_unknown_session_is_an_audited_refusal(world: World) -> None:
    traceparent, trace_id = _traceparent()
    headers = {"Mcp-Session-Id": "0" * 32, "traceparent": traceparent}
    r = _send(world, "lost", "DELETE", headers)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["message"] == "Session not found"  # the SDK's own answer
    event = _refused(world, "lost", trace_id, "DELETE", 404)
    assert event["reason"] == "refused by the MCP server: Session not found (JSON-RPC error -32600)"


def test_a_delete_for_another_agents_session_is_refused_audited_and_ends_nothing(
    world: World,
) -> None:
    """``intruder`` names ``owner``'s session: the SDK answers as if it did not exist,
    the refusal is ``intruder``'s, and ``owner``'s session stays open."""
    session = _opened(world, "owner")
    traceparent, trace_id = _traceparent()
    r = _send(world, "intruder", "DELETE", {"Mcp-Session-Id": session, "traceparent": traceparent})
    assert r.status_code == 404, r.text
    event = _refused(world, "intruder", trace_id, "DELETE", 404)
    assert session not in str(event)  # the session's id is not written down
    assert session in open_sessions(world.gateway.sessions)
    ping = {"jsonrpc": "2.0", "id": 7, "method": "ping"}
    assert _send(world, "owner", "POST", _in(session), ping).status_code == 200
    assert not world.trail("owner", REJECTED)


def test_a_delete_without_a_session_is_an_audited_refusal_and_opens_none(world: World) -> None:
    before = len(open_sessions(world.gateway.sessions))
    traceparent, trace_id = _traceparent()
    r = _send(world, "sessionless", "DELETE", {"traceparent": traceparent})
    assert r.status_code == 400, r.text
    event = _refused(world, "sessionless", trace_id, "DELETE", 400)
    assert "Missing session ID" in event["reason"]
    assert len(open_sessions(world.gateway.sessions)) == before


def test_a_delete_that_ends_a_session_records_nothing_and_a_second_is_refused(
    world: World,
) -> None:
    """The owner's DELETE ends its session (200, no event, as before); a DELETE of
    the ended session is refused (404), audited."""
    session = _opened(world, "ender")
    ended, ended_id = _traceparent()
    r = _send(world, "ender", "DELETE", {"Mcp-Session-Id": session, "traceparent": ended})
    assert r.status_code == 200, r.text
    assert session not in open_sessions(world.gateway.sessions)
    again, again_id = _traceparent()
    r = _send(world, "ender", "DELETE", {"Mcp-Session-Id": session, "traceparent": again})
    assert r.status_code == 404, r.text
    _refused(world, "ender", again_id, "DELETE", 404)
    # the spool ships in order: the second DELETE's event is in, so the first had none
    assert not _of_trace(world, "ender", REJECTED, ended_id)


def test_a_delete_at_the_2026_era_is_an_audited_refusal(world: World) -> None:
    """The 2026-07-28 entry has no sessions: it answers any method but POST 405
    (``Allow: POST``), with no body."""
    traceparent, trace_id = _traceparent()
    headers = {"MCP-Protocol-Version": MODERN, "traceparent": traceparent}
    r = _send(world, "modern", "DELETE", headers)
    assert (r.status_code, r.headers["allow"]) == (405, "POST"), r.text
    event = _refused(world, "modern", trace_id, "DELETE", 405)
    assert event["reason"] == "refused by the MCP server: HTTP 405 without a stream"


def test_a_refused_delete_whose_refusal_cannot_be_recorded_is_answered_503(
    world: World,
) -> None:
    """Nothing unlogged is answered: with the spool full the client gets a 503
    problem (``Retry-After``) in place of the SDK's 404; once the spool takes events
    again, the SDK's answer, audited."""
    spool = world.gateway.runtime.spool
    bound = spool.max_bytes
    headers = {"Mcp-Session-Id": "1" * 32}
    spool.max_bytes = 1  # the spool is full: no event fits
    try:
        r = _send(world, "unrecorded", "DELETE", headers)
    finally:
        spool.max_bytes = bound
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "jsonrpc" not in r.text  # not the SDK's answer
    traceparent, trace_id = _traceparent()
    r = _send(world, "unrecorded", "DELETE", {**headers, "traceparent": traceparent})
    assert r.status_code == 404
    _refused(world, "unrecorded", trace_id, "DELETE", 404)


def test_another_http_method_is_an_audited_refusal(world: World) -> None:
    """The transport serves GET, POST and DELETE: a PUT in the agent's own session is
    refused (405, ``Allow``), audited with its HTTP method."""
    session = _opened(world, "putter")
    traceparent, trace_id = _traceparent()
    r = _send(world, "putter", "PUT", {**_in(session), "traceparent": traceparent}, {})
    assert (r.status_code, r.headers["allow"]) == (405, "GET, POST, DELETE"), r.text
    event = _refused(world, "putter", trace_id, "PUT", 405)
    assert (
        event["reason"] == "refused by the MCP server: Method Not Allowed (JSON-RPC error -32600)"
    )


# -- POSTs the gateway does not check ----------------------------------------------------


def test_a_notification_for_an_unknown_session_is_an_audited_refusal(world: World) -> None:
    traceparent, trace_id = _traceparent()
    headers = {**_in("2" * 32), "traceparent": traceparent}
    r = _send(world, "noticer", "POST", headers, _notification("notifications/initialized"))
    assert r.status_code == 404, r.text
    event = _refused(world, "noticer", trace_id, "notifications/initialized", 404)
    assert event["reason"] == "refused by the MCP server: Session not found (JSON-RPC error -32600)"


def test_a_notification_that_does_not_accept_an_event_stream_is_an_audited_refusal(
    world: World,
) -> None:
    session = _opened(world, "picky")
    traceparent, trace_id = _traceparent()
    headers = {**_in(session), "Accept": "application/json", "traceparent": traceparent}
    cancelled = _notification("notifications/cancelled", requestId=3, reason="no longer needed")
    r = _send(world, "picky", "POST", headers, cancelled)
    assert r.status_code == 406, r.text
    event = _refused(world, "picky", trace_id, "notifications/cancelled", 406)
    assert "Not Acceptable" in event["reason"]
    assert "no longer needed" not in str(event)


@pytest.mark.parametrize(
    ("content_type", "status"),
    [("text/plain", 400), ("application/jsonl", 415)],
)
def test_a_ping_with_a_bad_content_type_is_an_audited_refusal(
    world: World, content_type: str, status: int
) -> None:
    """The SDK's transport security refuses a type that does not start with
    ``application/json`` (400, a plain-text answer), its transport any other than
    exactly that (415)."""
    session = _opened(world, "typist")
    traceparent, trace_id = _traceparent()
    headers = {**_in(session), "Content-Type": content_type, "traceparent": traceparent}
    r = _send(world, "typist", "POST", headers, content=b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
    assert r.status_code == status, r.text
    _refused(world, "typist", trace_id, "ping", status)


def test_a_response_the_client_sends_for_an_unknown_session_is_an_audited_refusal(
    world: World,
) -> None:
    """A JSON-RPC response names no method: the action is the HTTP method."""
    traceparent, trace_id = _traceparent()
    headers = {**_in("3" * 32), "traceparent": traceparent}
    answer = {"jsonrpc": "2.0", "id": 11, "result": {}}
    r = _send(world, "responder", "POST", headers, answer)
    assert r.status_code == 404, r.text
    _refused(world, "responder", trace_id, "POST", 404)


def test_a_body_that_is_not_json_is_an_audited_refusal(world: World) -> None:
    session = _opened(world, "garbled")
    traceparent, trace_id = _traceparent()
    headers = {**_in(session), "traceparent": traceparent}
    r = _send(world, "garbled", "POST", headers, content=b'{"jsonrpc": "2.0", "method": ')
    assert r.status_code == 400, r.text
    event = _refused(world, "garbled", trace_id, "POST", 400)
    assert event["reason"].startswith("refused by the MCP server: Parse error")


def test_a_refused_body_is_not_quoted_in_the_audit_trail(world: World) -> None:
    """The SDK's answer to a message that does not validate quotes it (pydantic's
    ``input_value=…``, within its first 200 characters here): only the first line of
    the SDK's message is recorded."""
    session = _opened(world, "leaky")
    traceparent, trace_id = _traceparent()
    headers = {**_in(session), "traceparent": traceparent}
    r = _send(world, "leaky", "POST", headers, {SECRET: 1})
    assert r.status_code == 400, r.text
    assert SECRET in r.text  # the SDK's answer quotes it to its sender
    assert SECRET[:12] in r.json()["error"]["message"][:200]
    event = _refused(world, "leaky", trace_id, "POST", 400)
    assert event["reason"] == (
        "refused by the MCP server: Validation error: 11 validation errors for "
        "union[JSONRPCRequest,JSONRPCNotification,JSONRPCResponse,JSONRPCError] "
        "(JSON-RPC error -32602)"
    )
    assert SECRET[:8] not in str(event)


def test_a_refused_notification_whose_refusal_cannot_be_recorded_is_answered_503(
    world: World,
) -> None:
    """With the spool full: a JSON-RPC error at 503 (``Retry-After``) in place of
    the SDK's 404."""
    spool = world.gateway.runtime.spool
    bound = spool.max_bytes
    spool.max_bytes = 1
    try:
        r = _send(world, "unrecorded", "POST", _in("4" * 32), {"jsonrpc": "2.0", "method": "x/y"})
    finally:
        spool.max_bytes = bound
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert r.json()["error"]["code"] == -32603
    assert r.json()["error"]["message"] != "Session not found"


def test_a_listing_foreseen_refused_is_audited(world: World) -> None:
    """A ``tools/list`` the SDK's rules foresee it refuses (an unknown session) goes
    to the SDK undecided; its refusal is audited first, with its method."""
    traceparent, trace_id = _traceparent()
    headers = {**_in("5" * 32), "traceparent": traceparent}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    r = _send(world, "lister", "POST", headers, listing)
    assert r.status_code == 404, r.text
    event = _refused(world, "lister", trace_id, "tools/list", 404)
    reason = "refused by the MCP transport: no open session has this Mcp-Session-Id"
    assert event["reason"] == reason


def test_what_the_sdk_accepts_records_no_refusal(world: World) -> None:
    """A notification (202) and a ping (200) in the agent's own session record
    nothing; a refusal after them, in order, shows the trail is up to date."""
    session = _opened(world, "quiet")
    traces = []
    for body in (
        _notification("notifications/cancelled", requestId=9),
        {"jsonrpc": "2.0", "id": 8, "method": "ping"},
    ):
        traceparent, trace_id = _traceparent()
        traces.append(trace_id)
        r = _send(world, "quiet", "POST", {**_in(session), "traceparent": traceparent}, body)
        assert r.status_code in (200, 202), r.text
    traceparent, trace_id = _traceparent()
    r = _send(world, "quiet", "DELETE", {"Mcp-Session-Id": "6" * 32, "traceparent": traceparent})
    assert r.status_code == 404
    _refused(world, "quiet", trace_id, "DELETE", 404)
    assert not [e for e in world.trail("quiet", REJECTED) if e["trace"]["trace_id"] in traces]


def test_an_agents_refused_requests_are_recorded_one_by_one(world: World) -> None:
    """Twice the budget of refusals naming nobody, from one agent and one peer:
    every one an event of its own."""
    traces = []
    for n in range(2 * BURST + 1):
        traceparent, trace_id = _traceparent()
        traces.append(trace_id)
        headers = {**_in("7" * 32), "traceparent": traceparent}
        if n % 2:
            r = _send(world, "many", "DELETE", headers)
        else:
            r = _send(world, "many", "POST", headers, _notification("notifications/initialized"))
        assert r.status_code == 404

    def recorded() -> list[dict[str, Any]] | None:
        found = [e for e in world.trail("many", REJECTED) if e["trace"]["trace_id"] in traces]
        return found if len(found) == len(traces) else None

    events = _until(recorded)
    assert events, world.trail("many", REJECTED)
    assert {e["action"] for e in events} == {"DELETE", "notifications/initialized"}


def test_requests_without_a_session_leave_no_sdk_session(world: World) -> None:
    """A GET, a DELETE and a notification without ``Mcp-Session-Id`` each make the
    SDK open a session for the request (only an ``initialize`` can keep one); each is
    refused (400) and the SDK discards that session at once, not at its idle
    timeout."""
    before = len(open_sessions(world.gateway.sessions))
    no_session = {**POST, "MCP-Protocol-Version": HANDSHAKE}
    assert _send(world, "sessionless", "GET", SSE_ONLY).status_code == 400
    assert _send(world, "sessionless", "DELETE", {}).status_code == 400
    done = _notification("notifications/initialized")
    assert _send(world, "sessionless", "POST", no_session, done).status_code == 400
    assert len(open_sessions(world.gateway.sessions)) == before


def test_requests_naming_nobody_are_within_the_budget_of_anonymous_refusals(
    world: World,
) -> None:
    """No token: a DELETE or a notification is refused at authentication (401)
    before the SDK sees it; of ``BURST + 4`` from one peer, ``BURST`` are events of
    their own and the other 4 are counted in a summary (this module's only refusals
    naming nobody)."""
    traces = []
    with httpx2.Client(timeout=10) as http:
        for n in range(BURST + 4):
            traceparent, trace_id = _traceparent()
            traces.append(trace_id)
            headers = {**_in("8" * 32), "traceparent": traceparent}
            if n % 2:
                r = http.delete(world.url, headers=headers)
            else:
                r = http.post(world.url, headers=headers, json=_notification("x/y"))
            assert r.status_code == 401

    def counted() -> tuple[int, int] | None:
        own = sum(e["trace"]["trace_id"] in traces for e in world.trail(None, REJECTED))
        summarized = sum(e["details"]["count"] for e in world.trail(None, SUMMARY))
        return (own, summarized) if own + summarized >= len(traces) else None

    assert _until(counted, timeout=20) == (BURST, 4)


# -- 200 answers that are JSON-RPC errors ------------------------------------------------

NOT_FOUND = "refused by the MCP server: Method not found (JSON-RPC error -32601)"


def _events(response: httpx2.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an SSE answer."""
    assert response.headers["content-type"].startswith("text/event-stream"), response.text
    lines = response.text.replace("\r\n", "\n").split("\n")
    return [json.loads(line[5:]) for line in lines if line.startswith("data:")]


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("logging/setLevel", {"level": "debug"}),
        ("resources/subscribe", {"uri": f"live://{SECRET}"}),
        ("x/never-served", {"token": SECRET}),
    ],
)
def test_a_request_the_sdk_answers_with_a_jsonrpc_error_in_a_200_is_an_audited_refusal(
    world: World, method: str, params: dict[str, Any]
) -> None:
    """The gateway serves no handler for these: the SDK answers each -32601 in a 200
    event stream. The refusal is recorded with status 200, its method and the
    error's code and first line; never the request's params."""
    session = _opened(world, "asker")
    traceparent, trace_id = _traceparent()
    body = {"jsonrpc": "2.0", "id": 5, "method": method, "params": params}
    r = _send(world, "asker", "POST", {**_in(session), "traceparent": traceparent}, body)
    assert r.status_code == 200, r.text
    (answer,) = _events(r)  # the SDK's own answer, passed on whole
    assert answer["id"] == 5
    assert answer["error"]["code"] == -32601
    event = _refused(world, "asker", trace_id, method, 200)
    assert event["reason"] == NOT_FOUND
    assert SECRET[:8] not in str(event)


def test_params_that_do_not_validate_in_a_200_are_an_audited_refusal(world: World) -> None:
    """A ``ping`` whose ``_meta`` is not an object passes the transport (params are
    an object) and fails the server's validation: -32602 in a 200."""
    session = _opened(world, "asker")
    traceparent, trace_id = _traceparent()
    body = {"jsonrpc": "2.0", "id": 6, "method": "ping", "params": {"_meta": SECRET}}
    r = _send(world, "asker", "POST", {**_in(session), "traceparent": traceparent}, body)
    assert r.status_code == 200, r.text
    (answer,) = _events(r)
    assert answer["error"]["code"] == -32602
    event = _refused(world, "asker", trace_id, "ping", 200)
    assert event["reason"] == (
        "refused by the MCP server: Invalid request parameters (JSON-RPC error -32602)"
    )
    assert SECRET[:8] not in str(event)


def test_the_stock_clients_unserved_requests_are_audited_refusals(world: World) -> None:
    """The official client's ``set_logging_level`` and ``subscribe_resource`` each get
    the SDK's error; each is one refusal; its ``ping`` (a result) is none. (Its
    ``complete`` is decided and relayed now: test_mcp_gateway_completion_live.py.)"""

    async def go() -> list[int]:
        codes = []
        async with world.client("stock", mode="legacy") as client:
            await client.send_ping()
            for ask in (
                lambda: client.set_logging_level("debug"),
                lambda: client.subscribe_resource("live://x"),
            ):
                with pytest.raises(MCPError) as refused:
                    await ask()
                codes.append(refused.value.code)
        return codes

    assert anyio.run(go) == [-32601] * 2
    wanted = {"logging/setLevel", "resources/subscribe"}

    def recorded() -> list[dict[str, Any]] | None:
        events = world.trail("stock", REJECTED)
        return events if {e["action"] for e in events} >= wanted else None

    events = _until(recorded)
    assert events, world.trail("stock", REJECTED)
    assert sorted(e["action"] for e in events) == sorted(wanted)  # the ping: none
    assert {(e["reason"], e["details"]["status"]) for e in events} == {(NOT_FOUND, 200)}


def test_a_200_refusal_that_cannot_be_recorded_is_answered_503(world: World) -> None:
    """With the spool full: a JSON-RPC error at 503 (``Retry-After``) in place of the
    SDK's 200; once the spool takes events again, the SDK's answer, audited."""
    session = _opened(world, "mute")
    body = {"jsonrpc": "2.0", "id": 9, "method": "logging/setLevel", "params": {"level": "info"}}
    spool = world.gateway.runtime.spool
    bound = spool.max_bytes
    spool.max_bytes = 1
    try:
        r = _send(world, "mute", "POST", _in(session), body)
    finally:
        spool.max_bytes = bound
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert r.json()["id"] == 9
    assert r.json()["error"]["code"] == -32603
    assert "Method not found" not in r.text  # not the SDK's answer
    traceparent, trace_id = _traceparent()
    r = _send(world, "mute", "POST", {**_in(session), "traceparent": traceparent}, body)
    assert r.status_code == 200
    _refused(world, "mute", trace_id, "logging/setLevel", 200)


# -- listings the SDK refuses after the gateway's check passed ----------------------------


def _ending_the_session_first(
    world: World, who: str, session: str, monkeypatch: pytest.MonkeyPatch, *, full: bool = False
) -> None:
    """Between the gateway's check of a listing (the SDK's rules pass it) and the SDK's
    answer, ``who`` ends ``session`` with a real DELETE (and, ``full``: the spool
    fills): the listing is prepared as before, then the SDK finds no session."""
    real = world.gateway.listing

    async def listing(state: Any, method: str) -> list[Any]:
        shown = await real(state, method)
        async with httpx2.AsyncClient(auth=_auth(world, who), timeout=10) as http:
            ended = await http.delete(world.url, headers={"Mcp-Session-Id": session})
        assert ended.status_code == 200, ended.text
        if full:
            world.gateway.runtime.spool.max_bytes = 1
        return shown

    monkeypatch.setattr(world.gateway, "listing", listing)


@pytest.mark.parametrize(
    "method", ["tools/list", "resources/list", "resources/templates/list", "prompts/list"]
)
def test_a_listing_the_sdk_refuses_after_the_check_passed_is_audited(
    world: World, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = _opened(world, "vanishing")
    _ending_the_session_first(world, "vanishing", session, monkeypatch)
    traceparent, trace_id = _traceparent()
    listing = {"jsonrpc": "2.0", "id": 3, "method": method}
    r = _send(world, "vanishing", "POST", {**_in(session), "traceparent": traceparent}, listing)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["message"] == "Session not found"  # the SDK's own answer
    event = _refused(world, "vanishing", trace_id, method, 404)
    assert event["reason"] == "refused by the MCP server: Session not found (JSON-RPC error -32600)"


def test_a_listing_refused_after_the_check_that_cannot_be_recorded_is_answered_503(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = world.gateway.runtime.spool
    bound = spool.max_bytes
    session = _opened(world, "forgotten")
    _ending_the_session_first(world, "forgotten", session, monkeypatch, full=True)
    listing = {"jsonrpc": "2.0", "id": 4, "method": "tools/list"}
    try:
        r = _send(world, "forgotten", "POST", _in(session), listing)
    finally:
        spool.max_bytes = bound
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert (r.json()["id"], r.json()["error"]["code"]) == (4, -32603)
    assert "Session not found" not in r.text


def test_a_listing_the_sdk_answers_records_no_refusal(world: World) -> None:
    """The listing path as before: the SDK answers 200 with the listing."""
    session = _opened(world, "vanishing")
    traceparent, trace_id = _traceparent()
    listing = {"jsonrpc": "2.0", "id": 8, "method": "tools/list"}
    r = _send(world, "vanishing", "POST", {**_in(session), "traceparent": traceparent}, listing)
    assert r.status_code == 200, r.text
    (answer,) = _events(r)
    assert "tools" in answer["result"]
    assert _until(lambda: _of_trace(world, "vanishing", "mcp.list", trace_id))
    assert not _of_trace(world, "vanishing", REJECTED, trace_id)
