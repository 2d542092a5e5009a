"""Audit exporters on both stores: the runner delivers the trail in log order, at
least once, from a durable cursor that moves only after a delivery returned; failures
back off exponentially (capped) without holding up other exporters; health shows it;
and a new container on the same database resumes where the last one stopped.

The fake exporter stands for an external SIEM (the thing on the other side of the
network); the JSONL file sink is tested for real here and in
tests/unit/test_jsonl_exporter.py."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import text
from tests.conftest import FakeClock

from agentiam.adapters.exporters import SUPPORTED_TYPES, JsonlFileExporter, load_exporters
from agentiam.adapters.exporters.metrics import register_export_metrics
from agentiam.adapters.exporters.otel import OtelSpanExporter
from agentiam.adapters.exporters.syslog import SyslogExporter
from agentiam.adapters.exporters.webhook import WebhookExporter
from agentiam.adapters.storage.trail_repository import SqlTrail
from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.audit.formats import formatter
from agentiam.core.credentials.sealing import MasterKey
from agentiam.errors import InvalidInput
from agentiam.ports import UnitOfWork
from agentiam.services.audit_export import ExportPolicy, ExportRunner, redact
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman

CTX = CallContext.system("contract-test")


class FakeSiem:
    """Receives every batch (even those it then fails, as a SIEM that stored a batch
    but whose acknowledgement was lost); fails the first ``fail`` deliveries."""

    kind = "fake"

    def __init__(self, name: str, fail: int = 0) -> None:
        self.name = name
        self.fail = fail
        self.attempts = 0
        self.received: list[int] = []
        self.acked: list[int] = []
        self.events: list[dict[str, Any]] = []

    def deliver(self, batch: Sequence[tuple[int, dict[str, Any]]]) -> None:
        self.attempts += 1
        self.received.extend(i for i, _ in batch)
        if self.attempts <= self.fail:
            raise ConnectionError("siem down: https://user:hunter2@siem.example.com/in")
        self.acked.extend(i for i, _ in batch)
        self.events.extend(e for _, e in batch)


@pytest.fixture
def c(database_url: str, clock: FakeClock) -> Iterator[Container]:
    container = build(Settings(database_url=database_url), clock=clock)
    yield container
    container.close()


def _uow(c: Container) -> Any:
    def factory(*, read_only: bool = False) -> UnitOfWork:
        return SqlUnitOfWork(c.engine, read_only=read_only)

    return factory


def _events(c: Container, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        c.humans.create(CTX, NewHuman(display_name=f"H{i}", email=f"h{i}@example.com"))


def _size(c: Container) -> int:
    with SqlUnitOfWork(c.engine, read_only=True) as uow:
        return uow.trail.head()[0]


def _cursor(c: Container, name: str) -> int:
    with SqlUnitOfWork(c.engine, read_only=True) as uow:
        return uow.trail.cursor(name)


def test_delivers_in_log_order_and_only_integrated_entries(c: Container) -> None:
    siem = FakeSiem("siem")
    runner = ExportRunner(_uow(c), c.clock, [siem], policy=ExportPolicy(batch=3))
    _events(c, 7)
    assert runner.run_all() == 0  # nothing is in the trail yet
    c.audit_trail.integrate_all()
    size = _size(c)
    _events(c, 2, start=7)  # stored, not yet integrated: not delivered
    assert runner.run_all() == size
    assert siem.acked == list(range(size))
    assert _cursor(c, "siem") == size
    # each line is the event as stored: the one the trail's entry covers
    with SqlUnitOfWork(c.engine, read_only=True) as uow:
        stored = [json.loads(body) for _, body in uow.trail.entries(0, size)]
    assert siem.events == stored
    c.audit_trail.integrate_all()
    assert runner.run_all() == _size(c) - size
    assert siem.acked == list(range(_size(c)))
    [health] = runner.health()
    assert (health.position, health.lag, health.healthy) == (_size(c), 0, True)


def test_failure_keeps_the_cursor_backs_off_and_redelivers(c: Container, clock: FakeClock) -> None:
    siem = FakeSiem("siem", fail=3)
    other = FakeSiem("other")
    policy = ExportPolicy(batch=500, failing_for=timedelta(seconds=5))
    runner = ExportRunner(_uow(c), c.clock, [siem, other], policy=policy)
    _events(c, 4)
    c.audit_trail.integrate_all()
    size = _size(c)

    runner.run_all()
    assert _cursor(c, "siem") == 0  # not advanced: the delivery raised
    assert other.acked == list(range(size))  # the healthy exporter is not held up
    [h, o] = runner.health()
    assert h.consecutive_failures == 1
    assert h.retry_at == clock.current + timedelta(seconds=1)
    assert h.lag == size
    assert h.healthy
    assert h.last_error is not None
    assert "hunter2" not in h.last_error
    assert "ConnectionError" in h.last_error
    assert o.healthy
    assert o.lag == 0

    runner.run_all()  # within the backoff: no attempt
    assert siem.attempts == 1
    for expected in (1, 2, 4):  # each retry waits twice as long as the last
        clock.advance(seconds=expected - 0.001)
        runner.run_all()
        before = siem.attempts
        clock.advance(seconds=0.001)
        runner.run_all()
        assert siem.attempts == before + 1
    # the third retry (fourth attempt) succeeded: at least once, nothing skipped
    assert siem.acked == list(range(size))
    assert siem.received == list(range(size)) * 4
    assert _cursor(c, "siem") == size
    [h, _] = runner.health()
    assert h.consecutive_failures == 0
    assert h.last_error is None
    assert h.retry_at is None
    assert h.last_success_at == clock.current
    assert h.healthy
    assert h.lag == 0


def test_backoff_is_capped_and_long_failure_is_unhealthy(c: Container, clock: FakeClock) -> None:
    siem = FakeSiem("siem", fail=10**6)
    runner = ExportRunner(
        _uow(c), c.clock, [siem], policy=ExportPolicy(failing_for=timedelta(seconds=30))
    )
    assert [runner.backoff(n).total_seconds() for n in range(1, 10)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        60,
        60,
        60,
    ]
    assert runner.backoff(10**6) == timedelta(seconds=60)
    _events(c, 1)
    c.audit_trail.integrate_all()
    runner.run_all()
    clock.advance(seconds=31)
    runner.run_all()
    [h] = runner.health()
    assert h.consecutive_failures == 2
    assert not h.healthy
    with c.engine.connect() as conn:
        row = conn.execute(
            text("SELECT position, failures, last_error FROM audit_export_cursors")
        ).one()
    assert row.position == 0
    assert row.failures == 2
    assert "hunter2" not in row.last_error


def test_lag_over_the_bound_is_unhealthy(c: Container) -> None:
    siem = FakeSiem("siem")
    runner = ExportRunner(_uow(c), c.clock, [siem], policy=ExportPolicy(max_lag=2))
    _events(c, 3)
    c.audit_trail.integrate_all()
    [h] = runner.health()
    assert h.lag == _size(c) > 2
    assert not h.healthy
    runner.run_all()
    assert runner.health()[0].healthy


def test_a_new_container_resumes_from_the_durable_cursor(
    database_url: str, clock: FakeClock, tmp_path: Path
) -> None:
    out = tmp_path / "audit.jsonl"
    config = tmp_path / "exporters.yaml"
    config.write_text(f"- {{name: siem-file, type: jsonl, path: {out}, keep: 2}}\n")
    settings = Settings(database_url=database_url, audit_exporters_file=str(config))

    first = build(settings, clock=clock)
    _events(first, 5)
    first.audit_trail.integrate_all()
    assert first.audit_export.run_all() == _size(first)
    delivered = _size(first)
    _events(first, 3, start=5)  # written (and logged at close) but not exported
    first.close()

    second = build(settings, clock=clock)
    try:
        _events(second, 2, start=8)
        second.audit_trail.integrate_all()
        assert second.audit_export.run_all() == _size(second) - delivered
        indices = [json.loads(line)["log_index"] for line in out.read_text().splitlines()]
        assert indices == list(range(_size(second)))  # none skipped, none twice
        [h] = second.audit_export.health()
        assert h.position == _size(second)
        assert h.lag == 0
        assert h.type == "jsonl"
    finally:
        second.close()


def test_a_stored_body_that_does_not_decode_is_a_recorded_failure(
    c: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding the stored events is part of the attempt: a body that does not decode
    shows in health and backs off like any other failure (it escaped the runner)."""
    siem = FakeSiem("siem")
    runner = ExportRunner(_uow(c), c.clock, [siem])
    _events(c, 3)
    c.audit_trail.integrate_all()
    real = SqlTrail.entries

    def corrupt(self: SqlTrail, start: int, limit: int) -> list[Any]:
        return [(e, "{not json" if e.index == 1 else b) for e, b in real(self, start, limit)]

    monkeypatch.setattr(SqlTrail, "entries", corrupt)
    assert runner.run_all() == 0
    [h] = runner.health()
    assert h.consecutive_failures == 1
    assert h.last_error is not None
    assert h.last_error.startswith("JSONDecodeError")
    assert h.retry_at == clock.current + timedelta(seconds=1)
    assert siem.attempts == 0
    assert _cursor(c, "siem") == 0
    with c.engine.connect() as conn:
        assert conn.execute(text("SELECT failures FROM audit_export_cursors")).scalar() == 1


