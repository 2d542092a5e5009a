"""The MCP gateway's configuration: a good file loads; every bad one is refused at
start with a ValueError naming the key (docs/gateway.md, "MCP gateway")."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from agentiam.adapters.gateway.broker import ApiKeyInjection, OAuthClientCredentials
from agentiam.adapters.gateway.mcp_proxy import load_config
from agentiam.adapters.gateway.mcp_upstream import UpstreamSessions

BASE: dict[str, Any] = {
    "name": "mcp-gw",
    "public_url": "https://gw.example.com/mcp",
    "control_plane": {"url": "https://iam.example.com"},
    "spool": {"directory": "/var/lib/agentiam/gw"},
    "secrets": {"store": "/etc/agentiam/gw-secrets.json"},
    "servers": [
        {
            "name": "bank",
            "url": "https://bank-mcp.internal/mcp",
            "prefix": "bank.",
            "credential": {"secret": "bank-mcp", "header": "Authorization", "prefix": "Bearer "},
        },
        {"name": "search", "url": "http://127.0.0.1:9000/mcp"},
    ],
}


def config(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def server(index: int, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["servers"][index].update(changes)
    return data


def test_a_good_file_loads() -> None:
    loaded = load_config(BASE)
    assert loaded.gateway.kind == "mcp"
    assert loaded.endpoint_path == "/mcp"
    assert loaded.catalog_seconds == 5.0
    bank, search = loaded.servers
    assert (bank.name, bank.url, bank.prefix) == ("bank", "https://bank-mcp.internal/mcp", "bank.")
    assert bank.credential == ApiKeyInjection("bank-mcp", "Authorization", "Bearer ")
    assert search.prefix == "search."  # the default: "<name>."
    assert search.credential is None
    # sessions for calls: 256 open at most, closed after 10 minutes idle, by default
    assert bank.sessions == search.sessions == UpstreamSessions(256, 600.0)


def test_the_bounds_of_upstream_sessions() -> None:
    loaded = load_config(server(0, sessions={"max_open": 8, "idle_seconds": 30}))
    assert loaded.servers[0].sessions == UpstreamSessions(max_open=8, idle_seconds=30.0)
    assert loaded.servers[1].sessions == UpstreamSessions()
    partial = load_config(server(1, sessions={"idle_seconds": 1.5}))
    assert partial.servers[1].sessions == UpstreamSessions(256, 1.5)


def test_oauth_credentials_and_a_single_unprefixed_server() -> None:
    data = config(
        servers=[
            {
                "name": "crm",
                "url": "https://crm.example.com/mcp",
                "prefix": "",
                "credential": {"secret": "crm", "token_endpoint": "https://auth.crm.example/token"},
            }
        ],
        catalog_seconds=0,
    )
    loaded = load_config(data)
    assert loaded.servers[0].prefix == ""
    assert isinstance(loaded.servers[0].credential, OAuthClientCredentials)
    assert loaded.catalog_seconds == 0.0
    assert load_config(config(public_url="https://gw.example.com")).endpoint_path == "/"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (config(servers=[]), "servers: a list of at least one"),
        (config(servers="bank"), "servers: a list"),
        ({k: v for k, v in BASE.items() if k != "servers"}, "servers: a list"),
        (config(upstreams={}), "config: unknown keys upstreams"),
        (config(catalog_seconds=-1), "catalog_seconds"),
        (config(catalog_seconds=True), "catalog_seconds"),
        (server(0, timeout=3), "servers[0]: unknown keys timeout"),
        (server(1, name="Search!"), "servers[1].name"),
        (server(1, name="bank"), "servers[1].name: 'bank' is also servers[0].name"),
        (server(1, url="http://search.internal/mcp"), "servers[1].url: must be https"),
        (server(1, url="https://user:pw@search.internal/mcp"), "servers[1].url"),
        (server(1, url=None), "servers[1].url: a URL"),
        (server(1, prefix="bank.x."), "servers[1].prefix: 'bank.x.' overlaps servers[0].prefix"),
        (server(1, prefix="ba"), "servers[1].prefix: 'ba' overlaps servers[0].prefix"),
        (server(1, prefix=""), "servers[1].prefix: may be empty only with a single server"),
        (server(1, prefix="2fast."), "servers[1].prefix: 1-63 characters"),
        (server(1, prefix="under_score."), "servers[1].prefix: 1-63 characters"),
        (server(1, prefix=7), "servers[1].prefix: a string"),
        (server(0, credential="bank-mcp"), "servers[0].credential: expected a mapping"),
        (
            server(0, credential={"secret": "bank-mcp", "headr": "X"}),
            "servers[0].credential: unknown credential keys: headr",
        ),
        (
            server(0, credential={"header": "Authorization"}),
            "servers[0].credential: a credential names its secret",
        ),
        (
            server(0, credential={"secret": "x", "token_endpoint": "http://auth.example/t"}),
            "servers[0].credential: token_endpoint",
        ),
        (
            {**server(0), "secrets": {}},
            "servers[0].credential: needs secrets.store",
        ),
        (config(servers=["bank"]), "servers[0]: expected a mapping"),
        (server(0, sessions=8), "servers[0].sessions: expected a mapping"),
        (server(0, sessions={"max": 8}), "servers[0].sessions: unknown keys max"),
        (server(0, sessions={"max_open": 0}), "servers[0].sessions.max_open: an integer"),
        (server(0, sessions={"max_open": 10_001}), "servers[0].sessions.max_open"),
        (server(0, sessions={"max_open": 2.5}), "servers[0].sessions.max_open"),
        (server(0, sessions={"max_open": True}), "servers[0].sessions.max_open"),
        (server(1, sessions={"idle_seconds": 0.5}), "servers[1].sessions.idle_seconds"),
        (server(1, sessions={"idle_seconds": 86_401}), "servers[1].sessions.idle_seconds"),
        (server(1, sessions={"idle_seconds": "600"}), "servers[1].sessions.idle_seconds"),
    ],
)
def test_bad_configuration_is_refused_naming_the_key(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(data)


@pytest.mark.parametrize(
    "path", ["/metrics", "/healthz", "/.well-known", "/.well-known/oauth-protected-resource"]
)
def test_the_endpoint_may_not_take_a_path_the_gateway_serves_itself(path: str) -> None:
    """Its route would come first and hide ``/metrics``, ``/healthz`` or the metadata."""
    with pytest.raises(ValueError, match=re.escape("public_url: its path may not be")):
        load_config(config(public_url="https://gw.example.com" + path))


def test_the_common_part_is_validated_too() -> None:
    with pytest.raises(ValueError, match="public_url: must be https"):
        load_config(config(public_url="http://gw.example.com/mcp"))
    with pytest.raises(ValueError, match=r"rate_limits"):
        load_config(config(rate_limits={"per_tool": {"bank.*": {"rate_per_second": -1}}}))
