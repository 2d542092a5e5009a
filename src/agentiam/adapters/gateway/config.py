"""The gateway configuration file (YAML or JSON), validated at start: every problem is
a :class:`ValueError` naming the key's path, and nothing starts on a bad file.

The part every gateway shares (see docs/gateway.md#configuration)::

    name: tools-gw                     # audit source: gateway/<name>
    public_url: https://gw.example.com # this gateway's resource URL: the token audience
    listen: {host: 127.0.0.1, port: 8443}   # tls: {cert_file: /…, key_file: /…} to serve https;
                                       # max_connections: 10000 (beyond: 503)
    control_plane:
      url: https://iam.example.com
      key_env: AGENTIAM_GATEWAY_KEY    # env var holding a verifier-role admin key
      outage_seconds: 300              # decide from cache this long, then refuse all
      jwks_refresh_seconds: 60         # safety-net JWKS re-read (retirements are pushed);
                                       # at most a quarter of outage_seconds is used
    spool: {directory: /var/lib/agentiam/gw, max_bytes: 1073741824,
            rejected_max_bytes: 67108864}   # rejected.jsonl's own bound (spool.py)
    secrets: {store: /etc/agentiam/gw-secrets.json}   # key: AGENTIAM_GATEWAY_SECRETS_KEY
    rate_limits: {...}                 # core/enforcement/ratelimit.py
    replay_cache:                      # replicas: DPoP replay records and rate limits in Redis
      url_env: AGENTIAM_GATEWAY_REDIS_URL   # or url: redis://host:6379/0 (no password)
      key_prefix: "agentiam:dpop:"
      timeout_seconds: 0.5
    timeouts: {connect: 5, read: 30, total: 60}
    approvals: {wait_seconds: 0, retry_after_seconds: 2}   # docs/approvals.md
    dpop:                              # resource-server DPoP nonces (RFC 9449 section 9)
      require_nonce: false             # true: a proof without a current nonce gets 401
      nonce_key_env: AGENTIAM_GATEWAY_DPOP_NONCE_KEY   # or nonce_key_file: /etc/…; 32
                                       # bytes, base64url, shared by the replicas
      nonce_accept_keys: []            # rotation: up to 3 more keys accepted, never issued
                                       # with ({key_env: NAME} or {key_file: /path} each)
      nonce_lifetime_seconds: 300
    audit:                             # refusals naming nobody audited one by one, per
      anonymous_refusals:              # network peer and overall; the rest in summaries
        per_peer: {rate_per_second: 1, burst: 20}     # (core/enforcement/anonymous.py);
        overall: {rate_per_second: 20, burst: 200}    # null or "off": every refusal
        summary_seconds: 10                           # its own event
        max_peers: 10000

The kind's own section (``routes``/``upstreams`` for HTTP, ``servers`` for MCP) is
handed to that gateway's parser as :attr:`GatewayConfig.section`.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from agentiam.adapters.gateway.spool import DEFAULT_REJECTED_MAX_BYTES
from agentiam.adapters.tls import tls_context
from agentiam.core.credentials.nonces import MAX_ACCEPTED_KEYS, NonceIssuer
from agentiam.core.credentials.sealing import MasterKey
from agentiam.core.enforcement.anonymous import AnonymousRefusalLimits
from agentiam.core.enforcement.ratelimit import RateLimiter
from agentiam.core.plain_http import ONLY_ON_LOOPBACK, secure_or_loopback

__all__ = [
    "ApprovalSettings",
    "ControlPlaneConfig",
    "DpopSettings",
    "GatewayConfig",
    "ListenerTls",
    "NonceKeySource",
    "ReplayCacheConfig",
    "Timeouts",
    "UpstreamTls",
    "control_plane_seconds",
    "from_env",
    "https_url",
    "load_gateway_config",
    "point_name",
    "spool_bound",
    "upstream_tls",
]

# TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3 suites are all of that,
# and OpenSSL keeps its own list for them); the minimum version is TLS 1.2.
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_KEY_PREFIX = re.compile(r"^[A-Za-z0-9:._-]{1,64}$")
_COMMON = frozenset(
    {
        "name",
        "public_url",
        "listen",
        "control_plane",
        "spool",
        "secrets",
        "rate_limits",
        "replay_cache",
        "timeouts",
        "approvals",
        "audit",
        "dpop",
    }
)
_MAX_FILE = 1024 * 1024


def from_env(env: Mapping[str, str] | None, name: str, where: str, holds: str) -> str:
    """The stripped value of the variable ``name`` (in ``env``, else the process's
    environment); ValueError naming the setting ``where`` (a config key, a parameter,
    an option) when it is unset or empty. Gateways, the guard and their commands read
    their keys with it."""
    value = (os.environ if env is None else env).get(name, "").strip()
    if not value:
        raise ValueError(f"{where}: the environment variable {name} is not set (it holds {holds})")
    return value


@dataclass(frozen=True, slots=True)
class ControlPlaneConfig:
    url: str
    key_env: str
    outage_seconds: float = 300.0
    # the JWKS re-read no retirement asked for (adapters/gateway/link.py)
    jwks_refresh_seconds: float = 60.0

    def admin_key(self, env: Mapping[str, str] | None = None) -> str:
        return from_env(
            env, self.key_env, "control_plane.key_env", "the gateway's verifier-role admin key"
        )


@dataclass(frozen=True, slots=True)
class ReplayCacheConfig:
    """The Redis the replicas share for their DPoP replay records and rate-limit
    buckets (``adapters/gateway/shared_redis.py``): a URL, given in the file (without a
    password) or in the environment variable ``url_env``."""

    url: str | None
    url_env: str | None
    key_prefix: str = "agentiam:dpop:"
    timeout_seconds: float = 0.5

    def redis_url(self, env: Mapping[str, str] | None = None) -> str:
        if self.url is not None:
            return self.url
        assert self.url_env is not None
        value = from_env(
            env, self.url_env, "replay_cache.url_env", "the Redis URL of the shared replay cache"
        )
        return _redis_url(value, "replay_cache.url_env", allow_password=True)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0
    total: float = 60.0


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    """Human approval at the gateway: ``wait_seconds`` is how long a call that needs
    approval is held waiting for the human before the pending answer (0: answer at
    once); ``retry_after_seconds`` the ``Retry-After`` of that answer."""

    wait_seconds: float = 0.0
    retry_after_seconds: int = 2


# HKDF info of the gateways' nonce key (RFC 5869): the key the operator gives is never
# the HMAC key itself, so a key also used elsewhere (by mistake) yields other nonces.
_NONCE_KEY_PURPOSE = "gateway-dpop-nonce"
_KEY_HINT = "32 bytes as unpadded base64url: create one with 'agentiam keys generate-master-key'"


@dataclass(frozen=True, slots=True)
class NonceKeySource:
    """Where one key of ``dpop.nonce_accept_keys`` is read: the environment variable
    ``env`` or the file ``file`` (exactly one)."""

    env: str | None = None
    file: Path | None = None


@dataclass(frozen=True, slots=True)
class DpopSettings:
    """Resource-server DPoP nonces (RFC 9449 section 9): with ``require_nonce``, a
    proof must carry a nonce this gateway (or a replica holding the same key) issued
    less than ``nonce_lifetime_seconds`` ago. The key comes from the environment
    variable ``nonce_key_env`` or the file ``nonce_key_file`` (exactly one), read at
    start; neither is read while ``require_nonce`` is off.

    ``nonce_accept_keys``: up to :data:`~agentiam.core.credentials.nonces.
    MAX_ACCEPTED_KEYS` more keys whose nonces are accepted, never issued with: the
    overlap of a rolling key rotation (every replica accepts the new key; then each
    issues with it and accepts the old one; then the old one is dropped)."""

    require_nonce: bool = False
    nonce_key_env: str | None = None
    nonce_key_file: Path | None = None
    nonce_lifetime_seconds: int = 300
    nonce_accept_keys: tuple[NonceKeySource, ...] = ()

    def nonce_issuer(self, env: Mapping[str, str] | None = None) -> NonceIssuer | None:
        """The issuer of this gateway's nonces, None when nonces are off. Its HMAC keys
        are derived from the configured keys (HKDF-SHA256, RFC 5869), so every replica
        given the same key issues and accepts the same nonces. ValueError naming the
        setting when a key is missing or malformed, or when an accepted key is the
        issuing key or another accepted one (never echoing a key)."""
        if not self.require_nonce:
            return None
        if self.nonce_key_env is not None:
            issuing_where = "dpop.nonce_key_env"
        else:
            issuing_where = "dpop.nonce_key_file"
        issuing = _nonce_key(env, self.nonce_key_env, self.nonce_key_file, issuing_where)
        accepted: list[bytes] = []
        for n, source in enumerate(self.nonce_accept_keys):
            where = f"dpop.nonce_accept_keys[{n}]." + ("key_env" if source.env else "key_file")
            key = _nonce_key(env, source.env, source.file, where)
            if key == issuing:
                raise ValueError(
                    f"{where}: the same key as {issuing_where}; an accepted key is another "
                    "one (the previous or the next key of a rotation)"
                )
            if key in accepted:
                raise ValueError(
                    f"{where}: the same key as dpop.nonce_accept_keys[{accepted.index(key)}]"
                )
            accepted.append(key)
        return NonceIssuer(issuing, lifetime=self.nonce_lifetime_seconds, accept=accepted)


def _nonce_key(
    env: Mapping[str, str] | None, var: str | None, file: Path | None, where: str
) -> bytes:
    """The HMAC key of the nonce key in the variable ``var`` or the file ``file``
    (exactly one given), derived with HKDF-SHA256 (RFC 5869); ValueError naming
    ``where`` when it is unset, unreadable or malformed (never echoing it)."""
    if var is not None:
        text = from_env(env, var, where, "the gateway's DPoP nonce key")
    else:
        assert file is not None
        try:
            text = file.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{where}: cannot read {file} ({type(exc).__name__})") from None
    try:
        key = MasterKey.from_text(text)
    except ValueError:
        raise ValueError(f"{where}: not a valid key ({_KEY_HINT})") from None
    return key.derive(_NONCE_KEY_PURPOSE)


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """The certificate chain and private key (PEM, unencrypted) the listener serves."""

    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context (TLS 1.2 or later, forward-secret AEAD suites);
        ValueError naming ``listen.tls`` when the files do not load or do not match."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(TLS_CIPHERS)
        try:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise ValueError(f"listen.tls: cannot load cert_file and key_file ({reason})") from None
        return context

    def uvicorn_options(self) -> dict[str, Any]:
        """The same settings as uvicorn's ``Config`` keywords."""
        return {
            "ssl_certfile": str(self.cert_file),
            "ssl_keyfile": str(self.key_file),
            "ssl_version": ssl.PROTOCOL_TLS_SERVER,
            "ssl_ciphers": TLS_CIPHERS,
        }


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """How a gateway connects to one https upstream: ``ca_file``, the PEM CAs its
    certificate must chain to (None: the system's CAs), and ``cert_file`` with
    ``key_file``, the client certificate for an upstream that requires one (mutual
    TLS, RFC 8446 section 4.4.2; the unencrypted key in ``cert_file`` when
    ``key_file`` is None). The upstream's chain and name are verified either way."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def client_context(self) -> ssl.SSLContext:
        """A fresh client context (TLS 1.2 or later); ValueError naming the file key
        when a file does not load, never what it holds."""
        return tls_context(self.ca_file, self.cert_file, self.key_file)


def upstream_tls(raw: Any, where: str, url: str) -> UpstreamTls | None:
    """``tls`` of an upstream whose URL is ``url``: None when absent. Refused, naming
    ``where``, on unknown keys, a key_file without cert_file, an http URL (nothing to
    apply it to), or files that do not load (checked now, not at the first call)."""
    if raw is None:
        return None
    body = _mapping(raw, where)
    _keys(body, where, frozenset({"ca_file", "cert_file", "key_file"}))
    if urlsplit(url).scheme != "https":
        raise ValueError(f"{where}: applies to an https URL only")
    if not body:
        raise ValueError(f"{where}: give ca_file, cert_file (and key_file), or leave tls out")
    files = {
        key: None if body.get(key) is None else _path(body[key], f"{where}.{key}")
        for key in ("ca_file", "cert_file", "key_file")
    }
    if files["key_file"] is not None and files["cert_file"] is None:
        raise ValueError(f"{where}.key_file: needs cert_file")
    tls = UpstreamTls(files["ca_file"], files["cert_file"], files["key_file"])
    try:
        tls.client_context()
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return tls


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    kind: str  # "http" or "mcp"
    name: str
    public_url: str
    host: str
    port: int
    control_plane: ControlPlaneConfig
    spool_directory: Path
    spool_max_bytes: int
    secrets_store: Path | None
    rate_limits: RateLimiter | None
    timeouts: Timeouts
    section: Mapping[str, Any] = field(default_factory=dict)
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    tls: ListenerTls | None = None  # None: plain HTTP (behind a TLS terminator)
    replay_cache: ReplayCacheConfig | None = None  # None: this process's own cache only
    # connections (and requests in progress) beyond which new ones get 503; None: no cap
    max_connections: int | None = None
    # the bound of the spool's rejected.jsonl (adapters/gateway/spool.py): once reached,
    # every call is refused until an operator empties it
    spool_rejected_max_bytes: int = DEFAULT_REJECTED_MAX_BYTES
    # the budget of refusals naming nobody audited one by one; None: every one is
    anonymous_refusals: AnonymousRefusalLimits | None = field(
        default_factory=AnonymousRefusalLimits
    )
    # resource-server DPoP nonces (RFC 9449 section 9); off by default
    dpop: DpopSettings = field(default_factory=DpopSettings)

    def server_options(self) -> dict[str, Any]:
        """uvicorn ``Config`` keywords for the listener: TLS when configured, and
        ``limit_concurrency`` (``listen.max_connections``)."""
        options = {} if self.tls is None else self.tls.uvicorn_options()
        if self.max_connections is not None:
            options["limit_concurrency"] = self.max_connections
        return options

    @property
    def resource_metadata_url(self) -> str:
        """RFC 9728 section 3.1: the well-known URL of this resource's metadata."""
        parts = urlsplit(self.public_url)
        path = parts.path.rstrip("/")
        return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{path}"


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    return value


