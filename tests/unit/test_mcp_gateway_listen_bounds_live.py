"""The MCP gateway records only the listen streams that really opened, and holds the
bounds on listen streams its configuration sets (``listen_streams``):

1. a ``subscriptions/listen`` request answered with a JSON-RPC error, not a stream,
   is one ``api.request.rejected`` (action ``subscriptions/listen``, the status the
   client got, the error's code and message), never an ``mcp.stream.opened``:
   whether the SDK's handler refused it in a 200 ``application/json`` answer (the
   SDK's own bound on subscriptions), the SDK's transport refused its params (400),
   or a handshake-era session's transport answered it with an error inside a 200 SSE
   stream (the method is not of that era). The refusal is durable before the answer:
   with the spool full the client gets 503, not the SDK's answer;
2. ``listen_streams.max_open_per_agent`` and ``listen_streams.max_open`` (2 and 3
   here) are what the running gateway holds: an agent's third stream is refused with
   an audited 429 while other agents still listen, and past three in all the next is
   refused with an audited 503, whichever agent asks;
3. a listen's first frame is read whole, however many body messages it comes in, up
   to 64 KiB: an error split over pieces is a refusal; a first frame larger than
   that (a real SDK acknowledgement that carries a 70,000-character request id, or
   an event stream whose first event does not end) is refused unread: 502, audited,
   never recorded as opened, no stream held.

Real servers on loopback ports, as in the other listen tests: a control plane
(uvicorn, SQLite), a stateless (2026-07-28) upstream MCP server with the SDK's
``ListenHandler``, and the real gateway, driven by the official SDK client and by raw
HTTP where the client would hide the answer.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tests.api.oauth_support import oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until
from tests.unit.test_mcp_gateway_listen_live import HANDSHAKE, LISTEN, MODERN, Lists, World, _Pinned
from tests.unit.test_mcp_gateway_metrics_live import _register

from agentiam.adapters.gateway.enforcer import STREAM_OPENED_EVENT_TYPE
from agentiam.adapters.gateway.mcp_proxy import build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.sdk import AgentClient
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
SOURCE = "gateway/mcp-listen-bounds"
OPENED = STREAM_OPENED_EVENT_TYPE
REJECTED = "api.request.rejected"
AGENTS = ("refused", "malformed", "handshake", "full", "hog", "second", "third", "late")
AGENTS += ("big-id", "near-bound", "in-pieces", "split-error", "endless")
PER_AGENT, IN_ALL = 2, 3


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    """A control plane, one upstream (``live``) and the gateway with
    ``listen_streams: {max_open: 3, max_open_per_agent: 2}``; every agent is allowed
    everything."""
    tmp = tmp_path_factory.mktemp("mcp-listen-bounds")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    upstreams = {"live": Lists("live")}
    with oauth_live(
        f"sqlite:///{db}", policy_refresh_seconds=0.1, access_token_ttl_seconds=120
    ) as cp:
        c = cp.container
        registered = {who: _register(cp, f"bounds-{who}-bot", url) for who in AGENTS}
        c.policies.put(CTX, "all", text="permit (principal, action, resource);")
        verifier = c.admin_keys.create(CTX, name="mcp-gw", role="verifier", sources=[SOURCE]).secret
        env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        try:
            with serve_in_thread(upstreams["live"].app(), lifespan="on") as live_url:
                urls = {"live": live_url + "/mcp"}
                config = load_config(
                    {
                        "name": SOURCE.removeprefix("gateway/"),
                        "public_url": url,
                        "listen": {"host": "127.0.0.1", "port": port},
                        "control_plane": {"url": cp.url, "key_env": env},
                        "spool": {"directory": str(tmp / "spool")},
                        "servers": [{"name": n, "url": u} for n, u in urls.items()],
                        "catalog_seconds": 3600,
                        "listen_streams": {"max_open": IN_ALL, "max_open_per_agent": PER_AGENT},
                    }
                )
                runtime = GatewayRuntime.start(config.gateway)
                app = build_app(config, runtime)
                with serve_in_thread(app, port, lifespan="on"):
                    clients = {
                        who: AgentClient(cp.url, client_id=i, key=k, resource=url)
                        for who, (i, k) in registered.items()
                    }
                    try:
                        yield World(cp, url, upstreams, urls, clients, runtime, app.state.gateway)
                    finally:
                        for client in clients.values():
                            client.close()
        finally:
            os.environ.pop(env, None)


def _traceparent() -> tuple[str, str]:
    """A W3C traceparent header of a new trace, and its trace id."""
    trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01", trace_id


def _listen(
    world: World,
    who: str,
    *,
    traceparent: str | None = None,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    request_id: str = "raw-listen",
    first_event: bool = False,
) -> tuple[int, str, bytes]:
    """One raw ``subscriptions/listen`` POST at 2026-07-28 as ``who`` (its
    ``params`` replaced when given): the status, the content type and the first
    bytes of the answer (``first_event``: all of its first SSE event; a stream it
    opens is closed after them)."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": LISTEN,
        "params": params
        if params is not None
        else {"notifications": {"toolsListChanged": True}, "_meta": meta},
    }
    sent = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": LISTEN,
        **({"traceparent": traceparent} if traceparent else {}),
        **(headers or {}),
    }
    agent = world.agents[who]
    with (
        httpx2.Client(auth=_Pinned(agent, agent.token().value), timeout=10) as http,
        http.stream("POST", world.url, json=body, headers=sent) as r,
    ):
        first = b""
        for chunk in r.iter_bytes():
            first += chunk
            if not first_event or b"\r\n\r\n" in first:
                break
        return r.status_code, r.headers.get("content-type", ""), first


