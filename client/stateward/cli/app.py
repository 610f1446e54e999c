"""The `stateward` command: one Typer app, a sub-app per noun."""

from __future__ import annotations

from typing import Annotated

import typer

from stateward._embedded import server_commands
from stateward.cli import db, limits, runs, ui, watch
from stateward.cli._labels import FLAG, Group

app = typer.Typer(
    name="stateward",
    cls=Group,
    help="Stateward: run-state orchestration over gRPC. With STATEWARD_API_URL (host:port) "
    "set, the commands talk to that server; unset, they work on the database in STATEWARD_HOME "
    "(~/.stateward) on this machine, as the SDK does.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:  # `stateward --version` alone does not come here (see main): `--version` after
        from stateward.cli import print_version  # other options does

        print_version()
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            metavar=FLAG,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Stateward: run-state orchestration over gRPC."""


app.add_typer(server_commands(), name="server", cls=Group)
app.add_typer(runs.flow_runs, name="flow-run")
app.add_typer(runs.task_runs, name="task-run")
app.add_typer(limits.app, name="concurrency-limit")
app.add_typer(db.app, name="db")
app.command()(watch.watch)
app.command()(ui.ui)
