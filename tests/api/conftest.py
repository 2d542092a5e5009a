"""A live control plane per test: real SQLite file, real uvicorn, real httpx client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from tests.support.live import serve_in_thread

from agentiam.adapters.http.app import create_app
from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.access.admin_keys import Role
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
