"""Obtain and refresh DPoP-bound access tokens; sign a proof for every request.

:class:`AgentClient` reads the authorization server's metadata (RFC 8414), then gets
tokens with the ``client_credentials`` grant, authenticating with a fresh
``private_key_jwt`` assertion and binding the token to its DPoP key. Tokens are cached
and refreshed ``refresh_margin`` seconds before they expire. A ``use_dpop_nonce``
answer (RFC 9449 sections 8-9) is retried once with the server's nonce, which is then
remembered. :class:`DPoPAuth` is an ``httpx.Auth`` that does the same for each call to
a resource server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import httpx

from agentiam.sdk.keys import AgentKey
from agentiam.sdk.proofs import client_assertion, dpop_proof

__all__ = ["AccessToken", "AgentClient", "DPoPAuth", "TokenError"]

_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


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
        endpoint: str = self.metadata()["token_endpoint"]
        for attempt in range(2):
            form = {
                "grant_type": "client_credentials",
                "client_assertion_type": _ASSERTION_TYPE,
                "client_assertion": client_assertion(
                    self.key, client_id=self.client_id, audience=self.issuer
                ),
            }
            if self.resource:
                form["resource"] = self.resource
            if self.scope:
                form["scope"] = self.scope
            proof = dpop_proof(
                self.dpop_key, method="POST", url=endpoint, nonce=self._nonces.get(endpoint)
            )
            r = self._http.post(endpoint, data=form, headers={"DPoP": proof})
            if "dpop-nonce" in r.headers:
                self._nonces[endpoint] = r.headers["dpop-nonce"]
            if r.status_code == 200:
                body = r.json()
                return AccessToken(
                    value=body["access_token"],
                    token_type=body["token_type"],
                    expires_at=time.time() + float(body["expires_in"]),
                    scope=body.get("scope", ""),
                )
            error = _error_of(r)
            if error[0] == "use_dpop_nonce" and attempt == 0:
                continue
            raise TokenError(error[0], error[1], r.status_code)
        raise TokenError("use_dpop_nonce", "server kept asking for a new nonce", 400)

    # -- resource requests ----------------------------------------------------------------

    def auth(self) -> DPoPAuth:
        return DPoPAuth(self)

    def http(self, base_url: str = "", **kwargs: Any) -> httpx.Client:
        """An httpx client that sends ``Authorization: DPoP <token>`` and a fresh proof
        with every request."""
        return httpx.Client(base_url=base_url, auth=self.auth(), **kwargs)

    def close(self) -> None:
        self._http.close()


class DPoPAuth(httpx.Auth):
    """httpx authentication: a token from ``agent`` and one DPoP proof per request,
    with ``ath`` (RFC 9449 section 7.1); retries once on ``use_dpop_nonce``."""

    def __init__(self, agent: AgentClient) -> None:
        self.agent = agent
        self._nonce: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.agent.token()
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
