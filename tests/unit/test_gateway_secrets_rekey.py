"""Rotating the gateway secret store's key (``SecretStore.rekey``, ``agentiam gateway
secrets rekey --new-key-file``), on real files: every version and the deleted names'
history sealed again under the new key, which alone opens them afterwards; a store
that does not fully open with the current key is refused unchanged; a crash at the
rename (a failed rename, and a process killed there) leaves the old store whole; a
gateway still holding the old key fails closed; no output shows key material."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from agentiam.adapters import files as files_module
from agentiam.adapters.gateway.broker import (
    KEY_ENV,
    KEY_FILE_ENV,
    ApiKeyInjection,
    CredentialBroker,
    OAuthClientKey,
    OAuthClientSecret,
    Secret,
    SecretKind,
    SecretNotFound,
    SecretStore,
    SecretStoreError,
)
from agentiam.cli.main import app
from agentiam.core.credentials.sealing import MasterKey, SealError

API_KEY = "sk-live-rekey-0123456789"
ROTATED_KEY = "sk-live-rekey-rotated-42"
CLIENT_SECRET = "rekey-client-secret-9876"
UPSTREAM = "https://api.example.com"
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def old_text() -> str:
    return MasterKey.generate_text()


@pytest.fixture
def new_text() -> str:
    return MasterKey.generate_text()


@pytest.fixture
def old(old_text: str) -> MasterKey:
    return MasterKey.from_text(old_text)


@pytest.fixture
def new(new_text: str) -> MasterKey:
    return MasterKey.from_text(new_text)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "secrets" / "store.json"


def _pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _fill(path: Path, key: MasterKey) -> dict[str, Any]:
    """A store with every kind, two versions of one name, allowed upstreams and a
    deleted name's history (format /2); the values put, by label."""
    store = SecretStore(path, key, reload_interval=0.0)
    pem = _pem()
    store.put("github", SecretKind.API_KEY, Secret(API_KEY))
    store.rotate("github", Secret(ROTATED_KEY))
    store.put(
        "crm",
        SecretKind.OAUTH_CLIENT,
        OAuthClientSecret("crm-gw", Secret(CLIENT_SECRET)),
        allowed_upstreams=[UPSTREAM],
    )
    store.put(
        "erp-jwt",
        SecretKind.OAUTH_CLIENT_KEY,
        OAuthClientKey("erp-gw", Secret(pem), "ES256", "k1"),
    )
    store.put("gone", SecretKind.API_KEY, Secret("sk-gone"))
    store.rotate("gone", Secret("sk-gone-2"))
    store.delete("gone")
    return {"github@1": API_KEY, "github@2": ROTATED_KEY, "crm@1": CLIENT_SECRET, "pem": pem}


def _values(store: SecretStore) -> dict[str, str]:
    out: dict[str, str] = {}
    for info in store.all():
        value = store.get(info.name, info.version)[1]
        if isinstance(value, Secret):
            out[info.label] = value.reveal()
        elif isinstance(value, OAuthClientSecret):
            out[info.label] = value.client_secret.reveal()
        else:
            assert isinstance(value, OAuthClientKey)
            out[info.label] = value.private_key.reveal()
    return out


def _key_material(*texts: str) -> list[str]:
    """The forms key material could be shown in: the text, and its raw bytes as hex."""
    found = list(texts)
    for text in texts:
        found.append(MasterKey.from_text(text)._secret.hex())
    return found


# -- the store -------------------------------------------------------------------------


