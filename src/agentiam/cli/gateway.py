"""agentiam gateway: the enforcement points' commands.

``agentiam gateway secrets …`` manages the upstream secrets a gateway injects (see
``agentiam.adapters.gateway.broker``). The gateways themselves (``gateway mcp``,
``gateway http``) are commands of :data:`app` too: add them with ``@app.command()``.
``agentiam gateway spool rejected list|resend|discard`` works on the events a
gateway's audit spool set aside (``agentiam.adapters.gateway.spool.RejectedFile``),
with the bodies the guard's commands share (:mod:`agentiam.cli.spool`).

Secret values are read from standard input (or a hidden prompt on a terminal), never
from the command line (which other users of the machine can see in the process list),
and never printed. An ``oauth_client_key`` secret's private key is read from a PEM file
(``--private-key-file``), sealed into the store, and never shown again; so is its
certificate, when one is given (``--certificate-file``, checked to be for that key).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from agentiam.adapters.gateway.broker import (
    KEY_ENV,
    KEY_FILE_ENV,
    OAuthClientKey,
    OAuthClientSecret,
    Secret,
    SecretInfo,
    SecretKind,
    SecretStore,
    SecretStoreError,
    SecretValue,
    load_secrets_key,
)
from agentiam.cli.output import console, emit, fail, handle_errors
from agentiam.cli.spool import (
    ControlPlane,
    LimitOpt,
    Spool,
    YesOpt,
    discard_rejected,
    list_rejected,
    resend_rejected,
)

if TYPE_CHECKING:
    from agentiam.adapters.gateway.config import GatewayConfig

__all__ = ["app", "rejected_app", "secrets_app", "spool_app"]

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
        help=(
            "The client_id (not secret). oauth_client: stdin then holds only the secret. "
            "oauth_client_key: required for put (rotate keeps the current one)."
        ),
    ),
]
KeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--private-key-file",
        help=(
            "oauth_client_key only: a PEM file with the unencrypted private key "
            "(EC P-256, or RSA of 2048 bits or more), for private_key_jwt (RFC 7523)."
        ),
        show_default=False,
    ),
]
AlgOpt = Annotated[
    str | None,
    typer.Option(
        "--alg",
        help="oauth_client_key only: ES256 (EC), RS256 or PS256 (RSA; default RS256).",
        show_default=False,
    ),
]
KidOpt = Annotated[
    str | None,
    typer.Option(
        "--kid",
        help="oauth_client_key only: the kid the token endpoint knows the key by.",
        show_default=False,
    ),
]
CertFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--certificate-file",
        help=(
            "oauth_client_key only: the key's X.509 certificate (PEM; the first of a "
            "chain), sealed with it; the assertion then names it by x5t#S256."
        ),
        show_default=False,
    ),
]
X5tOpt = Annotated[
    bool,
    typer.Option(
        "--x5t",
        help=(
            "oauth_client_key with --certificate-file only: also send the certificate's "
            "SHA-1 thumbprint (x5t), as Microsoft Entra ID requires."
        ),
    ),
]
AllowOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-upstream",
        help=(
            "An origin (scheme://host[:port]) the secret may be sent to; repeat for "
            "more. Without any, it may go to any upstream."
        ),
        show_default=False,
    ),
]
COLUMNS = ["name", "kind", "version", "created_at", "allowed_upstreams"]
_MAX_INPUT = 64 * 1024
_NEW_KEY_HINT = "Create the new key with 'agentiam keys generate-master-key --output FILE'."


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


@dataclass(frozen=True, slots=True)
class _KeyOptions:
    """The options of an ``oauth_client_key`` secret: all None for other kinds."""

    file: Path | None = None
    alg: str | None = None
    kid: str | None = None
    certificate: Path | None = None
    x5t: bool = False

    def given(self) -> bool:
        return (
            self.file is not None
            or self.alg is not None
            or self.kid is not None
            or self.certificate is not None
            or self.x5t
        )


def _read_pem_file(path: Path) -> bytes:
    """At most ``_MAX_INPUT`` bytes of ``path`` (a PEM file named by an option)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_INPUT + 1)
    except OSError as exc:
        fail(f"cannot read {path}: {type(exc).__name__}")
    if len(data) > _MAX_INPUT:
        fail(f"{path} exceeds {_MAX_INPUT} bytes")
    return data


