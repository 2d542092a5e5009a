"""Obtain and refresh DPoP-bound access tokens; sign a proof for every request;
open MCP sessions through a gateway; act for humans and delegate to sub-agents
(RFC 8693 token exchange).

:class:`AgentClient` reads the authorization server's metadata (RFC 8414), then gets
tokens with the ``client_credentials`` grant (RFC 6749 section 4.4), authenticating
with a fresh ``private_key_jwt`` assertion (RFC 7523 section 2.2) and binding the token
to its DPoP key (RFC 9449 section 5). Tokens are cached per resource (RFC 8707
``resource``, the token's audience) and refreshed ``refresh_margin`` seconds before
they expire, or half way through their lifetime if that comes later (so a token of
30 s or less is not fetched again for every request). A ``use_dpop_nonce`` answer
(RFC 9449 sections 8-9) is retried once with the server's nonce, which is then
remembered.

:class:`DPoPAuth` is an ``httpx.Auth`` for resource servers (RFC 9449 section 7): each
request gets ``Authorization: DPoP <token>`` for its resource and a fresh proof bound
to its method and URL (``htm``, ``htu``) and to the token (``ath``). A 401
``use_dpop_nonce`` is retried once with the server's nonce (section 9); a 401
``invalid_token`` (RFC 6750 section 3.1: expired early, key rotated, revoked) gets one
fresh token and one retry. :meth:`AgentClient.mcp_session` opens an MCP session (the
official SDK's ``ClientSession`` over Streamable HTTP) with the same authentication.

Delegation: :meth:`AgentClient.act_for` exchanges a human's subject token for a token
that acts on their behalf; :meth:`AgentClient.exchange` does the same with a parent
agent's delegated token (the sub-agent's side of a hop); :meth:`AgentClient.spawn_subagent`
creates a just-in-time sub-agent whose key pair is generated here and never leaves this
process, and returns a client for it holding its first (delegated) token.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import anyio.to_thread
import httpx

from agentiam.core.approvals_wire import (
    APPROVAL_HEADER,
    APPROVAL_STATE_HEADER,
    META_KEY,
    REFUSED_STATES,
    WAITING_STATES,
    read_mcp_result_meta,
)
from agentiam.sdk.discovery import challenged_metadata_url, origin, protected_resource
from agentiam.sdk.keys import AgentKey
from agentiam.sdk.proofs import client_assertion, dpop_proof

if TYPE_CHECKING:
    from mcp.client.session import ClientSession

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
    """An access token as the token endpoint answered it (RFC 6749 section 5.1):
    ``token_type`` is ``DPoP`` for a DPoP-bound token (RFC 9449 section 5),
    ``expires_at`` unix seconds by this machine's clock, ``lifetime`` the seconds it
    was issued for (``expires_in``; None if unknown). ``repr`` leaves out the value."""

    value: str = field(repr=False)
    token_type: str
    expires_at: float
    scope: str
    authorization_details: tuple[Mapping[str, Any], ...] = field(default=())
    lifetime: float | None = None

    @classmethod
    def from_response(cls, body: Mapping[str, Any], *, now: float | None = None) -> AccessToken:
        """The token of a successful token response (section 5.1), its lifetime
        counted from ``now`` (unix seconds; default: the current time)."""
        lifetime = float(body["expires_in"])
        return cls(
            value=body["access_token"],
            token_type=body["token_type"],
            expires_at=(time.time() if now is None else now) + lifetime,
            scope=body.get("scope", ""),
            authorization_details=tuple(body.get("authorization_details") or ()),
            lifetime=lifetime,
        )

    def refresh_at(self, margin: float) -> float:
        """When a new token should replace this one: ``margin`` seconds before it
        expires, but not before half its lifetime has passed (when known)."""
        if self.lifetime is not None:
            margin = min(margin, max(self.lifetime, 0.0) / 2)
        return self.expires_at - margin


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
    """One agent's identity: its client id and key, its tokens, and the HTTP and MCP
    clients that use them. Thread-safe; one instance per agent is enough."""

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
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``key`` signs assertions; ``dpop_key`` (default: a fresh ES256 key held only
        in memory) binds the tokens. ``resource`` and ``scope`` are what :meth:`token`
        asks for by default (RFC 8707 section 2, RFC 6749 section 3.3). A token is
        refreshed ``refresh_margin`` seconds before it expires, at most half its
        lifetime early (:meth:`AccessToken.refresh_at`). ``clock`` (unix seconds)
        times token expiry."""
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.key = key
        self.dpop_key = dpop_key or AgentKey.generate()
        self.resource = resource
        self.scope = scope
        self.refresh_margin = refresh_margin
        self._clock = clock
        self._http = http or httpx.Client(timeout=10)
        self._metadata: dict[str, Any] | None = None
        self._tokens: dict[str | None, AccessToken] = {}  # by resource
        self._nonces = _ServerNonces()
        self._lock = threading.Lock()

    # -- discovery ----------------------------------------------------------------------

    @classmethod
    def for_resource(
        cls,
        resource: str,
        *,
        client_id: str,
        key: AgentKey,
        trusted_issuers: Iterable[str],
        http: httpx.Client | None = None,
        challenge: bool = True,
        **options: Any,
    ) -> AgentClient:
        """A client for ``resource`` (a gateway's URL) whose authorization server is
        found in the resource's metadata (RFC 9728), taken only if it is among
        ``trusted_issuers``; ``options`` as for the constructor. With ``challenge``
        the resource is first asked without a token, and the metadata URL its 401
        names in ``WWW-Authenticate`` is used (same origin only); without one, or with
        ``challenge=False``, the well-known URL (RFC 9728 sections 5.1 and 3.1). Raises
        :class:`~agentiam.sdk.discovery.DiscoveryError`."""
        client = http or httpx.Client(timeout=10)
        try:
            named = challenged_metadata_url(resource, client) if challenge else None
            _, issuer = protected_resource(
                resource, client, trusted_issuers=trusted_issuers, url=named
            )
        except BaseException:
            if http is None:  # ours: not left open when discovery fails
                client.close()
            raise
        return cls(issuer, client_id=client_id, key=key, resource=resource, http=client, **options)

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

    def token(self, resource: str | None = None) -> AccessToken:
        """A valid token for ``resource`` (default: the client's ``resource``), from
        the cache or fetched when missing or due for a refresh."""
        key = resource or self.resource
        with self._lock:
            current = self._fresh(self._tokens.get(key))
            if current is None:
                current = self._tokens[key] = self._fetch(key)
            return current

    def cached_token(self, resource: str | None = None) -> AccessToken | None:
        """The cached token for ``resource`` if it needs no refresh yet, else None
        (never blocks on the network)."""
        return self._fresh(self._tokens.get(resource or self.resource))

    def _fresh(self, token: AccessToken | None) -> AccessToken | None:
        """``token`` unless it is due for a refresh (:meth:`AccessToken.refresh_at`)."""
        if token is None or token.refresh_at(self.refresh_margin) <= self._clock():
            return None
        return token

    def invalidate(self, resource: str | None = None, *, token: str | None = None) -> None:
        """Drop the cached token for ``resource`` (only if it is still ``token``, when
        given: a refresh another thread already made is kept)."""
        key = resource or self.resource
        with self._lock:
            current = self._tokens.get(key)
            if current is not None and (token is None or current.value == token):
                del self._tokens[key]

    def _fetch(self, resource: str | None) -> AccessToken:
        def form() -> dict[str, str]:
            values = {
                "grant_type": "client_credentials",
                "client_assertion_type": _ASSERTION_TYPE,
                "client_assertion": client_assertion(
                    self.key, client_id=self.client_id, audience=self.issuer
                ),
            }
            if resource:
                values["resource"] = resource
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
            sent = self._clock()  # the lifetime counts from the request, to be safe
            r = self._http.post(endpoint, data=form(), headers={"DPoP": proof})
            nonce = self._nonces.learn(endpoint, r.headers)
            if r.status_code == 200:
                return AccessToken.from_response(r.json(), now=sent)
            error = _error_of(r)
            if error[0] == "use_dpop_nonce" and nonce and attempt == 0:  # section 8
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
        token = AccessToken.from_response(data, now=self._clock())
        client = AgentClient(
            self.issuer,
            client_id=data["agent_id"],
            key=key,
            dpop_key=key,
            resource=resource or self.resource,
            refresh_margin=self.refresh_margin,
            http=self._http,
            clock=self._clock,
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

    def auth(
        self,
        token: AccessToken | None = None,
        *,
        resource: str | None = None,
        approval_wait: float = 0.0,
    ) -> DPoPAuth:
        """An ``httpx.Auth`` sending this agent's token for ``resource`` (default: the
        client's ``resource``), or the fixed ``token`` (e.g. a delegated one), with a
        fresh DPoP proof per request. ``approval_wait``: how long a call may wait for a
        human's approval (see :class:`DPoPAuth`; 0: the pending answer is returned)."""
        return DPoPAuth(self, token, resource=resource, approval_wait=approval_wait)

    def http(
        self,
        base_url: str = "",
        *,
        token: AccessToken | None = None,
        resource: str | None = None,
        approval_wait: float = 0.0,
        **kwargs: Any,
    ) -> httpx.Client:
        """An httpx client that sends ``Authorization: DPoP <token>`` and a fresh proof
        with every request; ``token`` (a delegated token) instead of our own;
        ``approval_wait``: seconds a call may wait for a human's approval."""
        auth = self.auth(token, resource=resource, approval_wait=approval_wait)
        return httpx.Client(base_url=base_url, auth=auth, **kwargs)

    def async_http(
        self,
        base_url: str = "",
        *,
        token: AccessToken | None = None,
        resource: str | None = None,
        approval_wait: float = 0.0,
        **kwargs: Any,
    ) -> httpx.AsyncClient:
        """:meth:`http` for asyncio: token fetches run on a worker thread, so the event
        loop never waits on the token endpoint."""
        auth = self.auth(token, resource=resource, approval_wait=approval_wait)
        return httpx.AsyncClient(base_url=base_url, auth=auth, **kwargs)

    @asynccontextmanager
    async def mcp_session(
        self,
        url: str,
        *,
        resource: str | None = None,
        token: AccessToken | None = None,
        timeout: float = 30.0,
        sse_read_timeout: float = 300.0,
        approval_wait: float = 0.0,
        **session_kwargs: Any,
    ) -> AsyncIterator[ClientSession]:
        """An initialized MCP ``ClientSession`` (the official SDK, ``pip install
        'agentiam[mcp]'``) over Streamable HTTP to ``url``, an MCP gateway's endpoint.

        Every HTTP request of the session (POSTs, the GET stream, the closing DELETE)
        carries a DPoP-bound token for ``resource`` and its own proof, as
        :class:`DPoPAuth` sends them. ``resource`` defaults to ``url``: the MCP
        authorization spec names the server's canonical URI as the RFC 8707 resource.
        ``session_kwargs`` go to ``ClientSession`` (callbacks, ``client_info``, ...)::

            async with agent.mcp_session("https://gw.example.com/mcp") as session:
                tools = await session.list_tools()
                result = await session.call_tool("search", {"query": "invoices"})

        ``approval_wait`` (seconds, default 0: off): a ``call_tool`` that an
        enforcement point answers as waiting for a human's approval (a tool error
        result whose ``_meta["agentiam/approval"]`` is pending) is retried, with the
        approval id in ``params._meta["agentiam/approval"]``, every ``retry_after``
        seconds until the real result comes back, or :class:`ApprovalDenied`,
        :class:`ApprovalExpired` or, past the bound, :class:`ApprovalPending` is
        raised (docs/approvals.md).
        """
        try:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            session_class = _approving_session()
        except ImportError as exc:  # pragma: no cover - the extra is installed in tests
            raise ImportError(
                "AgentClient.mcp_session needs the MCP SDK: pip install 'agentiam[mcp]'"
            ) from exc

        class _McpAuth(_DPoPFlow, httpx2.Auth):  # the SDK's transport runs on httpx2
            pass

        auth = _McpAuth(self, token, resource=resource or url)
        limits = httpx2.Timeout(timeout, read=sse_read_timeout)
        async with (
            httpx2.AsyncClient(auth=auth, timeout=limits) as http,
            streamable_http_client(url, http_client=http) as (read, write),
            session_class(read, write, approval_wait=approval_wait, **session_kwargs) as session,
        ):
            await session.initialize()
            yield session

    def close(self) -> None:
        self._http.close()


_CHALLENGE_ERROR = re.compile(r'error\s*=\s*"([^"]*)"', re.IGNORECASE)
# RFC 9449 section 8.1: nonce = 1*NQCHAR (printable ASCII but '"' and '\'), bounded as
# servers bound the proof's nonce claim
_NONCE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,512}")