def test_rekey_seals_every_version_again_and_only_the_new_key_opens_them(
    path: Path, old: MasterKey, new: MasterKey
) -> None:
    put = _fill(path, old)
    before_store = SecretStore(path, old, reload_interval=0.0)
    before = before_store.all()
    before_values = _values(before_store)
    before_doc = json.loads(path.read_bytes())

    assert SecretStore(path, old, reload_interval=0.0).rekey(new) == 4

    after = SecretStore(path, new, reload_interval=0.0)
    assert after.all() == before  # names, kinds, versions, dates, allowed upstreams
    assert after.verify() == 4
    assert _values(after) == before_values
    assert before_values["github@1"] == put["github@1"]
    assert before_values["erp-jwt@1"] == put["pem"]
    doc = json.loads(path.read_bytes())
    assert doc["master_key_id"] == new.id
    assert doc["format"] == before_doc["format"] == "agentiam-gateway-secrets/2"
    assert doc["deleted"] == before_doc["deleted"] == [{"name": "gone", "last_version": 2}]
    assert doc["deleted_floor"] == before_doc["deleted_floor"]
    for was, now in zip(before_doc["secrets"], doc["secrets"], strict=True):
        assert {k: v for k, v in was.items() if k != "sealed"} == {
            k: v for k, v in now.items() if k != "sealed"
        }
        assert now["sealed"] != was["sealed"]
        assert now["sealed"].split(".")[1] == new.id
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    # The old key opens nothing: not the store, not any value on its own.
    with pytest.raises(SecretStoreError, match="sealed under key"):
        SecretStore(path, old, reload_interval=0.0).all()
    for entry in doc["secrets"]:
        with pytest.raises(SealError):
            old.open(entry["sealed"], context="anything")
    # The history still counts: the deleted name continues after its last version.
    assert after.put("gone", SecretKind.API_KEY, Secret("sk-back")).version == 3
    # No temporary file is left beside the store.
    assert sorted(p.name for p in path.parent.iterdir()) == ["store.json", "store.json.lock"]


def test_each_value_stays_bound_to_its_record_under_the_new_key(
    path: Path, old: MasterKey, new: MasterKey
) -> None:
    """The same associated data: a value moved to another version does not open."""
    _fill(path, old)
    SecretStore(path, old, reload_interval=0.0).rekey(new)
    doc = json.loads(path.read_bytes())
    github = [e for e in doc["secrets"] if e["name"] == "github"]
    github[0]["sealed"], github[1]["sealed"] = github[1]["sealed"], github[0]["sealed"]
    path.write_text(json.dumps(doc))
    with pytest.raises(SecretStoreError, match="does not open"):
        SecretStore(path, new, reload_interval=0.0).get("github", 2)


def _swap_in_foreign_value(path: Path, foreign: MasterKey, old: MasterKey) -> None:
    """Replace github@2's sealed value by one sealed under ``foreign``, with the right
    associated data: the store still names ``old`` and every other value opens."""
    other = path.with_name("other.json")
    SecretStore(other, foreign, reload_interval=0.0).put(
        "github", SecretKind.API_KEY, Secret("sk-foreign")
    )
    SecretStore(other, foreign, reload_interval=0.0).rotate("github", Secret("sk-foreign-2"))
    doc = json.loads(path.read_bytes())
    foreign_doc = json.loads(other.read_bytes())
    entry = next(e for e in doc["secrets"] if e["name"] == "github" and e["version"] == 2)
    entry["sealed"] = next(e["sealed"] for e in foreign_doc["secrets"] if e["version"] == 2)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    other.unlink()
    assert json.loads(path.read_bytes())["master_key_id"] == old.id


def test_a_store_with_one_value_under_another_key_is_refused_unchanged(
    path: Path, old: MasterKey, new: MasterKey
) -> None:
    _fill(path, old)
    _swap_in_foreign_value(path, MasterKey.from_text(MasterKey.generate_text()), old)
    data, stat = path.read_bytes(), path.stat()
    with pytest.raises(SecretStoreError, match="not re-sealed") as refused:
        SecretStore(path, old, reload_interval=0.0).rekey(new)
    assert "github@2" in refused.value.detail
    assert path.read_bytes() == data
    assert path.stat().st_ino == stat.st_ino  # not even rewritten
    # The others still open with the old key, none with the new one.
    value = SecretStore(path, old, reload_interval=0.0).get("github", 1)[1]
    assert isinstance(value, Secret)
    assert value.reveal() == API_KEY
    with pytest.raises(SecretStoreError):
        SecretStore(path, new, reload_interval=0.0).all()


