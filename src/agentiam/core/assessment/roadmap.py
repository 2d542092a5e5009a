"""The roadmap: gaps ranked by the risk they remove against the effort they cost.

Every question in scope below its target is an item. The target is level 3
(:data:`DEFAULT_TARGET`, "Defined"), raised to the highest level any stage not yet
reached on either ladder requires of that question. For each item:

* ``risk_reduced`` = the question's ``risk`` (1-5) times the levels to climb;
* ``priority`` = ``risk_reduced`` / the question's ``effort`` (1-5).

Items are ordered by priority, highest first; ties go to an item that blocks the next
stage of a ladder, then to the larger risk, then by question id, so the order is
stable. Each item carries the bank's concrete steps, ``agentiam`` commands and policy
template names; an unanswered question's first step is to answer it (or, for a
measured question, to let the deployment measure it).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentiam.core.assessment.bank import QuestionBank
from agentiam.core.assessment.ladders import LadderPosition, place_all
from agentiam.core.assessment.model import EvidenceType, Level, Question
from agentiam.core.assessment.scoring import Assessment

__all__ = ["DEFAULT_TARGET", "RoadmapItem", "build_roadmap"]

DEFAULT_TARGET = Level.DEFINED


@dataclass(frozen=True, slots=True)
class RoadmapItem:
    question: Question
    current: Level
    target: Level
    unanswered: bool
    risk_reduced: int
    priority: float
    unlocks: tuple[str, ...]  # "<ladder>.<stage>" this item blocks now
    steps: tuple[str, ...]
    commands: tuple[str, ...]
    templates: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "question": self.question.id,
            "text": self.question.text,
            "current": int(self.current),
            "target": int(self.target),
            "unanswered": self.unanswered,
            "risk_reduced": self.risk_reduced,
            "effort": self.question.effort,
            "priority": self.priority,
            "unlocks": list(self.unlocks),
            "steps": list(self.steps),
            "commands": list(self.commands),
            "templates": list(self.templates),
        }


def _targets(positions: tuple[LadderPosition, ...]) -> dict[str, Level]:
    """The highest level any stage not yet reached requires, per question."""
    targets: dict[str, Level] = {}
    for position in positions:
        stages = position.ladder.stages
        start = 0 if position.reached is None else stages.index(position.reached) + 1
        for stage in stages[start:]:
            for question_id, level in stage.requires:
                targets[question_id] = max(targets.get(question_id, level), level)
    return targets


def _answer_step(question: Question) -> str:
    if question.evidence is EvidenceType.SELF_REPORTED:
        return "Answer this question in the assessment (it cannot be measured)."
    return (
        "Let the deployment measure this (the evidence was not available), "
        "or answer it in the assessment."
    )


def build_roadmap(
    bank: QuestionBank,
    assessment: Assessment,
    positions: tuple[LadderPosition, ...] | None = None,
) -> tuple[RoadmapItem, ...]:
    """The ranked roadmap for ``assessment`` (ladder positions computed if not given)."""
    if positions is None:
        positions = place_all(bank, assessment)
    targets = _targets(positions)
    unlocks: dict[str, list[str]] = {}
    for position in positions:
        if position.next is None:
            continue
        for gap in position.blocking:
            unlocks.setdefault(gap.question_id, []).append(
                f"{position.ladder.name}.{position.next.name}"
            )

    items: list[RoadmapItem] = []
    for result in assessment.results:
        question = result.question
        target = max(DEFAULT_TARGET, targets.get(question.id, DEFAULT_TARGET))
        if result.level >= target:
            continue
        risk_reduced = question.risk * (target - result.level)
        steps = question.remedy.steps
        if result.is_gap:
            steps = (_answer_step(question), *steps)
        items.append(
            RoadmapItem(
                question=question,
                current=result.level,
                target=Level(target),
                unanswered=result.is_gap,
                risk_reduced=risk_reduced,
                priority=risk_reduced / question.effort,
                unlocks=tuple(unlocks.get(question.id, ())),
                steps=steps,
                commands=question.remedy.commands,
                templates=question.remedy.templates,
            )
        )
    items.sort(key=lambda i: (-i.priority, not i.unlocks, -i.question.risk, i.question.id))
    return tuple(items)
