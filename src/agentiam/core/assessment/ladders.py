"""Where an assessment stands on the two ladders, and what blocks the next step.

The bank defines both ladders (``ladders:`` in ``questions.yaml``; stage names in
:data:`~agentiam.core.assessment.bank.LADDER_STAGES`):

* the agent IAM ladder: Ad hoc → Foundation → Enhanced → Adaptive;
* the governance ladder: Logging → Alerting → Enforcement → Governance.

Each stage requires some questions at or above a level. A stage is reached when all
its requirements are met and every earlier stage is reached; requirements on
questions out of scope (agent-specific questions for a non-agentic inventory) are
skipped. A gap (an unanswered question) is level 0, so it blocks. :func:`place` gives
the highest stage reached (``None`` when not even the first is) and the exact unmet
requirements of the next one.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentiam.core.assessment.bank import QuestionBank
from agentiam.core.assessment.model import Ladder, LadderStage, Level
from agentiam.core.assessment.scoring import Assessment

__all__ = ["BlockingGap", "LadderPosition", "place", "place_all"]


@dataclass(frozen=True, slots=True)
class BlockingGap:
    """A requirement of the next stage that the assessment does not meet."""

    question_id: str
    text: str
    current: Level
    required: Level
    unanswered: bool


@dataclass(frozen=True, slots=True)
class LadderPosition:
    ladder: Ladder
    reached: LadderStage | None  # the highest stage reached; None: below the first
    next: LadderStage | None  # the stage above it; None: at the top
    blocking: tuple[BlockingGap, ...]  # what keeps ``next`` out of reach

    def to_dict(self) -> dict[str, object]:
        return {
            "ladder": self.ladder.name,
            "reached": None if self.reached is None else self.reached.name,
            "next": None if self.next is None else self.next.name,
            "blocking": [
                {
                    "question": g.question_id,
                    "current": int(g.current),
                    "required": int(g.required),
                    "unanswered": g.unanswered,
                }
                for g in self.blocking
            ],
        }


def unmet(stage: LadderStage, assessment: Assessment) -> tuple[BlockingGap, ...]:
    """The requirements of ``stage`` the assessment does not meet (out of scope: skipped)."""
    gaps: list[BlockingGap] = []
    for question_id, required in stage.requires:
        result = assessment.result(question_id)
        if result is None:  # not in scope
            continue
        if result.level < required:
            gaps.append(
                BlockingGap(
                    question_id, result.question.text, result.level, required, result.is_gap
                )
            )
    return tuple(gaps)


def place(ladder: Ladder, assessment: Assessment) -> LadderPosition:
    """The assessment's position on ``ladder`` and what blocks its next stage."""
    reached: LadderStage | None = None
    for stage in ladder.stages:
        blocking = unmet(stage, assessment)
        if blocking:
            return LadderPosition(ladder, reached, stage, blocking)
        reached = stage
    return LadderPosition(ladder, reached, None, ())


def place_all(bank: QuestionBank, assessment: Assessment) -> tuple[LadderPosition, ...]:
    """The position on every ladder of the bank, in the bank's order."""
    return tuple(place(ladder, assessment) for ladder in bank.ladders)
