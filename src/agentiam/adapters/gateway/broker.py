"""The credential broker: upstream secrets a gateway injects into the calls it forwards,
so an agent never holds them.

Secrets (API keys, OAuth 2.0 client credentials: a client secret, or a private key for
``private_key_jwt``) live in a local sealed store file
(:class:`SecretStore`), are referenced by name in the gateway's configuration
(:class:`ApiKeyInjection`, :class:`OAuthClientCredentials`), injected at call time
(:meth:`CredentialBroker.headers_for`), rotatable, and never returned by any API or
command after they were put. The audit trail records which secret was used as
``name@version``, never its value.

The store file is one JSON document (mode 0600, at most :data:`MAX_STORE_BYTES`)::

    {"format": "agentiam-gateway-secrets/1", "master_key_id": "<id>",
     "secrets": [{"name": "github", "kind": "api_key", "version": 2,
                  "created_at": "2026-11-24T10:00:00+00:00", "sealed": "v1.<id>.…"}]}

Each value is sealed with AES-256-GCM (NIST SP 800-38D) under the gateway's secrets key
(:func:`load_secrets_key`: ``AGENTIAM_GATEWAY_SECRETS_KEY``, base64url of 32 bytes, or
a file named by ``AGENTIAM_GATEWAY_SECRETS_KEY_FILE``) by the project's
:class:`~agentiam.core.credentials.sealing.MasterKey`, with the secret's name, version
and kind as associated data: a sealed value copied to another name or version does not
open. Writes are atomic (temporary file, fsync, rename, directory fsync) and
serialised by an advisory lock on ``<store>.lock``. The temporary file holds what the
store will (names, versions and values sealed under the key, never a plaintext); one
left by a writer killed before its rename is removed by the next write, under the
lock. A running broker notices a new file
(inode, size, modification time; checked at most every ``reload_interval`` seconds),
so a rotation takes effect without a restart; a store that no longer reads (altered,
wrong key) fails closed: every injection from it is refused until it is fixed.

Rotating the key (:meth:`SecretStore.rekey`, ``agentiam gateway secrets rekey``)
seals every value kept again under a new key, with the same associated data, and
writes the file (naming the new key) as every write is: all of it or, if one value
does not open with the current key, nothing. A gateway still holding the old key then
reads a store sealed under another key and refuses every injection until it is
restarted with the new one. It does not read with a previous key as well: the file
names one key, and accepting a second would keep the retired key able to forge the
store (see docs/gateway.md for the order of the steps).

Rotation keeps the previous version (one, N=1) so a call that resolved it just before
can still use it by its ``name@version``; the rotation after that removes it. ``delete``
removes every version.

Versions of a name only ever increase over the store's life, so the audit trail's
``name@version`` names one credential, never two: ``delete`` remembers the highest
version the name had, and a ``put`` of that name again continues after it (``crm@1``,
``crm@2``, delete, put: ``crm@3``). A store that remembers a deletion is written as
format ``agentiam-gateway-secrets/2``, with two more members::

    "deleted": [{"name": "crm", "last_version": 2}], "deleted_floor": 0

At most :data:`MAX_DELETED_NAMES` deleted names are remembered by name (the file
stays bounded however many names come and go). Past that, the ones with the lowest
``last_version`` are folded into ``deleted_floor``, the highest version any name no
longer listed ever had, and a name put with no entry and not listed starts after it:
a folded name never gets one of its old versions back, at the cost of new names no
longer starting at 1. Nothing is refused for this; a version past 2^53 - 1 (beyond
exact JSON numbers, RFC 8259 section 6) is refused instead of wrapping or repeating.
A store with nothing to remember is written as ``/1``, exactly as before, so a
gateway of the previous release keeps reading it; a ``/2`` file is one that release
refuses (fails closed) rather than reads and rewrites without the history. A ``/1``
file (the previous release's) opens, and its names continue from their newest version.

What the history does not cover: it is not sealed. Someone who can write the file can
drop a ``deleted`` record (or the whole history, writing the file as ``/1``), or put
back an older copy of the file, and so make a later ``put`` repeat a version. Sealing
or authenticating the history under the key would not stop that: a record can be
removed, replaced by an older authentic one, or the whole file rolled back; only state
kept outside the file could. Such a writer can already delete the secrets or roll them
back, so the history guards against this module's own operations (any number of
processes putting, rotating and deleting), which is where versions were reused. The
file stays protected as before: mode 0600, values sealed and bound to name, version
and kind, strict parsing. The broker's token cache is keyed by the sealed entry, not
the label, so even a version repeated by such an edit never gets the other secret's
token.

Allowed upstreams: a secret may carry ``allowed_upstreams``, the origins (RFC 6454,
``scheme://host[:port]``) it may be sent to. The list is written in the clear in the
entry (``"allowed_upstreams": ["https://api.example.com"]``, sorted, normalised by
:func:`upstream_origin`) and is part of the value's associated data, so a list edited
in the file (widened, or removed) makes the value not open: fail closed. The broker
refuses (:class:`SecretNotAllowed`) to inject the secret into a request to any other
origin, and to send an OAuth secret (its client secret, or an assertion signed with
its key) to a token endpoint at any other origin; a gateway checks its configuration
against the store at start (:meth:`CredentialBroker.check_destinations`) and every
call again, since the store may change while it runs. A secret without the list is
sent wherever its configuration says, as before. A rotation keeps the list unless
told otherwise. A store holding such a list, or an ``oauth_client_key`` secret, is
refused as malformed by a gateway of an earlier release (fail closed).

OAuth 2.0 client credentials (RFC 6749 section 4.4): the broker asks the configured
token endpoint for an access token, authenticating with ``client_secret_basic`` (HTTP
Basic, section 2.3.1) or ``client_secret_post`` (form parameters, section 2.3.1) with
an ``oauth_client`` secret, or with ``private_key_jwt`` (RFC 7523 section 2.2, OpenID
Connect Core 1.0 section 9) with an ``oauth_client_key`` secret: a client assertion
(``iss`` = ``sub`` = the client_id, ``aud`` the token endpoint URL or, when the
credential sets ``assertion_audience``, the authorization server's issuer identifier
(RFC 7523 section 3 point 3 allows either), a fresh ``jti``, valid for 60 s)
signed with the sealed private key (ES256, RS256 or PS256) by
:func:`~agentiam.core.credentials.assertions.sign_client_assertion`, the one the agent
SDK signs with too. The broker caches the token until shortly before it expires
(``expires_in``, section 5.1), fetches a new one after that or after the secret
changed (rotation, or delete and put), and injects it as a Bearer token (RFC 6750
section 2.1). Concurrent calls share one fetch, failed or not, and a failure is
answered from memory for 2 seconds. The token endpoint is
fetched through :class:`~agentiam.adapters.outbound.PinnedClient` (https only, public
addresses only, unless ``allow_private_network``). Tokens and secrets are never
logged; errors name the secret by ``name@version`` and quote the endpoint's OAuth
error code (section 5.2).

Echo forms: a gateway masks the credential it injected wherever an upstream's answer
echoes it, as sent or encoded
(:class:`~agentiam.adapters.gateway.echo_mask.EchoForms`). Those forms are costly to
compute and each one is the credential, so the broker computes them once per credential
value and holds them with its own copy (:meth:`CredentialBroker.injection_for`): an
OAuth token's with the cached token (dropped when it is refreshed, fetched anew after a
rotation, or replaced by a failure); an API key's, one per secret name, with the stored
entry they were computed from (replaced at the first call after a rotation, dropped
when the secret can no longer be had). Nothing else keeps them: a gateway holds them
for the calls in flight only.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from agentiam.adapters.files import remove_stale_temps, replace_file
from agentiam.adapters.gateway.echo_mask import EchoForms
from agentiam.adapters.outbound import (
    OutboundError,
    PinnedClient,
    excerpt,
    vet_url_form,
)
from agentiam.core.credentials.assertions import (
    CLIENT_ASSERTION_TYPE,
    certificate_thumbprints,
    sign_client_assertion,
)
from agentiam.core.credentials.sealing import MasterKey, SealError, reseal
from agentiam.errors import AgentIAMError

try:  # POSIX: serialise writers; elsewhere the last rename wins
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ASSERTION_LIFETIME",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "MAX_ALLOWED_UPSTREAMS",
    "MAX_DELETED_NAMES",
    "MAX_STORE_BYTES",
    "ApiKeyInjection",
    "CredentialBroker",
    "CredentialRef",
    "Injection",
    "OAuthClientCredentials",
    "OAuthClientKey",
    "OAuthClientSecret",
    "Secret",
    "SecretInfo",
    "SecretKind",
    "SecretNotAllowed",
    "SecretNotFound",
    "SecretStore",
    "SecretStoreError",
    "SecretValue",
    "TokenEndpointError",
    "allowed_upstreams",
    "credential_ref_from_config",
    "load_secrets_key",
    "upstream_origin",
]

log = logging.getLogger("agentiam.gateway.broker")

KEY_ENV = "AGENTIAM_GATEWAY_SECRETS_KEY"
KEY_FILE_ENV = "AGENTIAM_GATEWAY_SECRETS_KEY_FILE"
MAX_STORE_BYTES = 4 * 1024 * 1024
MAX_SECRETS = 10_000  # entries (versions included)
MAX_DELETED_NAMES = 1_000  # deleted names whose last version is remembered by name
MAX_VALUE_BYTES = 16 * 1024
MAX_TOKEN_RESPONSE = 64 * 1024
MAX_ALLOWED_UPSTREAMS = 64  # origins one secret may be sent to
ASSERTION_LIFETIME = 60  # seconds a private_key_jwt client assertion is valid
_MIN_RSA_BITS = 2048  # RFC 7518 section 3.3
_KID = re.compile(r"[\x21-\x7e]{1,256}")  # a kid for the JOSE header: printable ASCII
_DEFAULT_PORTS = {"http": 80, "https": 443}
_FORMAT_1 = "agentiam-gateway-secrets/1"  # no history of deleted names
_FORMAT_2 = "agentiam-gateway-secrets/2"  # with "deleted" and "deleted_floor"
_MEMBERS = {
    _FORMAT_1: frozenset({"format", "master_key_id", "secrets"}),
    _FORMAT_2: frozenset({"format", "master_key_id", "secrets", "deleted", "deleted_floor"}),
}
_MAX_VERSION = 2**53 - 1  # exact in every JSON reader (RFC 8259 section 6)
_RACY_SECONDS = 2.0  # a store file younger than this is compared by content
_FAILURE_BACKOFF = 2.0  # seconds a failed token fetch is answered from memory
# Always used with fullmatch: "$" would also match before a final "\n".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# RFC 9110 section 5.6.2 token (a field name) and section 5.5 field values (no CTLs)
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_FIELD_VALUE = re.compile(r"[\x20-\x7e\x80-\xff]*")
_KEY_HINT = (
    f"Set {KEY_ENV} (or {KEY_FILE_ENV}) to the key the store was sealed with; "
    "make a new one with 'agentiam keys generate-master-key'."
)


# -- errors ------------------------------------------------------------------------------


class SecretStoreError(AgentIAMError):
    """The store cannot be read or written, or a value in it does not open."""

    code = "gateway-secret-store"
    title = "Gateway secret store error"
    status = 500


class SecretNotFound(SecretStoreError):
    code = "gateway-secret-not-found"
    title = "Gateway secret not found"


class SecretNotAllowed(SecretStoreError):
    """The secret's ``allowed_upstreams`` do not include where it would be sent."""

    code = "gateway-secret-not-allowed"
    title = "Gateway secret not allowed for this upstream"


