"""Delegation end to end over real HTTP: a human's grant lets a planner act for them,
the planner hands a narrower task to a just-in-time worker, the worker's token carries
the whole chain, every widening is refused, and revoking the grant kills the tree
within a second at a separate verifier."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from tests.api.oauth_support import CTX, RESOURCE, OAuthLive, oauth_live

from agentiam.adapters.verification import RemoteVerifier
from agentiam.core.access.admin_keys import Role
from agentiam.core.delegation.authorization_details import ToolCall
from agentiam.core.delegation.enforcement import delegation_context, token_permits
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.core.policy.model import EntityRef
from agentiam.errors import OAuthError
from agentiam.ports import AgentQuery
from agentiam.sdk import AccessToken, AgentClient, AgentKey, TokenError, dpop_proof
from agentiam.services.agents import NewAgent
from agentiam.services.humans import NewHuman

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
TOOLS = [{"type": "tool_invocation", "tools": ["search", "send_email"]}]


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with oauth_live(sqlite_url) as running:
        yield running


def claims(token: str | AccessToken) -> dict[str, Any]:
    value = token.value if isinstance(token, AccessToken) else token
    return dict(pyjwt.decode(value, options={"verify_signature": False}))


class Scene:
    """Hannah, her planner agent (the fixture's agent) and a grant between them."""

    def __init__(self, live: OAuthLive, *, max_depth: int = 2, details: Any = TOOLS) -> None:
        self.live = live
        c = live.container
        self.human = c.humans.create(
            CTX, NewHuman(display_name="Hannah", email=f"hannah-{time.time_ns()}@example.com")
        )
        self.planner = AgentClient(
            live.url,
            client_id=live.agent_id,
            key=live.key,
            resource=RESOURCE,
            scope="tools:read tools:write",
        )
        with live.admin_client() as admin:
            r = admin.post(
                "/v1/delegation-grants",
                json={
                    "human_id": self.human.id,
                    "agent_id": live.agent_id,
                    "scopes": ["tools:read", "tools:write"],
                    "audiences": [RESOURCE],
                    "authorization_details": details,
                    "ttl_seconds": 3600,
                    "max_depth": max_depth,
                },
            )
            assert r.status_code == 201, r.text
            self.grant = r.json()

    def human_token(self, agent_id: str | None = None) -> str:
        with self.live.admin_client() as admin:
            r = admin.post(
                f"/v1/humans/{self.human.id}/subject-tokens",
                json={"agent_id": agent_id or self.live.agent_id},
            )
            assert r.status_code == 201, r.text
            return str(r.json()["subject_token"])

    def acting(self, **kwargs: Any) -> AccessToken:
        return self.planner.act_for(self.human_token(), **kwargs)


def _refused_within(check: Callable[[], object], started: float, bound: float) -> OAuthError:
    while True:
        try:
            check()
        except OAuthError as exc:
            assert time.monotonic() - started < bound, "refused, but too late"
            return exc
        assert time.monotonic() - started < bound, "still accepted after the bound"
        time.sleep(0.02)


def test_metadata_advertises_token_exchange_and_detail_types(live: OAuthLive) -> None:
    meta = httpx.get(live.url + "/.well-known/oauth-authorization-server").json()
    assert EXCHANGE in meta["grant_types_supported"]
    assert {"tool_invocation", "api_access"} <= set(meta["authorization_details_types_supported"])
    assert meta["token_exchange_max_chain_depth"] == 4


def test_the_human_chain_from_grant_to_jit_worker_and_its_revocation(live: OAuthLive) -> None:
    scene = Scene(live)
    acting = scene.acting()
    planner_claims = claims(acting)
    assert planner_claims["sub"] == scene.human.id
    assert planner_claims["client_id"] == live.agent_id
    assert planner_claims["act"] == {"sub": live.agent_id}
    assert planner_claims["delegation"]["grant"] == scene.grant["id"]
    assert planner_claims["authorization_details"] == TOOLS
    assert planner_claims["aud"] == RESOURCE

    task = [{"type": "tool_invocation", "tools": ["search"]}]
    worker = scene.planner.spawn_subagent(
        ttl_seconds=600, on_behalf=acting, scope="tools:read", authorization_details=task
    )
    worker_claims = claims(worker.token)
    assert worker_claims["sub"] == scene.human.id
    assert worker_claims["client_id"] == worker.agent_id
    assert worker_claims["act"] == {"sub": worker.agent_id, "act": {"sub": live.agent_id}}
    assert worker_claims["scope"] == "tools:read"
    assert worker_claims["authorization_details"] == task
    assert worker_claims["cnf"]["jkt"] == worker.key.key.thumbprint()
    assert planner_claims["jti"] in worker_claims["delegation"]["lineage"]
    agent = live.container.agents.get(worker.agent_id)
    assert agent.parent_id == live.agent_id
    assert agent.expires_at is not None

    # The worker's token works at a resource server verifying it remotely.
    gateway_key = live.container.admin_keys.create(
        CTX, name="gw", role=Role.VERIFIER, sources=["gateway/gw"]
    ).secret
    remote = RemoteVerifier(live.url, RESOURCE, admin_key=gateway_key).start()
    try:
        url = RESOURCE + "/tools/call"

        def use(token: AccessToken, key: AgentKey) -> None:
            remote.verifier.verify_request(
                authorization=[f"DPoP {token.value}"],
                dpop=[dpop_proof(key, method="POST", url=url, access_token=token.value)],
                method="POST",
                url=url,
                now=int(time.time()),
            )

        use(worker.token, worker.key)
        use(acting, scene.planner.dpop_key)

        # The graph shows the chain from the human's token down to the worker.
        with live.admin_client() as admin:
            tree = admin.get(f"/v1/delegations/{planner_claims['jti']}").json()
        assert [a["origin"] for a in tree["ancestors"]] == ["human"]
        assert tree["token"]["actors"] == [live.agent_id]
        assert [d["jti"] for d in tree["descendants"]] == [worker_claims["jti"]]
        assert tree["descendants"][0]["actors"] == [worker.agent_id, live.agent_id]
        assert tree["grant"]["id"] == scene.grant["id"]

        time.sleep(0.3)  # let the long poll settle
        with live.admin_client() as admin:
            started = time.monotonic()
            r = admin.post(
                f"/v1/delegation-grants/{scene.grant['id']}/revoke", json={"reason": "done"}
            )
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "revoked"
        for token, key in ((worker.token, worker.key), (acting, scene.planner.dpop_key)):
            refusal = _refused_within(lambda t=token, k=key: use(t, k), started, 1.0)
            assert refusal.reason == "token revoked"
        with live.admin_client() as admin:
            tree = admin.get(f"/v1/delegations/{planner_claims['jti']}").json()
        assert tree["token"]["revoked"]
        assert tree["descendants"][0]["revoked"]
        # And no new exchange can start under the revoked grant.
        with pytest.raises(TokenError) as refused:
            scene.acting()
        assert refused.value.error == "invalid_grant"
    finally:
        remote.close()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"scope": "tools:read tools:admin"}, "invalid_scope"),
        ({"resource": "https://other.example.com/api"}, "invalid_target"),
        (
            {"authorization_details": [{"type": "tool_invocation", "tools": ["delete_all"]}]},
            "invalid_authorization_details",
        ),
    ],
)
def test_widening_on_the_human_hop_is_refused(
    live: OAuthLive, kwargs: dict[str, Any], error: str
) -> None:
    scene = Scene(live)
    with pytest.raises(TokenError) as refused:
        scene.acting(**kwargs)
    assert refused.value.error == error


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"scope": "tools:read tools:write"}, None),  # equal is fine
        ({"scope": "tools:admin"}, "invalid_scope"),
        ({"resource": "https://other.example.com/api"}, "invalid_target"),
        (
            {"authorization_details": [{"type": "tool_invocation", "tools": ["send_wire"]}]},
            "invalid_authorization_details",
        ),
    ],
)
def test_widening_on_the_sub_agent_hop_is_refused(
    live: OAuthLive, kwargs: dict[str, Any], error: str | None
) -> None:
    scene = Scene(live)
    acting = scene.acting(scope="tools:read tools:write")
    if error is None:
        worker = scene.planner.spawn_subagent(ttl_seconds=60, on_behalf=acting, **kwargs)
        assert claims(worker.token)["scope"] == "tools:read tools:write"
        return
    with pytest.raises(TokenError) as refused:
        scene.planner.spawn_subagent(ttl_seconds=60, on_behalf=acting, **kwargs)
    assert refused.value.error == error
    # Nothing was registered for the refused spawn.
    page = live.container.agents.find(AgentQuery(limit=10, parent_id=live.agent_id))
    assert list(page.items) == []