def _of_trace(world: World, who: str, kind: str, trace_id: str) -> list[dict[str, Any]]:
    return [e for e in world.trail(who, kind) if e["trace"]["trace_id"] == trace_id]


def _refused_not_opened(world: World, who: str, trace_id: str) -> dict[str, Any]:
    """The one ``api.request.rejected`` of the listen in trace ``trace_id``, and no
    ``mcp.stream.opened`` for it: once either is shipped (the listen's one event is
    written before its answer), the other is not there."""
    assert _until(
        lambda: _of_trace(world, who, REJECTED, trace_id) or _of_trace(world, who, OPENED, trace_id)
    ), world.trail(who)
    opened = _of_trace(world, who, OPENED, trace_id)
    assert not opened, f"a listen that opened no stream was recorded as opened: {opened}"
    refusals = _of_trace(world, who, REJECTED, trace_id)
    assert refusals, world.trail(who, REJECTED)
    (event,) = refusals
    assert event["action"] == LISTEN
    assert event["agent_id"] == world.agents[who].client_id
    assert event["outcome"] == "denied"
    return event


# -- 1. only streams that really opened are recorded as opened ----------------------------


def test_a_listen_the_sdk_handler_refuses_in_a_200_answer_is_a_refusal_not_an_opening(
    world: World,
) -> None:
    """The SDK's ``ListenHandler`` refuses a listen past its own bound on
    subscriptions (``INTERNAL_ERROR`` "Subscription limit reached") before it
    acknowledges: the SDK answers it ``200 application/json`` with that JSON-RPC
    error. The gateway sets that bound to ``listen_streams.max_open``, so it admits no
    listen the handler would refuse; to make the handler refuse one, its bound is
    lowered to 0 on the running gateway (as other tests lower the gateway's)."""
    listener = world.gateway._listener
    bound = listener._max_subscriptions
    assert bound == IN_ALL  # the SDK handler's bound is the configured one
    traceparent, trace_id = _traceparent()
    listener._max_subscriptions = 0
    try:
        status, content_type, first = _listen(world, "refused", traceparent=traceparent)
    finally:
        listener._max_subscriptions = bound
    assert status == 200
    assert content_type.startswith("application/json")
    assert b"Subscription limit reached" in first
    event = _refused_not_opened(world, "refused", trace_id)
    assert event["details"]["status"] == 200
    assert event["reason"] == (
        "refused by the MCP server: Subscription limit reached (JSON-RPC error -32603)"
    )
    # the agent's next listen opens a stream, recorded as opened
    traceparent, trace_id = _traceparent()
    assert _listen(world, "refused", traceparent=traceparent)[0] == 200
    assert _until(lambda: _of_trace(world, "refused", OPENED, trace_id))
    assert not _of_trace(world, "refused", REJECTED, trace_id)


