"""Each detector family: it fires on its attack with the evidence that explains it, and
stays quiet on benign traffic with variation (false-positive checks both ways)."""

from __future__ import annotations

import pytest
from tests.unit.detection_support import Feed, benign, config, info

from agentiam.core.detection.model import Category, Expectations, Severity

A = "agt_support_1"


def _only(feed: Feed, detector: str) -> list:  # type: ignore[type-arg]
    return [a for a in feed.alerts if a.detector == detector]


# -- benign traffic -------------------------------------------------------------------------


def test_benign_workflows_with_variation_raise_nothing() -> None:
    profiles = {a: info(a) for a in ("agt_b1", "agt_b2", "agt_b3")}
    feed = Feed(profiles=profiles)
    for seed, agent in enumerate(profiles):
        benign(feed, agent, 150, seed=seed)
    assert feed.alerts == []
    assert all(feed.engine.warm(a, feed.t) for a in profiles)


def test_benign_traffic_of_agents_with_no_profile_raises_nothing() -> None:
    feed = Feed()
    benign(feed, "agt_anon_1", 200, seed=3)
    assert feed.alerts == []


# -- privilege escalation -------------------------------------------------------------------


def test_a_burst_of_denied_calls_is_an_escalation_attempt_with_its_events() -> None:
    feed = Feed()
    for k in range(5):
        feed.call(A, f"admin_{k}", allowed=False, gap=2)
    [alert] = _only(feed, "escalation.denied_burst")
    assert alert.category is Category.ESCALATION
    assert alert.severity is Severity.HIGH
    assert alert.evidence.facts["refusals"] == 5
    assert alert.evidence.facts["threshold"] == 5
    assert alert.evidence.events == tuple(f"evt_{k}" for k in range(1, 6))


def test_occasional_denials_are_not_a_burst() -> None:
    feed = Feed()
    for k in range(20):
        feed.call(A, f"admin_{k % 3}", allowed=False, gap=90)
    assert _only(feed, "escalation.denied_burst") == []


def test_token_requests_beyond_entitlements_and_exchange_widening_are_escalations() -> None:
    feed = Feed()
    feed.observe(
        A,
        "token.denied",
        "token",
        None,
        allowed=False,
        error="invalid_scope",
        widening=False,
        reason="invalid_scope: not entitled to admin",
    )
    feed.observe(
        A,
        "token.denied",
        "token",
        None,
        allowed=False,
        error="invalid_target",
        widening=True,
        reason="invalid_target: widening to audience https://prod",
    )
    assert feed.detectors() == ["escalation.beyond_entitlement", "escalation.exchange_widening"]
    assert {a.severity for a in feed.alerts} == {Severity.HIGH}
    assert feed.alerts[0].evidence.facts["error"] == "invalid_scope"


def test_a_token_refused_for_a_bad_client_assertion_is_not_an_entitlement_probe() -> None:
    feed = Feed()
    feed.observe(A, "token.denied", "token", None, allowed=False, error="invalid_client")
    assert feed.alerts == []


def test_a_token_shown_with_another_key_is_a_critical_stolen_token_alert() -> None:
    feed = Feed()
    feed.observe(A, "token.issued", "token", "agent::x", jti="tok_1", jkt="KEY-A")
    feed.observe(
        A,
        "api.request.rejected",
        "authenticate",
        None,
        allowed=False,
        refusal="key_mismatch",
        reason="invalid_dpop_proof: proof key does not match the token's cnf.jkt",
        jkt="KEY-B",
    )
    [alert] = _only(feed, "escalation.stolen_token")
    assert alert.severity is Severity.CRITICAL
    assert alert.evidence.facts["bound_jkt"] == "KEY-A"
    assert alert.evidence.facts["presented_jkt"] == "KEY-B"