def test_a_worker_exchanges_its_parents_token_and_depth_is_capped(live: OAuthLive) -> None:
    """The sub-agent side of a hop: a registered child presents the parent's delegated
    token as the subject and its own token as the actor. The grant's max_depth of 2
    stops a third agent."""
    scene = Scene(live, max_depth=2)
    acting = scene.acting(scope="tools:read")
    worker = scene.planner.spawn_subagent(ttl_seconds=600, on_behalf=acting)
    # The worker, with its own client-credentials token as actor, exchanges the
    # planner's delegated token itself: same chain shape as the JIT first token.
    again = worker.client.exchange(acting, scope="tools:read")
    assert claims(again)["act"] == {"sub": worker.agent_id, "act": {"sub": live.agent_id}}
    # A third hop (the worker's own JIT child) exceeds the grant's max_depth.
    with pytest.raises(TokenError) as refused:
        worker.client.spawn_subagent(ttl_seconds=60, on_behalf=worker.token)
    assert refused.value.error == "invalid_grant"


def test_an_unrelated_agent_cannot_take_over_a_chain(live: OAuthLive) -> None:
    """An agent that is not the holder's sub-agent, presenting a stolen delegated
    token as subject, is refused (and so is its use of the human's token, which names
    the planner in may_act)."""
    scene = Scene(live)
    acting = scene.acting()
    key = AgentKey.generate()
    other = live.container.agents.register(
        CTX,
        NewAgent(
            name="intruder",
            owners=[live.owner_id],
            purpose="x",
            environment="production",
            activate=True,
            keys=[key.public_jwk()],
            scopes=["tools:read"],
            audiences=[RESOURCE],
        ),
    )
    intruder = AgentClient(live.url, client_id=other.id, key=key, resource=RESOURCE)
    for subject in (acting.value, scene.human_token()):
        with pytest.raises(TokenError) as refused:
            intruder.exchange(subject)
        assert refused.value.error == "invalid_grant"


