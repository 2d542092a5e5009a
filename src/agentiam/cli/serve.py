"""agentiam serve: run the control plane."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from typing import Annotated, Any

import typer
import uvicorn

from agentiam.adapters.http.app import create_app
from agentiam.adapters.http.longpoll import drain
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
        common: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port,
            "log_level": settings.log_level,
            "server_header": False,
            "proxy_headers": False,
            # A stopping server answers its held long polls at once (DrainingServer);
            # whatever else still runs after this many seconds is cut.
            "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
        }
        if workers == 1:
            DrainingServer(uvicorn.Config(create_app(c), **common)).run()
            return
    # Several workers: each builds its own container from the same environment.
    if hasattr(socket, "SO_REUSEPORT"):
        _run_reuseport_workers(workers, common)
        return
    uvicorn.run(
        "agentiam.bootstrap:create_app",
        factory=True,
        workers=workers,
        **common,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which as it begins to shut down answers the long polls it
    holds (:func:`agentiam.adapters.http.longpoll.drain`): enforcement points get
    their normal answer and reconnect, and the server does not wait out their polls.
    Whatever is still running after ``shutdown_grace_seconds`` is cut."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain()
        await super().shutdown(sockets)


def _worker(options: dict[str, Any]) -> None:
    """One worker process: its own listening socket on the shared port."""
    sock = socket.socket(socket.AF_INET6 if ":" in options["host"] else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((options["host"], options["port"]))
    config = uvicorn.Config("agentiam.bootstrap:create_app", factory=True, **options)
    DrainingServer(config).run(sockets=[sock])


def _run_reuseport_workers(workers: int, options: dict[str, Any]) -> None:
    """Run ``workers`` processes that each listen with SO_REUSEPORT, so the kernel
    spreads connections evenly (a shared accept queue lets one worker take every
    keep-alive connection of a busy client). Stops them all on SIGINT or SIGTERM."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(options,), daemon=False) for _ in range(workers)]
    for proc in procs:
        proc.start()
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive():
                proc.terminate()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log.info("started %d workers on %s:%s", workers, options["host"], options["port"])
    while not stopping and all(proc.is_alive() for proc in procs):
        time.sleep(0.5)
    stop(signal.SIGTERM, None)  # one worker died: stop the rest, so a supervisor restarts
    for proc in procs:
        proc.join(timeout=30)
