"""The OAuth endpoints over real HTTP: issuance, every refusal of the token endpoint,
introspection, revocation (RFC 7009 and admin), rotation, sealing, and interop with
third-party libraries (authlib as the client, PyJWT as the verifier)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from sqlalchemy import select
from tests.api.oauth_support import RESOURCE, OAuthLive, oauth_live

from agentiam.adapters.storage import tables as t
from agentiam.adapters.verification import RemoteVerifier
from agentiam.core.access.admin_keys import Role
from agentiam.core.identities.lifecycle import LifecycleAction
from agentiam.errors import OAuthError
from agentiam.sdk import AgentClient, AgentKey, client_assertion, dpop_proof
from agentiam.services.context import CallContext

CTX = CallContext.system("test")


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with oauth_live(sqlite_url) as server:
        yield server


def _error(r: httpx.Response) -> str:
    return str(r.json()["error"])


def _jwks_verify(live: OAuthLive, token: str, *, audience: str = RESOURCE) -> dict[str, Any]:
    """Verify with PyJWT, an independent JOSE library, against the published JWKS."""
    jwks = pyjwt.PyJWKClient(live.url + "/oauth2/jwks")
    signing_key = jwks.get_signing_key_from_jwt(token)
    header = pyjwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    claims: dict[str, Any] = pyjwt.decode(
        token,
        signing_key.key,
        algorithms=[header["alg"]],
        audience=audience,
        issuer=live.url,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )
    return claims


# -- done when: a stock OAuth client gets a DPoP-bound 5-minute token ------------------


def test_authlib_client_gets_a_dpop_bound_five_minute_token_verified_by_pyjwt(
    live: OAuthLive,
) -> None:
    session = OAuth2Session(
        client_id=live.agent_id,
        client_secret=live.key.key,  # authlib takes the private key here for private_key_jwt
        token_endpoint_auth_method="private_key_jwt",
        scope="tools:read",
    )
    # authlib's assertions live an hour by default; RFC 7523 lets us demand less, and we
    # allow at most 5 minutes (see test_authlib_default_hour_long_assertion_is_refused).
    assertion_claims = {"exp": int(time.time()) + 120}
    session.register_client_auth_method(
        PrivateKeyJWT(live.token_endpoint, alg="ES256", claims=assertion_claims)
    )
    token = session.fetch_token(
        live.token_endpoint,
        grant_type="client_credentials",
        resource=RESOURCE,
        headers={"DPoP": live.proof()},
    )
    assert token["token_type"] == "DPoP"
    assert token["expires_in"] == 300
    claims = _jwks_verify(live, token["access_token"])
    assert claims["sub"] == claims["client_id"] == live.agent_id
    assert claims["scope"] == "tools:read"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["cnf"] == {"jkt": live.dpop_key.key.thumbprint()}


def test_authlib_default_hour_long_assertion_is_refused(live: OAuthLive) -> None:
    from authlib.integrations.base_client.errors import OAuthError as AuthlibError

    session = OAuth2Session(
        client_id=live.agent_id,
        client_secret=live.key.key,
        token_endpoint_auth_method="private_key_jwt",
    )
    session.register_client_auth_method(PrivateKeyJWT(live.token_endpoint, alg="ES256"))
    with pytest.raises(AuthlibError, match="invalid_client"):
        session.fetch_token(
            live.token_endpoint, grant_type="client_credentials", headers={"DPoP": live.proof()}
        )


def test_metadata_uses_the_rfc_field_names(live: OAuthLive) -> None:
    meta = httpx.get(live.url + "/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == live.url
    assert meta["token_endpoint"] == live.url + "/oauth2/token"
    assert meta["jwks_uri"] == live.url + "/oauth2/jwks"
    assert meta["introspection_endpoint"] == live.url + "/oauth2/introspect"
    assert meta["revocation_endpoint"] == live.url + "/oauth2/revoke"
    assert meta["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert meta["grant_types_supported"] == [
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    ]
    assert set(meta["dpop_signing_alg_values_supported"]) == {"ES256", "Ed25519"}


def test_sdk_client_gets_tokens_and_signs_proofs(live: OAuthLive) -> None:
    agent = AgentClient(live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE)
    token = agent.token()
    assert token.token_type == "DPoP"
    assert agent.token() is token  # cached until close to expiry
    assert _jwks_verify(live, token.value)["scope"] == "tools:read tools:write"
    agent.close()


# -- refusals at the token endpoint --------------------------------------------------


def test_replayed_assertion_is_refused(live: OAuthLive) -> None:
    form = live.form()
    assert live.request_token(form=form).status_code == 200
    again = live.request_token(form=form)
    assert (again.status_code, _error(again)) == (401, "invalid_client")


def test_replayed_dpop_proof_is_refused(live: OAuthLive) -> None:
    proof = live.proof()
    assert live.request_token(dpop=proof).status_code == 200
    again = live.request_token(dpop=proof)
    assert (again.status_code, _error(again)) == (400, "invalid_dpop_proof")


def test_missing_and_duplicated_dpop_proofs_are_refused(live: OAuthLive) -> None:
    missing = live.request_token(dpop=None)
    assert _error(missing) == "invalid_dpop_proof"  # DPoP is required by default
    twice = live.request_token(dpop=[live.proof(), live.proof()])
    assert _error(twice) == "invalid_dpop_proof"


def test_suspending_the_agent_makes_the_next_request_fail(live: OAuthLive) -> None:
    assert live.request_token().status_code == 200
    live.container.agents.transition(CTX, live.agent_id, LifecycleAction.SUSPEND, "incident")
    r = live.request_token()
    assert (r.status_code, _error(r)) == (401, "invalid_client")


def test_retiring_the_key_makes_the_next_request_fail(live: OAuthLive) -> None:
    key = live.container.agents.keys(live.agent_id)[0]
    live.container.agents.retire_key(CTX, live.agent_id, key.id, "rotated")
    r = live.request_token()
    assert (r.status_code, _error(r)) == (401, "invalid_client")


def test_assertion_signed_by_an_unregistered_key_is_refused(live: OAuthLive) -> None:
    stranger = AgentKey.generate()
    form = live.form(
        client_assertion=client_assertion(stranger, client_id=live.agent_id, audience=live.url)
    )
    assert _error(live.request_token(form=form)) == "invalid_client"


def test_scope_beyond_entitlement_is_invalid_scope(live: OAuthLive) -> None:
    r = live.request_token(form=live.form(scope="tools:read payments:write"))
    assert (r.status_code, _error(r)) == (400, "invalid_scope")
    events = live.container.audit.find(_denials())
    assert any("payments:write" in (e.reason or "") for e in events.items)


def _denials() -> Any:
    from agentiam.ports import AuditQuery

    return AuditQuery(limit=50, type="token.denied")


def test_resource_not_entitled_is_invalid_target(live: OAuthLive) -> None:
    r = live.request_token(form=live.form(resource="https://payments.example.com"))
    assert (r.status_code, _error(r)) == (400, "invalid_target")


def test_repeated_parameters_and_client_secrets_are_refused(live: OAuthLive) -> None:
    body = httpx.QueryParams(live.form()).add("scope", "tools:read").add("scope", "tools:write")
    r = httpx.post(
        live.token_endpoint,
        content=str(body),
        headers={"Content-Type": "application/x-www-form-urlencoded", "DPoP": live.proof()},
    )
    assert _error(r) == "invalid_request"
    secret = live.request_token(form=live.form(client_secret="hunter2"))
    assert _error(secret) == "invalid_client"


def test_wrong_grant_and_content_type_are_refused(live: OAuthLive) -> None:
    assert _error(live.request_token(form=live.form(grant_type="password"))) == (
        "unsupported_grant_type"
    )
    r = httpx.post(live.token_endpoint, json=live.form(), headers={"DPoP": live.proof()})
    assert (r.status_code, _error(r)) == (400, "invalid_request")


def test_errors_carry_no_internal_detail_and_no_store(live: OAuthLive) -> None:
    r = live.request_token(form=live.form(client_assertion="a.b.c"))
    assert r.json() == {
        "error": "invalid_client",
        "error_description": "client authentication failed",
    }
    assert r.headers["cache-control"] == "no-store"


def test_bearer_token_only_for_agents_that_do_not_require_dpop(live: OAuthLive) -> None:
    from agentiam.services.agents import AgentChanges

    live.container.agents.update(CTX, live.agent_id, AgentChanges(dpop_required=False))
    r = live.request_token(dpop=None)
    assert r.status_code == 200
    assert r.json()["token_type"] == "Bearer"
    assert "cnf" not in _jwks_verify(live, r.json()["access_token"])


def test_server_nonce_flow(sqlite_url: str) -> None:
    with oauth_live(sqlite_url, dpop_nonce_required=True) as live:
        first = live.request_token()
        assert (first.status_code, _error(first)) == (400, "use_dpop_nonce")
        nonce = first.headers["DPoP-Nonce"]
        tampered = nonce[:-2] + ("AA" if nonce[-2:] != "AA" else "BB")
        forged = live.request_token(dpop=live.proof(nonce=tampered))
        assert _error(forged) == "use_dpop_nonce"
        ok = live.request_token(dpop=live.proof(nonce=nonce))
        assert ok.status_code == 200, ok.text
        # the SDK retries once with the nonce it was given
        agent = AgentClient(live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE)
        assert agent.token().token_type == "DPoP"


def test_ed25519_signing_uses_the_fully_specified_name(sqlite_url: str) -> None:
    with oauth_live(sqlite_url, signing_alg="Ed25519") as live:
        token = live.token()
        assert pyjwt.get_unverified_header(token)["alg"] == "Ed25519"
        jwk = httpx.get(live.url + "/oauth2/jwks").json()["keys"][0]
        assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "Ed25519")


# -- introspection and revocation ----------------------------------------------------


def _introspect(live: OAuthLive, token: str, key: str | None = None) -> httpx.Response:
    return httpx.post(
        live.url + "/oauth2/introspect",
        data={"token": token},
        headers={"Authorization": f"Bearer {key or live.admin}"},
    )


def test_introspection_reports_active_tokens_and_needs_a_key(live: OAuthLive) -> None:
    token = live.token(scope="tools:read")
    verifier_key = live.container.admin_keys.create(
        CTX, name="gw", role=Role.VERIFIER, sources=["gateway/gw"]
    ).secret
    body = _introspect(live, token, verifier_key).json()
    assert body["active"] is True
    assert body["client_id"] == live.agent_id
    assert body["scope"] == "tools:read"
    assert body["token_type"] == "DPoP"
    assert body["cnf"]["jkt"] == live.dpop_key.key.thumbprint()
    assert _introspect(live, "not-a-token").json() == {"active": False}
    anonymous = httpx.post(live.url + "/oauth2/introspect", data={"token": token})
    assert anonymous.status_code == 401


def test_client_revokes_its_own_token_rfc7009(live: OAuthLive) -> None:
    token = live.token()
    form = {
        "token": token,
        "token_type_hint": "access_token",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": client_assertion(live.key, client_id=live.agent_id, audience=live.url),
    }
    assert httpx.post(live.url + "/oauth2/revoke", data=form).status_code == 200
    assert _introspect(live, token).json() == {"active": False}
    # an invalid token is not an error (RFC 7009 section 2.2)
    form["token"] = "garbage"
    form["client_assertion"] = client_assertion(
        live.key, client_id=live.agent_id, audience=live.url
    )
    assert httpx.post(live.url + "/oauth2/revoke", data=form).status_code == 200


def test_a_client_cannot_revoke_another_clients_token(live: OAuthLive) -> None:
    from agentiam.services.agents import NewAgent

    other_key = AgentKey.generate()
    other = live.container.agents.register(
        CTX,
        NewAgent(
            name="other-bot",
            owners=[live.owner_id],
            purpose="x",
            environment="production",
            activate=True,
            keys=[other_key.public_jwk()],
        ),
    )
    victim = live.token()
    form = {
        "token": victim,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": client_assertion(other_key, client_id=other.id, audience=live.url),
    }
    r = httpx.post(live.url + "/oauth2/revoke", data=form)
    assert (r.status_code, _error(r)) == (400, "unauthorized_client")
    assert _introspect(live, victim).json()["active"] is True


def test_suspension_deactivates_tokens_at_introspection(live: OAuthLive) -> None:
    token = live.token()
    live.container.agents.transition(CTX, live.agent_id, LifecycleAction.SUSPEND, "incident")
    assert _introspect(live, token).json() == {"active": False}


def test_remote_verifier_learns_of_revocations_within_one_second(live: OAuthLive) -> None:
    """A verifier in its own client (a gateway) long-polls the feed; the admin API
    revokes; the verifier refuses the token in under a second."""
    gateway_key = live.container.admin_keys.create(
        CTX, name="gw", role=Role.VERIFIER, sources=["gateway/gw"]
    ).secret
    remote = RemoteVerifier(live.url, RESOURCE, admin_key=gateway_key).start()
    try:
        agent = AgentClient(live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE)
        token = agent.token().value
        url = RESOURCE + "/tools/call"

        def check() -> None:
            remote.verifier.verify_request(
                authorization=[f"DPoP {token}"],
                dpop=[dpop_proof(agent.dpop_key, method="POST", url=url, access_token=token)],
                method="POST",
                url=url,
                now=int(time.time()),
            )

        check()  # valid before
        time.sleep(0.3)  # let the long poll settle into its wait
        claims = pyjwt.decode(token, options={"verify_signature": False})
        with live.admin_client() as admin:
            started = time.monotonic()
            r = admin.post("/v1/tokens/revoke", json={"jti": claims["jti"], "reason": "leaked"})
            assert r.status_code == 200, r.text
        refusal = _refused_within(check, started, 1.0)
        assert (refusal.error, refusal.reason) == ("invalid_token", "token revoked")
    finally:
        remote.close()


def test_agent_revocation_reaches_the_remote_verifier(live: OAuthLive) -> None:
    gateway_key = live.container.admin_keys.create(
        CTX, name="gw", role=Role.VERIFIER, sources=["gateway/gw"]
    ).secret
    remote = RemoteVerifier(live.url, RESOURCE, admin_key=gateway_key).start()
    try:
        token = live.token()
        remote.verifier.verify_token(token, now=int(time.time()))
        with live.admin_client() as admin:
            r = admin.post(f"/v1/agents/{live.agent_id}/revoke-tokens", json={"reason": "x"})
            assert r.status_code == 200
        refusal = _refused_within(
            lambda: remote.verifier.verify_token(token, now=int(time.time())),
            time.monotonic(),
            1.0,
        )
        assert refusal.reason == "token revoked"
    finally:
        remote.close()


def _refused_within(check: Any, started: float, seconds: float) -> OAuthError:
    """Call ``check`` until it raises OAuthError; fail if that takes ``seconds``."""
    while time.monotonic() - started < seconds:
        try:
            check()
        except OAuthError as exc:
            if time.monotonic() - started < seconds:
                return exc
            break
        time.sleep(0.01)
    pytest.fail(f"the verifier still accepted the token after {seconds} s")


# -- signing keys --------------------------------------------------------------------


def test_rotation_publishes_before_signing_and_keeps_old_tokens_valid(live: OAuthLive) -> None:
    old_token = live.token()
    old_kid = pyjwt.get_unverified_header(old_token)["kid"]
    with live.admin_client() as admin:
        r = admin.post("/v1/signing-keys/rotate", json={})
        assert r.status_code == 201, r.text
        new = r.json()
    assert new["state"] == "pending"
    kids = {k["kid"] for k in httpx.get(live.url + "/oauth2/jwks").json()["keys"]}
    assert kids == {old_kid, new["kid"]}  # published before it signs
    assert pyjwt.get_unverified_header(live.token())["kid"] == old_kid  # not signing yet
    _jwks_verify(live, old_token)
    with live.admin_client() as admin:
        immediate = admin.post("/v1/signing-keys/rotate", json={"immediate": True}).json()
        assert immediate["state"] == "signing"
        assert pyjwt.get_unverified_header(live.token())["kid"] == immediate["kid"]
        _jwks_verify(live, old_token)  # the replaced key stays published
        retired = admin.post(f"/v1/signing-keys/{old_kid}/retire", json={"reason": "leak"})
        assert retired.json()["state"] == "retired"
    assert _introspect(live, old_token).json() == {"active": False}
    kids = {k["kid"] for k in httpx.get(live.url + "/oauth2/jwks").json()["keys"]}
    assert old_kid not in kids


def test_private_keys_are_sealed_at_rest(live: OAuthLive) -> None:
    live.token()
    with live.container.engine.connect() as conn:
        rows = list(conn.execute(select(t.signing_keys)))
    assert rows
    for row in rows:
        assert row.sealed_private.startswith("v1.")
        assert '"d"' not in row.sealed_private
        assert '"d"' not in row.public_jwk


def test_wrong_master_key_refuses_to_sign(sqlite_url: str) -> None:
    from agentiam.core.credentials.sealing import MasterKey

    with oauth_live(sqlite_url) as live:
        live.token()  # creates and seals the first key
    with oauth_live(sqlite_url, master_key=MasterKey.generate_text(), bootstrap=False) as other:
        # same database, another master key: the sealed key cannot be opened
        r = other.request_token()
        assert (r.status_code, _error(r)) == (503, "temporarily_unavailable")