def test_a_listen_with_bad_params_is_a_refusal_not_an_opening(world: World) -> None:
    traceparent, trace_id = _traceparent()
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    status, _, first = _listen(
        world,
        "malformed",
        traceparent=traceparent,
        params={"notifications": 5, "_meta": meta},
    )
    assert status == 400
    assert b'"code":-32602' in first
    event = _refused_not_opened(world, "malformed", trace_id)
    assert event["details"]["status"] == 400
    assert event["reason"] == (
        "refused by the MCP transport: invalid params for subscriptions/listen"
    )


def test_a_handshake_era_listen_answered_with_an_error_in_a_200_stream_is_a_refusal(
    world: World,
) -> None:
    """In a handshake-era session the SDK answers a request in a 200 SSE stream, an
    error too: ``subscriptions/listen`` is no method of 2025-11-25
    (``METHOD_NOT_FOUND``). No stream opened: a refusal with status 200."""
    agent = world.agents["handshake"]
    auth = _Pinned(agent, agent.token().value)
    traceparent, trace_id = _traceparent()
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}

    async def go() -> tuple[int, str, str]:
        async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
            init = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": HANDSHAKE,
                    "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"},
                },
            }
            r = await http.post(world.url, json=init, headers=base)
            assert r.status_code == 200, r.text
            session = r.headers["mcp-session-id"]
            headers = {**base, "Mcp-Session-Id": session, "MCP-Protocol-Version": HANDSHAKE}
            done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert (await http.post(world.url, json=done, headers=headers)).status_code == 202
            listen = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": LISTEN,
                "params": {"notifications": {"toolsListChanged": True}},
            }
            r = await http.post(
                world.url, json=listen, headers={**headers, "traceparent": traceparent}
            )
            return r.status_code, r.headers.get("content-type", ""), r.text

    status, content_type, text = anyio.run(go)
    assert status == 200
    assert content_type.startswith("text/event-stream")
    assert '"code":-32601' in text  # METHOD_NOT_FOUND, inside the stream
    event = _refused_not_opened(world, "handshake", trace_id)
    assert event["details"]["status"] == 200
    assert event["reason"].startswith("refused by the MCP transport: ")


@pytest.mark.parametrize("refusal", ["params", "handler"])
def test_a_refused_listen_whose_refusal_cannot_be_recorded_is_answered_503(
    world: World, refusal: str
) -> None:
    """Its refusal is durable before the answer, as every refusal is: with the spool
    full the client gets a 503 problem (``Retry-After``) instead of the SDK's
    answer; once the spool takes events again, the same listen gets the SDK's."""
    spool = world.gateway.runtime.spool
    listener = world.gateway._listener
    limit = listener._max_subscriptions
    params = {"notifications": 5} if refusal == "params" else None

    def listen() -> tuple[int, str, bytes]:
        if refusal == "handler":
            listener._max_subscriptions = 0
        try:
            return _listen(world, "full", params=params)
        finally:
            listener._max_subscriptions = limit

    bound = spool.max_bytes
    spool.max_bytes = 1  # the spool is full: no event fits
    try:
        status, content_type, first = listen()
    finally:
        spool.max_bytes = bound
    assert status == 503, (status, first)
    assert content_type.startswith("application/problem+json")
    assert b"jsonrpc" not in first  # not the SDK's answer
    assert _until(lambda: world.gateway.streams.listens() == 0, timeout=5)
    status, _, first = listen()
    assert status == (400 if refusal == "params" else 200)
    assert b'"error"' in first


# -- 2. the configured bounds --------------------------------------------------------------


