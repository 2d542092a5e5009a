"""The detection evaluation's figures on hand-built trails: true and false positives,
precision and recall, time to detect and to contain, allowed actions before
containment, the targets check, and the edge cases (no alert, only false alarms)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from agentiam.core.detection.simulation.metrics import (
    AlertRecord,
    AttackInstance,
    DecisionRecord,
    ResponseRecord,
    Targets,
    evaluate,
    failures,
    pooled,
)
from agentiam.core.detection.simulation.scenarios import SCENARIOS, TokenAsk
from agentiam.core.detection.simulation.workload import history, session
from agentiam.core.detection.simulation.world import KINDS, fleet

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def attack(agent: str = "agt_a", start: float = 0, end: float = 10, n: int = 0) -> AttackInstance:
    return AttackInstance("s", n, agent, at(start), at(end))


def alert(alert_id: str, agent: str, raised: float, recorded: float | None = None) -> AlertRecord:
    return AlertRecord(alert_id, agent, "d.x", at(raised), at(recorded if recorded else raised))


def test_true_and_false_positives_precision_recall_and_times() -> None:
    instances = [attack("agt_a", 0, 10, 0), attack("agt_b", 20, 30, 1)]
    alerts = [
        alert("a1", "agt_a", 2, 2.5),  # TP: attacker, in its window
        alert("a2", "agt_a", 3, 3.1),  # TP
        alert("a3", "agt_a", 11),  # FP: attacker, after its window
        alert("a4", "agt_benign", 5),  # FP: benign agent
    ]
    responses = [
        ResponseRecord("a1", "agt_a", "notify", "queued", at(2.6)),  # not containment
        ResponseRecord("a1", "agt_a", "suspend", "done", at(2.8)),
        ResponseRecord("a4", "agt_benign", "suspend", "done", at(5.1)),
    ]
    decisions = [
        DecisionRecord("agt_a", at(1), True),
        DecisionRecord("agt_a", at(2), True),
        DecisionRecord("agt_a", at(2.7), False),
        DecisionRecord("agt_a", at(3), True),  # after containment
        DecisionRecord("agt_b", at(21), True),
        DecisionRecord("agt_b", at(25), True),
        DecisionRecord("agt_b", at(35), True),  # outside the window
    ]
    r = evaluate("s", instances, alerts, responses, decisions)
    assert (r.alerts, r.true_positives, r.false_positives) == (4, 2, 2)
    assert r.precision == pytest.approx(0.5)
    assert r.recall == pytest.approx(0.5)  # agt_b was never detected
    a, b = r.outcomes
    assert a.time_to_detect == pytest.approx(2.5)  # recording time - start
    assert a.time_to_contain == pytest.approx(2.8)
    assert a.allowed_before_containment == 2
    assert b.time_to_detect is None
    assert b.time_to_contain is None
    assert b.allowed_before_containment == 2  # never contained: the whole window
    assert r.detectors == {"d.x": 2}
    assert r.false_positive_detectors == {"d.x": 2}
    assert r.to_dict()["missed"] == ["agt_b"]


def test_no_alert_at_all() -> None:
    r = evaluate("s", [attack()], [], [], [DecisionRecord("agt_a", at(1), True)])
    assert r.alerts == 0
    assert r.precision is None
    assert r.recall == 0.0
    assert r.times_to_detect() == []
    assert r.times_to_contain() == []
    assert r.to_dict()["time_to_detect_seconds"] == {"median": None, "max": None}
    assert failures([r]) == ["s: recall 0.00 < 0.95"]


def test_only_false_alarms() -> None:
    alerts = [alert("f1", "agt_benign", 1), alert("f2", "agt_a", -5)]  # before the attack
    r = evaluate("s", [attack()], alerts, [], [])
    assert r.precision == 0.0
    assert r.recall == 0.0
    assert r.false_positives == 2
    assert "s: precision 0.00 < 0.95" in failures([r])


def test_containment_must_answer_the_attack_and_be_carried_out() -> None:
    alerts = [alert("tp", "agt_a", 1), alert("old", "agt_a", -30)]
    responses = [
        ResponseRecord("old", "agt_a", "suspend", "done", at(0.5)),  # an earlier alert's
        ResponseRecord("tp", "agt_a", "suspend", "would_do", at(1.1), dry_run=True),
        ResponseRecord("tp", "agt_a", "suspend", "skipped", at(1.2)),
        ResponseRecord("tp", "agt_a", "suspend", "failed", at(1.3)),
        ResponseRecord("tp", "agt_a", "throttle", "done", at(1.4)),
    ]
    (o,) = evaluate("s", [attack()], alerts, responses, []).outcomes
    assert o.containment is not None
    assert o.containment.action == "throttle"
    assert o.time_to_contain == pytest.approx(1.4)


def test_an_alert_on_the_attackers_sub_agent_counts() -> None:
    instance = AttackInstance("s", 0, "agt_a", at(0), at(10), frozenset({"agt_child"}))
    r = evaluate("s", [instance], [alert("c", "agt_child", 4)], [], [])
    assert r.recall == 1.0
    assert r.precision == 1.0


def test_runaway_targets() -> None:
    alerts = [alert("r1", "agt_a", 0.1, 0.2), alert("r2", "agt_b", 0.1, 0.2)]
    responses = [
        ResponseRecord("r1", "agt_a", "suspend", "done", at(0.3)),
        ResponseRecord("r2", "agt_b", "suspend", "done", at(1.5)),  # too late
    ]
    decisions = [DecisionRecord("agt_a", at(0.001 * k), True) for k in range(60)]
    instances = [
        AttackInstance("runaway_loop", 0, "agt_a", at(0), at(2)),
        AttackInstance("runaway_loop", 1, "agt_b", at(0), at(2)),
    ]
    r = evaluate("runaway_loop", instances, alerts, responses, decisions)
    missed = failures([r], Targets())
    assert "runaway_loop #0: 60 actions allowed before containment > 50" in missed
    assert "runaway_loop #1: contained after 1.50 s > 1.0 s" in missed
    assert not any("recall" in m or "precision" in m for m in missed)


def test_pooled_adds_up() -> None:
    one = evaluate("a", [attack()], [alert("x", "agt_a", 1)], [], [])
    two = evaluate("b", [attack("agt_b")], [alert("y", "agt_c", 1)], [], [])
    total = pooled([one, two])
    assert (total.instances, total.alerts, total.true_positives) == (2, 2, 1)
    assert total.recall == 0.5
    assert total.precision == 0.5


def test_workload_is_seeded_and_bounded() -> None:
    specs = fleet(random.Random(1), benign_per_kind=2, candidates=4, candidate_env=None)
    assert len(specs) == 2 * len(KINDS) + 4
    one = history(specs, random.Random(2), 0.0, 3600.0)
    two = history(specs, random.Random(2), 0.0, 3600.0)
    assert [(p.at, p.index) for p in one] == [(p.at, p.index) for p in two]
    assert all(0 <= p.at < 3600 for p in one)
    assert [p.at for p in one] == sorted(p.at for p in one)
    for spec in specs:
        s = session(spec, random.Random(spec.name))
        assert 1 <= len(s.calls) <= 12
        assert all(c.id.startswith(spec.environment) for c in s.calls if c.type == "Tool")


def test_every_scenario_makes_a_plan() -> None:
    specs = fleet(random.Random(1), benign_per_kind=0, candidates=4, candidate_env="staging")
    for scenario in SCENARIOS.values():
        for i, spec in enumerate(specs):
            steps = scenario.plan(spec, i, random.Random(i))
            assert steps
            assert steps[0].delay == 0.0
    probing = SCENARIOS["privilege_probing"].plan(specs[0], 0, random.Random(0))
    assert any(isinstance(s.op, TokenAsk) for s in probing)
    lateral = SCENARIOS["lateral_movement"].plan(specs[0], 0, random.Random(0))
    assert all(s.op.id.startswith("production:") for s in lateral)  # type: ignore[union-attr]
