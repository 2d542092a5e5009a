"""Audit trail: durable appends (group commit against commit per event), integration into
the tamper-evident log, proofs over a 1,000,000-event tree, and offline verification of
a whole export.

1. Durable appends, per backend (a temp SQLite file as ``make_engine`` configures it: WAL,
   ``synchronous=NORMAL``; a throwaway PostgreSQL database as ``bench/registry.py``
   makes it, with the server's own ``synchronous_commit``/``fsync``, both printed).
   ``--threads`` callers (default 64, started together on a barrier) each append one
   stand-alone ``authz.decision`` event per call, built before timing, through:

   * ``group commit``: ``AuditService.append`` with the container's
     ``GroupCommitWriter`` (``build()``'s defaults unless ``--max-batch``/
     ``--max-wait-ms`` are given). A call returns once the transaction holding its
     event has committed;
   * ``commit per event``: the baseline, ``AuditService`` without a writer, so each call
     is its own transaction and commit (on the engine's default connection pool).

   events/s is calls / wall time; p50/p99 are nearest-rank latencies of single calls.
   ``x baseline`` is the group-commit rate over the baseline rate from the same run, and
   each group-commit row says whether the issue's target (20,000/s SQLite, 5,000/s
   PostgreSQL) is met. After each row every acknowledged event is counted back from the
   table.

2. The trail, on the same databases: ``AuditTrail.integrate`` (one timed call per batch
   of ``TrailPolicy.batch`` events) logs every event appended above; a tree head is
   signed halfway and at the end (with the signing key ring, master key generated per
   run). Then, over the database-backed node store: ``AuditTrail.inclusion`` for
   ``--db-proofs`` random events against the last head (default 200; 0 skips), and
   ``AuditTrail.consistency`` between the two heads as often (a fresh node cache per
   call), each with its proof verified; ``AuditTrail.export`` and ``AuditTrail.verify``
   of the whole trail. ``--skip-appends`` loads ``--integrate-events`` events untimed
   instead, to time these rows on a larger trail.

3. Proofs at ``--leaves`` (default 1,000,000): a tree built in memory with
   ``merkle.TreeBuilder`` + ``MemoryNodeStore`` over synthetic leaf hashes (the build is
   timed too). Then, for ``--samples`` random draws each, ``inclusion_proof`` /
   ``verify_inclusion`` of a random leaf in the whole tree, and ``consistency_proof`` /
   ``verify_consistency`` from a random earlier size to the whole tree (its root computed
   before timing). Each call is timed on its own (``perf_counter_ns``).

4. A whole export of ``--export-events`` (default 100,000) events written as
   ``AuditTrail.export`` writes it (a ``keys`` line, one line per entry with its event,
   then the signed tree heads), built with the core functions: RFC 8785 leaf hashes, the
   hash chain, Merkle roots, and a tree head every ``--head-every`` entries signed with a
   fresh ES256 key (joserfc). ``verify_export`` then checks the file against that key's
   JWKS, as ``agentiam audit verify --export --jwks`` does; it must report the export
   intact with every head verified.

Rerun from the repository root::

    .venv/bin/python bench/audit.py                      # about 60 s on 2 cores
    .venv/bin/python bench/audit.py --backends sqlite --threads 128 --appends 100000
    .venv/bin/python bench/audit.py --skip-appends --integrate-events 200000  # trail rows only
    .venv/bin/python bench/audit.py --skip-db --leaves 4000000 --export-events 300000
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import multiprocessing
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mdtable import markdown_table
from bench.registry import (
    Result,
    parse_backends,
    postgres_database,
    print_machine,
    sqlite_database,
    timed_concurrent,
)

from agentiam.adapters.storage import migrate
from agentiam.adapters.storage import tables as t
from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.audit.events import (
    Actor,
    ActorType,
    AuditEvent,
    Outcome,
    ResourceRef,
    TraceContext,
)
from agentiam.core.audit.merkle import (
    MemoryNodeStore,
    TreeBuilder,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    subtree_root,
    verify_consistency,
    verify_inclusion,
)
from agentiam.core.audit.trail import (
    GENESIS,
    TREE_HEAD_TYP,
    canonical,
    chain_hash,
    tree_head_claims,
)
from agentiam.core.audit.verification import verify_export
from agentiam.core.credentials.sealing import MasterKey
from agentiam.core.ids import new_id
from agentiam.ports import UnitOfWork
from agentiam.services.audit import AuditService
from agentiam.services.audit_trail import TrailPolicy
from agentiam.services.audit_writer import GroupCommitWriter
from agentiam.services.context import CallContext

TARGETS = {"sqlite": 20_000, "postgresql": 5_000}
ISSUER = "https://as.bench.example"
PATHS = ("group commit", "commit per event")
_WRITER_DEFAULTS = inspect.signature(GroupCommitWriter).parameters
TRAIL_BATCH = TrailPolicy(issuer=ISSUER).batch


# -- events ----------------------------------------------------------------------------


def decision_event(rng: random.Random, now: datetime) -> AuditEvent:
    """A stand-alone authorization decision, shaped as ``services/decisions.py`` makes it."""
    agent = f"agt_{rng.randrange(1000):04d}"
    allowed = rng.random() < 0.9
    policy = f"pol_{rng.randrange(200):03d}"
    return AuditEvent.create(
        type="authz.decision",
        actor=Actor(ActorType.AGENT, agent),
        action=rng.choice(("tools:call", "files:read", "payments:create")),
        source="pep/gateway",
        trace=TraceContext.new(),
        now=now,
        outcome=Outcome.SUCCESS if allowed else Outcome.DENIED,
        resource=ResourceRef("Tool", rng.choice(("search", "send_email", "transfer"))),
        agent_id=agent,
        initiating_human=f"hum_{rng.randrange(100):03d}",
        delegation_chain=(f"agt_{rng.randrange(1000):04d}", agent),
        decision_id=new_id("decision"),
        policy_version=str(rng.randrange(1, 50)),
        risk_score=round(rng.random(), 3),
        reason=f"{policy} {'permits' if allowed else 'forbids'}",
        details={
            "decision": "allow" if allowed else "deny",
            "principal": {"type": "Agent", "id": agent},
            "policies": [policy],
            "reasons": [policy],
            "errors": [],
            "arguments": {"to": "ops@example.com", "subject": "weekly report", "body": "[masked]"},
        },
    )


def make_events(n: int, seed: int) -> list[AuditEvent]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    return [decision_event(rng, now) for _ in range(n)]


# -- 1 and 2: appends and the trail on a database ---------------------------------------


@dataclass(slots=True)
class AppendRow:
    result: Result
    per_commit: float  # events per committed transaction (warm-up included)


@dataclass(slots=True)
class Timing:
    """A rate (items / total seconds) and per-call latencies."""

    items: int
    elapsed: float
    latencies: Sequence[float]

    @property
    def rate(self) -> float:
        return self.items / self.elapsed if self.elapsed else 0.0

    def pct_ms(self, pct: float) -> float:
        return Result(len(self.latencies), 1.0, self.latencies).percentile_ms(pct)


@dataclass(slots=True)
class BackendRun:
    appends: dict[str, AppendRow]
    trail: dict[str, Timing]
    durability: str
    stored: int
    logged: int


def count_rows(c: Container, table: sqlalchemy.Table) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def stored_events(c: Container) -> int:
    return count_rows(c, t.audit_events)


def durability(c: Container) -> str:
    with c.engine.connect() as conn:
        if c.engine.dialect.name == "sqlite":
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
                int(conn.exec_driver_sql("PRAGMA synchronous").scalar() or 0), "?"
            )
            return f"journal_mode={mode}, synchronous={sync}"
        values = [
            f"{name}={conn.execute(text(f'SHOW {name}')).scalar()}"
            for name in ("synchronous_commit", "fsync", "commit_delay")
        ]
        return ", ".join(values)


def time_appends(
    append: Callable[[list[AuditEvent]], None], events: list[AuditEvent], threads: int
) -> Result:
    warm = min(len(events) // 10, threads * 4)
    timed_concurrent(warm, threads, lambda i: append([events[i]]))
    rest = events[warm:]
    return timed_concurrent(len(rest), threads, lambda i: append([rest[i]]))


def timed_calls(calls: int, op: Callable[[int], int]) -> Timing:
    """Call ``op(i)`` ``calls`` times, one at a time; it returns how many items it did."""
    latencies: list[float] = []
    items = 0
    for i in range(calls):
        t0 = time.perf_counter()
        items += op(i)
        latencies.append(time.perf_counter() - t0)
    return Timing(items, sum(latencies), latencies)


def run_backend(url: str, args: argparse.Namespace, seed: int) -> BackendRun:
    settings = Settings(database_url=url, issuer=ISSUER, master_key=MasterKey.generate_text())
    c = build(settings)
    try:
        migrate.upgrade(c.engine)
        # The signing key first: creating it writes an audit event of its own.
        c.signing_keys.ensure_key(CallContext.system("bench"))
        appends: dict[str, AppendRow] = {}
        expected = stored_events(c)
        if not args.skip_appends:

            def uow(*, read_only: bool = False) -> UnitOfWork:
                return SqlUnitOfWork(c.engine, read_only=read_only)

            writer = c.audit_writer
            if args.max_batch is not None or args.max_wait_ms is not None:
                writer.close()
                writer = GroupCommitWriter(
                    uow,
                    max_batch=args.max_batch or _WRITER_DEFAULTS["max_batch"].default,
                    max_wait=(
                        args.max_wait_ms / 1000
                        if args.max_wait_ms is not None
                        else _WRITER_DEFAULTS["max_wait"].default
                    ),
                )
            grouped = AuditService(uow, c.clock, writer)
            per_event = AuditService(uow, c.clock)
            plan = (
                ("group commit", grouped, args.appends),
                ("commit per event", per_event, args.baseline_appends),
            )
            for k, (name, service, n) in enumerate(plan):
                events = make_events(n, seed * 10 + k)
                before = writer.stats
                gc.collect()
                result = time_appends(service.append, events, args.threads)
                expected += n
                got = stored_events(c)
                if got != expected:
                    raise RuntimeError(f"{name}: {expected} events acknowledged, {got} stored")
                after = writer.stats
                commits = after.batches - before.batches
                per_commit = (after.events - before.events) / commits if commits else 1.0
                appends[name] = AppendRow(result, per_commit)
                del events
            writer.close()
        else:
            events = make_events(args.integrate_events, seed)
            for start in range(0, len(events), 500):
                c.audit.append(events[start : start + 500])
            expected += len(events)
        trail = {} if args.skip_trail else run_trail(c, expected, args, random.Random(seed))
        logged = count_rows(c, t.audit_log)
        return BackendRun(appends, trail, durability(c), stored_events(c), logged)
    finally:
        c.close()


def run_trail(
    c: Container, total: int, args: argparse.Namespace, rng: random.Random
) -> dict[str, Timing]:
    audit_trail = c.audit_trail
    out: dict[str, Timing] = {}
    # Integrate in two halves with a signed head after each: two heads for consistency.
    integrate_lat: list[float] = []
    sign_lat: list[float] = []
    logged = 0
    for goal in (total // 2, total):
        while logged < goal:
            t0 = time.perf_counter()
            n = audit_trail.integrate()
            integrate_lat.append(time.perf_counter() - t0)
            if n == 0:
                raise RuntimeError(f"integration stopped at {logged} of {total} events")
            logged += n
        t0 = time.perf_counter()
        head = audit_trail.sign_head(force=True)
        sign_lat.append(time.perf_counter() - t0)
        if head is None:
            raise RuntimeError("no tree head was signed")
    out["integrate"] = Timing(logged, sum(integrate_lat), integrate_lat)
    out["sign tree head"] = Timing(len(sign_lat), sum(sign_lat), sign_lat)
    heads = sorted(audit_trail.tree_heads(limit=2), key=lambda h: h.tree_size)
    first, last = heads[0], heads[-1]

    if args.db_proofs:
        with c.engine.connect() as conn:
            ids = [
                str(r[0])
                for r in conn.execute(
                    select(t.audit_events.c.event_id).order_by(t.audit_events.c.seq)
                )
            ]
        picks = [rng.choice(ids) for _ in range(args.db_proofs)]

        def inclusion(i: int) -> int:
            proof = audit_trail.inclusion(picks[i], last.tree_size)
            leaf = bytes.fromhex(proof["leaf_hash"])
            path = [bytes.fromhex(p) for p in proof["audit_path"]]
            if not verify_inclusion(
                leaf, proof["leaf_index"], last.tree_size, path, last.root_hash
            ):
                raise RuntimeError("a database inclusion proof does not verify")
            return 1

        def consistency(_: int) -> int:
            proof = audit_trail.consistency(first.tree_size, last.tree_size)
            path = [bytes.fromhex(p) for p in proof["consistency_path"]]
            if not verify_consistency(
                first.tree_size, last.tree_size, first.root_hash, last.root_hash, path
            ):
                raise RuntimeError("a database consistency proof does not verify")
            return 1

        for i in range(min(10, args.db_proofs)):
            inclusion(i)
        out["inclusion proof + verify"] = timed_calls(args.db_proofs, inclusion)
        out["consistency proof + verify"] = timed_calls(args.db_proofs, consistency)

    t0 = time.perf_counter()
    lines = sum(1 for _ in audit_trail.export())
    elapsed = time.perf_counter() - t0
    if lines != 1 + logged + len(heads):
        raise RuntimeError(f"the export has {lines} lines, not {1 + logged + len(heads)}")
    out["export (JSONL)"] = Timing(logged, elapsed, [])
    t0 = time.perf_counter()
    report = audit_trail.verify()
    elapsed = time.perf_counter() - t0
    if not report.ok or report.heads_verified != 2:
        raise RuntimeError(f"the trail did not verify: {report.to_dict()}")
    out["verify whole trail"] = Timing(report.entries, elapsed, [])
    return out


# -- 3: proofs at a million events -------------------------------------------------------


@dataclass(slots=True)
class ProofRun:
    leaves: int
    build_seconds: float
    rows: dict[str, tuple[list[int], float]]  # name -> (latencies ns, mean proof hashes)


def run_proofs(leaves: int, samples: int, seed: int) -> ProofRun:
    t0 = time.perf_counter()
    store = MemoryNodeStore()
    builder = TreeBuilder()
    for i in range(leaves):
        store.put_many(builder.append(leaf_hash(i.to_bytes(8, "big"))))
    build_seconds = time.perf_counter() - t0
    size = leaves
    root = builder.root()
    rng = random.Random(seed)
    indices = [rng.randrange(size) for _ in range(samples)]
    firsts = [rng.randrange(1, size) for _ in range(samples)] if size > 1 else []
    first_roots = [subtree_root(store, 0, m) for m in firsts]

    rows: dict[str, tuple[list[int], float]] = {}
    clock = time.perf_counter_ns
    gc.collect()

    lat: list[int] = []
    proofs: list[list[bytes]] = []
    for i in indices:
        s = clock()
        proofs.append(inclusion_proof(store, i, size))
        lat.append(clock() - s)
    mean = sum(map(len, proofs)) / max(1, len(proofs))
    rows["inclusion_proof"] = (lat, mean)
    lat = []
    for i, proof in zip(indices, proofs, strict=True):
        leaf = leaf_hash(i.to_bytes(8, "big"))
        s = clock()
        ok = verify_inclusion(leaf, i, size, proof, root)
        lat.append(clock() - s)
        if not ok:
            raise RuntimeError(f"inclusion proof of leaf {i} does not verify")
    rows["verify_inclusion"] = (lat, mean)

    lat, proofs = [], []
    for m in firsts:
        s = clock()
        proofs.append(consistency_proof(store, m, size))
        lat.append(clock() - s)
    mean = sum(map(len, proofs)) / max(1, len(proofs))
    rows["consistency_proof"] = (lat, mean)
    lat = []
    for m, first_root, proof in zip(firsts, first_roots, proofs, strict=True):
        s = clock()
        ok = verify_consistency(m, size, first_root, root, proof)
        lat.append(clock() - s)
        if not ok:
            raise RuntimeError(f"consistency proof {m} -> {size} does not verify")
    rows["verify_consistency"] = (lat, mean)
    return ProofRun(leaves, build_seconds, rows)


# -- 4: verifying a whole export ---------------------------------------------------------


@dataclass(slots=True)
class ExportRun:
    events: int
    heads: int
    size_bytes: int
    generate_seconds: float
    verify_seconds: float
    heads_verified: int
    rss_before_mb: float  # the verifying process, after its imports
    rss_peak_mb: float  # ... and its peak during verify_export


def write_export(path: Path, events: int, head_every: int, seed: int) -> tuple[dict[str, Any], int]:
    """Write an export of ``events`` decision events; return the trusted JWKS and the
    number of signed heads."""
    kid = "bench-audit-1"
    key = ECKey.generate_key("P-256", parameters={"kid": kid, "alg": "ES256"}, private=True)
    public = key.as_dict(private=False)
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(hours=1)
    builder = TreeBuilder()
    chain = GENESIS
    heads: list[str] = []
    header = {"typ": TREE_HEAD_TYP, "alg": "ES256", "kid": kid}
    # The export's order is keys, tree heads, entries: entries go to a side file
    # while the heads are signed, then everything is assembled in that order.
    entries_path = path.with_suffix(".entries")
    with entries_path.open("w", encoding="utf-8") as out:
        for index in range(events):
            body = decision_event(rng, start + timedelta(microseconds=index * 20)).to_dict()
            leaf = leaf_hash(canonical(body))
            chain = chain_hash(chain, leaf)
            builder.append(leaf)
            entry = {
                "index": index,
                "leaf_hash": leaf.hex(),
                "chain_hash": chain.hex(),
                "event": body,
            }
            out.write(json.dumps(entry, sort_keys=True) + "\n")
            size = index + 1
            if size % head_every == 0 or size == events:
                claims = tree_head_claims(
                    issuer=ISSUER,
                    tree_size=size,
                    root_hash=builder.root(),
                    chain=chain,
                    signed_at=int(start.timestamp()) + size // 1000,
                )
                heads.append(jwt.encode(header, claims, key, algorithms=["ES256"]))
    with path.open("w", encoding="utf-8") as out, entries_path.open(encoding="utf-8") as body:
        out.write(json.dumps({"keys": [public]}, sort_keys=True) + "\n")
        for head in heads:
            out.write(json.dumps({"tree_head": head}, sort_keys=True) + "\n")
        shutil.copyfileobj(body, out)
    entries_path.unlink()
    return {"keys": [public]}, len(heads)


def memory_mb() -> tuple[float, float]:
    """This process's resident set and its peak so far, in MB (Linux /proc; elsewhere
    ru_maxrss for both, which a spawned child may inherit from its parent)."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def verify_in_child(path: str, jwks: dict[str, Any], out: Any) -> None:
    """Run in a fresh (spawned) interpreter, so its peak RSS is verify_export's own."""
    gc.collect()
    before, _ = memory_mb()
    t0 = time.perf_counter()
    with open(path, encoding="utf-8") as lines:
        report = verify_export(lines, issuer=ISSUER, jwks=jwks)
    elapsed = time.perf_counter() - t0
    _, peak = memory_mb()
    out.send((elapsed, report.to_dict(), before, peak))
    out.close()


