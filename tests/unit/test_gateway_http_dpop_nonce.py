"""The HTTP gateway's ``DPoP-Nonce`` (RFC 9449 section 9) with ``dpop.require_nonce``
on, in process: every answer of the protected endpoint carries exactly one, the
gateway's current nonce, whatever its status (a relayed answer, whose upstream's own
``DPoP-Nonce`` is dropped; each kind of refusal); a refusal that has one already (the
verifier's ``use_dpop_nonce``) keeps it and gets no second; ``/healthz``, ``/metrics``
and the RFC 9728 metadata carry none. The nonce is put in the head where the gateway
builds it, so the ASGI ``send`` the server passes is the one used (no wrapper per
request). The upstream is a real HTTP/1.1 server on a loopback port."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from tests.unit.test_gateway_http import App

from agentiam.adapters.gateway.dpop_nonces import NonceHeader
from agentiam.adapters.gateway.http_proxy import HttpGateway
from agentiam.core.credentials.nonces import NonceIssuer

ISSUER = NonceIssuer(b"k" * 32)
UPSTREAM_NONCE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nDPoP-Nonce: upstream-nonce\r\n"
    b'content-length: 12\r\n\r\n{"ok": true}'
)


def _with_nonces(tmp_path: Path) -> App:
    app = App(tmp_path)
    runtime = app.gateway.runtime
    runtime.nonce_header = NonceHeader(ISSUER)
    app.gateway = HttpGateway(app.gateway.config, runtime)
    return app


def _nonce(response: httpx.Response) -> str:
    values = response.headers.get_list("dpop-nonce")
    assert len(values) == 1, (response.status_code, values)
    assert ISSUER.is_valid(values[0], int(time.time())), values[0]
    return values[0]


def test_every_protected_answer_carries_one_current_nonce(tmp_path: Path) -> None:
    app = _with_nonces(tmp_path)
    app.upstream.reply = lambda _r: [UPSTREAM_NONCE]
    relayed, missing, unrouted, bad_path, denied, health, metrics, metadata = asyncio.run(
        app.requests(
            [
                ("GET", "/v1/invoices/42", True, {}),  # relayed: the upstream's is dropped
                ("GET", "/v1/invoices/42", False, {}),  # 401: no token
                ("GET", "/v1/nothing", True, {}),  # 404
                ("GET", "/v1/a%EF%BC%8Fb", True, {}),  # 400: the path
                ("DELETE", "/v1/invoices/42", True, {}),  # 403: the policy
                ("GET", "/healthz", False, {}),
                ("GET", "/metrics", False, {}),
                ("GET", "/.well-known/oauth-protected-resource", False, {}),
            ]
        )
    )
    assert relayed.status_code == 200, relayed.text
    assert _nonce(relayed) != "upstream-nonce"
    for refused, status in ((missing, 401), (unrouted, 404), (bad_path, 400), (denied, 403)):
        assert refused.status_code == status, refused.text
        _nonce(refused)
    for own in (health, metrics, metadata):
        assert own.status_code == 200
        assert "dpop-nonce" not in own.headers


def test_a_refusal_with_the_verifiers_nonce_keeps_it_alone(tmp_path: Path) -> None:
    """``use_dpop_nonce`` (the verifier's refusal) carries the nonce it names: the
    gateway does not add a second one."""
    from agentiam.adapters.gateway.http_proxy import _problem

    app = _with_nonces(tmp_path)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    refusal = _problem(401, "use-dpop-nonce", "a nonce is required", {"DPoP-Nonce": "verifier"})
    asyncio.run(app.gateway._send_refusal(send, refusal))
    headers = sent[0]["headers"]
    assert [v for k, v in headers if k == b"dpop-nonce"] == [b"verifier"]
