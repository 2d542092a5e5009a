"""Admin key rules on both stores: one opaque failure, expiry, revocation, bootstrap."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.conftest import FakeClock

from agentiam.bootstrap import Container
from agentiam.core.access.admin_keys import Role
from agentiam.errors import AuthenticationRequired, Conflict, InvalidInput, NotFound
from agentiam.services.context import CallContext

CTX = CallContext.system("contract-test")


def test_expired_key_fails_like_any_bad_key(container: Container) -> None:
    clock: FakeClock = container.clock  # type: ignore[assignment]
    issued = container.admin_keys.create(
        CTX, name="short", role=Role.OPERATOR, expires_at=clock.now() + timedelta(minutes=5)
    )
    assert container.admin_keys.authenticate(issued.secret).id == issued.key.id
    clock.advance(minutes=5)
    with pytest.raises(AuthenticationRequired) as expired:
        container.admin_keys.authenticate(issued.secret)
    with pytest.raises(AuthenticationRequired) as unknown:
        container.admin_keys.authenticate("aiam_abcdefgh_" + "A" * 43)
    assert expired.value.detail == unknown.value.detail


def test_key_cannot_be_born_expired(container: Container) -> None:
    clock: FakeClock = container.clock  # type: ignore[assignment]
    with pytest.raises(InvalidInput):
        container.admin_keys.create(CTX, name="x", role=Role.ADMIN, expires_at=clock.now())
    with pytest.raises(InvalidInput):
        container.admin_keys.create(CTX, name="x", role="root")
    assert container.admin_keys.all() == []


def test_revocation_by_prefix_and_id(container: Container) -> None:
    a = container.admin_keys.create(CTX, name="a", role=Role.AUDITOR)
    b = container.admin_keys.create(CTX, name="b", role=Role.AUDITOR)
    container.admin_keys.revoke(CTX, a.key.prefix)
    container.admin_keys.revoke(CTX, b.key.id)
    for issued in (a, b):
        with pytest.raises(AuthenticationRequired):
            container.admin_keys.authenticate(issued.secret)
    with pytest.raises(Conflict):
        container.admin_keys.revoke(CTX, a.key.id)
    with pytest.raises(NotFound):
        container.admin_keys.revoke(CTX, "adk_unknown")


def test_bootstrap_key_only_while_no_valid_admin_exists(container: Container) -> None:
    first = container.admin_keys.ensure_bootstrap_key(CTX)
    assert first is not None
    assert first.key.role is Role.ADMIN
    assert container.admin_keys.ensure_bootstrap_key(CTX) is None
    container.admin_keys.create(CTX, name="op", role=Role.OPERATOR)
    container.admin_keys.revoke(CTX, first.key.id)
    # Only an operator is left: a new admin key is issued so the deployment is not locked out.
    again = container.admin_keys.ensure_bootstrap_key(CTX)
    assert again is not None
    assert again.secret != first.secret
