"""A live control plane per test: real SQLite file, real uvicorn, real httpx client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.api.oauth_support import OAuthLive
from tests.api.test_guard import agent_of, connect
from tests.support.live import serve_in_thread

from agentiam.adapters.http.app import create_app
from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.access.admin_keys import Role
from agentiam.guard import Guard
from agentiam.sdk import AgentClient
from agentiam.services.context import CallContext


@dataclass
class Live:
    url: str
    container: Container
    admin: str

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def key(self, role: Role) -> str:
        # a verifier key names the enforcement point that holds it (none here ingests)
        sources = ["gateway/test-pep"] if role is Role.VERIFIER else []
        return self.container.admin_keys.create(
            CallContext.system("test"), name=f"{role.value} key", role=role, sources=sources
        ).secret


@pytest.fixture
def live(sqlite_url: str) -> Iterator[Live]:
    c = build(Settings(database_url=sqlite_url))
    issued = c.admin_keys.ensure_bootstrap_key(CallContext.system("test"))
    assert issued is not None
    with serve_in_thread(create_app(c)) as url:
        yield Live(url=url, container=c, admin=issued.secret)
    c.close()


@pytest.fixture
def admin(live: Live) -> Iterator[httpx.Client]:
    with live.client(live.admin) as client:
        yield client


# -- the guard's world: these two stand on a file's own ``live`` fixture, which must be
# an OAuthLive (see guard_support.guard_live); a file that needs another agent or guard
# defines its own fixture of that name, which overrides these.


@pytest.fixture
def agent(live: OAuthLive) -> Iterator[AgentClient]:
    """The registered test agent of ``live``, as the SDK's agent client."""
    client = agent_of(live)
    yield client
    client.close()


@pytest.fixture
def guard(live: OAuthLive, agent: AgentClient, tmp_path: Path) -> Iterator[Guard]:
    """A guard connected to ``live`` that decides with ``agent``'s token."""
    g = connect(live, tmp_path / "spool", agent)
    yield g
    g.close()
