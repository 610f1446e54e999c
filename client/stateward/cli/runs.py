"""`stateward flow-run ...` and `stateward task-run ...`: list, inspect, cancel and resume runs.

A run is named by its id, by an id prefix (the tables show the first 8 characters) or by its
name; more than one match is an error listing them."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.markup import escape
from rich.padding import Padding

from stateward.cli._common import (
    client,
    console,
    errors,
    new_table,
    parse_state_type,
    show_state,
    show_time,
)
from stateward.cli._find import find_flow_run, find_task_run, parse_since, short_id
from stateward.cli._labels import FLAG, Group, whole_number
from stateward.runs import FlowRun, RunKind, SetStateStatus, TaskRun
from stateward.states import State, StateType

if TYPE_CHECKING:
    from rich.table import Table

    from stateward.client import Client

flow_runs = typer.Typer(
    cls=Group, help="Flow runs: list, inspect, logs, cancel, resume.", no_args_is_help=True
)
task_runs = typer.Typer(cls=Group, help="Task runs: list, inspect, logs.", no_args_is_help=True)

Run = TypeVar("Run", FlowRun, TaskRun)

RUN_ARGUMENT = "The run's id, the start of its id (as the tables show it) or its name."
REPEATABLE = "Repeat it for more: a run matching any of them."
# The filters both listings (`flow-run ls`, `task-run ls`) take, declared once.
StateFilter = Annotated[
    list[StateType] | None,
    typer.Option(
        "--state",
        parser=parse_state_type,
        metavar="TYPE",
        help=f"Only runs in this state type (COMPLETED, FAILED, ...; any case). {REPEATABLE}",
    ),
]
TagFilter = Annotated[
    list[str] | None,
    typer.Option(
        "--tag",
        metavar="TAG",
        help="Only runs with this tag. Repeat it for more: a run with all of them.",
    ),
]
SinceFilter = Annotated[
    datetime | None,
    typer.Option(
        "--since",
        parser=parse_since,
        metavar="WHEN",
        help="Only runs created since then: a date-time (2026-11-21T09:30) or a span "
        "(30m, 2h, 1d).",
    ),
]
ListingLimit = Annotated[
    int, typer.Option(parser=whole_number(1), metavar="N", help="At most N runs (1 or more).")
]


def id_column(table: Table) -> None:
    table.add_column("ID", no_wrap=True, min_width=8)


def show_moment(value: datetime | None) -> str:
    """The time (today) or the day and the minute: short enough for an 80-column table."""
    if value is None:
        return "-"
    local = value.astimezone()
    today = local.date() == datetime.now().astimezone().date()
    return local.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M")


def _taken(runs: Iterator[Run], limit: int, since: datetime | None) -> tuple[list[Run], int]:
    """The first `limit` runs (created since `since`), and how many more there are."""
    shown: list[Run] = []
    more = 0
    for run in runs:
        if since is not None and run.created is not None and run.created < since:
            break  # newest first: the rest are older
        if len(shown) < limit:
            shown.append(run)
        else:
            more += 1
    return shown, more


def _print_listing(table: Table, shown: int, more: int, what: str, filtered: bool) -> None:
    if not shown:
        console.print(f"No {what}{' match these filters' if filtered else ' yet'}.")
        return
    console.print(table)
    if more:
        console.print(f"… and {more} more {what} (show them with --limit {shown + more}).")


@flow_runs.command("ls")
def list_flow_runs(
    flow: Annotated[
        list[str] | None,
        typer.Option("--flow", metavar="NAME", help=f"Only runs of this flow. {REPEATABLE}"),
    ] = None,
    state: StateFilter = None,
    tag: TagFilter = None,
    since: SinceFilter = None,
    limit: ListingLimit = 20,
) -> None:
    """List flow runs, newest first."""
    table = new_table()
    id_column(table)
    for name in ("Flow", "Name", "State", "Runs", "Started", "Ended"):
        table.add_column(name)
    with client() as connected:
        runs = connected.list_flow_runs(
            flow_names=flow or (), state_types=state or (), tags=tag or (), page_size=500
        )
        shown, more = _taken(runs, limit, since)
    moment = datetime.now(UTC)
    for run in shown:
        table.add_row(
            short_id(run.id),
            run.flow_name,
            run.name,
            _state_and_lease(run, moment),
            str(run.run_count),
            show_moment(run.start_time),
            show_moment(run.end_time),
        )
    _print_listing(table, len(shown), more, "flow runs", bool(flow or state or tag or since))


@flow_runs.command("inspect")
def inspect_flow_run(ref: Annotated[str, typer.Argument(help=RUN_ARGUMENT, metavar="RUN")]) -> None:
    """Show a flow run, its state history and its task runs."""
    with client() as connected:
        run = find_flow_run(connected, ref)
        states = connected.list_states(run.id)
        task_runs_of = list(connected.list_task_runs(flow_run_ids=[run.id], limit=1000))
        children = _subflows(connected, task_runs_of)
    moment = datetime.now(UTC)
    facts = [
        ("flow", escape(run.flow_name)),
        ("id", run.id),
        ("state", f"{show_state(run.state)}   runs {run.run_count}"),
        ("started", show_time(run.start_time)),
        ("ended", show_time(run.end_time)),
        ("run time", _run_time(run, moment)),
        *_lease_facts(run, moment),
    ]
    if run.parent_task_run_id:
        facts.append(("subflow of", f"task run {short_id(run.parent_task_run_id)}"))
    if run.parameters:
        facts.append(("parameters", escape(str(run.parameters))))
    if run.tags:
        facts.append(("tags", escape(", ".join(run.tags))))
    facts.extend(_pause_facts(run))
    print_facts(run.name, facts)
    console.print(history_table(states))
    if task_runs_of:
        table = new_table(title="Task runs")
        id_column(table)
        for name in ("Task run", "Task", "State", "Runs", "Subflow run"):
            table.add_column(name)
        for task_run in reversed(task_runs_of):
            child = children.get(task_run.id)
            table.add_row(
                short_id(task_run.id),
                task_run.name,
                task_run.task_key,
                show_state(task_run.state),
                str(task_run.run_count),
                f"{short_id(child.id)} {child.name}" if child else "",
            )
        console.print(table)


# The states whose run a process holds, renewing its heartbeat lease (the server's LEASED_TYPES).
_HELD = frozenset({StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED})


def _lease_lapsed(run: FlowRun | TaskRun, moment: datetime) -> float | None:
    """Seconds since the heartbeat lease of a run still held (Running, Cancelling, Paused)
    lapsed at `moment`; None while its process renews it, or for a run that holds none."""
    state, expires = run.state, run.lease_expires
    if state is None or state.type not in _HELD or expires is None or expires >= moment:
        return None
    return (moment - expires).total_seconds()


def _lease_facts(run: FlowRun | TaskRun, moment: datetime) -> list[tuple[str, str]]:
    """A held run whose lease lapsed: its process is gone. On the embedded default nothing
    crashes it until a process leads the loops (a server, `stateward ui`)."""
    lapsed = _lease_lapsed(run, moment)
    if lapsed is None:
        return []
    return [
        (
            "lease",
            f"[red]lapsed {lapsed:.0f} s ago[/red]: its process is gone; a server or "
            "`stateward ui` crashes it",
        )
    ]


def _state_and_lease(run: FlowRun | TaskRun, moment: datetime) -> str:
    """A listing's state cell: the state, and "lease lapsed" for a held run whose lapsed."""
    lapsed = _lease_lapsed(run, moment) is not None
    return show_state(run.state) + (" [red](lease lapsed)[/red]" if lapsed else "")


