"""Task runs: a task call becomes a task run of the current flow run (or a standalone one),
created and started in one batch once its inputs are ready; `submit` creates it at once and
runs it in a worker thread; `map` submits one per element."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stateward._context import (
    FlowRunContext,
    TaskRunContext,
    flow_run_context,
    held_cache_entries,
    task_run_context,
)
from stateward._engine import PENDING_PROPOSAL, RUNNING_PROPOSAL, RunEngine, call_run
from stateward._hooks import await_from_sync
from stateward._interrupt import RunInterrupted, engine_code, waiting
from stateward._orchestration import RunOrchestration
from stateward._outcomes import (
    KEYWORD_KINDS,
    as_call,
    bind_given,
    jsonable,
    judged,
    not_ready,
    nothing_to_resolve,
    resolve,
    run_name,
)
from stateward._records import maker
from stateward._results import ResultPolicy, encode_exception, policy
from stateward._run_logs import run_extra
from stateward.client import Created
from stateward.exceptions import (
    MappingLengthMismatch,
    MappingMissingIterable,
    OrchestrationAborted,
    StatewardError,
    UpstreamTaskError,
)
from stateward.futures import StatewardFuture, StatewardFutureList
from stateward.runs import CacheEntry, OrchestrationResult, RetryPolicy, TaskRun
from stateward.states import State, StateDetails, StateType, now
from stateward.tasks import Task
from stateward.utilities.annotations import allow_failure, quote, unmapped

if TYPE_CHECKING:
    from stateward.task_runners import Dispatch

task_run_log = logging.getLogger("stateward.task_runs")
_new_task_run = maker(TaskRun)  # every task run makes one to create


class TaskRunEngine(RunEngine):
    kind = "task run"
    log = task_run_log

    def __init__(
        self,
        task: Task[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        wait_for: Iterable[Any] | None,
        map_index: int | None = None,
    ) -> None:
        super().__init__(task, args, kwargs)
        self.task = task
        self.map_index = map_index
        self.wait_for = list(wait_for or ())
        self.task_run: TaskRun | None = None
        # When the code's current attempt started (its context's start_time, which the hooks'
        # context keeps). Not the context itself: its record is made by a closure over this
        # engine, and the engine holding it would make every task run a reference cycle,
        # freed only by the cyclic garbage collector.
        self.code_started: datetime | None = None
        self.attempts = 0  # attempts of the code in this process
        self._retry_policy: RetryPolicy | None = None
        self.flow_run_id = self.parent.flow_run.id if self.parent else ""
        self.orchestration.owner = {"flow_run_id": self.flow_run_id, "task_run_id": self.id}
        self.cache_key = ""
        # Sent to a worker by a task runner: a stop of its flow run goes through this.
        self.remote: Dispatch | None = None
        self.on_a_worker = False
        # The result storage of the flow run around it, for a task not given its own.
        self.inherited_storage: Path | None = (
            self.parent.engine.result_folder() if self.parent is not None else None
        )
        # Caching inside another task run's code: this run's entry, and those of the runs its
        # own code calls (`held`, per attempt), wait in the list of the run around it until the
        # outermost one completes; they are dropped with a run that does not (as the
        # reference's nested transactions commit with the outermost one, or roll back).
        self.outer_entries = held_cache_entries.get()
        self.held: list[CacheEntry] = []
        self.own_entry: CacheEntry | None = None
        if self.parent is not None:  # its flow run's timeout or cancel stops it too
            self.parent.engine.track(self)

    @classmethod
    def on_worker(
        cls,
        task: Task[..., Any],
        task_run: TaskRun,
        parameters: dict[str, Any],
        result_storage: Path | None = None,
    ) -> TaskRunEngine:
        """The engine of a task run that a task runner sent to this process (a worker): the run
        exists, its inputs are resolved, and a cancel of the run itself reaches it;
        `result_storage` is the storage of the flow run that sent it."""
        engine = cls(task, (), parameters, None)
        engine.inherited_storage = result_storage
        engine.id = task_run.id
        engine.flow_run_id = task_run.flow_run_id
        engine.orchestration = RunOrchestration(
            engine.client, engine.supervisor, engine.id, engine.log
        )
        engine.orchestration.owner = {"flow_run_id": engine.flow_run_id, "task_run_id": engine.id}
        engine.on_a_worker = True
        engine._adopt([task_run])
        return engine

    def enter(self) -> None:
        if self.on_a_worker:  # its flow run is in another process: it is stopped through the run
            self.supervisor.on_cancel(self.id, self.request_cancel)

    def done(self) -> None:
        super().done()
        if self.on_a_worker:
            self.supervisor.forget(self.id)

    def interrupt(self, error: type[RunInterrupted]) -> None:
        remote = self.remote
        if remote is None:
            super().interrupt(error)
            return
        if self.stop.stop_requested is None:
            self.stop.stop_requested = error
        remote.stop()

    # --- the run record ---------------------------------------------------------------------------

    def _new_run(self) -> TaskRun:
        """The task run to create: Pending, named, with its parameters, tags and retry policy."""
        task = self.task
        return _new_task_run(
            id=self.id,
            name=run_name(task.task_run_name, self.parameters, self._naming_context)
            or (
                self.parent.engine.task_run_names.take(task.name, self.map_index)
                if self.parent
                else ""
            ),
            task_key=task.task_key,
            flow_run_id=self.flow_run_id,
            parameters=jsonable(self.parameters),
            tags=self.tags,
            retry_policy=self.retry_policy(),
            state=PENDING_PROPOSAL,
        )

    def _naming_context(self) -> Callable[[], None]:
        """The task run as its `task_run_name` function sees it (`stateward.runtime.task_run`)
        until the returned function is called: its id, task, parameters and tags; its name,
        not decided yet, is None. Its flow run is the one it is called in."""
        return self.hook_context(self.record)

    def create(self) -> None:
        """Create the run now, Pending (a submitted task: its future knows the run at once)."""
        new = self._new_run()
        created = self.orchestration.create(
            lambda: self.client.create_task_run(
                new.task_key,
                id=new.id,
                name=new.name,
                flow_run_id=new.flow_run_id,
                parameters=new.parameters,
                tags=new.tags,
                retry_policy=new.retry_policy,
                state=new.state,
            )
        )
        self._adopt(created)

    def _adopt(self, created: list[Created]) -> None:
        run = created[-1]
        if isinstance(run, TaskRun):
            self.task_run = run
        else:  # created by an attempt whose answer was lost
            self.task_run = self.orchestration.read(
                "reading it back", lambda: self.client.get_task_run(self.id)
            )
        self.orchestration.label = f"Task run {self.task_run.name!r} ({self.task.name})"
        self.orchestration.log_extra = run_extra(self.task_run.flow_run_id, self.id)
        self.orchestration.observe_state(self.task_run.state)

    def record(self, state: State | None = None, run_count: int | None = None) -> TaskRun:
        """The run as this process knows it (with `state` and `run_count` as given, else as
        they are now)."""
        run = self.task_run
        return TaskRun(
            id=self.id,
            name=run.name if run else "",
            task_key=self.task.task_key,
            flow_run_id=self.flow_run_id,
            parameters=self.parameters,
            tags=self.tags,
            retry_policy=self.retry_policy(),
            state=state if state is not None else self.orchestration.state,
            created=run.created if run else None,
            run_count=run_count if run_count is not None else self.run_count,
        )

    def retry_policy(self) -> RetryPolicy:
        """The task's retry policy (made once per call of the task)."""
        policy = self._retry_policy
        if policy is None:
            task = self.task
            policy = RetryPolicy(task.retries, task.retry_delays, task.retry_jitter_factor)
            self._retry_policy = policy
        return policy

    # --- inputs, caching and retries --------------------------------------------------------------

    def begin(self) -> OrchestrationResult | State | None:
        """Wait for the inputs, work out the cache key, then create the run and propose Running
        in one batch. Returns the answer to Running; None when the run exists already (it
        proposes Running itself); a final state if an input's task run failed, or if the run
        around it was stopped while it waited."""
        try:
            if self.wait_for or not nothing_to_resolve(self.parameters):
                waiting(self._wait_for_inputs)  # a signal may stop it while it waits
        except UpstreamTaskError as error:
            if self.stop.stop_requested is None:
                self.error = error
                if self.task_run is None:
                    self.create()
                decision = self.orchestration.propose(not_ready(error))
                assert decision.state is not None
                return decision.state
        if self.stop.stop_requested is not None:  # stopped with its flow run while it waited
            if self.task_run is None:
                self.create()
            return self.stopped_from_outside(self.stop.stop_requested)
        self.cache_key = self._cache_key()
        if self.task_run is not None:
            return None
        return self.orchestration.create_and_start(
            [self._new_run()], self.running_proposal(), self._adopt
        )

    def _cache_key(self) -> str:
        """The key of the task's cache policy for this run ("" for none). A policy that cannot
        compute one (a value it cannot hash) leaves the run uncached, and says why."""
        policy = self.task.caching_policy()
        if policy is None:
            return ""
        context = TaskRunContext(self.task, self.record(), self.parameters)
        flow_parameters = self.parent.parameters if self.parent is not None else {}
        try:
            return policy.key_for(context, self.parameters, flow_parameters) or ""
        except Exception as error:
            self.log.warning(
                "%s - not cached: its cache key could not be computed (%s: %s)",
                self.task.name,
                type(error).__name__,
                error,
            )
            return ""

    def _wait_for_inputs(self) -> None:
        for future in self.wait_for:
            resolve(future)
        self.parameters = resolve(self.parameters)

    def start_from(self) -> str | None:
        """On a worker: the state this process last saw. Its flow run may settle the run
        meanwhile (Cancelled, when it stopped before the cluster could say whether the task
        had started), and a task run may leave a final state for Running (a rerun): the
        worker's Running must not start a run its flow run ended."""
        if not self.on_a_worker or self.orchestration.state is None:
            return None
        return self.orchestration.state.id or None

    def running_proposal(self) -> State:
        if not self.cache_key and not self.task.refresh_cache:
            return RUNNING_PROPOSAL  # the shared default details: none to build
        return State(
            StateType.RUNNING,
            details=StateDetails(cache_key=self.cache_key, refresh_cache=self.task.refresh_cache),
        )

    def failed_attempt(self, state: State) -> State:
        """Ask `retry_condition_fn` (awaited if async) whether the failure is retried; not
        after the last attempt, which is final anyway."""
        condition = self.task.retry_condition_fn
        if condition is not None and self.attempts <= self.task.retries:
            try:
                answer = condition(self.task, self.fresh_record(), state)
                if inspect.isawaitable(answer):
                    answer = await_from_sync(answer)
                retry = bool(answer)
            except Exception:
                self.log.exception("%s - retry_condition_fn failed", self.orchestration.label)
                retry = False
            if not retry:
                state = state.with_details(unretriable=True)
        return state

    def call_sync(self) -> Any:
        self.attempts += 1
        return super().call_sync()

    async def call_async(self) -> Any:
        self.attempts += 1
        return await super().call_async()

    def result_policy(self) -> ResultPolicy:
        """How this run keeps its result: the task's options, else its flow run's storage."""
        return policy(self.task.persist_result, self.task.result_folder, self.inherited_storage)

    def after_call(self, value: Any) -> State:
        state = judged(value, self.result_what, self.log, self.result_policy())
        self.own_entry = None
        if self.cache_key and state.is_completed():
            expiration = self.task.cache_expiration
            until = now() + expiration if isinstance(expiration, timedelta) else None
            if self.outer_entries is None:  # stored with its Completed state
                state = state.with_details(cache_key=self.cache_key, cache_expiration=until)
            else:  # held until the outermost task run around it completes
                self.own_entry = CacheEntry(self.id, self.cache_key, until)
        return state

    def remember(self, final: State) -> None:
        """After the run: a completed one hands the cache entries it holds (its nested runs',
        and its own if it is nested) to the run around it, or, outermost, writes them; a run
        that did not complete drops them."""
        super().remember(final)
        entries = self.held + ([self.own_entry] if self.own_entry is not None else [])
        self.held, self.own_entry = [], None
        if not entries or not final.is_completed():
            return
        if self.outer_entries is not None:
            self.outer_entries.extend(entries)
            return
        try:
            self.client.write_cache_entries(entries)
        except StatewardError as error:
            self.log.warning(
                "%s - the cache entries of the task runs it called were not stored: %s",
                self.orchestration.label,
                error,
            )

    # --- executing the task's function ------------------------------------------------------------

    def enter_code(self) -> Callable[[], None]:
        # The record as it is now (its state: Running), made if the code asks for it.
        state = self.orchestration.state
        context = TaskRunContext(
            self.task, lambda: self.record(state, self.run_count), self.parameters
        )
        self.code_started = context.start_time
        self.held = []  # a new attempt: what an earlier one held is dropped with it
        token = task_run_context.set(context)
        held_token = held_cache_entries.set(self.held)

        def leave() -> None:
            held_cache_entries.reset(held_token)
            task_run_context.reset(token)

        return leave

    def fetch_run(self) -> TaskRun:
        return self.client.get_task_run(self.id)

    def hook_context(self, record: Any) -> Callable[[], None]:
        context = TaskRunContext(self.task, record, self.parameters, self.code_started)
        token = task_run_context.set(context)
        return lambda: task_run_context.reset(token)

    # --- the whole run ----------------------------------------------------------------------------

    def created(self) -> bool:
        return self.task_run is not None

    def run_in_worker(self) -> State:
        """In a worker thread (`submit`): run, never raising for the run's own outcome."""
        try:
            with engine_code():
                if self.task.isasync:
                    self.owns_loop = True
                    return asyncio.run(self.run_async())
                return self.run()
        except (RunInterrupted, asyncio.CancelledError):  # stopped with its flow run
            return self.orchestration.state or State(StateType.CANCELLED)
        except OrchestrationAborted as error:
            self.error = error
            return State(
                StateType.FAILED, message=f"aborted: {error}", data=encode_exception(error)
            )


