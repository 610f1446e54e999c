"""Stateward: run-state orchestration over gRPC.

`from stateward import flow, task` turns plain functions into orchestrated flow runs and task
runs; `Client` and `AsyncClient` talk to a server directly. This module is the whole public API.

Importing it loads nothing else: each public name is imported from the module that defines it
on first use (`from stateward import flow, task` loads the decorators, not gRPC, protobuf,
pydantic or server code; a flow's first run loads what it needs), so a script starts fast.
"""

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stateward import cache_policies, runtime
    from stateward._context import get_run_context, tags
    from stateward._embedded import get_client
    from stateward._logging import get_run_logger
    from stateward.client import AsyncClient, Client
    from stateward.exceptions import (
        CancelledRun,
        CrashedRun,
        FailedRun,
        OrchestrationAborted,
        ResultTooLarge,
        StatewardError,
    )
    from stateward.flow_runs import pause_flow_run, resume_flow_run
    from stateward.flows import Flow, flow
    from stateward.futures import StatewardFuture, StatewardFutureList, wait
    from stateward.runs import FlowRun, TaskRun, Transition
    from stateward.states import (
        AwaitingRetry,
        Cancelled,
        Cancelling,
        Completed,
        Crashed,
        Failed,
        Late,
        Paused,
        Pending,
        Retrying,
        Running,
        Scheduled,
        State,
        StateType,
    )
    from stateward.tasks import Task, exponential_backoff, task, task_input_hash
    from stateward.utilities.annotations import allow_failure, quote, unmapped

# The installed distribution's version, read from its metadata on first use (see __getattr__):
# importlib.metadata costs more than the rest of this module.
__version__: str

# Public name -> the module that defines it (None: the name is a submodule), imported when the
# name is first looked up. The TYPE_CHECKING imports above say the same to type checkers; a test
# keeps the two in step.
_LAZY: dict[str, str | None] = {
    "cache_policies": None,
    "runtime": None,
    "get_run_context": "stateward._context",
    "tags": "stateward._context",
    "get_client": "stateward._embedded",
    "get_run_logger": "stateward._logging",
    "AsyncClient": "stateward.client",
    "Client": "stateward.client",
    "CancelledRun": "stateward.exceptions",
    "CrashedRun": "stateward.exceptions",
    "FailedRun": "stateward.exceptions",
    "OrchestrationAborted": "stateward.exceptions",
    "ResultTooLarge": "stateward.exceptions",
    "StatewardError": "stateward.exceptions",
    "pause_flow_run": "stateward.flow_runs",
    "resume_flow_run": "stateward.flow_runs",
    "Flow": "stateward.flows",
    "flow": "stateward.flows",
    "StatewardFuture": "stateward.futures",
    "StatewardFutureList": "stateward.futures",
    "wait": "stateward.futures",
    "FlowRun": "stateward.runs",
    "TaskRun": "stateward.runs",
    "Transition": "stateward.runs",
    "AwaitingRetry": "stateward.states",
    "Cancelled": "stateward.states",
    "Cancelling": "stateward.states",
    "Completed": "stateward.states",
    "Crashed": "stateward.states",
    "Failed": "stateward.states",
    "Late": "stateward.states",
    "Paused": "stateward.states",
    "Pending": "stateward.states",
    "Retrying": "stateward.states",
    "Running": "stateward.states",
    "Scheduled": "stateward.states",
    "State": "stateward.states",
    "StateType": "stateward.states",
    "Task": "stateward.tasks",
    "exponential_backoff": "stateward.tasks",
    "task": "stateward.tasks",
    "task_input_hash": "stateward.tasks",
    "allow_failure": "stateward.utilities.annotations",
    "quote": "stateward.utilities.annotations",
    "unmapped": "stateward.utilities.annotations",
}


def __getattr__(name: str) -> Any:
    """Each public name, imported from the module that defines it on first use (and then kept
    in this module's namespace, so the next lookup is a plain attribute).

    `__version__` is the installed distribution's version (a str, e.g. "0.1.0"), read from its
    metadata, as the reference's `prefect.__version__`.

    Raises AttributeError for any other name, as a module does."""
    import importlib

    value: Any
    if name == "__version__":
        value = importlib.import_module("importlib.metadata").version("stateward")
    elif name not in _LAZY:
        from stateward._left_out import refusal

        why = refusal(f"stateward.{name}")
        raise AttributeError(why or f"module 'stateward' has no attribute {name!r}")
    elif (module_name := _LAZY[name]) is None:
        value = importlib.import_module(f"stateward.{name}")
    else:
        value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


class _LeftOutModules:
    """Last on `sys.meta_path`, so asked only about a module nothing else found: importing a
    module of the reference that Stateward leaves out (`stateward.artifacts`...) raises
    ImportError saying what to use instead (see `stateward._left_out`)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name.startswith("stateward."):
            from stateward._left_out import refuse

            refuse(name)


sys.meta_path.append(_LeftOutModules())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})


__all__ = [
    "AsyncClient",
    "AwaitingRetry",
    "Cancelled",
    "CancelledRun",
    "Cancelling",
    "Client",
    "Completed",
    "Crashed",
    "CrashedRun",
    "Failed",
    "FailedRun",
    "Flow",
    "FlowRun",
    "Late",
    "OrchestrationAborted",
    "Paused",
    "Pending",
    "ResultTooLarge",
    "Retrying",
    "Running",
    "Scheduled",
    "State",
    "StateType",
    "StatewardError",
    "StatewardFuture",
    "StatewardFutureList",
    "Task",
    "TaskRun",
    "Transition",
    "allow_failure",
    "cache_policies",
    "exponential_backoff",
    "flow",
    "get_client",
    "get_run_context",
    "get_run_logger",
    "pause_flow_run",
    "quote",
    "resume_flow_run",
    "runtime",
    "tags",
    "task",
    "task_input_hash",
    "unmapped",
    "wait",
]
