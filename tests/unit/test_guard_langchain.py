"""The guard's LangChain integration (adapters/gateway/guard_langchain.py) with the real
langchain-core: the model sees the same tool, every call is decided and recorded
before the original runs, and a refused call never runs (the model is told why, or
the denial is raised). In memory, as tests/unit/test_guard_decorator.py: a real
Enforcer and Cedar authorizer; the control-plane example test
(tests/api/test_examples.py) covers the real link and spool."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.messages.tool import ToolOutputMixin
from langchain_core.tools import BaseTool, StructuredTool, Tool, ToolException, tool
from tests.unit.test_guard_decorator import Parts, make_parts

from agentiam.adapters.gateway.guard_langchain import GuardedTool, ToolCallRefused
from agentiam.guard import ToolCallDenied


@pytest.fixture
def parts() -> Parts:
    return make_parts()


def _tools(ran: list[str]) -> tuple[BaseTool, BaseTool]:
    @tool
    def search(query: str, limit: int = 3) -> str:
        """Search the document store."""
        ran.append(f"search:{query}:{limit}")
        return f"{limit} results for {query!r}"

    @tool
    def delete(path: str) -> str:
        """Delete a file."""
        ran.append(f"delete:{path}")
        return "deleted"

    return search, delete


def _call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_call", "name": name, "args": args, "id": "call_1"}


def test_the_model_sees_the_same_tool(parts: Parts) -> None:
    search, delete = _tools([])
    guarded = parts.guard.langchain_tools([search, delete])
    for original, wrapped in zip((search, delete), guarded, strict=True):
        assert isinstance(wrapped, GuardedTool)
        assert wrapped.inner is original
        assert (wrapped.name, wrapped.description) == (original.name, original.description)
        assert wrapped.args == original.args
        assert wrapped.tool_call_schema.model_json_schema() == (
            original.tool_call_schema.model_json_schema()  # type: ignore[union-attr]
        )


def test_an_allowed_call_is_decided_and_durable_before_the_tool_runs(parts: Parts) -> None:
    seen_at_run: list[list[str]] = []

    @tool
    def search(query: str, limit: int = 3) -> str:
        """Search."""
        seen_at_run.append(parts.sink.types())
        return f"{limit} results for {query!r}"

    (guarded,) = parts.guard.langchain_tools([search])
    message = guarded.invoke(_call("search", {"query": "invoices", "limit": 2}))
    assert isinstance(message, ToolMessage)
    assert (message.status, message.content) == ("success", "2 results for 'invoices'")
    assert message.tool_call_id == "call_1"
    assert seen_at_run == [["authz.decision"]]  # the decision was recorded first
    decision, outcome = parts.sink.events
    assert (decision["resource"], decision["action"]) == (
        {"type": "Tool", "id": "search"},
        "invoke_tool",
    )
    assert decision["details"]["argument_names"] == ["limit", "query"]
    assert (outcome["type"], outcome["outcome"]) == ("tool.call", "success")
    assert outcome["decision_id"] == decision["decision_id"]


def test_a_refused_call_never_runs_and_the_model_is_told_why(parts: Parts) -> None:
    ran: list[str] = []
    _, delete = _tools(ran)
    (guarded,) = parts.guard.langchain_tools([delete])
    message = guarded.invoke(_call("delete", {"path": "/reports/q3.pdf"}))
    assert ran == []
    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    (decision,) = parts.sink.events
    assert decision["outcome"] == "denied"
    assert str(message.content).startswith("AgentIAM refused this call (403 insufficient_scope): ")
    assert f"Decision: {decision['decision_id']}." in str(message.content)
    assert "The tool did not run." in str(message.content)
    # called directly (no tool call id): the refusal text is the answer
    assert str(guarded.invoke({"path": "/"})).startswith("AgentIAM refused this call")
    assert ran == []


def test_on_refusal_raise_ends_the_run(parts: Parts) -> None:
    ran: list[str] = []
    _, delete = _tools(ran)
    (guarded,) = parts.guard.langchain_tools([delete], on_refusal="raise")
    with pytest.raises(ToolCallDenied) as caught:
        guarded.invoke(_call("delete", {"path": "/"}))
    assert ran == []
    assert caught.value.refusal_status == 403
    assert not isinstance(caught.value, ToolException)


def test_no_token_is_a_401_refusal(parts: Parts) -> None:
    ran: list[str] = []
    search, _ = _tools(ran)
    (guarded,) = parts.guard.langchain_tools([search], token="forged")
    message = guarded.invoke(_call("search", {"query": "x"}))
    assert ran == []
    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    assert "(401 invalid_token)" in str(message.content)
    assert "forged" not in str(message.content)


def test_async_tools_are_guarded_the_same_way(parts: Parts) -> None:
    ran: list[str] = []

    @tool
    async def search(query: str) -> str:
        """Search."""
        await asyncio.sleep(0)
        ran.append(query)
        return "found"

    @tool
    async def delete(path: str) -> str:
        """Delete."""
        ran.append(path)
        return "deleted"

    guarded = {t.name: t for t in parts.guard.langchain_tools([search, delete])}

    async def main() -> tuple[Any, Any]:
        found = await guarded["search"].ainvoke(_call("search", {"query": "q"}))
        refused = await guarded["delete"].ainvoke(_call("delete", {"path": "/"}))
        return found, refused

    found, refused = asyncio.run(main())
    assert (found.status, found.content) == ("success", "found")
    assert refused.status == "error"
    assert ran == ["q"]
    assert parts.sink.types() == ["authz.decision", "tool.call", "authz.decision"]


def test_the_tool_own_errors_stay_its_own(parts: Parts) -> None:
    """An unhandled ToolException of the original is raised as before, and recorded
    as the call's failure; one the original handles is its answer, still an error to
    the model and a failure in the trail."""

    def failing(query: str) -> str:
        raise ToolException("the index is offline")

    strict = StructuredTool.from_function(failing, name="search", description="Search.")
    (guarded,) = parts.guard.langchain_tools([strict])
    with pytest.raises(ToolException, match="the index is offline") as raised:
        guarded.invoke(_call("search", {"query": "x"}))
    assert not isinstance(raised.value, ToolCallRefused)
    outcome = parts.sink.events[-1]
    assert (outcome["type"], outcome["outcome"]) == ("tool.call", "failure")
    lenient = StructuredTool.from_function(
        failing, name="search", description="Search.", handle_tool_error=True
    )
    (guarded,) = parts.guard.langchain_tools([lenient])
    message = guarded.invoke(_call("search", {"query": "x"}))
    assert (message.status, message.content) == ("error", "the index is offline")
    outcome = parts.sink.events[-1]
    assert (outcome["type"], outcome["outcome"]) == ("tool.call", "failure")
    assert outcome["details"]["error"] == "tool_error"


def test_a_denial_raised_by_the_tool_itself_is_not_mistaken_for_ours(parts: Parts) -> None:
    """The original ran (the guard allowed it) and then met a refusal of its own, e.g.
    from a guarded function it called: that is raised as is, never told to the model
    as "the tool did not run"."""

    @parts.guard.tool("delete")
    def delete_file(path: str) -> None: ...

    @tool
    def search(query: str) -> str:
        """Search, then clean up."""
        delete_file("/tmp/cache")  # denied by policy
        return "found"

    (guarded,) = parts.guard.langchain_tools([search])
    with pytest.raises(ToolCallDenied) as caught:
        guarded.invoke(_call("search", {"query": "x"}))
    assert not isinstance(caught.value, ToolException)
    assert parts.sink.types() == ["authz.decision", "authz.decision", "tool.call"]
    search_outcome = parts.sink.events[-1]
    assert (search_outcome["resource"]["id"], search_outcome["outcome"]) == ("search", "failure")


def test_a_single_input_tool_is_decided_on_its_input(parts: Parts) -> None:
    ran: list[str] = []
    legacy = Tool(name="search", description="Search.", func=lambda text: ran.append(text) or "ok")
    (guarded,) = parts.guard.langchain_tools([legacy])
    assert guarded.invoke("invoices") == "ok"
    assert ran == ["invoices"]
    assert parts.sink.events[0]["details"]["argument_names"] == ["input"]


def test_what_cannot_be_guarded_is_refused_when_wrapping(parts: Parts) -> None:
    search, _ = _tools([])
    (guarded,) = parts.guard.langchain_tools([search])
    with pytest.raises(TypeError, match="guarded already"):
        parts.guard.langchain_tools([guarded])
    with pytest.raises(TypeError, match="not a LangChain tool"):
        parts.guard.langchain_tools([lambda query: query])
    with pytest.raises(ValueError, match="on_refusal"):
        parts.guard.langchain_tools([search], on_refusal="ignore")  # type: ignore[arg-type]
    bad_name = StructuredTool.from_function(
        lambda query: query, name="no spaces allowed", description="S."
    )
    with pytest.raises(ValueError):  # noqa: PT011 - the guard's own tool-name check
        parts.guard.langchain_tools([bad_name])


def test_a_content_and_artifact_tool_keeps_its_artifact(parts: Parts) -> None:
    """The model reads the content and the ToolMessage carries the original's artifact;
    an error it handles, or a refusal, carries none. The artifact is not audited."""
    ran: list[str] = []

    def search(query: str) -> tuple[str, dict[str, Any]]:
        ran.append(query)
        if query == "boom":
            raise ToolException("the index is offline")
        return f"2 results for {query!r}", {"rows": [{"id": 1, "ssn": "078-05-1120"}]}

    original = StructuredTool.from_function(
        search, name="search", description="Search.", response_format="content_and_artifact",
        handle_tool_error=True,
    )  # fmt: skip
    (guarded,) = parts.guard.langchain_tools([original])
    assert guarded.response_format == "content_and_artifact"
    message = guarded.invoke(_call("search", {"query": "invoices"}))
    assert isinstance(message, ToolMessage)
    assert (message.status, message.content) == ("success", "2 results for 'invoices'")
    assert message.artifact == {"rows": [{"id": 1, "ssn": "078-05-1120"}]}
    again = asyncio.run(guarded.ainvoke(_call("search", {"query": "q4"})))
    assert (again.content, again.artifact) == ("2 results for 'q4'", message.artifact)
    failed = guarded.invoke(_call("search", {"query": "boom"}))
    assert (failed.status, failed.content, failed.artifact) == (
        "error", "the index is offline", None,
    )  # fmt: skip
    assert "078-05-1120" not in str(parts.sink.events)
    assert [e["outcome"] for e in parts.sink.events if e["type"] == "tool.call"] == [
        "success", "success", "failure",
    ]  # fmt: skip
    denied = StructuredTool.from_function(
        search, name="delete", description="Delete.", response_format="content_and_artifact"
    )
    (refusing,) = parts.guard.langchain_tools([denied])  # no policy permits "delete"
    ran.clear()
    refused = refusing.invoke(_call("delete", {"query": "x"}))
    assert (refused.status, refused.artifact, ran) == ("error", None, [])
    assert str(refused.content).startswith("AgentIAM refused this call")


class _Output(ToolOutputMixin):
    """A tool output LangChain passes on as it is (as a LangGraph ``Command``)."""


def test_a_content_and_artifact_tool_may_answer_with_a_tool_output(parts: Parts) -> None:
    output = _Output()
    original = StructuredTool.from_function(
        lambda query: (output, {"unused": True}), name="search", description="Search.",
        response_format="content_and_artifact",
    )  # fmt: skip
    (guarded,) = parts.guard.langchain_tools([original])
    assert original.invoke(_call("search", {"query": "x"})) is output
    assert guarded.invoke(_call("search", {"query": "x"})) is output  # as unguarded
