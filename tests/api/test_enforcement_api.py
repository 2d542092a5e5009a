"""The control plane feeding remote enforcement points, on a real server and both
databases: the policy bundle (decisions from it match the control plane's, 304 while
nothing changed, a held long poll answered by the change itself), and the ingest of
gateways' audit events (strict, redacted, idempotent, durable, in the trail)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from tests.api.oauth_support import OAuthLive, oauth_live

from agentiam.core.access.admin_keys import Role
from agentiam.core.audit.events import (
    Actor,
    ActorType,
    AuditEvent,
    Outcome,
    ResourceRef,
    TraceContext,
)
from agentiam.core.policy.authorizer import Authorizer, AuthzRequest
from agentiam.core.policy.bundle import load_bundle, time_zone_of
from agentiam.core.policy.model import EntityRef
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
BUNDLE = "/v1/enforcement/bundle"
INGEST = "/v1/audit/ingest"
ALLOW_BANK = (
    'permit (principal is Agent, action == Action::"invoke_tool", resource in McpServer::"bank") '
    'when { principal.environment == "production" };'
)  # fmt: skip
# Overflows on every evaluation: a forbid that errors, which must deny (fail closed).
FORBID_ERRORING = (
    'forbid (principal, action == Action::"invoke_tool", resource == Tool::"loose") '
    "when { context.request_rate * 9223372036854775807 > 0 };"
)  # fmt: skip


@pytest.fixture
def live(database_url: str) -> Iterator[OAuthLive]:
    with oauth_live(database_url) as running:
        yield running


def _client(live: OAuthLive, role: Role) -> httpx.Client:
    sources = ["gateway/edge-1"] if role is Role.VERIFIER else []  # where _event comes from
    key = live.container.admin_keys.create(
        CTX, name=f"{role.value} key", role=role, sources=sources
    ).secret
    return httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture
def gateway(live: OAuthLive) -> Iterator[httpx.Client]:
    """What an enforcement point holds: a verifier key."""
    with _client(live, Role.VERIFIER) as client:
        yield client


@pytest.fixture
def admin(live: OAuthLive) -> Iterator[httpx.Client]:
    with live.admin_client() as client:
        yield client


def _catalog(admin: httpx.Client) -> None:
    for path, body in (
        ("/v1/resources/McpServer/bank", {"attributes": {"name": "bank"}, "tags": {"t": "1"}}),
        (
            "/v1/resources/Tool/transfer",
            {
                "attributes": {"classification": "internal"},
                "parents": [{"type": "McpServer", "id": "bank"}],
            },
        ),
        ("/v1/resources/Tool/loose", {"parents": [{"type": "McpServer", "id": "bank"}]}),
    ):
        assert admin.put(path, json=body).status_code == 200, path
    assert admin.put("/v1/policies/bank", json={"text": ALLOW_BANK}).status_code == 200
    assert admin.put("/v1/policies/guard", json={"text": FORBID_ERRORING}).status_code == 200


# -- the bundle -------------------------------------------------------------------------


def test_decisions_from_the_bundle_match_the_control_plane(
    live: OAuthLive, admin: httpx.Client, gateway: httpx.Client
) -> None:
    _catalog(admin)
    r = gateway.get(BUNDLE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["etag"] == f'"{body["etag"]}"'
    assert r.headers["cache-control"] == "no-store"
    assert {p["id"] for p in body["bundle"]["policies"]} == {"bank", "guard"}
    assert body["policy_version"] == body["bundle"]["policy_version"]
    engine, entities = load_bundle(body["bundle"])
    local = Authorizer(engine, entities, zone=time_zone_of(body["bundle"]))
    for tool in ("transfer", "loose", "missing"):
        for principal in (live.agent_id, "agt_01JF0000000000000000000000"):
            answer = admin.post(
                "/v1/authorize",
                json={
                    "principal": {"type": "Agent", "id": principal},
                    "action": "invoke_tool",
                    "resource": {"type": "Tool", "id": tool},
                },
            ).json()
            mine = local.decide(
                AuthzRequest(EntityRef("Agent", principal), "invoke_tool", EntityRef("Tool", tool))
            )
            assert mine.decision == answer["decision"], (tool, principal)
            assert sorted(mine.policies) == sorted(answer["policies"])
            assert sorted(mine.reasons) == sorted(answer["reasons"])
    # the catalogued tool is allowed, the unclassified one denied by the erroring forbid
    assert local.decide(
        AuthzRequest(
            EntityRef("Agent", live.agent_id), "invoke_tool", EntityRef("Tool", "transfer")
        )
    ).allowed
    # every bundle read is audited, naming the bundle
    events = admin.get("/v1/audit/events", params={"action": "enforcement.bundle"}).json()
    assert events["items"][-1]["resource"] == {"type": "policy_bundle", "id": body["etag"]}


def test_an_unchanged_bundle_is_304_with_its_etag(gateway: httpx.Client) -> None:
    etag = gateway.get(BUNDLE).json()["etag"]
    r = gateway.get(BUNDLE, params={"etag": etag})
    assert r.status_code == 304
    assert r.headers["etag"] == f'"{etag}"'
    assert r.content == b""
    started = time.monotonic()
    r = gateway.get(BUNDLE, params={"etag": f'"{etag}"', "wait": "0.4"})  # quoted, as sent
    assert r.status_code == 304
    assert time.monotonic() - started >= 0.35  # held for the wait, then "still current"
    r = gateway.get(BUNDLE, params={"etag": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "wait": "20"})
    assert r.status_code == 200  # a different etag is answered at once


@pytest.mark.parametrize(
    "params",
    [
        {"etag": "not an etag"},
        {"etag": "x" * 65},
        {"wait": "soon"},
        {"wait": "-1"},
        {"wait": "26"},
        {"wait": "nan"},
        {"wait": "inf"},
    ],
)
def test_bad_etag_or_wait_is_a_400_problem(gateway: httpx.Client, params: dict[str, str]) -> None:
    r = gateway.get(BUNDLE, params=params)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == 400
    assert problem["type"].endswith("/bad-request")
    assert "Traceback" not in r.text


def _held_poll(
    gateway: httpx.Client, live: OAuthLive, etag: str
) -> tuple[threading.Thread, dict[str, Any]]:
    """Start a 20 s long poll and return once the server holds it."""
    result: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        result["response"] = gateway.get(BUNDLE, params={"etag": etag, "wait": "20"})
        result["done"] = time.monotonic()
        result["started"] = started

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while live.container.enforcement.waiting == 0:
        assert time.monotonic() < deadline, "the long poll was never held"
        time.sleep(0.01)
    return thread, result


def test_a_policy_change_answers_the_held_long_poll(
    live: OAuthLive, admin: httpx.Client, gateway: httpx.Client
) -> None:
    etag = gateway.get(BUNDLE).json()["etag"]
    thread, result = _held_poll(gateway, live, etag)
    time.sleep(0.3)
    assert "response" not in result  # nothing changed: still held
    changed = time.monotonic()
    assert admin.put("/v1/policies/bank", json={"text": ALLOW_BANK}).status_code == 200
    thread.join(timeout=25)
    r = result["response"]
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["etag"] != etag
    assert [p["id"] for p in body["bundle"]["policies"]] == ["bank"]
    # Answered because of the change, long before the 20 s wait would have run out.
    assert result["done"] - changed < 10
    assert result["done"] - result["started"] < 15
    assert live.container.enforcement.waiting == 0


def test_a_suspension_answers_the_held_long_poll(
    live: OAuthLive, admin: httpx.Client, gateway: httpx.Client
) -> None:
    """A registry change reaches gateways through the decision point's refresh poll."""
    etag = gateway.get(BUNDLE).json()["etag"]
    thread, result = _held_poll(gateway, live, etag)
    changed = time.monotonic()
    r = admin.post(f"/v1/agents/{live.agent_id}/suspend", json={"reason": "incident 7"})
    assert r.status_code == 200, r.text
    thread.join(timeout=25)
    r = result["response"]
    assert r.status_code == 200
    agents = {a["id"]: a for a in r.json()["bundle"]["agents"]}
    assert agents[live.agent_id]["status"] == "suspended"
    assert result["done"] - changed < 10


