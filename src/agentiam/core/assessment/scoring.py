"""Evidence, answers and scoring (docs/assessment.md#scoring).

Inputs:

* :class:`Evidence`: what the deployment measured, one :class:`Measurement` per key of
  :data:`~agentiam.core.assessment.evidence_keys.EVIDENCE_KEYS`, each with its
  provenance (what was measured, when, and the numbers behind the value). The
  collector that reads the control plane builds it.
* :class:`Answers`: what people said, one :class:`Answer` per question (a level, or
  an explicit "unknown", with an optional note). :func:`load_answers` reads an answers
  file's parsed data strictly; :func:`questions_to_ask` lists what the deployment
  cannot answer itself (what an interactive run asks), and :func:`require_complete`
  refuses a non-interactive run that leaves one of those out.

:func:`assess` scores each question in scope:

1. a ``measured`` or ``either`` question with a measurement takes the level the
   bank's thresholds give its value; a self-reported answer that differs is recorded
   as a :class:`Contradiction` and the evidence wins;
2. otherwise a self-reported answer gives the level (also for a ``measured`` question
   the deployment could not measure, marked as self-reported);
3. otherwise the question is a gap: it counts as level 0 and is listed in
   :attr:`Assessment.gaps`, never silently scored higher.

Roll-up: a practice's score is the weight-averaged level of its questions; a domain's
is the average of its practices weighted by their questions' total weight; the overall
score is the mean of the domain scores (each domain counts the same, as the six CSF
functions do). Scores run from 0.0 to 4.0, on the :class:`~.model.Level` scale.
Raising any one measured value in its better direction never lowers any score.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from agentiam.core.assessment._parse import Reader
from agentiam.core.assessment.bank import QuestionBank
from agentiam.core.assessment.evidence_keys import EVIDENCE_KEYS
from agentiam.core.assessment.model import Domain, EvidenceType, Level, Question

__all__ = [
    "MAX_NOTE",
    "UNKNOWN",
    "Answer",
    "Answers",
    "Assessment",
    "Contradiction",
    "Evidence",
    "Measurement",
    "QuestionResult",
    "Score",
    "Source",
    "assess",
    "load_answers",
    "questions_to_ask",
    "require_complete",
    "score_question",
]

UNKNOWN = "unknown"  # an answer that says "we do not know": a gap, stated on purpose
MAX_NOTE = 2000
MAX_NUMBERS = 20
_R = Reader("See docs/assessment.md#answers-files for the answers file's format.")
_E = Reader("Evidence keys and units are listed in docs/assessment.md#evidence-keys.")


# -- evidence -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measured value and where it came from.

    ``source`` says what was measured ("active agents in the registry"),
    ``measured_at`` when (timezone-aware), ``numbers`` the counts behind the value
    (``{"agents": 40, "with_owner": 38}``), so a report can show its working.
    """

    key: str
    value: float
    measured_at: datetime
    source: str
    numbers: Mapping[str, float] = field(default_factory=dict)


class Evidence:
    """Measurements by key. Refuses an unknown key, a value outside its unit's range, a
    naive timestamp and a key measured twice (InvalidInput naming the key)."""

    __slots__ = ("_by_key",)

    def __init__(self, measurements: Iterable[Measurement] = ()) -> None:
        self._by_key: dict[str, Measurement] = {}
        for m in measurements:
            where = f"evidence {m.key[:64]}"
            spec = EVIDENCE_KEYS.get(m.key)
            if spec is None:
                raise _E.fail(where, "unknown evidence key")
            if m.key in self._by_key:
                raise _E.fail(where, "measured twice")
            low, high = spec.unit.bounds
            _E.number(m.value, f"{where}: value", low, high)
            if m.measured_at.tzinfo is None:
                raise _E.fail(f"{where}: measured_at", "must carry a time zone")
            _E.text(m.source, f"{where}: source", limit=500)
            if len(m.numbers) > MAX_NUMBERS:
                raise _E.fail(f"{where}: numbers", f"more than {MAX_NUMBERS} entries")
            for name, number in m.numbers.items():
                if not isinstance(number, int | float) or not math.isfinite(number):
                    raise _E.fail(f"{where}: numbers: {str(name)[:64]}", "must be a finite number")
            self._by_key[m.key] = m

    def get(self, key: str) -> Measurement | None:
        return self._by_key.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[Measurement]:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)


# -- answers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """A person's answer: a level, or ``None`` for an explicit "unknown"."""

    question_id: str
    level: Level | None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Answers:
    """Answers to one bank version, by question id."""

    bank_version: str
    by_question: Mapping[str, Answer] = field(default_factory=dict)

    def get(self, question_id: str) -> Answer | None:
        return self.by_question.get(question_id)


