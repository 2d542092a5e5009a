"""Real servers for the SDK and guard tests: an ASGI app served by uvicorn with its
lifespan (an MCP server's session manager runs there), and a pure ASGI middleware
that checks every request's DPoP-bound token and proof as an enforcement point does."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from joserfc import jws
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from tests.support.live import serve_in_thread

from agentiam.core.credentials.verifier import AccessTokenVerifier
from agentiam.errors import OAuthError


async def refuse_modern_probe(scope: Scope, receive: Receive, send: Send) -> bool:
    """An upstream of the handshake era answers the SDK client's 2026-07-28 probe as
    such a server does (404, ``Method not found``), so the client falls back to the
    handshake. True when ``scope`` was that probe and has been answered."""
    if scope["type"] != "http":
        return False
    if Headers(scope=scope).get("mcp-protocol-version") not in MODERN_PROTOCOL_VERSIONS:
        return False
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32601, "message": "Method not found"}}
    await JSONResponse(body, status_code=404)(scope, receive, send)
    return True


@contextmanager
def serve_with_lifespan(app: Any) -> Iterator[str]:
    """tests.support.live.serve_in_thread, with the app's lifespan on."""
    with serve_in_thread(app, lifespan="on") as url:
        yield url


@dataclass
class Seen:
    """One request as the checker saw it: its proof's claims and the token."""

    method: str
    url: str
    proof: dict[str, Any]
    token: str
    agent: str


@dataclass
class DPoPChecker:
    """Pure ASGI middleware: verifies ``Authorization: DPoP`` + ``DPoP`` with the
    verifier (RFC 9449 section 7), records what it saw, answers 401 with the
    challenge otherwise."""

    app: ASGIApp
    verifier: AccessTokenVerifier
    seen: list[Seen] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        headers = Headers(scope=scope)
        try:
            access = self.verifier.verify_request(
                authorization=headers.getlist("authorization"),
                dpop=headers.getlist("dpop"),
                method=request.method,
                url=str(request.url),
                now=int(time.time()),
            )
        except OAuthError as exc:
            response = JSONResponse(
                exc.to_oauth(), status_code=exc.oauth_status, headers=exc.headers
            )
            await response(scope, receive, send)
            return
        proof = jws.extract_compact(headers["dpop"].encode()).payload
        self.seen.append(
            Seen(
                method=request.method,
                url=str(request.url),
                proof=json.loads(proof),
                token=headers["authorization"].split(" ", 1)[1],
                agent=access.client_id,
            )
        )
        await self.app(scope, receive, send)
