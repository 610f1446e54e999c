"""The engine: a flow or task call, run as an orchestrated run.

A run is created (Pending) and proposes Running; the server's answer decides what happens: run
the code, wait, adopt the state the rules put in place (Cached, AwaitingRetry, Cancelled...), or
stop. The code's outcome is proposed as the final state (Completed with the result, Failed with
the exception, TimedOut, Cancelled), retried while the server answers AwaitingRetry. Hooks run
after the state they react to was accepted. Interrupts, signals and lost connections make the run
Crashed. Synchronous and asynchronous functions share every step but the execution itself.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import contextvars
import inspect
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from types import FrameType
from typing import Any

from stateward._context import FlowRunContext, TaskRunContext, flow_run_context, task_run_context
from stateward._embedded import get_client
from stateward._hooks import run_hooks, run_hooks_async
from stateward._interrupt import (
    Interruptible,
    RunCancelled,
    RunTimedOut,
    install_wake_handler,
)
from stateward._logging import configure_default_logging
from stateward._results import encode, encode_exception, exception_for
from stateward._supervisor import RunSupervisor, get_supervisor
from stateward.client import Client
from stateward.exceptions import (
    DeadlineExceeded,
    OrchestrationAborted,
    ResultTooLarge,
    ServerUnavailable,
)
from stateward.flows import Flow
from stateward.futures import StatewardFuture, StatewardFutureList
from stateward.runs import Decision, FlowRun, RetryPolicy, SetStateStatus, TaskRun
from stateward.states import (
    TERMINAL_TYPES,
    State,
    StateDetails,
    StateType,
    carry_value,
    has_value,
    now,
)
from stateward.tasks import Task, unmapped

flow_run_log = logging.getLogger("stateward.flow_runs")
task_run_log = logging.getLogger("stateward.task_runs")

_NOT_READY_POLL_SECONDS = 2.0
_UNAVAILABLE_RETRIES = 3


class TerminationSignal(BaseException):
    """SIGTERM arrived while a flow ran: the run is crashed, then the process goes on exiting."""


class UpstreamFailed(Exception):
    """A task's input came from a task run that did not complete."""


# --- parameters -----------------------------------------------------------------------------------


