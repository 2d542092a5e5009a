"""Real HTTP servers on 127.0.0.1 in a thread, and a fake resolver that maps names no
real DNS knows to the addresses a test chooses."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Handler(BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 (keep-alive) request handler with helpers to read a request and
    write an answer."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def request_body(self) -> tuple[dict[str, str], bytes]:
        """The request's headers (names in lower case) and its body."""
        headers = {k.lower(): v for k, v in self.headers.items()}
        return headers, self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Answer ``status`` with ``headers`` and ``body`` (its length added)."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serve_http(
    handler: type[BaseHTTPRequestHandler],
    *,
    tls: ssl.SSLContext | None = None,
    poll: float = 0.05,
    port: int = 0,
) -> Iterator[int]:
    """Serve ``handler`` on 127.0.0.1 (behind ``tls`` when given; on ``port``, or one
    the system picks) and yield the port; stop on exit."""
    httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(poll,), daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


class FakeResolver:
    """``socket.getaddrinfo`` for a few names. Each name maps to a list of answers;
    successive lookups take successive answers (the last one repeats), so a test can
    play a DNS rebinding attacker whose second answer differs from the first."""

    def __init__(self, names: dict[str, Sequence[Sequence[str]]]) -> None:
        self.names = names
        self.calls: list[str] = []

    def __call__(
        self, host: str, port: int, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        answers = self.names.get(host)
        if answers is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        addresses = answers[min(self.calls.count(host), len(answers)) - 1]
        result: list[tuple[Any, ...]] = []
        for address in addresses:
            if ipaddress.ip_address(address).version == 6:
                result.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                result.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return result


def resolver_for(host: str, *addresses: str) -> FakeResolver:
    """A resolver answering ``addresses`` for ``host``, every time."""
    return FakeResolver({host: [list(addresses)]})