def run_export(events: int, head_every: int, seed: int) -> ExportRun:
    with tempfile.TemporaryDirectory(prefix="agentiam-bench-") as tmp:
        path = Path(tmp) / "trail.jsonl"
        t0 = time.perf_counter()
        jwks, heads = write_export(path, events, head_every, seed)
        generate = time.perf_counter() - t0
        ctx = multiprocessing.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=verify_in_child, args=(str(path), jwks, send))
        child.start()
        send.close()
        elapsed, report, before, peak = receive.recv()
        child.join()
        if not report["ok"] or report["entries"] != events or report["heads_verified"] != heads:
            raise RuntimeError(f"the export did not verify: {report}")
        return ExportRun(
            events=events,
            heads=heads,
            size_bytes=path.stat().st_size,
            generate_seconds=generate,
            verify_seconds=elapsed,
            heads_verified=report["heads_verified"],
            rss_before_mb=before,
            rss_peak_mb=peak,
        )


# -- output ------------------------------------------------------------------------------


def render_appends(runs: dict[str, BackendRun], threads: int) -> str:
    header = [
        f"backend, path ({threads} threads)",
        "events/s",
        "p50 ms",
        "p99 ms",
        "events/commit",
        "x baseline",
        "target",
    ]
    rows: list[list[str]] = []
    for backend, run in runs.items():
        base = run.appends.get("commit per event")
        for name in PATHS:
            row = run.appends.get(name)
            if row is None:
                continue
            r = row.result
            grouped = name == "group commit"
            ratio = f"{r.ops_per_s / base.result.ops_per_s:.2f}x" if grouped and base else ""
            target = ""
            if grouped:
                goal = TARGETS[backend]
                verdict = "met" if r.ops_per_s >= goal else "below target"
                target = f"{goal:,}/s: {verdict}"
            per_commit = f"{row.per_commit:.1f}"
            rows.append(
                [
                    f"{backend}, {name}",
                    f"{r.ops_per_s:,.0f}",
                    f"{r.percentile_ms(50):.2f}",
                    f"{r.percentile_ms(99):.2f}",
                    per_commit,
                    ratio,
                    target,
                ]
            )
    return markdown_table(header, rows)


