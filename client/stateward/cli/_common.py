"""What the commands share: the client they talk through, and how they show times and states."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from stateward import settings
from stateward.exceptions import StatewardError
from stateward.states import State, StateType

if TYPE_CHECKING:
    from rich.table import Table

    from stateward.client import Client

# COLUMNS, else rich's choice: the terminal's width, also when the output goes to a pipe from
# a terminal (`| less`), and 80 columns with no terminal at all (CI logs, files), as a terminal
# of 80 columns shows it. The tables' short ids are never cut.
console = Console(highlight=False)


def line_width() -> int | None:
    """The width to cut a line of `watch` to: the terminal's, or COLUMNS; None (keep it whole)
    into a pipe or a file with neither, for what reads it there."""
    if console.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return console.width
    return None


errors = Console(stderr=True, highlight=False, soft_wrap=True)

STATE_COLOURS = {
    StateType.SCHEDULED: "yellow",
    StateType.PENDING: "grey70",
    StateType.RUNNING: "blue",
    StateType.PAUSED: "bright_black",
    StateType.CANCELLING: "magenta",
    StateType.COMPLETED: "green",
    StateType.FAILED: "red",
    StateType.CANCELLED: "magenta",
    StateType.CRASHED: "bright_red",
}


@contextmanager
def client() -> Iterator[Client]:
    """A client of the server named by STATEWARD_API_URL (failing fast if it does not answer);
    without it, of the home's database opened here, never running the server's loops (the
    processes that run flows, and servers, do: a command is too short-lived to lead them).
    Errors become a message and exit code 1."""
    from stateward._embedded import get_client
    from stateward.client import Client

    try:
        address = settings.api_url()
        if address:
            with Client(address, timeout=settings.request_timeout()) as remote:
                yield remote
        else:
            yield get_client(lead_loops=False)
    except StatewardError as error:
        errors.print(f"[red]Error:[/red] {error}")
        raise typer.Exit(1) from None


def new_table(*columns: str, **options: Any) -> Table:
    """A rich Table with these columns and options (rich.table is loaded by the first: only
    the commands that draw one need it)."""
    from rich.table import Table

    return Table(*columns, **options)


def show_state(state: State | None) -> str:
    if state is None:
        return "[dim]-[/dim]"
    return f"[{STATE_COLOURS[state.type]}]{state.name}[/]"


def show_time(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else "-"


def parse_state_type(name: str) -> StateType:
    """`--state`: a state type's name, in any case; raises typer.BadParameter naming them all
    (the option's parser: the error names the option)."""
    try:
        return StateType[name.upper()]
    except KeyError:
        known = ", ".join(t.name for t in StateType)
        raise typer.BadParameter(f"{name!r} is not a state type ({known})") from None
