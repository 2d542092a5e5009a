"""Attack tests for delegation (issue 4, item 6), over real HTTP.

Every case is tried with a raw form post to the token endpoint (or a raw request to
``POST /v1/sub-agents``), so the test controls every parameter, and is refused with
its exact wire error; each group has a positive control built the same way that is
accepted, so a refusal for the wrong reason (or no refusal) fails the test. Several
cases also check the precise reason recorded on the ``token.denied`` audit event.

One live server serves the whole module. Its chain cap is 2 (``delegation_max_depth``)
and it trusts three external issuers: one with a static JWK Set, one on-premises
issuer whose ``jwks_uri`` is on loopback with ``allow_private_network``, and two whose
``jwks_uri`` point at loopback and link-local addresses without it. Tests that change
state (suspension, revocation) create their own agents, humans and grants.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt as pyjwt
import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from tests.api.oauth_support import ASSERTION_TYPE, CTX, RESOURCE, OAuthLive, oauth_live
from tests.conftest import FakeClock

from agentiam.bootstrap import build
from agentiam.config import Settings
from agentiam.core.delegation.authorization_details import ToolCall
from agentiam.core.delegation.enforcement import token_permits
from agentiam.core.delegation.issuers import load_trusted_issuers
from agentiam.errors import InvalidInput
from agentiam.ports import AgentQuery, AuditQuery
from agentiam.sdk import AgentKey, client_assertion, dpop_proof
from agentiam.services.agents import NewAgent
from agentiam.services.grants import NewGrant
from agentiam.services.humans import NewHuman

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
OTHER = "https://other.example.com/api"
THIRD = "https://third.example.com/api"
CAP = 2

EXT_ISSUER = "https://idp.example.com"
ONPREM_ISSUER = "https://onprem-idp.example.com"
LOOPBACK_ISSUER = "https://loopback-idp.example.com"
LINK_LOCAL_ISSUER = "https://metadata-idp.example.com"
EXT_AUD = "agentiam-delegation-tests"
EXT_KID = "idp-1"

GRANT_DETAILS: list[dict[str, Any]] = [
    {
        "type": "tool_invocation",
        "tools": ["search", "send_email"],
        "locations": [RESOURCE],
        "arguments": {"q": {"max_length": 50}, "n": {"min": 0, "max": 10}},
    }
]
NARROWER_DETAILS: list[dict[str, Any]] = [
    {
        "type": "tool_invocation",
        "tools": ["search"],
        "locations": [RESOURCE],
        "arguments": {"q": {"max_length": 20}, "n": {"min": 1, "max": 5}},
    }
]


def _with(**changes: Any) -> list[dict[str, Any]]:
    """GRANT_DETAILS with some members of its one entry replaced."""
    entry = copy.deepcopy(GRANT_DETAILS[0])
    entry.update(changes)
    return [entry]


# -- JOSE helpers --------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jws(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = (
        b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    ).encode("ascii")
    return signing_input.decode("ascii") + "." + b64(sign(signing_input))


def es256_signer(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


def rs256_signer(key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def alter_signature(token: str) -> str:
    head, payload, signature = token.split(".")
    raw = bytearray(unb64(signature))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{payload}.{b64(bytes(raw))}"


def resign_with_other_key(token: str) -> str:
    """The same header (same ``kid``) and claims, signed by a key the server never had."""
    head, payload, _ = token.split(".")
    other = ec.generate_private_key(ec.SECP256R1())
    return f"{head}.{payload}.{b64(es256_signer(other)(f'{head}.{payload}'.encode()))}"


def claims_of(token: str) -> dict[str, Any]:
    return dict(pyjwt.decode(token, options={"verify_signature": False}))


def rsa_public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "n": b64(n), "e": b64(e), "kid": kid, "alg": "RS256", "use": "sig"}


# -- the world under attack ----------------------------------------------------------


@dataclass
class Party:
    """A registered agent: its client key and the key its tokens are bound to."""

    id: str
    key: AgentKey
    dpop: AgentKey = field(default_factory=AgentKey.generate)
    cached: str | None = None


@dataclass
class Scene:
    human_id: str
    planner: Party
    worker: Party  # a registered sub-agent (parent_id) of the planner
    grant_id: str


class JwksServer:
    """A plain-http JWKS endpoint on loopback that counts its requests."""

    def __init__(self, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.hits = hits
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class World:
    def __init__(
        self,
        live: OAuthLive,
        idp_key: rsa.RSAPrivateKey,
        onprem: JwksServer,
        trap: socket.socket,
    ) -> None:
        self.live = live
        self.c = live.container
        self.idp_key = idp_key
        self.onprem = onprem
        self.trap = trap  # a loopback listener no JWKS fetch may reach

    @property
    def endpoint(self) -> str:
        return self.live.token_endpoint

    # -- registry ------------------------------------------------------------------

    def agent(
        self,
        *,
        scopes: tuple[str, ...] = ("tools:read", "tools:write"),
        audiences: tuple[str, ...] = (RESOURCE, OTHER),
        parent: Party | None = None,
        ttl_seconds: int = 3600,
    ) -> Party:
        key = AgentKey.generate()
        agent = self.c.agents.register(
            CTX,
            NewAgent(
                name=f"attack-{secrets.token_hex(4)}",
                owners=[self.live.owner_id],
                purpose="delegation attack tests",
                environment="production",
                activate=True,
                keys=[key.public_jwk()],
                scopes=list(scopes),
                audiences=list(audiences),
                parent_id=parent.id if parent else None,
                ttl_seconds=ttl_seconds if parent else None,
            ),
        )
        return Party(agent.id, key)

    def human(self, *, issuer: str | None = None, subject: str | None = None) -> str:
        human = self.c.humans.create(
            CTX,
            NewHuman(
                display_name="Hannah",
                email=f"hannah-{secrets.token_hex(4)}@example.com",
                external_issuer=issuer,
                external_subject=subject,
            ),
        )
        return human.id

    def grant(
        self,
        human_id: str,
        agent_id: str,
        *,
        max_depth: int = CAP,
        details: Any = GRANT_DETAILS,
        ttl_seconds: int = 3600,
        clock: FakeClock | None = None,
    ) -> str:
        service = self.c.grants
        if clock is not None:  # the same service, as it ran at another time
            service = copy.copy(service)
            service._clock = clock
        grant = service.create(
            CTX,
            NewGrant(
                human_id=human_id,
                agent_id=agent_id,
                scopes=["tools:read", "tools:write"],
                audiences=[RESOURCE, OTHER],
                ttl_seconds=ttl_seconds,
                authorization_details=details,
                max_depth=max_depth,
            ),
        )
        return grant.id

    def scene(self, *, max_depth: int = CAP, details: Any = GRANT_DETAILS) -> Scene:
        """A human, her planner (entitled beyond the grant: tools:admin and THIRD), the
        planner's registered sub-agent, and the human's grant to the planner."""
        human_id = self.human()
        planner = self.agent(
            scopes=("tools:read", "tools:write", "tools:admin"),
            audiences=(RESOURCE, OTHER, THIRD),
        )
        worker = self.agent(parent=planner)
        grant_id = self.grant(human_id, planner.id, max_depth=max_depth, details=details)
        return Scene(human_id, planner, worker, grant_id)

    def human_token(
        self, human_id: str, agent_id: str | None, *, clock: FakeClock | None = None
    ) -> str:
        service = self.c.grants
        if clock is not None:
            service = copy.copy(service)
            service._clock = clock
        token, _ = service.human_token(CTX, human_id, agent_id=agent_id)
        return token

    # -- wire ------------------------------------------------------------------------

    def proof(self, key: AgentKey, *, url: str | None = None, token: str | None = None) -> str:
        return dpop_proof(key, method="POST", url=url or self.endpoint, access_token=token)

    def assertion(self, party: Party) -> dict[str, str]:
        return {
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(
                party.key, client_id=party.id, audience=self.live.url
            ),
        }

    def post(self, form: Any, proofs: list[str]) -> httpx.Response:
        headers = [("DPoP", p) for p in proofs]
        if isinstance(form, list):  # pairs, in order, repeats allowed
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
            return httpx.post(self.endpoint, content=urlencode(form), headers=headers, timeout=10)
        return httpx.post(self.endpoint, data=form, headers=headers, timeout=10)

    def own_token(self, party: Party) -> str:
        """The agent's own DPoP-bound client-credentials token (its actor token)."""
        if party.cached is None:
            form = {"grant_type": "client_credentials", "resource": RESOURCE}
            form.update(self.assertion(party))
            r = self.post(form, [self.proof(party.dpop)])
            assert r.status_code == 200, r.text
            party.cached = str(r.json()["access_token"])
        return party.cached

    def form(self, subject: str, actor_token: str | None, **params: Any) -> dict[str, Any]:
        form: dict[str, Any] = {
            "grant_type": EXCHANGE,
            "subject_token": subject,
            "subject_token_type": ACCESS,
            "actor_token": actor_token,
            "actor_token_type": ACCESS,
            "resource": RESOURCE,
        }
        form.update(params)
        return {k: v for k, v in form.items() if v is not None}

    def exchange(self, actor: Party, subject: str, **params: Any) -> httpx.Response:
        """The well-formed exchange ``actor`` would send; ``params`` override the form
        (None removes a parameter)."""
        actor_token = (
            params.pop("actor_token") if "actor_token" in params else self.own_token(actor)
        )
        form = self.form(subject, actor_token, **params)
        return self.post(form, [self.proof(actor.dpop)])

    def issued(self, actor: Party, subject: str, **params: Any) -> str:
        r = self.exchange(actor, subject, **params)
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def chain(self, scene: Scene, **worker_params: Any) -> tuple[str, str]:
        """human → planner (tools:read, RESOURCE, narrower details) → worker."""
        acting = self.issued(
            scene.planner,
            self.human_token(scene.human_id, scene.planner.id),
            scope="tools:read",
            authorization_details=json.dumps(NARROWER_DETAILS),
        )
        return acting, self.issued(scene.worker, acting, **worker_params)

    def spawn(
        self,
        parent_token: str,
        holder: Party,
        *,
        authorization: str | None = "DPoP",
        body: dict[str, Any] | None = None,
        **members: Any,
    ) -> httpx.Response:
        url = self.live.url + "/v1/sub-agents"
        if body is None:
            key = AgentKey.generate()
            body = {
                "jwk": key.public_jwk(),
                "key_proof": self.proof(key, url=url, token=parent_token),
                "ttl_seconds": 600,
            }
            body.update(members)
        headers = {"DPoP": self.proof(holder.dpop, url=url, token=parent_token)}
        if authorization is not None:
            headers["Authorization"] = f"{authorization} {parent_token}"
        return httpx.post(url, json=body, headers=headers, timeout=10)

    def external(self, issuer: str = EXT_ISSUER, **overrides: Any) -> str:
        """An RS256 token from the trusted IdP; ``overrides`` change its claims (None
        removes one) or, with ``header``/``signer``, its header and signature."""
        now = int(time.time())
        header = overrides.pop("header", {"alg": "RS256", "kid": EXT_KID, "typ": "JWT"})
        signer = overrides.pop("signer", rs256_signer(self.idp_key))
        claims: dict[str, Any] = {
            "iss": issuer,
            "sub": "ext-user-1",
            "aud": EXT_AUD,
            "iat": now,
            "exp": now + 300,
            "jti": secrets.token_hex(8),
        }
        claims.update(overrides)
        return jws(header, {k: v for k, v in claims.items() if v is not None}, signer)

    # -- audit -------------------------------------------------------------------------

    def denials(self) -> list[str]:
        """The reason of every ``token.denied`` event so far, oldest first."""
        reasons: list[str] = []
        after: str | None = None
        while True:
            page = self.c.audit.find(AuditQuery(limit=200, after=after, type="token.denied"))
            reasons.extend(e.reason or "" for e in page.items)
            if page.next_after is None:
                return reasons
            after = page.next_after


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("attacks")
    db = tmp / "agentiam.db"
    shutil.copyfile(sqlite_template, db)
    idp_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    onprem = JwksServer({"keys": [rsa_public_jwk(idp_key, EXT_KID)]})
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.setblocking(False)
    issuers = [
        {
            "issuer": EXT_ISSUER,
            "audiences": [EXT_AUD],
            "algorithms": ["RS256"],
            "jwks": {"keys": [rsa_public_jwk(idp_key, EXT_KID)]},
        },
        {
            "issuer": ONPREM_ISSUER,
            "audiences": [EXT_AUD],
            "algorithms": ["RS256"],
            "jwks_uri": onprem.url,
            "allow_private_network": True,
        },
        {  # https passes the load-time check; the address is refused at fetch time
            "issuer": LOOPBACK_ISSUER,
            "audiences": [EXT_AUD],
            "algorithms": ["RS256"],
            "jwks_uri": f"https://127.0.0.1:{trap.getsockname()[1]}/jwks",
        },
        {
            "issuer": LINK_LOCAL_ISSUER,
            "audiences": [EXT_AUD],
            "algorithms": ["RS256"],
            "jwks_uri": "https://169.254.169.254/latest/jwks",
        },
    ]
    path = tmp / "issuers.yaml"
    path.write_text(yaml.safe_dump(issuers), encoding="utf-8")
    try:
        with oauth_live(
            f"sqlite:///{db}", delegation_max_depth=CAP, trusted_issuers_file=str(path)
        ) as live:
            yield World(live, idp_key, onprem, trap)
    finally:
        onprem.close()
        trap.close()


