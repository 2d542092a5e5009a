"""The credential broker and its sealed store: round trip, values never shown (list,
repr, logs, errors), a value sealed for one name refused under another, wrong key,
rotation picked up by a running broker, and OAuth 2.0 client credentials (RFC 6749
section 4.4) against a real local token endpoint: both client authentication methods,
the token cached and refreshed, errors that never carry the secret."""

from __future__ import annotations

import base64
import json
import logging
import pickle
import socket
import stat
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import pytest

from agentiam.adapters.gateway import broker as broker_module
from agentiam.adapters.gateway.broker import (
    KEY_ENV,
    KEY_FILE_ENV,
    ApiKeyInjection,
    CredentialBroker,
    OAuthClientCredentials,
    OAuthClientSecret,
    Secret,
    SecretKind,
    SecretNotFound,
    SecretStore,
    SecretStoreError,
    TokenEndpointError,
    credential_ref_from_config,
    load_secrets_key,
)
from agentiam.core.credentials.sealing import MasterKey

API_KEY = "sk-live-7f3c0ffee0ddba11"
CLIENT_ID = "gateway client"  # a space: form-urlencoded in client_secret_basic
CLIENT_SECRET = "cs:very/secret+value"


@pytest.fixture
def key() -> MasterKey:
    return MasterKey.from_text(MasterKey.generate_text())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "secrets" / "store.json"


@pytest.fixture
def store(path: Path, key: MasterKey) -> SecretStore:
    return SecretStore(path, key, reload_interval=0.0)


def _oauth() -> OAuthClientSecret:
    return OAuthClientSecret(CLIENT_ID, Secret(CLIENT_SECRET))


# -- the store --------------------------------------------------------------------------


def test_round_trip_and_file_is_sealed_and_private(store: SecretStore, path: Path) -> None:
    a = store.put("github", SecretKind.API_KEY, Secret(API_KEY))
    b = store.put("crm", SecretKind.OAUTH_CLIENT, _oauth())
    assert (a.label, b.label) == ("github@1", "crm@1")
    info, value = store.get("github")
    assert info == a
    assert isinstance(value, Secret)
    assert value.reveal() == API_KEY
    _, client = store.get("crm")
    assert isinstance(client, OAuthClientSecret)
    assert (client.client_id, client.client_secret.reveal()) == (CLIENT_ID, CLIENT_SECRET)
    raw = path.read_text()
    assert API_KEY not in raw
    assert CLIENT_SECRET not in raw
    assert CLIENT_ID not in raw
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [i.name for i in store.all()] == ["crm", "github"]
    assert store.verify() == 2


