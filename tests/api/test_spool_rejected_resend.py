"""A gateway's rejected.jsonl against a live control plane (task h2): a key bound to
the wrong enforcement point gets every event refused (403 naming it); the file stops
at its bound and the spool then refuses every call, losing nothing; once the key is
fixed, ``agentiam gateway spool rejected resend`` sends the set-aside events through
the gateway's own shipper (what is refused again stays), and ``discard`` deletes them
only once the trail holds a record of who discarded which events. Before, the file
grew without a bound and no command could send it again or discard it.

Real spool, real shipper, real control plane (SQLite), the CLI in process
(typer's CliRunner)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.api.oauth_support import OAuthLive, oauth_live
from typer.testing import CliRunner

from agentiam.adapters.gateway.config import load_gateway_config
from agentiam.adapters.gateway.runtime import DISCARD_ACTION, GatewayRuntime, _Shipper
from agentiam.adapters.gateway.spool import REJECTED_FILE, AuditSpool, SpoolFull
from agentiam.cli.main import app
from agentiam.core.access.admin_keys import Role
from agentiam.core.audit.events import Actor, ActorType, AuditEvent, ResourceRef, TraceContext
from agentiam.ports import AuditQuery
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
SOURCE = "gateway/edge-1"
KEY_ENV = "AGENTIAM_TEST_SPOOL_GATEWAY_KEY"
ALICE, BOB = "agt_01JF0000000000000000000000", "agt_01JF0000000000000000000001"
BODY = "argument-value-not-for-listing"
FAST: dict[str, Any] = {"backoff_initial": 0.1, "backoff_max": 0.3}


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with oauth_live(sqlite_url) as running:
        yield running


def _key(live: OAuthLive, *, sources: list[str], agents: list[str] | None = None) -> str:
    return live.container.admin_keys.create(
        CTX, name="gw", role=Role.VERIFIER, sources=sources, agents=agents or []
    ).secret


def _event(agent: str = ALICE) -> dict[str, Any]:
    return AuditEvent.create(
        type="authz.decision",
        actor=Actor(ActorType.AGENT, agent),
        action="invoke_tool",
        source=SOURCE,
        trace=TraceContext.new(),
        now=datetime.now(UTC),
        resource=ResourceRef("Tool", "transfer"),
        agent_id=agent,
        details={"decision": "allow", "arguments": {"note": BODY}},
    ).to_dict()


def _config_file(tmp_path: Path, live: OAuthLive, **spool: Any) -> Path:
    path = tmp_path / "gateway.json"
    path.write_text(
        json.dumps(
            {
                "name": "edge-1",
                "public_url": "http://127.0.0.1:8443",
                "control_plane": {"url": live.url, "key_env": KEY_ENV},
                "spool": {"directory": str(tmp_path / "spool"), **spool},
                "upstreams": {"api": {"url": "http://127.0.0.1:9/"}},
                "routes": [],
            }
        )
    )
    return path


def _ship_until(
    spool: AuditSpool, url: str, key: str, done: Callable[[], bool], seconds: float = 15.0
) -> None:
    """Ship as a gateway does (its shipper, on a loop) until ``done()``."""
    shipper = _Shipper(url, key, 5.0)

    async def main() -> None:
        task = asyncio.create_task(shipper.run(spool))
        deadline = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < deadline, spool.health()
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())


def _cli(config: Path, *args: str, key: str | None = None, stdin: str | None = None) -> Any:
    env = {"COLUMNS": "200", **({KEY_ENV: key} if key else {})}
    return CliRunner().invoke(
        app, ["gateway", "spool", "rejected", *args, "--config", str(config)], env=env, input=stdin
    )


def _stored(live: OAuthLive, **query: Any) -> list[AuditEvent]:
    return list(live.container.audit.find(AuditQuery(limit=500, **query)).items)


def _set_aside(live: OAuthLive, tmp_path: Path, events: list[dict[str, Any]]) -> Path:
    """Spool ``events`` and ship them with a key bound to another enforcement point:
    ingest refuses each (403 naming it), and the spool sets each aside."""
    wrong = _key(live, sources=["gateway/other"])
    with AuditSpool(tmp_path / "spool", None, **FAST) as spool:
        for event in events:
            spool.append([event])
        _ship_until(
            spool,
            live.url,
            wrong,
            lambda: (
                spool.health().rejected_events == len(events) and spool.health().pending_events == 0
            ),
        )
    return tmp_path / "spool" / REJECTED_FILE


def test_the_file_stops_at_its_bound_calls_are_refused_and_resend_ships_it(
    live: OAuthLive, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    events = [_event() for _ in range(5)]
    # the size of one set-aside line, from a first run
    one = _set_aside(live, tmp_path, events[:1]).stat().st_size
    (directory / REJECTED_FILE).unlink()

    wrong = _key(live, sources=["gateway/other"])
    spool = AuditSpool(directory, None, rejected_max_bytes=3 * one + one // 2, **FAST)
    for event in events:
        spool.append([event])
    _ship_until(spool, live.url, wrong, lambda: spool.health().rejected_full)
    health = spool.health()
    with pytest.raises(SpoolFull, match=REJECTED_FILE):
        spool.append([_event()])
    spool.close()
    kept = [json.loads(line) for line in (directory / REJECTED_FILE).read_bytes().splitlines()]
    assert [k["event"]["event_id"] for k in kept] == [e["event_id"] for e in events[:3]]
    assert "403" in kept[0]["reason"]
    assert health.rejected_bytes == (directory / REJECTED_FILE).stat().st_size
    assert health.rejected_bytes <= health.rejected_max_bytes
    assert not {e["event_id"] for e in events} & {e.event_id for e in _stored(live)}

    # the operator lists them: ids and reasons, never the bodies
    config = _config_file(tmp_path, live, rejected_max_bytes=1 << 20)
    listed = _cli(config, "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert BODY not in listed.output
    summary = json.loads(listed.output)
    assert (summary["events"], summary["unreadable_lines"]) == (3, 0)
    assert [e["event_id"] for e in summary["entries"]] == [e["event_id"] for e in events[:3]]
    assert {e["source"] for e in summary["entries"]} == {SOURCE}
    [(reason, count)] = summary["reasons"].items()
    assert "403" in reason
    assert count == 3
    table = _cli(config, "list")
    assert table.exit_code == 0, table.output
    assert "3 events set aside" in table.output  # (the table's width is the terminal's)
    assert BODY not in table.output

    right = _key(live, sources=[SOURCE])
    # not while a gateway holds the spool directory
    with AuditSpool(directory, None, **FAST):
        busy = _cli(config, "resend", key=right)
        running = _cli(config, "list", "--json")  # reading is safe while it runs
    assert running.exit_code == 0, running.output
    assert json.loads(running.output)["events"] == 3
    assert busy.exit_code == 1
    assert "in use" in busy.output
    assert len((directory / REJECTED_FILE).read_bytes().splitlines()) == 3

    resent = _cli(config, "resend", "--json", key=right)
    assert resent.exit_code == 0, resent.output
    result = json.loads(resent.output)
    assert (result["sent"], result["refused"], result["unsent"], result["kept"]) == (3, 0, 0, 0)
    assert not (directory / REJECTED_FILE).exists()
    assert {e["event_id"] for e in events[:3]} <= {e.event_id for e in _stored(live)}

    # restarted with the key fixed: the spool takes calls again, and what it held ships
    with AuditSpool(directory, None, rejected_max_bytes=3 * one, **FAST) as spool:
        assert not spool.health().rejected_full
        spool.append([_event()])
        _ship_until(spool, live.url, right, lambda: spool.health().pending_events == 0)
        assert spool.health().rejected_events == 0
    assert {e["event_id"] for e in events} <= {e.event_id for e in _stored(live)}


def test_resend_keeps_what_is_refused_again(live: OAuthLive, tmp_path: Path) -> None:
    """The key is now bound to this gateway and to Alice only: Alice's events are
    accepted and leave the file, Bob's are refused again and stay, with the new
    reason (exit code 2)."""
    events = [_event(ALICE), _event(BOB), _event(ALICE)]
    path = _set_aside(live, tmp_path, events)
    config = _config_file(tmp_path, live)
    key = _key(live, sources=[SOURCE], agents=[ALICE])
    result = _cli(config, "resend", key=key)
    assert result.exit_code == 2, result.output
    assert "2 accepted" in result.output
    [kept] = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert kept["event"] == events[1]
    assert "403" in kept["reason"]
    assert isinstance(kept["retried_at"], float)
    stored = {e.event_id for e in _stored(live)}
    assert {events[0]["event_id"], events[2]["event_id"]} <= stored
    assert events[1]["event_id"] not in stored


def test_resend_without_the_key_in_the_environment_says_which_variable(
    live: OAuthLive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _set_aside(live, tmp_path, [_event()])
    before = path.read_bytes()
    monkeypatch.delenv(KEY_ENV, raising=False)
    result = _cli(_config_file(tmp_path, live), "resend")
    assert result.exit_code == 1
    assert KEY_ENV in result.output
    assert path.read_bytes() == before


def test_discard_is_recorded_in_the_trail_before_the_file_goes(
    live: OAuthLive, tmp_path: Path
) -> None:
    events = [_event(ALICE), _event(BOB)]
    path = _set_aside(live, tmp_path, events)
    config = _config_file(tmp_path, live)
    key = _key(live, sources=[SOURCE])

    asked = _cli(config, "discard", key=key, stdin="n\n")  # not confirmed: nothing happens
    assert asked.exit_code == 1
    assert path.exists()
    assert not _stored(live, action=DISCARD_ACTION)

    done = _cli(config, "discard", "--yes", "--json", key=key)
    assert done.exit_code == 0, done.output
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert json.loads(done.output) == {
        "discarded_events": 2,
        "unreadable_lines": 0,
        "bytes": json.loads(done.output)["bytes"],
        "by": user,
    }
    assert not path.exists()
    [record] = _stored(live, action=DISCARD_ACTION)
    assert record.type == "audit.discarded"
    assert record.details["command"] == "agentiam gateway spool rejected discard"
    assert record.source == SOURCE
    assert (record.actor.type, record.actor.id) == (ActorType.CLI, user)
    assert record.agent_id is None  # detection charges it to no agent
    assert record.details["discarded_events"] == 2
    assert record.details["event_ids"] == [e["event_id"] for e in events]
    assert record.details["os_user"] == user
    assert (record.details["part"], record.details["parts"]) == (1, 1)
    [reason] = record.details["reasons"]
    assert "403" in reason["reason"]
    assert reason["events"] == 2
    assert BODY not in json.dumps(record.to_dict())
    with AuditSpool(tmp_path / "spool", None, **FAST) as spool:
        assert spool.health().discarded_events == 2


def test_discard_deletes_nothing_when_the_trail_does_not_take_its_record(
    live: OAuthLive, tmp_path: Path
) -> None:
    path = _set_aside(live, tmp_path, [_event()])
    before = path.read_bytes()
    wrong = _key(live, sources=["gateway/other"])
    result = _cli(_config_file(tmp_path, live), "discard", "--yes", key=wrong)
    assert result.exit_code == 1
    assert "nothing was discarded" in result.output
    assert wrong not in result.output
    assert path.read_bytes() == before
    assert not _stored(live, action=DISCARD_ACTION)


def test_the_gateway_takes_the_bound_from_its_configuration_and_shows_it(
    live: OAuthLive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spool.rejected_max_bytes reaches the gateway's spool, and its health shows the
    file's state, counted from what an earlier run left."""
    path = _set_aside(live, tmp_path, [_event(), _event()])
    size = path.stat().st_size
    monkeypatch.setenv(KEY_ENV, _key(live, sources=[SOURCE]))
    data = json.loads(_config_file(tmp_path, live, rejected_max_bytes=1 << 20).read_text())
    config = load_gateway_config(data, "http", section_keys=frozenset({"upstreams", "routes"}))
    runtime = GatewayRuntime.start(config)
    try:
        spool = runtime.health()["spool"]
    finally:
        runtime.close()
    assert spool["rejected_max_bytes"] == 1 << 20
    assert (spool["rejected_bytes"], spool["rejected_kept"], spool["rejected_full"]) == (
        size,
        2,
        False,
    )


