"""`stateward watch`: print transitions live, one line each."""

from __future__ import annotations

from typing import Annotated

import typer

from stateward.cli._common import (
    client,
    console,
    errors,
    parse_state_types,
    show_state,
    show_time,
)
from stateward.exceptions import StatewardError
from stateward.runs import Transition


def line(transition: Transition) -> str:
    """time, run, from -> to, name: one readable line."""
    kind = transition.run_kind.label
    what = transition.flow_name or transition.task_key
    return (
        f"{show_time(transition.to_state.timestamp)}  {kind} {transition.run_name} ({what})  "
        f"{show_state(transition.from_state)} → {show_state(transition.to_state)}"
        f"  [dim]#{transition.sequence} {transition.run_id}[/dim]"
    )


def watch(
    flow_run: Annotated[
        list[str] | None,
        typer.Option("--flow-run", help="Only this flow run and its task runs (repeatable)."),
    ] = None,
    run: Annotated[
        list[str] | None, typer.Option("--run", help="Only this run (repeatable).")
    ] = None,
    state: Annotated[
        list[str] | None,
        typer.Option("--state", help="Only transitions into this state type (repeatable)."),
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Replay the log from its start first.")
    ] = False,
    after: Annotated[
        int | None,
        typer.Option("--after", min=0, help="Replay from after this sequence first."),
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

    state_types = parse_state_types(state or [])  # refused before connecting
    with client() as connected:
        try:
            for transition in connected.watch(
                run_ids=run or (),
                flow_run_ids=flow_run or (),
                state_types=state_types,
                after_sequence=cursor,
                started=started,
                retrying=retrying,
            ):
                console.print(line(transition), soft_wrap=True)
        except KeyboardInterrupt:
            pass
