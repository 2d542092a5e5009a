"""The ``DPoP-Nonce`` on a gateway's answers (RFC 9449 section 9), and the SDK's
memory of the nonces servers hand out (section 8.2)."""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import httpx
import pytest

from agentiam.adapters.gateway.dpop_nonces import NonceHeader, WithNonce
from agentiam.core.credentials.nonces import NonceIssuer
from agentiam.sdk import AgentClient, AgentKey
from agentiam.sdk.client import TokenError, _ServerNonces

NOW = 1_800_000_000
ISSUER = NonceIssuer(bytes(range(32)), lifetime=60)


class Clock:
    def __init__(self) -> None:
        self.now = NOW + 0.25

    def __call__(self) -> float:
        return self.now


def _run(header: NonceHeader, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> None:
        wrapped = header.sending(send)
        for message in messages:
            await wrapped(message)

    anyio.run(main)
    return sent


def test_every_answer_head_gets_the_current_nonce_once() -> None:
    header = NonceHeader(ISSUER, Clock())
    start = {"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]}
    body = {"type": "http.response.body", "body": b"{}"}
    sent = _run(header, [start, body])
    nonce = dict(sent[0]["headers"])[b"dpop-nonce"].decode()
    assert ISSUER.is_valid(nonce, NOW)
    assert sent[0]["headers"][0] == (b"x-a", b"1")
    assert sent[1] is body  # the body passes untouched
    assert start["headers"] == [(b"x-a", b"1")]  # the caller's list is not changed


def test_an_answer_with_a_nonce_already_keeps_it() -> None:
    """A ``use_dpop_nonce`` refusal carries the verifier's nonce: not a second one."""
    mine = ISSUER.issue(NOW - 3).encode()
    start = {"type": "http.response.start", "status": 401, "headers": [(b"DPoP-Nonce", mine)]}
    sent = _run(NonceHeader(ISSUER, Clock()), [start])
    assert sent[0]["headers"] == [(b"DPoP-Nonce", mine)]


def test_the_nonce_is_made_once_per_second() -> None:
    clock = Clock()
    header = NonceHeader(ISSUER, clock)
    first = header.current()
    clock.now += 0.5
    assert header.current() is first  # same second: no new HMAC
    clock.now += 1
    later = header.current()
    assert later != first
    assert ISSUER.is_valid(later.decode(), int(clock.now))


def test_with_nonce_wraps_http_answers_only() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(send)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})

    async def send(message: Any) -> None:
        seen.append(message)

    async def receive() -> Any:
        return {}

    wrapped = WithNonce(app, NonceHeader(ISSUER, Clock()))
    anyio.run(wrapped, {"type": "lifespan"}, receive, send)
    assert seen == [send]  # a lifespan scope: the server's own send
    anyio.run(wrapped, {"type": "http"}, receive, send)
    assert b"dpop-nonce" in dict(seen[-1]["headers"])


# -- the SDK's memory of server nonces ---------------------------------------------------


def test_the_sdk_remembers_the_latest_nonce_per_server() -> None:
    book = _ServerNonces()
    assert book.learn("https://a.example", httpx.Headers({"DPoP-Nonce": "n1"})) == "n1"
    assert book.learn("https://a.example", httpx.Headers({"x": "y"})) is None
    assert book.get("https://a.example") == "n1"  # an answer without one changes nothing
    book.learn("https://a.example", httpx.Headers({"DPoP-Nonce": "n2"}))
    book.learn("https://b.example", httpx.Headers({"DPoP-Nonce": "m1"}))
    assert (book.get("https://a.example"), book.get("https://b.example")) == ("n2", "m1")


@pytest.mark.parametrize(
    "value", ["", 'with"quote', "with\\backslash", "with space", "é", "n" * 513]
)
def test_the_sdk_ignores_what_is_not_a_nonce(value: str) -> None:
    """RFC 9449 section 8.1: ``nonce = 1*NQCHAR``; a value outside it (or longer than
    a server takes in a proof) is not put in proofs."""
    book = _ServerNonces()
    book.learn("https://a.example", {"dpop-nonce": "good"})
    assert book.learn("https://a.example", {"dpop-nonce": value}) is None
    assert book.get("https://a.example") == "good"


def test_the_sdk_remembers_a_bounded_number_of_servers() -> None:
    book = _ServerNonces()
    for i in range(_ServerNonces.MAX_SERVERS + 5):
        book.learn(f"https://s{i}.example", {"dpop-nonce": f"n{i}"})
    assert book.get("https://s0.example") is None  # the oldest went first
    last = _ServerNonces.MAX_SERVERS + 4
    assert book.get(f"https://s{last}.example") == f"n{last}"


def _authorization_server(answers: list[httpx.Response], seen: list[str | None]) -> httpx.Client:
    """An authorization server in a MockTransport: its metadata, then ``answers`` to
    the token requests in order (``seen``: each request's proof)."""
    issuer = "https://as.example"

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/oauth-authorization-server":
            return httpx.Response(200, json={"issuer": issuer, "token_endpoint": issuer + "/t"})
        seen.append(request.headers.get("dpop"))
        return answers.pop(0)

    return httpx.Client(transport=httpx.MockTransport(handle))


def _proof_nonce(proof: str | None) -> Any:
    assert proof is not None
    payload = proof.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("nonce")


def test_the_token_endpoint_nonce_uses_the_same_memory_and_rule() -> None:
    """RFC 9449 section 8: ``use_dpop_nonce`` with a ``DPoP-Nonce`` is retried once
    with it; without one there is nothing to retry with. Either way the nonce is
    kept in the one memory resource servers' nonces are kept in."""
    use_nonce = {"error": "use_dpop_nonce", "error_description": "nonce"}
    token = {"access_token": "at", "token_type": "DPoP", "expires_in": 300}
    seen: list[str | None] = []
    http = _authorization_server(
        [
            httpx.Response(400, json=use_nonce, headers={"DPoP-Nonce": "as-1"}),
            httpx.Response(200, json=token, headers={"DPoP-Nonce": "as-2"}),
        ],
        seen,
    )
    agent = AgentClient("https://as.example", client_id="a", key=AgentKey.generate(), http=http)
    assert agent.token().value == "at"
    assert [_proof_nonce(p) for p in seen] == [None, "as-1"]
    assert agent._nonces.get("https://as.example/t") == "as-2"

    seen.clear()
    http = _authorization_server([httpx.Response(400, json=use_nonce)], seen)
    agent = AgentClient("https://as.example", client_id="a", key=AgentKey.generate(), http=http)
    with pytest.raises(TokenError, match="use_dpop_nonce"):
        agent.token()
    assert len(seen) == 1  # no nonce given: no blind retry