def _keys(value: Mapping[str, Any], where: str, allowed: frozenset[str]) -> None:
    unknown = sorted(set(map(str, value)) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(unknown)}")


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{where}: a number between {low:g} and {high:g}")
    return float(value)


def https_url(value: Any, where: str, *, allow_http_loopback: bool = True) -> str:
    """An https URL (plain http only on the loopback host) without user info, query or
    fragment, as the gateway takes its control plane's: a verifier key is sent to it."""
    if not isinstance(value, str) or len(value) > 2048:
        raise ValueError(f"{where}: a URL")
    parts = urlsplit(value)
    if not (secure_or_loopback(parts) and (parts.scheme == "https" or allow_http_loopback)):
        raise ValueError(f"{where}: must be https ({ONLY_ON_LOOPBACK})")
    if not parts.hostname or parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"{where}: a URL without user info, query or fragment")
    return value.rstrip("/")


def _redis_url(value: Any, where: str, *, allow_password: bool) -> str:
    """A ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL. A password belongs in
    the environment, not in the file. The value is never echoed: it may be secret."""
    if not isinstance(value, str) or not 0 < len(value) <= 2048:
        raise ValueError(f"{where}: a Redis URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{where}: a Redis URL") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{where}: a redis://, rediss:// or unix:// URL")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"{where}: a Redis URL with a host")
    if parts.password and not allow_password:
        raise ValueError(f"{where}: no password in the file; give the URL in url_env instead")
    return value


