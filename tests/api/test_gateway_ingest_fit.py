"""An enforcement point's events reach the trail whatever a caller sent, and one
event can never hold the others back. Its events fit what the control plane's ingest
accepts: before, one call with a path segment of 600 characters (the HTTP
gateway puts it in ``resource.id``, ingest takes 512) or 256 tool-argument names of
300 characters (``details`` over 64 KiB) made an event ingest refused with 422, and
the spool sent that batch again forever, holding every later event back. And what
ingest refuses anyway is set aside, not sent again. Real enforcer, spool and
shipper, against a live control plane."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from tests.api.oauth_support import oauth_live
from tests.unit.gateway_support import GATEWAY, METADATA, Parties

from agentiam.adapters.gateway.enforcer import Call, Enforcer
from agentiam.adapters.gateway.http_proxy import load_config, split_path
from agentiam.adapters.gateway.mcp_proxy import tool_call
from agentiam.adapters.gateway.runtime import _Shipper
from agentiam.adapters.gateway.spool import REJECTED_FILE, AuditSpool, SpoolHealth
from agentiam.config import Limits
from agentiam.core.access.admin_keys import Role
from agentiam.core.audit.events import TraceContext
from agentiam.core.audit.ingest_limits import MAX_DETAILS_BYTES, fit_for_ingest
from agentiam.core.delegation.authorization_details import ApiCall
from agentiam.core.ids import new_id
from agentiam.ports import AuditQuery
from agentiam.services.context import CallContext
from agentiam.services.enforcement_sync import parse_ingested_event

CTX = CallContext.system("test")
ALLOW = "permit (principal, action, resource);"


def _http_call(path: str) -> Call:
    """The Call the HTTP gateway builds for a route whose resource id holds a path
    placeholder (the docs' example)."""
    config = load_config(
        {
            "name": "billing-gw",
            "public_url": GATEWAY,
            "control_plane": {"url": "http://127.0.0.1:1"},
            "spool": {"directory": "/tmp/unused"},
            "upstreams": {"billing": {"url": "http://127.0.0.1:2/api"}},
            "routes": [
                {
                    "name": "invoices.read",
                    "match": {"method": "GET", "path": "/v1/invoices/{id}"},
                    "upstream": "billing",
                    "action": "GET",
                    "resource": {"type": "Endpoint", "id": "invoice-{id}"},
                }
            ],
        }
    )
    route = config.routes[0]
    values = route.match(split_path(path.encode()))
    assert values is not None
    resource = route.resource(values)
    detail = ApiCall(
        action="GET", url=GATEWAY + path, datatype=resource.type, identifier=resource.id
    )
    return Call(action=route.action, resource=resource, detail=detail, tool=route.name)


HOSTILE = {
    # 256 top-level arguments (the MCP gateway's most) with names of 300 characters
    "mcp-argument-names": lambda: tool_call(
        "search", {f"{i:03d}" + "a" * 297: 1 for i in range(256)}, location=GATEWAY
    ),
    "http-long-path-segment": lambda: _http_call("/v1/invoices/" + "7" * 600),
}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_caller_sized_event_ships_and_does_not_hold_the_spool_back(
    database_url: str, tmp_path: Path, kind: str
) -> None:
    parties = Parties(ALLOW)
    spool = AuditSpool(tmp_path / "spool", None, backoff_initial=0.2, backoff_max=0.5)
    enforcer = Enforcer("test-gw", parties.link, spool, resource_metadata=METADATA)
    trace = TraceContext.new()
    url = GATEWAY + "/mcp"
    headers = parties.headers("POST", url)
    access = enforcer.authenticate(**headers, method="POST", url=url, trace=trace)
    hostile = enforcer.decide(access, HOSTILE[kind](), trace=trace)
    normal = enforcer.decide(access, tool_call("search", {"q": 1}, location=GATEWAY), trace=trace)
    assert hostile.decision_id
    assert normal.allowed

    with oauth_live(database_url) as live:
        key = live.container.admin_keys.create(
            CTX, name="gw", role=Role.VERIFIER, sources=["gateway/test-gw"]
        ).secret
        _ship(spool, live.url, key)
        health = spool.health()
        stored = {
            e.decision_id: e
            for e in live.container.audit.find(AuditQuery(type="authz.decision", limit=10)).items
        }
    spool.close()
    assert (health.pending_events, health.shipped_events) == (0, 2), health
    assert health.consecutive_failures == 0
    assert {hostile.decision_id, normal.decision_id} <= stored.keys()
    cut = stored[hostile.decision_id].details["truncated"]
    if kind == "http-long-path-segment":
        assert cut == ["resource.id"]
        resource = stored[hostile.decision_id].resource
        assert resource is not None
        assert len(resource.id) == 512
        assert resource.id.startswith("invoice-777")
        assert resource.id.endswith("…")
    else:
        assert "details.argument_names" in cut
        assert stored[hostile.decision_id].details["decision"] == "allow"
    assert "truncated" not in stored[normal.decision_id].details


def _event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": "1",
        "event_id": "evt_01M87X313QPSPYDAWH2X1VVZKF",
        "time": "2026-11-24T23:08:38.903600Z",
        "type": "authz.decision",
        "outcome": "success",
        "actor": {"type": "agent", "id": "agt_01M87X2FHD7A7788KNQJX7GGE4", "role": None},
        "action": "GET",
        "resource": {"type": "Endpoint", "id": "items"},
        "source": "gateway/bench",
        "agent_id": "agt_01M87X2FHD7A7788KNQJX7GGE4",
        "initiating_human": None,
        "delegation_chain": ["agt_01M87X2FHD7A7788KNQJX7GGE4"],
        "decision_id": "dec_01M87X313Q3XBG5A2TWNKHHE5H",
        "policy_version": "1",
        "risk_score": 50.0,
        "trace": {"trace_id": "6d258b505781cc0c13e51a0385f2762b", "span_id": "b995e41ad2740d97"},
        "reason": "permitted by policy bench",
        "details": {"decision": "allow", "status": 200, "arguments": {}},
    }
    event.update(changes)
    return event


