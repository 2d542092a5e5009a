"""Create, authenticate and revoke admin API keys."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from agentiam.core.access.admin_keys import (
    AdminKey,
    IssuedAdminKey,
    Role,
    generate_admin_key,
    hash_admin_key,
    parse_admin_key,
    verify_admin_key,
)
from agentiam.core.audit.events import Actor, ActorType, ResourceRef
from agentiam.core.ids import new_id
from agentiam.core.normalize import normalize_display_text
from agentiam.errors import AuthenticationRequired, Conflict, InvalidInput, NotFound
from agentiam.ports import Clock, UnitOfWorkFactory
from agentiam.services.context import CallContext

__all__ = ["AdminKeyService", "actor_for"]


class AdminKeyService:
    def __init__(self, uow: UnitOfWorkFactory, clock: Clock) -> None:
        self._uow = uow
        self._clock = clock

    def create(
        self,
        ctx: CallContext,
        *,
        name: str,
        role: Role | str,
        expires_at: datetime | None = None,
    ) -> IssuedAdminKey:
        """Issue a key. The returned ``secret`` is the only copy that will ever exist."""
        try:
            role = Role(role)
        except ValueError:
            raise InvalidInput(f"role must be one of {', '.join(r.value for r in Role)}") from None
        now = self._clock.now()
        if expires_at is not None and expires_at.tzinfo is None:
            raise InvalidInput(
                "expires_at needs a time zone", hint="Use e.g. 2027-01-01T00:00:00Z."
            )
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("expires_at must be in the future")
        label = normalize_display_text(name, field="name", max_length=100)
        with self._uow() as uow:
            for _ in range(5):
                prefix, secret = generate_admin_key()
                if uow.admin_keys.get_by_prefix(prefix) is None:
                    break
            else:  # pragma: no cover - 32^8 prefixes make this practically unreachable
                raise Conflict("could not allocate a unique key prefix; try again")
            key = AdminKey(
                id=new_id("admin_key"),
                prefix=prefix,
                name=label,
                role=role,
                key_hash=hash_admin_key(secret),
                created_at=now,
                created_by=ctx.actor.label,
                expires_at=expires_at,
            )
            uow.admin_keys.add(key)
            uow.audit.append(
                ctx.event(
                    "admin_key.created",
                    now=now,
                    resource=ResourceRef("admin_key", key.id),
                    details={"name": label, "role": role.value, "prefix": prefix},
                )
            )
            uow.commit()
        return IssuedAdminKey(key=key, secret=secret)

    def ensure_bootstrap_key(self, ctx: CallContext) -> IssuedAdminKey | None:
        """Create a first admin key if no valid admin-role key exists; else None."""
        now = self._clock.now()
        with self._uow(read_only=True) as uow:
            if any(k.role is Role.ADMIN and k.is_valid(now) for k in uow.admin_keys.all()):
                return None
        return self.create(ctx, name="bootstrap admin", role=Role.ADMIN)

    def all(self) -> list[AdminKey]:
        with self._uow(read_only=True) as uow:
            return uow.admin_keys.all()

    def revoke(self, ctx: CallContext, key_ref: str) -> AdminKey:
        """Revoke by id (``adk_…``) or by prefix."""
        now = self._clock.now()
        with self._uow() as uow:
            key = uow.admin_keys.get(key_ref) or uow.admin_keys.get_by_prefix(key_ref)
            if key is None:
                raise NotFound(f"admin key {key_ref} does not exist", hint="See 'admin-keys list'.")
            if key.revoked_at is not None:
                raise Conflict(f"admin key {key.prefix} is already revoked")
            revoked = replace(key, revoked_at=now, revoked_by=ctx.actor.label)
            uow.admin_keys.update(revoked)
            uow.audit.append(
                ctx.event(
                    "admin_key.revoked",
                    now=now,
                    resource=ResourceRef("admin_key", key.id),
                    details={"prefix": key.prefix},
                )
            )
            uow.commit()
        return revoked

    def authenticate(self, presented: str) -> AdminKey:
        """Return the stored key for a presented secret, or raise one opaque error.

        Unknown prefix, wrong secret, revoked and expired keys all fail the same way.
        """
        prefix = parse_admin_key(presented)
        if prefix is not None:
            with self._uow(read_only=True) as uow:
                key = uow.admin_keys.get_by_prefix(prefix)
            if (
                key is not None
                and verify_admin_key(presented, key.key_hash)
                and key.is_valid(self._clock.now())
            ):
                return key
        raise AuthenticationRequired("the admin API key is missing, invalid, expired or revoked")


def actor_for(key: AdminKey) -> Actor:
    """The audit actor for a request authenticated with ``key`` (prefix, never secret)."""
    return Actor(type=ActorType.ADMIN_KEY, id=key.prefix, role=key.role.value)
