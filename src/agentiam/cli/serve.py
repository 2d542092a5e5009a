"""agentiam serve: run the control plane."""

from __future__ import annotations

import logging
import threading
from typing import Annotated

import typer
import uvicorn

from agentiam.adapters.http.app import create_app
from agentiam.bootstrap import Container
from agentiam.cli.common import container
from agentiam.cli.output import console, handle_errors
from agentiam.services.context import CallContext

log = logging.getLogger("agentiam.serve")


def _sweep_expired(c: Container, stop: threading.Event) -> None:
    """Decommission ephemeral agents whose TTL ran out, every few seconds."""
    ctx = CallContext.system("control-plane/expiry-sweeper")
    while not stop.wait(c.settings.expiry_sweep_seconds):
        try:
            expired = c.agents.expire_due(ctx)
            if expired:
                log.info("decommissioned %d expired ephemeral agents", len(expired))
        except Exception:
            log.warning("expiry sweep failed; retrying", exc_info=True)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (AGENTIAM_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (AGENTIAM_PORT).")] = None,
) -> None:
    """Run the control plane. Prints a first admin key once, if none exists."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
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
        stop = threading.Event()
        sweeper = threading.Thread(target=_sweep_expired, args=(c, stop), daemon=True)
        sweeper.start()
        try:
            uvicorn.run(
                create_app(c),
                host=host or c.settings.host,
                port=port or c.settings.port,
                log_level=c.settings.log_level,
                server_header=False,
                proxy_headers=False,
            )
        finally:
            stop.set()