def test_suspending_the_planner_kills_its_jit_worker(live: OAuthLive) -> None:
    scene = Scene(live)
    acting = scene.acting()
    worker = scene.planner.spawn_subagent(ttl_seconds=600, on_behalf=acting)
    with live.admin_client() as admin:
        r = admin.post(f"/v1/agents/{live.agent_id}/suspend", json={"reason": "rogue"})
        assert r.status_code == 200, r.text
    assert live.container.agents.get(worker.agent_id).status.value == "decommissioned"
    with live.admin_client() as admin:
        r = admin.post("/oauth2/introspect", data={"token": worker.token.value})
    assert r.json() == {"active": False}


def test_revoking_all_of_a_humans_delegations(live: OAuthLive) -> None:
    scene = Scene(live)
    acting = scene.acting()
    with live.admin_client() as admin:
        r = admin.post(
            f"/v1/humans/{scene.human.id}/revoke-delegations", json={"reason": "left company"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["revoked_grants"] == [scene.grant["id"]]
        r = admin.post("/oauth2/introspect", data={"token": acting.value})
    assert r.json() == {"active": False}


def test_grant_api_validates_and_lists(live: OAuthLive) -> None:
    scene = Scene(live)
    with live.admin_client() as admin:
        listed = admin.get("/v1/delegation-grants", params={"human_id": scene.human.id}).json()
        assert [g["id"] for g in listed["items"]] == [scene.grant["id"]]
        wider = admin.post(
            "/v1/delegation-grants",
            json={
                "human_id": scene.human.id,
                "agent_id": live.agent_id,
                "scopes": ["tools:admin"],
                "audiences": [RESOURCE],
                "ttl_seconds": 60,
            },
        )
        assert wider.status_code == 422
        assert "not entitled" in wider.json()["detail"]
    auditor = live.container.admin_keys.create(CTX, name="aud", role=Role.AUDITOR).secret
    operator = live.container.admin_keys.create(CTX, name="op", role=Role.OPERATOR).secret
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {auditor}"}) as c:
        assert c.get(f"/v1/delegation-grants/{scene.grant['id']}").status_code == 200
        r = c.post(f"/v1/delegation-grants/{scene.grant['id']}/revoke", json={"reason": "x"})
        assert r.status_code == 403
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {operator}"}) as c:
        # Minting a human's subject token is impersonation: admin only.
        r = c.post(f"/v1/humans/{scene.human.id}/subject-tokens", json={})
        assert r.status_code == 403


def test_enforcement_reads_task_scope_and_chain_from_a_verified_token(live: OAuthLive) -> None:
    """What a gateway calls: token_permits and delegation_context on the verified
    worker token, fed to the policy decision point."""
    scene = Scene(live)
    acting = scene.acting()
    worker = scene.planner.spawn_subagent(
        ttl_seconds=60,
        on_behalf=acting,
        authorization_details=[
            {"type": "tool_invocation", "tools": ["search"], "arguments": {"q": {"max_length": 5}}}
        ],
    )
    verifier = live.container.tokens._verifier  # the control plane's own verifier
    access = verifier.verify_token(worker.token.value, now=int(time.time()), any_audience=True)
    assert token_permits(access, ToolCall("search", {"q": "cats"})).allowed
    assert not token_permits(access, ToolCall("search", {"q": "a long query"})).allowed
    assert not token_permits(access, ToolCall("send_email", {})).allowed
    assert not token_permits(access, ToolCall("search", {})).allowed  # constrained, missing
    own = verifier.verify_token(live.token(), now=int(time.time()), any_audience=True)
    assert token_permits(own, ToolCall("anything", {})).allowed  # not task-scoped
    context = delegation_context(access)
    assert context["delegation"] == {
        "depth": 1,
        "actors": [worker.agent_id, live.agent_id],
        "initiating_human": scene.human.id,
    }
    assert context["authorization_details"] == [{"type": "tool_invocation", "tools": ["search"]}]
    decision = live.container.decisions.decide(
        CTX,
        [
            AuthzRequest(
                principal=EntityRef("Agent", worker.agent_id),
                action="invoke_tool",
                resource=EntityRef("Tool", "search"),
                context=context,
            )
        ],
    )[0]
    # Default deny (no policies), and the delegation context was accepted as valid:
    # no "chain not valid" or malformed-context reason.
    assert decision.decision == "deny"
    assert not decision.errors
    assert not any("delegation" in r for r in decision.reasons), decision.reasons


def test_a_jit_workers_own_tokens_keep_its_task_scope(live: OAuthLive) -> None:
    """The worker's key can get it plain client-credentials tokens; those carry the
    task it was spawned for, and its later exchanges cannot shed or widen it."""
    scene = Scene(live)
    acting = scene.acting()
    task = [{"type": "tool_invocation", "tools": ["search"]}]
    worker = scene.planner.spawn_subagent(
        ttl_seconds=600, on_behalf=acting, authorization_details=task
    )
    own = worker.client.token()
    assert claims(own)["sub"] == worker.agent_id
    assert claims(own)["authorization_details"] == task
    assert own.authorization_details == tuple(task)
    with live.admin_client() as admin:
        shown = admin.get(f"/v1/agents/{worker.agent_id}").json()
    assert shown["task_scope"] == task
    # Re-exchanging the planner's token: by default the narrower task is kept ...
    again = worker.client.exchange(acting)
    assert claims(again)["authorization_details"] == task
    # ... and asking for the planner's wider task is refused.
    with pytest.raises(TokenError) as refused:
        worker.client.exchange(acting, authorization_details=TOOLS)
    assert refused.value.error == "invalid_authorization_details"


def test_introspection_shows_the_chain_and_knows_human_tokens(live: OAuthLive) -> None:
    scene = Scene(live)
    subject = scene.human_token()
    acting = scene.planner.act_for(subject)
    with live.admin_client() as admin:
        human = admin.post("/oauth2/introspect", data={"token": subject}).json()
        delegated = admin.post("/oauth2/introspect", data={"token": acting.value}).json()
    assert human["active"] is True
    assert human["sub"] == scene.human.id
    assert human["may_act"] == {"sub": live.agent_id}
    assert delegated["active"] is True
    assert delegated["act"] == {"sub": live.agent_id}
    assert delegated["authorization_details"] == TOOLS
    assert delegated["delegation"]["grant"] == scene.grant["id"]