def test_what_fits_is_left_alone_and_what_does_not_is_cut_to_what_ingest_takes() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 24, 23, 9, tzinfo=UTC)
    plain = _event()
    assert fit_for_ingest(plain, encoded_bytes=1000) is plain
    wide = "é" * 30_000  # 60 KB as UTF-8, but 180 KB as ingest measures it (escaped)
    big = _event(
        action="A" * 600,
        actor={"type": "agent", "id": "x" * 300, "role": "r" * 65},
        reason="why " * 600,
        delegation_chain=[f"agt_{i}" for i in range(40)],
        details={"decision": "allow", "status": 200, "arguments": {"note": wide}},
    )
    fitted = fit_for_ingest(big, encoded_bytes=200_000)
    assert big["action"] == "A" * 600  # the original is not changed
    parsed = parse_ingested_event(fitted, 0, now=now)  # ingest accepts it
    assert sorted(parsed.details["truncated"]) == [
        "action", "actor.id", "actor.role", "delegation_chain", "details.arguments", "reason",
    ]  # fmt: skip
    assert parsed.details["decision"] == "allow"
    assert parsed.details["status"] == 200
    assert len(parsed.action) == 512
    assert len(parsed.delegation_chain) == 32
    # a large details member that ingest would still take is kept
    near = _event(details={"arguments": {"note": "x" * (MAX_DETAILS_BYTES // 2)}})
    assert fit_for_ingest(near, encoded_bytes=MAX_DETAILS_BYTES) is near


# -- what ingest refuses anyway: set aside, never holding the spool back ------------------


def _spooled(spool: AuditSpool, events: list[dict[str, Any]]) -> None:
    for event in events:
        spool.append([event])


def _ship(spool: AuditSpool, url: str, key: str, *, seconds: float = 10.0) -> None:
    """Ship on a loop as a gateway does, until nothing is pending or ``seconds``."""
    shipper = _Shipper(url, key, 5.0)

    async def main() -> None:
        task = asyncio.create_task(shipper.run(spool))
        deadline = time.monotonic() + seconds
        while spool.health().pending_events and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())


def _ship_spooled(
    database_url: str, tmp_path: Path, events: list[dict[str, Any]], **settings: Any
) -> tuple[SpoolHealth, set[str]]:
    """Spool ``events``, ship them to a live control plane (``settings`` its own) with a
    verifier key; the spool's health after, and the event ids the trail stored."""
    spool = AuditSpool(tmp_path / "spool", None, backoff_initial=0.2, backoff_max=0.5)
    _spooled(spool, events)
    with oauth_live(database_url, **settings) as live:
        key = live.container.admin_keys.create(
            CTX, name="gw", role=Role.VERIFIER, sources=["gateway/bench"]
        ).secret
        _ship(spool, live.url, key)
        stored = {e.event_id for e in live.container.audit.find(AuditQuery(limit=100)).items}
    health = spool.health()
    spool.close()
    return health, stored


def _good() -> dict[str, Any]:
    from datetime import UTC, datetime

    return _event(
        event_id=new_id("event"),
        time=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        decision_id=None,
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_event_ingest_refuses_is_set_aside_and_the_rest_ship(
    database_url: str, tmp_path: Path
) -> None:
    """An event ingest refuses for what it holds (here a control-plane-only type, which
    no fitting can mend) is kept in rejected.jsonl; the events before and after it in
    the same batch are stored, and shipping goes on."""
    bad = _good() | {"type": "token.issued"}
    events = [_good(), _good(), _good(), bad, _good(), _good()]
    health, stored = _ship_spooled(database_url, tmp_path, events)
    assert (health.pending_events, health.shipped_events, health.rejected_events) == (0, 5, 1)
    assert {e["event_id"] for e in events if e is not bad} <= stored
    assert bad["event_id"] not in stored
    [kept] = [json.loads(line) for line in (tmp_path / "spool" / REJECTED_FILE).open()]
    assert kept["event"] == bad
    assert "422" in kept["reason"]
    assert "type" in kept["reason"]
    assert oct((tmp_path / "spool" / REJECTED_FILE).stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_batch_too_large_for_ingest_is_split_and_all_of_it_ships(
    database_url: str, tmp_path: Path
) -> None:
    """A 413 names no event (a control plane taking fewer events per request than the
    spool's batch): the batch is halved until ingest takes it, and nothing is set aside."""
    events = [_good() for _ in range(7)]
    health, stored = _ship_spooled(
        database_url, tmp_path, events, limits=Limits(max_ingest_events=2)
    )
    assert (health.pending_events, health.shipped_events, health.rejected_events) == (0, 7, 0)
    assert {e["event_id"] for e in events} <= stored
    assert not (tmp_path / "spool" / REJECTED_FILE).exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_event_from_a_clock_ahead_is_retried_not_set_aside(
    database_url: str, tmp_path: Path
) -> None:
    """Ingest refuses a time more than 5 minutes ahead of its own clock: that is the
    sender's clock, and time catches up, so the event stays first in line."""
    spool = AuditSpool(tmp_path / "spool", None, backoff_initial=0.2, backoff_max=0.5)
    ahead = _good() | {"time": "2099-01-01T00:00:00Z"}
    _spooled(spool, [ahead, _good()])
    with oauth_live(database_url) as live:
        key = live.container.admin_keys.create(
            CTX, name="gw", role=Role.VERIFIER, sources=["gateway/bench"]
        ).secret
        _ship(spool, live.url, key, seconds=1.5)
    health = spool.health()
    spool.close()
    assert (health.pending_events, health.shipped_events, health.rejected_events) == (2, 0, 0)
    assert health.consecutive_failures >= 2
    assert health.last_ship_error == "RuntimeError: ingest answered 422"


def test_details_of_many_small_members_fit_with_a_bounded_list_of_what_was_cut() -> None:
    """20,000 small members: dropping them one by one must land under the limit, and
    the list of what was cut must not itself push the details back over it."""
    from datetime import UTC, datetime

    many = _event(details={f"k{i}": i for i in range(20_000)})
    fitted = fit_for_ingest(many, encoded_bytes=len(json.dumps(many)))
    parsed = parse_ingested_event(fitted, 0, now=datetime(2026, 11, 24, 23, 9, tzinfo=UTC))
    cut = parsed.details["truncated"]
    assert len(cut) == 33
    assert cut[-1].startswith("+")
    assert cut[-1].endswith(" more")
