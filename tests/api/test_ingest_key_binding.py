"""A verifier key bound to enforcement points (``sources``) and agents (``agents``)
may ingest only their events. Before, any verifier key (the one an in-process guard
holds inside an agent's own process, say) could write decisions in any gateway's
name about any agent, and get an innocent agent suspended by detection."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.api.test_gateway_ingest_fit import _ship

from agentiam.adapters.gateway.spool import AuditSpool
from agentiam.core.audit.events import Actor, ActorType, AuditEvent, ResourceRef, TraceContext
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
INGEST = "/v1/audit/ingest"
ALICE, BOB = "agt_01JF0000000000000000000000", "agt_01JF0000000000000000000001"


@pytest.fixture
def live(database_url: str) -> Iterator[OAuthLive]:
    with oauth_live(database_url) as running:
        yield running


def _event(
    source: str, agent: str | None, *, actor: str | None = None, client_id: str | None = None
) -> dict[str, Any]:
    """A decision about ``agent``; ``actor`` an agent acting (default: ``agent``, or
    the anonymous caller), ``client_id`` a refused token's owner in the details."""
    who = actor or agent
    return AuditEvent.create(
        type="authz.decision",
        actor=Actor(ActorType.AGENT, who) if who else Actor(ActorType.ANONYMOUS, "anonymous"),
        action="invoke_tool",
        source=source,
        trace=TraceContext.new(),
        now=datetime.now(UTC),
        resource=ResourceRef("Tool", "transfer"),
        agent_id=agent,
        details={"decision": "allow", **({"client_id": client_id} if client_id else {})},
    ).to_dict()


def _key(admin: httpx.Client, **body: Any) -> tuple[int, dict[str, Any]]:
    r = admin.post("/v1/admin-keys", json={"name": "edge", "role": "verifier", **body})
    return r.status_code, r.json()


def _stored(live: OAuthLive) -> set[str]:
    with live.admin_client() as admin:
        items = admin.get("/v1/audit/events", params={"type": "authz.decision"}).json()["items"]
    return {e["event_id"] for e in items}


def _ingest(live: OAuthLive, secret: str, events: list[dict[str, Any]]) -> httpx.Response:
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {secret}"}) as c:
        return c.post(INGEST, json={"events": events})


def test_a_key_bound_to_an_enforcement_point_ingests_only_its_events(live: OAuthLive) -> None:
    with live.admin_client() as admin:
        status, key = _key(admin, sources=["gateway/edge-1"])
    assert status == 201, key
    assert (key["sources"], key["agents"]) == (["gateway/edge-1"], [])
    own = _event("gateway/edge-1", ALICE)
    assert _ingest(live, key["secret"], [own]).status_code == 200
    # another gateway's name, alone or inside a batch of its own events: all refused
    forged = _event("gateway/billing-gw", BOB)
    for batch in ([forged], [_event("gateway/edge-1", ALICE), forged]):
        r = _ingest(live, key["secret"], batch)
        assert r.status_code == 403, r.text
        assert "gateway/billing-gw" in r.json()["detail"]
        assert not {e["event_id"] for e in batch} & _stored(live)
    assert own["event_id"] in _stored(live)


def test_a_key_bound_to_agents_ingests_only_events_about_them(live: OAuthLive) -> None:
    with live.admin_client() as admin:
        status, key = _key(admin, sources=["guard/alice-tools"], agents=[ALICE])
    assert status == 201, key
    mine = [_event("guard/alice-tools", ALICE), _event("guard/alice-tools", None)]
    assert _ingest(live, key["secret"], mine).status_code == 200
    # naming Bob anywhere detection would charge the event to: agent_id, an agent
    # actor (agent_id left null), or a refusal's details.client_id
    naming_bob = [
        _event("guard/alice-tools", BOB),
        _event("guard/alice-tools", None, actor=BOB),
        _event("guard/alice-tools", None, client_id=BOB),
    ]
    for event in naming_bob:
        r = _ingest(live, key["secret"], [event])
        assert r.status_code == 403, r.text
        assert r.json()["errors"][0]["loc"] == ["body", "events", "0", "source"]
        assert event["event_id"] not in _stored(live)


def test_an_unbound_verifier_key_ingests_for_any_enforcement_point(live: OAuthLive) -> None:
    """A key made unbound on purpose (any_source) ingests for any enforcement point;
    a key with no binding at all is refused (test_h4_verifier_key_binding_required)."""
    with live.admin_client() as admin:
        status, key = _key(admin, any_source=True)
    assert status == 201
    assert (key["sources"], key["agents"]) == ([], [])
    events = [_event("gateway/a", ALICE), _event("guard/b", BOB)]
    assert _ingest(live, key["secret"], events).status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"role": "operator", "sources": ["gateway/x"]}, "verifier key only"),
        ({"sources": ["edge-1"]}, "is not an enforcement point"),
        ({"sources": ["gateway/"]}, "is not an enforcement point"),
        ({"agents": ["alice"]}, "is not an agent id"),
    ],
)
def test_bindings_are_checked_when_the_key_is_made(
    live: OAuthLive, body: dict[str, Any], message: str
) -> None:
    with live.admin_client() as admin:
        status, problem = _key(admin, **body)
    assert status == 422, problem
    assert message in problem["detail"]


def test_the_binding_is_listed_and_audited(live: OAuthLive) -> None:
    key = live.container.admin_keys.create(
        CTX, name="edge", role="verifier", sources=["gateway/edge-1", "gateway/edge-1"]
    )
    assert key.key.sources == ("gateway/edge-1",)  # repeats dropped
    stored = next(k for k in live.container.admin_keys.all() if k.id == key.key.id)
    assert (stored.sources, stored.agents) == (("gateway/edge-1",), ())
    with live.admin_client() as admin:
        listed = admin.get("/v1/admin-keys").json()["items"]
        created = admin.get("/v1/audit/events", params={"type": "admin_key.created"})
    [row] = [k for k in listed if k["id"] == key.key.id]
    assert row["sources"] == ["gateway/edge-1"]
    [event] = [e for e in created.json()["items"] if e["resource"]["id"] == key.key.id]
    assert event["details"]["sources"] == ["gateway/edge-1"]
    assert key.secret not in created.text


def test_an_event_outside_the_binding_is_set_aside_and_the_rest_ship(
    live: OAuthLive, tmp_path: Path
) -> None:
    """A gateway whose key is bound to Alice, called by Bob: ingest refuses Bob's
    event (403 naming it), and the spool sets it aside rather than hold every later
    event back behind it."""
    with live.admin_client() as admin:
        status, key = _key(admin, sources=["gateway/edge-1"], agents=[ALICE])
    assert status == 201
    spool = AuditSpool(tmp_path / "spool", None, backoff_initial=0.2, backoff_max=0.5)
    events = [_event("gateway/edge-1", ALICE), _event("gateway/edge-1", BOB)]
    events.append(_event("gateway/edge-1", ALICE))
    for event in events:
        spool.append([event])
    _ship(spool, live.url, key["secret"])
    health = spool.health()
    spool.close()
    assert (health.pending_events, health.shipped_events, health.rejected_events) == (0, 2, 1)
    stored = _stored(live)
    assert {events[0]["event_id"], events[2]["event_id"]} <= stored
    assert events[1]["event_id"] not in stored