def refused(r: httpx.Response, error: str, status: int = 400) -> None:
    assert (r.status_code, r.json().get("error")) == (status, error), r.text
    assert "access_token" not in r.json()


def assert_denied(world: World, before: int, *reasons: str) -> None:
    """Exactly these ``token.denied`` reasons were recorded since ``before``."""
    assert world.denials()[before:] == list(reasons)


# -- widening ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"scope": "tools:read tools:write"}, None),  # the grant's scopes: fine
        ({"scope": "tools:read tools:admin"}, "invalid_scope"),  # the actor has it
        ({"scope": "tools:delete"}, "invalid_scope"),
        ({"resource": OTHER}, None),
        ({"resource": THIRD}, "invalid_target"),  # the actor may, the grant may not
        ({"resource": None, "audience": RESOURCE}, None),
        ({"resource": None, "audience": THIRD}, "invalid_target"),
        ({"resource": None}, "invalid_target"),  # two allowed: which one?
        ({"resource": RESOURCE, "audience": OTHER}, "invalid_target"),
        ({"resource": RESOURCE, "audience": RESOURCE}, None),
    ],
)
def test_scope_and_audience_widening_on_the_human_hop(
    world: World, params: dict[str, Any], error: str | None
) -> None:
    scene = world.scene()
    r = world.exchange(scene.planner, world.human_token(scene.human_id, scene.planner.id), **params)
    if error is None:
        assert r.status_code == 200, r.text
        claims = claims_of(r.json()["access_token"])
        assert claims["sub"] == scene.human_id
        assert claims["act"] == {"sub": scene.planner.id}
        assert set(claims["scope"].split()) <= {"tools:read", "tools:write"}
        form = world.form("s", "a", **params)
        assert claims["aud"] == form.get("resource", form.get("audience"))
        return
    refused(r, error)


