"""How long a brokered credential's echo forms live, and how often they are computed
(adapters/gateway/broker.py, echo_mask.py; review: "echocache").

Each echo form (:class:`~agentiam.adapters.gateway.echo_mask.EchoForms`) is the
credential, written as an upstream may echo it. The gateways used to keep the forms of
the last 64 credentials in a process-wide cache: versions rotated away and OAuth tokens
long expired stayed in memory after the broker had dropped them. Now:

1. after a rotation of an API key, and after an OAuth token is refreshed (or the
   credential can no longer be had), no live object holds the old credential's forms
   any more: through the HTTP gateway, through the MCP gateway's auth hook and
   transport, and in the broker itself;
2. the forms are computed once per credential value, not per call: the broker hands
   every call the same object until the credential changes, and both gateways mask
   with it.

"No live object" is checked by scanning every object the garbage collector tracks
(the permanent generation included) for an :class:`EchoForms` holding the credential as
one of its forms, after a collection.
Each test uses credentials of its own (random), so no other test's objects match.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from tests.unit.test_gateway_http import Action, App, Upstream

from agentiam.adapters.gateway.broker import (
    ApiKeyInjection,
    CredentialBroker,
    CredentialRef,
    OAuthClientCredentials,
    OAuthClientSecret,
    Secret,
    SecretKind,
    SecretStore,
    SecretStoreError,
    TokenEndpointError,
)
from agentiam.adapters.gateway.echo_mask import EchoForms
from agentiam.adapters.gateway.mcp_upstream import _BrokeredAuth
from agentiam.adapters.gateway.upstream_transport import UpstreamTransport
from agentiam.core.credentials.sealing import MasterKey

PATH = "/v1/invoices/7"  # GET to the HTTP gateway's billing upstream, X-Api-Key brokered
TOKEN_URL = "http://127.0.0.1/oauth/token"  # answered by a mock transport


def _unique(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(12)}"


def _live_forms(credential: str) -> int:
    """How many live :class:`EchoForms` hold ``credential`` as one of their forms. The
    gateways freeze their heap at start-up (adapters/heap.py): :func:`gc.get_objects`
    does not list the permanent generation, so it is unfrozen first."""
    gc.unfreeze()
    gc.collect()
    needle = credential.encode("latin-1")
    return sum(1 for o in gc.get_objects() if isinstance(o, EchoForms) and needle in o.forms)


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> Counter[bytes]:
    """Counts the :class:`EchoForms` computed, by credential (wherever they are made)."""
    counts: Counter[bytes] = Counter()
    init = EchoForms.__init__

    def counting(self: EchoForms, secret: bytes) -> None:
        counts[secret] += 1
        init(self, secret)

    monkeypatch.setattr(EchoForms, "__init__", counting)
    return counts


def _store(tmp_path: Path) -> SecretStore:
    key = MasterKey.from_text(MasterKey.generate_text())
    return SecretStore(tmp_path / "secrets.json", key, reload_interval=0)


class _Tokens:
    """A token endpoint (RFC 6749 section 4.4.3) answering through a mock transport:
    a new random access token per request, or a 503 when ``down``."""

    def __init__(self, lifetime: int = 120) -> None:
        self.issued: list[str] = []
        self.lifetime = lifetime
        self.down = False
        self.transport = httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            return httpx.Response(503, json={"error": "temporarily_unavailable"})
        self.issued.append(_unique("at"))
        return httpx.Response(
            200,
            json={
                "access_token": self.issued[-1],
                "token_type": "Bearer",
                "expires_in": self.lifetime,
            },
        )


@pytest.fixture
def tokens() -> _Tokens:
    return _Tokens()


def _oauth(
    store: SecretStore, tokens: _Tokens, now: list[float]
) -> tuple[CredentialBroker, OAuthClientCredentials]:
    store.put("crm", SecretKind.OAUTH_CLIENT, OAuthClientSecret("client", Secret("cs-1")))
    broker = CredentialBroker(store, clock=lambda: now[0], transport=tokens.transport)
    ref = OAuthClientCredentials("crm", TOKEN_URL, allow_private_network=True, refresh_margin=30)
    return broker, ref


# -- through the MCP gateway's auth hook and transport ---------------------------------------


def _echoing(name: str) -> Upstream:
    """An upstream answering every request with the value of its field ``name``."""
    upstream = Upstream()

    def reply(request: Any) -> list[Action]:
        body = (request.header(name) or "").encode("latin-1")
        return [b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)]

    upstream.reply = reply
    return upstream


def _mcp_calls(
    broker: CredentialBroker,
    ref: CredentialRef,
    upstream: Upstream,
    between: list[Callable[[], None]],
) -> list[bytes]:
    """One request through the MCP gateway's credential hook (``_BrokeredAuth``) and
    transport, then one more after each of ``between``: the bodies the SDK would read.
    Nothing of the requests or responses outlives this call."""

    async def main() -> list[bytes]:
        server = await upstream.serve()
        assert server is not None
        url = f"http://127.0.0.1:{upstream.port}/mcp"
        transport = UpstreamTransport(url, connect_timeout=2.0, read_timeout=2.0)
        bodies: list[bytes] = []
        try:
            async with httpx2.AsyncClient(
                transport=transport, auth=_BrokeredAuth(broker, ref)
            ) as client:
                for step in [None, *between]:
                    if step is not None:
                        step()
                    bodies.append((await client.get(url)).content)
        finally:
            server.close()
            await server.wait_closed()
        return bodies

    return asyncio.run(main())


def test_mcp_a_rotated_api_keys_forms_are_dropped(tmp_path: Path, computed: Counter[bytes]) -> None:
    """The MCP gateway masks an echoed API key, the key is rotated, the next call
    masks the new one: then nothing holds the old key's forms any more (the
    process-wide cache kept them, with up to 63 other credentials'). Each key's forms
    were computed once for its three calls."""
    store = _store(tmp_path)
    old, new = _unique("old-key"), _unique("new-key")
    store.put("bank", SecretKind.API_KEY, Secret(old))
    broker = CredentialBroker(store)
    ref = ApiKeyInjection("bank", header="X-Api-Key")
    noop: Callable[[], None] = lambda: None  # noqa: E731

    def rotate() -> None:
        store.rotate("bank", Secret(new))

    bodies = _mcp_calls(broker, ref, _echoing("x-api-key"), [noop, noop, rotate, noop, noop])
    assert bodies == [b"*" * len(old)] * 3 + [b"*" * len(new)] * 3  # the echo was masked
    assert _live_forms(old) == 0
    assert _live_forms(new) == 1  # the broker's, with its copy of the key in use
    assert computed[old.encode()] == 1
    assert computed[new.encode()] == 1


def test_mcp_a_refreshed_oauth_tokens_forms_are_dropped(
    tmp_path: Path, tokens: _Tokens, computed: Counter[bytes]
) -> None:
    """The MCP gateway masks an echoed access token; the token nears its expiry and
    the broker fetches another: then nothing holds the first token's forms. Each
    token's forms were computed once, by the fetch, for all the calls it served."""
    now = [1000.0]
    broker, ref = _oauth(_store(tmp_path), tokens, now)

    def expire() -> None:
        now[0] += 91  # 120 s lifetime, refreshed 30 s before it ends

    noop: Callable[[], None] = lambda: None  # noqa: E731
    bodies = _mcp_calls(broker, ref, _echoing("authorization"), [noop, expire, noop])
    first, second = tokens.issued
    masked = [b"Bearer " + b"*" * len(first)] * 2 + [b"Bearer " + b"*" * len(second)] * 2
    assert bodies == masked
    assert _live_forms(first) == 0
    assert _live_forms(second) == 1  # with the broker's cached token
    assert computed[first.encode()] == 1
    assert computed[second.encode()] == 1


