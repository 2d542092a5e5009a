"""The ``DPoP-Nonce`` a gateway hands its clients (RFC 9449 section 9, with the
header of section 8.1 and the renewal of section 8.2).

With ``dpop.require_nonce`` on (:class:`~agentiam.adapters.gateway.config.DpopSettings`),
the verifier refuses a proof without a current nonce of this gateway's key with 401
``use_dpop_nonce`` and a fresh ``DPoP-Nonce`` (:class:`~agentiam.core.credentials.
verifier.AccessTokenVerifier`). Every other answer of the protected endpoint carries
one too, whatever its status (section 8.2: the server supplies a new nonce when it
chooses, and "the DPoP-Nonce HTTP header field MAY be included in any HTTP
response"). Always, rather than only when the client's nonce is about to expire:

* a client that keeps calling always holds a nonce with its whole lifetime ahead,
  so it never pays the refused round trip again (only its first call does, and a
  call after an idle spell longer than the lifetime);
* knowing when the presented nonce expires would mean carrying it from the
  verifier to each transport; handing out one costs a header of about 40 bytes and,
  here, no HMAC per request: the value for the current second is made once
  (:meth:`NonceHeader.current`) and shared by every answer in that second.

Nonces are stateless (:class:`~agentiam.core.credentials.nonces.NonceIssuer`: an
HMAC of their issue time), so any replica holding the same key accepts a nonce
another one issued. During a key rotation a replica also accepts the nonces of the
keys in ``dpop.nonce_accept_keys`` (the other key of the rotation), and hands out
only nonces of its issuing key.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from agentiam.core.credentials.nonces import NonceIssuer

__all__ = ["NonceHeader", "WithNonce"]

# ASGI callables, whichever mapping type a server's messages are declared with
Send = Callable[[Any], Awaitable[None]]
Receive = Callable[[], Awaitable[Any]]
App = Callable[[Any, Receive, Send], Awaitable[None]]

_NAME = b"dpop-nonce"


class NonceHeader:
    """Puts this gateway's current nonce in the head of every answer sent through
    :meth:`sending` (unless the answer has one already: a ``use_dpop_nonce`` refusal
    carries the verifier's)."""

    __slots__ = ("_clock", "_current", "issuer")

    def __init__(self, issuer: NonceIssuer, clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer
        self._clock = clock
        self._current: tuple[int, bytes] = (-1, b"")

    def current(self) -> bytes:
        """The nonce issued at this second (made once per second, then reused: the
        pair is replaced in one assignment, so a concurrent reader sees either)."""
        now = int(self._clock())
        second, value = self._current
        if second != now:
            value = self.issuer.issue(now).encode("ascii")
            self._current = (now, value)
        return value

    def sending(self, send: Send) -> Send:
        """``send`` with the nonce added to an ``http.response.start``'s headers."""

        async def send_with_nonce(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == _NAME for name, _ in headers):
                    headers.append((_NAME, self.current()))
                    message = {**message, "headers": headers}
            await send(message)

        return send_with_nonce


class WithNonce:
    """Plain ASGI: ``app``'s HTTP answers carry the current nonce (:class:`NonceHeader`)."""

    def __init__(self, app: App, header: NonceHeader) -> None:
        self.app = app
        self.header = header

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = self.header.sending(send)
        await self.app(scope, receive, send)
