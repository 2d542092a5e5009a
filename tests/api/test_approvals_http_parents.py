"""Human approval at the HTTP gateway for a route decided in its upstream's ``Api``
(``Route.parents``, ``AuthzRequest.resource_parents``), end to end with real servers:
a control plane (uvicorn, SQLite), the real HTTP gateway (its runtime: control-plane
link, spool, shipper, approvals client), an upstream API recording every request
(``tests/support/echo_upstream.py``) behind three upstreams whose Apis are
``billing``, ``ledger`` and ``vault``, and agents using the SDK with real DPoP-bound
tokens. The three upstreams' routes make the *same* ``Endpoint`` ids
(``pay-<n>``): only the Api tells them apart, and no endpoint is in the catalog.

- (a) a policy asking for approval only ``in Api::"billing"`` opens an approval
  request for an uncatalogued billing endpoint; the request names its Api (the API,
  the audit trail); once approved the retry goes through, once;
- (c) a forbid on ``Api::"vault"`` wins over approval: no request is opened, and an
  approval given before an operator forbids the Api no longer lets the call through;
- an approval is bound to the Api its call was decided in: approved for billing's
  ``pay-5``, it cannot carry ledger's or vault's ``pay-5`` (both ``approval-mismatch``,
  never forwarded, the approval left approved for its own call), whether the policy
  asking for approval is scoped to an Api or not;
- the parent comes from the gateway's configuration, never from the request: an
  approval opened at the control plane without the Api (or with another) cannot be
  used by the gateway's call, and one whose parent the schema refuses is a 422.
"""

from __future__ import annotations

import os
import secrets
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
from agentiam.sdk import AgentClient, AgentKey
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
NAME = "pay-apis"
SOURCE = f"gateway/{NAME}"
APIS = ("billing", "ledger", "vault")


def _gated(agent: str, where: str, name: str) -> dict[str, str]:
    """Policies letting ``agent`` call everything ``where`` (a Cedar scope on the
    resource) but POST only once a human approved it."""
    return {
        f"{name}-permit": f"permit (principal == {agent}, action, {where});",
        f"{name}-approval": f'forbid (principal == {agent}, action == Action::"POST", {where}) '
        'when { context.approval.state != "approved" };',
    }


