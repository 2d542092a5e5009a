"""An in-process guard's rejected.jsonl against a live control plane (over HTTP): the
guard's key bound to another source gets every event refused and set aside; the
operator lists them, sends them again once the key is fixed, or discards them (the
trail records it as the guard's source) with ``agentiam guard spool rejected``, the
gateway's commands with options in place of a configuration file; ``Guard.connect``
takes the file's bound (``spool_rejected_max_bytes``), and a guard at that bound
refuses every guarded call naming the file and the command that empties it.

Before, the guard's bound was always the default and no command could reach its
spool: the gateway's commands need a gateway configuration file, which a guard does
not have.

Real guard (its link, spool and shipper), real control plane (SQLite, uvicorn), the
CLI in process (typer's CliRunner)."""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.api.guard_support import guard_live
from tests.api.oauth_support import CTX, RESOURCE, OAuthLive
from tests.support.live import until
from typer.testing import CliRunner

from agentiam.adapters.gateway.runtime import DISCARD_ACTION
from agentiam.adapters.gateway.spool import REJECTED_FILE
from agentiam.cli.main import app
from agentiam.core.access.admin_keys import Role
from agentiam.guard import Guard, GuardUnavailable
from agentiam.ports import AuditQuery
from agentiam.sdk import AgentClient

NAME = "test-agent"
SOURCE = f"guard/{NAME}"
KEY_ENV = "AGENTIAM_TEST_GUARD_SPOOL_KEY"


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with guard_live(sqlite_url) as server:
        yield server


def _key(live: OAuthLive, source: str) -> str:
    return live.container.admin_keys.create(
        CTX, name="guard", role=Role.VERIFIER, sources=[source]
    ).secret


def _guard(live: OAuthLive, spool: Path, agent: AgentClient, key: str, **kwargs: Any) -> Guard:
    return Guard.connect(
        live.url,
        resource=RESOURCE,
        spool_dir=spool,
        name=NAME,
        admin_key_env=KEY_ENV,
        token=lambda: agent.token().value,
        environ={KEY_ENV: key},
        poll_wait=1.0,  # a held long poll would delay the test server's shutdown
        **kwargs,
    )


def _searches(guard: Guard, calls: int) -> list[str]:
    ran: list[str] = []

    @guard.tool()
    def search(query: str) -> None:
        ran.append(query)

    for i in range(calls):
        search(f"q{i}")
    return ran


def _set_aside(live: OAuthLive, agent: AgentClient, spool: Path, calls: int = 2) -> list[str]:
    """Guarded calls by a guard whose key is bound to another guard: ingest refuses
    each event (403 naming it) and the guard's spool sets it aside. The ids, in order."""
    with _guard(live, spool, agent, _key(live, "guard/other")) as guard:
        assert _searches(guard, calls) == [f"q{i}" for i in range(calls)]
        spooled = guard.spool
        assert spooled is not None

        def shipped() -> bool:
            health = spooled.health()
            return health.rejected_events == 2 * calls and health.pending_events == 0

        assert until(shipped), spooled.health()
    lines = (spool / REJECTED_FILE).read_bytes().splitlines()
    return [json.loads(line)["event"]["event_id"] for line in lines]


def _cli(*args: str, key: str | None = None, stdin: str | None = None) -> Any:
    env = {"COLUMNS": "200", **({KEY_ENV: key} if key else {})}
    return CliRunner().invoke(app, ["guard", "spool", "rejected", *args], env=env, input=stdin)


def _said(result: Any) -> str:
    """What a command printed, whitespace folded (the console wraps at its width)."""
    return " ".join(result.output.split())


def _opts(live: OAuthLive, spool: Path, *more: str) -> list[str]:
    return ["--spool-dir", str(spool), "--control-plane", live.url, "--key-env", KEY_ENV, *more]


def _stored(live: OAuthLive, **query: Any) -> list[Any]:
    return list(live.container.audit.find(AuditQuery(limit=500, **query)).items)


