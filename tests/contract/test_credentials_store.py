"""Credential state on both stores: the replay guard across replicas, the revocation
feed, signing-key rotation over time, entitlements, and token issuance through the
service layer (no HTTP)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from joserfc import jwt
from tests.conftest import FakeClock

from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.credentials.revocations import (
    BASE_KINDS,
    MAX_CLOCK_SKEW,
    MAX_TOKEN_LIFETIME,
    RevocationKind,
    RevocationSet,
)
from agentiam.core.credentials.sealing import MasterKey
from agentiam.core.identities.lifecycle import LifecycleAction
from agentiam.errors import OAuthError, ServiceUnavailable
from agentiam.ports import AuditQuery
from agentiam.sdk import AgentKey, client_assertion, dpop_proof
from agentiam.services.agents import AgentChanges, NewAgent
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman

CTX = CallContext.system("contract-test")
ISSUER = "https://as.example.com"
RESOURCE = "https://api.example.com"
MASTER = MasterKey.generate_text()


@pytest.fixture
def replicas(database_url: str, clock: FakeClock) -> Iterator[tuple[Container, Container]]:
    """Two containers (two engines, as two replicas would have) on one database."""
    settings = Settings(database_url=database_url, issuer=ISSUER, master_key=MASTER)
    a, b = build(settings, clock=clock), build(settings, clock=clock)
    yield a, b
    a.close()
    b.close()


def _agent(c: Container, key: AgentKey, **kw: object) -> str:
    owner = c.humans.create(CTX, NewHuman(display_name="Owner", email="owner@example.com"))
    spec = {
        "name": "svc-bot",
        "owners": [owner.id],
        "purpose": "test",
        "environment": "production",
        "activate": True,
        "keys": [key.public_jwk()],
        "scopes": ["tools:read", "tools:write"],
        "audiences": [RESOURCE],
        **kw,
    }
    return c.agents.register(CTX, NewAgent(**spec)).id  # type: ignore[arg-type]


def _form(key: AgentKey, agent_id: str, now: int, **extra: str) -> dict[str, list[str]]:
    form = {
        "grant_type": ["client_credentials"],
        "client_assertion_type": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"],
        "client_assertion": [client_assertion(key, client_id=agent_id, audience=ISSUER, now=now)],
    }
    form.update({k: [v] for k, v in extra.items()})
    return form


def _proof(key: AgentKey, now: int) -> list[str]:
    return [dpop_proof(key, method="POST", url=ISSUER + "/oauth2/token", now=now)]


def _epoch(clock: FakeClock) -> int:
    return int(clock.now().timestamp())


def test_replay_guard_refuses_a_value_seen_by_another_replica(
    replicas: tuple[Container, Container], clock: FakeClock
) -> None:
    a, b = replicas
    key, dpop = AgentKey.generate(), AgentKey.generate()
    agent_id = _agent(a, key)
    now = _epoch(clock)
    form, proof = _form(key, agent_id, now), _proof(dpop, now)
    assert a.tokens.token(CTX, form, proof).body["token_type"] == "DPoP"
    with pytest.raises(OAuthError) as replay:
        b.tokens.token(CTX, form, _proof(dpop, now))
    assert (replay.value.error, replay.value.reason) == (
        "invalid_client",
        "assertion jti already used",
    )
    with pytest.raises(OAuthError) as proof_replay:
        b.tokens.token(CTX, _form(key, agent_id, now), proof)
    assert proof_replay.value.reason == "DPoP proof jti already used"


def test_replay_guard_purges_only_expired_values(
    replicas: tuple[Container, Container], clock: FakeClock
) -> None:
    a, _ = replicas

    with SqlUnitOfWork(a.engine) as uow:
        assert uow.replay.first_use("p", "old", clock.now() - timedelta(seconds=1))
        assert uow.replay.first_use("p", "new", clock.now() + timedelta(minutes=5))
        assert not uow.replay.first_use("p", "new", clock.now() + timedelta(minutes=5))
        assert uow.replay.first_use("other-purpose", "new", clock.now() + timedelta(minutes=5))
        assert uow.replay.purge(clock.now(), 100) == 1
        assert not uow.replay.first_use("p", "new", clock.now() + timedelta(minutes=5))
        uow.commit()


def test_token_lifetime_scope_and_ephemeral_cap(
    replicas: tuple[Container, Container], clock: FakeClock
) -> None:
    a, _ = replicas
    key, dpop = AgentKey.generate(), AgentKey.generate()
    parent = _agent(a, key)
    now = _epoch(clock)
    r = a.tokens.token(CTX, _form(key, parent, now, scope="tools:read"), _proof(dpop, now))
    assert r.body["expires_in"] == 300
    assert r.body["scope"] == "tools:read"
    child_key = AgentKey.generate()
    child = a.agents.register(
        CTX,
        NewAgent(
            name="child-bot",
            owners=[],
            purpose="sub-task",
            environment="production",
            parent_id=parent,
            ttl_seconds=60,
            activate=True,
            keys=[child_key.public_jwk()],
            scopes=["tools:read"],
            audiences=[RESOURCE],
        ),
    )
    r = a.tokens.token(CTX, _form(child_key, child.id, now), _proof(dpop, now))
    assert r.body["expires_in"] == 60  # never outlives the ephemeral agent


def test_child_cannot_hold_more_than_its_parent(
    replicas: tuple[Container, Container], clock: FakeClock
) -> None:
    a, _ = replicas
    parent = _agent(a, AgentKey.generate())
    from agentiam.errors import InvalidInput

    with pytest.raises(InvalidInput, match="payments:write"):
        a.agents.register(
            CTX,
            NewAgent(
                name="greedy-child",
                owners=[],
                purpose="x",
                environment="production",
                parent_id=parent,
                ttl_seconds=60,
                scopes=["payments:write"],
            ),
        )


def test_suspension_and_narrowing_write_agent_revocations(
    replicas: tuple[Container, Container], clock: FakeClock
) -> None:
    a, b = replicas
    agent_id = _agent(a, AgentKey.generate())
    a.agents.update(CTX, agent_id, AgentChanges(scopes=["tools:read"]))  # narrowed
    clock.advance(seconds=10)
    a.agents.transition(CTX, agent_id, LifecycleAction.SUSPEND, "incident")
    entries = b.revocations.feed(0)
    assert [(e.kind, e.subject) for e in entries] == [
        (RevocationKind.AGENT, agent_id),
        (RevocationKind.AGENT, agent_id),
    ]
    assert entries[1].cutoff - entries[0].cutoff == 10
    b.revocations.sync()  # the other replica's in-memory set
    assert b.revocations.revoked.is_revoked(
        jti="tok_x", agent_id=agent_id, issued_at=entries[1].cutoff
    )
    assert not b.revocations.revoked.is_revoked(
        jti="tok_x", agent_id=agent_id, issued_at=entries[1].cutoff + 1
    )


def test_revocation_entries_expire_and_are_purged(
    replicas: tuple[Container, Container], clock: FakeClock
) -> None:
    """A token entry outlives the token's ``exp`` by the largest clock skew a verifier
    allows (which accepts the token that long): until then it is fed and refused."""
    a, b = replicas
    jti, exp = "tok_01M84M43F0ZC84M7J1A6RQ6YD7", _epoch(clock) + 60
    a.revocations.revoke_token(CTX, jti, expires=exp, agent_id=None, reason="x")
    assert a.revocations.purge() == 0
    clock.advance(seconds=60 + MAX_CLOCK_SKEW - 1)  # a verifier with the largest skew accepts
    assert a.revocations.purge() == 0
    gateway = RevocationSet(max_staleness=60)
    gateway.apply(b.revocations.feed(0), now=_epoch(clock))
    assert gateway.is_revoked(jti=jti, agent_id="agt_x", issued_at=exp - 300)
    clock.advance(seconds=1)
    assert a.revocations.purge() == 1
    assert a.revocations.feed(0) == []


def test_rotation_schedule_over_time(
    replicas: tuple[Container, Container], clock: FakeClock
) -> None:
    a, b = replicas
    key, dpop = AgentKey.generate(), AgentKey.generate()
    agent_id = _agent(a, key)

    def issued_kid() -> str:
        now = _epoch(clock)
        body = a.tokens.token(CTX, _form(key, agent_id, now), _proof(dpop, now)).body
        return str(
            jwt.decode(body["access_token"], _any_key(a, body["access_token"])).header["kid"]
        )

    first = issued_kid()
    rotated = b.signing_keys.rotate(CTX)  # another replica rotates
    a.signing_keys.refresh()
    assert {k["kid"] for k in a.signing_keys.jwks()["keys"]} == {first, rotated.kid}
    assert issued_kid() == first  # published, not yet signing
    clock.advance(seconds=61)
    a.signing_keys.refresh()
    assert issued_kid() == rotated.kid
    clock.advance(seconds=300 + 30)  # the old key's tokens have all expired
    a.signing_keys.refresh()
    assert {k["kid"] for k in a.signing_keys.jwks()["keys"]} == {rotated.kid}


def test_a_key_retired_on_one_replica_leaves_the_others_at_their_next_feed_sync(
    replicas: tuple[Container, Container], clock: FakeClock
) -> None:
    """A retirement rides the revocation feed, written in the retirement's own
    transaction with its audit event: another replica's next feed sync (every
    ``revocation_poll_seconds``, 0.25 s) re-reads its key ring, so its JWKS drops the
    key and its verifier refuses the key's tokens then, not at its next key-ring
    refresh (``key_refresh_seconds``, 5 s, the whole time of this test). An older
    feed reader (the base kinds) is not sent the entry."""
    a, b = replicas
    key, dpop = AgentKey.generate(), AgentKey.generate()
    agent_id = _agent(a, key)
    now = _epoch(clock)
    token = a.tokens.token(CTX, _form(key, agent_id, now), _proof(dpop, now)).body
    (old,) = [k["kid"] for k in b.signing_keys.jwks()["keys"]]  # b holds the ring now
    b.revocations.sync()
    b.tokens.introspect(CTX, token["access_token"])  # b accepts the token
    a.signing_keys.rotate(CTX, immediate=True)
    a.signing_keys.retire(CTX, old, "compromised")
    assert old in {k["kid"] for k in b.signing_keys.jwks()["keys"]}  # b has not synced
    b.revocations.sync()
    assert old not in {k["kid"] for k in b.signing_keys.jwks()["keys"]}
    assert b.revocations.revoked.is_key_retired(old)
    assert b.tokens.introspect(CTX, token["access_token"]) == {"active": False}
    (entry,) = b.revocations.feed(0, kinds=[RevocationKind.SIGNING_KEY])
    assert (entry.kind, entry.subject, entry.cutoff) == (RevocationKind.SIGNING_KEY, old, now)
    assert entry.expires == now + MAX_TOKEN_LIFETIME
    assert b.revocations.feed(0, kinds=BASE_KINDS) == []
    events = a.audit.find(AuditQuery(limit=10, type="signing_key.retired")).items
    assert [(e.resource.id if e.resource else None, e.reason) for e in events] == [
        (old, "compromised")
    ]


def _any_key(c: Container, token: str) -> object:
    from joserfc.jwk import KeySet

    return KeySet.import_key_set(c.signing_keys.jwks())  # type: ignore[arg-type]


def test_wrong_master_key_cannot_sign(database_url: str, clock: FakeClock) -> None:
    first = build(
        Settings(database_url=database_url, issuer=ISSUER, master_key=MASTER), clock=clock
    )
    first.signing_keys.ensure_key(CTX)
    other = build(
        Settings(database_url=database_url, issuer=ISSUER, master_key=MasterKey.generate_text()),
        clock=clock,
    )
    with pytest.raises(ServiceUnavailable, match="cannot be unsealed"):
        other.signing_keys.sign({"sub": "x"}, typ="at+jwt")
    first.close()
    other.close()


def test_the_first_signature_on_an_empty_key_ring_works_with_a_real_clock(
    database_url: str,
) -> None:
    """The ring's first key is created on demand and activates a moment after the
    caller read the clock; signing must use it rather than fail."""
    c = build(Settings(database_url=database_url, issuer=ISSUER, master_key=MASTER))
    try:
        assert c.signing_keys.keys() == []
        token = c.signing_keys.sign({"sub": "x", "iat": 0, "exp": 1}, typ="at+jwt")
        assert token.count(".") == 2
    finally:
        c.close()


def test_concurrent_revocations_reach_a_feed_reader_in_between(
    replicas: tuple[Container, Container], clock: FakeClock
) -> None:
    """A revocation numbered first but committed last must not be skipped by a reader
    that polled in between (its cursor moves past the highest ``seq`` it saw): the
    second revocation waits for the first to commit, on PostgreSQL through an advisory
    lock, on SQLite through the single writer."""
    a, b = replicas
    now = _epoch(clock)
    slow, fast = "tok_01M84M43F0ZC84M7J1A6RQ6YD7", "tok_01M84M43F0ZC84M7J1A6RQ6YD8"
    inserted, release = threading.Event(), threading.Event()

    def slow_revocation() -> None:  # revoke_token's write, with its commit held back
        with a.revocations._uow() as uow:
            uow.revocations.add(
                RevocationKind.TOKEN, slow, cutoff=now, expires=now + 600, now=clock.now()
            )
            inserted.set()
            release.wait(10)
            uow.commit()

    first = threading.Thread(target=slow_revocation)
    first.start()
    assert inserted.wait(10)
    second = threading.Thread(
        target=b.revocations.revoke_token,
        args=(CTX, fast),
        kwargs={"expires": now + 600, "agent_id": None, "reason": "x"},
    )
    second.start()
    time.sleep(0.3)  # the second revocation has had every chance to commit first
    gateway = RevocationSet(max_staleness=60)
    gateway.apply(b.revocations.feed(gateway.cursor), now=now)  # a feed poll lands now
    release.set()
    first.join(10)
    second.join(10)
    gateway.apply(b.revocations.feed(gateway.cursor), now=now)
    for jti in (slow, fast):
        assert gateway.is_revoked(jti=jti, agent_id="agt_x", issued_at=now - 5), jti
    # numbered in the order they committed (SQLite's writer lock made the second wait)
    assert sorted(e.subject for e in b.revocations.feed(0)) == [slow, fast]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_revocations_and_row_locks_taken_in_either_order_do_not_deadlock(
    replicas: tuple[Container, Container], clock: FakeClock
) -> None:
    """A suspension cascades: it locks the parent's row, revokes, then locks a child's,
    while another transaction locks that child's row and revokes. The lock ordering
    revocations is taken at commit, after every row lock, so no cycle forms (taken at
    the revocation, PostgreSQL aborted one of the two as a deadlock)."""
    from sqlalchemy import text

    a, b = replicas
    rows = [
        a.humans.create(CTX, NewHuman(display_name=f"H{i}", email=f"h{i}@example.com")).id
        for i in range(2)
    ]
    now = _epoch(clock)
    first_locked, second_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    lock_row = text("SELECT id FROM humans WHERE id = :id FOR UPDATE")

    def parent_then_child() -> None:
        try:
            with a.revocations._uow() as uow:
                uow._conn.execute(lock_row, {"id": rows[0]})  # the parent's row
                uow.revocations.add(
                    RevocationKind.AGENT, "agt_01JF0000000000000000000000", cutoff=now,
                    expires=now + 600, now=clock.now(),
                )  # fmt: skip
                first_locked.set()
                second_done.wait(2)  # the other holds the child's row (or waits on us)
                uow._conn.execute(lock_row, {"id": rows[1]})  # then the child's
                uow.commit()
        except BaseException as exc:
            errors.append(exc)

    def child() -> None:
        try:
            assert first_locked.wait(10)
            with b.revocations._uow() as uow:
                uow._conn.execute(lock_row, {"id": rows[1]})
                uow.revocations.add(
                    RevocationKind.AGENT, "agt_01JF0000000000000000000001", cutoff=now,
                    expires=now + 600, now=clock.now(),
                )  # fmt: skip
                uow.commit()
            second_done.set()
        except BaseException as exc:
            errors.append(exc)
            second_done.set()

    threads = [threading.Thread(target=parent_then_child), threading.Thread(target=child)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []
    assert len(b.revocations.feed(0)) == 2
