"""Retention on both stores: the oldest entries are archived, a signed checkpoint is
recorded, and they are pruned; what remains still verifies and proves, the archive
verifies on its own, the database refuses any other delete, and tampering with the
checkpoint is caught."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from tests.conftest import FakeClock
from tests.contract.test_audit_trail import as_attacker

from agentiam.adapters.archive import ArchiveConflict, DirectoryArchive
from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.audit.merkle import compact_range_keys, verify_consistency, verify_inclusion
from agentiam.core.audit.verification import verify_export
from agentiam.core.credentials.sealing import MasterKey
from agentiam.errors import InvalidInput, NotFound
from agentiam.ports import AuditQuery
from agentiam.services.audit_retention import (
    ArchiveIncomplete,
    AuditRetention,
    RetentionPolicy,
)
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman

CTX = CallContext.system("contract-test")
ISSUER = "https://as.example.com"


@pytest.fixture
def c(database_url: str, clock: FakeClock, tmp_path: Path) -> Iterator[Container]:
    settings = Settings(
        database_url=database_url,
        issuer=ISSUER,
        master_key=MasterKey.generate_text(),
        audit_archive_dir=str(tmp_path / "archive"),
    )
    container = build(settings, clock=clock)
    yield container
    container.close()


def _retention(c: Container) -> AuditRetention:
    assert c.audit_retention is not None
    return c.audit_retention


def _events(c: Container, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        c.humans.create(CTX, NewHuman(display_name=f"H{i}", email=f"h{i}@example.com"))
    c.audit_trail.integrate_all()
    assert c.audit_trail.sign_head(force=True) is not None


def _old_then_new(c: Container, clock: FakeClock, old: int = 30, new: int = 20) -> int:
    """``old`` events, ten days pass, ``new`` events; returns the old entries' count."""
    _events(c, old)
    c.audit_trail.integrate_all()  # the signing key's creation, on the first head
    k = _scalar(c, "SELECT count(*) FROM audit_log")
    clock.advance(days=10)
    _events(c, new, start=old)
    return k


def _scalar(c: Container, sql: str) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


def _jwks(c: Container) -> dict[str, object]:
    return {"keys": c.signing_keys.every_public_jwk()}