def test_an_altered_value_is_refused_unchanged(path: Path, old: MasterKey, new: MasterKey) -> None:
    _fill(path, old)
    doc = json.loads(path.read_bytes())
    sealed = doc["secrets"][0]["sealed"]
    doc["secrets"][0]["sealed"] = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    path.write_text(json.dumps(doc, indent=1) + "\n")
    data = path.read_bytes()
    with pytest.raises(SecretStoreError, match="not re-sealed"):
        SecretStore(path, old, reload_interval=0.0).rekey(new)
    assert path.read_bytes() == data


def test_a_store_sealed_under_another_key_is_refused_unchanged(
    path: Path, old: MasterKey, new: MasterKey
) -> None:
    _fill(path, old)
    data = path.read_bytes()
    wrong = MasterKey.from_text(MasterKey.generate_text())
    with pytest.raises(SecretStoreError, match="sealed under key"):
        SecretStore(path, wrong, reload_interval=0.0).rekey(new)
    assert path.read_bytes() == data


def test_the_current_key_as_the_new_one_is_refused(path: Path, old: MasterKey) -> None:
    _fill(path, old)
    data = path.read_bytes()
    with pytest.raises(SecretStoreError, match="the new key is the current key"):
        SecretStore(path, old, reload_interval=0.0).rekey(MasterKey(old._secret))
    assert path.read_bytes() == data


def test_no_store_is_refused_and_none_is_created(
    path: Path, old: MasterKey, new: MasterKey
) -> None:
    with pytest.raises(SecretNotFound):
        SecretStore(path, old, reload_interval=0.0).rekey(new)
    assert not path.exists()


