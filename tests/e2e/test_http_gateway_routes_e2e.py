"""The HTTP gateway's catch-all routes (``{name*}``) and route attributes
(``resource.attributes``) with real processes: a control plane (``agentiam serve`` on
SQLite, with a schema extension declaring ``Endpoint`` attributes ``destructive`` and
``risk``), an upstream API (``tests/support/echo_upstream.py``, which reports what it
received), the gateway (``agentiam gateway http --config``) and an agent using the
SDK with DPoP.

- a catch-all route forwards the rest of the path beneath the upstream's prefix and
  is decided on the id made from it; a literal route wins over it;
- traversal attempts (``..``, ``%2e%2e``, ``%2f``, ``%5c``, ``//``, backslashes,
  Unicode lookalikes of ``.``, ``/`` and ``\\`` such as ``%EF%BC%8E`` and ``%C2%A5``,
  segments NFKC turns into another text such as a fullwidth ``readme``) sent byte for
  byte on a socket are 400 and never reach the upstream;
- ``forbid ... when { resource.destructive }`` refuses the DELETE route that gives
  its resource ``destructive: true`` (403, audited, not forwarded), while the GET
  route on the same ids, and a DELETE route with ``destructive: false``, pass; the
  catalog's ``destructive: false`` wins over the route's;
- a route's ``risk: 5`` makes a policy ask for approval: the request the gateway
  opens carries ``resource_attributes`` (shown to the human, bound in the
  fingerprint); once approved the retry goes through once; an approval opened for
  the same call without the attributes is not the gateway's call (mismatch);
- a route attribute the schema does not declare, or of the wrong type, a catch-all
  that is not last, and two routes the order of the list alone would choose between,
  stop ``agentiam gateway http`` with an error naming the route(s).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from tests.e2e.test_http_gateway_e2e import _admin_key, _drain, _spawn, _stop, _wait_http
from tests.e2e.test_quickstart import AGENTIAM, Server, env_for
from tests.support.live import free_port
from tests.support.live import until as poll

from agentiam.core.credentials.sealing import MasterKey
from agentiam.errors import PROBLEM_BASE
from agentiam.sdk import AgentClient, AgentKey

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NAME = "files-gw"
EXTENSION = {
    "entityTypes": {
        "Endpoint": {
            "shape": {
                "type": "Record",
                "attributes": {"destructive": {"type": "Boolean"}, "risk": {"type": "Long"}},
            }
        }
    }
}
POLICIES = {
    "all": 'permit (principal == Agent::"{agent}", action, resource);',
    "no-destructive": 'forbid (principal, action == Action::"DELETE", resource) '
    "when { resource has destructive && resource.destructive };",
    "risky-needs-approval": 'forbid (principal, action == Action::"POST", resource) '
    'when { resource has risk && resource.risk > 3 && context.approval.state != "approved" };',
}


def _route(method: str, path: str, rid: str, **resource: Any) -> dict[str, Any]:
    return {
        "match": {"method": method, "path": path},
        "upstream": "files",
        "action": method,
        "resource": {"type": "Endpoint", "id": rid, **resource},
    }


ROUTES = [
    _route("GET", "/files/{path*}", "file:{path}"),
    _route("GET", "/files/readme", "readme"),
    _route("DELETE", "/files/{path*}", "file:{path}", attributes={"destructive": True}),
    _route("DELETE", "/tmp/{name}", "tmp-{name}", attributes={"destructive": False}),
    _route("POST", "/jobs/{kind}/{args*}", "job:{kind}", attributes={"risk": 5}),
]


@dataclass
class World:
    cp: Server
    admin: str
    gw_url: str
    up_url: str
    agent_id: str
    agent: AgentClient
    tmp: Path
    gw_env: dict[str, str]
    config: dict[str, Any]

    def admin_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.cp.url, headers={"Authorization": f"Bearer {self.admin}"}, timeout=10
        )

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[str, httpx.Response]:
        trace = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
        headers.update(kwargs.pop("headers", {}))
        with self.agent.http(self.gw_url, timeout=30) as client:
            return trace, client.request(method, path, headers=headers, **kwargs)

    def seen(self) -> list[dict[str, Any]]:
        return list(httpx.get(self.up_url + "/__seen", timeout=10).json())

    def forwarded(self, method: str, raw_path: str) -> int:
        return sum(1 for s in self.seen() if (s["method"], s["raw_path"]) == (method, raw_path))

    def decision(self, trace: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            with self.admin_client() as admin:
                r = admin.get(
                    "/v1/audit/events",
                    params={"type": "authz.decision", "trace_id": trace, "limit": 10},
                )
            assert r.status_code == 200, r.text
            items = [e for e in r.json()["items"] if e["source"] == f"gateway/{NAME}"]
            return items[0] if items else None

        event = poll(found)
        assert event is not None, f"no decision audited for trace {trace}"
        return dict(event)


@pytest.fixture(scope="module")
def world(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("http-gateway-routes")
    db = tmp / "cp.db"
    shutil.copy(sqlite_template, db)
    cp_port, gw_port, up_port = free_port(), free_port(), free_port()
    env = env_for(f"sqlite:///{db}", cp_port)
    env["AGENTIAM_MASTER_KEY"] = MasterKey.generate_text()
    env["AGENTIAM_POLICY_REFRESH_SECONDS"] = "0.2"
    env["AGENTIAM_ISSUER"] = f"http://127.0.0.1:{cp_port}"
    cp = Server(env, cp_port)
    admin_key = _admin_key(cp)
    _drain(cp.proc)
    gw_url = f"http://127.0.0.1:{gw_port}"
    up_url = f"http://127.0.0.1:{up_port}"
    procs: list[subprocess.Popen[str]] = []
    agent: AgentClient | None = None
    try:
        with httpx.Client(
            base_url=cp.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
        ) as admin:
            r = admin.put("/v1/policy-schema/extension", json={"extension": EXTENSION})
            assert r.status_code == 200, r.text
            owner = admin.post(
                "/v1/humans", json={"display_name": "Ada", "email": "ada@example.com"}
            ).json()["id"]
            key = AgentKey.generate()
            r = admin.post(
                "/v1/agents",
                json={
                    "name": "files-bot",
                    "owners": [owner],
                    "purpose": "manages files through the gateway",
                    "environment": "production",
                    "activate": True,
                    "keys": [key.public_jwk()],
                    "audiences": [gw_url],
                },
            )
            assert r.status_code == 201, r.text
            agent_id = str(r.json()["id"])
            for policy_id, text in POLICIES.items():
                r = admin.put(
                    f"/v1/policies/{policy_id}", json={"text": text.replace("{agent}", agent_id)}
                )
                assert r.status_code == 200, r.text
            # the catalog says this file is not destructive to delete: it wins
            r = admin.put(
                "/v1/resources/Endpoint/file:keepme",
                json={"attributes": {"destructive": False}},
            )
            assert r.status_code in (200, 201), r.text
            verifier = admin.post(
                "/v1/admin-keys",
                json={"name": "gw", "role": "verifier", "sources": [f"gateway/{NAME}"]},
            )
            assert verifier.status_code == 201, verifier.text
            verifier_key = verifier.json()["secret"]
        upstream = _spawn(
            [sys.executable, "-m", "tests.support.echo_upstream", str(up_port)],
            {**os.environ, "PYTHONPATH": str(ROOT)},
            tmp / "upstream.log",
        )
        procs.append(upstream)
        gw_env = {
            **os.environ,
            "AGENTIAM_GATEWAY_KEY": verifier_key,
            "PYTHONUNBUFFERED": "1",
        }
        config = {
            "name": NAME,
            "public_url": gw_url,
            "listen": {"host": "127.0.0.1", "port": gw_port},
            "control_plane": {"url": cp.url, "key_env": "AGENTIAM_GATEWAY_KEY"},
            "spool": {"directory": str(tmp / "spool")},
            "approvals": {"retry_after_seconds": 1},
            "upstreams": {"files": {"url": up_url + "/base"}},
            "routes": ROUTES,
        }
        config_file = tmp / "gateway.yaml"
        config_file.write_text(json.dumps(config))
        gateway = _spawn(
            [AGENTIAM, "gateway", "http", "--config", str(config_file)],
            gw_env,
            tmp / "gateway.log",
        )
        procs.append(gateway)
        _wait_http(up_url + "/__seen", upstream, tmp / "upstream.log")
        _wait_http(gw_url + "/healthz", gateway, tmp / "gateway.log")
        agent = AgentClient(cp.url, client_id=agent_id, key=key, resource=gw_url)
        yield World(cp, admin_key, gw_url, up_url, agent_id, agent, tmp, gw_env, config)
    finally:
        if agent is not None:
            agent.close()
        for proc in reversed(procs):
            _stop(proc)
        _stop(cp.proc)


# -- catch-all ----------------------------------------------------------------------------


def test_a_catch_all_forwards_the_rest_of_the_path_and_decides_on_it(world: World) -> None:
    trace, r = world.call("GET", "/files/a/b%20c/d.txt")
    assert r.status_code == 200, r.text
    assert world.forwarded("GET", "/base/files/a/b%20c/d.txt") == 1
    decision = world.decision(trace)
    assert decision["resource"] == {"type": "Endpoint", "id": "file:a/b c/d.txt"}
    # the literal route wins over the catch-all listed before it
    trace, r = world.call("GET", "/files/readme")
    assert r.status_code == 200, r.text
    assert world.decision(trace)["resource"]["id"] == "readme"


def _raw(url: str, method: bytes, target: bytes) -> int:
    """One request written byte for byte (no client normalises its path)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(method + b" " + target + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


TRAVERSALS = [
    b"/files/../admin",
    b"/files/a/../../admin",
    b"/files/./a",
    b"/files/%2e%2e/admin",
    b"/files/a/%2E%2e/%2e%2E/admin",
    b"/files/..;/admin",
    b"/files/a%2fb",
    b"/files/..%2F..%2Fadmin",
    b"/files/a%5cb",
    b"/files/..%5c..%5cadmin",
    b"/files/a\\b",
    b"/files//etc/passwd",
    b"/files/a//b",
    b"/files/%c0%ae%c0%ae/admin",
    # lookalikes an upstream folding Unicode (NFKC, best-fit code pages) reads as
    # '..', '/' or '\\': U+2024, U+FF0E, U+FF0F, U+FF3C, U+2215
    b"/files/%E2%80%A4%E2%80%A4/admin",
    b"/files/%EF%BC%8E%EF%BC%8E/admin",
    b"/files/..%EF%BC%8Fadmin",
    b"/files/a%EF%BC%BCb",
    b"/files/..%E2%88%95admin",
    # U+00A5 YEN SIGN and U+20A9 WON SIGN, '\\' in cp932 and cp949 (best fit)
    b"/files/..%C2%A5..%C2%A5win.ini",
    b"/files/..%E2%82%A9x",
    # another text once NFKC-folded: U+FF52 FULLWIDTH SMALL R, "readme" (the literal
    # route) to an upstream that normalises, would be decided by the catch-all
    b"/files/%EF%BD%92eadme",
    b"/files/a%C2%BDb",  # U+00BD: "1" U+2044 FRACTION SLASH "2"
]


@pytest.mark.parametrize("method", [b"GET", b"DELETE"])
def test_traversals_never_reach_the_upstream(world: World, method: bytes) -> None:
    before = len(world.seen())
    for target in TRAVERSALS:
        assert _raw(world.gw_url, method, target) == 400, target
    assert len(world.seen()) == before


# -- attributes ---------------------------------------------------------------------------


def _refused(response: httpx.Response, policy: str) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "insufficient_scope"
    assert policy in response.json()["detail"]


def test_a_destructive_route_is_forbidden_and_the_same_ids_read_are_not(world: World) -> None:
    trace, r = world.call("DELETE", "/files/reports/2026/q1.csv")
    _refused(r, "no-destructive")
    assert world.forwarded("DELETE", "/base/files/reports/2026/q1.csv") == 0
    decision = world.decision(trace)
    assert decision["outcome"] == "denied"
    assert decision["details"]["policies"] == ["no-destructive"]
    assert decision["resource"]["id"] == "file:reports/2026/q1.csv"
    _, r = world.call("GET", "/files/reports/2026/q1.csv")  # the same id, no attributes
    assert r.status_code == 200, r.text
    _, r = world.call("DELETE", "/tmp/scratch")  # destructive: false
    assert r.status_code == 200, r.text
    assert world.forwarded("DELETE", "/base/tmp/scratch") == 1


def test_the_catalogs_attribute_wins_over_the_routes(world: World) -> None:
    _, r = world.call("DELETE", "/files/keepme")  # a catch-all of one segment
    assert r.status_code == 200, r.text
    assert world.forwarded("DELETE", "/base/files/keepme") == 1


def _pending(response: httpx.Response) -> str:
    assert response.status_code == 403, response.text
    problem = response.json()
    assert problem["type"] == PROBLEM_BASE + "approval-pending", problem
    return str(problem["approval_id"])


def test_an_approval_is_opened_and_used_with_the_routes_attributes(world: World) -> None:
    path = "/jobs/export/2026/all"
    _, r = world.call("POST", path, json={})
    approval = _pending(r)
    assert world.forwarded("POST", "/base" + path) == 0
    with world.admin_client() as admin:
        shown = admin.get(f"/v1/approvals/{approval}").json()
        assert shown["resource"] == {"type": "Endpoint", "id": "job:export"}
        assert shown["resource_attributes"] == {"risk": 5}
        assert shown["resource_parents"] == [{"type": "Api", "id": "files"}]
        # the same call opened without the route's attributes: another request, which
        # the gateway's call (bound to them) cannot use
        bare = admin.post(
            "/v1/approvals",
            json={
                "principal": {"type": "Agent", "id": world.agent_id},
                "action": "POST",
                "resource": {"type": "Endpoint", "id": "job:export"},
                "resource_parents": [{"type": "Api", "id": "files"}],
            },
        )
        assert bare.status_code == 409, bare.text  # without risk, no policy asks
        r = admin.post(f"/v1/approvals/{approval}/approve", json={"reason": "checked"})
        assert r.status_code == 200, r.text
    _, r = world.call("POST", path, json={}, headers={"AgentIAM-Approval": approval})
    assert r.status_code == 200, r.text
    assert world.forwarded("POST", "/base" + path) == 1
    _, again = world.call("POST", path, json={}, headers={"AgentIAM-Approval": approval})
    assert again.status_code == 403, again.text
    assert again.json()["type"] == PROBLEM_BASE + "approval-used"
    assert world.forwarded("POST", "/base" + path) == 1


def test_an_approval_for_another_jobs_attributes_is_a_mismatch(world: World) -> None:
    """Approved for ``job:export`` as the gateway opened it (``risk: 5``), the approval
    cannot be used for the same call with other attributes (what a route giving the
    resource ``risk: 9`` would send): the fingerprint binds them."""
    _, r = world.call("POST", "/jobs/export/x", json={})
    approval = _pending(r)
    with world.admin_client() as admin:
        r = admin.post(f"/v1/approvals/{approval}/approve", json={"reason": "checked"})
        assert r.status_code == 200, r.text
        use = admin.post(
            f"/v1/approvals/{approval}/use",
            json={
                "principal": {"type": "Agent", "id": world.agent_id},
                "action": "POST",
                "resource": {"type": "Endpoint", "id": "job:export"},
                "resource_parents": [{"type": "Api", "id": "files"}],
                "resource_attributes": {"risk": 9},
                "context": {},
            },
        )
    assert use.status_code == 403, use.text
    # still approved for its own call, which goes through
    _, r = world.call("POST", "/jobs/export/x", json={}, headers={"AgentIAM-Approval": approval})
    assert r.status_code == 200, r.text


# -- the start ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (
            _route("DELETE", "/x/{id}", "x-{id}", attributes={"colour": "red"}),
            "routes[0] (DELETE /x/{id}).resource.attributes.colour: is not declared for a Endpoint",
        ),
        (
            _route("DELETE", "/x/{id}", "x-{id}", attributes={"destructive": "yes"}),
            "routes[0] (DELETE /x/{id}).resource.attributes.destructive",
        ),
        (
            _route("GET", "/x/{rest*}/y", "x"),
            "routes[0].match.path: the catch-all {rest*} must be the last segment",
        ),
        (
            [_route("GET", "/x/{id}", "x-{id}"), _route("GET", "/x/{other}", "y-{other}")],
            "routes[0] (GET /x/{id}) and routes[1] (GET /x/{other}): the second is never matched",
        ),
        (
            [_route("GET", "/x/{a}/c", "x"), _route("GET", "/x/b/{c}", "y")],
            "routes[0] (GET /x/{a}/c) and routes[1] (GET /x/b/{c}) both match GET /x/b/c",
        ),
    ],
)
def test_a_route_the_gateway_cannot_honour_stops_its_start(
    world: World, route: dict[str, Any] | list[dict[str, Any]], message: str
) -> None:
    config = {
        **world.config,
        "name": NAME,
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "spool": {"directory": str(world.tmp / f"spool-{secrets.token_hex(4)}")},
        "routes": route if isinstance(route, list) else [route],
    }
    file = world.tmp / f"bad-{secrets.token_hex(4)}.yaml"
    file.write_text(json.dumps(config))
    done = subprocess.run(
        [AGENTIAM, "gateway", "http", "--config", str(file)],
        env=world.gw_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    output = " ".join((done.stdout + done.stderr).split())
    assert message in output, output
