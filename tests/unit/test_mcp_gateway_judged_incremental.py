"""The MCP gateway judges a held 2xx answer to a request it did not check incrementally
(``_Judge`` in adapters/gateway/mcp_proxy.py): each body byte is searched for an event's
end about once and each SSE event is parsed once, so an answer of many tiny events costs
time linear in its size in the event loop. Rescanning from the start on every piece (as
before) was quadratic: 20,000 three-byte comment events (``:\\n\\n``) took minutes of CPU
while the whole gateway waited.

The SDK's app is a stand-in (a boundary: the installed SDK never streams thousands of
events before its response to such a request); the real ``_Endpoint`` holds and judges
what it sends. Time is not asserted: the work is, by counting (``_Judge.searched``,
``_Judge.parsed``, and a spy on ``_first_reply``, the per-event parse)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.unit.test_mcp_gateway_endpoint import FakeEnforcer, Stub, post, rpc
from tests.unit.test_mcp_gateway_unchecked_answers import LOG, NOT_FOUND, RESULT, SSE, event, start

from agentiam.adapters.gateway import mcp_proxy
from agentiam.adapters.gateway.mcp_proxy import _FIRST_FRAME_BYTES, _Endpoint, _Judge, _Judged

COMMENT = b":\n\n"  # an SSE comment event: three bytes
EVENTS = 20_000  # 60,000 bytes: within the bound, so every one is parsed
PING = rpc("ping", {})  # a request the gateway does not check: its answer is judged


def test_tiny_events_are_each_searched_and_parsed_once() -> None:
    judge = _Judge(start(SSE))
    for _ in range(EVENTS):
        assert judge.feed(COMMENT, True) is None
    assert judge.parsed == EVENTS
    # each piece's bytes and at most the three before it, never the body again
    assert judge.searched <= EVENTS * (len(COMMENT) + 3)
    notes = EVENTS
    while True:  # past the bound before any response: refused unread
        notes += 1
        judged = judge.feed(COMMENT, True)
        if judged is not None:
            break
    assert judged == _Judged(unread=True)
    assert judge.parsed == notes - 1 <= _FIRST_FRAME_BYTES // len(COMMENT)


def test_an_event_end_split_across_pieces_is_found() -> None:
    """An empty line cut between pieces (CR | LF, LF | LF, CRLF | CRLF): found where
    it ends, and the error after it is judged."""
    for cut in (b"data: {}\r", b"data: {}\n", b"data: {}\r\n"):
        whole = b"data: {}\r\n\r\n"
        judge = _Judge(start(SSE))
        assert judge.feed(cut, True) is None
        assert judge.feed(whole[len(cut) :], True) is None
        assert judge.parsed == 1
        assert judge.feed(event(NOT_FOUND), True) == _Judged((-32601, "Method not found"))


def test_a_cr_at_a_pieces_end_waits_for_what_follows() -> None:
    """``\\r\\r`` then ``\\n``: one line end (CR) and one (CRLF), one event; the end is
    not taken before the LF that may join it is seen."""
    judge = _Judge(start(SSE))
    assert judge.feed(b": x\r\r", True) is None
    assert judge.parsed == 0
    assert judge.feed(b"\n" + event(RESULT), True) == _Judged()
    assert judge.parsed == 2


def test_a_response_after_many_tiny_events_is_judged() -> None:
    judge = _Judge(start(SSE))
    for _ in range(1000):
        judge.feed(COMMENT, True)
    note = event(LOG)
    for piece in (note[:7], note[7:], event(NOT_FOUND)):
        judged = judge.feed(piece, True)
    assert judged == _Judged((-32601, "Method not found"))
    assert judge.parsed == 1002


class Comments:
    """Stands for the SDK's app: a 200 SSE answer of ``count`` comment events, one per
    body message, and never its JSON-RPC response."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.sent = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(start(SSE))
        for _ in range(self.count):
            self.sent += 1
            await send({"type": "http.response.body", "body": COMMENT, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def test_the_endpoint_refuses_a_flood_of_tiny_events_parsing_each_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stand-in streams more comment events than the bound holds: the endpoint
    refuses the answer unread (502, audited), having parsed each event within the
    bound once. The spy fails the test as soon as any event is parsed twice (the old
    rescan parsed the first one again on every piece)."""
    parses = 0
    bound = _FIRST_FRAME_BYTES // len(COMMENT)
    real = mcp_proxy._first_reply

    def counted(begun: Any, frame: bytes) -> Any:
        nonlocal parses
        parses += 1
        if parses > bound + 1:
            raise AssertionError(f"{parses} parses for {bound} events: rescanning")
        return real(begun, frame)

    monkeypatch.setattr(mcp_proxy, "_first_reply", counted)
    enforcer = FakeEnforcer()
    app = Comments(bound + 100)
    endpoint = _Endpoint(Stub(enforcer), app)  # type: ignore[arg-type]
    r = post(TestClient(endpoint, base_url="https://gw.example.com"), PING)
    assert r.status_code == 502, r.text
    assert (r.json()["id"], r.json()["error"]["code"]) == (7, -32603)
    ((status, reason),) = enforcer.refused
    assert status == 502
    assert "larger than 64 KiB before its JSON-RPC response" in reason
    assert parses == bound
    assert app.sent == bound + 100
