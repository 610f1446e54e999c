"""The `stateward` command line.

A command loads what it runs, no more: the app (typer, rich, each command's module) is imported
by `main`, `--version` alone needs none of it, and the commands import the client, the server,
gRPC and the database's modules when they use them."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typer.exceptions import TyperException


def main() -> None:
    """Run the command. A mistake in the command line (an unknown command, a missing argument,
    a value out of range), a Stateward error (a setting that cannot be right, a server that
    cannot be reached) or a file the command cannot use is one line on stderr and a non-zero
    exit status (2 for the command line, else 1), not a box or a traceback."""
    if sys.argv[1:] == ["--version"]:  # the app's own --version, without building the app
        print_version()
        return
    import typer
    from typer.exceptions import TyperException

    from stateward.cli.app import app
    from stateward.exceptions import StatewardError

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


def print_version() -> None:
    """`stateward --version`: the installed distribution's version."""
    from importlib.metadata import version

    print(f"stateward {version('stateward')}")


def command_line_error(error: TyperException) -> str:
    """A mistake in the command line as one line: what is wrong, the usage when an argument or
    an option is missing or a negative number was given (which click takes for an option), and
    the help to read."""
    message = _one_line(error.format_message())
    context: Any = getattr(error, "ctx", None)
    if context is None:
        return f"Error: {message}"
    kind = type(error).__name__
    number = _negative_number(getattr(error, "option_name", "")) if kind == "NoSuchOption" else ""
    if number:  # click reads `-1` as an option; no value of our commands is negative
        usage = _one_line(context.get_usage()).removeprefix("Usage: ")
        message = (
            f"{number} is not an option, and no value of this command is below 0 (usage: {usage})."
        )
    elif kind == "MissingParameter":
        usage = _one_line(context.get_usage()).removeprefix("Usage: ")
        message = f"{message.rstrip('.')} (usage: {usage})."
    elif not message.endswith((".", "?", "!")):
        message = f"{message}."
    return f"Error: {message} See '{context.command_path} --help'."


def _negative_number(option: str) -> str:
    """The negative number of the command line that click took for the unknown option `option`
    (it reads -1.5 as the option -1), or "" when `option` is not the start of one."""
    for word in sys.argv[1:]:
        if word.startswith(option):
            try:
                float(word)
            except ValueError:
                continue
            return word
    return ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def __getattr__(name: str) -> Any:
    if name == "app":  # the Typer app, for whoever drives it (built on first use)
        from stateward.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]
