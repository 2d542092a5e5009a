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
    OAuthClientKey,
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


def _ec_pem(path: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return "".join(line for line in pem.decode().splitlines() if "-----" not in line)


def test_an_oauth_client_key_comes_from_a_pem_file_and_is_never_shown(
    key_text: str, store_path: Path, tmp_path: Path
) -> None:
    body = _ec_pem(tmp_path / "client.pem")
    code, out = _run(
        key_text, store_path, "put", "crm", "--kind", "oauth_client_key", "--client-id",
        "gw-client", "--private-key-file", str(tmp_path / "client.pem"), "--kid", "k-1",
        "--allow-upstream", "https://API.crm.example:443", "--allow-upstream",
        "https://auth.crm.example", "--json",
    )  # fmt: skip
    assert code == 0, out
    shown = json.loads(out)
    assert (shown["kind"], shown["version"]) == ("oauth_client_key", 1)
    assert shown["allowed_upstreams"] == ["https://api.crm.example", "https://auth.crm.example"]
    store = SecretStore(store_path, MasterKey.from_text(key_text), reload_interval=0.0)
    _, value = store.get("crm")
    assert isinstance(value, OAuthClientKey)
    assert (value.client_id, value.alg, value.kid) == ("gw-client", "ES256", "k-1")
    # rotate: a new key for the same client, the list kept
    new_body = _ec_pem(tmp_path / "new.pem")
    code, out = _run(key_text, store_path, "rotate", "crm", "--private-key-file",
                     str(tmp_path / "new.pem"), "--json")  # fmt: skip
    assert code == 0, out
    assert json.loads(out)["allowed_upstreams"] == shown["allowed_upstreams"]
    _, rotated = store.get("crm")
    assert isinstance(rotated, OAuthClientKey)
    assert (rotated.client_id, rotated.kid) == ("gw-client", None)
    code, listed = _run(key_text, store_path, "list", "--json")
    assert code == 0, listed
    assert "https://auth.crm.example" in listed  # the table wraps it with the terminal
    code, table = _run(key_text, store_path, "list")
    assert code == 0, table
    assert "crm" in table
    for text in (out, listed, table, store_path.read_text()):
        assert body[:40] not in text
        assert new_body[:40] not in text
    # --any-upstream drops the list
    code, out = _run(key_text, store_path, "rotate", "crm", "--private-key-file",
                     str(tmp_path / "new.pem"), "--any-upstream", "--json")  # fmt: skip
    assert code == 0, out
    assert "allowed_upstreams" not in json.loads(out)


def test_oauth_client_key_options_are_checked(
    key_text: str, store_path: Path, tmp_path: Path
) -> None:
    body = _ec_pem(tmp_path / "client.pem")
    pem = str(tmp_path / "client.pem")
    code, out = _run(key_text, store_path, "put", "crm", "--kind", "oauth_client_key",
                     "--private-key-file", pem)  # fmt: skip
    assert code == 1
    assert "needs --client-id" in " ".join(out.split())  # rich wraps lines
    code, out = _run(key_text, store_path, "put", "crm", "--kind", "oauth_client_key",
                     "--client-id", "c")  # fmt: skip
    assert code == 1
    assert "--private-key-file" in " ".join(out.split())  # rich wraps lines
    code, out = _run(key_text, store_path, "put", "crm", "--kind", "oauth_client_key",
                     "--client-id", "c", "--private-key-file", pem, "--alg", "RS256")  # fmt: skip
    assert code == 1
    assert "does not fit" in " ".join(out.split())  # rich wraps lines
    assert body[:40] not in out
    code, out = _run(key_text, store_path, "put", "gh", "--kind", "api_key",
                     "--private-key-file", pem, stdin=API_KEY)  # fmt: skip
    assert code == 1
    assert "for oauth_client_key" in " ".join(out.split())  # rich wraps lines
    code, out = _run(key_text, store_path, "put", "gh", "--kind", "api_key",
                     "--allow-upstream", "https://api.example.com/v1", stdin=API_KEY)  # fmt: skip
    assert code == 1
    assert "not an origin" in " ".join(out.split())  # rich wraps lines
    assert SecretStore(store_path, MasterKey.from_text(key_text)).all() == []
