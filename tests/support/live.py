"""A real uvicorn server on a free loopback port, run in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_in_thread(
    app: Any, port: int | None = None, *, lifespan: str = "off", **options: Any
) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 and yield its base URL; stop it on exit.
    ``lifespan="on"`` runs the app's startup and shutdown (an MCP server needs it);
    ``options``: more ``uvicorn.Config`` keywords (a gateway's ``proxy_headers=False``,
    as ``uvicorn_options`` serves it)."""
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan=lifespan,
        # as `agentiam serve` (shutdown_grace_seconds): a held long poll of a gateway
        # stopped before this server must not keep it up for the poll's whole wait
        timeout_graceful_shutdown=1,
        **options,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` every 50 ms until it returns something truthy, or ``timeout``
    seconds pass; its last value either way (events ship asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
