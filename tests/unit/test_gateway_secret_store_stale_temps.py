"""A writer of the gateway secret store killed between its temporary file and the
rename (a real process, killed there: ``os._exit`` in place of ``os.replace``) leaves
that file beside the store. What it holds is what the store would: names, versions
and values sealed under the key, never a plaintext value or private key. The next
write, under the store's lock, removes it (and only it: another file's temporary
files and unrelated files stay), and the store is whole afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentiam.adapters.files import remove_stale_temps
from agentiam.adapters.gateway.broker import (
    OAuthClientKey,
    OAuthClientSecret,
    Secret,
    SecretKind,
    SecretStore,
)
from agentiam.core.credentials.sealing import MasterKey

SRC = str(Path(__file__).resolve().parents[2] / "src")
API_KEY = "sk-live-stale-temp-0123456789"
NEW_API_KEY = "sk-live-stale-temp-new-4242"
CLIENT_SECRET = "stale-temp-client-secret-77"

# The child: one write of the store (a put, or a rekey), killed at the rename.
CRASH = """
import os, sys
from agentiam.adapters import files
from agentiam.adapters.gateway.broker import Secret, SecretKind, SecretStore
from agentiam.core.credentials.sealing import MasterKey

def crash(src, dst):
    os._exit(9)  # killed between the fsynced temporary file and the rename

files.os.replace = crash
path, key, what, arg = sys.argv[1], MasterKey.from_text(sys.argv[2]), sys.argv[3], sys.argv[4]
store = SecretStore(path, key, reload_interval=0.0)
if what == "put":
    store.put("late", SecretKind.API_KEY, Secret(arg))
else:
    store.rekey(MasterKey.from_text(arg))
"""


def _pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _crash(path: Path, key_text: str, what: str, arg: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CRASH, str(path), key_text, what, arg],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 9, result.stderr


def _temps(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def key_text() -> str:
    return MasterKey.generate_text()


@pytest.fixture
def store(tmp_path: Path, key_text: str) -> SecretStore:
    """A store holding every kind of secret."""
    store = SecretStore(
        tmp_path / "secrets" / "store.json", MasterKey.from_text(key_text), reload_interval=0.0
    )
    store.put("github", SecretKind.API_KEY, Secret(API_KEY))
    store.put("crm", SecretKind.OAUTH_CLIENT, OAuthClientSecret("crm-gw", Secret(CLIENT_SECRET)))
    store.put(
        "erp", SecretKind.OAUTH_CLIENT_KEY, OAuthClientKey.from_pem("erp-gw", _pem().encode())
    )
    return store


def _plaintexts(store: SecretStore) -> list[str]:
    """Every value the store holds, opened, and the parts of each."""
    shown = []
    for info in store.all():
        value = store.get(info.name, info.version)[1]
        if isinstance(value, Secret):
            shown.append(value.reveal())
        elif isinstance(value, OAuthClientSecret):
            shown.append(value.client_secret.reveal())
        else:
            pem = value.private_key.reveal()
            shown += [pem, *(line for line in pem.splitlines() if "-----" not in line)]
    return shown


@pytest.mark.parametrize("what", ["put", "rekey"])
def test_a_temporary_file_left_by_a_killed_writer_is_removed_by_the_next_write(
    store: SecretStore, key_text: str, what: str
) -> None:
    path = store.path
    values = _plaintexts(store)
    secrets = [*values, NEW_API_KEY]
    new_text = MasterKey.generate_text()
    before = path.read_bytes()
    _crash(path, key_text, what, NEW_API_KEY if what == "put" else new_text)

    assert path.read_bytes() == before  # the crash left the old store
    (temp,) = _temps(path)
    held = temp.read_bytes()
    assert oct(temp.stat().st_mode & 0o777) == "0o600"
    doc = json.loads(held)  # a full copy of the store it would have been
    key_id = MasterKey.from_text(key_text if what == "put" else new_text).id
    assert doc["master_key_id"] == key_id
    for entry in doc["secrets"]:
        assert entry["sealed"].startswith(f"v1.{key_id}.")
    for value in secrets:  # sealed values only: no plaintext, no private key
        assert value.encode() not in held
    # A second writer killed the same way removed the first one before writing its
    # own: at most one is ever left.
    _crash(path, key_text, what, NEW_API_KEY if what == "put" else new_text)
    (second,) = _temps(path)
    assert second != temp

    store.put("next", SecretKind.API_KEY, Secret("sk-next-write"))  # the next write

    assert _temps(path) == []
    assert store.verify() == 4
    assert sorted(p.name for p in path.parent.iterdir()) == ["store.json", "store.json.lock"]
    assert sorted(_plaintexts(store)) == sorted([*values, "sk-next-write"])


def test_only_this_stores_temporary_files_are_removed(tmp_path: Path) -> None:
    """Another file's temporary files (a store named ``store.json.bak``, the audit
    spool's), a directory of that name and other files in the directory are left."""
    path = tmp_path / "store.json"
    stale = [tmp_path / ".store.json.abcd_123.tmp", tmp_path / ".store.json.Zz9.tmp"]
    kept = [
        tmp_path / ".store.json.bak.abcd1234.tmp",  # store.json.bak's
        tmp_path / "store.json.tmp",
        tmp_path / ".store.json..tmp",
        tmp_path / ".store.json.abcd1234.tmp.keep",
        tmp_path / ".other.json.abcd1234.tmp",
    ]
    for file in stale + kept:
        file.write_text("x")
    (tmp_path / ".store.json.dir00001.tmp").mkdir()
    assert remove_stale_temps(path) == 2
    assert not any(f.exists() for f in stale)
    assert all(f.exists() for f in kept)
    assert (tmp_path / ".store.json.dir00001.tmp").is_dir()
