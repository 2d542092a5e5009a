"""The two ladders and the roadmap (core/assessment/ladders.py, roadmap.py) on the
hand-written bank of test_assessment_scoring.py, and on the shipped bank."""

from __future__ import annotations

import yaml
from tests.unit.test_assessment_scoring import T0, measure, run_a, scenario_a, small_bank

from agentiam.core.assessment.bank import load_bank, shipped_bank_text
from agentiam.core.assessment.evidence_keys import EVIDENCE_KEYS, NEVER, Unit
from agentiam.core.assessment.ladders import place, place_all
from agentiam.core.assessment.model import Level
from agentiam.core.assessment.roadmap import build_roadmap
from agentiam.core.assessment.scoring import Answers, Evidence, assess, load_answers


def test_positions_and_the_exact_gaps_blocking_the_next_stage() -> None:
    bank, _, _ = scenario_a()
    iam, governance = place_all(bank, run_a())
    assert iam.reached is not None
    assert iam.reached.name == "foundation"
    assert iam.next is not None
    assert iam.next.name == "enhanced"
    # q_review (2) meets its requirement; only DPoP (0 of 3) blocks
    assert [(g.question_id, g.current, g.required) for g in iam.blocking] == [
        ("protect.q_dpop", Level.NOT_PERFORMED, Level.DEFINED)
    ]
    assert governance.reached is not None
    assert governance.reached.name == "enforcement"
    assert [(g.question_id, g.current, g.required) for g in governance.blocking] == [
        ("govern.q_policy", Level.MANAGED, Level.DEFINED)
    ]
    assert governance.to_dict() == {
        "ladder": "governance",
        "reached": "enforcement",
        "next": "governance",
        "blocking": [
            {"question": "govern.q_policy", "current": 2, "required": 3, "unanswered": False}
        ],
    }


def test_below_the_first_stage_the_position_is_none() -> None:
    bank = small_bank()
    result = assess(bank, Evidence(), Answers("t1"), agentic=False, at=T0)
    governance = place(bank.ladders[1], result)
    assert governance.reached is None
    assert governance.next is not None
    assert governance.next.name == "logging"
    assert [(g.question_id, g.unanswered) for g in governance.blocking] == [
        ("govern.q_owners", True)
    ]


def test_a_gap_blocks_even_when_an_earlier_answer_would_have_met_it() -> None:
    """An unanswered question is level 0: never assumed to meet a requirement."""
    bank = small_bank()
    evidence = Evidence([measure("policy.default_deny", 1)])
    result = assess(bank, evidence, Answers("t1"), agentic=False, at=T0)
    iam = place(bank.ladders[0], result)
    assert iam.reached is not None
    assert iam.reached.name == "ad_hoc"
    assert [g.question_id for g in iam.blocking] == ["govern.q_owners"]


def test_requirements_out_of_scope_are_skipped_for_a_non_agentic_inventory() -> None:
    bank, evidence, answers = scenario_a()
    iam = place(bank.ladders[0], assess(bank, evidence, answers, agentic=False, at=T0))
    # enhanced needs DPoP (agentic-only: skipped) and reviews at 2 (met) -> reached
    assert iam.reached is not None
    assert iam.reached.name == "enhanced"
    assert [g.question_id for g in iam.blocking] == ["govern.q_policy"]


def test_the_top_of_a_ladder_has_nothing_blocking() -> None:
    bank = small_bank()
    evidence = Evidence(
        [
            measure("agents.owner_share", 1.0),
            measure("policy.default_deny", 1),
            measure("credentials.dpop_share", 1.0),
            measure("agents.access_review_current_share", 1.0),
        ]
    )
    answers = load_answers({"bank_version": "t1", "answers": {"govern.q_policy": 4}}, bank)
    result = assess(bank, evidence, answers, agentic=True, at=T0)
    for position in place_all(bank, result):
        assert position.reached == position.ladder.stages[-1]
        assert position.next is None
        assert position.blocking == ()
    assert build_roadmap(bank, result) == ()


def test_roadmap_ranks_by_risk_reduced_against_effort() -> None:
    bank, _, _ = scenario_a()
    roadmap = build_roadmap(bank, run_a())
    summary = [
        (i.question.id, i.current, i.target, i.risk_reduced, i.priority, i.unlocks) for i in roadmap
    ]
    assert summary == [
        # risk 4 x (3 - 0) / effort 4; ties with q_policy on 3.0, wins on risk
        ("protect.q_dpop", 0, 3, 12, 3.0, ("agent_iam.enhanced",)),
        # target 4: the adaptive stage needs it; risk 3 x 2 / effort 2
        ("govern.q_policy", 2, 4, 6, 3.0, ("governance.governance",)),
        # default target 3; risk 2 x 1 / effort 2
        ("govern.q_review", 2, 3, 2, 1.0, ()),
    ]
    dpop = roadmap[0]
    assert dpop.commands == ("agentiam agents update AGENT --dpop",)
    assert dpop.templates == ("tool_allowlist",)
    assert roadmap[1].steps == ("Write it.",)


def test_roadmap_puts_answering_first_for_a_gap() -> None:
    bank = small_bank()
    result = assess(bank, Evidence(), Answers("t1"), agentic=False, at=T0)
    items = {i.question.id: i for i in build_roadmap(bank, result)}
    assert items["govern.q_policy"].unanswered
    assert items["govern.q_policy"].steps[0].startswith("Answer this question")
    assert items["govern.q_owners"].steps[0].startswith("Let the deployment measure this")
    # the highest priority: owners, risk 5 x 3 / effort 1, blocking both ladders
    first = build_roadmap(bank, result)[0]
    assert first.question.id == "govern.q_owners"
    assert set(first.unlocks) == {"agent_iam.foundation", "governance.logging"}


def test_roadmap_order_is_non_increasing_in_priority_on_the_shipped_bank() -> None:
    bank = load_bank(yaml.safe_load(shipped_bank_text()))
    worst = {key: (NEVER if spec.unit is Unit.DAYS else 0.0) for key, spec in EVIDENCE_KEYS.items()}
    evidence = Evidence(measure(k, v) for k, v in worst.items())
    result = assess(bank, evidence, Answers(bank.version), agentic=True, at=T0)
    roadmap = build_roadmap(bank, result)
    priorities = [i.priority for i in roadmap]
    assert priorities == sorted(priorities, reverse=True)
    assert {i.question.id for i in roadmap} == {r.question.id for r in result.results}
    iam, governance = place_all(bank, result)
    assert iam.reached is not None
    assert iam.reached.name == "ad_hoc"
    assert governance.reached is None
    blocking = {g.question_id for g in iam.blocking}
    assert blocking == {q for q, _ in bank.ladders[0].stages[1].requires}
