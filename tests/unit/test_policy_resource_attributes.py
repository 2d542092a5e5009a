"""Attributes an enforcement point derives for a decision's resource
(``AuthzRequest.resource_attributes``): the MCP gateway's ``read_only`` /
``destructive`` from a trusted server's tool annotations. A decision uses them as a
derived record's (``merge_derived``: only where the entity it sees sets none), so the
control plane, deciding the call again with only its catalog, decides it as the
gateway's snapshot (the catalog with the tool's derived record merged in) does."""

from __future__ import annotations

from itertools import product
from typing import Any

import pytest
from tests.unit.policy_support import agent, authorizer, ref, resource

from agentiam.core.policy.authorizer import Authorizer, AuthzRequest, Decision, RequestError
from agentiam.core.policy.entities import (
    MAX_DERIVED_ATTRIBUTES,
    MAX_DERIVED_ATTRIBUTES_BYTES,
    EntitySnapshot,
)
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.core.policy.schema import Schema

BANK = ref("McpServer", "bank")
TOOL = ref("Tool", "bank.transfer")
POLICIES = """
@id("all") permit (principal, action, resource);
@id("no-destructive") forbid (principal, action == Action::"invoke_tool", resource)
  when { resource has destructive && resource.destructive };
@id("writes-in-bank") forbid (principal, action, resource in McpServer::"bank")
  when { resource has read_only && !resource.read_only };
"""


def _call(attributes: dict[str, Any], tool: EntityRef = TOOL) -> AuthzRequest:
    return AuthzRequest(
        ref("Agent", "agt_1"),
        "invoke_tool",
        tool,
        {},
        resource_parents=(BANK,),
        resource_attributes=attributes,
    )


def _gateway(catalog: list[ResourceRecord], derived: dict[str, Any]) -> Authorizer:
    """The MCP gateway's authorizer: the catalog with the listed tool's derived record
    merged in (``ListedTools.derive``: ``EntitySnapshot.with_derived``)."""
    plane = authorizer(POLICIES, agents=[agent()], resources=catalog)
    listed = ResourceRecord("Tool", TOOL.id, derived, (BANK,))
    return Authorizer(plane.engine, plane.entities.with_derived([listed]))


def _outcome(decision: Decision) -> tuple[str, set[str]]:
    return decision.decision, set(decision.policies)


CATALOGS: list[dict[str, Any] | None] = [
    None,  # no catalog entry
    {},
    {"destructive": False},
    {"destructive": True},
    {"read_only": True},
    {"read_only": False, "domain": "ledger"},
]
DERIVED: list[dict[str, Any]] = [
    {},
    {"destructive": True},
    {"destructive": False},
    {"destructive": True, "read_only": False},
    {"destructive": False, "read_only": True},
]


@pytest.mark.parametrize(("catalogued", "derived"), list(product(CATALOGS, DERIVED)))
def test_the_control_plane_decides_as_the_gateway_snapshot_does(
    catalogued: dict[str, Any] | None, derived: dict[str, Any]
) -> None:
    """The control plane has only the catalog; the gateway has the catalog with the
    tool's derived record merged in. Given the attributes the gateway derived, both
    decide alike, for every catalog entry (the catalog's attributes win on both sides)
    and every derivation."""
    catalog = [] if catalogued is None else [resource("Tool", TOOL.id, **catalogued)]
    gateway = _gateway(catalog, derived)
    plane = authorizer(POLICIES, agents=[agent()], resources=catalog)
    at_gateway = _outcome(gateway.decide(_call(derived)))
    at_plane = plane.decide(_call(derived))
    assert _outcome(at_plane) == at_gateway
    assert not at_plane.errors
    # and it is the decision the gateway made before calls carried the attributes
    assert _outcome(gateway.decide(_call({}))) == at_gateway
    # the gateway's own decision costs no copy of its snapshot
    assert gateway._placed[1] == {}


def test_without_the_attributes_the_control_plane_decides_otherwise() -> None:
    """The gap: a tool the catalog does not know is destructive only by its derived
    attribute; asked without it, the control plane sees a harmless tool."""
    plane = authorizer(POLICIES, agents=[agent()])
    assert plane.decide(_call({})).allowed
    refused = plane.decide(_call({"destructive": True}))
    assert not refused.allowed
    assert refused.policies == ("no-destructive",)


def test_a_catalogued_attribute_wins_over_a_derived_one() -> None:
    plane = authorizer(
        POLICIES, agents=[agent()], resources=[resource("Tool", TOOL.id, destructive=False)]
    )
    assert plane.decide(_call({"destructive": True})).allowed
    catalogued = authorizer(
        POLICIES, agents=[agent()], resources=[resource("Tool", TOOL.id, destructive=True)]
    )
    assert not catalogued.decide(_call({"destructive": False})).allowed


def test_a_derived_attribute_reaches_a_catalog_entry_that_sets_none() -> None:
    plane = authorizer(
        POLICIES, agents=[agent()], resources=[resource("Tool", TOOL.id, domain="ledger")]
    )
    decision = plane.decide(_call({"read_only": False}))
    assert not decision.allowed
    assert decision.policies == ("writes-in-bank",)
    # the snapshot in force is not changed by the decision
    assert dict(plane.entities.resources[TOOL].attributes) == {"domain": "ledger"}


def test_attributes_without_parents_are_used_too() -> None:
    plane = authorizer(POLICIES, agents=[agent()])
    request = AuthzRequest(
        ref("Agent", "agt_1"), "invoke_tool", TOOL, {}, resource_attributes={"destructive": True}
    )
    assert not plane.decide(request).allowed


