"""Attacks on the policy decision core: each test tries to get an allow it should not,
to make a forbid disappear, to smuggle values into the context, to inject Cedar
through names and ids, or to crash the process with hostile policy text, and asserts
that the attempt is refused (deny, or ``InvalidInput``) by the rule meant to catch it.

Every attack starts from a request that is otherwise allowed: the baseline at the top
proves ``permit (principal, action, resource)`` lets a healthy agent through, so a
deny below is the attack being caught, not a broken fixture.

Policy text that crashed cedarpy's native parser is parsed in a child interpreter
(:func:`parse_in_child`), so a segfault fails one test instead of the whole run.
"""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.policy_support import (
    ARGS_EXTENSION,
    NOW,
    Clock,
    agent,
    authorizer,
    decide,
    human,
    parse_in_child,
    ref,
    request,
    resource,
)

from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.policy import authorizer as authorizer_module
from agentiam.core.policy.authorizer import Authorizer, Decision, RateCounter
from agentiam.core.policy.engine import PolicyEngine, validate
from agentiam.core.policy.entities import EntitySnapshot, check_resource
from agentiam.core.policy.model import Mode, PolicyRecord, check_policy_id
from agentiam.core.policy.parsing import (
    MAX_NESTING,
    MAX_POLICIES_PER_TEXT,
    MAX_POLICY_BYTES,
    MAX_TEXT_BYTES,
    check_nesting,
    parse_policies,
    parse_single,
    render_policies,
)
from agentiam.core.policy.schema import MAX_EXTENSION_BYTES, Schema
from agentiam.core.policy.values import ValueTypeError, cedar_string, to_cedar
from agentiam.errors import InvalidInput

PERMIT_ALL = '@id("all") permit (principal, action, resource);'
ARGS_SCHEMA = Schema(ARGS_EXTENSION)


def permit_all(**kwargs: Any) -> Authorizer:
    kwargs.setdefault("agents", [agent()])
    return authorizer(PERMIT_ALL, **kwargs)


def assert_denied_before_policies(decision: Decision, reason: str) -> None:
    assert decision.decision == "deny"
    assert decision.reasons == (reason,)
    assert decision.errors == (reason,)
    assert decision.evaluated == 0
    assert decision.policies == ()


def assert_invalid_request(decision: Decision, message: str) -> None:
    assert decision.decision == "deny"
    assert len(decision.reasons) == 1
    assert decision.reasons[0].startswith("the request is not valid: ")
    assert message in decision.reasons[0]
    assert decision.policies == ()


# -- baseline -------------------------------------------------------------------------


def test_baseline_permit_all_allows_a_healthy_agent_and_human() -> None:
    az = permit_all(humans=[human()])
    assert decide(az).allowed
    assert decide(az, ref("Human", "hum_1")).allowed
    assert decide(az, "agt_1", "GET", ref("Endpoint", "e")).allowed
    assert decide(az, "agt_1", "spawn_agent", ref("Agent", "agt_new")).allowed


# -- erroring policies fail closed ----------------------------------------------------


@pytest.mark.parametrize(
    "condition",
    [
        'resource.classification == "restricted"',  # the resource has no classification
        'resource.getTag("owner") == "x"',  # the resource has no such tag
        'principal.getTag("team") == "x"',  # the agent has no such label
        "context.args.amount > 100",  # no such argument in this call
        "context.risk_score + 9223372036854775807 > 0",  # overflow
        'resource.name like "*" && true',  # name is optional and missing
        "principal.sponsors.contains(resource.owner)",  # owner is missing
    ],
)
def test_an_erroring_forbid_does_not_let_a_permit_through(condition: str) -> None:
    az = authorizer(
        PERMIT_ALL + f'\n@id("guard") forbid (principal, action, resource) when {{ {condition} }};',
        schema=ARGS_SCHEMA,
        agents=[agent()],
        resources=[resource("Tool", "t1")],
    )
    decision = decide(az, target="t1", context={"risk_score": 5})
    assert decision.decision == "deny"
    assert decision.policies == ("guard",)
    assert decision.reasons == (
        "forbid policy guard failed to evaluate; it is treated as matching (fail closed)",
    )
    assert decision.errors
    assert "guard" in decision.errors[0]


def test_an_erroring_forbid_on_a_resource_not_in_the_catalog_denies() -> None:
    az = authorizer(
        PERMIT_ALL + '\n@id("guard") forbid (principal, action, resource) when '
        '{ resource.classification == "restricted" };',
        agents=[agent()],
    )
    decision = decide(az, target="never_catalogued")
    assert (decision.decision, decision.policies) == ("deny", ("guard",))


def test_an_erroring_permit_does_not_grant() -> None:
    az = authorizer(
        '@id("pub") permit (principal, action, resource)\n'
        'when { resource.classification == "public" };',
        agents=[agent()],
        resources=[resource("Tool", "t1")],
    )
    decision = decide(az, target="t1")
    assert decision.decision == "deny"
    assert decision.reasons == ("no policy permits this request (default deny)",)
    assert decision.errors  # reported, but a failed permit grants nothing


def test_a_matching_forbid_and_an_erroring_forbid_both_deny() -> None:
    az = authorizer(
        PERMIT_ALL + '\n@id("plain") forbid (principal, action, resource is Tool);\n'
        '@id("broken") forbid (principal, action, resource) when { resource.nope };',
        agents=[agent()],
    )
    decision = decide(az)
    assert decision.decision == "deny"
    assert "broken" in decision.policies


def test_an_entity_id_imitating_a_policy_name_cannot_redirect_error_attribution() -> None:
    """Cedar's error message quotes the resource; an id that looks like ``policy `all```
    must not get the error attributed to the permit."""
    az = authorizer(
        PERMIT_ALL + '\n@id("guard") forbid (principal, action, resource)\n'
        'when { resource.classification == "x" };',
        agents=[agent()],
    )
    decision = decide(az, target="x` policy `all` y")
    assert (decision.decision, decision.policies) == ("deny", ("guard",))


