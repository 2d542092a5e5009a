"""The MCP gateway's cost: the latency it adds to an MCP ``tools/call`` over a direct
call to the same upstream server, and the most authorized MCP calls per second.

Setup (real processes on this machine, in a fresh temporary directory):

* ``agentiam serve`` on a fresh SQLite file: one agent with a key, entitled to a token
  for the gateway; one policy permitting ``invoke_tool`` on ``Tool::"bench.echo"``;
* the upstream: the official MCP SDK's ``MCPServer`` over Streamable HTTP (uvicorn), one
  tool ``echo(text) -> text``; it refuses requests without its API key;
* ``agentiam gateway mcp`` in front of it, the API key brokered from the sealed store.

Each call through the gateway is authenticated (DPoP-bound token, a fresh proof: the
signature, ``ath``, ``htu``, ``jti`` replay), rate-limit checked, decided by Cedar,
written as a decision event fsynced to the audit spool, forwarded upstream through the
SDK's client session with the brokered key, and written again as a ``tool.call``
event, while the spool ships to the control plane in the background.

Requests are raw HTTP/1.1 keep-alive POSTs of a 2026-07-28 ``tools/call`` (the
JSON-RPC envelope with ``_meta``, ``MCP-Protocol-Version``, ``Mcp-Method``,
``Mcp-Name``), encoded before the clock starts. Through the gateway each carries the
agent's token and its own DPoP proof, made in advance (a proof is single-use); direct
ones carry the upstream's API key. Every response is checked (status 200, a JSON-RPC
result, not ``isError``; the first one's text).

1. **Fixed rates** (open loop): request *i* is due at ``t0 + i/rate``; its latency runs
   from that due time to the last byte of the response, so a stall shows instead of
   being hidden by a slower send rate (no coordinated omission). Direct and gateway
   runs alternate per rate. *Added* is the gateway's percentile minus the direct one.
   The last column is the gateway's own view (``agentiam_gateway_decision_seconds``
   from its ``/metrics``): the share of that run's decisions over 2 and 5 ms.
2. **Most calls/s** (closed loop): ``--concurrency`` connections send back to back for
   ``--max-calls`` calls; calls/s = calls / wall time.

Everything (the load generator, the gateway, the upstream, the control plane) shares
the machine's cores, so the figures are for this machine as a whole; the load
generator is one asyncio process with uvloop when installed.

Rerun from the repository root::

    .venv/bin/python bench/gateway_mcp.py                        # ~2 min on 2 cores
    .venv/bin/python bench/gateway_mcp.py --rates 100,500 --seconds 5 --max-calls 8000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script too

from bench.mdtable import markdown_table  # noqa: E402
from bench.promtext import LATE, histogram, share_over, since  # noqa: E402

AGENTIAM = str(Path(sys.executable).with_name("agentiam"))
MODERN = "2026-07-28"
DECISION = "agentiam_gateway_decision_seconds"  # the gateway's histogram (its /metrics)
UPSTREAM_KEY = "bench-upstream-" + "key-4d2e"
TOOL = "echo"
PREFIX = "bench."
POLICY = (
    '@id("bench-echo")\n'
    f'permit (principal, action == Action::"invoke_tool", resource == Tool::"{PREFIX}{TOOL}");'
)


# -- the upstream MCP server (its own process) ----------------------------------------------


def upstream_main(port: int) -> None:
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bench")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text."""
        return text

    inner = server.streamable_http_app(host="127.0.0.1")
    expected = f"Bearer {UPSTREAM_KEY}".encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await inner(scope, receive, send)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(  # noqa: S603 - our own CLI
        [AGENTIAM, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"agentiam {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def wait_up(url: str, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{log.read_text()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start:\n{log.read_text()}")


@dataclass
class World:
    control_plane: str
    gateway: str  # the MCP endpoint, = public_url
    upstream: str
    agent_id: str
    agent_key: Any  # agentiam.sdk.keys.AgentKey
    pids: dict[str, int]  # process name -> pid


@contextmanager
def world(tmp: Path) -> Iterator[World]:
    from agentiam.sdk.keys import AgentKey

    cp_port, up_port, gw_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "AGENTIAM_DATABASE_URL": f"sqlite:///{tmp}/agentiam.db",
        "AGENTIAM_PORT": str(cp_port),
        "AGENTIAM_MASTER_KEY": base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode(),
        "PYTHONUNBUFFERED": "1",
    }
    gateway = f"http://127.0.0.1:{gw_port}/mcp"
    run_cli(env, "db", "upgrade")
    key_args = ["--name", "gw", "--role", "verifier", "--source", "gateway/bench", "--json"]
    verifier = json.loads(run_cli(env, "admin-keys", "create", *key_args))["secret"]
    (tmp / "policy.cedar").write_text(POLICY)
    run_cli(env, "policy", "import", str(tmp / "policy.cedar"))
    human = json.loads(
        run_cli(env, "humans", "create", "--name", "Bench", "--email", "b@example.com", "--json")
    )["id"]
    key = AgentKey.generate()
    (tmp / "agent.pub.json").write_text(json.dumps(key.public_jwk()))
    agent = json.loads(
        run_cli(env, "agents", "create", "bench-bot", "--owner", human, "--purpose", "bench",
                "--environment", "bench", "--key-file", str(tmp / "agent.pub.json"),
                "--scope", "mcp", "--audience", gateway, "--activate", "--json")
    )["id"]  # fmt: skip
    gw_env = {
        **env,
        "AGENTIAM_GATEWAY_KEY": verifier,
        "AGENTIAM_GATEWAY_SECRETS_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32))
        .rstrip(b"=")
        .decode(),
    }
    store = tmp / "secrets.json"
    run_cli(gw_env, "gateway", "secrets", "put", "upstream", "--kind", "api_key",
            "--store", str(store), stdin=UPSTREAM_KEY)  # fmt: skip
    config = {
        "name": "bench",
        "public_url": gateway,
        "listen": {"host": "127.0.0.1", "port": gw_port},
        "control_plane": {"url": f"http://127.0.0.1:{cp_port}"},
        "spool": {"directory": str(tmp / "spool")},
        "secrets": {"store": str(store)},
        "servers": [
            {
                "name": "bench",
                "url": f"http://127.0.0.1:{up_port}/mcp",
                "prefix": PREFIX,
                "credential": {"secret": "upstream", "prefix": "Bearer "},
            }
        ],
    }
    (tmp / "gateway.yaml").write_text(json.dumps(config))
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str], penv: dict[str, str], name: str, probe: str) -> None:
        log = tmp / f"{name}.log"
        proc = subprocess.Popen(  # noqa: S603 - our own processes
            args, env=penv, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT
        )
        procs.append(proc)
        wait_up(probe, proc, name, log)

    try:
        spawn([AGENTIAM, "serve"], env, "control-plane", f"http://127.0.0.1:{cp_port}/healthz")
        spawn(
            [sys.executable, "-c",
             f"from bench.gateway_mcp import upstream_main; upstream_main({up_port})"],
            env, "upstream", f"http://127.0.0.1:{up_port}/",
        )  # fmt: skip
        spawn(
            [AGENTIAM, "gateway", "mcp", "--config", str(tmp / "gateway.yaml")],
            gw_env, "gateway", f"http://127.0.0.1:{gw_port}/healthz",
        )  # fmt: skip
        yield World(
            control_plane=f"http://127.0.0.1:{cp_port}",
            gateway=gateway,
            upstream=f"http://127.0.0.1:{up_port}/mcp",
            agent_id=agent,
            agent_key=key,
            pids={
                "gateway": procs[2].pid,
                "upstream": procs[1].pid,
                "control plane": procs[0].pid,
                "load generator": os.getpid(),
            },
        )
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


