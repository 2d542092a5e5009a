"""Credential administration: signing keys, token revocation, and the revocation feed
that remote verifiers long-poll (which also carries signing-key retirements, to the
readers that ask for them: see :func:`_feed_kinds`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import Field

from agentiam.adapters.http.longpoll import wait_until
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, IdPath, audited_read
from agentiam.adapters.http.schemas import Reason, _In, _Out
from agentiam.adapters.http.security import container_of, require
from agentiam.core.access.admin_keys import Permission
from agentiam.core.audit.events import ResourceRef
from agentiam.core.credentials.revocations import BASE_KINDS, RevocationKind
from agentiam.core.credentials.signing_keys import SigningKey
from agentiam.errors import InvalidInput
from agentiam.services.context import CallContext

router = APIRouter(tags=["credentials"], responses=PROBLEM_RESPONSES)
KeysRead = Annotated[CallContext, Depends(require(Permission.SIGNING_KEYS_READ))]
KeysManage = Annotated[CallContext, Depends(require(Permission.SIGNING_KEYS_MANAGE))]
Revoke = Annotated[CallContext, Depends(require(Permission.TOKENS_REVOKE))]
FeedRead = Annotated[CallContext, Depends(require(Permission.REVOCATIONS_READ))]
KidPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
MAX_WAIT_SECONDS = 25.0
_ALL_KINDS = frozenset(RevocationKind)


class SigningKeyOut(_Out):
    kid: str
    alg: str
    state: str = Field(description="pending, signing, verify-only or retired")
    created_at: datetime
    activates_at: datetime
    deactivates_at: datetime | None
    unpublish_at: datetime | None

    @classmethod
    def of(cls, key: SigningKey, now: datetime) -> SigningKeyOut:
        return cls(
            kid=key.kid,
            alg=key.alg,
            state=key.state(now),
            created_at=key.created_at,
            activates_at=key.activates_at,
            deactivates_at=key.deactivates_at,
            unpublish_at=key.unpublish_at,
        )


class SigningKeyList(_Out):
    items: list[SigningKeyOut]


class RotateIn(_In):
    immediate: bool = Field(
        default=False,
        description="Sign with the new key at once (suspected compromise) instead of "
        "after the publish delay.",
    )


class RetireIn(_In):
    reason: Reason


class TokenRevokeIn(_In):
    token: Annotated[str, Field(min_length=1, max_length=8192)] | None = None
    jti: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    reason: Reason


class TokenRevokeOut(_Out):
    revoked: bool
    jti: str | None


class AgentTokensRevokedOut(_Out):
    agent_id: str
    cutoff: int = Field(description="Tokens issued at or before this second are refused.")


class RevocationOut(_Out):
    seq: int
    kind: str
    subject: str
    cutoff: int
    expires: int


class RevocationFeed(_Out):
    entries: list[RevocationOut]
    cursor: int = Field(description="Pass as ?after= on the next call.")
    kinds: list[str] = Field(
        description="The entry kinds this answer covers: those the caller named in "
        "?kinds= that this control plane serves (token, agent, human and grant when "
        "it named none). A reader that sees signing_key here is told of key "
        "retirements by the feed; an answer without this member comes from a "
        "control plane that does not push them."
    )


def _feed_kinds(kinds: str | None) -> frozenset[RevocationKind]:
    """The kinds a feed reader named (comma-separated), those this control plane
    knows; the base kinds when it named none. A reader never gets an entry of a kind
    it did not name, so a kind added later cannot break an older reader; a name
    this control plane does not know (a newer reader's) is ignored."""
    if kinds is None:
        return BASE_KINDS
    known = {k.value: k for k in RevocationKind}
    named = frozenset(known[n] for n in (p.strip() for p in kinds.split(",")) if n in known)
    if not named:
        raise InvalidInput(
            "kinds names no revocation kind this control plane serves",
            hint="Name some of: " + ", ".join(k.value for k in RevocationKind) + ".",
        )
    return named


@router.get("/v1/signing-keys", response_model=SigningKeyList)
def list_signing_keys(request: Request, ctx: KeysRead) -> SigningKeyList:
    c = container_of(request)
    keys = c.signing_keys.keys()
    audited_read(request, ctx, "signing_keys.list")
    now = c.signing_keys.now()
    return SigningKeyList(items=[SigningKeyOut.of(k, now) for k in keys])


@router.post("/v1/signing-keys/rotate", status_code=201, response_model=SigningKeyOut)
def rotate_signing_key(request: Request, ctx: KeysManage, body: RotateIn) -> SigningKeyOut:
    c = container_of(request)
    key = c.signing_keys.rotate(ctx, immediate=body.immediate)
    return SigningKeyOut.of(key, c.signing_keys.now())


@router.post("/v1/signing-keys/{kid}/retire", response_model=SigningKeyOut)
def retire_signing_key(
    kid: KidPath, request: Request, ctx: KeysManage, body: RetireIn
) -> SigningKeyOut:
    c = container_of(request)
    key = c.signing_keys.retire(ctx, kid, body.reason)
    return SigningKeyOut.of(key, c.signing_keys.now())


@router.post("/v1/tokens/revoke", response_model=TokenRevokeOut)
def revoke_token(request: Request, ctx: Revoke, body: TokenRevokeIn) -> TokenRevokeOut:
    """Revoke one access token, given the token itself or its ``jti``."""
    c = container_of(request)
    if (body.token is None) == (body.jti is None):
        raise InvalidInput("send exactly one of token or jti")
    if body.token is not None:
        access = c.tokens.revoke_as_admin(ctx, body.token, body.reason)
        return TokenRevokeOut(revoked=access is not None, jti=access.jti if access else None)
    assert body.jti is not None
    c.revocations.revoke_token(ctx, body.jti, expires=None, agent_id=None, reason=body.reason)
    return TokenRevokeOut(revoked=True, jti=body.jti)


@router.post("/v1/agents/{agent_id}/revoke-tokens", response_model=AgentTokensRevokedOut)
def revoke_agent_tokens(
    agent_id: IdPath, request: Request, ctx: Revoke, body: RetireIn
) -> AgentTokensRevokedOut:
    """Revoke every token issued to the agent until now."""
    cutoff = container_of(request).revocations.revoke_agent(ctx, agent_id, body.reason)
    return AgentTokensRevokedOut(agent_id=agent_id, cutoff=cutoff)


@router.get("/v1/revocations", response_model=RevocationFeed)
async def revocation_feed(
    request: Request,
    ctx: FeedRead,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = 0,
    kinds: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> RevocationFeed:
    """Entries after ``after``, in order, of the ``kinds`` the caller names
    (comma-separated; ``signing_key``: retired signing keys, by ``kid``). With
    ``wait`` the call is a long poll: it answers as soon as this replica's feed moves
    past ``after`` with an entry of those kinds, or after ``wait`` seconds with none."""
    c = container_of(request)
    served = _feed_kinds(kinds)
    revoked = c.revocations.revoked
    # The feed moves when the revocation sync loop reads the store: re-checked often.
    await wait_until(
        lambda: revoked.cursor_for(served) > after,
        wait=min(wait, c.settings.revocation_feed_max_wait_seconds),
        poll=min(0.05, c.settings.revocation_poll_seconds),
    )
    entries = await anyio.to_thread.run_sync(
        lambda: c.revocations.feed(after, kinds=None if served == _ALL_KINDS else served)
    )
    await anyio.to_thread.run_sync(
        lambda: audited_read(
            request,
            ctx,
            "revocations.feed",
            resource=ResourceRef("revocation_feed", str(after)),
            details={"entries": len(entries)},
        )
    )
    return RevocationFeed(
        entries=[
            RevocationOut(
                seq=e.seq, kind=e.kind.value, subject=e.subject, cutoff=e.cutoff, expires=e.expires
            )
            for e in entries
        ],
        cursor=entries[-1].seq if entries else after,
        kinds=sorted(k.value for k in served),
    )
