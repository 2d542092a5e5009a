"""Plain ASGI middleware for the hot path (no BaseHTTPMiddleware).

``RequestLimits`` bounds what a request may make the server hold: the body is read
up to ``max_body_bytes`` (413 past that, whatever Content-Length claims; policy
imports and audit ingest have their own, larger bounds), and a JSON
body nested deeper than ``max_json_depth`` is refused with 400 before any parser runs,
so recursion cannot be used to exhaust the stack.

``Metrics`` counts requests and their latency per route template for Prometheus.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.datastructures import Headers

from agentiam.adapters.http.problems import PROBLEM_JSON
from agentiam.config import Limits
from agentiam.errors import AgentIAMError, BadRequest, PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = [
    "NON_NUMBERS",
    "Metrics",
    "RequestLimits",
    "json_body_problem",
]

NON_NUMBERS = "the body is not JSON: NaN and Infinity are not numbers (RFC 8259 section 6)"

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


# A JSON string as the scan below reads it: from a quote to the next quote not
# escaped by a backslash, or to the end of the body if none (then the rest is inside
# it). Unrolled (no alternation under the star) so a long string is one C loop, and
# always matching at a quote so the scan stays linear on any input.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {0x5B: 1, 0x7B: 1, 0x5D: -1, 0x7D: -1}


def json_body_problem(body: bytes, max_depth: int) -> str | None:
    """Why the middleware refuses a JSON ``body`` before any parser sees it, if it
    does, from one cut of its strings (:func:`_outside_strings`); it does not
    validate JSON otherwise.

    - Arrays and objects nested deeper than ``max_depth``. Everything but the
      brackets is dropped in C (``bytes.translate``), so Python steps only through
      the brackets, not through every byte of an audit batch.
    - ``NaN``, ``Infinity`` or ``-Infinity`` outside the strings: RFC 8259 section 6
      has no such numbers, but Python's decoder (and so FastAPI's) accepts them."""
    bare = _outside_strings(body)
    if _deeper(bare, max_depth):
        return f"JSON nesting is deeper than {max_depth} levels"
    return NON_NUMBERS if _CONSTANT.search(bare) is not None else None


def _deeper(bare: bytes, max_depth: int) -> bool:
    """True if a body cut of its strings nests arrays/objects deeper than
    ``max_depth``."""
    brackets = bare.translate(None, _NOT_BRACKETS)
    if not brackets or len(brackets) <= max_depth:
        return False
    return max(accumulate(map(_STEP.__getitem__, brackets))) > max_depth


def _outside_strings(body: bytes) -> bytes:
    """``body`` without its JSON strings (as :data:`_STRING` reads them): the strings
    and escapes inside them are skipped. In C: ``bytes.split`` when there is no
    backslash, else ``re.sub``."""
    # Without a backslash, strings run from one quote to the next (or to the end).
    return _STRING.sub(b"", body) if b"\\" in body else b"".join(body.split(b'"')[::2])


_CONSTANT = re.compile(rb"NaN|Infinity")


async def _send_problem(send: Send, error: AgentIAMError) -> None:
    body = json.dumps(error.to_problem()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"connection", b"close"),
                *_SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


POLICY_PATHS = ("/v1/policies/import",)
INGEST_PATHS = ("/v1/audit/ingest",)


class RequestLimits:
    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.max_body = limits.max_body_bytes
        self.max_policy_body = limits.max_policy_body_bytes
        self.max_ingest_body = limits.max_ingest_body_bytes
        self.max_depth = limits.max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send_with_headers)
            return
        # Policy texts (a whole .cedar file on import) and enforcement points' audit
        # batches get their own, larger bounds.
        max_body = self.max_body
        if scope["path"].startswith(POLICY_PATHS):
            max_body = self.max_policy_body
        elif scope["path"] in INGEST_PATHS:
            max_body = self.max_ingest_body
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_problem(send, BadRequest("Content-Length is not a number"))
                    return
                if declared > max_body:
                    await _send_problem(send, self._too_large(max_body))
                    return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_body:
                await _send_problem(send, self._too_large(max_body))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        # Form bodies (the OAuth endpoints) are never parsed as JSON; every other body
        # may be, so its nesting is bounded before any parser sees it.
        content_type = Headers(scope=scope).get("content-type", "")
        is_form = content_type.startswith("application/x-www-form-urlencoded")
        is_text = content_type.startswith("text/plain")  # .cedar policy text
        if not (is_form or is_text) and (problem := json_body_problem(body, self.max_depth)):
            await _send_problem(send, BadRequest(problem))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)

    def _too_large(self, limit: int) -> PayloadTooLarge:
        name = {
            self.max_policy_body: "MAX_POLICY_BODY_BYTES",
            self.max_ingest_body: "MAX_INGEST_BODY_BYTES",
        }.get(limit, "MAX_BODY_BYTES")
        return PayloadTooLarge(
            f"the request body is larger than {limit} bytes",
            hint=f"Send a smaller body; the limit is AGENTIAM_LIMIT_{name}.",
        )


class Metrics:
    """Request count and latency by method, route template and status."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "agentiam_http_requests_total",
            "HTTP requests handled",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "agentiam_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.requests.labels(scope["method"], template, str(status)).inc()
            self.latency.labels(scope["method"], template).observe(time.perf_counter() - started)