def _replay_cache(value: Any) -> ReplayCacheConfig:
    raw = _mapping(value, "replay_cache")
    _keys(raw, "replay_cache", frozenset({"url", "url_env", "key_prefix", "timeout_seconds"}))
    if ("url" in raw) == ("url_env" in raw):
        raise ValueError("replay_cache: give exactly one of url and url_env")
    url_env = raw.get("url_env")
    if url_env is not None and (not isinstance(url_env, str) or not _ENV.match(url_env)):
        raise ValueError("replay_cache.url_env: an environment variable name")
    url = raw.get("url")
    if url is not None:
        url = _redis_url(url, "replay_cache.url", allow_password=False)
    prefix = raw.get("key_prefix", "agentiam:dpop:")
    if not isinstance(prefix, str) or not _KEY_PREFIX.match(prefix):
        raise ValueError("replay_cache.key_prefix: 1-64 characters of A-Z, a-z, 0-9, ':._-'")
    return ReplayCacheConfig(
        url=url,
        url_env=url_env,
        key_prefix=prefix,
        timeout_seconds=_number(
            raw.get("timeout_seconds", 0.5), "replay_cache.timeout_seconds", 0.01, 10
        ),
    )


def _anonymous_refusals(value: Any) -> AnonymousRefusalLimits | None:
    """``audit.anonymous_refusals``: the defaults when ``audit`` or the key is left
    out; None (every refusal its own event) for null or ``"off"``."""
    audit = _mapping(value if value is not None else {}, "audit")
    _keys(audit, "audit", frozenset({"anonymous_refusals"}))
    if "anonymous_refusals" not in audit:
        return AnonymousRefusalLimits()
    try:
        return AnonymousRefusalLimits.from_config(audit["anonymous_refusals"])
    except ValueError as exc:
        raise ValueError(f"audit.anonymous_refusals: {exc}") from None


