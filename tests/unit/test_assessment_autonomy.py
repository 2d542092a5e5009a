"""The Autonomy Test and the inventory (core/assessment/autonomy.py)."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest

from agentiam.core.assessment.autonomy import (
    CRITERIA_QUESTIONS,
    AutonomyClass,
    AutonomyCriteria,
    SystemSource,
    classify,
    inventory_is_agentic,
    load_declared_systems,
    registry_system,
)
from agentiam.core.identities.models import AutonomyLevel
from agentiam.errors import InvalidInput

NONE = AutonomyCriteria(False, False, False, False, False, False)
ACTS_ALONE = replace(NONE, acts_on_external_systems=True, chains_steps_unapproved=True)


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        (NONE, AutonomyClass.NOT_AGENTIC),
        # a chat assistant reading untrusted text, holding a key, but never acting
        (replace(NONE, acts_on_untrusted_input=True, holds_credentials=True), "assistive"),
        # acts on systems, but a person approves each step
        (replace(NONE, acts_on_external_systems=True, holds_credentials=True), "assistive"),
        # chains steps alone but only inside its own sandbox
        (replace(NONE, chains_steps_unapproved=True), "assistive"),
        (ACTS_ALONE, AutonomyClass.AGENTIC),
        (replace(ACTS_ALONE, holds_credentials=True, acts_on_untrusted_input=True), "agentic"),
        (replace(ACTS_ALONE, spawns_sub_agents=True), AutonomyClass.HIGHLY_AUTONOMOUS),
        (replace(ACTS_ALONE, runs_long_horizons=True), AutonomyClass.HIGHLY_AUTONOMOUS),
        # sub-agents and long horizons without acting alone are still assistive
        (replace(NONE, spawns_sub_agents=True, runs_long_horizons=True), "assistive"),
    ],
)
def test_classification(criteria: AutonomyCriteria, expected: str) -> None:
    assert classify(criteria).autonomy == expected


def test_the_reasons_name_each_criterion_that_holds() -> None:
    result = classify(replace(ACTS_ALONE, spawns_sub_agents=True))
    assert result.reasons == (
        CRITERIA_QUESTIONS["acts_on_external_systems"],
        CRITERIA_QUESTIONS["chains_steps_unapproved"],
        CRITERIA_QUESTIONS["spawns_sub_agents"],
    )
    assert classify(NONE).reasons == ("None of the six criteria holds.",)
    assert (
        classify(replace(NONE, holds_credentials=True))
        .reasons[-1]
        .startswith("It does not both act")
    )
    assert [f.name for f in fields(AutonomyCriteria)] == list(CRITERIA_QUESTIONS)


def test_more_criteria_never_lower_the_class() -> None:
    order = list(AutonomyClass)
    names = [f.name for f in fields(AutonomyCriteria)]
    for mask in range(64):
        criteria = AutonomyCriteria(*(bool(mask >> i & 1) for i in range(6)))
        for name in names:
            more = replace(criteria, **{name: True})
            assert order.index(classify(more).autonomy) >= order.index(classify(criteria).autonomy)


@pytest.mark.parametrize(
    ("autonomy", "children", "expected"),
    [
        (AutonomyLevel.SUGGEST, False, AutonomyClass.ASSISTIVE),
        (AutonomyLevel.APPROVE_EACH, False, AutonomyClass.ASSISTIVE),
        (AutonomyLevel.APPROVE_RISKY, False, AutonomyClass.HIGHLY_AUTONOMOUS),
        (AutonomyLevel.MONITORED, True, AutonomyClass.HIGHLY_AUTONOMOUS),
        (AutonomyLevel.UNSUPERVISED, False, AutonomyClass.HIGHLY_AUTONOMOUS),
    ],
)
def test_registry_agents_are_classified_from_what_the_registry_knows(
    autonomy: AutonomyLevel, children: bool, expected: AutonomyClass
) -> None:
    system = registry_system(agent_id="a1", name="n", autonomy=autonomy, has_children=children)
    assert system.source is SystemSource.REGISTRY
    assert system.criteria.holds_credentials
    # unknowns default to the riskier answer
    assert system.criteria.acts_on_untrusted_input
    assert system.criteria.runs_long_horizons
    assert system.classification.autonomy is expected


def test_a_registry_agent_known_to_be_short_lived_and_alone_is_agentic() -> None:
    system = registry_system(
        agent_id="a1",
        name="n",
        autonomy=AutonomyLevel.MONITORED,
        has_children=False,
        runs_long_horizons=False,
    )
    assert system.classification.autonomy is AutonomyClass.AGENTIC


def _declared(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": "crm-copilot", "name": "CRM copilot"}
    base.update(dict.fromkeys(CRITERIA_QUESTIONS, False))
    base.update(overrides)
    return base


def test_declared_systems_load_and_decide_whether_agentic_practices_apply() -> None:
    systems = load_declared_systems(
        [
            _declared(owner="alice", description="drafts replies"),
            _declared(id="ops-bot", name="Ops bot", acts_on_external_systems=True),
        ]
    )
    assert [s.id for s in systems] == ["crm-copilot", "ops-bot"]
    assert systems[0].owner == "alice"
    assert systems[0].source is SystemSource.DECLARED
    assert not inventory_is_agentic(systems)
    agentic = load_declared_systems(
        [_declared(acts_on_external_systems=True, chains_steps_unapproved=True)]
    )
    assert inventory_is_agentic((*systems, *agentic))
    assert not inventory_is_agentic(())


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"systems": []}, "systems: must be a list"),
        ([_declared(spawns_sub_agents="yes")], "system crm-copilot: spawns_sub_agents"),
        ([{"id": "x", "name": "y"}], "systems[0]: acts_on_external_systems: is required"),
        ([_declared(colour="red")], "systems[0]: colour: unknown key"),
        ([_declared(), _declared()], "system crm-copilot: duplicate id"),
        ([_declared(id="")], "systems[0]: id"),
        ([_declared(owner=7)], "system crm-copilot: owner"),
    ],
)
def test_bad_declared_systems_are_refused_naming_the_system(data: Any, named: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_declared_systems(data)
    assert caught.value.detail.startswith(named), caught.value.detail