def test_prune_archives_checkpoints_and_what_remains_still_verifies_and_proves(
    c: Container, clock: FakeClock, tmp_path: Path
) -> None:
    k = _old_then_new(c, clock)
    total = _scalar(c, "SELECT count(*) FROM audit_log")
    with c.engine.connect() as conn:
        old_event = json.loads(
            conn.execute(text("SELECT body FROM audit_events ORDER BY seq LIMIT 1")).scalar_one()
        )["event_id"]
    checkpoint = _retention(c).prune(CTX, clock.now() - timedelta(days=5))
    assert checkpoint is not None
    assert checkpoint.tree_size == k

    # The rows before the checkpoint are gone; the head at k stays, earlier ones go.
    assert _scalar(c, "SELECT min(log_index) FROM audit_log") == k
    assert _scalar(c, "SELECT count(*) FROM audit_log") == total - k
    assert _scalar(c, "SELECT min(tree_size) FROM audit_tree_heads") == k
    assert _scalar(c, "SELECT count(*) FROM audit_tree_nodes WHERE level = 0") == total - k + (
        k & 1
    )
    with pytest.raises(NotFound):
        c.audit_trail.inclusion(old_event)

    report = c.audit_trail.verify()
    assert report.ok, report.findings
    # The prune itself is audited (a new event, logged after the checkpoint).
    c.audit_trail.integrate_all()
    assert c.audit_trail.sign_head(force=True) is not None
    assert report.entries == total - k
    pruned = c.audit.find(AuditQuery(limit=10, type="audit.pruned")).items
    assert pruned
    assert pruned[-1].details["tree_size"] == k

    # Every remaining event still has an inclusion proof, against the latest head.
    latest = c.audit_trail.tree_heads()[0]
    with c.engine.connect() as conn:
        bodies = conn.execute(
            text(
                "SELECT e.body FROM audit_log l JOIN audit_events e ON e.seq = l.event_seq "
                "ORDER BY l.log_index"
            )
        ).scalars()
        ids = [json.loads(b)["event_id"] for b in bodies]
    for event_id in (ids[0], ids[len(ids) // 2], ids[-1]):
        proof = c.audit_trail.inclusion(event_id)
        assert verify_inclusion(
            bytes.fromhex(proof["leaf_hash"]),
            proof["leaf_index"],
            latest.tree_size,
            [bytes.fromhex(p) for p in proof["audit_path"]],
            latest.root_hash,
        )
    # ... and the checkpoint is consistent with the latest head.
    proof = c.audit_trail.consistency(k, latest.tree_size)
    assert verify_consistency(
        k,
        latest.tree_size,
        checkpoint.head.root_hash,
        latest.root_hash,
        [bytes.fromhex(p) for p in proof["consistency_path"]],
    )

    # The export starts at the checkpoint and verifies offline.
    export = list(c.audit_trail.export())
    assert "checkpoint" in json.loads(export[1])
    assert verify_export(export, issuer=ISSUER, jwks=_jwks(c)).ok

    # The archive verifies on its own, holds every pruned entry, and matches its digest.
    name, digest = str(checkpoint.archive).split(" sha256:")
    archive = (tmp_path / "archive" / name).read_bytes()
    assert hashlib.sha256(archive).hexdigest() == digest
    lines = archive.decode().splitlines()
    archived = verify_export(lines, issuer=ISSUER, jwks=_jwks(c))
    assert archived.ok, archived.findings
    assert archived.entries == k
    assert archived.heads_verified >= 2
    assert old_event in archive.decode()


def test_archives_chain_from_checkpoint_to_checkpoint(
    c: Container, clock: FakeClock, tmp_path: Path
) -> None:
    first = _old_then_new(c, clock, old=12, new=9)
    cp1 = _retention(c).prune(CTX, clock.now() - timedelta(days=5))
    assert cp1 is not None
    assert cp1.tree_size == first
    c.audit_trail.integrate_all()
    second = c.audit_trail.tree_heads()[0].tree_size
    clock.advance(days=10)
    _events(c, 5, start=100)
    cp2 = _retention(c).prune(CTX, clock.now() - timedelta(days=5))
    assert cp2 is not None
    assert cp2.tree_size > second - 1
    name = str(cp2.archive).split(" ")[0]
    lines = (tmp_path / "archive" / name).read_text().splitlines()
    assert json.loads(lines[1])["checkpoint"]["tree_head"] == cp1.head.signature
    report = verify_export(lines, issuer=ISSUER, jwks=_jwks(c))
    assert report.ok, report.findings
    assert report.entries == cp2.tree_size - cp1.tree_size
    assert c.audit_trail.verify().ok
    assert [cp.tree_size for cp in c.audit_trail.checkpoints()] == [cp2.tree_size, first]
    # Nothing left to prune: a further pass does nothing.
    assert _retention(c).prune(CTX, clock.now() - timedelta(days=5)) is None


def test_an_exporter_behind_holds_the_prune_back(c: Container, clock: FakeClock) -> None:
    _old_then_new(c, clock)
    retention = AuditRetention(
        c.audit_trail,
        _uow(c),
        clock,
        archive=_archive(c),
        exporters=["siem"],
    )
    with c.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_export_cursors (name, position, updated_at, failures) "
                "VALUES ('siem', 7, :t, 0)"
            ),
            {"t": clock.now()},
        )
    plan = retention.plan(clock.now() - timedelta(days=5))
    assert (plan.start, plan.end) == (0, 7)
    assert "siem" in str(plan.held_back_by)
    checkpoint = retention.prune(CTX, clock.now() - timedelta(days=5))
    assert checkpoint is not None
    assert checkpoint.tree_size == 7
    assert c.audit_trail.verify().ok
    # A batch bound splits the rest into several checkpoints.
    with c.engine.begin() as conn:
        conn.execute(text("UPDATE audit_export_cursors SET position = 1000"))
    assert retention.plan(clock.now() - timedelta(days=5), batch=4).end == 11