def test_a_file_left_at_its_bound_refuses_calls_from_the_start_and_metrics_say_so(
    live: OAuthLive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rejected.jsonl an earlier run filled to the bound: the gateway started on it
    refuses every call at once (with the full spool's 503, naming the file), and its
    /metrics (both gateways' collector) shows
    the file full, its size and nothing set aside by this run."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from agentiam.adapters.gateway.metrics import RuntimeCollector

    directory = tmp_path / "spool"
    directory.mkdir(mode=0o700)
    line = json.dumps({"rejected_at": 0, "reason": "403", "event": _event()}) + "\n"
    path = directory / REJECTED_FILE
    path.write_text(line * ((1 << 20) // len(line) + 1))
    path.chmod(0o600)
    size = path.stat().st_size
    monkeypatch.setenv(KEY_ENV, _key(live, sources=[SOURCE]))
    data = json.loads(_config_file(tmp_path, live, rejected_max_bytes=1 << 20).read_text())
    config = load_gateway_config(data, "http", section_keys=frozenset({"upstreams", "routes"}))
    runtime = GatewayRuntime.start(config)
    try:
        with pytest.raises(SpoolFull, match=REJECTED_FILE):
            runtime.spool.append([_event()])
        # what a call gets: the full spool's own refusal (its 503 names the file and
        # says what to do), as the gateways record it (deferred) and as the guard does
        with runtime.enforcer.deferred(), pytest.raises(SpoolFull, match=REJECTED_FILE):
            runtime.enforcer.refuse(None, trace=TraceContext.new(), status=401, reason="none")
        with pytest.raises(SpoolFull, match=REJECTED_FILE) as refused:
            runtime.enforcer.refuse(None, trace=TraceContext.new(), status=401, reason="none")
        assert "agentiam gateway spool rejected resend --config" in str(refused.value.hint)
        registry = CollectorRegistry()
        registry.register(RuntimeCollector(runtime))
        text = generate_latest(registry).decode()
    finally:
        runtime.close()
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert values["agentiam_gateway_spool_rejected_full"] == 1.0
    assert values["agentiam_gateway_spool_rejected_bytes"] == size
    assert values["agentiam_gateway_spool_rejected_events_total"] == 0.0
