"""A resource the entity snapshot does not hold, given derived attributes by its
enforcement point (``AuthzRequest.resource_attributes``: the HTTP gateway's route
``resource.attributes`` on an id made from the path), is decided through the stand-in
of its *attributed* place (its type, its parents and those attributes,
``EntitySnapshot.stand_in``), with no copy of the entities; and exactly as the
copy-based placement decides it (the oracle: the snapshot with the resource's record
merged in, ``EntitySnapshot.with_attributes``): the same decision, policies and
errors, word for word (Cedar's text names the resource, never the stand-in)."""

from __future__ import annotations

import json
from itertools import product
from typing import Any

import pytest
from tests.unit.policy_support import NOW, Clock, agent, engine, ref

from agentiam.core.policy.authorizer import Authorizer, AuthzRequest
from agentiam.core.policy.entities import STAND_IN_PREFIX, EntitySnapshot, Place, attributes_key
from agentiam.core.policy.model import ResourceRecord
from agentiam.core.policy.schema import Schema

SCHEMA = Schema(
    json.dumps(
        {
            "entityTypes": {
                "Endpoint": {
                    "shape": {
                        "type": "Record",
                        "attributes": {
                            "destructive": {"type": "Boolean"},
                            "tier": {"type": "Long"},
                        },
                    }
                }
            }
        }
    )
)
API = ref("Api", "billing")
POLICIES = {
    "permit-all": "permit (principal, action, resource);",
    "permit-in-api": 'permit (principal, action, resource in Api::"billing");',
    "forbid-destructive": "forbid (principal, action, resource) "
    "when { resource has destructive && resource.destructive };",
    "forbid-high-tier": "forbid (principal, action, resource) when { resource.tier > 3 };",
    "forbid-api": 'forbid (principal, action == Action::"DELETE", resource in Api::"billing");',
}
ATTRIBUTES: list[dict[str, Any]] = [
    {"destructive": True},
    {"destructive": False},
    {"tier": 5},
    {"tier": 1, "destructive": False},
]


def _text(ids: tuple[str, ...]) -> str:
    return "\n".join(f'@id("{i}") {POLICIES[i]}' for i in ids)


SETS = [
    ("permit-all", "forbid-destructive"),
    ("permit-in-api", "forbid-destructive", "forbid-high-tier"),  # errors without tier
    ("permit-all", "forbid-high-tier"),
    ("permit-in-api", "forbid-api"),
]


@pytest.mark.parametrize(("ids", "attributes"), list(product(SETS, ATTRIBUTES)))
def test_an_attributed_stand_in_decides_as_a_copy_would(
    ids: tuple[str, ...], attributes: dict[str, Any]
) -> None:
    place = Place("Endpoint", (API,), attributes_key(attributes))
    base = EntitySnapshot(SCHEMA, agents=[agent("agt_1")])
    provisioned = base.with_derived([], places=[place])
    compiled = engine(_text(ids), SCHEMA)
    for action in ("GET", "DELETE"):
        resource = ref("Endpoint", 'file:a/b "c"')  # an id Cedar escapes
        request = AuthzRequest(
            ref("Agent", "agt_1"),
            action,
            resource,
            {},
            resource_parents=(API,),
            resource_attributes=attributes,
        )
        az = Authorizer(compiled, provisioned, clock=Clock(NOW))
        decided = az.decide(request)
        assert not az._placed[1], "through the stand-in: no copy"
        record = ResourceRecord(resource.type, resource.id, attributes, (API,))
        oracle = Authorizer(compiled, base.with_attributes(record), clock=Clock(NOW))
        expected = oracle.decide(request)
        assert (decided.decision, decided.policies, decided.errors) == (
            expected.decision,
            expected.policies,
            expected.errors,
        ), (ids, attributes, action)
        assert all(STAND_IN_PREFIX not in e for e in decided.errors)


def test_a_place_with_other_attributes_is_not_used() -> None:
    """A stand-in stands only for its exact attributes: others get a copy of their own
    (kept), never the stand-in of another set of attributes."""
    compiled = engine(_text(("permit-all", "forbid-destructive")), SCHEMA)
    base = EntitySnapshot(SCHEMA, agents=[agent("agt_1")])
    provisioned = base.with_derived(
        [], places=[Place("Endpoint", (API,), attributes_key({"destructive": False}))]
    )
    az = Authorizer(compiled, provisioned, clock=Clock(NOW))
    request = AuthzRequest(
        ref("Agent", "agt_1"),
        "DELETE",
        ref("Endpoint", "x"),
        {},
        resource_parents=(API,),
        resource_attributes={"destructive": True},
    )
    assert not az.decide(request).allowed
    assert len(az._placed[1]) == 1  # a copy (of the place with a stand-in of its own)
    assert provisioned.stand_in("Endpoint", (API,)) is None  # none without attributes
    assert provisioned.stand_in("Endpoint", (API,), '{"destructive":false}') is not None


def test_a_place_whose_attributes_the_schema_refuses_has_no_stand_in() -> None:
    base = EntitySnapshot(Schema(), agents=[agent("agt_1")])  # no destructive declared
    key = attributes_key({"destructive": True})
    provisioned = base.with_derived([], places=[Place("Endpoint", (API,), key)])
    assert provisioned.stand_in("Endpoint", (API,), key) is None
