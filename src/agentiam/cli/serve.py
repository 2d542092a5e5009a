"""agentiam serve: run the control plane."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer
import uvicorn

from agentiam.adapters.http.app import create_app
from agentiam.cli.common import container
from agentiam.cli.output import console, handle_errors
from agentiam.services.context import CallContext

log = logging.getLogger("agentiam.serve")


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (AGENTIAM_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (AGENTIAM_PORT).")] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes sharing the database.")
    ] = 1,
) -> None:
    """Run the control plane. Prints a first admin key once, if none exists.

    Each worker process (like each replica) runs its own background loops: revocation
    feed sync, signing-key refresh, purging, and the expiry sweep."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Options become settings so every worker, and the default issuer URL, agree.
    if host:
        os.environ["AGENTIAM_HOST"] = host
    if port:
        os.environ["AGENTIAM_PORT"] = str(port)
    with handle_errors(), container() as c:
        issued = c.admin_keys.ensure_bootstrap_key(CallContext.system("control-plane/bootstrap"))
        if issued is not None:
            console.print(
                "\n[bold green]First admin API key[/] (shown once, stored only as a hash):\n"
                f"  {issued.secret}\n"
                "Use it as 'Authorization: Bearer <key>'. Create more with "
                "'agentiam admin-keys create'.\n",
                highlight=False,
            )
        if not (c.settings.master_key or c.settings.master_key_file):
            console.print(
                "[yellow]No master key is configured: tokens cannot be issued.[/] Create one "
                "with 'agentiam keys generate-master-key -o FILE' and set "
                "AGENTIAM_MASTER_KEY_FILE=FILE."
            )
        settings = c.settings
        common = {
            "host": settings.host,
            "port": settings.port,
            "log_level": settings.log_level,
            "server_header": False,
            "proxy_headers": False,
        }
        if workers == 1:
            uvicorn.run(create_app(c), **common)  # type: ignore[arg-type]
            return
    # Several workers: each builds its own container from the same environment.
    uvicorn.run(
        "agentiam.bootstrap:create_app",
        factory=True,
        workers=workers,
        **common,  # type: ignore[arg-type]
    )
