"""Policy notices of the MCP gateway (adapters/gateway/mcp_listen.py): whom a new policy
set is told to (every listen stream whose agent listed the group, whatever it was
shown; nobody who never listed it) and how often (:class:`PolicyChanges`: one round a
second at most, the last change always told after it happened, wakes from another
thread). Real event loop and real threads; the live behaviour is in
test_mcp_gateway_policy_list_changed_live.py."""

from __future__ import annotations

import threading
import time

import anyio
from mcp.server.subscriptions import ServerEvent, ToolsListChanged
from mcp_types import SubscriptionFilter

from agentiam.adapters.gateway.mcp_listen import (
    AudienceBus,
    PolicyChanges,
    Shown,
    listening_as,
)

SEER = ("agent-seer", "agent-seer")
EMPTY = ("agent-empty", "agent-empty")
NEVER = ("agent-never", "agent-never")


def test_a_policy_change_reaches_every_stream_whose_agent_listed_the_group() -> None:
    """An agent shown items of a server, and one whose listing showed nothing (it may
    now be shown something), are told; one that never listed tools is not (it was
    shown nothing to correct), nor a stream that did not ask for tools."""
    shown = Shown()
    shown.record("tools/list", frozenset({"bank"}), SEER, None)
    shown.record("tools/list", frozenset(), EMPTY, None)
    shown.record("prompts/list", frozenset({"bank"}), NEVER, None)
    bus = AudienceBus(shown)
    heard: dict[str, list[ServerEvent]] = {}
    tools = SubscriptionFilter(tools_list_changed=True)
    prompts = SubscriptionFilter(prompts_list_changed=True)
    for name, owner, wanted in [
        ("seer", SEER, tools),
        ("empty", EMPTY, tools),
        ("never", NEVER, tools),
        ("seer-prompts-only", SEER, prompts),
    ]:
        heard[name] = []
        with listening_as(owner, wanted):
            bus.subscribe(heard[name].append)

    async def go() -> tuple[int, int]:
        return await bus.tell(None, "tools"), await bus.tell("elsewhere", "tools")

    policy, upstream = anyio.run(go)
    assert policy == 2
    assert len(heard["seer"]) == 1
    assert isinstance(heard["seer"][0], ToolsListChanged)
    assert len(heard["empty"]) == 1
    assert heard["never"] == []
    assert heard["seer-prompts-only"] == []
    assert upstream == 0  # a server nobody was shown: still per server
    assert shown.owner_saw(EMPTY, None, "tools")
    assert not shown.owner_saw(EMPTY, "bank", "tools")
    assert not shown.owner_saw(NEVER, None, "tools")


def test_an_event_not_made_by_tell_is_dropped() -> None:
    shown = Shown()
    shown.record("tools/list", frozenset({"bank"}), SEER, None)
    bus = AudienceBus(shown)
    heard: list[ServerEvent] = []
    with listening_as(SEER, SubscriptionFilter(tools_list_changed=True)):
        bus.subscribe(heard.append)
    anyio.run(bus.publish, ToolsListChanged())  # a plain event: no server, no policy
    assert heard == []


def _run_rounds(
    seconds: float, changes: list[tuple[float, int]], watch: float
) -> list[tuple[float, int]]:
    """Run :class:`PolicyChanges` for ``watch`` seconds, with ``changes`` (delay after
    the start, version) made from another thread: the rounds (time after the start,
    version told)."""
    changes_ = PolicyChanges(seconds)
    rounds: list[tuple[float, int]] = []
    started = time.monotonic()

    async def tell(version: int) -> None:
        rounds.append((time.monotonic() - started, version))

    def change() -> None:
        for at, version in changes:
            time.sleep(max(0.0, at - (time.monotonic() - started)))
            changes_.changed(version)

    async def go() -> None:
        thread = threading.Thread(target=change)
        async with anyio.create_task_group() as tg:
            tg.start_soon(changes_.run, tell)
            await anyio.sleep(0.05)  # run() has its loop
            thread.start()
            await anyio.sleep(watch)
            tg.cancel_scope.cancel()
        thread.join()

    anyio.run(go)
    return rounds


def test_a_burst_is_told_in_two_rounds_the_last_after_the_last_change() -> None:
    rounds = _run_rounds(0.5, [(0.1, 2), (0.15, 3), (0.2, 4)], 1.2)
    # the first change at once, the others in one round after the window
    assert [v for _, v in rounds] in ([2, 4], [3, 4]), rounds
    assert rounds[1][0] - rounds[0][0] >= 0.45, rounds


def test_a_lone_change_is_told_at_once_and_once() -> None:
    rounds = _run_rounds(0.5, [(0.1, 7)], 1.0)
    assert [v for _, v in rounds] == [7]
    assert rounds[0][0] < 0.3, rounds


def test_a_change_before_the_loop_runs_is_told_when_it_starts() -> None:
    changes = PolicyChanges(0.5)
    changes.changed(9)
    told: list[int] = []

    async def tell(version: int) -> None:
        told.append(version)

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(changes.run, tell)
            await anyio.sleep(0.2)
            tg.cancel_scope.cancel()

    anyio.run(go)
    assert told == [9]


def test_a_failing_round_does_not_stop_the_next() -> None:
    changes = PolicyChanges(0.1)
    told: list[int] = []

    async def tell(version: int) -> None:
        told.append(version)
        if version == 1:
            raise RuntimeError("a stream failed")

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(changes.run, tell)
            await anyio.sleep(0.05)
            changes.changed(1)
            await anyio.sleep(0.3)
            changes.changed(2)
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()

    anyio.run(go)
    assert told == [1, 2]
