"""Gateway configuration is validated at start: a good file gives typed settings, and
every kind of mistake is refused with a ValueError that names the key's path."""

from __future__ import annotations

import copy
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from tests.support.tls import server_pki

from agentiam.adapters.gateway.config import (
    DpopSettings,
    NonceKeySource,
    load_gateway_config,
    read_config_file,
)
from agentiam.adapters.gateway.http_proxy import load_config
from agentiam.core.credentials.jose import b64url_decode
from agentiam.core.credentials.nonces import MAX_ACCEPTED_KEYS, NonceIssuer
from agentiam.core.credentials.sealing import MasterKey
from agentiam.core.policy.model import EntityRef

GOOD: dict[str, Any] = {
    "name": "billing-gw",
    "public_url": "https://gw.example.com",
    "listen": {"host": "::", "port": 8443},
    "control_plane": {
        "url": "https://iam.example.com",
        "key_env": "GW_KEY",
        "outage_seconds": 60,
        "jwks_refresh_seconds": 120,
    },
    "spool": {"directory": "/var/lib/gw", "max_bytes": 2 << 20},
    "secrets": {"store": "/etc/gw/secrets.json"},
    "rate_limits": {"per_agent": {"rate_per_second": 5, "burst": 10}},
    "timeouts": {"connect": 2, "read": 10, "total": 30},
    "upstreams": {
        "billing": {
            "url": "https://billing.internal/api/",
            "credential": {"secret": "billing-key", "header": "X-Api-Key"},
        },
        "open": {"url": "http://10.0.0.7:8080"},
    },
    "routes": [
        {
            "name": "invoices.read",
            "match": {"method": "get", "path": "/v1/invoices/{id}"},
            "upstream": "billing",
            "action": "GET",
            "resource": {"type": "Endpoint", "id": "invoice-{id}"},
        },
        {
            "match": {"method": "POST", "path": "/v1/invoices"},
            "upstream": "open",
            "action": "write",
            "resource": {"type": "Api", "id": "billing"},
        },
    ],
}


CREDENTIAL = "upstreams.billing.credential"


def _with(path: str, value: Any) -> dict[str, Any]:
    """GOOD with the member at dotted ``path`` replaced (or removed when value is ...)."""
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def test_a_good_configuration_loads() -> None:
    config = load_config(GOOD)
    assert config.max_request_bytes == 10 * 1024 * 1024  # the default
    assert load_config(_with("max_request_bytes", 4096)).max_request_bytes == 4096
    gateway = config.gateway
    assert (gateway.kind, gateway.name, gateway.host, gateway.port) == (
        "http",
        "billing-gw",
        "::",
        8443,
    )
    assert gateway.control_plane.outage_seconds == 60
    assert gateway.control_plane.jwks_refresh_seconds == 120
    assert gateway.resource_metadata_url == (
        "https://gw.example.com/.well-known/oauth-protected-resource"
    )
    assert gateway.rate_limits is not None
    assert gateway.timeouts.read == 10
    billing = config.upstreams["billing"]
    assert billing.url == "https://billing.internal/api"
    assert billing.credential is not None
    assert billing.credential.secret == "billing-key"
    first, second = config.routes
    assert (first.name, first.method, first.params) == ("invoices.read", "GET", ("id",))
    assert first.resource({"id": "7"}).id == "invoice-7"
    assert second.name == "POST /v1/invoices"  # the default name
    assert config.prefix == ""
    # an Endpoint route is decided in its upstream's Api (default: the upstream's name);
    # a route whose resource is an Api is that Api itself, and has no parent
    assert (billing.api, config.upstreams["open"].api) == ("billing", "open")
    assert first.parents == (EntityRef("Api", "billing"),)
    assert second.parents == ()


def test_an_upstream_names_the_api_its_endpoints_are_in() -> None:
    config = load_config(_with("upstreams.billing.api", "billing-api.v2"))
    assert config.upstreams["billing"].api == "billing-api.v2"
    assert config.routes[0].parents == (EntityRef("Api", "billing-api.v2"),)
    for rtype in ("DataSet", "Tool", "Invoice"):  # no type but Endpoint may be in an Api
        data = _with("routes.0.resource.type", rtype)
        assert load_config(data).routes[0].parents == ()


