"""``agentiam gateway secrets``: put, rotate, list, delete, verify. Values come from
stdin, never from argv, and never appear in any output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentiam.adapters.gateway.broker import (
    KEY_ENV,
    OAuthClientSecret,
    Secret,
    SecretStore,
)
from agentiam.cli.main import app
from agentiam.core.credentials.sealing import MasterKey

API_KEY = "sk-live-cli-0123456789"
CLIENT_SECRET = "cli-client-secret-9876"


@pytest.fixture
def key_text() -> str:
    return MasterKey.generate_text()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "gateway-secrets.json"


def _run(key_text: str, store: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["gateway", "secrets", *args, "--store", str(store)],
        input=stdin,
        env={KEY_ENV: key_text, "COLUMNS": "200"},
    )
    return result.exit_code, result.output


def test_put_list_rotate_delete(key_text: str, store_path: Path) -> None:
    code, out = _run(
        key_text, store_path, "put", "github", "--kind", "api_key", stdin=API_KEY + "\n"
    )
    assert code == 0, out
    assert "github" in out
    assert API_KEY not in out

    code, out = _run(
        key_text,
        store_path,
        "put",
        "crm",
        "--kind",
        "oauth_client",
        stdin=json.dumps({"client_id": "crm-gw", "client_secret": CLIENT_SECRET}),
    )
    assert code == 0, out
    code, out = _run(
        key_text,
        store_path,
        "put",
        "erp",
        "--kind",
        "oauth_client",
        stdin=f"erp-gw\n{CLIENT_SECRET}\n",
    )
    assert code == 0, out

    code, out = _run(key_text, store_path, "rotate", "github", "--json", stdin="sk-rotated\n")
    assert code == 0, out
    assert json.loads(out)["version"] == 2

    code, out = _run(key_text, store_path, "list", "--json")
    assert code == 0, out
    listed = json.loads(out)
    assert [(e["name"], e["kind"], e["version"]) for e in listed] == [
        ("crm", "oauth_client", 1),
        ("erp", "oauth_client", 1),
        ("github", "api_key", 1),
        ("github", "api_key", 2),
    ]
    assert all(set(e) == {"name", "kind", "version", "created_at"} for e in listed)
    code, table = _run(key_text, store_path, "list")
    assert code == 0
    for shown in (out, table):
        assert API_KEY not in shown
        assert CLIENT_SECRET not in shown
        assert "sk-rotated" not in shown

    store = SecretStore(store_path, MasterKey.from_text(key_text))
    _, value = store.get("github")
    assert isinstance(value, Secret)
    assert value.reveal() == "sk-rotated"
    _, client = store.get("erp")
    assert isinstance(client, OAuthClientSecret)
    assert (client.client_id, client.client_secret.reveal()) == ("erp-gw", CLIENT_SECRET)

    code, out = _run(key_text, store_path, "verify")
    assert code == 0, out
    assert "4 secret versions" in out

    code, out = _run(key_text, store_path, "delete", "github", "--yes")
    assert code == 0, out
    assert "deleted 2 versions" in out
    code, out = _run(key_text, store_path, "list", "--json")
    assert [e["name"] for e in json.loads(out)] == ["crm", "erp"]


def test_client_id_option_takes_only_the_secret_from_stdin(key_text: str, store_path: Path) -> None:
    code, out = _run(
        key_text,
        store_path,
        "put",
        "crm",
        "--kind",
        "oauth_client",
        "--client-id",
        "crm-gw",
        stdin=CLIENT_SECRET + "\n",
    )
    assert code == 0, out
    _, client = SecretStore(store_path, MasterKey.from_text(key_text)).get("crm")
    assert isinstance(client, OAuthClientSecret)
    assert (client.client_id, client.client_secret.reveal()) == ("crm-gw", CLIENT_SECRET)


def test_errors_say_what_to_do_and_never_echo_values(key_text: str, store_path: Path) -> None:
    _run(key_text, store_path, "put", "github", "--kind", "api_key", stdin=API_KEY)
    code, out = _run(key_text, store_path, "put", "github", "--kind", "api_key", stdin=API_KEY)
    assert code == 1
    assert "exists" in out
    assert "rotate github" in out
    assert API_KEY not in out

    code, out = _run(MasterKey.generate_text(), store_path, "list")
    assert code == 1
    assert "sealed under key" in out
    assert KEY_ENV in out

    code, out = _run(key_text, store_path, "put", "crm", "--kind", "oauth_client", stdin="one line")
    assert code == 1
    assert "two lines" in out

    code, out = _run(key_text, store_path, "rotate", "missing", stdin="x")
    assert code == 1
    assert "no secret 'missing'" in out


def test_no_key_is_a_clear_error(store_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["gateway", "secrets", "list", "--store", str(store_path)],
        env={KEY_ENV: "", "AGENTIAM_GATEWAY_SECRETS_KEY_FILE": ""},
    )
    assert result.exit_code == 1
    assert "no gateway secrets key" in result.output
    assert "generate-master-key" in result.output


def test_the_installed_command_reads_the_value_from_a_pipe(key_text: str, store_path: Path) -> None:
    agentiam = str(Path(sys.executable).with_name("agentiam"))
    env = {
        KEY_ENV: key_text,
        "AGENTIAM_GATEWAY_SECRETS_FILE": str(store_path),
        "PATH": "/usr/bin:/bin",
    }
    put = subprocess.run(
        [agentiam, "gateway", "secrets", "put", "github", "--kind", "api_key"],
        input=API_KEY,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert put.returncode == 0, put.stderr
    assert API_KEY not in put.stdout + put.stderr
    _, value = SecretStore(store_path, MasterKey.from_text(key_text)).get("github")
    assert isinstance(value, Secret)
    assert value.reveal() == API_KEY
