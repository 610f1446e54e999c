"""Stateward: run-state orchestration over gRPC.

`from stateward import flow, task` turns plain functions into orchestrated flow runs and task
runs; `Client` and `AsyncClient` talk to a server directly. This module is the whole public API.
"""

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
