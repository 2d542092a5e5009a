"""The per-human rate limit through real processes: a control plane (``agentiam serve``
on SQLite), an upstream API (``tests/support/echo_upstream.py``) and the HTTP gateway
(``agentiam gateway http --config``) with ``rate_limits.per_human``, and agents using
the SDK (:class:`~agentiam.sdk.AgentClient`) with tokens delegated by their humans
(RFC 8693 token exchange of a human's subject token).

Two agents of one human, each under its own ``per_agent`` limit, are refused together
(429 with ``Retry-After``) once the human's budget is spent; another human's agent is
not; each refusal is in the control plane's audit trail with the reason naming the
per-human limit.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.test_http_gateway_e2e import (
    ROOT,
    _admin_key,
    _drain,
    _register,
    _spawn,
    _stop,
    _wait_http,
)
from tests.e2e.test_quickstart import AGENTIAM, Server, env_for
from tests.support.live import free_port
from tests.support.live import until as poll

from agentiam.core.credentials.sealing import MasterKey
from agentiam.sdk import AccessToken, AgentClient

pytestmark = pytest.mark.e2e

HUMAN_BURST = 3  # the human's calls at once; each agent may make 5 on its own
PER_HUMAN = "rate limit for GET invoices exceeded (per_human limit)"


@dataclass
class Setup:
    cp: Server
    admin: str
    gw_url: str
    gateway_log: Path
    tokens: dict[str, tuple[AgentClient, AccessToken]]  # agent name: client, delegated token

    def call(self, name: str) -> tuple[httpx.Response, str]:
        """One call through the gateway as agent ``name`` with its delegated token,
        and the trace id it carried."""
        client, token = self.tokens[name]
        trace = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
        with client.http(self.gw_url, token=token, timeout=30) as http:
            return http.get("/v1/invoices/inv-1", headers=headers), trace

    def events(self, trace: str) -> list[dict[str, Any]]:
        with httpx.Client(
            base_url=self.cp.url, headers={"Authorization": f"Bearer {self.admin}"}, timeout=10
        ) as admin:
            r = admin.get("/v1/audit/events", params={"trace_id": trace})
            assert r.status_code == 200, r.text
            return list(r.json()["items"])


def _grant_and_delegate(
    admin: httpx.Client, human: str, agent: str, key: Any, cp_url: str, gw_url: str
) -> tuple[AgentClient, AccessToken]:
    """Grant ``agent`` to act for ``human`` at the gateway, mint the human's subject
    token for it, and exchange it (RFC 8693) for the agent's delegated token."""
    r = admin.post(
        "/v1/delegation-grants",
        json={
            "human_id": human,
            "agent_id": agent,
            "scopes": ["billing"],
            "audiences": [gw_url],
            "ttl_seconds": 3600,
        },
    )
    assert r.status_code == 201, r.text
    r = admin.post(f"/v1/humans/{human}/subject-tokens", json={"agent_id": agent})
    assert r.status_code == 201, r.text
    client = AgentClient(cp_url, client_id=agent, key=key, resource=gw_url, scope="billing")
    token = client.act_for(r.json()["subject_token"], resource=gw_url)
    return client, token


