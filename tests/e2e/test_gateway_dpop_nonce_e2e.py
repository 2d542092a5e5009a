"""Resource-server DPoP nonces (RFC 9449 section 9) at both gateways, with real
processes: a control plane (``agentiam serve``), an HTTP upstream
(``tests/support/echo_upstream.py``), an MCP upstream (the SDK's ``MCPServer``,
:func:`tests.e2e.test_mcp_gateway_e2e.upstream_main`), and ``agentiam gateway http``
and ``agentiam gateway mcp`` with ``dpop: {require_nonce: true}`` and one shared nonce
key (as replicas would share it). A key rotation with overlap
(``dpop.nonce_accept_keys``) runs two more HTTP gateway replicas behind a round-robin
balancer.

Agents use the SDK: an httpx client with :class:`~agentiam.sdk.DPoPAuth` and the stock
MCP client session through :meth:`~agentiam.sdk.AgentClient.mcp_session`; both take
the first ``use_dpop_nonce`` answer, retry once with its nonce, and keep using the
nonces the gateway hands out. Raw requests try every way of getting the nonce wrong.
"""

from __future__ import annotations

import itertools
import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from tests.e2e.test_mcp_gateway_e2e import UPSTREAM_SECRET, _post, _rpc
from tests.e2e.test_quickstart import AGENTIAM, Server, cli, env_for
from tests.support.live import free_port
from tests.support.live import until as poll
from tests.support.network import Handler, serve_http

from agentiam.adapters.gateway.config import DpopSettings
from agentiam.core.credentials.nonces import NonceIssuer
from agentiam.core.credentials.sealing import MasterKey
from agentiam.sdk import AgentClient, AgentKey, dpop_proof

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "AGENTIAM_GATEWAY_DPOP_NONCE_KEY"
POLICIES = """
@id("nonce-invoices")
permit (principal in AgentGroup::"team=nonce", action == Action::"GET", resource is Endpoint);
@id("nonce-search")
permit (principal in AgentGroup::"team=nonce", action == Action::"invoke_tool", resource)
when { resource == Tool::"bank.search" };
"""
DESCRIPTION = 'error_description="a current server nonce is required in the DPoP proof"'