def test_widening_is_audited_with_its_reason(world: World) -> None:
    scene = world.scene()
    before = len(world.denials())
    r = world.exchange(
        scene.planner,
        world.human_token(scene.human_id, scene.planner.id),
        scope="tools:read tools:admin",
    )
    refused(r, "invalid_scope")
    r = world.exchange(
        scene.planner, world.human_token(scene.human_id, scene.planner.id), resource=THIRD
    )
    refused(r, "invalid_target")
    assert_denied(
        world,
        before,
        "invalid_scope: widening to tools:admin",
        f"invalid_target: widening to audience {THIRD}",
    )


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"scope": "tools:read"}, None),
        ({"scope": "tools:read tools:write"}, "invalid_scope"),  # worker and grant allow it
        ({"resource": RESOURCE}, None),
        ({"resource": OTHER}, "invalid_target"),  # worker and grant allow it
        ({"resource": None, "audience": OTHER}, "invalid_target"),
        ({"authorization_details": json.dumps(NARROWER_DETAILS)}, None),
        ({"authorization_details": json.dumps(GRANT_DETAILS)}, "invalid_authorization_details"),
    ],
)
def test_scope_audience_and_details_widening_on_the_sub_agent_hop(
    world: World, params: dict[str, Any], error: str | None
) -> None:
    """The planner's token (tools:read, RESOURCE, the narrower details) cannot be
    widened back to what the grant allows by its sub-agent."""
    scene = world.scene()
    acting = world.issued(
        scene.planner,
        world.human_token(scene.human_id, scene.planner.id),
        scope="tools:read",
        authorization_details=json.dumps(NARROWER_DETAILS),
    )
    r = world.exchange(scene.worker, acting, **params)
    if error is None:
        assert r.status_code == 200, r.text
        claims = claims_of(r.json()["access_token"])
        assert claims["act"] == {"sub": scene.worker.id, "act": {"sub": scene.planner.id}}
        assert claims["scope"] == "tools:read"
        assert claims["aud"] == RESOURCE
        assert claims["authorization_details"] == NARROWER_DETAILS
        return
    refused(r, error)


@pytest.mark.parametrize(
    ("details", "error"),
    [
        (NARROWER_DETAILS, None),
        (GRANT_DETAILS, None),  # equal is fine
        (_with(tools=["search", "delete_all"]), "invalid_authorization_details"),
        (_with(tools=["delete_all"]), "invalid_authorization_details"),
        (_with(arguments={"n": {"min": 0, "max": 10}}), "invalid_authorization_details"),
        (_with(arguments={"q": {}, "n": {"min": 0, "max": 10}}), "invalid_authorization_details"),
        (
            _with(arguments={"q": {"max_length": 50}, "n": {"min": 0, "max": 100}}),
            "invalid_authorization_details",
        ),
        (
            _with(arguments={"q": {"max_length": 500}, "n": {"min": 0, "max": 10}}),
            "invalid_authorization_details",
        ),
        (_with(locations=["https://evil.example.com/mcp"]), "invalid_authorization_details"),
        (_with(locations=[RESOURCE + "/../admin"]), "invalid_authorization_details"),
        (
            [{k: v for k, v in GRANT_DETAILS[0].items() if k != "locations"}],
            "invalid_authorization_details",
        ),
        (
            [{"type": "api_access", "locations": [RESOURCE], "actions": ["GET"]}],
            "invalid_authorization_details",
        ),
    ],
)
def test_authorization_details_widening_on_the_human_hop(
    world: World, details: Any, error: str | None
) -> None:
    scene = world.scene()
    r = world.exchange(
        scene.planner,
        world.human_token(scene.human_id, scene.planner.id),
        authorization_details=json.dumps(details),
    )
    if error is None:
        assert r.status_code == 200, r.text
        assert r.json()["authorization_details"] == details
        assert claims_of(r.json()["access_token"])["authorization_details"] == details
        return
    refused(r, error)


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "{}",  # an object, not an array
        json.dumps(GRANT_DETAILS[0]),
        json.dumps([{"type": "no_such_type", "tools": ["search"]}]),
        json.dumps([{"type": "tool_invocation"}]),  # tools required
        json.dumps([{"type": "tool_invocation", "tools": ["search"], "privileges": ["x"]}]),
        json.dumps([{"type": "tool_invocation", "tools": []}]),
        '[{"type": "tool_invocation", "tools": ["search"], "tools": ["delete_all"]}]',
        json.dumps(
            [{"type": "tool_invocation", "tools": ["search"], "arguments": {"n": {"max": 1e400}}}]
        ),
        "[" * 50 + "]" * 50,
    ],
)
def test_malformed_authorization_details_are_refused(world: World, raw: str) -> None:
    scene = world.scene()
    r = world.exchange(
        scene.planner,
        world.human_token(scene.human_id, scene.planner.id),
        authorization_details=raw,
    )
    refused(r, "invalid_authorization_details")


def _permits(world: World, token: str, call: ToolCall) -> bool:
    verifier = world.c.tokens._verifier  # the control plane's own verifier
    access = verifier.verify_token(token, now=int(time.time()), any_audience=True)
    return token_permits(access, call).allowed


@pytest.mark.parametrize("hop", ["human", "sub-agent", "jit"])
def test_empty_authorization_details_cannot_shed_the_task_scope(world: World, hop: str) -> None:
    """Asking for ``authorization_details=[]`` must not yield a token that is no longer
    task-scoped (``token_permits`` allows any call on a token without details): it is
    refused, or the held details stay."""
    scene = world.scene()
    human = world.human_token(scene.human_id, scene.planner.id)
    if hop == "human":
        r = world.exchange(scene.planner, human, authorization_details="[]")
    else:
        acting = world.issued(
            scene.planner, human, authorization_details=json.dumps(NARROWER_DETAILS)
        )
        assert not _permits(world, acting, ToolCall("send_email", {"q": "x", "n": 1}))
        if hop == "sub-agent":
            r = world.exchange(scene.worker, acting, authorization_details="[]")
        else:
            r = world.spawn(acting, scene.planner, authorization_details=[])
    if r.status_code in (200, 201):
        token = r.json()["access_token"]
        assert not _permits(world, token, ToolCall("delete_all", {})), claims_of(token)
    else:
        refused(r, "invalid_authorization_details")


