"""Rotating the control plane's master key (``SigningKeyService.rewrap``), on both
stores: every signing key's private half sealed again under the new master key in one
transaction, after which only the new key opens them and tokens signed before still
verify; a database with one key sealed under another master key is refused unchanged;
the operation is audited with counts and key ids, never key material; concurrent key
writers wait for it."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from tests.conftest import FakeClock

from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.audit.events import Actor, ActorType, AuditEvent, Outcome, TraceContext
from agentiam.core.credentials.sealing import MasterKey, SealError
from agentiam.core.credentials.signing_keys import (
    SigningKey,
    generate_signing_key,
    reseal_signing_keys,
    unseal_private_key,
)
from agentiam.errors import Conflict, InvalidInput, ServiceUnavailable
from agentiam.ports import AuditQuery
from agentiam.services.context import CallContext

CTX = CallContext.system("contract-test")
ISSUER = "https://as.example.com"
Make = Callable[[str | None], Container]  # a replica with this master key (or none)


@pytest.fixture
def texts() -> tuple[str, str]:
    return MasterKey.generate_text(), MasterKey.generate_text()


@pytest.fixture
def keys(texts: tuple[str, str]) -> tuple[MasterKey, MasterKey]:
    return MasterKey.from_text(texts[0]), MasterKey.from_text(texts[1])


@pytest.fixture
def make(database_url: str, clock: FakeClock) -> Iterator[Make]:
    made: list[Container] = []

    def _make(master: str | None) -> Container:
        c = build(
            Settings(database_url=database_url, issuer=ISSUER, master_key=master), clock=clock
        )
        made.append(c)
        return c

    yield _make
    for c in made:
        c.close()


def _ring(c: Container, clock: FakeClock) -> list[SigningKey]:
    """Three keys: one retired, one signing, one pending."""
    first = c.signing_keys.ensure_key(CTX)
    assert first is not None
    clock.advance(seconds=1)
    c.signing_keys.rotate(CTX, immediate=True)
    clock.advance(seconds=1)
    c.signing_keys.retire(CTX, first.kid, "drill")
    c.signing_keys.rotate(CTX)
    ring = c.signing_keys.keys()
    assert len(ring) == 3
    return ring


def _sealed(c: Container) -> dict[str, str]:
    with SqlUnitOfWork(c.engine, read_only=True) as uow:
        return {k.kid: k.sealed_private for k in uow.signing_keys.all()}


def test_rewrap_seals_every_key_again_and_only_the_new_master_key_opens_them(
    make: Make, clock: FakeClock, texts: tuple[str, str], keys: tuple[MasterKey, MasterKey]
) -> None:
    old_text, new_text = texts
    old, new = keys
    a = make(old_text)
    before = _ring(a, clock)
    token = a.signing_keys.sign({"iss": ISSUER, "sub": "agent-1"}, typ="at+jwt")

    assert a.signing_keys.rewrap(CTX, new) == 3

    after = make(new_text).signing_keys.keys()
    assert [(k.kid, k.public_jwk, k.activates_at, k.deactivates_at, k.unpublish_at)
            for k in after] == [
        (k.kid, k.public_jwk, k.activates_at, k.deactivates_at, k.unpublish_at) for k in before
    ]  # fmt: skip
    for was, now in zip(before, after, strict=True):
        assert now.sealed_private != was.sealed_private
        assert now.sealed_private.split(".")[1] == new.id
        assert unseal_private_key(now, new).thumbprint() == now.kid
        with pytest.raises(SealError):
            unseal_private_key(now, old)

    # A replica started with the new key signs; one with the old key cannot.
    b = make(new_text)
    fresh = b.signing_keys.sign({"iss": ISSUER, "sub": "agent-2"}, typ="at+jwt")
    key_set = KeySet.import_key_set(b.signing_keys.jwks())  # type: ignore[arg-type]
    for signed in (token, fresh):  # tokens signed before still verify
        jwt.decode(signed, key_set, algorithms=["ES256"])
    stale = make(old_text)
    with pytest.raises(ServiceUnavailable, match="cannot be unsealed"):
        stale.signing_keys.sign({"iss": ISSUER, "sub": "agent-3"}, typ="at+jwt")

    (event,) = a.audit.find(AuditQuery(limit=10, type="master_key.rewrapped")).items
    assert event.outcome is Outcome.SUCCESS
    assert event.source == "contract-test"
    assert event.resource is not None
    assert (event.resource.type, event.resource.id) == ("master_key", new.id)
    assert dict(event.details) == {"signing_keys": 3, "from_key_id": old.id, "to_key_id": new.id}
    shown = json.dumps(event.to_dict())
    for material in (old_text, new_text, old._secret.hex(), new._secret.hex()):
        assert material not in shown


def test_a_key_sealed_under_another_master_key_refuses_the_rewrap_unchanged(
    make: Make, clock: FakeClock, texts: tuple[str, str], keys: tuple[MasterKey, MasterKey]
) -> None:
    old_text, _ = texts
    old, new = keys
    a = make(old_text)
    _ring(a, clock)
    foreign = MasterKey.from_text(MasterKey.generate_text())
    now = clock.now()
    stray = generate_signing_key(
        "ES256", master=foreign, now=now, activates_at=now + timedelta(days=1), created_by="x"
    )
    with SqlUnitOfWork(a.engine) as uow:
        uow.signing_keys.add(stray)
        uow.commit()
    before = _sealed(a)

    with pytest.raises(Conflict, match="no signing key was re-sealed") as refused:
        a.signing_keys.rewrap(CTX, new)
    assert stray.kid in refused.value.detail
    assert _sealed(a) == before  # not one of the others was re-sealed
    for kid, sealed in before.items():
        assert sealed.split(".")[1] == (foreign.id if kid == stray.kid else old.id)

    (event,) = a.audit.find(AuditQuery(limit=10, type="master_key.rewrapped")).items
    assert event.outcome is Outcome.FAILURE
    assert dict(event.details) == {"signing_keys": 0, "from_key_id": old.id, "to_key_id": new.id}


def test_an_altered_sealed_key_refuses_the_rewrap_unchanged(
    make: Make, clock: FakeClock, texts: tuple[str, str], keys: tuple[MasterKey, MasterKey]
) -> None:
    a = make(texts[0])
    ring = _ring(a, clock)
    victim = ring[1]
    # Another key's sealed value copied onto this one: bound to its kid, it does not open.
    with SqlUnitOfWork(a.engine) as uow:
        assert uow.signing_keys.replace_sealed(
            victim.kid, victim.sealed_private, ring[0].sealed_private
        )
        uow.commit()
    before = _sealed(a)
    with pytest.raises(Conflict, match=victim.kid):
        a.signing_keys.rewrap(CTX, keys[1])
    assert _sealed(a) == before


def test_the_current_master_key_as_the_new_one_is_refused(
    make: Make, clock: FakeClock, texts: tuple[str, str], keys: tuple[MasterKey, MasterKey]
) -> None:
    a = make(texts[0])
    _ring(a, clock)
    before = _sealed(a)
    with pytest.raises(InvalidInput, match="the new key is the current key"):
        a.signing_keys.rewrap(CTX, MasterKey.from_text(texts[0]))
    assert _sealed(a) == before


def test_without_a_master_key_there_is_nothing_to_rewrap(
    make: Make, keys: tuple[MasterKey, MasterKey]
) -> None:
    with pytest.raises(ServiceUnavailable):
        make(None).signing_keys.rewrap(CTX, keys[1])


def test_the_rewrap_lock_holds_off_a_new_key_until_it_ends(
    make: Make, clock: FakeClock, texts: tuple[str, str]
) -> None:
    """A key created meanwhile (by a replica still on the old master key) would be
    left under the old key: key writers wait for the rewrap's transaction."""
    a = make(texts[0])
    other = make(texts[0])  # another replica: its own engine
    _ring(a, clock)
    done = threading.Event()

    def rotate() -> None:
        other.signing_keys.rotate(CTX)
        done.set()

    with SqlUnitOfWork(a.engine) as uow:
        uow.signing_keys.lock()
        uow.signing_keys.all()
        worker = threading.Thread(target=rotate, daemon=True)
        worker.start()
        assert not done.wait(1.0)  # blocked while the lock is held
    worker.join(30)
    assert done.is_set()
    assert len(a.signing_keys.keys()) == 4


