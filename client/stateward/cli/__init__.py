"""The `stateward` command line."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.exceptions import TyperException

from stateward.cli.app import app
from stateward.exceptions import StatewardError


def main() -> None:
    """Run the command. A mistake in the command line (an unknown command, a missing argument,
    a value out of range), a Stateward error (a setting that cannot be right, a server that
    cannot be reached) or a file the command cannot use is one line on stderr and a non-zero
    exit status (2 for the command line, else 1), not a box or a traceback."""
    try:
        # Not standalone: the command line's errors come here to be said in one line, where
        # typer would draw them in a box under the usage.
        code = app(standalone_mode=False)
    except TyperException as error:
        if type(error).__name__ == "NoArgsIsHelpError":
            sys.exit(2)  # no arguments: the help is printed already, as typer does
        print(command_line_error(error), file=sys.stderr)
        sys.exit(error.exit_code)
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        sys.exit(1)
    except StatewardError as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        print(f"Error: {error.strerror or error}{where}", file=sys.stderr)
        sys.exit(1)
    # A command's typer.Exit(n) comes back as n; a command that ends returns None.
    sys.exit(code if isinstance(code, int) else 0)


def command_line_error(error: TyperException) -> str:
    """A mistake in the command line as one line: what is wrong, the usage when an argument or
    an option is missing, and the help to read."""
    message = _one_line(error.format_message())
    context: Any = getattr(error, "ctx", None)
    if context is None:
        return f"Error: {message}"
    if type(error).__name__ == "MissingParameter":
        usage = _one_line(context.get_usage()).removeprefix("Usage: ")
        message = f"{message.rstrip('.')} (usage: {usage})."
    elif not message.endswith((".", "?", "!")):
        message = f"{message}."
    return f"Error: {message} See '{context.command_path} --help'."


def _one_line(text: str) -> str:
    return " ".join(text.split())


__all__ = ["app", "main"]