TRAIL_ROWS = (
    ("integrate", "events/s"),
    ("sign tree head", ""),
    ("inclusion proof + verify", "proofs/s"),
    ("consistency proof + verify", "proofs/s"),
    ("export (JSONL)", "events/s"),
    ("verify whole trail", "events/s"),
)


def render_trail(runs: dict[str, BackendRun]) -> str:
    header = ["operation"]
    for backend in runs:
        header += [f"{backend} rate", f"{backend} p50/p99 ms", f"{backend} total s"]
    rows: list[list[str]] = []
    for name, unit in TRAIL_ROWS:
        if not any(name in run.trail for run in runs.values()):
            continue
        row = [name]
        for run in runs.values():
            timing = run.trail.get(name)
            if timing is None:
                row += ["n/a", "n/a", "n/a"]
                continue
            rate = f"{timing.rate:,.0f} {unit}" if unit else ""
            lat = f"{timing.pct_ms(50):.2f} / {timing.pct_ms(99):.2f}" if timing.latencies else ""
            row += [rate, lat, f"{timing.elapsed:.2f}"]
        rows.append(row)
    return markdown_table(header, rows)


def render_proofs(run: ProofRun) -> str:
    header = ["operation", "p50 µs", "p99 µs", "calls/s", "hashes per proof"]
    rows: list[list[str]] = []
    for name, (lat, mean) in run.rows.items():
        ordered = sorted(lat)

        def pct(p: float, ordered: list[int] = ordered) -> float:
            rank = max(1, -(-len(ordered) * p // 100))
            return ordered[int(rank) - 1] / 1000

        rows.append(
            [
                name,
                f"{pct(50):.1f}",
                f"{pct(99):.1f}",
                f"{len(lat) / (sum(lat) / 1e9):,.0f}",
                f"{mean:.1f}",
            ]
        )
    return markdown_table(header, rows)


def render_export(run: ExportRun) -> str:
    header = [
        "export",
        "file MB",
        "signed heads",
        "generate s",
        "verify_export s",
        "verified events/s",
        "RSS MB before / peak",
    ]
    rows = [
        [
            f"{run.events:,} events",
            f"{run.size_bytes / 1e6:.1f}",
            f"{run.heads_verified} of {run.heads}",
            f"{run.generate_seconds:.2f}",
            f"{run.verify_seconds:.2f}",
            f"{run.events / run.verify_seconds:,.0f}",
            f"{run.rss_before_mb:,.0f} / {run.rss_peak_mb:,.0f}",
        ]
    ]
    return markdown_table(header, rows)


# -- main ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql"
    )
    parser.add_argument("--threads", type=int, default=64, help="appending threads (64)")
    parser.add_argument(
        "--appends", type=int, default=40_000, help="group-commit appends per backend (40000)"
    )
    parser.add_argument(
        "--baseline-appends",
        type=int,
        default=8_000,
        help="commit-per-event appends per backend (8000)",
    )
    parser.add_argument("--max-batch", type=int, help="writer max_batch (build()'s default)")
    parser.add_argument("--max-wait-ms", type=float, help="writer max_wait in ms (default)")
    parser.add_argument(
        "--skip-appends",
        action="store_true",
        help="no append timing; load --integrate-events events for the trail rows",
    )
    parser.add_argument(
        "--integrate-events",
        type=int,
        default=20_000,
        help="events loaded for the trail rows with --skip-appends (20000)",
    )
    parser.add_argument(
        "--db-proofs",
        type=int,
        default=200,
        help="database-backed inclusion/consistency proofs per backend (200; 0 skips)",
    )
    parser.add_argument(
        "--leaves", type=int, default=1_000_000, help="in-memory tree size (1000000)"
    )
    parser.add_argument(
        "--samples", type=int, default=1000, help="proofs timed per operation (1000)"
    )
    parser.add_argument(
        "--export-events", type=int, default=100_000, help="events in the export (100000)"
    )
    parser.add_argument(
        "--head-every", type=int, default=10_000, help="a signed head every N entries (10000)"
    )
    parser.add_argument("--skip-db", action="store_true", help="only the in-memory parts 3, 4")
    parser.add_argument("--skip-trail", action="store_true", help="skip part 2")
    parser.add_argument("--skip-proofs", action="store_true", help="skip part 3")
    parser.add_argument("--skip-export", action="store_true", help="skip part 4")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    args = parser.parse_args(argv)
    for name in ("threads", "appends", "baseline_appends", "leaves", "samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.export_events < 1 or args.head_every < 1 or args.db_proofs < 0:
        parser.error("--export-events and --head-every must be at least 1, --db-proofs 0")
    if args.integrate_events < 2:
        parser.error("--integrate-events must be at least 2")
    if args.appends < args.threads * 2:
        parser.error("--appends must be at least twice --threads")
    backends = parse_backends(parser, args.backends)
    args.backends = [] if args.skip_db else backends
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print_machine(args.backends)
    max_batch = args.max_batch or _WRITER_DEFAULTS["max_batch"].default
    max_wait = (
        args.max_wait_ms
        if args.max_wait_ms is not None
        else _WRITER_DEFAULTS["max_wait"].default * 1000
    )
    if args.backends:
        what = (
            f"{args.appends:,} group-commit and {args.baseline_appends:,} commit-per-event "
            f"appends per backend over {args.threads} threads (a tenth, at most "
            f"{args.threads * 4}, untimed first); writer max_batch={max_batch}, "
            f"max_wait={max_wait:g} ms"
            if not args.skip_appends
            else f"{args.integrate_events:,} events loaded untimed"
        )
        print(f"appends: {what}")
    started_all = time.perf_counter()
    runs: dict[str, BackendRun] = {}
    for k, backend in enumerate(args.backends):
        started = time.perf_counter()
        factory = sqlite_database if backend == "sqlite" else postgres_database
        with factory() as url:
            if url is None:
                continue
            runs[backend] = run_backend(url, args, args.seed + k)
        run = runs[backend]
        print(
            f"{backend}: {run.durability}; {run.stored:,} events stored, "
            f"{run.logged:,} logged; "
            f"done in {time.perf_counter() - started:.1f} s"
        )
    proofs = None
    if not args.skip_proofs:
        started = time.perf_counter()
        proofs = run_proofs(args.leaves, args.samples, args.seed)
        print(f"proofs: done in {time.perf_counter() - started:.1f} s")
    export = None
    if not args.skip_export:
        started = time.perf_counter()
        export = run_export(args.export_events, args.head_every, args.seed)
        print(f"export: done in {time.perf_counter() - started:.1f} s")
    print(f"total: {time.perf_counter() - started_all:.1f} s")

    if runs and not args.skip_appends:
        print()
        print("Durable appends (each call returns once its event is committed):")
        print()
        print(render_appends(runs, args.threads))
    if any(run.trail for run in runs.values()):
        print()
        print(
            "The trail on the same databases (integrate: one call per batch of "
            f"{TRAIL_BATCH} events; proofs against the last signed head, database node store):"
        )
        print()
        print(render_trail(runs))
    if proofs is not None:
        print()
        print(
            f"Proofs over an in-memory tree of {proofs.leaves:,} leaves, built in "
            f"{proofs.build_seconds:.1f} s ({proofs.leaves / proofs.build_seconds:,.0f} "
            f"leaves/s); {args.samples} random draws per row, consistency from a random "
            "earlier size to the whole tree:"
        )
        print()
        print(render_proofs(proofs))
    if export is not None:
        print()
        print(
            f"Offline verification of a whole export (a signed head every "
            f"{args.head_every:,} entries; verify_export with the trusted JWKS):"
        )
        print()
        print(render_export(export))
    return 0


if __name__ == "__main__":
    sys.exit(main())
