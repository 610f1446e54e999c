"""`stateward watch`: print transitions live, one line each."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.text import Text

from stateward.cli._common import (
    client,
    console,
    errors,
    line_width,
    parse_state_type,
    show_state,
)
from stateward.cli._find import find_flow_run, short_id
from stateward.cli._labels import FLAG, whole_number
from stateward.exceptions import CursorExpired, StatewardError
from stateward.runs import RunKind, Transition
from stateward.states import StateType


def line(transition: Transition, width: int | None) -> Text:
    """One transition in at most `width` columns (None: whole): time, short id, run, from ->
    to, and the new state's message (cut to fit). The stderr line at each connection says the
    sequence."""
    to = transition.to_state
    what = transition.flow_name or transition.task_key
    kind = "flow" if transition.run_kind is RunKind.FLOW_RUN else "task"
    text = Text.from_markup(
        f"{to.timestamp.astimezone().strftime('%H:%M:%S') if to.timestamp else '-'} "
        f"{short_id(transition.run_id)} {kind} {escape(transition.run_name)} ({escape(what)}) "
        f"{show_state(transition.from_state)} → {show_state(to)}"
    )
    if to.message:
        text.append(": " + " ".join(to.message.split()), style="dim")
    if width is not None:
        text.truncate(width, overflow="ellipsis")
    return text


def watch(
    flow_run: Annotated[
        list[str] | None,
        typer.Option(
            "--flow-run",
            metavar="RUN",
            help="Only this flow run (id, id start or name) and its task runs (repeatable).",
        ),
    ] = None,
    run: Annotated[
        list[str] | None,
        typer.Option("--run", metavar="ID", help="Only the run with this id (repeatable)."),
    ] = None,
    state: Annotated[
        list[StateType] | None,
        typer.Option(
            "--state",
            parser=parse_state_type,
            metavar="TYPE",
            help="Only transitions into this state type (repeatable).",
        ),
    ] = None,
    from_start: Annotated[
        bool,
        typer.Option(
            "--from-start",
            metavar=FLAG,
            help="Replay the log first, from the oldest transition it keeps.",
        ),
    ] = False,
    after: Annotated[
        int | None,
        typer.Option(
            "--after",
            parser=whole_number(0),
            metavar="SEQUENCE",
            help="Replay from after this sequence number (0 or more) first.",
        ),
    ] = None,
) -> None:
    """Print transitions as they happen; reconnects by itself when the server restarts."""
    cursor = 0 if from_start else after
    connections = 0
    down = False

    def started(start: int | None) -> None:
        """Say on stderr where each connection starts: live output on stdout follows it."""
        nonlocal connections, down
        connections += 1
        verb = "reconnected, watching" if connections > 1 or down else "watching"
        down = False
        since = "" if start is None else f" after #{start}"
        errors.print(f"[dim]{verb} transitions{since} (Ctrl-C to stop)[/dim]")

    def retrying(error: StatewardError) -> None:
        """Say once per outage what cannot be reached; the client keeps trying."""
        nonlocal down
        if not down:
            lost = "lost the stream: " if connections else ""
            down = True
            errors.print(f"[yellow]{lost}{error}[/yellow] - retrying (Ctrl-C to stop)")

    def pruned(asked: int, oldest: int) -> None:
        """Say that the replay starts later than asked: the log's retention pruned the rest."""
        errors.print(
            f"[yellow]the log keeps the transitions from #{oldest} on: #{asked + 1} to "
            f"#{oldest - 1} were pruned (its retention); replaying from #{oldest}[/yellow]"
        )

    with client() as connected:
        try:
            for transition in connected.watch(
                run_ids=run or (),
                flow_run_ids=[find_flow_run(connected, ref).id for ref in flow_run or ()],
                state_types=state or (),
                after_sequence=cursor,
                started=started,
                retrying=retrying,
                pruned=pruned if from_start else None,
            ):
                console.print(line(transition, line_width()), soft_wrap=True)
        except KeyboardInterrupt:
            pass
        except CursorExpired as error:
            oldest = error.oldest_sequence
            errors.print(
                f"[red]Error:[/red] the log no longer holds the transitions after #{cursor} "
                f"(its retention pruned them): the oldest kept is {oldest}. Watch with "
                f"--after {oldest - 1} or later, with --from-start, or live without either"
            )
            raise typer.Exit(1) from None
