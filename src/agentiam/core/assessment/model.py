"""The maturity model: domains, the scale, practices, questions and their references.

Everything here is an immutable value. The question bank (:mod:`.bank`) builds these
from versioned data; scoring (:mod:`.scoring`), the ladders (:mod:`.ladders`) and the
roadmap (:mod:`.roadmap`) read them.

* Six domains after the NIST CSF 2.0 functions (CSF 2.0 section 2): Govern, Identify,
  Protect, Detect, Respond, Recover.
* One maturity scale of five levels, 0 to 4 (:class:`Level`, :data:`LEVEL_DESCRIPTIONS`).
* A question belongs to one practice, a practice to one domain. A question is answered
  from the deployment (``measured``, by a named evidence key from
  :data:`~agentiam.core.assessment.evidence_keys.EVIDENCE_KEYS`), by a person
  (``self_reported``), or by whichever is available (``either``, evidence first).
* References are identifiers only, never quoted text: NIST CSF 2.0 subcategories
  (``PR.AA-01``), NIST AI RMF 1.0 subcategories (``GOVERN 1.1``), EU AI Act article
  numbers (Regulation (EU) 2024/1689) and OWASP Top 10 for Agentic Applications entries
  (``ASI01`` to ``ASI10``). :data:`CSF_SUBCATEGORIES` and :data:`AI_RMF_SUBCATEGORIES`
  list the identifiers that exist, so a typo in the bank is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum

__all__ = [
    "AI_RMF_SUBCATEGORIES",
    "CSF_SUBCATEGORIES",
    "EU_AI_ACT_ARTICLES",
    "LEVEL_DESCRIPTIONS",
    "OWASP_AGENTIC_ENTRIES",
    "Comparison",
    "Domain",
    "EvidenceType",
    "Ladder",
    "LadderStage",
    "Level",
    "Practice",
    "Question",
    "References",
    "Remedy",
    "Threshold",
]


class Domain(StrEnum):
    """The six domains, in CSF 2.0 order. ``code`` is the CSF function's prefix."""

    GOVERN = "govern"
    IDENTIFY = "identify"
    PROTECT = "protect"
    DETECT = "detect"
    RESPOND = "respond"
    RECOVER = "recover"

    @property
    def code(self) -> str:
        return _DOMAIN_CODES[self]

    @property
    def label(self) -> str:
        return self.value.capitalize()


_DOMAIN_CODES = {
    Domain.GOVERN: "GV",
    Domain.IDENTIFY: "ID",
    Domain.PROTECT: "PR",
    Domain.DETECT: "DE",
    Domain.RESPOND: "RS",
    Domain.RECOVER: "RC",
}


class Level(IntEnum):
    """The maturity scale, lowest to highest (descriptions in :data:`LEVEL_DESCRIPTIONS`)."""

    NOT_PERFORMED = 0
    INITIAL = 1
    MANAGED = 2
    DEFINED = 3
    ADAPTIVE = 4

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").capitalize()


LEVEL_DESCRIPTIONS: dict[Level, str] = {
    Level.NOT_PERFORMED: "Nobody does it, or nobody can show that it is done.",
    Level.INITIAL: (
        "Done now and then, by whoever notices the need; results depend on the person."
    ),
    Level.MANAGED: (
        "Done on purpose for the important systems, with a named owner, but not yet the "
        "same way everywhere."
    ),
    Level.DEFINED: (
        "One written, agreed way, applied to every system in scope and enforced by "
        "tooling rather than by memory."
    ),
    Level.ADAPTIVE: (
        "Measured continuously, exercised regularly, and improved from what the "
        "measurements and incidents show."
    ),
}


class EvidenceType(StrEnum):
    """Where a question's answer comes from."""

    MEASURED = "measured"  # from the deployment, by evidence key
    SELF_REPORTED = "self_reported"  # from a person's answer
    EITHER = "either"  # measured when the deployment can, else a person's answer


class Comparison(StrEnum):
    """How a measured value meets a threshold: at least (higher is better) or at most."""

    AT_LEAST = "at_least"
    AT_MOST = "at_most"


@dataclass(frozen=True, slots=True)
class Threshold:
    """A measured value meeting ``bound`` (by ``comparison``) earns ``level``."""

    level: Level
    comparison: Comparison
    bound: float

    def met_by(self, value: float) -> bool:
        if self.comparison is Comparison.AT_LEAST:
            return value >= self.bound
        return value <= self.bound


@dataclass(frozen=True, slots=True)
class References:
    """Identifiers of the frameworks a question maps to (no quoted text)."""

    csf: tuple[str, ...] = ()  # NIST CSF 2.0 subcategories, "PR.AA-01"
    ai_rmf: tuple[str, ...] = ()  # NIST AI RMF 1.0 subcategories, "GOVERN 1.1"
    eu_ai_act: tuple[int, ...] = ()  # article numbers of Regulation (EU) 2024/1689
    owasp_agentic: tuple[str, ...] = ()  # "ASI01" .. "ASI10"

    @property
    def ai_rmf_functions(self) -> tuple[str, ...]:
        """The AI RMF functions (GOVERN, MAP, MEASURE, MANAGE) the subcategories belong to."""
        return tuple(dict.fromkeys(ref.split(" ", 1)[0] for ref in self.ai_rmf))


