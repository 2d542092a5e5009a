"""``agentiam keys rewrap --new-master-key-file`` as its own process, on both stores:
the signing keys move to the new master key (the old one no longer opens them), a
second run with the old key is refused unchanged, so is a ``keys rotate`` with the
old key (it would seal a key the other replicas cannot open), the current key given as
the new one is refused, the operation (and the refused rotation) is in the audit trail,
and no output holds key material."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.e2e.test_quickstart import cli, env_for
from tests.support.live import free_port

from agentiam.adapters.storage.engine import make_engine
from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.core.credentials.sealing import MasterKey, SealError
from agentiam.core.credentials.signing_keys import SigningKey, unseal_private_key

pytestmark = pytest.mark.e2e


def _keys(url: str) -> list[SigningKey]:
    engine = make_engine(url)
    try:
        with SqlUnitOfWork(engine, read_only=True) as uow:
            return uow.signing_keys.all()
    finally:
        engine.dispose()


def _ring(url: str) -> list[tuple[str, str]]:
    return [(k.kid, k.sealed_private) for k in _keys(url)]


def test_rewrap_through_the_cli(database_url: str, tmp_path: Path) -> None:
    env = env_for(database_url, free_port())
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    cli(env, "keys", "generate-master-key", "-o", str(old_file))
    cli(env, "keys", "generate-master-key", "-o", str(new_file))
    old_text, new_text = old_file.read_text().strip(), new_file.read_text().strip()
    old, new = MasterKey.from_text(old_text), MasterKey.from_text(new_text)
    material = [old_text, new_text, old._secret.hex(), new._secret.hex()]
    env["AGENTIAM_MASTER_KEY_FILE"] = str(old_file)
    cli(env, "keys", "rotate", "--immediate", "--json")
    cli(env, "keys", "rotate", "--json")
    before = _ring(database_url)

    done = cli(env, "keys", "rewrap", "--new-master-key-file", str(new_file), "--json")
    assert json.loads(done.stdout) == {
        "signing_keys": 2,
        "from_key_id": old.id,
        "to_key_id": new.id,
    }
    after = _ring(database_url)
    assert [kid for kid, _ in after] == [kid for kid, _ in before]
    for kid, sealed in after:
        assert sealed not in dict(before).values()
        key = next(k for k in _keys(database_url) if k.kid == kid)
        assert unseal_private_key(key, new).thumbprint() == kid
        with pytest.raises(SealError):
            unseal_private_key(key, old)

    # Again with the old key: refused, nothing changed, nothing secret shown.
    again = cli(env, "keys", "rewrap", "--new-master-key-file", str(new_file), check=False)
    assert again.returncode == 1
    assert "no signing key was re-sealed" in again.stderr
    assert _ring(database_url) == after
    # A rotation on the old key would seal a key no other replica opens: refused.
    stale = cli(env, "keys", "rotate", "--immediate", check=False)
    assert stale.returncode == 1
    assert "no signing key was created" in " ".join(stale.stderr.split())
    assert _ring(database_url) == after
    # The new key, now current, given as the new one: refused too.
    env["AGENTIAM_MASTER_KEY_FILE"] = str(new_file)
    same = cli(env, "keys", "rewrap", "--new-master-key-file", str(new_file), check=False)
    assert same.returncode == 1
    assert "the new key is the current key" in same.stderr
    # A new key file that is not a key: refused, its content not echoed.
    bad = tmp_path / "bad.key"
    almost = MasterKey.generate_text()[:-1]
    bad.write_text(almost)
    refused = cli(env, "keys", "rewrap", "--new-master-key-file", str(bad), check=False)
    assert refused.returncode == 1
    assert "--new-master-key-file" in refused.stderr
    assert _ring(database_url) == after

    # The server's key ring works under the new key: a new key is made and listed.
    cli(env, "keys", "rotate", "--json")
    assert len(json.loads(cli(env, "keys", "list", "--json").stdout)) == 3

    events = json.loads(
        cli(env, "audit", "events", "--type", "master_key.rewrapped", "--json").stdout
    )["items"]
    outcomes = sorted(e["outcome"] for e in events)
    assert outcomes == ["failure", "failure", "success"]
    for run in (done, again, stale, same, refused):
        for shown in [*material, almost]:
            assert shown not in run.stdout + run.stderr
    assert not any(m in json.dumps(events) for m in material)

    # The refused rotation is in the trail too: who, the master key id, the kid that
    # did not open; no key, no key material. The accepted ones as before.
    created = json.loads(
        cli(env, "audit", "events", "--type", "signing_key.created", "--json").stdout
    )["items"]
    assert sorted(e["outcome"] for e in created) == ["failure", "success", "success", "success"]
    (refusal,) = [e for e in created if e["outcome"] == "failure"]
    assert (refusal["actor"]["type"], refusal["source"]) == ("cli", "cli")
    assert refusal.get("resource") is None
    assert refusal["details"]["master_key_id"] == old.id
    assert refusal["details"]["unopened_kid"] in dict(before)
    assert refusal["reason"].startswith("no signing key was created")
    shown = json.dumps(created)
    assert not any(m in shown for m in material)
    assert not any(sealed in shown for _, sealed in before + after)
