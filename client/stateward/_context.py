"""Which run is executing right now, per thread and per asyncio task (contextvars)."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stateward._flow_engine import FlowRunEngine
    from stateward.flows import Flow
    from stateward.futures import StatewardFuture
    from stateward.runs import FlowRun, TaskRun
    from stateward.tasks import Task


@dataclass
class FlowRunContext:
    flow: Flow[..., Any]
    flow_run: FlowRun
    engine: FlowRunEngine
    parameters: dict[str, Any]
    # Futures of the tasks this flow run submitted; it waits for them before it ends.
    futures: list[StatewardFuture[Any]] = field(default_factory=list)
    # When the flow's code started (its current attempt).
    start_time: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class TaskRunContext:
    task: Task[..., Any]
    task_run: TaskRun
    parameters: dict[str, Any]
    # When the task's code started (its current attempt).
    start_time: datetime = field(default_factory=lambda: datetime.now(UTC))


flow_run_context: ContextVar[FlowRunContext | None] = ContextVar("flow_run", default=None)
task_run_context: ContextVar[TaskRunContext | None] = ContextVar("task_run", default=None)


def get_run_context() -> FlowRunContext | TaskRunContext:
    """The context of the task run or flow run executing now; RuntimeError outside any run."""
    found = task_run_context.get() or flow_run_context.get()
    if found is None:
        raise RuntimeError("no flow run or task run is executing here")
    return found
