"""The HTTP gateway with real processes: a control plane (``agentiam serve`` on SQLite),
an upstream API (``tests/support/echo_upstream.py``, which reports what it received),
the gateway (``agentiam gateway http --config``) and agents using the SDK
(:class:`~agentiam.sdk.AgentClient` with httpx and DPoP).

The tests share one set of processes and run in file order; the outage test, which
kills and restarts the control plane, comes last. Every call made through the gateway
carries a ``traceparent`` of its own, and the last test finds each one in the control
plane's audit trail (``Expected``), so the claim "every call, allowed or refused, is in
the trail" is checked call by call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from tests.e2e.test_quickstart import AGENTIAM, KEY_RE, Server, cli, env_for
from tests.support.echo_upstream import pattern
from tests.support.live import free_port
from tests.support.live import until as poll
from tests.support.tls import server_pki
from tests.support.token_endpoint import KeyJwtEndpoint, serve

from agentiam.core.credentials.sealing import MasterKey
from agentiam.sdk import AgentClient, AgentKey, dpop_proof

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "upstream-api-key-" + "k" * 24  # what the broker injects; the agent never sees it
OUTAGE_SECONDS = 3.0
MAX_REQUEST_BYTES = 40 * 1024 * 1024  # the 32 MiB streaming test fits, 48 MiB does not
POLICIES = {
    "read-invoices": 'permit (principal == Agent::"{agent}", action == Action::"GET", '
    "resource is Endpoint);",
    "write-echo": 'permit (principal == Agent::"{agent}", action == Action::"POST", '
    'resource == Endpoint::"echo");',
    "revocable": 'permit (principal == Agent::"{other}", action == Action::"GET", '
    "resource is Endpoint);",
}
ALLOW_REPORTS = (
    'permit (principal == Agent::"{agent}", action == Action::"read", '
    'resource == Endpoint::"reports");'
)


@dataclass
class Expected:
    """One call made through the gateway, and the audit event type it must leave."""

    trace_id: str
    status: int
    types: tuple[str, ...]


@dataclass
class World:
    env: dict[str, str]
    cp: Server
    cp_port: int
    admin: str
    gateway: subprocess.Popen[str]
    gw_url: str
    upstream: subprocess.Popen[str]
    up_url: str
    agent_id: str
    other_id: str
    agent: AgentClient
    other: AgentClient
    spool: Path
    gw_env: dict[str, str] = field(default_factory=dict)
    gw_config: dict[str, Any] = field(default_factory=dict)
    calls: list[Expected] = field(default_factory=list)

    def admin_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.cp.url, headers={"Authorization": f"Bearer {self.admin}"}, timeout=10
        )

    def call(
        self,
        method: str,
        path: str,
        *,
        agent: AgentClient | None = None,
        expect: int | None = None,
        types: tuple[str, ...] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One call through the gateway, as ``agent`` (default: the main agent; None
        credentials when ``agent`` is False-y via :meth:`anonymous`), remembered with
        its trace id for the audit check at the end."""
        trace = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
        headers.update(kwargs.pop("headers", {}))
        with (agent or self.agent).http(self.gw_url, timeout=30) as client:
            response = client.request(method, path, headers=headers, **kwargs)
        self._remember(trace, response.status_code, types)
        if expect is not None:
            assert response.status_code == expect, response.text[:500]
        return response

    def raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A call without the SDK: the caller sets every header."""
        trace = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
        headers.update(kwargs.pop("headers", {}))
        response = httpx.request(method, self.gw_url + path, headers=headers, timeout=30, **kwargs)
        self._remember(trace, response.status_code, None)
        return response

    def _remember(self, trace: str, status: int, types: tuple[str, ...] | None) -> None:
        if types is None:
            types = {
                200: ("authz.decision", "tool.call"),
                403: ("authz.decision",),
                502: ("authz.decision", "tool.call"),
                504: ("authz.decision", "tool.call"),
            }.get(status, ("api.request.rejected",))
        self.calls.append(Expected(trace, status, types))

    def seen(self) -> list[dict[str, Any]]:
        return list(httpx.get(self.up_url + "/__seen", timeout=10).json())


def _wait_http(url: str, proc: subprocess.Popen[str], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{log.stem} exited: {log.read_text()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError(f"{log.stem} did not start: {log.read_text()}")


def _admin_key(server: Server) -> str:
    assert server.proc.stdout is not None
    lines = []
    for _ in range(8):
        line = server.proc.stdout.readline()
        lines.append(line)
        if KEY_RE.search(line):
            return KEY_RE.findall(line)[0]
    raise AssertionError("no admin key printed: " + "".join(lines))


def _drain(proc: subprocess.Popen[str]) -> None:
    """Keep reading a server's output, so a full pipe never blocks it."""
    stream = proc.stdout
    if stream is not None:
        threading.Thread(target=stream.read, daemon=True).start()


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as out:
        return subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _register(admin: httpx.Client, owner: str, name: str, gw_url: str) -> tuple[str, AgentKey]:
    key = AgentKey.generate()
    r = admin.post(
        "/v1/agents",
        json={
            "name": name,
            "owners": [owner],
            "purpose": "reads invoices through the gateway",
            "environment": "production",
            "activate": True,
            "keys": [key.public_jwk()],
            "scopes": ["billing"],
            "audiences": [gw_url, "https://other.example"],
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"]), key


@pytest.fixture(scope="module")
def world(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("http-gateway")
    db = tmp / "cp.db"
    shutil.copy(sqlite_template, db)
    cp_port, gw_port, up_port, dead_port = free_port(), free_port(), free_port(), free_port()
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
    clients: list[AgentClient] = []
    built: World | None = None
    try:
        with httpx.Client(
            base_url=cp.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
        ) as admin:
            owner = admin.post(
                "/v1/humans", json={"display_name": "Ada", "email": "ada@example.com"}
            ).json()["id"]
            agent_id, key = _register(admin, owner, "invoice-bot", gw_url)
            other_id, other_key = _register(admin, owner, "revocable-bot", gw_url)
            for policy_id, text in POLICIES.items():
                body = text.replace("{agent}", agent_id).replace("{other}", other_id)
                r = admin.put(f"/v1/policies/{policy_id}", json={"text": body})
                assert r.status_code == 200, r.text
            # one key for the gateway, its TLS twin and its replicas (billing-gw-r1…r7)
            gateways = ["billing-gw", "billing-tls", *(f"billing-gw-r{i}" for i in range(1, 8)),
                        "billing-jwt", "billing-allow", "billing-rekey"]  # fmt: skip
            sources = [f"gateway/{g}" for g in gateways]
            verifier = admin.post(
                "/v1/admin-keys", json={"name": "gw", "role": "verifier", "sources": sources}
            )
            assert verifier.status_code == 201, verifier.text
            verifier_key = verifier.json()["secret"]

        upstream = _spawn(
            [sys.executable, "-m", "tests.support.echo_upstream", str(up_port)],
            {**os.environ, "PYTHONPATH": str(ROOT)},
            tmp / "upstream.log",
        )
        procs.append(upstream)

        store = tmp / "secrets.json"
        gw_env = {
            **os.environ,
            "AGENTIAM_GATEWAY_KEY": verifier_key,
            "AGENTIAM_GATEWAY_SECRETS_KEY": MasterKey.generate_text(),
            "PYTHONUNBUFFERED": "1",
        }
        cli(gw_env, "gateway", "secrets", "put", "billing-key", "--kind", "api_key",
            "--store", str(store), input=API_KEY)  # fmt: skip
        spool = tmp / "spool"
        config = {
            "name": "billing-gw",
            "public_url": gw_url,
            "listen": {"host": "127.0.0.1", "port": gw_port},
            "control_plane": {
                "url": cp.url,
                "key_env": "AGENTIAM_GATEWAY_KEY",
                "outage_seconds": OUTAGE_SECONDS,
            },
            "spool": {"directory": str(spool)},
            "secrets": {"store": str(store)},
            "rate_limits": {"per_tool": {"limited": {"rate_per_second": 0.1, "burst": 2}}},
            "timeouts": {"connect": 1, "read": 1.5, "total": 20},
            "max_request_bytes": MAX_REQUEST_BYTES,
            "upstreams": {
                "billing": {
                    "url": up_url,
                    "credential": {"secret": "billing-key", "header": "X-Api-Key"},
                },
                "down": {"url": f"http://127.0.0.1:{dead_port}"},
            },
            "routes": [
                {"match": {"method": "GET", "path": "/v1/invoices/{id}"}, "upstream": "billing",
                 "action": "GET", "resource": {"type": "Endpoint", "id": "invoice-{id}"}},
                {"match": {"method": "DELETE", "path": "/v1/invoices/{id}"},
                 "upstream": "billing", "action": "DELETE",
                 "resource": {"type": "Endpoint", "id": "invoice-{id}"}},
                {"match": {"method": "POST", "path": "/v1/echo"}, "upstream": "billing",
                 "action": "POST", "resource": {"type": "Endpoint", "id": "echo"}},
                {"match": {"method": "GET", "path": "/v1/big"}, "upstream": "billing",
                 "action": "GET", "resource": {"type": "Endpoint", "id": "big"}},
                {"match": {"method": "GET", "path": "/v1/slow"}, "upstream": "billing",
                 "action": "GET", "resource": {"type": "Endpoint", "id": "slow"}},
                {"match": {"method": "GET", "path": "/v1/reports/{id}"}, "upstream": "billing",
                 "action": "read", "resource": {"type": "Endpoint", "id": "reports"}},
                {"name": "limited", "match": {"method": "GET", "path": "/v1/limited"},
                 "upstream": "billing", "action": "GET",
                 "resource": {"type": "Endpoint", "id": "limited"}},
                {"match": {"method": "GET", "path": "/v1/down"}, "upstream": "down",
                 "action": "GET", "resource": {"type": "Endpoint", "id": "down"}},
            ],
        }  # fmt: skip
        config_file = tmp / "gateway.yaml"
        config_file.write_text(json.dumps(config))  # JSON is YAML
        gateway = _spawn(
            [AGENTIAM, "gateway", "http", "--config", str(config_file)],
            gw_env,
            tmp / "gateway.log",
        )
        procs.append(gateway)
        _wait_http(up_url + "/__seen", upstream, tmp / "upstream.log")
        _wait_http(gw_url + "/healthz", gateway, tmp / "gateway.log")

        agent = AgentClient(cp.url, client_id=agent_id, key=key, resource=gw_url)
        other = AgentClient(cp.url, client_id=other_id, key=other_key, resource=gw_url)
        clients += [agent, other]
        built = World(
            env=env, cp=cp, cp_port=cp_port, admin=admin_key, gateway=gateway, gw_url=gw_url,
            upstream=upstream, up_url=up_url, agent_id=agent_id, other_id=other_id,
            agent=agent, other=other, spool=spool, gw_env=gw_env, gw_config=config,
        )  # fmt: skip
        yield built
    finally:
        for client in clients:
            client.close()
        for proc in reversed(procs):
            _stop(proc)
        _stop(built.cp.proc if built is not None else cp.proc)


def _header(seen: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in seen["headers"] if k.lower() == name]


# -- allowed calls ---------------------------------------------------------------------------


def test_allowed_call_reaches_the_upstream_with_the_brokered_key_only(world: World) -> None:
    forged = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "Forwarded": "for=6.6.6.6;host=evil.example",
        "X-Real-IP": "6.6.6.6",
        "X-Api-Key": "the agent's own guess",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "hop-by-hop, named by Connection",
    }
    r = world.call("GET", "/v1/invoices/inv-42?expand=lines&x=%2F", headers=forged, expect=200)
    echo = r.json()
    assert echo["method"] == "GET"
    assert echo["raw_path"] == "/v1/invoices/inv-42"
    assert echo["query"] == "expand=lines&x=%2F"
    # injected, the agent's value replaced; the echo of it masked on its way back
    assert _header(echo, "x-api-key") == ["*" * len(API_KEY)]
    assert API_KEY not in r.text
    received = world.seen()[-1]  # what the upstream itself received
    assert _header(received, "x-api-key") == [API_KEY]
    assert _header(received, "accept-encoding") == ["identity"]  # the body is looked at
    for name in ("authorization", "dpop", "x-forwarded-for", "x-forwarded-host",
                 "x-forwarded-proto", "x-real-ip", "x-hop"):  # fmt: skip
        assert _header(echo, name) == [], name
    gw_host = world.gw_url.removeprefix("http://")
    assert _header(echo, "forwarded") == [f'for=127.0.0.1;host="{gw_host}";proto=http']
    assert _header(echo, "host") == [world.up_url.removeprefix("http://")]
    trace = world.calls[-1].trace_id
    assert _header(echo, "traceparent")[0].startswith(f"00-{trace}-")
    # The agent's token appears nowhere in what the upstream received.
    token = world.agent.token().value
    assert token not in json.dumps(world.seen())
    assert r.headers["x-upstream"] == "echo"


def test_bodies_stream_both_ways(world: World) -> None:
    """32 MiB up (chunked) and 128 MiB down pass through intact while the gateway's
    memory grows by much less than either: bodies are streamed, never held whole."""
    before = _memory_mib(world.gateway.pid, "VmRSS")
    size = 32 * 1024 * 1024
    digest = hashlib.sha256()

    def body() -> Iterator[bytes]:
        chunk = secrets.token_bytes(256 * 1024)
        for _ in range(size // len(chunk)):
            digest.update(chunk)
            yield chunk

    r = world.call("POST", "/v1/echo", content=body(), expect=200)  # chunked upload
    assert (r.json()["body_length"], r.json()["body_sha256"]) == (size, digest.hexdigest())
    r = world.call("POST", "/v1/echo", content=b"x" * 1000, expect=200)  # Content-Length
    assert r.json()["body_length"] == 1000
    assert _header(r.json(), "content-length") == ["1000"]

    big = 128 * 1024 * 1024
    received = hashlib.sha256()
    count = 0
    trace = secrets.token_hex(16)
    with (
        world.agent.http(world.gw_url, timeout=60) as client,
        client.stream(
            "GET", f"/v1/big?n={big}", headers={"traceparent": f"00-{trace}-{'1' * 16}-01"}
        ) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received.update(chunk)
            count += len(chunk)
    world.calls.append(Expected(trace, 200, ("authz.decision", "tool.call")))
    assert count == big
    assert received.hexdigest() == hashlib.sha256(pattern(big)).hexdigest()
    peak = _memory_mib(world.gateway.pid, "VmHWM")
    assert peak - before < 48, f"the gateway grew from {before:.0f} to {peak:.0f} MiB"


def test_a_body_past_max_request_bytes_is_413(world: World) -> None:
    """A declared Content-Length past the limit is refused before anything else; a
    chunked body is cut off when it passes the limit, and the upstream never gets a
    whole request."""
    seen_before = len(world.seen())
    # httpx will not send a length it does not mean to send: a raw HTTP/1.1 request
    trace = secrets.token_hex(16)
    parts = urlsplit(world.gw_url)
    head = (
        f"POST {parts.path}/v1/echo HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Length: {MAX_REQUEST_BYTES + 1}\r\n"
        f"traceparent: 00-{trace}-{secrets.token_hex(8)}-01\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.encode("ascii"))
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            more = sock.recv(65536)
            if not more:
                break
            received += more
        answer = received.decode("latin-1")
    world._remember(trace, 413, None)
    assert answer.startswith("HTTP/1.1 413 "), answer[:200]
    assert "content-too-large" in answer

    def body() -> Iterator[bytes]:
        chunk = b"y" * (1024 * 1024)
        for _ in range(MAX_REQUEST_BYTES // len(chunk) + 8):
            yield chunk

    try:
        r = world.call("POST", "/v1/echo", content=body(), types=("authz.decision", "tool.call"))
    except httpx.HTTPError:
        r = None  # the gateway may close while the client is still sending
    print("CHUNKED-RESULT", None if r is None else r.status_code)
    if r is not None:
        assert r.status_code == 413
        assert r.json()["status"] == 413
    completed = [s for s in world.seen()[seen_before:] if s.get("path") == "/v1/echo"]
    assert all(s.get("body_length", 0) <= MAX_REQUEST_BYTES for s in completed)


def test_the_listener_serves_tls_when_configured(world: World, tmp_path: Path) -> None:
    """A second gateway process with listen.tls: https with a certificate a client can
    verify, TLS 1.2 at least, the protected resource metadata and the 401 of an
    unauthenticated call over it; plain HTTP on the same port gets no answer."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    pki = server_pki(tmp_path, "127.0.0.1")
    config = {
        **world.gw_config,
        "name": "billing-tls",
        "public_url": url,
        "listen": {
            "host": "127.0.0.1",
            "port": port,
            "tls": {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)},
        },
        "spool": {"directory": str(tmp_path / "spool")},
    }
    config_file = tmp_path / "tls.yaml"
    config_file.write_text(json.dumps(config))
    log = tmp_path / "tls-gateway.log"
    proc = _spawn([AGENTIAM, "gateway", "http", "--config", str(config_file)], world.gw_env, log)
    try:
        trusted = ssl.create_default_context(cafile=str(pki.ca_file))
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                health = httpx.get(url + "/healthz", verify=trusted, timeout=2)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert health.status_code == 200
        metadata = httpx.get(
            url + "/.well-known/oauth-protected-resource", verify=trusted, timeout=5
        ).json()
        assert metadata["resource"] == url
        refused = httpx.get(url + "/v1/invoices/1", verify=trusted, timeout=5)
        assert refused.status_code == 401
        assert "resource_metadata" in refused.headers["www-authenticate"]
        # a client that does not trust the certificate is refused by itself
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=5)
        # TLS 1.1 and older are not spoken
        old = ssl.create_default_context(cafile=str(pki.ca_file))
        with warnings.catch_warnings():  # naming TLS 1.1 is deprecated, which is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", verify=old, timeout=5)
        # plain HTTP to the TLS port is no way in
        try:
            plain: int | None = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code
        except httpx.HTTPError:
            plain = None  # the TLS layer drops it
        assert plain is None
    finally:
        _stop(proc)


def _memory_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


# -- refusals ------------------------------------------------------------------------------


def test_denied_call_is_403_and_never_reaches_the_upstream(world: World) -> None:
    r = world.call("DELETE", "/v1/invoices/inv-42", expect=403)
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == 403
    assert problem["error"] == "insufficient_scope"
    assert problem["decision_id"]
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert not [s for s in world.seen() if s["method"] == "DELETE"]


def test_no_token_is_401_naming_the_resource_metadata(world: World) -> None:
    r = world.raw("GET", "/v1/invoices/1")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    challenge = r.headers["www-authenticate"]
    metadata_url = f"{world.gw_url}/.well-known/oauth-protected-resource"
    assert challenge.startswith("DPoP ")
    assert f'resource_metadata="{metadata_url}"' in challenge
    metadata = httpx.get(metadata_url, timeout=5).json()
    assert metadata["resource"] == world.gw_url
    assert metadata["authorization_servers"] == [world.cp.url]
    assert metadata["dpop_bound_access_tokens_required"] is True
    assert "Traceback" not in r.text


def test_other_credentials_are_401(world: World) -> None:
    other_audience = AgentClient(
        world.cp.url,
        client_id=world.agent_id,
        key=world.agent.key,
        resource="https://other.example",
    )
    try:
        r = world.call("GET", "/v1/invoices/1", agent=other_audience)
    finally:
        other_audience.close()
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]

    token = world.agent.token().value
    url = world.gw_url + "/v1/invoices/1"
    key = world.agent.dpop_key
    # As a Bearer token (no proof): refused, the token is DPoP-bound.
    r = world.raw("GET", "/v1/invoices/1", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    # A proof signed for another URL: refused (htu).
    proof = dpop_proof(key, method="GET", url="http://evil.example/v1/invoices/1",
                       access_token=token)  # fmt: skip
    r = world.raw("GET", "/v1/invoices/1",
                  headers={"Authorization": f"DPoP {token}", "DPoP": proof})  # fmt: skip
    assert r.status_code == 401
    # The Host header does not change which URL the proof must name.
    proof = dpop_proof(key, method="GET", url="http://evil.example/v1/invoices/1",
                       access_token=token)  # fmt: skip
    r = world.raw("GET", "/v1/invoices/1", headers={
        "Authorization": f"DPoP {token}", "DPoP": proof, "Host": "evil.example",
        "X-Forwarded-Host": "evil.example"})  # fmt: skip
    assert r.status_code == 401
    # A proof used twice: the second is refused (jti replay).
    proof = dpop_proof(key, method="GET", url=url, access_token=token)
    headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
    assert world.raw("GET", "/v1/invoices/1", headers=headers).status_code == 200
    assert world.raw("GET", "/v1/invoices/1", headers=headers).status_code == 401


def test_unrouted_and_malformed_paths_are_refused(world: World) -> None:
    before = len(world.seen())
    r = world.call("GET", "/v1/nothing-here", expect=404)
    assert r.headers["content-type"] == "application/problem+json"
    for path in ("/v1/invoices/..%2Fadmin", "/v1/invoices/%2e%2e", "/v1//invoices/1"):
        r = world.raw("GET", path)
        assert r.status_code == 400, path
    assert len(world.seen()) == before


def test_rate_limit_is_429_with_retry_after(world: World) -> None:
    statuses = [world.call("GET", "/v1/limited").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    r = world.call("GET", "/v1/limited", expect=429)
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"] == "rate_limited"


def test_upstream_failures_are_502_and_504(world: World) -> None:
    r = world.call("GET", "/v1/down", expect=502)
    assert r.headers["content-type"] == "application/problem+json"
    started = time.monotonic()
    r = world.call("GET", "/v1/slow?s=5", expect=504)
    assert time.monotonic() - started < 4  # the read timeout (1.5 s), not the upstream
    assert "Traceback" not in r.text


# -- freshness: policy changes and revocations within a second --------------------------------


def _until(check: Callable[[], bool], limit: float) -> float:
    """Seconds until ``check()`` first holds (polled back to back), up to ``limit``."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if check():
            return time.monotonic() - started
    return float("inf")


def test_a_policy_change_is_enforced_within_a_second(world: World) -> None:
    world.call("GET", "/v1/reports/1", expect=403)
    with world.admin_client() as admin:
        r = admin.put(
            "/v1/policies/reports", json={"text": ALLOW_REPORTS.format(agent=world.agent_id)}
        )
        assert r.status_code == 200, r.text
        elapsed = _until(lambda: world.call("GET", "/v1/reports/1").status_code == 200, 5)
        assert elapsed < 1.0, f"allowed after {elapsed:.3f} s"
        assert admin.delete("/v1/policies/reports").status_code == 200
        elapsed = _until(lambda: world.call("GET", "/v1/reports/1").status_code == 403, 5)
        assert elapsed < 1.0, f"denied again after {elapsed:.3f} s"


def test_an_api_forbid_refuses_its_routes_with_no_catalog_entry(world: World) -> None:
    """No endpoint is in the catalog: ``Endpoint::"invoice-…"`` is in
    ``Api::"billing"`` because its route goes to the upstream ``billing``. A forbid on
    that Api refuses the calls (403, audited as a decision) and none reaches the
    upstream; another upstream's route is not covered; removed, the calls pass again."""
    forbid = 'forbid (principal == Agent::"{agent}", action, resource in Api::"billing");'
    with world.admin_client() as admin:
        r = admin.put("/v1/policies/no-billing", json={"text": forbid.format(agent=world.agent_id)})
        assert r.status_code == 200, r.text
        try:
            _until(lambda: world.call("GET", "/v1/invoices/api-1").status_code == 403, 5)
            r = world.call("GET", "/v1/invoices/api-2", expect=403)
            assert "forbidden by policy no-billing" in r.json()["detail"]
            assert not [s for s in world.seen() if s["raw_path"] == "/v1/invoices/api-2"]
            world.call("GET", "/v1/down", expect=502)  # Api::"down": not forbidden
        finally:
            assert admin.delete("/v1/policies/no-billing").status_code == 200
        elapsed = _until(lambda: world.call("GET", "/v1/invoices/api-3").status_code == 200, 5)
        assert elapsed < 5


def test_refusals_name_the_connections_peer_not_a_header(world: World) -> None:
    """The gateway process serves with proxy headers off: a refusal's event names the
    TCP peer (127.0.0.1), whatever X-Forwarded-For or Forwarded claim."""
    forged = {"X-Forwarded-For": "203.0.113.66", "Forwarded": "for=203.0.113.66"}
    token = world.agent.token().value
    bearer = world.raw(  # refused before authentication, naming the token's agent
        "GET", "/v1/invoices/1", headers={"Authorization": f"Bearer {token}", **forged}
    )
    assert bearer.status_code == 401
    unauthenticated = world.calls[-1].trace_id
    world.call("GET", "/v1/nothing-here", headers=forged, expect=404)
    unrouted = world.calls[-1].trace_id

    def peers() -> dict[str, Any] | None:
        with world.admin_client() as admin:
            found = {}
            for trace in (unauthenticated, unrouted):
                r = admin.get(
                    "/v1/audit/events", params={"type": "api.request.rejected", "trace_id": trace}
                )
                assert r.status_code == 200, r.text
                for event in r.json()["items"]:
                    found[trace] = event["details"].get("peer")
        return found if len(found) == 2 else None

    assert poll(peers, 15) == {unauthenticated: "127.0.0.1", unrouted: "127.0.0.1"}


def _fresh_call(
    world: World,
    base_url: str,
    path: str,
    *,
    agent: AgentClient | None = None,
    token: str | None = None,
) -> httpx.Response:
    """A GET with a fresh proof for the public URL, sent to ``base_url`` (one
    replica, as a load balancer would pick it), as ``agent`` (default: the main
    one) with ``token`` (default: its current one), never refreshed on a 401."""
    agent = agent or world.agent
    token = token or agent.token().value
    proof = dpop_proof(agent.dpop_key, method="GET", url=world.gw_url + path,
                       access_token=token)  # fmt: skip
    headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
    return httpx.get(base_url + path, headers=headers, timeout=30)


def test_a_revocation_is_enforced_within_a_second(world: World) -> None:
    """The token the agent holds is refused within a second of the revocation. Sent
    as is, with fresh proofs: the SDK would fetch a new token after a 401, which is
    valid once the clock has passed the revocation's cut-off second."""
    token = world.other.token().value
    path = "/v1/invoices/7"
    assert _fresh_call(world, world.gw_url, path, agent=world.other, token=token).status_code == 200
    with world.admin_client() as admin:
        r = admin.post(f"/v1/agents/{world.other_id}/revoke-tokens", json={"reason": "drill"})
        assert r.status_code == 200, r.text
    elapsed = _until(
        lambda: (
            _fresh_call(world, world.gw_url, path, agent=world.other, token=token).status_code
            == 401
        ),
        5,
    )
    assert elapsed < 1.0, f"refused after {elapsed:.3f} s"


def _replica(
    world: World, tmp: Path, name: str, redis_prefix: str | None
) -> tuple[subprocess.Popen[str], str]:
    """Another copy of the gateway behind the same public URL (as behind a load
    balancer), with its own port and spool; sharing the replay cache in Redis when
    ``redis_prefix`` is set."""
    port = free_port()
    config = {
        **world.gw_config,
        "name": name,
        "listen": {"host": "127.0.0.1", "port": port},
        "spool": {"directory": str(tmp / f"spool-{name}")},
    }
    env = dict(world.gw_env)
    if redis_prefix is not None:
        from tests.conftest import REDIS_URL

        env["AGENTIAM_GATEWAY_REDIS_URL"] = REDIS_URL
        config["replay_cache"] = {
            "url_env": "AGENTIAM_GATEWAY_REDIS_URL",
            "key_prefix": redis_prefix,
            "timeout_seconds": 1,
        }
    file = tmp / f"{name}.yaml"
    file.write_text(json.dumps(config))
    proc = _spawn([AGENTIAM, "gateway", "http", "--config", str(file)], env, tmp / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/healthz", proc, tmp / f"{name}.log")
    return proc, url


@contextlib.contextmanager
def _replicas(
    world: World, tmp: Path, redis_prefix: str, first: int
) -> Iterator[tuple[str, str, str]]:
    """Three more copies of the gateway, numbered from ``first``: two sharing Redis
    under ``redis_prefix``, the third keeping its own state; their URLs, stopped after."""
    procs: list[subprocess.Popen[str]] = []
    try:
        urls = []
        for i, prefix in enumerate((redis_prefix, redis_prefix, None)):
            proc, url = _replica(world, tmp, f"billing-gw-r{first + i}", prefix)
            procs.append(proc)
            urls.append(url)
        yield urls[0], urls[1], urls[2]
    finally:
        for proc in procs:
            _stop(proc)


def test_replicas_sharing_the_replay_cache_refuse_a_proof_replayed_to_another(
    world: World, tmp_path: Path, redis_prefix: str
) -> None:
    with _replicas(world, tmp_path, redis_prefix, 1) as (one_url, two_url, alone_url):
        token = world.agent.token().value
        key = world.agent.dpop_key
        # the proof names the public URL, whichever replica the balancer picks
        proof = dpop_proof(key, method="GET", url=world.gw_url + "/v1/invoices/1",
                           access_token=token)  # fmt: skip
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
        before = len(world.seen())
        first = httpx.get(one_url + "/v1/invoices/1", headers=headers, timeout=30)
        assert first.status_code == 200, first.text
        # The attack: the captured request, replayed to the other replica. Its own
        # cache has never seen the proof; the shared one has.
        replayed = httpx.get(two_url + "/v1/invoices/1", headers=headers, timeout=30)
        assert replayed.status_code == 401
        assert 'error="invalid_dpop_proof"' in replayed.headers["www-authenticate"]
        assert "resource_metadata=" in replayed.headers["www-authenticate"]
        # Why it matters: a replica keeping only its own cache lets the replay through.
        assert httpx.get(alone_url + "/v1/invoices/1", headers=headers, timeout=30).status_code == (
            200
        )
        assert len(world.seen()) == before + 2  # the refused replay never reached it
        # a fresh proof is served by the second replica
        proof = dpop_proof(key, method="GET", url=world.gw_url + "/v1/invoices/1",
                           access_token=token)  # fmt: skip
        fresh = {"Authorization": f"DPoP {token}", "DPoP": proof}
        assert httpx.get(two_url + "/v1/invoices/1", headers=fresh, timeout=30).status_code == 200
        # the refusal is in the trail, from the replica that refused it
        deadline = time.monotonic() + 20
        refused: list[dict[str, Any]] = []
        while not refused and time.monotonic() < deadline:
            with world.admin_client() as admin:
                text = admin.get("/v1/audit/events/export", timeout=60).text
            refused = [
                e for e in map(json.loads, text.splitlines())
                if e["source"] == "gateway/billing-gw-r2" and e["type"] == "api.request.rejected"
            ]  # fmt: skip
            time.sleep(0.2)
        assert len(refused) == 1
        assert "jti replayed (shared cache)" in refused[0]["reason"]
        assert refused[0]["details"]["status"] == 401


def test_replicas_sharing_the_store_enforce_one_rate_limit(
    world: World, tmp_path: Path, redis_prefix: str
) -> None:
    """The ``limited`` route allows a burst of 2 (then one call in 10 s): for the
    deployment as a whole, whichever replica the balancer picks."""
    with _replicas(world, tmp_path, redis_prefix, 5) as (one_url, two_url, alone_url):
        before = len(world.seen())
        answers = [_fresh_call(world, url, "/v1/limited") for url in (one_url, two_url) * 2]
        assert [r.status_code for r in answers] == [200, 200, 429, 429]
        for refused in answers[2:]:
            assert refused.json()["error"] == "rate_limited"
            assert 1 <= int(refused.headers["retry-after"]) <= 10
        assert len(world.seen()) == before + 2  # the refused calls never reached it
        # Why it matters: a replica counting on its own hands out another burst.
        assert _fresh_call(world, alone_url, "/v1/limited").status_code == 200


def test_a_replica_whose_replay_cache_is_unreachable_does_not_start(
    world: World, tmp_path: Path
) -> None:
    config = {**world.gw_config, "name": "billing-gw-r4",
              "listen": {"host": "127.0.0.1", "port": free_port()},
              "spool": {"directory": str(tmp_path / "spool")},
              "replay_cache": {"url_env": "GW_REDIS", "timeout_seconds": 0.3}}  # fmt: skip
    file = tmp_path / "gw.yaml"
    file.write_text(json.dumps(config))
    env = {**world.gw_env, "GW_REDIS": f"redis://:hunter2@127.0.0.1:{free_port()}/0"}
    started = subprocess.run(
        [AGENTIAM, "gateway", "http", "--config", str(file)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode != 0
    output = started.stdout + started.stderr
    assert "replay_cache: cannot reach Redis" in output
    assert "hunter2" not in output
    assert "Traceback" not in output


# -- the credential broker: private_key_jwt, and the secrets' allowed upstreams -------------


def _key_pem(path: Path) -> tuple[ECKey, str]:
    """A new EC P-256 private key written to ``path`` (PEM); its public JWK, and the
    PEM's base64 body (which must never show)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    path.write_bytes(pem)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = "".join(line for line in pem.decode().splitlines() if "-----" not in line)
    return ECKey.import_key(public), body


def _gateway_config(
    world: World,
    tmp: Path,
    name: str,
    store: Path,
    upstreams: dict[str, Any],
    routes: list[dict[str, Any]] | None = None,
) -> Path:
    """The world's gateway configuration under another name, port, spool and secret
    store, with ``upstreams`` (and ``routes``, default the world's) in place of its
    own: written to a file."""
    config = {
        **world.gw_config, "name": name, "listen": {"host": "127.0.0.1", "port": free_port()},
        "spool": {"directory": str(tmp / f"spool-{name}")}, "secrets": {"store": str(store)},
        "upstreams": upstreams, "routes": routes or world.gw_config["routes"],
    }  # fmt: skip
    file = tmp / f"{name}.yaml"
    file.write_text(json.dumps(config))
    return file


@contextlib.contextmanager
def _running(
    world: World, tmp: Path, file: Path, env: dict[str, str] | None = None
) -> Iterator[str]:
    """The gateway of configuration ``file`` (with ``env``, default the world's),
    serving until the block ends; its URL."""
    name = file.stem
    proc = _spawn([AGENTIAM, "gateway", "http", "--config", str(file)], env or world.gw_env,
                  tmp / f"{name}.log")  # fmt: skip
    port = json.loads(file.read_text())["listen"]["port"]
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/healthz", proc, tmp / f"{name}.log")
        yield url
    finally:
        _stop(proc)


def _gateway_events(world: World, source: str, count: int) -> list[dict[str, Any]]:
    """The first ``count`` ``tool.call`` events of gateway ``source`` in the trail
    (waiting for them to ship)."""
    deadline = time.monotonic() + 20
    while True:
        with world.admin_client() as admin:
            text = admin.get("/v1/audit/events/export", timeout=60).text
        found = [
            e for e in map(json.loads, text.splitlines())
            if e["source"] == f"gateway/{source}" and e["type"] == "tool.call"
        ]  # fmt: skip
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_the_gateway_fetches_its_upstream_token_with_private_key_jwt(
    world: World, tmp_path: Path
) -> None:
    """The gateway authenticates to a real token endpoint with a client assertion
    signed by the sealed key; the endpoint verifies it with joserfc (signature, aud,
    iss/sub, exp, jti) and the token it issues is what reaches the upstream. An
    endpoint that expects another audience refuses the same assertion: 502, audited,
    never forwarded."""
    public, body = _key_pem(tmp_path / "client.pem")
    store = tmp_path / "jwt-secrets.json"
    right = KeyJwtEndpoint("billing-client", public, "ES256", kid="k-1")
    wrong = KeyJwtEndpoint("billing-client", public, "ES256", kid="k-1",
                           audience="https://auth.billing.example/oauth/token")  # fmt: skip
    with serve(right) as good, serve(wrong) as other:
        cli(world.gw_env, "gateway", "secrets", "put", "billing-jwt", "--kind",
            "oauth_client_key", "--client-id", "billing-client", "--private-key-file",
            str(tmp_path / "client.pem"), "--kid", "k-1", "--store", str(store))  # fmt: skip
        credential = {"secret": "billing-jwt", "auth_method": "private_key_jwt",
                      "allow_private_network": True}  # fmt: skip
        file = _gateway_config(
            world, tmp_path, "billing-jwt", store,
            {"billing": {"url": world.up_url,
                         "credential": {**credential, "token_endpoint": good.url}},
             "down": {"url": world.up_url,
                      "credential": {**credential, "token_endpoint": other.url}}},
        )  # fmt: skip
        with _running(world, tmp_path, file) as url:
            answer = _fresh_call(world, url, "/v1/invoices/7")
            assert answer.status_code == 200, answer.text
            received = world.seen()[-1]
            assert _header(received, "authorization") == ["Bearer kjwt-at-1"]
            assert good.refusals == []
            [(header, claims)] = good.assertions
            assert header == {"alg": "ES256", "kid": "k-1", "typ": "JWT"}
            assert claims["aud"] == good.url
            assert claims["iss"] == claims["sub"] == "billing-client"
            assert claims["exp"] - claims["iat"] <= 60
            # the token is cached: a second call sends no second assertion
            assert _fresh_call(world, url, "/v1/invoices/8").status_code == 200
            assert len(good.requests) == 1

            before = len(world.seen())
            refused = _fresh_call(world, url, "/v1/down")
            assert refused.status_code == 502
            assert refused.json()["type"].endswith("upstream-credential")
            assert other.refusals == [f"aud {other.url!r} is not this endpoint"]
            assert len(world.seen()) == before  # never forwarded
        log = (tmp_path / "billing-jwt.log").read_text()
        assert "invalid_client" in log
        assert body[:40] not in log
        assert other.requests[0]["form"]["client_assertion"] not in log
    events = _gateway_events(world, "billing-jwt", 3)
    assert sorted((e["outcome"], e["details"]["brokered"]) for e in events) == [
        ("failure", None), ("success", "billing-jwt@1"), ("success", "billing-jwt@1"),
    ]  # fmt: skip


def test_a_secret_is_refused_toward_an_upstream_it_is_not_allowed_for(
    world: World, tmp_path: Path
) -> None:
    """At start: a secret whose allowed_upstreams leave out its upstream's origin (or
    its token endpoint's) stops the gateway with an error naming the key. At call time:
    the store narrowed under a running gateway refuses the next call (502, audited,
    never forwarded)."""
    store = tmp_path / "allow-secrets.json"
    up_origin = world.up_url
    put = ["gateway", "secrets", "put", "--store", str(store)]
    cli(world.gw_env, *put, "scoped", "--kind", "api_key",
        "--allow-upstream", "https://api.billing.example", input=API_KEY)  # fmt: skip
    cli(world.gw_env, *put, "oauth", "--kind", "oauth_client",
        "--allow-upstream", up_origin, input="client\nclient-secret-value\n")  # fmt: skip
    starts = [
        ({"url": world.up_url, "credential": {"secret": "scoped", "header": "X-Api-Key"}},
         f"upstreams.billing.credential: secret scoped@1 may be sent only to "
         f"https://api.billing.example; not to {up_origin}"),
        ({"url": world.up_url, "credential": {
            "secret": "oauth", "token_endpoint": "http://127.0.0.1:9/token",
            "allow_private_network": True}},
         "upstreams.billing.credential: secret oauth@1 may be sent only to "
         f"{up_origin}; not to the token endpoint http://127.0.0.1:9"),
    ]  # fmt: skip
    for upstream, message in starts:
        file = _gateway_config(world, tmp_path, "billing-allow", store,
                               {"billing": upstream, "down": {"url": world.up_url}})  # fmt: skip
        started = subprocess.run(
            [AGENTIAM, "gateway", "http", "--config", str(file)],
            env=world.gw_env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        output = " ".join((started.stdout + started.stderr).split())
        assert started.returncode != 0
        assert message in output, output
        assert "Traceback" not in output
        assert API_KEY not in output

    cli(world.gw_env, *put, "moving", "--kind", "api_key", "--allow-upstream", up_origin,
        input=API_KEY)  # fmt: skip
    file = _gateway_config(world, tmp_path, "billing-allow", store, {
        "billing": {"url": world.up_url, "credential": {"secret": "moving", "header": "X-Api-Key"}},
        "down": {"url": world.up_url}})  # fmt: skip
    with _running(world, tmp_path, file) as url:
        assert _fresh_call(world, url, "/v1/invoices/1").status_code == 200
        assert _header(world.seen()[-1], "x-api-key") == [API_KEY]
        cli(world.gw_env, "gateway", "secrets", "rotate", "moving", "--store", str(store),
            "--allow-upstream", "https://api.billing.example", input=API_KEY)  # fmt: skip
        # the running gateway reads the store again within a second: then it refuses
        assert _until(lambda: _fresh_call(world, url, "/v1/invoices/2").status_code == 502, 10) < 5
        before = len(world.seen())
        for _ in range(3):
            assert _fresh_call(world, url, "/v1/invoices/3").status_code == 502
        assert len(world.seen()) == before  # the refused calls never reached it
        log = (tmp_path / "billing-allow.log").read_text()
        assert "moving@2 may be sent only to https://api.billing.example" in log
        assert API_KEY not in log
    events = _gateway_events(world, "billing-allow", 2)
    outcomes = {(e["outcome"], e["details"]["brokered"], e["details"]["status"]) for e in events}
    assert outcomes == {("success", "moving@1", 200), ("failure", None, 502)}, events


# -- outage: decide from cache, fail closed past the bound, recover, lose nothing -----------


def test_outage_then_recovery_and_every_call_in_the_trail(world: World) -> None:
    world.call("GET", "/v1/invoices/1", expect=200)
    world.agent.token()  # a fresh token in hand: the control plane is about to go
    world.cp.proc.send_signal(signal.SIGKILL)
    world.cp.proc.wait()
    killed = time.monotonic()

    # Within the bound, calls are decided from cache (and audited to the spool).
    world.call("GET", "/v1/invoices/2", expect=200)
    world.call("DELETE", "/v1/invoices/2", expect=403)
    assert time.monotonic() - killed < OUTAGE_SECONDS - 1

    # Past the bound, every call is refused.
    refused = _until(lambda: world.call("GET", "/v1/invoices/3").status_code == 503, 10)
    assert OUTAGE_SECONDS - 1 < time.monotonic() - killed < OUTAGE_SECONDS + 3, refused
    for _ in range(3):
        r = world.call("GET", "/v1/invoices/4", expect=503)
        assert r.headers["content-type"] == "application/problem+json"
        assert int(r.headers["retry-after"]) >= 1
    assert httpx.get(world.gw_url + "/healthz", timeout=5).status_code == 503

    # The control plane comes back on the same database and port: the gateway recovers.
    world.cp = Server(world.env, world.cp_port)
    _drain(world.cp.proc)
    recovered = _until(lambda: world.call("GET", "/v1/invoices/5").status_code == 200, 20)
    assert recovered < 20

    # Every spooled event ships, and every call made in this file is in the trail.
    assert _until(lambda: _pending(world) == 0, 30) < 30
    trail, brokered = _trail(world)
    # The secret the broker injected is named, by version, never by value.
    assert brokered == {"billing-key@1", None}  # None: the upstream without a credential
    missing = [
        (c.status, c.trace_id, t)
        for c in world.calls
        for t in c.types
        if t not in trail.get(c.trace_id, set())
    ]
    assert not missing, missing
    assert len(world.calls) > 30
    cli(world.env, "audit", "verify")


def _pending(world: World) -> int:
    health = httpx.get(world.gw_url + "/healthz", timeout=5).json()
    return int(health["spool"]["pending_events"])


def _trail(world: World) -> tuple[dict[str, set[str]], set[str | None]]:
    """trace id -> the types of the gateway's events carrying it; and the secrets the
    tool.call events name."""
    with world.admin_client() as admin:
        text = admin.get("/v1/audit/events/export", timeout=60).text
    assert API_KEY not in text
    found: dict[str, set[str]] = {}
    brokered: set[str | None] = set()
    for line in text.splitlines():
        event = json.loads(line)
        if event["source"] == "gateway/billing-gw":
            found.setdefault(event["trace"]["trace_id"], set()).add(event["type"])
            if event["type"] == "tool.call":
                brokered.add(event["details"]["brokered"])
    return found, brokered
