"""agentiam gateway: the enforcement points' commands.

``agentiam gateway secrets …`` manages the upstream secrets a gateway injects (see
``agentiam.adapters.gateway.broker``). The gateways themselves (``gateway mcp``,
``gateway http``) are commands of :data:`app` too: add them with ``@app.command()``.

Secret values are read from standard input (or a hidden prompt on a terminal), never
from the command line (which other users of the machine can see in the process list),
and never printed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from agentiam.adapters.gateway.broker import (
    KEY_ENV,
    KEY_FILE_ENV,
    OAuthClientSecret,
    Secret,
    SecretInfo,
    SecretKind,
    SecretStore,
    SecretValue,
    load_secrets_key,
)
from agentiam.cli.output import console, emit, fail, handle_errors

__all__ = ["app", "secrets_app"]

app = typer.Typer(
    help="Enforcement points (gateways) and the upstream secrets they inject.",
    no_args_is_help=True,
)
secrets_app = typer.Typer(
    help=(
        f"Upstream secrets, sealed at rest under {KEY_ENV} (or {KEY_FILE_ENV}). "
        "Values are read from stdin or a prompt and never shown again."
    ),
    no_args_is_help=True,
)
app.add_typer(secrets_app, name="secrets")

STORE_ENV = "AGENTIAM_GATEWAY_SECRETS_FILE"
StoreOpt = Annotated[
    Path,
    typer.Option(
        "--store",
        envvar=STORE_ENV,
        help="The sealed secret store file (created if missing).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ClientIdOpt = Annotated[
    str | None,
    typer.Option(
        "--client-id",
        help="oauth_client only: the client_id (not secret); stdin then holds only the secret.",
    ),
]
COLUMNS = ["name", "kind", "version", "created_at"]
_MAX_INPUT = 64 * 1024


def _open(path: Path) -> SecretStore:
    return SecretStore(path, load_secrets_key(), reload_interval=0.0)


def _stdin() -> str | None:
    """Standard input when it is not a terminal (a pipe or a file), else None."""
    stream = sys.stdin
    if stream is None or stream.isatty():
        return None
    text = stream.read(_MAX_INPUT + 1)
    if len(text) > _MAX_INPUT:
        fail(f"input exceeds {_MAX_INPUT} characters")
    return text


def _read_value(kind: SecretKind, client_id: str | None) -> SecretValue:
    piped = _stdin()
    if kind is SecretKind.API_KEY:
        if client_id is not None:
            fail("--client-id is for oauth_client secrets")
        text = piped if piped is not None else typer.prompt("API key", hide_input=True)
        return Secret(text.strip())
    if client_id is not None:
        secret = piped if piped is not None else typer.prompt("client_secret", hide_input=True)
        return OAuthClientSecret(client_id, Secret(secret.strip()))
    if piped is None:
        cid = typer.prompt("client_id")
        return OAuthClientSecret(
            cid.strip(), Secret(typer.prompt("client_secret", hide_input=True))
        )
    return _parse_client(piped)


def _parse_client(text: str) -> OAuthClientSecret:
    """``{"client_id": …, "client_secret": …}``, or the two on two lines."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
            return OAuthClientSecret(str(doc["client_id"]), Secret(str(doc["client_secret"])))
        except (ValueError, KeyError, TypeError):
            fail(
                "stdin is not a JSON object with client_id and client_secret",
                'Pipe {"client_id": "…", "client_secret": "…"}, or the two on two lines.',
            )
    lines = [line.strip() for line in stripped.splitlines() if line.strip()]
    if len(lines) != 2:
        fail(
            "stdin must hold the client_id and the client_secret, on two lines",
            "Or pass --client-id and pipe only the secret.",
        )
    return OAuthClientSecret(lines[0], Secret(lines[1]))


def _show(info: SecretInfo, as_json: bool) -> None:
    emit(info.to_dict(), as_json=as_json, columns=COLUMNS)


@secrets_app.command()
def put(
    name: Annotated[str, typer.Argument(help="The name gateway configuration refers to.")],
    kind: Annotated[SecretKind, typer.Option("--kind", help="api_key or oauth_client.")],
    store: StoreOpt,
    client_id: ClientIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a secret (version 1). The value comes from stdin or a hidden prompt."""
    with handle_errors():
        secret_store = _open(store)
        info = secret_store.put(name, kind, _read_value(kind, client_id))
    _show(info, as_json)


@secrets_app.command()
def rotate(
    name: Annotated[str, typer.Argument(help="The secret to replace.")],
    store: StoreOpt,
    client_id: ClientIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """New version, used from the next call; the one before is kept until the next rotation."""
    with handle_errors():
        secret_store = _open(store)
        kind = secret_store.info(name).kind
        info = secret_store.rotate(name, _read_value(kind, client_id))
    _show(info, as_json)


@secrets_app.command("list")
def list_secrets(store: StoreOpt, as_json: JsonOpt = False) -> None:
    """Names, kinds, versions and dates of the secrets kept. Never values."""
    with handle_errors():
        infos = _open(store).all()
    emit(
        [i.to_dict() for i in infos],
        as_json=as_json,
        columns=COLUMNS,
        title="Gateway secrets",
    )


@secrets_app.command()
def delete(
    name: Annotated[str, typer.Argument(help="The secret to remove, every version.")],
    store: StoreOpt,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a secret, every version of it. Gateways using it fail their next call."""
    if not yes:
        typer.confirm(f"Delete every version of {name!r}?", abort=True)
    with handle_errors():
        removed = _open(store).delete(name)
    console.print(f"deleted {removed} version{'s' if removed != 1 else ''} of {name}")


@secrets_app.command()
def verify(store: StoreOpt) -> None:
    """Check every sealed value opens with the configured key (values are not shown)."""
    with handle_errors():
        count = _open(store).verify()
    console.print(f"{count} secret version{'s' if count != 1 else ''} open with the key")


ConfigOpt = Annotated[
    Path, typer.Option("--config", help="The gateway's YAML or JSON configuration file.")
]


def _run(kind: str, config: Path) -> None:
    """Validate the configuration (a bad file stops here, naming the key), then
    serve until interrupted."""
    from agentiam.adapters.gateway.config import read_config_file

    with handle_errors():
        try:
            data = read_config_file(config)
            if kind == "http":
                from agentiam.adapters.gateway import http_proxy as gateway
            else:
                from agentiam.adapters.gateway import mcp_proxy as gateway  # type: ignore[no-redef]
            gateway.run(gateway.load_config(data))
        except ValueError as exc:
            fail(f"invalid gateway configuration {config}: {exc}", "See docs/gateway.md.")


@app.command("http")
def http_gateway(config: ConfigOpt) -> None:
    """Run the HTTP gateway: a reverse proxy for REST APIs (docs/gateway.md)."""
    _run("http", config)


@app.command("mcp")
def mcp_gateway(config: ConfigOpt) -> None:
    """Run the MCP gateway in front of upstream MCP servers (docs/gateway.md)."""
    _run("mcp", config)
