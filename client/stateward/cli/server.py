"""`stateward server start`: run a server in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Run a Stateward server.", no_args_is_help=True)


@app.command()
def start(
    host: Annotated[
        str | None,
        typer.Option(help="Address to listen on. [env: STATEWARD_HOST; default: 127.0.0.1]"),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="Port to listen on; 0 picks a free one. [env: STATEWARD_PORT; default: 8470]"
        ),
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option(
            help="SQLite database file. [env: STATEWARD_DB; default: $STATEWARD_HOME/stateward.db]"
        ),
    ] = None,
) -> None:
    """Run the server until interrupted (SIGINT or SIGTERM stop it gracefully)."""
    from stateward_service.server import PortUnavailable, serve
    from stateward_service.settings import ServerSettings
    from stateward_service.store import DatabaseInUse

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = ServerSettings.from_environment(host=host, port=port, db=db)
    try:
        asyncio.run(serve(settings))
    except (PortUnavailable, DatabaseInUse) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(code=1) from None
