"""The policy bundle round-trips exactly what the authorizer needs: an authorizer built
from a loaded bundle decides every request as the control plane's does (allow, deny,
dry-run, forbids that fail to evaluate, labels, parents, owners, humans, resource
parents and tags, TTLs and lifecycle states), and a malformed bundle is refused with
the member named."""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from tests.unit.policy_support import ARGS_EXTENSION, NOW, Clock, agent, human, records, resource

from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.policy import bundle as bundle_module
from agentiam.core.policy.authorizer import Authorizer, AuthzRequest, Decision
from agentiam.core.policy.bundle import (
    BUNDLE_FORMAT,
    BundleError,
    bundle_dict,
    bundle_etag,
    load_bundle,
    time_zone_of,
)
from agentiam.core.policy.engine import PolicyEngine
from agentiam.core.policy.entities import EntitySnapshot
from agentiam.core.policy.model import EntityRef, Mode
from agentiam.core.policy.schema import Schema

EXTENSION = json.dumps(
    {
        **json.loads(ARGS_EXTENSION),
        "entityTypes": {
            "Project": {"shape": {"type": "Record", "attributes": {}}},
            "Ticket": {
                "memberOfTypes": ["Project"],
                "shape": {"type": "Record", "attributes": {"severity": {"type": "Long"}}},
            },
        },
        "actions": {
            "close_ticket": {
                "appliesTo": {"principalTypes": ["Agent"], "resourceTypes": ["Ticket"]}
            },
        },
    }
)

POLICIES = """
@id("payments-tools")
permit (principal in AgentGroup::"team=payments", action == Action::"invoke_tool",
        resource in McpServer::"bank");
@id("team-tag")
permit (principal is Agent, action == Action::"invoke_tool", resource is Tool)
when { resource.hasTag("team") && principal.hasTag("team") &&
       resource.getTag("team") == principal.getTag("team") };
@id("owned-read")
permit (principal is Agent, action == Action::"read", resource is DataSet)
when { principal.owners.contains(Human::"hum_1") };
@id("human-read")
permit (principal is Human, action == Action::"read", resource is DataSet);
@id("children-write")
permit (principal in Agent::"agt_parent", action == Action::"write", resource is DataSet);
@id("no-restricted")
forbid (principal, action == Action::"invoke_tool", resource is Tool)
when { resource.classification == "restricted" };
@id("no-staging-writes")
forbid (principal in Environment::"staging", action == Action::"write", resource);
@id("tickets")
permit (principal, action == Action::"close_ticket", resource in Project::"p1")
when { resource.severity < 3 && principal.autonomy_level >= 3 };
@id("night")
forbid (principal, action == Action::"write", resource) when { context.time.hour < 6 };
@id("large-amounts")
forbid (principal, action == Action::"invoke_tool", resource)
when { context.args has amount && context.args.amount > 100 };
@id("framework")
permit (principal is Agent, action == Action::"read", resource is DataSet)
when { principal has framework && principal.framework == "langgraph" };
"""

AGENTS = [
    agent("agt_pay", labels={"team": "payments"}, framework="langgraph", model="m1"),
    agent("agt_ops", labels={"team": "ops"}, owners=("hum_2",)),
    agent("agt_parent", owners=("hum_2",)),
    agent("agt_child", parent="agt_parent", expires_at=NOW + timedelta(hours=1)),
    agent("agt_expired", labels={"team": "payments"}, expires_at=NOW - timedelta(seconds=1)),
    agent("agt_suspended", labels={"team": "payments"}, status=AgentStatus.SUSPENDED),
    agent("agt_stage", environment="staging", parent="agt_parent"),
]
HUMANS = [human("hum_1"), human("hum_2")]
RESOURCES = [
    resource("McpServer", "bank", tags={"team": "payments"}, classification="internal"),
    resource(
        "Tool",
        "transfer",
        parents=[EntityRef("McpServer", "bank")],
        tags={"team": "payments"},
        classification="internal",
    ),
    resource("Tool", "unclassified", parents=[EntityRef("McpServer", "bank")]),
    resource(
        "Tool", "secret", parents=[EntityRef("McpServer", "bank")], classification="restricted"
    ),
    resource("Tool", "ops-tool", tags={"team": "ops"}, classification="internal"),
    resource(
        "DataSet", "ledger", classification="confidential", owner={"type": "Human", "id": "hum_1"}
    ),
    resource("Project", "p1"),
    resource("Ticket", "easy", parents=[EntityRef("Project", "p1")], severity=2),
    resource("Ticket", "hard", parents=[EntityRef("Project", "p1")], severity=5),
]


def _control_plane() -> tuple[PolicyEngine, EntitySnapshot]:
    schema = Schema(EXTENSION)
    recs = records(POLICIES)
    # one policy in dry-run mode: reported, never deciding
    recs = [replace(r, mode=Mode.DRY_RUN) if r.id == "large-amounts" else r for r in recs]
    engine = PolicyEngine(7, schema, recs)
    snapshot = EntitySnapshot(
        schema, agents=AGENTS, humans=HUMANS, resources=RESOURCES, fingerprint="3:9:2:2:9:9:4"
    )
    return engine, snapshot


