"""Token exchange through the service layer on both stores, with a clock the test
moves: the chain's claims and graph, lifetimes bounded by every link, grant expiry,
and cascade revocation seen by another replica."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import FakeClock

from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.credentials.sealing import MasterKey
from agentiam.errors import OAuthError
from agentiam.ports import AuditQuery
from agentiam.sdk import AgentKey, client_assertion, dpop_proof
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.grants import NewGrant
from agentiam.services.humans import NewHuman

CTX = CallContext.system("contract-test")
ISSUER = "https://as.example.com"
RESOURCE = "https://api.example.com"
MASTER = MasterKey.generate_text()
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


@pytest.fixture
def replicas(database_url: str, clock: FakeClock) -> Iterator[tuple[Container, Container]]:
    settings = Settings(database_url=database_url, issuer=ISSUER, master_key=MASTER)
    a, b = build(settings, clock=clock), build(settings, clock=clock)
    yield a, b
    a.close()
    b.close()


class Agent:
    def __init__(self, c: Container, agent_id: str, key: AgentKey) -> None:
        self.c, self.id, self.key = c, agent_id, key

    def own_token(self, now: int) -> str:
        form = {
            "grant_type": ["client_credentials"],
            "client_assertion_type": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"],
            "client_assertion": [
                client_assertion(self.key, client_id=self.id, audience=ISSUER, now=now)
            ],
        }
        return str(self.c.tokens.token(CTX, form, self.proof(now)).body["access_token"])

    def proof(self, now: int) -> list[str]:
        return [dpop_proof(self.key, method="POST", url=ISSUER + "/oauth2/token", now=now)]

    def exchange(self, subject: str, now: int, **extra: str) -> dict[str, Any]:
        form = {
            "grant_type": [EXCHANGE],
            "subject_token": [subject],
            "subject_token_type": [ACCESS],
            "actor_token": [self.own_token(now)],
            "actor_token_type": [ACCESS],
            **{k: [v] for k, v in extra.items()},
        }
        return self.c.tokens.token(CTX, form, self.proof(now)).body


def _register(c: Container, owner: str, name: str, **kw: Any) -> Agent:
    key = AgentKey.generate()
    agent = c.agents.register(
        CTX,
        NewAgent(
            name=name,
            owners=[owner] if "parent_id" not in kw else [],
            purpose="test",
            environment="production",
            activate=True,
            keys=[key.public_jwk()],
            scopes=["tools:read", "tools:write"],
            audiences=[RESOURCE],
            **kw,
        ),
    )
    return Agent(c, agent.id, key)


def _unverified(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _scene(c: Container, grant_ttl: int = 3600) -> tuple[str, str, Agent, Agent]:
    human = c.humans.create(CTX, NewHuman(display_name="Hannah", email="hannah@example.com"))
    planner = _register(c, human.id, "planner")
    worker = _register(c, human.id, "worker", parent_id=planner.id, ttl_seconds=3600)
    grant = c.grants.create(
        CTX,
        NewGrant(
            human_id=human.id,
            agent_id=planner.id,
            scopes=["tools:read", "tools:write"],
            audiences=[RESOURCE],
            ttl_seconds=grant_ttl,
            max_depth=2,
        ),
    )
    return human.id, grant.id, planner, worker


def _epoch(clock: FakeClock) -> int:
    return int(clock.now().timestamp())


def test_a_chain_through_the_services_with_its_graph(
    replicas: tuple[Container, Container], clock: FakeClock
) -> None:
    a, b = replicas
    human, grant_id, planner, worker = _scene(a)
    now = _epoch(clock)
    subject, _ = a.grants.human_token(CTX, human, agent_id=planner.id)
    acting = planner.exchange(subject, now, scope="tools:read tools:write")
    # The worker's hop runs on the other replica: the chain needs no shared memory.
    worker.c = b
    task = worker.exchange(acting["access_token"], now, scope="tools:read")
    claims = _unverified(task["access_token"])
    assert claims["sub"] == human
    assert claims["client_id"] == worker.id
    assert claims["act"] == {"sub": worker.id, "act": {"sub": planner.id}}
    assert claims["delegation"]["grant"] == grant_id
    assert claims["scope"] == "tools:read"
    assert task["issued_token_type"] == ACCESS
    tree = a.delegation_graph.tree(_unverified(acting["access_token"])["jti"])
    assert [n.node.origin.value for n in tree.ancestors] == ["human"]
    assert [d.node.client_id for d in tree.descendants] == [worker.id]
    # One tree per initiating token: every node names the human's token as its root.
    root = tree.ancestors[0].node.jti
    assert tree.token.node.root_jti == root
    assert tree.descendants[0].node.root_jti == root
    assert tree.grant is not None
    assert tree.grant.id == grant_id
    assert not tree.token.revoked
    # The issuance is audited as traced to the human, through every agent.
    exchanged = a.audit.find(AuditQuery(limit=10, type="token.exchanged")).items
    assert [(e.initiating_human, e.delegation_chain) for e in exchanged] == [
        (human, (planner.id,)),
        (human, (worker.id, planner.id)),
    ]


def test_lifetimes_are_bounded_by_every_link_and_the_grant_expires(
    replicas: tuple[Container, Container], clock: FakeClock
) -> None:
    a, _ = replicas
    human, _, planner, _ = _scene(a, grant_ttl=120)
    now = _epoch(clock)
    subject, subject_exp = a.grants.human_token(CTX, human, agent_id=planner.id)
    acting = planner.exchange(subject, now)
    assert acting["expires_in"] == 120  # the grant ends before the 300 s token TTL
    clock.advance(seconds=121)
    later = _epoch(clock)
    fresh_subject, _ = a.grants.human_token(CTX, human, agent_id=planner.id)
    with pytest.raises(OAuthError) as refused:
        planner.exchange(fresh_subject, later)
    assert (refused.value.error, refused.value.reason) == ("invalid_grant", "no delegation grant")
    assert subject_exp == now + 300


def test_an_expired_subject_token_is_refused(
    replicas: tuple[Container, Container], clock: FakeClock
) -> None:
    a, _ = replicas
    human, _, planner, _ = _scene(a)
    subject, _ = a.grants.human_token(CTX, human)
    clock.advance(seconds=301 + 30)  # past exp and the allowed skew
    with pytest.raises(OAuthError) as refused:
        planner.exchange(subject, _epoch(clock))
    assert refused.value.error == "invalid_grant"
    assert "expired" in refused.value.reason


@pytest.mark.parametrize("how", ["grant", "human", "planner", "token"])
def test_cascade_revocation_reaches_another_replica(
    replicas: tuple[Container, Container], clock: FakeClock, how: str
) -> None:
    a, b = replicas
    human, grant_id, planner, worker = _scene(a)
    now = _epoch(clock)
    subject, _ = a.grants.human_token(CTX, human, agent_id=planner.id)
    acting = planner.exchange(subject, now)
    task = worker.exchange(acting["access_token"], now)["access_token"]
    b.revocations.sync()
    assert b.tokens.introspect(CTX, task)["active"] is True
    clock.advance(seconds=1)
    if how == "grant":
        a.grants.revoke(CTX, grant_id, "done")
    elif how == "human":
        assert a.grants.revoke_human(CTX, human, "left") == [grant_id]
    elif how == "planner":
        a.revocations.revoke_agent(CTX, planner.id, "rogue")
    else:
        jti = _unverified(acting["access_token"])["jti"]
        a.revocations.revoke_token(CTX, jti, expires=None, agent_id=planner.id, reason="x")
    b.revocations.sync()  # what every replica does every 0.25 s
    assert b.tokens.introspect(CTX, task) == {"active": False}
    assert b.tokens.introspect(CTX, acting["access_token"]) == {"active": False}
    assert b.delegation_graph.tree(_unverified(task)["jti"]).token.revoked