# -- the actor -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, None),
        ({"actor_token": None}, "invalid_request"),
        ({"actor_token": None, "actor_token_type": None}, "invalid_request"),
        ({"actor_token": ""}, "invalid_request"),
        ({"actor_token_type": None}, "invalid_request"),
        ({"actor_token_type": JWT_TYPE}, "invalid_request"),
        ({"actor_token_type": "urn:ietf:params:oauth:token-type:id_token"}, "invalid_request"),
    ],
)
def test_an_act_claimed_without_an_actor_token(
    world: World, params: dict[str, Any], error: str | None
) -> None:
    scene = world.scene()
    r = world.exchange(scene.planner, world.human_token(scene.human_id, scene.planner.id), **params)
    if error is None:
        assert r.status_code == 200, r.text
        return
    refused(r, error)


def test_an_actor_token_of_another_agent_than_the_authenticated_client(world: World) -> None:
    scene = world.scene()
    other = world.agent()
    world.grant(scene.human_id, other.id)
    human = world.human_token(scene.human_id, None)
    # Control: the client assertion names the actor.
    form = world.form(human, world.own_token(scene.planner), **world.assertion(scene.planner))
    r = world.post(form, [world.proof(scene.planner.dpop)])
    assert r.status_code == 200, r.text
    assert claims_of(r.json()["access_token"])["act"] == {"sub": scene.planner.id}
    # Agent A authenticates, agent B's token (and B's proof) is the actor token.
    before = len(world.denials())
    form = world.form(human, world.own_token(other), **world.assertion(scene.planner))
    refused(world.post(form, [world.proof(other.dpop)]), "invalid_request")
    assert_denied(
        world,
        before,
        f"invalid_request: client {scene.planner.id} presented the actor token of {other.id}",
    )
    # And A's proof with B's actor token: the proof does not match the actor token.
    form = world.form(human, world.own_token(other), **world.assertion(scene.planner))
    refused(world.post(form, [world.proof(scene.planner.dpop)]), "invalid_dpop_proof")


def test_a_delegated_token_cannot_be_an_actor_token(world: World) -> None:
    scene = world.scene()
    acting = world.issued(scene.planner, world.human_token(scene.human_id, scene.planner.id))
    # The planner's delegated token (bound to its DPoP key) presented as actor token.
    form = world.form(world.human_token(scene.human_id, scene.planner.id), acting)
    before = len(world.denials())
    refused(world.post(form, [world.proof(scene.planner.dpop)]), "invalid_request")
    assert_denied(
        world,
        before,
        "invalid_request: actor token is delegated or not an agent's own token",
    )
    # Nor can the human's own token be an actor token.
    human = world.human_token(scene.human_id, scene.planner.id)
    form = world.form(human, world.human_token(scene.human_id, scene.planner.id))
    refused(world.post(form, [world.proof(scene.planner.dpop)]), "invalid_request")


# -- the subject token ---------------------------------------------------------------


def test_an_expired_subject_token(world: World) -> None:
    scene = world.scene()
    two_hours_ago = FakeClock(datetime.now(UTC) - timedelta(hours=2))
    stale = world.human_token(scene.human_id, scene.planner.id, clock=two_hours_ago)
    assert claims_of(stale)["exp"] < time.time() - 3600
    before = len(world.denials())
    refused(world.exchange(scene.planner, stale), "invalid_grant")
    assert_denied(world, before, "invalid_grant: subject token: token expired")
    # Hand-signed with the server's own key: expired one second ago beyond the skew.
    claims = claims_of(world.human_token(scene.human_id, scene.planner.id))
    now = int(time.time())
    claims.update(iat=now - 400, exp=now - 31, jti=f"{claims['jti'][:-2]}zz")
    forged_expired = world.c.signing_keys.sign(claims, typ="at+jwt")
    refused(world.exchange(scene.planner, forged_expired), "invalid_grant")
    # Control: the same claims, still valid.
    claims.update(exp=now + 120)
    fresh = world.c.signing_keys.sign(claims, typ="at+jwt")
    assert world.exchange(scene.planner, fresh).status_code == 200


def test_a_revoked_subject_token(world: World) -> None:
    scene = world.scene()
    human = world.human_token(scene.human_id, scene.planner.id)
    control = world.human_token(scene.human_id, scene.planner.id)
    with world.live.admin_client() as admin:
        r = admin.post(
            "/v1/tokens/revoke", json={"jti": claims_of(human)["jti"], "reason": "stolen"}
        )
        assert r.status_code == 200, r.text
    before = len(world.denials())
    refused(world.exchange(scene.planner, human), "invalid_grant")
    assert_denied(world, before, "invalid_grant: subject token: token revoked")
    assert world.exchange(scene.planner, control).status_code == 200


def test_a_subject_token_whose_parent_in_the_lineage_was_revoked(world: World) -> None:
    scene = world.scene()
    human = world.human_token(scene.human_id, scene.planner.id)
    acting = world.issued(scene.planner, human, scope="tools:read")
    assert claims_of(human)["jti"] in claims_of(acting)["delegation"]["lineage"]
    # Control: a sibling chain, untouched, still hands down.
    sibling = world.issued(
        scene.planner, world.human_token(scene.human_id, scene.planner.id), scope="tools:read"
    )
    world.issued(scene.worker, sibling)
    with world.live.admin_client() as admin:
        r = admin.post(
            "/v1/tokens/revoke", json={"jti": claims_of(human)["jti"], "reason": "stolen"}
        )
        assert r.status_code == 200, r.text
    before = len(world.denials())
    # The planner's delegated token derives from the revoked human token.
    refused(world.exchange(scene.worker, acting), "invalid_grant")
    assert_denied(world, before, "invalid_grant: subject token: token revoked")
    world.issued(scene.worker, sibling)


def test_a_subject_token_from_an_untrusted_issuer(world: World) -> None:
    scene = world.scene()
    stranger = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    base = {"sub": scene.human_id, "aud": world.live.url, "iat": now, "exp": now + 300}
    untrusted = jws(
        {"alg": "ES256", "kid": "k1", "typ": "at+jwt"},
        {**base, "iss": "https://evil.example.com", "client_id": scene.human_id, "jti": "x1"},
        es256_signer(stranger),
    )
    before = len(world.denials())
    refused(world.exchange(scene.planner, untrusted), "invalid_grant")
    assert_denied(world, before, "invalid_grant: subject token: untrusted issuer")
    for subject_type in (JWT_TYPE, "urn:ietf:params:oauth:token-type:id_token"):
        r = world.exchange(scene.planner, untrusted, subject_token_type=subject_type)
        refused(r, "invalid_grant")
    # Our issuer's name, a key we never had.
    impostor = jws(
        {"alg": "ES256", "kid": "k1", "typ": "at+jwt"},
        {**base, "iss": world.live.url, "client_id": scene.human_id, "jti": "x2"},
        es256_signer(stranger),
    )
    refused(world.exchange(scene.planner, impostor), "invalid_grant")