@dataclass
class World:
    cp: OAuthLive
    url: str
    gateway: HttpGateway
    echo: Echo
    verifier: str
    agents: dict[str, tuple[str, AgentClient]]  # role: (agent id, client)

    def admin(self) -> httpx.Client:
        return self.cp.admin_client()

    def pay(self, who: str, api: str, n: int, approval: str | None = None) -> httpx.Response:
        headers = {"AgentIAM-Approval": approval} if approval else {}
        with self.agents[who][1].http(self.url, timeout=30) as client:
            return client.post(f"/{api}/pay/{n}", json={"amount": n}, headers=headers)

    def forwarded(self, api: str, n: int) -> int:
        return sum(1 for s in self.echo.seen if s["raw_path"] == f"/{api}/pay/{n}")

    def approve(self, approval: str) -> None:
        with self.admin() as admin:
            r = admin.post(f"/v1/approvals/{approval}/approve", json={"reason": "checked"})
        assert r.status_code == 200, r.text

    def approval(self, approval: str) -> dict[str, Any]:
        with self.admin() as admin:
            r = admin.get(f"/v1/approvals/{approval}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def pending(self, who: str) -> list[dict[str, Any]]:
        agent_id = self.agents[who][0]
        with self.admin() as admin:
            r = admin.get("/v1/approvals", params={"state": "pending", "agent_id": agent_id})
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    def trail(self, **params: Any) -> list[dict[str, Any]]:
        with self.admin() as admin:
            r = admin.get("/v1/audit/events", params={"limit": 200, **params})
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    def put_policy(self, policy_id: str, text: str) -> None:
        """Put a policy and wait (with a deadline) until the gateway decides with it."""
        _, change = self.cp.container.policies.put(CTX, policy_id, text=text)
        version = change.version.version
        link = self.gateway.enforcer.link
        seen = _until(lambda: link.authorizer().engine.version >= version)
        assert seen, "the gateway did not get the new policy version"


def _route(upstream: str) -> dict[str, Any]:
    return {
        "match": {"method": "POST", "path": f"/{upstream}/pay/{{id}}"},
        "upstream": upstream,
        "action": "POST",
        "resource": {"type": "Endpoint", "id": "pay-{id}"},  # the same ids in every Api
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("approvals-parents")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with oauth_live(
        f"sqlite:///{db}", approval_sweep_seconds=0.1, policy_refresh_seconds=0.1
    ) as cp:
        c = cp.container
        keys: dict[str, tuple[str, AgentKey]] = {}
        for role in ("api", "endpoint", "late"):
            key = AgentKey.generate()
            agent = c.agents.register(
                CTX,
                NewAgent(
                    name=f"{role}-payer-{secrets.token_hex(3)}",
                    owners=[cp.owner_id],
                    purpose="pays through three APIs",
                    environment="production",
                    activate=True,
                    keys=[key.public_jwk()],
                    audiences=[url],
                ),
            )
            keys[role] = (agent.id, key)
        api, endpoint, late = (f'Agent::"{keys[r][0]}"' for r in ("api", "endpoint", "late"))
        policies = {
            # "api": approval asked for only in an Api; vault forbidden outright
            **_gated(api, 'resource in Api::"billing"', "api-billing"),
            **_gated(api, 'resource in Api::"ledger"', "api-ledger"),
            **_gated(api, 'resource in Api::"vault"', "api-vault"),
            "api-no-vault": f'forbid (principal == {api}, action, resource in Api::"vault");',
            # "endpoint": approval asked for on any Endpoint (not scoped to an Api)
            **_gated(endpoint, "resource is Endpoint", "endpoint"),
            "endpoint-no-vault": (
                f'forbid (principal == {endpoint}, action, resource in Api::"vault");'
            ),
            # "late": billing, until an operator forbids it (a test adds the forbid)
            **_gated(late, 'resource in Api::"billing"', "late-billing"),
        }
        for policy_id, text in policies.items():
            c.policies.put(CTX, policy_id, text=text)
        verifier = c.admin_keys.create(CTX, name=NAME, role="verifier", sources=[SOURCE]).secret
        env = f"AGENTIAM_TEST_APPROVAL_PARENTS_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        echo = Echo()
        try:
            with serve_in_thread(echo) as up:
                config = load_config(
                    {
                        "name": NAME,
                        "public_url": url,
                        "listen": {"host": "127.0.0.1", "port": port},
                        "control_plane": {"url": cp.url, "key_env": env},
                        "spool": {"directory": str(tmp / "spool")},
                        "approvals": {"retry_after_seconds": 1},
                        "upstreams": {api: {"url": up} for api in APIS},
                        "routes": [_route(api) for api in APIS],
                    }
                )
                runtime = GatewayRuntime.start(config.gateway)
                clients: dict[str, tuple[str, AgentClient]] = {}
                try:
                    gateway = HttpGateway(config, runtime)
                    with serve_in_thread(gateway, port, lifespan="on"):
                        for role, (agent_id, key) in keys.items():
                            client = AgentClient(cp.url, client_id=agent_id, key=key, resource=url)
                            clients[role] = (agent_id, client)
                        yield World(cp, url, gateway, echo, verifier, clients)
                finally:
                    for _, client in clients.values():
                        client.close()
                    runtime.close()
        finally:
            os.environ.pop(env, None)


def pending_of(response: httpx.Response) -> str:
    assert response.status_code == 403, response.text
    problem = response.json()
    assert problem["type"] == PROBLEM_BASE + "approval-pending", problem
    assert response.headers["AgentIAM-Approval-State"] == "pending"
    return str(problem["approval_id"])


def refused_as(response: httpx.Response, code: str) -> dict[str, Any]:
    assert response.status_code == 403, response.text
    problem: dict[str, Any] = response.json()
    assert problem["type"] == PROBLEM_BASE + code, problem
    return problem


# -- (a) approval asked for only in an Api, on an uncatalogued endpoint ----------------------


def test_an_api_scoped_approval_opens_for_an_uncatalogued_endpoint(world: World) -> None:
    approval = pending_of(world.pay("api", "billing", 1))
    assert world.forwarded("billing", 1) == 0
    shown = world.approval(approval)
    assert shown["resource"] == {"type": "Endpoint", "id": "pay-1"}
    assert shown["resource_parents"] == [{"type": "Api", "id": "billing"}]
    assert shown["policies"] == ["api-billing-approval"]

    world.approve(approval)
    through = world.pay("api", "billing", 1, approval)
    assert through.status_code == 200, through.text
    assert world.forwarded("billing", 1) == 1
    refused_as(world.pay("api", "billing", 1, approval), "approval-used")
    assert world.forwarded("billing", 1) == 1

    # the trail names the Api the call was decided in, from request to consumption
    def events() -> dict[str, dict[str, Any]] | None:
        found = {
            e["type"]: e
            for e in world.trail(agent_id=world.agents["api"][0])
            if e.get("details", {}).get("approval_id") == approval
        }
        wanted = {"approval.requested", "approval.approved", "approval.consumed"}
        return found if wanted <= set(found) else None

    found = _until(events)
    assert found is not None
    for event in found.values():
        assert event["details"]["resource_parents"] == [{"type": "Api", "id": "billing"}]


# -- (c) a forbid on the Api wins over approval ------------------------------------------------


def test_a_forbidden_api_opens_no_approval(world: World) -> None:
    before = world.pending("api")
    refused = refused_as(world.pay("api", "vault", 1), "insufficient-scope")
    assert "api-no-vault" in refused["detail"]
    assert world.pending("api") == before
    assert world.forwarded("vault", 1) == 0


def test_an_approval_given_before_the_api_is_forbidden_no_longer_lets_the_call_through(
    world: World,
) -> None:
    approval = pending_of(world.pay("late", "billing", 3))
    world.approve(approval)
    late = f'Agent::"{world.agents["late"][0]}"'
    world.put_policy(
        "late-no-billing", f'forbid (principal == {late}, action, resource in Api::"billing");'
    )
    refused = refused_as(world.pay("late", "billing", 3, approval), "insufficient-scope")
    assert "late-no-billing" in refused["detail"]
    assert world.forwarded("billing", 3) == 0


# -- an approval is bound to the Api its call was decided in ----------------------------------


@pytest.mark.parametrize(("who", "n"), [("api", 5), ("endpoint", 8)])
def test_an_approval_for_one_api_does_not_carry_the_same_endpoint_of_another(
    world: World, who: str, n: int
) -> None:
    """Billing's ``pay-<n>`` and ledger's ``pay-<n>`` are one Endpoint id in two Apis
    (``endpoint``: its policies ask for approval on any Endpoint, in no Api)."""
    approval = pending_of(world.pay(who, "billing", n))
    world.approve(approval)
    for api in ("ledger", "vault"):
        refused = refused_as(world.pay(who, api, n, approval), "approval-mismatch")
        assert refused["approval_id"] == approval
        assert world.forwarded(api, n) == 0
    assert world.approval(approval)["state"] == "approved"  # left for its own call
    assert world.pay(who, "billing", n, approval).status_code == 200
    assert world.forwarded("billing", n) == 1


# -- the parent comes from the gateway, not from whoever asks ----------------------------------


def _open(world: World, who: str, n: int, parents: list[dict[str, str]] | None) -> httpx.Response:
    body: dict[str, Any] = {
        "principal": {"type": "Agent", "id": world.agents[who][0]},
        "action": "POST",
        "resource": {"type": "Endpoint", "id": f"pay-{n}"},
        "context": {"args": {}},
    }
    if parents is not None:
        body["resource_parents"] = parents
    headers = {"Authorization": f"Bearer {world.verifier}"}
    return httpx.post(world.cp.url + "/v1/approvals", json=body, headers=headers, timeout=10)


def test_an_approval_opened_without_the_api_cannot_be_used_in_it(world: World) -> None:
    """Asked for ``pay-6`` with no Api (or another Api), the control plane opens a
    request for *that* call: the gateway's call, decided in ``Api::"vault"``, cannot
    use it, and the forbid on vault still refuses the call."""
    vault = [{"type": "Api", "id": "vault"}]
    assert _open(world, "endpoint", 6, vault).status_code == 409  # forbidden in vault
    for parents in (None, [{"type": "Api", "id": "billing"}]):
        opened = _open(world, "endpoint", 6, parents)
        assert opened.status_code == 200, opened.text
        approval = opened.json()["id"]
        world.approve(approval)
        refused_as(world.pay("endpoint", "vault", 6, approval), "approval-mismatch")
        assert world.forwarded("vault", 6) == 0
        assert world.approval(approval)["state"] == "approved"


def test_a_parent_the_schema_refuses_is_invalid_input(world: World) -> None:
    for parents in (
        [{"type": "McpServer", "id": "bank"}],  # an Endpoint is in an Api only
        [{"type": "Api", "id": f"a{i}"} for i in range(33)],  # past MAX_PARENTS
    ):
        refused = _open(world, "endpoint", 7, parents)
        assert refused.status_code == 422, refused.text