def test_distinct_attributes_are_distinct_placements() -> None:
    """A copy of the snapshot made for one set of attributes is not reused for
    another (the cache key holds them)."""
    plane = authorizer(POLICIES, agents=[agent()])
    assert not plane.decide(_call({"destructive": True})).allowed
    assert plane.decide(_call({"destructive": False})).allowed
    assert not plane.decide(_call({"destructive": True})).allowed
    assert len(plane._placed[1]) == 2


BAD: list[tuple[EntityRef, dict[str, Any], str]] = [
    (TOOL, {"colour": "red"}, "resource_attributes.colour: is not declared for a Tool"),
    (TOOL, {"destructive": "yes"}, "resource_attributes.destructive: expected true or false"),
    (TOOL, {"destructive": 1}, "resource_attributes.destructive: expected true or false"),
    (TOOL, {"owner": {"type": "Agent", "id": "agt_1"}}, "expected an entity of type Human"),
    (ref("Endpoint", "POST /pay"), {"destructive": True}, "is not declared for a Endpoint"),
    (
        TOOL,
        {f"a{i}": True for i in range(MAX_DERIVED_ATTRIBUTES + 1)},
        f"at most {MAX_DERIVED_ATTRIBUTES} derived attributes",
    ),
    (
        TOOL,
        {"name": "x" * MAX_DERIVED_ATTRIBUTES_BYTES},
        f"larger than {MAX_DERIVED_ATTRIBUTES_BYTES} bytes",
    ),
]


@pytest.mark.parametrize(("tool", "attributes", "problem"), BAD)
def test_attributes_the_schema_refuses_are_not_valid(
    tool: EntityRef, attributes: dict[str, Any], problem: str
) -> None:
    plane = authorizer(POLICIES, agents=[agent()])
    action = "POST" if tool.type == "Endpoint" else "invoke_tool"
    request = AuthzRequest(ref("Agent", "agt_1"), action, tool, {}, resource_attributes=attributes)
    with pytest.raises(RequestError, match=problem):
        plane.validate_request(request)


@pytest.mark.parametrize(
    "attributes", [{"colour": "red"}, {"destructive": "yes"}, {"owner": {"type": "Agent"}}]
)
def test_a_decision_denies_attributes_the_schema_refuses(attributes: dict[str, Any]) -> None:
    """Fail closed: ``decide`` (which never raises) denies a request whose attributes
    cannot be merged, rather than deciding it without them."""
    plane = authorizer(POLICIES, agents=[agent()])
    decision = plane.decide(_call(attributes, ref("Tool", "bank.safe")))
    assert not decision.allowed
    assert "cannot be given its derived attributes" in decision.reasons[0]


def test_valid_attributes_pass_validation() -> None:
    plane = authorizer(POLICIES, agents=[agent()])
    plane.validate_request(_call({"destructive": True, "read_only": False, "name": "Transfer"}))
    plane.validate_request(_call({"owner": {"type": "Human", "id": "hum_1"}}))


def test_a_snapshot_with_the_derived_record_is_used_as_is() -> None:
    """At the gateway the listed tool's record already carries the attributes: the
    decision reads the snapshot in force, no copy."""
    base = EntitySnapshot(Schema(), agents=[agent()])
    listed = base.with_derived([ResourceRecord("Tool", TOOL.id, {"destructive": True}, (BANK,))])
    gateway = Authorizer(authorizer(POLICIES).engine, listed)
    assert not gateway.decide(_call({"destructive": True})).allowed
    assert gateway._placed[1] == {}


@pytest.mark.parametrize(
    ("listed", "carried", "allowed"),
    [
        ({"destructive": False}, {"destructive": True}, False),
        ({"destructive": True}, {"destructive": False}, True),
        ({"destructive": True, "read_only": False}, {"destructive": False}, True),
    ],
)
def test_a_call_is_decided_with_the_attributes_it_carries(
    listed: dict[str, Any], carried: dict[str, Any], allowed: bool
) -> None:
    """The gateway's snapshot was rebuilt from a newer listing after the call took its
    attributes (or before): the call is decided with the attributes it carries, the
    ones an approval for it is bound to, not with the snapshot's; its parent is kept.
    The control plane decides it alike."""
    engine = authorizer(POLICIES).engine
    base = EntitySnapshot(Schema(), agents=[agent()])
    snapshot = base.with_derived([ResourceRecord("Tool", TOOL.id, listed, (BANK,))])
    gateway = Authorizer(engine, snapshot)
    decision = gateway.decide(_call(carried))
    assert decision.allowed is allowed
    assert not decision.errors
    assert authorizer(POLICIES, agents=[agent()]).decide(_call(carried)).allowed is allowed
    # the copy it was decided on has the carried attributes and the server
    [copy] = gateway._placed[1].values()
    assert dict(copy.resources[TOOL].attributes) == carried
    assert copy.parents[TOOL] == (BANK,)
    # the snapshot in force is not changed
    assert dict(gateway.entities.resources[TOOL].attributes) == listed


def test_the_catalog_still_wins_over_the_attributes_a_call_carries() -> None:
    engine = authorizer(POLICIES).engine
    catalog = [resource("Tool", TOOL.id, destructive=False)]
    base = EntitySnapshot(Schema(), agents=[agent()], resources=catalog)
    snapshot = base.with_derived([ResourceRecord("Tool", TOOL.id, {"read_only": True}, (BANK,))])
    gateway = Authorizer(engine, snapshot)
    assert gateway.decide(_call({"destructive": True, "read_only": True})).allowed
    refused = gateway.decide(_call({"destructive": True, "read_only": False}))
    assert not refused.allowed
    assert set(refused.policies) == {"writes-in-bank"}