def test_defaults() -> None:
    data = {k: v for k, v in GOOD.items() if k not in ("listen", "timeouts", "rate_limits")}
    data["control_plane"] = {"url": "http://127.0.0.1:8080"}
    gateway = load_config(data).gateway
    assert (gateway.host, gateway.port) == ("127.0.0.1", 8443)
    assert gateway.control_plane.outage_seconds == 300  # five minutes
    assert gateway.control_plane.jwks_refresh_seconds == 60  # retirements are pushed
    assert gateway.control_plane.key_env == "AGENTIAM_GATEWAY_KEY"
    assert gateway.rate_limits is None
    assert (gateway.timeouts.connect, gateway.timeouts.read, gateway.timeouts.total) == (5, 30, 60)
    assert gateway.max_connections is None
    assert "limit_concurrency" not in gateway.server_options()


def test_the_listener_caps_connections_when_asked() -> None:
    """listen.max_connections is uvicorn's limit_concurrency: beyond it, 503."""
    from agentiam.adapters.gateway.http_proxy import uvicorn_options

    config = load_config(_with("listen.max_connections", 5000))
    assert config.gateway.max_connections == 5000
    assert uvicorn_options(config)["limit_concurrency"] == 5000


def test_public_url_with_a_path_is_the_prefix_and_names_the_metadata() -> None:
    config = load_config(_with("public_url", "https://gw.example.com/billing/"))
    assert config.prefix == "/billing"
    assert config.gateway.resource_metadata_url == (
        "https://gw.example.com/.well-known/oauth-protected-resource/billing"
    )


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("extra", 1, "config: unknown keys extra"),
        ("name", "Billing GW", "name:"),
        ("public_url", "http://gw.example.com", "public_url: must be https"),
        ("public_url", "https://u:p@gw.example.com", "public_url: a URL without user info"),
        ("public_url", "https://gw.example.com/?q=1", "public_url: a URL without user info"),
        ("listen.port", 0, "listen.port"),
        ("listen.port", True, "listen.port"),
        ("listen.tls", {}, "listen.tls.cert_file: an absolute path"),
        ("listen.cert", "x", "listen: unknown keys cert"),
        ("control_plane", ..., "control_plane: expected a mapping"),
        ("control_plane.url", "ftp://iam", "control_plane.url"),
        ("control_plane.key_env", "lower-case", "control_plane.key_env"),
        ("control_plane.outage_seconds", 0, "control_plane.outage_seconds"),
        ("control_plane.outage_seconds", "5m", "control_plane.outage_seconds"),
        ("control_plane.jwks_refresh_seconds", 0, "control_plane.jwks_refresh_seconds"),
        ("control_plane.jwks_refresh_seconds", "1m", "control_plane.jwks_refresh_seconds"),
        ("control_plane.wait", 1, "control_plane: unknown keys wait"),
        ("spool.directory", "relative/dir", "spool.directory: an absolute path"),
        ("spool.max_bytes", 10, "spool.max_bytes"),
        ("spool.segment", 1, "spool: unknown keys segment"),
        ("secrets.store", "secrets.json", "secrets.store: an absolute path"),
        ("rate_limits.per_agent", {"rate": 1}, "rate_limits:"),
        ("timeouts.read", 0, "timeouts.read"),
        ("timeouts.idle", 1, "timeouts: unknown keys idle"),
        ("upstreams", {}, "upstreams: name at least one upstream"),
        ("upstreams.billing.url", "file:///etc/passwd", "upstreams.billing.url"),
        ("upstreams.billing.url", "https://h/x?q=1", "upstreams.billing.url"),
        ("upstreams.billing.headers", {}, "upstreams.billing: unknown keys headers"),
        ("upstreams.billing.api", "", "upstreams.billing.api: an Api entity id"),
        ("upstreams.billing.api", 7, "upstreams.billing.api: an Api entity id"),
        ("upstreams.billing.api", "a" * 513, "upstreams.billing.api: an Api entity id"),
        ("upstreams.billing.api", "bill\ning", "upstreams.billing.api: an Api entity id"),
        ("upstreams.billing.credential", {"secret": "k", "hdr": "x"}, CREDENTIAL),
        ("upstreams.billing.credential", {"header": "X"}, CREDENTIAL),
        ("upstreams.billing.credential", {"secret": "k", "header": "X\nY"}, CREDENTIAL),
        ("secrets", ..., "secrets.store: an upstream injects a credential"),
        ("routes", [], "routes: a list of at least one route"),
        ("routes.0.match.method", "TRACE", "routes[0].match.method"),
        ("routes.0.match.path", "v1/x", "routes[0].match.path"),
        ("routes.0.match.path", "/v1/{id}/{id}", "routes[0].match.path: placeholder {id} appears"),
        ("routes.0.match.path", "/v1/../admin", "routes[0].match.path"),
        ("routes.0.match.path", "/v1//x", "routes[0].match.path"),
        ("routes.0.match.path", "/v1/a{id}", "routes[0].match.path"),
        ("routes.0.match.path", "/healthz", "routes[0].match.path: /healthz, /metrics"),
        ("routes.0.match.path", "/.well-known/x", "routes[0].match.path: /healthz, /metrics"),
        ("routes.0.match.query", "x", "routes[0].match: unknown keys query"),
        ("routes.0.upstream", "nowhere", "routes[0].upstream"),
        ("routes.0.action", "", "routes[0].action"),
        ("routes.0.action", 'GET"', "routes[0].action"),
        ("routes.0.resource.type", "Endpoint::x", "routes[0].resource.type"),
        ("routes.0.resource.id", "invoice-{number}", "routes[0].resource.id: {number} is not"),
        ("routes.0.resource.parent", "x", "routes[0].resource: unknown keys parent"),
        ("routes.1.name", "bad\nname", "routes[1].name"),
        ("routes.1.extra", 1, "routes[1]: unknown keys extra"),
        ("max_request_bytes", 0, "max_request_bytes"),
        ("max_request_bytes", True, "max_request_bytes"),
        ("max_request_bytes", "10M", "max_request_bytes"),
        ("max_request_bytes", 2**41, "max_request_bytes"),
        ("listen.max_connections", 0, "listen.max_connections"),
        ("listen.max_connections", True, "listen.max_connections"),
        ("listen.max_connections", "many", "listen.max_connections"),
    ],
)  # fmt: skip
def test_mistakes_are_refused_naming_the_key(path: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + _escape(message)):
        load_config(_with(path, value))


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_the_common_part_refuses_the_other_kinds_sections() -> None:
    with pytest.raises(ValueError, match="config: unknown keys routes, upstreams"):
        load_gateway_config(GOOD, "mcp", section_keys=frozenset({"servers"}))


