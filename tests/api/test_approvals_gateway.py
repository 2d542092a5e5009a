"""Human approval (step-up) end to end with real servers: a control plane (uvicorn,
SQLite), the real HTTP gateway (its runtime: control-plane link, spool, shipper) and
an upstream API, each on its own loopback port, and agents using the SDK.

A policy asks for approval before any payment. The agent's call gets the pending
answer, the owner approves with a reason, the retry goes through to the upstream, the
approval cannot be used again, and the trail links requested, approved and consumed
to the decisions. Then: denial, timeout, the wrong human, an agent approving, a
tampered call, the pending bound, the SDK's polling and the blocking /v1/authorize.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.echo_upstream import Echo
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until

from agentiam.adapters.gateway.http_proxy import HttpGateway, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.errors import PROBLEM_BASE
from agentiam.sdk import AgentClient, AgentKey, ApprovalDenied, DiscoveryError
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman

CTX = CallContext.system("test")
TIMEOUT = 4.0  # approval_timeout_seconds of this control plane
POLICIES = {
    "read": 'permit (principal, action == Action::"GET", resource is Endpoint);',
    "pay": 'permit (principal, action == Action::"POST", resource is Endpoint);',
    "pay-needs-approval": 'forbid (principal, action == Action::"POST", resource is Endpoint) '
    'when { context.approval.state != "approved" };',
}


@dataclass
class World:
    cp: OAuthLive
    gw_url: str
    echo: Echo
    agent_id: str
    agent: AgentClient
    owner: str
    stranger: str
    verifier: str
    key: AgentKey | None = None

    def admin(self) -> httpx.Client:
        return self.cp.admin_client()

    def human_token(self, human: str) -> str:
        with self.admin() as admin:
            r = admin.post(f"/v1/humans/{human}/subject-tokens", json={"purpose": "approval"})
            assert r.status_code == 201, r.text
            return str(r.json()["subject_token"])

    def decide(self, approval: str, verb: str, token: str, reason: str = "ok") -> httpx.Response:
        return httpx.post(
            f"{self.cp.url}/v1/approvals/{approval}/{verb}",
            json={"reason": reason},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    def pay(self, n: int, approval: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"AgentIAM-Approval": approval} if approval else {}
        with self.agent.http(self.gw_url, timeout=30, **kw) as client:
            return client.post(f"/v1/payments/{n}", json={"amount": n}, headers=headers)

    def upstream_paths(self) -> list[str]:
        return [s["raw_path"] for s in self.echo.seen]

    def trail(self, **params: Any) -> list[dict[str, Any]]:
        with self.admin() as admin:
            r = admin.get("/v1/audit/events", params={"limit": 200, **params})
            assert r.status_code == 200, r.text
            return list(r.json()["items"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("approvals")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    gw_port = free_port()
    gw_url = f"http://127.0.0.1:{gw_port}"
    with oauth_live(
        f"sqlite:///{db}",
        approval_timeout_seconds=TIMEOUT,
        approval_sweep_seconds=0.1,
        approval_max_pending_per_agent=4,
        policy_refresh_seconds=0.1,
    ) as cp:
        c = cp.container
        stranger = c.humans.create(CTX, NewHuman(display_name="Eve", email="eve@example.com"))
        key = AgentKey.generate()
        agent = c.agents.register(
            CTX,
            NewAgent(
                name="payer-bot",
                owners=[cp.owner_id],
                purpose="pays invoices",
                environment="production",
                activate=True,
                keys=[key.public_jwk()],
                audiences=[gw_url],
            ),
        )
        for policy_id, text in POLICIES.items():
            c.policies.put(CTX, policy_id, text=text)
        verifier = c.admin_keys.create(
            CTX, name="gw", role="verifier", sources=["gateway/pay-gw"]
        ).secret
        env = f"AGENTIAM_TEST_GW_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        echo = Echo()
        with serve_in_thread(echo) as up_url:
            config = load_config(
                {
                    "name": "pay-gw",
                    "public_url": gw_url,
                    "listen": {"host": "127.0.0.1", "port": gw_port},
                    "control_plane": {"url": cp.url, "key_env": env},
                    "spool": {"directory": str(tmp / "spool")},
                    "approvals": {"retry_after_seconds": 1},
                    "rate_limits": {
                        "per_tool": {"limited-pay": {"rate_per_second": 1, "burst": 1}}
                    },
                    "upstreams": {"pay": {"url": up_url}},
                    "routes": [
                        {
                            "match": {"method": "POST", "path": "/v1/payments/{id}"},
                            "upstream": "pay",
                            "action": "POST",
                            "resource": {"type": "Endpoint", "id": "payment-{id}"},
                        },
                        {
                            "name": "limited-pay",
                            "match": {"method": "POST", "path": "/v1/limited/{id}"},
                            "upstream": "pay",
                            "action": "POST",
                            "resource": {"type": "Endpoint", "id": "limited-{id}"},
                        },
                    ],
                }
            )
            runtime = GatewayRuntime.start(config.gateway)
            try:
                app = HttpGateway(config, runtime)
                with serve_in_thread(app, gw_port, lifespan="on"):
                    client = AgentClient(cp.url, client_id=agent.id, key=key, resource=gw_url)
                    try:
                        yield World(
                            cp=cp,
                            gw_url=gw_url,
                            echo=echo,
                            agent_id=agent.id,
                            agent=client,
                            owner=cp.owner_id,
                            stranger=stranger.id,
                            verifier=verifier,
                            key=key,
                        )
                    finally:
                        client.close()
            finally:
                runtime.close()
                os.environ.pop(env, None)


def pending_of(response: httpx.Response) -> str:
    assert response.status_code == 403, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["type"] == PROBLEM_BASE + "approval-pending"
    assert response.headers["AgentIAM-Approval-State"] == "pending"
    assert response.headers["Retry-After"] == "1"
    assert response.headers["AgentIAM-Approval"] == problem["approval_id"]
    return str(problem["approval_id"])


def test_a_risky_call_waits_for_the_owner_and_goes_through_once(world: World) -> None:
    first = world.pay(1)
    approval = pending_of(first)
    assert "/v1/payments/1" not in world.upstream_paths()
    assert pending_of(world.pay(1)) == approval  # a retry without approval: same request

    owner = world.human_token(world.owner)
    approved = world.decide(approval, "approve", owner, reason="invoice 1 checked")
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "approved"
    assert approved.json()["decided_by"] == f"human:{world.owner}"

    through = world.pay(1, approval)
    assert through.status_code == 200, through.text
    assert world.upstream_paths().count("/v1/payments/1") == 1

    replay = world.pay(1, approval)  # single use
    assert replay.status_code == 403
    assert replay.json()["type"] == PROBLEM_BASE + "approval-used"
    assert world.upstream_paths().count("/v1/payments/1") == 1

    # the trail: requested (linked to the deny), approved (by the owner, with the
    # reason), consumed (linked to the allow that let the call through)
    def linked() -> dict[str, dict[str, Any]] | None:
        events = {
            e["type"]: e
            for e in world.trail(agent_id=world.agent_id)
            if e.get("details", {}).get("approval_id") == approval
        }
        if {"approval.requested", "approval.approved", "approval.consumed"} <= set(events):
            return events
        return None

    events = _until(linked)
    assert events is not None
    allow = events["approval.consumed"]["decision_id"]
    deny = events["approval.requested"]["decision_id"]
    assert events["approval.approved"]["reason"] == "invoice 1 checked"
    assert events["approval.approved"]["details"]["approver"] == f"human:{world.owner}"

    def decisions() -> dict[str, str] | None:
        found = {
            e["decision_id"]: e["outcome"]
            for e in world.trail(type="authz.decision", agent_id=world.agent_id)
        }
        return found if allow in found and deny in found else None

    found = _until(decisions)
    assert found is not None
    assert found[deny] == "denied"
    assert found[allow] == "success"


def test_a_retry_the_rate_limit_refuses_keeps_its_approval(world: World) -> None:
    """The rate limit and task scope are checked before an approval is used: a retry
    refused with 429 does not burn it, and the next retry goes through once."""

    def limited(approval: str | None = None) -> httpx.Response:
        headers = {"AgentIAM-Approval": approval} if approval else {}
        with world.agent.http(world.gw_url, timeout=30) as client:
            return client.post("/v1/limited/7", json={"amount": 7}, headers=headers)

    approval = pending_of(limited())  # takes the bucket's one token
    owner = world.human_token(world.owner)
    assert world.decide(approval, "approve", owner).status_code == 200
    refused = limited(approval)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    with world.admin() as admin:
        assert admin.get(f"/v1/approvals/{approval}").json()["state"] == "approved"
    assert "/v1/limited/7" not in world.upstream_paths()
    time.sleep(1.1)  # the bucket refills one token a second
    through = limited(approval)
    assert through.status_code == 200, through.text
    assert world.upstream_paths().count("/v1/limited/7") == 1
    with world.admin() as admin:
        assert admin.get(f"/v1/approvals/{approval}").json()["state"] == "consumed"


def test_denied_by_the_owner_stays_refused(world: World) -> None:
    approval = pending_of(world.pay(2))
    denied = world.decide(approval, "deny", world.human_token(world.owner), reason="not ours")
    assert denied.status_code == 200
    assert denied.json()["state"] == "denied"
    retry = world.pay(2, approval)
    assert retry.status_code == 403
    assert retry.json()["type"] == PROBLEM_BASE + "approval-denied"
    assert "/v1/payments/2" not in world.upstream_paths()


def test_the_wrong_human_and_an_agent_cannot_approve(world: World) -> None:
    approval = pending_of(world.pay(3))
    stranger = world.decide(approval, "approve", world.human_token(world.stranger))
    assert stranger.status_code == 403
    # the agent's own access token (for any audience) is not an approver's token
    own = world.agent.token(world.gw_url).value
    assert world.decide(approval, "approve", own).status_code == 401
    # a human token minted to be handed to the agent (may_act) cannot approve either
    with world.admin() as admin:
        handed = admin.post(
            f"/v1/humans/{world.owner}/subject-tokens", json={"agent_id": world.agent_id}
        ).json()["subject_token"]
    assert world.decide(approval, "approve", handed).status_code == 401
    # nor a plain delegation subject token (no may_act): one may sit in an agent's hands,
    # so only a token minted for approving (its own audience) decides
    with world.admin() as admin:
        subject = admin.post(f"/v1/humans/{world.owner}/subject-tokens", json={}).json()
    assert world.decide(approval, "approve", subject["subject_token"]).status_code == 401
    # and an approval token cannot start a delegation chain (wrong audience)
    with world.admin() as admin:
        r = admin.post(
            f"/v1/humans/{world.owner}/subject-tokens",
            json={"purpose": "approval", "agent_id": world.agent_id},
        )
    assert r.status_code == 422
    # an auditor key lacks approvals:decide; the verifier key too
    with world.admin() as admin:
        auditor = admin.post("/v1/admin-keys", json={"name": "aud", "role": "auditor"})
    assert world.decide(approval, "approve", auditor.json()["secret"]).status_code == 403
    assert world.decide(approval, "approve", world.verifier).status_code == 403
    with world.admin() as admin:
        state = admin.get(f"/v1/approvals/{approval}").json()["state"]
    assert state == "pending"
    # an operator may decide
    assert world.decide(approval, "deny", world.cp.admin, reason="cleanup").status_code == 200


def test_a_tampered_call_cannot_use_the_approval(world: World) -> None:
    approval = pending_of(world.pay(4))
    assert world.decide(approval, "approve", world.human_token(world.owner)).status_code == 200
    other = world.pay(5, approval)  # approved for payment 4, tried on payment 5
    assert other.status_code == 403
    assert other.json()["type"] == PROBLEM_BASE + "approval-mismatch"
    assert "/v1/payments/5" not in world.upstream_paths()
    assert world.pay(4, approval).status_code == 200  # still good for its own call


def test_a_timeout_denies(world: World) -> None:
    approval = pending_of(world.pay(6))
    with world.admin() as admin:  # long poll: answered when the sweep expires it
        r = admin.get(f"/v1/approvals/{approval}", params={"wait": TIMEOUT + 5}, timeout=20)
    assert r.status_code == 200
    assert r.json()["state"] == "expired"
    late = world.decide(approval, "approve", world.human_token(world.owner))
    assert late.status_code == 409
    retry = world.pay(6, approval)
    assert retry.status_code == 403
    assert retry.json()["type"] == PROBLEM_BASE + "approval-expired"
    assert "/v1/payments/6" not in world.upstream_paths()


def test_the_sdk_waits_for_approval_then_the_call_goes_through(world: World) -> None:
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["response"] = world.pay(7, approval_wait=15)
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()

    def pending() -> str | None:
        with world.admin() as admin:
            items = admin.get(
                "/v1/approvals", params={"state": "pending", "agent_id": world.agent_id}
            ).json()["items"]
        ids = [i["id"] for i in items if i["resource"]["id"] == "payment-7"]
        return ids[0] if ids else None

    approval = _until(pending)
    assert approval is not None
    assert world.decide(approval, "approve", world.human_token(world.owner)).status_code == 200
    thread.join(timeout=20)
    assert "error" not in result, result
    assert result["response"].status_code == 200
    assert "/v1/payments/7" in world.upstream_paths()


def test_the_sdk_raises_when_the_owner_denies(world: World) -> None:
    errors: list[BaseException] = []

    def call() -> None:
        try:
            world.pay(8, approval_wait=15)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    with world.admin() as admin:

        def pending() -> str | None:
            items = admin.get("/v1/approvals", params={"state": "pending"}).json()["items"]
            ids = [i["id"] for i in items if i["resource"]["id"] == "payment-8"]
            return ids[0] if ids else None

        approval = _until(pending)
    assert world.decide(approval, "deny", world.cp.admin, reason="no").status_code == 200
    thread.join(timeout=20)
    assert len(errors) == 1
    assert isinstance(errors[0], ApprovalDenied)
    assert errors[0].approval_id == approval


def test_authorize_blocks_until_approved_and_uses_the_approval_once(world: World) -> None:
    body = {
        "principal": {"type": "Agent", "id": world.agent_id},
        "action": "POST",
        "resource": {"type": "Endpoint", "id": "payment-9"},
    }
    headers = {"Authorization": f"Bearer {world.verifier}"}
    url = world.cp.url + "/v1/authorize"
    at_once = httpx.post(url, json=body, headers=headers, timeout=10).json()
    assert at_once["decision"] == "deny"
    assert at_once["approval"]["state"] == "pending"
    approval = at_once["approval"]["id"]
    assert at_once["approval"]["status_url"].endswith(f"/v1/approvals/{approval}")

    answer: dict[str, Any] = {}

    def blocked() -> None:
        answer["r"] = httpx.post(url, json=body, headers=headers, params={"wait": 15}, timeout=30)

    thread = threading.Thread(target=blocked)
    thread.start()
    time.sleep(0.3)  # let it start waiting (not an assertion of speed)
    assert world.decide(approval, "approve", world.cp.admin).status_code == 200
    thread.join(timeout=20)
    decided = answer["r"].json()
    assert decided["decision"] == "allow"
    assert decided["approval"] == {**decided["approval"], "id": approval, "state": "consumed"}
    # a replayed approval id is decided without approval; a malformed one is refused
    again = {**body, "context": {"approval_id": approval}}
    replay = httpx.post(url, json=again, headers=headers, timeout=10).json()
    assert replay["decision"] == "deny"
    assert replay["approval"]["state"] == "consumed"
    bad = {**body, "context": {"approval_id": "not-an-id"}}
    assert httpx.post(url, json=bad, headers=headers, timeout=10).status_code == 422
    other = {**body, "resource": {"type": "Endpoint", "id": "payment-10"}}
    mismatch = {**other, "context": {"approval_id": approval}}
    assert httpx.post(url, json=mismatch, headers=headers, timeout=10).status_code == 403


def test_the_pending_bound_fails_closed(world: World) -> None:
    url = world.cp.url + "/v1/authorize"
    headers = {"Authorization": f"Bearer {world.verifier}"}
    with world.admin() as admin:
        pending = admin.get(
            "/v1/approvals", params={"state": "pending", "agent_id": world.agent_id}
        ).json()["items"]
    statuses = []
    for n in range(100, 106 - len(pending)):
        body = {
            "principal": {"type": "Agent", "id": world.agent_id},
            "action": "POST",
            "resource": {"type": "Endpoint", "id": f"payment-{n}"},
        }
        statuses.append(httpx.post(url, json=body, headers=headers, timeout=10).status_code)
    assert statuses.count(200) == 4 - len(pending)
    assert statuses[-1] == 409
    # through the gateway the call stays a plain deny (no new request is opened)
    refused = world.pay(200)
    assert refused.status_code == 403
    assert refused.json()["type"] == PROBLEM_BASE + "insufficient-scope"


# -- RFC 9728 discovery by the SDK (the gateway publishes its metadata) --------------------


def test_the_sdk_finds_the_authorization_server_from_the_gateway(world: World) -> None:
    assert world.key is not None
    found = AgentClient.for_resource(
        world.gw_url, client_id=world.agent_id, key=world.key, trusted_issuers=[world.cp.url]
    )
    try:
        assert found.issuer == world.cp.url
        assert found.resource == world.gw_url
        assert found.token().token_type == "DPoP"  # from the discovered issuer
    finally:
        found.close()
    with pytest.raises(DiscoveryError, match="none of the authorization servers"):
        AgentClient.for_resource(
            world.gw_url,
            client_id=world.agent_id,
            key=world.key,
            trusted_issuers=["https://iam.elsewhere.example"],
        )
    with pytest.raises(DiscoveryError, match="at least one trusted issuer"):
        AgentClient.for_resource(
            world.gw_url, client_id=world.agent_id, key=world.key, trusted_issuers=[]
        )


def _challenge_of(scope: dict[str, Any]) -> bytes | None:
    """What the impostor's 401 names as ``resource_metadata`` for a path, if anything."""
    host = dict(scope["headers"])[b"host"].decode()
    return {
        "/api": f"http://{host}/meta/api",  # not the well-known URL
        "/cross": "http://iam.elsewhere.example/meta/cross",
        "/userinfo": f"http://agent@{host}/meta/api",  # the same host, with credentials
        "/javascript": "javascript:alert(1)",
    }.get(scope["path"], "").encode() or None


