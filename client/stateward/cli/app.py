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


def version() -> None:
    """Print the version, the Python, platform and grpcio in use, and where runs go.

    As the reference's `prefect version`; the first line is what `stateward --version` prints."""
    import platform
    from importlib.metadata import version as installed

    from stateward import settings
    from stateward.cli import print_version
    from stateward.exceptions import InvalidSetting

    print_version()
    try:
        url = settings.api_url()
        where = (
            f"the server at {url} (STATEWARD_API_URL)"
            if url
            else f"this machine's database, {settings.default_database()} (STATEWARD_HOME)"
        )
    except InvalidSetting as error:
        where = f"nowhere until a setting is corrected: {error}"
    rows = {
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "Platform": f"{platform.system()} {platform.machine()}",
        "grpcio": installed("grpcio"),
        "Runs go to": where,
    }
    for name, value in rows.items():
        print(f"{name + ':':<12}{value}")


app.add_typer(server_commands(), name="server", cls=Group)
app.add_typer(runs.flow_runs, name="flow-run")
app.add_typer(runs.task_runs, name="task-run")
app.add_typer(limits.app, name="concurrency-limit")
app.add_typer(db.app, name="db")
app.command()(watch.watch)
app.command()(ui.ui)
app.command()(version)
