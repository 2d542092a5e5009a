"""Stored assessment inputs (core/assessment/report.py): they round-trip through JSON
and score to the same report; stored inputs that are malformed, or made with another
question bank, are refused naming the member."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from tests.unit.test_assessment_scoring import T0, scenario_a

from agentiam.core.assessment import load_declared_systems, registry_system
from agentiam.core.assessment.report import AssessmentInputs, load_inputs, report_summary, score
from agentiam.core.identities.models import AutonomyLevel
from agentiam.errors import Conflict, InvalidInput


def inputs() -> AssessmentInputs:
    bank, evidence, answers = scenario_a()
    systems = (
        registry_system(
            agent_id="agt_1", name="runner", autonomy=AutonomyLevel.MONITORED, has_children=True
        ),
        *load_declared_systems(
            [
                {
                    "id": "crm",
                    "name": "CRM copilot",
                    "owner": "sales",
                    "acts_on_external_systems": True,
                    "chains_steps_unapproved": False,
                    "holds_credentials": True,
                    "acts_on_untrusted_input": True,
                    "spawns_sub_agents": False,
                    "runs_long_horizons": False,
                }
            ]
        ),
    )
    return AssessmentInputs(bank.version, T0, evidence, answers, systems, 5, True)


def stored() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(inputs().to_dict()))
    return data


def test_inputs_round_trip_and_score_to_the_same_report() -> None:
    bank = scenario_a()[0]
    original = inputs()
    again = load_inputs(stored(), bank)
    assert again.to_dict() == original.to_dict()
    report = score(bank, original).to_dict()
    assert score(bank, again).to_dict() == report
    summary = report_summary(report)
    assert summary["overall"] == report["overall"]
    assert [d["id"] for d in summary["domains"]] == [d["id"] for d in report["domains"]]
    assert report["inventory"]["total"] == 5
    assert [s["source"] for s in report["inventory"]["systems"]] == ["registry", "declared"]


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(stored())
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (_with(("evidence", 0, "key"), "made.up"), "inputs: evidence[0]: key"),
        (_with(("evidence", 0, "value"), 7), "inputs: evidence[0]: value"),
        (_with(("evidence", 0, "measured_at"), "2026-01-01T00:00:00"), "measured_at"),
        (_with(("systems", 0, "source"), "rumour"), "inputs: systems[0]: source"),
        (_with(("systems", 1, "criteria", "holds_credentials"), 1), "holds_credentials"),
        (_with(("answers", "govern.q_policy"), 9), "answer govern.q_policy"),
        (_with(("systems_total",), 1), "systems_total"),
        (_with(("agentic",), "yes"), "inputs: agentic"),
        ({**stored(), "extra": 1}, "inputs: extra"),
        ([], "inputs"),
    ],
)
def test_malformed_stored_inputs_are_refused_naming_the_member(data: Any, named: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_inputs(data, scenario_a()[0])
    assert named in caught.value.detail


def test_inputs_of_another_bank_version_are_a_conflict_not_a_wrong_report() -> None:
    bank = scenario_a()[0]
    with pytest.raises(Conflict, match=r"'1999\.1'"):
        load_inputs({**stored(), "bank_version": "1999.1"}, bank)
    other = AssessmentInputs("1999.1", T0, inputs().evidence, inputs().answers, (), 0, False)
    with pytest.raises(Conflict):
        score(bank, other)