def test_rate_limited_refusals_are_not_escalation() -> None:
    feed = Feed()
    for _ in range(10):
        feed.observe(
            A,
            "api.request.rejected",
            resource="Tool::search",
            allowed=False,
            refusal="rate_limited",
            gap=30,
        )
    assert [a for a in feed.alerts if a.category is Category.ESCALATION] == []


# -- unexpected use -------------------------------------------------------------------------


def test_a_pair_new_to_a_warm_agent_and_its_peers_is_medium() -> None:
    feed = Feed()
    benign(feed, A, 60)
    assert feed.alerts == []
    feed.call(A, "export_all_customers", session="x")
    [alert] = _only(feed, "unexpected_use.new_pair")
    assert alert.severity is Severity.MEDIUM
    facts = alert.evidence.facts
    assert (facts["uses"], facts["pair"]) == (0, "invoke_tool@Tool::export_all_customers")
    assert facts["calls"] > 40


def test_a_pair_new_to_the_agent_but_common_among_peers_is_low() -> None:
    agents = ("agt_p1", "agt_p2", "agt_p3", A)
    feed = Feed(profiles={a: info(a) for a in agents})
    for seed, agent in enumerate(agents):
        benign(feed, agent, 60, seed=seed)
    for peer in agents[:2]:
        feed.call(peer, "refund", session="r")
    feed.alerts.clear()
    feed.call(A, "refund", session="r")
    [alert] = _only(feed, "unexpected_use.new_pair")
    assert alert.severity is Severity.LOW
    assert alert.evidence.facts["peer_adopters"] == 2
    assert alert.evidence.facts["peer_agents"] == 3


def test_a_new_pair_during_warm_up_is_not_judged_by_the_baseline() -> None:
    feed = Feed()
    benign(feed, A, 3)
    feed.call(A, "export_all_customers")
    assert feed.alerts == []


def test_an_undeclared_action_fires_from_the_first_call_without_warm_up() -> None:
    declared = Expectations(actions=("invoke_tool@Tool::kb_*", "GET"))
    feed = Feed(profiles={A: info(A, expectations=declared)})
    assert feed.call(A, "kb_search") == []
    assert feed.observe(A, action="GET", resource="Endpoint::tickets/1") == []
    [alert] = feed.call(A, "delete_everything")
    assert alert.detector == "unexpected_use.undeclared"
    assert alert.severity is Severity.HIGH
    assert alert.evidence.facts["declared"] == ["invoke_tool@Tool::kb_*", "GET"]


def test_a_declared_action_is_never_unexpected_even_if_new_to_the_baseline() -> None:
    declared = Expectations(actions=("invoke_tool",))
    feed = Feed(profiles={A: info(A, expectations=declared)})
    benign(feed, A, 60)
    feed.call(A, "brand_new_tool")
    assert _only(feed, "unexpected_use.new_pair") == []


# -- sequences ------------------------------------------------------------------------------


def test_an_improbable_transition_under_the_learned_model_fires() -> None:
    feed = Feed(cfg=config(sequence={"min_probability": 0.02}))
    benign(feed, A, 200)
    assert feed.alerts == []
    # crm_lookup is always followed by a search or a reply, never by reading a ticket
    feed.call(A, "crm_lookup", session="odd")
    feed.observe(A, action="GET", resource="Endpoint::tickets/5", session="odd")
    [alert] = _only(feed, "sequence.improbable_transition")
    facts = alert.evidence.facts
    assert facts["previous"] == "invoke_tool@Tool::crm_lookup"
    assert facts["call"] == "GET@Endpoint::tickets/*"
    assert facts["transitions_seen"] == 0
    assert facts["probability"] < 0.02


def test_a_usual_transition_is_not_improbable() -> None:
    feed = Feed(cfg=config(sequence={"min_probability": 0.02}))
    benign(feed, A, 200)
    feed.call(A, "kb_search", session="usual")
    feed.observe(A, action="GET", resource="Endpoint::tickets/77", session="usual")
    assert feed.alerts == []