def _dpop(value: Any) -> DpopSettings:
    """``dpop``: off (today's behaviour) when left out."""
    raw = _mapping(value if value is not None else {}, "dpop")
    _keys(
        raw,
        "dpop",
        frozenset(
            {
                "require_nonce",
                "nonce_key_env",
                "nonce_key_file",
                "nonce_accept_keys",
                "nonce_lifetime_seconds",
            }
        ),
    )
    require = raw.get("require_nonce", False)
    if not isinstance(require, bool):
        raise ValueError("dpop.require_nonce: true or false")
    key_env = raw.get("nonce_key_env")
    if key_env is not None and (not isinstance(key_env, str) or not _ENV.match(key_env)):
        raise ValueError("dpop.nonce_key_env: an environment variable name")
    key_file = raw.get("nonce_key_file")
    if key_file is not None:
        key_file = _path(key_file, "dpop.nonce_key_file")
    if key_env is not None and key_file is not None:
        raise ValueError("dpop: give one of nonce_key_env and nonce_key_file, not both")
    if require and key_env is None and key_file is None:
        raise ValueError(
            "dpop.require_nonce: needs the key the replicas share, in nonce_key_env or "
            "nonce_key_file"
        )
    lifetime = raw.get("nonce_lifetime_seconds", 300)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or not 10 <= lifetime <= 3600:
        raise ValueError("dpop.nonce_lifetime_seconds: an integer between 10 and 3600")
    accept = _nonce_accept_keys(raw.get("nonce_accept_keys", []), key_env, key_file)
    return DpopSettings(require, key_env, key_file, lifetime, accept)


