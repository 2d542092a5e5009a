"""Verifier keys are bound by default (fail closed).

Before, a verifier key made without ``sources`` could ingest events in any enforcement
point's name about any agent: the key an in-process guard holds, inside an agent's
process that may be hijacked, could report decisions as any gateway and get an
innocent agent suspended by detection. Now a verifier key names its sources unless
its creator asks for an unbound one explicitly (``any_source``; CLI ``--any-source``).
Keys made before (``ingest_scope`` NULL) keep working, but are listed as ``legacy``,
and their use is logged once per key and counted on ``/metrics``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from tests.api.oauth_support import OAuthLive, oauth_live
from typer.testing import CliRunner

from agentiam.adapters.storage import tables as t
from agentiam.cli.main import app as cli
from agentiam.core.access.admin_keys import Role
from agentiam.core.audit.events import Actor, ActorType, AuditEvent, ResourceRef, TraceContext
from agentiam.errors import InvalidInput
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
INGEST = "/v1/audit/ingest"
ALICE, BOB = "agt_01JF0000000000000000000000", "agt_01JF0000000000000000000001"
UNBOUND_METRIC = "agentiam_audit_ingest_unbound_key_requests_total"


@pytest.fixture
def live(database_url: str) -> Iterator[OAuthLive]:
    with oauth_live(database_url) as running:
        yield running


def _event(source: str, agent: str | None) -> dict[str, Any]:
    return AuditEvent.create(
        type="authz.decision",
        actor=Actor(ActorType.AGENT, agent) if agent else Actor(ActorType.ANONYMOUS, "anonymous"),
        action="invoke_tool",
        source=source,
        trace=TraceContext.new(),
        now=datetime.now(UTC),
        resource=ResourceRef("Tool", "transfer"),
        agent_id=agent,
        details={"decision": "allow"},
    ).to_dict()


def _ingest(live: OAuthLive, secret: str, events: list[dict[str, Any]]) -> httpx.Response:
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {secret}"}) as c:
        return c.post(INGEST, json={"events": events})


def _listed(live: OAuthLive, key_id: str) -> dict[str, Any]:
    with live.admin_client() as admin:
        items = admin.get("/v1/admin-keys").json()["items"]
    [row] = [k for k in items if k["id"] == key_id]
    return dict(row)


def _unbound_metric(live: OAuthLive) -> dict[str, float]:
    with live.admin_client() as admin:
        text = admin.get("/metrics").text
    found = {}
    for line in text.splitlines():
        if line.startswith(UNBOUND_METRIC + "{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('binding="')[1].split('"')[0]] = float(value)
    return found


def _warnings(caplog: pytest.LogCaptureFixture, prefix: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "agentiam.enforcement"
        and r.levelno == logging.WARNING
        and prefix in r.getMessage()
    ]


# -- creating a verifier key ------------------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"agents": [ALICE]}, {"sources": []}])
def test_a_verifier_key_without_a_binding_is_refused_naming_the_field(
    live: OAuthLive, body: dict[str, Any]
) -> None:
    with live.admin_client() as admin:
        before = admin.get("/v1/admin-keys").json()["items"]
        r = admin.post("/v1/admin-keys", json={"name": "edge", "role": "verifier", **body})
        after = admin.get("/v1/admin-keys").json()["items"]
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["type"].endswith("/invalid-input")
    assert problem["detail"].startswith("sources:")
    assert problem["errors"] == [
        {"loc": ["body", "sources"], "msg": "at least one source, or any_source"}
    ]
    assert '"any_source": true' in problem["hint"]
    assert "aiam_" not in r.text
    assert len(after) == len(before)  # nothing was made


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"role": "verifier", "sources": ["gateway/x"], "any_source": True}, "any_source:"),
        ({"role": "operator", "any_source": True}, "verifier key only"),
        ({"role": "auditor", "agents": [ALICE]}, "verifier key only"),
        ({"role": "verifier", "any_source": "yes"}, ""),  # a boolean, not a string
    ],
)
def test_any_source_is_for_an_unbound_verifier_key_only(
    live: OAuthLive, body: dict[str, Any], named: str
) -> None:
    with live.admin_client() as admin:
        r = admin.post("/v1/admin-keys", json={"name": "edge", **body})
    assert r.status_code == 422, r.text
    assert named in r.json()["detail"]


def test_the_service_refuses_an_unbound_verifier_key_too(live: OAuthLive) -> None:
    """The core rule, not only the HTTP body: every caller (CLI, bootstrap, tests)."""
    with pytest.raises(InvalidInput, match=r"^sources: a verifier key needs"):
        live.container.admin_keys.create(CTX, name="gw", role=Role.VERIFIER)
    with pytest.raises(InvalidInput, match=r"^sources: a verifier key needs"):
        live.container.admin_keys.create(CTX, name="gw", role="verifier", agents=[ALICE])


def test_other_roles_need_no_binding_and_list_none(live: OAuthLive) -> None:
    issued = live.container.admin_keys.create(CTX, name="ops", role=Role.OPERATOR)
    assert issued.key.binding is None
    row = _listed(live, issued.key.id)
    assert (row["bound"], row["binding"]) == (None, None)


# -- a bound key, an unbound one by choice, a legacy one ---------------------------------


def test_a_bound_key_is_listed_bound_and_its_use_is_neither_logged_nor_counted(
    live: OAuthLive, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agentiam.enforcement")
    issued = live.container.admin_keys.create(
        CTX, name="gw", role=Role.VERIFIER, sources=["gateway/edge-1"]
    )
    row = _listed(live, issued.key.id)
    assert (row["bound"], row["binding"]) == (True, "bound")
    assert _ingest(live, issued.secret, [_event("gateway/edge-1", ALICE)]).status_code == 200
    assert _ingest(live, issued.secret, [_event("gateway/other", ALICE)]).status_code == 403
    assert not _warnings(caplog, issued.key.prefix)
    assert _unbound_metric(live) == {"any_source": 0.0, "legacy": 0.0}


def test_an_explicitly_unbound_key_ingests_anything_and_says_so(
    live: OAuthLive, caplog: pytest.LogCaptureFixture
) -> None:
    """``any_source``: documented as unbound by choice; it may report for any source
    (and, without agents, about any agent). Listed as such, audited as such, its
    first use logged once, every request counted."""
    caplog.set_level(logging.WARNING, logger="agentiam.enforcement")
    with live.admin_client() as admin:
        r = admin.post(
            "/v1/admin-keys", json={"name": "shared", "role": "verifier", "any_source": True}
        )
        assert r.status_code == 201, r.text
        key = r.json()
        created = admin.get("/v1/audit/events", params={"type": "admin_key.created"}).json()
    assert (key["sources"], key["bound"], key["binding"]) == ([], False, "any_source")
    [event] = [e for e in created["items"] if e["resource"]["id"] == key["id"]]
    assert event["details"]["any_source"] is True
    assert key["secret"] not in json.dumps(created)
    assert _listed(live, key["id"])["binding"] == "any_source"

    for batch in (
        [_event("gateway/a", ALICE)],
        [_event("guard/b", BOB), _event("gateway/c", None)],
    ):
        assert _ingest(live, key["secret"], batch).status_code == 200
    [warning] = _warnings(caplog, key["prefix"])  # once, not per request or event
    assert "any_source" in warning
    assert key["secret"] not in caplog.text
    assert _unbound_metric(live) == {"any_source": 2.0, "legacy": 0.0}


def _make_legacy(live: OAuthLive, scope: str | None) -> tuple[str, str, str]:
    """A verifier key as stored before bindings were required: made here (bound, as it
    must be now), then its ``ingest_scope`` set to what the old code wrote (NULL for an
    unbound key). Returns its id, prefix and secret."""
    issued = live.container.admin_keys.create(
        CTX, name="old", role=Role.VERIFIER, sources=["gateway/placeholder"]
    )
    with live.container.engine.begin() as conn:
        conn.execute(
            update(t.admin_keys)
            .where(t.admin_keys.c.id == issued.key.id)
            .values(ingest_scope=scope)
        )
    return issued.key.id, issued.key.prefix, issued.secret


def test_a_legacy_unbound_key_keeps_working_but_is_listed_logged_and_counted(
    live: OAuthLive, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agentiam.enforcement")
    key_id, prefix, secret = _make_legacy(live, None)
    stored = next(k for k in live.container.admin_keys.all() if k.id == key_id)
    assert stored.binding == "legacy"
    row = _listed(live, key_id)
    assert (row["sources"], row["bound"], row["binding"]) == ([], False, "legacy")

    # running deployments are not broken: it still ingests for any source and agent
    assert _ingest(live, secret, [_event("gateway/a", ALICE)]).status_code == 200
    assert _ingest(live, secret, [_event("guard/b", BOB)]).status_code == 200
    assert _ingest(live, secret, [_event("gateway/c", BOB)]).status_code == 200
    [warning] = _warnings(caplog, prefix)
    assert "legacy" in warning
    assert "re-issue" in warning
    assert "gateway/a" in warning  # what the first batch claimed to be
    assert secret not in caplog.text
    assert _unbound_metric(live) == {"any_source": 0.0, "legacy": 3.0}


def test_a_legacy_key_bound_to_agents_only_is_legacy_and_keeps_its_agents(
    live: OAuthLive,
) -> None:
    """Made before with ``--agent`` but no ``--source``: its source is unbound (so
    legacy), its agents still hold."""
    key_id, _, secret = _make_legacy(live, json.dumps({"sources": [], "agents": [ALICE]}))
    assert _listed(live, key_id)["binding"] == "legacy"
    assert _ingest(live, secret, [_event("gateway/anything", ALICE)]).status_code == 200
    assert _ingest(live, secret, [_event("gateway/anything", BOB)]).status_code == 403


def test_an_explicitly_unbound_key_is_stored_apart_from_a_legacy_one(live: OAuthLive) -> None:
    """``any_source`` is stored in ``ingest_scope`` beside empty sources, so code from
    before this change (rolled back to) reads it as unbound too, as it did."""
    issued = live.container.admin_keys.create(
        CTX, name="shared", role=Role.VERIFIER, any_source=True, agents=[ALICE]
    )
    with live.container.engine.connect() as conn:
        scope = conn.execute(
            select(t.admin_keys.c.ingest_scope).where(t.admin_keys.c.id == issued.key.id)
        ).scalar_one()
    assert json.loads(scope) == {"sources": [], "agents": [ALICE], "any_source": True}
    stored = next(k for k in live.container.admin_keys.all() if k.id == issued.key.id)
    assert (stored.any_source, stored.agents, stored.binding) == (
        True,
        (ALICE,),
        "any_source",
    )


# -- the CLI -----------------------------------------------------------------------------


@pytest.fixture
def cli_db(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AGENTIAM_DATABASE_URL", sqlite_url)
    return sqlite_url


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli, ["admin-keys", *args])


def test_the_cli_refuses_a_verifier_key_without_source_or_any_source(cli_db: str) -> None:
    refused = _cli("create", "--name", "gw", "--role", "verifier", "--json")
    assert refused.exit_code == 1
    assert "needs --source" in refused.output
    assert "--any-source" in refused.output
    assert "aiam_" not in refused.output
    both = _cli(
        "create", "--name", "gw", "--role", "verifier", "--source", "gateway/gw", "--any-source"
    )
    assert both.exit_code == 1
    assert "exclude each other" in both.output
    agents_only = _cli("create", "--name", "gw", "--role", "verifier", "--agent", ALICE)
    assert agents_only.exit_code == 1
    assert json.loads(_cli("list", "--json").output) == []  # nothing was made


def test_the_cli_makes_bound_and_explicitly_unbound_keys_and_lists_legacy_ones(
    cli_db: str,
) -> None:
    bound = _cli("create", "--name", "gw", "--role", "verifier", "--source", "gateway/gw", "--json")
    assert bound.exit_code == 0, bound.output
    assert json.loads(bound.output)["binding"] == "bound"
    unbound = _cli("create", "--name", "any", "--role", "verifier", "--any-source", "--json")
    assert unbound.exit_code == 0, unbound.output
    made = json.loads(unbound.output)
    assert (made["sources"], made["bound"], made["binding"]) == ([], False, "any_source")
    operator = _cli("create", "--name", "ops", "--role", "operator", "--any-source")
    assert operator.exit_code == 1
    assert "verifier key only" in operator.output

    from agentiam.adapters.storage.engine import make_engine

    engine = make_engine(cli_db)  # a key from before bindings: ingest_scope NULL
    with engine.begin() as conn:
        conn.execute(
            update(t.admin_keys).where(t.admin_keys.c.id == made["id"]).values(ingest_scope=None)
        )
    engine.dispose()
    listed = {k["prefix"]: k["binding"] for k in json.loads(_cli("list", "--json").output)}
    assert listed == {json.loads(bound.output)["prefix"]: "bound", made["prefix"]: "legacy"}
    table = _cli("list")
    assert table.exit_code == 0, table.output
    assert "binding" in table.output
    assert "legacy" in table.output
    assert "predate bindings" in table.output
    assert made["prefix"] in table.output
