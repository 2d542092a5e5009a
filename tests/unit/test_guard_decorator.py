"""The in-process guard in memory: a real Enforcer and Cedar authorizer, a verifier
and a link stand-in, and a sink that records (or refuses) what would be spooled.
The control-plane tests (tests/api/test_guard.py) cover the real link and spool."""

from __future__ import annotations

import asyncio
import enum
import inspect
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.unit.policy_support import agent, authorizer

from agentiam.core.credentials.verifier import VerifiedAccess, VerifierConfig
from agentiam.core.policy.authorizer import Authorizer
from agentiam.errors import OAuthError, ServiceUnavailable
from agentiam.guard import (
    Guard,
    GuardEnforcer,
    GuardUnavailable,
    ToolCallDenied,
    plain_arguments,
)

AGENT = "agt_01JF0000000000000000000001"
RESOURCE = "https://agent.example.com/tools"
POLICY = 'permit (principal, action == Action::"invoke_tool", resource == Tool::"search");'


def access(client_id: str = AGENT, *, jkt: str | None = "thumb") -> VerifiedAccess:
    return VerifiedAccess(
        subject=client_id,
        client_id=client_id,
        scope=(),
        jti="jti-1",
        issued_at=0,
        expires_at=2**40,
        jkt=jkt,
        claims={"aud": RESOURCE},
    )


@dataclass
class FakeVerifier:
    """Tokens "good" (DPoP-bound) and "bearer" (not bound); anything else invalid."""

    config: VerifierConfig = field(
        default_factory=lambda: VerifierConfig(issuer="https://iam.example.com", audience=RESOURCE)
    )
    seen: list[str] = field(default_factory=list)

    def verify_token(self, token: str, *, now: int) -> VerifiedAccess:
        self.seen.append(token)
        if token == "good":
            return access()
        if token == "bearer":
            return access(jkt=None)
        raise OAuthError("invalid_token", "the access token is not valid", status=401)


@dataclass
class FakeLink:
    authz: Authorizer
    verifier: FakeVerifier = field(default_factory=FakeVerifier)
    lost: bool = False

    def authorizer(self) -> Authorizer:
        if self.lost:
            raise ServiceUnavailable("past the outage bound")
        return self.authz


@dataclass
class Sink:
    events: list[dict[str, Any]] = field(default_factory=list)
    broken: bool = False

    def append(self, events: list[dict[str, Any]]) -> None:
        if self.broken:
            raise OSError("disk full")
        self.events.extend(events)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


@dataclass
class Parts:
    guard: Guard
    link: FakeLink
    sink: Sink


@pytest.fixture
def parts() -> Parts:
    return make_parts()


def make_parts() -> Parts:
    """A guard (token "good") over a real Enforcer whose policy permits only
    ``Tool::"search"``, with its stand-in link and recording sink."""
    link = FakeLink(authorizer(POLICY, agents=[agent(AGENT)]))
    sink = Sink()
    enforcer = GuardEnforcer(
        "unit",
        link,
        sink,
        resource_metadata=RESOURCE,
        kind="guard",  # type: ignore[arg-type]
    )
    return Parts(Guard(enforcer, resource=RESOURCE, token="good"), link, sink)


# -- arguments ----------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"


def test_arguments_become_json_values() -> None:
    when = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    deep: dict[str, Any] = {"v": 1}
    for _ in range(10):
        deep = {"d": deep}
    out = plain_arguments(
        {
            "path": Path("/tmp/x"),
            "color": Color.RED,
            "when": when,
            "nested": {"a": [1, 2.5, None, True]},
            "tags": {"b", "a"},
            "deep": deep,
        }
    )
    assert out["path"] == "/tmp/x"
    assert out["color"] == "red"
    assert out["when"] == "2026-01-02T03:04:00+00:00"
    assert out["nested"] == {"a": [1, 2.5, None, True]}
    assert out["tags"] == ["a", "b"]
    depth, node = 0, out["deep"]
    while "d" in node:
        depth, node = depth + 1, node["d"]
    assert depth <= 9  # cut below 8 levels of nesting
    assert node == {}


# -- the decorator ----------------------------------------------------------------------------