class TokenEndpointError(AgentIAMError):
    """The upstream's token endpoint did not give an access token (the gateway answers
    502: the agent's call never went upstream)."""

    code = "upstream-token-error"
    title = "Upstream token endpoint error"
    status = 502


@dataclass(frozen=True, slots=True)
class _Refusal:
    """An error to raise again later: its class, message and hint only. Each raise
    makes a new instance: raising one instance again would add every caller's frames
    to its ``__traceback__`` (growing without bound and keeping their locals alive),
    and threads raising it at once would race on that attribute."""

    kind: type[AgentIAMError]
    detail: str
    hint: str | None

    @classmethod
    def of(cls, error: AgentIAMError) -> _Refusal:
        return cls(type(error), error.detail, error.hint)

    def error(self) -> AgentIAMError:
        return self.kind(self.detail, hint=self.hint)


# -- values --------------------------------------------------------------------------------


class Secret:
    """A secret string that does not show itself: ``repr``/``str`` print ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not pickled")


@dataclass(frozen=True, slots=True)
class OAuthClientSecret:
    """OAuth 2.0 client credentials (RFC 6749 section 2.3.1)."""

    client_id: str
    client_secret: Secret


_LoadedKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_ALG_FITS: dict[str, type[_LoadedKey]] = {
    "ES256": ec.EllipticCurvePrivateKey,
    "RS256": rsa.RSAPrivateKey,
    "PS256": rsa.RSAPrivateKey,
}


@dataclass(frozen=True, slots=True)
class OAuthClientKey:
    """An OAuth 2.0 client that authenticates with ``private_key_jwt`` (RFC 7523
    section 2.2; OpenID Connect Core 1.0 section 9): its ``client_id``, its private key
    (``private_key``: PKCS#8 PEM, EC P-256 or RSA of at least 2048 bits), the ``alg`` it
    signs with (ES256 for EC; RS256 or PS256 for RSA) and the ``kid`` its
    authorization server knows the public key by (None: no ``kid`` header).

    ``certificate``: the X.509 certificate (PEM; the first one when a chain is given)
    the authorization server knows the key by, which must be for this very key. The
    assertion's header then carries its ``x5t#S256`` (RFC 7515 section 4.1.8) and,
    with ``x5t``, its SHA-1 ``x5t`` too (section 4.1.7; Microsoft Entra ID wants it).
    It is sealed with the rest of the secret.

    Checked when made (:class:`SecretStoreError`, never quoting the key): a value
    that exists is sound. The PEM is parsed once, then, and the loaded key is kept
    with the value as the JWK :meth:`signing_key` returns: it lives exactly as long
    as the value (and its PEM) does, which the broker holds for one token fetch only
    (it unseals the secret for each fetch and keeps no value). ``_loaded``: the key
    ``private_key`` was made from, so it is not parsed again (:meth:`from_pem` only)."""

    client_id: str
    private_key: Secret
    alg: str
    kid: str | None = None
    certificate: str | None = None
    x5t: bool = False
    _loaded: InitVar[_LoadedKey | None] = None
    _jwk: ECKey | RSAKey = field(init=False, repr=False, compare=False)
    _thumbprints: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self, _loaded: _LoadedKey | None) -> None:
        if not self.client_id or any(ord(c) < 0x20 or ord(c) == 0x7F for c in self.client_id):
            raise SecretStoreError("client_id must be non-empty, without control characters")
        if self.kid is not None and not _KID.fullmatch(self.kid):
            raise SecretStoreError("kid must be 1-256 printable ASCII characters")
        key = _loaded
        if key is None:
            key = _private_key(self.private_key.reveal().encode("ascii"))
        fits = _ALG_FITS.get(self.alg)
        if fits is None:
            raise SecretStoreError("alg must be ES256, RS256 or PS256")
        if not isinstance(key, fits):
            raise SecretStoreError(f"alg {self.alg} does not fit the key's type")
        # joserfc wraps the loaded key object as it is: no second parse.
        jwk = (
            ECKey.import_key(key)
            if isinstance(key, ec.EllipticCurvePrivateKey)
            else RSAKey.import_key(key)
        )
        object.__setattr__(self, "_jwk", jwk)
        object.__setattr__(self, "_thumbprints", _thumbprints(self.certificate, key, self.x5t))

    @classmethod
    def from_pem(
        cls,
        client_id: str,
        pem: bytes,
        *,
        alg: str | None = None,
        kid: str | None = None,
        certificate: bytes | None = None,
        x5t: bool = False,
    ) -> OAuthClientKey:
        """The client with the unencrypted PEM private key ``pem`` (PKCS#8, SEC 1 or
        PKCS#1), kept as PKCS#8; ``alg`` defaults to ES256 for an EC P-256 key and to
        RS256 for an RSA key; ``certificate`` (PEM) and ``x5t`` as the class says.
        Raise :class:`SecretStoreError` (never quoting the key)."""
        key = _private_key(pem)
        if alg is None:
            alg = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
        pkcs8 = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            cert = None if certificate is None else certificate.decode("ascii")
        except UnicodeDecodeError:
            raise SecretStoreError("not a PEM certificate") from None
        return cls(client_id, Secret(pkcs8.decode("ascii")), alg, kid, cert, x5t, key)

    def signing_key(self) -> ECKey | RSAKey:
        """The private key as a JWK, for :func:`sign_client_assertion`: the one loaded
        when this value was made (no parse)."""
        return self._jwk

    def thumbprints(self) -> Mapping[str, str]:
        """The certificate's ``x5t#S256`` (and ``x5t``, when asked for) for the
        assertion's header; empty without a certificate."""
        return self._thumbprints


def _thumbprints(certificate: str | None, key: _LoadedKey, sha1: bool) -> Mapping[str, str]:
    """The header thumbprints of ``certificate`` (PEM, the first certificate of a
    chain), which must certify ``key``'s public half (the same SubjectPublicKeyInfo,
    RFC 5280 section 4.1.2.7): else :class:`SecretStoreError`."""
    if certificate is None:
        if sha1:
            raise SecretStoreError(
                "x5t needs the certificate", hint="Give it with --certificate-file."
            )
        return {}
    try:
        leaf = x509.load_pem_x509_certificates(certificate.encode("ascii"))[0]
    except (ValueError, UnicodeEncodeError, IndexError):
        raise SecretStoreError(
            "not a PEM certificate", hint="Give the X.509 certificate of the key, in PEM."
        ) from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise SecretStoreError(
            "the certificate is not for this private key",
            hint="Give the certificate the authorization server has for this key "
            "(the first certificate in the file).",
        )
    return certificate_thumbprints(leaf.public_bytes(serialization.Encoding.DER), sha1=sha1)


def _private_key(pem: bytes) -> _LoadedKey:
    """An unencrypted EC P-256 or RSA (>= 2048 bits) private key from PEM."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise SecretStoreError(
            "the private key PEM is encrypted",
            hint="Give the key unencrypted (openssl pkey -in KEY -out PLAIN); the store seals it.",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise SecretStoreError(
            "not a PEM private key", hint="Give a PKCS#8, SEC 1 or PKCS#1 PEM private key."
        ) from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= _MIN_RSA_BITS:
        return key
    raise SecretStoreError(
        "the private key must be EC P-256 (ES256) or RSA of at least "
        f"{_MIN_RSA_BITS} bits (RS256, PS256)"
    )


class SecretKind(StrEnum):
    API_KEY = "api_key"
    OAUTH_CLIENT = "oauth_client"
    OAUTH_CLIENT_KEY = "oauth_client_key"  # private_key_jwt


SecretValue = Secret | OAuthClientSecret | OAuthClientKey


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What may be shown about a secret: never its value. ``allowed_upstreams``: the
    origins it may be sent to (None: any)."""

    name: str
    kind: SecretKind
    version: int
    created_at: datetime
    allowed_upstreams: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        """``name@version``: how the audit trail names the secret."""
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind.value,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
        }
        if self.allowed_upstreams is not None:
            shown["allowed_upstreams"] = list(self.allowed_upstreams)
        return shown

    def check_destination(self, url: str | None, what: str = "") -> None:
        """Refuse (:class:`SecretNotAllowed`) sending this secret toward ``url``
        when its origin is not one of ``allowed_upstreams`` (None: no list, nothing
        refused; a ``url`` of None is refused when there is a list). ``what`` names
        the destination in the message (``"the token endpoint "``)."""
        allowed = self.allowed_upstreams
        if allowed is None:
            return
        origin = _origin_or_none(url) if url is not None else None
        if origin is not None and origin in allowed:
            return
        raise SecretNotAllowed(
            f"secret {self.label} may be sent only to {', '.join(allowed)}; not to "
            f"{what}{origin or 'an unknown origin'} (its allowed_upstreams)",
            hint=f"Send it to one of those origins, or rotate {self.name} with "
            "'--allow-upstream ORIGIN' for each origin it may go to.",
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    info: SecretInfo
    sealed: str  # never shown


@dataclass(frozen=True, slots=True)
class _Document:
    """What the store file holds: the entries kept, and what is remembered of the
    names deleted (see the module docstring)."""

    entries: tuple[_Entry, ...]
    deleted: Mapping[str, int]  # a name with no entry -> the highest version it had
    floor: int  # the highest version of any deleted name no longer in ``deleted``


@dataclass(slots=True)
class _Contents:
    """The store as a write edits it, under the store's lock."""

    entries: list[_Entry]
    deleted: dict[str, int]
    floor: int

    def next_version(self, name: str) -> int:
        """The version a ``put`` of ``name`` (which has no entry) gets: after the
        highest it had, if it was deleted and is remembered; after ``floor`` otherwise
        (1 in a store that never folded a deleted name), since a name that is not
        remembered may be one folded into it."""
        version = self.deleted.get(name, self.floor) + 1
        if version > _MAX_VERSION:
            raise SecretStoreError(
                f"secret {name!r} has used every version up to {_MAX_VERSION}",
                hint="Choose another name.",
            )
        return version

    def remember(self, name: str, last_version: int) -> None:
        """``name`` was deleted at ``last_version``. Past :data:`MAX_DELETED_NAMES`,
        the remembered names with the lowest versions are folded into ``floor``, which
        keeps the file bounded and still never gives a folded name an old version."""
        self.deleted[name] = last_version
        while len(self.deleted) > MAX_DELETED_NAMES:
            folded, version = min(self.deleted.items(), key=lambda item: (item[1], item[0]))
            del self.deleted[folded]
            self.floor = max(self.floor, version)


# -- the key -------------------------------------------------------------------------------


def load_secrets_key(env: Mapping[str, str] | None = None) -> MasterKey:
    """The secrets key from ``AGENTIAM_GATEWAY_SECRETS_KEY`` (base64url, 32 bytes) or
    the file named by ``AGENTIAM_GATEWAY_SECRETS_KEY_FILE``; both set is refused (which
    one was meant?). Raise :class:`SecretStoreError` with what to do next."""
    env = os.environ if env is None else env
    text, file = env.get(KEY_ENV), env.get(KEY_FILE_ENV)
    if text and file:
        raise SecretStoreError(
            f"both {KEY_ENV} and {KEY_FILE_ENV} are set", hint="Set only one of them."
        )
    if file:
        try:
            text = Path(file).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretStoreError(
                f"cannot read the secrets key file {file}: {type(exc).__name__}", hint=_KEY_HINT
            ) from None
    if not text:
        raise SecretStoreError("no gateway secrets key is configured", hint=_KEY_HINT)
    try:
        return MasterKey.from_text(text)
    except ValueError as exc:
        raise SecretStoreError(
            f"the gateway secrets key is invalid: {exc}", hint=_KEY_HINT
        ) from None


# -- the store -------------------------------------------------------------------------------


def _context(
    name: str, version: int, kind: SecretKind, allowed: tuple[str, ...] | None = None
) -> str:
    """Associated data: the sealed value belongs to this name, version and kind, and to
    its ``allowed_upstreams`` when it has a list (so the list, which the file shows in
    the clear, cannot be widened or removed without the key: the value no longer
    opens). A secret without a list has the context it always had."""
    context = f"gateway-secret\x00{name}\x00{version}\x00{kind.value}"
    if allowed is not None:
        context += "\x00allowed_upstreams\x00" + json.dumps(list(allowed), separators=(",", ":"))
    return context


def _context_of(info: SecretInfo) -> str:
    """The associated data of the value ``info`` describes."""
    return _context(info.name, info.version, info.kind, info.allowed_upstreams)


def upstream_origin(url: str) -> str:
    """The origin (RFC 6454 section 4) of an http(s) ``url``, serialised as section
    6.2 does: ``scheme://host[:port]``, scheme and host in lower case, an IPv6 host in
    brackets, the scheme's default port left out. Raise ValueError for anything else
    (another scheme, no host, user information, a host that is not ASCII)."""
    if not isinstance(url, str) or len(url) > 2048:
        raise ValueError("not a URL")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{url[:100]!r} is not an http(s) URL")
    host = parts.hostname
    if not host or "@" in parts.netloc or not host.isascii() or "%" in host:
        raise ValueError(f"{url[:100]!r} has no plain host (or has user information)")
    port = parts.port  # ValueError for a bad one
    shown = f"[{host}]" if ":" in host else host
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{shown}"
    return f"{scheme}://{shown}:{port}"


@functools.lru_cache(maxsize=1024)
def _origin_or_none(url: str) -> str | None:
    """:func:`upstream_origin`, or None when ``url`` has none (refused by callers).
    Cached: gateways send to the few URLs of their configuration."""
    try:
        return upstream_origin(url)
    except ValueError:
        return None


def allowed_upstreams(origins: Iterable[str]) -> tuple[str, ...]:
    """A secret's ``allowed_upstreams`` from what an operator wrote: each an origin
    (``scheme://host[:port]``, a trailing ``/`` tolerated, no path, query or fragment),
    normalised by :func:`upstream_origin`, sorted and without repeats; 1 to
    :data:`MAX_ALLOWED_UPSTREAMS` of them. Raise :class:`SecretStoreError`."""
    found: set[str] = set()
    for given in origins:
        try:
            origin = upstream_origin(given)
            parts = urlsplit(given)
        except ValueError as exc:
            raise SecretStoreError(f"allowed upstream: {exc}") from None
        if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in given:
            raise SecretStoreError(
                f"allowed upstream {given[:100]!r} is not an origin",
                hint="Give scheme://host[:port] only, e.g. https://api.example.com.",
            )
        found.add(origin)
    if not 1 <= len(found) <= MAX_ALLOWED_UPSTREAMS:
        raise SecretStoreError(
            f"allowed_upstreams holds 1 to {MAX_ALLOWED_UPSTREAMS} origins",
            hint="Leave it out to allow any upstream.",
        )
    return tuple(sorted(found))


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SecretStoreError(
            f"invalid secret name {name[:40]!r}" if isinstance(name, str) else "invalid name",
            hint="Use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )
    return name


def _encode(kind: SecretKind, value: SecretValue) -> bytes:
    if kind is SecretKind.API_KEY:
        if not isinstance(value, Secret):
            raise SecretStoreError("an api_key secret is one string")
        text = value.reveal()
        if not text or not _FIELD_VALUE.fullmatch(text) or text != text.strip():
            raise SecretStoreError(
                "an API key must be non-empty, without control characters or surrounding space",
                hint="It is sent in an HTTP header (RFC 9110 section 5.5).",
            )
        data = text.encode("utf-8")
    elif kind is SecretKind.OAUTH_CLIENT_KEY:
        if not isinstance(value, OAuthClientKey):
            raise SecretStoreError(
                "an oauth_client_key secret has a client_id and a private key (PEM)"
            )  # checked when it was made
        doc: dict[str, Any] = {
            "client_id": value.client_id,
            "private_key": value.private_key.reveal(),
            "alg": value.alg,
        }
        if value.kid is not None:
            doc["kid"] = value.kid
        if value.certificate is not None:  # a secret of the previous release has none
            doc["certificate"] = value.certificate
        if value.x5t:
            doc["x5t"] = True
        data = json.dumps(doc).encode("utf-8")
    else:
        if not isinstance(value, OAuthClientSecret):
            raise SecretStoreError("an oauth_client secret has a client_id and a client_secret")
        if not value.client_id or not value.client_secret.reveal():
            raise SecretStoreError("client_id and client_secret must not be empty")
        if any(ord(c) < 0x20 for c in value.client_id + value.client_secret.reveal()):
            raise SecretStoreError("client_id and client_secret must not hold control characters")
        data = json.dumps(
            {"client_id": value.client_id, "client_secret": value.client_secret.reveal()}
        ).encode("utf-8")
    if len(data) > MAX_VALUE_BYTES:
        raise SecretStoreError(f"a secret may hold at most {MAX_VALUE_BYTES} bytes")
    return data


def _decode(kind: SecretKind, data: bytes) -> SecretValue:
    if kind is SecretKind.API_KEY:
        return Secret(data.decode("utf-8"))
    doc = json.loads(data)
    if kind is SecretKind.OAUTH_CLIENT_KEY:
        # Checked as it is made (the PEM parsed once): SecretStoreError is the
        # caller's "malformed".
        x5t, certificate = doc.get("x5t", False), doc.get("certificate")
        if not isinstance(x5t, bool) or not isinstance(certificate, str | None):
            raise TypeError("x5t is true or absent, certificate a PEM string or absent")
        return OAuthClientKey(
            doc["client_id"],
            Secret(doc["private_key"]),
            doc["alg"],
            doc.get("kid"),
            certificate,
            x5t,
        )
    return OAuthClientSecret(doc["client_id"], Secret(doc["client_secret"]))


def _allowed_or_none(origins: Sequence[str] | None) -> tuple[str, ...] | None:
    if origins is None:
        return None
    if isinstance(origins, str):  # one origin, not its characters
        raise SecretStoreError("allowed_upstreams is a list of origins")
    return allowed_upstreams(origins)


def _is_version(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and 1 <= value <= _MAX_VERSION


def _parse_entry(raw: Any) -> _Entry:
    if not isinstance(raw, dict) or set(raw) - {"allowed_upstreams"} != {
        "name", "kind", "version", "created_at", "sealed"
    }:  # fmt: skip
        raise ValueError(
            "an entry has name, kind, version, created_at and sealed (and allowed_upstreams)"
        )
    version = raw["version"]
    if not _is_version(version):
        raise ValueError(f"version must be an integer from 1 to {_MAX_VERSION}")
    if not isinstance(raw["sealed"], str) or not isinstance(raw["created_at"], str):
        raise ValueError("sealed and created_at must be strings")
    created = datetime.fromisoformat(raw["created_at"])
    if created.tzinfo is None:
        raise ValueError("created_at needs a time zone")
    if not isinstance(raw["name"], str) or not _NAME.fullmatch(raw["name"]):
        raise ValueError("invalid secret name")
    allowed = None
    if "allowed_upstreams" in raw:
        listed = raw["allowed_upstreams"]
        if not isinstance(listed, list) or not all(isinstance(o, str) for o in listed):
            raise ValueError("allowed_upstreams must be a list of origins")
        try:
            allowed = allowed_upstreams(listed)
        except SecretStoreError as exc:
            raise ValueError(exc.detail) from None
        if list(allowed) != listed:
            raise ValueError("allowed_upstreams must be sorted, normalised origins")
    info = SecretInfo(raw["name"], SecretKind(raw["kind"]), version, created, allowed)
    return _Entry(info, raw["sealed"])


def _parse_deleted(raw: Any, floor: Any) -> tuple[dict[str, int], int]:
    """The ``deleted`` and ``deleted_floor`` members of a ``/2`` document."""
    if not isinstance(raw, list) or len(raw) > MAX_DELETED_NAMES:
        raise ValueError(f"deleted must be a list of at most {MAX_DELETED_NAMES} names")
    deleted: dict[str, int] = {}
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"name", "last_version"}:
            raise ValueError("a deleted name has name and last_version")
        name, version = item["name"], item["last_version"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError("invalid secret name in deleted")
        if not _is_version(version):
            raise ValueError(f"last_version must be an integer from 1 to {_MAX_VERSION}")
        if name in deleted:
            raise ValueError("deleted repeats a name")
        deleted[name] = version
    if isinstance(floor, bool) or not isinstance(floor, int) or not 0 <= floor <= _MAX_VERSION:
        raise ValueError(f"deleted_floor must be an integer from 0 to {_MAX_VERSION}")
    return deleted, floor


class SecretStore:
    """The sealed store file; see the module docstring. Reads reload the file when it
    changed (checked at most every ``reload_interval`` seconds of ``clock``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        key: MasterKey,
        *,
        reload_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._key = key
        self._reload_interval = reload_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None  # inode, size, mtime_ns
        self._digest: bytes | None = None  # SHA-256 of the content last parsed
        self._checked_at: float | None = None
        self._entries: tuple[_Entry, ...] = ()
        self._error: _Refusal | None = None  # the store does not read: fail closed

    def __repr__(self) -> str:
        return f"SecretStore({str(self.path)!r}, key={self._key.id})"

    # -- reading ----------------------------------------------------------------------------

    def all(self) -> list[SecretInfo]:
        """Every version kept, by name then version: names, kinds, versions, dates."""
        return [
            e.info for e in sorted(self._current(), key=lambda e: (e.info.name, e.info.version))
        ]

    def info(self, name: str, version: int | None = None) -> SecretInfo:
        return self.entry(name, version).info

    def get(self, name: str, version: int | None = None) -> tuple[SecretInfo, SecretValue]:
        """The newest version of ``name`` (or ``version``, if still kept), opened."""
        entry = self.entry(name, version)
        return entry.info, self.unseal(entry)

    def entry(self, name: str, version: int | None = None) -> _Entry:
        """The stored entry (sealed) of ``name``'s newest version, or of ``version``.
        Two entries are equal only if they are the same seal: a name deleted and put
        again gets a new version, and even a version repeated by an edit of the file
        (see the module docstring) is a new entry."""
        return self._find(self._current(), name, version)

    def verify(self) -> int:
        """Open every value (a wrong key or an altered entry raises); how many."""
        entries = self._current()
        for entry in entries:
            self.unseal(entry)
        return len(entries)

    def unseal(self, entry: _Entry) -> SecretValue:
        """The value of ``entry``; raises :class:`SecretStoreError` if it does not open."""
        info = entry.info
        try:
            data = self._key.open(entry.sealed, context=_context_of(info))
            return _decode(info.kind, data)
        except SealError as exc:
            raise SecretStoreError(
                f"secret {info.label} in {self.path} does not open: {exc}",
                hint="The store was altered or sealed under another key. " + _KEY_HINT,
            ) from None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, SecretStoreError):
            raise SecretStoreError(
                f"secret {info.label} in {self.path} is malformed", hint="Put it again."
            ) from None

    @staticmethod
    def _find(entries: tuple[_Entry, ...], name: str, version: int | None) -> _Entry:
        matches = [e for e in entries if e.info.name == name]
        if version is not None:
            matches = [e for e in matches if e.info.version == version]
        if not matches:
            shown = name if version is None else f"{name}@{version}"
            raise SecretNotFound(
                f"no secret {shown[:140]!r} in the gateway secret store",
                hint="Add it with 'agentiam gateway secrets put NAME'.",
            )
        return max(matches, key=lambda e: e.info.version)

    def _current(self) -> tuple[_Entry, ...]:
        with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self._reload_interval:
                self._checked_at = now
                self._refresh()
            if self._error is not None:
                raise self._error.error()
            return self._entries

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._entries, self._error, self._digest = None, (), None, None
            return
        except OSError as exc:
            self._stamp = None
            self._error = _Refusal(
                SecretStoreError,
                f"cannot read the gateway secret store {self.path}: {type(exc).__name__}",
                None,
            )
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        # A file replaced within the file system's timestamp granularity can show the
        # same stamp (inode numbers are reused): a recent file is compared by content.
        racy = time.time() - st.st_mtime_ns / 1e9 < _RACY_SECONDS
        if stamp == self._stamp and not racy:
            return
        try:
            data = self._read()
            digest = hashlib.sha256(data).digest()
            if digest != self._digest or self._error is not None:
                self._entries, self._error = self._parse(data).entries, None
            self._digest = digest
        except SecretStoreError as exc:
            self._entries, self._error, self._digest = (), _Refusal.of(exc), None  # fail closed
        self._stamp = stamp

    def _load(self) -> _Document:
        return self._parse(self._read())

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(MAX_STORE_BYTES + 1)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise SecretStoreError(
                f"cannot read the gateway secret store {self.path}: {type(exc).__name__}"
            ) from None
        if len(data) > MAX_STORE_BYTES:
            raise SecretStoreError(
                f"the gateway secret store {self.path} exceeds {MAX_STORE_BYTES} bytes"
            )
        return data

    def _parse(self, data: bytes) -> _Document:
        """The document in ``data``, parsed strictly: exactly the members its format
        has, each checked; anything else is refused, naming what is wrong."""
        if not data:
            return _Document((), {}, 0)  # no store yet
        try:
            doc = json.loads(data)
            form = doc.get("format") if isinstance(doc, dict) else None
            if not isinstance(form, str) or form not in _MEMBERS:
                raise ValueError(f"not a {_FORMAT_2} (or /1) document")
            if set(doc) != _MEMBERS[form]:
                raise ValueError(f"a {form} document has: {', '.join(sorted(_MEMBERS[form]))}")
            raw = doc["secrets"]
            if not isinstance(raw, list) or len(raw) > MAX_SECRETS:
                raise ValueError(f"secrets must be a list of at most {MAX_SECRETS} entries")
            entries = tuple(_parse_entry(item) for item in raw)
            deleted, floor = (
                ({}, 0)
                if form == _FORMAT_1
                else _parse_deleted(doc["deleted"], doc["deleted_floor"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SecretStoreError(
                f"the gateway secret store {self.path} is malformed: {str(exc)[:120]}",
                hint="Restore it from a backup, or put the secrets again.",
            ) from None
        if doc.get("master_key_id") != self._key.id:
            raise SecretStoreError(
                f"the gateway secret store {self.path} was sealed under key "
                f"{str(doc.get('master_key_id'))[:20]}, but the configured key is {self._key.id}",
                hint=_KEY_HINT,
            )
        labels = [e.info.label for e in entries]
        if len(set(labels)) != len(labels):
            raise SecretStoreError(f"the gateway secret store {self.path} repeats a version")
        if any(e.info.name in deleted for e in entries):
            raise SecretStoreError(
                f"the gateway secret store {self.path} lists a secret it keeps as deleted",
                hint="Restore it from a backup, or put the secrets again.",
            )
        return _Document(entries, deleted, floor)

    # -- writing ----------------------------------------------------------------------------

    def put(
        self,
        name: str,
        kind: SecretKind,
        value: SecretValue,
        *,
        allowed_upstreams: Sequence[str] | None = None,
    ) -> SecretInfo:
        """Add a new secret: version 1, or if ``name`` was deleted, the version after
        the highest it had (see the module docstring for names past
        :data:`MAX_DELETED_NAMES`). Refused if ``name`` exists: rotate it instead.
        ``allowed_upstreams``: the origins it may be sent to (None: any)."""
        _check_name(name)
        kind = SecretKind(kind)
        data = _encode(kind, value)
        allowed = _allowed_or_none(allowed_upstreams)
        with self._writing() as store:
            if any(e.info.name == name for e in store.entries):
                raise SecretStoreError(
                    f"secret {name!r} exists",
                    hint=f"Use 'agentiam gateway secrets rotate {name}' for a new version.",
                )
            entry = self._seal(name, kind, store.next_version(name), data, allowed)
            store.entries.append(entry)
            store.deleted.pop(name, None)  # its entries now carry its highest version
        return entry.info

    def rotate(
        self,
        name: str,
        value: SecretValue,
        *,
        allowed_upstreams: Sequence[str] | Literal["keep"] | None = "keep",
    ) -> SecretInfo:
        """A new version of ``name`` (same kind). The version it replaces is kept for
        calls in flight; older ones are removed. ``allowed_upstreams``: the new
        version's list (None: any upstream); by default the current version's."""
        with self._writing() as store:
            current = self._find(tuple(store.entries), _check_name(name), None).info
            data = _encode(current.kind, value)
            allowed = (
                current.allowed_upstreams
                if allowed_upstreams == "keep"
                else _allowed_or_none(allowed_upstreams)
            )
            if current.version >= _MAX_VERSION:
                raise SecretStoreError(
                    f"secret {name!r} has used every version up to {_MAX_VERSION}",
                    hint="Put the value under another name.",
                )
            entry = self._seal(name, current.kind, current.version + 1, data, allowed)
            store.entries[:] = [
                e for e in store.entries if e.info.name != name or e.info.version == current.version
            ]
            store.entries.append(entry)
        return entry.info

    def delete(self, name: str) -> int:
        """Remove every version of ``name``; how many were removed. The highest
        version it had is remembered, so a ``put`` of it again continues after it."""
        with self._writing() as store:
            versions = [e.info.version for e in store.entries if e.info.name == name]
            if not versions:
                raise SecretNotFound(f"no secret {name[:140]!r} in the gateway secret store")
            store.entries[:] = [e for e in store.entries if e.info.name != name]
            store.remember(name, max(versions))
        return len(versions)

    def _seal(
        self,
        name: str,
        kind: SecretKind,
        version: int,
        data: bytes,
        allowed: tuple[str, ...] | None,
    ) -> _Entry:
        created = datetime.now(UTC).replace(microsecond=0)
        info = SecretInfo(name, kind, version, created, allowed)
        sealed = self._key.seal(data, context=_context(name, version, kind, allowed))
        return _Entry(info, sealed)

    def rekey(self, new_key: MasterKey) -> int:
        """Seal every value again under ``new_key`` (key rotation); how many. Every
        entry kept (each version, with its name, version, kind and allowed upstreams
        as associated data, and its creation time) and the deleted names' history are
        kept as they are; the file names ``new_key`` from then on. All or nothing:
        under the store's lock, every value is opened with this store's key first
        (:func:`~agentiam.core.credentials.sealing.reseal`); one that does not open,
        or a store that does not read, is refused and the file is left as it was. The
        file is replaced atomically (:func:`~agentiam.adapters.files.replace_file`),
        so a crash leaves the old store or the new one. This object keeps its key:
        open the store with ``new_key`` to read it afterwards; a gateway still
        holding the old key refuses every injection from it (fail closed)."""
        if not self.path.exists():
            raise SecretNotFound(f"no gateway secret store at {self.path}")
        with self._writing(new_key) as store:
            try:
                sealed = reseal(
                    {e.info.label: (e.sealed, _context_of(e.info)) for e in store.entries},
                    old=self._key,
                    new=new_key,
                )
            except SealError as exc:
                raise SecretStoreError(
                    f"the gateway secret store {self.path} was not re-sealed (left as it "
                    f"was): secret {exc}",
                    hint="Every value must open with the current key; "
                    "run 'agentiam gateway secrets verify'. " + _KEY_HINT,
                ) from None
            except ValueError as exc:
                raise SecretStoreError(
                    f"{exc}", hint="Give the new key's file (agentiam keys generate-master-key)."
                ) from None
            store.entries[:] = [_Entry(e.info, sealed[e.info.label]) for e in store.entries]
        return len(store.entries)

    @contextlib.contextmanager
    def _writing(self, new_key: MasterKey | None = None) -> Iterator[_Contents]:
        """Lock, read, let the caller edit the contents, write atomically (the file
        naming ``new_key`` when given: the caller sealed every value under it)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                # A writer killed before its rename left its temporary file (sealed
                # values only, as the store): no writer is in flight while we hold
                # the lock, so every one there is stale. Unlocked (no fcntl), a
                # temporary file may be another writer's: left alone.
                remove_stale_temps(self.path)
            doc = self._load()
            store = _Contents(list(doc.entries), dict(doc.deleted), doc.floor)
            yield store
            if len(store.entries) > MAX_SECRETS:
                raise SecretStoreError(f"the store may hold at most {MAX_SECRETS} secrets")
            self._write(store, new_key or self._key)
        finally:
            os.close(lock_fd)  # releases the lock
        with self._lock:
            self._checked_at = None  # this process sees its own write at once

    def _write(self, store: _Contents, key: MasterKey) -> None:
        """Write ``store``, sealed under ``key``: as ``/1`` when it remembers no
        deletion (what the previous release reads), else as ``/2`` (which that release
        refuses instead of dropping the history when it rewrites the file)."""
        doc: dict[str, Any] = {
            "format": _FORMAT_1,
            "master_key_id": key.id,
            "secrets": [
                {**e.info.to_dict(), "sealed": e.sealed}
                for e in sorted(store.entries, key=lambda e: (e.info.name, e.info.version))
            ],
        }
        if store.deleted or store.floor:
            doc["format"] = _FORMAT_2
            doc["deleted"] = [
                {"name": name, "last_version": version}
                for name, version in sorted(store.deleted.items())
            ]
            doc["deleted_floor"] = store.floor
        data = json.dumps(doc, indent=1).encode("utf-8") + b"\n"
        if len(data) > MAX_STORE_BYTES:
            raise SecretStoreError(f"the store would exceed {MAX_STORE_BYTES} bytes")
        replace_file(self.path, data)


# -- injection configuration ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiKeyInjection:
    """Inject an ``api_key`` secret as ``<header>: <prefix><key>`` (e.g. ``Authorization:
    Bearer …`` or ``X-Api-Key: …``)."""

    secret: str
    header: str = "Authorization"
    prefix: str = ""

    def __post_init__(self) -> None:
        _check_name(self.secret)
        _check_header(self.header, self.prefix)


AuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]
_AUTH_METHODS: tuple[AuthMethod, ...] = (
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
)


@dataclass(frozen=True, slots=True)
class OAuthClientCredentials:
    """Inject an access token from the client credentials grant (RFC 6749 section 4.4)
    as ``<header>: Bearer <token>`` (RFC 6750), authenticating to the token endpoint
    with an ``oauth_client`` secret (``client_secret_basic``, ``client_secret_post``:
    RFC 6749 section 2.3.1) or an ``oauth_client_key`` secret (``private_key_jwt``:
    RFC 7523 section 2.2, OpenID Connect Core 1.0 section 9)."""

    secret: str
    token_endpoint: str
    auth_method: AuthMethod = "client_secret_basic"
    scope: str | None = None  # RFC 6749 section 3.3
    resource: str | None = None  # RFC 8707 section 2
    header: str = "Authorization"
    allow_private_network: bool = False
    timeout: float = 5.0
    refresh_margin: float = 30.0  # seconds before expiry a new token is fetched
    default_lifetime: float = 60.0  # when the endpoint gives no expires_in
    # private_key_jwt: the assertion's aud (RFC 7523 section 3 point 3); None: the
    # token endpoint URL. See :func:`_check_assertion_audience`.
    assertion_audience: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.secret)
        _check_header(self.header, "Bearer ")
        if self.auth_method not in _AUTH_METHODS:
            raise ValueError(f"auth_method is {', '.join(_AUTH_METHODS)}")
        try:
            vet_url_form(self.token_endpoint, allow_private_network=self.allow_private_network)
        except OutboundError as exc:
            raise ValueError(f"token_endpoint: {exc}") from None
        if self.assertion_audience is not None:
            if self.auth_method != "private_key_jwt":
                raise ValueError("assertion_audience is for auth_method private_key_jwt only")
            _check_assertion_audience(self.assertion_audience, self.token_endpoint)
        if not self.timeout > 0 or self.refresh_margin < 0 or not self.default_lifetime > 0:
            raise ValueError("timeout and default_lifetime must be positive, refresh_margin >= 0")

    @property
    def kind(self) -> SecretKind:
        """The kind of secret ``auth_method`` needs."""
        if self.auth_method == "private_key_jwt":
            return SecretKind.OAUTH_CLIENT_KEY
        return SecretKind.OAUTH_CLIENT


CredentialRef = ApiKeyInjection | OAuthClientCredentials


def _check_assertion_audience(audience: str, token_endpoint: str) -> None:
    """A ``private_key_jwt`` assertion's ``aud`` identifies the authorization server
    (RFC 7523 section 3 point 3): its token endpoint URL (the default; OpenID Connect
    Core 1.0 section 9) or its issuer identifier, which some servers require (an
    ``https`` URL with a host and no query or fragment: RFC 8414 section 2). Anything
    else is refused at start (ValueError): an ``aud`` the server does not accept would
    only fail at every call."""
    if audience == token_endpoint:
        return
    if not isinstance(audience, str) or not 0 < len(audience) <= 2048:
        raise ValueError("assertion_audience must be a URL of at most 2048 characters")
    parts = urlsplit(audience)
    try:
        parts.port  # noqa: B018 - ValueError for a port that is not one
    except ValueError:
        parts = urlsplit("")  # refused below
    if (
        parts.scheme != "https"
        or not parts.hostname
        or "@" in parts.netloc
        or parts.query
        or parts.fragment
        or "?" in audience
        or "#" in audience
        or not audience.isascii()
        or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in audience)
    ):
        raise ValueError(
            "assertion_audience must be the token endpoint URL or the authorization "
            "server's issuer identifier: an https URL with a host and no query or "
            "fragment (RFC 8414 section 2)"
        )


def _check_header(header: str, prefix: str) -> None:
    if not _FIELD_NAME.fullmatch(header):
        raise ValueError(f"invalid header name {header[:40]!r}")
    if not _FIELD_VALUE.fullmatch(prefix):
        raise ValueError("the header prefix holds control characters")


def credential_ref_from_config(config: Mapping[str, Any]) -> CredentialRef:
    """Read an upstream's ``credential`` configuration::

        credential: {secret: github, header: Authorization, prefix: "Bearer "}
        credential: {secret: crm, token_endpoint: https://auth.example/token,
                     auth_method: client_secret_post, scope: "read write"}

    With ``token_endpoint`` it is OAuth client credentials, else an API key. Unknown
    keys are refused (ValueError)."""
    data = dict(config)
    if "token_endpoint" in data:
        allowed = set(OAuthClientCredentials.__dataclass_fields__)
        kind: type[ApiKeyInjection] | type[OAuthClientCredentials] = OAuthClientCredentials
    else:
        allowed = set(ApiKeyInjection.__dataclass_fields__)
        kind = ApiKeyInjection
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown credential keys: {', '.join(sorted(map(str, unknown)))}")
    if "secret" not in data:
        raise ValueError("a credential names its secret: secret: NAME")
    try:
        return kind(**data)
    except TypeError as exc:
        raise ValueError(f"invalid credential configuration: {exc}") from None


# -- the broker ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Injection:
    """What the broker adds to one upstream call: the ``headers``, the ``label``
    (``name@version``) of the secret used, for the audit trail, and ``echo``, the
    forms of the bare credential in them (the API key without the ``prefix``, the
    access token without ``Bearer``, RFC 6750 section 2.1), as an upstream that echoes
    it may write it. Both gateways mask those in what the upstream answers
    (:class:`~agentiam.adapters.gateway.echo_mask.EchoMask`). ``echo`` is the broker's
    own, held with its copy of the credential (module docstring): keep it no longer
    than the call. The repr shows the label only."""

    headers: dict[str, str] = field(repr=False)
    label: str
    echo: EchoForms | None = field(repr=False)


def _echo_forms(bare: str, label: str) -> EchoForms | None:
    """The echo forms of the bare credential ``bare`` of secret ``label``: of its bytes
    in a field value (ISO-8859-1, RFC 9110 section 5.5); None when it is empty."""
    try:
        data = bare.encode("latin-1")
    except UnicodeEncodeError:
        raise SecretStoreError(f"secret {label} is not a valid header field value") from None
    return EchoForms(data) if data else None


@dataclass(frozen=True, slots=True)
class _Token:
    entry: _Entry  # the stored entry it was obtained with: its seal, not only its label
    value: Secret
    until: float  # clock time after which a new one is fetched
    echo: EchoForms | None = field(repr=False)  # the forms of ``value``, dropped with it


@dataclass(frozen=True, slots=True)
class _Failed:
    entry: _Entry  # the stored entry the failed fetch used
    refusal: _Refusal
    until: float  # clock time until which the failure is the answer, without a fetch


@dataclass(slots=True)
class _Slot:
    """One credential's token state: the outcome of its last fetch, and the lock that
    lets one fetch at a time run."""

    fetching: threading.Lock = field(default_factory=threading.Lock)
    fetches: int = 0  # fetches ended: a waiter sees whether one ended while it waited
    outcome: _Token | _Failed | None = None


class CredentialBroker:
    """Headers that carry an upstream credential, and the secret's ``name@version``.

    Concurrent calls for one OAuth credential share one token fetch: calls that wait
    behind a fetch take its outcome, token or error. A failed fetch is answered from
    memory for 2 s (``_FAILURE_BACKOFF``) per credential and stored secret version,
    so a hung token endpoint costs each call at most one ``timeout``. A token or a
    failure belongs to the stored entry (the seal) it was fetched with: a rotation, a
    delete and put (a new version), or even a store file edited to repeat a version,
    fetches anew.

    Each credential's echo forms (:class:`Injection`) are computed once per value and
    held with the broker's copy of it: an OAuth token's in its cached token, an API
    key's per secret name with the stored entry (the seal) they belong to, replaced
    when another entry is used and dropped when none can be.

    A secret with ``allowed_upstreams`` is injected only into a request to one of
    those origins, and (OAuth) only fetched a token with from a token endpoint at one
    of them: anything else is refused (:class:`SecretNotAllowed`) before the secret is
    opened. :meth:`check_destinations` makes the same check at a gateway's start.

    ``clock`` (monotonic seconds) times token expiry and the failure back-off;
    ``wall_clock`` (seconds since the epoch) dates client assertions (``iat``,
    ``exp``); ``transport`` replaces the pinned transport of token requests (tests
    only)."""

    def __init__(
        self,
        store: SecretStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.store = store
        self._clock = clock
        self._wall_clock = wall_clock
        self._transport = transport
        self._lock = threading.Lock()
        self._slots: dict[OAuthClientCredentials, _Slot] = {}  # one per configured ref
        self._echo_lock = threading.Lock()  # an API key's forms are computed once
        # secret name -> the entry of the API key used last, and its echo forms
        self._key_echoes: dict[str, tuple[_Entry, EchoForms | None]] = {}

    def __repr__(self) -> str:
        return f"CredentialBroker({self.store!r})"

    def headers_for(
        self, ref: CredentialRef, destination: str | None = None
    ) -> tuple[dict[str, str], str]:
        """The headers to add to the upstream request, and the ``name@version`` of the
        secret used (for the audit trail): :meth:`injection_for` without the echo
        forms."""
        injection = self.injection_for(ref, destination)
        return injection.headers, injection.label

    def injection_for(self, ref: CredentialRef, destination: str | None = None) -> Injection:
        """The headers to add to the upstream request to ``destination`` (its URL),
        the ``name@version`` of the secret used, and the echo forms of the credential
        in them (:class:`Injection`). Raises :class:`SecretStoreError` (missing, wrong
        kind, does not open; :class:`SecretNotAllowed`: its ``allowed_upstreams`` do
        not include ``destination``'s origin, or a ``destination`` of None) or
        :class:`TokenEndpointError`."""
        if isinstance(ref, ApiKeyInjection):
            return self._api_key(ref, destination)
        return self._oauth(ref, destination)

    def check_destinations(self, uses: Iterable[tuple[str, CredentialRef, str]]) -> None:
        """A gateway's check at start. First the store itself: one that exists but
        does not read with the configured key (sealed under another key, as after
        ``gateway secrets rekey`` by a gateway not yet given the new one; malformed;
        unreadable) stops the start (:class:`SecretStoreError`, naming the key ids,
        never key material): it would refuse every injection. Then, for each
        ``(where, ref, url)`` (the configuration key, the credential, the upstream's
        URL), refuse (:class:`SecretNotAllowed`, naming ``where``) a credential whose
        secret's newest version has ``allowed_upstreams`` that do not include the
        upstream's origin or, for OAuth, the token endpoint's. A secret that is not
        in the store is only logged: each call using it is refused until it is put
        (as before), and checked then."""
        try:
            self.store.all()
        except SecretStoreError as exc:
            raise SecretStoreError(
                f"the gateway secret store does not open: {exc.detail}", hint=exc.hint
            ) from None
        for where, ref, url in uses:
            try:
                info = self.store.info(ref.secret)
            except SecretStoreError as exc:
                log.warning(
                    "%s: secret %s cannot be checked now: %s", where, ref.secret, exc.detail
                )
                continue
            try:
                info.check_destination(url)
                if isinstance(ref, OAuthClientCredentials):
                    info.check_destination(ref.token_endpoint, "the token endpoint ")
            except SecretNotAllowed as exc:
                raise SecretNotAllowed(f"{where}: {exc.detail}", hint=exc.hint) from None

    def _api_key(self, ref: ApiKeyInjection, destination: str | None) -> Injection:
        try:
            entry = self.store.entry(ref.secret)
            entry.info.check_destination(destination)
            value = self.store.unseal(entry)
            if not isinstance(value, Secret):
                raise SecretStoreError(
                    f"secret {entry.info.label} is {entry.info.kind.value}, "
                    "the upstream expects an api_key"
                )
            echo = self._key_echo(entry, value)
        except SecretStoreError:
            with self._echo_lock:  # no longer had: neither are its forms
                self._key_echoes.pop(ref.secret, None)
            raise
        return Injection({ref.header: ref.prefix + value.reveal()}, entry.info.label, echo)

    def _key_echo(self, entry: _Entry, value: Secret) -> EchoForms | None:
        """The echo forms of the API key ``value`` sealed in ``entry``: those held for
        its name if they were computed from ``entry``, else computed now and held in
        their place (the previous version's are dropped)."""
        name = entry.info.name
        with self._echo_lock:  # computed once, even by calls arriving together
            held = self._key_echoes.get(name)
            if held is None or held[0] != entry:
                held = (entry, _echo_forms(value.reveal(), entry.info.label))
                self._key_echoes[name] = held
            return held[1]

    def _oauth(self, ref: OAuthClientCredentials, destination: str | None) -> Injection:
        entry = self.store.entry(ref.secret)
        info = entry.info
        if info.kind is not ref.kind:
            raise SecretStoreError(
                f"secret {info.label} is {info.kind.value}, the upstream expects "
                f"{ref.kind.value} (auth_method {ref.auth_method})",
                hint="auth_method private_key_jwt takes an oauth_client_key secret; "
                "client_secret_basic and client_secret_post an oauth_client secret.",
            )
        info.check_destination(destination)
        with self._lock:
            slot = self._slots.setdefault(ref, _Slot())
            seen = slot.fetches
            outcome = self._usable(slot.outcome, entry)
        if outcome is None:
            with slot.fetching:
                with self._lock:  # a fetch that ended while we waited answers us too,
                    # if it used the secret we read (not one rotated meanwhile)
                    ended = slot.outcome if slot.fetches != seen else None
                    outcome = ended if ended is not None and ended.entry == entry else None
                if outcome is None:
                    outcome = self._attempt(ref, entry)
                    with self._lock:
                        slot.outcome = outcome
                        slot.fetches += 1
        if isinstance(outcome, _Failed):
            raise outcome.refusal.error()
        headers = {ref.header: "Bearer " + outcome.value.reveal()}
        return Injection(headers, outcome.entry.info.label, outcome.echo)

    def _usable(self, outcome: _Token | _Failed | None, entry: _Entry) -> _Token | _Failed | None:
        """``outcome`` if it was fetched with ``entry`` and is still current."""
        if outcome is None or outcome.entry != entry or self._clock() >= outcome.until:
            return None
        return outcome

    def _attempt(self, ref: OAuthClientCredentials, entry: _Entry) -> _Token | _Failed:
        try:
            return self._fetch(ref, entry)
        except (TokenEndpointError, SecretStoreError) as exc:
            return _Failed(entry, _Refusal.of(exc), self._clock() + _FAILURE_BACKOFF)

    def _fetch(self, ref: OAuthClientCredentials, entry: _Entry) -> _Token:
        """The client credentials grant, RFC 6749 section 4.4.2 / 4.4.3, with the
        client credentials sealed in ``entry``, sent only to a token endpoint the
        secret's ``allowed_upstreams`` include."""
        info = entry.info
        info.check_destination(ref.token_endpoint, "the token endpoint ")
        value = self.store.unseal(entry)
        form = {"grant_type": "client_credentials"}
        if ref.scope:
            form["scope"] = ref.scope
        if ref.resource:
            form["resource"] = ref.resource
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            "User-Agent": "agentiam-gateway/1",
        }
        if isinstance(value, OAuthClientKey) and ref.auth_method == "private_key_jwt":
            audience = ref.assertion_audience or ref.token_endpoint
            secret = self._assertion(value, audience, info)  # scrubbed like one
            form["client_id"] = value.client_id  # RFC 7521 section 4.2: the same client
            form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
            form["client_assertion"] = secret
        elif isinstance(value, OAuthClientSecret) and ref.auth_method != "private_key_jwt":
            secret = value.client_secret.reveal()
            if ref.auth_method == "client_secret_basic":
                # section 2.3.1: each part form-urlencoded, then HTTP Basic (RFC 7617)
                pair = f"{quote(value.client_id, safe='')}:{quote(secret, safe='')}"
                basic = base64.b64encode(pair.encode()).decode("ascii")
                headers["Authorization"] = "Basic " + basic
            else:
                form["client_id"] = value.client_id
                form["client_secret"] = secret
        else:
            raise SecretStoreError(f"secret {info.label} is not an {ref.kind.value} secret")
        started = self._clock()
        shown = f"the token endpoint of {info.label}"
        client = PinnedClient(
            ref.token_endpoint,
            allow_private_network=ref.allow_private_network,
            timeout=ref.timeout,
            transport=self._transport,
        )
        try:
            with client.stream("POST", headers, urlencode(form).encode("ascii")) as (response, _):
                status = response.status_code
                body = _read_body(response)
        except OutboundError as exc:
            raise TokenEndpointError(
                f"{shown} cannot be reached: {_scrub(str(exc), secret)}",
                hint="Check the token endpoint URL and the network path to it.",
            ) from None
        finally:
            client.close()
        if status != 200:
            raise TokenEndpointError(
                f"{shown} refused the request: HTTP {status}{_oauth_error(body, secret)}",
                hint=f"Check the client credentials in secret {info.label} and the scope.",
            )
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            access_token = doc["access_token"]
            token_type = doc.get("token_type")
            lifetime = doc.get("expires_in", ref.default_lifetime)
        except (ValueError, KeyError, UnicodeDecodeError, RecursionError):
            raise TokenEndpointError(f"{shown} answered without an access token") from None
        if (
            not isinstance(access_token, str)
            or not access_token
            or len(access_token) > 8192
            or not _FIELD_VALUE.fullmatch(access_token)
        ):
            raise TokenEndpointError(f"{shown} answered with a malformed access token")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TokenEndpointError(
                f"{shown} issued a token of type {str(token_type)[:20]!r}; only Bearer "
                "(RFC 6750) is supported"
            )
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            raise TokenEndpointError(f"{shown} answered with an invalid expires_in")
        lifetime = min(float(lifetime), 86_400.0)
        margin = min(ref.refresh_margin, lifetime / 2)
        log.info(
            "gateway: fetched an access token with secret %s (expires in %g s)",
            info.label,
            lifetime,
        )
        until = started + lifetime - margin
        return _Token(entry, Secret(access_token), until, _echo_forms(access_token, info.label))

    def _assertion(self, value: OAuthClientKey, audience: str, info: SecretInfo) -> str:
        """The ``private_key_jwt`` client assertion (RFC 7523 section 2.2 and 3;
        OpenID Connect Core 1.0 section 9): ``iss`` = ``sub`` = the client_id, ``aud``
        ``audience`` (the token endpoint URL, or the ``assertion_audience``
        configured), a fresh ``jti``, valid for :data:`ASSERTION_LIFETIME` seconds,
        signed with the key sealed in the secret."""
        try:
            return sign_client_assertion(
                value.signing_key(),
                alg=value.alg,
                kid=value.kid,
                client_id=value.client_id,
                audience=audience,
                now=int(self._wall_clock()),
                lifetime=ASSERTION_LIFETIME,
                thumbprints=value.thumbprints(),
            )
        except (ValueError, JoseError):
            raise SecretStoreError(f"secret {info.label} cannot sign a client assertion") from None


def _read_body(response: httpx.Response) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > MAX_TOKEN_RESPONSE:
            raise OutboundError(f"token response exceeds {MAX_TOKEN_RESPONSE} bytes")
    return bytes(body)


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _oauth_error(body: bytes, secret: str) -> str:
    """``: <error> (<description>)`` from an RFC 6749 section 5.2 error body."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return ""
    text = f": {excerpt(_scrub(doc['error'], secret).encode())}"
    description = doc.get("error_description")
    if isinstance(description, str) and description:
        text += f" ({excerpt(_scrub(description, secret).encode())})"
    return text
