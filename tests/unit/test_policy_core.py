"""The policy decision core, module by module: the Cedar schema and its operator
extensions, policy parsing and rendering, JSON-to-Cedar values, the entity snapshot,
the compiled engine, and the authorizer's decision (context, rates, risk, dry run,
reasons). No database: every input is built in memory.

Attacks on the same code (inputs meant to get a wrong decision or crash the process)
are in ``test_policy_attacks.py``; slicing is proved equal to full evaluation in
``test_policy_slicing.py``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import cedarpy
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
    engine,
    human,
    records,
    ref,
    request,
    resource,
)

from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.identities.models import AutonomyLevel
from agentiam.core.policy import parsing
from agentiam.core.policy.authorizer import (
    Authorizer,
    AuthzRequest,
    RateCounter,
    RequestError,
    build_context,
)
from agentiam.core.policy.engine import (
    WHOLE_CONTEXT,
    PolicyEngine,
    TypeKey,
    compile_policy,
    context_attributes,
    validate,
)
from agentiam.core.policy.entities import (
    EntitySnapshot,
    agent_entity,
    agent_parents,
    check_resource,
    human_entity,
)
from agentiam.core.policy.model import EntityRef, Mode, PolicyRecord, check_policy_id
from agentiam.core.policy.parsing import (
    MAX_NESTING,
    check_nesting,
    parse_policies,
    parse_single,
    render_policies,
)
from agentiam.core.policy.schema import (
    ACTION_GROUPS,
    BASE_SCHEMA,
    CONTEXT_TYPE,
    HTTP_METHODS,
    Schema,
    merge_extension,
)
from agentiam.core.policy.values import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_STRING,
    ValueTypeError,
    cedar_string,
    entity_literal,
    to_cedar,
)
from agentiam.errors import InvalidInput

ARGS_SCHEMA = Schema(ARGS_EXTENSION)
PERMIT_ALL = '@id("all") permit (principal, action, resource);'


def ext(**members: Any) -> str:
    return json.dumps(members)


# -- schema: the base -----------------------------------------------------------------


def test_base_schema_actions_apply_to_principals_and_resource_types() -> None:
    schema = Schema()
    assert schema.applies_to["invoke_tool"] == (("Agent", "Human"), ("Tool",))
    assert schema.applies_to["spawn_agent"] == (("Agent", "Human"), ("Agent",))
    for method in HTTP_METHODS:
        assert schema.applies_to[method][1] == ("Api", "Endpoint")
    assert schema.applies_to["read"][1] == ("DataSet", "Api", "Endpoint")
    # Groups are never requested directly.
    assert not set(ACTION_GROUPS) & set(schema.applies_to)


def test_action_groups_are_ancestors_of_their_members() -> None:
    schema = Schema()
    assert schema.action_ancestors("GET") == {"read_actions", "http"}
    assert schema.action_ancestors("DELETE") == {"delete_actions", "http"}
    assert schema.action_ancestors("invoke_tool") == frozenset()
    assert schema.action_ancestor_refs("POST") == (
        EntityRef("Action", "http"),
        EntityRef("Action", "write_actions"),
    )
    entities = {e["uid"]["id"]: e for e in schema.action_entities()}
    assert {p["id"] for p in entities["GET"]["parents"]} == {"read_actions", "http"}
    assert entities["read_actions"]["parents"] == []


def test_schema_json_is_the_document_under_the_empty_namespace() -> None:
    schema = Schema()
    assert json.loads(schema.json) == {"": schema.document}
    assert schema.extension == ""
    assert schema.context["type"] == "Record"
    assert "time" in schema.context["attributes"]


# -- schema: extensions ---------------------------------------------------------------

TICKETS = {
    "entityTypes": {
        "Project": {"shape": {"type": "Record", "attributes": {}}},
        "Ticket": {
            "memberOfTypes": ["Project"],
            "shape": {
                "type": "Record",
                "attributes": {
                    "severity": {"type": "Long"},
                    "price": {"type": "Money", "required": False},
                },
            },
        },
    },
    "actions": {
        "close_ticket": {"appliesTo": {"principalTypes": ["Agent"], "resourceTypes": ["Ticket"]}},
    },
    "commonTypes": {
        "Money": {
            "type": "Record",
            "attributes": {
                "amount": {"type": "Extension", "name": "decimal"},
                "currency": {"type": "String"},
            },
        }
    },
}


def test_extension_adds_entity_types_actions_and_common_types() -> None:
    schema = Schema(json.dumps(TICKETS))
    assert schema.entity_types["Ticket"].member_of == ("Project",)
    assert schema.entity_types["Ticket"].attributes["severity"] == {"type": "Long"}
    assert schema.applies_to["close_ticket"] == (("Agent",), ("Ticket",))
    # An added action gets the request context unless it names one.
    assert schema.actions["close_ticket"]["appliesTo"]["context"] == {"type": CONTEXT_TYPE}
    assert "Money" in schema.common_types
    # The base is untouched.
    assert "Ticket" not in BASE_SCHEMA["entityTypes"]
    assert "close_ticket" not in BASE_SCHEMA["actions"]
    # Cedar's validator accepts a policy written against the extension.
    policy = records(
        '@id("t") permit (principal, action == Action::"close_ticket", resource is Ticket)\n'
        'when { resource.severity < 3 && resource.price.currency == "EUR" };'
    )
    assert [d["policy_id"] for d in validate(schema, policy)] == ["t"]  # price is optional
    guarded = records(
        '@id("t") permit (principal, action == Action::"close_ticket", resource is Ticket)\n'
        'when { resource has price && resource.price.currency == "EUR" };'
    )
    assert validate(schema, guarded) == []


def test_extension_may_be_written_under_the_empty_namespace() -> None:
    assert Schema(json.dumps({"": TICKETS})).document == Schema(json.dumps(TICKETS)).document


def test_extension_adds_only_optional_attributes_to_a_base_type() -> None:
    schema = Schema(
        ext(
            entityTypes={
                "Tool": {
                    "shape": {
                        "type": "Record",
                        "attributes": {"vendor": {"type": "String", "required": True}},
                    }
                },
                "Agent": {
                    "shape": {"type": "Record", "attributes": {"cost_center": {"type": "String"}}}
                },
            }
        )
    )
    assert schema.entity_types["Tool"].attributes["vendor"] == {
        "type": "String",
        "required": False,
    }
    assert schema.entity_types["Agent"].attributes["cost_center"]["required"] is False
    # Everything the base declared is still there, unchanged.
    for name, spec in BASE_SCHEMA["entityTypes"]["Tool"]["shape"]["attributes"].items():
        assert schema.entity_types["Tool"].attributes[name] == spec
    assert schema.entity_types["Tool"].member_of == ("McpServer",)


def test_tool_arguments_are_forced_optional() -> None:
    schema = Schema(
        ext(
            commonTypes={
                "ToolArguments": {
                    "type": "Record",
                    "attributes": {"amount": {"type": "Long", "required": True}},
                }
            }
        )
    )
    assert schema.common_types["ToolArguments"]["attributes"]["amount"] == {
        "type": "Long",
        "required": False,
    }
    # So a call that sends no arguments still has a valid context.
    assert to_cedar({}, {"type": "ToolArguments"}, schema.common_types) == {}


def test_tool_arguments_already_declared_cannot_be_redeclared() -> None:
    declared = Schema(ARGS_EXTENSION).document
    again = {
        "commonTypes": {
            "ToolArguments": {"type": "Record", "attributes": {"amount": {"type": "String"}}}
        }
    }
    with pytest.raises(InvalidInput, match=r"already has attributes \['amount'\]"):
        merge_extension(declared, again)


@pytest.mark.parametrize(
    ("fragment", "message"),
    [
        (
            {
                "entityTypes": {
                    "Agent": {"shape": {"type": "Record", "attributes": {"name": {"type": "Long"}}}}
                }
            },
            r"Agent already has attributes \['name'\]",
        ),
        (
            {"entityTypes": {"Tool": {"memberOfTypes": ["McpServer", "Agent"]}}},
            "built in: an extension may only add attributes",
        ),
        ({"entityTypes": {"Agent": {"tags": {"type": "Long"}}}}, "built in"),
        ({"entityTypes": {"Action": {"shape": {"type": "Record", "attributes": {}}}}}, "reserved"),
        ({"actions": {"invoke_tool": {"appliesTo": {"principalTypes": ["Human"]}}}}, "built in"),
        ({"actions": {"read_actions": {}}}, "built in"),
        ({"commonTypes": {CONTEXT_TYPE: {"type": "Record", "attributes": {}}}}, "built in"),
        (
            {"commonTypes": {"ToolArguments": {"type": "Set", "element": {"type": "String"}}}},
            "Record",
        ),
        (
            {"commonTypes": {"ToolArguments": {"type": "Record", "attributes": {"x": "Long"}}}},
            "needs a type",
        ),
        ({"entityTypes": {"Bad Name": {}}}, "not a Cedar identifier"),
        (
            {
                "entityTypes": {
                    "Tool": {"shape": {"type": "Record", "attributes": {"a-b": {"type": "Long"}}}}
                }
            },
            "not a Cedar identifier",
        ),
        ({"actions": {"": {}}}, "not valid"),
    ],
)
def test_extension_cannot_redefine_or_weaken_the_base(
    fragment: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        Schema(json.dumps(fragment))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"": []}', "must be a JSON object"),
        ('{"entityTypes": {}, "namespaces": {}}', "unknown members"),
        ('{"Acme": {"entityTypes": {}}}', "unknown members"),
    ],
)
def test_malformed_extension_documents_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Schema(text)


def test_validate_reports_cedar_diagnostics_by_our_policy_ids() -> None:
    policies = records(
        '@id("fine") permit (principal, action, resource);\n'
        '@id("typo") permit (principal, action == Action::"invoke_tool", resource)\n'
        'when { resource.nmae == "x" };\n'
        '@id("ctx") forbid (principal, action, resource) when { context.nope == 1 };'
    )
    diagnostics = validate(Schema(), policies)
    assert {d["policy_id"] for d in diagnostics} == {"typo", "ctx"}
    assert any("nmae" in d["message"] for d in diagnostics if d["policy_id"] == "typo")
    # Messages name our ids, not Cedar's positional ones.
    assert all(f"`{d['policy_id']}`" in d["message"] for d in diagnostics)
    assert validate(Schema(), policies[:1]) == []
    assert validate(Schema(), []) == []


def test_validate_uses_the_extended_schema() -> None:
    policy = records(
        '@id("close") permit (principal, action == Action::"close_ticket", resource is Ticket)\n'
        "when { resource.severity > 2 };"
    )
    assert validate(Schema(json.dumps(TICKETS)), policy) == []
    assert {d["policy_id"] for d in validate(Schema(), policy)} == {"close"}


# -- parsing and rendering ------------------------------------------------------------


def test_parse_names_policies_by_their_annotations() -> None:
    parsed = parse_policies(
        '@id("read-docs")\n@description("Agents may read documents")\n'
        'permit (principal, action in Action::"read_actions", resource is DataSet);\n'
        '@id("no-deletes") @mode("dry_run") forbid (principal, action, resource);'
    )
    first, second = (p.record for p in parsed)
    assert (first.id, first.mode, first.description) == (
        "read-docs",
        Mode.ENFORCE,
        "Agents may read documents",
    )
    assert (second.id, second.mode, second.description) == ("no-deletes", Mode.DRY_RUN, "")
    assert all(p.named for p in parsed)
    # The stored text is canonical Cedar without the naming annotations.
    assert "@" not in first.text
    assert "@" not in second.text
    assert second.text == "forbid (principal, action, resource);"


def test_other_annotations_stay_in_the_text() -> None:
    (parsed,) = parse_policies('@id("p") @ticket("SEC-1") permit (principal, action, resource);')
    assert parsed.record.text.startswith('@ticket("SEC-1")')


def test_the_authors_comments_stay_with_their_policy() -> None:
    text = (
        "// Tools team\n"
        '@id("a") // the name\n'
        '@description("d")\n'
        "permit (principal, action, resource) // why\n"
        "when { true }; // trailing\n\n"
        '@id("b")\nforbid (principal, action, resource);\n'
        "// footer\n"
    )
    first, second = (p.record for p in parse_policies(text))
    assert "// Tools team" in first.text
    assert "// why" in first.text
    assert first.text.endswith("// trailing")
    assert "@id" not in first.text
    assert "@description" not in first.text
    assert second.text == "forbid (principal, action, resource);"
    assert [p.record for p in parse_policies(render_policies([first, second]))] == [
        first,
        second,
    ]


def test_unnamed_policies_are_numbered_from_one_in_file_order() -> None:
    parsed = parse_policies(
        "permit (principal, action, resource);\n"
        '@id("named") forbid (principal, action, resource);\n'
        "forbid (principal is Human, action, resource);"
    )
    assert [(p.record.id, p.named) for p in parsed] == [
        ("policy1", False),
        ("named", True),
        ("policy3", False),
    ]


def test_default_mode_applies_to_policies_without_a_mode() -> None:
    parsed = parse_policies(
        "permit (principal, action, resource);\n"
        '@mode("enforce") forbid (principal, action, resource);',
        default_mode=Mode.DRY_RUN,
    )
    assert [p.record.mode for p in parsed] == [Mode.DRY_RUN, Mode.ENFORCE]


@pytest.mark.parametrize(
    "text",
    [
        '@id("a") permit (principal, action, resource);\n'
        '@id("a") forbid (principal, action, resource);',
        # An explicit id equal to the number an unnamed policy gets.
        '@id("policy2") permit (principal, action, resource);\n'
        "forbid (principal, action, resource);",
    ],
)
def test_duplicate_ids_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="appears twice"):
        parse_policies(text)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(InvalidInput, match="@mode must be"):
        parse_policies('@mode("audit") permit (principal, action, resource);')


def test_templates_with_slots_are_refused() -> None:
    with pytest.raises(InvalidInput, match="templates") as caught:
        parse_policies("permit (principal == ?principal, action, resource in ?resource);")
    assert "template" in (caught.value.hint or "")


@pytest.mark.parametrize(
    "text",
    [
        "permit (principal, action, resource",
        "allow (principal, action, resource);",
        "permit (principal, action, resource) when { context.x == };",
        'permit (principal, action, resource) when { "unterminated };',
    ],
)
def test_invalid_cedar_gives_invalid_input_with_diagnostics(text: str) -> None:
    with pytest.raises(InvalidInput, match="not valid Cedar") as caught:
        parse_policies(text)
    assert caught.value.errors
    assert all(e["message"] for e in caught.value.errors)


def test_empty_text_has_no_policies() -> None:
    assert parse_policies("") == []
    assert parse_policies("// nothing here\n") == []
    assert render_policies([]) == ""


def test_render_then_parse_restores_the_set() -> None:
    original = [
        PolicyRecord(id="a", text="permit (principal, action, resource);"),
        PolicyRecord(
            id="b.2:x-y",
            text='forbid (principal, action, resource)\nwhen { resource.name like "a*" };',
            mode=Mode.DRY_RUN,
            description='Quotes " and \\ and a\nnewline',
        ),
    ]
    rendered = render_policies(original)
    assert rendered.endswith("\n")
    assert rendered.count('@mode("dry_run")') == rendered.count("@mode") == 1
    restored = [p.record for p in parse_policies(rendered)]
    assert restored == original
    assert render_policies(restored) == rendered


@settings(max_examples=60, deadline=None)
@given(
    description=st.text(
        st.characters(blacklist_categories=["Cs"]),  # lone surrogates: see the attacks
        max_size=40,
    ),
    dry=st.booleans(),
)
def test_any_description_round_trips(description: str, dry: bool) -> None:
    record = PolicyRecord(
        id="p",
        text="permit (principal, action, resource);",
        mode=Mode.DRY_RUN if dry else Mode.ENFORCE,
        description=description,
    )
    (parsed,) = parse_policies(render_policies([record]))
    assert parsed.record == record


def test_parsing_is_idempotent_on_canonical_text() -> None:
    text = 'permit(principal,action,resource)when{context.risk_score>5&&principal.name=="x"};'
    (first,) = records(text)
    (second,) = records(first.text)
    assert first.text == second.text


def test_parse_single_takes_its_name_from_the_arguments() -> None:
    record = parse_single(
        '@id("ignored") @mode("dry_run") @description("from text")\n'
        "permit (principal, action, resource);",
        policy_id="chosen",
        mode=None,
        description="",
    )
    assert (record.id, record.mode, record.description) == ("chosen", Mode.DRY_RUN, "from text")
    with pytest.raises(InvalidInput, match="@mode"):  # a contradiction is refused
        parse_single(
            '@mode("enforce") permit (principal, action, resource);',
            policy_id="x",
            mode=Mode.DRY_RUN,
            description="",
        )
    override = parse_single(
        "permit (principal, action, resource);", policy_id="x", mode=Mode.ENFORCE, description="d"
    )
    assert override.description == "d"


@pytest.mark.parametrize(
    "text", ["", "permit (principal, action, resource); forbid (principal, action, resource);"]
)
def test_parse_single_wants_exactly_one_policy(text: str) -> None:
    with pytest.raises(InvalidInput, match="exactly one policy"):
        parse_single(text, policy_id="x", mode=Mode.ENFORCE, description="")


def test_parse_single_checks_the_id() -> None:
    with pytest.raises(InvalidInput, match="not valid"):
        parse_single(
            "permit (principal, action, resource);",
            policy_id="bad id",
            mode=Mode.ENFORCE,
            description="",
        )


def test_nesting_limit_counts_brackets_outside_strings_and_comments() -> None:
    check_nesting("(" * MAX_NESTING + ")" * MAX_NESTING)
    with pytest.raises(InvalidInput, match="nests brackets deeper"):
        check_nesting("(" * (MAX_NESTING + 1))
    check_nesting('"' + "(" * 100 + '"')
    check_nesting('"\\"' + "[" * 100 + '"')  # an escaped quote does not end the string
    check_nesting("// " + "{" * 100 + "\nx")
    with pytest.raises(InvalidInput):
        check_nesting("// comment\n" + "{" * (MAX_NESTING + 1))
    with pytest.raises(InvalidInput):
        check_nesting("([{" * 11)


@pytest.mark.parametrize("good", ["a", "A1", "read-docs", "team.a:b_c-d", "9", "x" * 128])
def test_policy_ids_that_are_accepted(good: str) -> None:
    assert check_policy_id(good) == good


# -- values ---------------------------------------------------------------------------

COMMON = ARGS_SCHEMA.common_types
STRING = {"type": "String"}
LONG = {"type": "Long"}
DECIMAL = {"type": "Extension", "name": "decimal"}


@pytest.mark.parametrize(
    ("value", "spec", "expected"),
    [
        ("text", STRING, "text"),
        ("", STRING, ""),
        (0, LONG, 0),
        (-(2**63), LONG, -(2**63)),
        (2**63 - 1, LONG, 2**63 - 1),
        (True, {"type": "Boolean"}, True),
        (False, {"type": "Boolean"}, False),
        (["a", "b"], {"type": "Set", "element": STRING}, ["a", "b"]),
        (("a",), {"type": "Set", "element": STRING}, ["a"]),
        ([], {"type": "Set", "element": LONG}, []),
        (
            {"type": "Human", "id": "hum_1"},
            {"type": "Entity", "name": "Human"},
            {"__entity": {"type": "Human", "id": "hum_1"}},
        ),
        (
            {"__entity": {"type": "Human", "id": "hum_1"}},
            {"type": "Entity", "name": "Human"},
            {"__entity": {"type": "Human", "id": "hum_1"}},
        ),
        (1, DECIMAL, {"__extn": {"fn": "decimal", "arg": "1.0000"}}),
        (-2, DECIMAL, {"__extn": {"fn": "decimal", "arg": "-2.0000"}}),
        (0.1, DECIMAL, {"__extn": {"fn": "decimal", "arg": "0.1000"}}),
        ("12.3456", DECIMAL, {"__extn": {"fn": "decimal", "arg": "12.3456"}}),
        ("1.50000", DECIMAL, {"__extn": {"fn": "decimal", "arg": "1.5000"}}),
        (
            "922337203685477.5807",
            DECIMAL,
            {"__extn": {"fn": "decimal", "arg": "922337203685477.5807"}},
        ),
        (
            "10.0.0.0/8",
            {"type": "Extension", "name": "ipaddr"},
            {"__extn": {"fn": "ip", "arg": "10.0.0.0/8"}},
        ),
        ("x", {"type": "EntityOrCommon", "name": "String"}, "x"),
        (True, {"type": "EntityOrCommon", "name": "Bool"}, True),
        (
            {"type": "Human", "id": "h"},
            {"type": "EntityOrCommon", "name": "Human"},
            {"__entity": {"type": "Human", "id": "h"}},
        ),
        ({"amount": 3}, {"type": "EntityOrCommon", "name": "ToolArguments"}, {"amount": 3}),
    ],
)
def test_values_convert_to_cedar_json(value: Any, spec: dict[str, Any], expected: Any) -> None:
    assert to_cedar(value, spec, COMMON) == expected


@pytest.mark.parametrize(
    ("value", "spec", "message"),
    [
        (1, STRING, "expected a string"),
        ("x" * (MAX_STRING + 1), STRING, "limited"),
        ("1", LONG, "expected an integer"),
        (True, LONG, "expected an integer"),
        (1.0, LONG, "expected an integer"),
        (2**63, LONG, "64-bit"),
        (-(2**63) - 1, LONG, "64-bit"),
        (1, {"type": "Boolean"}, "true or false"),
        ("true", {"type": "Boolean"}, "true or false"),
        ("a", {"type": "Set", "element": STRING}, "expected a list"),
        ([1], {"type": "Set", "element": STRING}, r"value\[0\]: expected a string"),
        (["a"] * (MAX_ITEMS + 1), {"type": "Set", "element": STRING}, "limited"),
        ([], {"type": "Record", "attributes": {}}, "expected an object"),
        ({"type": "Agent", "id": "a"}, {"type": "Entity", "name": "Human"}, "of type Human"),
        ({"type": "Human"}, {"type": "Entity", "name": "Human"}, "entity reference"),
        ({"type": "Human", "id": ""}, {"type": "Entity", "name": "Human"}, "non-empty"),
        ({"type": "Human", "id": 7}, {"type": "Entity", "name": "Human"}, "non-empty"),
        ({"type": "Hu man", "id": "x"}, {"type": "Entity"}, "not a Cedar type name"),
        ("1.23456", DECIMAL, "four fractional digits"),
        (1e-5, DECIMAL, "four fractional digits"),
        ("NaN", DECIMAL, "expected a decimal number"),
        ("Infinity", DECIMAL, "expected a decimal number"),
        (True, DECIMAL, "expected a decimal"),
        ("one", DECIMAL, "expected a decimal"),
        (None, DECIMAL, "expected a decimal"),
        ("922337203685477.5808", DECIMAL, "out of range"),
        ("-922337203685477.5808", DECIMAL, "out of range"),
        (1, {"type": "Extension", "name": "ipaddr"}, "IP address"),
        ("x", {"type": "Extension", "name": "datetime"}, "unsupported extension"),
        ("x", {"type": "Mystery"}, "unsupported schema type"),
    ],
)
def test_values_of_the_wrong_type_are_refused(
    value: Any, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueTypeError, match=message):
        to_cedar(value, spec, COMMON)


def test_records_refuse_undeclared_attributes_and_need_required_ones() -> None:
    spec = {
        "type": "Record",
        "attributes": {"mode": STRING, "depth": {"type": "Long", "required": False}},
    }
    assert to_cedar({"mode": "a"}, spec, COMMON) == {"mode": "a"}
    assert to_cedar({"mode": "a", "depth": 2}, spec, COMMON) == {"mode": "a", "depth": 2}
    with pytest.raises(ValueTypeError, match=r"record\.extra: is not declared") as caught:
        to_cedar({"mode": "a", "extra": 1}, spec, COMMON, path="record")
    assert caught.value.path == "record.extra"
    with pytest.raises(ValueTypeError, match=r"missing required attributes \['mode'\]"):
        to_cedar({"depth": 1}, spec, COMMON)


def test_common_types_are_followed() -> None:
    args = {"amount": 5, "options": {"mode": "fast"}, "owner": {"type": "Human", "id": "h"}}
    assert to_cedar(args, {"type": "ToolArguments"}, COMMON) == {
        "amount": 5,
        "options": {"mode": "fast"},
        "owner": {"__entity": {"type": "Human", "id": "h"}},
    }
    with pytest.raises(ValueTypeError, match=r"args\.options: missing required"):
        to_cedar({"options": {}}, {"type": "ToolArguments"}, COMMON, path="args")


def test_values_nested_deeper_than_the_limit_are_refused() -> None:
    spec: dict[str, Any] = STRING
    value: Any = "leaf"
    for _ in range(MAX_DEPTH):
        spec, value = {"type": "Set", "element": spec}, [value]
    assert to_cedar(value, spec, COMMON) == value
    with pytest.raises(ValueTypeError, match="nested deeper"):
        to_cedar([value], {"type": "Set", "element": spec}, COMMON)


@pytest.mark.parametrize(
    ("raw", "literal"),
    [
        ("plain", '"plain"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("a\nb\rc\td", '"a\\nb\\rc\\td"'),
        ("\x00\x1b\x7f", '"\\u{0}\\u{1b}\\u{7f}"'),
        ("é ☃ 🙂", '"é ☃ 🙂"'),
    ],
)
def test_cedar_string_escapes(raw: str, literal: str) -> None:
    assert cedar_string(raw) == literal


def test_entity_literal_escapes_the_id_and_checks_the_type() -> None:
    assert entity_literal("Tool", 'a"b') == 'Tool::"a\\"b"'
    with pytest.raises(ValueTypeError):
        entity_literal("Tool::x", "a")


# -- entities -------------------------------------------------------------------------


def test_agent_entity_carries_registry_attributes_and_labels_as_tags() -> None:
    entity = agent_entity(
        agent(
            "agt_2",
            labels={"team": "a"},
            parent="agt_1",
            framework="langgraph",
            model="m-1",
            expires_at=NOW + timedelta(hours=1),
            owners=("hum_1", "hum_2"),
        )
    )
    attrs = entity["attrs"]
    assert attrs["autonomy"] == "monitored"
    assert attrs["autonomy_level"] == list(AutonomyLevel).index(AutonomyLevel.MONITORED)
    assert attrs["ephemeral"] is True
    assert attrs["status"] == "active"
    assert attrs["parent"] == {"__entity": {"type": "Agent", "id": "agt_1"}}
    assert attrs["owners"] == [
        {"__entity": {"type": "Human", "id": "hum_1"}},
        {"__entity": {"type": "Human", "id": "hum_2"}},
    ]
    assert (attrs["framework"], attrs["model"]) == ("langgraph", "m-1")
    assert entity["tags"] == {"team": "a"}
    assert entity["parents"] == [
        {"type": "Environment", "id": "prod"},
        {"type": "AgentGroup", "id": "team=a"},
        {"type": "Agent", "id": "agt_1"},
    ]
    bare = agent_entity(agent("agt_3"))["attrs"]
    assert not {"parent", "framework", "model"} & set(bare)
    assert bare["ephemeral"] is False


def test_human_entity() -> None:
    assert human_entity(human("hum_7")) == {
        "uid": {"type": "Human", "id": "hum_7"},
        "attrs": {"email": "hum_7@example.com", "display_name": "Human hum_7"},
        "parents": [],
    }


def test_snapshot_ancestors_follow_environment_labels_and_parents_transitively() -> None:
    snapshot = EntitySnapshot(
        Schema(),
        agents=[
            agent("agt_root", environment="prod", labels={"tier": "gold"}),
            agent("agt_mid", environment="dev", parent="agt_root"),
            agent("agt_leaf", environment="dev", labels={"team": "a", "b": "c"}, parent="agt_mid"),
        ],
    )
    assert agent_parents(snapshot.agents["agt_leaf"]) == (
        ref("Environment", "dev"),
        ref("AgentGroup", "b=c"),
        ref("AgentGroup", "team=a"),
        ref("Agent", "agt_mid"),
    )
    assert snapshot.ancestors(ref("Agent", "agt_leaf")) == {
        ref("Environment", "dev"),
        ref("AgentGroup", "team=a"),
        ref("AgentGroup", "b=c"),
        ref("Agent", "agt_mid"),
        ref("Agent", "agt_root"),
        ref("Environment", "prod"),
        ref("AgentGroup", "tier=gold"),
    }
    assert snapshot.ancestors(ref("Agent", "agt_root")) == {
        ref("Environment", "prod"),
        ref("AgentGroup", "tier=gold"),
    }
    assert snapshot.ancestors(ref("Agent", "agt_unknown")) == frozenset()


def test_snapshot_resources_and_cedar_agree_on_membership() -> None:
    az = authorizer(
        '@id("srv") permit (principal, action, resource in McpServer::"srv");\n'
        '@id("grp") forbid (principal in AgentGroup::"team=b", action, resource);\n'
        '@id("boss") permit (principal in Agent::"agt_root", action == Action::"spawn_agent",\n'
        "resource);",
        agents=[
            agent("agt_root"),
            agent("agt_1", parent="agt_root"),
            agent("agt_2", labels={"team": "b"}),
        ],
        resources=[
            resource("McpServer", "srv"),
            resource("Tool", "t1", parents=[ref("McpServer", "srv")]),
            resource("Tool", "t2"),
        ],
    )
    assert az.entities.ancestors(ref("Tool", "t1")) == {ref("McpServer", "srv")}
    assert decide(az, "agt_1", "invoke_tool", "t1").allowed
    assert not decide(az, "agt_1", "invoke_tool", "t2").allowed
    assert decide(az, "agt_2", "invoke_tool", "t1").policies == ("grp",)
    assert decide(az, "agt_1", "spawn_agent", ref("Agent", "agt_new")).allowed
    assert not decide(az, "agt_2", "spawn_agent", ref("Agent", "agt_new")).allowed


def test_check_resource_converts_attributes_and_tags() -> None:
    entity = check_resource(
        Schema(),
        resource(
            "Tool",
            "fs.read",
            parents=[ref("McpServer", "fs")],
            tags={"team": "a", "cost/center": "7"},
            name="Read file",
            classification="internal",
            read_only=True,
            owner={"type": "Human", "id": "hum_1"},
        ),
    )
    assert entity == {
        "uid": {"type": "Tool", "id": "fs.read"},
        "attrs": {
            "name": "Read file",
            "classification": "internal",
            "read_only": True,
            "owner": {"__entity": {"type": "Human", "id": "hum_1"}},
        },
        "parents": [{"type": "McpServer", "id": "fs"}],
        "tags": {"team": "a", "cost/center": "7"},
    }


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (resource("Widget", "w"), "not in the schema"),
        (resource("Tool", ""), "1-512"),
        (resource("Tool", "x" * 513), "1-512"),
        (resource("Tool", "t", name=5), "expected a string"),
        (resource("Tool", "t", color="red"), "not declared"),
        (
            resource("Tool", "t", parents=[ref("McpServer", str(i)) for i in range(33)]),
            "at most 32",
        ),
        (resource("Tool", "t", tags={"bad key": "v"}), "tag 'bad key'"),
        (resource("Tool", "t", tags={"k": "v" * 257}), "tag 'k'"),
        (resource("Tool", "t", tags={f"k{i}": "v" for i in range(65)}), "at most 64"),
    ],
)
def test_check_resource_refuses_invalid_entries(record: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_resource(Schema(), record)


def test_resources_invalid_under_the_schema_are_left_out_of_the_snapshot() -> None:
    snapshot = EntitySnapshot(
        Schema(),
        resources=[
            resource("Tool", "good", classification="public"),
            resource("Tool", "bad", classification=3),
            resource("Ticket", "t1"),  # a type the schema no longer has
        ],
    )
    assert set(snapshot.resources) == {ref("Tool", "good")}


def test_principal_problem() -> None:
    snapshot = EntitySnapshot(
        Schema(),
        agents=[agent("agt_1"), agent("agt_2", status=AgentStatus.SUSPENDED)],
        humans=[human("hum_1")],
    )
    now = datetime.now(UTC)
    assert snapshot.principal_problem(ref("Agent", "agt_1"), now) is None
    assert snapshot.principal_problem(ref("Agent", "agt_2"), now) == "the agent is suspended"
    assert (
        snapshot.principal_problem(ref("Agent", "agt_3"), now) == "the agent is not in the registry"
    )
    assert snapshot.principal_problem(ref("Human", "hum_1"), now) is None
    assert (
        snapshot.principal_problem(ref("Human", "hum_2"), now) == "the human is not in the registry"
    )
    assert snapshot.principal_problem(ref("Tool", "t"), now) == "Tool cannot be a principal"


# -- engine ---------------------------------------------------------------------------


def _attrs(condition: str) -> frozenset[str]:
    record = PolicyRecord(id="p", text=f"permit (principal, action, resource) {condition};")
    parsed = cedarpy.policies_to_pst(record.text)
    return context_attributes(next(iter(parsed.static_policies.values())))


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("", set()),
        ('when { principal.name == "x" }', set()),
        ("when { context.risk_score > 50 }", {"risk_score"}),
        ('when { context has approval && context.approval.state == "approved" }', {"approval"}),
        ("when { context.args.amount > 5 }", {"args"}),
        ("when { context has args.amount }", {"args"}),
        ('when { context["time"].hour < 9 }', {"time.hour"}),
        (
            "when { context.time.hour < 9 } unless { context.request_rate > 10 }",
            {"time.hour", "request_rate"},
        ),
        (
            "when { context.time has hour && context.time.weekday == 1 }",
            {"time.hour", "time.weekday"},
        ),
        ("when { context.time == context.time }", {"time"}),
        ("when { context == {} }", {WHOLE_CONTEXT}),
        ("when { (if true then context else context).risk_score > 1 }", {WHOLE_CONTEXT}),
        ("when { [context].contains(context) }", {WHOLE_CONTEXT}),
    ],
)
def test_context_attributes_lists_what_a_policy_reads(condition: str, expected: set[str]) -> None:
    assert _attrs(condition) == expected


def test_compiled_policy_scope_keys() -> None:
    policy = compile_policy(
        PolicyRecord(
            id="p",
            text='forbid (principal is Agent in Environment::"prod", action in [Action::"GET", '
            'Action::"POST"], resource is Tool) when { true };',
            mode=Mode.DRY_RUN,
        )
    )
    assert (policy.id, policy.mode, policy.effect) == ("p", Mode.DRY_RUN, "forbid")
    assert policy.principal == ref("Environment", "prod")
    assert policy.actions == (ref("Action", "GET"), ref("Action", "POST"))
    assert policy.resource == TypeKey("Tool")
    assert policy.conditional
    assert not policy.uses_context
    plain = compile_policy(PolicyRecord(id="q", text="permit (principal, action, resource);"))
    assert (plain.principal, plain.actions, plain.resource) == ("*", ("*",), "*")
    assert not plain.conditional


def test_compile_refuses_anything_but_one_static_policy() -> None:
    with pytest.raises(InvalidInput, match="expected one static policy"):
        compile_policy(PolicyRecord(id="p", text=PERMIT_ALL + PERMIT_ALL.replace("all", "two")))


def test_engine_masks_split_enforced_and_dry_run_policies() -> None:
    eng = engine(
        '@id("a") permit (principal, action, resource);\n'
        '@id("b") @mode("dry_run") forbid (principal, action, resource);\n'
        '@id("c") forbid (principal is Human, action, resource);'
    )
    assert (eng.enforce_mask, eng.dry_run_mask, eng.all_mask) == (0b101, 0b010, 0b111)
    assert [p.id for p in eng.members(eng.all_mask)] == ["a", "b", "c"]
    assert eng.context_needs(eng.all_mask) == frozenset()
    assert set(eng.by_id) == {"a", "b", "c"}


# -- the authorizer -------------------------------------------------------------------


def test_reasons_for_allow_forbid_and_default_deny() -> None:
    az = authorizer(
        '@id("tools") permit (principal, action == Action::"invoke_tool", resource);\n'
        '@id("no-t2") forbid (principal, action, resource == Tool::"t2");',
        agents=[agent()],
    )
    allowed = decide(az, target="t1")
    assert (allowed.decision, allowed.policies, allowed.reasons) == (
        "allow",
        ("tools",),
        ("permitted by policy tools",),
    )
    assert (allowed.allowed, allowed.errors, allowed.evaluated) == (True, (), 1)
    forbidden = decide(az, target="t2")
    assert (forbidden.decision, forbidden.policies, forbidden.reasons) == (
        "deny",
        ("no-t2",),
        ("forbidden by policy no-t2",),
    )
    nothing = decide(az, "agt_1", "read", ref("DataSet", "d"))
    assert (nothing.decision, nothing.policies, nothing.reasons) == (
        "deny",
        (),
        ("no policy permits this request (default deny)",),
    )


def test_decision_to_dict() -> None:
    az = authorizer(PERMIT_ALL, agents=[agent()])
    body = decide(az).to_dict()
    assert body["decision"] == "allow"
    assert body["decision_id"]
    assert body["policies"] == ["all"]
    assert body["policy_version"] == 1
    assert body["evaluated_policies"] == 1
    assert body["dry_run"] is None
    assert body["ignored_arguments"] == []
    assert body["risk_score"] == 0
    assert isinstance(body["evaluation_us"], float)


def test_dry_run_outcome_is_reported_and_does_not_change_the_decision() -> None:
    az = authorizer(
        PERMIT_ALL
        + '\n@id("shadow") @mode("dry_run") forbid (principal, action, resource is Tool);',
        agents=[agent()],
    )
    decision = decide(az)
    assert decision.decision == "allow"
    assert decision.policies == ("all",)
    assert decision.dry_run is not None
    assert (decision.dry_run.decision, decision.dry_run.policies) == ("deny", ("shadow",))
    assert decision.would_change
    assert decision.to_dict()["dry_run"] == {
        "decision": "deny",
        "policies": ["shadow"],
        "would_change": True,
    }
    # A request outside the dry-run policy's scope has no dry-run outcome.
    other = decide(az, "agt_1", "read", ref("DataSet", "d"))
    assert other.dry_run is None
    assert not other.would_change


def test_dry_run_that_agrees_is_reported_without_a_change() -> None:
    az = authorizer(
        PERMIT_ALL + '\n@id("shadow") @mode("dry_run") permit (principal, action, resource);',
        agents=[agent()],
    )
    decision = decide(az)
    assert decision.dry_run is not None
    assert decision.dry_run.decision == "allow"
    assert decision.dry_run.policies == ("shadow",)  # enforced ones are not listed
    assert not decision.would_change


def test_time_context_uses_the_configured_zone() -> None:
    policy = '@id("lunch") permit (principal, action, resource) when { context.time.hour == 13 };'
    assert decide(authorizer(policy, agents=[agent()], zone="Europe/Berlin")).allowed
    assert not decide(authorizer(policy, agents=[agent()], zone="UTC")).allowed


def test_time_context_fields_across_midnight() -> None:
    sunday_night = datetime(2026, 11, 22, 23, 30, tzinfo=UTC)
    eng = engine("permit (principal, action, resource) when { context.time.hour >= 0 };")
    context, _ = build_context(
        eng,
        request(),
        now=sunday_night,
        zone=ZoneInfo("Europe/Berlin"),
        risk_score=0,
        request_rate=1,
    )
    assert context["time"] == {
        "epoch": int(sunday_night.timestamp()),
        "hour": 0,
        "minute": 30,
        "weekday": 1,
        "date": "2026-11-23",
    }
    policy = (
        "permit (principal, action, resource) when { context.time.weekday == 1 && "
        'context.time.date == "2026-11-23" && context.time.minute == 30 };'
    )
    clock = Clock(sunday_night)
    assert decide(authorizer(policy, agents=[agent()], clock=clock, zone="Europe/Berlin")).allowed
    assert not decide(authorizer(policy, agents=[agent()], clock=clock)).allowed


def test_build_context_fills_defaults_and_only_what_is_needed() -> None:
    eng = engine("permit (principal, action, resource) when { context == context };", ARGS_SCHEMA)
    context, ignored = build_context(
        eng,
        request(context={"args": {"amount": 2, "extra": 1}}),
        now=NOW,
        zone=ZoneInfo("UTC"),
        risk_score=7,
        request_rate=3,
    )
    assert set(context) == set(ARGS_SCHEMA.context["attributes"])
    assert context["risk_score"] == 7
    assert context["request_rate"] == 3
    assert context["args"] == {"amount": 2}
    assert context["approval"] == {"state": "none"}
    assert context["authorization_details"] == []
    assert context["data_classification"] == "unknown"
    assert context["source_environment"] == "unknown"
    assert context["delegation"] == {
        "depth": 0,
        "actors": [{"__entity": {"type": "Agent", "id": "agt_1"}}],
    }
    assert ignored == ("extra",)
    narrow, _ = build_context(
        eng,
        request(),
        now=NOW,
        zone=ZoneInfo("UTC"),
        risk_score=0,
        request_rate=1,
        needs=frozenset({"risk_score", "not_in_schema"}),
    )
    assert narrow == {"risk_score": 0}


def test_delegation_and_approval_from_the_caller() -> None:
    az = authorizer(
        '@id("chain") permit (principal, action, resource) when {\n'
        "  context.delegation.depth == 2 &&\n"
        '  context.delegation.actors.contains(Agent::"agt_0") &&\n'
        '  context.delegation.initiating_human == Human::"hum_1" &&\n'
        '  context.approval.state == "approved" &&\n'
        '  context.approval.approver == Human::"hum_2"\n'
        "};",
        agents=[agent(), agent("agt_0"), agent("agt_x")],
        humans=[human("hum_1"), human("hum_2")],
    )
    ctx = {
        "delegation": {"actors": ["agt_0", "agt_x", "agt_1"], "initiating_human": "hum_1"},
        "approval": {"state": "approved", "approver": "hum_2"},
    }
    assert decide(az, context=ctx).allowed
    assert not decide(az, context={**ctx, "approval": {"state": "pending"}}).allowed
    assert not decide(az).allowed  # no delegation: depth 0, approval state none


def test_human_principal_has_no_default_actors() -> None:
    az = authorizer(
        "permit (principal, action, resource) when { context.delegation.depth == 0 && "
        "context.delegation.actors.isEmpty() };",
        humans=[human("hum_1")],
    )
    assert decide(az, ref("Human", "hum_1")).allowed


def test_request_rate_counts_per_principal_over_sixty_seconds() -> None:
    clock = Clock()
    az = authorizer(
        PERMIT_ALL
        + '\n@id("flood") forbid (principal, action, resource) when { context.request_rate > 3 };',
        agents=[agent("agt_1"), agent("agt_2")],
        clock=clock,
    )
    assert [decide(az, "agt_1").decision for _ in range(4)] == ["allow"] * 3 + ["deny"]
    assert decide(az, "agt_1").policies == ("flood",)
    assert decide(az, "agt_2").allowed  # another principal has its own count
    clock.current += timedelta(seconds=59)
    assert not decide(az, "agt_1").allowed  # still within the window
    clock.current += timedelta(seconds=61)
    assert decide(az, "agt_1").allowed


def test_rate_counter_window() -> None:
    counter = RateCounter()
    me, you = ref("Agent", "a"), ref("Agent", "b")
    assert [counter.hit(me, 1000.0) for _ in range(3)] == [1, 2, 3]
    assert counter.hit(me, 1030.5) == 4
    assert counter.hit(you, 1030.5) == 1
    assert counter.hit(me, 1060.0) == 2  # second 1000 has left the window
    assert counter.hit(me, 1200.0) == 1


def test_rate_counter_is_bounded() -> None:
    counter = RateCounter(max_principals=10)
    for i in range(25):
        counter.hit(ref("Agent", str(i)), 0.0)
    assert len(counter._buckets) <= 10


def test_risk_score_is_the_higher_of_caller_and_server() -> None:
    levels = {"agt_1": 70, "agt_2": 500, "agt_3": -5}
    az = authorizer(
        PERMIT_ALL
        + '\n@id("risky") forbid (principal, action, resource) when { context.risk_score >= 80 };',
        agents=[agent("agt_1"), agent("agt_2"), agent("agt_3")],
        risk=lambda principal: levels[principal.id],
    )
    low = decide(az, "agt_1", context={"risk_score": 20})
    assert (low.decision, low.risk_score) == ("allow", 70)
    high = decide(az, "agt_1", context={"risk_score": 90})
    assert (high.decision, high.risk_score) == ("deny", 90)
    clamped = decide(az, "agt_2")
    assert (clamped.decision, clamped.risk_score) == ("deny", 100)
    assert decide(az, "agt_3").risk_score == 0


def test_undeclared_tool_arguments_are_reported_and_left_out() -> None:
    az = authorizer(
        '@id("small") permit (principal, action, resource) when { context.args has amount && '
        "context.args.amount < 10 };\n"
        '@id("shape") forbid (principal, action, resource) when { context.args has force };',
        schema=ARGS_SCHEMA,
        agents=[agent()],
    )
    decision = decide(az, context={"args": {"amount": 5, "force": True, "zeta": "x"}})
    assert decision.allowed
    assert decision.ignored_arguments == ("force", "zeta")
    assert decision.to_dict()["ignored_arguments"] == ["force", "zeta"]


def test_typed_tool_arguments_reach_the_policy() -> None:
    az = authorizer(
        '@id("p") permit (principal, action, resource) when {\n'
        '  context.args.price.lessThanOrEqual(decimal("9.9900")) &&\n'
        '  context.args.recipients.contains("ops@example.com") &&\n'
        '  context.args.owner == Human::"hum_1" && context.args.options.mode == "safe" &&\n'
        '  !context.args.dry && context.args.path like "/tmp/*"\n'
        "};",
        schema=ARGS_SCHEMA,
        agents=[agent()],
    )
    args = {
        "price": "9.99",
        "recipients": ["ops@example.com"],
        "owner": {"type": "Human", "id": "hum_1"},
        "options": {"mode": "safe"},
        "dry": False,
        "path": "/tmp/report.txt",
    }
    assert decide(az, context={"args": args}).allowed
    assert not decide(az, context={"args": {**args, "price": 10}}).allowed


def test_resource_attributes_and_tags_reach_the_policy() -> None:
    az = authorizer(
        '@id("p") permit (principal, action, resource) when {\n'
        '  resource.classification == "public" && resource.hasTag("team") &&\n'
        '  resource.getTag("team") == principal.getTag("team") && principal.autonomy_level >= 3\n'
        "};",
        agents=[agent(labels={"team": "a"})],
        resources=[
            resource("Tool", "same", tags={"team": "a"}, classification="public"),
            resource("Tool", "other", tags={"team": "b"}, classification="public"),
        ],
    )
    assert decide(az, target="same").allowed
    assert not decide(az, target="other").allowed


def test_update_swaps_engine_and_entities() -> None:
    az = authorizer(PERMIT_ALL, agents=[agent()])
    assert decide(az).allowed
    az.update(engine=engine("forbid (principal, action, resource);", version=2))
    decision = decide(az)
    assert (decision.decision, decision.policy_version) == ("deny", 2)
    az.update(engine=engine(PERMIT_ALL, version=3))
    az.update(entities=EntitySnapshot(Schema(), agents=[agent(status=AgentStatus.SUSPENDED)]))
    assert not decide(az).allowed
    assert az.engine.version == 3


def test_each_request_gets_its_own_decision() -> None:
    az = authorizer(
        '@id("t1") permit (principal, action, resource == Tool::"t1");', agents=[agent()]
    )
    decisions = [az.decide(request(target="t1")), az.decide(request(target="t2"))]
    assert [d.decision for d in decisions] == ["allow", "deny"]
    assert len({d.decision_id for d in decisions}) == 2


def test_ephemeral_agent_is_allowed_until_its_ttl() -> None:
    clock = Clock()
    az = authorizer(PERMIT_ALL, agents=[agent(expires_at=NOW + timedelta(minutes=5))], clock=clock)
    assert decide(az).allowed
    clock.current += timedelta(minutes=5)
    assert decide(az).reasons == ("the agent's TTL has passed",)


def test_request_is_a_frozen_value() -> None:
    req = AuthzRequest(ref("Agent", "a"), "invoke_tool", ref("Tool", "t"))
    assert req.context == {}
    with pytest.raises(AttributeError):
        req.action = "read"  # type: ignore[misc]


def test_engine_is_built_from_records_directly() -> None:
    eng = PolicyEngine(
        5, Schema(), [PolicyRecord(id="x", text="permit (principal, action, resource);")]
    )
    az = Authorizer(eng, EntitySnapshot(Schema(), agents=[agent()]), clock=Clock())
    assert decide(az).policies == ("x",)
    assert parsing.MAX_POLICY_BYTES < parsing.MAX_TEXT_BYTES


def test_validate_request_raises_what_decide_would_deny() -> None:
    az = authorizer(PERMIT_ALL, schema=ARGS_SCHEMA, agents=[agent()])
    az.validate_request(request(context={"args": {"amount": 3}}))
    for bad in (
        request(context={"args": {"amount": "3"}}),
        request(context={"time": {}}),
        request(context={"risk_score": 101}),
        request(action="fly"),
        request(target=ref("DataSet", "d")),
        request(principal=ref("Environment", "prod")),
    ):
        with pytest.raises(RequestError):
            az.validate_request(bad)