def _read_client_key(client_id: str | None, options: _KeyOptions) -> OAuthClientKey:
    """The client and its private key, from ``--private-key-file`` (never from argv or
    a prompt that would echo it)."""
    if client_id is None:
        fail("an oauth_client_key secret needs --client-id")
    if options.file is None:
        fail("an oauth_client_key secret needs --private-key-file PEM")
    pem = _read_pem_file(options.file)
    certificate = None if options.certificate is None else _read_pem_file(options.certificate)
    return OAuthClientKey.from_pem(
        client_id,
        pem,
        alg=options.alg,
        kid=options.kid,
        certificate=certificate,
        x5t=options.x5t,
    )


def _read_value(
    kind: SecretKind, client_id: str | None, key: _KeyOptions | None = None
) -> SecretValue:
    key = key or _KeyOptions()
    if kind is SecretKind.OAUTH_CLIENT_KEY:
        return _read_client_key(client_id, key)
    if key.given():
        fail(
            "--private-key-file, --alg, --kid, --certificate-file and --x5t are for "
            "oauth_client_key secrets"
        )
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
    kind: Annotated[
        SecretKind,
        typer.Option("--kind", help="api_key, oauth_client or oauth_client_key."),
    ],
    store: StoreOpt,
    client_id: ClientIdOpt = None,
    private_key_file: KeyFileOpt = None,
    alg: AlgOpt = None,
    kid: KidOpt = None,
    certificate_file: CertFileOpt = None,
    x5t: X5tOpt = False,
    allow_upstream: AllowOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a secret: version 1, or after the highest it had if it was deleted (versions
    are never reused). The value comes from stdin or a hidden prompt; an
    oauth_client_key's private key from --private-key-file."""
    with handle_errors():
        secret_store = _open(store)
        key = _KeyOptions(private_key_file, alg, kid, certificate_file, x5t)
        value = _read_value(kind, client_id, key)
        info = secret_store.put(name, kind, value, allowed_upstreams=allow_upstream or None)
    _show(info, as_json)


