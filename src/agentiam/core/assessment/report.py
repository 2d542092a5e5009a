"""One assessment as data: what it was scored from, and the report scoring gives
(docs/assessment.md#stored-history).

:class:`AssessmentInputs` holds everything a run is scored from: the measured
evidence, people's answers, the inventory and the time. :func:`score` turns inputs
into an :class:`AssessmentReport` with the pure core (roll-up, both ladders, the
roadmap), so the same inputs under the same question bank always give the same
report. That is what makes a stored assessment re-renderable: the store keeps the
inputs (and the JSON report), and an HTML or Markdown view of an old assessment is
scored again from its inputs, never reconstructed from its rendering.

:func:`load_inputs` reads stored inputs back strictly (as every loader here does):
the bank version must match the bank in use, and each value is checked again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from agentiam.core.assessment._parse import Reader
from agentiam.core.assessment.autonomy import (
    CRITERIA_QUESTIONS,
    MAX_SYSTEMS,
    AISystem,
    AutonomyCriteria,
    SystemSource,
)
from agentiam.core.assessment.bank import QuestionBank
from agentiam.core.assessment.evidence_keys import EVIDENCE_KEYS
from agentiam.core.assessment.ladders import LadderPosition, place_all
from agentiam.core.assessment.roadmap import RoadmapItem, build_roadmap
from agentiam.core.assessment.scoring import (
    UNKNOWN,
    Answer,
    Answers,
    Assessment,
    Evidence,
    Measurement,
    assess,
    load_answers,
)
from agentiam.errors import Conflict

__all__ = [
    "AssessmentInputs",
    "AssessmentReport",
    "load_inputs",
    "report_summary",
    "score",
]

_R = Reader("Stored assessment inputs are written by AgentIAM itself (docs/assessment.md).")
_MEASUREMENT_KEYS = frozenset({"key", "value", "measured_at", "source", "numbers"})
_SYSTEM_KEYS = frozenset({"id", "name", "source", "owner", "description", "criteria"})
_INPUT_KEYS = frozenset(
    {"bank_version", "assessed_at", "agentic", "systems_total", "evidence", "answers", "systems"}
)


@dataclass(frozen=True, slots=True)
class AssessmentInputs:
    """Everything one assessment is scored from.

    ``systems`` is the inventory as listed (at most ``MAX_SYSTEMS``); ``systems_total``
    counts every system in scope; ``agentic`` says whether the agent-specific questions
    are in scope (it can be true when only systems past the cap are agentic)."""

    bank_version: str
    assessed_at: datetime
    evidence: Evidence
    answers: Answers
    systems: tuple[AISystem, ...]
    systems_total: int
    agentic: bool

    def to_dict(self) -> dict[str, Any]:
        """The stored form, read back by :func:`load_inputs`."""
        return {
            "bank_version": self.bank_version,
            "assessed_at": self.assessed_at.isoformat(),
            "agentic": self.agentic,
            "systems_total": self.systems_total,
            "evidence": [
                {
                    "key": m.key,
                    "value": m.value,
                    "measured_at": m.measured_at.isoformat(),
                    "source": m.source,
                    "numbers": dict(m.numbers),
                }
                for m in self.evidence
            ],
            "answers": {qid: _answer_dict(a) for qid, a in self.answers.by_question.items()},
            "systems": [_system_dict(s) for s in self.systems],
        }


def _answer_dict(answer: Answer) -> Any:
    """An answer as an answers file writes it (``load_answers`` reads it back)."""
    level: int | str = UNKNOWN if answer.level is None else int(answer.level)
    return level if answer.note is None else {"level": level, "note": answer.note}


def _system_dict(system: AISystem) -> dict[str, Any]:
    return {
        "id": system.id,
        "name": system.name,
        "source": system.source.value,
        "owner": system.owner,
        "description": system.description,
        "criteria": {f.name: getattr(system.criteria, f.name) for f in fields(system.criteria)},
    }


@dataclass(frozen=True, slots=True)
class AssessmentReport:
    """One scored assessment: the result, both ladders, the roadmap, and the
    inventory the scope came from."""

    assessment: Assessment
    positions: tuple[LadderPosition, ...]
    roadmap: tuple[RoadmapItem, ...]
    systems: tuple[AISystem, ...]
    systems_total: int  # registry agents + declared systems (``systems`` may be capped)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (docs/assessment.md#for-callers)."""
        return {
            **self.assessment.to_dict(),
            "ladders": [p.to_dict() for p in self.positions],
            "roadmap": [i.to_dict() for i in self.roadmap],
            "inventory": {
                "total": self.systems_total,
                "agentic": self.assessment.agentic,
                "systems": [
                    {
                        "id": s.id,
                        "name": s.name,
                        "source": s.source.value,
                        "owner": s.owner,
                        "class": s.classification.autonomy.value,
                        "reasons": list(s.classification.reasons),
                    }
                    for s in self.systems
                ],
            },
        }