# -- audit ingest -----------------------------------------------------------------------


def _event(n: int, **details: Any) -> dict[str, Any]:
    return AuditEvent.create(
        type="tool.call",
        actor=Actor(ActorType.AGENT, "agt_01JF0000000000000000000000"),
        action="invoke_tool",
        source="gateway/edge-1",
        trace=TraceContext.new(),
        now=datetime.now(UTC) - timedelta(seconds=n),
        outcome=Outcome.SUCCESS,
        resource=ResourceRef("Tool", "transfer"),
        agent_id="agt_01JF0000000000000000000000",
        details={"n": n, **details},
    ).to_dict()


def _stored(admin: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    r = admin.get("/v1/audit/events", params={"limit": 200, **params})
    assert r.status_code == 200
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_ingest_is_durable_idempotent_redacted_and_in_the_trail(
    live: OAuthLive, admin: httpx.Client, gateway: httpx.Client
) -> None:
    events = [_event(i) for i in range(5)]
    # A secret the gateway failed to redact is caught by the built-in guard.
    events[0]["details"] = {"api_key": "sk-live-123", "nested": {"password": "hunter2"}, "n": 0}
    r = gateway.post(INGEST, json={"events": events})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 5, "duplicates": 0}
    # the retry after a crash, and a batch overlapping it: skipped, never an error
    assert gateway.post(INGEST, json={"events": events}).json() == {
        "accepted": 0,
        "duplicates": 5,
    }
    more = [_event(10), _event(11)]
    r = gateway.post(INGEST, json={"events": [events[4], *more, more[0]]})
    assert r.json() == {"accepted": 2, "duplicates": 2}

    stored = _stored(admin, type="tool.call")
    assert [e["event_id"] for e in stored] == [e["event_id"] for e in [*events, *more]]
    first = stored[0]
    assert first["details"]["api_key"] == "[redacted]"
    assert first["details"]["nested"]["password"] == "[redacted]"
    assert "sk-live-123" not in str(stored)
    assert "hunter2" not in str(stored)
    assert stored[1] == events[1]  # otherwise stored exactly as sent

    # one audit.ingested record per request, naming the count and the enforcement point
    ingested = _stored(admin, type="audit.ingested")
    assert [(e["details"]["accepted"], e["details"]["duplicates"]) for e in ingested] == [
        (5, 0),
        (0, 5),
        (2, 2),
    ]
    assert ingested[0]["resource"] == {"type": "enforcement_point", "id": "gateway/edge-1"}
    assert ingested[0]["details"]["sources"] == ["gateway/edge-1"]
    assert ingested[0]["actor"]["type"] == "admin_key"

    # integrated into the tamper-evident trail, which verifies
    trail = live.container.audit_trail
    # the background loops integrate too; on PostgreSQL a pass that finds another
    # holding the integrator's lock returns at once, so sign until the head covers it
    for _ in range(100):
        trail.integrate_all()
        trail.sign_head(force=True)
        proof = admin.get("/v1/audit/proofs/inclusion", params={"event_id": events[2]["event_id"]})
        if proof.status_code != 404:
            break
        time.sleep(0.05)
    assert trail.verify().ok
    assert proof.status_code == 200, proof.text


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "Traceback" not in r.text
    body: dict[str, Any] = r.json()
    return body


