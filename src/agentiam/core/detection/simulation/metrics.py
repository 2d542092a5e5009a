"""Ground truth and the figures of the detection evaluation (issue 8, item 5).

Every input is read back from the audit trail by the runner: ``detection.alert``
events become :class:`AlertRecord`, ``response.action`` events :class:`ResponseRecord`
and the attackers' ``authz.decision`` events :class:`DecisionRecord`. This module only
compares them with what the simulator knows it did (:class:`AttackInstance`).

Definitions (docs: "How the figures are defined"):

- an alert is a **true positive** when it names an attacker agent (or an agent of its
  delegation subtree) and the event that raised it (``details.time``) falls in that
  attack's window ``[start, end]``; every other alert is a **false positive** (alerts
  on benign agents, or on an attacker outside its window);
- **precision** = true-positive alerts / all alerts (None when there is no alert);
- **recall** = attack instances with at least one true-positive alert / instances;
- **time to detect** = the first true-positive alert's recording time (the audit
  event's ``time``) minus the attack's start;
- **time to contain** = the first containment action carried out (``result: done``,
  not a dry run; one of :data:`CONTAINMENT`) on the attacker, answering one of the
  attack's true-positive alerts, minus the attack's start;
- **allowed before containment** = the attacker's allowed decisions in the window
  before that time (the whole window when it was never contained).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "CONTAINMENT",
    "AlertRecord",
    "AttackInstance",
    "DecisionRecord",
    "InstanceOutcome",
    "ResponseRecord",
    "ScenarioResult",
    "Targets",
    "evaluate",
    "failures",
    "pooled",
]

CONTAINMENT = frozenset({"suspend", "revoke_tokens", "quarantine_subtree", "throttle", "step_up"})


@dataclass(frozen=True, slots=True)
class AttackInstance:
    """One attack the simulator ran: on ``agent_id`` (and any agent in ``subtree``,
    its sub-agents), from its first malicious action to its last."""

    scenario: str
    instance: int
    agent_id: str
    start: datetime
    end: datetime
    subtree: frozenset[str] = frozenset()

    def names(self, agent_id: str) -> bool:
        return agent_id == self.agent_id or agent_id in self.subtree


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """A ``detection.alert`` event: ``raised_at`` is the time of the trail event that
    raised it (``details.time``), ``recorded_at`` the alert event's own time."""

    alert_id: str
    agent_id: str
    detector: str
    raised_at: datetime
    recorded_at: datetime
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    """A ``response.action`` event: which action, for which alert, and its result."""

    alert_id: str
    agent_id: str
    action: str
    result: str
    time: datetime
    dry_run: bool = False
    event_id: str = ""

    @property
    def contains(self) -> bool:
        return self.action in CONTAINMENT and self.result == "done" and not self.dry_run


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    agent_id: str
    time: datetime
    allowed: bool


@dataclass(frozen=True, slots=True)
class InstanceOutcome:
    instance: AttackInstance
    alerts: tuple[AlertRecord, ...]  # its true positives, in recording order
    containment: ResponseRecord | None
    allowed_before_containment: int

    @property
    def detected(self) -> bool:
        return bool(self.alerts)

    @property
    def time_to_detect(self) -> float | None:
        if not self.alerts:
            return None
        return (self.alerts[0].recorded_at - self.instance.start).total_seconds()

    @property
    def time_to_contain(self) -> float | None:
        if self.containment is None:
            return None
        return (self.containment.time - self.instance.start).total_seconds()


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    return {"median": statistics.median(values), "max": max(values)}


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    scenario: str
    outcomes: tuple[InstanceOutcome, ...]
    alerts: int  # every alert counted for the scenario
    true_positives: int
    detectors: dict[str, int] = field(default_factory=dict)  # true positives by detector
    false_positive_detectors: dict[str, int] = field(default_factory=dict)

    @property
    def instances(self) -> int:
        return len(self.outcomes)

    @property
    def detected(self) -> int:
        return sum(1 for o in self.outcomes if o.detected)

    @property
    def contained(self) -> int:
        return sum(1 for o in self.outcomes if o.containment is not None)

    @property
    def false_positives(self) -> int:
        return self.alerts - self.true_positives

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.alerts if self.alerts else None

    @property
    def recall(self) -> float | None:
        return self.detected / self.instances if self.instances else None

    def times_to_detect(self) -> list[float]:
        return [t for o in self.outcomes if (t := o.time_to_detect) is not None]

    def times_to_contain(self) -> list[float]:
        return [t for o in self.outcomes if (t := o.time_to_contain) is not None]

    def allowed_before(self) -> list[int]:
        return [o.allowed_before_containment for o in self.outcomes]

    def to_dict(self) -> dict[str, Any]:
        allowed = self.allowed_before()
        return {
            "scenario": self.scenario,
            "instances": self.instances,
            "detected": self.detected,
            "contained": self.contained,
            "alerts": self.alerts,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "precision": self.precision,
            "recall": self.recall,
            "time_to_detect_seconds": _summary(self.times_to_detect()),
            "time_to_contain_seconds": _summary(self.times_to_contain()),
            "allowed_before_containment": {
                "median": statistics.median(allowed) if allowed else None,
                "max": max(allowed) if allowed else None,
                "total": sum(allowed),
            },
            "true_positive_detectors": dict(sorted(self.detectors.items())),
            "false_positive_detectors": dict(sorted(self.false_positive_detectors.items())),
            "missed": [o.instance.agent_id for o in self.outcomes if not o.detected],
        }


