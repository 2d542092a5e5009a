"""A new policy set tells agents their lists changed (MCP, server/tools, server/resources,
server/prompts, "List Changed Notification"; adapters/gateway/mcp_listen.py,
``PolicyChanges``): what an agent may see follows policy, so when a policy set is
activated at the control plane and its bundle reaches the gateway, every agent that
listed a group is told that group changed, on both eras, and lists again.

Real servers on loopback ports: a control plane (uvicorn, SQLite, the policy set
changed through its services as an admin's request would), a stateless (2026-07-28)
upstream MCP server (the listen tests' ``Lists``) listing ``keep`` and ``secret``, and
the real gateway with ``catalog_seconds`` 3600 (no upstream change in play), driven by
the official SDK client.

- a 2026-07-28 agent's ``subscriptions/listen`` stream and a handshake-era agent's
  standalone GET stream are told ``tools/list_changed`` after an activation that shows
  or hides ``live.secret``, and listing again shows the new set; an agent that listed
  nothing, and a group nobody listed, are not told;
- a change of entities only (a catalog entry, a risk score) loads a new bundle but
  tells nobody (then a policy activation on the very same streams does);
- a burst of three activations is told in at most two rounds, at least a second
  apart; the rounds are counted.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import Subscription
from mcp.server.subscriptions import PromptsListChanged, ToolsListChanged
from prometheus_client.parser import text_string_to_metric_families
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until
from tests.unit.test_mcp_gateway_listen_live import Lists
from tests.unit.test_mcp_gateway_metrics_live import _DPoP, _register

from agentiam.adapters.gateway.mcp_proxy import build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.policy.model import ResourceRecord
from agentiam.sdk import AgentClient
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
SOURCE = "gateway/mcp-policy-changes"
MODERN = "2026-07-28"
HIDE = "hide-secret"
HIDING = 'forbid (principal, action, resource == Tool::"live.secret");'
SECRET = "live.secret"
TOOLS_CHANGED = "notifications/tools/list_changed"
AGENTS = ("modern", "legacy", "quiet")
ROUNDS = "agentiam_mcp_gateway_policy_rounds_total"
TOLD = "agentiam_mcp_gateway_agents_told_total"


@dataclass
class World:
    cp: OAuthLive
    url: str
    agents: dict[str, AgentClient]
    runtime: GatewayRuntime
    hidden: bool = True  # is the hiding policy in force

    @asynccontextmanager
    async def client(
        self, who: str, mode: str = MODERN, handler: Any = None
    ) -> AsyncIterator[Client]:
        async with httpx2.AsyncClient(auth=_DPoP(self.agents[who]), timeout=30) as http:
            client = Client(
                streamable_http_client(self.url, http_client=http),
                mode=mode,
                **({"message_handler": handler} if handler is not None else {}),
            )
            async with client:
                yield client

    def toggle(self) -> None:
        """Activate a new policy set: the one that shows ``live.secret`` if it is
        hidden now, else the one that hides it."""
        policies = self.cp.container.policies
        if self.hidden:
            policies.delete(CTX, HIDE)
        else:
            policies.put(CTX, HIDE, text=HIDING)
        self.hidden = not self.hidden

    def metric(self, name: str, **labels: str) -> float:
        text = httpx2.get(self.url.removesuffix("/mcp") + "/metrics", timeout=10).text
        return sum(
            float(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mcp-policy-changes")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    upstream = Lists("live")
    upstream.tools = {"keep", "secret"}
    with oauth_live(f"sqlite:///{db}", policy_refresh_seconds=0.1) as cp:
        c = cp.container
        registered = {who: _register(cp, f"policy-{who}-bot", url) for who in AGENTS}
        c.policies.put(CTX, "all", text="permit (principal, action, resource);")
        c.policies.put(CTX, HIDE, text=HIDING)
        verifier = c.admin_keys.create(CTX, name="mcp-gw", role="verifier", sources=[SOURCE]).secret
        env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        try:
            with serve_in_thread(upstream.app(), lifespan="on") as live_url:
                config = load_config(
                    {
                        "name": SOURCE.removeprefix("gateway/"),
                        "public_url": url,
                        "listen": {"host": "127.0.0.1", "port": port},
                        "control_plane": {"url": cp.url, "key_env": env},
                        "spool": {"directory": str(tmp / "spool")},
                        "servers": [{"name": "live", "url": live_url + "/mcp"}],
                        "catalog_seconds": 3600,  # the upstream's lists do not change
                    }
                )
                runtime = GatewayRuntime.start(config.gateway)
                app = build_app(config, runtime)
                with serve_in_thread(app, port, lifespan="on"):
                    agents = {
                        who: AgentClient(cp.url, client_id=i, key=k, resource=url)
                        for who, (i, k) in registered.items()
                    }
                    try:
                        yield World(cp, url, agents, runtime)
                    finally:
                        for agent in agents.values():
                            agent.close()
        finally:
            os.environ.pop(env, None)


async def _next(sub: Subscription, seconds: float) -> Any:
    """The next event within ``seconds``, or None."""
    with anyio.move_on_after(seconds):
        return await sub.__anext__()
    return None


async def _events(sub: Subscription, seconds: float) -> list[tuple[float, Any]]:
    """Every event within ``seconds``, with the time it came (time.monotonic())."""
    got: list[tuple[float, Any]] = []
    with anyio.move_on_after(seconds):
        async for event in sub:
            got.append((time.monotonic(), event))
    return got


async def _tools(client: Client) -> set[str]:
    return {t.name for t in (await client.list_tools()).tools}


def _heard(into: list[str]) -> Any:
    async def handle(message: Any) -> None:
        into.append(str(getattr(message, "method", type(message).__name__)))

    return handle


async def _heard_within(heard: list[str], method: str, seconds: float) -> bool:
    with anyio.move_on_after(seconds):
        while method not in heard:
            await anyio.sleep(0.05)
        return True
    return False


def _settle() -> None:
    """Past the coalescing window of an earlier test's round (PolicyChanges)."""
    time.sleep(1.2)