def test_a_guards_set_aside_events_are_listed_and_resent_once_the_key_is_fixed(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    ids = _set_aside(live, agent, spool)
    assert len(ids) == 4  # two calls: a decision and an outcome each
    assert not set(ids) & {e.event_id for e in _stored(live)}

    listed = _cli("list", "--spool-dir", str(spool), "--json")
    assert listed.exit_code == 0, listed.output
    summary = json.loads(listed.output)
    assert (summary["events"], summary["unreadable_lines"], summary["full"]) == (4, 0, False)
    assert summary["max_bytes"] == 64 << 20  # Guard.connect's default
    assert [e["event_id"] for e in summary["entries"]] == ids
    assert {e["source"] for e in summary["entries"]} == {SOURCE}
    assert not {"event", "details", "arguments"} & {k for e in summary["entries"] for k in e}
    [(reason, count)] = summary["reasons"].items()
    assert "403" in reason
    assert count == 4
    table = _cli("list", "--spool-dir", str(spool))
    assert table.exit_code == 0, table.output
    assert "4 events set aside" in _said(table)

    right = _key(live, SOURCE)
    path = spool / REJECTED_FILE
    before = path.read_bytes()
    # not while the guard holds its spool; reading is safe meanwhile
    with _guard(live, spool, agent, right):
        busy = _cli("resend", *_opts(live, spool), key=right)
        busy_discard = _cli("discard", *_opts(live, spool, "--name", NAME, "--yes"), key=right)
        running = _cli("list", "--spool-dir", str(spool), "--json")
    assert (busy.exit_code, busy_discard.exit_code) == (1, 1)
    assert "in use" in _said(busy)
    assert "in use" in _said(busy_discard)
    assert running.exit_code == 0, running.output
    assert json.loads(running.output)["events"] == 4
    assert path.read_bytes() == before
    assert not _stored(live, action=DISCARD_ACTION)

    resent = _cli("resend", *_opts(live, spool), "--json", key=right)
    assert resent.exit_code == 0, resent.output
    result = json.loads(resent.output)
    assert (result["sent"], result["refused"], result["unsent"], result["kept"]) == (4, 0, 0, 0)
    assert not path.exists()
    stored = {e.event_id: e.source for e in _stored(live)}
    assert [stored.get(i) for i in ids] == [SOURCE] * 4


def test_resend_refused_again_keeps_the_events_and_exits_2(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    ids = _set_aside(live, agent, spool, calls=1)
    still_wrong = _key(live, "guard/another")
    result = _cli("resend", *_opts(live, spool), key=still_wrong)
    assert result.exit_code == 2, result.output
    assert "0 accepted" in _said(result)
    kept = [json.loads(line) for line in (spool / REJECTED_FILE).read_bytes().splitlines()]
    assert [k["event"]["event_id"] for k in kept] == ids
    assert all("retried_at" in k for k in kept)


def test_discard_is_recorded_as_the_guard_before_the_file_goes(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    ids = _set_aside(live, agent, spool)
    path = spool / REJECTED_FILE
    before = path.read_bytes()
    key = _key(live, SOURCE)

    asked = _cli("discard", *_opts(live, spool, "--name", NAME), key=key, stdin="n\n")
    assert asked.exit_code == 1  # not confirmed: nothing happens
    # the record must be the guard's own: a name its key is not bound to is refused
    other = _cli("discard", *_opts(live, spool, "--name", "other", "--yes"), key=key)
    assert other.exit_code == 1
    assert "nothing was discarded" in _said(other)
    assert key not in "".join(other.output.split())  # not even wrapped across lines
    assert path.read_bytes() == before
    assert not _stored(live, action=DISCARD_ACTION)

    done = _cli("discard", *_opts(live, spool, "--name", NAME, "--yes", "--json"), key=key)
    assert done.exit_code == 0, done.output
    user = pwd.getpwuid(os.geteuid()).pw_name
    output = json.loads(done.output)
    assert (output["discarded_events"], output["unreadable_lines"], output["by"]) == (4, 0, user)
    assert not path.exists()
    [record] = _stored(live, action=DISCARD_ACTION)
    assert record.type == "audit.discarded"
    assert record.source == SOURCE
    assert record.details["command"] == "agentiam guard spool rejected discard"
    assert record.details["event_ids"] == ids
    assert record.details["os_user"] == user
    assert record.agent_id is None


def test_resend_and_discard_refuse_a_missing_key_variable(
    live: OAuthLive, agent: AgentClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    _set_aside(live, agent, spool, calls=1)
    path = spool / REJECTED_FILE
    before = path.read_bytes()
    monkeypatch.delenv(KEY_ENV, raising=False)
    for args in (["resend"], ["discard", "--name", NAME, "--yes"]):
        result = _cli(args[0], *_opts(live, spool, *args[1:]))
        assert result.exit_code == 1, result.output
        assert f"{KEY_ENV} is not set" in _said(result)
    assert path.read_bytes() == before
    assert not _stored(live, action=DISCARD_ACTION)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory away")
def test_resend_and_discard_run_only_as_the_spool_directorys_owner(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    """root running them on the agent user's spool would leave its files root's, and
    the guard unable to append to them: refused, nothing touched."""
    spool = tmp_path / "spool"
    _set_aside(live, agent, spool, calls=1)
    path = spool / REJECTED_FILE
    before = path.read_bytes()
    os.chown(spool, 65534, 65534)
    key = _key(live, SOURCE)
    for args in (["resend"], ["discard", "--name", NAME, "--yes"]):
        result = _cli(args[0], *_opts(live, spool, *args[1:]), key=key)
        assert result.exit_code == 1, result.output
        assert "uid 65534" in _said(result)
    assert path.read_bytes() == before
    assert not _stored(live, action=DISCARD_ACTION)


def _fill(spool: Path, size: int) -> int:
    """A rejected.jsonl an earlier run left at ``size`` bytes or a little more."""
    spool.mkdir(mode=0o700)
    event = {"event_id": "evt-earlier", "type": "authz.decision", "source": SOURCE}
    line = json.dumps({"rejected_at": 0, "reason": "ingest answered 403", "event": event}) + "\n"
    path = spool / REJECTED_FILE
    path.write_text(line * (size // len(line) + 1))
    path.chmod(0o600)
    return path.stat().st_size


def test_a_guard_at_its_bound_refuses_every_guarded_call_naming_the_file(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    size = _fill(spool, 1 << 20)
    key = _key(live, SOURCE)
    with _guard(live, spool, agent, key, spool_rejected_max_bytes=1 << 20) as guard:
        assert guard.spool is not None
        health = guard.spool.health()
        assert (health.rejected_max_bytes, health.rejected_full) == (1 << 20, True)
        with pytest.raises(GuardUnavailable) as refused:
            _searches(guard, 1)
        # the operator sees it from outside, with the guard's bound
        listed = _cli("list", "--spool-dir", str(spool), "--rejected-max-bytes", str(1 << 20))
    assert refused.value.refusal_status == 503
    assert REJECTED_FILE in str(refused.value)
    hint = str(refused.value.hint)
    assert f"agentiam guard spool rejected resend --spool-dir {spool}" in hint
    assert f"--control-plane {live.url} --key-env {KEY_ENV}" in hint
    assert f"--name {NAME}" in hint
    assert listed.exit_code == 0, listed.output
    assert f"({size} of {1 << 20} bytes, FULL: the guard refuses every guarded call)" in (
        _said(listed)
    )

    # the default bound (64 MiB) is not reached by the same file: the bound is the
    # parameter's, not a constant
    with _guard(live, spool, agent, key) as roomy:
        assert _searches(roomy, 1) == ["q0"]

    # the operator discards the file: the guard takes calls again at the small bound
    done = _cli("discard", *_opts(live, spool, "--name", NAME, "--yes"), key=key)
    assert done.exit_code == 0, done.output
    with _guard(live, spool, agent, key, spool_rejected_max_bytes=1 << 20) as guard:
        assert _searches(guard, 1) == ["q0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--spool-dir", "{missing}"], "no spool directory at"),
        (
            ["list", "--spool-dir", "{spool}", "--rejected-max-bytes", "1024"],
            "--rejected-max-bytes: between 1 MiB and 1 TiB",
        ),
        (
            ["resend", "--spool-dir", "{spool}", "--control-plane", "http://iam.example.com"],
            "--control-plane: must be https",
        ),
        (
            ["resend", "--spool-dir", "{spool}", "--control-plane", "https://u:p@iam.example"],
            "--control-plane: a URL without user info",
        ),
        (
            [
                "discard",
                "--spool-dir",
                "{spool}",
                "--control-plane",
                "https://iam.example",
                "--name",
                "Not A Name",
                "--yes",
            ],
            "--name: 1-64 characters",
        ),
    ],
)
def test_bad_options_are_refused_before_anything_is_read(
    tmp_path: Path, args: list[str], message: str
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    filled = [a.format(spool=spool, missing=tmp_path / "missing") for a in args]
    result = _cli(*filled, key="a-key-that-is-never-sent")
    assert result.exit_code == 1, result.output
    assert message in _said(result)
    assert "u:p@" not in result.output  # a URL's credentials are not echoed
    assert list(spool.iterdir()) == []
