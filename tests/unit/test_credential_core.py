"""The pure building blocks of the credential layer: sealing under the master key,
the signing-key rotation schedule, DPoP ``htu`` normalisation, and the request values
(``scope``, ``resource``) that shape an access token."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from joserfc import jwt

from agentiam.core.credentials.access_tokens import (
    ACCESS_TOKEN_PROFILE,
    MAX_SCOPES,
    granted_scopes,
    parse_resource,
    parse_scope,
)
from agentiam.core.credentials.dpop import normalize_htu
from agentiam.core.credentials.jose import (
    JoseRejected,
    b64url_encode,
    import_public_jwk,
    parse_compact,
    verify_signature,
)
from agentiam.core.credentials.sealing import MasterKey, SealError
from agentiam.core.credentials.signing_keys import (
    SigningKey,
    generate_signing_key,
    plan_rotation,
    published_keys,
    retire_now,
    signing_key_at,
    unseal_private_key,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PUBLISH_DELAY = timedelta(hours=1)
VERIFY_FOR = timedelta(hours=1, minutes=2)  # longest token lifetime + clock skew
SECOND = timedelta(seconds=1)


# -- sealing -----------------------------------------------------------------------


@pytest.fixture
def master() -> MasterKey:
    return MasterKey(bytes(range(32)))


def test_seal_then_open_returns_the_plaintext(master: MasterKey) -> None:
    sealed = master.seal(b"private key bytes", context="signing-key/k1")
    assert b"private key bytes" not in sealed.encode()
    assert master.open(sealed, context="signing-key/k1") == b"private key bytes"


def test_sealing_twice_gives_different_ciphertexts(master: MasterKey) -> None:
    first = master.seal(b"same", context="c")
    second = master.seal(b"same", context="c")
    assert first != second
    assert master.open(first, context="c") == master.open(second, context="c") == b"same"


def test_sealed_value_names_its_master_key(master: MasterKey) -> None:
    version, master_id, _nonce, _ciphertext = master.seal(b"x", context="c").split(".")
    assert (version, master_id) == ("v1", master.id)


def test_open_with_another_master_key_fails(master: MasterKey) -> None:
    sealed = master.seal(b"secret", context="c")
    other = MasterKey(bytes(32))
    with pytest.raises(SealError, match=f"sealed under master key {master.id}"):
        other.open(sealed, context="c")


def test_open_with_another_key_claiming_the_same_id_fails(master: MasterKey) -> None:
    """Rewriting the master-key id in the sealed value does not get past the AEAD."""
    other = MasterKey(bytes(32))
    version, _id, nonce, ciphertext = master.seal(b"secret", context="c").split(".")
    relabelled = ".".join((version, other.id, nonce, ciphertext))
    with pytest.raises(SealError, match="altered"):
        other.open(relabelled, context="c")


@pytest.mark.parametrize("part", [2, 3], ids=["nonce", "ciphertext"])
def test_tampered_sealed_value_fails(master: MasterKey, part: int) -> None:
    parts = master.seal(b"secret value", context="c").split(".")
    segment = parts[part]
    parts[part] = ("B" if segment[0] == "A" else "A") + segment[1:]
    with pytest.raises(SealError, match="altered"):
        master.open(".".join(parts), context="c")


def test_truncated_ciphertext_fails(master: MasterKey) -> None:
    sealed = master.seal(b"secret value", context="c")
    with pytest.raises(SealError):
        master.open(sealed[:-4], context="c")


@pytest.mark.parametrize(
    "sealed",
    ["", "v1", "v2.x.y.z", "v1.a.b", "v1.a.b.c.d"],
    ids=["empty", "short", "version", "three-parts", "five-parts"],
)
def test_malformed_sealed_value_fails(master: MasterKey, sealed: str) -> None:
    with pytest.raises(SealError):
        master.open(sealed, context="c")


def test_sealed_value_moved_to_another_record_fails(master: MasterKey) -> None:
    sealed = master.seal(b"secret", context="signing-key/k1")
    with pytest.raises(SealError, match="another record"):
        master.open(sealed, context="signing-key/k2")


def test_master_key_repr_hides_the_secret() -> None:
    secret = bytes(range(100, 132))
    key = MasterKey(secret)
    text = repr(key) + str(key)
    assert key.id in text
    for form in (secret.hex(), b64url_encode(secret), repr(secret)):
        assert form not in text


def test_master_key_text_form_round_trips() -> None:
    text = MasterKey.generate_text()
    key = MasterKey.from_text(f"  {text}\n")
    assert MasterKey.from_text(text).open(key.seal(b"x", context="c"), context="c") == b"x"


@pytest.mark.parametrize("text", ["", "short", b64url_encode(bytes(31)), b64url_encode(bytes(33))])
def test_master_key_must_be_32_bytes(text: str) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        MasterKey.from_text(text)


def test_derived_keys_differ_per_purpose_and_master(master: MasterKey) -> None:
    nonce_key = master.derive("dpop-nonce")
    assert len(nonce_key) == 32
    assert nonce_key == master.derive("dpop-nonce")
    assert nonce_key != master.derive("other")
    assert nonce_key != MasterKey(bytes(32)).derive("dpop-nonce")


# -- signing keys and rotation -----------------------------------------------------


def _key(master: MasterKey, *, created: datetime, delay: timedelta = timedelta(0)) -> SigningKey:
    return generate_signing_key(
        "ES256", master=master, now=created, activates_at=created + delay, created_by="test"
    )


def _apply(keys: list[SigningKey], changed: list[SigningKey]) -> list[SigningKey]:
    by_kid = {k.kid: k for k in keys}
    by_kid.update({k.kid: k for k in changed})
    return list(by_kid.values())


@pytest.mark.parametrize("alg", ["ES256", "Ed25519"])
def test_generated_key_signs_tokens_its_published_jwk_verifies(master: MasterKey, alg: str) -> None:
    key = generate_signing_key(alg, master=master, now=T0, activates_at=T0, created_by="test")
    assert "d" not in key.public_jwk
    assert key.public_jwk["kid"] == key.kid
    private = unseal_private_key(key, master)
    assert private.thumbprint() == key.kid
    token = jwt.encode(
        {"typ": "at+jwt", "alg": alg, "kid": key.kid}, {"sub": "x"}, private, algorithms=[alg]
    )
    verify_signature(
        parse_compact(token, ACCESS_TOKEN_PROFILE),
        import_public_jwk(key.public_jwk, alg, kid=key.kid),
    )


def test_signing_key_private_half_needs_the_master_key(master: MasterKey) -> None:
    key = _key(master, created=T0)
    secret_scalar = str(unseal_private_key(key, master).as_dict(private=True)["d"])
    assert "d" not in key.public_jwk
    assert secret_scalar not in key.sealed_private
    assert secret_scalar not in json.dumps(dict(key.public_jwk))
    with pytest.raises(SealError):
        unseal_private_key(key, MasterKey(bytes(32)))


def test_signing_key_refuses_other_algorithms(master: MasterKey) -> None:
    with pytest.raises(ValueError, match="signing algorithm"):
        generate_signing_key("RS256", master=master, now=T0, activates_at=T0, created_by="t")


def test_rotation_publishes_the_new_key_before_it_signs(master: MasterKey) -> None:
    old = _key(master, created=T0)
    rotated_at = T0 + timedelta(days=30)
    new = _key(master, created=rotated_at, delay=PUBLISH_DELAY)
    keys = _apply([old, new], plan_rotation([old, new], new, verify_for=VERIFY_FOR))

    # Published at once, but the old key keeps signing until the cutover.
    assert [k.kid for k in published_keys(keys, rotated_at)] == [new.kid, old.kid]
    assert new.state(rotated_at) == "pending"
    for instant in (rotated_at, rotated_at + PUBLISH_DELAY - SECOND):
        signer = signing_key_at(keys, instant)
        assert signer is not None
        assert signer.kid == old.kid


def test_rotation_moves_signing_at_cutover_and_keeps_old_key_for_verification(
    master: MasterKey,
) -> None:
    old = _key(master, created=T0)
    rotated_at = T0 + timedelta(days=30)
    new = _key(master, created=rotated_at, delay=PUBLISH_DELAY)
    changed = plan_rotation([old, new], new, verify_for=VERIFY_FOR)
    cutover = rotated_at + PUBLISH_DELAY

    assert [k.kid for k in changed] == [old.kid]
    (old_after,) = changed
    assert old_after.deactivates_at == cutover
    assert old_after.unpublish_at == cutover + VERIFY_FOR

    keys = _apply([old, new], changed)
    signer = signing_key_at(keys, cutover)
    assert signer is not None
    assert signer.kid == new.kid
    assert old_after.state(cutover) == "verify-only"
    last_moment = cutover + VERIFY_FOR - SECOND
    assert {k.kid for k in published_keys(keys, last_moment)} == {old.kid, new.kid}
    assert [k.kid for k in published_keys(keys, cutover + VERIFY_FOR)] == [new.kid]
    assert old_after.state(cutover + VERIFY_FOR) == "retired"


def test_rotation_leaves_keys_already_stopping_earlier_alone(master: MasterKey) -> None:
    oldest = _key(master, created=T0)
    oldest = replace(
        oldest, deactivates_at=T0 + timedelta(days=1), unpublish_at=T0 + timedelta(days=2)
    )
    new = _key(master, created=T0 + timedelta(days=30), delay=PUBLISH_DELAY)
    assert plan_rotation([oldest, new], new, verify_for=VERIFY_FOR) == []


def test_rotation_shortens_a_later_scheduled_deactivation(master: MasterKey) -> None:
    old = _key(master, created=T0)
    new = _key(master, created=T0 + timedelta(days=30), delay=PUBLISH_DELAY)
    first = plan_rotation([old, new], new, verify_for=VERIFY_FOR)
    newer = _key(master, created=T0 + timedelta(days=30, minutes=10), delay=timedelta(minutes=5))
    second = plan_rotation([*first, new], newer, verify_for=VERIFY_FOR)
    assert {k.kid: k.deactivates_at for k in second} == {
        old.kid: newer.activates_at,
        new.kid: newer.activates_at,
    }


def test_signing_key_at_prefers_the_latest_activated(master: MasterKey) -> None:
    first = _key(master, created=T0)
    second = _key(master, created=T0 + timedelta(days=1))
    assert signing_key_at([first, second], T0 + timedelta(hours=1)) == first
    assert signing_key_at([first, second], T0 + timedelta(days=2)) == second
    assert signing_key_at([first, second], T0 - SECOND) is None


def test_retire_now_unpublishes_immediately(master: MasterKey) -> None:
    key = _key(master, created=T0)
    compromised_at = T0 + timedelta(days=3)
    retired = retire_now(key, compromised_at)
    assert not retired.is_published(compromised_at)
    assert not retired.can_sign(compromised_at)
    assert retired.state(compromised_at) == "retired"
    assert published_keys([retired], compromised_at) == []
    assert signing_key_at([retired], compromised_at) is None
    assert retired.is_published(compromised_at - SECOND)  # history stays truthful


def test_retire_now_never_extends_a_schedule(master: MasterKey) -> None:
    old = _key(master, created=T0)
    new = _key(master, created=T0 + timedelta(days=30), delay=PUBLISH_DELAY)
    (scheduled,) = plan_rotation([old, new], new, verify_for=VERIFY_FOR)
    assert scheduled.unpublish_at is not None
    later = scheduled.unpublish_at + timedelta(days=1)
    retired = retire_now(scheduled, later)
    assert retired.unpublish_at == scheduled.unpublish_at
    assert retired.deactivates_at == scheduled.deactivates_at


def test_retiring_the_only_signing_key_leaves_no_signer(master: MasterKey) -> None:
    old = _key(master, created=T0)
    new = _key(master, created=T0 + timedelta(days=30), delay=PUBLISH_DELAY)
    keys = _apply([old, new], plan_rotation([old, new], new, verify_for=VERIFY_FOR))
    at = T0 + timedelta(days=31)
    keys = [retire_now(k, at) if k.kid == new.kid else k for k in keys]
    assert signing_key_at(keys, at) is None


# -- htu normalisation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("https://rs.example/api", "https://rs.example/api"),
        ("HTTPS://RS.Example/api", "https://rs.example/api"),
        ("https://rs.example:443/api", "https://rs.example/api"),
        ("http://rs.example:80/api", "http://rs.example/api"),
        ("http://rs.example:443/api", "http://rs.example:443/api"),
        ("https://rs.example:8443/api", "https://rs.example:8443/api"),
        ("https://rs.example", "https://rs.example/"),
        ("https://rs.example/api?x=1#frag", "https://rs.example/api"),
        ("https://rs.example/%7Euser/%61", "https://rs.example/~user/a"),
        ("https://rs.example/a%2fb", "https://rs.example/a%2Fb"),
        ("https://rs.example/a%20b", "https://rs.example/a%20b"),
        ("https://[::1]:443/x", "https://[::1]/x"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
        ("https://rs.example/API", "https://rs.example/API"),
    ],
)
def test_normalize_htu(url: str, normal: str) -> None:
    assert normalize_htu(url) == normal


@pytest.mark.parametrize(
    "url",
    [
        "ftp://rs.example/api",
        "javascript:alert(1)",
        "/api",
        "rs.example/api",
        "https:///api",
        "https://user@rs.example/api",
        "https://user:pw@rs.example/api",
        "https://rs.example:99999/api",
        "https://rs.example:port/api",
        "https://[::1/api",
        "",
    ],
)
def test_normalize_htu_refuses_unusable_uris(url: str) -> None:
    with pytest.raises(JoseRejected, match="htu"):
        normalize_htu(url)


def test_normalize_htu_keeps_distinct_hosts_distinct() -> None:
    assert normalize_htu("https://rs.example/api") != normalize_htu("https://rs.example.evil/api")
    assert normalize_htu("https://rs.example/api") != normalize_htu("http://rs.example/api")


# -- scope and resource ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "scopes"),
    [
        (None, None),
        ("read", ("read",)),
        ("read write", ("read", "write")),
        ("write read write", ("write", "read")),
        ("urn:x:read files/*.txt !#$%&'()", ("urn:x:read", "files/*.txt", "!#$%&'()")),
        (" ".join(f"s{i}" for i in range(MAX_SCOPES)), tuple(f"s{i}" for i in range(MAX_SCOPES))),
    ],
    ids=["absent", "one", "two", "duplicate", "punctuation", "max"],
)
def test_parse_scope_accepts_scope_tokens(
    value: str | None, scopes: tuple[str, ...] | None
) -> None:
    assert parse_scope(value) == scopes


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "read  write",
        " read",
        "read ",
        "read\twrite",
        "read\nwrite",
        'read "write"',
        "read\\write",
        "lecture-\u00e9crite",
        "read\x00",
        "x" * 129,
        " ".join(f"s{i}" for i in range(MAX_SCOPES + 1)),
        "x " * 5000,
    ],
    ids=[
        "empty",
        "space",
        "double-space",
        "leading",
        "trailing",
        "tab",
        "newline",
        "quote",
        "backslash",
        "non-ascii",
        "nul",
        "129-chars",
        "65-scopes",
        "huge",
    ],
)
def test_parse_scope_refuses_malformed_values(value: str) -> None:
    with pytest.raises(ValueError, match="scope"):
        parse_scope(value)


@pytest.mark.parametrize(
    "value",
    [
        "https://rs.example",
        "https://rs.example/api/v1?tenant=7",
        "urn:example:resource",
        "http://x",
    ],
)
def test_parse_resource_accepts_absolute_uris(value: str) -> None:
    assert parse_resource(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "rs.example",
        "/api",
        "//rs.example/api",
        "https://rs.example/api#frag",
        "https://rs.example/#",
        "https://rs.example/a b",
        "https://rs.example/\x00",
        "https://rs.example/\n",
        "https://[::1/api",
        "https:",
        "https://rs.example/" + "a" * 500,
    ],
    ids=[
        "empty",
        "no-scheme",
        "relative",
        "network-path",
        "fragment",
        "empty-fragment",
        "space",
        "nul",
        "newline",
        "bad-ipv6",
        "scheme-only",
        "too-long",
    ],
)
def test_parse_resource_refuses_malformed_values(value: str) -> None:
    with pytest.raises(ValueError, match="resource"):
        parse_resource(value)


def test_granted_scopes_without_request_is_the_whole_entitlement() -> None:
    assert granted_scopes(None, {"write", "read"}) == ("read", "write")
    assert granted_scopes(None, set()) == ()


def test_granted_scopes_grants_an_entitled_subset_as_requested() -> None:
    assert granted_scopes(("write",), {"read", "write"}) == ("write",)
    assert granted_scopes(("write", "read"), {"read", "write"}) == ("write", "read")


@pytest.mark.parametrize(
    "requested",
    [("admin",), ("read", "admin"), ("READ",), ("read:all",)],
)
def test_granted_scopes_refuses_anything_beyond_the_entitlement(
    requested: tuple[str, ...],
) -> None:
    assert granted_scopes(requested, {"read", "write"}) is None


def test_dpop_proof_from_a_webcrypto_key_with_ext_and_key_ops_is_accepted() -> None:
    from joserfc import jwt as jose_jwt

    from agentiam.core.credentials.dpop import DpopWindow, validate_proof
    from agentiam.sdk import AgentKey

    key = AgentKey.generate()
    public = {k: v for k, v in key.public_jwk().items() if k in ("kty", "crv", "x", "y")}
    header = {
        "typ": "dpop+jwt",
        "alg": "ES256",
        "jwk": {**public, "ext": True, "key_ops": ["verify"]},
    }
    claims = {"jti": "j1", "htm": "GET", "htu": "https://rs.example/x", "iat": 1_000}
    proof = jose_jwt.encode(header, claims, key.key, algorithms=["ES256"])
    checked = validate_proof(
        proof, method="GET", url="https://rs.example/x", now=1_000, window=DpopWindow()
    )
    assert checked.jkt == key.kid


def test_dpop_jwk_with_a_private_member_of_any_type_is_refused() -> None:
    from joserfc import jwt as jose_jwt

    from agentiam.core.credentials.dpop import DpopWindow, validate_proof
    from agentiam.core.credentials.jose import JoseRejected
    from agentiam.sdk import AgentKey

    key = AgentKey.generate()
    public = {k: v for k, v in key.public_jwk().items() if k in ("kty", "crv", "x", "y")}
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": {**public, "d": 12345}}
    claims = {"jti": "j1", "htm": "GET", "htu": "https://rs.example/x", "iat": 1_000}
    proof = jose_jwt.encode(header, claims, key.key, algorithms=["ES256"])
    with pytest.raises(JoseRejected, match="private key material"):
        validate_proof(
            proof, method="GET", url="https://rs.example/x", now=1_000, window=DpopWindow()
        )


def test_revocation_set_forgets_entries_once_they_expire() -> None:
    from agentiam.core.credentials.revocations import Revocation, RevocationKind, RevocationSet

    revoked = RevocationSet(max_staleness=10)
    revoked.apply(
        [
            Revocation(1, RevocationKind.TOKEN, "tok_a", cutoff=0, expires=100),
            Revocation(2, RevocationKind.AGENT, "agt_b", cutoff=50, expires=200),
        ],
        now=10,
    )
    revoked.apply([], now=99)
    assert len(revoked) == 2
    revoked.apply([], now=100)  # the token entry's expiry
    assert len(revoked) == 1
    assert not revoked.is_revoked(jti="tok_a", agent_id="agt_x", issued_at=0)
    assert revoked.is_revoked(jti="tok_z", agent_id="agt_b", issued_at=50)
    revoked.apply([], now=200)
    assert len(revoked) == 0
    assert revoked.cursor == 2


def test_a_feed_reader_of_the_base_kinds_does_not_see_the_feed_move_on_a_key_retirement() -> None:
    """The control plane holds an older reader's long poll (it names no kinds: the
    base ones) until an entry of a kind it understands arrives: a signing-key
    retirement moves the feed's cursor but not that reader's, so its poll neither
    returns early with nothing nor spins (its cursor can never reach the
    retirement's ``seq``, which it is never sent)."""
    from agentiam.core.credentials.revocations import (
        BASE_KINDS,
        Revocation,
        RevocationKind,
        RevocationSet,
    )

    revoked = RevocationSet(max_staleness=10)
    revoked.apply([Revocation(1, RevocationKind.AGENT, "agt_b", cutoff=5, expires=200)], now=10)
    revoked.apply(
        [Revocation(2, RevocationKind.SIGNING_KEY, "kid-1", cutoff=10, expires=100)], now=10
    )
    assert revoked.cursor == 2
    assert revoked.cursor_for(BASE_KINDS) == 1
    assert revoked.cursor_for(RevocationKind) == 2
    assert revoked.is_key_retired("kid-1")
    assert not revoked.is_revoked(jti="kid-1", agent_id="kid-1", issued_at=0)
    revoked.apply([Revocation(3, RevocationKind.TOKEN, "tok_a", cutoff=0, expires=300)], now=10)
    assert revoked.cursor_for(BASE_KINDS) == 3
    revoked.apply([], now=100)  # the retirement's expiry
    assert not revoked.is_key_retired("kid-1")
    assert len(revoked) == 2


def test_staleness_bounds_count_time_the_host_was_suspended() -> None:
    """The outage bound and the feeds' staleness are measured on CLOCK_BOOTTIME (Linux),
    which keeps counting while the host is suspended; CLOCK_MONOTONIC stops, so a
    suspended gateway would wake up believing the control plane had been away less
    long than it was, and keep deciding from its cache past the bound."""
    import inspect
    import time

    from agentiam.adapters.gateway.link import ControlPlaneLink
    from agentiam.adapters.verification import JwksCache, RemoteVerifier
    from agentiam.core.credentials.revocations import RevocationSet, staleness_clock

    if not hasattr(time, "CLOCK_BOOTTIME"):
        pytest.skip("CLOCK_BOOTTIME is Linux's")
    boottime = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert abs(staleness_clock() - boottime) < 0.5
    for cls in (RevocationSet, ControlPlaneLink, JwksCache, RemoteVerifier):
        default = inspect.signature(cls).parameters["monotonic"].default
        assert default is staleness_clock, cls
