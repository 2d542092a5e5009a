"""``DerivedAttributes`` (``core/policy/entities.py``): an enforcement point's derived
attributes, made once with their key (the JSON a decision finds their place's
stand-in by), are read-only all the way down, so the key and the values cannot
disagree; and they still serialise, compare and decide as the JSON they came from."""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from tests.unit.policy_support import NOW, Clock, agent, engine, ref

from agentiam.core.approvals import request_fingerprint
from agentiam.core.policy.authorizer import Authorizer, AuthzRequest
from agentiam.core.policy.entities import (
    DerivedAttributes,
    EntitySnapshot,
    Place,
    attributes_key,
    derived_attributes,
)
from agentiam.core.policy.schema import Schema

NESTED = {"tags": ["pii", {"x": [1]}], "owner": {"team": "billing"}, "on": True}

# each tries to change the attributes after their key was made
CHANGES: list[Callable[[DerivedAttributes], object]] = [
    lambda a: a["tags"].append("public"),
    lambda a: a["tags"].extend(["public"]),
    lambda a: a["tags"].insert(0, "public"),
    lambda a: a["tags"].pop(),
    lambda a: a["tags"].remove("pii"),
    lambda a: a["tags"].clear(),
    lambda a: a["tags"].sort(key=str),
    lambda a: a["tags"].reverse(),
    lambda a: a["tags"].__setitem__(0, "public"),
    lambda a: a["tags"].__delitem__(0),
    lambda a: a["tags"].__iadd__(["public"]),
    lambda a: a["tags"].__imul__(2),
    lambda a: a["tags"][1]["x"].append(2),  # nested two deep
    lambda a: a["owner"].__setitem__("team", "ops"),
    lambda a: a["owner"].__delitem__("team"),
    lambda a: a["owner"].update(team="ops"),
    lambda a: a["owner"].setdefault("other", 1),
    lambda a: a["owner"].pop("team"),
    lambda a: a["owner"].popitem(),
    lambda a: a["owner"].clear(),
    lambda a: a["owner"].__ior__({"team": "ops"}),
    lambda a: a["tags"][1].__setitem__("x", []),
]


@pytest.mark.parametrize("change", CHANGES)
def test_nested_values_cannot_be_changed(change: Callable[[DerivedAttributes], object]) -> None:
    attributes = derived_attributes(NESTED)
    with pytest.raises(TypeError, match="read-only"):
        change(attributes)
    assert dict(attributes) == NESTED
    assert attributes.key == attributes_key(NESTED)
    assert json.loads(attributes.key) == json.loads(json.dumps(dict(attributes)))


def test_the_key_cannot_be_replaced() -> None:
    attributes = derived_attributes(NESTED)
    with pytest.raises(AttributeError, match="read-only"):
        attributes.key = '{"on":false}'  # type: ignore[misc]
    with pytest.raises(AttributeError, match="read-only"):
        del attributes.key
    assert attributes.key == attributes_key(NESTED)


def test_the_values_are_made_from_the_key() -> None:
    """Constructed from the key alone: no values that could say otherwise."""
    attributes = DerivedAttributes('{"on":true,"tags":["a"]}')
    assert dict(attributes) == {"on": True, "tags": ["a"]}
    assert not DerivedAttributes("")
    assert derived_attributes(attributes) is attributes


def test_they_still_serialise_and_compare_as_their_json() -> None:
    """What consumers do with them: ``dict(...)`` then JSON (the control plane's
    request, an approval's fingerprint and stored attributes), equality with plain
    JSON values (the catalog's), copies and pickles (which keep the key)."""
    attributes = derived_attributes(NESTED)
    assert json.loads(json.dumps(dict(attributes))) == NESTED
    assert attributes["tags"] == NESTED["tags"]
    assert attributes["owner"] == NESTED["owner"]
    assert isinstance(attributes["tags"], list)
    assert isinstance(attributes["owner"], dict)
    principal, resource = ref("Agent", "agt_1"), ref("Endpoint", "x")
    assert request_fingerprint(
        principal, "GET", resource, None, attributes=attributes
    ) == request_fingerprint(principal, "GET", resource, None, attributes=NESTED)
    for again in (copy.copy(attributes), copy.deepcopy(attributes)):
        assert again == attributes
        assert again.key == attributes.key
    unpickled = pickle.loads(pickle.dumps(attributes))  # noqa: S301 (bytes made here)
    assert (dict(unpickled), unpickled.key) == (NESTED, attributes.key)
    with pytest.raises(TypeError):
        unpickled["tags"].append("public")
    nested_copy: Any = copy.deepcopy(attributes["tags"])
    assert nested_copy == NESTED["tags"]
    with pytest.raises(TypeError):
        nested_copy.append("public")


def test_values_nested_too_deeply_are_refused_as_not_json() -> None:
    value: Any = 0
    for _ in range(5000):
        value = [value]
    with pytest.raises(ValueError, match="nested too deeply"):
        derived_attributes({"x": value})


SCHEMA = Schema(
    json.dumps(
        {
            "entityTypes": {
                "Endpoint": {
                    "shape": {
                        "type": "Record",
                        "attributes": {"tags": {"type": "Set", "element": {"type": "String"}}},
                    }
                }
            }
        }
    )
)


def test_a_set_attribute_decides_through_its_stand_in_as_plain_json_would() -> None:
    """A nested (Set) value held read-only is decided as the same plain list is: the
    forbid on ``resource.tags.contains("pii")`` applies through the stand-in."""
    api = ref("Api", "billing")
    compiled = engine(
        '@id("all") permit (principal, action, resource);\n'
        '@id("no-pii") forbid (principal, action, resource) when '
        '{ resource has tags && resource.tags.contains("pii") };',
        SCHEMA,
    )
    for tags, allowed in ((["pii", "eu"], False), (["eu"], True)):
        attributes = derived_attributes({"tags": tags})
        snapshot = EntitySnapshot(SCHEMA, agents=[agent("agt_1")]).with_derived(
            [], places=[Place("Endpoint", (api,), attributes.key)]
        )
        for given in (attributes, {"tags": tags}):
            az = Authorizer(compiled, snapshot, clock=Clock(NOW))
            decided = az.decide(
                AuthzRequest(
                    ref("Agent", "agt_1"),
                    "GET",
                    ref("Endpoint", "file:a"),
                    {},
                    resource_parents=(api,),
                    resource_attributes=given,
                )
            )
            assert decided.allowed is allowed, (tags, type(given))
            assert not az._placed[1], "through the stand-in: no copy"