class _ServerNonces:
    """The latest ``DPoP-Nonce`` each server supplied, used in this client's next
    proofs to it until it supplies another (RFC 9449 section 8.2; section 9 for
    resource servers): the one place both the token requests (keyed by the token
    endpoint) and every resource-server flow, httpx and MCP alike (keyed by origin),
    learn and read nonces. A value that is not a nonce (section 8.1 syntax) is
    ignored; at most ``MAX_SERVERS`` servers are remembered (the oldest go first)."""

    MAX_SERVERS = 1024

    def __init__(self) -> None:
        self._by_server: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, server: str) -> str | None:
        return self._by_server.get(server)

    def learn(self, server: str, headers: Any) -> str | None:
        """Remember the ``DPoP-Nonce`` of an answer from ``server`` (any status may
        carry one, section 8.2) and return it; None when it has none."""
        nonce = headers.get("dpop-nonce")
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            return None
        with self._lock:
            self._by_server[server] = nonce
            if len(self._by_server) > self.MAX_SERVERS:
                del self._by_server[next(iter(self._by_server))]
        return nonce


def _challenge_errors(challenges: Sequence[str]) -> set[str]:
    """The ``error`` auth-params of ``WWW-Authenticate`` challenges (RFC 9110 section
    11.6.1; RFC 6750 section 3; RFC 9449 section 7.1)."""
    return {m.group(1) for value in challenges for m in _CHALLENGE_ERROR.finditer(value)}