def _nonce_accept_keys(
    value: Any, key_env: str | None, key_file: Path | None
) -> tuple[NonceKeySource, ...]:
    """``dpop.nonce_accept_keys``: at most :data:`MAX_ACCEPTED_KEYS` entries, each
    ``{key_env: NAME}`` or ``{key_file: /path}``, none naming the issuing key's source
    or another entry's (the same value under two names is caught when the keys are
    read, :meth:`DpopSettings.nonce_issuer`)."""
    where = "dpop.nonce_accept_keys"
    if not isinstance(value, list) or len(value) > MAX_ACCEPTED_KEYS:
        raise ValueError(
            f"{where}: a list of at most {MAX_ACCEPTED_KEYS} keys, each {{key_env: NAME}} "
            "or {key_file: /path}"
        )
    if value and key_env is None and key_file is None:
        raise ValueError(f"{where}: needs the issuing key, in nonce_key_env or nonce_key_file")
    sources: list[NonceKeySource] = []
    for n, entry in enumerate(value):
        at = f"{where}[{n}]"
        raw = _mapping(entry, at)
        _keys(raw, at, frozenset({"key_env", "key_file"}))
        if ("key_env" in raw) == ("key_file" in raw):
            raise ValueError(f"{at}: give exactly one of key_env and key_file")
        if "key_env" in raw:
            env = raw["key_env"]
            if not isinstance(env, str) or not _ENV.match(env):
                raise ValueError(f"{at}.key_env: an environment variable name")
            source = NonceKeySource(env=env)
            if env == key_env:
                raise ValueError(f"{at}.key_env: the issuing key's variable (nonce_key_env)")
        else:
            source = NonceKeySource(file=_path(raw["key_file"], f"{at}.key_file"))
            if source.file == key_file:
                raise ValueError(f"{at}.key_file: the issuing key's file (nonce_key_file)")
        if source in sources:
            raise ValueError(f"{at}: the same source as {where}[{sources.index(source)}]")
        sources.append(source)
    return tuple(sources)


