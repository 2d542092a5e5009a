"""The MCP gateway's namespacing and its questions to policy: which upstream serves an
exposed name, how a call maps onto Cedar, and which listed items one caller sees."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from tests.unit.policy_support import ARGS_EXTENSION, agent, authorizer, engine

from agentiam.adapters.gateway.mcp_proxy import (
    Listed,
    Namespace,
    Visibility,
    prompt_call,
    resource_call,
    tool_call,
)
from agentiam.adapters.gateway.mcp_upstream import UpstreamServer
from agentiam.core.credentials.verifier import VerifiedAccess
from agentiam.core.delegation.authorization_details import ApiCall, CustomCall, ToolCall
from agentiam.core.delegation.chain import ChainClaims
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.core.policy.model import EntityRef
from agentiam.core.policy.schema import Schema

GATEWAY = "https://gw.example.com/mcp"
BANK = UpstreamServer("bank", "https://bank.internal/mcp", "bank.")
CRM = UpstreamServer("crm", "https://crm.internal/mcp", "crm-")
POLICIES = """
@id("bank-tools")
permit (principal in AgentGroup::"team=payments", action == Action::"invoke_tool", resource)
when { resource in [Tool::"bank.search", Tool::"bank.transfer"] };

@id("small-refunds")
permit (principal in AgentGroup::"team=payments", action == Action::"invoke_tool",
        resource == Tool::"bank.refund")
when { context.args has amount && context.args.amount < 10 };

@id("no-large-transfers")
forbid (principal, action == Action::"invoke_tool", resource == Tool::"bank.transfer")
when { context.args has amount && context.args.amount > 1000 };

@id("bank-reads")
permit (principal in AgentGroup::"team=payments", action == Action::"read", resource)
when { resource in [DataSet::"bank.https://bank.example/rates",
                    DataSet::"bank.bank://statements/{id}",
                    DataSet::"prompt:bank.summarize",
                    DataSet::"prompt:x"] };