def test_an_allowed_call_is_durable_before_the_body_runs(parts: Parts) -> None:
    seen_at_body: list[list[str]] = []

    @parts.guard.tool()
    def search(query: str, limit: int = 3) -> str:
        """Search."""
        seen_at_body.append(parts.sink.types())
        return query * limit

    assert search("ab") == "ababab"
    assert seen_at_body == [["authz.decision"]]  # the decision was recorded first
    assert parts.sink.types() == ["authz.decision", "tool.call"]
    decision, outcome = parts.sink.events
    assert decision["source"] == "guard/unit"
    assert decision["details"]["argument_names"] == ["limit", "query"]
    assert outcome["outcome"] == "success"
    assert outcome["decision_id"] == decision["decision_id"]
    assert search.__name__ == "search"
    assert search.__doc__ == "Search."
    assert inspect.signature(search) == inspect.signature(search.__wrapped__)  # type: ignore[attr-defined]


def test_a_denied_call_raises_and_never_runs_the_body(parts: Parts) -> None:
    ran: list[int] = []

    @parts.guard.tool("delete")
    def anything() -> None:
        ran.append(1)

    with pytest.raises(ToolCallDenied) as caught:
        anything()
    assert ran == []
    assert caught.value.status == 403
    assert caught.value.decision_id == parts.sink.events[0]["decision_id"]
    assert parts.sink.types() == ["authz.decision"]
    assert parts.sink.events[0]["outcome"] == "denied"


def test_binding_skips_self_and_excluded_and_flattens_kwargs(parts: Parts) -> None:
    class Tools:
        @parts.guard.tool("search", exclude=("ctx",))
        def run(self, query: str, *rest: str, ctx: object = None, **extra: Any) -> int:
            return len(rest)

    assert Tools().run("q", "a", "b", ctx=object(), mode="fast", query_id=1) == 2
    names = parts.sink.events[0]["details"]["argument_names"]
    assert names == ["mode", "query", "query_id", "rest"]


def test_misuse_is_refused_at_decoration(parts: Parts) -> None:
    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> Any:
        yield 1

    for fn in (gen, agen):
        with pytest.raises(TypeError, match="generator"):
            parts.guard.tool("search")(fn)
    for bad in ("", "has space", "x" * 129, "naïve"):
        with pytest.raises(ValueError, match="tool name"):
            parts.guard.tool(bad)(lambda: None)
        with pytest.raises(ValueError, match="tool name"):
            parts.guard.call(bad)


def test_bare_decorator_and_wrong_arguments(parts: Parts) -> None:
    @parts.guard.tool
    def search(q: str) -> str:
        return q

    assert search("x") == "x"
    with pytest.raises(TypeError):
        search()  # type: ignore[call-arg]  # no call happened: nothing decided
    assert parts.sink.types() == ["authz.decision", "tool.call"]


def test_exceptions_are_recorded_by_class_and_re_raised(parts: Parts) -> None:
    @parts.guard.tool()
    def search() -> None:
        raise KeyError("private detail")

    with pytest.raises(KeyError):
        search()
    outcome = parts.sink.events[-1]
    assert outcome["outcome"] == "failure"
    assert outcome["details"]["error"] == "KeyError"
    assert "private detail" not in str(outcome)

    with parts.guard.call("search") as call:
        call.fail("tool_error")
    assert parts.sink.events[-1]["details"]["error"] == "tool_error"


# -- who --------------------------------------------------------------------------------------


def test_tokens_missing_invalid_or_unbound_are_refused(parts: Parts) -> None:
    guard = Guard(parts.guard.enforcer, resource=RESOURCE)  # no default token
    ran: list[str] = []

    @guard.tool("search")
    def search() -> None:
        ran.append("x")

    with pytest.raises(ToolCallDenied) as caught:
        search()
    assert (caught.value.error, caught.value.refusal_status) == ("invalid_token", 401)
    for token in ("forged", "bearer", ""):
        with guard.acting_as(token), pytest.raises(ToolCallDenied) as caught:
            search()
        assert caught.value.error == "invalid_token"
    assert ran == []
    assert all(e["outcome"] == "denied" for e in parts.sink.events)
    assert len(parts.sink.events) == 4  # every refusal is audited
    # a verifier configured for Bearer tokens accepts the unbound one
    parts.link.verifier.config = VerifierConfig(
        issuer="https://iam.example.com", audience=RESOURCE, accept_bearer=True
    )
    with guard.acting_as("bearer"):
        search()
    assert ran == ["x"]