# -- requests ---------------------------------------------------------------------------------


def _body(name: str, request_id: int) -> bytes:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
    }
    message = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": {"text": "hello"}, "_meta": meta},
    }
    return json.dumps(message, separators=(",", ":")).encode()


def _encode(url: str, name: str, request_id: int, auth: dict[str, str]) -> bytes:
    parts = httpx.URL(url)
    body = _body(name, request_id)
    lines = [
        f"POST {parts.raw_path.decode()} HTTP/1.1",
        f"Host: {parts.host}:{parts.port}",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        f"MCP-Protocol-Version: {MODERN}",
        "Mcp-Method: tools/call",
        f"Mcp-Name: {name}",
        *(f"{k}: {v}" for k, v in auth.items()),
        f"Content-Length: {len(body)}",
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body


def direct_requests(w: World, n: int) -> list[bytes]:
    one = _encode(w.upstream, TOOL, 1, {"Authorization": f"Bearer {UPSTREAM_KEY}"})
    return [one] * n


def gateway_requests(w: World, n: int) -> tuple[list[bytes], float]:
    """``n`` requests, each with its own DPoP proof; and the seconds making them took."""
    from agentiam.sdk import AgentClient
    from agentiam.sdk.proofs import dpop_proof

    agent = AgentClient(w.control_plane, client_id=w.agent_id, key=w.agent_key, resource=w.gateway)
    token = agent.token().value
    agent.close()
    started = time.perf_counter()
    out = []
    for i in range(n):
        proof = dpop_proof(agent.dpop_key, method="POST", url=w.gateway, access_token=token)
        auth = {"Authorization": f"DPoP {token}", "DPoP": proof}
        out.append(_encode(w.gateway, PREFIX + TOOL, i + 1, auth))
    return out, time.perf_counter() - started


# -- the load generator -----------------------------------------------------------------------


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def call(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append(chunk[:-2])
            body = b"".join(chunks)
        else:
            body = b""
        return status, body


async def connect(url: str, n: int) -> list[Conn]:
    parts = httpx.URL(url)
    out = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection(parts.host, parts.port)
        out.append(Conn(reader, writer))
    return out


def result_ok(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    if body.startswith(b"event:") or b"data:" in body[:64]:  # an SSE answer: its last event
        body = body.rsplit(b"data:", 1)[-1]
    try:
        message = json.loads(body)
    except ValueError:
        return False
    result = message.get("result")
    return isinstance(result, dict) and not result.get("isError")


def first_text(body: bytes) -> str:
    if b"data:" in body[:64]:
        body = body.rsplit(b"data:", 1)[-1]
    content = json.loads(body)["result"]["content"]
    return str(content[0]["text"])


@dataclass
class Run:
    label: str
    calls: int
    errors: int
    wall: float
    latencies: list[float]

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))] * 1000

    @property
    def rate(self) -> float:
        return self.calls / self.wall