class TruncatingSiem(FakeSiem):
    truncated = 3  # entries it sent cut short, as syslog and webhook count them


def test_health_shows_what_an_exporter_truncated(c: Container) -> None:
    siem = TruncatingSiem("siem")
    plain = FakeSiem("plain")
    runner = ExportRunner(_uow(c), c.clock, [siem, plain])
    registry = CollectorRegistry()
    register_export_metrics(registry, runner)
    s, p = runner.health()
    assert (s.truncated, s.to_dict()["truncated"], p.truncated) == (3, 3, 0)
    metrics = generate_latest(registry).decode()
    assert 'agentiam_audit_exporter_truncated_entries_total{exporter="siem"} 3.0' in metrics


@pytest.mark.parametrize(
    ("message", "secret"),
    [
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi"),
        ("GET https://siem/in?access_token=AT-12345&x=1", "AT-12345"),
        ('{"x-splunk-token":"Splunk 8f2a-77c1"}', "8f2a-77c1"),
        ("{'X-Api-Key': 'ApiKey K-4242'}", "K-4242"),
        ("client_secret=CS_77; session=SESS_88", "CS_77"),
        ("client_secret=CS_77; session=SESS_88", "SESS_88"),
        ("Cookie: sid=C-1; theme=C-2\nnext", "C-2"),
        ("api key: AK-9 was refused", "AK-9"),
        ("x_api_key=XK-1", "XK-1"),
        ("X-Auth-Token:XT-1", "XT-1"),
        ("the upstream said: Bearer opaque-T0K3N", "opaque-T0K3N"),
        ('Proxy-Authorization: Digest username="u", response="R-55"', "R-55"),
        ('{"refresh_token": "RT\\"-esc-ape"}', "esc-ape"),
        ('cut short {"id_token": "IT-never-closed', "IT-never-closed"),
        ("https://user:PW-3@siem.example.com/in", "PW-3"),
        ("PASSWORD = hunter2", "hunter2"),
        ("credentials: CR-1", "CR-1"),
        ('escaped {\\"auth_token\\": \\"AT-esc\\"}', "AT-esc"),
        ('b\'{"api_key": "K-in-bytes"}\'', "K-in-bytes"),
    ],
)
def test_redact_consumes_the_scheme_and_the_credential(message: str, secret: str) -> None:
    text_ = redact(RuntimeError(message))
    assert secret not in text_
    assert "***" in text_


