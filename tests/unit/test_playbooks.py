"""The playbook file (core/response/playbooks.py): strict loading that names the
playbook and the key, pure matching and cool-downs, and the throttle table of the rate
limiter and the policy bundle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentiam.core.detection.model import Alert, Category, Evidence, Severity
from agentiam.core.enforcement.ratelimit import RateLimiter, Throttle
from agentiam.core.policy.bundle import BundleError, bundle_etag, throttles_of
from agentiam.core.response.playbooks import (
    AgentFacts,
    Cooldowns,
    Mode,
    load_playbooks,
    matching,
)
from agentiam.errors import InvalidInput

T0 = datetime(2025, 1, 1, tzinfo=UTC)

GOOD: dict[str, Any] = {
    "version": 1,
    "playbooks": [
        {
            "name": "runaway-loop",
            "mode": "enforce",
            "cooldown_seconds": 300,
            "when": {"detectors": ["velocity.runaway_loop"]},
            "actions": [{"suspend": {}}, {"revoke_tokens": {}}, {"notify": {"webhook": "secops"}}],
        },
        {
            "name": "risky-needs-human",
            "when": {"agent_risk_at_least": 60},
            "actions": [
                {"step_up": {"actions": "any", "count": 5, "for_minutes": 30}},
                {"throttle": {"per_minute": 10, "for_minutes": 15}},
            ],
        },
        {
            "name": "lateral-movement",
            "mode": "dry_run",
            "when": {"categories": ["boundary_crossing"], "min_severity": "high"},
            "actions": [{"quarantine_subtree": {}}],
        },
        {
            "name": "prod-only",
            "when": {"environments": ["production"], "labels": {"team": "pay"}},
            "actions": [{"step_up": {"actions": ["invoke_tool"], "count": 1}}],
        },
    ],
    "webhooks": {"secops": {"url": "https://hooks.example.com/x", "secret_env": "SECOPS"}},
}


def alert(
    detector: str = "velocity.runaway_loop",
    category: Category = Category.VELOCITY,
    severity: Severity = Severity.HIGH,
) -> Alert:
    return Alert(
        alert_id="alr_01",
        detector=detector,
        category=category,
        severity=severity,
        agent_id="agt_1",
        time=T0,
        score=40,
        evidence=Evidence(summary="x"),
    )


def bad(mutate: Any) -> str:
    import copy

    data = copy.deepcopy(GOOD)
    mutate(data)
    with pytest.raises(InvalidInput) as err:
        load_playbooks(data)
    return err.value.detail


def test_a_good_file_loads_with_every_key() -> None:
    loaded = load_playbooks(GOOD)
    assert [p.name for p in loaded.playbooks] == [
        "runaway-loop",
        "risky-needs-human",
        "lateral-movement",
        "prod-only",
    ]
    assert loaded.playbooks[2].mode is Mode.DRY_RUN
    step_up = loaded.playbooks[1].actions[0]
    assert step_up.params == {"actions": "any", "count": 5, "for_minutes": 30}
    # a count alone still ends: after 24 hours at most
    assert loaded.playbooks[3].actions[0].params["for_minutes"] == 24 * 60
    assert loaded.playbooks[3].actions[0].params["actions"] == ("invoke_tool",)
    assert loaded.to_dict()["playbooks"][0]["actions"][2] == {"notify": {"webhook": "secops"}}
    assert load_playbooks(None).playbooks == ()


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.update(extra=1), "playbook file.extra"),
        (lambda d: d["playbooks"][0].update(colour="red"), "playbook runaway-loop.colour"),
        (lambda d: d["playbooks"][0].update(mode="maybe"), "playbook runaway-loop.mode"),
        (
            lambda d: d["playbooks"][0].update(cooldown_seconds=-1),
            "playbook runaway-loop.cooldown_seconds",
        ),
        (
            lambda d: d["playbooks"][0].update(cooldown_seconds="5"),
            "playbook runaway-loop.cooldown_seconds",
        ),
        (
            lambda d: d["playbooks"][0]["actions"].append({"explode": {}}),
            "playbook runaway-loop.actions[3].explode",
        ),
        (
            lambda d: d["playbooks"][0]["actions"].append({"suspend": {"now": True}}),
            "playbook runaway-loop.actions[3].suspend.now",
        ),
        (
            lambda d: d["playbooks"][0]["actions"].append({"notify": {"webhook": "nobody"}}),
            "playbook runaway-loop.actions[3].notify.webhook",
        ),
        (
            lambda d: d["playbooks"][1]["actions"][1]["throttle"].update(per_minute=0),
            "playbook risky-needs-human.actions[1].throttle.per_minute",
        ),
        (
            lambda d: d["playbooks"][1]["actions"][0]["step_up"].update(actions="everything"),
            "playbook risky-needs-human.actions[0].step_up.actions",
        ),
        (
            lambda d: d["playbooks"][1]["when"].update(agent_risk_at_least=101),
            "playbook risky-needs-human.when.agent_risk_at_least",
        ),
        (
            lambda d: d["playbooks"][2]["when"].update(categories=["weird"]),
            "playbook lateral-movement.when.categories[0]",
        ),
        (
            lambda d: d["playbooks"][2]["when"].update(min_severity="extreme"),
            "playbook lateral-movement.when.min_severity",
        ),
        (lambda d: d["playbooks"][2].update(when={}), "playbook lateral-movement.when"),
        (lambda d: d["playbooks"].append(dict(d["playbooks"][0])), "runaway-loop.name"),
        (lambda d: d["webhooks"]["secops"].update(timeout=0), "webhooks.secops.timeout"),
    ],
)
def test_a_bad_file_is_refused_naming_the_playbook_and_the_key(mutate: Any, named: str) -> None:
    assert named in bad(mutate)


def test_an_inline_secret_is_refused() -> None:
    detail = bad(lambda d: d["webhooks"]["secops"].update(secret="whsec_abc"))
    assert "webhooks.secops.secret" in detail
    assert "never goes in" in detail
    assert "whsec_abc" not in detail
    both = bad(lambda d: d["webhooks"]["secops"].update(secret_file="/run/s"))
    assert "exactly one" in both


def test_unknown_detectors_are_refused_when_the_registry_is_known() -> None:
    with pytest.raises(InvalidInput, match=r"when.detectors\[0\]: unknown detector"):
        load_playbooks(GOOD, detectors={"velocity.rate_spike"})
    load_playbooks(GOOD, detectors={"velocity.runaway_loop"})


def test_matching_is_and_of_keys_or_within_lists() -> None:
    books = load_playbooks(GOOD).playbooks
    prod = AgentFacts("production", {"team": "pay"})
    names = [p.name for p in matching(books, alert(), 10, None, prod)]
    assert names == ["runaway-loop", "prod-only"]
    names = [p.name for p in matching(books, alert(), 60, None, AgentFacts("staging"))]
    assert names == ["runaway-loop", "risky-needs-human"]
    boundary = alert("boundary.environment", Category.BOUNDARY, Severity.MEDIUM)
    assert matching(books, boundary, 0, None, AgentFacts()) == []
    boundary = alert("boundary.environment", Category.BOUNDARY, Severity.CRITICAL)
    assert [p.name for p in matching(books, boundary, 0, None, AgentFacts())] == [
        "lateral-movement"
    ]


def test_cooldowns_hold_a_playbook_per_agent_and_restore() -> None:
    book = load_playbooks(GOOD).playbooks[0]
    cool = Cooldowns()
    assert cool.claim(book, "agt_1", T0)
    assert not cool.claim(book, "agt_1", T0 + timedelta(seconds=299))
    assert cool.claim(book, "agt_2", T0)  # per agent
    assert cool.claim(book, "agt_1", T0 + timedelta(seconds=300))
    again = Cooldowns()
    assert again.restore([("runaway-loop", "agt_1", T0), ("gone", "agt_1", T0)], [book]) == 1
    assert not again.ready(book, "agt_1", T0 + timedelta(seconds=10))
    assert again.ready(book, "agt_1", T0 + timedelta(seconds=301))


def test_cooldowns_are_bounded() -> None:
    book = load_playbooks(GOOD).playbooks[0]
    cool = Cooldowns(max_entries=10)
    for i in range(50):
        cool.claim(book, f"agt_{i}", T0)
    assert len(cool) <= 10


def test_a_throttle_caps_an_agent_until_it_ends() -> None:
    wall = [1000.0]
    limiter = RateLimiter(wall_clock=lambda: wall[0])
    assert limiter.check("agt_1", "t", 0.0) is None  # no limits, no throttle
    limiter.set_throttles([Throttle("agt_1", 3, 1060.0)])
    assert [limiter.check("agt_1", "t", 0.0) for _ in range(3)] == [None, None, None]
    assert limiter.check("agt_1", "t", 0.0) == 20  # one call per 20 s refills
    assert limiter.check("agt_2", "t", 0.0) is None  # others are not capped
    wall[0] = 1061.0
    assert limiter.check("agt_1", "t", 0.0) is None  # ended
    assert limiter.throttles == []


def test_bundle_throttles_are_checked_and_change_the_etag() -> None:
    caps = [Throttle("agt_1", 10, 2000.0)]
    assert bundle_etag(1, "f", "") != bundle_etag(1, "f", "", throttles=caps)
    assert bundle_etag(1, "f", "") == bundle_etag(1, "f", "", throttles=[])
    assert throttles_of({"throttles": [t.to_dict() for t in caps]}) == caps
    assert throttles_of({}) == []
    with pytest.raises(BundleError, match=r"throttles\[0\]"):
        throttles_of({"throttles": [{"agent_id": "a", "per_minute": 0, "until": 1}]})
    with pytest.raises(BundleError, match=r"throttles\[0\].extra"):
        throttles_of({"throttles": [{"agent_id": "a", "per_minute": 1, "until": 1, "extra": 1}]})
