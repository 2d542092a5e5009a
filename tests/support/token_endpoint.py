"""A tiny, real OAuth 2.0 token endpoint for tests: the client credentials grant (RFC
6749 section 4.4) with ``private_key_jwt`` client authentication (RFC 7523 sections 2.2
and 3; OpenID Connect Core 1.0 section 9), as an upstream's authorization server would
check it. The assertion is verified with joserfc against the client's public key:

* the signature, under the one algorithm the client registered (and its ``kid``, when
  one is registered);
* ``iss`` = ``sub`` = the client_id, and ``client_id`` in the form, if sent, the same;
* ``aud`` is this endpoint (its URL, unless told another audience);
* ``exp`` in the future and at most 60 s after ``iat``, which is not in the future;
* ``jti`` present and never seen before (single use).

A request that passes gets ``{"access_token": "kjwt-at-<n>", "token_type": "Bearer"}``;
one that does not gets 401 ``invalid_client`` naming the failed check (recorded in
``refusals``). Runs on a thread of the test process: :func:`serve`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from tests.support.network import Handler, serve_http

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SKEW = 5


@dataclass
class KeyJwtEndpoint:
    """What the endpoint knows of its one client, and what it saw."""

    client_id: str
    public_key: ECKey | RSAKey
    alg: str
    kid: str | None = None
    audience: str | None = None  # None: its own URL
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    assertions: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    issued: int = 0
    _jtis: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, form: dict[str, str]) -> str | None:
        """Why the request is refused, or None: the client authenticated."""
        if form.get("grant_type") != "client_credentials":
            return "grant_type is not client_credentials"
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return "client_assertion_type is not jwt-bearer"
        if "client_secret" in form:
            return "a client_secret was sent too"
        if "client_id" in form and form["client_id"] != self.client_id:
            return "client_id is another client"
        try:
            token = jwt.decode(form.get("client_assertion", ""), self.public_key, [self.alg])
        except (JoseError, ValueError) as exc:
            return f"signature: {type(exc).__name__}"
        header, claims = dict(token.header), dict(token.claims)
        self.assertions.append((header, claims))
        if header.get("alg") != self.alg:
            return "alg"
        if self.kid is not None and header.get("kid") != self.kid:
            return "kid"
        if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
            return "iss and sub must be the client_id"
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        if aud != (self.audience or self.url):
            return f"aud {aud!r} is not this endpoint"
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int):
            return "exp and iat must be numbers"
        if exp <= now - SKEW or iat > now + SKEW or exp - iat > 60:
            return "exp or iat out of bounds"
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return "no jti"
        with self._lock:
            if jti in self._jtis:
                return "jti replayed"
            self._jtis.add(jti)
        return None


@contextmanager
def serve(endpoint: KeyJwtEndpoint, path: str = "/oauth/token") -> Iterator[KeyJwtEndpoint]:
    """Serve ``endpoint`` on 127.0.0.1 (a free port) at ``path`` until the block ends;
    ``endpoint.url`` is set to its URL."""

    class TokenHandler(Handler):
        def do_POST(self) -> None:
            headers, body = self.request_body()
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            endpoint.requests.append(
                {"path": self.path, "authorization": headers.get("authorization"), "form": form}
            )
            why = endpoint.check(form)
            if why is None:
                endpoint.issued += 1
                status = 200
                doc: dict[str, Any] = {
                    "access_token": f"kjwt-at-{endpoint.issued}",
                    "token_type": "Bearer",
                    "expires_in": 300,
                }
            else:
                endpoint.refusals.append(why)
                status, doc = 401, {"error": "invalid_client", "error_description": why}
            self.answer(
                status,
                json.dumps(doc).encode(),
                {"Content-Type": "application/json", "Cache-Control": "no-store"},
            )

    with serve_http(TokenHandler) as port:
        endpoint.url = f"http://127.0.0.1:{port}{path}"
        yield endpoint
