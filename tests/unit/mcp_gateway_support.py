"""The MCP gateway's live test world, shared by the ``test_mcp_gateway_*_live.py``
files: a control plane on a copy of the migrated SQLite template, and the real gateway
(``mcp_proxy.build_app`` on a ``GatewayRuntime``) on a loopback port in front of
upstream MCP servers, each served by uvicorn with its lifespan."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.live import free_port, serve_in_thread

from agentiam.adapters.gateway.mcp_proxy import build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.services.context import CallContext

CTX = CallContext.system("test")


@dataclass(frozen=True)
class Address:
    """Where the gateway will listen: chosen before it starts, since an agent is
    registered with the gateway's MCP URL as its audience."""

    port: int
    base: str  # http://127.0.0.1:<port>
    url: str  # <base>/mcp


def gateway_address() -> Address:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    return Address(port, base, base + "/mcp")


@contextmanager
def control_plane(tmp: Path, sqlite_template: Path) -> Iterator[OAuthLive]:
    """A control plane on a copy of the template database, publishing policy changes
    within 0.1 s."""
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    with oauth_live(f"sqlite:///{db}", policy_refresh_seconds=0.1) as cp:
        yield cp


@contextmanager
def gateway(
    cp: OAuthLive, tmp: Path, source: str, at: Address, upstreams: Mapping[str, Any]
) -> Iterator[GatewayRuntime]:
    """The gateway ``source`` (``gateway/<name>``) at ``at`` in front of ``upstreams``
    (server name to ASGI app), with a verifier key for ``source`` in a fresh
    environment variable; yields its runtime while it serves."""
    verifier = cp.container.admin_keys.create(
        CTX, name="mcp-gw", role="verifier", sources=[source]
    ).secret
    env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
    os.environ[env] = verifier
    try:
        with ExitStack() as stack:
            servers = [
                {"name": name, "url": stack.enter_context(serve_in_thread(app, lifespan="on"))}
                for name, app in upstreams.items()
            ]
            config = load_config(
                {
                    "name": source.removeprefix("gateway/"),
                    "public_url": at.url,
                    "listen": {"host": "127.0.0.1", "port": at.port},
                    "control_plane": {"url": cp.url, "key_env": env},
                    "spool": {"directory": str(tmp / "spool")},
                    "servers": [{**s, "url": s["url"] + "/mcp"} for s in servers],
                }
            )
            runtime = GatewayRuntime.start(config.gateway)
            stack.enter_context(serve_in_thread(build_app(config, runtime), at.port, lifespan="on"))
            yield runtime
    finally:
        os.environ.pop(env, None)
