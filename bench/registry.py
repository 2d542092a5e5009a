"""Registry throughput: agent registration and agent lookups on SQLite and PostgreSQL.

What is measured (all through the service layer, ``agentiam.bootstrap.build``, exactly as
the CLI and the HTTP API call it; no HTTP involved):

* ``register``      -- ``AgentService.register`` with ``activate=True``, sequential, one
  thread. Each call is one write transaction (agent row, transition, two audit events).
* ``get by id``     -- ``AgentService.get`` on ids drawn at random from the registered
  agents, sequential, one thread.
* ``list by label`` -- ``AgentService.find(AgentQuery(limit=50, labels={"team": ...}))``
  with a random one of ten teams, sequential, one thread.
* ``get by id x4``  -- the same ``get`` spread over 4 threads (``ThreadPoolExecutor``)
  sharing one container; ops/s is aggregate (all ops / wall time), latencies are per op.

Each operation is timed one call at a time with ``time.perf_counter``; ops/s is
calls / total elapsed time, p50/p99 are nearest-rank percentiles of per-call latency.
A few untimed warm-up lookups run first. Every backend starts from an empty, freshly
migrated database: a temp file for SQLite, a throwaway ``agentiam_bench_<random>``
database for PostgreSQL (created on the server named by ``AGENTIAM_BENCH_POSTGRES_URL``,
default ``postgresql://postgres@127.0.0.1:5432/test``, and dropped afterwards). If
PostgreSQL is unreachable it is skipped with a message. The ``pg/sqlite`` column is the
ratio of the two throughputs taken in the same run.

Rerun from the repository root::

    .venv/bin/python bench/registry.py                       # defaults: 500 agents, 2000 lookups
    .venv/bin/python bench/registry.py --agents 2000 --lookups 10000
    .venv/bin/python bench/registry.py --backends sqlite
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import secrets
import shlex
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy
from sqlalchemy import create_engine, text

from agentiam.adapters.storage import migrate
from agentiam.adapters.storage.engine import normalize_url
from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.ports import AgentQuery
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mdtable import markdown_table

BACKENDS = ("sqlite", "postgresql")
PG_URL = os.environ.get("AGENTIAM_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEAMS = 10
THREADS = 4
WARMUP = 20
OPERATIONS = ("register", "get by id", "list by label", f"get by id x{THREADS}")


@dataclass(frozen=True, slots=True)
class Result:
    """Timings of one operation on one backend."""

    ops: int
    elapsed: float
    latencies: Sequence[float]

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed

    def percentile_ms(self, pct: float) -> float:
        """Nearest-rank percentile of the per-call latencies, in milliseconds."""
        ordered = sorted(self.latencies)
        rank = max(1, -(-len(ordered) * pct // 100))  # ceil(n * pct / 100), at least 1
        return ordered[int(rank) - 1] * 1000


def timed(calls: int, op: Callable[[int], object]) -> Result:
    """Call ``op(i)`` for i in range(calls), one at a time, timing each call."""
    latencies: list[float] = []
    start = time.perf_counter()
    for i in range(calls):
        t0 = time.perf_counter()
        op(i)
        latencies.append(time.perf_counter() - t0)
    return Result(calls, time.perf_counter() - start, latencies)


def timed_concurrent(calls: int, threads: int, op: Callable[[int], object]) -> Result:
    """Split ``calls`` over ``threads`` workers that start together; aggregate wall time."""
    barrier = threading.Barrier(threads + 1)

    def worker(share: range) -> list[float]:
        barrier.wait()
        out: list[float] = []
        for i in share:
            t0 = time.perf_counter()
            op(i)
            out.append(time.perf_counter() - t0)
        return out

    shares = [range(k, calls, threads) for k in range(threads)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(worker, share) for share in shares]
        barrier.wait()
        start = time.perf_counter()
        latencies = [lat for f in futures for lat in f.result()]
        elapsed = time.perf_counter() - start
    return Result(calls, elapsed, latencies)


def run_backend(url: str, agents: int, lookups: int, seed: int) -> dict[str, Result]:
    """Migrate the empty database at ``url`` and time every operation on it."""
    c: Container = build(Settings(database_url=url))
    try:
        migrate.upgrade(c.engine)
        ctx = CallContext.system("bench")
        owner = c.humans.create(
            ctx, NewHuman(display_name="Bench Owner", email="owner@example.com")
        )
        ids: list[str] = []

        def register(i: int) -> None:
            agent = c.agents.register(
                ctx,
                NewAgent(
                    name=f"bench-agent-{i}",
                    owners=[owner.id],
                    purpose="benchmark",
                    environment="staging",
                    labels={"team": f"t{i % TEAMS}"},
                    activate=True,
                ),
            )
            ids.append(agent.id)

        results = {"register": timed(agents, register)}

        rng = random.Random(seed)
        picks = [rng.choice(ids) for _ in range(lookups)]
        teams = [f"t{rng.randrange(TEAMS)}" for _ in range(lookups)]
        expected_per_team = min(50, agents // TEAMS)

        def get(i: int) -> None:
            if c.agents.get(picks[i]).id != picks[i]:
                raise RuntimeError("get returned the wrong agent")

        def find(i: int) -> None:
            page = c.agents.find(AgentQuery(limit=50, labels={"team": teams[i]}))
            if len(page.items) < expected_per_team:
                raise RuntimeError(f"list by label found {len(page.items)} agents")

        for i in range(min(WARMUP, lookups)):
            get(i)
            find(i)
        results["get by id"] = timed(lookups, get)
        results["list by label"] = timed(lookups, find)
        results[f"get by id x{THREADS}"] = timed_concurrent(lookups, THREADS, get)
        return results
    finally:
        c.close()


@contextmanager
def sqlite_database() -> Iterator[str | None]:
    with tempfile.TemporaryDirectory(prefix="agentiam-bench-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"


@contextmanager
def postgres_database() -> Iterator[str | None]:
    """A throwaway database on the server at PG_URL, or None if the server is unreachable."""
    admin = create_engine(normalize_url(PG_URL), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        admin.dispose()
        print(
            f"PostgreSQL is not reachable at {PG_URL} ({type(exc).__name__}); skipping it. "
            "Start it or set AGENTIAM_BENCH_POSTGRES_URL."
        )
        yield None
        return
    name = f"agentiam_bench_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield normalize_url(PG_URL).rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_version() -> str:
    try:
        engine = create_engine(normalize_url(PG_URL))
        with engine.connect() as conn:
            version = str(conn.execute(text("SHOW server_version")).scalar_one())
        engine.dispose()
        return version
    except Exception:
        return "unreachable"


def fmt_ops(result: Result | None) -> str:
    return f"{result.ops_per_s:,.0f}" if result else "n/a"


def fmt_lat(result: Result | None) -> str:
    if result is None:
        return "n/a"
    return f"{result.percentile_ms(50):.2f} / {result.percentile_ms(99):.2f}"


def render_table(results: dict[str, dict[str, Result]]) -> str:
    header = [
        "operation",
        "sqlite ops/s",
        "sqlite p50/p99 ms",
        "postgresql ops/s",
        "postgresql p50/p99 ms",
        "pg/sqlite",
    ]
    rows: list[list[str]] = []
    for op in OPERATIONS:
        lite = results.get("sqlite", {}).get(op)
        pg = results.get("postgresql", {}).get(op)
        ratio = f"{pg.ops_per_s / lite.ops_per_s:.2f}x" if lite and pg else "n/a"
        rows.append([op, fmt_ops(lite), fmt_lat(lite), fmt_ops(pg), fmt_lat(pg), ratio])
    return markdown_table(header, rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=500, help="agents to register (500)")
    parser.add_argument(
        "--lookups", type=int, default=2000, help="calls per lookup operation (2000)"
    )
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed for the lookups (1)")
    args = parser.parse_args(argv)
    if args.agents < 1 or args.lookups < 1:
        parser.error("--agents and --lookups must be at least 1")
    args.backends = parse_backends(parser, args.backends)
    return args


def parse_backends(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """``--backends``: a comma-separated subset of BACKENDS, in BACKENDS order."""
    backends = [b.strip() for b in text.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not backends:
        parser.error(f"--backends takes a comma-separated subset of {','.join(BACKENDS)}")
    return [b for b in BACKENDS if b in backends]


def print_machine(backends: Sequence[str]) -> None:
    """The command line and the machine, as every bench table is headed."""
    print(f"command: {shlex.join(sys.orig_argv)}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: nproc={cpus}, python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.platform()}, "
        f"SQLAlchemy {sqlalchemy.__version__}, SQLite {sqlite3.sqlite_version}"
        + (f", PostgreSQL {postgres_version()}" if "postgresql" in backends else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print_machine(args.backends)
    print(
        f"workload: {args.agents} agents registered, {args.lookups} calls per lookup "
        f"operation, {THREADS} threads for the concurrent run, seed {args.seed}"
    )
    results: dict[str, dict[str, Result]] = {}
    for backend in args.backends:
        started = time.perf_counter()
        factory = sqlite_database if backend == "sqlite" else postgres_database
        with factory() as url:
            if url is None:
                continue
            results[backend] = run_backend(url, args.agents, args.lookups, args.seed)
        print(f"{backend}: done in {time.perf_counter() - started:.1f} s")
    print()
    print(render_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