@pytest.mark.parametrize("forge", [alter_signature, resign_with_other_key])
def test_a_subject_token_with_a_forged_signature(world: World, forge: Callable[[str], str]) -> None:
    scene = world.scene()
    genuine = world.human_token(scene.human_id, scene.planner.id)
    forged = forge(world.human_token(scene.human_id, scene.planner.id))
    before = len(world.denials())
    refused(world.exchange(scene.planner, forged), "invalid_grant")
    reasons = world.denials()[before:]
    assert len(reasons) == 1
    assert reasons[0].startswith("invalid_grant: subject token:"), reasons
    assert world.exchange(scene.planner, genuine).status_code == 200
    # A forged delegated token is no better on the sub-agent hop.
    acting = world.issued(scene.planner, world.human_token(scene.human_id, scene.planner.id))
    refused(world.exchange(scene.worker, forge(acting)), "invalid_grant")
    assert world.exchange(scene.worker, acting).status_code == 200


# -- chain depth ---------------------------------------------------------------------


def test_chain_depth_over_the_servers_cap(world: World) -> None:
    meta = httpx.get(world.live.url + "/.well-known/oauth-authorization-server").json()
    assert meta["token_exchange_max_chain_depth"] == CAP
    scene = world.scene(max_depth=CAP)
    sub_worker = world.agent(parent=scene.worker, ttl_seconds=600)
    _, worker_token = world.chain(scene)  # depth 2: accepted
    assert claims_of(worker_token)["act"] == {
        "sub": scene.worker.id,
        "act": {"sub": scene.planner.id},
    }
    before = len(world.denials())
    refused(world.exchange(sub_worker, worker_token), "invalid_grant")
    # The same hop as a just-in-time sub-agent of the worker.
    refused(world.spawn(worker_token, scene.worker), "invalid_grant")
    assert_denied(
        world,
        before,
        f"invalid_grant: chain depth 3 exceeds the cap {CAP}",
        f"invalid_grant: chain depth 3 exceeds the cap {CAP}",
    )
    assert _children(world, scene.worker) == [sub_worker.id]  # the refused spawn left none


def test_chain_depth_over_the_grants_max_depth(world: World) -> None:
    scene = world.scene(max_depth=1)
    acting = world.issued(scene.planner, world.human_token(scene.human_id, scene.planner.id))
    before = len(world.denials())
    refused(world.exchange(scene.worker, acting), "invalid_grant")
    refused(world.spawn(acting, scene.planner), "invalid_grant")
    assert_denied(
        world,
        before,
        "invalid_grant: chain depth 2 exceeds the grant's max_depth 1",
        "invalid_grant: chain depth 2 exceeds the grant's max_depth 1",
    )
    # Control: with max_depth 2 the same hop is accepted.
    scene = world.scene(max_depth=2)
    acting = world.issued(scene.planner, world.human_token(scene.human_id, scene.planner.id))
    assert world.exchange(scene.worker, acting).status_code == 200


# -- agents, humans and grants ---------------------------------------------------------


def test_an_exchange_by_a_suspended_agent(world: World) -> None:
    scene = world.scene()
    human = world.human_token(scene.human_id, None)
    actor_token = world.own_token(scene.planner)
    acting = world.issued(scene.planner, world.human_token(scene.human_id, None))
    worker_token = world.own_token(scene.worker)
    with world.live.admin_client() as admin:
        r = admin.post(f"/v1/agents/{scene.planner.id}/suspend", json={"reason": "rogue"})
        assert r.status_code == 200, r.text
    form = world.form(human, actor_token)
    r = world.post(form, [world.proof(scene.planner.dpop)])
    refused(r, "invalid_grant")
    # Its chain is dead for its sub-agent too, and it cannot get a new actor token.
    r = world.post(world.form(acting, worker_token), [world.proof(scene.worker.dpop)])
    refused(r, "invalid_grant")
    form = {"grant_type": "client_credentials", "resource": RESOURCE}
    form.update(world.assertion(scene.planner))
    refused(world.post(form, [world.proof(scene.planner.dpop)]), "invalid_client", 401)


def test_a_suspended_actor_with_a_token_issued_after_its_cut_off_is_refused(
    world: World,
) -> None:
    """Suspension is checked on the agent itself, not only through its revoked tokens:
    an actor token signed after the suspension (here, by the server's key directly)
    is still refused."""
    scene = world.scene()
    own = claims_of(world.own_token(scene.planner))
    with world.live.admin_client() as admin:
        r = admin.post(f"/v1/agents/{scene.planner.id}/suspend", json={"reason": "rogue"})
        assert r.status_code == 200, r.text
    time.sleep(1.05)  # past the cut-off second
    now = int(time.time())
    own.update(iat=now, exp=now + 120, jti=f"{own['jti'][:-2]}zz")
    late = world.c.signing_keys.sign(own, typ="at+jwt")
    before = len(world.denials())
    r = world.post(
        world.form(world.human_token(scene.human_id, None), late),
        [world.proof(scene.planner.dpop)],
    )
    refused(r, "invalid_grant")
    assert_denied(world, before, "invalid_grant: actor agent is suspended")


def test_an_exchange_for_a_human_without_a_grant(world: World) -> None:
    scene = world.scene()
    stranger = world.human()
    before = len(world.denials())
    refused(world.exchange(scene.planner, world.human_token(stranger, None)), "invalid_grant")
    # A grant to another agent does not count either.
    other = world.agent()
    world.grant(stranger, other.id)
    refused(world.exchange(scene.planner, world.human_token(stranger, None)), "invalid_grant")
    assert_denied(world, before, *["invalid_grant: no delegation grant"] * 2)
    assert world.exchange(other, world.human_token(stranger, None)).status_code == 200


def test_an_exchange_under_an_expired_grant(world: World) -> None:
    human_id = world.human()
    planner = world.agent()
    two_hours_ago = FakeClock(datetime.now(UTC) - timedelta(hours=2))
    world.grant(human_id, planner.id, ttl_seconds=3600, clock=two_hours_ago)
    before = len(world.denials())
    refused(world.exchange(planner, world.human_token(human_id, None)), "invalid_grant")
    assert_denied(world, before, "invalid_grant: no delegation grant")
    world.grant(human_id, planner.id)
    assert world.exchange(planner, world.human_token(human_id, None)).status_code == 200


def test_an_exchange_under_a_revoked_grant(world: World) -> None:
    scene = world.scene()
    acting = world.issued(scene.planner, world.human_token(scene.human_id, None))
    with world.live.admin_client() as admin:
        r = admin.post(
            f"/v1/delegation-grants/{scene.grant_id}/revoke", json={"reason": "withdrawn"}
        )
        assert r.status_code == 200, r.text
    before = len(world.denials())
    refused(world.exchange(scene.planner, world.human_token(scene.human_id, None)), "invalid_grant")
    refused(world.exchange(scene.worker, acting), "invalid_grant")
    assert world.denials()[before:] == [
        "invalid_grant: no delegation grant",
        "invalid_grant: subject token: token revoked",
    ]


