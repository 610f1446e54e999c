"""`stateward flow-run ...` and `stateward task-run ...`: list, inspect, cancel and resume runs."""

from __future__ import annotations

import logging
import sys
import time
from typing import Annotated

import typer
from rich.table import Table

from stateward.cli._common import (
    client,
    console,
    errors,
    parse_state_types,
    show_state,
    show_time,
)
from stateward.runs import RunKind, SetStateStatus
from stateward.states import State, StateType

flow_runs = typer.Typer(
    help="Flow runs: list, inspect, logs, cancel, resume.", no_args_is_help=True
)
task_runs = typer.Typer(help="Task runs: list, logs.", no_args_is_help=True)


@flow_runs.command("ls")
def list_flow_runs(
    flow: Annotated[
        list[str] | None, typer.Option("--flow", help="Only runs of this flow.")
    ] = None,
    state: Annotated[
        list[str] | None, typer.Option("--state", help="Only runs in this state type.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only runs with this tag.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many runs.")] = 20,
) -> None:
    """List flow runs, newest first."""
    table = Table("ID", "Flow", "Name", "State", "Runs", "Started", "Ended")
    state_types = parse_state_types(state or [])  # refused before connecting
    with client() as connected:
        for run in connected.list_flow_runs(
            flow_names=flow or (),
            state_types=state_types,
            tags=tag or (),
            limit=limit,
        ):
            table.add_row(
                run.id,
                run.flow_name,
                run.name,
                show_state(run.state),
                str(run.run_count),
                show_time(run.start_time),
                show_time(run.end_time),
            )
    console.print(table)


@flow_runs.command("inspect")
def inspect_flow_run(run_id: Annotated[str, typer.Argument(help="The flow run's id.")]) -> None:
    """Show a flow run and its state history."""
    with client() as connected:
        run = connected.get_flow_run(run_id)
        states = connected.list_states(run_id)
        task_runs_of = list(connected.list_task_runs(flow_run_ids=[run_id], limit=1000))
    console.print(f"[bold]{run.name}[/bold]  flow [bold]{run.flow_name}[/bold]  id {run.id}")
    console.print(
        f"state {show_state(run.state)}   runs {run.run_count}   "
        f"started {show_time(run.start_time)}   ended {show_time(run.end_time)}   "
        f"run time {run.total_run_time.total_seconds():.3f}s"
    )
    if run.parameters:
        console.print(f"parameters {run.parameters}")
    if run.tags:
        console.print(f"tags {', '.join(run.tags)}")
    console.print(history_table(states))
    if task_runs_of:
        table = Table("Task run", "Task", "State", "Runs", title="Task runs")
        for task_run in reversed(task_runs_of):
            table.add_row(
                task_run.name,
                task_run.task_key,
                show_state(task_run.state),
                str(task_run.run_count),
            )
        console.print(table)


def history_table(states: list[State]) -> Table:
    table = Table("Time", "State", "Type", "Message", title="History")
    for state in states:
        table.add_row(show_time(state.timestamp), show_state(state), state.type.name, state.message)
    return table


@flow_runs.command("cancel")
def cancel_flow_run(run_id: Annotated[str, typer.Argument(help="The flow run's id.")]) -> None:
    """Cancel a flow run: a run no process owns is Cancelled at once; a running one becomes
    Cancelling and its process stops it."""
    with client() as connected:
        answer = connected.set_state(
            run_id, State(StateType.CANCELLING, message="cancelled from the command line")
        )
    if (
        answer.status in (SetStateStatus.ACCEPT, SetStateStatus.REJECT)
        and answer.state
        and (answer.state.type in (StateType.CANCELLING, StateType.CANCELLED))
    ):
        console.print(f"flow run {run_id} is {show_state(answer.state)}")
        return
    errors.print(
        f"[red]Not cancelled:[/red] {answer.reason or 'the server refused'} "
        f"(it is {answer.state.name if answer.state else 'without state'})"
    )
    raise typer.Exit(1)


@flow_runs.command("resume")
def resume_flow_run(
    run_id: Annotated[str, typer.Argument(help="The paused flow run's id.")],
    run_input: Annotated[
        str | None,
        typer.Option("--input", help="The input the pause waits for, as JSON."),
    ] = None,
) -> None:
    """Resume a paused flow run (with --input when its pause waits for input); its process
    goes on. A pause past its timeout cannot be resumed: the run is Failed."""
    with client() as connected:
        answer = connected.resume_flow_run(run_id, run_input)
    if answer.status is SetStateStatus.ACCEPT:
        console.print(f"flow run {run_id} is {show_state(answer.state)}")
        return
    errors.print(
        f"[red]Not resumed:[/red] {answer.reason or 'the server refused'} "
        f"(it is {show_state(answer.state)})"
    )
    raise typer.Exit(1)


@flow_runs.command("logs")
def flow_run_logs(
    run_id: Annotated[str, typer.Argument(help="The flow run's id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep showing lines until the run ends.")
    ] = False,
) -> None:
    """Show what a flow run and its task runs logged, oldest first."""
    show_logs(run_id, follow, RunKind.FLOW_RUN)


@task_runs.command("logs")
def task_run_logs(
    run_id: Annotated[str, typer.Argument(help="The task run's id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep showing lines until the run ends.")
    ] = False,
) -> None:
    """Show what a task run logged, oldest first."""
    show_logs(run_id, follow, RunKind.TASK_RUN)


_FOLLOW_PERIOD = 0.5


def show_logs(run_id: str, follow: bool, kind: RunKind) -> None:
    """Print the run's lines; with `follow`, go on until the run is final and its last lines
    are shown (lines of a process still sending come within a second of the end)."""
    with client() as connected:
        get = connected.get_flow_run if kind is RunKind.FLOW_RUN else connected.get_task_run
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
        list[str] | None, typer.Option("--flow-run", help="Only task runs of this flow run.")
    ] = None,
    task: Annotated[
        list[str] | None, typer.Option("--task", help="Only runs of this task.")
    ] = None,
    state: Annotated[
        list[str] | None, typer.Option("--state", help="Only runs in this state type.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only runs with this tag.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many runs.")] = 20,
) -> None:
    """List task runs, newest first."""
    table = Table("ID", "Task", "Name", "Flow run", "State", "Runs", "Ended")
    state_types = parse_state_types(state or [])  # refused before connecting
    with client() as connected:
        for run in connected.list_task_runs(
            flow_run_ids=flow_run or (),
            task_keys=task or (),
            state_types=state_types,
            tags=tag or (),
            limit=limit,
        ):
            table.add_row(
                run.id,
                run.task_key,
                run.name,
                run.flow_run_id or "-",
                show_state(run.state),
                str(run.run_count),
                show_time(run.end_time),
            )
    console.print(table)