def _without(event: dict[str, Any], member: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != member}


@pytest.mark.parametrize(
    ("change", "member"),
    [
        (lambda e: _without(e, "trace"), "events[1].trace"),
        (lambda e: {**e, "extra": 1}, "events[1].extra"),
        (lambda e: {**e, "schema_version": "2"}, "events[1].schema_version"),
        (lambda e: {**e, "event_id": "evt_1"}, "events[1].event_id"),
        (lambda e: {**e, "outcome": "maybe"}, "events[1].outcome"),
        (
            lambda e: {**e, "actor": {"type": "robot", "id": "x", "role": None}},
            "events[1].actor.type",
        ),
        (
            lambda e: {**e, "trace": {"trace_id": "0" * 32, "span_id": "1" * 16}},
            "events[1].trace.trace_id",
        ),
        (lambda e: {**e, "risk_score": 101}, "events[1].risk_score"),
        (lambda e: {**e, "details": []}, "events[1].details"),
        (lambda e: {**e, "time": "yesterday"}, "events[1].time"),
        (lambda e: "not an event", "events[1]"),
        (lambda e: {**e, "source": "control-plane/admin-api"}, "events[1].source"),
        (lambda e: {**e, "source": "gateway/"}, "events[1].source"),
        (
            lambda e: {**e, "time": (datetime.now(UTC) + timedelta(minutes=6)).isoformat()},
            "events[1].time",
        ),
    ],
)
def test_a_malformed_event_refuses_the_whole_batch_naming_it(
    admin: httpx.Client, gateway: httpx.Client, change: Any, member: str
) -> None:
    good, bad = _event(1), _event(2)
    r = gateway.post(INGEST, json={"events": [good, change(bad)]})
    problem = _problem(r, 422)
    assert problem["detail"].startswith(member + ":"), problem
    assert problem["errors"][0]["loc"][:3] == ["body", "events", "1"]
    assert _stored(admin, type="tool.call") == []  # nothing of the batch was stored


