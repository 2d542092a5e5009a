"""Webhook signatures as the Standard Webhooks specification (version 1.0.0) defines
them, for the signed webhook exporter and for the receivers of its deliveries.

Scheme ("Signature scheme" and "Webhook headers" in the specification):

* a request carries ``webhook-id`` (the message id, the same on every retry, so the
  receiver can use it as an idempotency key), ``webhook-timestamp`` (integer Unix
  seconds of *this attempt*) and ``webhook-signature``;
* the signed content is ``{webhook-id}.{webhook-timestamp}.{body}``, the body being
  the exact bytes sent;
* a signature is ``v1,`` followed by the base64 of its HMAC-SHA256 under the secret;
  the header holds one or more of them separated by spaces, so a sender can sign
  with the old and the new secret while a secret is rotated (zero-downtime
  rotation), and a receiver accepts the request if any of them verifies;
* the secret is 24 to 64 random bytes, written ``whsec_`` followed by their base64
  ("Signing secret" and "Secret serialization");
* a receiver compares in constant time and refuses a timestamp outside a tolerance
  window around its own clock, against replay ("Verifying signatures"). The
  reference implementations use five minutes, as :data:`DEFAULT_TOLERANCE` does.

Only symmetric ``v1`` signatures are produced and checked; asymmetric ``v1a``
(ed25519) entries in a header are skipped.

**For receivers.** This module is pure (standard library only) and may be imported
on its own by a service that receives AgentIAM's webhooks::

    from agentiam.core.audit.webhook_signature import WebhookSecret, verify

    SECRET = WebhookSecret.parse(os.environ["AGENTIAM_WEBHOOK_SECRET"])

    def receive(headers, body: bytes) -> None:
        verify(SECRET, headers, body)  # raises SignatureError, else authentic
        ...  # dedupe on headers["webhook-id"] and on each item's log_index

Any Standard Webhooks library (``standardwebhooks`` for Python, ``svix`` ...) verifies
the same requests. Verify the raw body bytes, before parsing the JSON.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as _secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_TOLERANCE",
    "HEADER_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MAX_SECRET_BYTES",
    "MIN_SECRET_BYTES",
    "SECRET_PREFIX",
    "InvalidSecret",
    "MalformedHeaders",
    "NoMatchingSignature",
    "SignatureError",
    "TimestampOutOfTolerance",
    "WebhookSecret",
    "sign",
    "signature_headers",
    "verify",
]

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"
SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix the specification names, not a secret)
# "Random. At least 24 bytes (192 bits, 512 maximum)" (Signing secret).
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
DEFAULT_TOLERANCE = 300.0
_VERSION = "v1"

# Message ids must not contain "." (it delimits the signed content); we also keep them
# to printable ASCII without spaces so they travel in a header unchanged.
_MSG_ID = re.compile(r"^[A-Za-z0-9_\-:~+/=]{1,256}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_MAX_SIGNATURES = 16
_MAX_SIGNATURE_HEADER = 4096


class InvalidSecret(ValueError):
    """A signing secret is not ``whsec_`` + base64 of 24-64 bytes. The message never
    contains the secret."""


class SignatureError(Exception):
    """A webhook request failed verification: do not process it."""


class MalformedHeaders(SignatureError):
    """A ``webhook-*`` header is missing or malformed."""


class TimestampOutOfTolerance(SignatureError):
    """``webhook-timestamp`` is too old (a possible replay) or too far in the future."""


class NoMatchingSignature(SignatureError):
    """No ``v1`` signature in ``webhook-signature`` matches any of the secrets: the body,
    id or timestamp were altered, or the request was signed with another secret."""


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    """A symmetric signing secret. Its ``repr`` never shows the key."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not MIN_SECRET_BYTES <= len(self.key) <= MAX_SECRET_BYTES:
            raise InvalidSecret(
                f"a webhook secret must be {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} random "
                f"bytes, not {len(self.key)}"
            )

    @classmethod
    def parse(cls, text: str) -> WebhookSecret:
        """Read ``whsec_<base64>`` (the prefix may be left out, as the reference
        implementations allow; unpadded base64 is accepted too)."""
        if not isinstance(text, str):
            raise InvalidSecret("a webhook secret must be a string: whsec_ followed by base64")
        value = text.strip()
        if value.startswith(SECRET_PREFIX):
            value = value[len(SECRET_PREFIX) :]
        if not value:
            raise InvalidSecret("the webhook secret is empty")
        try:
            key = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidSecret(
                "a webhook secret must be whsec_ followed by standard base64"
            ) from None
        return cls(key)

    @classmethod
    def generate(cls, size: int = 32) -> WebhookSecret:
        """A new random secret of ``size`` bytes."""
        return cls(_secrets.token_bytes(size))

    def serialize(self) -> str:
        """``whsec_`` + base64: the form to hand to the receiver (keep it secret)."""
        return SECRET_PREFIX + base64.b64encode(self.key).decode("ascii")

    def _mac(self, content: bytes) -> bytes:
        return hmac.new(self.key, content, hashlib.sha256).digest()


