"""The authorization server's signing keys and their rotation schedule.

A key's life is four instants, all stored, so every replica computes the same state:

``created_at`` <= ``activates_at`` <= ``deactivates_at`` <= ``unpublish_at``

* published in the JWKS from ``created_at`` until ``unpublish_at``;
* signs from ``activates_at`` until ``deactivates_at``.

Rotation (:func:`plan_rotation`) creates a key that activates ``publish_delay`` seconds
later, so it sits in the JWKS before it signs anything and verifiers that cache the JWKS
for at most that long already know it. The keys it replaces stop signing at that same
instant and stay published for the longest token lifetime plus the clock skew, until
every token they signed has expired. :func:`retire_now` is the emergency path for a
compromised key: it leaves the JWKS at once, which invalidates its tokens.

The private half is sealed under the master key (see ``sealing.py``); only the
:class:`~agentiam.core.credentials.sealing.MasterKey` holder can sign.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from joserfc.jwk import ECKey, OKPKey

from agentiam.core.credentials.jose import ALLOWED_ALGORITHMS, PUBLIC_MEMBERS
from agentiam.core.credentials.sealing import MasterKey, SealError, reseal

__all__ = [
    "PrivateKey",
    "SigningKey",
    "generate_signing_key",
    "plan_rotation",
    "prove_master_key",
    "published_keys",
    "reseal_signing_keys",
    "retire_now",
    "signing_key_at",
    "unseal_private_key",
]

PrivateKey = ECKey | OKPKey


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    alg: str
    public_jwk: Mapping[str, str]
    sealed_private: str
    created_at: datetime
    activates_at: datetime
    created_by: str
    deactivates_at: datetime | None = None
    unpublish_at: datetime | None = None

    def is_published(self, now: datetime) -> bool:
        return self.created_at <= now and (self.unpublish_at is None or now < self.unpublish_at)

    def can_sign(self, now: datetime) -> bool:
        return self.activates_at <= now and (
            self.deactivates_at is None or now < self.deactivates_at
        )

    def state(self, now: datetime) -> str:
        """``pending``, ``signing``, ``verify-only`` or ``retired``: for display."""
        if not self.is_published(now):
            return "retired"
        if self.can_sign(now):
            return "signing"
        return "pending" if now < self.activates_at else "verify-only"


def generate_signing_key(
    alg: str, *, master: MasterKey, now: datetime, activates_at: datetime, created_by: str
) -> SigningKey:
    """A new key pair for ``alg``; its kid is the RFC 7638 thumbprint."""
    if alg not in ALLOWED_ALGORITHMS:
        raise ValueError(f"signing algorithm must be one of {', '.join(ALLOWED_ALGORITHMS)}")
    kty, crv = ALLOWED_ALGORITHMS[alg]
    private: PrivateKey = (
        ECKey.generate_key(crv, private=True)
        if kty == "EC"
        else OKPKey.generate_key("Ed25519", private=True)
    )
    kid = private.thumbprint()
    full = private.as_dict(private=True)
    public = {m: str(full[m]) for m in PUBLIC_MEMBERS[kty]}
    sealed = master.seal(json.dumps(full, sort_keys=True).encode(), context=_context(kid))
    return SigningKey(
        kid=kid,
        alg=alg,
        public_jwk={**public, "kid": kid, "alg": alg, "use": "sig"},
        sealed_private=sealed,
        created_at=now,
        activates_at=activates_at,
        created_by=created_by,
    )


def _context(kid: str) -> str:
    """The associated data of a sealed private half: its kid."""
    return f"signing-key/{kid}"


def reseal_signing_keys(
    keys: Sequence[SigningKey], *, old: MasterKey, new: MasterKey
) -> list[SigningKey]:
    """``keys`` with their private halves sealed again under ``new`` (master key
    rotation, :func:`~agentiam.core.credentials.sealing.reseal`): all of them, or
    :class:`~agentiam.core.credentials.sealing.SealError` naming the kid of one that
    does not open with ``old``."""
    sealed = reseal({k.kid: (k.sealed_private, _context(k.kid)) for k in keys}, old=old, new=new)
    return [replace(k, sealed_private=sealed[k.kid]) for k in keys]


def prove_master_key(keys: Sequence[SigningKey], master: MasterKey, now: datetime) -> None:
    """Prove that ``master`` opens the ring's current keys before a key sealed under
    it joins them: every key published at ``now`` (pending, signing, verify-only) or,
    when none is, the newest key. Raise
    :class:`~agentiam.core.credentials.sealing.SealError` naming the kid of the first
    that does not open, in its message and as its ``label`` (another master key's,
    e.g. a replica not yet moved after a rewrap, or altered); the message names
    master key ids, never key material.

    Opening is the proof: AES-256-GCM authenticates the value under ``master`` and
    the kid (NIST SP 800-38D section 7.2). The opened private halves are dropped at
    once; nothing is kept. An empty ring proves nothing and passes."""
    current = [k for k in keys if k.is_published(now)]
    if not current and keys:
        current = [max(keys, key=lambda k: (k.created_at, k.activates_at))]
    for key in current:
        try:
            master.open(key.sealed_private, context=_context(key.kid))
        except SealError as exc:
            raise SealError(f"{key.kid}: {exc}", label=key.kid) from None


def unseal_private_key(key: SigningKey, master: MasterKey) -> PrivateKey:
    """Open the sealed private half (raises ``SealError`` under the wrong master key)."""
    data = json.loads(master.open(key.sealed_private, context=_context(key.kid)))
    kty = ALLOWED_ALGORITHMS[key.alg][0]
    return ECKey.import_key(data) if kty == "EC" else OKPKey.import_key(data)


def plan_rotation(
    keys: Iterable[SigningKey],
    new_key: SigningKey,
    *,
    verify_for: timedelta,
) -> list[SigningKey]:
    """The keys to update when ``new_key`` takes over at its ``activates_at``: each key
    still scheduled to sign stops then, and stays published for ``verify_for`` more
    (the longest token lifetime plus clock skew)."""
    cutover = new_key.activates_at
    changed = []
    for key in keys:
        if key.kid == new_key.kid:
            continue
        if key.deactivates_at is None or key.deactivates_at > cutover:
            changed.append(replace(key, deactivates_at=cutover, unpublish_at=cutover + verify_for))
    return changed


def retire_now(key: SigningKey, now: datetime) -> SigningKey:
    """Stop signing with and publishing ``key`` at once; its tokens stop verifying."""
    return replace(
        key,
        deactivates_at=min(key.deactivates_at or now, now),
        unpublish_at=min(key.unpublish_at or now, now),
    )


def signing_key_at(keys: Sequence[SigningKey], now: datetime) -> SigningKey | None:
    """The key that signs at ``now``: of those allowed to, the latest activated."""
    candidates = [k for k in keys if k.can_sign(now) and k.is_published(now)]
    return max(candidates, key=lambda k: (k.activates_at, k.created_at), default=None)


def published_keys(keys: Iterable[SigningKey], now: datetime) -> list[SigningKey]:
    return sorted(
        (k for k in keys if k.is_published(now)), key=lambda k: k.created_at, reverse=True
    )