def test_redact_keeps_what_is_not_a_credential() -> None:
    message = "HTTP 401 Unauthorized (webhook-id agentiam-0123456789ab-4-9) token.issued"
    assert redact(RuntimeError(message)) == f"RuntimeError: {message}"
    assert redact(RuntimeError("Authorization: Bearer X1, retrying")) == (
        "RuntimeError: Authorization: ***, retrying"
    )
    assert len(redact(RuntimeError("token=" + "a" * 10_000))) <= 300


@pytest.fixture
def pruning(database_url: str, clock: FakeClock, tmp_path: Path) -> Iterator[Container]:
    settings = Settings(
        database_url=database_url,
        issuer="https://as.example.com",
        master_key=MasterKey.generate_text(),
        audit_archive_dir=str(tmp_path / "archive"),
    )
    container = build(settings, clock=clock)
    yield container
    container.close()


def _signed(c: Container, n: int, start: int) -> None:
    _events(c, n, start)
    c.audit_trail.integrate_all()
    assert c.audit_trail.sign_head(force=True) is not None


def test_entries_pruned_before_delivery_are_counted_as_skipped(
    pruning: Container, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Retention pruned entries an exporter had not delivered (its cursor row was
    deleted, as docs/audit.md says to do for an exporter removed for good, while it
    still ran): the gap is counted once in health and /metrics, logged once, and
    delivery goes on from the first entry left. An exporter that never ran is not
    short of anything."""
    c = pruning
    assert c.audit_retention is not None
    siem = FakeSiem("siem")
    late = FakeSiem("late", fail=1)  # read the trail from 0, failed, delivered nothing
    runner = ExportRunner(_uow(c), c.clock, [siem, late])
    _signed(c, 10, 0)
    runner.run_all()
    delivered = _cursor(c, "siem")
    assert delivered == _size(c)
    assert late.received[0] == 0
    _signed(c, 10, 10)  # the SIEM lags: these are not delivered
    clock.advance(days=10)
    _signed(c, 5, 20)
    with c.engine.begin() as conn:  # the operator unblocks retention
        conn.execute(text("DELETE FROM audit_export_cursors"))
    checkpoint = c.audit_retention.prune(CTX, clock.now() - timedelta(days=5))
    assert checkpoint is not None
    k = checkpoint.tree_size
    assert k > delivered
    # siem's delivery in flight writes its cursor back; then its process restarts
    with SqlUnitOfWork(c.engine) as uow:
        uow.trail.advance("siem", delivered, clock.now())
        uow.commit()
    siem = FakeSiem("siem", fail=1)  # and the first attempt after the restart fails
    fresh = FakeSiem("fresh")
    restarted = ExportRunner(_uow(c), c.clock, [siem, fresh])
    registry = CollectorRegistry()
    register_export_metrics(registry, restarted)

    clock.advance(seconds=2)
    with caplog.at_level(logging.WARNING, logger="agentiam.audit"):
        restarted.run_all()
        runner.run("late")  # no cursor row any more; this process saw entry 0
        clock.advance(seconds=2)
        restarted.run_all()  # the retry meets the same gap: not counted again
    size = _size(c)
    assert siem.received[0] == k
    assert siem.acked == list(range(k, size))
    assert late.acked == list(range(k, size))
    assert fresh.acked == list(range(k, size))
    s, f = restarted.health()
    assert (s.skipped, s.to_dict()["skipped"]) == (k - delivered, k - delivered)
    assert s.position == size
    assert s.healthy
    assert f.skipped == 0
    assert runner.health()[1].skipped == k
    gaps = [r.getMessage() for r in caplog.records if "pruned by retention" in r.getMessage()]
    assert len(gaps) == 2
    assert f"{k - delivered} skipped, delivering on from {k}" in gaps[0]
    metrics = generate_latest(registry).decode()
    assert (
        f'agentiam_audit_exporter_skipped_entries_total{{exporter="siem"}} {k - delivered}.0'
        in metrics
    )
    assert 'agentiam_audit_exporter_skipped_entries_total{exporter="fresh"} 0.0' in metrics

    # later deliveries go on normally
    _signed(c, 3, 25)
    restarted.run_all()
    assert siem.acked == list(range(k, _size(c)))
    assert restarted.health()[0].skipped == k - delivered


def test_bad_exporter_config_is_refused(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "exporters.yaml"
    config.write_text("- {name: x, type: splunk}\n")
    with pytest.raises(InvalidInput, match="supported: jsonl, otel, syslog, webhook"):
        build(Settings(database_url=database_url, audit_exporters_file=str(config)))


HOOK_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
EVERY_TYPE = """\
- name: siem-syslog
  type: syslog
  transport: tls
  host: logs.example.com
  format: cef
- name: siem-hook
  type: webhook
  url: https://hooks.example.com/agentiam
  secret_env: AGENTIAM_TEST_HOOK_SECRET
  format: ocsf
- name: traces
  type: otel
  endpoint: https://collector.example.com:4318/v1/traces
  timeout: 5
- name: archive
  type: jsonl
  path: {path}
  format: ocsf
"""


@pytest.fixture
def every_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """An exporters file with one exporter of each type, decoded."""
    monkeypatch.setenv("AGENTIAM_TEST_HOOK_SECRET", HOOK_SECRET)
    definitions = yaml.safe_load(EVERY_TYPE.format(path=tmp_path / "audit.jsonl"))
    assert isinstance(definitions, list)
    assert sorted(entry["type"] for entry in definitions) == list(SUPPORTED_TYPES)
    return definitions


def _close(exporters: Sequence[Any]) -> None:
    for exporter in exporters:
        getattr(exporter, "close", lambda: None)()


def test_one_exporter_of_each_type_loads(
    every_type: list[dict[str, Any]], database_url: str, tmp_path: Path
) -> None:
    exporters = load_exporters(every_type)
    try:
        assert [(e.name, e.kind) for e in exporters] == [
            ("siem-syslog", "syslog"),
            ("siem-hook", "webhook"),
            ("traces", "otel"),
            ("archive", "jsonl"),
        ]
        syslog, hook, spans, archive = exporters
        assert isinstance(syslog, SyslogExporter)
        assert (syslog.transport, syslog.format_name) == ("tls", "cef")
        assert isinstance(hook, WebhookExporter)
        assert hook.format == "ocsf"
        assert isinstance(spans, OtelSpanExporter)
        assert isinstance(archive, JsonlFileExporter)
        assert archive.formatter is formatter("ocsf")
        event = {"event_id": "evt_1", "type": "human.created", "outcome": "success"}
        archive.deliver([(0, event)])
        assert (tmp_path / "audit.jsonl").read_text() == formatter("ocsf")(0, event) + "\n"
    finally:
        _close(exporters)
    # and so does the service, which lists each one in its health
    config = tmp_path / "exporters.yaml"
    config.write_text(yaml.safe_dump(every_type))
    container = build(Settings(database_url=database_url, audit_exporters_file=str(config)))
    try:
        assert [(h.name, h.type) for h in container.audit_export.health()] == [
            ("siem-syslog", "syslog"),
            ("siem-hook", "webhook"),
            ("traces", "otel"),
            ("archive", "jsonl"),
        ]
    finally:
        container.close()


@pytest.mark.parametrize("index", range(4), ids=["syslog", "webhook", "otel", "jsonl"])
def test_unknown_keys_and_bad_formats_are_refused_naming_exporter_and_key(
    every_type: list[dict[str, Any]], index: int
) -> None:
    entry = every_type[index]
    name, kind = entry["name"], entry["type"]
    with pytest.raises(
        ValueError, match=rf"^exporter '{name}': unknown keys colour; {kind} takes "
    ):
        load_exporters([{**entry, "colour": "blue"}])
    bad_format = {**entry, "format": "xml"}
    if kind == "otel":  # spans are its only format: it takes no format key at all
        message = rf"^exporter '{name}': unknown keys format; otel takes "
    else:
        message = rf"^exporter '{name}': format: unknown format 'xml'; supported: cef, "
    with pytest.raises(ValueError, match=message):
        load_exporters([bad_format])
    if kind != "otel":
        with pytest.raises(ValueError, match=rf"^exporter '{name}': format must be one of cef"):
            load_exporters([{**entry, "format": ["native"]}])