def test_the_configured_bounds_are_the_gateways(world: World) -> None:
    streams = world.gateway.streams
    assert (streams.total, streams.per_owner) == (IN_ALL, PER_AGENT)


def test_the_configured_bounds_refuse_one_stream_too_many_per_agent_and_in_all(
    world: World,
) -> None:
    """``hog`` holds its 2 (its own bound): its third is refused 429 while ``second``
    still gets one (the gateway's third); then ``third`` is refused 503 (the bound in
    all), though it holds none. Once the streams close, ``third`` listens."""
    over_agent, over_all = _traceparent(), _traceparent()

    async def go() -> tuple[int, int, int]:
        async with (
            world.client("hog") as hog,
            world.client("second") as second,
            hog.listen(tools_list_changed=True),
            hog.listen(tools_list_changed=True),
        ):
            assert world.gateway.streams.listens() == PER_AGENT
            mine = await anyio.to_thread.run_sync(
                lambda: _listen(world, "hog", traceparent=over_agent[0])
            )
            async with second.listen(tools_list_changed=True):
                assert world.gateway.streams.listens() == IN_ALL
                full = await anyio.to_thread.run_sync(
                    lambda: _listen(world, "third", traceparent=over_all[0])
                )
        after = await anyio.to_thread.run_sync(lambda: _listen(world, "third"))
        return mine[0], full[0], after[0]

    mine, full, after = anyio.run(go)
    assert mine == 429
    assert full == 503
    assert after == 200
    refused = _refused_not_opened(world, "hog", over_agent[1])
    assert refused["details"]["status"] == 429
    assert refused["reason"] == f"more than {PER_AGENT} open listen streams"
    refused = _refused_not_opened(world, "third", over_all[1])
    assert refused["details"]["status"] == 503
    assert refused["reason"] == f"the gateway holds {IN_ALL} listen streams; retry later"


# -- 3. the first frame, whole and bounded ---------------------------------------------------

BOUND_REASON = (
    "the first frame of the MCP server's answer is larger than 64 KiB: not checked, refused"
)


@contextmanager
def _sdk_wrapped(world: World, wrap: Callable[[ASGIApp], ASGIApp]) -> Iterator[None]:
    """The gateway's SDK app (the session manager's, behind the endpoint) wrapped."""
    sessions = world.gateway.sessions
    inner = sessions.asgi_app
    sessions.asgi_app = wrap(inner)
    try:
        yield
    finally:
        sessions.asgi_app = inner


def _in_pieces(size: int) -> Callable[[ASGIApp], ASGIApp]:
    """The SDK's answer, each body message sent in pieces of ``size`` bytes."""

    def wrap(inner: ASGIApp) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            async def pieces(message: Message) -> None:
                body = message.get("body", b"")
                if message["type"] != "http.response.body" or len(body) <= size:
                    await send(message)
                    return
                more = bool(message.get("more_body"))
                for at in range(0, len(body), size):
                    last = at + size >= len(body)
                    piece = body[at : at + size]
                    await send(
                        {"type": "http.response.body", "body": piece, "more_body": more or not last}
                    )

            await inner(scope, receive, pieces)

        return app

    return wrap


def _answering(*pieces: bytes, then_wait: bool = False) -> Callable[[ASGIApp], ASGIApp]:
    """In place of the SDK: a 200 event stream of these body messages (then held
    open for 30 s with ``then_wait``), then its end."""

    def wrap(inner: ASGIApp) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            sse = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": sse})
            for piece in pieces:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            if then_wait:
                await anyio.sleep(30)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        return app

    return wrap


def test_a_real_acknowledgement_over_64_kib_is_refused_unread(world: World) -> None:
    """The SDK's acknowledgement names the listen's request id (``_meta``), so a
    70,000-character id makes its first frame larger than the 64 KiB the gateway
    reads: it is refused (502, a JSON-RPC error, no byte of the SDK's stream),
    audited, never recorded as opened, and no stream stays held for it."""
    traceparent, trace_id = _traceparent()
    status, content_type, first = _listen(
        world, "big-id", traceparent=traceparent, request_id="i" * 70_000
    )
    assert status == 502, first[:200]
    assert content_type.startswith("application/json")
    assert b"event:" not in first
    assert b"iiii" not in first
    answer = json.loads(first)
    assert answer["error"]["message"] == BOUND_REASON
    event = _refused_not_opened(world, "big-id", trace_id)
    assert event["details"]["status"] == 502
    assert event["reason"] == BOUND_REASON
    assert _until(lambda: world.gateway.streams.listens() == 0, timeout=5)