def _run_time(run: FlowRun | TaskRun, moment: datetime) -> str:
    """The run's time in Running: its stretches so far and, while it runs, the one under way
    up to `moment` (the reference's estimated run time)."""
    seconds = run.total_run_time.total_seconds()
    state = run.state
    if state is not None and state.type is StateType.RUNNING and state.timestamp is not None:
        return f"{seconds + max((moment - state.timestamp).total_seconds(), 0.0):.3f}s so far"
    return f"{seconds:.3f}s"


def _pause_facts(run: FlowRun) -> list[tuple[str, str]]:
    """What a paused run waits for: until when and under which key (what the reference's Paused
    state carries), the input it waits for (the description its resume form shows) and the
    command that resumes it. None for a run that is not paused."""
    state = run.state
    if state is None or state.type is not StateType.PAUSED:
        return []
    details = state.details
    until = show_time(details.pause_timeout) if details.pause_timeout else "resumed"
    facts = [("paused", f"until {until}, key {escape(repr(details.pause_key))}")]
    resume = f"stateward flow-run resume {run.id}"
    if details.run_input_schema:
        schema = json.loads(details.run_input_schema)
        about = schema.get("description") or schema.get("title") or details.run_input_schema
        facts.append(("waits for", escape(f"input: {about}")))
        resume += " --input '<json>'"
    facts.append(("resume with", escape(resume)))
    return facts


