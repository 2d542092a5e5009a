"""A resource the entity snapshot does not hold, decided in the parents its enforcement
point gives it (``AuthzRequest.resource_parents``), without a copy of the snapshot:
its place's stand-in stands for it in Cedar (``EntitySnapshot.stand_in``,
``Authorizer._place``).

The property: for random policy sets, catalogs and requests, the decision is the one
the copy-based placement gave (the oracle: the same policies over the snapshot with
the resource's derived record merged in explicitly, ``EntitySnapshot.with_more``):
the same decision, policies, errors (word for word: Cedar's text for the resource,
not the stand-in's) and dry-run outcome, sliced and in full. The draws include
forbids and permits on servers, catalog parents and attributes, conditions that
read the resource's attributes and tags (errors), policies and entities that name
the resource (where a stand-in must not be used), a context argument holding the
resource, a deeper hierarchy, ids Cedar escapes, and places the schema refuses
(a deny, as before).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.policy_support import NOW, Clock, agent, ref

from agentiam.core.policy import authorizer as authorizer_module
from agentiam.core.policy.authorizer import Authorizer, AuthzRequest, Decision, cedar_text
from agentiam.core.policy.engine import PolicyEngine
from agentiam.core.policy.entities import STAND_IN_PREFIX, EntitySnapshot, Place
from agentiam.core.policy.model import EntityRef, Mode, PolicyRecord, ResourceRecord
from agentiam.core.policy.schema import Schema

LABEL = {"type": "String", "required": False}
EXTENSION = json.dumps(
    {
        "entityTypes": {
            "Folder": {
                "memberOfTypes": ["Folder"],
                "shape": {"type": "Record", "attributes": {"label": LABEL}},
            },
            "Doc": {
                "memberOfTypes": ["Folder"],
                "shape": {"type": "Record", "attributes": {"label": LABEL}},
            },
            "Page": {"memberOfTypes": ["DataSet"], "shape": {"type": "Record", "attributes": {}}},
            "Tool": {
                "shape": {
                    "type": "Record",
                    "attributes": {"source": {"type": "Entity", "name": "DataSet"}},
                }
            },
        },
        "actions": {"view": {"appliesTo": {"principalTypes": ["Agent"], "resourceTypes": ["Doc"]}}},
        "commonTypes": {
            "ToolArguments": {
                "type": "Record",
                "attributes": {"ds": {"type": "Entity", "name": "DataSet"}},
            }
        },
    }
)
SCHEMA = Schema(EXTENSION)
BANK, OPS = ref("McpServer", "bank"), ref("McpServer", "ops")
ROOT, SUB = ref("Folder", "root"), ref("Folder", "sub")
AGENTS = ["agt_0", "agt_1"]
# a resource nobody names, with ids Cedar's messages escape
FRESH = ["bank.bank://statements/7", 'q"uote', "back\\slash", "ünï\u0301code", "line\nbreak"]
CATALOGUED = ["ds_cat", "ds_cat_ops"]  # catalog entries (with and without a server)
NAMED = "ds_named"  # a policy names it
REFERENCED = "ds_ref"  # a Page's parent and a Tool's attribute name it
LISTED = "ds_listed"  # an enforcement point's derived record (a listed resource)
DATASETS = [*FRESH, *CATALOGUED, NAMED, REFERENCED, LISTED]
DOCS = ["doc_fresh", "doc_cat"]
PARENTS: list[tuple[EntityRef, ...]] = [(BANK,), (OPS,), (BANK, OPS)]
REFUSED: tuple[EntityRef, ...] = (ref("Api", "api_0"),)  # no DataSet can be in an Api


def _q(r: EntityRef) -> str:
    return f"{r.type}::{json.dumps(r.id)}"


CONDITIONS = [
    "true",
    'resource in McpServer::"bank"',
    'resource in McpServer::"ops"',
    'resource has classification && resource.classification == "secret"',
    'resource.classification == "secret"',  # an error where it has none
    'resource.hasTag("k")',
    'resource.getTag("k") == "v"',  # an error where it has none
    "context.args has ds && context.args.ds == resource",
    'context.args has ds && context.args.ds in McpServer::"bank"',
    f"resource == {_q(ref('DataSet', NAMED))}",
    f"[{_q(ref('DataSet', NAMED))}, {_q(ref('DataSet', 'ds_cat'))}].contains(resource)",
    'Page::"p_0" in McpServer::"bank"',  # through the referenced data set
    'Tool::"t_0".source in McpServer::"ops"',  # through an attribute naming it
    "resource is DataSet",
    'resource in Folder::"root"',
    "context.risk_score > 50",
]
SCOPES = [
    "resource",
    'resource in McpServer::"bank"',
    'resource in McpServer::"ops"',
    "resource is DataSet",
    'resource is DataSet in McpServer::"bank"',
    f"resource == {_q(ref('DataSet', NAMED))}",
    'resource in Folder::"root"',
    'resource in Folder::"sub"',
]


@st.composite
def policies(draw: st.DrawFn) -> list[PolicyRecord]:
    out = []
    for i in range(draw(st.integers(1, 6))):
        effect = draw(st.sampled_from(["permit", "forbid"]))
        scope = draw(st.sampled_from(SCOPES))
        condition = draw(st.sampled_from(CONDITIONS))
        when = "" if condition == "true" and draw(st.booleans()) else f" when {{ {condition} }}"
        mode = Mode.DRY_RUN if draw(st.integers(0, 4)) == 0 else Mode.ENFORCE
        out.append(PolicyRecord(f"p{i}", f"{effect} (principal, action, {scope}){when};", mode))
    return out


@st.composite
def catalogs(draw: st.DrawFn) -> list[ResourceRecord]:
    secret = {"classification": "secret"}
    tags = {"k": "v"} if draw(st.booleans()) else {}
    return [
        ResourceRecord("DataSet", "ds_cat", draw(st.sampled_from([{}, secret])), (), tags),
        ResourceRecord("DataSet", "ds_cat_ops", {}, (OPS,)),
        ResourceRecord("Folder", "root", {}, ()),
        ResourceRecord("Folder", "sub", {}, (ROOT,)),
        ResourceRecord("Doc", "doc_cat", {"label": "x"}, (SUB,)),
        ResourceRecord("Page", "p_0", {}, (ref("DataSet", REFERENCED),)),
        ResourceRecord("Tool", "t_0", {"source": {"type": "DataSet", "id": REFERENCED}}, ()),
    ]


@st.composite
def requests(draw: st.DrawFn) -> AuthzRequest:
    principal = ref("Agent", draw(st.sampled_from(AGENTS)))
    if draw(st.integers(0, 4)) == 0:
        resource = ref("Doc", draw(st.sampled_from(DOCS)))
        parents = draw(st.sampled_from([(SUB,), (ROOT,), (SUB, ROOT), (BANK,)]))
        return AuthzRequest(principal, "view", resource, {}, resource_parents=parents)
    resource = ref("DataSet", draw(st.sampled_from(DATASETS)))
    parents = draw(st.sampled_from([*PARENTS, REFUSED]))
    context: dict[str, Any] = {}
    held = draw(st.sampled_from([None, resource.id, "ds_cat", NAMED]))
    if held is not None:
        context["args"] = {"ds": {"type": "DataSet", "id": held}}
    if draw(st.booleans()):
        context["risk_score"] = draw(st.sampled_from([0, 80]))
    return AuthzRequest(principal, "read", resource, context, resource_parents=parents)


def _summary(decision: Decision) -> tuple[Any, ...]:
    dry = None if decision.dry_run is None else decision.dry_run.decision
    dry_policies = frozenset(decision.dry_run.policies) if decision.dry_run else frozenset()
    return (
        decision.decision,
        frozenset(decision.policies),
        frozenset(decision.reasons),
        frozenset(decision.errors),
        dry,
        dry_policies,
        decision.risk_score,
    )


def _oracle(engine: PolicyEngine, snapshot: EntitySnapshot, req: AuthzRequest) -> Any:
    """The copy-based placement: the snapshot with the resource's derived record merged
    in, decided as any resource is; a record the schema refuses is a deny."""
    r, parents = req.resource, req.resource_parents
    merged = snapshot.with_more([ResourceRecord(r.type, r.id, {}, parents)])
    if not all(p in merged.parents.get(r, ()) for p in parents):
        return "cannot be placed"
    return Authorizer(engine, merged, clock=Clock(NOW))


def _snapshot(catalog: list[ResourceRecord], provision: bool) -> EntitySnapshot:
    base = EntitySnapshot(SCHEMA, agents=[agent(a) for a in AGENTS], resources=catalog)
    listed = [ResourceRecord("DataSet", LISTED, {}, (BANK,))]
    places = [Place("DataSet", p) for p in PARENTS] + [Place("Doc", (SUB,))] if provision else []
    return base.with_derived(listed, places=places)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    records=policies(),
    catalog=catalogs(),
    provision=st.booleans(),
    batch=st.lists(requests(), min_size=1, max_size=8),
)
def test_a_stand_in_decides_as_the_merged_resource_would(
    records: list[PolicyRecord],
    catalog: list[ResourceRecord],
    provision: bool,
    batch: list[AuthzRequest],
) -> None:
    engine = PolicyEngine(1, SCHEMA, records)
    snapshot = _snapshot(catalog, provision)
    az = Authorizer(engine, snapshot, clock=Clock(NOW))
    for req in batch:
        expected = _oracle(engine, snapshot, req)
        for full in (False, True):
            got = az.decide(req, full=full, count=False)
            if expected == "cannot be placed":
                assert not got.allowed, (req, got)
                assert "cannot be placed" in got.reasons[0], (req, got)
                continue
            want = expected.decide(replace(req, resource_parents=()), full=full, count=False)
            assert _summary(got) == _summary(want), (req, got, want)
            assert not any(STAND_IN_PREFIX in e for e in got.errors), got.errors


# -- the stand-in is used where it can be, and costs no copy -----------------------------------


POLICIES = """
@id("all") permit (principal, action, resource);
@id("no-bank") forbid (principal, action, resource in McpServer::"bank");
"""
ERRING = """
@id("secret") forbid (principal, action, resource) when { resource.classification == "secret" };
"""
CATALOG = [
    ResourceRecord("DataSet", "ds_cat", {}, ()),
    ResourceRecord("Page", "p_0", {}, (ref("DataSet", REFERENCED),)),
]


def _engine(text: str = POLICIES) -> PolicyEngine:
    from tests.unit.policy_support import engine

    return engine(text, SCHEMA)


def _read(az: Authorizer, entity: str, parents: tuple[EntityRef, ...] = (OPS,)) -> Decision:
    return az.decide(
        AuthzRequest(
            ref("Agent", "agt_0"), "read", ref("DataSet", entity), resource_parents=parents
        )
    )


def _no_copies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every copy of a snapshot (with_derived, which with_more calls) is recorded."""
    copies: list[str] = []
    real = EntitySnapshot.with_derived

    def counted(self: EntitySnapshot, *args: Any, **kwargs: Any) -> EntitySnapshot:
        copies.append("copy")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(EntitySnapshot, "with_derived", counted)
    return copies