def test_not_a_mapping() -> None:
    with pytest.raises(ValueError, match="config: expected a mapping"):
        load_config(None)
    with pytest.raises(ValueError, match="config: expected a mapping"):
        load_config(["name"])


def test_admin_key_comes_from_the_named_variable() -> None:
    control_plane = load_config(GOOD).gateway.control_plane
    assert control_plane.admin_key({"GW_KEY": " aiam_x "}) == "aiam_x"
    with pytest.raises(ValueError, match=r"control_plane\.key_env: .*GW_KEY is not set"):
        control_plane.admin_key({})


def test_reading_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "gw.yaml"
    yaml_file.write_text("name: gw\nroutes:\n  - {upstream: a}\n")
    assert read_config_file(yaml_file) == {"name": "gw", "routes": [{"upstream": "a"}]}
    json_file = tmp_path / "gw.json"
    json_file.write_text(json.dumps(GOOD))
    assert load_config(read_config_file(json_file)).gateway.name == "billing-gw"
    with pytest.raises(ValueError, match="cannot read"):
        read_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="cannot read"):
        read_config_file(bad)
    big = tmp_path / "big.yaml"
    big.write_text("#" * (1024 * 1024 + 1))
    with pytest.raises(ValueError, match="larger than 1 MiB"):
        read_config_file(big)