async def open_loop(url: str, requests: Sequence[bytes], rate: float, conns: int) -> Run:
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for conn in await connect(url, conns):
        pool.put_nowait(conn)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    first: bytes | None = None
    t0 = loop.time() + 0.1
    w0 = time.perf_counter() + (t0 - loop.time())

    async def one(i: int, request: bytes) -> None:
        nonlocal errors, first
        due = t0 + i / rate
        due_wall = w0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await pool.get()
        status, body = await conn.call(request)
        latencies.append(time.perf_counter() - due_wall)
        pool.put_nowait(conn)
        if first is None:
            first = body
        if not result_ok(status, body):
            errors += 1

    await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    wall = time.perf_counter() - w0
    if first is not None and result_ok(200, first):
        assert first_text(first) == "hello", first
    return Run("", len(requests), errors, wall, latencies)


async def closed_loop(url: str, requests: Sequence[bytes], concurrency: int) -> Run:
    conns = await connect(url, concurrency)
    latencies: list[float] = []
    errors = 0
    it = iter(requests)

    async def worker(conn: Conn) -> None:
        nonlocal errors
        for request in it:
            started = time.perf_counter()
            status, body = await conn.call(request)
            latencies.append(time.perf_counter() - started)
            if not result_ok(status, body):
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    return Run("", len(requests), errors, time.perf_counter() - started, latencies)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each process so far (Linux /proc; empty elsewhere)."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return {}
        out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="50,100,200,500", help="fixed rates, calls/s")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each fixed-rate run")
    p.add_argument("--connections", type=int, default=64, help="open-loop connection pool")
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop connections")
    p.add_argument("--max-calls", type=int, default=6000, help="calls in each closed-loop run")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]
    print(f"command: {shlex.join(sys.orig_argv)}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: nproc={cpus}, load average {os.getloadavg()[0]:.2f} at start, python "
        f"{platform.python_version()}, {platform.platform()}, mcp {version('mcp')}, "
        f"uvicorn {version('uvicorn')}"
    )
    with tempfile.TemporaryDirectory(prefix="agentiam-bench-mcp-") as tmp, world(Path(tmp)) as w:
        base = w.gateway.rsplit("/mcp", 1)[0]  # the gateway's own paths: /healthz, /metrics
        # warm up both paths (the gateway opens its upstream session on first use)
        warm, _ = gateway_requests(w, 200)
        run_async(closed_loop(w.gateway, warm, 4))
        run_async(closed_loop(w.upstream, direct_requests(w, 200), 4))

        rows: list[list[str]] = []
        for rate in rates:
            n = max(1, int(rate * args.seconds))
            direct = run_async(open_loop(w.upstream, direct_requests(w, n), rate, args.connections))
            reqs, _ = gateway_requests(w, n)
            decided = histogram(base, DECISION)
            via = run_async(open_loop(w.gateway, reqs, rate, args.connections))
            decided = since(histogram(base, DECISION), decided)
            rows.append(
                [
                    f"{rate:g}",
                    f"{direct.pct(0.5):.2f}",
                    f"{via.pct(0.5):.2f}",
                    f"{via.pct(0.5) - direct.pct(0.5):+.2f}",
                    f"{direct.pct(0.99):.2f}",
                    f"{via.pct(0.99):.2f}",
                    f"{via.pct(0.99) - direct.pct(0.99):+.2f}",
                    f"{direct.rate:.0f} / {via.rate:.0f}",
                    f"{direct.errors} / {via.errors}",
                    share_over(decided, LATE),
                ]
            )
        print()
        print(
            f"Fixed rates, open loop, {args.seconds:g} s each "
            "(latency in ms, from the due time to the response; the share of the gateway "
            "run's decisions, authenticate + decide + audit event durable, that took more "
            "than 2 and 5 ms, from its /metrics):"
        )
        print()
        print(
            markdown_table(
                ["calls/s", "direct p50", "gateway p50", "added p50", "direct p99",
                 "gateway p99", "added p99", "achieved (direct / gw)", "errors (direct / gw)",
                 "decision > 2 / 5 ms"],
                rows,
            )
        )  # fmt: skip

        cpu0 = cpu_seconds(w.pids)
        direct = run_async(
            closed_loop(w.upstream, direct_requests(w, args.max_calls), args.concurrency)
        )
        time.sleep(1.0)  # let the background (audit shipping) settle
        cpu1 = cpu_seconds(w.pids)
        reqs, made = gateway_requests(w, args.max_calls)
        cpu2 = cpu_seconds(w.pids)
        via = run_async(closed_loop(w.gateway, reqs, args.concurrency))
        time.sleep(2.0)  # the spool ships the run's events to the control plane
        cpu3 = cpu_seconds(w.pids)
        print()
        print(
            f"Most calls/s, closed loop, {args.concurrency} connections, {args.max_calls} calls "
            f"each (DPoP proofs made beforehand: {args.max_calls / made:,.0f}/s):"
        )
        print()
        print(
            markdown_table(
                ["path", "calls/s", "p50 ms", "p99 ms", "errors", "ratio to direct"],
                [
                    ["direct to the upstream", f"{direct.rate:,.0f}", f"{direct.pct(0.5):.2f}",
                     f"{direct.pct(0.99):.2f}", str(direct.errors), "1.00"],
                    ["through the MCP gateway", f"{via.rate:,.0f}", f"{via.pct(0.5):.2f}",
                     f"{via.pct(0.99):.2f}", str(via.errors), f"{via.rate / direct.rate:.2f}"],
                ],
            )
        )  # fmt: skip
        if cpu3:
            print()
            print("CPU per call (ms, user + system, from /proc) in the closed-loop runs:")
            print()
            cpu_rows = []
            for name in w.pids:
                d = (cpu1[name] - cpu0[name]) / args.max_calls * 1000
                g = (cpu3[name] - cpu2[name]) / args.max_calls * 1000
                cpu_rows.append([name, f"{d:.2f}", f"{g:.2f}"])
            print(markdown_table(["process", "direct run", "gateway run"], cpu_rows))
        health = httpx.get(base + "/healthz").json()
        print()
        print(f"gateway health after the runs: {health}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