@dataclass
class World:
    cp: str
    admin: dict[str, str]
    http_url: str  # the HTTP gateway's public URL (its routes below it)
    mcp_url: str  # the MCP gateway's endpoint
    up_url: str
    agent_id: str
    key: AgentKey
    nonces: NonceIssuer  # the gateways' own: minted here for the negative cases
    cp_master_key: str  # the control plane's (its token endpoint's nonces derive from it)
    # for more gateway processes: the directory, the environment, the configuration of
    # the HTTP gateway, and the public URL the rotation's replicas serve (the agent may
    # get tokens for it; the control plane takes the audit of gateway/nonce-rot-1 and -2)
    tmp: Path
    gw_env: dict[str, str]
    http_config: dict[str, Any]
    rotation_url: str

    def agent(self, resource: str) -> AgentClient:
        """A new client for the agent: it holds no nonce yet."""
        return AgentClient(self.cp, client_id=self.agent_id, key=self.key, resource=resource)


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{log.stem} exited:\n{log.read_text()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{log.stem} did not start:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _gateway_config(
    name: str, port: int, public_url: str, cp: str, tmp: Path, section: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "public_url": public_url,
        "listen": {"host": "127.0.0.1", "port": port},
        "control_plane": {"url": cp, "outage_seconds": 30},
        "spool": {"directory": str(tmp / f"{name}-spool")},
        "secrets": {"store": str(tmp / "secrets.json")},
        "dpop": {"require_nonce": True, "nonce_key_env": KEY_ENV, "nonce_lifetime_seconds": 60},
        **section,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("dpop-nonce")
    shutil.copyfile(sqlite_template, tmp / "cp.db")
    cp_port, up_port, mcp_up_port = free_port(), free_port(), free_port()
    http_port, mcp_port, rotation_port = free_port(), free_port(), free_port()
    env = env_for(f"sqlite:///{tmp / 'cp.db'}", cp_port)
    env["AGENTIAM_MASTER_KEY"] = MasterKey.generate_text()
    http_url = f"http://127.0.0.1:{http_port}"
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    cp_url = f"http://127.0.0.1:{cp_port}"
    rotation_url = f"http://127.0.0.1:{rotation_port}"

    admin = json.loads(
        cli(env, "admin-keys", "create", "--name", "ops", "--role", "admin", "--json").stdout
    )["secret"]
    verifier = json.loads(
        cli(env, "admin-keys", "create", "--name", "gw", "--role", "verifier",
            "--source", "gateway/nonce-http", "--source", "gateway/nonce-mcp",
            "--source", "gateway/nonce-rot-1", "--source", "gateway/nonce-rot-2", "--json").stdout
    )["secret"]  # fmt: skip
    (tmp / "policies.cedar").write_text(POLICIES)
    cli(env, "policy", "import", str(tmp / "policies.cedar"))
    human = json.loads(
        cli(env, "humans", "create", "--name", "Ada", "--email", "ada@example.com", "--json").stdout
    )["id"]
    key = AgentKey.generate()
    (tmp / "agent.pub.json").write_text(json.dumps(key.public_jwk()))
    agent_id = json.loads(
        cli(env, "agents", "create", "nonce-bot", "--owner", human, "--purpose", "tests",
            "--environment", "production", "--key-file", str(tmp / "agent.pub.json"),
            "--scope", "tools", "--audience", http_url, "--audience", mcp_url,
            "--audience", rotation_url,
            "--label", "team=nonce", "--activate", "--json").stdout
    )["id"]  # fmt: skip

    nonce_key = MasterKey.generate_text()
    gw_env = {
        **env,
        "AGENTIAM_GATEWAY_KEY": verifier,
        "AGENTIAM_GATEWAY_SECRETS_KEY": MasterKey.generate_text(),
        KEY_ENV: nonce_key,
    }
    cli(gw_env, "gateway", "secrets", "put", "bank-mcp", "--kind", "api_key",
        "--store", str(tmp / "secrets.json"), input=UPSTREAM_SECRET)  # fmt: skip
    http_config = _gateway_config(
        "nonce-http", http_port, http_url, cp_url, tmp,
        {
            "upstreams": {"echo": {"url": f"http://127.0.0.1:{up_port}"}},
            "routes": [
                {"match": {"method": "GET", "path": "/v1/invoices/{id}"}, "upstream": "echo",
                 "action": "GET", "resource": {"type": "Endpoint", "id": "invoice-{id}"}},
            ],
        },
    )  # fmt: skip
    mcp_config = _gateway_config(
        "nonce-mcp", mcp_port, mcp_url, cp_url, tmp,
        {
            "servers": [
                {"name": "bank", "url": f"http://127.0.0.1:{mcp_up_port}/mcp", "prefix": "bank.",
                 "credential": {"secret": "bank-mcp", "header": "Authorization",
                                "prefix": "Bearer "}},
            ],
            "catalog_seconds": 0,
        },
    )  # fmt: skip
    (tmp / "http.yaml").write_text(json.dumps(http_config))
    (tmp / "mcp.yaml").write_text(json.dumps(mcp_config))

    server = Server(env, cp_port)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            _spawn([sys.executable, "-m", "tests.support.echo_upstream", str(up_port)],
                   env, tmp / "echo.log")
        )  # fmt: skip
        procs.append(
            _spawn([sys.executable, "-c",
                    "from tests.e2e.test_mcp_gateway_e2e import upstream_main; "
                    f"upstream_main({mcp_up_port}, {str(tmp / 'mcp-upstream.jsonl')!r})"],
                   env, tmp / "mcp-upstream.log")
        )  # fmt: skip
        _wait(f"http://127.0.0.1:{up_port}/__seen", procs[0], tmp / "echo.log")
        _wait(f"http://127.0.0.1:{mcp_up_port}/", procs[1], tmp / "mcp-upstream.log")
        for kind in ("http", "mcp"):
            procs.append(
                _spawn([AGENTIAM, "gateway", kind, "--config", str(tmp / f"{kind}.yaml")],
                       gw_env, tmp / f"gateway-{kind}.log")
            )  # fmt: skip
        _wait(http_url + "/healthz", procs[2], tmp / "gateway-http.log")
        _wait(f"http://127.0.0.1:{mcp_port}/healthz", procs[3], tmp / "gateway-mcp.log")
        issuer = DpopSettings(True, KEY_ENV, None, 60).nonce_issuer({KEY_ENV: nonce_key})
        assert issuer is not None
        yield World(
            cp=server.url,
            admin={"Authorization": f"Bearer {admin}"},
            http_url=http_url,
            mcp_url=mcp_url,
            up_url=f"http://127.0.0.1:{up_port}",
            agent_id=agent_id,
            key=key,
            nonces=issuer,
            cp_master_key=env["AGENTIAM_MASTER_KEY"],
            tmp=tmp,
            gw_env=gw_env,
            http_config=http_config,
            rotation_url=rotation_url,
        )
    finally:
        for proc in reversed(procs):
            _stop(proc)
        server.stop()


# -- helpers -------------------------------------------------------------------------------


def _headers(world: World, agent: AgentClient, url: str, method: str, nonce: str | None) -> Any:
    token = agent.token().value
    proof = dpop_proof(agent.dpop_key, method=method, url=url, access_token=token, nonce=nonce)
    return {"Authorization": f"DPoP {token}", "DPoP": proof}


def _send(world: World, target: str, headers: dict[str, str], trace: str) -> httpx.Response:
    """One raw request to ``target`` ("http": a routed GET; "mcp": a 2026-07-28
    ``tools/list``) with ``headers`` and the trace id ``trace``."""
    headers = {**headers, "traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
    if target == "http":
        return httpx.get(world.http_url + "/v1/invoices/7", headers=headers, timeout=10)
    return _post(world.mcp_url, _rpc("tools/list"), headers)


def _url(world: World, target: str) -> str:
    """The ``htu`` of :func:`_send`'s request."""
    return world.http_url + "/v1/invoices/7" if target == "http" else world.mcp_url


def _resource(world: World, target: str) -> str:
    """The audience of tokens for ``target``: the gateway's public URL."""
    return world.http_url if target == "http" else world.mcp_url


def _method(target: str) -> str:
    return "GET" if target == "http" else "POST"


def _assert_use_nonce(world: World, r: httpx.Response) -> None:
    """RFC 9449 section 9: 401, the challenge's error and description, a fresh nonce."""
    assert r.status_code == 401, r.text
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("DPoP "), challenge
    assert 'error="use_dpop_nonce"' in challenge, challenge
    assert DESCRIPTION in challenge, challenge
    assert "resource_metadata=" in challenge  # RFC 9728 section 5.1, as every 401
    assert world.nonces.is_valid(r.headers["dpop-nonce"], int(time.time()))
    assert r.headers.get_list("dpop-nonce") == [r.headers["dpop-nonce"]]  # one, not two
    assert r.json()["error"] == "use_dpop_nonce"


def _refusals(world: World, traces: list[str]) -> dict[str, dict[str, Any]]:
    """The ``api.request.rejected`` events of ``traces``, once all are in the trail."""

    def found() -> dict[str, dict[str, Any]] | None:
        events = {}
        for trace in traces:
            r = httpx.get(
                world.cp + "/v1/audit/events",
                params={"type": "api.request.rejected", "trace_id": trace},
                headers=world.admin,
                timeout=10,
            )
            assert r.status_code == 200, r.text
            for event in r.json()["items"]:
                events[trace] = event
        return events if len(events) == len(traces) else None

    result = poll(found, 20)
    assert result is not None, "refusals missing from the audit trail"
    return result


# -- the SDK works with nonces on ----------------------------------------------------------


def test_sdk_httpx_auth_takes_the_nonce_retries_once_and_keeps_the_latest(world: World) -> None:
    agent = world.agent(world.http_url)
    try:
        with agent.http(world.http_url, timeout=30) as http:
            first = http.get("/v1/invoices/1")
            assert first.status_code == 200, first.text
            # the first try had no nonce: 401 use_dpop_nonce, then one retry with it
            assert [h.status_code for h in first.history] == [401]
            assert 'error="use_dpop_nonce"' in first.history[0].headers["www-authenticate"]
            # a successful answer carries a fresh nonce too, and the SDK uses it
            handed = first.headers["dpop-nonce"]
            assert world.nonces.is_valid(handed, int(time.time()))
            for n in range(2, 5):
                r = http.get(f"/v1/invoices/{n}")
                assert (r.status_code, r.history) == (200, []), r.text
            assert agent._nonces.get(world.http_url) == r.headers["dpop-nonce"]
    finally:
        agent.close()


def test_stock_mcp_client_through_agent_client_works_with_nonces(world: World) -> None:
    agent = world.agent(world.mcp_url)

    async def scenario() -> None:
        async with agent.mcp_session(world.mcp_url) as session:
            tools = {t.name for t in (await session.list_tools()).tools}
            assert "bank.search" in tools
            result = await session.call_tool("bank.search", {"query": "invoices"})
            assert not result.is_error
            assert " ".join(getattr(b, "text", "") for b in result.content) == (
                "results for invoices"
            )

    try:
        anyio.run(scenario)
        origin = world.mcp_url.removesuffix("/mcp")
        remembered = agent._nonces.get(origin)
        assert remembered is not None
        assert world.nonces.is_valid(remembered, int(time.time()))
    finally:
        agent.close()


# -- every wrong nonce is refused with use_dpop_nonce, and audited --------------------------


@pytest.mark.parametrize("target", ["http", "mcp"])
def test_missing_forged_expired_or_foreign_nonces_are_refused(world: World, target: str) -> None:
    agent = world.agent(_resource(world, target))
    now = int(time.time())
    valid = world.nonces.issue(now)
    forged = valid[:-4] + ("AAAA" if not valid.endswith("AAAA") else "BBBB")  # MAC altered
    cases: dict[str, str | None] = {
        "missing": None,
        "forged": forged,
        "expired": world.nonces.issue(now - world.nonces.lifetime - 5),
        "another key": NonceIssuer(secrets.token_bytes(32), lifetime=60).issue(now),
        # what the control plane's token endpoint hands out (bootstrap.py's key)
        "the control plane's": NonceIssuer(
            MasterKey.from_text(world.cp_master_key).derive("dpop-nonce")
        ).issue(now),
    }
    traces = {}
    try:
        for case, nonce in cases.items():
            trace = secrets.token_hex(16)
            headers = _headers(world, agent, _url(world, target), _method(target), nonce)
            r = _send(world, target, headers, trace)
            _assert_use_nonce(world, r)
            traces[case] = trace
        events = _refusals(world, list(traces.values()))
    finally:
        agent.close()
    for case, trace in traces.items():
        event = events[trace]
        assert event["agent_id"] == world.agent_id, case
        assert event["details"]["status"] == 401
        expected = "DPoP proof without a nonce" if case == "missing" else "DPoP nonce not current"
        assert event["reason"].startswith(f"use_dpop_nonce: {expected}"), (case, event["reason"])
        assert cases[case] is None or str(cases[case]) not in json.dumps(event)  # not quoted


@pytest.mark.parametrize("target", ["http", "mcp"])
def test_a_proof_with_a_current_nonce_is_still_single_use(world: World, target: str) -> None:
    agent = world.agent(_resource(world, target))
    try:
        nonce = world.nonces.issue(int(time.time()))
        headers = _headers(world, agent, _url(world, target), _method(target), nonce)
        first = _send(world, target, headers, secrets.token_hex(16))
        assert first.status_code == 200, first.text
        assert world.nonces.is_valid(first.headers["dpop-nonce"], int(time.time()))
        replayed = _send(world, target, headers, secrets.token_hex(16))
        assert replayed.status_code == 401, replayed.text
        assert 'error="invalid_dpop_proof"' in replayed.headers["www-authenticate"]
    finally:
        agent.close()


def test_replicas_sharing_the_key_accept_each_others_nonces(world: World) -> None:
    """Nonces are stateless: one gateway's nonce is good at another process holding the
    same key (here the HTTP and the MCP gateway, as two replicas would be)."""
    agent = world.agent(world.http_url)
    mcp_agent = world.agent(world.mcp_url)
    try:
        # an answer without a token still hands out a nonce
        from_http = httpx.get(world.http_url + "/v1/invoices/9", timeout=10)
        assert from_http.status_code == 401
        nonce = from_http.headers["dpop-nonce"]
        headers = _headers(world, mcp_agent, world.mcp_url, "POST", nonce)
        assert _send(world, "mcp", headers, secrets.token_hex(16)).status_code == 200
        from_mcp = _post(world.mcp_url, _rpc("tools/list"), {}).headers["dpop-nonce"]
        headers = _headers(world, agent, _url(world, "http"), "GET", from_mcp)
        assert _send(world, "http", headers, secrets.token_hex(16)).status_code == 200
    finally:
        agent.close()
        mcp_agent.close()


def test_only_the_protected_endpoints_hand_out_nonces(world: World) -> None:
    mcp_base = world.mcp_url.removesuffix("/mcp")
    for url in (
        world.http_url + "/healthz",
        mcp_base + "/healthz",
        mcp_base + "/.well-known/oauth-protected-resource/mcp",
    ):
        r = httpx.get(url, timeout=10)
        assert r.status_code == 200, url
        assert "dpop-nonce" not in r.headers, url


# -- key rotation with overlap: dpop.nonce_accept_keys ----------------------------------------


def _balancer(backends: list[str]) -> type[Handler]:
    """A round-robin HTTP load balancer: each request (not each connection) goes to
    the next of ``backends``, and its answer comes back as the backend gave it (its
    ``X-Backend`` header names which one served it)."""
    turn = itertools.cycle(range(len(backends)))

    class Balancer(Handler):
        def forward(self) -> None:
            headers, body = self.request_body()
            n = next(turn)
            hop = {"host", "connection", "content-length", "transfer-encoding", "keep-alive"}
            r = httpx.request(
                self.command,
                backends[n] + self.path,
                headers={k: v for k, v in headers.items() if k not in hop},
                content=body,
                timeout=30,
            )
            self.send_response(r.status_code)
            for name, value in r.headers.multi_items():
                if name.lower() not in hop:
                    self.send_header(name, value)
            self.send_header("X-Backend", str(n))
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

        do_GET = do_POST = forward

    return Balancer


def test_replicas_mid_rotation_accept_each_others_nonces_behind_a_balancer(world: World) -> None:
    """Two replicas of one gateway mid-rotation (docs: phase 2 on one, phase 1 still on
    the other): replica 0 issues with the new key and accepts the old one, replica 1
    issues with the old key and accepts the new one. A client behind a round-robin
    balancer alternates between them with every request: after the first ``use_dpop_
    nonce`` round trip, it never gets another 401, though every answer hands it a
    nonce of the other replica's issuing key."""
    old_key, new_key = MasterKey.generate_text(), MasterKey.generate_text()
    env = {**world.gw_env, "ROT_OLD_KEY": old_key, "ROT_NEW_KEY": new_key}
    phases = [("ROT_NEW_KEY", "ROT_OLD_KEY"), ("ROT_OLD_KEY", "ROT_NEW_KEY")]
    settings = DpopSettings(True, "K", None, 60)
    old, new = settings.nonce_issuer({"K": old_key}), settings.nonce_issuer({"K": new_key})
    assert old is not None
    assert new is not None
    procs: list[subprocess.Popen[bytes]] = []
    with ExitStack() as stack:
        stack.callback(lambda: [_stop(proc) for proc in procs])
        urls = []
        for n, (issuing, accepted) in enumerate(phases, start=1):
            port, name = free_port(), f"nonce-rot-{n}"
            config = {
                **world.http_config,
                "name": name,
                "public_url": world.rotation_url,
                "listen": {"host": "127.0.0.1", "port": port},
                "spool": {"directory": str(world.tmp / f"{name}-spool")},
                "dpop": {"require_nonce": True, "nonce_key_env": issuing,
                         "nonce_accept_keys": [{"key_env": accepted}],
                         "nonce_lifetime_seconds": 60},
            }  # fmt: skip
            (world.tmp / f"{name}.yaml").write_text(json.dumps(config))
            log = world.tmp / f"gateway-{name}.log"
            procs.append(
                _spawn([AGENTIAM, "gateway", "http", "--config", str(world.tmp / f"{name}.yaml")],
                       env, log)
            )  # fmt: skip
            urls.append(f"http://127.0.0.1:{port}")
            _wait(urls[-1] + "/healthz", procs[-1], log)
        port = int(world.rotation_url.rsplit(":", 1)[1])
        stack.enter_context(serve_http(_balancer(urls), port=port))

        # each replica hands out nonces of its own issuing key only
        for url, issuer, other in ((urls[0], new, old), (urls[1], old, new)):
            handed = httpx.get(url + "/v1/invoices/1", timeout=10).headers["dpop-nonce"]
            assert issuer.is_valid(handed, int(time.time()))
            assert not other.is_valid(handed, int(time.time()))

        agent = world.agent(world.rotation_url)
        stack.callback(agent.close)
        with agent.http(world.rotation_url, timeout=30) as http:
            first = http.get("/v1/invoices/1")
            assert first.status_code == 200, first.text
            assert [h.status_code for h in first.history] == [401]  # the one round trip
            assert 'error="use_dpop_nonce"' in first.history[0].headers["www-authenticate"]
            served = [first.history[0].headers["x-backend"], first.headers["x-backend"]]
            handed = [first.headers["dpop-nonce"]]
            for n in range(2, 12):
                r = http.get(f"/v1/invoices/{n}")
                assert (r.status_code, r.history) == (200, []), (n, r.status_code, r.text)
                served.append(r.headers["x-backend"])
                handed.append(r.headers["dpop-nonce"])
        assert served == ["0", "1"] * 6  # every request went to the other replica
        # so each call carried a nonce of the key the replica serving it does not
        # issue with: replica 1 answered with old-key nonces that replica 0 took, and
        # the reverse
        now = int(time.time())
        by_key = ["old" if old.is_valid(h, now) else "new" if new.is_valid(h, now) else "?"
                  for h in handed]  # fmt: skip
        assert by_key == ["old", "new"] * 5 + ["old"]

        # the attack: a nonce of a key neither replica lists (the other gateways') is
        # refused by both, with the one refusal any wrong nonce gets
        for url in urls:
            token = agent.token().value
            proof = dpop_proof(agent.dpop_key, method="GET", access_token=token,
                               url=world.rotation_url + "/v1/invoices/7",
                               nonce=world.nonces.issue(int(time.time())))  # fmt: skip
            r = httpx.get(url + "/v1/invoices/7", timeout=10,
                          headers={"Authorization": f"DPoP {token}", "DPoP": proof})  # fmt: skip
            assert r.status_code == 401, r.text
            assert 'error="use_dpop_nonce"' in r.headers["www-authenticate"]
            assert (new if url == urls[0] else old).is_valid(r.headers["dpop-nonce"], now)