def test_the_listener_can_serve_tls(tmp_path: Path) -> None:
    pki = server_pki(tmp_path, "gw.example.com")
    tls = {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)}
    gateway = load_config(_with("listen.tls", tls)).gateway
    assert gateway.tls is not None
    options = gateway.server_options()
    assert options["ssl_certfile"] == str(pki.cert_file)
    assert options["ssl_keyfile"] == str(pki.key_file)
    context = gateway.tls.server_context()
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert load_config(GOOD).gateway.server_options() == {}  # plain HTTP by default


def test_tls_mistakes_are_refused_naming_the_key(tmp_path: Path) -> None:
    pki = server_pki(tmp_path, "gw.example.com")
    (tmp_path / "other").mkdir()
    other = server_pki(tmp_path / "other", "gw.example.com")  # a key of another certificate
    good = {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)}
    cases: list[tuple[Any, str]] = [
        ({**good, "key_file": str(tmp_path / "missing.key")}, "listen.tls: cannot load"),
        ({**good, "key_file": str(other.key_file)}, "listen.tls: cannot load"),
        ({**good, "cert_file": "server.crt"}, "listen.tls.cert_file: an absolute path"),
        ({"cert_file": str(pki.cert_file)}, "listen.tls.key_file: an absolute path"),
        ({**good, "ciphers": "ALL"}, "listen.tls: unknown keys ciphers"),
        ("on", "listen.tls: expected a mapping"),
    ]
    for value, message in cases:
        with pytest.raises(ValueError, match="^" + _escape(message)):
            load_config(_with("listen.tls", value))
    plain = _with("listen.tls", good)
    plain["public_url"] = "http://127.0.0.1:8443"
    with pytest.raises(ValueError, match="^" + _escape("public_url: must be https when")):
        load_config(plain)


def test_replay_cache_is_off_by_default_and_takes_a_redis_url() -> None:
    assert load_config(GOOD).gateway.replay_cache is None
    cache = load_config(_with("replay_cache", {"url": "redis://redis.internal:6379/2"}))
    config = cache.gateway.replay_cache
    assert config is not None
    assert (config.key_prefix, config.timeout_seconds) == ("agentiam:dpop:", 0.5)
    assert config.redis_url() == "redis://redis.internal:6379/2"
    from_env = load_config(
        _with("replay_cache", {"url_env": "GW_REDIS", "key_prefix": "gw1:", "timeout_seconds": 2})
    ).gateway.replay_cache
    assert from_env is not None
    # a password may come from the environment, never from the file
    secret_url = "rediss://:s3cret@redis.internal:6380/0"
    assert from_env.redis_url({"GW_REDIS": f" {secret_url} "}) == secret_url
    with pytest.raises(ValueError, match=r"replay_cache\.url_env: .*GW_REDIS is not set"):
        from_env.redis_url({})
    with pytest.raises(ValueError, match=r"replay_cache\.url_env: a redis://") as refused:
        from_env.redis_url({"GW_REDIS": "http://:s3cret@redis.internal"})
    assert "s3cret" not in str(refused.value)  # the value is never echoed


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("redis://x", "replay_cache: expected a mapping"),
        ({}, "replay_cache: give exactly one of url and url_env"),
        ({"url": "redis://h", "url_env": "X"}, "replay_cache: give exactly one"),
        ({"url": "http://h:6379"}, "replay_cache.url: a redis://, rediss:// or unix:// URL"),
        ({"url": "redis://:pw@h:6379"}, "replay_cache.url: no password in the file"),
        ({"url": "redis://h:99999"}, "replay_cache.url: a Redis URL"),
        ({"url": "redis://"}, "replay_cache.url: a Redis URL with a host"),
        ({"url_env": "lower"}, "replay_cache.url_env: an environment variable name"),
        ({"url": "redis://h", "key_prefix": "a b"}, "replay_cache.key_prefix"),
        ({"url": "redis://h", "key_prefix": ""}, "replay_cache.key_prefix"),
        ({"url": "redis://h", "timeout_seconds": 0}, "replay_cache.timeout_seconds"),
        ({"url": "redis://h", "db": 1}, "replay_cache: unknown keys db"),
    ],
)  # fmt: skip
def test_replay_cache_mistakes_are_refused_naming_the_key(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + _escape(message)) as refused:
        load_config(_with("replay_cache", value))
    assert "pw@" not in str(refused.value)


# -- dpop: resource-server nonces (RFC 9449 section 9) --------------------------------------