def test_a_time_a_little_ahead_is_accepted(gateway: httpx.Client) -> None:
    event = _event(0)
    event["time"] = (datetime.now(UTC) + timedelta(minutes=4)).isoformat()
    assert gateway.post(INGEST, json={"events": [event]}).json()["accepted"] == 1


def test_batches_are_bounded(gateway: httpx.Client) -> None:
    _problem(gateway.post(INGEST, json={"events": []}), 422)
    one = _event(0)
    too_many = [{**one, "event_id": f"evt_01JF{i:022d}"} for i in range(1001)]
    problem = _problem(gateway.post(INGEST, json={"events": too_many}), 413)
    assert "1000" in problem["detail"]
    huge = {**one, "details": {"blob": "x" * (4 * 1024 * 1024)}}
    _problem(gateway.post(INGEST, json={"events": [huge]}), 413)
    big = {**one, "details": {"blob": "x" * (70 * 1024)}}
    assert _problem(gateway.post(INGEST, json={"events": [big]}), 422)["detail"].startswith(
        "events[0].details:"
    )


# -- permissions ------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.OPERATOR])
def test_only_enforcement_points_and_admins_sync_and_ingest(live: OAuthLive, role: Role) -> None:
    with _client(live, role) as other:
        _problem(other.get(BUNDLE), 403)
        _problem(other.post(INGEST, json={"events": [_event(0)]}), 403)
    with live.admin_client() as admin:
        assert admin.get(BUNDLE).status_code == 200
        assert admin.post(INGEST, json={"events": [_event(0)]}).status_code == 200
    with httpx.Client(base_url=live.url, timeout=10) as anonymous:
        assert anonymous.get(BUNDLE).status_code == 401
        assert anonymous.post(INGEST, json={"events": []}).status_code == 401


@pytest.mark.parametrize(
    "forged",
    ["token.denied", "token.issued", "agent.created", "approval.approved", "detection.alert"],
)
def test_an_enforcement_point_cannot_ship_control_plane_facts(
    gateway: httpx.Client, forged: str
) -> None:
    """A verifier key writes what an enforcement point records (decisions, refusals,
    calls), never token, registry, approval or detection facts: a forged
    ``token.denied`` naming a victim would otherwise raise alerts and containment."""
    event = {**_event(1), "type": forged}
    r = gateway.post(INGEST, json={"events": [event]})
    assert r.status_code == 422, r.text
    assert "events[0].type" in r.text


def test_every_event_type_an_enforcement_point_writes_is_accepted_at_ingest() -> None:
    """The allow-list must cover what the gateways and the guard record, or their
    shipper would be refused and hold every later event back."""
    from agentiam.adapters.gateway.enforcer import STREAM_OPENED_EVENT_TYPE
    from agentiam.adapters.gateway.mcp_proxy import LIST_EVENT
    from agentiam.adapters.gateway.runtime import DISCARD_EVENT_TYPE
    from agentiam.services.decisions import DECISION_EVENT
    from agentiam.services.enforcement_sync import ENFORCEMENT_EVENT_TYPES

    written = {LIST_EVENT, STREAM_OPENED_EVENT_TYPE, DECISION_EVENT, "tool.call"}
    written |= {"api.request.rejected"}
    assert written | {DISCARD_EVENT_TYPE} <= ENFORCEMENT_EVENT_TYPES
