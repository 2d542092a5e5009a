"""Token issuance under load: a load generator for OAuth token endpoints, and its peer.

The one flow measured, on any authorization server::

    POST <token endpoint>
      DPoP: <ES256 proof, RFC 9449: typ dpop+jwt, jwk, htm POST, htu, iat, jti>
      grant_type=client_credentials
      client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
      client_assertion=<ES256 JWT, RFC 7523: iss=sub=client_id, aud, jti, iat, exp=iat+120>
      resource=<audience URI>&scope=<scope>
    -> 200 {"token_type": "DPoP", "access_token": <RFC 9068 JWT: typ at+jwt, aud, cnf.jkt>}

What this module gives to other benchmark scripts:

* ``generate_es256_jwk()`` -- a fresh P-256 key and its public JWK (with ``kid``).
* ``pregenerate(n, ...)`` -- n (client assertion, DPoP proof) pairs, each with its own
  ``jti``, made before any timing starts (every request is a fresh, never-replayed pair, as
  a real fleet of agents would send; a server is right to reject a replayed ``jti``).
* ``run_load(token_endpoint, pairs, ...)`` -- sends every pair once, ``concurrency`` requests
  in flight, and returns a ``LoadResult``: requests/s (pairs / wall time from the common
  start to the last response), non-200 count, nearest-rank p50/p99 latency of single
  requests. The first 200 response is checked: token_type DPoP, JWT typ at+jwt, aud ==
  resource, client_id, cnf.jkt (== the DPoP key's thumbprint when given).
* ``start_oidc_provider(port, ...)`` -- runs the peer, the OpenID Certified Node.js
  ``oidc-provider`` (bench/peer/oidc_provider), configured for exactly this flow.
* ``print_table(rows, ratio_to=...)`` -- a markdown table of results side by side.

How the load is generated (so that the client is not the bottleneck more than it must be):
``processes`` spawned worker processes (default 1), each running an asyncio loop with
``concurrency / processes`` keep-alive HTTP/1.1 connections. The default client ("raw")
writes pre-encoded request bytes and parses only the status line, the headers it needs and
the body; ``client="httpx"`` uses one thread and one ``httpx.Client`` per connection
instead, a cross-check at many times the CPU cost per request (httpx's AsyncClient was
slower still). Requests are encoded and connections opened before the clock starts; an
optional warm-up sends a few extra pairs first, untimed. On a 2-core machine the generator
shares the CPU with the server under test, so measure the generator's own ceiling with
``--ceiling`` (a trivial HTTP responder in its own process) and read the numbers against it.

Rerun from the repository root::

    .venv/bin/python bench/tokenload.py --peer-only          # oidc-provider: 3000 tokens, c=32
    .venv/bin/python bench/tokenload.py --ceiling            # the load generator's own ceiling
    .venv/bin/python bench/tokenload.py --peer-only --ceiling -n 5000 --processes 2

Import it as ``bench.tokenload`` from the repository root (or put bench/ on sys.path). The
load workers are spawned processes that re-import the calling script, so a script that calls
``run_load`` must keep its work under ``if __name__ == "__main__":``.

The peer needs ``node`` (20+) and ``npm``; its dependencies are installed with ``npm ci``
from the committed package-lock.json the first time (``node_modules`` is git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script too

from bench.mdtable import markdown_table

PEER_DIR = Path(__file__).resolve().parent / "peer" / "oidc_provider"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 120
DEFAULT_RESOURCE = "https://tools.example.com/mcp"
DEFAULT_SCOPE = "tools:read"
DEFAULT_CLIENT_ID = "bench-agent"

ClientKind = Literal["raw", "httpx"]


class LoadError(RuntimeError):
    """A run had non-200 responses or a token that failed the checks; ``result`` has the rest."""

    def __init__(self, message: str, result: LoadResult | None = None) -> None:
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------- keys and JWTs


def generate_es256_jwk(kid: str | None = None) -> tuple[ECKey, dict[str, Any]]:
    """A fresh P-256 private key and its public JWK (``kty, crv, x, y, kid, alg, use``).

    ``kid`` defaults to the key's RFC 7638 thumbprint. The private key carries the same kid.
    """
    key = ECKey.generate_key("P-256", private=True)
    kid = kid or key.thumbprint()
    key = ECKey.import_key(key.as_dict(private=True), {"kid": kid, "alg": "ES256", "use": "sig"})
    public = {**key.as_dict(private=False), "kid": kid, "alg": "ES256", "use": "sig"}
    return key, public


def jwk_thumbprint(key: ECKey) -> str:
    """RFC 7638 SHA-256 thumbprint of the key (what a DPoP-bound token carries as cnf.jkt)."""
    return key.thumbprint()


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One token request's credentials: a client assertion and a DPoP proof, both single-use."""

    client_assertion: str
    dpop_proof: str