def _uow(c: Container) -> object:
    from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork

    def factory(*, read_only: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(c.engine, read_only=read_only)

    return factory


def _archive(c: Container) -> object:
    from agentiam.adapters.archive import DirectoryArchive

    assert c.settings.audit_archive_dir
    return DirectoryArchive(c.settings.audit_archive_dir)


def test_the_database_refuses_deletes_the_checkpoint_does_not_cover(
    c: Container, clock: FakeClock
) -> None:
    """Not as an attacker with the guards off: as the service's own account."""
    k = _old_then_new(c, clock)

    def refused(sql: str, **params: int) -> None:
        with pytest.raises(DBAPIError), c.engine.begin() as conn:
            conn.execute(text(sql), params)

    refused("DELETE FROM audit_log WHERE log_index = 0")  # no checkpoint yet
    refused("DELETE FROM audit_tree_nodes WHERE level = 0 AND node_index = 0")
    refused("DELETE FROM audit_tree_heads")
    assert _retention(c).prune(CTX, clock.now() - timedelta(days=5)) is not None
    refused("DELETE FROM audit_log WHERE log_index = :k", k=k)
    refused("DELETE FROM audit_tree_heads WHERE tree_size = :k", k=k)
    refused("UPDATE audit_log SET chain_hash = leaf_hash WHERE log_index = :k", k=k)
    refused("DELETE FROM audit_checkpoints")
    refused("UPDATE audit_checkpoints SET compact_range = '[]'")
    refused(
        "DELETE FROM audit_events WHERE seq = (SELECT event_seq FROM audit_log "
        "WHERE log_index = :k)",
        k=k,
    )
    refused("DELETE FROM audit_tree_nodes WHERE level = 0 AND node_index = :k", k=k)
    assert c.audit_trail.verify().ok


def test_a_tampered_or_removed_checkpoint_is_caught(c: Container, clock: FakeClock) -> None:
    k = _old_then_new(c, clock)
    checkpoint = _retention(c).prune(CTX, clock.now() - timedelta(days=5))
    assert checkpoint is not None
    # A forged compact range (an attacker hiding what came before).
    bogus = json.dumps(["00" * 32] * len(checkpoint.compact_range))
    as_attacker(c, "UPDATE audit_checkpoints SET compact_range = :r", r=bogus)
    assert "bad-checkpoint" in {f.kind for f in c.audit_trail.verify().findings}
    as_attacker(
        c,
        "UPDATE audit_checkpoints SET compact_range = :r",
        r=json.dumps([h.hex() for h in checkpoint.compact_range]),
    )
    assert c.audit_trail.verify().ok
    # The checkpoint removed: the trail now visibly starts in the middle.
    as_attacker(c, "DELETE FROM audit_checkpoints")
    kinds = {f.kind for f in c.audit_trail.verify().findings}
    assert "missing-entry" in kinds
    assert k > 0


def test_a_held_head_older_than_the_checkpoint_is_reported(c: Container, clock: FakeClock) -> None:
    _events(c, 5)
    old_head = c.audit_trail.tree_heads()[0]
    _events(c, 5, start=5)
    clock.advance(days=10)
    _events(c, 5, start=10)
    assert _retention(c).prune(CTX, clock.now() - timedelta(days=5)) is not None
    report = c.audit_trail.verify(held_head=old_head.signature)
    assert [f.kind for f in report.findings] == ["pruned"]


def test_the_background_pass_and_settings(c: Container, clock: FakeClock) -> None:
    k = _old_then_new(c, clock)
    assert _retention(c).run(CTX, RetentionPolicy(keep=timedelta(days=5))) == 1
    assert c.audit_trail.checkpoint() is not None
    assert c.audit_trail.checkpoint().tree_size == k  # type: ignore[union-attr]
    with pytest.raises(InvalidInput, match="audit_archive_dir"):
        Settings(audit_retention_days=30).check()
    with pytest.raises(InvalidInput, match="absolute"):
        Settings(audit_retention_days=30, audit_archive_dir="relative/dir").check()


def test_a_trail_pruned_to_its_end_goes_on_from_the_checkpoint(
    c: Container, clock: FakeClock
) -> None:
    """Everything pruned: the next events continue the log after the checkpoint (not
    from index 0), and the whole trail verifies."""
    _events(c, 9)
    c.audit_trail.integrate_all()
    size = _scalar(c, "SELECT count(*) FROM audit_log")
    checkpoint = _retention(c).prune(CTX, clock.now() + timedelta(seconds=1))
    assert checkpoint is not None
    assert checkpoint.tree_size == size
    assert _scalar(c, "SELECT count(*) FROM audit_log") == 0
    _events(c, 3, start=50)
    assert _scalar(c, "SELECT min(log_index) FROM audit_log") == size
    report = c.audit_trail.verify()
    assert report.ok, report.findings
    assert report.heads_verified >= 1


def test_an_ordinary_tree_head_cannot_pass_for_a_checkpoint(c: Container, clock: FakeClock) -> None:
    """With the service's own login (guards on), an attacker copies a signed tree head
    and its compact range into audit_checkpoints, which the database then lets them
    prune below. Verification refuses it: a checkpoint is a JWS of its own type."""
    _events(c, 12)
    head = c.audit_trail.tree_heads()[0]
    with c.engine.connect() as conn:
        hashes = [
            conn.execute(
                text("SELECT hash FROM audit_tree_nodes WHERE level = :l AND node_index = :i"),
                {"l": level, "i": index},
            ).scalar_one()
            for level, index in compact_range_keys(head.tree_size)
        ]
    with c.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_checkpoints (tree_size, root_hash, chain_hash, signed_at, "
                "signature, compact_range, max_event_seq, archive, created_at) VALUES "
                "(:n, :r, :ch, :t, :sig, :cr, 1000000, NULL, :t)"
            ),
            {
                "n": head.tree_size,
                "r": head.root_hash.hex(),
                "ch": head.chain_hash.hex(),
                "t": clock.now(),
                "sig": head.signature,
                "cr": json.dumps(hashes),
            },
        )
        conn.execute(
            text("DELETE FROM audit_tree_heads WHERE tree_size < :n"), {"n": head.tree_size}
        )
        conn.execute(text("DELETE FROM audit_log WHERE log_index < :n"), {"n": head.tree_size})
    kinds = {f.kind for f in c.audit_trail.verify().findings}
    assert "bad-checkpoint" in kinds