def _audit_count(c: Container) -> int:
    return len(c.audit.find(AuditQuery(limit=100)).items)


def _creations(c: Container, outcome: Outcome) -> list[AuditEvent]:
    query = AuditQuery(limit=100, type="signing_key.created", outcome=outcome.value)
    return list(c.audit.find(query).items)


OPERATOR = CallContext(
    actor=Actor(ActorType.ADMIN_KEY, "adk_01JF3Z9Q6W8K2M4N6P8R0T2V50", role="admin"),
    source="control-plane/admin-api",
    trace=TraceContext.new(),
)


@pytest.mark.parametrize("immediate", [False, True])
def test_a_replica_on_the_old_master_key_cannot_rotate_after_a_rewrap(
    make: Make,
    clock: FakeClock,
    texts: tuple[str, str],
    keys: tuple[MasterKey, MasterKey],
    immediate: bool,
) -> None:
    """A replica not yet restarted with the new master key would seal a new key that no
    other replica opens: refused, naming the key ids only; no key is written, only the
    refusal's audit event (``signing_key.created``, outcome failure: who, the master
    key id configured, the kid that did not open)."""
    old_text, new_text = texts
    old, new = keys
    a = make(old_text)
    _ring(a, clock)
    assert a.signing_keys.rewrap(CTX, new) == 3
    ring = a.signing_keys.keys()
    before, events = _sealed(a), _audit_count(a)
    created = _creations(a, Outcome.SUCCESS)

    stale = make(old_text)
    with pytest.raises(Conflict, match="no signing key was created") as refused:
        stale.signing_keys.rotate(OPERATOR, immediate=immediate)
    assert old.id in refused.value.detail
    assert new.id in refused.value.detail
    assert "rewrap" in (refused.value.hint or "")
    shown = refused.value.detail + (refused.value.hint or "")
    material = (old_text, new_text, old._secret.hex(), new._secret.hex())
    for secret in material:
        assert secret not in shown
    assert _sealed(a) == before  # no key, no schedule changed
    assert _creations(a, Outcome.SUCCESS) == created

    assert _audit_count(a) == events + 1
    (event,) = _creations(a, Outcome.FAILURE)
    assert event.actor == OPERATOR.actor
    assert event.source == "control-plane/admin-api"
    assert event.trace.trace_id == OPERATOR.trace.trace_id
    assert event.resource is None  # no key was made
    assert event.reason == refused.value.detail
    unopened = {k.kid for k in ring if k.is_published(clock.now())}
    assert event.details["unopened_kid"] in unopened  # a current key, not the retired one
    assert event.details["unopened_kid"] in refused.value.detail
    assert dict(event.details) == {
        "alg": "ES256",
        "activates_at": (
            clock.now()
            if immediate
            else clock.now() + timedelta(seconds=stale.settings.signing_key_publish_seconds)
        ).isoformat(),
        "master_key_id": old.id,
        "unopened_kid": event.details["unopened_kid"],
    }
    stored = json.dumps(event.to_dict())
    for secret in material:
        assert secret not in stored
    for kid, sealed in before.items():
        assert sealed not in stored  # not even a sealed private half
        assert kid not in stored or kid == event.details["unopened_kid"]

    # The replica on the new key rotates as before, audited as before.
    fresh = make(new_text).signing_keys.rotate(OPERATOR, immediate=immediate)
    assert fresh.kid not in before
    (accepted,) = [e for e in _creations(a, Outcome.SUCCESS) if e not in created]
    assert accepted.resource is not None
    assert (accepted.resource.type, accepted.resource.id) == ("signing_key", fresh.kid)
    assert accepted.actor == OPERATOR.actor
    assert accepted.reason is None
    cutover = fresh.activates_at
    assert dict(accepted.details) == {
        "alg": "ES256",
        "activates_at": cutover.isoformat(),
        "replaces": [k.kid for k in ring if k.deactivates_at is None or k.deactivates_at > cutover],
    }
    assert len(_creations(a, Outcome.FAILURE)) == 1