def _fake_cedar(monkeypatch: pytest.MonkeyPatch, errors: list[str], reasons: list[str]) -> None:
    """A stand-in for Cedar's answer (named as such: real Cedar cannot be made to
    produce these diagnostics): Allow, with the given reasons and errors."""

    def cedar_authorize(*_args: Any) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
        return True, tuple(reasons), tuple(errors)

    monkeypatch.setattr(authorizer_module, "cedar_authorize", cedar_authorize)


@pytest.mark.parametrize(
    "error",
    [
        "evaluation stopped: an internal error",  # names no policy
        "error while evaluating policy `ghost`: something",  # a policy not in the set
    ],
)
def test_an_error_that_cannot_be_attributed_denies(
    monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    # A condition, so the policy goes to Cedar (policies without one are decided by
    # their scope alone and never reach Cedar).
    az = authorizer('@id("all") permit (principal, action, resource) when { true };',
                    agents=[agent()])  # fmt: skip
    _fake_cedar(monkeypatch, errors=[error], reasons=["all"])
    decision = decide(az)
    assert decision.decision == "deny"
    assert decision.reasons == (
        "a policy failed to evaluate and could not be identified (fail closed)",
    )
    assert decision.errors == (error,)


def test_an_erroring_permit_reported_alongside_an_allow_keeps_the_allow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control for the test above: an error attributed to a permit is harmless."""
    az = permit_all()
    _fake_cedar(monkeypatch, errors=["error while evaluating policy `all`: x"], reasons=["all"])
    assert decide(az).allowed


# -- dry-run policies never decide ----------------------------------------------------


def test_a_dry_run_permit_never_allows() -> None:
    az = authorizer(
        '@id("trial") @mode("dry_run") permit (principal, action, resource);', agents=[agent()]
    )
    decision = decide(az)
    assert decision.decision == "deny"
    assert decision.policies == ()
    assert decision.dry_run is not None
    assert (decision.dry_run.decision, decision.dry_run.policies) == ("allow", ("trial",))
    assert decision.would_change


def test_a_dry_run_forbid_never_denies() -> None:
    az = authorizer(
        PERMIT_ALL + '\n@id("trial") @mode("dry_run") forbid (principal, action, resource);',
        agents=[agent()],
    )
    decision = decide(az)
    assert (decision.decision, decision.policies) == ("allow", ("all",))
    assert decision.dry_run is not None
    assert decision.dry_run.decision == "deny"


def test_an_erroring_dry_run_forbid_is_reported_but_never_denies() -> None:
    az = authorizer(
        PERMIT_ALL + '\n@id("trial") @mode("dry_run") forbid (principal, action, resource) when '
        "{ resource.nope };",
        agents=[agent()],
    )
    decision = decide(az)
    assert decision.decision == "allow"
    assert decision.errors == ()  # the enforced pass saw no error
    assert decision.dry_run is not None
    assert (decision.dry_run.decision, decision.dry_run.policies) == ("deny", ("trial",))


def test_a_dry_run_permit_cannot_outvote_an_enforced_forbid() -> None:
    az = authorizer(
        PERMIT_ALL + '\n@id("no") forbid (principal, action, resource);\n'
        '@id("yes") @mode("dry_run") permit (principal, action, resource);',
        agents=[agent()],
    )
    decision = decide(az)
    assert (decision.decision, decision.policies) == ("deny", ("no",))


# -- principals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (AgentStatus.SUSPENDED, "the agent is suspended"),
        (AgentStatus.DECOMMISSIONED, "the agent is decommissioned"),
        (AgentStatus.PENDING, "the agent is pending"),
    ],
)
def test_inactive_agents_are_denied_even_by_permit_all(status: AgentStatus, reason: str) -> None:
    az = permit_all(agents=[agent(status=status)])
    assert_denied_before_policies(decide(az), reason)


def test_an_ephemeral_agent_past_its_ttl_is_denied_even_while_active() -> None:
    az = permit_all(agents=[agent(expires_at=NOW - timedelta(seconds=1))])
    assert az.entities.agents["agt_1"].status is AgentStatus.ACTIVE
    assert_denied_before_policies(decide(az), "the agent's TTL has passed")


def test_an_ephemeral_agent_is_denied_exactly_at_its_ttl() -> None:
    az = permit_all(agents=[agent(expires_at=NOW)])
    assert_denied_before_policies(decide(az), "the agent's TTL has passed")


def test_an_unknown_agent_is_denied_even_by_permit_all() -> None:
    az = permit_all()
    assert_denied_before_policies(decide(az, "agt_nobody"), "the agent is not in the registry")


def test_an_agent_id_differing_only_in_case_or_space_is_unknown() -> None:
    az = permit_all()
    for spoof in ("AGT_1", "agt_1 ", " agt_1", "agt_1\n", "agt_1\x00"):
        assert not decide(az, spoof).allowed


def test_a_human_not_in_the_registry_is_denied() -> None:
    az = permit_all(humans=[human("hum_1")])
    assert_denied_before_policies(
        decide(az, ref("Human", "hum_2")), "the human is not in the registry"
    )


@pytest.mark.parametrize(
    "principal",
    [
        ref("Environment", "prod"),
        ref("AgentGroup", "team=a"),
        ref("Tool", "t1"),
        ref("McpServer", "s"),
        ref("Action", "invoke_tool"),
        ref("agent", "agt_1"),
        ref("Agent::Agent", "agt_1"),
    ],
)
def test_a_non_principal_type_cannot_be_the_principal(principal: Any) -> None:
    az = authorizer(
        PERMIT_ALL + "\npermit (principal is Environment, action, resource);",
        agents=[agent()],
    )
    decision = decide(az, principal)
    assert decision.decision == "deny"
    assert decision.reasons[0].startswith(f"{principal.type} cannot be a principal")
    assert decision.evaluated == 0


# -- actions --------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["launch_missiles", "read_actions", "http", "INVOKE_TOOL"])
def test_an_unknown_or_group_action_is_denied(action: str) -> None:
    az = permit_all()
    assert_denied_before_policies(
        decide(az, "agt_1", action), f"the action {action!r} is not in the schema"
    )


def test_an_empty_action_is_denied() -> None:
    assert_denied_before_policies(
        decide(permit_all(), "agt_1", ""),
        "entity ids and the action must be non-empty, valid Unicode, ≤ 512 chars",
    )


@pytest.mark.parametrize(
    ("action", "target"),
    [
        ("invoke_tool", ref("DataSet", "d")),
        ("invoke_tool", ref("McpServer", "s")),
        ("GET", ref("Tool", "t")),
        ("read", ref("Tool", "t")),
        ("spawn_agent", ref("Tool", "t")),
        ("delete", ref("Agent", "agt_1")),
        ("invoke_tool", ref("Human", "hum_1")),
        ("invoke_tool", ref("Environment", "prod")),
    ],
)
def test_an_action_on_the_wrong_resource_type_is_denied(action: str, target: Any) -> None:
    az = permit_all()
    assert_denied_before_policies(
        decide(az, "agt_1", action, target),
        f"the action {action} does not apply to a {target.type}",
    )


@pytest.mark.parametrize("target_type", ["Widget", "Action", "tool", ""])
def test_a_resource_of_a_type_not_in_the_schema_is_denied(target_type: str) -> None:
    az = permit_all()
    decision = decide(az, "agt_1", "invoke_tool", ref(target_type, "t"))
    assert decision.decision == "deny"
    assert decision.evaluated == 0
    assert decision.policies == ()


def test_an_action_for_agents_only_is_denied_to_a_human() -> None:
    schema = Schema(
        json.dumps(
            {
                "actions": {
                    "self_heal": {
                        "appliesTo": {"principalTypes": ["Agent"], "resourceTypes": ["Tool"]}
                    }
                }
            }
        )
    )
    az = authorizer(PERMIT_ALL, schema=schema, agents=[agent()], humans=[human()])
    assert decide(az, "agt_1", "self_heal").allowed
    assert_denied_before_policies(
        decide(az, ref("Human", "hum_1"), "self_heal"),
        "the action self_heal does not apply to a Human",
    )


# -- context injection ----------------------------------------------------------------


@pytest.mark.parametrize(
    "context",
    [
        {"time": {"epoch": 0, "hour": 3, "minute": 0, "weekday": 6, "date": "2000-01-01"}},
        {"request_rate": 0},
        {"Risk_score": 0},
        {"principal": {"type": "Agent", "id": "agt_admin"}},
        {"args": {}, "extra": 1},
    ],
)
def test_server_owned_and_unknown_context_keys_are_refused(context: dict[str, Any]) -> None:
    az = permit_all()
    assert_invalid_request(decide(az, context=context), "are not accepted")


def test_a_spoofed_time_does_not_reach_policies() -> None:
    az = authorizer(
        '@id("night") permit (principal, action, resource) when { context.time.hour == 3 };',
        agents=[agent()],
    )
    assert not decide(az, context={"time": {"hour": 3}}).allowed
    assert not decide(az).allowed  # the real hour is 12


def test_a_spoofed_request_rate_does_not_reset_the_counter() -> None:
    az = authorizer(
        PERMIT_ALL
        + '\n@id("flood") forbid (principal, action, resource) when { context.request_rate > 2 };',
        agents=[agent()],
    )
    decide(az)
    decide(az)
    assert not decide(az, context={"request_rate": 0}).allowed
    assert decide(az).policies == ("flood",)


ARGS_READER = (
    '@id("args") permit (principal, action, resource) when {\n'
    "  context.args has amount && context.args.amount < 100 };\n"
    '@id("shape") forbid (principal, action, resource) unless { context.args == context.args };'
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"amount": "5"}, "context.args.amount: expected an integer"),
        ({"amount": True}, "context.args.amount: expected an integer"),
        ({"amount": 5.0}, "context.args.amount: expected an integer"),
        ({"amount": 2**63}, "64-bit"),
        ({"amount": [5]}, "expected an integer"),
        ({"amount": {"__extn": {"fn": "decimal", "arg": "5.0"}}}, "expected an integer"),
        ({"price": 1.23456}, "four fractional digits"),
        ({"price": "0.00001"}, "four fractional digits"),
        ({"price": "NaN"}, "expected a decimal number"),
        ({"price": {"__extn": {"fn": "decimal", "arg": "1.0"}}}, "expected a decimal"),
        ({"dry": "false"}, "expected true or false"),
        ({"dry": 0}, "expected true or false"),
        ({"path": 5}, "expected a string"),
        ({"path": "x" * 10_000}, "limited"),
        ({"recipients": ["a"] * 1_001}, "limited"),
        ({"recipients": "a"}, "expected a list"),
        ({"recipients": [["a"]]}, "expected a string"),
        ({"owner": {"type": "Agent", "id": "agt_admin"}}, "expected an entity of type Human"),
        ({"owner": "hum_1"}, "entity reference"),
        ({"options": {"mode": "x", "sneaky": 1}}, "is not declared"),
        ({"options": {"depth": 1}}, "missing required"),
        ({"options": {"mode": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {}}}}}}}}}}, "string"),
    ],
)
def test_type_confused_arguments_are_denied(args: dict[str, Any], message: str) -> None:
    az = authorizer(ARGS_READER, schema=ARGS_SCHEMA, agents=[agent()])
    assert decide(az, context={"args": {"amount": 5}}).allowed  # baseline
    decision = decide(az, context={"args": {"amount": 5, **args}})
    assert_invalid_request(decision, message)


@pytest.mark.parametrize("args", [[], "amount=5", 5, None])
def test_arguments_that_are_not_an_object(args: Any) -> None:
    az = authorizer(ARGS_READER, schema=ARGS_SCHEMA, agents=[agent()])
    decision = decide(az, context={"args": args})
    # Falsy values are read as "no arguments" (so the permit does not match).
    assert decision.decision == "deny"


@pytest.mark.parametrize("value", [1e300, 10**30, "1e30", "-" + "9" * 40])
def test_an_out_of_range_decimal_is_denied_without_crashing(value: Any) -> None:
    """BUG: ``values._decimal`` quantizes with the default decimal context, which raises
    ``decimal.InvalidOperation`` (not ``ValueTypeError``) for numbers of more than 28
    significant digits, so the exception escapes ``Authorizer.decide``."""
    az = authorizer(ARGS_READER, schema=ARGS_SCHEMA, agents=[agent()])
    decision = decide(az, context={"args": {"amount": 5, "price": value}})
    assert_invalid_request(decision, "context.args.price")


def test_type_confused_arguments_are_denied_even_when_no_policy_reads_them() -> None:
    """BUG: the context is built (and so validated) only for the attributes the policy
    slice reads. ``amount`` is declared a Long; a string is let through, the decision
    is allow, and the same request is denied when decided in full."""
    az = permit_all(schema=ARGS_SCHEMA)
    decision = decide(az, context={"args": {"amount": "all of it"}})
    assert_invalid_request(decision, "context.args.amount: expected an integer")


@pytest.mark.parametrize("risk", [-1, 101, 10**20, "50", 50.0, True, None, [1]])
def test_an_invalid_risk_score_is_refused(risk: Any) -> None:
    az = permit_all()
    assert_invalid_request(
        decide(az, context={"risk_score": risk}), "context.risk_score: expected an integer 0-100"
    )


def test_a_caller_cannot_lower_the_server_risk_score() -> None:
    az = authorizer(
        PERMIT_ALL + '\n@id("risky") forbid (principal, action, resource) when '
        "{ context.risk_score > 50 };",
        agents=[agent()],
        risk=lambda _principal: 90,
    )
    decision = decide(az, context={"risk_score": 0})
    assert (decision.decision, decision.risk_score) == ("deny", 90)


READS_EVERYTHING = (
    PERMIT_ALL + '\n@id("reader") forbid (principal, action, resource) unless '
    "{ context == context };"
)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"approval": {"state": "approved!"}}, "approval.state must be one of"),
        ({"approval": "approved"}, "approval: expected an object"),
        ({"approval": {"state": "approved", "approver": 7}}, "approver"),
        ({"approval": {"state": "approved", "by": "me"}}, "not declared"),
        ({"delegation": {"depth": 0, "chain": []}}, "unknown members"),
        ({"delegation": {"actors": "agt_1"}}, "expected a list of agent ids"),
        ({"delegation": {"actors": [{"type": "Agent", "id": "x"}]}}, "list of agent ids"),
        ({"delegation": {"depth": "0"}}, "depth must be the number of hops"),
        ({"delegation": {"actors": ["agt_1", "agt_9"], "depth": 5}}, "depth must be"),
        ({"delegation": {"actors": ["agt_9"]}}, "must include the acting agent"),
        ({"delegation": "root"}, "delegation: expected an object"),
        ({"delegation": {"initiating_human": ["hum_1"]}}, "initiating_human"),
        ({"authorization_details": {"type": "x"}}, "expected a list"),
        ({"authorization_details": [{"tools": ["a"]}]}, "missing required"),
        ({"data_classification": 3}, "expected a string"),
        ({"source_environment": ["prod"]}, "expected a string"),
    ],
)
def test_malformed_caller_context_is_refused(context: dict[str, Any], message: str) -> None:
    az = authorizer(READS_EVERYTHING, agents=[agent()])
    assert decide(az).allowed  # baseline
    assert_invalid_request(decide(az, context=context), message)


# -- entity ids are data --------------------------------------------------------------


@pytest.mark.parametrize(
    "spoof",
    [
        'safe" || true || "',
        'safe"); permit(principal, action, resource); //',
        "safe\n",
        'safe\\"',
        "safe\x00",
        'Tool::"safe"',
    ],
)
def test_quotes_and_newlines_in_request_ids_are_data(spoof: str) -> None:
    az = authorizer(
        '@id("safe") permit (principal, action, resource == Tool::"safe");', agents=[agent()]
    )
    assert decide(az, target="safe").allowed
    assert not decide(az, target=spoof).allowed


def test_a_registered_principal_with_a_quote_in_its_id_matches_only_itself() -> None:
    tricky = 'hum"1'
    az = authorizer(
        f'@id("me") permit (principal == Human::{cedar_string(tricky)}, action, resource);',
        humans=[human(tricky), human("hum")],
    )
    assert decide(az, ref("Human", tricky)).allowed
    assert not decide(az, ref("Human", "hum")).allowed


def test_a_lone_surrogate_in_a_request_id_is_denied_not_crashed() -> None:
    """BUG: a JSON body can carry ``"\\ud800"``; cedarpy cannot encode it and raises
    ``UnicodeEncodeError`` out of ``Authorizer.decide`` instead of a deny."""
    az = permit_all()
    decision = decide(az, target="\ud800")
    assert decision.decision == "deny"


def test_a_lone_surrogate_in_a_context_string_is_denied() -> None:
    az = authorizer(READS_EVERYTHING, agents=[agent()])
    assert decide(az, context={"data_classification": "\udfff"}).decision == "deny"


# -- policy text ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opening", "closing", "inner"),
    [("(", ")", "true"), ("[", "]", "1"), ("{a: ", "}", "1")],
    ids=["parentheses", "brackets", "braces"],
)
def test_deeply_nested_brackets_are_refused_before_cedar_sees_them(
    opening: str, closing: str, inner: str
) -> None:
    body = opening * 1_000 + inner + closing * 1_000
    text = f"permit (principal, action, resource) when {{ {body} == {body} }};"
    started = time.perf_counter()
    with pytest.raises(InvalidInput, match="nests brackets deeper than 32"):
        parse_policies(text)
    assert time.perf_counter() - started < 1.0


def test_deep_nesting_is_refused_in_a_child_process_without_a_crash() -> None:
    result = parse_in_child(
        "permit (principal, action, resource) when { " + "(" * 5_000 + "true" + ")" * 5_000 + " };"
    )
    assert result.returncode == 0
    assert result.output.startswith("InvalidInput: the policy text nests brackets")


def test_brackets_in_strings_and_comments_do_not_count() -> None:
    text = (
        "// " + "(" * 200 + "\n"
        '@id("p") permit (principal, action, resource) when '
        '{ resource.name == "' + "[{(" * 200 + '\\"" };'
    )
    (parsed,) = parse_policies(text)
    assert parsed.record.id == "p"


def test_closing_brackets_cannot_buy_depth_for_later_opening_ones() -> None:
    """Depth goes negative on stray closing brackets, so the pre-check passes 3 000
    opening ones after them; Cedar stops at the first stray bracket without building
    the nested expression, so the process survives."""
    n = 3_000
    text = (
        ")" * n
        + "permit (principal, action, resource) when { "
        + "(" * n
        + "true"
        + ")" * n
        + " };"
    )
    check_nesting(text)  # not caught by the pre-check…
    result = parse_in_child(text)
    assert result.returncode == 0  # …but no crash either
    assert result.output == "InvalidInput: the policy text is not valid Cedar"


def test_a_carriage_return_does_not_hide_brackets_in_a_comment() -> None:
    """BUG: ``check_nesting`` ends a ``//`` comment only at ``\\n``, while Cedar's lexer
    also ends it at ``\\r``. Brackets after a ``\\r`` are skipped by the pre-check but
    parsed by cedarpy: 40 levels pass here (the limit is 32), and 2 000 levels crash the
    process (next test)."""
    with pytest.raises(InvalidInput, match="nests brackets"):
        check_nesting("// comment\r" + "(" * (MAX_NESTING + 8) + "\n")


def _crash_text(kind: str) -> str:
    head = "permit (principal, action, resource) when { "
    if kind == "cr-comment":
        return head + "// x\r" + "(" * 2_000 + "\ntrue" + ")" * 2_000 + " };"
    if kind == "and-chain":
        return head + " && ".join(["true"] * 100_000) + " };"
    if kind == "if-chain":
        return head + "if true then " * 10_000 + "true" + " else false" * 10_000 + " };"
    if kind == "attribute-chain":
        return head + "context.a" + ".b" * 100_000 + " == 1 };"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["cr-comment", "and-chain", "if-chain", "attribute-chain"])
def test_deep_expressions_without_brackets_do_not_crash_the_process(kind: str) -> None:
    """BUG: the nesting pre-check counts only brackets. Cedar nests ``&&`` chains,
    ``if … then … else`` chains and attribute chains too; these texts (all under
    ``MAX_TEXT_BYTES``) make cedarpy's native parser overflow its stack and kill the
    process with SIGSEGV (return code -11) instead of raising ``InvalidInput``."""
    text = _crash_text(kind)
    assert len(text.encode()) < MAX_TEXT_BYTES
    result = parse_in_child(text)
    assert result.returncode == 0, f"the child died: return code {result.returncode}"
    assert result.output.startswith("InvalidInput"), result.output


def test_a_long_operator_chain_is_invalid_input() -> None:
    """BUG: 1 000 ``&&`` (8 KB) make ``json.loads(cedarpy.policies_to_json_str(text))``
    (parsing.py, ``parse_policies``) raise ``RecursionError``, which is not caught and
    is not ``InvalidInput``."""
    text = "permit (principal, action, resource) when { " + " && ".join(["true"] * 1_000) + " };"
    with pytest.raises(InvalidInput):
        parse_policies(text)


def test_a_policy_that_parses_and_validates_also_compiles() -> None:
    """BUG: 200 ``&&`` (1.6 KB) pass ``parse_policies`` and ``validate``, so the policy
    can be stored, but ``PolicyEngine`` (``compile_policies`` → ``cedarpy.policies_to_pst``)
    raises ``ValueError: expression nesting exceeds the supported limit of 100 levels``:
    one such policy stops the whole policy set version from loading. Expected: refused
    as ``InvalidInput`` at parse time (or compiled)."""
    text = '@id("long") permit (principal, action, resource) when { '
    text += " && ".join(["true"] * 200) + " };"
    try:
        stored = [p.record for p in parse_policies(text)]
    except InvalidInput:
        return  # refused up front: fine
    assert validate(Schema(), stored) == []
    engine = PolicyEngine(2, Schema(), stored)
    assert engine.by_id["long"].effect == "permit"


def test_stored_records_must_each_hold_exactly_one_policy() -> None:
    """BUG: ``compile_policies`` parses all records joined and only falls back to a
    per-record check when the policy count differs from the record count; a record
    holding two policies next to one holding none passes, and the second policy (a
    forbid) is filed under the other record's id."""
    stored = [
        PolicyRecord(
            id="pair",
            text="permit (principal, action, resource);\nforbid (principal, action, resource);",
        ),
        PolicyRecord(id="empty", text="// nothing here"),
    ]
    with pytest.raises(InvalidInput, match="expected one static policy"):
        PolicyEngine(1, Schema(), stored)


def test_a_has_chain_is_refused_quickly() -> None:
    """BUG: ``context has a.b.b…`` is expanded by Cedar into a quadratic conjunction:
    3 000 links (6 KB of text) take over 10 s of CPU (and 10 000 exhaust memory) before
    failing; nothing bounds it before cedarpy."""
    text = "permit (principal, action, resource) when { context has a" + ".b" * 3_000 + " };"
    result = parse_in_child(text, timeout=4.0)
    assert result.returncode == 0, result.output
    assert result.output.startswith("InvalidInput"), result.output


def test_a_policy_larger_than_the_policy_limit_is_refused() -> None:
    big = "a" * (MAX_POLICY_BYTES + 1)
    with pytest.raises(InvalidInput, match=f"policy big is larger than {MAX_POLICY_BYTES}"):
        parse_policies(
            f'@id("big") permit (principal, action, resource) when {{ resource.name == "{big}" }};'
        )


def test_a_text_larger_than_the_text_limit_is_refused_before_parsing() -> None:
    text = "// " + "x" * MAX_TEXT_BYTES
    started = time.perf_counter()
    with pytest.raises(InvalidInput, match=f"larger than {MAX_TEXT_BYTES} bytes"):
        parse_policies(text)
    assert time.perf_counter() - started < 1.0


def test_the_text_limit_counts_bytes_not_characters() -> None:
    text = "// " + "é" * (MAX_TEXT_BYTES // 2 + 1)
    with pytest.raises(InvalidInput, match="larger than"):
        parse_policies(text)


def test_too_many_policies_are_refused() -> None:
    text = "permit (principal, action, resource);\n" * (MAX_POLICIES_PER_TEXT + 1)
    with pytest.raises(InvalidInput, match=f"more than {MAX_POLICIES_PER_TEXT} policies"):
        parse_policies(text)


def test_a_lone_surrogate_in_policy_text_is_invalid_input() -> None:
    """BUG: ``parse_policies`` measures ``len(text.encode())`` outside any handler; a
    lone surrogate (which JSON ``"\\ud800"`` decodes to) raises ``UnicodeEncodeError``
    instead of ``InvalidInput``."""
    with pytest.raises(InvalidInput):
        parse_policies('permit (principal, action, resource) when { resource.name == "\ud800" };')


@pytest.mark.parametrize(
    "policy_id",
    [
        "",
        'a"b',
        "a`b",
        "a'b",
        "a\nb",
        "a b",
        "a\tb",
        "a\x00b",
        "-leading",
        ".leading",
        "x" * 129,
        "a/b",
        "a\\b",
        "ü",
        "a)b",
    ],
)
def test_policy_ids_with_quotes_backticks_or_control_characters_are_refused(
    policy_id: str,
) -> None:
    with pytest.raises(InvalidInput, match="is not valid"):
        check_policy_id(policy_id)
    with pytest.raises(InvalidInput):
        parse_policies(f"@id({cedar_string(policy_id)}) permit (principal, action, resource);")


@pytest.mark.parametrize("policy_id", ["ok\n", "all\n"])
def test_a_policy_id_with_a_trailing_newline_is_refused(policy_id: str) -> None:
    """BUG: ``model._POLICY_ID_RE`` ends in ``$``, which also matches before a final
    newline, so ``check_policy_id("ok\\n")`` accepts it (``re.fullmatch`` or ``\\Z`` is
    needed). ``parse_policies`` then stores a policy whose id differs from ``ok`` only
    by an invisible newline."""
    with pytest.raises(InvalidInput):
        check_policy_id(policy_id)
    with pytest.raises(InvalidInput):
        parse_policies(f"@id({cedar_string(policy_id)}) permit (principal, action, resource);")


def test_names_with_a_trailing_newline_are_refused_everywhere() -> None:
    """BUG (same root cause as above): ``entities._TAG_KEY_RE``, ``schema._NAME_RE``
    and ``values._TYPE_NAME_RE`` also end in ``$`` and accept a final newline: a
    catalog tag key ``"k\\n"``, an extension attribute ``"x\\n"`` and an entity
    reference of type ``"Tool\\n"`` are all accepted."""
    with pytest.raises(InvalidInput):
        check_resource(Schema(), resource("Tool", "t", tags={"k\n": "v"}))
    fragment = {"attributes": {"x\n": {"type": "String"}}, "type": "Record"}
    with pytest.raises(InvalidInput):
        Schema(json.dumps({"entityTypes": {"Tool": {"shape": fragment}}}))
    with pytest.raises(ValueTypeError):
        to_cedar({"type": "Tool\n", "id": "x"}, {"type": "Entity"}, {})


def test_a_non_string_policy_id_is_refused() -> None:
    with pytest.raises(InvalidInput):
        check_policy_id(7)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="must be a string"):
        parse_policies(b"permit (principal, action, resource);")  # type: ignore[arg-type]


INJECTION = '"); permit(principal, action, resource); @x("'


def test_a_description_cannot_inject_a_policy_through_render() -> None:
    record = PolicyRecord(
        id="deny-all",
        text="forbid (principal, action, resource);",
        description=INJECTION,
    )
    rendered = render_policies([record])
    parsed = parse_policies(rendered)
    assert len(parsed) == 1
    assert parsed[0].record == record


def test_a_description_from_parse_single_cannot_inject_either() -> None:
    record = parse_single(
        "forbid (principal, action, resource);",
        policy_id="deny-all",
        mode=Mode.ENFORCE,
        description=INJECTION + "\n\r\t\\",
    )
    assert [p.record for p in parse_policies(render_policies([record]))] == [record]


def test_a_mode_annotation_cannot_be_smuggled_in_a_description() -> None:
    record = PolicyRecord(
        id="p",
        text="forbid (principal, action, resource);",
        mode=Mode.ENFORCE,
        description='x") @mode("dry_run") @y("',
    )
    (parsed,) = parse_policies(render_policies([record]))
    assert parsed.record.mode is Mode.ENFORCE


@settings(max_examples=40, deadline=None)
@given(value=st.text(st.characters(blacklist_categories=["Cs"]), max_size=30))
def test_cedar_string_matches_exactly_the_value_it_escapes(value: str) -> None:
    """Whatever the text, a literal made by ``cedar_string`` is one Cedar string equal
    to the value (no early end, no dropped or added character)."""
    az = authorizer(
        '@id("exact") permit (principal, action, resource) when '
        f"{{ context.data_classification == {cedar_string(value)} }};",
        agents=[agent()],
    )
    assert decide(az, context={"data_classification": value}).allowed
    assert not decide(az, context={"data_classification": value + "x"}).allowed


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1f", "\x7f", "\n", "\r", "\t", '"', "\\"])
def test_cedar_string_leaves_no_raw_control_character_quote_or_backslash(char: str) -> None:
    literal = cedar_string(f"a{char}b")
    assert literal[0] == literal[-1] == '"'
    # Once the escape sequences are removed, only the plain characters remain.
    assert re.sub(r'\\(?:[nrt"\\]|u\{[0-9a-f]{1,6}\})', "", literal[1:-1]) == "ab"


# -- schema extensions ----------------------------------------------------------------


@pytest.mark.parametrize(
    "fragment",
    [
        {
            "entityTypes": {
                "Agent": {"shape": {"type": "Record", "attributes": {"status": {"type": "Long"}}}}
            }
        },
        {
            "entityTypes": {
                "Agent": {"memberOfTypes": ["Environment", "AgentGroup", "Agent", "Tool"]}
            }
        },
        {
            "entityTypes": {
                "Agent": {"shape": {"type": "Record", "attributes": {}}, "tags": {"type": "Long"}}
            }
        },
        {"entityTypes": {"Tool": {"memberOfTypes": ["Agent"]}}},
        {
            "entityTypes": {
                "Human": {"shape": {"type": "Record", "attributes": {"email": {"type": "Long"}}}}
            }
        },
        {"entityTypes": {"Action": {}}},
        {
            "actions": {
                "invoke_tool": {
                    "appliesTo": {"principalTypes": ["Agent"], "resourceTypes": ["DataSet"]}
                }
            }
        },
        {"actions": {"spawn_agent": {}}},
        {"actions": {"http": {"memberOf": []}}},
        {"commonTypes": {"RequestContext": {"type": "Record", "attributes": {}}}},
    ],
)
def test_an_extension_cannot_redefine_the_base(fragment: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        Schema(json.dumps(fragment))


def test_an_extension_cannot_add_a_required_attribute_to_a_base_type() -> None:
    schema = Schema(
        json.dumps(
            {
                "entityTypes": {
                    name: {
                        "shape": {
                            "type": "Record",
                            "attributes": {"clearance": {"type": "String", "required": True}},
                        }
                    }
                    for name in ("Agent", "Human", "Tool", "Environment")
                }
            }
        )
    )
    for name in ("Agent", "Human", "Tool", "Environment"):
        assert schema.entity_types[name].attributes["clearance"]["required"] is False
    # Registry entities, which never have the attribute, still build and decide.
    az = authorizer(PERMIT_ALL, schema=schema, agents=[agent()], resources=[resource("Tool", "t")])
    assert decide(az, target="t").allowed


def test_an_oversized_extension_is_refused() -> None:
    padding = {f"T{i}": {"shape": {"type": "Record", "attributes": {}}} for i in range(6_000)}
    text = json.dumps({"entityTypes": padding})
    assert len(text.encode()) > MAX_EXTENSION_BYTES
    with pytest.raises(InvalidInput, match=f"larger than {MAX_EXTENSION_BYTES} bytes"):
        Schema(text)


@pytest.mark.parametrize(
    "fragment",
    [
        {"entityTypes": {"Agent": {"shape": ["not", "an", "object"]}}},
        {"entityTypes": {"Tool": {"shape": "String"}}},
        {"entityTypes": ["Ticket"]},
        {"actions": {"approve": {"appliesTo": ["Agent"]}}},
        {"commonTypes": ["Money"]},
    ],
)
def test_a_malformed_extension_is_invalid_input(fragment: dict[str, Any]) -> None:
    """BUG: ``merge_extension`` calls ``.get``/``.items``/``.setdefault`` on members it
    never checked are objects, so these raise ``AttributeError`` instead of
    ``InvalidInput``."""
    with pytest.raises(InvalidInput):
        Schema(json.dumps(fragment))


# -- the catalog ----------------------------------------------------------------------


@pytest.mark.parametrize("reserved", ["Agent", "Human", "Environment", "AgentGroup", "Action"])
def test_catalog_entries_of_reserved_types_are_refused(reserved: str) -> None:
    with pytest.raises(InvalidInput):
        check_resource(Schema(), resource(reserved, "agt_1"))


def test_a_catalog_entry_cannot_impersonate_a_registry_agent() -> None:
    """Even if it were offered to the snapshot, an ``Agent`` catalog entry is dropped,
    so it cannot add attributes or parents to a real agent."""
    fake = resource("Agent", "agt_1", parents=[ref("AgentGroup", "admins")])
    snapshot = EntitySnapshot(Schema(), agents=[agent()], resources=[fake])
    assert ref("Agent", "agt_1") not in snapshot.resources
    assert ref("AgentGroup", "admins") not in snapshot.ancestors(ref("Agent", "agt_1"))


@pytest.mark.parametrize(
    ("record_type", "parent"),
    [
        ("Tool", ref("Api", "a")),
        ("Tool", ref("Agent", "agt_1")),
        ("Tool", ref("Environment", "prod")),
        ("Tool", ref("AgentGroup", "team=a")),
        ("Tool", ref("Tool", "other")),
        ("Endpoint", ref("McpServer", "s")),
        ("DataSet", ref("DataSet", "d")),
        ("McpServer", ref("McpServer", "s")),
        ("Api", ref("Api", "a")),
    ],
)
def test_catalog_parents_outside_member_of_types_are_refused(record_type: str, parent: Any) -> None:
    with pytest.raises(InvalidInput, match=f"a {record_type} cannot be in a {parent.type}"):
        check_resource(Schema(), resource(record_type, "x", parents=[parent]))


def test_a_catalog_entry_with_a_wrong_parent_gains_nothing_in_a_decision() -> None:
    az = authorizer(
        '@id("prod") permit (principal, action, resource in Environment::"prod");',
        agents=[agent()],
        resources=[resource("Tool", "t", parents=[ref("Environment", "prod")])],
    )
    assert ref("Tool", "t") not in az.entities.resources
    assert not decide(az, target="t").allowed


def test_a_catalog_parent_cycle_does_not_break_the_snapshot() -> None:
    """Each entry passes ``check_resource``; together they form a cycle. BUG: Cedar's
    transitive closure refuses the cycle and ``EntitySnapshot`` raises a bare
    ``ValueError``, so one pair of catalog entries stops every decision. Expected: the
    cycle is refused as ``InvalidInput`` or left out of the snapshot."""
    schema = Schema(
        json.dumps(
            {
                "entityTypes": {
                    "Folder": {
                        "memberOfTypes": ["Folder"],
                        "shape": {"type": "Record", "attributes": {}},
                    }
                }
            }
        )
    )
    loop = [
        resource("Folder", "a", parents=[ref("Folder", "b")]),
        resource("Folder", "b", parents=[ref("Folder", "a")]),
    ]
    for record in loop:
        check_resource(schema, record)
    try:
        snapshot = EntitySnapshot(schema, agents=[agent()], resources=loop)
    except InvalidInput:
        return  # refused as invalid: fine
    assert snapshot.agents["agt_1"].id == "agt_1"


def test_catalog_tags_are_checked() -> None:
    for tags in ({"k": 5}, {"": "v"}, {"a b": "v"}, {"k" * 64: "v"}, {"k\x00": "v"}):
        with pytest.raises(InvalidInput):
            check_resource(Schema(), resource("Tool", "t", tags=tags))  # type: ignore[arg-type]


def test_a_snapshot_built_later_keeps_an_old_decision_consistent() -> None:
    """A registry change (suspension) takes effect on the next decision, through
    ``update``, without touching the compiled policies."""
    clock = Clock()
    az = permit_all(clock=clock)
    assert decide(az).allowed
    az.update(entities=EntitySnapshot(Schema(), agents=[agent(status=AgentStatus.SUSPENDED)]))
    assert_denied_before_policies(decide(az), "the agent is suspended")


def test_filling_the_rate_counter_does_not_reset_the_busiest_principal() -> None:
    """BUG (low severity: needs ``max_principals`` distinct principals): when the
    counter is full, ``RateCounter.hit`` forgets the principals first *inserted*
    (dict order is not refreshed on update), not the least recently active. The
    busiest, longest-running agent is forgotten first, and its ``request_rate``
    drops to 1, undoing a rate-limit ``forbid``."""
    counter = RateCounter(max_principals=10)
    victim = ref("Agent", "busy")
    counter.hit(victim, 0.0)
    for i in range(9):
        counter.hit(ref("Agent", f"idle_{i}"), 0.0)
    for _ in range(5):
        counter.hit(victim, 1.0)
    counter.hit(ref("Agent", "newcomer"), 1.0)
    assert counter.hit(victim, 1.0) == 7


def test_the_native_cedar_call_answers_like_cedarpys_public_function() -> None:
    """``cedar_authorize`` calls cedarpy's native batch function directly; its answers
    (decision, reasons, errors) must be the public ``is_authorized``'s."""
    import cedarpy

    policies = cedarpy.PolicySet.from_str(
        '@id("p") permit (principal, action, resource) when { context.n > 1 };\n'
        '@id("f") forbid (principal, action, resource) when { resource.missing };'
    )
    entities = cedarpy.Entities.from_json_str("[]")
    for context in ({"n": 2}, {"n": 0}, {}):
        request = {
            "principal": {"type": "Agent", "id": "a"},
            "action": {"type": "Action", "id": "invoke_tool"},
            "resource": {"type": "Tool", "id": "t"},
            "context": context,
        }
        public = cedarpy.is_authorized(request, policies, entities)
        assert authorizer_module.cedar_authorize(request, policies, entities) == (
            public.allowed,
            tuple(public.diagnostics.reasons),
            tuple(public.diagnostics.errors),
        )


def test_shared_guards_outside_the_slice_never_error_into_a_decision() -> None:
    """Cedar sets carry every conditional policy for any principal (so they are shared
    across requests); one whose scope is another resource type, and whose condition
    would error if read, must not change a decision it cannot apply to."""
    az = authorizer(
        '@id("ds-guard") forbid (principal, action, resource is DataSet) '
        'when { resource.classification == "restricted" };\n'
        '@id("tools") permit (principal, action == Action::"invoke_tool", resource is Tool) '
        "when { context.risk_score < 50 };",
        agents=[agent()],
    )
    assert az.engine.shared_cedar_mask  # the guard is shared
    decision = decide(az)
    assert (decision.decision, decision.policies, decision.errors) == ("allow", ("tools",), ())
    assert az.decide(request(), full=True).decision == "allow"


@pytest.mark.parametrize(
    ("delegation", "reason"),
    [
        (
            {"actors": ["agt_parent", "agt_1"]},
            "the delegation chain is not valid: agent agt_parent: the agent is suspended",
        ),
        (
            {"actors": ["agt_ghost", "agt_1"]},
            "the delegation chain is not valid: agent agt_ghost: the agent is not in the registry",
        ),
        (
            {"actors": ["agt_1"], "initiating_human": "hum_ghost"},
            "the delegation's initiating human is not in the registry",
        ),
    ],
)
def test_a_broken_delegation_chain_is_denied_before_policies(
    delegation: dict[str, Any], reason: str
) -> None:
    """Suspending an agent cuts off everything delegated through it: a chain naming a
    suspended or unknown agent, or an unknown initiating human, is denied whatever the
    policies say."""
    az = authorizer(
        PERMIT_ALL,
        agents=[agent(), agent("agt_parent", status=AgentStatus.SUSPENDED)],
        humans=[human()],
    )
    assert_denied_before_policies(decide(az, context={"delegation": delegation}), reason)
    assert decide(az, context={"delegation": {"actors": ["agt_1"]}}).allowed
