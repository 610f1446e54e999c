"""The `stateward` command: one Typer app, a sub-app per noun."""

from __future__ import annotations

import typer

from stateward.cli import server

app = typer.Typer(
    name="stateward",
    help="Stateward: run-state orchestration over gRPC.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(server.app, name="server")
