"""How the MCP gateway tells whether a 2xx answer to a request it did not check is a
refusal (``_judged`` in adapters/gateway/mcp_proxy.py), and what the endpoint does with
one (``_Endpoint._unchecked``).

The SDK answers a request for a method the gateway serves no handler for, or whose
params do not validate, with HTTP 200 and a JSON-RPC error (JSON-RPC 2.0 section 5.1),
as JSON or as an event of an SSE stream (Streamable HTTP, "Sending Messages to the
Server"). Such an answer is held back until its JSON-RPC response (or its end), within
64 KiB, and a JSON-RPC error is audited before the client gets it. The live path, with
the real SDK, is test_mcp_gateway_sdk_refusals_live.py; here the SDK's app is a
stand-in (a boundary: the installed SDK answers every handshake-era request as SSE and
never writes the oversized answers or the 200 JSON errors these cases need).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.testclient import TestClient
from tests.unit.test_mcp_gateway_endpoint import FakeEnforcer, Stub, post, rpc

from agentiam.adapters.gateway.mcp_proxy import _FIRST_FRAME_BYTES, _Endpoint, _Judged, _judged
from agentiam.errors import ServiceUnavailable

SSE = [(b"content-type", b"text/event-stream")]
JSON = [(b"content-type", b"application/json")]
NOT_FOUND = {"jsonrpc": "2.0", "id": 7, "error": {"code": -32601, "message": "Method not found"}}
RESULT = {"jsonrpc": "2.0", "id": 7, "result": {}}
LOG = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info"}}
REASON = "refused by the MCP server: Method not found (JSON-RPC error -32601)"


def start(headers: list[tuple[bytes, bytes]], status: int = 200) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": headers}


def event(message: dict[str, Any]) -> bytes:
    return f"event: message\r\ndata: {json.dumps(message)}\r\n\r\n".encode()


# -- _judged ------------------------------------------------------------------------------


def test_a_json_answer_is_judged_whole() -> None:
    body = json.dumps(NOT_FOUND).encode()
    assert _judged(start(JSON), body[:10], True) is None
    assert _judged(start(JSON), body, False) == _Judged((-32601, "Method not found"))
    assert _judged(start(JSON), json.dumps(RESULT).encode(), False) == _Judged()
    assert _judged(start(JSON), b"", False) == _Judged()  # a 202's empty body


def test_an_event_streams_error_after_notifications_is_found() -> None:
    body = b": ping\r\n\r\n" + event(LOG) + event(NOT_FOUND)
    assert _judged(start(SSE), body, True) == _Judged((-32601, "Method not found"))


def test_an_event_stream_is_judged_at_its_response_not_its_end() -> None:
    """A result decides it: the rest (more to come) is not waited for."""
    assert _judged(start(SSE), event(LOG) + event(RESULT), True) == _Judged()
    assert _judged(start(SSE), event(LOG), True) is None  # its response is to come


def test_an_event_split_across_body_messages_is_judged_once_whole() -> None:
    whole = event(NOT_FOUND)
    for cut in range(1, len(whole) - 1):
        assert _judged(start(SSE), whole[:cut], True) is None, whole[:cut]
    assert _judged(start(SSE), whole, True) == _Judged((-32601, "Method not found"))


def test_a_stream_that_ends_without_its_blank_line_is_judged_on_what_came() -> None:
    body = event(LOG) + event(NOT_FOUND).rstrip(b"\r\n")
    assert _judged(start(SSE), body, False) == _Judged((-32601, "Method not found"))
    assert _judged(start(SSE), event(LOG), False) == _Judged()  # no response: no error


def test_an_answer_past_the_bound_before_its_response_is_unread() -> None:
    notes = b""
    while len(notes) <= _FIRST_FRAME_BYTES:
        notes += event(LOG)
    assert _judged(start(SSE), notes + event(NOT_FOUND), True) == _Judged(unread=True)
    assert _judged(start(SSE), notes, True) == _Judged(unread=True)
    big = json.dumps({**RESULT, "result": {"x": "y" * _FIRST_FRAME_BYTES}}).encode()
    assert _judged(start(JSON), big, False) == _Judged(unread=True)
    # a response within the bound decides it, however long the rest
    assert _judged(start(SSE), event(RESULT) + notes, True) == _Judged()


# -- the endpoint ---------------------------------------------------------------------------


class Answers:
    """Stands for the SDK's app: answers every request with ``status`` and the body
    messages ``pieces`` (the last one ends it)."""

    def __init__(self, headers: list[tuple[bytes, bytes]], *pieces: bytes, status: int = 200):
        self.headers, self.pieces, self.status = headers, pieces, status

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(start(self.headers, self.status))
        for n, piece in enumerate(self.pieces, 1):
            more = n < len(self.pieces)
            await send({"type": "http.response.body", "body": piece, "more_body": more})


def client(enforcer: FakeEnforcer, app: Answers) -> TestClient:
    endpoint = _Endpoint(Stub(enforcer), app)  # type: ignore[arg-type]
    return TestClient(endpoint, base_url="https://gw.example.com")


# a method the gateway serves no handler for (completion/complete is decided now)
UNSERVED = rpc("logging/setLevel", {"level": "debug"})


def test_a_200_json_error_is_audited_and_passed_on_whole() -> None:
    enforcer = FakeEnforcer()
    body = json.dumps(NOT_FOUND).encode()
    r = post(client(enforcer, Answers(JSON, body[:9], body[9:])), UNSERVED)
    assert (r.status_code, r.json()) == (200, NOT_FOUND)
    assert enforcer.refused == [(200, REASON)]
    assert enforcer.refused_actions == ["logging/setLevel"]


def test_a_200_stream_whose_response_is_an_error_is_audited() -> None:
    enforcer = FakeEnforcer()
    pieces = (b": ping\r\n\r\n", event(LOG), event(NOT_FOUND)[:20], event(NOT_FOUND)[20:])
    r = post(client(enforcer, Answers(SSE, *pieces)), UNSERVED)
    assert (r.status_code, r.content) == (200, b"".join(pieces))
    assert enforcer.refused == [(200, REASON)]


def test_a_result_and_an_accepted_notification_record_nothing() -> None:
    enforcer = FakeEnforcer()
    pieces = (event(LOG), event(RESULT))
    r = post(client(enforcer, Answers(SSE, *pieces)), rpc("ping", {}))
    assert (r.status_code, r.content) == (200, b"".join(pieces))
    notification = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    r = post(client(enforcer, Answers([], b"", status=202)), notification)
    assert r.status_code == 202
    assert enforcer.refused == []


def test_an_answer_past_the_bound_is_refused_unread_502() -> None:
    """Fail closed: what follows the bound could be an error, so none of it is sent;
    the refusal is audited and the client gets a JSON-RPC error in its place."""
    enforcer = FakeEnforcer()
    note = event(LOG)
    pieces = [note] * (_FIRST_FRAME_BYTES // len(note) + 2) + [event(RESULT)]
    r = post(client(enforcer, Answers(SSE, *pieces)), UNSERVED)
    assert r.status_code == 502, r.text
    assert r.json()["id"] == 7
    assert r.json()["error"]["code"] == -32603
    assert b"notifications/message" not in r.content
    ((status, reason),) = enforcer.refused
    assert status == 502
    assert "larger than 64 KiB before its JSON-RPC response" in reason


def test_a_200_error_that_cannot_be_recorded_is_answered_503() -> None:
    enforcer = FakeEnforcer(failure=ServiceUnavailable("the audit spool is full"))
    r = post(client(enforcer, Answers(SSE, event(NOT_FOUND))), UNSERVED)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert (r.json()["id"], r.json()["error"]["code"]) == (7, -32603)
    assert "Method not found" not in r.text


def test_a_stream_that_ends_before_its_response_is_whole_is_judged() -> None:
    """The SDK's app returns with the body unended: what came is judged, audited,
    and passed on, ended."""
    enforcer = FakeEnforcer()

    async def unended(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(start(SSE))
        body = event(NOT_FOUND).rstrip(b"\r\n")
        await send({"type": "http.response.body", "body": body, "more_body": True})

    endpoint = _Endpoint(Stub(enforcer), unended)  # type: ignore[arg-type]
    r = post(TestClient(endpoint, base_url="https://gw.example.com"), UNSERVED)
    assert r.status_code == 200
    assert json.loads(r.text.split("data: ", 1)[1]) == NOT_FOUND
    assert enforcer.refused == [(200, REASON)]
