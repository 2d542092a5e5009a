"""Task h3: a secret's versions only ever increase over the store's life, so the audit
trail's ``name@version`` never names two different secrets.

Before this change a secret deleted (every version removed) and put again restarted at
version 1: ``crm@1`` could name two credentials over time. These tests cover the put
after a delete (in this process, through the CLI, from concurrent real processes), the
file format (``/1`` kept while there is nothing to remember, ``/2`` with the history,
a previous release's ``/1`` file opening), strict parsing of the history (a running
broker fails closed), its bound (names folded into ``deleted_floor`` past
``MAX_DELETED_NAMES``, never a version reused) and the version ceiling."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentiam.adapters.gateway import broker as broker_module
from agentiam.adapters.gateway.broker import (
    KEY_ENV,
    ApiKeyInjection,
    CredentialBroker,
    OAuthClientCredentials,
    OAuthClientSecret,
    Secret,
    SecretKind,
    SecretNotFound,
    SecretStore,
    SecretStoreError,
)
from agentiam.cli.main import app
from agentiam.core.credentials.sealing import MasterKey

FORMAT_1 = "agentiam-gateway-secrets/1"
FORMAT_2 = "agentiam-gateway-secrets/2"
MAX_VERSION = 2**53 - 1


@pytest.fixture
def key_text() -> str:
    return MasterKey.generate_text()


@pytest.fixture
def key(key_text: str) -> MasterKey:
    return MasterKey.from_text(key_text)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "secrets" / "store.json"


@pytest.fixture
def store(path: Path, key: MasterKey) -> SecretStore:
    return SecretStore(path, key, reload_interval=0.0)


def _doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _value(store: SecretStore, name: str, version: int | None = None) -> str:
    value = store.get(name, version)[1]
    assert isinstance(value, Secret)
    return value.reveal()


def _sealed_entry(key: MasterKey, name: str, version: int, value: str) -> dict[str, Any]:
    """An api_key entry as the previous release wrote it (its associated data is
    ``gateway-secret\\0name\\0version\\0kind``), built without this release's writer."""
    context = f"gateway-secret\x00{name}\x00{version}\x00api_key"
    return {
        "name": name,
        "kind": "api_key",
        "version": version,
        "created_at": "2026-01-02T03:04:05+00:00",
        "sealed": key.seal(value.encode(), context=context),
    }


# -- put after delete ------------------------------------------------------------------------


def test_a_secret_deleted_and_put_again_continues_after_its_highest_version(
    store: SecretStore, path: Path, key: MasterKey
) -> None:
    assert store.put("github", SecretKind.API_KEY, Secret("k1")).label == "github@1"
    assert store.rotate("github", Secret("k2")).label == "github@2"
    assert store.delete("github") == 2
    again = store.put("github", SecretKind.API_KEY, Secret("k3"))
    assert again.label == "github@3"  # was github@1: the label of another secret
    assert [i.label for i in store.all()] == ["github@3"]
    # the audit trail's label, as a running broker (another store object) resolves it
    broker = CredentialBroker(SecretStore(path, key, reload_interval=0.0))
    assert broker.headers_for(ApiKeyInjection("github")) == ({"Authorization": "k3"}, "github@3")
    assert store.rotate("github", Secret("k4")).version == 4
    with pytest.raises(SecretNotFound):
        store.get("github", 1)  # the old github@1 is gone, and no new one exists
    assert store.delete("github") == 2  # github@3 and github@4
    assert store.put("github", SecretKind.API_KEY, Secret("k5")).version == 5
    assert _value(store, "github") == "k5"
    # other names are not affected: a new name still starts at 1
    assert store.put("search", SecretKind.API_KEY, Secret("s1")).label == "search@1"
    # a kind may change across a delete; the version still continues
    store.delete("github")
    client = OAuthClientSecret("id", Secret("cs"))
    assert store.put("github", SecretKind.OAUTH_CLIENT, client).label == "github@6"


