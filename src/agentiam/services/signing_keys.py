"""The authorization server's key ring: publish, sign, rotate, retire.

Keys live in the database so every replica shares them; each replica keeps them in
memory and re-reads them every ``refresh_seconds``, and at once when the revocation
feed brings a retirement (``services/revocations.py``). Because a rotated-in key is
published ``publish_delay`` (at least twice the refresh interval) before it signs,
every replica's JWKS lists it before any replica signs with it. Private halves are
unsealed with the master key on first use and kept only in memory.

The master key is rotated by :meth:`SigningKeyService.rewrap`: every private half
sealed again under the next master key in one transaction, all or none. A new key
(``keys rotate``, or the first key of an empty ring) is added only after this
replica's master key has opened the ring's current keys, under the same lock as a
rewrap: a replica not yet restarted with the new master key is refused instead of
sealing a key the others cannot open. A refusal of either writes nothing but its
audit event (outcome ``failure``), after the refused transaction rolled back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from joserfc import jwt

from agentiam.core.audit.events import Outcome, ResourceRef
from agentiam.core.credentials.jose import JoseRejected, VerificationKey, import_public_jwk
from agentiam.core.credentials.sealing import MasterKey, SealError
from agentiam.core.credentials.signing_keys import (
    PrivateKey,
    SigningKey,
    generate_signing_key,
    plan_rotation,
    prove_master_key,
    published_keys,
    reseal_signing_keys,
    retire_now,
    signing_key_at,
    unseal_private_key,
)
from agentiam.errors import (
    AgentIAMError,
    Conflict,
    InvalidInput,
    InvalidTransition,
    NotFound,
    ServiceUnavailable,
)
from agentiam.ports import Clock, UnitOfWorkFactory
from agentiam.services.context import CallContext
from agentiam.services.revocations import RevocationService, retire_signing_key

__all__ = ["SigningKeyService"]


class SigningKeyService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        *,
        master: MasterKey | None,
        alg: str,
        publish_delay: timedelta,
        verify_for: timedelta,
        refresh_seconds: float,
        revocations: RevocationService | None = None,
    ) -> None:
        """``revocations``: this replica's feed, synced as soon as a retirement is
        written so that the gateways' long polls held here return at once (other
        replicas read it within their ``revocation_poll_seconds``)."""
        self._uow = uow
        self._revocations = revocations
        self._clock = clock
        self._master = master
        self._alg = alg
        self._publish_delay = publish_delay
        self._verify_for = verify_for
        self._refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = []
        self._by_kid: dict[str, SigningKey] = {}
        self._verification: dict[str, VerificationKey] = {}
        self._private: dict[str, PrivateKey] = {}
        self._loaded_at: float | None = None

    # -- the in-memory ring ---------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the ring from the database."""
        with self._uow(read_only=True) as uow:
            keys = uow.signing_keys.all()
        verification = {}
        for key in keys:
            try:
                verification[key.kid] = import_public_jwk(key.public_jwk, key.alg, kid=key.kid)
            except JoseRejected:
                continue  # a damaged row never verifies anything
        with self._lock:
            self._keys = keys
            self._by_kid = {key.kid: key for key in keys}
            self._verification = verification
            self._loaded_at = time.monotonic()

    def _ring(self) -> list[SigningKey]:
        loaded = self._loaded_at
        if loaded is None or time.monotonic() - loaded > self._refresh_seconds:
            self.refresh()
        return self._keys

    def now(self) -> datetime:
        return self._clock.now()

    @property
    def can_sign(self) -> bool:
        """Whether a master key is configured (without one nothing can be signed)."""
        return self._master is not None

    def keys(self) -> list[SigningKey]:
        self.refresh()
        return list(self._keys)

    def get(self, kid: str) -> VerificationKey | None:
        """The published key for ``kid`` (the verifier's key lookup); no database read
        unless the in-memory copy is older than the refresh interval."""
        key = self._by_kid.get(kid) if self._ring() else None
        if key is None or not key.is_published(self._clock.now()):
            return None
        return self._verification.get(kid)

    def every_public_jwk(self) -> list[dict[str, Any]]:
        """The public JWK of every key ever made, retired ones included: what verifies
        old signed audit tree heads long after the key stopped signing tokens."""
        return [dict(k.public_jwk) for k in self.keys()]

    def jwks(self) -> dict[str, Any]:
        """The JWK Set (RFC 7517 section 5) of every published key."""
        now = self._clock.now()
        return {"keys": [dict(k.public_jwk) for k in published_keys(self._ring(), now)]}

    # -- signing ----------------------------------------------------------------------

    def _require_master(self) -> MasterKey:
        if self._master is None:
            raise ServiceUnavailable(
                "no master key is configured, so no token can be signed",
                hint="Set AGENTIAM_MASTER_KEY_FILE (or AGENTIAM_MASTER_KEY); create one with "
                "'agentiam keys generate-master-key'.",
            )
        return self._master

    def ensure_key(self, ctx: CallContext) -> SigningKey | None:
        """Create the first key of an empty ring (a no-op without a master key, or when
        keys exist), so the JWKS lists a key before the first token is signed."""
        if self._master is None:
            return None
        self.refresh()
        if self._keys:
            return None
        now = self._clock.now()
        created = self._create(ctx, now, activates_at=now, only_if_empty=True)
        if created is None:
            self.refresh()  # another replica made the first key meanwhile: read it
        return created

    def sign(self, claims: Mapping[str, Any], *, typ: str) -> str:
        """Sign ``claims`` with the key that signs now (creating the first key of an
        empty ring)."""
        now = self._clock.now()
        key = signing_key_at(self._ring(), now)
        if key is None:  # re-read, creating the first key of an empty ring
            self.ensure_key(CallContext.system("control-plane/keys"))
            # The new key activates at its own creation time, a moment after ``now``.
            key = signing_key_at(self._keys, self._clock.now())
        if key is None:
            raise ServiceUnavailable(
                "no signing key is active", hint="Run 'agentiam keys rotate --immediate'."
            )
        private = self._private.get(key.kid)
        if private is None:
            try:
                private = unseal_private_key(key, self._require_master())
            except SealError as exc:
                raise ServiceUnavailable(
                    "the signing key cannot be unsealed with the configured master key",
                    hint=str(exc),
                ) from None
            self._private[key.kid] = private
        header = {"typ": typ, "alg": key.alg, "kid": key.kid}
        return jwt.encode(header, dict(claims), private, algorithms=[key.alg])

    # -- administration ----------------------------------------------------------------

    def _create(
        self,
        ctx: CallContext,
        now: datetime,
        *,
        activates_at: datetime,
        only_if_empty: bool = False,
    ) -> SigningKey | None:
        """Add a key sealed under this replica's master key, in a transaction that
        holds off other key writers (a rewrap, another replica's rotation). Refused
        (:class:`Conflict`, no key written) unless the master key opens the ring's
        current keys (:func:`prove_master_key`): a replica not yet moved to the master
        key a rewrap sealed them under would add a key no other replica can open.
        The refusal is audited as ``signing_key.created`` with outcome ``failure``
        (as a refused rewrap is), in its own transaction once the refused one has
        rolled back: the configured master key's id and the kid that did not open,
        never key material. ``only_if_empty``: create nothing (None) if the ring is
        no longer empty."""
        master = self._require_master()
        new = generate_signing_key(
            self._alg,
            master=master,
            now=now,
            activates_at=activates_at,
            created_by=ctx.actor.label,
        )
        refusal: SealError | None = None
        with self._uow() as uow:
            uow.signing_keys.lock()  # the keys read here are those the new one joins
            keys = uow.signing_keys.all()
            if only_if_empty and keys:
                return None  # another replica made the first key meanwhile
            try:
                prove_master_key(keys, master, now)
            except SealError as exc:
                refusal = exc  # audited below, once this transaction has rolled back
            else:
                replaced = plan_rotation(keys, new, verify_for=self._verify_for)
                uow.signing_keys.add(new)
                for old in replaced:
                    uow.signing_keys.update_schedule(old)
                uow.audit.append(
                    ctx.event(
                        "signing_key.created",
                        now=now,
                        resource=ResourceRef("signing_key", new.kid),
                        details={
                            "alg": new.alg,
                            "activates_at": new.activates_at.isoformat(),
                            "replaces": [k.kid for k in replaced],
                        },
                    )
                )
                uow.commit()
        if refusal is not None:
            conflict = Conflict(
                f"no signing key was created: the configured master key ({master.id}) "
                f"does not open the current signing key {refusal}",
                hint="This replica's master key is not the one the signing keys are "
                "sealed under (was 'agentiam keys rewrap' run?). Set "
                "AGENTIAM_MASTER_KEY_FILE (or AGENTIAM_MASTER_KEY) to that key.",
            )
            # No resource: no key was made (the kid generated for it went with it).
            self._audit_refusal(
                ctx,
                "signing_key.created",
                now=now,
                resource=None,
                error=conflict,
                details={
                    "alg": new.alg,
                    "activates_at": new.activates_at.isoformat(),
                    "master_key_id": master.id,
                    "unopened_kid": refusal.label,
                },
            )
            raise conflict
        self.refresh()
        return new

    def _audit_refusal(
        self,
        ctx: CallContext,
        type_: str,
        *,
        now: datetime,
        resource: ResourceRef | None,
        error: AgentIAMError,
        details: Mapping[str, Any],
    ) -> None:
        """Record a refused key operation as its event with outcome ``failure`` and
        the refusal's detail as the reason, in a transaction of its own: the refused
        one rolled back, writing nothing. ``details`` name keys by id (master key
        fingerprints, kids), never key material."""
        with self._uow() as uow:
            uow.audit.append(
                ctx.event(
                    type_,
                    now=now,
                    resource=resource,
                    outcome=Outcome.FAILURE,
                    reason=error.detail[:500],
                    details=details,
                )
            )
            uow.commit()

    def rotate(self, ctx: CallContext, *, immediate: bool = False) -> SigningKey:
        """Add a key that signs after the publish delay (or now, with ``immediate``,
        for a suspected compromise); the keys it replaces stay published until every
        token they signed has expired."""
        now = self._clock.now()
        key = self._create(ctx, now, activates_at=now if immediate else now + self._publish_delay)
        assert key is not None  # only an only_if_empty creation makes none
        return key

    def retire(self, ctx: CallContext, kid: str, reason: str) -> SigningKey:
        """Unpublish ``kid`` now: every token it signed stops verifying. The same
        transaction writes the retirement to the revocation feed (pushed to every
        verifier as a revocation is) and its ``signing_key.retired`` audit event."""
        if not reason.strip():
            raise InvalidInput("a reason is required to retire a signing key")
        now = self._clock.now()
        with self._uow() as uow:
            keys = uow.signing_keys.all()
            key = next((k for k in keys if k.kid == kid), None)
            if key is None:
                raise NotFound(f"signing key {kid} does not exist")
            if not key.is_published(now):
                raise InvalidTransition(f"signing key {kid} is already retired")
            others = [k for k in keys if k.kid != kid]
            if key.can_sign(now) and signing_key_at(others, now) is None:
                raise InvalidTransition(
                    "this is the only key that can sign now",
                    hint="Run 'agentiam keys rotate --immediate' first, then retire it.",
                )
            retired = retire_now(key, now)
            uow.signing_keys.update_schedule(retired)
            retire_signing_key(uow, kid, now)  # the revocation feed: every verifier
            uow.audit.append(
                ctx.event(
                    "signing_key.retired",
                    now=now,
                    resource=ResourceRef("signing_key", kid),
                    reason=reason[:500],
                )
            )
            uow.commit()
        self._private.pop(kid, None)
        self.refresh()
        if self._revocations is not None:
            self._revocations.sync()  # long polls held on this replica return now
        return retired

    def rewrap(self, ctx: CallContext, new: MasterKey) -> int:
        """Seal every signing key's private half (retired ones too) again under the
        master key ``new``, in one transaction that holds off other writers of keys;
        how many. The keys themselves (kid, public key, schedule) do not change, so
        every token and signed tree head stays verifiable. Refused, changing nothing,
        when one of them does not open with the configured master key (another
        key's, or altered: :class:`Conflict`, naming its kid) or ``new`` is that key
        (:class:`InvalidInput`). Audited as ``master_key.rewrapped``: the count and
        the two keys' ids (fingerprints, never key material); a refusal as a failure.
        Replicas still running with the previous master key keep signing with the
        private halves they opened before, but cannot open any other: restart them
        with ``new`` (docs/credentials.md)."""
        master = self._require_master()
        now = self._clock.now()
        ids = {"from_key_id": master.id, "to_key_id": new.id}
        resource = ResourceRef("master_key", new.id)
        try:
            with self._uow() as uow:
                uow.signing_keys.lock()
                keys = uow.signing_keys.all()
                try:
                    rewrapped = reseal_signing_keys(keys, old=master, new=new)
                except SealError as exc:
                    raise Conflict(
                        f"no signing key was re-sealed: the key {exc}",
                        hint="Every signing key must open with the configured master key "
                        "(AGENTIAM_MASTER_KEY_FILE or AGENTIAM_MASTER_KEY).",
                    ) from None
                except ValueError as exc:
                    raise InvalidInput(
                        str(exc), hint="Give the new master key's file, not the current one."
                    ) from None
                for before, after in zip(keys, rewrapped, strict=True):
                    if not uow.signing_keys.replace_sealed(
                        before.kid, before.sealed_private, after.sealed_private
                    ):
                        raise Conflict(f"signing key {before.kid} changed meanwhile; try again")
                uow.audit.append(
                    ctx.event(
                        "master_key.rewrapped",
                        now=now,
                        resource=resource,
                        details={"signing_keys": len(rewrapped), **ids},
                    )
                )
                uow.commit()
        except (Conflict, InvalidInput) as exc:  # the attempt, after its rollback
            self._audit_refusal(
                ctx,
                "master_key.rewrapped",
                now=now,
                resource=resource,
                error=exc,
                details={"signing_keys": 0, **ids},
            )
            raise
        self.refresh()
        return len(rewrapped)
