"""`stateward server start`: run a server in the foreground until SIGINT/SIGTERM.

The command lives beside the server it runs; the `stateward` command line reaches it through the
SDK's embedded launcher (`stateward._embedded.server_commands`), the one place the SDK imports
this package. Its flags are made from the settings' declarations (`stateward_service.settings`):
each flag takes its value as text, and the settings validate it, as they do the environment's.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from stateward_service.settings import Declaration, ServerSettings, SettingError, declarations

app = typer.Typer(help="Run a Stateward server.", no_args_is_help=True)


class PlainHelp(TyperCommand):
    """A command whose --help is click's plain text, wrapped to the terminal: with dozens of
    settings, rich's table cut flags and environment variable names short at 80 columns."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        super(TyperCommand, self).format_help(ctx, formatter)  # the plain command's


def _option(declared: Declaration) -> inspect.Parameter:
    """The typer option of one setting: its flag, its help with the environment variable and
    the default, and the metavar saying what it takes."""
    notes = f"env {declared.env}"
    if declared.default:
        notes += f", default {declared.default}"
    help_text = f"{declared.help} ({notes})"
    if declared.kind is bool:
        flag = declared.flag[2:]
        option = typer.Option(f"--{flag}/--no-{flag}", help=help_text, show_default=False)
        kind: Any = bool | None
    else:
        option = typer.Option(
            declared.flag, help=help_text, metavar=declared.metavar, show_default=False
        )
        kind = str | None
    return inspect.Parameter(
        declared.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind, option],
    )


def _with_setting_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` (which takes the settings as keyword arguments) one option per setting."""
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [_option(declared) for declared in declarations()], return_annotation=None
    )
    return command


@app.command(cls=PlainHelp)
@_with_setting_options
def start(**flags: Any) -> None:
    """Run the server until interrupted (SIGINT or SIGTERM stop it gracefully)."""
    # Imported here: every `stateward` command builds this one's options, few run it.
    import asyncio

    from stateward_service.server import PortUnavailable, serve
    from stateward_service.store import DatabaseRefused, DatabaseUnavailable
    from stateward_service.workers import WorkerFailed, refusal, serve_workers

    try:
        settings = ServerSettings.from_environment(**flags)
    except SettingError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(code=2) from None
    problem = refusal(settings)
    if problem is not None:
        typer.echo(f"Error: {problem}", err=True)
        raise typer.Exit(code=2)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if settings.workers > 1:
            serve_workers(settings)
        else:
            asyncio.run(serve(settings))
    except (
        PortUnavailable,
        DatabaseRefused,
        DatabaseUnavailable,
        ValueError,
        OSError,
        WorkerFailed,
    ) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(code=1) from None
