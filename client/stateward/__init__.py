"""Stateward: run-state orchestration over gRPC.

`from stateward import flow, task` turns plain functions into orchestrated flow runs and task
runs; `Client` and `AsyncClient` talk to a server directly. This module is the whole public API.

Importing it loads no gRPC, protobuf, pydantic or server code: the names that need them
(`Client`, `AsyncClient`, `get_client`, `pause_flow_run`, `resume_flow_run`) are imported on first
use, and a flow's first run loads what it needs, so a script that only defines flows starts fast.
"""

from typing import TYPE_CHECKING, Any

from stateward import cache_policies, runtime
from stateward._context import get_run_context, tags
from stateward._logging import get_run_logger
from stateward.exceptions import (
    CancelledRun,
    CrashedRun,
    FailedRun,
    OrchestrationAborted,
    ResultTooLarge,
    StatewardError,
)
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

if TYPE_CHECKING:
    from stateward._embedded import get_client
    from stateward.client import AsyncClient, Client
    from stateward.flow_runs import pause_flow_run, resume_flow_run

# Name -> the module that defines it, imported when the name is first looked up.
_LAZY = {
    "AsyncClient": "stateward.client",
    "Client": "stateward.client",
    "get_client": "stateward._embedded",
    "pause_flow_run": "stateward.flow_runs",
    "resume_flow_run": "stateward.flow_runs",
}


def __getattr__(name: str) -> Any:
    """`Client`, `AsyncClient`, `get_client`, `pause_flow_run` and `resume_flow_run`, imported
    on first use (they load gRPC).

    Raises AttributeError for any other name, as a module does."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'stateward' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
