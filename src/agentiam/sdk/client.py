"""Obtain and refresh DPoP-bound access tokens; sign a proof for every request;
act for humans and delegate to sub-agents (RFC 8693 token exchange).

:class:`AgentClient` reads the authorization server's metadata (RFC 8414), then gets
tokens with the ``client_credentials`` grant, authenticating with a fresh
``private_key_jwt`` assertion and binding the token to its DPoP key. Tokens are cached
and refreshed ``refresh_margin`` seconds before they expire. A ``use_dpop_nonce``
answer (RFC 9449 sections 8-9) is retried once with the server's nonce, which is then
remembered. :class:`DPoPAuth` is an ``httpx.Auth`` that does the same for each call to
a resource server.

Delegation: :meth:`AgentClient.act_for` exchanges a human's subject token for a token
that acts on their behalf; :meth:`AgentClient.exchange` does the same with a parent
agent's delegated token (the sub-agent's side of a hop); :meth:`AgentClient.spawn_subagent`
creates a just-in-time sub-agent whose key pair is generated here and never leaves this
process, and returns a client for it holding its first (delegated) token.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from agentiam.sdk.keys import AgentKey
from agentiam.sdk.proofs import client_assertion, dpop_proof

__all__ = ["AccessToken", "AgentClient", "DPoPAuth", "SubAgent", "TokenError"]

_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105


class TokenError(Exception):
    """The authorization server refused: ``error`` is its OAuth error code."""

    def __init__(self, error: str, description: str, status: int) -> None:
        super().__init__(f"{error}: {description} (HTTP {status})")
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str
    token_type: str
    expires_at: float
    scope: str
    authorization_details: tuple[Mapping[str, Any], ...] = field(default=())

    @classmethod
    def from_response(cls, body: Mapping[str, Any]) -> AccessToken:
        return cls(
            value=body["access_token"],
            token_type=body["token_type"],
            expires_at=time.time() + float(body["expires_in"]),
            scope=body.get("scope", ""),
            authorization_details=tuple(body.get("authorization_details") or ()),
        )


@dataclass(frozen=True, slots=True)
class SubAgent:
    """A just-in-time sub-agent: its id, its key (generated locally), its first token
    (which continues the parent's delegation chain) and a client acting as it."""

    agent_id: str
    name: str
    expires_at: str | None
    key: AgentKey
    token: AccessToken
    client: AgentClient


class AgentClient:
    def __init__(
        self,
        issuer: str,
        *,
        client_id: str,
        key: AgentKey,
        resource: str | None = None,
        scope: str | None = None,
        dpop_key: AgentKey | None = None,
        refresh_margin: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        """``key`` signs assertions; ``dpop_key`` (default: a fresh ES256 key held only
        in memory) binds the tokens."""
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.key = key
        self.dpop_key = dpop_key or AgentKey.generate()
        self.resource = resource
        self.scope = scope
        self.refresh_margin = refresh_margin
        self._http = http or httpx.Client(timeout=10)
        self._metadata: dict[str, Any] | None = None
        self._token: AccessToken | None = None
        self._nonces: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- discovery ----------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            r = self._http.get(self.issuer + "/.well-known/oauth-authorization-server")
            r.raise_for_status()
            data: dict[str, Any] = r.json()
            if data.get("issuer") != self.issuer:  # RFC 8414 section 3.3
                raise TokenError("invalid_issuer", "metadata issuer does not match", r.status_code)
            self._metadata = data
        return self._metadata

    # -- tokens -------------------------------------------------------------------------

    def token(self) -> AccessToken:
        """A valid token, fetched or refreshed as needed."""
        with self._lock:
            current = self._token
            if current is None or current.expires_at - self.refresh_margin <= time.time():
                current = self._token = self._fetch()
            return current

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def _fetch(self) -> AccessToken:
        def form() -> dict[str, str]:
            values = {
                "grant_type": "client_credentials",
                "client_assertion_type": _ASSERTION_TYPE,
                "client_assertion": client_assertion(
                    self.key, client_id=self.client_id, audience=self.issuer
                ),
            }
            if self.resource:
                values["resource"] = self.resource
            if self.scope:
                values["scope"] = self.scope
            return values

        return self._token_request(form)

    def _token_request(self, form: Any) -> AccessToken:
        """POST a fresh ``form()`` with a DPoP proof; retry once on ``use_dpop_nonce``."""
        endpoint: str = self.metadata()["token_endpoint"]
        for attempt in range(2):
            proof = dpop_proof(
                self.dpop_key, method="POST", url=endpoint, nonce=self._nonces.get(endpoint)
            )
            r = self._http.post(endpoint, data=form(), headers={"DPoP": proof})
            if "dpop-nonce" in r.headers:
                self._nonces[endpoint] = r.headers["dpop-nonce"]
            if r.status_code == 200:
                return AccessToken.from_response(r.json())
            error = _error_of(r)
            if error[0] == "use_dpop_nonce" and attempt == 0:
                continue
            raise TokenError(error[0], error[1], r.status_code)
        raise TokenError("use_dpop_nonce", "server kept asking for a new nonce", 400)

    # -- delegation (RFC 8693) ------------------------------------------------------------

    def exchange(
        self,
        subject_token: str | AccessToken,
        *,
        subject_token_type: str = ACCESS_TOKEN_TYPE,
        scope: str | None = None,
        resource: str | None = None,
        authorization_details: Sequence[Mapping[str, Any]] | None = None,
    ) -> AccessToken:
        """Exchange ``subject_token`` for a token this agent holds while acting for its
        subject (RFC 8693 section 2.1). This agent's own token is the actor token and
        the proof is signed with its DPoP key. Narrow with ``scope``, ``resource`` and
        ``authorization_details``; the server refuses any widening."""
        subject = subject_token.value if isinstance(subject_token, AccessToken) else subject_token

        def form() -> dict[str, str]:
            values = {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": subject,
                "subject_token_type": subject_token_type,
                "actor_token": self.token().value,
                "actor_token_type": ACCESS_TOKEN_TYPE,
                "requested_token_type": ACCESS_TOKEN_TYPE,
            }
            if scope is not None:
                values["scope"] = scope
            if resource is not None:
                values["resource"] = resource
            if authorization_details is not None:
                values["authorization_details"] = json.dumps(list(authorization_details))
            return values

        return self._token_request(form)

    def act_for(
        self,
        human_token: str,
        *,
        subject_token_type: str = ACCESS_TOKEN_TYPE,
        scope: str | None = None,
        resource: str | None = None,
        authorization_details: Sequence[Mapping[str, Any]] | None = None,
    ) -> AccessToken:
        """Act on behalf of a human: exchange their subject token (from a trusted IdP,
        with ``subject_token_type`` ``...:jwt`` or ``...:id_token``, or one AgentIAM
        minted) for a delegated token. The human must have granted this agent."""
        return self.exchange(
            human_token,
            subject_token_type=subject_token_type,
            scope=scope,
            resource=resource,
            authorization_details=authorization_details,
        )

    def spawn_subagent(
        self,
        *,
        ttl_seconds: int,
        on_behalf: AccessToken | None = None,
        scope: str | None = None,
        resource: str | None = None,
        authorization_details: Sequence[Mapping[str, Any]] | None = None,
        name: str | None = None,
        purpose: str | None = None,
        alg: str = "ES256",
    ) -> SubAgent:
        """Create a just-in-time sub-agent in one call. Its key pair is generated here
        (the private key never leaves this process); the server registers the public
        key, ties the sub-agent's life to ours and to ``ttl_seconds``, and returns its
        first token, which continues ``on_behalf``'s chain (default: our own token)."""
        parent = on_behalf or self.token()
        url = self.issuer + "/v1/sub-agents"
        key = AgentKey.generate(alg)
        body: dict[str, Any] = {
            "jwk": key.public_jwk(),
            "key_proof": dpop_proof(key, method="POST", url=url, access_token=parent.value),
            "ttl_seconds": ttl_seconds,
        }
        for name_, value in (
            ("scope", scope),
            ("resource", resource),
            ("name", name),
            ("purpose", purpose),
        ):
            if value is not None:
                body[name_] = value
        if authorization_details is not None:
            body["authorization_details"] = list(authorization_details)
        proof = dpop_proof(self.dpop_key, method="POST", url=url, access_token=parent.value)
        r = self._http.post(
            url, json=body, headers={"Authorization": f"DPoP {parent.value}", "DPoP": proof}
        )
        if r.status_code != 201:
            error = _error_of(r)
            raise TokenError(error[0], error[1], r.status_code)
        data = r.json()
        token = AccessToken.from_response(data)
        client = AgentClient(
            self.issuer,
            client_id=data["agent_id"],
            key=key,
            dpop_key=key,
            resource=resource or self.resource,
            refresh_margin=self.refresh_margin,
            http=self._http,
        )
        return SubAgent(
            agent_id=data["agent_id"],
            name=data["name"],
            expires_at=data.get("expires_at"),
            key=key,
            token=token,
            client=client,
        )

    # -- resource requests ----------------------------------------------------------------

    def auth(self, token: AccessToken | None = None) -> DPoPAuth:
        return DPoPAuth(self, token)

    def http(
        self, base_url: str = "", *, token: AccessToken | None = None, **kwargs: Any
    ) -> httpx.Client:
        """An httpx client that sends ``Authorization: DPoP <token>`` and a fresh proof
        with every request; ``token`` (a delegated token) instead of our own."""
        return httpx.Client(base_url=base_url, auth=self.auth(token), **kwargs)

    def close(self) -> None:
        self._http.close()


class DPoPAuth(httpx.Auth):
    """httpx authentication: a token from ``agent`` and one DPoP proof per request,
    with ``ath`` (RFC 9449 section 7.1); retries once on ``use_dpop_nonce``."""

    def __init__(self, agent: AgentClient, token: AccessToken | None = None) -> None:
        self.agent = agent
        self.token = token
        self._nonce: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.token or self.agent.token()
        url = str(request.url)
        for attempt in range(2):
            request.headers["Authorization"] = f"{token.token_type} {token.value}"
            if token.token_type.lower() == "dpop":
                request.headers["DPoP"] = dpop_proof(
                    self.agent.dpop_key,
                    method=request.method,
                    url=url,
                    access_token=token.value,
                    nonce=self._nonce,
                )
            response = yield request
            if "dpop-nonce" in response.headers:
                self._nonce = response.headers["dpop-nonce"]
            challenge = response.headers.get("www-authenticate", "")
            if response.status_code == 401 and "use_dpop_nonce" in challenge and attempt == 0:
                continue
            return


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
        return str(body.get("error", "unknown")), str(body.get("error_description", ""))
    except ValueError:
        return "unknown", response.text[:200]
