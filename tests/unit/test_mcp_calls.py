"""The MCP policy questions (adapters/gateway/mcp_calls.py) as pure functions: a read
is checked in one place for the MCP gateway (routed to its servers) and the guard; a
completion asks exactly what the listing asks of the prompt or resource template it
references (MCP 2026-07-28 "Completion"), task scope included."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.test_mcp_gateway_endpoint import FakeEnforcer, Stub

from agentiam.adapters.gateway.enforcer import Call
from agentiam.adapters.gateway.mcp_calls import (
    COMPLETE_METHOD,
    completion_call,
    read_call,
)
from agentiam.adapters.gateway.mcp_proxy import McpGateway
from agentiam.adapters.gateway.mcp_visibility import Listed
from agentiam.core.delegation.authorization_details import permits
from agentiam.core.policy.model import EntityRef

TEMPLATE = "https://files.example.com/users/{name}"
ARGUMENT = {"name": "name", "value": "al"}


def _complete(ref: dict[str, Any], **params: Any) -> Call | str:
    return completion_call({"ref": ref, "argument": ARGUMENT, **params})


def test_a_completion_asks_what_the_listing_asks_of_its_item() -> None:
    for ref, kind, item in (
        ({"type": "ref/prompt", "name": "summarize"}, "prompt", "summarize"),
        ({"type": "ref/resource", "uri": TEMPLATE}, "template", TEMPLATE),
    ):
        call = _complete(ref, context={"arguments": {"other": "x"}})
        assert isinstance(call, Call), call
        action, resource, parents = Listed(kind, item, item).question()  # type: ignore[arg-type]
        assert (call.action, call.resource, call.resource_parents) == (action, resource, parents)
        assert call.args == {}  # the listing's context.args: never the typed value
        assert call.tool == COMPLETE_METHOD  # its own rate-limit bucket
    prompt = _complete({"type": "ref/prompt", "name": "summarize"})
    assert isinstance(prompt, Call)
    assert prompt.resource == EntityRef("DataSet", "prompt:summarize")


def test_a_task_scoped_token_gets_no_completion_of_a_template_as_it_sees_none() -> None:
    """The attack: a token scoped to read beneath the template's URL. The listing never
    shows a template to a task-scoped token; a read of a concrete URI beneath it is
    covered, the completion of the template is not."""
    details = [
        {"type": "api_access", "locations": ["https://files.example.com/"], "actions": ["read"]}
    ]
    call = _complete({"type": "ref/resource", "uri": TEMPLATE})
    assert isinstance(call, Call)
    assert not permits(details, call.detail).allowed
    read = read_call("resources/read", {"uri": "https://files.example.com/users/al"})
    assert isinstance(read, Call)
    assert permits(details, read.detail).allowed
    prompt = _complete({"type": "ref/prompt", "name": "summarize"})
    assert isinstance(prompt, Call)
    assert not permits(details, prompt.detail).allowed


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"argument": ARGUMENT}, "params.ref"),
        ({"ref": {"type": "ref/tool", "name": "x"}, "argument": ARGUMENT}, "params.ref"),
        ({"ref": {"type": "ref/prompt"}, "argument": ARGUMENT}, "params.ref.name"),
        ({"ref": {"type": "ref/prompt", "name": "p" * 257}, "argument": ARGUMENT}, "ref.name"),
        ({"ref": {"type": "ref/resource", "uri": "prompt:x"}, "argument": ARGUMENT}, "a prompt"),
        ({"ref": {"type": "ref/resource", "uri": "f" * 501}, "argument": ARGUMENT}, "ref.uri"),
        ({"ref": {"type": "ref/prompt", "name": "p"}}, "params.argument"),
        ({"ref": {"type": "ref/prompt", "name": "p"}, "argument": {"name": 1}}, "argument"),
        (
            {"ref": {"type": "ref/prompt", "name": "p"}, "argument": ARGUMENT, "context": []},
            "params.context",
        ),
        # the bounds: an argument name as a name's, a value as a URI's, the resolved
        # arguments as a prompt's
        (
            {"ref": {"type": "ref/prompt", "name": "p"}, "argument": {"name": "", "value": "v"}},
            "params.argument",
        ),
        (
            {
                "ref": {"type": "ref/prompt", "name": "p"},
                "argument": {"name": "n" * 257, "value": "v"},
            },
            "params.argument",
        ),
        (
            {
                "ref": {"type": "ref/prompt", "name": "p"},
                "argument": {"name": "n", "value": "v" * 501},
            },
            "params.argument",
        ),
        (
            {
                "ref": {"type": "ref/prompt", "name": "p"},
                "argument": ARGUMENT,
                "context": {"arguments": {f"a{n}": "x" for n in range(257)}},
            },
            "params.context.arguments",
        ),
        (
            {
                "ref": {"type": "ref/prompt", "name": "p"},
                "argument": ARGUMENT,
                "context": {"arguments": {"a": 1}},
            },
            "params.context",
        ),
    ],
)
def test_a_malformed_completion_says_why(params: dict[str, Any], why: str) -> None:
    found = completion_call(params)
    assert isinstance(found, str)
    assert why in found


def test_the_gateways_reads_are_routed_to_their_server() -> None:
    """The gateway's call_for asks read_call with its namespace: a routed read is placed
    in its server and scoped by the upstream URI; an unrouted one is neither."""
    stub = Stub(FakeEnforcer())
    call_for = McpGateway.call_for
    routed = call_for(stub, "resources/read", {"uri": "bank.file:///x"})  # type: ignore[arg-type]
    assert isinstance(routed, Call)
    assert routed.resource == EntityRef("DataSet", "bank.file:///x")
    assert routed.resource_parents == (EntityRef("McpServer", "bank"),)
    assert routed.detail.url == "file:///x"  # type: ignore[union-attr]
    alone = call_for(stub, "resources/read", {"uri": "file:///x"})  # type: ignore[arg-type]
    assert isinstance(alone, Call)
    assert (alone.resource_parents, alone.detail.url) == ((), "file:///x")  # type: ignore[union-attr]
    prompt = call_for(stub, "prompts/get", {"name": "bank.p", "arguments": {"a": "b"}})  # type: ignore[arg-type]
    assert isinstance(prompt, Call)
    assert (prompt.resource, prompt.args) == (EntityRef("DataSet", "prompt:bank.p"), {"a": "b"})
    assert prompt.resource_parents == (EntityRef("McpServer", "bank"),)
    assert call_for(stub, "prompts/get", {"name": "bank.p", "arguments": {"a": 1}}) == (  # type: ignore[arg-type]
        "params.arguments: prompt arguments are strings"
    )
    tool = call_for(stub, "tools/call", {"name": "bank.t", "arguments": {"a": 1}})  # type: ignore[arg-type]
    assert isinstance(tool, Call)
    assert tool.resource_parents == (EntityRef("McpServer", "bank"),)
    assert call_for(stub, "tools/call", {"name": "bank.t", "arguments": []}) == (  # type: ignore[arg-type]
        "params.arguments: an object of at most 256 members"
    )


def test_the_gateways_completions_are_routed_to_their_server() -> None:
    """The gateway's call_for asks completion_call with its namespace: the referenced
    prompt or template is placed in its server, as its listing places it; an unrouted
    one is not placed (and is never forwarded)."""
    stub = Stub(FakeEnforcer())
    call_for = McpGateway.call_for
    for ref, kind, item in (
        ({"type": "ref/prompt", "name": "bank.p"}, "prompt", "bank.p"),
        ({"type": "ref/resource", "uri": "bank.x://{id}"}, "template", "bank.x://{id}"),
    ):
        params = {"ref": ref, "argument": ARGUMENT}
        routed = call_for(stub, COMPLETE_METHOD, params)  # type: ignore[arg-type]
        assert isinstance(routed, Call), routed
        listed = Listed(kind, item, item.removeprefix("bank."), "bank")  # type: ignore[arg-type]
        action, resource, parents = listed.question()
        assert (routed.action, routed.resource, routed.resource_parents) == (
            action,
            resource,
            parents,
        )
        assert parents == (EntityRef("McpServer", "bank"),)
        assert (routed.tool, routed.args) == (COMPLETE_METHOD, {})
    alone = call_for(  # type: ignore[arg-type]
        stub, COMPLETE_METHOD, {"ref": {"type": "ref/prompt", "name": "p"}, "argument": ARGUMENT}
    )
    assert isinstance(alone, Call)
    assert alone.resource_parents == ()
