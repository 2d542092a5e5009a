"""The HTTP gateway's cost: latency it adds over a direct call to the same upstream, at
fixed request rates, and the most authorized calls per second it sustains.

Real processes on this machine, each started here and stopped at the end:

* the control plane, ``agentiam serve`` on a fresh SQLite file, with one agent whose
  policy allows ``GET`` on the routed endpoint;
* the upstream, a trivial plain-ASGI app under uvicorn (uvloop, httptools) answering a
  ~60-byte JSON body with ``Content-Length``;
* the gateway, ``agentiam gateway http --config`` with one route (``GET
  /v1/items/{id}``), an API key injected by the broker, no rate limit, its audit spool
  in the temp directory (every decision fsynced before the call is forwarded, every
  outcome after) and shipping to the control plane as it runs;
* with ``--redis URL``, the gateway runs as one of several replicas would: its
  ``replay_cache`` in that Redis and a per-agent rate limit no call reaches, so every
  call also records its DPoP proof (``SET NX``) and takes a rate-limit token (a Lua
  script) there, two round trips on the hot path;
* the load generator, one process of its own (uvloop, raw HTTP/1.1 over keep-alive
  connections, requests encoded before the clock starts). Every gateway request
  carries the agent's DPoP-bound token and a DPoP proof of its own (RFC 9449 proofs
  are single-use: the gateway refuses a replayed ``jti``), signed before each phase
  (proofs expire after 60 s).

Phases, each against the upstream directly and then through the gateway:

1. **fixed rates** (default 100 and 500 calls/s for 10 s each): open loop, each call
   sent at its scheduled time on a free connection (64 connections); latency is from
   the write of the request to the last byte of the response. ``added`` is the gateway
   row's percentile minus the direct row's (the difference of two distributions, not a
   per-call difference). ``late`` counts sends more than 1 ms behind schedule (the
   generator falling behind); ``errors`` counts answers other than 200.
   With ``--pause-control-plane`` each rate is run once more through the gateway
   with the control plane stopped (SIGSTOP): the gateway decides from its cached
   keys, revocations and policy and spools its events, as in an outage, so the row
   shows the gateway's latency without the control plane's CPU on the same two cores
   (the spool ships everything once it is resumed; the drain check below covers it).
2. **throughput**: closed loop, ``--concurrency`` connections (default 32) sending back
   to back for ``--seconds`` (default 10); calls/s are 200 answers over the wall time.

It also prints the CPU seconds each process used per phase, the gateway's own view
from ``/metrics`` (per phase, the share of event-loop probes more than 2 and 5 ms late
and of decisions, i.e. authenticate, decide and fsync the audit event, that took more
than 2 and 5 ms; and the whole run's decision-time histogram), and whether the audit
spool drained (every event shipped to the control plane) after the run.

The generator shares the 2 cores with the three servers, so the throughput row is the
whole system on this machine, not the gateway alone: read it with the CPU table.

Rerun from the repository root::

    .venv/bin/python bench/gateway.py                    # about 2 minutes on 2 cores
    .venv/bin/python bench/gateway.py --pause-control-plane
    .venv/bin/python bench/gateway.py --rates 500 --redis redis://127.0.0.1:6379/15
    .venv/bin/python bench/gateway.py --rates 100,500,1000 --seconds 5 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pickle
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from promtext import LATE, histogram, share_over, since  # noqa: E402

AGENTIAM = str(Path(sys.executable).with_name("agentiam"))
KEY_RE = re.compile(r"aiam_[a-z2-9]{8}_[A-Za-z0-9_-]{43}")
P99_TARGET_MS = 2.0
THROUGHPUT_TARGET = 1500.0


# -- the load generator (its own process) ---------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked); return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    match = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
    if match:
        await reader.readexactly(int(match.group(1)))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


@dataclass
class LoadOut:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    late: int = 0
    elapsed: float = 0.0
    # the gateway's histograms over the phase (_HISTOGRAMS): name -> bound -> count
    histograms: dict[str, dict[str, float]] = field(default_factory=dict)
    # the gateway's event-loop thread over the phase: seconds on a CPU, and seconds
    # runnable but waiting for one (/proc schedstat; None where the kernel has none)
    loop_sched: tuple[float, float] | None = None


async def _fixed_rate(
    host: str, port: int, requests: list[bytes], rate: float, connections: int
) -> LoadOut:
    loop = asyncio.get_running_loop()
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(await asyncio.open_connection(host, port))
    out = LoadOut()
    start = loop.time() + 0.2

    async def one(index: int, request: bytes) -> None:
        scheduled = start + index / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        reader, writer = await free.get()
        if loop.time() - scheduled > 0.001:
            out.late += 1
        sent = time.perf_counter()
        writer.write(request)
        status = await _read_response(reader)
        out.latencies.append(time.perf_counter() - sent)
        out.statuses[status] = out.statuses.get(status, 0) + 1
        free.put_nowait((reader, writer))

    await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    out.elapsed = loop.time() - start
    while not free.empty():
        free.get_nowait()[1].close()
    return out


async def _closed_loop(
    host: str, port: int, requests: list[bytes], connections: int, seconds: float
) -> LoadOut:
    loop = asyncio.get_running_loop()
    conns = [await asyncio.open_connection(host, port) for _ in range(connections)]
    out = LoadOut()
    queue = iter(requests)
    start = loop.time()
    deadline = start + seconds

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for request in queue:
            if loop.time() >= deadline:
                return
            sent = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            out.latencies.append(time.perf_counter() - sent)
            out.statuses[status] = out.statuses.get(status, 0) + 1

    await asyncio.gather(*(worker(r, w) for r, w in conns))
    out.elapsed = loop.time() - start
    for _, writer in conns:
        writer.close()
    return out


def _load_main(job_file: str, out_file: str) -> None:
    import uvloop

    job = pickle.loads(Path(job_file).read_bytes())  # noqa: S301 - our own file
    if job["mode"] == "rate":
        coro = _fixed_rate(job["host"], job["port"], job["requests"], job["rate"], 64)
    else:
        coro = _closed_loop(
            job["host"], job["port"], job["requests"], job["connections"], job["seconds"]
        )
    out = uvloop.run(coro)
    Path(out_file).write_text(json.dumps(out.__dict__))


# -- the upstream (its own process) ---------------------------------------------------------


def _upstream_main(port: int) -> None:
    import uvicorn

    body = b'{"id":"item","status":"ok","amount":1234,"currency":"EUR"}'
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    done = {"type": "http.response.body", "body": body}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send(start)
        await send(done)

    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
        lifespan="off", loop="uvloop", http="httptools",
    )  # fmt: skip


# -- orchestration --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[Any], what: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start")


def _schedstat(pid: int) -> tuple[float, float] | None:
    """The main thread of ``pid`` (the gateway's event loop): seconds on a CPU and
    seconds runnable but waiting for one, so far (Linux's schedstat), or None."""
    try:
        run, wait, _ = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return None
    return int(run) / 1e9, int(wait) / 1e9


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class System:
    tmp: Path
    cp: subprocess.Popen[str]
    cp_url: str
    upstream: subprocess.Popen[str]
    up_port: int
    gateway: subprocess.Popen[str]
    gw_port: int
    agent: Any  # AgentClient

    @property
    def gw_url(self) -> str:
        return f"http://127.0.0.1:{self.gw_port}"

    def pids(self) -> dict[str, int]:
        return {"gateway": self.gateway.pid, "upstream": self.upstream.pid, "control plane":
                self.cp.pid}  # fmt: skip


@contextmanager
def system(redis_url: str | None = None) -> Iterator[System]:
    import httpx

    from agentiam.core.credentials.sealing import MasterKey
    from agentiam.sdk import AgentClient, AgentKey

    tmp = Path(tempfile.mkdtemp(prefix="agentiam-gw-bench-"))
    procs: list[subprocess.Popen[str]] = []
    cp_port, up_port, gw_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "AGENTIAM_DATABASE_URL": f"sqlite:///{tmp}/cp.db",
        "AGENTIAM_PORT": str(cp_port),
        "AGENTIAM_MASTER_KEY": MasterKey.generate_text(),
        "PYTHONUNBUFFERED": "1",
    }
    try:
        subprocess.run(  # noqa: S603 - our own CLI
            [AGENTIAM, "db", "upgrade"], env=env, check=True, capture_output=True
        )
        cp = subprocess.Popen(  # noqa: S603 - our own CLI
            [AGENTIAM, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        procs.append(cp)
        admin_key = None
        assert cp.stdout is not None
        for _ in range(20):
            found = KEY_RE.findall(cp.stdout.readline())
            if found:
                admin_key = found[0]
                break
        if admin_key is None:
            raise SystemExit("the control plane printed no admin key")
        cp_url = f"http://127.0.0.1:{cp_port}"
        _wait(cp_url + "/healthz", cp, "control plane")
        import threading

        threading.Thread(target=cp.stdout.read, daemon=True).start()
        gw_url = f"http://127.0.0.1:{gw_port}"
        key = AgentKey.generate()
        with httpx.Client(
            base_url=cp_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
        ) as admin:
            owner = admin.post(
                "/v1/humans", json={"display_name": "Bench", "email": "bench@example.com"}
            ).json()["id"]
            agent = admin.post(
                "/v1/agents",
                json={"name": "bench-bot", "owners": [owner], "purpose": "bench",
                      "environment": "production", "activate": True,
                      "keys": [key.public_jwk()], "audiences": [gw_url]},
            )  # fmt: skip
            agent.raise_for_status()
            agent_id = agent.json()["id"]
            policy = (
                f'permit (principal == Agent::"{agent_id}", action == Action::"GET", '
                'resource == Endpoint::"items");'
            )
            admin.put("/v1/policies/bench", json={"text": policy}).raise_for_status()
            verifier = admin.post(  # bound to the gateway it reports as (config name: bench)
                "/v1/admin-keys",
                json={"name": "gw", "role": "verifier", "sources": ["gateway/bench"]},
            )
            verifier.raise_for_status()
        gw_env = {
            **os.environ,
            "AGENTIAM_GATEWAY_KEY": verifier.json()["secret"],
            "AGENTIAM_GATEWAY_SECRETS_KEY": MasterKey.generate_text(),
        }
        store = tmp / "secrets.json"
        subprocess.run(  # noqa: S603 - our own CLI
            [AGENTIAM, "gateway", "secrets", "put", "items-key", "--kind", "api_key",
             "--store", str(store)],
            input="bench-upstream-key-0123456789", env=gw_env, check=True, capture_output=True,
            text=True,
        )  # fmt: skip
        upstream = subprocess.Popen(  # noqa: S603 - this script
            [sys.executable, __file__, "_upstream", str(up_port)], text=True
        )
        procs.append(upstream)
        config = {
            "name": "bench",
            "public_url": gw_url,
            "listen": {"host": "127.0.0.1", "port": gw_port},
            "control_plane": {"url": cp_url, "key_env": "AGENTIAM_GATEWAY_KEY"},
            "spool": {"directory": str(tmp / "spool")},
            "secrets": {"store": str(store)},
            "upstreams": {
                "items": {
                    "url": f"http://127.0.0.1:{up_port}",
                    "credential": {"secret": "items-key", "header": "X-Api-Key"},
                }
            },
            "routes": [
                {"match": {"method": "GET", "path": "/v1/items/{id}"}, "upstream": "items",
                 "action": "GET", "resource": {"type": "Endpoint", "id": "items"}}
            ],
        }  # fmt: skip
        if redis_url is not None:  # replicas' mode: every call also goes to Redis twice
            prefix = f"agentiam-bench:{gw_port}:"  # this run's keys; they expire on their own
            config["replay_cache"] = {"url": redis_url, "key_prefix": prefix}
            # a limit no call reaches: each call takes its token through the Lua script
            config["rate_limits"] = {"per_agent": {"rate_per_second": 1e6, "burst": 1000000}}
        (tmp / "gateway.yaml").write_text(json.dumps(config))
        with (tmp / "gateway.log").open("w") as log:
            gateway = subprocess.Popen(  # noqa: S603 - our own CLI
                [AGENTIAM, "gateway", "http", "--config", str(tmp / "gateway.yaml")],
                env=gw_env, stdout=log, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        procs.append(gateway)
        _wait(f"http://127.0.0.1:{up_port}/", upstream, "upstream")
        _wait(gw_url + "/healthz", gateway, "gateway")
        client = AgentClient(cp_url, client_id=agent_id, key=key, resource=gw_url)
        yield System(tmp, cp, cp_url, upstream, up_port, gateway, gw_port, client)
        client.close()
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _requests(s: System, n: int, *, through_gateway: bool) -> list[bytes]:
    """``n`` encoded requests; through the gateway each has a fresh DPoP proof."""
    from agentiam.sdk import dpop_proof

    port = s.gw_port if through_gateway else s.up_port
    out = []
    token = s.agent.token().value if through_gateway else None
    for i in range(n):
        path = f"/v1/items/{i % 1000}"
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        if token is not None:
            proof = dpop_proof(
                s.agent.dpop_key, method="GET", url=s.gw_url + path, access_token=token
            )
            lines += [f"Authorization: DPoP {token}", f"DPoP: {proof}"]
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode())
    return out


def _run_load(
    s: System, job: dict[str, Any], profiles: dict[str, Path] | None = None
) -> tuple[LoadOut, dict[str, float]]:
    """Run one phase: the load generator's results (with the gateway's event-loop
    lag histogram over the phase) and the CPU seconds each server used.
    ``profiles`` maps a server's name (as in ``System.pids``) to where its py-spy
    samples go."""
    job_file, out_file = s.tmp / "job.pkl", s.tmp / "out.json"
    job_file.write_bytes(pickle.dumps(job))
    spies = []
    for name, path in (profiles or {}).items():  # the GIL holder: where the CPU goes
        spies.append(subprocess.Popen(  # noqa: S603 - py-spy from PyPI, next to this Python
            [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
             str(s.pids()[name]), "--format", "raw", "--output", str(path), "--rate", "200",
             "--nonblocking", "--gil", "--threads"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    if spies:
        time.sleep(1.0)  # py-spy attaches
    histograms_before = {name: _histogram(s, metric) for name, metric in _HISTOGRAMS.items()}
    before = {name: _cpu_seconds(pid) for name, pid in s.pids().items()}
    sched_before = _schedstat(s.gateway.pid)
    gen = subprocess.run(  # noqa: S603 - this script
        [sys.executable, __file__, "_load", str(job_file), str(out_file)], check=False
    )
    after = {name: _cpu_seconds(pid) for name, pid in s.pids().items()}
    sched_after = _schedstat(s.gateway.pid)
    histograms_after = {name: _histogram(s, metric) for name, metric in _HISTOGRAMS.items()}
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
        spy.wait(timeout=30)
    if gen.returncode != 0:
        raise SystemExit("the load generator failed")
    data = json.loads(out_file.read_text())
    out = LoadOut(
        latencies=data["latencies"],
        statuses={int(k): v for k, v in data["statuses"].items()},
        late=data["late"],
        elapsed=data["elapsed"],
    )
    cpu = {name: after[name] - before[name] for name in before}
    if sched_before is not None and sched_after is not None:
        out.loop_sched = (sched_after[0] - sched_before[0], sched_after[1] - sched_before[1])
    out.histograms = {
        name: since(after_, histograms_before[name]) for name, after_ in histograms_after.items()
    }
    return out, cpu


def _cpu_row(name: str, cpu: dict[str, float], out: LoadOut) -> list[str]:
    """CPU seconds of each server in one phase; per call for the gateway and the
    control plane (whose audit ingest is the gateway's events); and the share of the
    gateway's event-loop probes (due every 10 ms) that ran more than 2 and 5 ms late, of
    its decisions (authenticate, decide, audit event durable) and of its requests (from
    the request to the end of the response, as the gateway's handler sees it) that took
    that long; and the gateway's event-loop thread's seconds on a CPU and waiting for
    one (runnable, its CPU taken by another process or thread)."""
    calls = max(1, sum(out.statuses.values()))
    extra = ("",) * (3 + len(_HISTOGRAMS))
    if "gateway" in name:
        sched = "" if out.loop_sched is None else "{:.1f} / {:.1f}".format(*out.loop_sched)
        extra = (f"{cpu['gateway'] / calls * 1000:.2f}",
                 f"{cpu['control plane'] / calls * 1000:.2f}", sched,
                 *(share_over(out.histograms[key], LATE) for key in _HISTOGRAMS))  # fmt: skip
    return [name, *(f"{cpu[p]:.1f}" for p in cpu), f"{out.elapsed:.1f}", *extra]


_DECISION = "agentiam_gateway_decision_seconds"
_HISTOGRAMS = {  # the gateway's histograms the CPU table reports, in its column order
    "lag": "agentiam_gateway_event_loop_lag_seconds",
    "decision": _DECISION,
    "request": "agentiam_gateway_request_seconds",
}


def _histogram(s: System, metric: str) -> dict[str, float]:
    """One of the gateway's cumulative histograms: bucket bound -> count."""
    return histogram(s.gw_url, metric)


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = math.ceil(q * len(ordered))  # nearest rank
    return ordered[min(len(ordered), max(1, rank)) - 1]


def _errors(out: LoadOut) -> int:
    return sum(v for k, v in out.statuses.items() if k != 200)


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _spool_pending(s: System) -> int:
    import httpx

    return int(httpx.get(s.gw_url + "/healthz", timeout=10).json()["spool"]["pending_events"])


def _decision_histogram(s: System) -> str:
    """The whole run's decision times, as the share at or under each bucket bound."""
    buckets = _histogram(s, _DECISION)
    count = buckets.get("+Inf", 0.0) or 1.0
    parts = [f"<= {float(le) * 1000:g} ms: {n / count:.1%}" for le, n in buckets.items()
             if le != "+Inf" and float(le) <= 0.01]  # fmt: skip
    return ", ".join(parts)


_PROFILED = ("gateway", "control plane")  # the servers ``--profile`` samples


def _profile_summary(path: Path, top: int = 25) -> str:
    """A server's py-spy samples (GIL holder only) as two lists: the functions
    where the samples were taken (self), and the agentiam functions they ran under
    (cumulative), each as a share of all samples."""
    own: dict[str, int] = {}
    under: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")[1:]  # the first is the thread
        total += n
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            if "agentiam/" in frame and "agentiam/cli" not in frame:
                under[frame] = under.get(frame, 0) + n
    if not total:
        return "no samples (is py-spy installed? .venv/bin/pip install py-spy)"
    lines = [f"{total} samples; self:"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {n / total:6.1%}  {frame}")
    lines.append("cumulative (agentiam functions):")
    for frame, n in sorted(under.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {n / total:6.1%}  {frame}")
    return "\n".join(lines)


def _latency_row(name: str, d: LoadOut, g: LoadOut) -> list[str]:
    """One row of the added-latency table: direct ``d`` against gateway ``g``."""
    added50 = _pct(g.latencies, 0.5) - _pct(d.latencies, 0.5)
    added99 = _pct(g.latencies, 0.99) - _pct(d.latencies, 0.99)
    return [
        name, _fmt_ms(_pct(d.latencies, 0.5)), _fmt_ms(_pct(d.latencies, 0.99)),
        _fmt_ms(_pct(g.latencies, 0.5)), _fmt_ms(_pct(g.latencies, 0.99)), _fmt_ms(added50),
        _fmt_ms(added99), f"{_pct(g.latencies, 0.99) / _pct(d.latencies, 0.99):.1f}x",
        f"{d.late}/{g.late}", f"{_errors(d)}/{_errors(g)}",
    ]  # fmt: skip


def _loadavg() -> str:
    """The 1-minute load average: other work on the machine skews every figure."""
    return Path("/proc/loadavg").read_text().split()[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,500", help="fixed rates, calls/s (100,500)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--concurrency", type=int, default=32, help="throughput connections")
    parser.add_argument(
        "--pause-control-plane", action="store_true",
        help="repeat each fixed-rate gateway phase with the control plane stopped (SIGSTOP): "
        "the gateway decides from its cache and spools, so the row shows its latency "
        "without the control plane's CPU on the same two cores",
    )  # fmt: skip
    parser.add_argument(
        "--redis", metavar="URL",
        help="configure the gateway as a replica: replay_cache at this Redis (e.g. "
        "redis://127.0.0.1:6379/15) and a per-agent limit no call reaches, so every call "
        "records its proof and takes a rate-limit token there",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help="sample the gateway and the control plane with py-spy during the "
        "throughput phase (pip install py-spy)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: nproc={os.cpu_count()}, python {platform.python_version()}, "
        f"{platform.platform()}; load average before the run: {_loadavg()}"
    )
    rows: list[list[str]] = []
    cpu_rows: list[list[str]] = []
    profiled = ""
    figures: dict[str, float] = {}
    if args.redis:
        print(f"gateway as a replica: shared replay cache and rate limits in {args.redis}")
    with system(args.redis) as s:
        # warm up both paths (connections, caches, the spool's first segment)
        for gw in (False, True):
            port = s.gw_port if gw else s.up_port
            job = {"mode": "closed", "host": "127.0.0.1", "port": port, "connections": 8,
                   "seconds": 3.0, "requests": _requests(s, 1500, through_gateway=gw)}  # fmt: skip
            _run_load(s, job)
        for rate in rates:
            n = int(rate * args.seconds)
            results = {}
            for gw in (False, True):
                port = s.gw_port if gw else s.up_port
                job = {"mode": "rate", "host": "127.0.0.1", "port": port, "rate": rate,
                       "requests": _requests(s, n, through_gateway=gw)}  # fmt: skip
                out, cpu = _run_load(s, job)
                results[gw] = out
                name = f"{rate:g}/s {'gateway' if gw else 'direct'}"
                cpu_rows.append(_cpu_row(name, cpu, out))
            d, g = results[False], results[True]
            figures[f"added_p99_{rate:g}"] = _pct(g.latencies, 0.99) - _pct(d.latencies, 0.99)
            rows.append(_latency_row(f"{rate:g} calls/s", d, g))
            if args.pause_control_plane:  # the same phase with the control plane stopped
                job = {"mode": "rate", "host": "127.0.0.1", "port": s.gw_port, "rate": rate,
                       "requests": _requests(s, n, through_gateway=True)}  # fmt: skip
                s.cp.send_signal(signal.SIGSTOP)
                try:
                    paused, cpu = _run_load(s, job)
                finally:
                    s.cp.send_signal(signal.SIGCONT)
                cpu_rows.append(_cpu_row(f"{rate:g}/s gateway, control plane paused", cpu, paused))
                rows.append(_latency_row(f"{rate:g} calls/s, control plane paused", d, paused))
        through: dict[bool, LoadOut] = {}
        for gw in (False, True):
            port = s.gw_port if gw else s.up_port
            budget = int(9000 * args.seconds) if not gw else int(3000 * args.seconds)
            job = {"mode": "closed", "host": "127.0.0.1", "port": port,
                   "connections": args.concurrency, "seconds": args.seconds,
                   "requests": _requests(s, budget, through_gateway=gw)}  # fmt: skip
            profiles = (
                {name: s.tmp / f"{name.replace(' ', '_')}.pyspy" for name in _PROFILED}
                if gw and args.profile else {}
            )  # fmt: skip
            out, cpu = _run_load(s, job, profiles)
            profiled = (
                "\n\n".join(
                    f"{name} profile (py-spy, throughput phase, GIL holder):\n"
                    f"{_profile_summary(path)}"
                    for name, path in profiles.items()
                )
                or profiled
            )
            through[gw] = out
            name = f"max {'gateway' if gw else 'direct'} c={args.concurrency}"
            cpu_rows.append(_cpu_row(name, cpu, out))
            if len(out.latencies) >= budget:
                print(f"note: {name} used all {budget} pre-made requests; raise the budget")
        d, g = through[False], through[True]
        d_rate = d.statuses.get(200, 0) / d.elapsed
        g_rate = g.statuses.get(200, 0) / g.elapsed
        figures["throughput"] = g_rate
        decision = _decision_histogram(s)
        drained_in = None
        started = time.monotonic()
        while time.monotonic() - started < 60:
            if _spool_pending(s) == 0:
                drained_in = time.monotonic() - started
                break
            time.sleep(0.5)

    from mdtable import markdown_table

    print()
    print("Added latency (open loop; ms; latency from request write to last response byte)")
    print()
    print(markdown_table(
        ["load", "direct p50", "direct p99", "gateway p50", "gateway p99", "added p50",
         "added p99", "gateway/direct p99", "late d/g", "errors d/g"],
        rows,
    ))  # fmt: skip
    print()
    print(f"Throughput (closed loop, {args.concurrency} connections, {args.seconds:g} s)")
    print()
    print(markdown_table(
        ["path", "calls/s", "p50 ms", "p99 ms", "errors", "gateway/direct"],
        [["direct", f"{d_rate:,.0f}", _fmt_ms(_pct(d.latencies, 0.5)),
          _fmt_ms(_pct(d.latencies, 0.99)), str(_errors(d)), ""],
         ["gateway (authorized)", f"{g_rate:,.0f}", _fmt_ms(_pct(g.latencies, 0.5)),
          _fmt_ms(_pct(g.latencies, 0.99)), str(_errors(g)), f"{g_rate / d_rate:.2f}x"]],
    ))  # fmt: skip
    print()
    print("CPU seconds used during each phase (and per call answered, in ms)")
    print()
    print(markdown_table(
        ["phase", "gateway", "upstream", "control plane", "wall s", "gateway ms/call",
         "control plane ms/call", "gateway loop thread on CPU / waiting for one s",
         "loop late > 2 / 5 ms", "decision > 2 / 5 ms",
         "in gateway > 2 / 5 ms"],
        cpu_rows,
    ))  # fmt: skip
    print()
    print(f"gateway decision time (authenticate + decide + durable event): {decision}")
    if args.profile:
        print()
        print(profiled)
    print(f"load average after the run: {_loadavg()} (this run's own processes included)")
    print(
        "audit spool after the run: "
        + (f"drained in {drained_in:.1f} s" if drained_in is not None else "NOT drained in 60 s")
    )
    print()
    for rate in rates:
        added = figures[f"added_p99_{rate:g}"] * 1000
        if rate == 500:
            verdict = "met" if added <= P99_TARGET_MS else "NOT met"
            target = f"target p99 added <= {P99_TARGET_MS:g} ms at 500 calls/s"
            print(f"{target}: {added:.2f} ms, {verdict}")
    ok = figures["throughput"] >= THROUGHPUT_TARGET
    print(
        f"target >= {THROUGHPUT_TARGET:,.0f} authorized calls/s: "
        f"{figures['throughput']:,.0f}, {'met' if ok else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "_load":
        _load_main(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 2 and sys.argv[1] == "_upstream":
        _upstream_main(int(sys.argv[2]))
    else:
        sys.exit(main())