async def _impostor(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A resource whose metadata names another resource, or is too large, or absent;
    some paths answer 401 naming their metadata URL (RFC 9728 section 5.1)."""
    if scope["type"] != "http":
        return
    challenge = _challenge_of(scope)
    if challenge is not None:
        header = b'DPoP error="invalid_token", resource_metadata="' + challenge + b'"'
        await send(
            {"type": "http.response.start", "status": 401,
             "headers": [(b"www-authenticate", header)]}
        )  # fmt: skip
        await send({"type": "http.response.body", "body": b"{}"})
        return
    if scope["path"] == "/meta/api":
        host = dict(scope["headers"])[b"host"].decode()
        body = json.dumps(
            {"resource": f"http://{host}/api", "authorization_servers": ["http://x"]}
        ).encode()
    elif scope["path"].endswith("/big"):
        body = b'{"resource": "' + b"x" * 70_000 + b'"}'
    elif scope["path"].endswith("/other"):
        body = b'{"resource": "https://bank.example.com", "authorization_servers": ["http://x"]}'
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _refused_discovery(world: World, url: str, trusted: list[str], *cases: tuple[str, str]) -> None:
    """Discovery of ``url + path`` fails, naming ``named``, for each (path, named)."""
    assert world.key is not None
    for path, named in cases:
        with pytest.raises(DiscoveryError, match=named):
            AgentClient.for_resource(
                url + path, client_id=world.agent_id, key=world.key, trusted_issuers=trusted
            )


def test_discovery_refuses_metadata_that_cannot_be_trusted(world: World) -> None:
    assert world.key is not None
    trusted = [world.cp.url, "http://x"]
    with serve_in_thread(_impostor) as url:
        _refused_discovery(
            world,
            url,
            trusted,
            ("/other", "describes 'https://bank.example.com'"),
            ("/big", "larger than"),
            ("/missing", "answered 404"),
        )
    with pytest.raises(DiscoveryError, match="no query or fragment"):
        AgentClient.for_resource(
            world.gw_url + "?x=1", client_id=world.agent_id, key=world.key, trusted_issuers=trusted
        )


def test_discovery_follows_the_metadata_url_a_401_names(world: World) -> None:
    """RFC 9728 section 5.1: the resource's own 401 says where its metadata is; the
    well-known URL is only the fallback. A URL off the resource's origin is refused
    (the attack: a resource steering the agent's fetch to another host)."""
    assert world.key is not None
    # the gateway's own challenge, end to end: the issuer it names gives a token
    found = AgentClient.for_resource(
        world.gw_url, client_id=world.agent_id, key=world.key, trusted_issuers=[world.cp.url]
    )
    try:
        assert found.token().token_type == "DPoP"
    finally:
        found.close()
    trusted = [world.cp.url, "http://x"]
    with serve_in_thread(_impostor) as url:
        found = AgentClient.for_resource(
            url + "/api", client_id=world.agent_id, key=world.key, trusted_issuers=trusted
        )
        try:  # found at /meta/api, which no well-known rule gives
            assert (found.issuer, found.resource) == ("http://x", url + "/api")
        finally:
            found.close()
        with pytest.raises(DiscoveryError, match="answered 404"):  # the fallback alone
            AgentClient.for_resource(
                url + "/api",
                client_id=world.agent_id,
                key=world.key,
                trusted_issuers=trusted,
                challenge=False,
            )
        _refused_discovery(
            world,
            url,
            trusted,
            ("/cross", "another origin"),
            ("/userinfo", "another origin"),
            ("/javascript", "no URL"),
        )
    with pytest.raises(DiscoveryError, match="cannot reach"):
        AgentClient.for_resource(
            f"http://127.0.0.1:{free_port()}/api",
            client_id=world.agent_id,
            key=world.key,
            trusted_issuers=trusted,
        )