def control_plane_seconds(value: Any, where: str) -> float:
    """A number of seconds from 1 to 86400 (a day): an enforcement point's outage bound
    and JWKS safety net (the gateway's ``control_plane.outage_seconds`` and
    ``control_plane.jwks_refresh_seconds``, the guard's ``outage_seconds`` and
    ``jwks_refresh_seconds``). ValueError naming ``where`` otherwise. Of the JWKS
    interval, at most a quarter of the outage bound is used:
    :class:`~agentiam.adapters.gateway.link.ControlPlaneLink` caps it."""
    return _number(value, where, 1, 86_400)


def spool_bound(value: Any, where: str) -> int:
    """An integer number of bytes from 1 MiB to 1 TiB: a spool's bound (the gateway's
    ``spool.max_bytes`` and ``spool.rejected_max_bytes``, the guard's
    ``spool_max_bytes`` and ``spool_rejected_max_bytes``). ValueError naming ``where``
    otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: an integer")
    if not 1 << 20 <= value <= 1 << 40:
        raise ValueError(f"{where}: between 1 MiB and 1 TiB")
    return value


def point_name(value: Any, where: str) -> str:
    """An enforcement point's name (its audit source is ``gateway/<name>`` or
    ``guard/<name>``): 1-64 characters of a-z, 0-9, '.', '_' or '-'."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{where}: 1-64 characters of a-z, 0-9, '.', '_' or '-'")
    return value