def test_a_failed_rename_leaves_the_old_store_whole(
    path: Path, old: MasterKey, new: MasterKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(path, old)
    data = path.read_bytes()

    def fail_rename(src: str, dst: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files_module.os, "replace", fail_rename)
    with pytest.raises(OSError, match="Input/output error"):
        SecretStore(path, old, reload_interval=0.0).rekey(new)
    monkeypatch.undo()
    assert path.read_bytes() == data
    assert SecretStore(path, old, reload_interval=0.0).verify() == 4
    assert sorted(p.name for p in path.parent.iterdir()) == ["store.json", "store.json.lock"]


CRASH = """
import os, sys
from agentiam.adapters import files
from agentiam.adapters.gateway.broker import SecretStore
from agentiam.core.credentials.sealing import MasterKey

def crash(src, dst):
    os._exit(9)  # killed between the fsynced temporary file and the rename

files.os.replace = crash
old, new = (MasterKey.from_text(t) for t in sys.argv[2:4])
SecretStore(sys.argv[1], old, reload_interval=0.0).rekey(new)
"""


def test_a_process_killed_at_the_rename_leaves_the_old_store_whole(
    path: Path, old_text: str, new_text: str, old: MasterKey, new: MasterKey
) -> None:
    _fill(path, old)
    data = path.read_bytes()
    result = subprocess.run(
        [sys.executable, "-c", CRASH, str(path), old_text, new_text],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 9, result.stderr
    assert path.read_bytes() == data
    assert SecretStore(path, old, reload_interval=0.0).verify() == 4
    # The fsynced temporary file is what a crash leaves; it is complete, and the
    # store is the old one until a rekey is run again, which then succeeds.
    temps = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1
    assert json.loads(temps[0].read_bytes())["master_key_id"] == new.id
    assert SecretStore(path, old, reload_interval=0.0).rekey(new) == 4
    assert SecretStore(path, new, reload_interval=0.0).verify() == 4


def test_a_gateway_still_holding_the_old_key_fails_closed_until_restarted(
    path: Path, old: MasterKey, new: MasterKey
) -> None:
    _fill(path, old)
    ref = ApiKeyInjection("github", header="X-Api-Key")
    running = CredentialBroker(SecretStore(path, old, reload_interval=0.0))
    assert running.headers_for(ref, UPSTREAM) == ({"X-Api-Key": ROTATED_KEY}, "github@2")

    SecretStore(path, old, reload_interval=0.0).rekey(new)

    with pytest.raises(SecretStoreError, match="sealed under key") as refused:
        running.headers_for(ref, UPSTREAM)
    assert ROTATED_KEY not in str(refused.value.detail)
    restarted = CredentialBroker(SecretStore(path, new, reload_interval=0.0))
    assert restarted.headers_for(ref, UPSTREAM) == ({"X-Api-Key": ROTATED_KEY}, "github@2")


def test_a_write_with_the_old_key_after_the_rekey_is_refused(
    path: Path, old: MasterKey, new: MasterKey
) -> None:
    """A CLI still set to the old key cannot write values the others cannot open."""
    _fill(path, old)
    SecretStore(path, old, reload_interval=0.0).rekey(new)
    data = path.read_bytes()
    with pytest.raises(SecretStoreError, match="sealed under key"):
        SecretStore(path, old, reload_interval=0.0).rotate("github", Secret("sk-stale"))
    assert path.read_bytes() == data


# -- the command line ------------------------------------------------------------------


def _cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["gateway", "secrets", *args], env={"COLUMNS": "200", **env})
    return result.exit_code, result.output


def test_cli_rekey_then_only_the_new_key_verifies_and_nothing_secret_is_printed(
    path: Path, tmp_path: Path, old_text: str, new_text: str, old: MasterKey, new: MasterKey
) -> None:
    put = _fill(path, old)
    new_file = tmp_path / "new.key"
    new_file.write_text(new_text + "\n")
    code, out = _cli(
        {KEY_ENV: old_text}, "rekey", "--store", str(path), "--new-key-file", str(new_file)
    )
    assert code == 0, out
    # rich wraps the line at the terminal's width: compare the words
    assert f"4 secret versions sealed again under key {new.id} (was {old.id})" in " ".join(
        out.split()
    )
    for shown in [*_key_material(old_text, new_text), API_KEY, ROTATED_KEY, CLIENT_SECRET]:
        assert shown not in out
    assert put["pem"].splitlines()[1] not in out

    code, out = _cli({KEY_FILE_ENV: str(new_file)}, "verify", "--store", str(path))
    assert code == 0, out
    assert "4 secret versions open with the key" in out
    code, out = _cli({KEY_ENV: old_text}, "verify", "--store", str(path))
    assert code == 1
    assert "sealed under key" in out
    assert old_text not in out
    assert new_text not in out


def test_cli_refuses_a_store_that_does_not_fully_open_and_leaves_it(
    path: Path, tmp_path: Path, old_text: str, new_text: str, old: MasterKey
) -> None:
    _fill(path, old)
    _swap_in_foreign_value(path, MasterKey.from_text(MasterKey.generate_text()), old)
    data = path.read_bytes()
    new_file = tmp_path / "new.key"
    new_file.write_text(new_text)
    code, out = _cli(
        {KEY_ENV: old_text}, "rekey", "--store", str(path), "--new-key-file", str(new_file)
    )
    assert code == 1
    assert "not re-sealed" in out
    assert "github@2" in out
    assert path.read_bytes() == data
    for shown in _key_material(old_text, new_text):
        assert shown not in out


def test_cli_refuses_a_bad_new_key_file_without_showing_it(
    path: Path, tmp_path: Path, old_text: str, old: MasterKey
) -> None:
    _fill(path, old)
    data = path.read_bytes()
    bad = tmp_path / "bad.key"
    almost = MasterKey.generate_text()[:-1]  # 42 characters: not 32 bytes
    bad.write_text(almost)
    code, out = _cli({KEY_ENV: old_text}, "rekey", "--store", str(path), "--new-key-file", str(bad))
    assert code == 1
    assert "--new-key-file" in out
    assert almost not in out
    assert old_text not in out
    code, out = _cli(
        {KEY_ENV: old_text},
        "rekey",
        "--store",
        str(path),
        "--new-key-file",
        str(tmp_path / "missing.key"),
    )
    assert code == 1
    assert "cannot read" in out
    assert path.read_bytes() == data


def test_cli_takes_the_new_key_from_a_file_only(path: Path, old_text: str, new_text: str) -> None:
    """There is no option that takes the key itself on the command line."""
    code, out = _cli({KEY_ENV: old_text}, "rekey", "--store", str(path), "--new-key", new_text)
    assert code != 0
    assert new_text not in out
    assert not path.exists()
    code, out = _cli({KEY_ENV: old_text}, "rekey", "--help")
    assert "--new-key-file" in out