def _bundle(engine: PolicyEngine, entities: EntitySnapshot, zone: str = "UTC") -> dict[str, Any]:
    """What the control plane serves: built from the decision point's loaded state."""
    return bundle_dict(
        engine.version,
        engine.schema.extension,
        [p.record for p in engine.policies],
        entities.agents.values(),
        entities.humans.values(),
        entities.resources.values(),
        entities.fingerprint,
        time_zone=zone,
    )


def _requests() -> list[AuthzRequest]:
    principals = [EntityRef("Agent", a.id) for a in AGENTS] + [
        EntityRef("Human", "hum_1"),
        EntityRef("Agent", "agt_unknown"),
    ]
    targets = [r.ref for r in RESOURCES] + [EntityRef("Tool", "not-catalogued")]
    actions = ["invoke_tool", "read", "write", "close_ticket"]
    contexts: list[dict[str, Any]] = [{}, {"args": {"amount": 500}}, {"args": {"amount": 5}}]
    return [
        AuthzRequest(p, a, r, c)
        for p, a, r, c in itertools.product(principals, actions, targets, contexts)
    ]


def _outcome(decision: Decision) -> tuple[Any, ...]:
    """Everything a decision says. Cedar reports the matching policies as a set (their
    order follows its hashing of each parsed set), so lists are compared sorted."""
    dry = decision.dry_run
    return (
        decision.decision,
        sorted(decision.policies),
        sorted(decision.reasons),
        sorted(decision.errors),
        None if dry is None else (dry.decision, sorted(dry.policies)),
        decision.ignored_arguments,
        decision.risk_score,
        decision.policy_version,
        decision.evaluated,
    )


# Noon, and 04:00 the next night in Berlin (the night forbid reads context.time)
@pytest.mark.parametrize("later", [0, 15])
def test_a_loaded_bundle_decides_every_request_as_the_control_plane(later: int) -> None:
    clock = Clock(NOW + timedelta(hours=later))
    engine, entities = _control_plane()
    wire = json.loads(json.dumps(_bundle(engine, entities, "Europe/Berlin")))
    loaded_engine, loaded_entities = load_bundle(wire)
    zone = time_zone_of(wire)
    assert zone == "Europe/Berlin"
    control = Authorizer(engine, entities, clock=clock, zone="Europe/Berlin")
    remote = Authorizer(loaded_engine, loaded_entities, clock=clock, zone=zone)
    seen: dict[str, int] = {}
    allowed_by: set[str] = set()
    for req in _requests():
        expected, got = control.decide(req), remote.decide(req)
        assert _outcome(got) == _outcome(expected), req
        if expected.allowed:
            allowed_by.update(expected.policies)
        for kind, hit in (
            ("allow", expected.allowed),
            ("deny", not expected.allowed),
            ("forbid error", any("failed to evaluate" in r for r in expected.reasons)),
            ("dry run changes", expected.would_change),
            ("forbidden", any(r.startswith("forbidden by") for r in expected.reasons)),
            ("inactive principal", any("the agent is" in r for r in expected.reasons)),
            ("past ttl", any("TTL" in r for r in expected.reasons)),
        ):
            seen[kind] = seen.get(kind, 0) + hit
    # every kind of outcome the bundle must carry actually occurred
    assert all(seen.values()), seen
    # the policies that rely on labels, tags, parents, owners, humans all allowed something
    assert {"payments-tools", "team-tag", "owned-read", "human-read", "tickets"} <= allowed_by
    if later == 0:
        assert {"children-write", "framework"} <= allowed_by


def test_the_bundle_is_stable_and_carries_no_secrets() -> None:
    engine, entities = _control_plane()
    first = _bundle(engine, entities)
    again = _bundle(*load_bundle(json.loads(json.dumps(first))))
    assert again == first  # a loaded bundle serialises to the same document
    assert first["format"] == BUNDLE_FORMAT
    assert [p["id"] for p in first["policies"]] == [p.id for p in engine.policies]
    agent_members = set(first["agents"][0])
    assert agent_members.isdisjoint({"scopes", "audiences", "keys", "task_scope", "jwk"})
    assert set(first["humans"][0]) == {"id", "email", "display_name"}


def test_the_etag_names_exactly_what_changes_a_bundle() -> None:
    base = bundle_etag(7, "fp", "")
    assert base == bundle_etag(7, "fp", "")
    assert len(base) == 32
    others = {
        bundle_etag(8, "fp", ""),
        bundle_etag(7, "fp2", ""),
        bundle_etag(7, "fp", EXTENSION),
        bundle_etag(7, "fp", "", time_zone="Europe/Berlin"),
    }
    assert base not in others
    assert len(others) == 4


def test_loading_reuses_the_previous_engines_compiled_policies() -> None:
    engine, entities = _control_plane()
    first, _ = load_bundle(_bundle(engine, entities))
    second, _ = load_bundle(_bundle(engine, entities), previous=first)
    assert all(a is b for a, b in zip(first.policies, second.policies, strict=True))