def _path(value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise ValueError(f"{where}: an absolute path")
    return Path(value)


def load_gateway_config(data: Any, kind: str, *, section_keys: frozenset[str]) -> GatewayConfig:
    """Validate the common part; ``section_keys`` are the top-level keys the kind's
    own parser takes (anything else is refused here)."""
    top = _mapping(data, "config")
    _keys(top, "config", _COMMON | section_keys)
    name = point_name(top.get("name"), "name")
    public_url = https_url(top.get("public_url"), "public_url")

    listen = _mapping(top.get("listen") or {}, "listen")
    _keys(listen, "listen", frozenset({"host", "port", "tls", "max_connections"}))
    tls = None
    if listen.get("tls") is not None:
        raw_tls = _mapping(listen["tls"], "listen.tls")
        _keys(raw_tls, "listen.tls", frozenset({"cert_file", "key_file"}))
        tls = ListenerTls(
            _path(raw_tls.get("cert_file"), "listen.tls.cert_file"),
            _path(raw_tls.get("key_file"), "listen.tls.key_file"),
        )
        tls.server_context()  # refused now, naming the key, rather than at the first client
        if urlsplit(public_url).scheme != "https":
            raise ValueError("public_url: must be https when listen.tls is set")
    host = listen.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host or len(host) > 253:
        raise ValueError("listen.host: a host name or address")
    port = listen.get("port", 8443)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError("listen.port: an integer between 1 and 65535")
    max_connections = listen.get("max_connections")
    if max_connections is not None and (
        isinstance(max_connections, bool)
        or not isinstance(max_connections, int)
        or not 1 <= max_connections <= 1_000_000
    ):
        raise ValueError("listen.max_connections: an integer between 1 and 1000000")

    cp = _mapping(top.get("control_plane"), "control_plane")
    _keys(
        cp,
        "control_plane",
        frozenset({"url", "key_env", "outage_seconds", "jwks_refresh_seconds"}),
    )
    key_env = cp.get("key_env", "AGENTIAM_GATEWAY_KEY")
    if not isinstance(key_env, str) or not _ENV.match(key_env):
        raise ValueError("control_plane.key_env: an environment variable name")
    control_plane = ControlPlaneConfig(
        url=https_url(cp.get("url"), "control_plane.url"),
        key_env=key_env,
        outage_seconds=control_plane_seconds(
            cp.get("outage_seconds", 300), "control_plane.outage_seconds"
        ),
        jwks_refresh_seconds=control_plane_seconds(
            cp.get("jwks_refresh_seconds", 60), "control_plane.jwks_refresh_seconds"
        ),
    )

    spool = _mapping(top.get("spool"), "spool")
    _keys(spool, "spool", frozenset({"directory", "max_bytes", "rejected_max_bytes"}))
    max_bytes = spool_bound(spool.get("max_bytes", 1 << 30), "spool.max_bytes")
    rejected_max_bytes = spool_bound(
        spool.get("rejected_max_bytes", DEFAULT_REJECTED_MAX_BYTES), "spool.rejected_max_bytes"
    )

    secrets = _mapping(top.get("secrets") or {}, "secrets")
    _keys(secrets, "secrets", frozenset({"store"}))
    store = _path(secrets["store"], "secrets.store") if "store" in secrets else None

    limits = None
    if top.get("rate_limits") is not None:
        try:
            limits = RateLimiter.from_config(_mapping(top["rate_limits"], "rate_limits"))
        except ValueError as exc:
            raise ValueError(f"rate_limits: {exc}") from None

    replay_cache = None
    if top.get("replay_cache") is not None:
        replay_cache = _replay_cache(top["replay_cache"])

    t = _mapping(top.get("timeouts") or {}, "timeouts")
    _keys(t, "timeouts", frozenset({"connect", "read", "total"}))
    timeouts = Timeouts(
        connect=_number(t.get("connect", 5), "timeouts.connect", 0.1, 60),
        read=_number(t.get("read", 30), "timeouts.read", 0.1, 600),
        total=_number(t.get("total", 60), "timeouts.total", 0.1, 3600),
    )
    a = _mapping(top.get("approvals") or {}, "approvals")
    _keys(a, "approvals", frozenset({"wait_seconds", "retry_after_seconds"}))
    retry_after = a.get("retry_after_seconds", 2)
    if (
        isinstance(retry_after, bool)
        or not isinstance(retry_after, int)
        or not 1 <= retry_after <= 60
    ):
        raise ValueError("approvals.retry_after_seconds: an integer between 1 and 60")
    approvals = ApprovalSettings(
        wait_seconds=_number(a.get("wait_seconds", 0), "approvals.wait_seconds", 0, 60),
        retry_after_seconds=retry_after,
    )
    return GatewayConfig(
        kind=kind,
        approvals=approvals,
        name=name,
        public_url=public_url,
        host=host,
        port=port,
        control_plane=control_plane,
        spool_directory=_path(spool.get("directory"), "spool.directory"),
        spool_max_bytes=max_bytes,
        spool_rejected_max_bytes=rejected_max_bytes,
        secrets_store=store,
        rate_limits=limits,
        timeouts=timeouts,
        section={k: v for k, v in top.items() if k in section_keys},
        tls=tls,
        max_connections=max_connections,
        replay_cache=replay_cache,
        anonymous_refusals=_anonymous_refusals(top.get("audit")),
        dpop=_dpop(top.get("dpop")),
    )


def read_config_file(path: str | Path) -> Any:
    """The file's YAML or JSON content; ValueError when it cannot be read."""
    file = Path(path)
    try:
        if file.stat().st_size > _MAX_FILE:
            raise ValueError(f"{file}: larger than 1 MiB")
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {file}: {exc}") from None