def test_may_act_is_honoured(world: World) -> None:
    scene = world.scene()
    other = world.agent()
    world.grant(scene.human_id, other.id)  # B holds a grant too: only may_act stops it
    for_planner = world.human_token(scene.human_id, scene.planner.id)
    before = len(world.denials())
    refused(world.exchange(other, for_planner), "invalid_grant")
    assert_denied(world, before, "invalid_grant: may_act does not name this actor")
    assert world.exchange(other, world.human_token(scene.human_id, other.id)).status_code == 200
    assert world.exchange(scene.planner, for_planner).status_code == 200


def test_a_sub_agent_hop_by_an_agent_that_is_not_a_child_of_the_holder(world: World) -> None:
    scene = world.scene()
    acting = world.issued(scene.planner, world.human_token(scene.human_id, None))
    outsider = world.agent()  # entitled alike, but nobody's sub-agent
    cousin = world.agent(parent=world.agent())  # a sub-agent, of another agent
    before = len(world.denials())
    refused(world.exchange(outsider, acting), "invalid_grant")
    refused(world.exchange(cousin, acting), "invalid_grant")
    assert_denied(
        world,
        before,
        f"invalid_grant: {outsider.id} is not a sub-agent of {scene.planner.id}",
        f"invalid_grant: {cousin.id} is not a sub-agent of {scene.planner.id}",
    )
    assert world.exchange(scene.worker, acting).status_code == 200
    # The holder cannot hand its token to itself as a new hop either.
    refused(world.exchange(scene.planner, acting), "invalid_grant")


# -- the request ---------------------------------------------------------------------


def test_a_failed_exchange_never_falls_back(world: World) -> None:
    """A token-exchange request carrying a valid client_credentials assertion, DPoP
    proof and actor token, but a bad subject token, issues nothing."""

    def issued_to(agent_id: str) -> int:
        page = world.c.audit.find(AuditQuery(limit=500, agent_id=agent_id))
        return sum(e.type in ("token.issued", "token.exchanged") for e in page.items)

    scene = world.scene()
    actor_token = world.own_token(scene.planner)
    count = issued_to(scene.planner.id)
    for subject in ("not-a-token", alter_signature(actor_token), ""):
        form = world.form(
            subject, actor_token, scope="tools:read", **world.assertion(scene.planner)
        )
        r = world.post(form, [world.proof(scene.planner.dpop)])
        assert r.status_code == 400, r.text
        assert r.json()["error"] in ("invalid_grant", "invalid_request")
        assert "access_token" not in r.json()
    # Both grant types at once is no way around it.
    form = world.form("not-a-token", actor_token, **world.assertion(scene.planner))
    form["grant_type"] = [EXCHANGE, "client_credentials"]
    refused(world.post(form, [world.proof(scene.planner.dpop)]), "invalid_request")
    form["grant_type"] = ["client_credentials", EXCHANGE]
    refused(world.post(form, [world.proof(scene.planner.dpop)]), "invalid_request")
    assert issued_to(scene.planner.id) == count
    # Control: the count does move when an exchange succeeds.
    world.issued(scene.planner, world.human_token(scene.human_id, None))
    assert issued_to(scene.planner.id) == count + 1


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"requested_token_type": ACCESS}, None),
        ({"scope": ["tools:read", "tools:write"]}, "invalid_request"),
        ({"subject_token_type": [ACCESS, ACCESS]}, "invalid_request"),
        ({"resource": [RESOURCE, RESOURCE]}, "invalid_target"),
        ({"client_secret": "hunter2"}, "invalid_request"),  # not an exchange parameter
        ({"foo": "bar"}, "invalid_request"),
        ({"subject_token_type": None}, "invalid_request"),
        ({"subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}, "invalid_request"),
        ({"subject_token_type": JWT_TYPE}, "invalid_request"),  # ours is an access token
        (
            {"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
            "invalid_request",
        ),
        ({"requested_token_type": JWT_TYPE}, "invalid_request"),
        ({"requested_token_type": "urn:ietf:params:oauth:token-type:id_token"}, "invalid_request"),
    ],
)
def test_malformed_exchange_requests(
    world: World, params: dict[str, Any], error: str | None
) -> None:
    scene = world.scene()
    r = world.exchange(scene.planner, world.human_token(scene.human_id, scene.planner.id), **params)
    if error is None:
        assert r.status_code == 200, r.text
        assert r.json()["issued_token_type"] == ACCESS
        assert r.json()["token_type"] == "DPoP"
        return
    refused(r, error)


def test_an_oversized_subject_token(world: World) -> None:
    scene = world.scene()
    human = world.human_token(scene.human_id, scene.planner.id)
    before = len(world.denials())
    refused(world.exchange(scene.planner, "a" * 8193), "invalid_request")
    # A real token padded past the limit (an extra, ignored claim).
    claims = claims_of(human)
    claims["pad"] = "x" * 8192
    padded = world.c.signing_keys.sign(claims, typ="at+jwt")
    refused(world.exchange(scene.planner, padded), "invalid_request")
    refused(
        world.post(world.form(human, "a" * 8193), [world.proof(scene.planner.dpop)]),
        "invalid_request",
    )
    assert world.denials()[before:] == [
        "invalid_request: subject_token is larger than 8192 bytes",
        "invalid_request: subject_token is larger than 8192 bytes",
        "invalid_request: actor_token is larger than 8192 bytes",
    ]
    assert world.exchange(scene.planner, human).status_code == 200


def test_an_oversized_or_overlong_form(world: World) -> None:
    scene = world.scene()
    form = world.form(world.human_token(scene.human_id, None), world.own_token(scene.planner))
    # Past the 64 KiB body limit.
    big = dict(form, authorization_details="[" + " " * 70_000 + "]")
    r = world.post(big, [world.proof(scene.planner.dpop)])
    assert r.status_code == 413, r.text
    assert "access_token" not in r.text
    # Within the size, past the field count.
    many = list(form.items()) + [(f"x{i}", "1") for i in range(40)]
    refused(world.post(many, [world.proof(scene.planner.dpop)]), "invalid_request")
    # Not a form at all.
    r = httpx.post(
        world.endpoint,
        json=form,
        headers={"DPoP": world.proof(scene.planner.dpop)},
        timeout=10,
    )
    refused(r, "invalid_request")


# -- DPoP ----------------------------------------------------------------------------


def test_an_actor_token_without_its_dpop_proof(world: World) -> None:
    scene = world.scene()
    human = world.human_token(scene.human_id, scene.planner.id)
    form = world.form(human, world.own_token(scene.planner))
    before = len(world.denials())
    refused(world.post(form, []), "invalid_dpop_proof")
    # Signed by another key than the actor token's cnf.jkt.
    refused(world.post(form, [world.proof(AgentKey.generate())]), "invalid_dpop_proof")
    refused(world.post(form, [world.proof(scene.planner.key)]), "invalid_dpop_proof")
    # Two proofs, one of them right.
    proofs = [world.proof(scene.planner.dpop), world.proof(AgentKey.generate())]
    refused(world.post(form, proofs), "invalid_dpop_proof")
    # A proof for another endpoint or method.
    wrong_url = dpop_proof(scene.planner.dpop, method="POST", url=world.live.url + "/oauth2/revoke")
    refused(world.post(form, [wrong_url]), "invalid_dpop_proof")
    wrong_method = dpop_proof(scene.planner.dpop, method="GET", url=world.endpoint)
    refused(world.post(form, [wrong_method]), "invalid_dpop_proof")
    reasons = world.denials()[before:]
    assert reasons[:3] == [
        "invalid_dpop_proof: no DPoP proof",
        "invalid_dpop_proof: actor token not bound to the proof key",
        "invalid_dpop_proof: actor token not bound to the proof key",
    ]
    # Control: the right proof.
    assert world.post(form, [world.proof(scene.planner.dpop)]).status_code == 200


def test_a_replayed_dpop_proof(world: World) -> None:
    scene = world.scene()
    proof = world.proof(scene.planner.dpop)
    actor_token = world.own_token(scene.planner)
    first = world.form(world.human_token(scene.human_id, None), actor_token)
    assert world.post(first, [proof]).status_code == 200
    before = len(world.denials())
    second = world.form(world.human_token(scene.human_id, None), actor_token)
    refused(world.post(second, [proof]), "invalid_dpop_proof")
    assert_denied(world, before, "invalid_dpop_proof: DPoP proof jti already used")
    # Control: a fresh proof is accepted.
    assert world.post(second, [world.proof(scene.planner.dpop)]).status_code == 200


# -- just-in-time sub-agents ---------------------------------------------------------


@pytest.fixture
def parent(world: World) -> tuple[Scene, str]:
    scene = world.scene()
    acting = world.issued(
        scene.planner,
        world.human_token(scene.human_id, scene.planner.id),
        scope="tools:read",
        authorization_details=json.dumps(NARROWER_DETAILS),
    )
    return scene, acting


def _children(world: World, parent: Party) -> list[str]:
    return [a.id for a in world.c.agents.find(AgentQuery(limit=50, parent_id=parent.id)).items]


def test_jit_spawn_control(world: World, parent: tuple[Scene, str]) -> None:
    scene, acting = parent
    r = world.spawn(acting, scene.planner, scope="tools:read", resource=RESOURCE)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["parent_id"] == scene.planner.id
    claims = claims_of(body["access_token"])
    assert claims["act"] == {"sub": body["agent_id"], "act": {"sub": scene.planner.id}}
    assert claims["sub"] == scene.human_id


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        ("no authorization", 401, "invalid_token"),
        ("bearer", 401, "invalid_token"),
        ("no dpop", 401, "invalid_dpop_proof"),
        ("key proof by another key", 400, "invalid_request"),
        ("key proof without ath", 400, "invalid_request"),
        ("key proof for another url", 400, "invalid_request"),
        ("ttl over the max", 400, "invalid_request"),
        ("ttl zero", 400, "invalid_request"),
        ("scope widening", 400, "invalid_scope"),
        ("resource widening", 400, "invalid_target"),
        ("details widening", 400, "invalid_authorization_details"),
        ("unknown member", 400, "invalid_request"),
    ],
)
def test_jit_spawn_attacks(
    world: World, parent: tuple[Scene, str], case: str, status: int, error: str
) -> None:
    scene, acting = parent
    url = world.live.url + "/v1/sub-agents"
    key = AgentKey.generate()
    body: dict[str, Any] = {
        "jwk": key.public_jwk(),
        "key_proof": world.proof(key, url=url, token=acting),
        "ttl_seconds": 600,
    }
    kwargs: dict[str, Any] = {}
    if case == "no authorization":
        kwargs["authorization"] = None
    elif case == "bearer":
        kwargs["authorization"] = "Bearer"
    elif case == "key proof by another key":
        body["key_proof"] = world.proof(AgentKey.generate(), url=url, token=acting)
    elif case == "key proof without ath":
        body["key_proof"] = world.proof(key, url=url)
    elif case == "key proof for another url":
        body["key_proof"] = world.proof(key, token=acting)
    elif case == "ttl over the max":
        body["ttl_seconds"] = 24 * 3600 + 1
    elif case == "ttl zero":
        body["ttl_seconds"] = 0
    elif case == "scope widening":
        body["scope"] = "tools:read tools:write"
    elif case == "resource widening":
        body["resource"] = OTHER
    elif case == "details widening":
        body["authorization_details"] = GRANT_DETAILS
    elif case == "unknown member":
        body["parent_id"] = scene.worker.id
    if case == "no dpop":
        r = httpx.post(url, json=body, headers={"Authorization": f"DPoP {acting}"}, timeout=10)
    else:
        r = world.spawn(acting, scene.planner, body=body, **kwargs)
    refused(r, error, status)
    assert _children(world, scene.planner) == [scene.worker.id]  # nothing registered


