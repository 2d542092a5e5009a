"""agentiam keys: the authorization server's signing keys and the master key."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated

import typer

from agentiam.adapters.http.routes.credentials import SigningKeyOut
from agentiam.bootstrap import load_master_key
from agentiam.cli.common import cli_context, container
from agentiam.cli.output import console, emit, fail, handle_errors
from agentiam.core.credentials.sealing import MasterKey
from agentiam.errors import InvalidInput

app = typer.Typer(help="Token signing keys and the master key.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
COLUMNS = ["kid", "alg", "state", "activates_at", "deactivates_at", "unpublish_at"]


@app.command("list")
def list_keys(as_json: JsonOpt = False) -> None:
    """List signing keys and their state (pending, signing, verify-only, retired)."""
    with handle_errors(), container() as c:
        keys = c.signing_keys.keys()
        now = c.signing_keys.now()
    emit([SigningKeyOut.of(k, now) for k in keys], as_json=as_json, columns=COLUMNS)


@app.command()
def rotate(
    immediate: Annotated[
        bool,
        typer.Option(help="Sign with the new key at once (suspected compromise)."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a signing key. It is published now and signs after the publish delay;
    the keys it replaces stay published until their tokens have expired."""
    with handle_errors(), container() as c:
        key = c.signing_keys.rotate(cli_context(), immediate=immediate)
        now = c.signing_keys.now()
    emit(SigningKeyOut.of(key, now), as_json=as_json, columns=COLUMNS)


@app.command()
def retire(
    kid: Annotated[str, typer.Argument(help="The key's kid.")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (audited).")],
    as_json: JsonOpt = False,
) -> None:
    """Unpublish a key now: every token it signed stops verifying."""
    with handle_errors(), container() as c:
        key = c.signing_keys.retire(cli_context(), kid, reason)
        now = c.signing_keys.now()
    emit(SigningKeyOut.of(key, now), as_json=as_json, columns=COLUMNS)


@app.command("generate-master-key")
def generate_master_key(
    output: Annotated[Path, typer.Option("--output", "-o", help="File to create (mode 0600).")],
) -> None:
    """Create a master key file for AGENTIAM_MASTER_KEY_FILE. Refuses to overwrite."""
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(
            f"{output} exists",
            "Keep the existing key: replacing it makes sealed keys unreadable. To rotate "
            "it, write the new key to another file and run 'agentiam keys rewrap'.",
        )
    except OSError as exc:
        fail(f"cannot create {output}: {exc.strerror}", "Choose a writable path.")
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(MasterKey.generate_text() + "\n")
    console.print(f"Master key written to {output}. Set AGENTIAM_MASTER_KEY_FILE={output}")


@app.command()
def rewrap(
    new_master_key_file: Annotated[
        Path,
        typer.Option(
            "--new-master-key-file",
            help="A file holding the new master key (generate-master-key); never given "
            "on the command line.",
            show_default=False,
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Seal every signing key again under a new master key, in one transaction
    (audited). Refused, changing nothing, if any does not open with the current
    master key (AGENTIAM_MASTER_KEY_FILE or AGENTIAM_MASTER_KEY). Then restart every
    replica with AGENTIAM_MASTER_KEY_FILE set to the new file (docs/credentials.md)."""
    with handle_errors(), container() as c:
        current = load_master_key(c.settings)
        if current is None:
            fail(
                "no master key is configured: nothing is sealed under one to re-seal",
                "Set AGENTIAM_MASTER_KEY_FILE (or AGENTIAM_MASTER_KEY) to the current key.",
            )
        try:
            new = load_master_key(
                dataclasses.replace(
                    c.settings, master_key=None, master_key_file=str(new_master_key_file)
                )
            )
        except InvalidInput as exc:
            fail(f"--new-master-key-file: {exc.detail}", exc.hint)
        assert new is not None  # a file was named
        count = c.signing_keys.rewrap(cli_context(), new)
    result = {"signing_keys": count, "from_key_id": current.id, "to_key_id": new.id}
    if as_json:
        emit(result, as_json=True, columns=list(result))
        return
    console.print(
        f"{count} signing key{'s' if count != 1 else ''} sealed again under master key "
        f"{new.id} (was {current.id}). Restart every replica with "
        f"AGENTIAM_MASTER_KEY_FILE={new_master_key_file}."
    )