def _secrets_of(secret: WebhookSecret | Iterable[WebhookSecret]) -> list[WebhookSecret]:
    found = [secret] if isinstance(secret, WebhookSecret) else list(secret)
    if not found or not all(isinstance(s, WebhookSecret) for s in found):
        raise TypeError("expected one or more WebhookSecret")
    return found


def _content(msg_id: str, timestamp: int, body: bytes | str) -> bytes:
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    return f"{msg_id}.{timestamp}.".encode("ascii") + data


def _check_id(msg_id: str) -> None:
    if not isinstance(msg_id, str) or not _MSG_ID.match(msg_id):
        raise ValueError(
            "a webhook id must be 1-256 characters of A-Z a-z 0-9 _ - : ~ + / = (never '.')"
        )


def sign(
    secret: WebhookSecret | Iterable[WebhookSecret],
    msg_id: str,
    timestamp: int,
    body: bytes | str,
) -> str:
    """The ``webhook-signature`` header value: ``v1,<base64 HMAC-SHA256>`` over
    ``{msg_id}.{timestamp}.{body}``, one per secret (in the order given, separated
    by a space) so a receiver holding either the old or the new secret accepts it."""
    _check_id(msg_id)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("the webhook timestamp must be a non-negative integer (Unix seconds)")
    content = _content(msg_id, timestamp, body)
    return " ".join(
        f"{_VERSION},{base64.b64encode(s._mac(content)).decode('ascii')}"
        for s in _secrets_of(secret)
    )


def signature_headers(
    secret: WebhookSecret | Iterable[WebhookSecret],
    msg_id: str,
    body: bytes | str,
    *,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The three ``webhook-*`` headers of one delivery attempt; ``timestamp`` defaults
    to now (each attempt is signed afresh, the id stays)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(ts),
        HEADER_SIGNATURE: sign(secret, msg_id, ts, body),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:  # a plain dict with other capitalisation
        for key, candidate in headers.items():
            if key.lower() == name:
                value = candidate
                break
    if not isinstance(value, str) or not value.strip():
        raise MalformedHeaders(f"the {name} header is missing")
    return value.strip()


def verify(
    secret: WebhookSecret | Iterable[WebhookSecret],
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Check a received webhook; return only if it is authentic and fresh.

    ``secret`` may be several secrets (the receiver's side of a rotation). ``headers``
    is looked up case-insensitively; ``body`` must be the raw bytes received. ``now``
    (Unix seconds) defaults to the current time; the timestamp must lie within
    ``tolerance`` seconds of it, either way. Every ``v1`` signature in the header is
    compared in constant time with every secret's; other versions are skipped.

    Raise :class:`MalformedHeaders`, :class:`TimestampOutOfTolerance` or
    :class:`NoMatchingSignature` (all :class:`SignatureError`)."""
    keys = _secrets_of(secret)
    msg_id = _header(headers, HEADER_ID)
    stamp = _header(headers, HEADER_TIMESTAMP)
    signatures = _header(headers, HEADER_SIGNATURE)
    if not _MSG_ID.match(msg_id):
        raise MalformedHeaders(f"the {HEADER_ID} header is malformed")
    if not _TIMESTAMP.match(stamp):
        raise MalformedHeaders(f"the {HEADER_TIMESTAMP} header must be integer Unix seconds")
    if len(signatures) > _MAX_SIGNATURE_HEADER:
        raise MalformedHeaders(f"the {HEADER_SIGNATURE} header is too long")
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise TimestampOutOfTolerance(
            f"the webhook timestamp is more than {tolerance:g} s old (a replay?)"
        )
    if timestamp > current + tolerance:
        raise TimestampOutOfTolerance(
            f"the webhook timestamp is more than {tolerance:g} s in the future"
        )
    offered = _decode_signatures(signatures.split())
    content = _content(msg_id, timestamp, body)
    expected = [k._mac(content) for k in keys]
    matched = False
    for candidate in offered:
        for mac in expected:
            # no early exit: the work does not depend on which one matched
            matched |= hmac.compare_digest(candidate, mac)
    if not matched:
        raise NoMatchingSignature("no webhook signature matches")


def _decode_signatures(entries: Sequence[str]) -> list[bytes]:
    if len(entries) > _MAX_SIGNATURES:
        raise MalformedHeaders(f"more than {_MAX_SIGNATURES} signatures in {HEADER_SIGNATURE}")
    decoded: list[bytes] = []
    for entry in entries:
        version, sep, value = entry.partition(",")
        if not sep or version != _VERSION:
            continue  # v1a (asymmetric) or a future version
        try:
            decoded.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return decoded