def bind(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def call_with(
    fn: Callable[..., Any], signature: inspect.Signature, parameters: dict[str, Any]
) -> Any:
    bound = signature.bind_partial()
    bound.arguments.update(parameters)
    return fn(*bound.args, **bound.kwargs)


def jsonable(parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameters as they can be recorded on the run (values JSON cannot hold, as text)."""
    recorded: dict[str, Any] = {}
    for key, value in parameters.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            recorded[key] = repr(value)
        else:
            recorded[key] = value
    return recorded


def run_name(template: str | Callable[[], str] | None, parameters: dict[str, Any]) -> str:
    if template is None:
        return ""
    if callable(template):
        return str(template())
    try:
        return template.format(**parameters)
    except (KeyError, IndexError, ValueError):
        return template


def _resolve(value: Any) -> Any:
    """Futures among a task's inputs become their results (waiting for them)."""
    if isinstance(value, StatewardFuture):
        state = value._future.result()
        if not state.is_completed():
            raise UpstreamFailed(
                f"upstream task run {value.task_run_id} did not complete ({state.name})"
            )
        return state.result()
    if isinstance(value, State):
        return value
    if isinstance(value, unmapped):
        return _resolve(value.value)
    if isinstance(value, list):
        return [_resolve(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_resolve(item) for item in value)
    if isinstance(value, set):
        return {_resolve(item) for item in value}
    if isinstance(value, dict):
        return {key: _resolve(item) for key, item in value.items()}
    return value


# --- what the code's outcome proposes -------------------------------------------------------------


def completed(value: Any, what: str, log: logging.Logger) -> State:
    """Completed carrying the value (kept in-process too); an unencodable value stays in
    memory only, a too large one fails the run."""
    try:
        data = encode(value, what)
    except ResultTooLarge as error:
        return failed(error)
    except Exception as error:
        log.warning("%s cannot be stored (%s); it is kept in this process only", what, error)
        data = None
    state = State(StateType.COMPLETED, data=data)
    object.__setattr__(state, "_value", value)
    return state


def failed(error: BaseException, name: str = "Failed") -> State:
    message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return State(StateType.FAILED, name=name, message=message, data=encode_exception(error))


def judged(value: Any, what: str, log: logging.Logger) -> State:
    """A flow's final state from its return value: a state (or future) is taken as it is; a
    collection of only states is judged by them; anything else is a result."""
    if isinstance(value, StatewardFuture):
        value = value._future.result()
    if isinstance(value, State):
        return _adopted(value)
    if isinstance(value, list | tuple | set) and value:
        items = list(value)
        if all(isinstance(item, State | StatewardFuture) for item in items):
            states = [
                item._future.result() if isinstance(item, StatewardFuture) else item
                for item in items
            ]
            return _judge(states)
    return completed(value, what, log)


def _adopted(state: State) -> State:
    """A returned state as the run's own final state (its in-process value encoded if needed)."""
    adopted = State(state.type, name=state.name, message=state.message, data=state.data)
    if adopted.data is None and has_value(state):
        with contextlib.suppress(Exception):  # kept in this process only, as `completed` does
            adopted = adopted.evolve(data=encode(state.result()))
    return carry_value(state, adopted)


def _judge(states: list[State]) -> State:
    if all(s.is_completed() for s in states):
        return State(StateType.COMPLETED, message=f"all {len(states)} states completed")
    if any(s.is_cancelled() for s in states):
        count = sum(s.is_cancelled() for s in states)
        return State(StateType.CANCELLED, message=f"{count}/{len(states)} states cancelled")
    if any(s.is_paused() for s in states):
        count = sum(s.is_paused() for s in states)
        return State(StateType.PAUSED, message=f"{count}/{len(states)} states paused")
    bad = [s for s in states if not s.is_completed()]
    return State(
        StateType.FAILED,
        message=f"{len(bad)}/{len(states)} states did not complete",
        data=bad[0].data if bad[0].is_failed() else None,
    )


# --- proposing states for one run -----------------------------------------------------------------


class _Orchestration:
    """Proposes states for one run, obeys WAIT, and logs one line per state change."""

    def __init__(
        self,
        client: Client,
        supervisor: RunSupervisor,
        run_id: str,
        label: str,
        state: State | None,
        log: logging.Logger,
    ) -> None:
        self.client = client
        self.supervisor = supervisor
        self.run_id = run_id
        self.label = label
        self.state = state
        self.log = log
        self.lease = supervisor.lease

    def propose(self, proposed: State, *, force: bool = False) -> Decision:
        transition = str(uuid.uuid4())
        proposed = proposed.with_details(transition_id=transition)
        failures = 0
        while True:
            try:
                decision = self.client.set_state(
                    self.run_id, proposed, force=force, lease_seconds=self.lease
                )
            except (ServerUnavailable, DeadlineExceeded) as error:
                failures += 1
                if failures > _UNAVAILABLE_RETRIES:
                    raise ServerUnavailable(
                        f"lost the Stateward server while proposing {proposed.name} for "
                        f"{self.label} ({error}); the server will crash the run when its "
                        "heartbeat lease lapses"
                    ) from None
                time.sleep(0.2 * 2**failures)
                continue  # the same transition id: if the first call was applied, it is a no-op
            if decision.status is SetStateStatus.WAIT:
                self.log.info(
                    "%s - waiting %.3gs: %s", self.label, decision.delay_seconds, decision.reason
                )
                time.sleep(decision.delay_seconds)
                continue
            if (
                decision.status is SetStateStatus.REJECT
                and decision.state is not None
                and decision.state.details.transition_id == transition
                and decision.state.type is proposed.type
            ):  # a retried call whose first attempt was applied
                decision = Decision(SetStateStatus.ACCEPT, decision.state)
            self._observe(decision)
            return decision

    def _observe(self, decision: Decision) -> None:
        new = decision.state
        if new is not None and (self.state is None or new.id != self.state.id):
            message = f": {new.message}" if new.message else ""
            self.log.info("%s - %s%s", self.label, new.name, message)
        if new is not None:
            self.state = new
        if new is not None and new.type in (StateType.RUNNING, StateType.CANCELLING):
            self.supervisor.hold_lease(self.run_id)
        else:
            self.supervisor.release_lease(self.run_id)

    def crash(self, error: BaseException) -> None:
        """Force Crashed, if the server can still be told."""
        try:
            self.propose(
                State(StateType.CRASHED, message=f"{type(error).__name__}: {error}".rstrip(": ")),
                force=True,
            )
        except Exception as failure:
            self.log.warning("%s - could not report the crash: %s", self.label, failure)


# --- one run: what flows and tasks share ----------------------------------------------------------


class _RunEngine:
    """The steps of one run; FlowRunEngine and TaskRunEngine fill in the specifics."""

    kind = "run"
    log: logging.Logger
    subject: Flow[..., Any] | Task[..., Any]
    orchestration: _Orchestration
    parameters: dict[str, Any]

    def __init__(self) -> None:
        self.error: BaseException | None = None  # the user code's exception, as raised
        self.cancel_state: State | None = None  # set when the run is being cancelled
        self.interruptible: Interruptible | None = None
        self.asyncio_task: asyncio.Task[Any] | None = None
        self.asyncio_loop: asyncio.AbstractEventLoop | None = None
        self.cancel_hooks_ran = False

    # The run record handed to hooks.
    def record(self) -> Any:
        raise NotImplementedError

    @property
    def timeout(self) -> float | None:
        return self.subject.timeout_seconds

    # --- cancellation -----------------------------------------------------------------------------

    def request_cancel(self, state: State) -> None:
        """Called (from the supervisor's thread) when the run becomes CANCELLING/CANCELLED."""
        if self.cancel_state is None or state.type is StateType.CANCELLED:
            self.cancel_state = state
        if self.interruptible is not None:
            self.interruptible.interrupt(RunCancelled)
        if self.asyncio_task is not None and self.asyncio_loop is not None:
            self.asyncio_loop.call_soon_threadsafe(self.asyncio_task.cancel)

    def _finish_cancel(self) -> State:
        """The run is being cancelled: complete it (unless already Cancelled)."""
        current = self.orchestration.state
        if current is not None and current.type in TERMINAL_TYPES:
            return current
        decision = self.orchestration.propose(
            State(StateType.CANCELLED, message="cancelled while it ran")
        )
        if decision.status is SetStateStatus.ABORT:
            raise OrchestrationAborted(decision.reason)
        assert decision.state is not None
        return decision.state

    # --- the steps --------------------------------------------------------------------------------

    def running_proposal(self) -> State:
        return State(StateType.RUNNING)

    def start(self) -> State | None:
        """Propose Running; None means run the code, else the run's final state."""
        while True:
            if self.cancel_state is not None:
                return self._finish_cancel()
            decision = self.orchestration.propose(self.running_proposal())
            if decision.status is SetStateStatus.ACCEPT:
                return None
            if decision.status is SetStateStatus.ABORT:
                raise OrchestrationAborted(decision.reason)
            state = decision.state
            assert state is not None
            if state.type is StateType.CANCELLING:
                return self._finish_cancel()
            if state.type in TERMINAL_TYPES:
                return state  # a cache hit, or a run that was cancelled before it started
            if state.type is StateType.PAUSED:  # parked NotReady while the flow run is paused
                time.sleep(_NOT_READY_POLL_SECONDS)
                continue
            raise OrchestrationAborted(
                f"the {self.kind} could not start: it is {state.name} ({decision.reason})"
            )

    def finish(self, proposal: State) -> State | None:
        """Propose the outcome; None means retry (after waiting for AwaitingRetry's time)."""
        if self.cancel_state is not None and not proposal.is_cancelled():
            proposal = State(StateType.CANCELLED, message="cancelled while it ran")
        current = self.orchestration.state
        if proposal.is_cancelled() and current is not None and current.is_cancelled():
            return current
        decision = self.orchestration.propose(proposal)
        if decision.status is SetStateStatus.ABORT:
            raise OrchestrationAborted(decision.reason)
        state = decision.state
        assert state is not None
        if decision.status is SetStateStatus.ACCEPT:
            return carry_value(proposal, state)  # the caller gets its own object back
        if state.type in TERMINAL_TYPES:
            return state
        if state.type is StateType.CANCELLING:
            return self._finish_cancel()
        if state.type is StateType.SCHEDULED and state.name == "AwaitingRetry":
            self._sleep_until_retry(state)
            return None
        return state

    def _sleep_until_retry(self, awaiting: State) -> None:
        at = awaiting.details.scheduled_time
        self.log.info(
            "%s - retrying at %s", self.orchestration.label, at.isoformat() if at else "once"
        )
        while at is not None and self.cancel_state is None:
            left = (at - now()).total_seconds()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    def outcome_of(self, call: Callable[[], Any]) -> State:
        """Run the code (synchronously) and turn what happened into the state to propose."""
        raise NotImplementedError

    def classify(self, error: BaseException) -> State:
        """The state an exception out of the user's code stands for."""
        if isinstance(error, RunTimedOut) or (
            isinstance(error, TimeoutError) and getattr(self, "_timed_out", False)
        ):
            return State(
                StateType.FAILED,
                name="TimedOut",
                message=f"{self.orchestration.label} exceeded its timeout of {self.timeout:g}s",
            )
        # RunCancelled only comes from a cancel (of this run, or of the flow run around it);
        # an asyncio cancellation is one only if a cancel was asked for.
        if isinstance(error, RunCancelled) or (
            isinstance(error, asyncio.CancelledError) and self.cancel_state is not None
        ):
            return State(StateType.CANCELLED, message="cancelled while it ran")
        if isinstance(error, Exception):
            self.error = error
            return self.failure(error)
        raise error  # KeyboardInterrupt, SystemExit, termination: the caller crashes the run

    def failure(self, error: Exception) -> State:
        return failed(error)

    # --- hooks ------------------------------------------------------------------------------------

    def hook_kind_for(self, state: State) -> str | None:
        return {
            StateType.COMPLETED: "on_completion",
            StateType.FAILED: "on_failure",
            StateType.CRASHED: "on_crashed",
            StateType.CANCELLED: "on_cancellation",
        }.get(state.type)

    def run_hooks(self, kind: str | None, state: State) -> None:
        if kind is None or (kind == "on_cancellation" and self.cancel_hooks_ran):
            return
        self.cancel_hooks_ran = self.cancel_hooks_ran or kind == "on_cancellation"
        run_hooks(self.subject.hooks(kind), kind, self.subject, self.record(), state, self.log)

    async def run_hooks_async(self, kind: str | None, state: State) -> None:
        if kind is None or (kind == "on_cancellation" and self.cancel_hooks_ran):
            return
        self.cancel_hooks_ran = self.cancel_hooks_ran or kind == "on_cancellation"
        await run_hooks_async(
            self.subject.hooks(kind), kind, self.subject, self.record(), state, self.log
        )

    # --- the drivers ------------------------------------------------------------------------------

    def execute_sync(self) -> State:
        interruptible = Interruptible()
        self.interruptible = interruptible
        try:
            with interruptible.running(self.timeout):
                return self.outcome_of(self.call_sync)
        except BaseException as error:
            return self.classify(error)
        finally:
            self.interruptible = None

    def call_sync(self) -> Any:
        raise NotImplementedError

    async def call_async(self) -> Any:
        raise NotImplementedError

    async def execute_async(self) -> State:
        self.asyncio_loop = asyncio.get_running_loop()
        self.asyncio_task = asyncio.current_task()
        self._timed_out = False
        try:
            if self.cancel_state is not None:
                raise RunCancelled
            try:
                async with asyncio.timeout(self.timeout) as deadline:
                    value = await self.call_async()
            except TimeoutError:
                self._timed_out = deadline.expired()
                raise
            return self.after_call(value)
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError) and self.cancel_state is not None:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
            return self.classify(error)
        finally:
            self.asyncio_task = None

    def after_call(self, value: Any) -> State:
        raise NotImplementedError

    def orchestrate_sync(self) -> State:
        while True:
            final = self.start()
            if final is not None:
                return final
            self.run_hooks("on_running", self.orchestration.state)  # type: ignore[arg-type]
            final = self.finish(self.execute_sync())
            if final is not None:
                return final

    async def orchestrate_async(self) -> State:
        while True:
            final = await asyncio.to_thread(self.start)
            if final is not None:
                return final
            await self.run_hooks_async("on_running", self.orchestration.state)  # type: ignore[arg-type]
            proposal = await self.execute_async()
            final = await asyncio.to_thread(self.finish, proposal)
            if final is not None:
                return final

    def result_of(self, state: State, return_state: bool) -> Any:
        """What the call returns: the state, or its value (raising if the run did not complete)."""
        if return_state:
            return state
        if state.is_completed():
            return state.result()
        if self.error is not None and state.is_failed():
            raise self.error
        raise exception_for(state)


# --- flow runs ------------------------------------------------------------------------------------


class FlowRunEngine(_RunEngine):
    kind = "flow run"
    log = flow_run_log

    def __init__(self, flow: Flow[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.subject = flow
        self.flow = flow
        self.parameters = bind(flow.signature, args, kwargs)
        configure_default_logging()
        self.client = get_client()
        self.supervisor = get_supervisor(self.client)
        self.parent = flow_run_context.get()
        self.context: FlowRunContext | None = None
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.running_tasks: set[Interruptible] = set()
        self.task_run_lock = threading.Lock()
        self.flow_run = self._create()
        self.orchestration = _Orchestration(
            self.client,
            self.supervisor,
            self.flow_run.id,
            f"Flow run {self.flow_run.name!r} ({flow.name})",
            self.flow_run.state,
            self.log,
        )
        self.log.info("%s - Pending (id %s)", self.orchestration.label, self.flow_run.id)

    def _create(self) -> FlowRun:
        flow = self.flow
        parent_task_run_id = ""
        if self.parent is not None:
            # A subflow is tracked by a task run in its parent flow run, mirroring its states.
            stand_in = self.client.create_task_run(
                flow.name, flow_run_id=self.parent.flow_run.id, parameters=jsonable(self.parameters)
            )
            parent_task_run_id = stand_in.id
        return self.client.create_flow_run(
            flow.name,
            name=run_name(flow.flow_run_name, self.parameters),
            parameters=jsonable(self.parameters),
            tags=flow.tags,
            retry_policy=RetryPolicy(flow.retries, flow.retry_delays),
            parent_task_run_id=parent_task_run_id,
            state=State(StateType.PENDING),
        )

    def record(self) -> FlowRun:
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
        )

    def request_cancel(self, state: State) -> None:
        super().request_cancel(state)
        with self.task_run_lock:
            running = list(self.running_tasks)
        for interruptible in running:
            interruptible.interrupt(RunCancelled)

    # --- execution --------------------------------------------------------------------------------

    def _enter(self) -> contextvars.Token[FlowRunContext | None]:
        self.context = FlowRunContext(self.flow, self.flow_run, self, self.parameters)
        return flow_run_context.set(self.context)

    def outcome_of(self, call: Callable[[], Any]) -> State:
        return self.after_call(call())

    def call_sync(self) -> Any:
        token = self._enter()
        try:
            with _printing_to_log(self.flow.log_prints):
                return call_with(self.flow.fn, self.flow.signature, self.parameters)
        finally:
            self._wait_for_tasks()
            flow_run_context.reset(token)

    async def call_async(self) -> Any:
        token = self._enter()
        try:
            with _printing_to_log(self.flow.log_prints):
                return await call_with(self.flow.fn, self.flow.signature, self.parameters)
        finally:
            await asyncio.to_thread(self._wait_for_tasks)
            flow_run_context.reset(token)

    def after_call(self, value: Any) -> State:
        return judged(value, f"result of flow {self.flow.name!r}", self.log)

    def _wait_for_tasks(self) -> None:
        """Submitted task runs finish before their flow run does."""
        context = self.context
        if context is not None and context.futures:
            concurrent.futures.wait([f._future for f in context.futures])
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None

    def task_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self.task_run_lock:
            if self.executor is None:
                self.executor = concurrent.futures.ThreadPoolExecutor(
                    thread_name_prefix=f"stateward-{self.flow.name}"
                )
            return self.executor

    # --- the whole run ----------------------------------------------------------------------------

    def run(self) -> State:
        install_wake_handler()
        self.supervisor.on_cancel(self.flow_run.id, self.request_cancel)
        restore = _crash_on_sigterm() if self.parent is None else _nothing
        try:
            try:
                final = self.orchestrate_sync()
            except BaseException as error:
                if not isinstance(error, OrchestrationAborted | ServerUnavailable):
                    self._crash(error)
                raise
        finally:
            restore()
            self.supervisor.forget(self.flow_run.id)
            self.supervisor.release_lease(self.flow_run.id)
        self.run_hooks(self.hook_kind_for(final), final)
        return final

    async def run_async(self) -> State:
        self.supervisor.on_cancel(self.flow_run.id, self.request_cancel)
        try:
            try:
                final = await self.orchestrate_async()
            except BaseException as error:
                if not isinstance(error, OrchestrationAborted | ServerUnavailable):
                    await asyncio.to_thread(self._crash, error)
                raise
        finally:
            self.supervisor.forget(self.flow_run.id)
            self.supervisor.release_lease(self.flow_run.id)
        await self.run_hooks_async(self.hook_kind_for(final), final)
        return final

    def _crash(self, error: BaseException) -> None:
        self.orchestration.crash(error)
        if self.orchestration.state is not None and self.orchestration.state.is_crashed():
            self.run_hooks("on_crashed", self.orchestration.state)


def call_flow(
    flow: Flow[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *, return_state: bool
) -> Any:
    if flow.isasync:
        return _call_flow_async(flow, args, kwargs, return_state)
    engine = FlowRunEngine(flow, args, kwargs)
    return engine.result_of(engine.run(), return_state)


async def _call_flow_async(
    flow: Flow[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], return_state: bool
) -> Any:
    engine = await asyncio.to_thread(FlowRunEngine, flow, args, kwargs)
    return engine.result_of(await engine.run_async(), return_state)


# --- task runs ------------------------------------------------------------------------------------


class TaskRunEngine(_RunEngine):
    kind = "task run"
    log = task_run_log

    def __init__(
        self,
        task: Task[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        wait_for: Iterable[Any] | None,
    ) -> None:
        super().__init__()
        self.subject = task
        self.task = task
        self.parameters = bind(task.signature, args, kwargs)
        self.wait_for = list(wait_for or ())
        configure_default_logging()
        self.client = get_client()
        self.supervisor = get_supervisor(self.client)
        self.flow_context = flow_run_context.get()
        self.cache_key = ""
        self.task_run = self._create()
        self.orchestration = _Orchestration(
            self.client,
            self.supervisor,
            self.task_run.id,
            f"Task run {self.task_run.name!r} ({task.name})",
            self.task_run.state,
            self.log,
        )
        self.log.info("%s - Pending", self.orchestration.label)

    def _create(self) -> TaskRun:
        task = self.task
        return self.client.create_task_run(
            task.task_key,
            name=run_name(task.task_run_name, self.parameters),
            flow_run_id=self.flow_context.flow_run.id if self.flow_context else "",
            parameters=jsonable(self.parameters),
            tags=task.tags,
            retry_policy=RetryPolicy(task.retries, task.retry_delays, task.retry_jitter_factor),
            state=State(StateType.PENDING),
        )

    def record(self) -> TaskRun:
        return TaskRun(
            id=self.task_run.id,
            name=self.task_run.name,
            task_key=self.task_run.task_key,
            flow_run_id=self.task_run.flow_run_id,
            parameters=self.parameters,
            tags=self.task_run.tags,
            retry_policy=self.task_run.retry_policy,
            state=self.orchestration.state,
            run_count=self.task_run.run_count,
            created=self.task_run.created,
        )

    # --- inputs, caching and retries --------------------------------------------------------------

    def prepare(self) -> State | None:
        """Resolve upstream futures and the cache key; a failed upstream fails the run here."""
        try:
            for future in self.wait_for:
                _resolve(future)
            self.parameters = _resolve(self.parameters)
        except UpstreamFailed as error:
            self.error = error
            decision = self.orchestration.propose(failed(error))
            assert decision.state is not None
            return decision.state
        if self.task.cache_key_fn is not None:
            context = TaskRunContext(self.task, self.record(), self.parameters)
            self.cache_key = self.task.cache_key_fn(context, self.parameters) or ""
        return None

    def running_proposal(self) -> State:
        return State(
            StateType.RUNNING,
            details=StateDetails(cache_key=self.cache_key, refresh_cache=self.task.refresh_cache),
        )

    def failure(self, error: Exception) -> State:
        state = failed(error)
        condition = self.task.retry_condition_fn
        if condition is not None and self.task.retries:
            try:
                retry = bool(condition(self.task, self.record(), state))
            except Exception:
                self.log.exception("%s - retry_condition_fn failed", self.orchestration.label)
                retry = False
            if not retry:
                state = state.with_details(unretriable=True)
        return state

    def after_call(self, value: Any) -> State:
        state = completed(value, f"result of task {self.task.name!r}", self.log)
        if self.cache_key and state.is_completed():
            expiration = self.task.cache_expiration
            state = state.with_details(
                cache_key=self.cache_key,
                cache_expiration=now() + expiration if isinstance(expiration, timedelta) else None,
            )
        return state

    # --- execution --------------------------------------------------------------------------------

    def outcome_of(self, call: Callable[[], Any]) -> State:
        flow_engine = self.flow_context.engine if self.flow_context else None
        if flow_engine is not None and self.interruptible is not None:
            with flow_engine.task_run_lock:
                flow_engine.running_tasks.add(self.interruptible)
        try:
            return self.after_call(call())
        finally:
            if flow_engine is not None and self.interruptible is not None:
                with flow_engine.task_run_lock:
                    flow_engine.running_tasks.discard(self.interruptible)

    def _enter(self) -> contextvars.Token[TaskRunContext | None]:
        return task_run_context.set(TaskRunContext(self.task, self.record(), self.parameters))

    def call_sync(self) -> Any:
        token = self._enter()
        try:
            with _printing_to_log(self.task.log_prints):
                return call_with(self.task.fn, self.task.signature, self.parameters)
        finally:
            task_run_context.reset(token)

    async def call_async(self) -> Any:
        token = self._enter()
        try:
            with _printing_to_log(self.task.log_prints):
                return await call_with(self.task.fn, self.task.signature, self.parameters)
        finally:
            task_run_context.reset(token)

    # --- the whole run ----------------------------------------------------------------------------

    def run(self) -> State:
        try:
            final = self.prepare() or self.orchestrate_sync()
        except BaseException as error:
            if not isinstance(error, OrchestrationAborted | ServerUnavailable):
                self.orchestration.crash(error)
                if self.orchestration.state is not None and self.orchestration.state.is_crashed():
                    self.run_hooks("on_crashed", self.orchestration.state)
            raise
        finally:
            self.supervisor.release_lease(self.task_run.id)
        self.run_hooks(self.hook_kind_for(final), final)
        flow_engine = self.flow_context.engine if self.flow_context else None
        if final.is_cancelled() and flow_engine is not None and flow_engine.cancel_state:
            raise RunCancelled  # the flow run is being cancelled: let it finish the cancel
        return final

    async def run_async(self) -> State:
        try:
            final = await asyncio.to_thread(self.prepare) or await self.orchestrate_async()
        except BaseException as error:
            if not isinstance(error, OrchestrationAborted | ServerUnavailable):
                await asyncio.to_thread(self.orchestration.crash, error)
            raise
        finally:
            self.supervisor.release_lease(self.task_run.id)
        await self.run_hooks_async(self.hook_kind_for(final), final)
        return final

    def run_in_worker(self) -> State:
        """In a worker thread (`submit`): run, never raising for the run's own outcome."""
        try:
            if self.task.isasync:
                return asyncio.run(self.run_async())
            return self.run()
        except RunCancelled:
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
    if task.isasync:
        return _call_task_async(task, args, kwargs, return_state, wait_for)
    engine = TaskRunEngine(task, args, kwargs, wait_for)
    return engine.result_of(engine.run(), return_state)


async def _call_task_async(
    task: Task[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_state: bool,
    wait_for: Iterable[Any] | None,
) -> Any:
    engine = await asyncio.to_thread(TaskRunEngine, task, args, kwargs, wait_for)
    return engine.result_of(await engine.run_async(), return_state)


_standalone_executor: concurrent.futures.ThreadPoolExecutor | None = None
_standalone_lock = threading.Lock()


def _executor_for(context: FlowRunContext | None) -> concurrent.futures.ThreadPoolExecutor:
    if context is not None:
        return context.engine.task_executor()
    global _standalone_executor
    with _standalone_lock:
        if _standalone_executor is None:
            _standalone_executor = concurrent.futures.ThreadPoolExecutor(
                thread_name_prefix="stateward-tasks"
            )
        return _standalone_executor


def submit_task(
    task: Task[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    wait_for: Iterable[Any] | None,
) -> StatewardFuture[Any]:
    context = flow_run_context.get()
    engine = TaskRunEngine(task, args, kwargs, wait_for)
    run = contextvars.copy_context().run
    future: StatewardFuture[Any] = StatewardFuture(
        engine.task_run.id,
        _executor_for(context).submit(run, engine.run_in_worker),
        lambda: engine.orchestration.state,
    )
    if context is not None:
        context.futures.append(future)
    return future


def map_task(
    task: Task[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    wait_for: Iterable[Any] | None,
) -> StatewardFutureList[Any]:
    parameters = bind(task.signature, args, kwargs)
    mapped = {
        key: list(value)
        for key, value in parameters.items()
        if not isinstance(value, unmapped | str | bytes | dict) and isinstance(value, Iterable)
    }
    lengths = {len(values) for values in mapped.values()}
    if len(lengths) > 1:
        sizes = ", ".join(f"{key}: {len(values)}" for key, values in mapped.items())
        raise ValueError(f"map() needs iterables of one length, got {sizes}")
    count = lengths.pop() if lengths else 0
    static = {
        key: value.value if isinstance(value, unmapped) else value
        for key, value in parameters.items()
        if key not in mapped
    }
    futures: StatewardFutureList[Any] = StatewardFutureList()
    for index in range(count):
        call = {**static, **{key: values[index] for key, values in mapped.items()}}
        futures.append(submit_task(task, (), call, wait_for=wait_for))
    return futures


# --- signals and prints ---------------------------------------------------------------------------


def _nothing() -> None:
    return None


def _crash_on_sigterm() -> Callable[[], None]:
    """While a top-level flow runs on the main thread, SIGTERM crashes it (then exits)."""
    if threading.current_thread() is not threading.main_thread():
        return _nothing
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise TerminationSignal("SIGTERM")

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


_print_to_log: contextvars.ContextVar[bool] = contextvars.ContextVar("log_prints", default=False)
_original_print = builtins.print


def _print(*args: Any, **kwargs: Any) -> None:
    if _print_to_log.get() and kwargs.get("file") is None:
        from stateward._logging import get_run_logger

        get_run_logger().info(kwargs.get("sep", " ").join(str(a) for a in args))
        return
    _original_print(*args, **kwargs)


class _printing_to_log:
    """With `log_prints`, print() inside the run goes to the run's logger."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.token: contextvars.Token[bool] | None = None

    def __enter__(self) -> None:
        if self.enabled:
            builtins.print = _print
            self.token = _print_to_log.set(True)

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            _print_to_log.reset(self.token)
