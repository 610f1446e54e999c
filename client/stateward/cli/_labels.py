"""What a help page shows after each option: what to type there, in plain terms.

Typer 0.29 labels a value by its Python type (`<list[str]>`, `<int range> [x>=1]`) and a flag
as `<bool>`. Each option of ours names its value with `metavar` (NAME, N, WHEN) and a flag with
an empty one; what typer gives no setting for is done here, by the group class every app uses:
the --help flag without a label, and an argument named by its metavar alone (its help says what
it takes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

FLAG = ""  # the metavar of a flag: nothing to type after it


class NamedArgument(TyperArgument):
    """An argument whose help row is its name (RUN, TAG) and its help, without a type label."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


class Group(TyperGroup):
    """A command group whose help pages, and those of its commands, label values in plain terms
    (pass it as `cls` to every `typer.Typer` and `add_typer` of the `stateward` command)."""

    def get_help_option(self, ctx: Any) -> TyperOption | None:
        return _flag(super().get_help_option(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None and ctx.parent is None:  # `stateward deployment ls`, ported
            from stateward._left_out import missing_command

            message = missing_command(cmd_name)
            if message is not None:
                ctx.fail(message)
        if command is not None and not isinstance(command, TyperGroup):
            _flag(command.get_help_option(ctx))
            for param in command.params:
                if type(param) is TyperArgument:
                    param.__class__ = NamedArgument
        return command


def _flag(option: TyperOption | None) -> TyperOption | None:
    if option is not None:
        option.metavar = FLAG
    return option


def whole_number(least: int, most: int | None = None) -> Callable[[str], int]:
    """The parser of a whole-number option or argument from `least` to `most` (no bound when
    None): text in, the int out; anything else raises typer.BadParameter saying what to type."""
    if most is None:
        allowed = f"a whole number, {least} or more"
    else:
        allowed = f"a whole number from {least} to {most}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not {allowed}") from None
        if value < least or (most is not None and value > most):
            raise typer.BadParameter(f"{text} is not {allowed}")
        return value

    return parse