def test_unlisted_resources_cost_no_copy_of_the_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The denial of service: each distinct template-made URI cost a copy of the whole
    snapshot. With the place's stand-in in the snapshot, a thousand cost none."""
    snapshot = _snapshot(CATALOG, provision=True)
    az = Authorizer(_engine(), snapshot, clock=Clock(NOW))
    copies = _no_copies(monkeypatch)
    for i in range(1000):
        assert _read(az, f"ops.ops://statements/{i}").allowed
        assert _read(az, f"bank.bank://statements/{i}", (BANK,)).policies == ("no-bank",)
    assert copies == []
    assert az._placed[1] == {}


def test_without_a_provisioned_stand_in_one_copy_per_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    az = Authorizer(_engine(), _snapshot(CATALOG, provision=False), clock=Clock(NOW))
    copies = _no_copies(monkeypatch)
    for i in range(200):
        assert _read(az, f"ops.x{i}").allowed
        assert not _read(az, f"bank.x{i}", (BANK,)).allowed
    assert len(copies) == 2  # McpServer::"ops" and McpServer::"bank"


def test_what_a_stand_in_cannot_stand_for_is_merged_and_kept_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resource a policy or an entity names is told apart from a stand-in: it is
    decided on a copy with it merged in, the last PLACED_CACHE kept."""
    monkeypatch.setattr(authorizer_module, "PLACED_CACHE", 2)
    named = [f"ds_n{i}" for i in range(5)]
    text = POLICIES + "".join(
        f'@id("n{i}") forbid (principal, action, resource) when {{ resource == DataSet::"{n}" }};'
        for i, n in enumerate(named)
    )
    az = Authorizer(_engine(text), _snapshot(CATALOG, True), clock=Clock(NOW))
    for i, name in enumerate(named):
        assert _read(az, name).policies == (f"n{i}",)
    assert len(az._placed[1]) == 2
    assert ref("DataSet", named[0]) not in az.entities.parents
    # named by an entity (a Page's parent): merged too, the last two kept
    assert _read(az, REFERENCED).allowed
    assert (ref("DataSet", REFERENCED), (OPS,)) in az._placed[1]


def test_errors_name_the_resource_not_its_stand_in() -> None:
    az = Authorizer(_engine(POLICIES + ERRING), _snapshot(CATALOG, True), clock=Clock(NOW))
    for uri in FRESH:
        decision = _read(az, uri)
        assert decision.policies == ("secret",)  # an erroring forbid denies
        (message,) = decision.errors
        assert "policy `secret`" in message
        assert STAND_IN_PREFIX not in message
        assert cedar_text(ref("DataSet", uri)) in message


def test_cedar_text_is_cedars_own() -> None:
    assert cedar_text(ref("DataSet", "plain")) == 'DataSet::"plain"'
    assert cedar_text(ref("DataSet", 'a"b\\c')) == 'DataSet::"a\\"b\\\\c"'
    assert cedar_text(ref("DataSet", "x\ny")) == 'DataSet::"x\\ny"'


def test_a_place_the_schema_refuses_is_a_deny_without_a_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    az = Authorizer(_engine(), _snapshot(CATALOG, True), clock=Clock(NOW))
    copies = _no_copies(monkeypatch)
    decision = _read(az, "bank.x", REFUSED)
    assert not decision.allowed
    assert "cannot be placed" in decision.reasons[0]
    assert copies == []


@pytest.mark.parametrize("size", [200, 20_000])
def test_an_unlisted_decision_does_not_grow_with_the_catalog(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the catalog's size, fifty unlisted resources are decided with no copy
    of the snapshot (the O(entries) work that grew with it), nothing kept for them in
    the placement cache, and each decision right. Speed is not asserted in a unit
    test (the project measures it in bench/)."""
    catalog = [ResourceRecord("DataSet", f"cat{i}", {"domain": "x"}, ()) for i in range(size)]
    snapshot = EntitySnapshot(SCHEMA, agents=[agent(a) for a in AGENTS], resources=catalog)
    snapshot = snapshot.with_derived([], places=[Place("DataSet", (OPS,))])
    az = Authorizer(_engine(), snapshot, clock=Clock(NOW))
    _read(az, "warm")
    copies = _no_copies(monkeypatch)
    for i in range(50):
        assert _read(az, f"ops.u{i}").allowed
    assert copies == []
    assert az._placed[1] == {}


def test_without_cedars_text_for_the_resource_it_is_merged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another cedarpy whose messages this module cannot read: the decision that
    would name the stand-in in its errors is made on a copy instead, word for word."""
    monkeypatch.setattr(authorizer_module, "cedar_text", lambda _ref: None)
    az = Authorizer(_engine(POLICIES + ERRING), _snapshot(CATALOG, True), clock=Clock(NOW))
    copies = _no_copies(monkeypatch)
    decision = _read(az, 'q"uote')
    assert decision.policies == ("secret",)
    assert decision.errors == (
        "error while evaluating policy `secret`: "
        '`DataSet::"q\\"uote"` does not have the attribute `classification`',
    )
    assert len(copies) == 1
