"""The tamper-evident trail on both stores: integration, signed tree heads, inclusion
and consistency proofs, online and offline verification, and every kind of tampering
tried by an attacker with write access to the database (append-only triggers and
foreign keys switched off), each caught."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import text
from tests.conftest import FakeClock

from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.audit.merkle import verify_consistency, verify_inclusion
from agentiam.core.audit.trail import chain_hash, event_leaf
from agentiam.core.audit.verification import verify_export
from agentiam.core.credentials.sealing import MasterKey
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman

CTX = CallContext.system("contract-test")
ISSUER = "https://as.example.com"


@pytest.fixture
def c(database_url: str, clock: FakeClock) -> Iterator[Container]:
    settings = Settings(
        database_url=database_url, issuer=ISSUER, master_key=MasterKey.generate_text()
    )
    container = build(settings, clock=clock)
    yield container
    container.close()


def _events(c: Container, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        c.humans.create(CTX, NewHuman(display_name=f"H{i}", email=f"h{i}@example.com"))


def _trail(c: Container, n: int = 10) -> None:
    """``n`` events, logged, with a signed head; then ``n`` more under a second head."""
    _events(c, n)
    c.audit_trail.integrate_all()
    assert c.audit_trail.sign_head(force=True) is not None
    _events(c, n, start=n)
    c.audit_trail.integrate_all()
    assert c.audit_trail.sign_head(force=True) is not None


def as_attacker(c: Container, *statements: str, **params: Any) -> None:
    """Run SQL as someone holding the database's superuser account would: with the
    append-only guards and foreign keys off."""
    attack(c, [(statement, params) for statement in statements])


def attack(c: Container, statements: list[tuple[str, dict[str, Any]]]) -> None:
    if c.engine.dialect.name == "postgresql":
        with c.engine.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            for statement, params in statements:
                conn.execute(text(statement), params)
        return
    # SQLite ignores PRAGMA foreign_keys inside a transaction: use the raw driver
    # connection, outside one, then drop the guard triggers.
    raw = c.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("PRAGMA foreign_keys = OFF")
        names = cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
        for (name,) in names:
            cursor.execute(f'DROP TRIGGER "{name}"')
        for statement, params in statements:
            cursor.execute(statement, params)
        raw.commit()
    finally:
        raw.close()


def _kinds(c: Container) -> set[str]:
    return {f.kind for f in c.audit_trail.verify().findings}


def _entry(c: Container, index: int) -> tuple[int, str]:
    with c.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT e.seq, e.body FROM audit_log l JOIN audit_events e "
                "ON e.seq = l.event_seq WHERE l.log_index = :i"
            ),
            {"i": index},
        ).one()
    return int(row.seq), str(row.body)


def test_an_intact_trail_verifies_and_its_proofs_check_out(c: Container) -> None:
    _trail(c)
    report = c.audit_trail.verify()
    assert report.ok, report.findings
    heads = c.audit_trail.tree_heads()
    assert len(heads) == 2
    assert 10 <= heads[1].tree_size < heads[0].tree_size == report.entries
    assert report.heads_verified == 2
    # An inclusion proof for an event of the first batch, against the latest head.
    _, body = _entry(c, 3)
    event_id = json.loads(body)["event_id"]
    proof = c.audit_trail.inclusion(event_id)
    assert proof["leaf_index"] == 3
    path = [bytes.fromhex(p) for p in proof["audit_path"]]
    size, older = heads[0].tree_size, heads[1].tree_size
    assert verify_inclusion(event_leaf(body), 3, size, path, heads[0].root_hash)
    assert not verify_inclusion(event_leaf(body), 4, size, path, heads[0].root_hash)
    consistency = c.audit_trail.consistency(older, size)
    cpath = [bytes.fromhex(p) for p in consistency["consistency_path"]]
    assert verify_consistency(older, size, heads[1].root_hash, heads[0].root_hash, cpath)
    assert not verify_consistency(older, size, heads[0].root_hash, heads[1].root_hash, cpath)


def test_every_event_is_logged_once_in_one_sequence(c: Container) -> None:
    _trail(c, 7)
    with c.engine.connect() as conn:
        events = conn.execute(text("SELECT count(*) FROM audit_events")).scalar()
        indices = [r[0] for r in conn.execute(text("SELECT log_index FROM audit_log ORDER BY 1"))]
    assert indices == list(range(int(events or 0)))
    assert c.audit_trail.integrate() == 0  # nothing left


def test_an_edited_event_is_caught(c: Container) -> None:
    _trail(c)
    seq, body = _entry(c, 4)
    forged = json.loads(body)
    forged["reason"] = "nothing happened here"
    as_attacker(c, "UPDATE audit_events SET body = :b WHERE seq = :s", b=json.dumps(forged), s=seq)
    findings = c.audit_trail.verify().findings
    assert ("edited-event", 4) in {(f.kind, f.index) for f in findings}
    assert "root-mismatch" in {f.kind for f in findings}


def test_a_deleted_event_is_caught(c: Container) -> None:
    _trail(c)
    seq, _ = _entry(c, 5)
    as_attacker(
        c,
        "DELETE FROM audit_log WHERE log_index = :i",
        "DELETE FROM audit_events WHERE seq = :s",
        i=5,
        s=seq,
    )
    assert {"missing-entry", "broken-chain", "root-mismatch"} <= _kinds(c)


def test_a_deleted_event_body_behind_its_log_entry_is_caught(c: Container) -> None:
    _trail(c)
    seq, _ = _entry(c, 2)
    as_attacker(c, "DELETE FROM audit_events WHERE seq = :s", s=seq)
    assert "deleted-event" in _kinds(c)


def _rewrite_log(c: Container, order: list[int]) -> None:
    """A careful attacker: rewrites the log to list the events ``order`` (by current
    index) and recomputes every leaf and chain hash, so only the signed heads are left
    to betray it."""
    with c.engine.connect() as conn:
        rows = list(
            conn.execute(
                text(
                    "SELECT l.log_index, e.seq, e.body FROM audit_log l "
                    "JOIN audit_events e ON e.seq = l.event_seq ORDER BY l.log_index"
                )
            )
        )
    chain = bytes(32)
    statements: list[tuple[str, dict[str, Any]]] = [("DELETE FROM audit_log", {})]
    for index, old in enumerate(order):
        seq, body = int(rows[old].seq), str(rows[old].body)
        leaf = event_leaf(body)
        chain = chain_hash(chain, leaf)
        statements.append(
            (
                "INSERT INTO audit_log (log_index, event_seq, leaf_hash, chain_hash) "
                "VALUES (:i, :s, :l, :c)",
                {"i": index, "s": seq, "l": leaf.hex(), "c": chain.hex()},
            )
        )
    attack(c, statements)


def test_reordered_events_are_caught_even_with_a_recomputed_chain(c: Container) -> None:
    _trail(c)
    order = list(range(c.audit_trail.tree_heads()[0].tree_size))
    order[6], order[7] = order[7], order[6]
    _rewrite_log(c, order)
    kinds = _kinds(c)
    assert "root-mismatch" in kinds
    assert "broken-chain" not in kinds  # the chain was recomputed: the heads catch it


def test_an_inserted_event_is_caught(c: Container) -> None:
    _trail(c)
    # A forged event slipped between entries 8 and 9, the log renumbered and rehashed.
    _, body = _entry(c, 8)
    forged = json.loads(body)
    forged["event_id"] = "evt_01JFORGEDFORGEDFORGEDFORGE"
    forged["reason"] = "approved by the CFO"
    attack(
        c,
        [
            (
                "INSERT INTO audit_events (event_id, time, type, agent_id, body) "
                "VALUES (:id, :t, :ty, NULL, :b)",
                {
                    "id": forged["event_id"],
                    "t": "2026-11-23 12:00:00",
                    "ty": forged["type"],
                    "b": json.dumps(forged),
                },
            )
        ],
    )
    with c.engine.connect() as conn:
        seq = conn.execute(
            text("SELECT seq FROM audit_events WHERE event_id = :id"), {"id": forged["event_id"]}
        ).scalar()
        seqs = [
            int(r[0])
            for r in conn.execute(text("SELECT event_seq FROM audit_log ORDER BY log_index"))
        ]
        bodies = {
            int(r.seq): str(r.body)
            for r in conn.execute(text("SELECT seq, body FROM audit_events"))
        }
    assert seq is not None
    seqs.insert(9, int(seq))
    chain = bytes(32)
    rewrite: list[tuple[str, dict[str, Any]]] = [("DELETE FROM audit_log", {})]
    for index, s in enumerate(seqs):
        leaf = event_leaf(bodies[s])
        chain = chain_hash(chain, leaf)
        rewrite.append(
            (
                "INSERT INTO audit_log (log_index, event_seq, leaf_hash, chain_hash) "
                "VALUES (:i, :s, :l, :c)",
                {"i": index, "s": s, "l": leaf.hex(), "c": chain.hex()},
            )
        )
    attack(c, rewrite)
    assert "root-mismatch" in _kinds(c)


def test_a_truncated_trail_is_caught(c: Container) -> None:
    _trail(c)
    with c.engine.connect() as conn:
        seqs = [
            int(r[0])
            for r in conn.execute(text("SELECT event_seq FROM audit_log WHERE log_index >= 15"))
        ]
    as_attacker(c, "DELETE FROM audit_log WHERE log_index >= 15")
    for s in seqs:
        as_attacker(c, "DELETE FROM audit_events WHERE seq = :s", s=s)
    report = c.audit_trail.verify()
    assert "truncated" in {f.kind for f in report.findings}
    assert report.entries == 15


def test_a_forged_tree_head_is_caught(c: Container) -> None:
    _trail(c)
    size = c.audit_trail.tree_heads()[0].tree_size
    as_attacker(
        c, "UPDATE audit_tree_heads SET root_hash = :r WHERE tree_size = :n", r="00" * 32, n=size
    )
    assert "bad-signature" in _kinds(c)


def test_offline_verification_of_an_export(c: Container) -> None:
    _trail(c)
    lines = list(c.audit_trail.export())
    jwks = {"keys": c.signing_keys.every_public_jwk()}
    assert verify_export(lines, issuer=ISSUER, jwks=jwks).ok
    # An edited event in the export file.
    item = json.loads(lines[3])
    item["event"]["reason"] = "rewritten"
    tampered = [*lines[:3], json.dumps(item), *lines[4:]]
    kinds = {f.kind for f in verify_export(tampered, issuer=ISSUER, jwks=jwks).findings}
    assert "edited-event" in kinds
    # A line dropped from the export.
    dropped = [*lines[:5], *lines[6:]]
    kinds = {f.kind for f in verify_export(dropped, issuer=ISSUER, jwks=jwks).findings}
    assert "missing-entry" in kinds
    # Heads checked against keys the verifier does not trust, or another issuer.
    report = verify_export(lines, issuer=ISSUER, jwks={"keys": []})
    assert {f.kind for f in report.findings} == {"bad-signature"}
    report = verify_export(lines, issuer="https://other.example", jwks=jwks)
    assert "bad-signature" in {f.kind for f in report.findings}


def test_a_witness_copy_of_a_head_catches_history_rewritten_with_its_heads(c: Container) -> None:
    """An attacker who truncates the trail and deletes the signed heads that would
    betray it is still caught by a head kept elsewhere."""
    _trail(c)
    held = c.audit_trail.tree_heads()[0]
    as_attacker(
        c,
        "DELETE FROM audit_tree_heads WHERE tree_size = :n",
        "DELETE FROM audit_log WHERE log_index >= 12",
        n=held.tree_size,
    )
    assert "truncated" not in _kinds(c)  # without the copy, nothing left to compare
    kinds = {f.kind for f in c.audit_trail.verify(held_head=held.signature).findings}
    assert "truncated" in kinds
    assert c.audit_trail.verify(held_head="not-a-jws").findings[0].kind == "bad-signature"


def test_a_late_event_below_the_lookback_is_logged_by_the_periodic_sweep(
    c: Container, clock: FakeClock
) -> None:
    """Passes look back a bounded number of sequence numbers; an event committed far
    below that (a very late transaction, a restore) is found by the sweep."""
    c.audit_trail.policy = replace(c.audit_trail.policy, lookback=5)
    _events(c, 20)
    c.audit_trail.integrate_all()  # the first pass of a process always sweeps
    _, body = _entry(c, 0)
    late = json.loads(body)
    late["event_id"] = "evt_01JLATELATELATELATELATELAT"
    attack(
        c,
        [
            (
                "INSERT INTO audit_events (seq, event_id, time, type, agent_id, body) "
                "VALUES (-1, :id, :t, :ty, NULL, :b)",
                {
                    "id": late["event_id"],
                    "t": "2026-11-23 12:00:00",
                    "ty": late["type"],
                    "b": json.dumps(late),
                },
            )
        ],
    )
    assert c.audit_trail.integrate_all() == 0  # within the sweep interval: not seen
    clock.advance(seconds=61)
    assert c.audit_trail.integrate_all() == 1
    assert c.audit_trail.verify().ok