def load_answers(data: Any, bank: QuestionBank) -> Answers:
    """Read an answers file's parsed data::

        bank_version: "2025.1"        # the bank the answers were written for
        answers:
          govern.ai_policy: 3                         # a level, 0-4
          govern.roles: {level: 2, note: "two teams"} # with a note
          recover.key_compromise: unknown             # stated gap

    Refused with InvalidInput naming the question: an unknown question id, a level
    out of range or missing (``{note: ...}`` alone, or ``null``), an unknown key, and
    answers written for another bank version.
    """
    top = _R.mapping(data, "answers file", required=frozenset({"bank_version", "answers"}))
    version = top["bank_version"]
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    version = _R.text(version, "answers file: bank_version", limit=32)
    if version != bank.version:
        raise _R.fail(
            "answers file: bank_version",
            f"the answers were written for bank {version!r}; this is bank {bank.version!r}",
        )
    raw_answers = top["answers"] if top["answers"] is not None else {}
    if not isinstance(raw_answers, Mapping):
        raise _R.fail("answers file: answers", "must be a mapping of question id to answer")
    out: dict[str, Answer] = {}
    for qid, raw in raw_answers.items():
        where = f"answer {str(qid)[:64]}"
        if not isinstance(qid, str) or bank.question(qid) is None:
            raise _R.fail(where, "unknown question")
        out[qid] = _answer(qid, raw, where)
    return Answers(version, out)


def _answer(qid: str, raw: Any, where: str) -> Answer:
    note: str | None = None
    if isinstance(raw, Mapping):
        item = _R.mapping(raw, where, optional=frozenset({"level", "note"}))
        if item.get("level") is None:
            raise _R.fail(f"{where}: level", f"is required: give a level 0-4 or {UNKNOWN!r}")
        if "note" in item:
            note = _R.text(item["note"], f"{where}: note", limit=MAX_NOTE)
        raw = item["level"]
        where = f"{where}: level"
    if raw is None:
        raise _R.fail(where, f"has no level: give a level 0-4 or {UNKNOWN!r}")
    if raw == UNKNOWN:
        return Answer(qid, None, note)
    level = _R.integer(raw, where, 0, 4)
    return Answer(qid, Level(level), note)


def _measured(question: Question, evidence: Evidence) -> Measurement | None:
    if question.evidence is EvidenceType.SELF_REPORTED or question.evidence_key is None:
        return None
    return evidence.get(question.evidence_key)


def questions_to_ask(
    bank: QuestionBank, measured: Evidence | Container[str], *, agentic: bool
) -> tuple[Question, ...]:
    """The questions in scope the evidence does not answer: what a person must answer.
    ``measured`` is the evidence, or just the keys it holds (the collector always
    measures :data:`~.evidence_keys.MEASURED_EVIDENCE_KEYS`, so the questions can be
    known before anything is collected)."""
    return tuple(
        q
        for q in bank.in_scope(agentic=agentic)
        if q.evidence is EvidenceType.SELF_REPORTED
        or q.evidence_key is None
        or q.evidence_key not in measured
    )


def require_complete(
    answers: Answers, bank: QuestionBank, evidence: Evidence, *, agentic: bool
) -> None:
    """Refuse answers that leave out a question the evidence does not answer (for a
    non-interactive run that must not silently produce gaps). An explicit
    ``unknown`` counts as answered."""
    missing = [q.id for q in questions_to_ask(bank, evidence, agentic=agentic)]
    missing = [qid for qid in missing if answers.get(qid) is None]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        err = _R.fail(
            f"answer {missing[0]}",
            f"is missing; unanswered: {', '.join(missing[:5])}{more}",
        )
        err.errors = [{"pointer": f"answer {qid}", "detail": "is missing"} for qid in missing]
        raise err


# -- results ------------------------------------------------------------------------------


class Source(StrEnum):
    MEASURED = "measured"
    SELF_REPORTED = "self_reported"
    UNANSWERED = "unanswered"


@dataclass(frozen=True, slots=True)
class Contradiction:
    """A self-reported level that the measured evidence does not bear out (evidence wins)."""

    question_id: str
    claimed: Level
    measured: Level
    measurement: Measurement

    @property
    def overstated(self) -> bool:
        return self.claimed > self.measured


@dataclass(frozen=True, slots=True)
class QuestionResult:
    question: Question
    level: Level  # 0 for a gap
    source: Source
    measurement: Measurement | None = None
    answer: Answer | None = None
    contradiction: Contradiction | None = None

    @property
    def is_gap(self) -> bool:
        return self.source is Source.UNANSWERED


@dataclass(frozen=True, slots=True)
class Score:
    """A practice's or domain's score: 0.0-4.0, with the weight behind it and how many
    of its questions were answered (``answered``) out of ``total`` in scope."""

    id: str
    title: str
    score: float
    weight: float
    answered: int
    total: int