@pytest.fixture(scope="module")
def setup(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("per-human")
    db = tmp / "cp.db"
    shutil.copy(sqlite_template, db)
    cp_port, gw_port, up_port = free_port(), free_port(), free_port()
    env = env_for(f"sqlite:///{db}", cp_port)
    env["AGENTIAM_MASTER_KEY"] = MasterKey.generate_text()  # the signing keys' seal
    env["AGENTIAM_POLICY_REFRESH_SECONDS"] = "0.2"
    env["AGENTIAM_ISSUER"] = f"http://127.0.0.1:{cp_port}"
    cp = Server(env, cp_port)
    admin_key = _admin_key(cp)
    _drain(cp.proc)
    gw_url = f"http://127.0.0.1:{gw_port}"
    up_url = f"http://127.0.0.1:{up_port}"
    procs = []
    tokens: dict[str, tuple[AgentClient, AccessToken]] = {}
    try:
        with httpx.Client(
            base_url=cp.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
        ) as admin:
            ada = admin.post(
                "/v1/humans", json={"display_name": "Ada", "email": "ada@example.com"}
            ).json()["id"]
            bob = admin.post(
                "/v1/humans", json={"display_name": "Bob", "email": "bob@example.com"}
            ).json()["id"]
            for name, human in (("planner", ada), ("mailer", ada), ("stranger", bob)):
                agent, key = _register(admin, human, f"{name}-bot", gw_url)
                r = admin.put(
                    f"/v1/policies/read-{name}",
                    json={
                        "text": f'permit (principal == Agent::"{agent}", '
                        'action == Action::"GET", resource is Endpoint);'
                    },
                )
                assert r.status_code == 200, r.text
                tokens[name] = _grant_and_delegate(admin, human, agent, key, cp.url, gw_url)
            verifier = admin.post(
                "/v1/admin-keys",
                json={"name": "gw", "role": "verifier", "sources": ["gateway/per-human-gw"]},
            )
            assert verifier.status_code == 201, verifier.text
            verifier_key = verifier.json()["secret"]

        upstream = _spawn(
            [sys.executable, "-m", "tests.support.echo_upstream", str(up_port)],
            {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            },
            tmp / "upstream.log",
        )
        procs.append(upstream)
        config = {
            "name": "per-human-gw",
            "public_url": gw_url,
            "listen": {"host": "127.0.0.1", "port": gw_port},
            "control_plane": {"url": cp.url, "key_env": "AGENTIAM_GATEWAY_KEY"},
            "spool": {"directory": str(tmp / "spool")},
            "rate_limits": {
                "per_agent": {"rate_per_second": 1 / 600, "burst": 5},
                "per_human": {"rate_per_second": 1 / 600, "burst": HUMAN_BURST},
            },
            "upstreams": {"billing": {"url": up_url}},
            "routes": [
                {
                    "name": "GET invoices",
                    "match": {"method": "GET", "path": "/v1/invoices/{id}"},
                    "upstream": "billing",
                    "action": "GET",
                    "resource": {"type": "Endpoint", "id": "invoice-{id}"},
                }
            ],
        }
        config_file = tmp / "gateway.yaml"
        config_file.write_text(json.dumps(config))  # JSON is YAML
        gw_env = {**os.environ, "AGENTIAM_GATEWAY_KEY": verifier_key, "PYTHONUNBUFFERED": "1"}
        gateway_log = tmp / "gateway.log"
        gateway = _spawn(
            [AGENTIAM, "gateway", "http", "--config", str(config_file)], gw_env, gateway_log
        )
        procs.append(gateway)
        _wait_http(up_url + "/__seen", upstream, tmp / "upstream.log")
        _wait_http(gw_url + "/healthz", gateway, gateway_log)
        yield Setup(cp=cp, admin=admin_key, gw_url=gw_url, gateway_log=gateway_log, tokens=tokens)
    finally:
        for client, _ in tokens.values():
            client.close()
        for proc in reversed(procs):
            _stop(proc)
        _stop(cp.proc)


def test_two_agents_of_one_human_are_refused_together_and_audited(setup: Setup) -> None:
    """The planner and the mailer, both acting for Ada, alternate: each stays under its
    own burst of 5, yet the fourth call between them is refused by Ada's budget of 3;
    Bob's agent still gets through; the refusals are in the audit trail with the
    reason naming the per-human limit."""
    answers = [setup.call(name) for name in ("planner", "mailer") * 3]
    statuses = [r.status_code for r, _ in answers]
    assert statuses == [200, 200, 200, 429, 429, 429], [r.text[:300] for r, _ in answers]
    for response, _ in answers[HUMAN_BURST:]:
        assert response.json()["error"] == "rate_limited"
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["detail"] == PER_HUMAN  # the RFC 9457 problem's detail
    stranger, stranger_trace = setup.call("stranger")  # Bob's agent: his own budget
    assert stranger.status_code == 200, stranger.text[:300]

    refused = [trace for _, trace in answers[HUMAN_BURST:]]

    def audited() -> list[dict[str, Any]] | None:
        found = [e for trace in refused for e in setup.events(trace)]
        return found if len(found) == len(refused) else None

    events = poll(audited, 20)
    assert events is not None
    ada = events[0]["initiating_human"]
    for event in events:
        assert event["type"] == "api.request.rejected"
        assert event["reason"] == PER_HUMAN
        assert event["details"]["status"] == 429
        assert event["initiating_human"] == ada  # the id the event carries anyway
    assert {e["agent_id"] for e in events} == {
        setup.tokens["planner"][0].client_id,
        setup.tokens["mailer"][0].client_id,
    }
    allowed = poll(
        lambda: [e for e in setup.events(stranger_trace) if e["type"] == "authz.decision"] or None,
        20,
    )
    assert allowed is not None
    assert allowed[0]["initiating_human"] != ada