def test_jit_key_proof_replay_is_refused_and_registers_nothing(
    world: World, parent: tuple[Scene, str]
) -> None:
    scene, acting = parent
    url = world.live.url + "/v1/sub-agents"
    key = AgentKey.generate()
    body = {
        "jwk": key.public_jwk(),
        "key_proof": world.proof(key, url=url, token=acting),
        "ttl_seconds": 600,
    }
    first = world.spawn(acting, scene.planner, body=body)
    assert first.status_code == 201, first.text
    again = world.spawn(acting, scene.planner, body=body)  # a fresh parent proof
    # The key it proves is registered already (keys are never reused), which refuses
    # the replay before its jti is even looked at.
    refused(again, "invalid_request")
    assert "already registered" in again.json()["error_description"]
    assert sorted(_children(world, scene.planner)) == sorted(
        [scene.worker.id, first.json()["agent_id"]]
    )


def test_jit_parent_dpop_proof_replay_is_refused(world: World, parent: tuple[Scene, str]) -> None:
    scene, acting = parent
    url = world.live.url + "/v1/sub-agents"
    proof = world.proof(scene.planner.dpop, url=url, token=acting)

    def body() -> dict[str, Any]:
        key = AgentKey.generate()
        return {
            "jwk": key.public_jwk(),
            "key_proof": world.proof(key, url=url, token=acting),
            "ttl_seconds": 600,
        }

    headers = {"Authorization": f"DPoP {acting}", "DPoP": proof}
    assert httpx.post(url, json=body(), headers=headers, timeout=10).status_code == 201
    r = httpx.post(url, json=body(), headers=headers, timeout=10)
    refused(r, "invalid_dpop_proof", 401)


# -- external issuers ----------------------------------------------------------------


@dataclass
class ExternalScene:
    human_id: str
    planner: Party
    subject: str  # the human's subject at the trusted IdP


@pytest.fixture
def external_scene(world: World) -> ExternalScene:
    subject = f"ext-user-{secrets.token_hex(4)}"
    human_id = world.human(issuer=EXT_ISSUER, subject=subject)
    planner = world.agent()
    world.grant(human_id, planner.id)
    return ExternalScene(human_id, planner, subject)


def _hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def test_an_external_human_token_with_a_grant(world: World, external_scene: ExternalScene) -> None:
    scene = external_scene
    token = world.external(sub=scene.subject)
    r = world.exchange(scene.planner, token, subject_token_type=JWT_TYPE)
    assert r.status_code == 200, r.text
    claims = claims_of(r.json()["access_token"])
    assert claims["sub"] == scene.human_id
    assert claims["client_id"] == scene.planner.id
    assert claims["act"] == {"sub": scene.planner.id}
    # The id_token type is taken as well.
    r = world.exchange(
        scene.planner,
        world.external(sub=scene.subject),
        subject_token_type="urn:ietf:params:oauth:token-type:id_token",
    )
    assert r.status_code == 200, r.text