def test_values_never_show(store: SecretStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store.put("github", SecretKind.API_KEY, Secret(API_KEY))
    store.put("crm", SecretKind.OAUTH_CLIENT, _oauth())
    _, value = store.get("github")
    _, client = store.get("crm")
    shown = " ".join(
        [
            repr(store.all()),
            json.dumps([i.to_dict() for i in store.all()]),
            repr(store),
            repr(value),
            str(value),
            f"{value}",
            repr(client),
            str(client),
            caplog.text,
        ]
    )
    assert API_KEY not in shown
    assert CLIENT_SECRET not in shown
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(value)


def test_put_refuses_an_existing_name_and_bad_values(store: SecretStore) -> None:
    store.put("github", SecretKind.API_KEY, Secret(API_KEY))
    with pytest.raises(SecretStoreError, match="exists"):
        store.put("github", SecretKind.API_KEY, Secret("other"))
    with pytest.raises(SecretStoreError, match="control characters"):
        store.put("inject", SecretKind.API_KEY, Secret("abc\r\nX-Admin: 1"))
    with pytest.raises(SecretStoreError, match="non-empty"):
        store.put("empty", SecretKind.API_KEY, Secret(""))
    with pytest.raises(SecretStoreError, match="name"):
        store.put("../escape", SecretKind.API_KEY, Secret(API_KEY))
    with pytest.raises(SecretStoreError, match="oauth_client"):
        store.put("crm", SecretKind.OAUTH_CLIENT, Secret("just a string"))
    with pytest.raises(SecretStoreError, match="at most"):
        store.put("huge", SecretKind.API_KEY, Secret("x" * 20_000))
    with pytest.raises(SecretNotFound):
        store.get("missing")


def test_a_value_moved_to_another_name_does_not_open(store: SecretStore, path: Path) -> None:
    store.put("alpha", SecretKind.API_KEY, Secret(API_KEY))
    store.put("beta", SecretKind.API_KEY, Secret("beta-key"))
    doc = json.loads(path.read_text())
    by_name = {e["name"]: e for e in doc["secrets"]}
    by_name["beta"]["sealed"] = by_name["alpha"]["sealed"]  # an attacker swaps values
    path.write_text(json.dumps(doc))
    with pytest.raises(SecretStoreError, match=r"beta@1 .* does not open") as refused:
        store.get("beta")
    assert API_KEY not in str(refused.value.detail)
    assert store.get("alpha")[1].reveal() == API_KEY  # type: ignore[union-attr]
    with pytest.raises(SecretStoreError, match="does not open"):
        store.verify()

    by_name["beta"]["sealed"] = by_name["alpha"]["sealed"]
    by_name["alpha"]["version"] = 2  # or bumps its version
    path.write_text(json.dumps(doc))
    with pytest.raises(SecretStoreError, match=r"alpha@2 .* does not open"):
        store.get("alpha")


def test_a_wrong_key_is_a_clear_error(path: Path, key: MasterKey) -> None:
    SecretStore(path, key).put("github", SecretKind.API_KEY, Secret(API_KEY))
    other = MasterKey.from_text(MasterKey.generate_text())
    wrong = SecretStore(path, other)
    with pytest.raises(SecretStoreError, match=f"sealed under key {key.id}") as refused:
        wrong.all()
    assert KEY_ENV in (refused.value.hint or "")
    with pytest.raises(SecretStoreError):
        wrong.put("another", SecretKind.API_KEY, Secret("x"))  # never mixes keys


def test_a_malformed_or_oversized_store_is_refused(
    store: SecretStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(SecretStoreError, match="malformed"):
        store.all()
    path.write_text(json.dumps({"format": "something else", "secrets": []}))
    with pytest.raises(SecretStoreError, match="malformed"):
        store.all()
    monkeypatch.setattr(broker_module, "MAX_STORE_BYTES", 100)
    path.write_text(" " * 200)
    with pytest.raises(SecretStoreError, match="exceeds"):
        store.all()


def test_rotation_keeps_one_previous_version(store: SecretStore) -> None:
    store.put("github", SecretKind.API_KEY, Secret("v1-key"))
    assert store.rotate("github", Secret("v2-key")).version == 2
    assert [i.label for i in store.all()] == ["github@1", "github@2"]
    assert store.get("github")[1].reveal() == "v2-key"  # type: ignore[union-attr]
    assert store.get("github", 1)[1].reveal() == "v1-key"  # type: ignore[union-attr]
    store.rotate("github", Secret("v3-key"))
    assert [i.label for i in store.all()] == ["github@2", "github@3"]
    with pytest.raises(SecretNotFound):
        store.get("github", 1)
    with pytest.raises(SecretStoreError, match="api_key"):
        store.rotate("github", _oauth())  # the kind stays
    assert store.delete("github") == 2
    assert store.all() == []
    with pytest.raises(SecretNotFound):
        store.delete("github")


def test_load_secrets_key(tmp_path: Path, key: MasterKey) -> None:
    text = MasterKey.generate_text()
    assert load_secrets_key({KEY_ENV: text}).id == MasterKey.from_text(text).id
    key_file = tmp_path / "key"
    key_file.write_text(text + "\n")
    assert load_secrets_key({KEY_FILE_ENV: str(key_file)}).id == MasterKey.from_text(text).id
    with pytest.raises(SecretStoreError, match="no gateway secrets key"):
        load_secrets_key({})
    with pytest.raises(SecretStoreError, match="both"):
        load_secrets_key({KEY_ENV: text, KEY_FILE_ENV: str(key_file)})
    with pytest.raises(SecretStoreError, match="invalid"):
        load_secrets_key({KEY_ENV: "too-short"})
    with pytest.raises(SecretStoreError, match="cannot read"):
        load_secrets_key({KEY_FILE_ENV: str(tmp_path / "missing")})


# -- API keys -------------------------------------------------------------------------------


def test_api_key_injection_and_rotation_picked_up_by_a_running_broker(
    path: Path, key: MasterKey
) -> None:
    admin = SecretStore(path, key)  # the CLI, another process
    admin.put("github", SecretKind.API_KEY, Secret("v1-key"))
    broker = CredentialBroker(SecretStore(path, key, reload_interval=0.0))
    ref = ApiKeyInjection("github", header="Authorization", prefix="Bearer ")
    assert broker.headers_for(ref) == ({"Authorization": "Bearer v1-key"}, "github@1")
    admin.rotate("github", Secret("v2-key"))
    assert broker.headers_for(ref) == ({"Authorization": "Bearer v2-key"}, "github@2")
    custom = ApiKeyInjection("github", header="X-Api-Key")
    assert broker.headers_for(custom) == ({"X-Api-Key": "v2-key"}, "github@2")
    admin.delete("github")
    with pytest.raises(SecretNotFound):
        broker.headers_for(ref)


def test_reload_interval_bounds_how_often_the_file_is_checked(path: Path, key: MasterKey) -> None:
    now = [0.0]
    admin = SecretStore(path, key)
    admin.put("github", SecretKind.API_KEY, Secret("v1-key"))
    running = SecretStore(path, key, reload_interval=1.0, clock=lambda: now[0])
    assert running.info("github").version == 1
    admin.rotate("github", Secret("v2-key"))
    assert running.info("github").version == 1  # not checked again yet
    now[0] = 1.0
    assert running.info("github").version == 2


def test_a_store_altered_under_a_running_broker_fails_closed(path: Path, key: MasterKey) -> None:
    admin = SecretStore(path, key)
    admin.put("github", SecretKind.API_KEY, Secret(API_KEY))
    broker = CredentialBroker(SecretStore(path, key, reload_interval=0.0))
    ref = ApiKeyInjection("github")
    broker.headers_for(ref)
    path.write_text("garbage")
    with pytest.raises(SecretStoreError, match="malformed"):
        broker.headers_for(ref)


def test_a_store_that_fails_closed_raises_a_new_error_each_time(path: Path, key: MasterKey) -> None:
    """r3 finding 2: raising one cached instance again would add every caller's frames
    to its traceback (unbounded memory, callers' locals kept alive)."""
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    broker = CredentialBroker(SecretStore(path, key))
    errors: list[SecretStoreError] = []
    for _ in range(3):
        with pytest.raises(SecretStoreError, match="malformed") as raised:
            broker.headers_for(ApiKeyInjection("github"))
        errors.append(raised.value)
    assert len({id(e) for e in errors}) == 3
    assert {(e.detail, e.hint) for e in errors} == {(errors[0].detail, errors[0].hint)}
    assert "backup" in str(errors[0].hint)
    depths = {len(traceback.extract_tb(e.__traceback__)) for e in errors}
    assert len(depths) == 1


def test_a_secret_of_the_wrong_kind_is_refused(store: SecretStore) -> None:
    store.put("github", SecretKind.API_KEY, Secret(API_KEY))
    store.put("crm", SecretKind.OAUTH_CLIENT, _oauth())
    broker = CredentialBroker(store)
    with pytest.raises(SecretStoreError, match="expects an api_key"):
        broker.headers_for(ApiKeyInjection("crm"))
    oauth = OAuthClientCredentials("github", "http://127.0.0.1:9/token", allow_private_network=True)
    with pytest.raises(SecretStoreError, match="expects oauth_client"):
        broker.headers_for(oauth)


# -- configuration ----------------------------------------------------------------------------


def test_credential_configuration() -> None:
    ref = credential_ref_from_config({"secret": "github", "prefix": "Bearer "})
    assert ref == ApiKeyInjection("github", "Authorization", "Bearer ")
    oauth = credential_ref_from_config(
        {
            "secret": "crm",
            "token_endpoint": "https://auth.example.com/token",
            "auth_method": "client_secret_post",
            "scope": "read",
        }
    )
    assert isinstance(oauth, OAuthClientCredentials)
    assert oauth.auth_method == "client_secret_post"
    with pytest.raises(ValueError, match="unknown"):
        credential_ref_from_config({"secret": "x", "value": "inline secrets are not allowed"})
    with pytest.raises(ValueError, match="names its secret"):
        credential_ref_from_config({"header": "X-Api-Key"})
    with pytest.raises(ValueError, match="scheme"):  # https only ...
        OAuthClientCredentials("crm", "http://auth.example.com/token")
    with pytest.raises(ValueError, match="loopback"):  # ... and public addresses only
        OAuthClientCredentials("crm", "https://127.0.0.1/token")
    OAuthClientCredentials("crm", "http://127.0.0.1/token", allow_private_network=True)
    with pytest.raises(ValueError, match="header"):
        ApiKeyInjection("github", header="Bad Header\r\n")
    # r3 finding 4: "$" would let a final "\n" through (fullmatch does not)
    with pytest.raises(ValueError, match="header name"):
        ApiKeyInjection("github", header="X-Api-Key\n")
    with pytest.raises(ValueError, match="prefix"):
        ApiKeyInjection("github", prefix="Bearer\n")
    with pytest.raises(SecretStoreError, match="invalid secret name"):
        ApiKeyInjection("github\n")
    with pytest.raises(ValueError, match="header name"):
        OAuthClientCredentials("crm", "https://auth.example.com/token", header="Authorization\n")
    with pytest.raises(ValueError, match="auth_method"):
        OAuthClientCredentials(
            "crm",
            "https://auth.example.com/token",
            auth_method="tls_client_auth",  # type: ignore[arg-type]
        )


# -- OAuth client credentials against a real token endpoint ----------------------------------


@dataclass
class TokenEndpoint:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    answer: Callable[[int], tuple[int, dict[str, Any]]] = lambda n: (
        200,
        {"access_token": f"at-{n}", "token_type": "Bearer", "expires_in": 300},
    )


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    state = TokenEndpoint(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            state.requests.append(
                {
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "content_type": self.headers.get("Content-Type"),
                    "form": {k: v[0] for k, v in parse_qs(body).items()},
                }
            )
            status, doc = state.answer(len(state.requests))
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/oauth/token"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _ref(endpoint: TokenEndpoint, **kw: Any) -> OAuthClientCredentials:
    return OAuthClientCredentials("crm", endpoint.url, allow_private_network=True, **kw)


def test_client_secret_basic(store: SecretStore, endpoint: TokenEndpoint) -> None:
    store.put("crm", SecretKind.OAUTH_CLIENT, _oauth())
    broker = CredentialBroker(store)
    headers, label = broker.headers_for(
        _ref(endpoint, scope="contacts.read", resource="https://crm.example")
    )
    assert headers == {"Authorization": "Bearer at-1"}
    assert label == "crm@1"
    [request] = endpoint.requests
    assert request["path"] == "/oauth/token"
    assert request["content_type"] == "application/x-www-form-urlencoded"
    assert request["form"] == {
        "grant_type": "client_credentials",
        "scope": "contacts.read",
        "resource": "https://crm.example",
    }
    scheme, credentials = request["authorization"].split(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(credentials).decode().partition(":")
    # RFC 6749 section 2.3.1: form-urlencoded before Basic
    assert (unquote(user), unquote(password)) == (CLIENT_ID, CLIENT_SECRET)
    assert ":" not in password  # the secret's own ":" was encoded


def test_client_secret_post(store: SecretStore, endpoint: TokenEndpoint) -> None:
    store.put("crm", SecretKind.OAUTH_CLIENT, _oauth())
    broker = CredentialBroker(store)
    broker.headers_for(_ref(endpoint, auth_method="client_secret_post"))
    [request] = endpoint.requests
    assert request["authorization"] is None
    assert request["form"] == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }


def test_token_is_cached_then_refreshed_before_expiry(
    store: SecretStore, endpoint: TokenEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    now = [1000.0]
    endpoint.answer = lambda n: (
        200,
        {"access_token": f"at-{n}", "token_type": "bearer", "expires_in": 120},
    )
    store.put("crm", SecretKind.OAUTH_CLIENT, _oauth())
    broker = CredentialBroker(store, clock=lambda: now[0])
    ref = _ref(endpoint, refresh_margin=30)
    for _ in range(5):
        assert broker.headers_for(ref)[0] == {"Authorization": "Bearer at-1"}
    assert len(endpoint.requests) == 1
    now[0] += 89  # 120 s lifetime, refreshed 30 s before: still the same token
    assert broker.headers_for(ref)[0]["Authorization"] == "Bearer at-1"
    now[0] += 1
    assert broker.headers_for(ref)[0]["Authorization"] == "Bearer at-2"
    assert len(endpoint.requests) == 2
    assert "at-1" not in caplog.text
    assert "at-2" not in caplog.text
    assert CLIENT_SECRET not in caplog.text


def test_a_rotated_client_secret_gets_a_new_token(
    store: SecretStore, endpoint: TokenEndpoint
) -> None:
    store.put("crm", SecretKind.OAUTH_CLIENT, _oauth())
    broker = CredentialBroker(store)
    ref = _ref(endpoint)
    assert broker.headers_for(ref) == ({"Authorization": "Bearer at-1"}, "crm@1")
    store.rotate("crm", OAuthClientSecret(CLIENT_ID, Secret("rotated-secret")))
    assert broker.headers_for(ref) == ({"Authorization": "Bearer at-2"}, "crm@2")
    assert (
        endpoint.requests[1]["authorization"]
        == "Basic "
        + base64.b64encode(f"{CLIENT_ID.replace(' ', '%20')}:rotated-secret".encode()).decode()
    )


def test_concurrent_callers_share_one_token_fetch(
    store: SecretStore, endpoint: TokenEndpoint
) -> None:
    store.put("crm", SecretKind.OAUTH_CLIENT, _oauth())
    broker = CredentialBroker(store)
    ref = _ref(endpoint)
    barrier = threading.Barrier(8)
    seen: list[str] = []

    def call() -> None:
        barrier.wait()
        seen.append(broker.headers_for(ref)[0]["Authorization"])

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == ["Bearer at-1"] * 8
    assert len(endpoint.requests) == 1


def test_a_refusal_from_the_token_endpoint_never_carries_the_secret(
    store: SecretStore, endpoint: TokenEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint.answer = lambda n: (
        400,
        {"error": "invalid_client", "error_description": f"bad secret {CLIENT_SECRET}"},
    )
    store.put("crm", SecretKind.OAUTH_CLIENT, _oauth())
    broker = CredentialBroker(store)
    with pytest.raises(TokenEndpointError) as refused:
        broker.headers_for(_ref(endpoint))
    error = refused.value
    assert error.status == 502
    assert "HTTP 400: invalid_client" in error.detail
    assert "crm@1" in error.detail
    everything = f"{error} {error.detail} {error.hint} {error.to_problem()} {caplog.text}"
    assert CLIENT_SECRET not in everything


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"token_type": "Bearer"}, "without an access token"),
        ({"access_token": "t", "token_type": "DPoP"}, "only Bearer"),
        ({"access_token": "t", "token_type": "Bearer", "expires_in": -5}, "expires_in"),
        ({"access_token": "t\r\nX-Evil: 1", "token_type": "Bearer"}, "malformed"),
        ({"access_token": "tok\n", "token_type": "Bearer"}, "malformed"),  # r3 finding 4
    ],
)
def test_a_malformed_token_response_is_refused(
    store: SecretStore, endpoint: TokenEndpoint, doc: dict[str, Any], match: str
) -> None:
    endpoint.answer = lambda n: (200, doc)
    store.put("crm", SecretKind.OAUTH_CLIENT, _oauth())
    with pytest.raises(TokenEndpointError, match=match):
        CredentialBroker(store).headers_for(_ref(endpoint))


def test_an_unreachable_token_endpoint_is_a_clear_error(store: SecretStore) -> None:
    store.put("crm", SecretKind.OAUTH_CLIENT, _oauth())
    ref = OAuthClientCredentials(
        "crm", "http://127.0.0.1:9/token", allow_private_network=True, timeout=2
    )
    with pytest.raises(TokenEndpointError, match="cannot be reached"):
        CredentialBroker(store).headers_for(ref)


def test_a_name_with_a_trailing_newline_is_refused_in_the_store(
    store: SecretStore, path: Path
) -> None:
    """r3 finding 4: secret names, as put and as read from the file."""
    with pytest.raises(SecretStoreError, match="invalid secret name"):
        store.put("github\n", SecretKind.API_KEY, Secret(API_KEY))
    store.put("github", SecretKind.API_KEY, Secret(API_KEY))
    doc = json.loads(path.read_text())
    doc["secrets"][0]["name"] = "github\n"
    path.write_text(json.dumps(doc))
    with pytest.raises(SecretStoreError, match="invalid secret name"):
        store.all()


def test_a_secret_deleted_and_put_again_never_gets_the_old_token(
    store: SecretStore, endpoint: TokenEndpoint
) -> None:
    """r3 finding 5: the new secret's token must be fetched with its own credentials,
    not taken from the deleted one's cache. (Since h3 it is ``crm@2``, not ``crm@1``
    again: tests/unit/test_broker_versions.py covers a version repeated by an edited
    file.)"""
    store.put("crm", SecretKind.OAUTH_CLIENT, OAuthClientSecret(CLIENT_ID, Secret("old")))
    broker = CredentialBroker(store)
    ref = _ref(endpoint)
    assert broker.headers_for(ref) == ({"Authorization": "Bearer at-1"}, "crm@1")
    store.delete("crm")
    store.put("crm", SecretKind.OAUTH_CLIENT, OAuthClientSecret(CLIENT_ID, Secret("new")))
    assert broker.headers_for(ref) == ({"Authorization": "Bearer at-2"}, "crm@2")
    basic = base64.b64encode(f"{quote(CLIENT_ID, safe='')}:new".encode()).decode()
    assert endpoint.requests[1]["authorization"] == "Basic " + basic
    assert broker.headers_for(ref)[0] == {"Authorization": "Bearer at-2"}  # then cached
    assert len(endpoint.requests) == 2


def test_a_failed_token_fetch_is_shared_and_remembered_briefly(
    store: SecretStore, endpoint: TokenEndpoint
) -> None:
    """r3 finding 3: calls queued behind a failing fetch take its error instead of each
    fetching again; the failure is the answer for 2 s per credential and version."""

    def slow_failure(n: int) -> tuple[int, dict[str, Any]]:
        time.sleep(0.4)
        return 503, {"error": "temporarily_unavailable"}

    endpoint.answer = slow_failure
    store.put("crm", SecretKind.OAUTH_CLIENT, _oauth())
    now = [1000.0]
    broker = CredentialBroker(store, clock=lambda: now[0])
    ref = _ref(endpoint)
    barrier = threading.Barrier(6)
    errors: list[TokenEndpointError] = []

    def call() -> None:
        barrier.wait()
        try:
            broker.headers_for(ref)
        except TokenEndpointError as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started < 1.2  # not 6 x 0.4 s, one fetch after another
    assert len(endpoint.requests) == 1
    assert len(errors) == 6
    assert len({id(e) for e in errors}) == 6  # a new instance for each caller
    assert all("HTTP 503: temporarily_unavailable" in e.detail for e in errors)

    now[0] += 1.9  # within the back-off: the same error, no request
    with pytest.raises(TokenEndpointError, match="HTTP 503"):
        broker.headers_for(ref)
    assert len(endpoint.requests) == 1
    endpoint.answer = TokenEndpoint.answer
    now[0] += 0.1  # past it: fetched again
    assert broker.headers_for(ref) == ({"Authorization": "Bearer at-2"}, "crm@1")

    endpoint.answer = lambda n: (401, {"error": "invalid_client"})
    now[0] += 1000  # the token is due for a refresh, which fails ...
    with pytest.raises(TokenEndpointError, match="invalid_client"):
        broker.headers_for(ref)
    endpoint.answer = TokenEndpoint.answer
    store.rotate("crm", OAuthClientSecret(CLIENT_ID, Secret("fixed")))
    # ... and a new secret version is tried at once, back-off or not
    assert broker.headers_for(ref) == ({"Authorization": "Bearer at-4"}, "crm@2")


def test_a_hung_token_endpoint_costs_each_call_one_timeout_at_most(store: SecretStore) -> None:
    """r3 finding 3: a black-holed endpoint (connections queue, nothing answers) with a
    0.5 s timeout: 4 concurrent calls wait about 0.5 s each, not 0.5, 1, 1.5 and 2 s;
    a call during the back-off is answered at once."""
    store.put("crm", SecretKind.OAUTH_CLIENT, _oauth())
    broker = CredentialBroker(store)
    with socket.create_server(("127.0.0.1", 0), backlog=16) as hole:  # never accepts
        ref = OAuthClientCredentials(
            "crm",
            f"http://127.0.0.1:{hole.getsockname()[1]}/token",
            allow_private_network=True,
            timeout=0.5,
        )
        barrier = threading.Barrier(4)
        waits: list[float] = []

        def call() -> None:
            barrier.wait()
            started = time.monotonic()
            with pytest.raises(TokenEndpointError, match="crm@1"):
                broker.headers_for(ref)
            waits.append(time.monotonic() - started)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(waits) == 4
        assert max(waits) < 1.0, waits
        started = time.monotonic()
        with pytest.raises(TokenEndpointError, match="crm@1"):
            broker.headers_for(ref)
        assert time.monotonic() - started < 0.2


def test_a_call_waiting_behind_a_fetch_with_an_older_secret_fetches_its_own(
    store: SecretStore, endpoint: TokenEndpoint
) -> None:
    """A call that read the rotated secret while a fetch with the previous one was in
    flight waits for it, then fetches with its own secret instead of taking the old
    secret's token (and label)."""
    first_started = threading.Event()

    def slow_then_fast(n: int) -> tuple[int, dict[str, Any]]:
        if n == 1:
            first_started.set()
            time.sleep(0.4)
        return 200, {"access_token": f"at-{n}", "token_type": "Bearer", "expires_in": 300}

    endpoint.answer = slow_then_fast
    store.put("crm", SecretKind.OAUTH_CLIENT, OAuthClientSecret(CLIENT_ID, Secret("old")))
    broker = CredentialBroker(store)
    ref = _ref(endpoint)
    results: dict[str, tuple[dict[str, str], str]] = {}
    first = threading.Thread(target=lambda: results.update(old=broker.headers_for(ref)))
    first.start()
    assert first_started.wait(5)
    store.rotate("crm", OAuthClientSecret(CLIENT_ID, Secret("new")))
    results["new"] = broker.headers_for(ref)  # waits for the first fetch, then its own
    first.join(5)
    assert results["old"] == ({"Authorization": "Bearer at-1"}, "crm@1")
    assert results["new"] == ({"Authorization": "Bearer at-2"}, "crm@2")
    basic = base64.b64encode(f"{quote(CLIENT_ID, safe='')}:new".encode()).decode()
    assert endpoint.requests[1]["authorization"] == "Basic " + basic