def test_a_rotation_waiting_on_a_rewrap_is_refused_once_the_keys_moved(
    make: Make, clock: FakeClock, texts: tuple[str, str], keys: tuple[MasterKey, MasterKey]
) -> None:
    """A replica on the old master key that starts a rotation while a rewrap holds the
    key lock reads the keys after the rewrap committed, and is refused: its check and
    its insert are one transaction under the same lock."""
    a = make(texts[0])
    stale = make(texts[0])  # another replica: its own engine, still on the old key
    _ring(a, clock)
    outcome: list[BaseException | SigningKey] = []

    def rotate() -> None:
        try:
            outcome.append(stale.signing_keys.rotate(CTX))
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    with SqlUnitOfWork(a.engine) as uow:  # the rewrap's transaction, by hand
        uow.signing_keys.lock()
        ring = uow.signing_keys.all()
        worker = threading.Thread(target=rotate, daemon=True)
        worker.start()
        worker.join(1.0)
        assert worker.is_alive()  # waits for the lock
        for key, moved in zip(
            ring, reseal_signing_keys(ring, old=keys[0], new=keys[1]), strict=True
        ):
            assert uow.signing_keys.replace_sealed(
                key.kid, key.sealed_private, moved.sealed_private
            )
        uow.commit()
    worker.join(30)
    (result,) = outcome
    assert isinstance(result, Conflict), result
    assert len(_sealed(a)) == 3


