"""Delegation: RFC 8693 token-exchange throughput over HTTP, and verification cost by chain depth.

1. Exchange throughput over HTTP. A real ``agentiam serve --workers N`` process (uvicorn,
   one SO_REUSEPORT socket per worker) on a fresh SQLite file (``--backends`` adds
   PostgreSQL), with a human, a delegation grant to a planner agent, and a worker agent
   registered as an ephemeral child of the planner (``parent_id``, ``ttl_seconds``).
   Three rows from the same run, each sent by ``bench/tokenload.py``'s raw asyncio
   HTTP/1.1 client (its workers, its connections, its timing):

   * ``client_credentials``: the planner's own token (``private_key_jwt`` + DPoP), the
     same flow as bench/tokens.py: the baseline;
   * ``exchange human -> planner``: ``subject_token`` = the human's token minted by
     ``GrantService.human_token`` (``may_act`` = the planner), ``actor_token`` = the
     planner's own DPoP-bound token;
   * ``exchange planner -> worker``: ``subject_token`` = the planner's delegated token
     from the row above, ``actor_token`` = the worker's own token (the sub-agent hop).

   Every request carries a fresh DPoP proof by the actor token's key (made before the
   clock starts); the subject and actor tokens are reused, as an agent would. An
   exchange verifies both tokens (the server's verified-token cache serves them after
   the first request), reads the actor, the chain's agents, the human and the grant,
   and writes the proof ``jti``, a delegation-graph row and a ``token.exchanged`` audit
   row in one transaction. The first 200 of each row is checked (``token_type`` DPoP,
   ``aud``, ``client_id``, ``cnf.jkt`` and, for exchanges, ``sub`` = the human and the
   nested ``act``). The ratio column is requests/s over the client_credentials row's.

2. Verification cost by chain depth, in process, one thread. Chains are built through
   the service (``TokenService.token``: client_credentials for each agent's own token,
   then one token exchange per hop; each next agent is a child of the previous one):
   depth 0 is the planner's own token, depth 1 the planner acting for the human, depth
   k a chain of k agents. Depths above the default cap of 4 are built with
   ``delegation_max_depth`` raised (``--max-depth``, default 8). A resource server's
   ``AccessTokenVerifier`` (audience = the resource, keys from the JWKS) holding a
   revocation set of ``--revocations`` entries (default 100,000: unrelated token jtis
   and agent, human and grant cut-offs) then times, per call:

   * ``verify_token`` and ``verify_request`` (the token plus a fresh DPoP proof with
     ``ath``, pre-generated) with a **cold** cache (``verified_cache_size=0``: every call
     is a first verification: signature, claims, chain parse, revocation check) and a
     **warm** cache (the token verified once before: expiry, key, audience and
     revocation re-checked; ``verify_request`` still verifies the proof's signature);
   * ``RevocationSet.is_revoked`` for that depth's lineage and parties, on an empty set
     and on the large one.

   Calls alternate between depths in rounds, so drift hits all depths alike. Latencies
   are nearest-rank p50/p99 of single calls (``time.perf_counter_ns``, whose own cost,
   printed, is included); ``x d0`` is the p50 over depth 0's.

Rerun from the repository root::

    .venv/bin/python bench/delegation.py                 # about 25 s on 2 cores
    .venv/bin/python bench/delegation.py -n 5000 --backends sqlite,postgresql
    .venv/bin/python bench/delegation.py --skip-http --max-depth 16 --verifications 5000
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mdtable import markdown_table
from bench.registry import postgres_database, sqlite_database
from bench.tokenload import (
    LoadError,
    LoadResult,
    _encode_request,
    _worker,
    _WorkerJob,
    _WorkerOut,
    free_port,
    print_table,
    verify_token_response,
)

from agentiam.adapters.storage import migrate
from agentiam.adapters.storage.engine import make_engine
from agentiam.bootstrap import Container, build
from agentiam.config import Limits, Settings
from agentiam.core.credentials.jose import import_public_jwk
from agentiam.core.credentials.revocations import Revocation, RevocationKind, RevocationSet
from agentiam.core.credentials.sealing import MasterKey
from agentiam.core.credentials.verifier import (
    AccessTokenVerifier,
    VerifiedAccess,
    VerifierConfig,
)
from agentiam.core.ids import new_id
from agentiam.sdk import AgentKey, client_assertion, dpop_proof
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.grants import NewGrant
from agentiam.services.humans import NewHuman

RESOURCE = "https://api.bench.example"
SCOPES = ("tools:read", "tools:write")
SCOPE = "tools:read"
TOOLS = [{"type": "tool_invocation", "tools": ["search", "send_email"]}]
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_CAP = 4
CTX = CallContext.system("bench")
Form = dict[str, str]


# --------------------------------------------------------------------------- the scene


@dataclass(slots=True)
class Actor:
    """An agent of the scene: its registered key and its DPoP key."""

    id: str
    key: AgentKey
    dpop: AgentKey = field(default_factory=AgentKey.generate)


@dataclass(slots=True)
class Scene:
    """A human, a grant to the planner, and a chain of agents each the previous one's
    child: ``agents[0]`` is the planner, ``agents[k]`` acts at depth k + 1."""

    container: Container
    issuer: str
    human_id: str
    agents: list[Actor]

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/oauth2/token"


def set_up(c: Container, issuer: str, chain: int) -> Scene:
    """Register the human, the planner, its grant (``max_depth`` = ``chain``) and
    ``chain - 1`` agents below the planner, each an ephemeral child of the one above."""
    owner = c.humans.create(CTX, NewHuman(display_name="Bench Owner", email="own@example.com"))
    human = c.humans.create(CTX, NewHuman(display_name="Hannah", email="hannah@example.com"))
    agents: list[Actor] = []
    for k in range(chain):
        key = AgentKey.generate()
        parent = agents[-1].id if agents else None
        agent = c.agents.register(
            CTX,
            NewAgent(
                name="planner" if k == 0 else f"worker-{k}",
                owners=[owner.id],
                purpose="benchmark",
                environment="bench",
                parent_id=parent,
                # a child cannot outlive an ephemeral parent
                ttl_seconds=None if parent is None else 3600 - 10 * k,
                activate=True,
                keys=[key.public_jwk()],
                scopes=SCOPES,
                audiences=[RESOURCE],
            ),
        )
        agents.append(Actor(agent.id, key))
    c.grants.create(
        CTX,
        NewGrant(
            human_id=human.id,
            agent_id=agents[0].id,
            scopes=SCOPES,
            audiences=[RESOURCE],
            ttl_seconds=3600,
            authorization_details=TOOLS,
            max_depth=chain,
        ),
    )
    return Scene(c, issuer, human.id, agents)


def own_form(scene: Scene, actor: Actor) -> Form:
    """A client_credentials form with a fresh private_key_jwt assertion."""
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(actor.key, client_id=actor.id, audience=scene.issuer),
        "resource": RESOURCE,
        "scope": SCOPE,
    }


def exchange_form(subject_token: str, actor_token: str) -> Form:
    return {
        "grant_type": EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS,
        "actor_token": actor_token,
        "actor_token_type": ACCESS,
        "resource": RESOURCE,
        "scope": SCOPE,
    }


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def check_chain(body: Mapping[str, Any], *, human_id: str, actors: Sequence[Actor]) -> None:
    """The checks of tokenload.verify_token_response plus the chain: sub = the human,
    act nests the actors (current first)."""
    current = actors[0]
    verify_token_response(
        body,
        resource=RESOURCE,
        client_id=current.id,
        scope=SCOPE,
        expected_jkt=current.dpop.kid,
    )
    claims = claims_of(body["access_token"])
    act: Any = None
    for actor in reversed(actors):
        act = {"sub": actor.id} if act is None else {"sub": actor.id, "act": act}
    if claims.get("sub") != human_id or claims.get("act") != act:
        raise LoadError(f"chain check failed: sub {claims.get('sub')}, act {claims.get('act')}")


# --------------------------------------------------------------------------- HTTP load


def run_forms(
    endpoint: str,
    requests: Sequence[tuple[Form, str]],
    *,
    label: str,
    concurrency: int,
    warmup: int,
    deadline_s: float = 300.0,
) -> tuple[LoadResult, dict[str, Any]]:
    """``tokenload.run_load`` for any form: send each (form, DPoP proof) once with
    ``concurrency`` requests in flight on ``tokenload``'s raw client (one worker
    process); the first ``warmup`` untimed. Returns the result and the first 200 body;
    raises ``LoadError`` on any non-200."""
    url = urlsplit(endpoint)
    assert url.hostname is not None
    assert url.port is not None
    encoded = [_encode_request(url.netloc, url.path, form, proof) for form, proof in requests]
    job = _WorkerJob(
        host=url.hostname,
        port=url.port,
        url=endpoint,
        connections=concurrency,
        warmup=encoded[:warmup],
        timed=encoded[warmup:],
        client="raw",
        deadline_s=deadline_s,
    )
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    worker = ctx.Process(target=_worker, args=(job, ready, go, results))
    worker.start()
    try:
        ready.get(timeout=deadline_s + 60)
        start = time.perf_counter()
        go.set()
        out: _WorkerOut = results.get(timeout=deadline_s + 60)
    finally:
        worker.join(timeout=10)
        if worker.is_alive():
            worker.terminate()
            worker.join()
    if out.crash:
        raise LoadError(f"{label}: load worker failed: {out.crash}")
    result = LoadResult(
        label=label,
        requests=len(job.timed),
        concurrency=concurrency,
        processes=1,
        client="raw",
        elapsed_s=out.end - start,
        errors=sum(n for status, n in out.statuses.items() if status != 200),
        latencies=out.latencies,
        first_error=out.first_error,
    )
    if out.first_error is not None:
        raise LoadError(f"{label}: {result.errors} non-200, first: {out.first_error}", result)
    if out.first_ok_body is None:
        raise LoadError(f"{label}: no 200 response to check", result)
    return result, json.loads(out.first_ok_body)


@contextmanager
def serving(url: str, workers: int) -> Iterator[Scene]:
    """Migrate ``url``, set up a planner and one worker, and run ``agentiam serve`` on
    it; yield the scene (its container stays open to mint the human's token)."""
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    master = MasterKey.generate_text()
    c = build(
        Settings(database_url=url, issuer=issuer, master_key=master, human_token_ttl_seconds=3600)
    )
    try:
        scene = set_up(c, issuer, chain=2)
        env = {
            **os.environ,
            "AGENTIAM_DATABASE_URL": url,
            "AGENTIAM_ISSUER": issuer,
            "AGENTIAM_MASTER_KEY": master,
            "AGENTIAM_PORT": str(port),
            "AGENTIAM_LOG_LEVEL": "warning",
        }
        with tempfile.TemporaryDirectory(prefix="agentiam-bench-") as tmp:
            log = Path(tmp) / "server.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    [sys.executable, "-m", "agentiam.cli.main", "serve", "--workers", str(workers)],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=tmp,
                )
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if httpx.get(issuer + "/readyz", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("agentiam serve did not start:\n" + log.read_text())
                    time.sleep(0.1)
                yield scene
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        c.close()


def post_token(http: httpx.Client, scene: Scene, form: Form, dpop: AgentKey) -> dict[str, Any]:
    proof = dpop_proof(dpop, method="POST", url=scene.token_endpoint)
    r = http.post(scene.token_endpoint, data=form, headers={"DPoP": proof})
    if r.status_code != 200:
        raise RuntimeError(f"token request failed: HTTP {r.status_code} {r.text}")
    body: dict[str, Any] = r.json()
    return body


def bench_http(url: str, args: argparse.Namespace) -> list[LoadResult]:
    """The three rows of part 1 on one backend."""
    rows: list[LoadResult] = []
    total = args.n + args.warmup
    with serving(url, args.workers) as scene, httpx.Client(timeout=10) as http:
        planner, worker = scene.agents
        endpoint = scene.token_endpoint

        def proofs(actor: Actor) -> list[str]:
            return [dpop_proof(actor.dpop, method="POST", url=endpoint) for _ in range(total)]

        # Baseline: the planner's own token, fresh assertion and proof per request.
        requests = [(own_form(scene, planner), p) for p in proofs(planner)]
        result, body = run_forms(
            endpoint,
            requests,
            label="client_credentials",
            concurrency=args.concurrency,
            warmup=args.warmup,
        )
        verify_token_response(
            body, resource=RESOURCE, client_id=planner.id, expected_jkt=planner.dpop.kid
        )
        rows.append(result)

        # The actor tokens, and the human's subject token minted by the control plane.
        planner_own = post_token(http, scene, own_form(scene, planner), planner.dpop)
        worker_own = post_token(http, scene, own_form(scene, worker), worker.dpop)
        human_token, _ = scene.container.grants.human_token(
            CTX, scene.human_id, agent_id=planner.id
        )

        form = exchange_form(human_token, planner_own["access_token"])
        result, body = run_forms(
            endpoint,
            [(form, p) for p in proofs(planner)],
            label="exchange human → planner",
            concurrency=args.concurrency,
            warmup=args.warmup,
        )
        check_chain(body, human_id=scene.human_id, actors=[planner])
        rows.append(result)

        planner_delegated = post_token(http, scene, form, planner.dpop)["access_token"]
        form = exchange_form(planner_delegated, worker_own["access_token"])
        result, body = run_forms(
            endpoint,
            [(form, p) for p in proofs(worker)],
            label="exchange planner → worker",
            concurrency=args.concurrency,
            warmup=args.warmup,
        )
        check_chain(body, human_id=scene.human_id, actors=[worker, planner])
        rows.append(result)
    return rows


# --------------------------------------------------------------------------- verification


@dataclass(slots=True)
class Depth:
    """One chain depth's token, its holder's DPoP key and its verified claims."""

    depth: int
    token: str
    holder: Actor
    access: VerifiedAccess | None = None
    samples: dict[str, list[int]] = field(default_factory=dict)  # ns per call


def build_chains(c: Container, scene: Scene) -> list[Depth]:
    """Depth 0: the planner's own token; depth k: agents[k-1] acting through the
    chain of exchanges human -> planner -> ... -> agents[k-1]."""
    endpoint = scene.token_endpoint

    def token(form: Form, dpop: AgentKey) -> str:
        proof = dpop_proof(dpop, method="POST", url=endpoint)
        response = c.tokens.token(CTX, {k: [v] for k, v in form.items()}, [proof])
        return str(response.body["access_token"])

    own = [token(own_form(scene, a), a.dpop) for a in scene.agents]
    planner = scene.agents[0]
    depths = [Depth(0, own[0], planner)]
    subject, _ = c.grants.human_token(CTX, scene.human_id, agent_id=planner.id)
    for k, actor in enumerate(scene.agents, start=1):
        subject = token(exchange_form(subject, own[k - 1]), actor.dpop)
        claims = claims_of(subject)
        assert claims["client_id"] == actor.id
        assert claims["sub"] == scene.human_id
        depths.append(Depth(k, subject, actor))
    return depths


def big_revocation_set(size: int, now: int) -> RevocationSet:
    """``size`` unrelated entries: 90 % token jtis, the rest agent, human and grant
    cut-offs (none of which covers the measured tokens)."""
    revoked = RevocationSet(max_staleness=3600)
    kinds = [
        (RevocationKind.AGENT, "agent"),
        (RevocationKind.HUMAN, "human"),
        (RevocationKind.GRANT, "grant"),
    ]
    entries = []
    for i in range(size):
        if i % 10:
            kind, subject = RevocationKind.TOKEN, new_id("token")
        else:
            kind, prefix = kinds[(i // 10) % 3]
            subject = new_id(prefix)
        entries.append(Revocation(i + 1, kind, subject, cutoff=now, expires=now + 3600))
    revoked.apply(entries, now=now)
    revoked.mark_fresh()
    return revoked


def nearest_rank(samples: Sequence[int], pct: float) -> float:
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * pct // 100))
    return float(ordered[int(rank) - 1])


def timer_overhead_ns() -> float:
    pc = time.perf_counter_ns
    samples = []
    for _ in range(20000):
        t0 = pc()
        samples.append(pc() - t0)
    return nearest_rank(samples, 50)


def bench_depths(args: argparse.Namespace) -> tuple[list[Depth], int, float]:
    """Part 2: build the chains, then time every measurement at every depth."""
    cap = max(DEFAULT_CAP, args.max_depth)
    with tempfile.TemporaryDirectory(prefix="agentiam-bench-") as tmp:
        url = f"sqlite:///{tmp}/chains.db"
        engine = make_engine(url)
        migrate.upgrade(engine)
        issuer = "https://as.bench.example"
        c = build(
            Settings(
                database_url=url,
                issuer=issuer,
                master_key=MasterKey.generate_text(),
                delegation_max_depth=cap,
                limits=Limits(max_agent_depth=cap),  # each hop's actor is a child agent
                human_token_ttl_seconds=3600,
            ),
            engine=engine,
        )
        try:
            c.signing_keys.ensure_key(CTX)
            scene = set_up(c, issuer, chain=args.max_depth)
            depths = build_chains(c, scene)
            keys = {
                jwk["kid"]: import_public_jwk(jwk, jwk["alg"], kid=jwk["kid"])
                for jwk in c.signing_keys.jwks()["keys"]
            }
        finally:
            c.close()
            engine.dispose()

    now = int(time.time())
    n = args.verifications
    url = RESOURCE + "/tools/call"
    revoked = big_revocation_set(args.revocations, now)
    empty = RevocationSet(max_staleness=3600)
    empty.mark_fresh()
    config = VerifierConfig(issuer=issuer, audience=RESOURCE)
    cold = AccessTokenVerifier(config, keys, revoked, verified_cache_size=0)
    warm = AccessTokenVerifier(config, keys, revoked)
    proofs: dict[int, Iterator[str]] = {}
    for d in depths:
        d.access = warm.verify_token(d.token, now=now)  # warms the cache, checks the token
        assert d.access.chain.depth == d.depth
        proofs[d.depth] = iter(
            [
                dpop_proof(d.holder.dpop, method="POST", url=url, access_token=d.token, now=now)
                for _ in range(2 * n + 2)
            ]
        )

    def request(verifier: AccessTokenVerifier, d: Depth) -> Callable[[], object]:
        auth = [f"DPoP {d.token}"]
        return lambda: verifier.verify_request(
            authorization=auth, dpop=[next(proofs[d.depth])], method="POST", url=url, now=now
        )

    def revocation_check(revocations: RevocationSet, a: VerifiedAccess) -> Callable[[], object]:
        return lambda: revocations.is_revoked(
            jti=a.jti,
            agent_id=a.client_id,
            issued_at=a.issued_at,
            lineage=a.chain.lineage,
            parties=a.parties,
        )

    checks: dict[int, dict[str, tuple[Callable[[], object], int]]] = {}
    for d in depths:
        assert d.access is not None
        token = d.token
        checks[d.depth] = {
            "token cold": (partial(cold.verify_token, token, now=now), n),
            "token warm": (partial(warm.verify_token, token, now=now), n),
            "request cold": (request(cold, d), n),
            "request warm": (request(warm, d), n),
            "revoked empty": (revocation_check(empty, d.access), 10 * n),
            "revoked big": (revocation_check(revoked, d.access), 10 * n),
        }
        for call, _ in checks[d.depth].values():
            if call() is True:  # is_revoked must say False; the verifiers must not raise
                raise RuntimeError(f"depth {d.depth}: the token reads as revoked")

    pc = time.perf_counter_ns
    rounds = 4
    gc.collect()
    for r in range(rounds):
        for d in depths:
            for name, (call, calls) in checks[d.depth].items():
                out = d.samples.setdefault(name, [])
                for _ in range(calls // rounds + (r < calls % rounds)):
                    t0 = pc()
                    call()
                    out.append(pc() - t0)
    return depths, cap, timer_overhead_ns()


# --------------------------------------------------------------------------- tables


def depth_label(depth: int) -> str:
    return f"{depth} (cap raised)" if depth > DEFAULT_CAP else str(depth)


def verify_table(depths: Sequence[Depth], what: str) -> str:
    base = depths[0].samples
    header = ["depth", "token bytes"]
    for cache in ("cold", "warm"):
        header += [f"{cache} p50 µs", f"{cache} p99 µs", f"{cache} x d0"]
    rows = []
    for d in depths:
        cells = [
            depth_label(d.depth),
            str(len(d.token)),
        ]
        for cache in ("cold", "warm"):
            samples = d.samples[f"{what} {cache}"]
            p50 = nearest_rank(samples, 50)
            cells += [
                f"{p50 / 1000:.1f}",
                f"{nearest_rank(samples, 99) / 1000:.1f}",
                f"{p50 / nearest_rank(base[f'{what} {cache}'], 50):.2f}x",
            ]
        rows.append(cells)
    return markdown_table(header, rows)


def revocation_table(depths: Sequence[Depth], size: int) -> str:
    base = nearest_rank(depths[0].samples["revoked big"], 50)
    header = [
        "depth",
        "lineage jtis",
        "cut-off lookups",
        "empty set p50 ns",
        f"{size:,} entries p50 ns",
        f"{size:,} entries p99 ns",
        "x d0",
    ]
    rows = []
    for d in depths:
        assert d.access is not None
        big = d.samples["revoked big"]
        rows.append(
            [
                depth_label(d.depth),
                str(len(d.access.chain.lineage)),
                str(1 + len(d.access.parties)),
                f"{nearest_rank(d.samples['revoked empty'], 50):.0f}",
                f"{nearest_rank(big, 50):.0f}",
                f"{nearest_rank(big, 99):.0f}",
                f"{nearest_rank(big, 50) / base:.2f}x",
            ]
        )
    return markdown_table(header, rows)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=2000, help="timed requests per HTTP row (2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (32)")
    parser.add_argument("--workers", type=int, default=2, help="agentiam serve workers (2)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests first (200)")
    parser.add_argument(
        "--backends", default="sqlite", help="comma-separated: sqlite,postgresql (sqlite)"
    )
    parser.add_argument(
        "--max-depth",
        type=int,
        default=8,
        help=f"deepest chain verified (8; above {DEFAULT_CAP} the cap is raised to it)",
    )
    parser.add_argument(
        "--verifications", type=int, default=2000, help="timed calls per depth and check (2000)"
    )
    parser.add_argument(
        "--revocations", type=int, default=100_000, help="entries in the large set (100000)"
    )
    parser.add_argument("--skip-http", action="store_true", help="only the verification part")
    parser.add_argument("--skip-verify", action="store_true", help="only the HTTP part")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - {"sqlite", "postgresql"}:
        parser.error("--backends takes sqlite and/or postgresql")
    args.backends = backends
    if not 1 <= args.max_depth <= 16:
        parser.error("--max-depth must be 1-16")
    if min(args.n, args.concurrency, args.workers, args.verifications) < 1 or args.warmup < 0:
        parser.error("-n, --concurrency, --workers and --verifications must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: {shlex.join(sys.orig_argv)}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: nproc={cpus}, python {platform.python_version()}, {platform.platform()}")
    started = time.perf_counter()
    if not args.skip_http:
        print(
            f"workload 1: {args.n} timed requests (+{args.warmup} warm-up) per row, concurrency "
            f"{args.concurrency}, agentiam serve --workers {args.workers}"
        )
        databases: dict[str, Callable[[], AbstractContextManager[str | None]]] = {
            "sqlite": sqlite_database,
            "postgresql": postgres_database,
        }
        for backend in args.backends:
            with databases[backend]() as url:
                if url is None:
                    continue
                try:
                    rows = bench_http(url, args)
                except LoadError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
            print()
            print(f"## Token issuance and exchange over HTTP ({backend})")
            print()
            print_table(rows, ratio_to="client_credentials")
    if not args.skip_verify:
        depths, cap, overhead = bench_depths(args)
        print()
        print(
            f"workload 2: chains of depth 0-{args.max_depth} (delegation_max_depth {cap}), "
            f"{args.verifications} timed calls per depth and check ({10 * args.verifications} "
            f"for is_revoked), verifier revocation set of {args.revocations:,} entries, "
            f"timer overhead {overhead:.0f} ns per call (included)"
        )
        for what, title in (
            ("token", "AccessTokenVerifier.verify_token"),
            ("request", "AccessTokenVerifier.verify_request (token + fresh DPoP proof)"),
        ):
            print()
            print(f"## {title} by chain depth (one thread)")
            print()
            print(verify_table(depths, what))
        print()
        print("## RevocationSet.is_revoked by chain depth")
        print()
        print(revocation_table(depths, args.revocations))
    print()
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
