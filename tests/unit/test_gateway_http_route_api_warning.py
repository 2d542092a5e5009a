"""An ``Api``-typed HTTP route whose id is not its upstream's Api is accepted, with a
warning at start naming the route, both Apis and the key to set: a policy written for
the upstream's Api (``resource in Api::"billing"``) does not cover that route."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from agentiam.adapters.gateway.http_proxy import load_config


def _config(resource: dict[str, str], *, api: str | None = None) -> dict[str, Any]:
    upstream: dict[str, Any] = {"url": "http://billing.internal"}
    if api is not None:
        upstream["api"] = api
    return {
        "name": "gw",
        "public_url": "https://gw.example",
        "control_plane": {"url": "https://iam.example"},
        "spool": {"directory": "/tmp/unused"},
        "secrets": {"store": "/tmp/unused.json"},
        "upstreams": {"billing": upstream},
        "routes": [
            {"match": {"method": "GET", "path": "/v1/{name}"}, "upstream": "billing",
             "action": "GET", "resource": resource},
        ],
    }  # fmt: skip


def _warnings(caplog: pytest.LogCaptureFixture, config: dict[str, Any]) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agentiam.gateway.http"):
        load_config(config)
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_api_route_naming_another_api_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    (message,) = _warnings(caplog, _config({"type": "Api", "id": "payments"}))
    assert "routes[0]" in message
    assert "Api::'payments'" in message
    assert "'billing'" in message
    assert "upstreams.billing.api" in message


def test_an_api_route_made_from_the_path_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    (message,) = _warnings(caplog, _config({"type": "Api", "id": "{name}"}))
    assert "made from the request path" in message
    assert "client names" in message


@pytest.mark.parametrize(
    ("resource", "api"),
    [
        ({"type": "Api", "id": "billing"}, None),  # the upstream's Api by default
        ({"type": "Api", "id": "ledger"}, "ledger"),  # upstreams.<name>.api
        ({"type": "Endpoint", "id": "{name}"}, None),  # decided in its upstream's Api
        ({"type": "DataSet", "id": "invoices"}, None),
    ],
)
def test_no_warning_when_the_route_is_its_upstreams_api_or_not_an_api(
    caplog: pytest.LogCaptureFixture, resource: dict[str, str], api: str | None
) -> None:
    assert _warnings(caplog, _config(resource, api=api)) == []