@dataclass(frozen=True, slots=True)
class Remedy:
    """What closes a gap: plain steps, ``agentiam`` commands, policy template names."""

    steps: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Practice:
    """A practice of one domain; its score is the weighted mean of its questions."""

    id: str
    domain: Domain
    title: str
    description: str


@dataclass(frozen=True, slots=True)
class Question:
    """One question of the bank.

    ``evidence_key`` and ``thresholds`` are set exactly when the type is ``measured`` or
    ``either``. ``thresholds`` are ordered by level, highest first; the measured value
    earns the highest level whose threshold it meets, else level 0. ``risk`` (how much
    risk reaching the target removes) and ``effort`` (what it costs) are 1-5 and rank
    the roadmap. ``agentic_only`` questions are asked only when the inventory holds an
    agentic system (:mod:`.autonomy`).
    """

    id: str
    domain: Domain
    practice: str
    text: str
    guidance: str
    evidence: EvidenceType
    weight: float
    risk: int
    effort: int
    agentic_only: bool
    references: References
    remedy: Remedy
    evidence_key: str | None = None
    thresholds: tuple[Threshold, ...] = ()

    def level_for(self, value: float) -> Level:
        """The level a measured ``value`` earns (monotone in the key's better direction)."""
        for threshold in self.thresholds:
            if threshold.met_by(value):
                return threshold.level
        return Level.NOT_PERFORMED


@dataclass(frozen=True, slots=True)
class LadderStage:
    """One step of a ladder: reached when every question in ``requires`` is at or above
    its level (questions not in scope are skipped) and every earlier stage is reached."""

    name: str
    title: str
    description: str
    requires: tuple[tuple[str, Level], ...]


@dataclass(frozen=True, slots=True)
class Ladder:
    """An ordered ladder of stages, lowest first (see :mod:`.ladders`)."""

    name: str
    title: str
    stages: tuple[LadderStage, ...]


# -- reference identifiers that exist ---------------------------------------------------

# NIST CSF 2.0 (CSWP 29, 2024): every subcategory, by category (withdrawn ids omitted).
_CSF: dict[str, tuple[int, ...]] = {
    "GV.OC": (1, 2, 3, 4, 5),
    "GV.RM": (1, 2, 3, 4, 5, 6, 7),
    "GV.RR": (1, 2, 3, 4),
    "GV.PO": (1, 2),
    "GV.OV": (1, 2, 3),
    "GV.SC": (1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
    "ID.AM": (1, 2, 3, 4, 5, 7, 8),
    "ID.RA": (1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
    "ID.IM": (1, 2, 3, 4),
    "PR.AA": (1, 2, 3, 4, 5, 6),
    "PR.AT": (1, 2),
    "PR.DS": (1, 2, 10, 11),
    "PR.PS": (1, 2, 3, 4, 5, 6),
    "PR.IR": (1, 2, 3, 4),
    "DE.CM": (1, 2, 3, 6, 9),
    "DE.AE": (2, 3, 4, 6, 7, 8),
    "RS.MA": (1, 2, 3, 4, 5),
    "RS.AN": (3, 6, 7, 8),
    "RS.CO": (2, 3),
    "RS.MI": (1, 2),
    "RC.RP": (1, 2, 3, 4, 5, 6),
    "RC.CO": (3, 4),
}
CSF_SUBCATEGORIES: frozenset[str] = frozenset(
    f"{category}-{n:02d}" for category, numbers in _CSF.items() for n in numbers
)

# NIST AI RMF 1.0 (AI 100-1, 2023): subcategories per category of each function.
_AI_RMF: dict[str, tuple[int, ...]] = {
    "GOVERN": (7, 3, 2, 3, 2, 2),
    "MAP": (6, 3, 5, 2, 2),
    "MEASURE": (3, 13, 3, 3),
    "MANAGE": (4, 4, 2, 3),
}
AI_RMF_SUBCATEGORIES: frozenset[str] = frozenset(
    f"{function} {category}.{sub}"
    for function, counts in _AI_RMF.items()
    for category, count in enumerate(counts, start=1)
    for sub in range(1, count + 1)
)

EU_AI_ACT_ARTICLES = range(1, 114)  # Regulation (EU) 2024/1689 has 113 articles
OWASP_AGENTIC_ENTRIES: frozenset[str] = frozenset(f"ASI{n:02d}" for n in range(1, 11))

QUESTION_ID = re.compile(r"[a-z]+\.[a-z0-9_]{2,48}")
PRACTICE_ID = QUESTION_ID
