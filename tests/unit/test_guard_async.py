"""Async edges of the in-process guard (adapters/gateway/guard.py): a task cancelled
while its call is being decided still gets the allowed call's outcome recorded
(``CancelledError``), with the decorator, a block and the MCP middleware; and async
callables that are not coroutine functions (an object with ``async def __call__``, an
``async def`` behind a plain decorator) have their outcome recorded when their body
has run, not when the coroutine was created. In memory, as
tests/unit/test_guard_decorator.py, with a sink that holds the decision's write until
the test lets it through (a slow disk)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from tests.unit.policy_support import agent, authorizer
from tests.unit.test_guard_decorator import AGENT, POLICY, RESOURCE, FakeLink, Parts, Sink

from agentiam.guard import Guard, GuardEnforcer


@dataclass
class SlowSink(Sink):
    """Holds the first decision's write until ``release`` is set; ``deciding`` is set
    once the guard's worker is inside it."""

    deciding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def append(self, events: list[dict[str, Any]]) -> None:
        if any(e["type"] == "authz.decision" for e in events):
            self.deciding.set()
            assert self.release.wait(10)
        super().append(events)


@pytest.fixture
def parts() -> Parts:
    link = FakeLink(authorizer(POLICY, agents=[agent(AGENT)]))
    sink = SlowSink()
    enforcer = GuardEnforcer("unit", link, sink, resource_metadata=RESOURCE, kind="guard")
    return Parts(Guard(enforcer, resource=RESOURCE, token="good"), link, sink)


def _sink(parts: Parts) -> SlowSink:
    assert isinstance(parts.sink, SlowSink)
    return parts.sink


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _outcomes(parts: Parts) -> list[tuple[str | None, str | None]]:
    """(outcome, error) of each tool.call event."""
    calls = [e for e in parts.sink.events if e["type"] == "tool.call"]
    return [(e["outcome"], e["details"]["error"]) for e in calls]


def _assert_cancelled_outcome(parts: Parts) -> None:
    decision, outcome = parts.sink.events
    assert (decision["type"], decision["outcome"]) == ("authz.decision", "success")
    assert outcome["type"] == "tool.call"
    assert outcome["decision_id"] == decision["decision_id"]
    assert _outcomes(parts) == [("failure", "CancelledError")]


# -- cancelled while deciding ---------------------------------------------------------------


def test_a_task_cancelled_while_its_call_is_decided_records_the_outcome(parts: Parts) -> None:
    """task.cancel() does not wait for the worker thread: the allow lands after the task
    is gone, and the worker records the outcome itself."""
    sink = _sink(parts)
    ran: list[str] = []

    @parts.guard.tool()
    async def search(query: str) -> str:
        ran.append(query)
        return query

    async def main() -> None:
        task = asyncio.create_task(search("x"))
        await _until(sink.deciding.is_set)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sink.release.set()  # now the decision (an allow) is made and made durable
        await _until(lambda: len(sink.events) == 2)

    asyncio.run(main())
    assert ran == []
    _assert_cancelled_outcome(parts)


def test_a_block_cancelled_by_a_cancel_scope_while_deciding_records_the_outcome(
    parts: Parts,
) -> None:
    """An anyio cancel scope waits for the worker (that wait is shielded): the allowed
    block starts and is cancelled at its first checkpoint, and that is recorded."""
    sink = _sink(parts)
    ran: list[str] = []

    async def call() -> None:
        async with parts.guard.call("search", {"query": "x"}):
            await anyio.sleep(30)
            ran.append("block")

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(call)
            await _until(sink.deciding.is_set)
            group.cancel_scope.cancel()
            sink.release.set()

    asyncio.run(main())
    assert ran == []
    _assert_cancelled_outcome(parts)


def test_an_mcp_call_cancelled_by_its_client_while_deciding_records_the_outcome(
    parts: Parts,
) -> None:
    """notifications/cancelled from the client cancels the server's handler while
    the guard decides (guard_mcp.GuardMiddleware)."""
    sink = _sink(parts)
    ran: list[str] = []
    cancelled = threading.Event()
    server = MCPServer("tools")

    async def observe(ctx: Any, call_next: Any) -> Any:  # outside the guard's middleware
        try:
            return await call_next(ctx)
        except BaseException:
            cancelled.set()  # the handler was cancelled while the guard was deciding
            raise

    server.middleware.append(observe)
    parts.guard.protect(server)

    @server.tool()
    def search(query: str) -> str:
        ran.append(query)
        return query

    async def main() -> None:
        async with Client(server) as client:
            task = asyncio.create_task(client.call_tool("search", {"query": "x"}))
            await _until(sink.deciding.is_set)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await _until(cancelled.is_set)
            sink.release.set()
            await _until(lambda: len(sink.events) == 2)

    asyncio.run(main())
    assert ran == []
    _assert_cancelled_outcome(parts)


# -- async callables that are not coroutine functions ---------------------------------------------


def _plain_decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A common sync decorator: it returns whatever the function returns."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def _events_at_body(parts: Parts, seen: list[list[str]]) -> Callable[..., Any]:
    async def body(query: str) -> str:
        seen.append(parts.sink.types())
        await asyncio.sleep(0)
        if query == "fail":
            raise RuntimeError("the tool failed")
        return query.upper()

    return body


def test_an_object_with_an_async_call_is_guarded_as_async(parts: Parts) -> None:
    _sink(parts).release.set()
    seen: list[list[str]] = []
    body = _events_at_body(parts, seen)

    class Search:
        async def __call__(self, query: str) -> str:
            return await body(query)

    search = parts.guard.tool("search")(Search())
    assert inspect.iscoroutinefunction(search)

    async def main() -> None:
        assert await search("ok") == "OK"
        with pytest.raises(RuntimeError):
            await search("fail")

    asyncio.run(main())
    assert seen == [["authz.decision"], ["authz.decision", "tool.call", "authz.decision"]]
    assert _outcomes(parts) == [("success", None), ("failure", "RuntimeError")]


def test_an_async_function_behind_a_plain_decorator_is_recorded_once_awaited(
    parts: Parts,
) -> None:
    sink = _sink(parts)
    sink.release.set()
    seen: list[list[str]] = []

    @parts.guard.tool()
    @_plain_decorator
    async def search(query: str) -> str:
        return await _events_at_body(parts, seen)(query)

    async def main() -> None:
        assert await search("ok") == "OK"
        with pytest.raises(RuntimeError):
            await search("fail")
        # cancelled while its body runs: recorded as such, as for an async def
        gate = asyncio.Event()

        @parts.guard.tool("search")
        @_plain_decorator
        async def slow() -> None:
            gate.set()
            await asyncio.sleep(30)

        task = asyncio.create_task(slow())
        await gate.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == [["authz.decision"], ["authz.decision", "tool.call", "authz.decision"]]
    assert _outcomes(parts) == [
        ("success", None),
        ("failure", "RuntimeError"),
        ("failure", "CancelledError"),
    ]


def test_a_generator_behind_a_plain_decorator_is_refused_not_recorded_as_a_success(
    parts: Parts,
) -> None:
    """A generator function that a plain decorator hides looks like a sync function;
    the generator it returns would run its body after the decision, outside the
    guard. The call raises TypeError and is recorded as failed; the body never runs."""
    _sink(parts).release.set()
    ran: list[str] = []

    @parts.guard.tool("search")
    @_plain_decorator
    def rows(query: str) -> Any:
        ran.append(query)
        yield query

    with pytest.raises(TypeError, match="returned a generator"):
        rows("x")
    assert ran == []
    assert _outcomes(parts) == [("failure", "TypeError")]