def test_the_token_source_is_asked_on_every_call_and_acting_as_nests(parts: Parts) -> None:
    calls: list[int] = []

    def source() -> str:
        calls.append(1)
        return "good"

    guard = Guard(parts.guard.enforcer, resource=RESOURCE, token=source)

    @guard.tool("search")
    def search() -> None:
        pass

    search()
    search()
    assert len(calls) == 2
    with guard.acting_as("forged"):
        with pytest.raises(ToolCallDenied):
            search()
        with guard.acting_as("good"):
            search()
        with pytest.raises(ToolCallDenied):
            search()
    search()
    assert parts.link.verifier.seen[-1] == "good"

    # a thread does not inherit the block's token (contextvars do not cross threads)
    errors: list[BaseException] = []
    with guard.acting_as("forged"):
        worker = threading.Thread(target=lambda: _catch(search, errors))
        worker.start()
        worker.join()
    assert errors == []


def _catch(fn: Any, errors: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as exc:
        errors.append(exc)


# -- fail closed --------------------------------------------------------------------------------


def test_an_unwritable_spool_refuses_the_call(parts: Parts) -> None:
    ran: list[int] = []

    @parts.guard.tool()
    def search() -> None:
        ran.append(1)

    parts.sink.broken = True
    with pytest.raises(GuardUnavailable) as caught:
        search()
    assert caught.value.status == 503
    assert caught.value.refusal_status == 503
    assert isinstance(caught.value, ToolCallDenied)
    assert ran == []


def test_past_the_outage_bound_the_call_is_refused(parts: Parts) -> None:
    parts.link.lost = True
    with pytest.raises(GuardUnavailable, match="outage"), parts.guard.call("search"):
        pytest.fail("the block ran")


def test_a_stale_revocation_state_refuses(parts: Parts) -> None:
    def stale(token: str, *, now: int) -> VerifiedAccess:
        raise OAuthError("temporarily_unavailable", "stale", status=503, reason="feed stale")

    parts.link.verifier.verify_token = stale  # type: ignore[method-assign]
    with pytest.raises(GuardUnavailable), parts.guard.call("search"):
        pytest.fail("the block ran")


def test_losing_the_outcome_is_logged_not_raised(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    with parts.guard.call("search"):
        parts.sink.broken = True  # the body ran; its result is not thrown away
    assert "could not be recorded" in caplog.text


# -- async ----------------------------------------------------------------------------------------


def test_async_functions_blocks_and_cancellation(parts: Parts) -> None:
    ran: list[str] = []

    @parts.guard.tool()
    async def search(q: str) -> str:
        ran.append(q)
        await asyncio.sleep(0)
        return q

    @parts.guard.tool("delete")
    async def delete() -> None:
        ran.append("delete")

    assert inspect.iscoroutinefunction(search)

    async def main() -> None:
        assert await search("a") == "a"
        with pytest.raises(ToolCallDenied):
            await delete()
        async with parts.guard.call("search", {"q": "b"}) as call:
            assert call.agent_id == AGENT
        gate = asyncio.Event()

        @parts.guard.tool("search")
        async def slow() -> None:
            gate.set()
            await asyncio.sleep(30)

        task = asyncio.create_task(slow())
        await gate.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the acting_as token follows into tasks created inside the block
        with parts.guard.acting_as("forged"), pytest.raises(ToolCallDenied):
            await asyncio.create_task(search("c"))

    asyncio.run(main())
    assert ran == ["a"]
    outcomes = [e for e in parts.sink.events if e["type"] == "tool.call"]
    assert [o["details"]["error"] for o in outcomes] == [None, None, "CancelledError"]


def test_a_denial_raised_by_the_body_is_not_mistaken_for_ours(parts: Parts) -> None:
    """A nested guarded call that is denied propagates out of the outer one."""

    @parts.guard.tool("delete")
    def inner() -> None:
        pass

    @parts.guard.tool()
    def search() -> None:
        inner()

    with pytest.raises(ToolCallDenied) as caught:
        search()
    assert caught.value.tool == "delete"
    assert parts.sink.events[-1]["details"]["error"] == "ToolCallDenied"


def test_trace_ids_are_fresh_per_call(parts: Parts) -> None:
    with parts.guard.call("search") as one:
        pass
    with parts.guard.call("search") as two:
        pass
    traces = {e["trace"]["trace_id"] for e in parts.sink.events}
    assert len(traces) == 2
    assert one.trace_id is None  # cleared on exit
    assert two.decision_id is None
