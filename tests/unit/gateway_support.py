"""In-memory parts for the gateway tests: an authorization server key that signs
access tokens, a link to a fake control plane (real verifier, real Cedar authorizer,
an outage switch), an audit sink that records or fails, and an enforcer wired to them."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from joserfc import jwt
from tests.unit.policy_support import agent as agent_record
from tests.unit.policy_support import authorizer as make_authorizer

from agentiam.adapters.gateway.enforcer import Enforcer
from agentiam.core.credentials.jose import import_public_jwk
from agentiam.core.credentials.revocations import RevocationSet
from agentiam.core.credentials.verifier import AccessTokenVerifier, VerifierConfig
from agentiam.core.enforcement import RateLimiter
from agentiam.core.policy.authorizer import Authorizer
from agentiam.core.policy.entities import EntitySnapshot
from agentiam.core.policy.schema import Schema
from agentiam.errors import ServiceUnavailable
from agentiam.sdk.keys import AgentKey
from agentiam.sdk.proofs import dpop_proof

ISSUER = "https://iam.example"
GATEWAY = "https://gw.example"
METADATA = GATEWAY + "/.well-known/oauth-protected-resource"
KID = "as-1"
AGENT = "agt_gateway_test_1"


class NoApprovals:
    """An approvals client (or approval flow) that must not be used: the request is
    refused before any approval is asked for."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the approvals were asked ({name})")


class Keys:
    def __init__(self, key: AgentKey) -> None:
        self._key = import_public_jwk(key.public_jwk(), "ES256", kid=KID)

    def get(self, kid: str) -> Any:
        return self._key if kid == KID else None


class FakeLink:
    """What the enforcer reads from ``ControlPlaneLink``: ``verifier`` and
    ``authorizer()``, which raises once ``outage`` is set (past the bound)."""

    def __init__(self, verifier: AccessTokenVerifier, authorizer: Authorizer) -> None:
        self.verifier = verifier
        self._authorizer = authorizer
        self.outage = False
        self.asked = 0

    def authorizer(self) -> Authorizer:
        self.asked += 1
        if self.outage:
            raise ServiceUnavailable("the gateway has lost the control plane")
        return self._authorizer

    def entities(self) -> EntitySnapshot:
        """The entities decisions use now (the real link's, after the first bundle)."""
        return self._authorizer.entities

    def derive_with(self, derive: Callable[[EntitySnapshot], EntitySnapshot]) -> None:
        """Apply a gateway's derive step to the entities in force, as the real link
        does to every bundle's."""
        self._authorizer.update(entities=derive(self._authorizer.entities))


class Sink:
    """An audit sink: records every append, or raises like a full or broken spool."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.broken = False

    def append(self, events: list[dict[str, Any]]) -> None:
        if self.broken:
            raise OSError("disk full")
        self.events.extend(events)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


class QuietSink:
    """A spool that records each hand-over (the event types, and whether it started a
    write) and each ``wake``; every write succeeds at once."""

    def __init__(self) -> None:
        self.submits: list[tuple[list[str], bool]] = []
        self.wakes = 0

    def submit(self, events: list[dict[str, Any]], *, wake: bool = True) -> Future[None]:
        self.submits.append(([e["type"] for e in events], wake))
        future: Future[None] = Future()
        future.set_result(None)
        return future

    def wake(self) -> None:
        self.wakes += 1

    def snapshot(self) -> tuple[list[tuple[list[str], bool]], int]:
        return list(self.submits), self.wakes


class Parties:
    """An authorization server, an agent holding a DPoP key, and the gateway's parts."""

    def __init__(
        self,
        policies: str,
        *,
        limiter: RateLimiter | None = None,
        agents: Iterable[str] = (AGENT,),
        schema: Schema | None = None,
    ) -> None:
        self.as_key = AgentKey.generate()
        self.dpop_key = AgentKey.generate()
        self.revoked = RevocationSet(max_staleness=60)
        self.revoked.mark_fresh()
        self.verifier = AccessTokenVerifier(
            VerifierConfig(issuer=ISSUER, audience=GATEWAY), Keys(self.as_key), self.revoked
        )
        self.link = FakeLink(
            self.verifier,
            make_authorizer(policies, agents=[agent_record(a) for a in agents], schema=schema),
        )
        self.sink = Sink()
        self.enforcer = Enforcer(
            "test-gw",
            self.link,  # type: ignore[arg-type]
            self.sink,
            resource_metadata=METADATA,
            limiter=limiter,
        )

    def token(self, *, audience: str = GATEWAY, **extra: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": AGENT,
            "aud": audience,
            "client_id": AGENT,
            "iat": now,
            "exp": now + 300,
            "jti": secrets.token_urlsafe(12),
            "cnf": {"jkt": self.dpop_key.key.thumbprint()},
            **extra,
        }
        header = {"typ": "at+jwt", "alg": "ES256", "kid": KID}
        return jwt.encode(header, claims, self.as_key.key, algorithms=["ES256"])

    def headers(self, method: str, url: str, token: str | None = None) -> dict[str, list[str]]:
        """The ``authorization`` and ``dpop`` arguments of ``Enforcer.authenticate``."""
        token = token or self.token()
        proof = dpop_proof(self.dpop_key, method=method, url=url, access_token=token)
        return {"authorization": [f"DPoP {token}"], "dpop": [proof]}
