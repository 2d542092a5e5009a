"""The HTTP gateway decides a route's ``Endpoint`` in its upstream's ``Api``, whatever
the catalog says (``Route.parents``, ``AuthzRequest.resource_parents``). Real servers
on loopback ports: a control plane (uvicorn, SQLite, its real ingest), an upstream API
recording every request it gets (``tests/support/echo_upstream.py``), and the real
gateway (its runtime: control-plane link, spool on disk, shipper), driven by agents
using the SDK with real DPoP-bound tokens.

- ``forbid (principal, action, resource in Api::"billing")`` under a permit for
  everything refuses (403, audited, never forwarded) a billing route's call whose
  endpoint has no catalog entry; the other upstream's routes are allowed;
- ``permit ... resource in Api::"crm"`` allows crm's routes (an upstream naming its
  Api with ``api:``) and nothing else;
- a catalog entry putting a billing endpoint in another Api adds that Api, it never
  takes the endpoint out of billing; one whose parents leave no room for the route's
  Api is refused (fail closed);
- an ``Api``-typed route resource is that Api itself; a ``DataSet`` one gets no Api;
- a call whose question lost its Api is not forwarded (the check before forwarding);
- 500 distinct ids made from the path, far past the authorizer's placement cache,
  are each decided in their own Api.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.echo_upstream import Echo
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until

from agentiam.adapters.gateway.enforcer import Call
from agentiam.adapters.gateway.http_proxy import HttpGateway, Route, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.policy.entities import MAX_PARENTS, EntitySnapshot
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.sdk import AgentClient, AgentKey
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
NAME = "http-api-parents"
SOURCE = f"gateway/{NAME}"
MANY = 500  # distinct endpoint ids, far past the placement cache (PLACED_CACHE, 64)


def _route(method: str, path: str, upstream: str, action: str, rtype: str, rid: str) -> Any:
    return {
        "match": {"method": method, "path": path},
        "upstream": upstream,
        "action": action,
        "resource": {"type": rtype, "id": rid},
    }


@dataclass
class World:
    cp: OAuthLive
    url: str
    gateway: HttpGateway
    echo: Echo
    forbidden: AgentClient  # permit everything, forbid Api::"billing"
    crm_only: AgentClient  # permit only in Api::"crm"

    def call(self, agent: AgentClient, path: str) -> tuple[str, httpx.Response]:
        trace = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
        with agent.http(self.url, timeout=30) as client:
            return trace, client.get(path, headers=headers)

    def forwarded(self, path: str) -> int:
        return sum(1 for s in self.echo.seen if s["raw_path"] == path)

    def trail(self, type_: str, trace: str) -> list[dict[str, Any]]:
        with self.cp.admin_client() as admin:
            params = {"type": type_, "trace_id": trace, "limit": 200}
            r = admin.get("/v1/audit/events", params=params)
        assert r.status_code == 200, r.text
        return [
            e
            for e in r.json()["items"]
            if e["source"] == SOURCE and e["trace"]["trace_id"] == trace
        ]


def _agent(cp: OAuthLive, name: str, url: str) -> tuple[str, AgentKey]:
    key = AgentKey.generate()
    agent = cp.container.agents.register(
        CTX,
        NewAgent(
            name=f"{name}-{secrets.token_hex(3)}",
            owners=[cp.owner_id],
            purpose="calls billing and crm through the gateway",
            environment="production",
            activate=True,
            keys=[key.public_jwk()],
            audiences=[url],
        ),
    )
    return agent.id, key


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("http-api-parents")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with oauth_live(f"sqlite:///{db}", policy_refresh_seconds=0.1) as cp:
        c = cp.container
        a_id, a_key = _agent(cp, "forbidden", url)
        b_id, b_key = _agent(cp, "crm-only", url)
        a, b = f'Agent::"{a_id}"', f'Agent::"{b_id}"'
        policies = {
            "a-all": f"permit (principal == {a}, action, resource);",
            "a-no-billing": f'forbid (principal == {a}, action, resource in Api::"billing");',
            "b-crm": f'permit (principal == {b}, action, resource in Api::"crm");',
        }
        for policy_id, text in policies.items():
            c.policies.put(CTX, policy_id, text=text)
        # the catalog tries to take a billing endpoint out of billing
        crm = (EntityRef("Api", "crm"),)
        c.resources.put(CTX, ResourceRecord("Endpoint", "invoice-moved", {}, crm))
        c.resources.put(CTX, ResourceRecord("Endpoint", "invoice-alone", {}, ()))
        full = tuple(EntityRef("Api", f"g{i}") for i in range(MAX_PARENTS))
        c.resources.put(CTX, ResourceRecord("Endpoint", "contact-crowded", {}, full))
        verifier = c.admin_keys.create(CTX, name=NAME, role="verifier", sources=[SOURCE]).secret
        env = f"AGENTIAM_TEST_API_PARENTS_KEY_{secrets.token_hex(4).upper()}"
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
                        "upstreams": {
                            "billing": {"url": up},
                            "crm-eu": {"url": up, "api": "crm"},  # its Api is not its name
                        },
                        "routes": [
                            _route("GET", "/v1/invoices/{id}", "billing", "GET",
                                   "Endpoint", "invoice-{id}"),
                            _route("GET", "/v1/contacts/{id}", "crm-eu", "GET",
                                   "Endpoint", "contact-{id}"),
                            _route("GET", "/v1/invoices", "billing", "GET",
                                   "Endpoint", "invoices"),
                            _route("GET", "/v1/billing", "billing", "GET", "Api", "billing"),
                            _route("GET", "/v1/status", "billing", "read",
                                   "DataSet", "billing-status"),
                        ],
                    }
                )  # fmt: skip
                runtime = GatewayRuntime.start(config.gateway)
                try:
                    gateway = HttpGateway(config, runtime)
                    with serve_in_thread(gateway, port, lifespan="on"):
                        agent_a = AgentClient(cp.url, client_id=a_id, key=a_key, resource=url)
                        agent_b = AgentClient(cp.url, client_id=b_id, key=b_key, resource=url)
                        try:
                            yield World(cp, url, gateway, echo, agent_a, agent_b)
                        finally:
                            agent_a.close()
                            agent_b.close()
                finally:
                    runtime.close()
        finally:
            os.environ.pop(env, None)


def _refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["error"] == "insufficient_scope"
    assert reason in problem["detail"], problem


def _audited_deny(world: World, trace: str, policy: str) -> None:
    decisions = _until(lambda: world.trail("authz.decision", trace))
    assert decisions, f"no decision audited for trace {trace}"
    [decision] = decisions
    assert decision["outcome"] == "denied"
    assert decision["details"]["policies"] == [policy]


def test_an_api_forbid_refuses_a_route_with_no_catalog_entry(world: World) -> None:
    """``Endpoint::"invoice-7"`` is in no catalog: in billing all the same."""
    trace, r = world.call(world.forbidden, "/v1/invoices/7")
    _refused(r, "forbidden by policy a-no-billing")
    assert world.forwarded("/v1/invoices/7") == 0
    _audited_deny(world, trace, "a-no-billing")
    _, ok = world.call(world.forbidden, "/v1/contacts/7")  # crm's: not forbidden
    assert ok.status_code == 200, ok.text
    assert world.forwarded("/v1/contacts/7") == 1


def test_an_api_permit_allows_only_its_routes(world: World) -> None:
    """``permit ... resource in Api::"crm"``: crm-eu's routes (its ``api: crm``), with
    no catalog entry; billing's are not permitted."""
    _, ok = world.call(world.crm_only, "/v1/contacts/9")
    assert ok.status_code == 200, ok.text
    assert world.forwarded("/v1/contacts/9") == 1
    for path in ("/v1/invoices/9", "/v1/billing", "/v1/status"):
        _, r = world.call(world.crm_only, path)
        _refused(r, "no policy permits")


