"""Create, authenticate and revoke admin API keys."""

from __future__ import annotations

from collections.abc import Sequence
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
from agentiam.core.audit.ingest_limits import SOURCE_RE
from agentiam.core.ids import is_id, new_id
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
        sources: Sequence[str] = (),
        agents: Sequence[str] = (),
        any_source: bool = False,
    ) -> IssuedAdminKey:
        """Issue a key. The returned ``secret`` is the only copy that will ever exist.
        ``sources`` and ``agents`` bind what audit events it may ingest (see
        :attr:`AdminKey.sources`): for a verifier key only, which needs at least one
        source unless ``any_source`` asks for an unbound key explicitly (fail closed:
        an enforcement point's key, above all an in-process guard's, may otherwise
        report in any gateway's name about any agent)."""
        try:
            role = Role(role)
        except ValueError:
            raise InvalidInput(f"role must be one of {', '.join(r.value for r in Role)}") from None
        sources, agents = _ingest_scope(role, sources, agents, any_source=any_source)
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
                sources=sources,
                agents=agents,
                any_source=any_source,
            )
            uow.admin_keys.add(key)
            uow.audit.append(
                ctx.event(
                    "admin_key.created",
                    now=now,
                    resource=ResourceRef("admin_key", key.id),
                    details={
                        "name": label,
                        "role": role.value,
                        "prefix": prefix,
                        "sources": list(sources),
                        "agents": list(agents),
                        **({"any_source": True} if any_source else {}),
                    },
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


_MAX_BINDINGS = 64


def _ingest_scope(
    role: Role, sources: Sequence[str], agents: Sequence[str], *, any_source: bool
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Checked ``sources`` (``gateway/<name>`` or ``guard/<name>``) and ``agents``
    (agent ids), without repeats; only a verifier key ingests, so only it takes them,
    and it must name a source or ask for ``any_source`` (not both)."""
    if (sources or agents or any_source) and role is not Role.VERIFIER:
        raise InvalidInput("sources, agents and any_source bind a verifier key only")
    if len(sources) > _MAX_BINDINGS or len(agents) > _MAX_BINDINGS:
        raise InvalidInput(f"at most {_MAX_BINDINGS} sources and {_MAX_BINDINGS} agents")
    for source in sources:
        if not isinstance(source, str) or not SOURCE_RE.fullmatch(source):
            raise InvalidInput(
                f"sources: {source!r} is not an enforcement point",
                hint='Name it as its events do: "gateway/<name>" or "guard/<name>".',
            )
    for agent in agents:
        if not isinstance(agent, str) or not is_id(agent, "agent"):
            raise InvalidInput(f"agents: {agent!r} is not an agent id (agt_…)")
    if role is Role.VERIFIER and sources and any_source:
        raise InvalidInput(
            "any_source: a key with sources is bound to them; send one or the other",
            errors=[{"loc": ["body", "any_source"], "msg": "conflicts with sources"}],
        )
    if role is Role.VERIFIER and not sources and not any_source:
        raise InvalidInput(
            "sources: a verifier key needs the enforcement points it reports for",
            hint='Bind it to the one that will hold it, e.g. "sources": ["gateway/<name>"] '
            '(or ["guard/<name>"], plus "agents" for a guard); for a key that may report '
            'in any enforcement point\'s name, send "any_source": true instead.',
            errors=[{"loc": ["body", "sources"], "msg": "at least one source, or any_source"}],
        )
    return tuple(dict.fromkeys(sources)), tuple(dict.fromkeys(agents))