def pregenerate(
    n: int,
    *,
    token_endpoint: str,
    assertion_audience: str | None = None,
    client_id: str,
    private_key: ECKey,
    dpop_key: ECKey,
    htu: str | None = None,
) -> list[TokenRequest]:
    """Make ``n`` (client assertion, DPoP proof) pairs, ready to send; call before timing.

    Client assertion (RFC 7523): header ``alg ES256`` (and ``kid`` if the key has one);
    claims ``iss = sub = client_id``, ``aud = assertion_audience`` (default: the token
    endpoint), a unique ``jti``, ``iat = now``, ``exp = now + 120``.
    DPoP proof (RFC 9449): header ``typ dpop+jwt``, ``alg ES256``, ``jwk`` = the public part
    of ``dpop_key``; claims ``htm POST``, ``htu`` (default: the token endpoint), ``iat = now``,
    a unique ``jti``. All proofs share one DPoP key, so every token is bound to one jkt.
    About 0.1 ms per pair on this class of machine; the assertions expire after 120 s, so
    send them soon after.
    """
    aud = assertion_audience or token_endpoint
    htu = htu or token_endpoint
    assertion_header: dict[str, Any] = {"alg": "ES256"}
    if private_key.kid:
        assertion_header["kid"] = private_key.kid
    dpop_jwk = {k: v for k, v in dpop_key.as_dict(private=False).items() if k in _EC_PUBLIC}
    dpop_header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": dpop_jwk}
    now = int(time.time())
    pairs: list[TokenRequest] = []
    for _ in range(n):
        assertion = jwt.encode(
            assertion_header,
            {
                "iss": client_id,
                "sub": client_id,
                "aud": aud,
                "jti": uuid.uuid4().hex,
                "iat": now,
                "exp": now + ASSERTION_LIFETIME_S,
            },
            private_key,
            algorithms=["ES256"],
        )
        proof = jwt.encode(
            dpop_header,
            {"htm": "POST", "htu": htu, "iat": now, "jti": uuid.uuid4().hex},
            dpop_key,
            algorithms=["ES256"],
        )
        pairs.append(TokenRequest(assertion, proof))
    return pairs


_EC_PUBLIC = ("kty", "crv", "x", "y")


def _b64json(segment: str) -> dict[str, Any]:
    decoded = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    if not isinstance(decoded, dict):
        raise ValueError("JWT segment is not a JSON object")
    return decoded


def verify_token_response(
    body: Mapping[str, Any],
    *,
    resource: str,
    client_id: str | None = None,
    scope: str | None = None,
    expected_jkt: str | None = None,
) -> dict[str, Any]:
    """Check one token response; return the access token's claims or raise ``LoadError``.

    Checks: ``token_type`` is DPoP (case-insensitive, RFC 9449 section 5); the access token is
    a JWT whose header ``typ`` is ``at+jwt`` (RFC 9068); ``aud`` is (or contains) ``resource``;
    ``client_id`` and ``scope`` match when given; ``cnf.jkt`` is present and equals
    ``expected_jkt`` when given. The signature is not verified here.
    """
    problems: list[str] = []
    if str(body.get("token_type", "")).lower() != "dpop":
        problems.append(f"token_type is {body.get('token_type')!r}, not DPoP")
    token = body.get("access_token")
    header: dict[str, Any] = {}
    claims: dict[str, Any] = {}
    if not isinstance(token, str) or token.count(".") != 2:
        problems.append("access_token is not a compact JWS")
    else:
        head_b64, payload_b64, _sig = token.split(".")
        header, claims = _b64json(head_b64), _b64json(payload_b64)
        if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            problems.append(f"JWT typ is {header.get('typ')!r}, not at+jwt")
        aud = claims.get("aud")
        if aud != resource and not (isinstance(aud, list) and resource in aud):
            problems.append(f"aud is {aud!r}, not {resource!r}")
        if client_id is not None and claims.get("client_id") != client_id:
            problems.append(f"client_id is {claims.get('client_id')!r}, not {client_id!r}")
        if scope is not None and set(str(claims.get("scope", "")).split()) != set(scope.split()):
            problems.append(f"scope is {claims.get('scope')!r}, not {scope!r}")
        jkt = (claims.get("cnf") or {}).get("jkt")
        if not jkt:
            problems.append("cnf.jkt is missing")
        elif expected_jkt is not None and jkt != expected_jkt:
            problems.append(f"cnf.jkt is {jkt!r}, not the DPoP key's {expected_jkt!r}")
    if problems:
        raise LoadError("token check failed: " + "; ".join(problems))
    return {"header": header, "claims": claims}