def _subflows(connected: Client, task_runs_of: list[TaskRun]) -> dict[str, FlowRun]:
    """The flow runs that the given task runs stand for (subflows), by task run id."""
    if not task_runs_of:
        return {}
    wanted = {run.id for run in task_runs_of}
    found: dict[str, FlowRun] = {}
    for run in connected.list_flow_runs(page_size=500, limit=5000):
        if run.parent_task_run_id in wanted:
            found[run.parent_task_run_id] = run
            if len(found) == len(wanted):
                break
    return found


def print_facts(name: str, facts: list[tuple[str, str]]) -> None:
    """A run's name, then its facts one a line, a label and a value (rich markup): a value too
    long for the terminal folds within its own column, never into the next label's."""
    console.print(f"[bold]{escape(name)}[/bold]")
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in facts:
        grid.add_row(label, value)
    console.print(Padding(grid, (0, 0, 0, 2), expand=False))


def history_table(states: list[State]) -> Table:
    table = new_table("Time", "State", "Message", title="History")
    for state in states:
        table.add_row(show_time(state.timestamp), show_state(state), state.message)
    return table


@flow_runs.command("cancel")
def cancel_flow_run(ref: Annotated[str, typer.Argument(help=RUN_ARGUMENT, metavar="RUN")]) -> None:
    """Cancel a flow run: a run no process owns is Cancelled at once; a running one becomes
    Cancelling and its process stops it."""
    with client() as connected:
        run = find_flow_run(connected, ref)
        answer = connected.set_state(
            run.id, State(StateType.CANCELLING, message="cancelled from the command line")
        )
    if (
        answer.status in (SetStateStatus.ACCEPT, SetStateStatus.REJECT)
        and answer.state
        and (answer.state.type in (StateType.CANCELLING, StateType.CANCELLED))
    ):
        console.print(f"flow run {run.name} ({run.id}) is {show_state(answer.state)}")
        return
    errors.print(
        f"[red]Not cancelled:[/red] {answer.reason or 'the server refused'} "
        f"(it is {answer.state.name if answer.state else 'without state'})"
    )
    raise typer.Exit(1)


def _json_text(text: str) -> str:
    """`--input`: JSON text, checked here so that a mistake names the option."""
    try:
        json.loads(text)
    except ValueError as error:
        raise typer.BadParameter(f"{text!r} is not JSON ({error})") from None
    return text


@flow_runs.command("resume")
def resume_flow_run(
    ref: Annotated[str, typer.Argument(help=RUN_ARGUMENT, metavar="RUN")],
    run_input: Annotated[
        str | None,
        typer.Option(
            "--input",
            parser=_json_text,
            metavar="JSON",
            help="The input the pause waits for, as JSON.",
        ),
    ] = None,
) -> None:
    """Resume a paused flow run (with --input when its pause waits for input); its process
    goes on. A pause past its timeout cannot be resumed: the run is Failed."""
    with client() as connected:
        run = find_flow_run(connected, ref)
        _check_input(run, run_input)
        answer = connected.resume_flow_run(run.id, run_input)
    if answer.status is SetStateStatus.ACCEPT:
        console.print(f"flow run {run.name} ({run.id}) is {show_state(answer.state)}")
        return
    errors.print(
        f"[red]Not resumed:[/red] {answer.reason or 'the server refused'} "
        f"(it is {show_state(answer.state)})"
    )
    raise typer.Exit(1)


def _check_input(run: FlowRun, run_input: str | None) -> None:
    """Refuse, in the command's own terms (--input), a resume whose input the run's pause
    cannot take; the server checks it again (the RPC's message names its field, run_input)."""
    state = run.state
    if state is None or state.type is not StateType.PAUSED:
        return  # the server says it is not paused
    schema = state.details.run_input_schema
    if schema and run_input is None:
        problem = f"waits for input matching its schema {schema}; give it as --input '<json>'"
    elif not schema and run_input is not None:
        problem = "waits for no input; resume it without --input"
    else:
        return
    where = f"the pause of flow run {run.name} ({run.id})"
    errors.print(f"[red]Not resumed:[/red] {escape(where)} {escape(problem)}")
    raise typer.Exit(1)


@flow_runs.command("logs")
def flow_run_logs(
    ref: Annotated[str, typer.Argument(help=RUN_ARGUMENT, metavar="RUN")],
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", metavar=FLAG, help="Keep showing lines until the run ends."),
    ] = False,
) -> None:
    """Show what a flow run and its task runs logged, oldest first."""
    show_logs(ref, follow, RunKind.FLOW_RUN)