class _DPoPFlow:
    """The authentication flow for a request to a resource server, for both HTTP
    stacks (``httpx`` and the ``httpx2`` the MCP SDK uses): requests and responses
    are used only through the members the two share."""

    requires_request_body = True  # a retry re-sends the body
    requires_response_body = False

    def __init__(
        self,
        agent: AgentClient,
        token: AccessToken | None = None,
        *,
        resource: str | None = None,
        approval_wait: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.agent = agent
        self.token = token
        self.resource = resource
        self.approval_wait = approval_wait
        self._sleep = sleep

    # -- the two drivers -------------------------------------------------------------

    def sync_auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        request.read()
        token = self.token or self.agent.token(self.resource)
        refreshed = nonce_retried = False
        waiting = _ApprovalWait(self.approval_wait)
        while True:
            self._sign(request, token)
            response = yield request
            action = self._after(response, nonce_retried, refreshed)
            if action is None:
                pause = waiting.next(request, response)
                if pause is None:
                    return
                self._sleep(pause)
                continue
            if action == "nonce":
                nonce_retried = True
                continue
            refreshed = True
            self.agent.invalidate(self.resource, token=token.value)
            token = self.agent.token(self.resource)

    async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
        await request.aread()
        token = self.token or await self._token_async()
        refreshed = nonce_retried = False
        waiting = _ApprovalWait(self.approval_wait)
        while True:
            self._sign(request, token)
            response = yield request
            action = self._after(response, nonce_retried, refreshed)
            if action is None:
                pause = waiting.next(request, response)
                if pause is None:
                    return
                await anyio.sleep(pause)
                continue
            if action == "nonce":
                nonce_retried = True
                continue
            refreshed = True
            self.agent.invalidate(self.resource, token=token.value)
            token = await self._token_async()

    # -- the steps -------------------------------------------------------------------

    async def _token_async(self) -> AccessToken:
        cached = self.agent.cached_token(self.resource)
        if cached is not None:
            return cached
        return await anyio.to_thread.run_sync(self.agent.token, self.resource)

    def _sign(self, request: Any, token: AccessToken) -> None:
        """RFC 9449 section 7.1: the token under the ``DPoP`` scheme and a new proof
        for this request (``htm``, ``htu`` without query and fragment, ``ath``)."""
        request.headers["Authorization"] = f"{token.token_type} {token.value}"
        if token.token_type.lower() == "dpop":
            request.headers["DPoP"] = dpop_proof(
                self.agent.dpop_key,
                method=request.method,
                url=str(request.url),
                access_token=token.value,
                nonce=self.agent._nonces.get(origin(request.url)),  # section 9
            )

    def _after(self, response: Any, nonce_retried: bool, refreshed: bool) -> str | None:
        """What to do with ``response``: None (done), ``"nonce"`` (retry with the new
        nonce) or ``"refresh"`` (retry once with a fresh token)."""
        nonce = self.agent._nonces.learn(origin(response.request.url), response.headers)
        if response.status_code != 401:
            return None
        errors = _challenge_errors(response.headers.get_list("www-authenticate"))
        if "use_dpop_nonce" in errors and nonce and not nonce_retried:
            return "nonce"
        if "invalid_token" in errors and self.token is None and not refreshed:
            return "refresh"
        return None


class ApprovalError(Exception):
    """A call waited on a human's approval (docs/approvals.md) and did not get it.
    ``approval_id`` names the request (``agentiam approvals show ID``)."""

    def __init__(self, approval_id: str, state: str, message: str) -> None:
        super().__init__(message)
        self.approval_id = approval_id
        self.state = state


class ApprovalDenied(ApprovalError):
    """A human denied the call (or the approval was for another call, or used)."""


class ApprovalExpired(ApprovalError):
    """Nobody decided in time: a timeout denies."""


class ApprovalPending(ApprovalError):
    """The caller's bound (``approval_wait``) passed while the request was pending; it
    may still be approved: retry the same call later to use it."""


class _ApprovalWait:
    """Follows an enforcement point's pending answer for one call: 403 with the
    ``AgentIAM-Approval`` and ``AgentIAM-Approval-State`` headers. While pending, the
    call is retried with the approval's id after ``Retry-After`` seconds, until it goes
    through, is refused for good (typed exceptions) or ``bound`` seconds pass."""

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self.deadline: float | None = None

    def next(self, request: Any, response: Any) -> float | None:
        """Seconds to wait before retrying ``request``, or None (the answer stands)."""
        approval = response.headers.get(APPROVAL_HEADER)
        if self.bound <= 0 or response.status_code != 403 or not approval:
            return None
        state = response.headers.get(APPROVAL_STATE_HEADER, "")
        try:
            retry_after: float | None = float(response.headers.get("retry-after", "1"))
        except ValueError:
            retry_after = None
        pause = self.pause(approval, state, retry_after)
        if pause is not None:
            request.headers[APPROVAL_HEADER] = approval
        return pause

    def pause(self, approval: str, state: str, retry_after: float | None) -> float | None:
        """Seconds to wait before retrying with ``approval`` (``retry_after`` as the
        enforcement point asked, 1 s when it did not, at most 60 s), None for a state
        that is no approval answer; raises for a refusal, or past the bound."""
        if state in REFUSED_STATES - {"expired"}:
            raise ApprovalDenied(approval, state, f"approval {approval} is {state}")
        if state == "expired":
            raise ApprovalExpired(approval, state, f"approval {approval} expired undecided")
        if state not in WAITING_STATES:
            return None
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.bound
        if retry_after is None or not math.isfinite(retry_after):
            retry_after = 1.0
        pause = max(0.0, min(retry_after, 60.0))
        if now + pause > self.deadline:
            raise ApprovalPending(
                approval, state, f"approval {approval} still pending after {self.bound:g} s"
            )
        return pause


async def call_tool_approved(
    bound: float,
    call: Callable[[Mapping[str, Any] | None], Awaitable[Any]],
    meta: Mapping[str, Any] | None,
) -> Any:
    """Run ``call(meta)`` (one ``tools/call``) and, while its result is a tool error
    naming an approval that waits, retry it with the approval id in ``_meta`` after the
    result's ``retry_after``, within ``bound`` seconds (:class:`_ApprovalWait`)."""
    waiting = _ApprovalWait(bound)
    while True:
        result = await call(meta)
        if bound <= 0 or getattr(result, "is_error", False) is not True:
            return result
        found = read_mcp_result_meta(getattr(result, "meta", None))
        if found is None:
            return result
        approval, state, retry_after = found
        pause = waiting.pause(approval, state, retry_after)
        if pause is None:
            return result
        await anyio.sleep(pause)
        meta = {**(meta or {}), META_KEY: approval}


_SESSION_CLASS: list[Callable[..., ClientSession]] = []


def _approving_session() -> Callable[..., ClientSession]:
    """The MCP SDK's ``ClientSession`` whose ``call_tool`` waits for approval
    (``approval_wait=`` seconds, 0: off), made once the optional SDK is imported."""
    if _SESSION_CLASS:
        return _SESSION_CLASS[0]
    from mcp.client.session import ClientSession

    class ApprovingSession(ClientSession):
        def __init__(self, *args: Any, approval_wait: float = 0.0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.approval_wait = approval_wait

        async def call_tool(
            self, name: str, arguments: dict[str, Any] | None = None, *args: Any, **kwargs: Any
        ) -> Any:
            meta = kwargs.pop("meta", None)
            parent = super().call_tool

            async def once(meta: Mapping[str, Any] | None) -> Any:
                return await parent(name, arguments, *args, meta=cast(Any, meta), **kwargs)

            return await call_tool_approved(self.approval_wait, once, meta)

    _SESSION_CLASS.append(ApprovingSession)
    return ApprovingSession


class DPoPAuth(_DPoPFlow, httpx.Auth):
    """httpx authentication for resource servers (RFC 9449 section 7): this agent's
    token for ``resource`` (or a fixed ``token``) and a fresh DPoP proof per request,
    with ``htm``, ``htu`` and ``ath``. Retries once on ``use_dpop_nonce`` with the
    server's nonce (section 9; nonces are kept per server), and once with a fresh
    token on ``invalid_token`` (not for a fixed token). Works with ``httpx.Client``
    and ``httpx.AsyncClient``; the request body is buffered so a retry can re-send it.

    ``approval_wait`` (seconds, default 0: off): a call an enforcement point holds for
    a human's approval is retried with ``AgentIAM-Approval`` every ``Retry-After``
    seconds until it goes through, or :class:`ApprovalDenied`,
    :class:`ApprovalExpired` or, past the bound, :class:`ApprovalPending` is raised.
    """


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
        return str(body.get("error", "unknown")), str(body.get("error_description", ""))
    except ValueError:
        return "unknown", response.text[:200]
