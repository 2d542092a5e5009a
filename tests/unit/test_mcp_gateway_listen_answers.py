"""How the MCP gateway tells, from the SDK's answer to a ``subscriptions/listen``
request (its response start and first body frame), whether a stream opened
(``mcp.stream.opened``) or the listen was refused (``api.request.rejected``):
``_listen_refusal`` in adapters/gateway/mcp_proxy.py. The answers are shaped as the
SDK's transports send them (mcp 2.3: ``_streamable_http_modern`` and the
handshake-era transport); the live path is test_mcp_gateway_listen_bounds_live.py.
``_first_frame`` gathers the first frame from the body messages, up to 64 KiB."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentiam.adapters.gateway.mcp_proxy import _FIRST_FRAME_BYTES, _first_frame, _listen_refusal

SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform")]
JSON = [(b"content-type", b"application/json"), (b"content-length", b"99")]
ACK = {
    "jsonrpc": "2.0",
    "method": "notifications/subscriptions/acknowledged",
    "params": {"notifications": {"toolsListChanged": True}},
}


def start(status: int, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": headers}


def event(message: dict[str, Any], newline: str = "\r\n") -> bytes:
    data = json.dumps(message, separators=(",", ":"))
    return f"event: message{newline}data: {data}{newline}{newline}".encode()


def error(code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": "l", "error": {"code": code, "message": message}}


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"])
def test_an_event_stream_that_starts_with_the_acknowledgement_opened(newline: str) -> None:
    assert _listen_refusal(start(200, SSE), event(ACK, newline)) is None


def test_an_event_stream_that_starts_with_a_keepalive_opened() -> None:
    """The SDK commits to SSE after 15 s without a frame and pings: the handler
    still runs, the client holds an open stream."""
    assert _listen_refusal(start(200, SSE), b": ping\r\n\r\n") is None


def test_an_error_inside_a_200_event_stream_opened_nothing() -> None:
    """The handshake-era transport answers every request in a 200 SSE stream, an
    error too."""
    first = event(error(-32601, "Method not found"))
    assert _listen_refusal(start(200, SSE), first) == (
        200,
        "refused by the MCP server: Method not found (JSON-RPC error -32601)",
    )


def test_an_error_in_a_200_json_answer_opened_nothing() -> None:
    """The 2026-07-28 entry answers a handler that raised before it acknowledged
    as JSON, at the status its table gives the code (200 when it gives none)."""
    first = json.dumps(error(-32603, "Subscription limit reached")).encode()
    assert _listen_refusal(start(200, JSON), first) == (
        200,
        "refused by the MCP server: Subscription limit reached (JSON-RPC error -32603)",
    )


def test_an_error_at_a_mapped_status_opened_nothing() -> None:
    first = json.dumps(error(-32600, "the listen stream has ended: token revoked")).encode()
    refusal = _listen_refusal(start(400, JSON), first)
    assert refusal is not None
    assert refusal[0] == 400


@pytest.mark.parametrize(
    ("status", "headers", "first"),
    [
        (200, JSON, json.dumps({"jsonrpc": "2.0", "id": "l", "result": {}}).encode()),
        (200, JSON, b"not json"),
        (406, [], b""),
        (503, SSE, event(ACK)),  # not 200: no stream, whatever it says
    ],
)
def test_any_other_answer_opened_nothing(
    status: int, headers: list[tuple[bytes, bytes]], first: bytes
) -> None:
    assert _listen_refusal(start(status, headers), first) == (
        status,
        f"refused by the MCP server: HTTP {status} without a stream",
    )


def test_the_reason_holds_at_most_200_characters_of_the_message() -> None:
    first = event(error(-32603, "x" * 5000))
    refusal = _listen_refusal(start(200, SSE), first)
    assert refusal is not None
    assert refusal[1] == f"refused by the MCP server: {'x' * 200} (JSON-RPC error -32603)"


def test_a_deeply_nested_first_frame_within_the_bound_is_not_an_error() -> None:
    deep = b"data: " + b"[" * 30_000 + b"]" * 30_000 + b"\r\n\r\n"
    assert len(deep) < _FIRST_FRAME_BYTES
    assert _listen_refusal(start(200, SSE), deep) is None


# -- the first frame, gathered from the body messages (_first_frame) -----------------------


def test_the_first_frame_of_an_event_stream_is_its_first_event() -> None:
    ack = event(ACK)
    assert _first_frame(start(200, SSE), ack + b": ping\r\n\r\n", True) == ack


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"])
def test_a_first_event_in_pieces_is_whole_only_at_its_empty_line(newline: str) -> None:
    """A first event split over body messages is held until its end: each prefix
    short of its empty line is not yet a frame."""
    whole = event(error(-32603, "refused"), newline)
    for cut in range(1, len(whole) - len(newline)):
        assert _first_frame(start(200, SSE), whole[:cut], True) is None, whole[:cut]
    assert _first_frame(start(200, SSE), whole, True) == whole
    assert _listen_refusal(start(200, SSE), whole) is not None


def test_a_first_event_longer_than_the_bound_is_given_longer_than_the_bound() -> None:
    """Unended past 64 KiB, or ended past it: the frame is the bound and one byte
    more, which the gateway refuses unread."""
    unended = b"data: " + b"x" * _FIRST_FRAME_BYTES
    frame = _first_frame(start(200, SSE), unended, True)
    assert frame is not None
    assert len(frame) == _FIRST_FRAME_BYTES + 1
    big = event(error(-32603, "y" * 70_000))
    frame = _first_frame(start(200, SSE), big, False)
    assert frame is not None
    assert len(frame) == _FIRST_FRAME_BYTES + 1
    near = event({**ACK, "params": {"_meta": {"id": "z" * 60_000}}})
    assert len(near) < _FIRST_FRAME_BYTES
    assert _first_frame(start(200, SSE), near, True) == near


def test_an_event_stream_that_ends_before_its_first_event_does_gives_what_came() -> None:
    assert _first_frame(start(200, SSE), b"data: {}", False) == b"data: {}"


@pytest.mark.parametrize(("status", "headers"), [(200, JSON), (404, JSON), (406, []), (503, SSE)])
def test_any_other_answers_first_frame_is_its_first_body_message(
    status: int, headers: list[tuple[bytes, bytes]]
) -> None:
    """Not a 200 event stream: no stream opened, whatever the body says, so nothing
    more is waited for (a GET's refusal, a listen's error answer)."""
    assert _first_frame(start(status, headers), b'{"jsonrpc"', True) == b'{"jsonrpc"'
    big = b"z" * (2 * _FIRST_FRAME_BYTES)
    assert _first_frame(start(status, headers), big, True) == big[:_FIRST_FRAME_BYTES]