@task_runs.command("logs")
def task_run_logs(
    ref: Annotated[str, typer.Argument(help=RUN_ARGUMENT, metavar="RUN")],
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", metavar=FLAG, help="Keep showing lines until the run ends."),
    ] = False,
) -> None:
    """Show what a task run logged, oldest first."""
    show_logs(ref, follow, RunKind.TASK_RUN)


_FOLLOW_PERIOD = 0.5


def show_logs(ref: str, follow: bool, kind: RunKind) -> None:
    """Print the lines of the run `ref` names (an id, an id prefix or a name); with `follow`, go
    on until the run is final and its last lines are shown (lines of a process still sending
    come within a second of the end)."""
    with client() as connected:
        flow_run = kind is RunKind.FLOW_RUN
        run = find_flow_run(connected, ref) if flow_run else find_task_run(connected, ref)
        run_id = run.id
        get = connected.get_flow_run if flow_run else connected.get_task_run
        after = 0
        quiet_since_final = 0
        while True:
            entries = connected.list_logs(run_id, after_id=after, page_size=1000)
            for entry in entries:
                stamp = entry.timestamp.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
                level = logging.getLevelName(entry.level)
                sys.stdout.write(f"{stamp} | {level:<7} | {entry.message}\n")
            sys.stdout.flush()
            if entries:
                after = entries[-1].id
                if len(entries) == 1000:
                    continue
            if not follow:
                return
            state = get(run_id).state
            if state is not None and state.is_final():
                # Its process may still be sending its last lines: stop after 2 s without any.
                quiet_since_final = 0 if entries else quiet_since_final + 1
                if quiet_since_final >= 4:
                    return
            time.sleep(_FOLLOW_PERIOD)


@task_runs.command("ls")
def list_task_runs(
    flow_run: Annotated[
        list[str] | None,
        typer.Option(
            "--flow-run",
            metavar="RUN",
            help=f"Only task runs of this flow run (id, id start or name). {REPEATABLE}",
        ),
    ] = None,
    task: Annotated[
        list[str] | None,
        typer.Option("--task", metavar="NAME", help=f"Only runs of this task. {REPEATABLE}"),
    ] = None,
    state: StateFilter = None,
    tag: TagFilter = None,
    since: SinceFilter = None,
    limit: ListingLimit = 20,
) -> None:
    """List task runs, newest first."""
    table = new_table()
    id_column(table)
    for name in ("Task", "Name", "Flow run", "State", "Runs", "Ended"):
        table.add_column(name)
    with client() as connected:
        flow_run_ids = [find_flow_run(connected, ref).id for ref in flow_run or ()]
        runs = connected.list_task_runs(
            flow_run_ids=flow_run_ids,
            task_keys=task or (),
            state_types=state or (),
            tags=tag or (),
            page_size=500,
        )
        shown, more = _taken(runs, limit, since)
    moment = datetime.now(UTC)
    for run in shown:
        table.add_row(
            short_id(run.id),
            run.task_key,
            run.name,
            short_id(run.flow_run_id) if run.flow_run_id else "-",
            _state_and_lease(run, moment),
            str(run.run_count),
            show_moment(run.end_time),
        )
    filtered = bool(flow_run or task or state or tag or since)
    _print_listing(table, len(shown), more, "task runs", filtered)


@task_runs.command("inspect")
def inspect_task_run(ref: Annotated[str, typer.Argument(help=RUN_ARGUMENT, metavar="RUN")]) -> None:
    """Show a task run and its state history, with each state's message."""
    with client() as connected:
        run = find_task_run(connected, ref)
        states = connected.list_states(run.id)
        parent = connected.get_flow_run(run.flow_run_id) if run.flow_run_id else None
    moment = datetime.now(UTC)
    facts = [("task", escape(run.task_key)), ("id", run.id)]
    if parent is not None:
        facts.append(("flow run", escape(f"{parent.name} ({parent.flow_name})")))
        facts.append(("flow run id", parent.id))
    facts += [
        ("state", f"{show_state(run.state)}   runs {run.run_count}"),
        ("started", show_time(run.start_time)),
        ("ended", show_time(run.end_time)),
        ("run time", _run_time(run, moment)),
        *_lease_facts(run, moment),
    ]
    if run.tags:
        facts.append(("tags", escape(", ".join(run.tags))))
    print_facts(run.name, facts)
    console.print(history_table(states))
