"""The MCP gateway's long-lived streams (adapters/gateway/mcp_listen.py, the endpoint's
``_streamed``) beyond revocation, expiry and the outage bound
(test_mcp_gateway_listen_live.py):

1. a signing key the control plane retires (rotation after a compromise) ends every
   open stream whose token it signed, within about a second of the retirement, with
   the ``invalid_token`` error a request with that token gets; the end is audited;
2. past the bound on listen streams in all (1,024, lowered on the running gateway
   here) one more is refused with an audited 503; a stale revocation set (the feed
   stopped) ends an open stream with the 503 a request would get, audited;
3. each admitted stream (a ``subscriptions/listen`` stream, a handshake-era GET
   stream) is one ``mcp.stream.opened`` event (agent, subject, servers, kind, trace),
   durable before the stream's first byte: a stream whose opening cannot be
   recorded is refused (503) and not served; a refused stream records none.

Real servers on loopback ports, as in the listen tests: a control plane (uvicorn,
SQLite), a stateless (2026-07-28) upstream MCP server, and the real gateway, driven by
the official SDK client and by raw HTTP. The tests that retire the signing key or stop
the revocation feed get a control plane and a gateway of their own.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError
from tests.api.oauth_support import oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until
from tests.unit.test_mcp_gateway_listen_live import (
    HANDSHAKE,
    LISTEN,
    MODERN,
    Lists,
    World,
    _drain,
    _held_until_it_ends,
    _Pinned,
)
from tests.unit.test_mcp_gateway_metrics_live import _register

from agentiam.adapters.gateway.enforcer import STREAM_OPENED_EVENT_TYPE
from agentiam.adapters.gateway.mcp_proxy import MAX_LISTEN_STREAMS, build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.sdk import AgentClient
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
SOURCE = "gateway/mcp-streams"
OPENED = STREAM_OPENED_EVENT_TYPE


@contextmanager
def _world(
    tmp: Path,
    sqlite_template: Path,
    agents: tuple[str, ...],
    *,
    outage_seconds: float = 300,
    jwks_refresh_seconds: float = 60,
    audit: dict[str, Any] | None = None,
) -> Iterator[World]:
    """A control plane, one upstream (``live``) and the gateway, every agent allowed
    everything (``audit``: the gateway's ``audit`` section, when given)."""
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    upstreams = {"live": Lists("live")}
    with oauth_live(
        f"sqlite:///{db}", policy_refresh_seconds=0.1, access_token_ttl_seconds=120
    ) as cp:
        c = cp.container
        registered = {who: _register(cp, f"streams-{who}-bot", url) for who in agents}
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
                        "control_plane": {
                            "url": cp.url,
                            "key_env": env,
                            "outage_seconds": outage_seconds,
                            "jwks_refresh_seconds": jwks_refresh_seconds,
                        },
                        "spool": {"directory": str(tmp / "spool")},
                        "servers": [{"name": n, "url": u} for n, u in urls.items()],
                        "catalog_seconds": 3600,
                        **({"audit": audit} if audit is not None else {}),
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


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    agents = ("opener", "getter", "crowd", "late", "unrecorded")
    with _world(tmp_path_factory.mktemp("mcp-streams"), sqlite_template, agents) as w:
        yield w


def _traceparent() -> tuple[str, str]:
    """A W3C traceparent header of a new trace, and its trace id."""
    trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01", trace_id


def _listen_request(world: World, who: str, headers: dict[str, str] | None = None) -> Any:
    """The raw ``subscriptions/listen`` POST at 2026-07-28 as ``who``: (auth, body,
    headers) for ``httpx2``."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": "raw-listen",
        "method": LISTEN,
        "params": {"notifications": {"toolsListChanged": True}, "_meta": meta},
    }
    sent = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": LISTEN,
        **(headers or {}),
    }
    agent = world.agents[who]
    return _Pinned(agent, agent.token().value), body, sent


def _listen_once(world: World, who: str, headers: dict[str, str] | None = None) -> httpx2.Response:
    """One raw listen; a stream it opens is closed after its first bytes."""
    auth, body, sent = _listen_request(world, who, headers)
    with (
        httpx2.Client(auth=auth, timeout=10) as http,
        http.stream("POST", world.url, json=body, headers=sent) as r,
    ):
        if r.status_code == 200:
            next(r.iter_bytes())  # the acknowledgement: the stream was open
        else:
            r.read()
        return r


def _kid(token: str) -> str:
    header = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


# -- 1. a retired signing key ends the streams its tokens opened ---------------------------


def test_a_retired_signing_key_ends_an_open_listen_stream_within_about_a_second(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """Key rotation after a compromise: the control plane rotates in a new key at
    once and retires the one that signed the stream's token (its admin API, as
    ``agentiam keys rotate --immediate`` and ``agentiam keys retire`` do). The
    retirement reaches the gateway by the revocation feed it long-polls, and the
    stream ends within the watch's 0.1 s after that, with the error a request with
    that token now gets (401 ``invalid_token``), audited as the other ends are. The
    gateway's JWKS safety net is set to an hour (15 minutes used: a quarter of the
    outage bound), so the push alone does it."""
    with _world(
        tmp_path,
        sqlite_template,
        ("compromised",),
        outage_seconds=3600,
        jwks_refresh_seconds=3600,
    ) as world:
        assert world.runtime.link.keys_interval() == 900
        agent = world.agents["compromised"]
        token = agent.token().value
        kid = _kid(token)
        ended: list[tuple[float, BaseException | None]] = []
        retired_at: list[float] = []

        def rotate_and_retire() -> None:
            with world.cp.admin_client() as admin:
                r = admin.post("/v1/signing-keys/rotate", json={"immediate": True})
                assert r.status_code == 201, r.text
                assert r.json()["kid"] != kid
                r = admin.post(f"/v1/signing-keys/{kid}/retire", json={"reason": "compromised"})
                assert r.status_code == 200, r.text
            retired_at.append(time.time())

        async def go() -> None:
            async with (
                world.client("compromised", auth=_Pinned(agent, token)) as c,
                c.listen(tools_list_changed=True) as sub,
            ):

                async def retire() -> None:
                    await anyio.sleep(0.5)
                    await anyio.to_thread.run_sync(rotate_and_retire)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(retire)
                    with anyio.move_on_after(10):
                        ended.append(await _held_until_it_ends(sub))

        anyio.run(go)
        assert retired_at, "the key was not retired"
        assert ended, "the listen stream outlived the retirement of its token's signing key"
        at, why = ended[0]
        took = at - retired_at[0]
        assert took < 1.6, f"the stream ended {took:.2f} s after the key was retired"
        assert isinstance(why, MCPError)
        assert "signing key no longer published" in why.message
        # a new request with that token is refused as the stream was ended
        refused = _listen_once_with(world, "compromised", token)
        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]

        def ends() -> list[dict[str, Any]]:
            return [
                e
                for e in world.trail("compromised")
                if e["action"] == LISTEN
                and e["details"]["status"] == 401
                and "stream ended" in e["reason"]
                and "signing key no longer published" in e["reason"]
            ]

        assert _until(ends), world.trail("compromised")


def _listen_once_with(world: World, who: str, token: str) -> httpx2.Response:
    """One raw listen as ``who`` with the given ``token``."""
    _, body, sent = _listen_request(world, who)
    with httpx2.Client(auth=_Pinned(world.agents[who], token), timeout=10) as http:
        r = http.post(world.url, json=body, headers=sent)
        return r


# -- 2. the bound in all, and a stale revocation set ----------------------------------------


def test_the_default_bound_on_listen_streams_in_all_is_1024(world: World) -> None:
    assert MAX_LISTEN_STREAMS == 1024
    assert world.gateway.streams.total == 1024


def test_past_the_bound_in_all_one_more_listen_stream_is_refused_503(world: World) -> None:
    """The bound on listen streams in all (lowered to 2 on the running gateway, as
    the outage test lowers its bound): two streams of one agent are held, another
    agent's third is refused with 503 (the gateway's bound, not the agent's own
    429), audited with the action ``subscriptions/listen``; once one closes, it is
    admitted."""
    streams = world.gateway.streams
    bound = streams.total
    streams.total = 2

    async def go() -> tuple[int, int, str]:
        async with world.client("crowd") as c:
            async with c.listen(tools_list_changed=True), c.listen(tools_list_changed=True):
                assert streams.listens() == 2
                over = await anyio.to_thread.run_sync(lambda: _listen_once(world, "late"))
            after = await anyio.to_thread.run_sync(lambda: _listen_once(world, "late"))
        text = "(a stream)" if over.status_code == 200 else over.text
        return over.status_code, after.status_code, text

    try:
        over, after, text = anyio.run(go)
    finally:
        streams.total = bound
    assert over == 503, text
    assert "the gateway holds 2 listen streams; retry later" in text
    assert after == 200

    def refused() -> list[dict[str, Any]]:
        return [
            e
            for e in world.trail("late")
            if e["action"] == LISTEN and e["details"]["status"] == 503
        ]

    assert _until(refused), world.trail("late")
    # the refused stream was never opened: "late" has one mcp.stream.opened, the one after
    assert _until(lambda: len(world.trail("late", OPENED)) == 1), world.trail("late", OPENED)


def test_a_stale_revocation_set_ends_an_open_listen_stream_with_503(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """The gateway's revocation feed stops (its thread stopped; the control plane and
    the bundle poll stay up) and the set goes stale past the bound (2 s here): every
    token is refused with 503, so the open stream ends with that cause (not the
    outage bound's), audited with status 503."""
    with _world(tmp_path, sqlite_template, ("stale",), outage_seconds=2) as world:
        feed = world.runtime.link.remote.feed

        async def go() -> tuple[float, BaseException | None] | None:
            async with world.client("stale") as c, c.listen(tools_list_changed=True) as sub:
                await anyio.to_thread.run_sync(feed.stop)
                with anyio.move_on_after(10):
                    return await _held_until_it_ends(sub)
            return None

        stopped = time.time()
        ended = anyio.run(go)
        assert ended is not None, "the listen stream outlived a stale revocation set"
        at, why = ended
        assert at - stopped < 2 + 1.5
        assert isinstance(why, MCPError)
        assert "revocation feed stale" in why.message

        def ends() -> list[dict[str, Any]]:
            return [
                e
                for e in world.trail("stale")
                if e["action"] == LISTEN
                and e["details"]["status"] == 503
                and "revocation feed stale" in e["reason"]
            ]

        assert _until(ends), world.trail("stale")


# -- 3. each admitted stream is audited ----------------------------------------------------


def _opened(world: World, who: str, trace_id: str) -> list[dict[str, Any]]:
    return [e for e in world.trail(who, OPENED) if e["trace"]["trace_id"] == trace_id]


def test_an_admitted_listen_stream_is_one_audited_event(world: World) -> None:
    traceparent, trace_id = _traceparent()
    opened = _listen_once(world, "opener", {"traceparent": traceparent})
    assert opened.status_code == 200
    assert _until(lambda: _opened(world, "opener", trace_id)), world.trail("opener", OPENED)
    time.sleep(0.5)  # nothing more comes of it
    (event,) = _opened(world, "opener", trace_id)
    client_id = world.agents["opener"].client_id
    assert event["type"] == OPENED
    assert event["outcome"] == "success"
    assert event["action"] == LISTEN
    assert event["agent_id"] == client_id
    assert event["actor"] == {"type": "agent", "id": client_id, "role": None}
    assert event["source"] == SOURCE
    details = event["details"]
    assert details["stream"] == "listen"
    assert details["subject"] == client_id  # not delegated: the agent itself
    assert details["servers"] == ["live"]
    assert details["status"] == 200
    assert details["jti"]


def test_an_admitted_get_stream_is_one_audited_event(world: World) -> None:
    agent = world.agents["getter"]
    auth = _Pinned(agent, agent.token().value)
    traceparent, trace_id = _traceparent()
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}

    async def go() -> int:
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
            get = {
                "Accept": "text/event-stream",
                "Mcp-Session-Id": session,
                "MCP-Protocol-Version": HANDSHAKE,
                "traceparent": traceparent,
            }
            async with http.stream("GET", world.url, headers=get) as stream:
                with anyio.move_on_after(0.5):
                    await _drain(stream)
                return stream.status_code

    assert anyio.run(go) == 200
    assert _until(lambda: _opened(world, "getter", trace_id)), world.trail("getter", OPENED)
    (event,) = _opened(world, "getter", trace_id)
    assert event["action"] == "GET"
    assert event["agent_id"] == agent.client_id
    assert event["details"]["stream"] == "session"
    assert event["details"]["servers"] == ["live"]
    # the session's other requests (POSTs) opened no stream
    assert len(world.trail("getter", OPENED)) == 1


def test_a_stream_whose_opening_cannot_be_recorded_is_refused_503(world: World) -> None:
    """Nothing unlogged is allowed: with the spool full, the listen stream the SDK
    would open is answered 503 (a problem, ``Retry-After``) and never served; once
    the spool takes events again, it opens."""
    spool = world.gateway.runtime.spool
    bound = spool.max_bytes
    traceparent, trace_id = _traceparent()
    spool.max_bytes = 1  # the spool is full: no event fits
    try:
        refused = _listen_once(world, "unrecorded", {"traceparent": traceparent})
    finally:
        spool.max_bytes = bound
    assert refused.status_code == 503, refused.status_code
    assert refused.headers["retry-after"] == "5"
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "event:" not in refused.text  # no SSE frame of the stream reached the client
    assert _until(lambda: world.gateway.streams.listens() == 0, timeout=5)
    assert _listen_once(world, "unrecorded").status_code == 200
    time.sleep(0.5)
    assert not _opened(world, "unrecorded", trace_id)