def test_the_first_key_of_an_empty_ring_needs_no_proof(make: Make, texts: tuple[str, str]) -> None:
    c = make(texts[0])
    first = c.signing_keys.ensure_key(CTX)
    assert first is not None
    assert c.signing_keys.ensure_key(CTX) is None  # not empty any more: nothing made
    assert list(_sealed(c)) == [first.kid]
    (event,) = _creations(c, Outcome.SUCCESS)
    assert event.resource is not None
    assert event.resource.id == first.kid
    assert event.details["replaces"] == []
    assert _creations(c, Outcome.FAILURE) == []


def test_a_retired_key_under_another_master_key_does_not_block_a_rotation(
    make: Make, clock: FakeClock, texts: tuple[str, str]
) -> None:
    """Only the current keys (published now) are proven: a long-retired key sealed
    under another master key (a restored backup row, say) is not what a rotation joins.
    A published one is."""
    a = make(texts[0])
    _ring(a, clock)
    foreign = MasterKey.from_text(MasterKey.generate_text())
    now = clock.now()
    gone = generate_signing_key("ES256", master=foreign, now=now, activates_at=now, created_by="x")
    gone = dataclasses.replace(gone, deactivates_at=now, unpublish_at=now)
    with SqlUnitOfWork(a.engine) as uow:
        uow.signing_keys.add(gone)
        uow.commit()
    clock.advance(seconds=1)
    a.signing_keys.rotate(CTX)
    later = clock.now() + timedelta(days=1)
    live = generate_signing_key(
        "ES256", master=foreign, now=clock.now(), activates_at=later, created_by="x"
    )
    with SqlUnitOfWork(a.engine) as uow:
        uow.signing_keys.add(live)
        uow.commit()
    before = _sealed(a)
    with pytest.raises(Conflict, match=live.kid):
        a.signing_keys.rotate(CTX)
    assert _sealed(a) == before
    (refusal,) = _creations(a, Outcome.FAILURE)
    assert refusal.details["unopened_kid"] == live.kid
    assert refusal.details["master_key_id"] == MasterKey.from_text(texts[0]).id


def test_two_replicas_starting_on_an_empty_ring_make_one_first_key(
    make: Make, clock: FakeClock, texts: tuple[str, str], keys: tuple[MasterKey, MasterKey]
) -> None:
    """A replica that saw the ring empty, then waited on the key lock while another
    made the first key, makes none (a second first key would end the other's signing
    at once) and signs with the other's key."""
    a, b = make(texts[0]), make(texts[0])
    outcome: list[BaseException | str] = []

    def sign() -> None:
        try:
            outcome.append(b.signing_keys.sign({"iss": ISSUER, "sub": "agent-1"}, typ="at+jwt"))
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    now = clock.now()
    first = generate_signing_key("ES256", master=keys[0], now=now, activates_at=now,
                                 created_by="replica-a")  # fmt: skip
    with SqlUnitOfWork(a.engine) as uow:  # replica a making the first key, by hand
        uow.signing_keys.lock()
        assert uow.signing_keys.all() == []
        worker = threading.Thread(target=sign, daemon=True)
        worker.start()
        worker.join(1.0)
        assert worker.is_alive()  # b saw the ring empty and waits to make a key
        uow.signing_keys.add(first)
        uow.commit()
    worker.join(30)
    (token,) = outcome
    assert isinstance(token, str), token
    assert jwt.decode(token, KeySet.import_key_set(b.signing_keys.jwks())).header["kid"] == (  # type: ignore[arg-type]
        first.kid
    )
    assert list(_sealed(a)) == [first.kid]
