"""Token issuance over HTTP against the oidc-provider peer, and in-process verification.

1. Issuance: ``client_credentials`` + ``private_key_jwt`` (ES256) + DPoP (ES256) -> a
   DPoP-bound RFC 9068 JWT, over real HTTP, on both systems in the same run:

   * AgentIAM: a real ``agentiam serve`` process (uvicorn, ``--workers`` processes) on a
     fresh SQLite file (WAL); every request reads the agent and its keys, records the
     assertion and proof ``jti`` in the database replay guard and appends a
     ``token.issued`` audit row in one transaction.
   * the certified Node.js ``oidc-provider`` (bench/peer/oidc_provider), same flow, with
     its default in-memory store (its replay records are not durable).

   Requests are pre-generated (unique assertion and proof per request) before timing and
   sent by ``bench/tokenload.py``'s raw asyncio client, whose own ceiling is far above both
   servers. The ratio column is AgentIAM / peer from the same run.

2. Verification: ``AccessTokenVerifier.verify_request`` on one thread (so per core):
   an access token plus a fresh DPoP proof per check (signature, claims, ``ath``,
   ``cnf.jkt``, replay cache, revocation set), proofs pre-generated.

Rerun from the repository root::

    .venv/bin/python bench/tokens.py                  # 3000 requests, concurrency 32
    .venv/bin/python bench/tokens.py -n 10000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tokenload import (
    LoadResult,
    free_port,
    generate_es256_jwk,
    pregenerate,
    print_table,
    run_load,
    start_oidc_provider,
)

RESOURCE = "https://api.bench.example"
SCOPE = "tools:read"
ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def agentiam_server(workers: int, public_jwk: dict[str, str]) -> Iterator[tuple[str, str]]:
    """Start ``agentiam serve`` on a fresh SQLite file with one registered agent;
    yield (issuer, agent id)."""
    from agentiam.adapters.storage import migrate
    from agentiam.adapters.storage.engine import make_engine
    from agentiam.bootstrap import build
    from agentiam.config import Settings
    from agentiam.core.credentials.sealing import MasterKey
    from agentiam.services.agents import NewAgent
    from agentiam.services.context import CallContext
    from agentiam.services.humans import NewHuman

    with tempfile.TemporaryDirectory(prefix="agentiam-bench-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        port = free_port()
        issuer = f"http://127.0.0.1:{port}"
        master = MasterKey.generate_text()
        c = build(Settings(database_url=url, issuer=issuer, master_key=master))
        ctx = CallContext.system("bench")
        owner = c.humans.create(ctx, NewHuman(display_name="Bench", email="bench@example.com"))
        agent = c.agents.register(
            ctx,
            NewAgent(
                name="bench-agent",
                owners=[owner.id],
                purpose="benchmark",
                environment="bench",
                activate=True,
                keys=[public_jwk],
                scopes=[SCOPE],
                audiences=[RESOURCE],
            ),
        )
        c.close()
        env = {
            **os.environ,
            "AGENTIAM_DATABASE_URL": url,
            "AGENTIAM_ISSUER": issuer,
            "AGENTIAM_MASTER_KEY": master,
            "AGENTIAM_PORT": str(port),
            "AGENTIAM_LOG_LEVEL": "warning",
        }
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
            yield issuer, agent.id
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def bench_verification(n: int, *, fresh_tokens: bool = False) -> tuple[float, float]:
    """Checks per second of token + DPoP proof verification on one thread.

    By default one token is presented with a new proof each time (an agent reuses its
    token for minutes, so the verifier's verified-token cache serves it after the first
    check). ``fresh_tokens`` presents a different token every time: the worst case, with
    two signature checks per request."""
    from joserfc import jwt

    from agentiam.core.credentials.jose import import_public_jwk
    from agentiam.core.credentials.revocations import RevocationSet
    from agentiam.core.credentials.verifier import AccessTokenVerifier, VerifierConfig
    from agentiam.sdk import AgentKey, dpop_proof

    signer = AgentKey.generate()
    holder = AgentKey.generate()
    now = int(time.time())

    def make_token(jti: str) -> str:
        claims = {
            "iss": "https://as.example",
            "sub": "agt_x",
            "aud": RESOURCE,
            "client_id": "agt_x",
            "iat": now,
            "exp": now + 300,
            "jti": jti,
            "scope": SCOPE,
            "cnf": {"jkt": holder.kid},
        }
        header = {"typ": "at+jwt", "alg": "ES256", "kid": signer.kid}
        return jwt.encode(header, claims, signer.key, algorithms=["ES256"])

    tokens = [make_token(f"tok_{i}") for i in range(n)] if fresh_tokens else [make_token("t")] * n
    keys = {signer.kid: import_public_jwk(signer.public_jwk(), "ES256", kid=signer.kid)}
    revoked = RevocationSet(max_staleness=3600)
    revoked.mark_fresh()
    verifier = AccessTokenVerifier(
        VerifierConfig(issuer="https://as.example", audience=RESOURCE), keys, revoked
    )
    url = RESOURCE + "/tools/call"
    requests = [
        (
            [f"DPoP {token}"],
            [dpop_proof(holder, method="POST", url=url, access_token=token, now=now)],
        )
        for token in tokens
    ]
    start = time.perf_counter()
    for auth, proof in requests:
        verifier.verify_request(authorization=auth, dpop=proof, method="POST", url=url, now=now)
    elapsed = time.perf_counter() - start
    return n / elapsed, elapsed / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="timed token requests per system")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="agentiam serve worker processes")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--verifications", type=int, default=20000)
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()
    print(f"command: {shlex.join(sys.orig_argv)}")
    print(
        f"machine: nproc={os.cpu_count()}, python {platform.python_version()}, "
        f"{platform.platform()}"
    )
    print(
        f"workload: {args.n} timed requests (+{args.warmup} warm-up) per system, concurrency "
        f"{args.concurrency}; agentiam serve --workers {args.workers} on SQLite"
    )
    client_key, client_jwk = generate_es256_jwk()
    dpop_key, _ = generate_es256_jwk()
    rows: list[LoadResult] = []
    total = args.n + args.warmup

    with agentiam_server(args.workers, client_jwk) as (issuer, agent_id):
        endpoint = issuer + "/oauth2/token"
        pairs = pregenerate(
            total,
            token_endpoint=endpoint,
            assertion_audience=issuer,
            client_id=agent_id,
            private_key=client_key,
            dpop_key=dpop_key,
        )
        rows.append(
            run_load(
                endpoint,
                pairs,
                resource=RESOURCE,
                scope=SCOPE,
                concurrency=args.concurrency,
                client_id=agent_id,
                label="agentiam",
                warmup=args.warmup,
            )
        )
    if not args.skip_peer:
        with start_oidc_provider(
            0, client_id="bench-client", client_jwk=client_jwk, resource=RESOURCE, scope=SCOPE
        ) as peer:
            pairs = pregenerate(
                total,
                token_endpoint=peer.token_endpoint,
                assertion_audience=peer.issuer,
                client_id="bench-client",
                private_key=client_key,
                dpop_key=dpop_key,
            )
            rows.append(
                run_load(
                    peer.token_endpoint,
                    pairs,
                    resource=RESOURCE,
                    scope=SCOPE,
                    concurrency=args.concurrency,
                    client_id="bench-client",
                    label=f"oidc-provider {peer.provider_version}",
                    warmup=args.warmup,
                )
            )
    print()
    print("## Token issuance over HTTP (client_credentials + private_key_jwt + DPoP)")
    print_table(rows, ratio_to=rows[-1].label if len(rows) > 1 else None)
    print()
    print("## In-process verification of access token + DPoP proof (one thread = one core)")
    print()
    print("| tokens | checks | checks/s per core | µs per check | target |")
    print("|:---|---:|---:|---:|---:|")
    for fresh, label in (
        (False, "one token, new proof each check"),
        (True, "new token each check"),
    ):
        rate, micros = bench_verification(args.verifications, fresh_tokens=fresh)
        print(f"| {label} | {args.verifications} | {rate:,.0f} | {micros:.0f} | 4,000 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