WORKFLOW = Expectations(
    workflow={
        "*start": ("invoke_tool@Tool::kb_search",),
        "invoke_tool@Tool::kb_search": ("GET", "invoke_tool@Tool::reply"),
        "GET": ("GET", "invoke_tool@Tool::reply"),
    }
)


def test_a_transition_that_breaks_the_declared_workflow_fires_at_once() -> None:
    feed = Feed(profiles={A: info(A, expectations=WORKFLOW)})
    feed.call(A, "kb_search", session="w")
    [alert] = feed.call(A, "delete_tickets", session="w")
    assert alert.detector == "sequence.workflow_violation"
    assert alert.severity is Severity.HIGH
    assert alert.evidence.facts["allowed_next"] == ["GET", "invoke_tool@Tool::reply"]
    [start] = feed.call(A, "reply", session="other")
    assert start.evidence.facts["previous"] is None


def test_a_session_that_follows_the_declared_workflow_is_quiet() -> None:
    feed = Feed(profiles={A: info(A, expectations=WORKFLOW)})
    feed.call(A, "kb_search", session="w")
    feed.observe(A, action="GET", resource="Endpoint::tickets/1", session="w")
    feed.observe(A, action="GET", resource="Endpoint::tickets/2", session="w")
    feed.call(A, "reply", session="w")
    assert feed.alerts == []


# -- boundaries -----------------------------------------------------------------------------


def test_a_staging_agent_touching_production_is_a_boundary_crossing() -> None:
    feed = Feed(profiles={A: info(A, environment="staging")})
    assert feed.call(A, environment="staging") == []
    [alert] = feed.call(A, environment="production")
    assert alert.detector == "boundary.environment"
    assert alert.severity is Severity.HIGH
    assert alert.evidence.facts == {
        "observed": "production",
        "expected": "staging",
        "rule": "agent environment",
    }


def test_declared_environments_take_precedence_over_the_agents_own() -> None:
    declared = Expectations(environments=("staging", "production"))
    feed = Feed(profiles={A: info(A, environment="staging", expectations=declared)})
    assert feed.call(A, environment="production") == []
    [alert] = feed.call(A, environment="dev")
    assert alert.detector == "boundary.environment"
    assert alert.evidence.facts["expected"] == ["production", "staging"]


@pytest.mark.parametrize(
    ("field", "declared", "inside", "outside"),
    [
        ("tenant", {"tenants": ("acme",)}, "acme", "globex"),
        ("data_domain", {"data_domains": ("support",)}, "support", "payroll"),
        ("host", {"hosts": ("*.internal.example",)}, "crm.internal.example", "evil.example"),
    ],
)
def test_values_outside_the_declared_ones_fire_from_the_first_call(
    field: str, declared: dict[str, tuple[str, ...]], inside: str, outside: str
) -> None:
    feed = Feed(profiles={A: info(A, expectations=Expectations(**declared))})  # type: ignore[arg-type]
    assert feed.call(A, **{field: inside}) == []
    [alert] = feed.call(A, **{field: outside})
    assert alert.detector == f"boundary.{field}"
    assert alert.evidence.facts["observed"] == outside


def test_a_host_the_warm_agent_never_used_is_a_medium_boundary_alert() -> None:
    feed = Feed()
    benign(feed, A, 60)
    [alert] = feed.call(A, "kb_search", host="paste.evil.example")
    assert alert.detector == "boundary.new_host"
    assert alert.severity is Severity.MEDIUM
    assert alert.evidence.facts["known"] == ["tickets.internal.example"]


def test_a_new_host_during_warm_up_is_learned_not_flagged() -> None:
    feed = Feed()
    benign(feed, A, 2)
    assert feed.call(A, "kb_search", host="other.internal.example") == []


# -- velocity -------------------------------------------------------------------------------