# -- through the HTTP gateway ----------------------------------------------------------------


def test_http_a_rotated_api_keys_forms_are_dropped(
    tmp_path: Path, computed: Counter[bytes]
) -> None:
    """The HTTP gateway masks an echoed API key (in the body and in a field, which it
    drops), the key is rotated, the next calls mask the new one: then nothing holds
    the old key's forms. Each key's forms were computed once for its calls."""
    app = App(tmp_path)
    old, new = _unique("old-key"), _unique("new-key")
    assert app.gateway.runtime.broker is not None
    store = app.gateway.runtime.broker.store
    store.rotate("billing-key", Secret(old))

    def reply(request: Any) -> list[Action]:
        key = (request.header("x-api-key") or "").encode()
        return [
            b"HTTP/1.1 200 OK\r\nx-echo: %s\r\ncontent-length: %d\r\n\r\n%s" % (key, len(key), key)
        ]

    app.upstream.reply = reply
    calls: list[tuple[str, str, bool, dict[str, Any]]] = [("GET", PATH, True, {})] * 3
    first = asyncio.run(app.requests(list(calls)))
    store.rotate("billing-key", Secret(new))
    second = asyncio.run(app.requests(list(calls)))
    bodies = [(r.status_code, r.content, "x-echo" in r.headers) for r in first + second]
    del first, second
    stars_old, stars_new = b"*" * len(old), b"*" * len(new)
    assert bodies == [(200, stars_old, False)] * 3 + [(200, stars_new, False)] * 3
    assert _live_forms(old) == 0
    assert _live_forms(new) == 1
    assert computed[old.encode()] == 1
    assert computed[new.encode()] == 1


