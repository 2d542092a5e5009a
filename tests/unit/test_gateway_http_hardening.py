"""The HTTP gateway against a hostile client or a faulty upstream (review r1): an answer
never goes to the wrong request, a path a servlet container reads another way is
refused, a non-idempotent request is never sent twice, the listener bounds the
request head in size and time, and a client that leaves or stalls ends the call as
a failure of its own. Real servers on loopback ports: the gateway under uvicorn with
the options ``run()`` uses, upstreams that play exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from tests.support.live import free_port
from tests.unit.gateway_support import AGENT, GATEWAY, Parties
from tests.unit.test_gateway_http import OK, Action, App, _config, _problem, _Request, _runtime

from agentiam.adapters.gateway.http_proxy import (
    MAX_HEAD,
    HttpGateway,
    ListenerProtocol,
    PathRejected,
    load_config,
    split_path,
    uvicorn_options,
)


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def _rebuild(app: App, **changes: Any) -> dict[str, Any]:
    """``_config(**changes)`` with both upstreams on ``app``'s test upstream, to change
    further and serve with :func:`_apply`."""
    config = _config(**changes)
    url = f"http://127.0.0.1:{app.upstream.port}"
    config["upstreams"]["billing"]["url"] = url + "/base"
    config["upstreams"]["plain"]["url"] = url
    return config


def _apply(app: App, config: dict[str, Any], parties: Parties | None = None) -> None:
    if parties is not None:
        app.parties = parties
    broker = app.gateway.runtime.broker
    app.gateway = HttpGateway(load_config(config), _runtime(app.parties, broker))


@pytest.fixture
def app(tmp_path: Path) -> App:
    return App(tmp_path)


def _outcome(app: App) -> dict[str, Any]:
    [event] = [e for e in app.events() if e["type"] == "tool.call"]
    return event


# -- r1 3: one answer per request ------------------------------------------------------------


def test_bytes_after_a_response_are_never_the_next_calls_answer(app: App) -> None:
    """The upstream sends one more response after the first (while the connection is
    idle in the pool): it is dropped with that connection, and each call gets its
    own answer."""
    seen: list[bytes] = []

    def reply(request: _Request) -> list[Action]:
        seen.append(request.target)
        if len(seen) == 1:
            return [_ok(b"for call 1"), 0.05, _ok(b"STRAY")]
        return [_ok(b"for call %d" % len(seen))]

    app.upstream.reply = reply

    async def pause() -> None:
        await asyncio.sleep(0.2)  # the stray bytes are in the idle connection's buffer

    calls = [("GET", f"/v1/invoices/{i}", True, {}) for i in (1, 2, 3)]
    responses = asyncio.run(app.requests(calls, after_each=pause))
    assert [r.content for r in responses] == [b"for call 1", b"for call 2", b"for call 3"]
    assert app.upstream.connections == 2  # the poisoned connection was not reused


@pytest.mark.parametrize(
    "extra",
    [
        b"HTTP/1.1 302 Found\r\nlocation: https://evil.example/\r\ncontent-length: 0\r\n\r\n",
        b"garbage",
    ],
)
def test_bytes_in_the_same_read_do_not_replace_the_answer(app: App, extra: bytes) -> None:
    app.upstream.reply = lambda _r: [_ok(b"real") + extra]
    calls = [("GET", "/v1/invoices/1", True, {}), ("GET", "/v1/invoices/2", True, {})]
    first, second = asyncio.run(app.requests(calls))
    assert (first.status_code, first.content) == (200, b"real")
    assert "location" not in first.headers
    assert (second.status_code, second.content) == (200, b"real")
    assert app.upstream.connections == 2


def test_a_body_sent_to_a_no_body_answer_closes_the_connection(app: App) -> None:
    """A 204 with bytes after it: the answer is relayed, the connection dropped."""
    app.upstream.reply = lambda _r: [b"HTTP/1.1 204 No Content\r\n\r\n" + _ok(b"x")]
    calls = [("GET", "/v1/invoices/1", True, {}), ("GET", "/v1/invoices/2", True, {})]
    responses = asyncio.run(app.requests(calls))
    assert [(r.status_code, r.content) for r in responses] == [(204, b""), (204, b"")]
    assert app.upstream.connections == 2


# -- r1 8: status codes ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [b"999", b"600", b"099", b"101"])
def test_a_status_outside_200_to_599_is_502_and_audited(app: App, status: bytes) -> None:
    app.upstream.reply = lambda _r: [b"HTTP/1.1 %s X\r\ncontent-length: 0\r\n\r\n" % status]
    _problem(app.request("GET", "/v1/invoices/7"), 502)
    outcome = _outcome(app)
    assert (outcome["outcome"], outcome["details"]["status"]) == ("failure", 502)


def test_an_unknown_interim_status_is_skipped(app: App) -> None:
    app.upstream.reply = lambda _r: [b"HTTP/1.1 150 Odd\r\n\r\n" + OK]
    r = app.request("GET", "/v1/invoices/7")
    assert (r.status_code, r.json()) == (200, {"ok": True})


# -- r1 2: ';' path parameters ---------------------------------------------------------------


def test_a_semicolon_in_the_path_is_refused_and_audited(tmp_path: Path) -> None:
    """Tomcat, Jetty and Spring drop ``;x`` from a segment before routing: policy must
    not decide on ``invoice-export;x`` while the upstream serves ``export``."""
    policy = (
        f'permit (principal == Agent::"{AGENT}", action == Action::"GET", resource);\n'
        'forbid (principal, action, resource == Endpoint::"export");'
    )
    app = App(tmp_path)
    _apply(app, _rebuild(app), Parties(policy))
    calls = [
        ("GET", "/v1/invoices/export", True, {}),
        ("GET", "/v1/invoices/export;x", True, {}),
        ("GET", "/v1/invoices/7;jsessionid=1", True, {}),
    ]
    denied, *refused = asyncio.run(app.requests(calls))
    assert denied.status_code == 403
    for r in refused:
        assert "';' path parameter" in _problem(r, 400)["detail"]
    assert app.upstream.requests == []
    rejected = [e for e in app.events() if e["type"] == "api.request.rejected"]
    assert [e["details"]["status"] for e in rejected] == [400, 400]


def test_an_encoded_semicolon_is_data() -> None:
    assert split_path(b"/v1/a%3Bb") == ("v1", "a;b")
    for raw in (b"/v1/a;b", b"/v1;x/a", b"/v1/a;"):
        with pytest.raises(PathRejected):
            split_path(raw)


def test_a_route_with_a_semicolon_is_a_config_error() -> None:
    config = _config()
    config["routes"][0]["match"]["path"] = "/v1/a;b"
    with pytest.raises(ValueError, match=r"routes\[0\]\.match\.path: .*';'"):
        load_config(config)


# -- r1 4: no automatic retry of non-idempotent requests --------------------------------------


def test_a_post_is_never_sent_twice(app: App) -> None:
    """The upstream takes the POST and drops the reused connection without answering
    (it may have acted on it): 502, and the POST went once (RFC 9112 9.3.1.1)."""
    config = _rebuild(app)
    config["routes"].append(
        {"match": {"method": "POST", "path": "/v1/invoices/{id}/pay"}, "upstream": "billing",
         "action": "GET", "resource": {"type": "Endpoint", "id": "pay-{id}"}}
    )  # fmt: skip
    _apply(app, config)
    app.upstream.reply = lambda r: [OK] if r.method == "GET" else [None]  # type: ignore[attr-defined]
    calls = [("GET", "/v1/invoices/1", True, {}), ("POST", "/v1/invoices/1/pay", True, {})]
    responses = asyncio.run(app.requests(calls))
    assert [r.status_code for r in responses] == [200, 502]
    assert [r.method for r in app.upstream.requests] == ["GET", "POST"]  # type: ignore[attr-defined]


# -- r1 6 and 7: what the upstream is sent ---------------------------------------------------


def test_content_length_zero_is_forwarded(app: App) -> None:
    r = app.request("GET", "/v1/invoices/7", headers={"Content-Length": "0"})
    assert r.status_code == 200
    [sent] = app.upstream.requests
    assert (sent.header("content-length"), sent.header("transfer-encoding")) == ("0", None)


def test_the_public_urls_own_path_is_sent_as_the_root(app: App) -> None:
    _apply(app, _rebuild(app, public_url=GATEWAY + "/billing"))
    calls = [("GET", "/billing", True, {}), ("GET", "/billing?x=1", True, {})]
    responses = asyncio.run(app.requests(calls))
    assert [r.status_code for r in responses] == [200, 200]
    assert [r.target for r in app.upstream.requests] == [b"/", b"/?x=1"]


# -- under uvicorn, as run() serves it ----------------------------------------------------


@asynccontextmanager
async def _served(app: App) -> AsyncIterator[int]:
    """``app``'s gateway under uvicorn with :func:`uvicorn_options` (the upstream too);
    yields the gateway's port."""
    upstream = await app.upstream.serve()
    port = free_port()
    options = uvicorn_options(app.gateway.config) | {
        "host": "127.0.0.1",
        "port": port,
        "log_level": "warning",
    }
    server = uvicorn.Server(uvicorn.Config(app.gateway, **options))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task
        if upstream is not None:
            upstream.close()