def test_a_runaway_loop_fires_at_the_threshold_within_a_second() -> None:
    feed = Feed()
    fired_at = None
    for k in range(500):
        if feed.call(A, "search", gap=0.002) and fired_at is None:
            fired_at = k + 1
    assert fired_at == 15  # well within the 50 actions / 1 second bound
    [alert] = _only(feed, "velocity.runaway_loop")  # one incident, one alert
    facts = alert.evidence.facts
    assert facts["repeats"] == 15
    assert facts["seconds"] < 1
    assert len(alert.evidence.events) == 15


def test_a_loop_of_refused_calls_is_still_a_runaway_loop() -> None:
    feed = Feed()
    for _ in range(20):
        feed.observe(
            A,
            "api.request.rejected",
            resource="Tool::search",
            allowed=False,
            refusal="rate_limited",
            gap=0.01,
        )
    assert "velocity.runaway_loop" in feed.detectors()


def test_steady_polling_below_the_loop_rate_is_not_a_loop() -> None:
    feed = Feed()
    for _ in range(600):  # every 2 s for 20 minutes: 5 per 10 s, under 15
        feed.call(A, "status", gap=2)
    assert _only(feed, "velocity.runaway_loop") == []


def test_calls_above_the_declared_ceiling_fire_without_warm_up() -> None:
    declared = Expectations(max_calls_per_minute=10)
    feed = Feed(profiles={A: info(A, expectations=declared)})
    feed.wait(60 - feed.t.second)  # start of a minute
    tools = ["a", "b", "c", "d"]
    for k in range(10):
        assert feed.call(A, tools[k % 4], gap=1) == []
    [alert] = feed.call(A, "a", gap=1)
    assert alert.detector == "velocity.rate_ceiling"
    assert alert.evidence.facts["calls_this_minute"] == 11


def test_a_rate_spike_against_the_learned_rate_fires() -> None:
    feed = Feed()
    benign(feed, A, 80)
    assert feed.alerts == []
    feed.wait(120)
    known = ["kb_search", "crm_lookup", "reply"]
    for k in range(100):  # the same known tools, 100 in a minute
        feed.call(A, known[k % 3], session=f"burst{k}", gap=0.5)
    [alert] = _only(feed, "velocity.rate_spike")
    facts = alert.evidence.facts
    assert facts["calls_this_minute"] > facts["threshold"] >= 30
    assert facts["baseline_mean"] < 10


def test_a_burst_of_sub_agent_spawns_fires_and_a_few_do_not() -> None:
    feed = Feed()
    for k in range(9):
        feed.observe(A, "agent.created", "spawn_agent", f"Agent::c{k}", gap=3)
    assert feed.alerts == []
    [alert] = feed.observe(A, "agent.created", "spawn_agent", "Agent::c9", gap=3)
    assert alert.detector == "velocity.spawn_burst"
    assert alert.evidence.facts["spawns"] == 10
    assert len(alert.evidence.events) == 10


def test_a_declared_spawn_ceiling_replaces_the_default_burst_rule() -> None:
    declared = Expectations(max_spawns_per_hour=3)
    feed = Feed(profiles={A: info(A, expectations=declared)})
    feed.wait(3600 - feed.t.minute * 60)
    for k in range(3):
        assert feed.observe(A, "agent.created", "spawn_agent", f"Agent::c{k}", gap=60) == []
    [alert] = feed.observe(A, "agent.created", "spawn_agent", "Agent::c4", gap=60)
    assert alert.detector == "velocity.spawn_ceiling"
    assert alert.evidence.facts["spawns_this_hour"] == 4


def test_an_exchange_with_a_stolen_actor_token_is_a_critical_stolen_token_alert() -> None:
    """The actor token verified (it is the agent's) but the proof came from another key."""
    feed = Feed()
    feed.observe(
        A,
        "token.denied",
        "token",
        None,
        allowed=False,
        error="invalid_dpop_proof",
        refusal="key_mismatch",
        reason="invalid_dpop_proof: actor token not bound to the proof key",
    )
    stolen = _only(feed, "escalation.stolen_token")
    assert len(stolen) == 1
    assert stolen[0].severity is Severity.CRITICAL