"""
ITEMS = [
    Listed("tool", "bank.search", "search"),
    Listed("tool", "bank.transfer", "transfer"),
    Listed("tool", "bank.refund", "refund"),
    Listed("tool", "bank.delete_everything", "delete_everything"),
    Listed("resource", "bank.https://bank.example/rates", "https://bank.example/rates"),
    Listed("resource", "bank.bank://secrets", "bank://secrets"),
    Listed("template", "bank.bank://statements/{id}", "bank://statements/{id}"),
    Listed("prompt", "bank.summarize", "summarize"),
    Listed("prompt", "bank.jailbreak", "jailbreak"),
]


def access(agent_id: str = "agt_pay", details: Sequence[Mapping[str, Any]] = ()) -> VerifiedAccess:
    return VerifiedAccess(
        subject=agent_id,
        client_id=agent_id,
        scope=("mcp",),
        jti="tok_1",
        issued_at=0,
        expires_at=2**40,
        jkt="thumbprint",
        claims={"aud": GATEWAY},
        chain=ChainClaims(authorization_details=tuple(details)),
    )


@pytest.fixture
def live() -> Any:
    return authorizer(
        POLICIES,
        schema=Schema(ARGS_EXTENSION),
        agents=[
            agent("agt_pay", labels={"team": "payments"}),
            agent("agt_ops", labels={"team": "ops"}),
        ],
    )


def shown(visibility: Visibility, who: VerifiedAccess) -> set[str]:
    flags = visibility.visible(who, ITEMS)
    return {item.exposed for item, ok in zip(ITEMS, flags, strict=True) if ok}


# -- namespacing -------------------------------------------------------------------------------


def test_names_route_to_the_server_whose_prefix_they_carry() -> None:
    names = Namespace([BANK, CRM])
    assert names.route("bank.search") == (BANK, "search")
    assert names.route("crm-contacts.find") == (CRM, "contacts.find")
    assert names.route("bank.file:///a/b") == (BANK, "file:///a/b")
    assert names.expose(BANK, "search") == "bank.search"
    for unknown in ("bank.", "bank", "search", "other.search", "", "crm.search"):
        assert names.route(unknown) is None, unknown
    single = Namespace([UpstreamServer("only", "https://x.internal/mcp", "")])
    assert single.route("search")[1] == "search"  # type: ignore[index]


# -- the Cedar mapping --------------------------------------------------------------------------


def test_a_tool_call_is_invoke_tool_on_the_exposed_tool_with_its_arguments() -> None:
    call = tool_call("bank.transfer", {"amount": 5, "to": "acme"}, location=GATEWAY)
    assert call.action == "invoke_tool"
    assert call.resource == EntityRef("Tool", "bank.transfer")
    assert call.detail == ToolCall("bank.transfer", {"amount": 5, "to": "acme"}, GATEWAY)
    assert call.tool == "bank.transfer"
    assert call.context(access())["args"] == {"amount": 5, "to": "acme"}
    assert call.context(access())["delegation"]["actors"] == ["agt_pay"]


def test_resource_reads_and_prompts_are_read_on_data_sets() -> None:
    read = resource_call("bank.https://bank.example/rates", "https://bank.example/rates")
    assert (read.action, read.resource) == ("read", EntityRef("DataSet", read.tool))
    assert read.detail == ApiCall("read", "https://bank.example/rates")
    assert "args" not in read.context(access())
    prompt = prompt_call("bank.summarize", {"text": "q3"})
    assert prompt.resource == EntityRef("DataSet", "prompt:bank.summarize")
    assert prompt.detail == CustomCall("mcp_prompt", {"prompt": "bank.summarize"})
    assert prompt.context(access())["args"] == {"text": "q3"}


def test_calls_are_decided_on_their_arguments(live: Any) -> None:
    def decide(name: str, args: dict[str, Any]) -> str:
        call = tool_call(name, args, location=GATEWAY)
        request = AuthzRequest(
            EntityRef("Agent", "agt_pay"), call.action, call.resource, call.context(access())
        )
        return str(live.decide(request).decision)

    assert decide("bank.transfer", {"amount": 10}) == "allow"
    assert decide("bank.transfer", {"amount": 5000}) == "deny"
    assert decide("bank.refund", {"amount": 5}) == "allow"
    assert decide("bank.refund", {"amount": 50}) == "deny"
    assert decide("bank.delete_everything", {}) == "deny"


# -- listings -------------------------------------------------------------------------------


def test_a_listing_shows_what_a_call_without_arguments_may_do(live: Any) -> None:
    visibility = Visibility(lambda: live, location=GATEWAY)
    assert shown(visibility, access()) == {
        "bank.search",
        "bank.transfer",  # its limit is a forbid on arguments: still listed
        "bank.https://bank.example/rates",
        "bank.bank://statements/{id}",
        "bank.summarize",
    }  # bank.refund's permit needs arguments; nothing permits the rest
    assert shown(visibility, access("agt_ops")) == set()
    assert shown(visibility, access("agt_unknown")) == set()


def test_a_task_scoped_token_lists_only_what_its_entries_cover(live: Any) -> None:
    visibility = Visibility(lambda: live, location=GATEWAY)
    details = [
        # argument constraints are checked per call, not when listing
        {
            "type": "tool_invocation",
            "tools": ["bank.transfer"],
            "arguments": {"amount": {"max": 100}},
        },
        {"type": "api_access", "locations": ["https://bank.example/"], "actions": ["read"]},
    ]
    assert shown(visibility, access(details=details)) == {
        "bank.transfer",
        "bank.https://bank.example/rates",
    }  # templates and prompts: no detail type covers them
    elsewhere = [
        {
            "type": "tool_invocation",
            "tools": ["bank.search"],
            "locations": ["https://other.example/mcp"],
        }
    ]
    assert shown(visibility, access(details=elsewhere)) == set()
    here = [{"type": "tool_invocation", "tools": ["bank.search"], "locations": [GATEWAY]}]
    assert shown(visibility, access(details=here)) == {"bank.search"}
    assert visibility.visible(access(), []) == []


def test_a_resource_cannot_pass_for_a_prompt(live: Any) -> None:
    visibility = Visibility(lambda: live, location=GATEWAY)
    # "prompt:x" is permitted as a prompt's data set; a resource exposed under that id is not
    assert visibility.visible(access(), [Listed("resource", "prompt:x", "x")]) == [False]
    assert visibility.visible(access(), [Listed("prompt", "x", "x")]) == [True]


def test_listings_follow_policy_changes_and_do_not_count_as_calls(live: Any) -> None:
    visibility = Visibility(lambda: live, location=GATEWAY)
    assert "bank.search" in shown(visibility, access())
    before = live.rates.hit(EntityRef("Agent", "agt_pay"), 0.0)
    shown(visibility, access())
    assert live.rates.hit(EntityRef("Agent", "agt_pay"), 0.0) == before + 1  # only our hit
    allow_all = (
        'permit (principal, action == Action::"invoke_tool", resource == Tool::"bank.search");'
    )
    live.update(engine(allow_all, Schema(ARGS_EXTENSION), version=2))
    assert shown(visibility, access("agt_ops")) == {"bank.search"}


def test_past_the_outage_bound_nothing_is_listed() -> None:
    from agentiam.errors import ServiceUnavailable

    def gone() -> Any:
        raise ServiceUnavailable("the gateway has lost the control plane")

    with pytest.raises(ServiceUnavailable):
        Visibility(gone, location=GATEWAY).visible(access(), ITEMS)


# -- listings decide as calls do: risk score, request rate, time zone ----------------------------

RISK_AND_RATE = """
@id("all") permit (principal, action, resource);
@id("risky") forbid (principal, action, resource) when { context.risk_score > 70 };
@id("busy") forbid (principal, action, resource) when { context.request_rate > 3 };
"""
MANY = [Listed("tool", f"bank.t{i}", f"t{i}") for i in range(8)]


def _as_calls(risk: int = 0) -> Any:
    scores = {"agt_pay": risk}
    return authorizer(
        RISK_AND_RATE,
        agents=[agent("agt_pay"), agent("agt_ops")],
        risk=lambda ref: scores.get(ref.id, 0),
    )


def test_a_risky_agent_is_shown_nothing_its_calls_would_be_refused() -> None:
    """The attack: an agent whose risk score makes policy refuse its calls lists the
    tools anyway. Listing decisions carry the live authorizer's risk source."""
    live = _as_calls(risk=90)
    visibility = Visibility(lambda: live, location=GATEWAY)
    call = live.decide(
        AuthzRequest(EntityRef("Agent", "agt_pay"), "invoke_tool", EntityRef("Tool", "bank.t0"))
    )
    assert call.policies == ("risky",)
    assert visibility.visible(access("agt_pay"), MANY) == [False] * len(MANY)
    assert visibility.visible(access("agt_ops"), MANY) == [True] * len(MANY)


