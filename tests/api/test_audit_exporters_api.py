"""Exporter health over HTTP (GET /v1/audit/exporters) and on /metrics, with the
background loop delivering the trail to a real JSONL file."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.oauth_support import CTX, OAuthLive, oauth_live

from agentiam.core.access.admin_keys import Role
from agentiam.services.humans import NewHuman


@pytest.fixture
def live(sqlite_url: str, tmp_path: Path) -> Iterator[OAuthLive]:
    config = tmp_path / "exporters.yaml"
    config.write_text(
        f"- {{name: siem-file, type: jsonl, path: {tmp_path / 'out' / 'audit.jsonl'}}}\n"
    )
    with oauth_live(
        sqlite_url, audit_integrate_seconds=0.05, audit_exporters_file=str(config)
    ) as running:
        yield running


def test_exporter_health_and_metrics(live: OAuthLive, tmp_path: Path) -> None:
    c = live.container
    for i in range(3):
        c.humans.create(CTX, NewHuman(display_name=f"H{i}", email=f"h{i}@example.com"))
    auditor = live.container.admin_keys.create(CTX, name="auditor", role=Role.AUDITOR).secret
    with live.admin_client() as admin, _client(live, auditor) as reader:
        # Generous: the background loops share two cores with the rest of the suite.
        deadline = time.monotonic() + 30
        item: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = reader.get("/v1/audit/exporters")
            assert response.status_code == 200, response.text
            [item] = response.json()["items"]
            if item["position"] >= 3 and item["lag"] == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the exporter did not catch up within 30 s: {item}")
        assert item["name"] == "siem-file"
        assert item["type"] == "jsonl"
        assert item["healthy"] is True
        assert item["consecutive_failures"] == 0
        assert item["last_error"] is None
        assert item["last_success_at"] is not None
        lines = (tmp_path / "out" / "audit.jsonl").read_text().splitlines()
        assert [json.loads(x)["log_index"] for x in lines][: item["position"]] == list(
            range(item["position"])
        )
        metrics = admin.get("/metrics").text
        assert 'agentiam_audit_exporter_healthy{exporter="siem-file"} 1.0' in metrics
        assert 'agentiam_audit_exporter_lag{exporter="siem-file"}' in metrics
        assert 'agentiam_audit_exporter_delivered_events_total{exporter="siem-file"}' in metrics


def test_exporters_needs_audit_read(live: OAuthLive) -> None:
    verifier = live.container.admin_keys.create(
        CTX, name="pep", role=Role.VERIFIER, sources=["gateway/pep"]
    ).secret
    with _client(live, verifier) as pep, httpx.Client(base_url=live.url) as anonymous:
        assert pep.get("/v1/audit/exporters").status_code == 403
        assert anonymous.get("/v1/audit/exporters").status_code == 401


def _client(live: OAuthLive, key: str) -> httpx.Client:
    return httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