def _outcome(
    instance: AttackInstance,
    alerts: Sequence[AlertRecord],
    responses: Sequence[ResponseRecord],
    decisions: Sequence[DecisionRecord],
) -> InstanceOutcome:
    hits = tuple(
        sorted(
            (
                a
                for a in alerts
                if instance.names(a.agent_id) and instance.start <= a.raised_at <= instance.end
            ),
            key=lambda a: a.recorded_at,
        )
    )
    ids = {a.alert_id for a in hits}
    containment = min(
        (
            r
            for r in responses
            if r.contains
            and instance.names(r.agent_id)
            and r.alert_id in ids
            and r.time >= instance.start
        ),
        key=lambda r: r.time,
        default=None,
    )
    cutoff = instance.end if containment is None else min(containment.time, instance.end)
    allowed = sum(
        1
        for d in decisions
        if d.allowed
        and instance.names(d.agent_id)
        and instance.start <= d.time
        and (d.time < cutoff if containment is not None else d.time <= cutoff)
    )
    return InstanceOutcome(instance, hits, containment, allowed)


def evaluate(
    scenario: str,
    instances: Iterable[AttackInstance],
    alerts: Sequence[AlertRecord],
    responses: Sequence[ResponseRecord],
    decisions: Sequence[DecisionRecord],
) -> ScenarioResult:
    """The figures of one scenario. ``alerts`` are all the alerts of the run that
    belongs to the scenario (benign agents included), so precision counts every false
    alarm the run raised."""
    outcomes = tuple(_outcome(i, alerts, responses, decisions) for i in instances)
    true_ids = {a.alert_id for o in outcomes for a in o.alerts}
    by_detector: dict[str, int] = {}
    false_by_detector: dict[str, int] = {}
    for alert in alerts:
        target = by_detector if alert.alert_id in true_ids else false_by_detector
        target[alert.detector] = target.get(alert.detector, 0) + 1
    return ScenarioResult(
        scenario=scenario,
        outcomes=outcomes,
        alerts=len({a.alert_id for a in alerts}),
        true_positives=len(true_ids),
        detectors=by_detector,
        false_positive_detectors=false_by_detector,
    )


def pooled(results: Sequence[ScenarioResult], name: str = "overall") -> ScenarioResult:
    """Every scenario's instances and alerts together."""
    detectors: dict[str, int] = {}
    false: dict[str, int] = {}
    for r in results:
        for k, v in r.detectors.items():
            detectors[k] = detectors.get(k, 0) + v
        for k, v in r.false_positive_detectors.items():
            false[k] = false.get(k, 0) + v
    return ScenarioResult(
        scenario=name,
        outcomes=tuple(o for r in results for o in r.outcomes),
        alerts=sum(r.alerts for r in results),
        true_positives=sum(r.true_positives for r in results),
        detectors=detectors,
        false_positive_detectors=false,
    )


@dataclass(frozen=True, slots=True)
class Targets:
    """The issue's targets: recall and precision per scenario, and the runaway loop
    contained within ``runaway_seconds`` after at most ``runaway_actions`` allowed
    actions, in every instance."""

    recall: float = 0.95
    precision: float = 0.95
    runaway_scenario: str = "runaway_loop"
    runaway_seconds: float = 1.0
    runaway_actions: int = 50


def failures(results: Sequence[ScenarioResult], targets: Targets | None = None) -> list[str]:
    """Each target a scenario misses, as one sentence; empty when all are met."""
    targets = targets or Targets()
    out: list[str] = []
    for r in results:
        recall = r.recall
        if recall is not None and recall < targets.recall:
            out.append(f"{r.scenario}: recall {recall:.2f} < {targets.recall:.2f}")
        precision = r.precision
        if precision is not None and precision < targets.precision:
            out.append(f"{r.scenario}: precision {precision:.2f} < {targets.precision:.2f}")
        if r.scenario != targets.runaway_scenario:
            continue
        for o in r.outcomes:
            ttc = o.time_to_contain
            name = f"{r.scenario} #{o.instance.instance}"
            if ttc is None:
                out.append(f"{name}: not contained")
            elif ttc > targets.runaway_seconds:
                out.append(f"{name}: contained after {ttc:.2f} s > {targets.runaway_seconds} s")
            if o.allowed_before_containment > targets.runaway_actions:
                out.append(
                    f"{name}: {o.allowed_before_containment} actions allowed before "
                    f"containment > {targets.runaway_actions}"
                )
    return out