NONCE_KEY = MasterKey.generate_text()
NOW = 1_800_000_000


def test_dpop_nonces_are_off_by_default_and_read_no_key() -> None:
    dpop = load_config(GOOD).gateway.dpop
    assert dpop == DpopSettings()
    assert dpop.nonce_issuer({}) is None
    # configured but off: the key is not read (nor needed)
    off = load_config(_with("dpop", {"require_nonce": False, "nonce_key_env": "GW_NONCE"}))
    assert off.gateway.dpop.nonce_issuer({}) is None


def test_dpop_nonces_on_take_a_key_the_replicas_share(tmp_path: Path) -> None:
    on = {"require_nonce": True, "nonce_key_env": "GW_NONCE", "nonce_lifetime_seconds": 120}
    dpop = load_config(_with("dpop", on)).gateway.dpop
    assert (dpop.require_nonce, dpop.nonce_key_env, dpop.nonce_lifetime_seconds) == (
        True,
        "GW_NONCE",
        120,
    )
    issuer = dpop.nonce_issuer({"GW_NONCE": f" {NONCE_KEY}\n"})
    assert issuer is not None
    assert issuer.lifetime == 120
    # a replica given the same key in a file accepts this one's nonces, and the reverse
    (tmp_path / "nonce.key").write_text(NONCE_KEY + "\n")
    on_file = {"require_nonce": True, "nonce_key_file": str(tmp_path / "nonce.key")}
    replica = load_config(_with("dpop", on_file)).gateway.dpop.nonce_issuer({})
    assert replica is not None
    assert replica.is_valid(issuer.issue(NOW), NOW)
    assert issuer.is_valid(replica.issue(NOW), NOW)
    # the HMAC key is derived (HKDF), not the key given: the control plane's token
    # endpoint (its master key's "dpop-nonce" subkey) and a raw use of the key differ
    master = MasterKey.from_text(NONCE_KEY)
    for other in (NonceIssuer(master.derive("dpop-nonce")), NonceIssuer(b64url_decode(NONCE_KEY))):
        assert not issuer.is_valid(other.issue(NOW), NOW)
        assert not other.is_valid(issuer.issue(NOW), NOW)
    # another key: refused
    elsewhere = dpop.nonce_issuer({"GW_NONCE": MasterKey.generate_text()})
    assert elsewhere is not None
    assert not issuer.is_valid(elsewhere.issue(NOW), NOW)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("on", "dpop: expected a mapping"),
        ({"require_nonce": "yes"}, "dpop.require_nonce: true or false"),
        ({"require_nonce": True}, "dpop.require_nonce: needs the key the replicas share"),
        ({"require_nonce": True, "nonce_key_env": "lower"},
         "dpop.nonce_key_env: an environment variable name"),
        ({"require_nonce": True, "nonce_key_file": "relative/key"},
         "dpop.nonce_key_file: an absolute path"),
        ({"require_nonce": True, "nonce_key_env": "K", "nonce_key_file": "/k"},
         "dpop: give one of nonce_key_env and nonce_key_file, not both"),
        ({"require_nonce": True, "nonce_key_env": "K", "nonce_lifetime_seconds": 5},
         "dpop.nonce_lifetime_seconds: an integer between 10 and 3600"),
        ({"require_nonce": True, "nonce_key_env": "K", "nonce_lifetime_seconds": 30.5},
         "dpop.nonce_lifetime_seconds: an integer"),
        ({"require_nonce": True, "nonce_key_env": "K", "nonce_lifetime_seconds": True},
         "dpop.nonce_lifetime_seconds: an integer"),
        ({"require_nonce": True, "nonce_key_env": "K", "nonce_key": "x"},
         "dpop: unknown keys nonce_key"),
    ],
)  # fmt: skip
def test_dpop_mistakes_are_refused_naming_the_key(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + _escape(message)):
        load_config(_with("dpop", value))


