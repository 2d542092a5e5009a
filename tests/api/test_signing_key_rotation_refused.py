"""``POST /v1/signing-keys/rotate`` on a replica whose master key no longer opens the
signing keys (another replica ran ``keys rewrap``), over real HTTP (uvicorn, httpx), on
both stores: refused with 409 as an RFC 9457 problem (section 3) with the hint and
without key material, no key written, and the refusal audited as
``signing_key.created`` with outcome failure (who asked, the master key id, the kid
that did not open) next to the admin API's own ``api.request.rejected``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from tests.support.live import serve_in_thread

from agentiam.adapters.http.app import create_app
from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.access.admin_keys import Role
from agentiam.core.audit.events import ActorType, Outcome
from agentiam.core.credentials.sealing import MasterKey
from agentiam.ports import AuditQuery
from agentiam.services.context import CallContext

CTX = CallContext.system("test")


@dataclass
class Stale:
    url: str
    container: Container  # the served replica, still on the old master key
    admin: str
    old_text: str
    new_text: str


@pytest.fixture
def stale(database_url: str) -> Iterator[Stale]:
    """A served replica on master key ``old`` after another replica re-sealed every
    signing key under ``new``."""
    old_text, new_text = MasterKey.generate_text(), MasterKey.generate_text()
    served = build(Settings(database_url=database_url, master_key=old_text))
    other = build(Settings(database_url=database_url, master_key=old_text))
    try:
        issued = served.admin_keys.ensure_bootstrap_key(CTX)
        assert issued is not None
        assert served.signing_keys.ensure_key(CTX) is not None
        served.signing_keys.rotate(CTX)  # a pending key too
        assert other.signing_keys.rewrap(CTX, MasterKey.from_text(new_text)) == 2
        with serve_in_thread(create_app(served)) as url:
            yield Stale(url, served, issued.secret, old_text, new_text)
    finally:
        other.close()
        served.close()


def _sealed(c: Container) -> dict[str, str]:
    with SqlUnitOfWork(c.engine, read_only=True) as uow:
        return {k.kid: k.sealed_private for k in uow.signing_keys.all()}


def _events(c: Container, type_: str) -> list[dict[str, Any]]:
    return [e.to_dict() for e in c.audit.find(AuditQuery(limit=100, type=type_)).items]


def test_a_refused_rotation_is_a_409_problem_audited_without_key_material(
    stale: Stale,
) -> None:
    c = stale.container
    before = _sealed(c)
    created_before = _events(c, "signing_key.created")
    old, new = MasterKey.from_text(stale.old_text), MasterKey.from_text(stale.new_text)

    with httpx.Client(
        base_url=stale.url, headers={"Authorization": f"Bearer {stale.admin}"}, timeout=10
    ) as admin:
        r = admin.post("/v1/signing-keys/rotate", json={"immediate": True})

    assert r.status_code == 409, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["cache-control"] == "no-store"
    problem = r.json()
    assert set(problem) == {"type", "title", "status", "detail", "instance", "hint"}
    assert problem["type"].endswith("/conflict")
    assert (problem["title"], problem["status"]) == ("Conflict", 409)
    assert problem["instance"] == "/v1/signing-keys/rotate"
    assert problem["detail"].startswith("no signing key was created")
    assert old.id in problem["detail"]
    assert new.id in problem["detail"]
    assert "agentiam keys rewrap" in problem["hint"]
    assert "AGENTIAM_MASTER_KEY_FILE" in problem["hint"]
    assert "Traceback" not in r.text
    material = [stale.old_text, stale.new_text, old._secret.hex(), new._secret.hex()]
    for secret in [*material, *before.values()]:
        assert secret not in r.text
    assert '"d"' not in r.text  # no private JWK member

    assert _sealed(c) == before  # no key, nothing re-sealed
    created = _events(c, "signing_key.created")
    (refusal,) = [e for e in created if e not in created_before]
    assert refusal["outcome"] == Outcome.FAILURE.value
    assert refusal["actor"]["type"] == ActorType.ADMIN_KEY.value
    assert refusal["source"] == "control-plane/admin-api"
    assert refusal["reason"] == problem["detail"]
    assert refusal.get("resource") is None
    details = refusal["details"]
    assert details["master_key_id"] == old.id
    assert details["unopened_kid"] in before
    assert details["unopened_kid"] in problem["detail"]
    (rejected,) = _events(c, "api.request.rejected")  # the admin API's record of the 409
    assert rejected["action"] == "POST /v1/signing-keys/rotate"
    assert rejected["details"] == {"status": 409, "detail": problem["detail"]}
    stored = json.dumps([refusal, rejected])
    for secret in [*material, *before.values()]:
        assert secret not in stored


def test_a_key_that_may_not_manage_signing_keys_is_refused_before_the_proof(
    stale: Stale,
) -> None:
    """An auditor's key asking for a rotation gets 403: the master key is not tried
    and no ``signing_key.created`` event is written for it."""
    auditor = stale.container.admin_keys.create(
        CTX, name="auditor", role=Role.AUDITOR, sources=[]
    ).secret
    created_before = _events(stale.container, "signing_key.created")
    r = httpx.post(
        stale.url + "/v1/signing-keys/rotate",
        json={},
        headers={"Authorization": f"Bearer {auditor}"},
        timeout=10,
    )
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert _events(stale.container, "signing_key.created") == created_before
