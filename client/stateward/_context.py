"""Which run is executing right now, and the tags runs created here get, per thread and per
asyncio task (contextvars)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from stateward._records import dataclass

if TYPE_CHECKING:
    from stateward._flow_engine import FlowRunEngine
    from stateward.flows import Flow
    from stateward.futures import StatewardFuture
    from stateward.runs import CacheEntry, FlowRun, TaskRun
    from stateward.tasks import Task


@dataclass
class FlowRunContext:
    """What the code of a flow run can read about it while it runs."""

    flow: Flow[..., Any]
    flow_run: FlowRun
    engine: FlowRunEngine
    parameters: dict[str, Any]
    # Futures of the tasks this flow run submitted; it waits for them before it ends.
    futures: list[StatewardFuture[Any]] = field(default_factory=list)
    # When the flow's code started (its current attempt).
    start_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    # How many times this attempt's code called pause_flow_run without a key (makes its keys).
    pauses: int = 0
    # The settings its task runs read, as first read in this run (see `for_this_run`).
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def get(cls) -> FlowRunContext | None:
        """The context of the flow run executing now (inside a task run, its flow run's); None
        outside any, as the reference's `FlowRunContext.get()`."""
        return flow_run_context.get()


class TaskRunContext:
    """The task run whose code runs here: its task, its run record, its parameters and when
    its current attempt started. The record may be given as a function that makes it, called
    once, when it is first read: most code never reads it, and every task run makes a
    context."""

    __slots__ = ("_make_run", "_task_run", "parameters", "start_time", "task")

    def __init__(
        self,
        task: Task[..., Any],
        task_run: TaskRun | Callable[[], TaskRun],
        parameters: dict[str, Any],
        start_time: datetime | None = None,
    ) -> None:
        self.task = task
        self._task_run: TaskRun | None = None
        self._make_run: Callable[[], TaskRun] | None = None
        if callable(task_run):
            self._make_run = task_run
        else:
            self._task_run = task_run
        self.parameters = parameters
        # When the task's code started (its current attempt).
        self.start_time = start_time if start_time is not None else datetime.now(UTC)

    @classmethod
    def get(cls) -> TaskRunContext | None:
        """The context of the task run executing now; None outside any, as the reference's
        `TaskRunContext.get()`."""
        return task_run_context.get()

    @property
    def task_run(self) -> TaskRun:
        run = self._task_run
        if run is None:
            assert self._make_run is not None
            run = self._task_run = self._make_run()
            self._make_run = None
        return run

    @task_run.setter
    def task_run(self, run: TaskRun) -> None:
        self._task_run, self._make_run = run, None

    def __repr__(self) -> str:
        return f"TaskRunContext(task={self.task!r}, task_run={self.task_run!r})"


T = TypeVar("T")

flow_run_context: ContextVar[FlowRunContext | None] = ContextVar("flow_run", default=None)
# The cache entries of task runs called by the task run whose code runs here, held back until
# the outermost task run around them completes (its current attempt's list; None outside).
held_cache_entries: ContextVar[list[CacheEntry] | None] = ContextVar(
    "held_cache_entries", default=None
)
task_run_context: ContextVar[TaskRunContext | None] = ContextVar("task_run", default=None)
_tags: ContextVar[tuple[str, ...]] = ContextVar("tags", default=())


def get_run_context() -> FlowRunContext | TaskRunContext:
    """The context of the task run or flow run executing now (a task run's, inside a task run
    of a flow run). Raises MissingContextError (a RuntimeError) outside any run, as the
    reference does."""
    found = task_run_context.get() or flow_run_context.get()
    if found is None:
        from stateward.exceptions import MissingContextError

        raise MissingContextError("no flow run or task run is executing here")
    return found


def for_this_run(read: Callable[[], T]) -> T:
    """`read()` (a function of `stateward.settings`) once per flow run: inside a flow run, its
    task runs (in the flow's thread, or in a task runner's threads) get the value first read
    in it, without looking at the environment again; a variable changed meanwhile counts from
    the next flow run. Outside one, `read()`. Raises what `read` raises."""
    context = flow_run_context.get()
    if context is None:
        return read()
    kept = context.settings
    name = read.__name__
    if name in kept:
        return kept[name]  # type: ignore[no-any-return]
    value = kept[name] = read()
    return value


def current_tags() -> tuple[str, ...]:
    """The tags of the enclosing `tags()` blocks, outermost first."""
    return _tags.get()


@contextmanager
def tags(*new_tags: str) -> Iterator[set[str]]:
    """Within the block, every flow run and task run created gets `new_tags` besides its own
    (blocks nest and add up; the block's tags reach async code and submitted tasks started in
    it). Yields the set of tags now in force. Raises TypeError for a tag that is not a string."""
    for tag in new_tags:
        if not isinstance(tag, str):
            raise TypeError(f"a tag is a string, not {tag!r}")
    token = _tags.set(tuple(dict.fromkeys((*_tags.get(), *new_tags))))
    try:
        yield set(_tags.get())
    finally:
        _tags.reset(token)