def test_the_cli_shows_the_continued_version(key_text: str, tmp_path: Path) -> None:
    """``agentiam gateway secrets put|rotate|delete|list``: every command opens the
    store anew, so the history is the file's, not a process's memory."""
    store = tmp_path / "gateway-secrets.json"
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None) -> str:
        result = runner.invoke(
            app,
            ["gateway", "secrets", *args, "--store", str(store)],
            input=stdin,
            env={KEY_ENV: key_text, "COLUMNS": "200"},
        )
        assert result.exit_code == 0, result.output
        return result.output

    assert json.loads(run("put", "crm", "--kind", "api_key", "--json", stdin="a\n"))["version"] == 1
    assert json.loads(run("rotate", "crm", "--json", stdin="b\n"))["version"] == 2
    assert "deleted 2 versions of crm" in run("delete", "crm", "--yes")
    assert json.loads(run("list", "--json")) == []
    shown = json.loads(run("put", "crm", "--kind", "api_key", "--json", stdin="c\n"))
    assert (shown["name"], shown["version"]) == ("crm", 3)
    assert [(e["name"], e["version"]) for e in json.loads(run("list", "--json"))] == [("crm", 3)]
    assert json.loads(run("rotate", "crm", "--json", stdin="d\n"))["version"] == 4
    listed = [(e["name"], e["version"]) for e in json.loads(run("list", "--json"))]
    assert listed == [("crm", 3), ("crm", 4)]

    # and a real process, the installed command, after another delete
    run("delete", "crm", "--yes")
    agentiam = str(Path(sys.executable).with_name("agentiam"))
    put = subprocess.run(
        [agentiam, "gateway", "secrets", "put", "crm", "--kind", "api_key", "--json"],
        input="e",
        capture_output=True,
        text=True,
        env={
            KEY_ENV: key_text,
            "AGENTIAM_GATEWAY_SECRETS_FILE": str(store),
            "PATH": "/usr/bin:/bin",
        },
        timeout=60,
        check=False,
    )
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["version"] == 5


_CHURN = """
import json, sys
from agentiam.adapters.gateway.broker import Secret, SecretKind, SecretStore, SecretStoreError
from agentiam.core.credentials.sealing import MasterKey
store = SecretStore(sys.argv[1], MasterKey.from_text(sys.argv[2]), reload_interval=0.0)
versions = []
for i in range(int(sys.argv[3])):
    try:
        versions.append(store.put("crm", SecretKind.API_KEY, Secret("v")).version)
    except SecretStoreError:  # another process put it first
        pass
    try:
        store.delete("crm")
    except SecretStoreError:  # another process deleted it first
        pass
print(json.dumps(versions))
"""


def test_concurrent_processes_putting_and_deleting_never_repeat_a_version(
    path: Path, key_text: str
) -> None:
    """Three real processes put and delete one name as fast as they can; the store's
    lock serialises them and the history is on disk, so no version is issued twice."""
    path.parent.mkdir(parents=True)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHURN, str(path), key_text, "15"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    issued: list[int] = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        issued += json.loads(out)
    assert len(issued) >= 2  # at least a put after a delete (in practice dozens)
    assert len(set(issued)) == len(issued), sorted(issued)
    final = SecretStore(path, MasterKey.from_text(key_text))
    final.put("crm", SecretKind.API_KEY, Secret("last"))
    assert final.info("crm").version == max(issued) + 1


# -- the file ----------------------------------------------------------------------------------


def test_the_file_is_format_1_until_there_is_a_deletion_to_remember(
    store: SecretStore, path: Path
) -> None:
    store.put("github", SecretKind.API_KEY, Secret("k1"))
    store.rotate("github", Secret("k2"))
    store.put("crm", SecretKind.API_KEY, Secret("c1"))
    doc = _doc(path)
    assert doc["format"] == FORMAT_1  # exactly what the previous release writes and reads
    assert set(doc) == {"format", "master_key_id", "secrets"}
    sealed = [e["sealed"] for e in doc["secrets"] if e["name"] == "github"]
    assert len(sealed) == 2

    store.delete("github")
    doc = _doc(path)
    assert doc["format"] == FORMAT_2
    assert set(doc) == {"format", "master_key_id", "secrets", "deleted", "deleted_floor"}
    assert doc["deleted"] == [{"name": "github", "last_version": 2}]
    assert doc["deleted_floor"] == 0
    # both sealed versions are gone from the file, not only their names (the values
    # were never in it as plaintext; a two-character value could also occur by
    # chance in any ciphertext's base64, which made this a flaky check of nothing)
    text = path.read_text()
    assert all(s not in text for s in sealed)
    assert [e["name"] for e in doc["secrets"]] == ["crm"]

    store.put("github", SecretKind.API_KEY, Secret("k3"))  # its entry carries version 3 now
    doc = _doc(path)
    assert doc["format"] == FORMAT_1
    assert [(e["name"], e["version"]) for e in doc["secrets"]] == [("crm", 1), ("github", 3)]