def _require_bank(version: str, bank: QuestionBank) -> None:
    if version != bank.version:
        raise Conflict(
            f"the assessment was made with question bank {version!r}; "
            f"this release has bank {bank.version!r}",
            hint="Its stored JSON report is unchanged; run a new assessment to score "
            "against this bank.",
        )


def score(bank: QuestionBank, inputs: AssessmentInputs) -> AssessmentReport:
    """Score ``inputs`` under ``bank``: the roll-up, both ladders and the roadmap.
    Refuses (Conflict) inputs gathered for another bank version."""
    _require_bank(inputs.bank_version, bank)
    result = assess(
        bank, inputs.evidence, inputs.answers, agentic=inputs.agentic, at=inputs.assessed_at
    )
    positions = place_all(bank, result)
    roadmap = build_roadmap(bank, result, positions)
    return AssessmentReport(result, positions, roadmap, inputs.systems, inputs.systems_total)


def report_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The few members of a JSON report that history lists and trends need."""
    return {
        "assessed_at": report["assessed_at"],
        "bank_version": report["bank_version"],
        "overall": report["overall"],
        "measured_share": report["measured_share"],
        "agentic": report["agentic"],
        "domains": [
            {"id": d["id"], "title": d["title"], "score": d["score"]} for d in report["domains"]
        ],
        "ladders": [
            {"ladder": p["ladder"], "reached": p["reached"], "next": p["next"]}
            for p in report["ladders"]
        ],
        "gaps": len(report["gaps"]),
        "contradictions": len(report["contradictions"]),
    }


# -- reading stored inputs back ------------------------------------------------------------


def _time(value: Any, where: str) -> datetime:
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise _R.fail(where, "must be an ISO 8601 time with a time zone")
    return when


def _plain_text(value: Any, where: str) -> str:
    """A string that may be empty (a registry agent's purpose can be). No length cap:
    these came from the registry, whose limits are configurable, and were bounded
    when they were written."""
    if not isinstance(value, str):
        raise _R.fail(where, "must be a string")
    return value


def _measurement(raw: Any, where: str) -> Measurement:
    item = _R.mapping(raw, where, required=_MEASUREMENT_KEYS)
    key = item["key"]
    if not isinstance(key, str) or key not in EVIDENCE_KEYS:
        raise _R.fail(f"{where}: key", "unknown evidence key")
    numbers = item["numbers"]
    if not isinstance(numbers, Mapping) or not all(isinstance(k, str) for k in numbers):
        raise _R.fail(f"{where}: numbers", "must be a mapping of names to numbers")
    low, high = EVIDENCE_KEYS[key].unit.bounds
    return Measurement(  # Evidence checks the rest (range, counts, source)
        key,
        _R.number(item["value"], f"{where}: value", low, high),
        _time(item["measured_at"], f"{where}: measured_at"),
        _plain_text(item["source"], f"{where}: source"),
        dict(numbers),
    )


def _system(raw: Any, where: str) -> AISystem:
    item = _R.mapping(raw, where, required=_SYSTEM_KEYS)
    try:
        source = SystemSource(item["source"])
    except ValueError:
        raise _R.fail(f"{where}: source", "must be registry or declared") from None
    criteria = _R.mapping(
        item["criteria"], f"{where}: criteria", required=frozenset(CRITERIA_QUESTIONS)
    )
    owner = item["owner"]
    return AISystem(
        _R.text(item["id"], f"{where}: id", limit=128),
        _plain_text(item["name"], f"{where}: name"),
        source,
        AutonomyCriteria(
            **{n: _R.flag(criteria[n], f"{where}: criteria: {n}") for n in CRITERIA_QUESTIONS}
        ),
        None if owner is None else _plain_text(owner, f"{where}: owner"),
        _plain_text(item["description"], f"{where}: description"),
    )


def load_inputs(data: Any, bank: QuestionBank) -> AssessmentInputs:
    """Read stored inputs (the form :meth:`AssessmentInputs.to_dict` writes) under
    ``bank``. Raises Conflict for another bank version and InvalidInput, naming the
    member, for anything malformed."""
    top = _R.mapping(data, "inputs", required=_INPUT_KEYS)
    version = _R.text(top["bank_version"], "inputs: bank_version", limit=32)
    _require_bank(version, bank)
    measurements = [
        _measurement(raw, f"inputs: evidence[{i}]")
        for i, raw in enumerate(_R.sequence(top["evidence"], "inputs: evidence", limit=200))
    ]
    systems = tuple(
        _system(raw, f"inputs: systems[{i}]")
        for i, raw in enumerate(_R.sequence(top["systems"], "inputs: systems", limit=MAX_SYSTEMS))
    )
    total = _R.integer(top["systems_total"], "inputs: systems_total", len(systems), 2**31)
    return AssessmentInputs(
        bank_version=version,
        assessed_at=_time(top["assessed_at"], "inputs: assessed_at"),
        evidence=Evidence(measurements),
        answers=load_answers({"bank_version": version, "answers": top["answers"]}, bank),
        systems=systems,
        systems_total=total,
        agentic=_R.flag(top["agentic"], "inputs: agentic"),
    )