@pytest.mark.parametrize("entry", ["moved", "alone"])
def test_the_catalog_cannot_take_a_route_out_of_its_api(world: World, entry: str) -> None:
    """``invoice-moved`` is catalogued in ``Api::"crm"``, ``invoice-alone`` in no Api:
    both stay in billing, refused by the forbid on it."""
    path = f"/v1/invoices/{entry}"
    trace, r = world.call(world.forbidden, path)
    _refused(r, "forbidden by policy a-no-billing")
    assert world.forwarded(path) == 0
    _audited_deny(world, trace, "a-no-billing")


def test_the_catalog_adds_an_api(world: World) -> None:
    """The catalog's ``Api::"crm"`` is a parent too: the permit on crm matches."""
    _, r = world.call(world.crm_only, "/v1/invoices/moved")
    assert r.status_code == 200, r.text


def test_a_route_resource_that_cannot_be_placed_in_its_api_is_refused(world: World) -> None:
    """``contact-crowded`` has as many catalog parents as an entity may have, so
    ``Api::"crm"`` cannot be added: refused, audited, not forwarded, though a permit
    for everything would allow it without its Api."""
    trace, r = world.call(world.forbidden, "/v1/contacts/crowded")
    _refused(r, "cannot be placed")
    assert world.forwarded("/v1/contacts/crowded") == 0
    decisions = _until(lambda: world.trail("authz.decision", trace))
    assert decisions
    assert decisions[0]["outcome"] == "denied"
    assert "cannot be placed" in decisions[0]["reason"]