def test_another_replicas_exporter_holds_the_prune_back(c: Container, clock: FakeClock) -> None:
    """A cursor row this process does not configure (another replica's exporter, or
    one run without the exporters file) still bounds the prune."""
    _old_then_new(c, clock)
    with c.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_export_cursors (name, position, updated_at, failures) "
                "VALUES ('elsewhere', 5, :t, 0)"
            ),
            {"t": clock.now()},
        )
    plan = _retention(c).plan(clock.now() - timedelta(days=5))
    assert plan.end == 5
    assert "elsewhere" in str(plan.held_back_by)


def test_an_archive_is_never_overwritten_or_kept_incomplete(tmp_path: Path) -> None:
    archive = DirectoryArchive(tmp_path / "a")
    first = archive.write("audit-1.jsonl", ["one", "two"])
    assert archive.write("audit-1.jsonl", ["one", "two"]) == first  # same content: fine
    with pytest.raises(ArchiveConflict):
        archive.write("audit-1.jsonl", ["other"])
    assert (tmp_path / "a" / "audit-1.jsonl").read_text() == "one\ntwo\n"

    def broken() -> Iterator[str]:
        yield "partial"
        raise ArchiveIncomplete("cut short")

    with pytest.raises(ArchiveIncomplete):
        archive.write("audit-2.jsonl", broken())
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["audit-1.jsonl"]