@dataclass(frozen=True, slots=True)
class Assessment:
    bank_version: str
    assessed_at: datetime
    agentic: bool
    results: tuple[QuestionResult, ...]
    practices: tuple[Score, ...]
    domains: tuple[Score, ...]
    overall: float
    not_applicable: tuple[str, ...] = ()

    def result(self, question_id: str) -> QuestionResult | None:
        return next((r for r in self.results if r.question.id == question_id), None)

    @property
    def gaps(self) -> tuple[QuestionResult, ...]:
        return tuple(r for r in self.results if r.is_gap)

    @property
    def contradictions(self) -> tuple[Contradiction, ...]:
        return tuple(r.contradiction for r in self.results if r.contradiction is not None)

    @property
    def measured_share(self) -> float:
        """The share of question weight scored from measured evidence."""
        total = sum(r.question.weight for r in self.results)
        measured = sum(r.question.weight for r in self.results if r.source is Source.MEASURED)
        return measured / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for the JSON report, the API and stored history)."""
        return {
            "bank_version": self.bank_version,
            "assessed_at": self.assessed_at.isoformat(),
            "agentic": self.agentic,
            "overall": self.overall,
            "measured_share": self.measured_share,
            "domains": [_score_dict(s) for s in self.domains],
            "practices": [_score_dict(s) for s in self.practices],
            "questions": [_result_dict(r) for r in self.results],
            "gaps": [r.question.id for r in self.gaps],
            "contradictions": [
                {
                    "question": c.question_id,
                    "claimed": int(c.claimed),
                    "measured": int(c.measured),
                    "overstated": c.overstated,
                }
                for c in self.contradictions
            ],
            "not_applicable": list(self.not_applicable),
        }


def _score_dict(score: Score) -> dict[str, Any]:
    return {
        "id": score.id,
        "title": score.title,
        "score": score.score,
        "weight": score.weight,
        "answered": score.answered,
        "total": score.total,
    }


def _measurement_dict(m: Measurement) -> dict[str, Any]:
    return {
        "key": m.key,
        "value": m.value,
        "measured_at": m.measured_at.isoformat(),
        "source": m.source,
        "numbers": dict(m.numbers),
    }


def _result_dict(r: QuestionResult) -> dict[str, Any]:
    return {
        "id": r.question.id,
        "domain": r.question.domain.value,
        "practice": r.question.practice,
        "level": int(r.level),
        "source": r.source.value,
        "evidence": None if r.measurement is None else _measurement_dict(r.measurement),
        "answer": None
        if r.answer is None
        else {
            "level": None if r.answer.level is None else int(r.answer.level),
            "note": r.answer.note,
        },
        "contradiction": r.contradiction is not None,
    }


# -- scoring ------------------------------------------------------------------------------


def score_question(question: Question, evidence: Evidence, answers: Answers) -> QuestionResult:
    """One question's result (rules 1-3 of the module docstring)."""
    answer = answers.get(question.id)
    measurement = _measured(question, evidence)
    if measurement is not None:
        level = question.level_for(measurement.value)
        contradiction = None
        if answer is not None and answer.level is not None and answer.level != level:
            contradiction = Contradiction(question.id, answer.level, level, measurement)
        return QuestionResult(question, level, Source.MEASURED, measurement, answer, contradiction)
    if answer is not None and answer.level is not None:
        return QuestionResult(question, answer.level, Source.SELF_REPORTED, None, answer)
    return QuestionResult(question, Level.NOT_PERFORMED, Source.UNANSWERED, None, answer)


def _weighted(pairs: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """(weighted mean, total weight) of (value, weight) pairs."""
    items = list(pairs)
    total = math.fsum(w for _, w in items)
    if total <= 0:
        return 0.0, 0.0
    return math.fsum(v * w for v, w in items) / total, total


def assess(
    bank: QuestionBank,
    evidence: Evidence,
    answers: Answers,
    *,
    agentic: bool,
    at: datetime,
) -> Assessment:
    """Score the bank's questions in scope from ``evidence`` and ``answers``."""
    if answers.bank_version != bank.version:
        raise _R.fail(
            "answers file: bank_version",
            f"the answers were written for bank {answers.bank_version!r}; "
            f"this is bank {bank.version!r}",
        )
    in_scope = bank.in_scope(agentic=agentic)
    results = tuple(score_question(q, evidence, answers) for q in in_scope)
    not_applicable = tuple(q.id for q in bank.questions if q not in in_scope)

    practices: list[Score] = []
    practice_domain: dict[str, Domain] = {}
    for practice in bank.practices:
        rs = [r for r in results if r.question.practice == practice.id]
        if not rs:
            continue
        score, weight = _weighted((float(r.level), r.question.weight) for r in rs)
        answered = sum(not r.is_gap for r in rs)
        practices.append(Score(practice.id, practice.title, score, weight, answered, len(rs)))
        practice_domain[practice.id] = practice.domain

    domains: list[Score] = []
    for domain in Domain:
        ps = [p for p in practices if practice_domain[p.id] is domain]
        if not ps:
            continue
        score, weight = _weighted((p.score, p.weight) for p in ps)
        domains.append(
            Score(
                domain.value,
                domain.label,
                score,
                weight,
                sum(p.answered for p in ps),
                sum(p.total for p in ps),
            )
        )
    overall = math.fsum(d.score for d in domains) / len(domains) if domains else 0.0
    return Assessment(
        bank.version,
        at,
        agentic,
        results,
        tuple(practices),
        tuple(domains),
        overall,
        not_applicable,
    )
