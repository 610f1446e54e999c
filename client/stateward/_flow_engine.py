"""Flow runs: a flow call becomes a flow run (a subflow is also tracked by a task run in its
parent flow run), created and started in one batch; the flow waits for the task runs it
submitted; SIGTERM and interrupts crash it."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stateward import _run_logs as run_logs
from stateward._context import FlowRunContext, flow_run_context
from stateward._engine import PENDING_PROPOSAL, RUNNING_PROPOSAL, RunEngine, call_run
from stateward._interrupt import (
    Interruptible,
    RunCancelled,
    RunCrashed,
    RunInterrupted,
    RunTimedOut,
    engine_code,
    signal_must_wait,
    waiting,
)
from stateward._outcomes import (
    TaskRunNames,
    failed,
    jsonable,
    judged,
    not_ready,
    resolve,
    run_name,
)
from stateward._results import ResultPolicy, policy
from stateward._run_logs import run_extra
from stateward._signals import TerminationSignal, crash_on_signals, install_wake_handler
from stateward.client import Created
from stateward.exceptions import ParameterTypeError, UpstreamTaskError
from stateward.flows import Flow
from stateward.ids import new_id
from stateward.runs import FlowRun, OrchestrationResult, RetryPolicy, TaskRun
from stateward.states import State, StateType
from stateward.task_runners import TaskRunner, ThreadPoolTaskRunner

flow_run_log = logging.getLogger("stateward.flow_runs")
# What a signal to the process raises in a flow run's code (see `_signals`): it crashes the run.
_CRASH_SIGNALS = (KeyboardInterrupt, TerminationSignal)


class FlowRunEngine(RunEngine):
    kind = "flow run"
    log = flow_run_log

    def __init__(
        self,
        flow: Flow[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        wait_for: Iterable[Any] | None = None,
    ) -> None:
        super().__init__(flow, args, kwargs)
        self.orchestration.owner = {"flow_run_id": self.id, "task_run_id": ""}
        self.flow = flow
        self.wait_for = list(wait_for or ())
        self.flow_run: FlowRun | None = None
        self.context: FlowRunContext | None = None
        # This run's copy of the flow's task runner, started at the first submit.
        self.runner: TaskRunner | None = None
        # The task runs and subflows of this run under way (their engines): when this run is
        # cancelled or times out, they are stopped too.
        self.nested: set[RunEngine] = set()
        self.task_run_lock = threading.Lock()
        # Across this run's attempts: the calls of tasks and subflows so far in this attempt,
        # by name; those an attempt completed, by (name, index); the task run tracking each
        # subflow call (one across attempts).
        self.calls_this_attempt: collections.Counter[str] = collections.Counter()
        self.completed_calls: dict[tuple[str, int], State] = {}
        self.tracking_runs: dict[tuple[str, int], str] = {}
        self.task_run_names = TaskRunNames()  # of its task runs, subflows' included
        # The result storage of the flow run around this subflow, for a flow not given its own.
        self.inherited_storage: Path | None = (
            self.parent.engine.result_folder() if self.parent is not None else None
        )

    def begin(self) -> OrchestrationResult | State:
        """Create the flow run (Pending) and propose Running, in one batch. A subflow's task run
        in its parent flow run is created in the same batch. A subflow first waits for its
        upstreams; when one did not complete, it is created Pending and named NotReady (the
        final state returned), and does not run. Parameters that do not fit the flow's
        annotations fail the run (Pending -> Failed) before its code runs."""
        flow = self.flow
        not_started: State | None = None  # the run ends before its code could start
        if self.parent is not None:
            try:
                waiting(self._wait_for_inputs)
            except UpstreamTaskError as error:
                self.error = error
                not_started = not_ready(error)
        if not_started is None:
            try:
                self.parameters = flow.validated_parameters(self.parameters)
            except ParameterTypeError as error:
                self.error = error
                not_started = failed(error)
        runs: list[FlowRun | TaskRun] = []
        parent_task_run_id = ""
        if self.parent is not None and self.call is not None:
            tracking = self.parent.engine.tracking_runs
            parent_task_run_id = tracking.get(self.call, "")
            if not parent_task_run_id:  # the first attempt of the parent to make this call
                parent_task_run_id = tracking[self.call] = new_id()
                runs.append(
                    TaskRun(
                        id=parent_task_run_id,
                        name=self.parent.engine.task_run_names.take(flow.name),
                        task_key=flow.name,
                        flow_run_id=self.parent.flow_run.id,
                        parameters=jsonable(self.parameters),
                    )
                )
        runs.append(
            FlowRun(
                id=self.id,
                # A run that never starts is named as if it had no template: its parameters
                # did not fit (as in the reference, their error is the run's, not the name's)
                # or were never resolved.
                name=run_name(
                    flow.flow_run_name if not_started is None else None,
                    self.parameters,
                    self._naming_context,
                ),
                flow_name=flow.name,
                parameters=jsonable(self.parameters),
                tags=self.tags,
                retry_policy=RetryPolicy(flow.retries, flow.retry_delays),
                parent_task_run_id=parent_task_run_id,
                state=PENDING_PROPOSAL,
            )
        )
        if not_started is not None:
            answer = self.orchestration.create_and_start(runs, not_started, self._adopt)
            assert answer.state is not None
            return answer.state
        return self.orchestration.create_and_start(runs, RUNNING_PROPOSAL, self._adopt)

    def _naming_context(self) -> Callable[[], None]:
        """The flow run as its `flow_run_name` function sees it (`stateward.runtime.flow_run`)
        until the returned function is called: its id, flow, parameters and tags; its name,
        not decided yet, is None."""
        return self.hook_context(FlowRun(self.id, "", self.flow.name, self.parameters, self.tags))

    def _wait_for_inputs(self) -> None:
        for upstream in self.wait_for:
            resolve(upstream)
        self.parameters = resolve(self.parameters)

    def _adopt(self, created: list[Created]) -> None:
        run = created[-1]
        if isinstance(run, FlowRun):
            self.flow_run = run
        else:  # created by an attempt whose answer was lost
            self.flow_run = self.orchestration.read(
                "reading it back", lambda: self.client.get_flow_run(self.id)
            )
        self.orchestration.label = f"Flow run {self.flow_run.name!r} ({self.flow.name})"
        self.orchestration.log_extra = run_extra(self.id, "")
        self.orchestration.observe_state(self.flow_run.state)

    def record(self) -> FlowRun:
        assert self.flow_run is not None
        return FlowRun(
            id=self.flow_run.id,
            name=self.flow_run.name,
            flow_name=self.flow_run.flow_name,
            parameters=self.parameters,
            tags=self.flow_run.tags,
            retry_policy=self.flow_run.retry_policy,
            state=self.orchestration.state,
            parent_task_run_id=self.flow_run.parent_task_run_id,
            created=self.flow_run.created,
            run_count=self.run_count,
            expected_start_time=self.flow_run.expected_start_time,
        )

    # A stop of this run reaches its code and, at the same moment (under `task_run_lock`), the
    # task runs and subflows under way; one begun later, before the code was told, is stopped
    # when it is tracked. Those begun after the code was told (in its `finally`) run.

    def _stop_all(
        self, error: type[RunInterrupted], stop_code: Callable[..., object], *args: Any
    ) -> None:
        """`stop_code(*args)` stops this run's code; the task runs and subflows under way then
        get `error`."""
        with self.task_run_lock:
            stop_code(*args)
            under_way = list(self.nested)
        for engine in under_way:
            engine.interrupt(error)

    def request_cancel(self, state: State) -> None:
        self._stop_all(RunCancelled, super().request_cancel, state)

    def on_timeout(self, region: Interruptible) -> None:
        """Past the flow's timeout, its own code stops, and so do its task runs and subflows."""
        if region is self.interruptible:  # else the timer of an attempt that is over
            self._stop_all(RunTimedOut, super().on_timeout, region)

    def on_async_timeout(self) -> None:
        self._stop_all(RunTimedOut, super().on_async_timeout)  # asyncio stops the code itself

    def interrupt(self, error: type[RunInterrupted]) -> None:
        """The run around this subflow was stopped: so are this subflow and what it runs."""
        self._stop_all(error, super().interrupt, error)

    def track(self, engine: RunEngine) -> None:
        """A task run or subflow of this run is under way (until `untrack`)."""
        with self.task_run_lock:
            self.nested.add(engine)
            region = self.interruptible
            if region is not None and region.received is not None and not region.told:
                engine.interrupt(region.received)  # begun by code that is being stopped

    def untrack(self, engine: RunEngine) -> None:
        with self.task_run_lock:
            self.nested.discard(engine)

    # --- executing the flow's function -----------------------------------------------------------

    def call_key(self, name: str) -> tuple[str, int]:
        """The key of a task or subflow call made by this run's code now (see `reused`)."""
        with self.task_run_lock:
            index = self.calls_this_attempt[name]
            self.calls_this_attempt[name] += 1
        return name, index

    def enter_code(self) -> Callable[[], None]:
        assert self.flow_run is not None
        self.calls_this_attempt.clear()  # a new attempt counts its calls afresh
        self.context = FlowRunContext(self.flow, self.record(), self, self.parameters)
        token = flow_run_context.set(self.context)
        return lambda: flow_run_context.reset(token)

    def fetch_run(self) -> FlowRun:
        return self.client.get_flow_run(self.id)

    def hook_context(self, record: Any) -> Callable[[], None]:
        context = FlowRunContext(self.flow, record, self, self.parameters)
        if self.context is not None:
            context.start_time = self.context.start_time
        token = flow_run_context.set(context)
        return lambda: flow_run_context.reset(token)

    def code_over(self, error: BaseException | None) -> None:
        self._wait_for_tasks(error)

    async def code_over_async(self, error: BaseException | None) -> None:
        await asyncio.to_thread(self._wait_for_tasks, error)

    def result_folder(self) -> Path | None:
        """Where this run's results over the size limit go, and its task runs' and subflows'
        by default: the flow's `result_storage`, else that of the flow run around it."""
        return self.flow.result_folder or self.inherited_storage

    def result_policy(self) -> ResultPolicy:
        """How this run keeps its result: the flow's options, else its parent's storage."""
        return policy(self.flow.persist_result, self.result_folder())

    def after_call(self, value: Any) -> State:
        return judged(value, self.result_what, self.log, self.result_policy())

    def _wait_for_tasks(self, error: BaseException | None) -> None:
        """Submitted task runs finish before their flow run does (the code ended by `error`,
        or None). If the flow is stopped while it waits, those not started yet are cancelled
        (the running ones were told to stop). A signal (SIGINT, SIGTERM) that crashes the flow
        run, raised in its code or in this wait, crashes those running at once: they are told
        to stop and reported Crashed, and the flow run waits for none (as the reference, whose
        runs a Ctrl-C crashes)."""
        futures = self.context.futures if self.context is not None else []
        signal = error if isinstance(error, _CRASH_SIGNALS) else None
        try:
            if futures and signal is None:
                concurrent.futures.wait([f._future for f in futures])
        except _CRASH_SIGNALS as arrived:
            signal = arrived
            raise
        finally:
            with self.task_run_lock:
                runner, self.runner = self.runner, None
            # Shut down first: the task runs still queued are cancelled, so that none starts
            # after the crash below (a crashed run's thread would take the next from the queue).
            if runner is not None:
                runner.shutdown(wait=signal is None)
            if signal is not None:
                self._crash_task_runs(signal, futures)
            with engine_code():
                for future in futures:
                    if future._future.cancelled():
                        self.orchestration.propose_for(
                            future.task_run_id,
                            State(StateType.CANCELLED, message="its flow run stopped first"),
                            f"task run {future.task_run_id}",
                        )

    def _crash_task_runs(self, signal: BaseException, futures: list[Any]) -> None:
        """A signal crashes this flow run: its task runs under way stop (RunCrashed, when
        their code next runs: a thread in a long C call finishes it first) and are reported
        Crashed now."""
        # Those under way, taken before they are told: one that stops at once reports nothing
        # itself (its future is then done), and would be left Running.
        under_way = [f for f in futures if not f._future.done() and f._future.running()]
        self._stop_all(RunCrashed, lambda: None)
        message = f"{type(signal).__name__}: {signal}".rstrip(": ")
        with engine_code():
            for future in under_way:
                with contextlib.suppress(Exception):  # the flow run's crash goes on
                    self.orchestration.propose_for(
                        future.task_run_id,
                        State(StateType.CRASHED, message=message),
                        f"task run {future.task_run_id}",
                    )

    def task_runner(self) -> TaskRunner:
        """This run's task runner (the flow's, or a thread pool), started on first use."""
        with self.task_run_lock:
            if self.runner is None:
                configured = self.flow.task_runner
                runner = configured.duplicate() if configured else ThreadPoolTaskRunner()
                runner.start()
                self.runner = runner
            return self.runner

    # --- the whole run ----------------------------------------------------------------------------

    def created(self) -> bool:
        return self.flow_run is not None

    def catch_signals(self) -> Callable[[], None]:
        install_wake_handler()
        return crash_on_signals(signal_must_wait) if self.parent is None else (lambda: None)

    def enter(self) -> None:
        # Registered before the run exists: no cancel can slip between.
        self.supervisor.on_cancel(self.id, self.request_cancel)
        if self.parent is not None:
            self.parent.engine.track(self)

    def done(self) -> None:
        super().done()
        self.supervisor.forget(self.id)
        if self.parent is None:  # its story is on the server before the caller goes on
            run_logs.flush()


def call_flow(
    flow: Flow[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    return_state: bool,
    wait_for: Iterable[Any] | None = None,
) -> Any:
    """A call of `flow`: its flow run (for an async flow, a coroutine running it)."""
    return call_run(lambda: FlowRunEngine(flow, args, kwargs, wait_for), flow.isasync, return_state)
