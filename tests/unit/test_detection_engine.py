"""The engine around the detectors: warm-up, cool-down, risk scores, sessions, memory
bounds, failing detectors and profiles, and the validated configuration."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from tests.unit.detection_support import T0, Feed, benign, config, info

from agentiam.core.detection.config import DetectionConfig
from agentiam.core.detection.detector import DetectionState
from agentiam.core.detection.engine import DetectionEngine, default_detectors
from agentiam.core.detection.model import Alert, Observation
from agentiam.core.detection.profile import AgentInfo
from agentiam.core.detection.risk import RiskLedger, combine
from agentiam.errors import InvalidInput

A = "agt_engine_1"


# -- warm-up --------------------------------------------------------------------------------


def test_warm_up_needs_both_enough_calls_and_enough_time() -> None:
    feed = Feed()
    for k in range(100):  # many calls, but within one minute
        feed.call(A, f"t{k % 4}", gap=0.5)
    assert not feed.engine.warm(A, feed.t)
    other = "agt_engine_2"
    for _ in range(10):  # a long span, but few calls
        feed.call(other, "t", gap=600)
    assert not feed.engine.warm(other, feed.t)
    benign(feed, "agt_engine_3", 30)
    assert feed.engine.warm("agt_engine_3", feed.t)


# -- cool-down ------------------------------------------------------------------------------


def test_one_incident_is_one_alert_until_the_cool_down_then_it_raises_again() -> None:
    feed = Feed(cfg=config(cooldown_seconds=60))
    for _ in range(3000):  # a loop running for 60 s at 50 calls a second
        feed.call(A, "search", gap=0.02)
    loops = [a for a in feed.alerts if a.detector == "velocity.runaway_loop"]
    assert len(loops) == 1
    for _ in range(100):  # still going after the cool-down
        feed.call(A, "search", gap=0.02)
    loops = [a for a in feed.alerts if a.detector == "velocity.runaway_loop"]
    assert len(loops) == 2
    assert feed.engine.stats()["suppressed_by_cooldown"] > 3000


def test_the_cool_down_is_per_key() -> None:
    feed = Feed()
    for _ in range(20):
        feed.call(A, "one", gap=0.01)
    for _ in range(20):
        feed.call(A, "two", gap=0.01)
    assert feed.detectors() == ["velocity.runaway_loop", "velocity.runaway_loop"]


# -- risk -----------------------------------------------------------------------------------


def test_risk_rises_with_alerts_is_capped_at_100_and_decays_by_half_life() -> None:
    feed = Feed(cfg=config(cooldown_seconds=0))
    assert feed.engine.risk(A, feed.t) == 0
    for _ in range(200):
        feed.call(A, "search", gap=0.001)
    now = feed.t
    assert feed.engine.risk(A, now) == 100  # a whole number, for the policy context
    score = feed.engine.ledger.score(A, now)
    assert 99 < score <= 100
    later = feed.engine.ledger.score(A, now + timedelta(minutes=15))
    assert later == pytest.approx(score / 2, abs=0.01)
    assert feed.engine.risk(A, now + timedelta(hours=10)) == 0
    assert feed.engine.session_risk("s1", now) == 100
    assert feed.engine.session_risk("another", now) == 0


def test_combining_scores_never_exceeds_100() -> None:
    score = 0.0
    for points in (80, 80, 80, 100, 100, 250, -5):
        score = combine(score, points)
        assert 0 <= score <= 100
    assert combine(0, 50) == 50
    assert combine(50, 50) == 75


def test_the_risk_ledger_is_bounded_and_forgets_the_least_recent() -> None:
    ledger = RiskLedger(DetectionConfig.from_mapping({"risk": {"max_agents": 3}}).risk)
    for k in range(10):
        ledger.add(f"agt_{k}", f"s{k}", 50, T0)
    assert len(ledger) == 3
    assert ledger.score("agt_0", T0) == 0
    assert ledger.score("agt_9", T0) == 50


def test_an_out_of_order_alert_does_not_rewind_decay() -> None:
    ledger = RiskLedger()
    ledger.add(A, None, 50, T0 + timedelta(minutes=15))
    ledger.add(A, None, 50, T0)  # arrives late
    assert ledger.score(A, T0 + timedelta(minutes=15)) == 75


# -- sessions -------------------------------------------------------------------------------


def test_a_delegated_tokens_session_is_the_root_of_its_tree() -> None:
    feed = Feed()
    feed.observe(A, "token.issued", "token", None, session="tok_root", jti="tok_root")
    feed.observe(
        "agt_child",
        "token.exchanged",
        "token",
        None,
        session="tok_child",
        jti="tok_child",
        parent_jti="tok_root",
    )
    feed.observe(
        "agt_grandchild",
        "token.exchanged",
        "token",
        None,
        session="tok_gc",
        jti="tok_gc",
        parent_jti="tok_child",
    )
    for _ in range(20):
        feed.call("agt_grandchild", "search", session="tok_gc", gap=0.01)
    [alert] = feed.alerts
    assert alert.session == "tok_root"
    assert feed.engine.session_risk("tok_gc", feed.t) == feed.engine.session_risk(
        "tok_root", feed.t
    )
    assert feed.engine.session_risk("tok_root", feed.t) > 0


# -- memory bounds --------------------------------------------------------------------------


def test_more_agents_than_the_cap_evicts_the_least_recently_seen() -> None:
    feed = Feed(cfg=config(limits={"max_agents": 10}))
    for k in range(50):
        feed.call(f"agt_{k}", "search")
    stats = feed.engine.stats()
    assert stats["agents"] == 10
    assert stats["agents_evicted"] == 40
    assert feed.engine.warm("agt_0", feed.t) is False


def test_a_flood_of_distinct_names_cannot_grow_a_profile() -> None:
    cfg = config(limits={"max_pairs": 16, "max_transitions": 16, "max_values": 4})
    feed = Feed(cfg=cfg)
    benign(feed, A, 40)
    feed.alerts.clear()
    for k in range(2000):
        feed.call(A, f"tool_{k}", host=f"h{k}.example", session=f"s{k % 7}", gap=0.5)
    state = feed.engine._store.get(A)
    assert state is not None
    assert len(state.pairs) <= 16
    assert len(state.transitions) <= 16
    assert len(state.hosts) <= 4
    assert state.overflow > 0
    assert len(state.last_by_session) <= cfg.limits.max_sessions_per_agent
    # once full, unknown pairs are not judged as new, so no flood of alerts either
    assert len([a for a in feed.alerts if a.detector == "unexpected_use.new_pair"]) <= 16


def test_cool_downs_and_token_roots_are_bounded() -> None:
    feed = Feed(cfg=config(limits={"max_cooldowns": 5, "max_token_roots": 5}))
    for k in range(20):
        feed.observe(A, "token.issued", "token", None, session=f"tok_{k}", jti=f"tok_{k}")
        for _ in range(16):
            feed.call(A, f"loop_{k}", gap=0.001)
    stats = feed.engine.stats()
    assert stats["cooldowns"] == 5
    assert stats["token_roots"] == 5
    assert stats["alerts_by_detector"]["velocity.runaway_loop"] == 20


# -- failures -------------------------------------------------------------------------------


class Broken:
    name = "broken"

    def observe(self, obs: Observation, state: DetectionState) -> list[Alert]:
        raise RuntimeError("bug")


def test_a_detector_that_raises_does_not_stop_the_others() -> None:
    cfg = config()
    engine = DetectionEngine(cfg, detectors=[Broken(), *default_detectors(cfg)])
    feed = Feed(engine)
    for _ in range(20):
        feed.call(A, "search", gap=0.01)
    assert feed.detectors() == ["velocity.runaway_loop"]
    stats = engine.stats()
    assert stats["errors"] == 20
    assert stats["errors_by_detector"] == {"broken": 20}


def test_a_failing_profile_source_is_counted_and_detection_goes_on() -> None:
    def profiles(_agent: str) -> AgentInfo | None:
        raise OSError("registry down")

    feed = Feed(DetectionEngine(config(), profiles))
    for _ in range(20):
        feed.call(A, "search", gap=0.01)
    assert feed.detectors() == ["velocity.runaway_loop"]
    assert feed.engine.stats()["profile_errors"] >= 1


def test_a_changed_profile_is_read_again_after_invalidate() -> None:
    profiles = {A: info(A, environment="staging")}
    feed = Feed(profiles=profiles)
    feed.call(A, environment="staging")
    profiles[A] = info(A, environment="production")
    assert feed.call(A, environment="production") != []  # the cached profile
    feed.engine.invalidate(A)
    assert feed.call(A, environment="production", gap=1) == []


def test_a_disabled_engine_raises_nothing() -> None:
    feed = Feed(cfg=config(enabled=False))
    for _ in range(50):
        feed.call(A, "search", gap=0.001)
    assert feed.alerts == []


def test_an_alert_is_plain_json() -> None:
    feed = Feed()
    for _ in range(15):
        feed.call(A, "search", gap=0.001)
    [alert] = feed.alerts
    body = json.loads(json.dumps(alert.to_dict()))
    assert body["detector"] == "velocity.runaway_loop"
    assert body["severity"] == "high"
    assert body["score"] == 50
    assert body["evidence"]["events"][-1] == f"evt_{feed.n}"
    assert alert.alert_id.startswith("alr_")


# -- configuration --------------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    cfg = DetectionConfig.from_mapping(None)
    assert cfg == DetectionConfig()
    assert cfg.risk.half_life_seconds == 900
    assert cfg.velocity.loop_repeats == 15
    assert (cfg.scores.low, cfg.scores.medium, cfg.scores.high, cfg.scores.critical) == (
        10,
        25,
        50,
        80,
    )


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"velocity": {"loop_repeats": 1}}, "detection.velocity.loop_repeats"),
        ({"velocity": {"loop_repeats": "15"}}, "detection.velocity.loop_repeats"),
        ({"velocity": {"loop_repeats": 1.5}}, "detection.velocity.loop_repeats"),
        ({"velocity": {"loop_repeats": True}}, "detection.velocity.loop_repeats"),
        ({"risk": {"half_life_seconds": 0}}, "detection.risk.half_life_seconds"),
        ({"risk": {"half_life_seconds": float("nan")}}, "detection.risk.half_life_seconds"),
        ({"scores": {"critical": 101}}, "detection.scores.critical"),
        ({"escalation": {"enabled": "yes"}}, "detection.escalation.enabled"),
        ({"sequence": {"min_probabilty": 0.1}}, "detection.sequence.min_probabilty"),
        ({"velocity": []}, "detection.velocity"),
        ({"nonsense": 1}, "detection.nonsense"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        DetectionConfig.from_mapping(data)
    assert caught.value.detail.startswith(field + ":")


def test_a_detector_family_can_be_switched_off() -> None:
    feed = Feed(cfg=config(velocity={"enabled": False}))
    for _ in range(50):
        feed.call(A, "search", gap=0.001)
    assert feed.alerts == []
    assert "velocity" not in [d.name for d in default_detectors(feed.engine.config)]