def call_task(
    task: Task[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    return_state: bool,
    wait_for: Iterable[Any] | None,
) -> Any:
    """A call of `task`: its task run (for an async task, a coroutine running it)."""
    return call_run(lambda: TaskRunEngine(task, args, kwargs, wait_for), task.isasync, return_state)


def _flow_run_context(task: Task[..., Any], what: str) -> FlowRunContext:
    """The flow run `what` (submit or map) runs the task's runs in; outside one, a RuntimeError
    saying what to do instead (the reference refuses both outside a flow too)."""
    context = flow_run_context.get()
    if context is None:
        name = getattr(task.fn, "__name__", None) or "the_task"
        now = (
            f"call {name}(...) itself to run it now and get its value"
            if what == "submit"
            else f"call {name}(...) once per element to run them now"
        )
        raise RuntimeError(
            f"{name}.{what}() runs task runs in the background of a flow run, and no flow run "
            f"is running here: call it inside a @flow function, or {now}"
        )
    return context


def submit_task(
    task: Task[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    wait_for: Iterable[Any] | None,
    map_index: int | None = None,
) -> StatewardFuture[Any]:
    context = _flow_run_context(task, "submit")
    with engine_code():  # an interrupt waits until the flow run knows the future
        engine = TaskRunEngine(task, args, kwargs, wait_for, map_index)
        reused = engine.reused()
        if reused is not None:  # completed by an earlier attempt of the flow run
            finished: concurrent.futures.Future[State] = concurrent.futures.Future()
            finished.set_result(reused)
            return StatewardFuture(reused.details.task_run_id or engine.id, finished)
        engine.create()
        runner = context.engine.task_runner()
        assert engine.task_run is not None
        future: StatewardFuture[Any] = StatewardFuture(
            engine.id,
            runner.submit(engine),
            lambda: _current_state(engine),
            engine.task_run.name,
        )
        context.futures.append(future)
    return future


def _mapped(value: Any) -> list[Any] | None:
    """The elements one argument of `map` gives the mapped runs, None when it goes whole (not
    iterable, a string or mapping, `unmapped` or `quote`d). `allow_failure` around an iterable
    allows each element's failure."""
    if isinstance(value, allow_failure):
        inner = _mapped(value.value)
        return None if inner is None else [allow_failure(item) for item in inner]
    if isinstance(value, unmapped | quote | str | bytes | dict) or not isinstance(value, Iterable):
        return None
    return list(value)


def _current_state(engine: TaskRunEngine) -> State | None:
    """A submitted run's state now: as this process knows it, or, for a run on a worker, as
    the server does."""
    if engine.remote is None:
        return engine.orchestration.state
    return engine.orchestration.read(
        "reading its state", lambda: engine.client.get_task_run(engine.id)
    ).state


def map_task(
    task: Task[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    wait_for: Iterable[Any] | None,
) -> StatewardFutureList[Any]:
    _flow_run_context(task, "map")
    given = bind_given(task.signature, args, kwargs, f"{task.__name__}.map")  # no defaults
    for key, value in given.items():
        if isinstance(value, StatewardFuture | State):  # map over its result
            given[key] = resolve(value)
    mapped: dict[str, list[Any]] = {}
    for key, value in given.items():
        values = _mapped(value)
        if values is not None:
            mapped[key] = values
    if not mapped:
        kinds = ", ".join(f"{key}: {type(value).__name__}" for key, value in given.items())
        raise MappingMissingIterable(
            f"{task.name}.map() needs at least one iterable argument to map over (got "
            f"{kinds or 'no arguments'}); wrap a value every run gets whole in unmapped()"
        )
    lengths = {len(values) for values in mapped.values()}
    if len(lengths) > 1:
        sizes = ", ".join(f"{key}: {len(values)}" for key, values in mapped.items())
        raise MappingLengthMismatch(
            f"{task.name}.map() needs its iterable arguments to have one length, got {sizes}"
        )
    static = {
        key: value.value if isinstance(value, unmapped) else value
        for key, value in given.items()
        if key not in mapped
    }
    # A positional-only parameter, *args and **kwargs cannot be given by name: such a task's
    # calls are made as a call gives them.
    by_name = all(p.kind in KEYWORD_KINDS for p in task.signature.parameters.values())
    futures: StatewardFutureList[Any] = StatewardFutureList()
    for index in range(lengths.pop()):
        call = {**static, **{key: values[index] for key, values in mapped.items()}}
        args, kwargs = ((), call) if by_name else as_call(task.signature, call)
        futures.append(submit_task(task, args, kwargs, wait_for=wait_for, map_index=index))
    return futures
