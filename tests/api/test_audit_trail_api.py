"""The trail over HTTP: signed tree heads, and inclusion and consistency proofs that a
client checks itself against the heads' roots."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from tests.api.oauth_support import CTX, OAuthLive, oauth_live

from agentiam.core.access.admin_keys import Role
from agentiam.core.audit.merkle import fold, verify_consistency, verify_inclusion
from agentiam.core.audit.trail import CHECKPOINT_PROFILE, event_leaf, verify_tree_head
from agentiam.core.audit.verification import key_map
from agentiam.services.humans import NewHuman


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    # The background integrator stays out of the way: the test signs heads itself.
    with oauth_live(sqlite_url, audit_integrate_seconds=10) as running:
        yield running


def test_tree_heads_and_proofs_verify_on_the_client(live: OAuthLive) -> None:
    c = live.container
    c.humans.create(CTX, NewHuman(display_name="A", email="a@example.com"))
    c.audit_trail.integrate_all()
    first = c.audit_trail.sign_head(force=True)
    assert first is not None
    human = c.humans.create(CTX, NewHuman(display_name="B", email="b@example.com"))
    c.audit_trail.integrate_all()
    second = c.audit_trail.sign_head(force=True)
    assert second is not None
    jwks = httpx.get(live.url + "/oauth2/jwks").json()
    with live.admin_client() as admin:
        heads = admin.get("/v1/audit/tree-heads").json()["items"]
        assert [h["tree_size"] for h in heads] == [second.tree_size, first.tree_size]
        latest = verify_tree_head(heads[0]["signature"], key_map(jwks["keys"]), issuer=live.url)
        event = next(
            e
            for e in admin.get("/v1/audit/events", params={"limit": 200}).json()["items"]
            if e["type"] == "human.created" and e["resource"]["id"] == human.id
        )
        proof = admin.get("/v1/audit/proofs/inclusion", params={"event_id": event["event_id"]})
        assert proof.status_code == 200, proof.text
        body = proof.json()
        consistency = admin.get(
            "/v1/audit/proofs/consistency",
            params={"first": first.tree_size, "second": second.tree_size},
        ).json()
        missing = admin.get("/v1/audit/proofs/inclusion", params={"event_id": "evt_nope"})
    leaf = event_leaf(json.dumps(event))
    assert leaf.hex() == body["leaf_hash"]
    path = [bytes.fromhex(p) for p in body["audit_path"]]
    assert verify_inclusion(leaf, body["leaf_index"], latest.tree_size, path, latest.root_hash)
    cpath = [bytes.fromhex(p) for p in consistency["consistency_path"]]
    assert verify_consistency(
        first.tree_size, second.tree_size, first.root_hash, latest.root_hash, cpath
    )
    assert missing.status_code == 404


def test_only_audit_readers_see_the_trail(live: OAuthLive) -> None:
    verifier = live.container.admin_keys.create(
        CTX, name="gw", role=Role.VERIFIER, sources=["gateway/gw"]
    ).secret
    auditor = live.container.admin_keys.create(CTX, name="au", role=Role.AUDITOR).secret
    for key, status in ((verifier, 403), (auditor, 200)):
        r = httpx.get(live.url + "/v1/audit/tree-heads", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == status


def test_checkpoints_are_listed_and_verify_on_the_client(sqlite_url: str, tmp_path: Path) -> None:
    """After a prune, GET /v1/audit/checkpoints gives a signed head whose compact range
    folds to its root, and the heads after it are consistent with it."""
    with oauth_live(
        sqlite_url, audit_integrate_seconds=10, audit_archive_dir=str(tmp_path / "a")
    ) as live:
        c = live.container
        c.humans.create(CTX, NewHuman(display_name="A", email="a@example.com"))
        c.audit_trail.integrate_all()
        assert c.audit_trail.sign_head(force=True) is not None
        c.audit_trail.integrate_all()
        assert c.audit_retention is not None
        cut = c.clock.now() + timedelta(seconds=1)
        checkpoint = c.audit_retention.prune(CTX, cut)
        assert checkpoint is not None
        c.humans.create(CTX, NewHuman(display_name="B", email="b@example.com"))
        c.audit_trail.integrate_all()
        latest = c.audit_trail.sign_head(force=True)
        assert latest is not None
        jwks = httpx.get(live.url + "/oauth2/jwks").json()
        with live.admin_client() as admin:
            [item] = admin.get("/v1/audit/checkpoints").json()["items"]
            consistency = admin.get(
                "/v1/audit/proofs/consistency",
                params={"first": item["tree_size"], "second": latest.tree_size},
            ).json()
            gone = admin.get("/v1/audit/proofs/consistency", params={"first": 1, "second": 2})
        head = verify_tree_head(
            item["signature"], key_map(jwks["keys"]), issuer=live.url, profile=CHECKPOINT_PROFILE
        )
        assert head.tree_size == checkpoint.tree_size
        assert fold([bytes.fromhex(h) for h in item["compact_range"]]) == head.root_hash
        assert item["archive"].startswith("audit-000000000000-")
        cpath = [bytes.fromhex(p) for p in consistency["consistency_path"]]
        assert verify_consistency(
            head.tree_size, latest.tree_size, head.root_hash, latest.root_hash, cpath
        )
        assert gone.status_code == 404  # heads before the checkpoint were pruned