def test_a_missing_or_malformed_nonce_key_stops_the_start_naming_the_setting(
    tmp_path: Path,
) -> None:
    dpop = load_config(
        _with("dpop", {"require_nonce": True, "nonce_key_env": "GW_NONCE"})
    ).gateway.dpop
    with pytest.raises(
        ValueError, match=r"^dpop\.nonce_key_env: the environment variable GW_NONCE"
    ):
        dpop.nonce_issuer({})
    short = NONCE_KEY[:20]
    with pytest.raises(ValueError, match=r"^dpop\.nonce_key_env: not a valid key") as refused:
        dpop.nonce_issuer({"GW_NONCE": short})
    assert short not in str(refused.value)  # a key is never echoed
    in_file = load_config(
        _with("dpop", {"require_nonce": True, "nonce_key_file": str(tmp_path / "absent")})
    ).gateway.dpop
    with pytest.raises(ValueError, match=r"^dpop\.nonce_key_file: cannot read .*FileNotFound"):
        in_file.nonce_issuer({})


# -- dpop.nonce_accept_keys: key rotation with overlap --------------------------------------

OLD_KEY, NEW_KEY = MasterKey.generate_text(), MasterKey.generate_text()


def _rotating(accept: list[Any], **more: Any) -> DpopSettings:
    on = {"require_nonce": True, "nonce_key_env": "GW_NONCE", "nonce_accept_keys": accept}
    return load_config(_with("dpop", {**on, **more})).gateway.dpop


def test_accepted_nonce_keys_verify_and_never_issue(tmp_path: Path) -> None:
    (tmp_path / "old.key").write_text(OLD_KEY + "\n")
    dpop = _rotating([{"key_file": str(tmp_path / "old.key")}], nonce_lifetime_seconds=60)
    assert dpop.nonce_accept_keys == (NonceKeySource(file=tmp_path / "old.key"),)
    # phase 2 of a rotation: issue with the new key, accept the old one
    issuer = dpop.nonce_issuer({"GW_NONCE": NEW_KEY})
    assert issuer is not None
    assert (issuer.accepted_keys, issuer.lifetime) == (1, 60)
    settings = DpopSettings(True, "K", None, 60)
    old, new = settings.nonce_issuer({"K": OLD_KEY}), settings.nonce_issuer({"K": NEW_KEY})
    assert old is not None
    assert new is not None
    assert issuer.is_valid(old.issue(NOW), NOW)  # a replica not yet restarted: accepted
    assert issuer.issue(NOW) == new.issue(NOW)  # issued with the new key only
    assert not old.is_valid(issuer.issue(NOW), NOW)
    assert not issuer.is_valid(old.issue(NOW - 61), NOW)  # the old key's nonces expire too
    stranger = settings.nonce_issuer({"K": MasterKey.generate_text()})
    assert stranger is not None
    assert not issuer.is_valid(stranger.issue(NOW), NOW)
    # the accepted key is derived as the issuing key is (HKDF), not used raw
    assert not issuer.is_valid(NonceIssuer(b64url_decode(OLD_KEY)).issue(NOW), NOW)
    # from the environment too, up to the bound
    names = [f"GW_OLD_{n}" for n in range(MAX_ACCEPTED_KEYS)]
    keys = {name: MasterKey.generate_text() for name in names}
    many = _rotating([{"key_env": name} for name in names]).nonce_issuer(
        {"GW_NONCE": NEW_KEY, **keys}
    )
    assert many is not None
    assert many.accepted_keys == MAX_ACCEPTED_KEYS
    for name in names:
        one = settings.nonce_issuer({"K": keys[name]})
        assert one is not None
        assert many.is_valid(one.issue(NOW), NOW)


def test_accepted_nonce_keys_are_not_read_while_nonces_are_off() -> None:
    off = load_config(
        _with("dpop", {"nonce_key_env": "GW_NONCE", "nonce_accept_keys": [{"key_env": "GW_OLD"}]})
    ).gateway.dpop
    assert off.nonce_issuer({}) is None