def test_a_store_written_by_the_previous_release_opens_and_continues(
    path: Path, key: MasterKey
) -> None:
    """A ``/1`` file (no history): it reads, and each name continues from its newest
    version, the highest the file can tell."""
    path.parent.mkdir(parents=True)
    previous = {
        "format": FORMAT_1,
        "master_key_id": key.id,
        "secrets": [
            _sealed_entry(key, "github", 4, "g4"),
            _sealed_entry(key, "github", 5, "g5"),
            _sealed_entry(key, "crm", 1, "c1"),
        ],
    }
    path.write_text(json.dumps(previous, indent=1) + "\n")
    store = SecretStore(path, key, reload_interval=0.0)
    assert [i.label for i in store.all()] == ["crm@1", "github@4", "github@5"]
    assert store.verify() == 3
    assert (_value(store, "github"), _value(store, "github", 4)) == ("g5", "g4")
    broker = CredentialBroker(store)
    assert broker.headers_for(ApiKeyInjection("github"))[1] == "github@5"

    assert store.rotate("github", Secret("g6")).version == 6
    store.delete("github")
    assert store.put("github", SecretKind.API_KEY, Secret("g7")).version == 7
    store.delete("crm")
    assert store.put("crm", SecretKind.API_KEY, Secret("c2")).version == 2
    assert broker.headers_for(ApiKeyInjection("crm")) == ({"Authorization": "c2"}, "crm@2")


# -- strict parsing ------------------------------------------------------------------------------


def _history_store(store: SecretStore) -> None:
    """A /2 store: github kept, crm deleted at version 2."""
    store.put("github", SecretKind.API_KEY, Secret("g1"))
    store.put("crm", SecretKind.API_KEY, Secret("c1"))
    store.rotate("crm", Secret("c2"))
    store.delete("crm")


_MALFORMED: dict[str, Callable[[dict[str, Any]], None]] = {
    "an unknown member": lambda d: d.update(comment="hi"),
    "no deleted_floor": lambda d: d.pop("deleted_floor"),
    "no deleted": lambda d: d.pop("deleted"),
    "a history in a /1 file": lambda d: d.update(format=FORMAT_1),
    "deleted not a list": lambda d: d.update(deleted={"crm": 2}),
    "a record with more members": lambda d: d["deleted"][0].update(at="now"),
    "a record without last_version": lambda d: d["deleted"][0].pop("last_version"),
    "last_version 0": lambda d: d["deleted"][0].update(last_version=0),
    "last_version true": lambda d: d["deleted"][0].update(last_version=True),
    "last_version a string": lambda d: d["deleted"][0].update(last_version="2"),
    "last_version a float": lambda d: d["deleted"][0].update(last_version=2.0),
    "last_version past 2^53-1": lambda d: d["deleted"][0].update(last_version=MAX_VERSION + 1),
    "an invalid name": lambda d: d["deleted"][0].update(name="crm\n"),
    "a repeated name": lambda d: d["deleted"].append({"name": "crm", "last_version": 9}),
    "a deleted name that has entries": lambda d: d["deleted"].append(
        {"name": "github", "last_version": 9}
    ),
    "a negative floor": lambda d: d.update(deleted_floor=-1),
    "a boolean floor": lambda d: d.update(deleted_floor=False),
    "a floor past 2^53-1": lambda d: d.update(deleted_floor=MAX_VERSION + 1),
    "an entry version past 2^53-1": lambda d: d["secrets"][0].update(version=MAX_VERSION + 1),
}


@pytest.mark.parametrize("case", sorted(_MALFORMED))
def test_the_history_is_parsed_strictly_and_fails_closed(
    case: str, store: SecretStore, path: Path, key: MasterKey
) -> None:
    _history_store(store)
    broker = CredentialBroker(SecretStore(path, key, reload_interval=0.0))
    assert broker.headers_for(ApiKeyInjection("github"))[1] == "github@1"
    doc = _doc(path)
    _MALFORMED[case](doc)
    altered = json.dumps(doc)
    path.write_text(altered)
    with pytest.raises(SecretStoreError) as refused:
        broker.headers_for(ApiKeyInjection("github"))  # a running gateway fails closed
    assert "malformed" in refused.value.detail or "deleted" in refused.value.detail
    with pytest.raises(SecretStoreError):
        store.put("crm", SecretKind.API_KEY, Secret("c3"))  # and nothing writes over it
    assert path.read_text() == altered


def test_too_many_remembered_names_are_refused(
    store: SecretStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "MAX_DELETED_NAMES", 3)
    _history_store(store)
    doc = _doc(path)
    doc["deleted"] = [{"name": f"n{i}", "last_version": 1} for i in range(3)]
    path.write_text(json.dumps(doc))
    assert len(store.all()) == 1
    doc["deleted"].append({"name": "n3", "last_version": 1})
    path.write_text(json.dumps(doc))
    with pytest.raises(SecretStoreError, match="at most 3 names"):
        store.all()


# -- the bound ----------------------------------------------------------------------------------


