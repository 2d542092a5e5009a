"""Two replicas, as two real processes, write events to one PostgreSQL database and
integrate the trail at the same time: the result is one verifiable sequence, every
event logged exactly once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import text
from tests.conftest import _empty_postgres

from agentiam.bootstrap import build
from agentiam.config import Settings
from agentiam.core.credentials.sealing import MasterKey
from agentiam.services.context import CallContext

pytestmark = pytest.mark.e2e

ISSUER = "https://as.example.com"
EVENTS_PER_REPLICA = 300

REPLICA = textwrap.dedent(
    """
    import sys
    from agentiam.bootstrap import build
    from agentiam.config import Settings
    from agentiam.core.audit.events import Outcome
    from agentiam.services.context import CallContext

    url, master, name = sys.argv[1], sys.argv[2], sys.argv[3]
    c = build(Settings(database_url=url, issuer="https://as.example.com", master_key=master))
    ctx = CallContext.system(name)
    for i in range(int(sys.argv[4])):
        c.audit.record(ctx, type="test.event", action=f"{name}-{i}", outcome=Outcome.SUCCESS)
        if i % 7 == 0:
            c.audit_trail.integrate()
        if i % 50 == 0:
            c.audit_trail.sign_head(force=True)
    c.audit_trail.integrate_all()
    c.close()
    """
)


@pytest.fixture
def pg_url(postgres_database: str) -> str:
    _empty_postgres(postgres_database)
    return postgres_database


def test_two_replicas_form_one_verifiable_sequence(pg_url: str) -> None:
    master = MasterKey.generate_text()
    settings = Settings(database_url=pg_url, issuer=ISSUER, master_key=master)
    c = build(settings)
    try:
        c.signing_keys.ensure_key(CallContext.system("test"))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", REPLICA, pg_url, master, name, str(EVENTS_PER_REPLICA)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name in ("replica-a", "replica-b")
        ]
        for proc in procs:
            output, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, output
        c.audit_trail.integrate_all()
        c.audit_trail.sign_head(force=True)
        report = c.audit_trail.verify()
        assert report.ok, report.findings
        with c.engine.connect() as conn:
            events = conn.execute(text("SELECT count(*) FROM audit_events")).scalar()
            indices = [
                int(r[0]) for r in conn.execute(text("SELECT log_index FROM audit_log ORDER BY 1"))
            ]
            logged = conn.execute(text("SELECT count(DISTINCT event_seq) FROM audit_log")).scalar()
            mine = conn.execute(
                text("SELECT count(*) FROM audit_events WHERE type = 'test.event'")
            ).scalar()
            heads = conn.execute(text("SELECT count(*) FROM audit_tree_heads")).scalar()
        assert mine == 2 * EVENTS_PER_REPLICA
        assert indices == list(range(int(events or 0)))  # one gap-free sequence
        assert logged == events  # every event exactly once
        assert report.entries == events
        assert int(heads or 0) > 2  # both replicas signed heads along the way
        assert report.heads_verified == heads
    finally:
        c.close()
