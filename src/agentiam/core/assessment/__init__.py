"""The maturity assessment's pure core (docs/assessment.md).

Read in this order:

* :mod:`.model`: domains, the 0-4 maturity scale, practices, questions, references;
* :mod:`.evidence_keys`: the measured evidence keys the collector must produce;
* :mod:`.bank`: the versioned question bank (``questions.yaml``), loaded strictly;
* :mod:`.autonomy`: the inventory of AI systems and the Autonomy Test;
* :mod:`.scoring`: evidence, answers, per-question scores and the roll-up;
* :mod:`.ladders`: the agent IAM and governance ladders and what blocks the next step;
* :mod:`.roadmap`: the gaps ranked by risk removed against effort, with the commands.

A caller (CLI, API, the evidence collector) does::

    bank = load_bank(yaml.safe_load(shipped_bank_text()))
    systems = registry_systems + load_declared_systems(inventory["systems"])
    agentic = inventory_is_agentic(systems)
    answers = load_answers(yaml.safe_load(answers_text), bank)
    result = assess(bank, evidence, answers, agentic=agentic, at=now)
    positions = place_all(bank, result)
    roadmap = build_roadmap(bank, result, positions)

Nothing here does I/O except :func:`~.bank.shipped_bank_text`, which reads the
package's own data file.
"""

from agentiam.core.assessment.autonomy import (
    AISystem,
    AutonomyClass,
    AutonomyCriteria,
    classify,
    inventory_is_agentic,
    load_declared_systems,
    registry_system,
)
from agentiam.core.assessment.bank import QuestionBank, load_bank, shipped_bank_text
from agentiam.core.assessment.evidence_keys import EVIDENCE_KEYS, MEASURED_EVIDENCE_KEYS, NEVER
from agentiam.core.assessment.ladders import LadderPosition, place, place_all
from agentiam.core.assessment.model import LEVEL_DESCRIPTIONS, Domain, EvidenceType, Level
from agentiam.core.assessment.roadmap import RoadmapItem, build_roadmap
from agentiam.core.assessment.scoring import (
    Answer,
    Answers,
    Assessment,
    Evidence,
    Measurement,
    assess,
    load_answers,
    questions_to_ask,
    require_complete,
)

__all__ = [
    "EVIDENCE_KEYS",
    "LEVEL_DESCRIPTIONS",
    "MEASURED_EVIDENCE_KEYS",
    "NEVER",
    "AISystem",
    "Answer",
    "Answers",
    "Assessment",
    "AutonomyClass",
    "AutonomyCriteria",
    "Domain",
    "Evidence",
    "EvidenceType",
    "LadderPosition",
    "Level",
    "Measurement",
    "QuestionBank",
    "RoadmapItem",
    "assess",
    "build_roadmap",
    "classify",
    "inventory_is_agentic",
    "load_answers",
    "load_bank",
    "load_declared_systems",
    "place",
    "place_all",
    "questions_to_ask",
    "registry_system",
    "require_complete",
    "shipped_bank_text",
]
