"""The question bank: versioned data, loaded strictly.

The shipped bank is ``questions.yaml`` in this package (:func:`shipped_bank_text`
returns its text). The core never parses YAML: the caller does, and hands the parsed
mapping to :func:`load_bank`::

    bank = load_bank(yaml.safe_load(shipped_bank_text()))

The format (docs/assessment.md#the-question-bank)::

    version: "2025.1"                 # recorded with every assessment
    practices:
      - {id: govern.accountability, domain: govern, title: ..., description: ...}
    questions:
      - id: govern.agent_owners       # "<domain>.<name>"
        practice: govern.accountability
        text: ...                     # the question, in our own words
        guidance: ...                 # what each level looks like, how to tell
        evidence: measured            # measured | self_reported | either
        evidence_key: agents.owner_share        # measured / either only
        thresholds:                   # measured / either only, highest level first
          - {level: 4, at_least: 1.0}
          - {level: 3, at_least: 0.95}
        weight: 3                     # > 0, at most 10
        risk: 5                       # 1-5: risk removed by reaching the target
        effort: 1                     # 1-5: cost of getting there
        agentic_only: false           # asked only when an agentic system is in scope
        references:                   # identifiers only
          {csf: [GV.RR-02], ai_rmf: [GOVERN 2.1], eu_ai_act: [26], owasp_agentic: [ASI03]}
        remedy: {steps: [...], commands: [agentiam ...], templates: [approval_above_risk]}
    ladders:
      agent_iam:
        title: Agent IAM ladder
        stages:                       # exactly ad_hoc, foundation, enhanced, adaptive
          - {name: foundation, title: ..., description: ..., requires: {govern.agent_owners: 3}}
      governance: {...}               # logging, alerting, enforcement, governance

:func:`load_bank` refuses, with :class:`~agentiam.errors.InvalidInput` naming the
question (or practice, or ladder stage) and the key: an unknown key, a missing one, a
duplicate id, a weight, risk or effort out of range, an unknown domain, practice,
evidence key, reference identifier or policy template, thresholds on the wrong side of
the evidence key's better direction or not strictly ordered, and a ladder that names an
unknown question.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from agentiam.core.assessment._parse import Reader
from agentiam.core.assessment.evidence_keys import EVIDENCE_KEYS
from agentiam.core.assessment.model import (
    AI_RMF_SUBCATEGORIES,
    CSF_SUBCATEGORIES,
    EU_AI_ACT_ARTICLES,
    OWASP_AGENTIC_ENTRIES,
    PRACTICE_ID,
    QUESTION_ID,
    Comparison,
    Domain,
    EvidenceType,
    Ladder,
    LadderStage,
    Level,
    Practice,
    Question,
    References,
    Remedy,
    Threshold,
)
from agentiam.core.policy.templates import TEMPLATES

__all__ = [
    "LADDER_STAGES",
    "MAX_QUESTIONS",
    "QuestionBank",
    "load_bank",
    "shipped_bank_text",
]

MAX_QUESTIONS = 500
MAX_PRACTICES = 100
MAX_WEIGHT = 10.0
# The two ladders every bank defines, with their stages in order (docs: the ladders).
LADDER_STAGES: dict[str, tuple[str, ...]] = {
    "agent_iam": ("ad_hoc", "foundation", "enhanced", "adaptive"),
    "governance": ("logging", "alerting", "enforcement", "governance"),
}

_R = Reader("See docs/assessment.md#the-question-bank for the bank's format.")
_TOP = frozenset({"version", "practices", "questions", "ladders"})
_PRACTICE = frozenset({"id", "domain", "title", "description"})
_QUESTION_REQUIRED = frozenset(
    {"id", "practice", "text", "guidance", "evidence", "weight", "risk", "effort"}
)
_QUESTION_OPTIONAL = frozenset(
    {"evidence_key", "thresholds", "agentic_only", "references", "remedy"}
)
_REFERENCES = frozenset({"csf", "ai_rmf", "eu_ai_act", "owasp_agentic"})
_REMEDY = frozenset({"steps", "commands", "templates"})
_LADDER = frozenset({"title", "stages"})
_STAGE = frozenset({"name", "title", "description", "requires"})


@dataclass(frozen=True, slots=True)
class QuestionBank:
    """A loaded, validated bank. Questions keep the file's order."""

    version: str
    practices: tuple[Practice, ...]
    questions: tuple[Question, ...]
    ladders: tuple[Ladder, ...]
    _by_id: dict[str, Question] = field(repr=False, compare=False, default_factory=dict)
    _practices: dict[str, Practice] = field(repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._by_id.update((q.id, q) for q in self.questions)
        self._practices.update((p.id, p) for p in self.practices)

    def question(self, question_id: str) -> Question | None:
        return self._by_id.get(question_id)

    def practice(self, practice_id: str) -> Practice | None:
        return self._practices.get(practice_id)

    def ladder(self, name: str) -> Ladder | None:
        return next((ladder for ladder in self.ladders if ladder.name == name), None)

    def in_scope(self, *, agentic: bool) -> tuple[Question, ...]:
        """The questions asked: all of them when agentic, else those not agentic-only."""
        return tuple(q for q in self.questions if agentic or not q.agentic_only)


def shipped_bank_text() -> str:
    """The text of the bank shipped with the package (``questions.yaml``)."""
    return files("agentiam.core.assessment").joinpath("questions.yaml").read_text("utf-8")


def load_bank(data: Any) -> QuestionBank:
    """Validate parsed bank data (a mapping from YAML or JSON) into a :class:`QuestionBank`."""
    top = _R.mapping(data, "bank", required=_TOP)
    version = top["version"]
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    version = _R.text(version, "bank: version", limit=32)

    practices: dict[str, Practice] = {}
    for i, raw in enumerate(_R.sequence(top["practices"], "bank: practices", limit=MAX_PRACTICES)):
        practice = _practice(raw, i)
        if practice.id in practices:
            raise _R.fail(f"practice {practice.id}", "duplicate id")
        practices[practice.id] = practice

    questions: dict[str, Question] = {}
    raws = _R.sequence(top["questions"], "bank: questions", limit=MAX_QUESTIONS)
    if not raws:
        raise _R.fail("bank: questions", "must hold at least one question")
    for i, raw in enumerate(raws):
        question = _question(raw, i, practices)
        if question.id in questions:
            raise _R.fail(f"question {question.id}", "duplicate id")
        questions[question.id] = question
    unused = [p for p in practices if not any(q.practice == p for q in questions.values())]
    if unused:
        raise _R.fail(f"practice {unused[0]}", "has no question")

    ladders = _ladders(top["ladders"], questions)
    return QuestionBank(version, tuple(practices.values()), tuple(questions.values()), ladders)


def _practice(raw: Any, index: int) -> Practice:
    where = f"bank: practices[{index}]"
    if isinstance(raw, Mapping) and isinstance(raw.get("id"), str):
        where = f"practice {raw['id'][:64]}"
    item = _R.mapping(raw, where, required=_PRACTICE)
    practice_id = _R.text(item["id"], f"{where}: id", limit=64)
    if not PRACTICE_ID.fullmatch(practice_id):
        raise _R.fail(f"{where}: id", "must look like '<domain>.<name>' (a-z, 0-9, _)")
    domain = _domain(item["domain"], f"{where}: domain")
    if practice_id.split(".", 1)[0] != domain.value:
        raise _R.fail(f"{where}: id", f"must start with its domain, '{domain.value}.'")
    return Practice(
        practice_id,
        domain,
        _R.text(item["title"], f"{where}: title", limit=200),
        _R.text(item["description"], f"{where}: description"),
    )


def _domain(value: Any, where: str) -> Domain:
    try:
        return Domain(value)
    except ValueError:
        known = ", ".join(d.value for d in Domain)
        raise _R.fail(where, f"unknown domain {str(value)[:64]!r} (one of {known})") from None


def _question(raw: Any, index: int, practices: Mapping[str, Practice]) -> Question:
    where = f"bank: questions[{index}]"
    if isinstance(raw, Mapping) and isinstance(raw.get("id"), str):
        where = f"question {raw['id'][:64]}"
    item = _R.mapping(raw, where, required=_QUESTION_REQUIRED, optional=_QUESTION_OPTIONAL)
    question_id = _R.text(item["id"], f"{where}: id", limit=64)
    if not QUESTION_ID.fullmatch(question_id):
        raise _R.fail(f"{where}: id", "must look like '<domain>.<name>' (a-z, 0-9, _)")
    practice_id = _R.text(item["practice"], f"{where}: practice", limit=64)
    practice = practices.get(practice_id)
    if practice is None:
        raise _R.fail(f"{where}: practice", f"unknown practice {practice_id!r}")
    if question_id.split(".", 1)[0] != practice.domain.value:
        raise _R.fail(f"{where}: id", f"must start with its domain, '{practice.domain.value}.'")
    try:
        evidence = EvidenceType(item["evidence"])
    except ValueError:
        known = ", ".join(e.value for e in EvidenceType)
        raise _R.fail(f"{where}: evidence", f"must be one of {known}") from None

    key: str | None = None
    thresholds: tuple[Threshold, ...] = ()
    if evidence is EvidenceType.SELF_REPORTED:
        for extra in ("evidence_key", "thresholds"):
            if extra in item:
                raise _R.fail(f"{where}: {extra}", "only measured or either questions take it")
    else:
        for needed in ("evidence_key", "thresholds"):
            if needed not in item:
                raise _R.fail(f"{where}: {needed}", f"is required for {evidence.value} questions")
        key = _R.text(item["evidence_key"], f"{where}: evidence_key", limit=64)
        if key not in EVIDENCE_KEYS:
            raise _R.fail(f"{where}: evidence_key", f"unknown evidence key {key!r}")
        thresholds = _thresholds(item["thresholds"], f"{where}: thresholds", key)

    return Question(
        id=question_id,
        domain=practice.domain,
        practice=practice_id,
        text=_R.text(item["text"], f"{where}: text", limit=500),
        guidance=_R.text(item["guidance"], f"{where}: guidance"),
        evidence=evidence,
        weight=_weight(item["weight"], f"{where}: weight"),
        risk=_R.integer(item["risk"], f"{where}: risk", 1, 5),
        effort=_R.integer(item["effort"], f"{where}: effort", 1, 5),
        agentic_only=_R.flag(item.get("agentic_only", False), f"{where}: agentic_only"),
        references=_references(item.get("references", {}), f"{where}: references"),
        remedy=_remedy(item.get("remedy", {}), f"{where}: remedy"),
        evidence_key=key,
        thresholds=thresholds,
    )


def _weight(value: Any, where: str) -> float:
    weight = _R.number(value, where, 0.0, MAX_WEIGHT)
    if weight <= 0:
        raise _R.fail(where, f"must be above 0 and at most {MAX_WEIGHT:g}")
    return weight


def _thresholds(value: Any, where: str, key: str) -> tuple[Threshold, ...]:
    spec = EVIDENCE_KEYS[key]
    better = spec.unit.better
    low, high = spec.unit.bounds
    items = _R.sequence(value, where, limit=4)
    if not items:
        raise _R.fail(where, "must hold at least one threshold")
    out: list[Threshold] = []
    for i, raw in enumerate(items):
        at = f"{where}[{i}]"
        worse = Comparison.AT_MOST if better is Comparison.AT_LEAST else Comparison.AT_LEAST
        if isinstance(raw, Mapping) and worse.value in raw:
            direction = "higher" if better is Comparison.AT_LEAST else "lower"
            raise _R.fail(
                f"{at}: {worse.value}",
                f"this key is better {direction} ({spec.unit.value}): use {better.value}",
            )
        item = _R.mapping(raw, at, required=frozenset({"level", better.value}))
        level = Level(_R.integer(item["level"], f"{at}: level", 1, 4))
        bound = _R.number(item[better.value], f"{at}: {better.value}", low, high)
        if out:
            previous = out[-1]
            stricter = (
                bound < previous.bound
                if better is Comparison.AT_LEAST
                else (bound > previous.bound)
            )
            if level >= previous.level or not stricter:
                raise _R.fail(
                    at,
                    "thresholds go from the highest level down, each lower level with a "
                    "strictly easier bound",
                )
        out.append(Threshold(level, better, bound))
    return tuple(out)


def _references(value: Any, where: str) -> References:
    item = _R.mapping(value, where, optional=_REFERENCES)
    csf = _identifiers(item.get("csf", []), f"{where}: csf", CSF_SUBCATEGORIES)
    ai_rmf = _identifiers(item.get("ai_rmf", []), f"{where}: ai_rmf", AI_RMF_SUBCATEGORIES)
    owasp = _identifiers(
        item.get("owasp_agentic", []), f"{where}: owasp_agentic", OWASP_AGENTIC_ENTRIES
    )
    articles: list[int] = []
    for i, raw in enumerate(_R.sequence(item.get("eu_ai_act", []), f"{where}: eu_ai_act")):
        articles.append(
            _R.integer(
                raw, f"{where}: eu_ai_act[{i}]", EU_AI_ACT_ARTICLES.start, EU_AI_ACT_ARTICLES[-1]
            )
        )
    return References(csf, ai_rmf, tuple(dict.fromkeys(articles)), owasp)


def _identifiers(value: Any, where: str, known: Iterable[str]) -> tuple[str, ...]:
    known_set = frozenset(known)
    out = _R.texts(value, where)
    for i, ident in enumerate(out):
        if ident not in known_set:
            raise _R.fail(f"{where}[{i}]", f"unknown identifier {ident[:64]!r}")
    return tuple(dict.fromkeys(out))


def _remedy(value: Any, where: str) -> Remedy:
    item = _R.mapping(value, where, optional=_REMEDY)
    commands = _R.texts(item.get("commands", []), f"{where}: commands")
    for i, command in enumerate(commands):
        if not command.startswith("agentiam "):
            raise _R.fail(f"{where}: commands[{i}]", "must be an 'agentiam ...' command")
    templates = _R.texts(item.get("templates", []), f"{where}: templates")
    for i, name in enumerate(templates):
        if name not in TEMPLATES:
            raise _R.fail(
                f"{where}: templates[{i}]",
                f"unknown policy template {name[:64]!r} (one of {', '.join(TEMPLATES)})",
            )
    return Remedy(_R.texts(item.get("steps", []), f"{where}: steps"), commands, templates)


def _ladders(value: Any, questions: Mapping[str, Question]) -> tuple[Ladder, ...]:
    top = _R.mapping(value, "bank: ladders", required=frozenset(LADDER_STAGES))
    ladders: list[Ladder] = []
    for name, expected in LADDER_STAGES.items():
        where = f"ladder {name}"
        item = _R.mapping(top[name], where, required=_LADDER)
        raws = _R.sequence(item["stages"], f"{where}: stages", limit=len(expected))
        names = tuple(s.get("name") if isinstance(s, Mapping) else None for s in raws)
        if names != expected:
            raise _R.fail(f"{where}: stages", f"must be, in order: {', '.join(expected)}")
        stages = []
        for stage_name, raw in zip(expected, raws, strict=True):
            at = f"{where} stage {stage_name}"
            stage = _R.mapping(raw, at, required=_STAGE)
            requires = stage["requires"]
            if not isinstance(requires, Mapping):
                raise _R.fail(f"{at}: requires", "must be a mapping of question id to level")
            needs: list[tuple[str, Level]] = []
            for qid, level in requires.items():
                if qid not in questions:
                    raise _R.fail(f"{at}: requires: {str(qid)[:64]}", "unknown question")
                needs.append((qid, Level(_R.integer(level, f"{at}: requires: {qid}", 1, 4))))
            stages.append(
                LadderStage(
                    stage_name,
                    _R.text(stage["title"], f"{at}: title", limit=100),
                    _R.text(stage["description"], f"{at}: description"),
                    tuple(needs),
                )
            )
        ladders.append(
            Ladder(name, _R.text(item["title"], f"{where}: title", limit=100), tuple(stages))
        )
    return tuple(ladders)