def _opened_with_ack(
    world: World, who: str, trace_id: str, status: int, first: bytes, request_id: str
) -> None:
    """The listen opened: its first event, whole, is the acknowledgement naming its
    request id, and it is recorded as opened, not refused."""
    assert status == 200
    data = first.split(b"\r\n\r\n", 1)[0].split(b"data: ", 1)[1]
    ack = json.loads(data)
    assert ack["method"] == "notifications/subscriptions/acknowledged"
    assert request_id in json.dumps(ack)
    assert _until(lambda: _of_trace(world, who, OPENED, trace_id))
    assert not _of_trace(world, who, REJECTED, trace_id)


def test_an_acknowledgement_within_64_kib_opens_and_arrives_whole(world: World) -> None:
    traceparent, trace_id = _traceparent()
    request_id = "n" * 60_000
    status, _, first = _listen(
        world, "near-bound", traceparent=traceparent, request_id=request_id, first_event=True
    )
    _opened_with_ack(world, "near-bound", trace_id, status, first, request_id)


def test_an_acknowledgement_in_pieces_opens_and_arrives_whole(world: World) -> None:
    """The SDK's answer in 512-byte body messages: the gateway holds the start and
    the pieces until the first event ends, then sends them all, in order."""
    traceparent, trace_id = _traceparent()
    request_id = "p" * 10_000
    with _sdk_wrapped(world, _in_pieces(512)):
        status, _, first = _listen(
            world, "in-pieces", traceparent=traceparent, request_id=request_id, first_event=True
        )
    _opened_with_ack(world, "in-pieces", trace_id, status, first, request_id)


def test_an_error_split_over_pieces_of_a_200_stream_is_a_refusal(world: World) -> None:
    """A JSON-RPC error as the first event of a 200 event stream, in three body
    messages: read whole, it is the refusal it is, not an opening."""
    error = {"jsonrpc": "2.0", "id": "raw-listen", "error": {"code": -32603, "message": "nope"}}
    whole = b"event: message\r\ndata: " + json.dumps(error).encode() + b"\r\n\r\n"
    third = len(whole) // 3
    pieces = (whole[:third], whole[third : 2 * third], whole[2 * third :])
    traceparent, trace_id = _traceparent()
    with _sdk_wrapped(world, _answering(*pieces)):
        status, _, first = _listen(world, "split-error", traceparent=traceparent)
    assert status == 200
    assert first.startswith(b"event: message")
    event = _refused_not_opened(world, "split-error", trace_id)
    assert event["details"]["status"] == 200
    assert event["reason"] == "refused by the MCP server: nope (JSON-RPC error -32603)"


def test_a_first_event_that_does_not_end_within_64_kib_is_refused(world: World) -> None:
    """A 200 event stream whose first event goes on past 64 KiB (100 pieces of 1 KiB,
    no empty line), then stays open: refused once past the bound (502), audited,
    never recorded as opened, and the stream is ended, not held."""
    pieces = (b"data: ",) + (b"x" * 1024,) * 100
    traceparent, trace_id = _traceparent()
    with _sdk_wrapped(world, _answering(*pieces, then_wait=True)):
        status, content_type, first = _listen(world, "endless", traceparent=traceparent)
        assert _until(lambda: world.gateway.streams.listens() == 0, timeout=5)
    assert status == 502
    assert content_type.startswith("application/json")
    assert b"xxxx" not in first
    event = _refused_not_opened(world, "endless", trace_id)
    assert event["details"]["status"] == 502
    assert event["reason"] == BOUND_REASON