def test_a_long_listing_does_not_trip_a_request_rate_forbid() -> None:
    """Listing decisions neither count as calls nor count themselves: eight items
    under ``request_rate > 3`` are all shown to an agent that has made no call."""
    live = _as_calls()
    visibility = Visibility(lambda: live, location=GATEWAY)
    assert visibility.visible(access("agt_pay"), MANY) == [True] * len(MANY)
    assert visibility.visible(access("agt_pay"), MANY) == [True] * len(MANY)
    assert live.rates.peek(EntityRef("Agent", "agt_pay"), live._clock().timestamp()) == 0


def test_an_agent_whose_calls_are_refused_for_their_rate_is_shown_nothing() -> None:
    live = _as_calls()
    visibility = Visibility(lambda: live, location=GATEWAY)
    principal = EntityRef("Agent", "agt_pay")
    for _ in range(4):
        live.decide(AuthzRequest(principal, "invoke_tool", EntityRef("Tool", "bank.t0")))
    refused = live.decide(AuthzRequest(principal, "invoke_tool", EntityRef("Tool", "bank.t0")))
    assert refused.policies == ("busy",)
    assert visibility.visible(access("agt_pay"), MANY) == [False] * len(MANY)
    assert visibility.visible(access("agt_ops"), MANY) == [True] * len(MANY)


def test_listed_resources_templates_and_prompts_are_data_sets_in_their_server() -> None:
    import mcp_types as types

    from agentiam.adapters.gateway.mcp_tools import item_records

    server = EntityRef("McpServer", "bank")
    resources = [
        types.Resource(name="rates", uri="bank://rates"),
        types.Resource(name="alias", uri="prompt:x"),
    ]
    assert [(r.id, r.parents) for r in item_records(BANK, "resources", resources)] == [
        ("bank.bank://rates", (server,)),
        ("bank.prompt:x", (server,)),
    ]
    # without a prefix, "prompt:x" would be a prompt's entity: no record
    only = UpstreamServer("only", "https://only.internal/mcp", "")
    assert [r.id for r in item_records(only, "resources", resources)] == ["bank://rates"]
    templates = [types.ResourceTemplate(name="s", uri_template="bank://statements/{id}")]
    assert [r.id for r in item_records(BANK, "templates", templates)] == [
        "bank.bank://statements/{id}"
    ]
    prompts = [types.Prompt(name="summarize")]
    assert [r.id for r in item_records(BANK, "prompts", prompts)] == ["prompt:bank.summarize"]
    assert item_records(BANK, "prompts", resources) == ()  # not prompts: none