def _broken(change: Any) -> dict[str, Any]:
    engine, entities = _control_plane()
    data = copy.deepcopy(_bundle(engine, entities))
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "member"),
    [
        (lambda d: d.update(format="agentiam.policy-bundle/2"), "format"),
        (lambda d: d.update(extra=1), "bundle.extra"),
        (lambda d: d.pop("humans"), "bundle.humans"),
        (lambda d: d.update(policy_version=True), "policy_version"),
        (lambda d: d.update(policy_version=-1), "policy_version"),
        (lambda d: d.update(time_zone="Mars/Olympus"), "time_zone"),
        (lambda d: d.update(schema_extension="{not json"), "schema_extension"),
        (lambda d: d["policies"][1].update(mode="maybe"), "policies[1].mode"),
        (lambda d: d["policies"][2].update(id="bad id!"), "policies[2].id"),
        (lambda d: d["policies"][3].update(id=d["policies"][0]["id"]), "policies[3].id"),
        (lambda d: d["policies"][0].update(text="permit (principal"), "policies"),
        (lambda d: d["agents"][0].update(status="asleep"), "agents[0].status"),
        (lambda d: d["agents"][1].update(owners="hum_1"), "agents[1].owners"),
        (lambda d: d["agents"][2].update(expires_at="tomorrow"), "agents[2].expires_at"),
        (lambda d: d["agents"][2].update(labels={"team": 3}), "agents[2].labels.team"),
        (lambda d: d["agents"][0]["runtime"].update(version="1"), "agents[0].runtime.version"),
        (lambda d: d["agents"][0].update(scopes=["x"]), "agents[0].scopes"),
        (lambda d: d["humans"][0].pop("email"), "humans[0].email"),
        (lambda d: d["humans"][1].update(id=d["humans"][0]["id"]), "humans[1].id"),
        (lambda d: d["resources"][0].update(type="Agent"), "resources[0]"),
        (lambda d: d["resources"][1].update(attributes={"severity": "high"}), "resources[1]"),
        (lambda d: d["resources"][1].update(attributes={"x": float("nan")}), "resources[1]"),
        (
            lambda d: d["resources"][1].update(parents=[{"type": "Tool"}]),
            "resources[1].parents[0].id",
        ),
        (
            lambda d: d["resources"][0].update(
                # (a DataSet may be in an McpServer since the MCP gateway's resources
                # are; never in an Api)
                parents=[{"type": "Api", "id": d["resources"][0]["id"]}]
            ),
            "resources",
        ),
    ],
)
def test_a_malformed_bundle_is_refused_naming_the_member(change: Any, member: str) -> None:
    with pytest.raises(BundleError, match=r"^" + member.replace("[", r"\[").replace("]", r"\]")):
        load_bundle(_broken(change))


def test_bounds_are_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle_module, "MAX_AGENTS", 2)
    with pytest.raises(BundleError, match=r"^agents: more than 2 items"):
        load_bundle(_broken(lambda _d: None))
    with pytest.raises(BundleError, match=r"^bundle: expected an object"):
        load_bundle(["not", "a", "bundle"])


def test_risk_scores_round_trip_and_change_the_etag() -> None:
    args = (1, "fp", "")
    assert bundle_module.bundle_etag(*args) == bundle_module.bundle_etag(*args, risk={})
    assert bundle_module.bundle_etag(*args) != bundle_module.bundle_etag(*args, risk={"agt_a": 40})
    data = bundle_module.bundle_dict(1, "", [], [], [], [], "fp", risk={"agt_b": 5, "agt_a": 40})
    assert data["risk"] == [{"agent_id": "agt_a", "score": 40}, {"agent_id": "agt_b", "score": 5}]
    assert bundle_module.risk_of(data) == {"agt_a": 40, "agt_b": 5}
    assert "risk" not in bundle_module.bundle_dict(1, "", [], [], [], [], "fp", risk={"agt_a": 0})
    assert bundle_module.risk_of({}) == {}


@pytest.mark.parametrize(
    ("risk", "named"),
    [
        ({"agt_a": 40}, "risk: expected a list"),
        ([{"agent_id": "agt_a", "score": 101}], "risk[0].score"),
        ([{"agent_id": "agt_a", "score": 0}], "risk[0].score"),
        ([{"agent_id": "agt_a", "score": True}], "risk[0].score"),
        ([{"agent_id": "agt_a", "score": 9.5}], "risk[0].score"),
        ([{"agent_id": "agt_a"}], "risk[0].score: missing"),
        ([{"agent_id": "agt_a", "score": 5, "x": 1}], "risk[0].x: unknown member"),
        ([{"agent_id": "agt_a", "score": 5}, {"agent_id": "agt_a", "score": 6}], "risk[1]"),
    ],
)
def test_a_bad_risk_table_is_refused_naming_the_member(risk: Any, named: str) -> None:
    with pytest.raises(bundle_module.BundleError, match=re.escape(named)):
        bundle_module.risk_of({"risk": risk})