# -- the broker itself -----------------------------------------------------------------------


def test_the_broker_hands_every_call_one_forms_object_per_key_version(
    tmp_path: Path, computed: Counter[bytes]
) -> None:
    """Every call with one version of a key gets the same forms (computed once),
    whichever injection names the secret; a rotation replaces them at the next call,
    and the old version's are then held by nothing (though the store keeps the old
    version, sealed, for calls in flight)."""
    store = _store(tmp_path)
    old, new = _unique("v1"), _unique("v2")
    store.put("github", SecretKind.API_KEY, Secret(old))
    broker = CredentialBroker(store)
    bearer = ApiKeyInjection("github", prefix="Bearer ")
    plain = ApiKeyInjection("github", header="X-Api-Key")
    first = broker.injection_for(bearer)
    assert first.headers == {"Authorization": "Bearer " + old}
    assert first.label == "github@1"
    assert first.echo is not None
    assert old.encode() in first.echo.forms
    assert broker.injection_for(plain).echo is first.echo
    assert all(broker.injection_for(bearer).echo is first.echo for _ in range(5))
    assert repr(first) == "Injection(label='github@1')"  # never the credential
    del first
    store.rotate("github", Secret(new))
    assert _live_forms(old) == 1  # not dropped until the broker uses the new version
    second = broker.injection_for(plain)
    assert second.label == "github@2"
    assert second.echo is not None
    assert new.encode() in second.echo.forms
    assert _live_forms(old) == 0
    assert dict(computed) == {old.encode(): 1, new.encode(): 1}


def test_the_broker_drops_a_keys_forms_when_the_key_is_gone(tmp_path: Path) -> None:
    """A deleted secret (and one the store no longer reads) is refused, and its forms
    are dropped with it: nothing holds the forms of a key that cannot be had."""
    store = _store(tmp_path)
    key = _unique("doomed")
    store.put("github", SecretKind.API_KEY, Secret(key))
    broker = CredentialBroker(store)
    ref = ApiKeyInjection("github")
    broker.injection_for(ref)
    assert _live_forms(key) == 1
    store.delete("github")
    with pytest.raises(SecretStoreError):
        broker.injection_for(ref)
    assert _live_forms(key) == 0
    other = _unique("again")
    store.put("github", SecretKind.API_KEY, Secret(other))
    broker.injection_for(ref)
    assert _live_forms(other) == 1
    store.path.write_text("not a store")  # altered: the broker fails closed
    with pytest.raises(SecretStoreError):
        broker.injection_for(ref)
    assert _live_forms(other) == 0


def test_the_broker_drops_an_oauth_tokens_forms_with_the_token(
    tmp_path: Path, tokens: _Tokens, computed: Counter[bytes]
) -> None:
    """An access token's forms are computed with the fetch and handed to every call
    the token serves; refreshed, rotated away or replaced by a failure, the token is
    dropped and so are its forms."""
    now = [1000.0]
    store = _store(tmp_path)
    broker, ref = _oauth(store, tokens, now)
    first = broker.injection_for(ref).echo
    assert all(broker.injection_for(ref).echo is first for _ in range(5))
    del first
    [at1] = tokens.issued
    now[0] += 91  # refreshed: 30 s before the end of its 120 s
    broker.injection_for(ref)
    at2 = tokens.issued[-1]
    assert _live_forms(at1) == 0
    assert _live_forms(at2) == 1
    store.rotate("crm", OAuthClientSecret("client", Secret("cs-2")))  # a new token at once
    assert broker.injection_for(ref).label == "crm@2"
    at3 = tokens.issued[-1]
    assert (_live_forms(at2), _live_forms(at3)) == (0, 1)
    tokens.down = True
    now[0] += 91
    with pytest.raises(TokenEndpointError):
        broker.injection_for(ref)
    assert _live_forms(at3) == 0  # the failure replaced the token
    assert [computed[t.encode()] for t in (at1, at2, at3)] == [1, 1, 1]
