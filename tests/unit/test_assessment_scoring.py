"""Assessment scoring (core/assessment/scoring.py) on a small hand-written bank whose
expected scores are computed by hand below, plus answers-file validation, evidence
validation and monotonicity on the shipped bank."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from agentiam.core.assessment.bank import QuestionBank, load_bank, shipped_bank_text
from agentiam.core.assessment.evidence_keys import EVIDENCE_KEYS, NEVER, Unit
from agentiam.core.assessment.model import Level
from agentiam.core.assessment.scoring import (
    Answers,
    Assessment,
    Evidence,
    Measurement,
    Source,
    assess,
    load_answers,
    questions_to_ask,
    require_complete,
)
from agentiam.errors import InvalidInput

T0 = datetime(2025, 6, 1, 12, tzinfo=UTC)
RATIO_4 = [
    {"level": 4, "at_least": 0.95},
    {"level": 3, "at_least": 0.8},
    {"level": 2, "at_least": 0.5},
    {"level": 1, "at_least": 0.01},
]


def small_bank_data() -> dict[str, Any]:
    """Two domains, three practices, five questions (one agentic-only)."""
    return {
        "version": "t1",
        "practices": [
            {"id": "govern.p1", "domain": "govern", "title": "P1", "description": "d"},
            {"id": "govern.p2", "domain": "govern", "title": "P2", "description": "d"},
            {"id": "protect.p3", "domain": "protect", "title": "P3", "description": "d"},
        ],
        "questions": [
            {
                "id": "govern.q_owners",
                "practice": "govern.p1",
                "text": "Owners?",
                "guidance": "g",
                "evidence": "measured",
                "evidence_key": "agents.owner_share",
                "thresholds": RATIO_4,
                "weight": 3,
                "risk": 5,
                "effort": 1,
                "references": {"csf": ["GV.RR-02"], "ai_rmf": ["GOVERN 2.1"]},
            },
            {
                "id": "govern.q_policy",
                "practice": "govern.p1",
                "text": "Policy?",
                "guidance": "g",
                "evidence": "self_reported",
                "weight": 1,
                "risk": 3,
                "effort": 2,
                "remedy": {"steps": ["Write it."]},
            },
            {
                "id": "govern.q_review",
                "practice": "govern.p2",
                "text": "Reviews?",
                "guidance": "g",
                "evidence": "either",
                "evidence_key": "agents.access_review_current_share",
                "thresholds": [{"level": 4, "at_least": 0.9}, {"level": 2, "at_least": 0.5}],
                "weight": 2,
                "risk": 2,
                "effort": 2,
            },
            {
                "id": "protect.q_dpop",
                "practice": "protect.p3",
                "text": "DPoP?",
                "guidance": "g",
                "evidence": "measured",
                "evidence_key": "credentials.dpop_share",
                "thresholds": [{"level": 4, "at_least": 1.0}, {"level": 3, "at_least": 0.9}],
                "weight": 1,
                "risk": 4,
                "effort": 4,
                "agentic_only": True,
                "remedy": {
                    "commands": ["agentiam agents update AGENT --dpop"],
                    "templates": ["tool_allowlist"],
                },
            },
            {
                "id": "protect.q_deny",
                "practice": "protect.p3",
                "text": "Default deny?",
                "guidance": "g",
                "evidence": "measured",
                "evidence_key": "policy.default_deny",
                "thresholds": [{"level": 4, "at_least": 1}],
                "weight": 1,
                "risk": 5,
                "effort": 2,
            },
        ],
        "ladders": {
            "agent_iam": {
                "title": "IAM",
                "stages": [
                    {"name": "ad_hoc", "title": "A", "description": "d", "requires": {}},
                    {
                        "name": "foundation",
                        "title": "F",
                        "description": "d",
                        "requires": {"govern.q_owners": 3, "protect.q_deny": 4},
                    },
                    {
                        "name": "enhanced",
                        "title": "E",
                        "description": "d",
                        "requires": {"protect.q_dpop": 3, "govern.q_review": 2},
                    },
                    {
                        "name": "adaptive",
                        "title": "Ad",
                        "description": "d",
                        "requires": {"govern.q_policy": 4},
                    },
                ],
            },
            "governance": {
                "title": "Gov",
                "stages": [
                    {
                        "name": "logging",
                        "title": "L",
                        "description": "d",
                        "requires": {"govern.q_owners": 1},
                    },
                    {"name": "alerting", "title": "A", "description": "d", "requires": {}},
                    {
                        "name": "enforcement",
                        "title": "E",
                        "description": "d",
                        "requires": {"protect.q_deny": 4},
                    },
                    {
                        "name": "governance",
                        "title": "G",
                        "description": "d",
                        "requires": {"govern.q_policy": 3},
                    },
                ],
            },
        },
    }


def small_bank() -> QuestionBank:
    return load_bank(small_bank_data())


def measure(key: str, value: float, **numbers: float) -> Measurement:
    return Measurement(key, value, T0, f"test measurement of {key}", numbers)


def scenario_a() -> tuple[QuestionBank, Evidence, Answers]:
    """Agentic; owners 0.85 (level 3, claimed 4), deny on (4), DPoP 0.5 (0), reviews
    unmeasured and answered 2, policy answered 2."""
    bank = small_bank()
    evidence = Evidence(
        [
            measure("agents.owner_share", 0.85, agents=20, with_owner=17),
            measure("policy.default_deny", 1),
            measure("credentials.dpop_share", 0.5),
        ]
    )
    answers = load_answers(
        {
            "bank_version": "t1",
            "answers": {
                "govern.q_owners": {"level": 4, "note": "we think all have owners"},
                "govern.q_policy": 2,
                "govern.q_review": 2,
            },
        },
        bank,
    )
    return bank, evidence, answers


def run_a() -> Assessment:
    bank, evidence, answers = scenario_a()
    return assess(bank, evidence, answers, agentic=True, at=T0)


# -- hand-computed scores -------------------------------------------------------------


def test_scores_roll_up_as_computed_by_hand() -> None:
    result = run_a()
    levels = {r.question.id: (r.level, r.source) for r in result.results}
    assert levels == {
        "govern.q_owners": (Level.DEFINED, Source.MEASURED),
        "govern.q_policy": (Level.MANAGED, Source.SELF_REPORTED),
        "govern.q_review": (Level.MANAGED, Source.SELF_REPORTED),
        "protect.q_dpop": (Level.NOT_PERFORMED, Source.MEASURED),
        "protect.q_deny": (Level.ADAPTIVE, Source.MEASURED),
    }
    scores = {p.id: p.score for p in result.practices}
    # p1 = (3*3 + 2*1) / 4; p2 = 2 (one question, weight 2); p3 = (0*1 + 4*1) / 2
    assert scores == pytest.approx({"govern.p1": 2.75, "govern.p2": 2.0, "protect.p3": 2.0})
    assert [p.weight for p in result.practices] == [4.0, 2.0, 2.0]
    domains = {d.id: d.score for d in result.domains}
    # govern = (2.75*4 + 2*2) / 6 = 2.5; protect = 2.0; overall = mean of the two
    assert domains == pytest.approx({"govern": 2.5, "protect": 2.0})
    assert result.overall == pytest.approx(2.25)
    assert result.gaps == ()
    assert result.not_applicable == ()
    # measured weight: owners 3 + dpop 1 + deny 1 out of 8
    assert result.measured_share == pytest.approx(5 / 8)


def test_evidence_beats_the_answer_and_the_contradiction_is_recorded() -> None:
    result = run_a()
    owners = result.result("govern.q_owners")
    assert owners is not None
    assert owners.level is Level.DEFINED  # measured 0.85, not the claimed 4
    (contradiction,) = result.contradictions
    assert contradiction.question_id == "govern.q_owners"
    assert (contradiction.claimed, contradiction.measured) == (Level.ADAPTIVE, Level.DEFINED)
    assert contradiction.overstated
    assert contradiction.measurement.numbers == {"agents": 20, "with_owner": 17}
    as_json = result.to_dict()
    assert as_json["contradictions"] == [
        {"question": "govern.q_owners", "claimed": 4, "measured": 3, "overstated": True}
    ]
    assert as_json["questions"][0]["evidence"]["numbers"] == {"agents": 20, "with_owner": 17}
    assert as_json["questions"][0]["answer"]["note"] == "we think all have owners"


def test_an_answer_that_understates_is_also_overruled_by_evidence() -> None:
    bank = small_bank()
    evidence = Evidence([measure("policy.default_deny", 1)])
    answers = load_answers({"bank_version": "t1", "answers": {"protect.q_deny": 0}}, bank)
    result = assess(bank, evidence, answers, agentic=False, at=T0)
    deny = result.result("protect.q_deny")
    assert deny is not None
    assert deny.level is Level.ADAPTIVE
    assert not result.contradictions[0].overstated


def test_an_answer_agreeing_with_evidence_is_no_contradiction() -> None:
    bank = small_bank()
    evidence = Evidence([measure("agents.owner_share", 0.96)])
    answers = load_answers({"bank_version": "t1", "answers": {"govern.q_owners": 4}}, bank)
    assert assess(bank, evidence, answers, agentic=False, at=T0).contradictions == ()


def test_unanswered_questions_are_gaps_scored_zero_never_high() -> None:
    bank = small_bank()
    evidence = Evidence([measure("policy.default_deny", 1)])
    answers = Answers("t1")
    result = assess(bank, evidence, answers, agentic=False, at=T0)
    assert [g.question.id for g in result.gaps] == [
        "govern.q_owners",
        "govern.q_policy",
        "govern.q_review",
    ]
    assert all(g.level is Level.NOT_PERFORMED for g in result.gaps)
    assert result.not_applicable == ("protect.q_dpop",)
    domains = {d.id: (d.score, d.answered, d.total) for d in result.domains}
    assert domains == {"govern": (0.0, 0, 3), "protect": (4.0, 1, 1)}
    assert result.overall == pytest.approx(2.0)


def test_an_explicit_unknown_is_a_gap_with_its_note_kept() -> None:
    bank = small_bank()
    answers = load_answers(
        {
            "bank_version": "t1",
            "answers": {"govern.q_policy": {"level": "unknown", "note": "ask legal"}},
        },
        bank,
    )
    result = assess(bank, Evidence(), answers, agentic=False, at=T0)
    policy = result.result("govern.q_policy")
    assert policy is not None
    assert policy.is_gap
    assert policy.answer is not None
    assert policy.answer.note == "ask legal"


def test_a_measured_question_without_evidence_falls_back_to_the_answer() -> None:
    bank = small_bank()
    answers = load_answers({"bank_version": "t1", "answers": {"govern.q_owners": 2}}, bank)
    owners = assess(bank, Evidence(), answers, agentic=False, at=T0).result("govern.q_owners")
    assert owners is not None
    assert (owners.level, owners.source) == (Level.MANAGED, Source.SELF_REPORTED)


def test_agentic_only_questions_are_asked_only_of_an_agentic_inventory() -> None:
    bank = small_bank()
    ids = [q.id for q in questions_to_ask(bank, Evidence(), agentic=True)]
    assert "protect.q_dpop" in ids
    assert "protect.q_dpop" not in [q.id for q in questions_to_ask(bank, Evidence(), agentic=False)]
    evidence = Evidence([measure("credentials.dpop_share", 1.0)])
    assert "protect.q_dpop" not in [q.id for q in questions_to_ask(bank, evidence, agentic=True)]


# -- answers files: bad and partial are refused, naming the question ------------------


@pytest.mark.parametrize(
    ("answers", "named"),
    [
        ({"govern.q_policy": 5}, "answer govern.q_policy"),
        ({"govern.q_policy": -1}, "answer govern.q_policy"),
        ({"govern.q_policy": "high"}, "answer govern.q_policy"),
        ({"govern.q_policy": True}, "answer govern.q_policy"),
        ({"govern.q_policy": 2.5}, "answer govern.q_policy"),
        ({"govern.q_policy": None}, "answer govern.q_policy"),
        ({"govern.q_policy": {"note": "partial: no level"}}, "answer govern.q_policy: level"),
        ({"govern.q_policy": {"level": None}}, "answer govern.q_policy: level"),
        ({"govern.q_policy": {"level": 2, "evidence": "x"}}, "answer govern.q_policy: evidence"),
        ({"govern.q_policy": {"level": 2, "note": ""}}, "answer govern.q_policy: note"),
        ({"govern.no_such_question": 2}, "answer govern.no_such_question"),
    ],
)
def test_bad_or_partial_answers_are_refused_naming_the_question(
    answers: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_answers({"bank_version": "t1", "answers": answers}, small_bank())
    assert caught.value.detail.startswith(named)
    assert caught.value.errors[0]["pointer"].startswith(named)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"answers": {}}, "answers file: bank_version"),
        ({"bank_version": "t0", "answers": {}}, "answers file: bank_version"),
        ({"bank_version": "t1", "answers": [1, 2]}, "answers file: answers"),
        ({"bank_version": "t1", "answers": {}, "extra": 1}, "answers file: extra"),
        ("not a mapping", "answers file"),
    ],
)
def test_a_malformed_answers_file_is_refused(data: Any, named: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_answers(data, small_bank())
    assert caught.value.detail.startswith(named)


def test_answers_for_another_bank_version_are_refused_by_assess() -> None:
    with pytest.raises(InvalidInput, match="bank"):
        assess(small_bank(), Evidence(), Answers("t0"), agentic=False, at=T0)


def test_require_complete_names_every_question_left_out() -> None:
    bank = small_bank()
    evidence = Evidence([measure("agents.owner_share", 1.0), measure("policy.default_deny", 1)])
    answers = load_answers({"bank_version": "t1", "answers": {"govern.q_policy": 3}}, bank)
    with pytest.raises(InvalidInput) as caught:
        require_complete(answers, bank, evidence, agentic=True)
    assert caught.value.detail.startswith("answer govern.q_review: is missing")
    assert [e["pointer"] for e in caught.value.errors] == [
        "answer govern.q_review",
        "answer protect.q_dpop",
    ]
    complete = load_answers(
        {
            "bank_version": "t1",
            "answers": {"govern.q_policy": 3, "govern.q_review": "unknown", "protect.q_dpop": 1},
        },
        bank,
    )
    require_complete(complete, bank, evidence, agentic=True)  # no error


# -- evidence validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("measurement", "named"),
    [
        (measure("agents.no_such_key", 0.5), "evidence agents.no_such_key"),
        (measure("agents.owner_share", 1.5), "evidence agents.owner_share: value"),
        (measure("agents.owner_share", -0.1), "evidence agents.owner_share: value"),
        (measure("agents.owner_share", float("nan")), "evidence agents.owner_share: value"),
        (measure("keys.signing_key_age_days", NEVER + 1), "evidence keys.signing_key_age_days"),
        (
            Measurement("agents.owner_share", 0.5, datetime(2025, 1, 1), "naive time"),
            "evidence agents.owner_share: measured_at",
        ),
        (Measurement("agents.owner_share", 0.5, T0, ""), "evidence agents.owner_share: source"),
        (
            Measurement("agents.owner_share", 0.5, T0, "s", {"n": float("inf")}),
            "evidence agents.owner_share: numbers",
        ),
    ],
)
def test_bad_evidence_is_refused_naming_the_key(measurement: Measurement, named: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        Evidence([measurement])
    assert caught.value.detail.startswith(named)


def test_a_key_measured_twice_is_refused() -> None:
    with pytest.raises(InvalidInput, match="measured twice"):
        Evidence([measure("agents.owner_share", 0.5), measure("agents.owner_share", 0.9)])


# -- monotonicity on the shipped bank --------------------------------------------------


def _shipped() -> QuestionBank:
    return load_bank(yaml.safe_load(shipped_bank_text()))


def _grid(unit: Unit) -> list[float]:
    """Values of a unit from worst to best."""
    if unit is Unit.RATIO:
        return [0.0, 0.005, 0.01, 0.3, 0.5, 0.6, 0.75, 0.8, 0.9, 0.95, 0.99, 1.0]
    if unit is Unit.FLAG:
        return [0.0, 1.0]
    if unit is Unit.COUNT:
        return [0, 1, 2, 3, 10]
    return [NEVER, 400, 365, 180, 90, 30, 7, 1, 0]


def _scores(result: Assessment) -> list[float]:
    return [
        result.overall,
        *(d.score for d in result.domains),
        *(p.score for p in result.practices),
    ]


@pytest.mark.parametrize("seed", range(5))
def test_improving_any_one_measured_value_never_lowers_any_score(seed: int) -> None:
    bank = _shipped()
    rng = random.Random(seed)
    baseline = {key: rng.choice(_grid(spec.unit)) for key, spec in EVIDENCE_KEYS.items()}
    # self-reported answers everywhere, some contradicting the evidence
    raw = {q.id: rng.randint(0, 4) for q in bank.questions if rng.random() < 0.8}
    answers = load_answers({"bank_version": bank.version, "answers": raw}, bank)
    for key, spec in EVIDENCE_KEYS.items():
        previous: list[float] | None = None
        for value in _grid(spec.unit):
            values = dict(baseline, **{key: value})
            evidence = Evidence(measure(k, v) for k, v in values.items())
            scores = _scores(assess(bank, evidence, answers, agentic=seed % 2 == 0, at=T0))
            if previous is not None:
                assert all(now >= before for now, before in zip(scores, previous, strict=True)), (
                    key,
                    value,
                )
            previous = scores


def test_the_scenario_bank_is_not_mutated_by_loading() -> None:
    data = small_bank_data()
    before = copy.deepcopy(data)
    load_bank(data)
    assert data == before