@pytest.mark.parametrize(
    ("accept", "message"),
    [
        ({"key_env": "GW_OLD"}, "dpop.nonce_accept_keys: a list of at most 3 keys"),
        ("GW_OLD", "dpop.nonce_accept_keys: a list of at most 3 keys"),
        ([{"key_env": f"GW_{n}"} for n in range(4)],
         "dpop.nonce_accept_keys: a list of at most 3 keys"),
        (["GW_OLD"], "dpop.nonce_accept_keys[0]: expected a mapping"),
        ([{}], "dpop.nonce_accept_keys[0]: give exactly one of key_env and key_file"),
        ([{"key_env": "GW_OLD", "key_file": "/k"}],
         "dpop.nonce_accept_keys[0]: give exactly one of key_env and key_file"),
        ([{"key_env": "GW_OLD", "key": "x"}], "dpop.nonce_accept_keys[0]: unknown keys key"),
        ([{"nonce_key_env": "GW_OLD"}],
         "dpop.nonce_accept_keys[0]: unknown keys nonce_key_env"),
        ([{"key_env": "lower"}], "dpop.nonce_accept_keys[0].key_env: an environment variable"),
        ([{"key_env": "GW_A"}, {"key_file": "relative"}],
         "dpop.nonce_accept_keys[1].key_file: an absolute path"),
        ([{"key_env": "GW_NONCE"}],
         "dpop.nonce_accept_keys[0].key_env: the issuing key's variable (nonce_key_env)"),
        ([{"key_env": "GW_A"}, {"key_env": "GW_A"}],
         "dpop.nonce_accept_keys[1]: the same source as dpop.nonce_accept_keys[0]"),
        ([{"key_file": "/k"}, {"key_file": "/k"}],
         "dpop.nonce_accept_keys[1]: the same source as dpop.nonce_accept_keys[0]"),
    ],
)  # fmt: skip
def test_accepted_nonce_key_mistakes_are_refused_naming_the_key(accept: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + _escape(message)):
        _rotating(accept)


def test_accepted_nonce_keys_need_the_issuing_key() -> None:
    with pytest.raises(ValueError, match=r"^dpop\.nonce_accept_keys: needs the issuing key"):
        load_config(_with("dpop", {"nonce_accept_keys": [{"key_env": "GW_OLD"}]}))
    # the issuing key's file named again
    with pytest.raises(ValueError, match=r"^dpop\.nonce_accept_keys\[0\]\.key_file: the issuing"):
        load_config(
            _with("dpop", {"nonce_key_file": "/k", "nonce_accept_keys": [{"key_file": "/k"}]})
        )


def test_a_bad_or_repeated_accepted_key_stops_the_start_never_echoing_it(tmp_path: Path) -> None:
    dpop = _rotating([{"key_env": "GW_OLD"}, {"key_file": str(tmp_path / "old.key")}])
    (tmp_path / "old.key").write_text(OLD_KEY)
    with pytest.raises(
        ValueError, match=r"^dpop\.nonce_accept_keys\[0\]\.key_env: the environment variable"
    ):
        dpop.nonce_issuer({"GW_NONCE": NEW_KEY})
    short = OLD_KEY[:20]
    with pytest.raises(ValueError, match=r"^dpop\.nonce_accept_keys\[0\]\.key_env: not a valid"):
        dpop.nonce_issuer({"GW_NONCE": NEW_KEY, "GW_OLD": short})
    # the same key under two names: the issuing key (a rotation step done wrong) ...
    as_issuing = "dpop.nonce_accept_keys[0].key_env: the same key as dpop.nonce_key_env;"
    with pytest.raises(ValueError, match="^" + _escape(as_issuing)) as same:
        dpop.nonce_issuer({"GW_NONCE": NEW_KEY, "GW_OLD": f" {NEW_KEY}\n"})
    # ... or another accepted key
    as_first = "dpop.nonce_accept_keys[1].key_file: the same key as dpop.nonce_accept_keys[0]"
    with pytest.raises(ValueError, match="^" + _escape(as_first) + "$") as twice:
        dpop.nonce_issuer({"GW_NONCE": NEW_KEY, "GW_OLD": OLD_KEY})
    (tmp_path / "old.key").write_bytes(b"\xff" * 43)
    with pytest.raises(ValueError, match=r"^dpop\.nonce_accept_keys\[1\]\.key_file: cannot read"):
        dpop.nonce_issuer({"GW_NONCE": NEW_KEY, "GW_OLD": MasterKey.generate_text()})
    for refused in (same, twice):
        for secret in (NEW_KEY, OLD_KEY, short):
            assert secret not in str(refused.value)
