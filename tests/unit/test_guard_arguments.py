"""What policy sees of a guarded call's arguments (adapters/gateway/guard.py,
``plain_arguments``): pydantic models and dataclasses, nested anywhere, become their
JSON form, so a forbid on a nested field applies to a LangChain tool (whose input
LangChain validates into model instances) as to a plain call; a value with no JSON
form refuses the call (audited) instead of vanishing from the decision. In memory, as
tests/unit/test_guard_decorator.py: a real Enforcer and Cedar authorizer with a
schema that declares the arguments."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from langchain_core.tools import StructuredTool
from pydantic import BaseModel
from tests.unit.policy_support import agent, authorizer
from tests.unit.test_guard_decorator import AGENT, RESOURCE, FakeLink, Parts, Sink

from agentiam.core.policy.schema import Schema
from agentiam.guard import Guard, GuardEnforcer, ToolCallDenied, plain_arguments

SCHEMA = json.dumps(
    {
        "commonTypes": {
            "ToolArguments": {
                "type": "Record",
                "attributes": {
                    "amount": {"type": "Long", "required": False},
                    "to": {
                        "type": "Record",
                        "required": False,
                        "attributes": {
                            "iban": {"type": "String"},
                            "name": {"type": "String"},
                        },
                    },
                },
            }
        }
    }
)
POLICY = """
permit (principal, action == Action::"invoke_tool", resource == Tool::"transfer");
forbid (principal, action == Action::"invoke_tool", resource == Tool::"transfer")
  when { context.args has to && context.args.to.iban like "DE00*" };
"""
EVIL = {"iban": "DE00EVIL", "name": "mallory"}
GOOD = {"iban": "FR7612345", "name": "alice"}


class Recipient(BaseModel):
    iban: str
    name: str


class TransferArgs(BaseModel):
    amount: int
    to: Recipient


@dataclass
class Payee:
    iban: str
    name: str


@pytest.fixture
def parts() -> Parts:
    link = FakeLink(authorizer(POLICY, schema=Schema(SCHEMA), agents=[agent(AGENT)]))
    sink = Sink()
    enforcer = GuardEnforcer("unit", link, sink, resource_metadata=RESOURCE, kind="guard")
    return Parts(Guard(enforcer, resource=RESOURCE, token="good"), link, sink)


def _decisions(sink: Sink) -> list[dict[str, Any]]:
    return [e for e in sink.events if e["type"] == "authz.decision"]


def test_a_forbid_on_a_nested_model_field_applies_to_a_langchain_tool(parts: Parts) -> None:
    sent: list[str] = []

    def transfer(amount: int, to: Recipient) -> str:
        sent.append(to.iban)
        return f"sent {amount} to {to.iban}"

    tool = StructuredTool.from_function(
        transfer, name="transfer", args_schema=TransferArgs, description="Transfer money."
    )
    [guarded] = parts.guard.langchain_tools([tool], on_refusal="raise")
    with pytest.raises(ToolCallDenied) as caught:
        guarded.invoke({"amount": 900, "to": EVIL})
    assert sent == []  # the tool never ran
    assert caught.value.refusal_status == 403
    assert "forbidden by policy" in caught.value.reason
    [decision] = _decisions(parts.sink)
    assert decision["outcome"] == "denied"
    assert decision["details"]["argument_names"] == ["amount", "to"]

    assert guarded.invoke({"amount": 5, "to": GOOD}) == "sent 5 to FR7612345"
    assert sent == ["FR7612345"]


@pytest.mark.parametrize("to", [Recipient(**EVIL), Payee(**EVIL)])
def test_models_and_dataclasses_are_seen_by_policy_in_a_decorated_function(
    parts: Parts, to: Any
) -> None:
    ran: list[int] = []

    @parts.guard.tool()
    def transfer(amount: int, to: Any) -> None:
        ran.append(amount)

    with pytest.raises(ToolCallDenied):
        transfer(900, to)
    assert ran == []
    assert _decisions(parts.sink)[0]["details"]["argument_names"] == ["amount", "to"]
    transfer(1, type(to)(**GOOD))
    assert ran == [1]


def test_models_and_dataclasses_become_json_inside_lists_and_objects() -> None:
    nested = {"payees": [Payee(**GOOD), {"model": Recipient(**EVIL)}]}
    assert plain_arguments({"batch": nested}) == {"batch": {"payees": [GOOD, {"model": EVIL}]}}


def test_a_value_with_no_json_form_refuses_the_call_and_is_audited(parts: Parts) -> None:
    ran: list[str] = []

    @parts.guard.tool()
    def transfer(amount: int, to: Any) -> None:
        ran.append("transfer")

    with pytest.raises(ToolCallDenied) as caught:
        transfer(900, object())
    denied = caught.value
    assert ran == []
    assert (denied.error, denied.refusal_status, denied.decision_id) == (
        "invalid_request",
        400,
        None,
    )
    assert denied.reason.startswith("the argument 'to' holds a value of type object")
    assert "exclude" in (denied.hint or "")
    [event] = parts.sink.events
    assert event["type"] == "api.request.rejected"
    assert event["agent_id"] == AGENT  # refused after the token was verified
    assert event["reason"] == denied.reason

    # left out of the decision on purpose, it does not refuse
    @parts.guard.tool("transfer", exclude=("to",))
    def transfer_excluded(amount: int, to: Any) -> None:
        ran.append("excluded")

    transfer_excluded(1, object())
    assert ran == ["excluded"]


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (b"secret-bytes", "a value of type bytes"),
        (math.inf, "a non-finite number of type float"),
        (Decimal("NaN"), "a non-finite number of type Decimal"),
        ({1: "x"}, "an object key of type int"),
        ([{"deeper": object()}], "a value of type object"),
    ],
)
def test_what_has_no_json_form_is_named_never_shown(value: Any, what: str) -> None:
    with pytest.raises(TypeError) as caught:
        plain_arguments({"data": value})
    assert str(caught.value).startswith(f"the argument 'data' holds {what}")
    assert "secret" not in str(caught.value)


def test_uuids_and_decimals_are_their_text() -> None:
    uid = UUID("12345678-1234-5678-1234-567812345678")
    assert plain_arguments({"id": uid, "amount": Decimal("12.50")}) == {
        "id": str(uid),
        "amount": "12.50",
    }
