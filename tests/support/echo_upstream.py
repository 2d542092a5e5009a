"""An upstream API for gateway tests, run as its own process::

    python -m tests.support.echo_upstream PORT

A plain ASGI app under uvicorn that tells what it received and remembers it:

* ``GET /v1/big?n=BYTES`` streams ``n`` bytes (chunked, :func:`pattern` content);
* ``GET /v1/slow?s=SECONDS`` answers after sleeping (for gateway timeouts);
* ``GET /__seen`` (called directly, not through the gateway) lists every request so
  far: method, raw path, query and headers;
* anything else answers JSON: method, raw path, query, headers (in order, as
  received) and the body's length and SHA-256 (read as a stream, never held whole).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

CHUNK = 64 * 1024


def pattern(n: int) -> bytes:
    """The first ``n`` bytes /v1/big sends."""
    block = bytes(range(256)) * (CHUNK // 256)
    return (block * (n // CHUNK + 1))[:n]


class Echo:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        if path == "/__seen":
            return await _json(send, 200, self.seen)
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        self.seen.append(
            {
                "method": scope["method"],
                "raw_path": scope.get("raw_path", b"").decode("latin-1"),
                "query": query,
                "headers": headers,
            }
        )
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                break
        args = parse_qs(query)
        if path == "/v1/big":
            n = int(args.get("n", ["0"])[0])
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")],
                }
            )
            block = pattern(CHUNK)
            sent = 0
            while sent < n:
                piece = block[: min(CHUNK, n - sent)]
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                sent += len(piece)
            await send({"type": "http.response.body", "body": b""})
            return None
        if path == "/v1/slow":
            await asyncio.sleep(float(args.get("s", ["5"])[0]))
        return await _json(
            send,
            200,
            {
                "method": scope["method"],
                "raw_path": scope.get("raw_path", b"").decode("latin-1"),
                "query": query,
                "headers": headers,
                "body_length": size,
                "body_sha256": digest.hexdigest(),
            },
            extra=[(b"connection", b"keep-alive"), (b"x-upstream", b"echo")],
        )


async def _json(
    send: Callable[[dict[str, Any]], Awaitable[None]],
    status: int,
    data: Any,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(data).encode()
    headers = [(b"content-type", b"application/json"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    uvicorn.run(
        Echo(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        lifespan="off",
        access_log=False,
    )


if __name__ == "__main__":
    main()
