"""A live control plane whose issuer is its own URL, with one registered agent."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
from tests.support.live import free_port, serve_in_thread

from agentiam.adapters.http.app import create_app
from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.credentials.sealing import MasterKey
from agentiam.sdk import AgentKey, client_assertion, dpop_proof
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman

RESOURCE = "https://tools.example.com/mcp"
CTX = CallContext.system("test")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class OAuthLive:
    url: str
    container: Container
    admin: str
    agent_id: str
    key: AgentKey
    dpop_key: AgentKey
    owner_id: str

    @property
    def token_endpoint(self) -> str:
        return self.url + "/oauth2/token"

    def form(self, **extra: Any) -> dict[str, Any]:
        form: dict[str, Any] = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(
                self.key, client_id=self.agent_id, audience=self.url
            ),
            "resource": RESOURCE,
        }
        form.update(extra)
        return {k: v for k, v in form.items() if v is not None}

    def proof(self, **kwargs: Any) -> str:
        return dpop_proof(self.dpop_key, method="POST", url=self.token_endpoint, **kwargs)

    def request_token(
        self, *, form: dict[str, Any] | None = None, dpop: str | list[str] | None = "auto"
    ) -> httpx.Response:
        headers: list[tuple[str, str]] = []
        if dpop == "auto":
            headers.append(("DPoP", self.proof()))
        elif isinstance(dpop, list):
            headers.extend(("DPoP", p) for p in dpop)
        elif dpop is not None:
            headers.append(("DPoP", dpop))
        return httpx.post(
            self.token_endpoint, data=form or self.form(), headers=headers, timeout=10
        )

    def token(self, **extra: Any) -> str:
        r = self.request_token(form=self.form(**extra))
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def admin_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.admin}"}, timeout=10
        )


@contextmanager
def oauth_live(
    database_url: str, *, bootstrap: bool = True, **settings: Any
) -> Iterator[OAuthLive]:
    port = free_port()
    base = Settings(
        database_url=database_url,
        issuer=f"http://127.0.0.1:{port}",
        master_key=MasterKey.generate_text(),
        port=port,
        revocation_feed_max_wait_seconds=1.0,  # shutdown waits for a held long poll
    )
    c = build(replace(base, **settings))
    if bootstrap:
        issued = c.admin_keys.ensure_bootstrap_key(CTX)
        assert issued is not None
        admin = issued.secret
    else:
        admin = c.admin_keys.create(CTX, name="second", role="admin").secret
    suffix = secrets.token_hex(3)
    owner = c.humans.create(
        CTX, NewHuman(display_name="Ann Owner", email=f"ann-{suffix}@example.com")
    )
    key = AgentKey.generate()
    agent = c.agents.register(
        CTX,
        NewAgent(
            name=f"invoice-bot-{suffix}",
            owners=[owner.id],
            purpose="pays invoices",
            environment="production",
            activate=True,
            keys=[key.public_jwk()],
            scopes=["tools:read", "tools:write"],
            audiences=[RESOURCE],
        ),
    )
    c.start_background()
    try:
        with serve_in_thread(create_app(c), port) as url:
            yield OAuthLive(
                url=url,
                container=c,
                admin=admin,
                agent_id=agent.id,
                key=key,
                dpop_key=AgentKey.generate(),
                owner_id=owner.id,
            )
    finally:
        c.close()
