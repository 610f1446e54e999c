"""`stateward ui`: the web view of the runs in $STATEWARD_HOME, for a home where no server runs
(a server started with `stateward server start` serves the page itself)."""

from __future__ import annotations

from typing import Annotated

import typer

from stateward.cli._common import errors
from stateward.cli._labels import whole_number
from stateward.exceptions import ServerUnavailable


def ui(
    host: Annotated[
        str | None,
        typer.Option(
            metavar="HOST", help="Address to listen on. (env STATEWARD_UI_HOST, default 127.0.0.1)"
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            parser=whole_number(0, 65535),
            metavar="PORT",
            help="Port, 0 to 65535; 0 picks a free one. (env STATEWARD_UI_PORT, default 8471)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the web view of the runs in $STATEWARD_HOME until Ctrl-C.

    Scripts run meanwhile on the same home share it, and show up live."""
    from stateward._embedded import serve_ui

    try:
        serve_ui(host, port)
    except (ServerUnavailable, ValueError) as error:
        errors.print(f"[red]Error:[/red] {error}")
        raise typer.Exit(1) from None