@secrets_app.command()
def rotate(
    name: Annotated[str, typer.Argument(help="The secret to replace.")],
    store: StoreOpt,
    client_id: ClientIdOpt = None,
    private_key_file: KeyFileOpt = None,
    alg: AlgOpt = None,
    kid: KidOpt = None,
    certificate_file: CertFileOpt = None,
    x5t: X5tOpt = False,
    allow_upstream: AllowOpt = None,
    any_upstream: Annotated[
        bool,
        typer.Option(
            "--any-upstream", help="Drop the allowed upstreams: the new version may go anywhere."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """New version, used from the next call; the one before is kept until the next
    rotation. It keeps the current version's allowed upstreams unless --allow-upstream
    (a new list) or --any-upstream is given."""
    if allow_upstream and any_upstream:
        fail("--allow-upstream and --any-upstream exclude each other")
    with handle_errors():
        secret_store = _open(store)
        kind = secret_store.info(name).kind
        if kind is SecretKind.OAUTH_CLIENT_KEY and client_id is None:
            _, current = secret_store.get(name)  # a new key for the same client
            if isinstance(current, OAuthClientKey):
                client_id = current.client_id
        key = _KeyOptions(private_key_file, alg, kid, certificate_file, x5t)
        value = _read_value(kind, client_id, key)
        allowed: list[str] | Literal["keep"] | None = "keep"
        if allow_upstream:
            allowed = allow_upstream
        elif any_upstream:
            allowed = None
        info = secret_store.rotate(name, value, allowed_upstreams=allowed)
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


@secrets_app.command()
def rekey(
    store: StoreOpt,
    new_key_file: Annotated[
        Path,
        typer.Option(
            "--new-key-file",
            help="A file holding the new key (agentiam keys generate-master-key); "
            "never given on the command line.",
            show_default=False,
        ),
    ],
) -> None:
    """Seal every value again under a new key (all versions, the deleted names'
    history kept), atomically: a value that does not open with the current key
    (AGENTIAM_GATEWAY_SECRETS_KEY or _FILE) refuses the whole store, unchanged.
    Gateways reading the store refuse every injection until restarted with the new
    key (docs/gateway.md)."""
    with handle_errors():
        current = load_secrets_key()
        try:
            new_key = load_secrets_key({KEY_FILE_ENV: str(new_key_file)})
        except SecretStoreError as exc:
            fail(f"--new-key-file: {exc.detail}", _NEW_KEY_HINT)
        count = SecretStore(store, current, reload_interval=0.0).rekey(new_key)
    console.print(
        f"{count} secret version{'s' if count != 1 else ''} sealed again under key "
        f"{new_key.id} (was {current.id}). Restart the gateways reading "
        f"{store} with {KEY_FILE_ENV}={new_key_file}."
    )


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


# -- agentiam gateway spool rejected: the spool's set-aside events ----------------------

spool_app = typer.Typer(
    help="A gateway's local audit spool (its directory comes from the configuration).",
    no_args_is_help=True,
)
rejected_app = typer.Typer(
    help=(
        "Events the control plane refused for good, kept in the spool's rejected.jsonl: "
        "list them, send them again once the cause is fixed, or discard them (audited). "
        "resend and discard need the gateway stopped."
    ),
    no_args_is_help=True,
)
app.add_typer(spool_app, name="spool")
spool_app.add_typer(rejected_app, name="rejected")


def _gateway_config(config: Path) -> GatewayConfig:
    """The common part of a gateway's configuration file (name, control plane,
    spool), checked as the gateway checks it; the kind's own section is not read."""
    from agentiam.adapters.gateway.config import load_gateway_config, read_config_file

    try:
        data = read_config_file(config)
        keys = frozenset(str(k) for k in data) if isinstance(data, dict) else frozenset()
        kind = "http" if isinstance(data, dict) and "routes" in data else "mcp"
        return load_gateway_config(data, kind, section_keys=keys)
    except ValueError as exc:
        fail(f"invalid gateway configuration {config}: {exc}", "See docs/gateway.md.")


def _spool(settings: GatewayConfig) -> Spool:
    return Spool("gateway", settings.spool_directory, settings.spool_rejected_max_bytes)


def _control_plane(settings: GatewayConfig) -> ControlPlane:
    """The gateway's control plane and key (``control_plane.key_env``)."""
    cp = settings.control_plane
    return ControlPlane(cp.url, cp.key_env, cp.admin_key)


@rejected_app.command("list")
def rejected_list(config: ConfigOpt, as_json: JsonOpt = False, limit: LimitOpt = 100) -> None:
    """How many events are set aside, why, and their ids, sources and actions (never
    their bodies). Safe while the gateway runs."""
    list_rejected(_spool(_gateway_config(config)), as_json=as_json, limit=limit)


@rejected_app.command("resend")
def rejected_resend(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """Send the set-aside events to the control plane again, with the gateway's key
    (control_plane.key_env). Those it accepts leave the file; those it refuses again
    stay, with the new reason (exit code 2). Stop the gateway first."""
    settings = _gateway_config(config)
    resend_rejected(_spool(settings), _control_plane(settings), as_json=as_json)


@rejected_app.command("discard")
def rejected_discard(config: ConfigOpt, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Delete the set-aside events for good. The control plane must first store an
    audit record of it (who, how many, every event id), shipped with the gateway's
    key; if it does not, nothing is deleted. Stop the gateway first."""
    settings = _gateway_config(config)
    discard_rejected(
        _spool(settings),
        _control_plane(settings),
        source=f"gateway/{settings.name}",
        yes=yes,
        as_json=as_json,
    )