# --------------------------------------------------------------------------- load generator


@dataclass(slots=True)
class LoadResult:
    """Outcome of one ``run_load``. Latencies are per request, in seconds."""

    label: str
    requests: int
    concurrency: int
    processes: int
    client: str
    elapsed_s: float
    errors: int  # non-200 responses and transport errors, warm-up included
    latencies: list[float] = field(repr=False, default_factory=list)
    first_error: str | None = None
    token: dict[str, Any] | None = None  # header and claims of the checked access token

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, pct: float) -> float:
        """Nearest-rank percentile of the per-request latencies, in milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(1, -(-len(ordered) * pct // 100))  # ceil(n * pct / 100), at least 1
        return ordered[int(rank) - 1] * 1000

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(99)


@dataclass(frozen=True, slots=True)
class _WorkerJob:
    host: str
    port: int
    url: str
    connections: int
    warmup: list[bytes]
    timed: list[bytes]
    client: ClientKind
    deadline_s: float


@dataclass(slots=True)
class _WorkerOut:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    first_error: str | None = None
    first_ok_body: bytes | None = None
    end: float = 0.0
    crash: str | None = None


def _encode_request(host_header: str, path: str, form: Mapping[str, str], dpop: str) -> bytes:
    body = urlencode(form).encode()
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host_header}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Accept: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"DPoP: {dpop}\r\n"
        "\r\n"
    )
    return head.encode() + body


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r]*chunked", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Read one HTTP/1.1 response: (status, body, server wants the connection closed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    close = _CLOSE.search(head) is not None
    length = _CONTENT_LENGTH.search(head)
    if length is not None:
        body = await reader.readexactly(int(length.group(1)))
    elif _CHUNKED.search(head):
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        body, close = await reader.read(), True
    return status, body, close


def _record(out: _WorkerOut, status: int, body: bytes) -> None:
    out.statuses[status] = out.statuses.get(status, 0) + 1
    if status == 200:
        if out.first_ok_body is None:
            out.first_ok_body = body
    elif out.first_error is None:
        out.first_error = f"HTTP {status}: {body[:2000].decode(errors='replace')}"


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _raw_phase(
    job: _WorkerJob, conns: list[_Conn], requests: list[bytes], out: _WorkerOut, *, timed: bool
) -> None:
    queue = iter(requests)

    async def connection(slot: int) -> None:
        reader, writer = conns[slot]
        for request in queue:
            started = time.perf_counter()
            try:
                writer.write(request)
                status, body, close = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                status, body, close = 0, f"{type(exc).__name__}: {exc}".encode(), True
            if timed:
                out.latencies.append(time.perf_counter() - started)
            _record(out, status, body)
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(job.host, job.port)
                conns[slot] = reader, writer

    await asyncio.gather(*(connection(slot) for slot in range(len(conns))))


def _split_request(request: bytes) -> tuple[dict[str, str], bytes]:
    head, _, content = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")[1:]
    headers = dict(line.split(": ", 1) for line in lines if ": " in line)
    for name in ("Host", "Content-Length"):
        headers.pop(name, None)  # httpx sets them
    return headers, content


def _httpx_phase(
    job: _WorkerJob, clients: list[httpx.Client], requests: list[bytes], out: _WorkerOut
) -> list[float]:
    """One thread per connection, each with its own ``httpx.Client``; returns latencies."""
    queue = iter(requests)
    lock = threading.Lock()
    latencies: list[float] = []

    def connection(client: httpx.Client) -> None:
        while True:
            with lock:
                request = next(queue, None)
            if request is None:
                return
            headers, content = _split_request(request)
            started = time.perf_counter()
            try:
                response = client.post(job.url, content=content, headers=headers)
                status, body = response.status_code, response.content
            except httpx.HTTPError as exc:
                status, body = 0, f"{type(exc).__name__}: {exc}".encode()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                _record(out, status, body)

    threads = [threading.Thread(target=connection, args=(c,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(job.deadline_s)
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError(f"load did not finish within {job.deadline_s:.0f} s")
    return latencies


def _httpx_worker_main(job: _WorkerJob, ready: Any, go: EventType) -> _WorkerOut:
    out = _WorkerOut()
    clients = [httpx.Client(timeout=30.0) for _ in range(job.connections)]
    try:
        _httpx_phase(job, clients, job.warmup, out)
        ready.put(("ready", os.getpid()))
        go.wait()
        out.latencies = _httpx_phase(job, clients, job.timed, out)
        out.end = time.perf_counter()
    finally:
        for client in clients:
            client.close()
    return out


async def _raw_worker_main(job: _WorkerJob, ready: Any, go: EventType) -> _WorkerOut:
    out = _WorkerOut()
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    try:
        for _ in range(job.connections):
            conns.append(await asyncio.open_connection(job.host, job.port))
        await _raw_phase(job, conns, job.warmup, out, timed=False)
        ready.put(("ready", os.getpid()))
        await loop.run_in_executor(None, go.wait)
        async with asyncio.timeout(job.deadline_s):
            await _raw_phase(job, conns, job.timed, out, timed=True)
        out.end = time.perf_counter()
    finally:
        for _, writer in conns:
            writer.close()
    return out


def _worker(job: _WorkerJob, ready: Any, go: EventType, results: Any) -> None:
    """Entry point of a spawned worker process: run its share, put a ``_WorkerOut``."""
    try:
        if job.client == "raw":
            out = asyncio.run(_raw_worker_main(job, ready, go))
        else:
            out = _httpx_worker_main(job, ready, go)
    except BaseException as exc:  # reported to the parent, which fails the run
        ready.put(("crash", os.getpid()))
        out = _WorkerOut(crash=f"{type(exc).__name__}: {exc}", end=time.perf_counter())
    results.put(out)


def run_load(
    token_endpoint: str,
    pairs: Sequence[TokenRequest],
    *,
    resource: str,
    scope: str,
    concurrency: int,
    client_id: str,
    label: str | None = None,
    processes: int = 1,
    client: ClientKind = "raw",
    warmup: int = 0,
    expected_jkt: str | None = None,
    verify: bool = True,
    raise_on_error: bool = True,
    deadline_s: float = 300.0,
) -> LoadResult:
    """Send each pair once to ``token_endpoint`` with ``concurrency`` requests in flight.

    The first ``warmup`` pairs are sent first and not timed (their responses still count in
    ``errors`` and may be the checked token); the rest are timed. ``processes`` worker
    processes (spawned) split the connections and the pairs evenly. The clock starts when all
    workers have connected and encoded their requests, and stops at the last response.

    Non-200 responses (and transport errors, as status 0) are counted in ``errors``; if there
    is any, the first error body is printed and, with ``raise_on_error``, ``LoadError`` is
    raised carrying the result. With ``verify``, the first 200 body is checked by
    ``verify_token_response`` (``expected_jkt`` adds the cnf.jkt == thumbprint check).
    Every run stops by itself after ``deadline_s``.
    """
    if concurrency < 1 or processes < 1:
        raise ValueError("concurrency and processes must be at least 1")
    if len(pairs) <= warmup:
        raise ValueError(f"need more than warmup={warmup} pairs, got {len(pairs)}")
    processes = min(processes, concurrency)
    url = urlsplit(token_endpoint)
    if url.scheme != "http" or not url.hostname:
        raise ValueError(
            "run_load speaks plain HTTP/1.1 to a loopback endpoint: http://host:port/…"
        )
    port = url.port or 80
    path = url.path or "/"
    host_header = url.netloc
    encoded = [
        _encode_request(
            host_header,
            path,
            {
                "grant_type": "client_credentials",
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": pair.client_assertion,
                "resource": resource,
                "scope": scope,
            },
            pair.dpop_proof,
        )
        for pair in pairs
    ]
    warm, timed = encoded[:warmup], encoded[warmup:]
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    jobs = [
        _WorkerJob(
            host=url.hostname,
            port=port,
            url=token_endpoint,
            connections=len(range(k, concurrency, processes)),
            warmup=warm[k::processes],
            timed=timed[k::processes],
            client=client,
            deadline_s=deadline_s,
        )
        for k in range(processes)
    ]
    workers = [ctx.Process(target=_worker, args=(job, ready, go, results)) for job in jobs]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            ready.get(timeout=deadline_s + 60)
        start = time.perf_counter()
        go.set()
        outs: list[_WorkerOut] = [results.get(timeout=deadline_s + 60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    crashed = [o.crash for o in outs if o.crash]
    if crashed:
        raise LoadError(f"load worker failed: {crashed[0]}")
    statuses: dict[int, int] = {}
    for o in outs:
        for status, count in o.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    first_error = next((o.first_error for o in outs if o.first_error), None)
    result = LoadResult(
        label=label or token_endpoint,
        requests=len(timed),
        concurrency=concurrency,
        processes=processes,
        client=client,
        elapsed_s=max(o.end for o in outs) - start,
        errors=sum(c for s, c in statuses.items() if s != 200),
        latencies=[lat for o in outs for lat in o.latencies],
        first_error=first_error,
    )
    if first_error is not None:
        print(f"{result.label}: first error response: {first_error}", file=sys.stderr)
        if raise_on_error:
            raise LoadError(f"{result.label}: {result.errors} non-200 responses", result)
    if verify:
        sample = next((o.first_ok_body for o in outs if o.first_ok_body is not None), None)
        if sample is None:
            raise LoadError(f"{result.label}: no 200 response to check", result)
        try:
            result.token = verify_token_response(
                json.loads(sample),
                resource=resource,
                client_id=client_id,
                scope=scope,
                expected_jkt=expected_jkt,
            )
        except (LoadError, ValueError) as exc:
            raise LoadError(f"{result.label}: {exc}", result) from exc
    return result


# --------------------------------------------------------------------------- table


def print_table(rows: Sequence[LoadResult], *, ratio_to: str | None = None) -> None:
    """Print results as a markdown table: system, requests/s, p50 ms, p99 ms, errors.

    ``rows`` are ``LoadResult``s (the ``label`` is the system's name), printed in order, e.g.
    AgentIAM's and the peer's from the same run. With ``ratio_to`` set to one row's label, a
    last column gives each row's requests/s divided by that row's (``1.00x`` for itself), e.g.
    ``print_table([agentiam, peer], ratio_to=peer.label)``.
    """
    header = ["system", "requests/s", "p50 ms", "p99 ms", "errors"]
    base = None
    if ratio_to is not None:
        base = next((r for r in rows if r.label == ratio_to), None)
        if base is None:
            raise ValueError(f"ratio_to={ratio_to!r} names no row")
        header.append(f"vs {ratio_to}")
    table: list[list[str]] = []
    for r in rows:
        cells = [
            r.label,
            f"{r.requests_per_s:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(r.errors),
        ]
        if base is not None:
            ratio = r.requests_per_s / base.requests_per_s if base.requests_per_s else 0.0
            cells.append(f"{ratio:.2f}x")
        table.append(cells)
    print(markdown_table(header, table))


# --------------------------------------------------------------------------- the peer


@dataclass(frozen=True, slots=True)
class Peer:
    """A running oidc-provider peer."""

    issuer: str
    token_endpoint: str
    process: subprocess.Popen[bytes]
    log: Path
    node_version: str
    provider_version: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"`{name}` is not on PATH: the oidc-provider peer needs Node.js 20+ and npm "
            "(e.g. `apt-get install nodejs npm`, or a Node.js 20/22 LTS install)"
        )
    return path


def ensure_peer_installed() -> None:
    """Run ``npm ci`` in bench/peer/oidc_provider if its node_modules is missing."""
    _require_tool("node")
    if (PEER_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        return
    npm = _require_tool("npm")
    print(f"installing the peer's dependencies: npm ci in {PEER_DIR}", file=sys.stderr)
    done = subprocess.run(  # noqa: S603 -- fixed argv, no shell
        [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
        cwd=PEER_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"npm ci failed in {PEER_DIR}:\n{done.stdout}\n{done.stderr}")


@contextlib.contextmanager
def start_oidc_provider(
    port: int,
    *,
    client_id: str,
    client_jwk: Mapping[str, Any],
    resource: str,
    scope: str,
    startup_timeout_s: float = 30.0,
) -> Iterator[Peer]:
    """Run the oidc-provider peer on 127.0.0.1:``port`` (0: any free port) while in the block.

    Installs its dependencies with ``npm ci`` on first use, starts ``node server.mjs``, waits
    until ``/.well-known/openid-configuration`` answers, and stops the process afterwards
    (SIGTERM, then SIGKILL). ``client_jwk`` is the client's public ES256 JWK. Raises
    ``RuntimeError`` with the reason (missing node/npm, npm ci failure, the server's log).
    """
    ensure_peer_installed()
    node = _require_tool("node")
    port = port or free_port()
    issuer = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "ISSUER": issuer,
        "CLIENT_ID": client_id,
        "CLIENT_JWK": json.dumps(dict(client_jwk)),
        "RESOURCE": resource,
        "SCOPE": scope,
        "NODE_ENV": "production",
    }
    env.pop("DEBUG", None)  # oidc-provider uses `debug`; keep it quiet
    node_version = subprocess.run(  # noqa: S603 -- fixed argv, no shell
        [node, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    provider_version = json.loads(
        (PEER_DIR / "node_modules" / "oidc-provider" / "package.json").read_text()
    )["version"]
    log_fd, log_name = tempfile.mkstemp(prefix="oidc-provider-", suffix=".log")
    log = Path(log_name)
    with os.fdopen(log_fd, "wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 -- fixed argv, no shell
            [node, "server.mjs"],
            cwd=PEER_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + startup_timeout_s
        with httpx.Client(timeout=2.0) as http:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"oidc-provider exited with {process.returncode}:\n{log.read_text()}"
                    )
                try:
                    meta = http.get(f"{issuer}/.well-known/openid-configuration")
                    if meta.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"oidc-provider did not answer within {startup_timeout_s:.0f} s:\n"
                        f"{log.read_text()}"
                    )
                time.sleep(0.1)
        yield Peer(
            issuer=issuer,
            token_endpoint=meta.json()["token_endpoint"],
            process=process,
            log=log,
            node_version=node_version,
            provider_version=provider_version,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(OSError):
            log.unlink()


# --------------------------------------------------------------------------- ceiling


_TRIVIAL_BODY = b'{"access_token":"x","token_type":"DPoP","expires_in":300}'
_TRIVIAL_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(_TRIVIAL_BODY)).encode() + b"\r\n\r\n" + _TRIVIAL_BODY
)


class _TrivialProtocol(asyncio.Protocol):
    """Answers every HTTP/1.1 request on the connection with one fixed 200, nothing parsed."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while (end_of_head := buffer.find(b"\r\n\r\n")) >= 0:
            length = _CONTENT_LENGTH.search(buffer, 0, end_of_head + 2)
            end = end_of_head + 4 + (int(length.group(1)) if length else 0)
            if len(buffer) < end:
                break
            buffer = buffer[end:]
            assert self.transport is not None
            self.transport.write(_TRIVIAL_RESPONSE)
        self.buffer = buffer


def _serve_trivial(port: int, ready: EventType, stop: EventType) -> None:
    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_TrivialProtocol, "127.0.0.1", port, backlog=1024)
        ready.set()
        await loop.run_in_executor(None, stop.wait)
        server.close()

    asyncio.run(serve())


@contextlib.contextmanager
def trivial_endpoint() -> Iterator[str]:
    """A stdlib-asyncio HTTP/1.1 responder in its own process: the cheapest server we have.

    Used to measure the load generator's own ceiling (``--ceiling``); yields its URL.
    """
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    port = free_port()
    process = ctx.Process(target=_serve_trivial, args=(port, ready, stop), daemon=True)
    process.start()
    try:
        if not ready.wait(timeout=30):
            raise RuntimeError("the trivial endpoint did not start")
        yield f"http://127.0.0.1:{port}/token"
    finally:
        stop.set()
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--peer-only", action="store_true", help="load the oidc-provider peer")
    parser.add_argument(
        "--ceiling", action="store_true", help="load a trivial endpoint: the generator's ceiling"
    )
    parser.add_argument("-n", type=int, default=3000, help="timed requests per system (3000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (32)")
    parser.add_argument("--processes", type=int, default=1, help="load worker processes (1)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw", help="(raw)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests first (200)")
    parser.add_argument("--port", type=int, default=0, help="peer port (0: any free port)")
    parser.add_argument("--resource", default=DEFAULT_RESOURCE)
    parser.add_argument("--scope", default=DEFAULT_SCOPE)
    args = parser.parse_args(argv)
    if not (args.peer_only or args.ceiling):
        parser.error("say what to load: --peer-only and/or --ceiling")
    if args.n < 1 or args.concurrency < 1 or args.processes < 1 or args.warmup < 0:
        parser.error("-n, --concurrency and --processes must be at least 1, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: {shlex.join(sys.orig_argv)}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: nproc={cpus}, python {platform.python_version()}, {platform.platform()}, "
        f"httpx {httpx.__version__}"
    )
    print(
        f"workload: {args.n} timed token requests (+{args.warmup} warm-up) per system, "
        f"concurrency {args.concurrency}, {args.processes} load process(es), "
        f"{args.client} HTTP client"
    )
    rows: list[LoadResult] = []
    client_key, client_jwk = generate_es256_jwk()
    dpop_key, _ = generate_es256_jwk()
    common: dict[str, Any] = {
        "resource": args.resource,
        "scope": args.scope,
        "concurrency": args.concurrency,
        "client_id": DEFAULT_CLIENT_ID,
        "processes": args.processes,
        "client": args.client,
        "warmup": args.warmup,
    }
    try:
        if args.ceiling:
            with trivial_endpoint() as url:
                pairs = pregenerate(
                    args.n + args.warmup,
                    token_endpoint=url,
                    client_id=DEFAULT_CLIENT_ID,
                    private_key=client_key,
                    dpop_key=dpop_key,
                )
                rows.append(run_load(url, pairs, label="trivial endpoint", verify=False, **common))
        if args.peer_only:
            with start_oidc_provider(
                args.port,
                client_id=DEFAULT_CLIENT_ID,
                client_jwk=client_jwk,
                resource=args.resource,
                scope=args.scope,
            ) as peer:
                print(
                    f"peer: oidc-provider {peer.provider_version} on node {peer.node_version}, "
                    f"{peer.token_endpoint}"
                )
                started = time.perf_counter()
                pairs = pregenerate(
                    args.n + args.warmup,
                    token_endpoint=peer.token_endpoint,
                    assertion_audience=peer.issuer,
                    client_id=DEFAULT_CLIENT_ID,
                    private_key=client_key,
                    dpop_key=dpop_key,
                )
                print(f"pre-generated {len(pairs)} pairs in {time.perf_counter() - started:.2f} s")
                result = run_load(
                    peer.token_endpoint,
                    pairs,
                    label=f"oidc-provider {peer.provider_version}",
                    expected_jkt=jwk_thumbprint(dpop_key),
                    **common,
                )
                rows.append(result)
                assert result.token is not None
                print(
                    f"checked token: header {json.dumps(result.token['header'])}, claims "
                    f"{json.dumps(result.token['claims'])}"
                )
    except (LoadError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, LoadError) and exc.result is not None:
            rows.append(exc.result)
            print_table(rows)
        return 1
    print()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