def test_an_api_route_is_the_api_itself_and_a_dataset_gets_no_api(world: World) -> None:
    _, r = world.call(world.forbidden, "/v1/billing")  # Api::"billing" in Api::"billing"
    _refused(r, "forbidden by policy a-no-billing")
    _, ok = world.call(world.forbidden, "/v1/status")  # DataSet: no Api parent
    assert ok.status_code == 200, ok.text


def test_a_call_not_decided_in_its_api_is_not_forwarded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before forwarding: the gateway's question made to lose its Api (a
    fault injected in ``call_for``, as a regression would) is decided without it and
    allowed, but refused before it reaches the upstream, and audited."""
    made = world.gateway.call_for

    def without_api(route: Route, values: Any, *, method: str, url: str) -> Call:
        return replace(made(route, values, method=method, url=url), resource_parents=())

    monkeypatch.setattr(world.gateway, "call_for", without_api)
    trace, r = world.call(world.forbidden, "/v1/invoices/lost")
    _refused(r, 'was not decided in Api::"billing"')
    assert world.forwarded("/v1/invoices/lost") == 0
    refusals = _until(lambda: world.trail("api.request.rejected", trace))
    assert refusals
    assert refusals[0]["details"]["status"] == 403


def test_many_distinct_ids_are_each_decided_in_their_api(world: World) -> None:
    """500 endpoints made from the path, none in the catalog, alternating between
    the two Apis: each decided in its own (correctness, not timing), then the first
    ones again, long evicted from the placement cache."""
    half = MANY // 2
    ids = [f"n{i}-{secrets.token_hex(2)}" for i in range(half)]
    statuses: dict[str, set[int]] = {"invoices": set(), "contacts": set()}
    with world.forbidden.http(world.url, timeout=30) as client:
        for rid in [*ids, *ids[:8]]:
            for kind in ("invoices", "contacts"):
                statuses[kind].add(client.get(f"/v1/{kind}/{rid}").status_code)
    assert statuses == {"invoices": {403}, "contacts": {200}}
    assert not [s for s in world.echo.seen if s["raw_path"].startswith("/v1/invoices/n")]
    reached = {s["raw_path"] for s in world.echo.seen if s["raw_path"].startswith("/v1/contacts/n")}
    assert reached == {f"/v1/contacts/{rid}" for rid in ids}


def test_ids_made_from_the_path_copy_nothing(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each upstream Api the routes place endpoints in has a stand-in in the gateway's
    entities, so forty endpoint ids made from the path, none in the catalog, are each
    decided in their Api (billing's refused by the forbid, crm's allowed) without a
    copy of the entities: an agent cannot make the gateway copy them per id."""
    link = world.gateway.runtime.link
    entities = link.entities()
    assert entities is not None
    for api in ("billing", "crm"):
        assert entities.stand_in("Endpoint", (EntityRef("Api", api),)) is not None, api
    copies: list[int] = []  # a decision's copies (a bundle's derive step is not one)
    real = EntitySnapshot.with_more

    def counted(self: EntitySnapshot, *args: Any, **kwargs: Any) -> EntitySnapshot:
        copies.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(EntitySnapshot, "with_more", counted)
    ids = [f"c{i}-{secrets.token_hex(2)}" for i in range(40)]
    with world.forbidden.http(world.url, timeout=30) as client:
        for rid in ids:
            assert client.get(f"/v1/invoices/{rid}").status_code == 403
            assert client.get(f"/v1/contacts/{rid}").status_code == 200
    assert copies == []


def test_a_constant_endpoint_is_in_its_api_in_the_entities(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A route whose Endpoint id has no placeholder has a derived record in the
    gateway's entities, in its upstream's Api, so its decisions need no placing: the
    forbid on billing refuses it, audited, not forwarded, and no copy is made."""
    entities = world.gateway.runtime.link.entities()
    assert entities is not None
    assert EntityRef("Api", "billing") in entities.parents[EntityRef("Endpoint", "invoices")]
    copies: list[int] = []
    real = EntitySnapshot.with_more

    def counted(self: EntitySnapshot, *args: Any, **kwargs: Any) -> EntitySnapshot:
        copies.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(EntitySnapshot, "with_more", counted)
    trace, r = world.call(world.forbidden, "/v1/invoices")
    assert r.status_code == 403, r.text
    assert world.forwarded("/v1/invoices") == 0
    decisions = _until(lambda: world.trail("authz.decision", trace))
    assert decisions
    assert decisions[0]["outcome"] == "denied"
    assert copies == []