def _auth(app: App, method: str, path: str) -> bytes:
    signed = app.parties.headers(method, GATEWAY + path.split("?")[0])
    return b"Authorization: %s\r\nDPoP: %s\r\n" % (
        signed["authorization"][0].encode(),
        signed["dpop"][0].encode(),
    )


CLOSED: list[bool] = []  # per _exchange: whether the gateway closed the connection


def _get(app: App, path: str) -> bytes:
    """A whole GET request with a fresh token and proof."""
    return b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path.encode(), _auth(app, "GET", path))


async def _exchange(port: int, data: bytes, *, wait: float = 2.0) -> bytes:
    """Send ``data``, read until the gateway closes (or ``wait`` passes in silence)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    closed = False
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), wait):
            out += chunk
        closed = True
    except TimeoutError:
        pass
    finally:
        writer.close()
    CLOSED.append(closed)
    return out


def _run(app: App, client: Callable[[int], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with _served(app) as port:
            return await client(port)

    return asyncio.run(main())


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def quick_head(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ListenerProtocol, "head_timeout", 0.3)


def test_a_websocket_upgrade_is_plain_http_authenticated_and_audited(app: App) -> None:
    """ws="none": no token is a 401 problem, audited; with one, the call is forwarded
    without its Upgrade (hop-by-hop) and the connection ends with the answer."""
    upgrade = (
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )

    async def client(port: int) -> list[bytes]:
        head = b"GET /v1/invoices/7 HTTP/1.1\r\nHost: x\r\n" + upgrade
        return [
            await _exchange(port, head + b"\r\n"),
            await _exchange(port, head + _auth(app, "GET", "/v1/invoices/7") + b"\r\n"),
        ]

    CLOSED.clear()
    anonymous, allowed = _run(app, client)
    assert _status(anonymous) == 401
    assert b"application/problem+json" in anonymous
    assert _status(allowed) == 200
    assert CLOSED == [True, True]
    assert allowed.endswith(b'{"ok": true}')
    [sent] = app.upstream.requests
    assert sent.header("upgrade") is None
    assert sent.header("connection") is None
    types = [e["type"] for e in app.events()]
    assert types == ["api.request.rejected", "authz.decision", "tool.call"]


def test_the_listener_refuses_an_overlong_request_target_with_414(app: App) -> None:
    async def client(port: int) -> bytes:
        return await _exchange(port, b"GET /v1/" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n")

    answer = _run(app, client)
    assert _status(answer) == 414
    assert b"application/problem+json" in answer
    assert b"connection: close" in answer


def test_the_listener_refuses_an_overlong_head_before_reading_it_all(app: App) -> None:
    """One header of many MiB without a token: 431 once the head passes MAX_HEAD, and
    the connection is closed while the client is still sending."""

    async def client(port: int) -> tuple[bytes, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/invoices/7 HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        answer = b""
        try:
            for _ in range(64):  # up to 64 MiB
                writer.write(b"a" * (1 << 20))
                await writer.drain()
                sent += 1
                await asyncio.sleep(0)
            answer = await asyncio.wait_for(reader.read(4096), 2)
        except ConnectionError:
            pass  # closed with the client's bytes unread: a reset may overtake the 431
        writer.close()
        return answer, sent

    answer, sent = _run(app, client)
    assert sent < 64  # cut off while sending
    assert answer == b"" or _status(answer) == 431
    assert app.events() == []


@pytest.mark.parametrize("reads", [1, 8])
def test_many_headers_past_the_bound_are_431(app: App, reads: int) -> None:
    """Whether the head comes in one read or several; one just under it is served."""
    fields = b"".join(b"X-H%03d: %s\r\n" % (i, b"v" * 100) for i in range(MAX_HEAD // 100))
    small = b"".join(b"X-H%03d: %s\r\n" % (i, b"v" * 100) for i in range(MAX_HEAD // 120))

    async def client(port: int) -> tuple[bytes, bytes]:
        head = b"GET /v1/invoices/7 HTTP/1.1\r\n" + fields + b"\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        step = len(head) // reads + 1
        for i in range(0, len(head), step):
            writer.write(head[i : i + step])
            await writer.drain()
            await asyncio.sleep(0.01)
        big = await asyncio.wait_for(reader.read(), 2)
        writer.close()
        request = _get(app, "/v1/invoices/7").replace(b"Host: x\r\n", b"Host: x\r\n" + small)
        return big, await _exchange(port, request, wait=0.5)

    big, under = _run(app, client)
    assert _status(big) == 431
    assert _status(under) == 200


def test_a_head_that_does_not_complete_in_time_is_closed(app: App, quick_head: None) -> None:
    """A trickled head gets 408 and the connection closes; a connection that sends
    nothing is closed too; a complete request on a new connection is served."""

    async def client(port: int) -> tuple[bytes, float, bytes, float, int]:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = asyncio.create_task(reader.read())
        with contextlib.suppress(ConnectionError):
            for byte in b"GET /v1/invoices/7 HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60:
                if answer.done():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
        trickled = await asyncio.wait_for(answer, 2)
        trickled_after = time.monotonic() - started
        writer.close()
        started = time.monotonic()
        idle = await _exchange(port, b"", wait=3)
        idle_after = time.monotonic() - started
        whole = await _exchange(port, _get(app, "/v1/invoices/7"), wait=0.6)
        return trickled, trickled_after, idle, idle_after, _status(whole)

    trickled, trickled_after, idle, idle_after, status = _run(app, client)
    assert _status(trickled) == 408
    assert b"connection: close" in trickled
    assert 0.25 < trickled_after < 2.5
    assert idle == b""
    assert idle_after < 2.5  # closed by the gateway, not by _exchange's wait
    assert status == 200


def test_keep_alive_and_pipelining_still_work_under_the_listener(app: App) -> None:
    async def client(port: int) -> bytes:
        two = _get(app, "/v1/invoices/7") + _get(app, "/v1/invoices/8")
        return await _exchange(port, two, wait=0.5)

    answer = _run(app, client)
    assert answer.count(b"HTTP/1.1 200 OK") == 2


# -- r1 5 and 10: a client that leaves or stalls --------------------------------------------


def test_a_client_leaving_mid_response_stops_the_upstream_read(app: App) -> None:
    """The client closes after the first chunk of a slow stream: the gateway cuts the
    upstream connection at once and records the call as failed by the client."""
    cut: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        started = time.monotonic()
        try:
            for _ in range(40):  # 4 s of body
                writer.write(b"6\r\nchunk\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.1)
                if reader.at_eof():
                    break
        except ConnectionError:
            pass
        cut.append(time.monotonic() - started)
        writer.close()

    async def client(port: int) -> float:
        upstream = await asyncio.start_server(handle, "127.0.0.1", app.upstream.port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_get(app, "/v1/invoices/7"))
            await reader.readuntil(b"chunk\n")
            writer.close()
            left = time.monotonic()
            while not any(e["type"] == "tool.call" for e in app.events()):
                assert time.monotonic() - left < 3, "no tool.call"
                await asyncio.sleep(0.02)
            recorded = time.monotonic() - left
            while not cut:
                await asyncio.sleep(0.02)
            return recorded
        finally:
            upstream.close()

    app.upstream.down = True  # the test's own upstream above serves instead
    recorded = _run(app, client)
    assert recorded < 2.0
    assert cut[0] < 2.5  # the upstream saw its connection end, not the whole 4 s body
    outcome = _outcome(app)
    assert (outcome["outcome"], outcome["details"]["status"]) == ("failure", 200)
    assert outcome["details"]["error"] == "ClientDisconnected"
    assert 'agentiam_gateway_calls_total{outcome="client_gone"} 1.0' in _metrics(app)


def test_a_stalled_request_body_is_408(app: App) -> None:
    """The client sends part of its body, then nothing for longer than timeouts.read
    (0.5 s here): 408, audited as the client's failure, not the upstream's 504."""
    path = "/v1/invoices/7"

    async def client(port: int) -> tuple[bytes, float]:
        started = time.monotonic()
        head = b"GET %s HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n%s\r\n" % (
            path.encode(),
            _auth(app, "GET", path),
        )
        answer = await _exchange(port, head + b"12345", wait=3)
        return answer, time.monotonic() - started

    answer, took = _run(app, client)
    assert _status(answer) == 408
    assert b"connection: close" in answer
    assert 0.4 < took < 3
    outcome = _outcome(app)
    assert (outcome["outcome"], outcome["details"]["status"]) == ("failure", 408)
    assert outcome["details"]["error"] == "ClientTimeout"
    text = _metrics(app)
    assert 'agentiam_gateway_calls_total{outcome="client_timeout"} 1.0' in text
    assert 'outcome="upstream_timeout"' not in text


def _metrics(app: App) -> str:
    from prometheus_client import generate_latest

    return generate_latest(app.gateway.metrics.registry).decode()