def _external_attacks(world: World, subject: str) -> dict[str, Callable[[], str]]:
    """Each attack, built only when called."""
    now = int(time.time())

    def ext(issuer: str = EXT_ISSUER, **overrides: Any) -> str:
        overrides.setdefault("sub", subject)
        return world.external(issuer, **overrides)

    modulus = world.idp_key.public_key().public_numbers().n.to_bytes(256, "big")
    jwk = rsa_public_jwk(world.idp_key, EXT_KID)
    return {
        "wrong aud": lambda: ext(aud="https://someone-else.example.com"),
        "no aud": lambda: ext(aud=None),
        "expired": lambda: ext(iat=now - 900, exp=now - 600),
        "not yet valid": lambda: ext(iat=now, nbf=now + 600),
        "lifetime over max_token_age": lambda: ext(iat=now, exp=now + 7200),
        "forged signature": lambda: alter_signature(ext()),
        "signed by another key": lambda: ext(
            signer=rs256_signer(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        ),
        "unknown kid": lambda: ext(header={"alg": "RS256", "kid": "idp-2", "typ": "JWT"}),
        "unlinked subject": lambda: ext(sub="ext-user-unknown"),
        "no sub": lambda: ext(sub=None),
        "alg none": lambda: ext(header={"alg": "none", "typ": "JWT"}, signer=lambda _: b""),
        "HS256 with the public key": lambda: ext(
            header={"alg": "HS256", "kid": EXT_KID, "typ": "JWT"},
            signer=_hs256(modulus),
        ),
        "HS256 with the JWK text": lambda: ext(
            header={"alg": "HS256", "kid": EXT_KID, "typ": "JWT"},
            signer=_hs256(json.dumps(jwk).encode()),
        ),
        "embedded jwk": lambda: ext(
            header={"alg": "RS256", "kid": EXT_KID, "typ": "JWT", "jwk": jwk}
        ),
        "logout token": lambda: ext(header={"alg": "RS256", "kid": EXT_KID, "typ": "logout+jwt"}),
        "security event": lambda: ext(events={"x": {}}),
        "untrusted issuer": lambda: ext(issuer="https://idp.evil.example.com"),
    }


EXTERNAL_ATTACKS = [
    "wrong aud",
    "no aud",
    "expired",
    "not yet valid",
    "lifetime over max_token_age",
    "forged signature",
    "signed by another key",
    "unknown kid",
    "unlinked subject",
    "no sub",
    "alg none",
    "HS256 with the public key",
    "HS256 with the JWK text",
    "embedded jwk",
    "logout token",
    "security event",
    "untrusted issuer",
]


@pytest.mark.parametrize("case", EXTERNAL_ATTACKS)
def test_external_subject_token_attacks(
    world: World, external_scene: ExternalScene, case: str
) -> None:
    scene = external_scene
    token = _external_attacks(world, scene.subject)[case]()
    r = world.exchange(scene.planner, token, subject_token_type=JWT_TYPE)
    refused(r, "invalid_grant")


def test_external_refusals_are_audited_with_their_reason(
    world: World, external_scene: ExternalScene
) -> None:
    scene = external_scene
    before = len(world.denials())
    for overrides in (
        {"aud": "https://someone-else.example.com", "sub": scene.subject},
        {"sub": "ext-user-unknown"},
    ):
        token = world.external(**overrides)
        refused(world.exchange(scene.planner, token, subject_token_type=JWT_TYPE), "invalid_grant")
    assert_denied(
        world,
        before,
        "invalid_grant: subject token: aud does not name this service",
        "invalid_grant: the subject token's identity is not linked to a registered human",
    )


def test_an_external_human_without_a_grant(world: World) -> None:
    world.human(issuer=EXT_ISSUER, subject="ext-user-nogrant")
    planner = world.agent()
    r = world.exchange(planner, world.external(sub="ext-user-nogrant"), subject_token_type=JWT_TYPE)
    refused(r, "invalid_grant")


def test_a_jwks_uri_on_a_private_network_is_fetched_only_when_allowed(world: World) -> None:
    """The on-premises issuer (loopback, allow_private_network) works; issuers whose
    jwks_uri resolve to loopback or link-local addresses without it are refused
    before any connection is made."""
    human_id = world.human(issuer=ONPREM_ISSUER, subject="onprem-user")
    planner = world.agent()
    world.grant(human_id, planner.id)
    r = world.exchange(
        planner, world.external(ONPREM_ISSUER, sub="onprem-user"), subject_token_type=JWT_TYPE
    )
    assert r.status_code == 200, r.text
    assert claims_of(r.json()["access_token"])["sub"] == human_id
    assert world.onprem.hits == ["/jwks"]

    for issuer, address in ((LOOPBACK_ISSUER, "127.0.0.1"), (LINK_LOCAL_ISSUER, "169.254.169.254")):
        linked = world.human(issuer=issuer, subject="user")
        world.grant(linked, planner.id)
        before = len(world.denials())
        r = world.exchange(planner, world.external(issuer, sub="user"), subject_token_type=JWT_TYPE)
        refused(r, "temporarily_unavailable", 503)
        reasons = world.denials()[before:]
        assert len(reasons) == 1
        assert address in reasons[0], reasons
    with pytest.raises(BlockingIOError):
        world.trap.accept()  # nobody ever connected to the loopback listener


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1/jwks",
        "http://127.0.0.1:8443/.well-known/jwks.json",
        "http://169.254.169.254/latest/meta-data/jwks",
        "http://[::1]/jwks",
        "http://localhost/jwks",
    ],
)
def test_a_private_jwks_uri_is_refused_at_load_unless_allowed(
    uri: str, tmp_path: Path, sqlite_url: str
) -> None:
    entry = {"issuer": "https://idp.example.org", "audiences": ["x"], "jwks_uri": uri}
    with pytest.raises(InvalidInput, match="jwks_uri"):
        load_trusted_issuers([entry])
    path = tmp_path / "issuers.yaml"
    path.write_text(yaml.safe_dump([entry]), encoding="utf-8")
    with pytest.raises(InvalidInput, match="jwks_uri"):
        build(Settings(database_url=sqlite_url, trusted_issuers_file=str(path)))
    # Control: explicitly allowed, it loads.
    (loaded,) = load_trusted_issuers([dict(entry, allow_private_network=True)])
    assert loaded.jwks_uri == uri
    assert loaded.allow_private_network


def test_an_approval_token_cannot_start_a_delegation_chain(world: World) -> None:
    """A human's token minted for deciding approvals has its own audience: shown as the
    subject token of an exchange, it is refused like any token for another audience."""
    scene = world.scene()
    approval, _ = world.c.grants.human_token(CTX, scene.human_id, purpose="approval")
    r = world.exchange(scene.planner, approval)
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"] in ("invalid_grant", "invalid_request", "invalid_token")
