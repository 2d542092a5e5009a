"""How the MCP gateway tells, from the SDK's answer to a ``subscriptions/listen``
request (its response start and first body frame), whether a stream opened
(``mcp.stream.opened``) or the listen was refused (``api.request.rejected``):
``_listen_refusal`` in adapters/gateway/mcp_proxy.py. The answers are shaped as the
SDK's transports send them (mcp 2.3: ``_streamable_http_modern`` and the
handshake-era transport); the live path is test_mcp_gateway_listen_bounds_live.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentiam.adapters.gateway.mcp_proxy import _listen_refusal

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


def test_a_huge_or_deeply_nested_first_frame_is_not_parsed_past_its_bound() -> None:
    """Only the first 64 KiB are read: a larger error is not recognised as one, so a
    200 event stream counts as opened (recorded), a JSON answer as refused."""
    big = event(error(-32603, "y" * 70_000))
    assert _listen_refusal(start(200, SSE), big) is None
    deep = b"data: " + b"[" * 50_000 + b"]" * 50_000 + b"\r\n\r\n"
    assert _listen_refusal(start(200, SSE), deep) is None
