"""A secret's ``allowed_upstreams``: the origins (RFC 6454) it may be sent to. The
broker refuses to inject it toward any other origin, or to send an OAuth secret to a
token endpoint at another origin, before the secret is opened; the list cannot be
edited in the file without the key (the value no longer opens); a gateway's start is
refused for an upstream the list does not allow; a secret without a list goes
wherever it is configured, as before."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from tests.support.network import Handler, serve_http
from tests.support.token_endpoint import KeyJwtEndpoint, serve

from agentiam.adapters.gateway.broker import (
    ApiKeyInjection,
    CredentialBroker,
    OAuthClientCredentials,
    OAuthClientKey,
    OAuthClientSecret,
    Secret,
    SecretKind,
    SecretNotAllowed,
    SecretStore,
    SecretStoreError,
    TokenEndpointError,
    allowed_upstreams,
    upstream_origin,
)
from agentiam.adapters.gateway.mcp_upstream import UPSTREAM_USE, UpstreamUse, _BrokeredAuth
from agentiam.core.credentials.sealing import MasterKey

API_KEY = "sk-allowed-0123456789"
UPSTREAM = "https://api.example.com"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.json"


@pytest.fixture
def key() -> MasterKey:
    return MasterKey.from_text(MasterKey.generate_text())


@pytest.fixture
def store(path: Path, key: MasterKey) -> SecretStore:
    return SecretStore(path, key, reload_interval=0.0)


def test_origins_are_normalised_and_only_origins_are_allowed() -> None:
    assert upstream_origin("HTTPS://API.Example.COM:443/v1/x?y=1") == UPSTREAM
    assert upstream_origin("http://10.0.0.9:80/") == "http://10.0.0.9"
    assert upstream_origin("http://[::1]:8080/mcp") == "http://[::1]:8080"
    assert allowed_upstreams(["https://b.example/", "https://A.example:443", "https://a.example"]
                             ) == ("https://a.example", "https://b.example")  # fmt: skip
    for bad in ("https://api.example.com/v1", "https://api.example.com?x=1",
                "https://user@api.example.com", "ftp://api.example.com", "api.example.com",
                "https://api.example.com#f", "https://api.example.com:99999"):  # fmt: skip
        with pytest.raises(SecretStoreError):
            allowed_upstreams([bad])
    with pytest.raises(SecretStoreError, match="1 to"):
        allowed_upstreams([])


def test_an_api_key_goes_only_to_its_allowed_origins(store: SecretStore) -> None:
    info = store.put("github", SecretKind.API_KEY, Secret(API_KEY),
                     allowed_upstreams=["https://API.example.com:443"])  # fmt: skip
    assert info.allowed_upstreams == (UPSTREAM,)
    assert info.to_dict()["allowed_upstreams"] == [UPSTREAM]
    broker = CredentialBroker(store)
    ref = ApiKeyInjection("github", header="X-Api-Key")
    for allowed in (UPSTREAM, UPSTREAM + "/v1/repos", "https://api.example.com:443/x"):
        assert broker.headers_for(ref, allowed) == ({"X-Api-Key": API_KEY}, "github@1")
    for other in ("https://evil.example", "http://api.example.com", "https://api.example.com:8443",
                  "https://api.example.com.evil.example", "not a url", None):  # fmt: skip
        with pytest.raises(SecretNotAllowed, match=r"github@1 may be sent only to") as refused:
            broker.headers_for(ref, other)
        assert API_KEY not in str(refused.value.detail) + str(refused.value.hint)


def test_a_secret_without_a_list_goes_anywhere_as_before(store: SecretStore) -> None:
    info = store.put("github", SecretKind.API_KEY, Secret(API_KEY))
    assert info.allowed_upstreams is None
    assert set(info.to_dict()) == {"name", "kind", "version", "created_at"}
    broker = CredentialBroker(store)
    for destination in ("https://anything.example", None):
        assert broker.headers_for(ApiKeyInjection("github"), destination)[1] == "github@1"


def test_the_list_cannot_be_edited_in_the_file(store: SecretStore, path: Path) -> None:
    """The attack: someone who can write the store file (but has no key) widens the
    list, or removes it. The list is part of the sealed value's associated data: the
    value no longer opens, and every injection of it is refused."""
    store.put("github", SecretKind.API_KEY, Secret(API_KEY), allowed_upstreams=[UPSTREAM])
    broker = CredentialBroker(store)
    ref = ApiKeyInjection("github")
    original = path.read_text()
    doc = json.loads(original)
    doc["secrets"][0]["allowed_upstreams"] = ["https://api.example.com", "https://evil.example"]
    path.write_text(json.dumps(doc))
    with pytest.raises(SecretStoreError, match="does not open"):
        broker.headers_for(ref, "https://evil.example")
    with pytest.raises(SecretStoreError, match="does not open"):
        broker.headers_for(ref, UPSTREAM)
    del doc["secrets"][0]["allowed_upstreams"]
    path.write_text(json.dumps(doc))
    with pytest.raises(SecretStoreError, match="does not open"):
        broker.headers_for(ref, "https://evil.example")
    # a list not written as the store writes it is malformed: refused as a whole
    doc["secrets"][0]["allowed_upstreams"] = ["https://API.example.com"]
    path.write_text(json.dumps(doc))
    with pytest.raises(SecretStoreError, match="malformed"):
        broker.headers_for(ref, UPSTREAM)
    path.write_text(original)
    assert broker.headers_for(ref, UPSTREAM)[1] == "github@1"


def test_rotation_keeps_replaces_or_drops_the_list(store: SecretStore) -> None:
    store.put("github", SecretKind.API_KEY, Secret("v1"), allowed_upstreams=[UPSTREAM])
    assert store.rotate("github", Secret("v2")).allowed_upstreams == (UPSTREAM,)
    moved = store.rotate("github", Secret("v3"), allowed_upstreams=["https://new.example"])
    assert moved.allowed_upstreams == ("https://new.example",)
    assert store.rotate("github", Secret("v4"), allowed_upstreams=None).allowed_upstreams is None
    with pytest.raises(SecretStoreError, match="list of origins"):
        store.rotate("github", Secret("v5"), allowed_upstreams=UPSTREAM)
    assert store.verify() == 2  # both kept versions open under their own lists


def test_a_list_narrowed_while_a_broker_runs_refuses_the_next_call(
    path: Path, key: MasterKey, store: SecretStore
) -> None:
    store.put("github", SecretKind.API_KEY, Secret("v1"))
    broker = CredentialBroker(SecretStore(path, key, reload_interval=0.0))
    ref = ApiKeyInjection("github")
    assert broker.headers_for(ref, "http://127.0.0.1:8080/x")[1] == "github@1"
    store.rotate("github", Secret("v2"), allowed_upstreams=[UPSTREAM])
    with pytest.raises(SecretNotAllowed, match=r"not to http://127\.0\.0\.1:8080"):
        broker.headers_for(ref, "http://127.0.0.1:8080/x")


@pytest.fixture
def key_endpoint() -> Iterator[tuple[KeyJwtEndpoint, bytes]]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = ECKey.import_key(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with serve(KeyJwtEndpoint("client", public, "ES256")) as endpoint:
        yield endpoint, pem


def test_a_token_is_fetched_only_from_an_allowed_token_endpoint(
    store: SecretStore, key_endpoint: tuple[KeyJwtEndpoint, bytes]
) -> None:
    endpoint, pem = key_endpoint
    token_origin = upstream_origin(endpoint.url)
    store.put("crm", SecretKind.OAUTH_CLIENT_KEY, OAuthClientKey.from_pem("client", pem),
              allowed_upstreams=[UPSTREAM])  # fmt: skip
    store.put("crm-basic", SecretKind.OAUTH_CLIENT, OAuthClientSecret("client", Secret("cs-1")),
              allowed_upstreams=[UPSTREAM])  # fmt: skip
    broker = CredentialBroker(store)
    keyed = OAuthClientCredentials("crm", endpoint.url, auth_method="private_key_jwt",
                                   allow_private_network=True)  # fmt: skip
    basic = OAuthClientCredentials("crm-basic", endpoint.url, allow_private_network=True)
    # the upstream is allowed, its token endpoint is not: nothing is sent there
    for ref in (keyed, basic):
        with pytest.raises(
            SecretNotAllowed, match=re.escape(f"not to the token endpoint {token_origin}")
        ):
            broker.headers_for(ref, UPSTREAM)
    assert endpoint.requests == []
    # the token endpoint allowed too: the fetch goes, and the token is injected
    store.rotate("crm", OAuthClientKey.from_pem("client", pem),
                 allowed_upstreams=[UPSTREAM, token_origin])  # fmt: skip
    assert broker.headers_for(keyed, UPSTREAM + "/v1") == (
        {"Authorization": "Bearer kjwt-at-1"},
        "crm@2",
    )
    # but never toward another upstream, not even with the token already cached
    with pytest.raises(SecretNotAllowed):
        broker.headers_for(keyed, "https://evil.example")
    assert len(endpoint.requests) == 1


def test_the_start_check_names_the_configuration_key(
    store: SecretStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.put("github", SecretKind.API_KEY, Secret(API_KEY), allowed_upstreams=[UPSTREAM])
    store.put("crm", SecretKind.OAUTH_CLIENT, OAuthClientSecret("c", Secret("cs")),
              allowed_upstreams=[UPSTREAM])  # fmt: skip
    store.put("open", SecretKind.API_KEY, Secret(API_KEY))
    broker = CredentialBroker(store)
    key = ApiKeyInjection("github")
    broker.check_destinations([("upstreams.a.credential", key, UPSTREAM + "/base")])
    broker.check_destinations([("upstreams.o.credential", ApiKeyInjection("open"), "http://x")])
    with pytest.raises(SecretNotAllowed, match=r"^upstreams\.b\.credential: secret github@1"):
        broker.check_destinations([("upstreams.b.credential", key, "http://10.0.0.9:8080")])
    oauth = OAuthClientCredentials("crm", "https://auth.example.com/token")
    with pytest.raises(SecretNotAllowed, match=r"not to the token endpoint https://auth\.example"):
        broker.check_destinations([("servers[0].credential", oauth, UPSTREAM)])
    caplog.set_level(logging.WARNING)
    broker.check_destinations([("upstreams.m.credential", ApiKeyInjection("missing"), "http://x")])
    assert "secret missing cannot be checked now" in caplog.text


def test_the_token_endpoint_error_path_is_not_taken_for_a_refusal(
    store: SecretStore, key_endpoint: tuple[KeyJwtEndpoint, bytes]
) -> None:
    """A refused destination is a store refusal (audited as the injection failures
    are), answered from memory like a failed fetch, never a token endpoint error."""
    endpoint, pem = key_endpoint
    store.put("crm", SecretKind.OAUTH_CLIENT_KEY, OAuthClientKey.from_pem("client", pem),
              allowed_upstreams=[UPSTREAM])  # fmt: skip
    ref = OAuthClientCredentials("crm", endpoint.url, auth_method="private_key_jwt",
                                 allow_private_network=True)  # fmt: skip
    broker = CredentialBroker(store)
    for _ in range(2):
        with pytest.raises(SecretStoreError) as refused:
            broker.headers_for(ref, UPSTREAM)
        assert not isinstance(refused.value, TokenEndpointError)
    assert endpoint.requests == []


@pytest.fixture
def header_servers() -> Iterator[tuple[list[str | None], list[str]]]:
    """Two real HTTP servers on loopback recording the X-Api-Key each request carried;
    the list of what they saw, and their two URLs."""
    seen: list[str | None] = []

    class Recording(Handler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("X-Api-Key"))
            self.answer(204)

    with serve_http(Recording) as first, serve_http(Recording) as second:
        yield seen, [f"http://127.0.0.1:{port}/mcp" for port in (first, second)]


def test_the_mcp_gateways_credential_hook_checks_each_requests_origin(
    store: SecretStore, header_servers: tuple[list[str | None], list[str]]
) -> None:
    """The MCP gateway adds the credential per upstream request (``_BrokeredAuth``):
    toward the allowed origin it is sent; toward another, the request goes without it
    and the call learns why (its ``UpstreamUse.error``: the call fails, audited)."""
    seen, (allowed_url, other_url) = header_servers
    store.put("mcp-key", SecretKind.API_KEY, Secret(API_KEY),
              allowed_upstreams=[upstream_origin(allowed_url)])  # fmt: skip
    auth = _BrokeredAuth(CredentialBroker(store), ApiKeyInjection("mcp-key", header="X-Api-Key"))

    async def main() -> list[UpstreamUse]:
        uses = []
        async with httpx2.AsyncClient(auth=auth) as client:
            for url in (allowed_url, other_url):
                use = UpstreamUse()
                token = UPSTREAM_USE.set(use)
                try:
                    await client.get(url)
                finally:
                    UPSTREAM_USE.reset(token)
                uses.append(use)
        return uses

    sent, refused = asyncio.run(main())
    assert seen == [API_KEY, None]
    assert (sent.label, sent.error) == ("mcp-key@1", None)
    assert refused.label is None
    assert refused.error is not None
    assert "mcp-key@1 may be sent only to" in refused.error


def test_the_start_check_refuses_a_store_sealed_under_another_key(
    store: SecretStore, key: MasterKey, tmp_path: Path
) -> None:
    """After a rekey, a gateway given the previous key does not start: it would
    refuse every injection. The message names the two key ids, never a key."""
    store.put("github", SecretKind.API_KEY, Secret(API_KEY))
    new_text = MasterKey.generate_text()
    new = MasterKey.from_text(new_text)
    store.rekey(new)
    stale = CredentialBroker(SecretStore(store.path, key, reload_interval=0.0))
    uses = [("upstreams.a.credential", ApiKeyInjection("github"), UPSTREAM)]
    with pytest.raises(SecretStoreError, match="does not open") as refused:
        stale.check_destinations(uses)
    assert new.id in refused.value.detail
    assert key.id in refused.value.detail
    assert new_text not in refused.value.detail + str(refused.value.hint)
    with pytest.raises(SecretStoreError, match="does not open"):
        stale.check_destinations([])  # whatever the configuration uses
    CredentialBroker(SecretStore(store.path, new, reload_interval=0.0)).check_destinations(uses)
    # a store that does not exist yet is no refusal: its secrets are put later
    CredentialBroker(SecretStore(tmp_path / "none.json", new)).check_destinations(uses)