@pytest.mark.filterwarnings("ignore:ping is removed")
@pytest.mark.parametrize("change", ["shows", "hides"])
def test_an_activation_that_changes_what_agents_see_tells_both_eras(
    world: World, change: str
) -> None:
    """The activation ``shows`` (then ``hides``) ``live.secret``: the listen stream of
    the 2026-07-28 agent and the GET stream of the handshake-era session are told
    ``tools/list_changed``, and listing again shows the new set. The listen stream
    asked for prompts too but its agent never listed prompts: not told of them; the
    "quiet" agent's listen stream (it never listed) and a session that only pinged
    are not told."""
    _settle()
    assert world.hidden is (change == "shows")

    async def go() -> dict[str, Any]:
        legacy: list[str] = []
        pinged: list[str] = []
        async with (
            world.client("modern") as modern,
            world.client("quiet") as quiet,
            world.client("legacy", "legacy", _heard(legacy)) as lister,
            world.client("legacy", "legacy", _heard(pinged)) as pinger,
            modern.listen(tools_list_changed=True, prompts_list_changed=True) as heard,
            quiet.listen(tools_list_changed=True, prompts_list_changed=True) as unheard,
        ):
            before = {"modern": await _tools(modern), "legacy": await _tools(lister)}
            await pinger.send_ping()  # a session, but no listing
            await anyio.sleep(0.3)  # the standalone GET streams are open
            await anyio.to_thread.run_sync(world.toggle)
            activated = time.monotonic()
            event = await _next(heard, 5)
            told_in = time.monotonic() - activated
            session_told = await _heard_within(legacy, TOOLS_CHANGED, 5)
            more = await _events(heard, 1.0)  # nothing else comes: prompts not listed
            quiet_event = await _next(unheard, 0.5)
            after = {"modern": await _tools(modern), "legacy": await _tools(lister)}
            return {
                "before": before,
                "event": event,
                "told_in": told_in,
                "session_told": session_told,
                "legacy": list(legacy),
                "pinged": list(pinged),
                "more": more,
                "quiet": quiet_event,
                "after": after,
            }

    told_before = world.metric(TOLD, list="tools")
    got = anyio.run(go)
    shown = change == "shows"
    for who in ("modern", "legacy"):
        assert (SECRET in got["before"][who]) is not shown, got["before"]
        assert (SECRET in got["after"][who]) is shown, got["after"]
        assert "live.keep" in got["after"][who]
    assert isinstance(got["event"], ToolsListChanged), got
    assert got["told_in"] < 5
    assert got["session_told"], got["legacy"]
    assert not any(isinstance(e, PromptsListChanged) for _, e in got["more"]), got["more"]
    assert got["quiet"] is None  # it never listed: it was shown nothing to correct
    assert TOOLS_CHANGED not in got["pinged"]
    assert not [m for m in got["legacy"] if m.endswith("list_changed") and m != TOOLS_CHANGED]
    assert world.metric(TOLD, list="tools") - told_before >= 2  # the stream and the session