def test_past_the_bound_deleted_names_fold_into_the_floor_and_no_version_repeats(
    store: SecretStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "MAX_DELETED_NAMES", 3)
    last = {"a": 4, "b": 1, "c": 2, "d": 6, "e": 3}
    for name, version in last.items():
        store.put(name, SecretKind.API_KEY, Secret(f"{name}1"))
        for n in range(2, version + 1):
            store.rotate(name, Secret(f"{name}{n}"))
    for name in last:
        store.delete(name)
    doc = _doc(path)
    # the lowest versions folded: b (1), then c (2); the floor is the highest folded
    assert doc["deleted"] == [
        {"name": "a", "last_version": 4},
        {"name": "d", "last_version": 6},
        {"name": "e", "last_version": 3},
    ]
    assert doc["deleted_floor"] == 2
    put = {n: store.put(n, SecretKind.API_KEY, Secret("x")).version for n in [*last, "new"]}
    assert put == {"a": 5, "b": 3, "c": 3, "d": 7, "e": 4, "new": 3}
    assert _doc(path)["format"] == FORMAT_2  # the floor is still remembered
    assert _doc(path)["deleted"] == []


def test_churn_keeps_the_file_bounded_and_never_repeats_a_label(
    store: SecretStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random puts, rotations and deletes over 20 names with room for 4 remembered:
    every label ever issued is new, and the history never holds more than 4 names."""
    monkeypatch.setattr(broker_module, "MAX_DELETED_NAMES", 4)
    rng = random.Random(7)
    names = [f"s{i}" for i in range(20)]
    issued: set[str] = set()
    for _ in range(300):
        name = rng.choice(names)
        live = {i.name for i in store.all()}
        if name not in live:
            label = store.put(name, SecretKind.API_KEY, Secret("v")).label
        elif rng.random() < 0.5:
            label = store.rotate(name, Secret("v")).label
        else:
            store.delete(name)
            continue
        assert label not in issued
        issued.add(label)
        deleted = _doc(path).get("deleted", [])
        assert len(deleted) <= 4
    assert len(issued) > 150


def test_a_version_past_2_53_minus_1_is_refused_not_reused(
    store: SecretStore, path: Path, key: MasterKey
) -> None:
    store.put("github", SecretKind.API_KEY, Secret("g1"))
    store.put("crm", SecretKind.API_KEY, Secret("c1"))
    store.delete("crm")
    doc = _doc(path)
    doc["deleted"][0]["last_version"] = MAX_VERSION
    doc["secrets"] = [_sealed_entry(key, "github", MAX_VERSION, "g-last")]
    path.write_text(json.dumps(doc))
    assert store.info("github").version == MAX_VERSION
    before = path.read_text()
    with pytest.raises(SecretStoreError, match="every version"):
        store.put("crm", SecretKind.API_KEY, Secret("c2"))
    with pytest.raises(SecretStoreError, match="every version"):
        store.rotate("github", Secret("g-next"))
    assert path.read_text() == before
    assert store.put("other", SecretKind.API_KEY, Secret("o1")).version == 1


# -- the token cache: defence in depth for a version repeated by an edited file ---------------


@pytest.fixture
def token_endpoint() -> Iterator[tuple[str, list[str]]]:
    """A real local token endpoint answering ``at-<n>``; yields its URL and the
    Authorization header of each request."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Authorization", ""))
            data = json.dumps(
                {"access_token": f"at-{len(seen)}", "token_type": "Bearer", "expires_in": 300}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_version_repeated_by_an_edited_file_still_gets_its_own_token(
    path: Path, key: MasterKey, tmp_path: Path, token_endpoint: tuple[str, list[str]]
) -> None:
    """Not a regression test of this fix (it passed before): the history does not stop
    someone who can write the file from repeating a version (see the module
    docstring); the token cache is keyed by the sealed entry, so even then the other
    secret's token is never used. The test this replaces put a name again after a
    delete, which now gets a new version."""
    url, seen = token_endpoint
    store = SecretStore(path, key, reload_interval=0.0)
    store.put("crm", SecretKind.OAUTH_CLIENT, OAuthClientSecret("id", Secret("old")))
    broker = CredentialBroker(store)
    ref = OAuthClientCredentials("crm", url, allow_private_network=True)
    assert broker.headers_for(ref) == ({"Authorization": "Bearer at-1"}, "crm@1")
    other = SecretStore(tmp_path / "other.json", key)  # a file from elsewhere, same key
    other.put("crm", SecretKind.OAUTH_CLIENT, OAuthClientSecret("id", Secret("new")))
    path.write_bytes((tmp_path / "other.json").read_bytes())  # written over the store
    assert broker.headers_for(ref) == ({"Authorization": "Bearer at-2"}, "crm@1")
    assert len(seen) == 2
    assert seen[0] != seen[1]  # each fetched with its own client secret