@pytest.mark.filterwarnings("ignore:ping is removed")
def test_an_entity_only_change_tells_nobody(world: World) -> None:
    """A catalog entry and a risk score change the bundle (the gateway loads it: its
    etag changes) but not the policy set: nobody is told, and no round is counted.
    Then a policy activation on the very same streams is told (they could hear)."""
    _settle()
    link = world.runtime.link
    c = world.cp.container
    modern_id = world.agents["modern"].client_id

    def new_bundle(change: Any) -> None:
        etag = link.etag
        change()
        assert _until(lambda: link.etag != etag, timeout=5), "the bundle did not change"

    async def go() -> dict[str, Any]:
        legacy: list[str] = []
        async with (
            world.client("modern") as modern,
            world.client("legacy", "legacy", _heard(legacy)) as lister,
            modern.listen(tools_list_changed=True) as heard,
        ):
            assert "live.keep" in await _tools(modern)
            assert "live.keep" in await _tools(lister)
            await anyio.sleep(0.3)  # the standalone GET stream is open
            version = link.authorizer().engine.version
            rounds = world.metric(ROUNDS)
            catalog = ResourceRecord("Tool", "catalog.only", {"destructive": True})
            await anyio.to_thread.run_sync(new_bundle, lambda: c.resources.put(CTX, catalog))
            await anyio.to_thread.run_sync(
                new_bundle, lambda: c.enforcement.set_risk({modern_id: 40})
            )
            quiet = await _next(heard, 1.5)
            entity_only = {
                "event": quiet,
                "legacy": list(legacy),
                "same_version": link.authorizer().engine.version == version,
                "rounds": world.metric(ROUNDS) - rounds,
            }
            await anyio.to_thread.run_sync(world.toggle)  # the control: a policy change
            told = await _next(heard, 5)
            session_told = await _heard_within(legacy, TOOLS_CHANGED, 5)
            return {**entity_only, "told": told, "session_told": session_told}

    try:
        got = anyio.run(go)
    finally:
        c.enforcement.set_risk({})
    assert got["same_version"]
    assert got["event"] is None, got
    assert not [m for m in got["legacy"] if m.endswith("list_changed")], got["legacy"]
    assert got["rounds"] == 0
    assert isinstance(got["told"], ToolsListChanged)
    assert got["session_told"]


def test_a_burst_of_activations_is_told_in_at_most_two_rounds(world: World) -> None:
    """Three activations back to back: the agent is told at most twice, the two at
    least a second apart (one round a second), the last after the last activation;
    listing then shows the set the last activation made."""
    _settle()

    async def go() -> tuple[list[tuple[float, Any]], float, tuple[float, float], set[str]]:
        async with world.client("modern") as modern, modern.listen(tools_list_changed=True) as sub:
            await _tools(modern)
            rounds, told = world.metric(ROUNDS), world.metric(TOLD, list="tools")
            started = time.monotonic()
            for _ in range(3):
                await anyio.to_thread.run_sync(world.toggle)
            got = await _events(sub, 3.0)
            counted = (world.metric(ROUNDS) - rounds, world.metric(TOLD, list="tools") - told)
            return got, started, counted, await _tools(modern)

    got, started, counted, after = anyio.run(go)
    assert 1 <= len(got) <= 2, got
    assert all(isinstance(e, ToolsListChanged) for _, e in got)
    if len(got) == 2:
        assert got[1][0] - got[0][0] >= 0.9, got  # one round a second
    assert got[0][0] - started < 5
    # each round told this stream once, and no session: those of the tests before
    # are closed (Shown may still hold them until they are collected)
    assert counted == (len(got), len(got))
    assert (SECRET in after) is not world.hidden  # the set the last activation made
