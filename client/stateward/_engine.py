"""The engine's steps, shared by flow runs and task runs.

A run proposes Running; the server's answer decides what happens: run the code, wait, adopt the
state the rules put in place (Cached, AwaitingRetry, Cancelled...), or stop. The code's outcome
is proposed as the final state (Completed with the result, Failed with the exception, TimedOut,
Cancelled), again and again while the server answers AwaitingRetry. Hooks run after the state
they react to was accepted. Synchronous and asynchronous code share every step but the
execution itself. `_flow_engine` and `_task_engine` fill in what differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from stateward import _forks
from stateward import _run_logs as run_logs
from stateward._context import FlowRunContext, current_tags, flow_run_context
from stateward._embedded import get_client
from stateward._hooks import run_hooks, run_hooks_async
from stateward._interrupt import (
    Interruptible,
    RunCancelled,
    RunCrashed,
    RunInterrupted,
    RunTimedOut,
    engine_code,
    sleep,
    waiting,
)
from stateward._logging import attach_extra_loggers, configure_default_logging, printing_to_log
from stateward._orchestration import RunOrchestration
from stateward._outcomes import bind, call_with, failed, stored
from stateward._results import ResultPolicy, exception_for
from stateward._stopping import StopFlags, asyncio_task_cancelling, classify, stopped_message
from stateward._supervisor import RunSupervisor, get_supervisor
from stateward._tracebacks import show_escaping_tracebacks_trimmed
from stateward.client import Client
from stateward.exceptions import (
    DeadlineExceeded,
    OrchestrationAborted,
    ResourceExhausted,
    ResultTooLarge,
    ServerUnavailable,
    StatewardError,
)
from stateward.flows import Flow
from stateward.ids import new_id
from stateward.runs import FlowRun, OrchestrationResult, SetStateStatus, TaskRun
from stateward.states import TERMINAL_TYPES, State, StateType, carry_value, has_value, now
from stateward.tasks import Task

_NOT_READY_POLL_SECONDS = 2.0
# How long a crash signal waits for a task run reporting its outcome (a call to the server).
_REPORTING_WAIT = 10.0
# How gRPC says a message was over the server's limit ("... (received vs. limit)"); a reply
# over this client's limit (64 MiB) says CLIENT instead.
_LARGER_THAN_MAX = re.compile(r"SERVER: Received message larger than max \((\d+) vs\. (\d+)\)")
# Members as globals, for the steps every run takes: a global is read several times quicker
# than an enum's attribute.
_WAIT, _ACCEPT, _ABORT = SetStateStatus.WAIT, SetStateStatus.ACCEPT, SetStateStatus.ABORT
_CANCELLING, _PAUSED = StateType.CANCELLING, StateType.PAUSED
_SCHEDULED, _RUNNING = StateType.SCHEDULED, StateType.RUNNING

# The proposals every run makes, shared (states are immutable, and a proposal is copied with
# its transition id before it is sent).
PENDING_PROPOSAL = State(StateType.PENDING)
RUNNING_PROPOSAL = State(StateType.RUNNING)

FINAL_HOOKS = {
    StateType.COMPLETED: "on_completion",
    StateType.FAILED: "on_failure",
    StateType.CRASHED: "on_crashed",
    StateType.CANCELLED: "on_cancellation",
}


class RunEngine:
    """The steps of one run; the flow and task engines fill in the specifics."""

    kind = "run"
    log: logging.Logger

    def __init__(
        self,
        subject: Flow[..., Any] | Task[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.subject = subject
        self.parameters = bind(subject.signature, args, kwargs, subject.__name__)
        # Its own tags, then those of the `tags()` blocks it is created in (most runs are
        # made in none: their own, already without repeats).
        outer = current_tags()
        own = subject.tags
        self.tags = (
            own if not outer and own.__class__ is tuple else tuple(dict.fromkeys((*own, *outer)))
        )
        self.run_count = 0  # attempts this engine started (entries into RUNNING)
        # The flow run whose code runs this one (a task's flow run, a subflow's parent), if any.
        self.parent: FlowRunContext | None = flow_run_context.get()
        self.client: Client
        self.supervisor: RunSupervisor
        self.forks = _forks.count  # the process this engine runs in (see `stateward._forks`)
        if self.parent is not None and self.parent.engine.forks == self.forks:
            # The process's client and supervisor, set up by the flow run around it.
            self.client = self.parent.engine.client
            self.supervisor = self.parent.engine.supervisor
        else:  # the first run of this process (a forked child's may be inside its parent's)
            configure_default_logging()
            show_escaping_tracebacks_trimmed()
            self.client = get_client()
            run_logs.install(self.client.write_logs)  # what runs log goes to the server
            attach_extra_loggers()
            self.supervisor = get_supervisor(self.client)
        self.id = new_id()
        self.orchestration = RunOrchestration(self.client, self.supervisor, self.id, self.log)
        self.error: BaseException | None = None  # the user code's exception, as raised
        self.stop = StopFlags()
        # Held while the run reports its outcome, and by a flow run crashing it (RunCrashed):
        # the run reports only if its flow run has not crashed it, or its flow run learns of
        # the crash only once the outcome is written (and its Crashed is then refused).
        self.reporting = threading.Lock()
        self.interruptible: Interruptible | None = None
        self.asyncio_task: asyncio.Task[Any] | None = None
        self.asyncio_loop: asyncio.AbstractEventLoop | None = None
        self.owns_loop = False  # an async task run in a worker thread, on its own event loop
        self.retrying_now = False  # the server put the run in Retrying: run the code again
        # Which call of the flow run around this one this run is: (task key or subflow name,
        # how many calls of it came before in the attempt).
        self.call: tuple[str, int] | None = None
        if self.parent is not None:
            self.call = self.parent.engine.call_key(f"{self.kind}:{subject.name}")

    def record(self) -> Any:
        """The run record as this process knows it (no call to the server)."""
        raise NotImplementedError

    def fetch_run(self) -> FlowRun | TaskRun:
        """The run record as the server has it now."""
        raise NotImplementedError

    def fresh_record(self) -> Any:
        """The run record hooks and `retry_condition_fn` receive: the server's current fields
        (start and end time, run count, total run time), the parameters as the code got them
        and the state this process holds; this process's record if the server cannot say."""
        try:
            run = self.fetch_run()
        except StatewardError as error:
            self.log.warning(
                "%s - hooks get the run as known here: %s", self.orchestration.label, error
            )
            return self.record()
        return dataclasses.replace(
            run, parameters=self.parameters, state=self.orchestration.state or run.state
        )

    def hook_context(self, record: Any) -> Callable[[], None]:
        """Make the run's context current for its hooks; returns what makes it not current."""
        raise NotImplementedError

    @property
    def timeout(self) -> float | None:
        """The run's `timeout_seconds`; 0 or None: no timeout."""
        return self.subject.timeout_seconds or None

    # --- cancellation -----------------------------------------------------------------------------

    def request_cancel(self, state: State) -> None:
        """Called (from the supervisor's thread) when the run becomes CANCELLING/CANCELLED."""
        if self.stop.cancel_state is None or state.type is StateType.CANCELLED:
            self.stop.cancel_state = state
        region = self.interruptible
        if region is not None:
            region.interrupt(RunCancelled)
        self._cancel_async_code()

    def interrupt(self, error: type[RunInterrupted]) -> None:
        """Called (from another thread) when the run around this one is stopped: stop this
        run's code if it runs, else at its next step."""
        if error is RunCrashed:  # not while the run reports its outcome (see `reporting`)
            taken = self.reporting.acquire(timeout=_REPORTING_WAIT)
            try:
                if self.stop.stop_requested is None:
                    self.stop.stop_requested = error
            finally:
                if taken:
                    self.reporting.release()
        elif self.stop.stop_requested is None:
            self.stop.stop_requested = error
        region = self.interruptible
        if region is not None:
            region.interrupt(error, from_outside=True)
        if self.owns_loop:  # else the run around it cancels the asyncio task it awaits
            self._cancel_async_code()

    def _cancel_async_code(self) -> None:
        """Cancel the asyncio task of the run's code, if the code still runs when its loop gets
        to it: a cancel that came after the code ended would land in the engine's own work."""
        task, loop = self.asyncio_task, self.asyncio_loop
        if task is None or loop is None:
            return

        def cancel() -> None:
            if self.asyncio_task is task:
                task.cancel()

        with contextlib.suppress(RuntimeError):  # the loop is closed: the code is over
            loop.call_soon_threadsafe(cancel)

    def finish_cancel(self, message: str = "cancelled while it ran") -> State:
        """The run is being cancelled: complete it (unless already Cancelled)."""
        current = self.orchestration.state
        if current is not None and current.type in TERMINAL_TYPES:
            return current
        decision = self.orchestration.propose(State(StateType.CANCELLED, message=message))
        if decision.status is SetStateStatus.ABORT:
            raise OrchestrationAborted(decision.reason)
        assert decision.state is not None
        return decision.state

    def stopped_from_outside(self, error: type[RunInterrupted]) -> State:
        """The run around this one was stopped between two of this run's steps: end Cancelled
        and pass the interrupt on; raises RunCrashed when a signal crashed it."""
        if error is RunCrashed:
            raise error
        self.stop.passed_on = error()
        return self.finish_cancel(stopped_message(error))

    # --- the steps --------------------------------------------------------------------------------

    def running_proposal(self) -> State:
        return RUNNING_PROPOSAL

    def start_from(self) -> str | None:
        """The id of the state the run must still be in for Running to be proposed (an ABORT
        otherwise), or None for no such condition."""
        return None

    def start(self, first: OrchestrationResult | None = None) -> State | None:
        """Get the run into RUNNING (`first` is the answer to a Running already proposed); None
        means run the code, else the run's final state."""
        try:
            return self._start(first)
        finally:
            self.orchestration.stop_waiting_for_slot()

    def _start(self, first: OrchestrationResult | None) -> State | None:
        while True:
            if self.stop.stop_requested is not None:
                return self.stopped_from_outside(self.stop.stop_requested)
            if self.stop.cancel_state is not None:
                return self.finish_cancel()
            if self.retrying_now:
                self.retrying_now = False
                return None
            if first is not None:
                decision, first = first, None
            else:
                decision = self.orchestration.propose(
                    self.running_proposal(), wait=False, expected_state_id=self.start_from()
                )
            if decision.status is _WAIT:
                self.orchestration.wait(decision, self.stop.stopping)
                continue
            if decision.status is _ACCEPT:
                return None
            if decision.status is _ABORT:
                raise OrchestrationAborted(decision.reason)
            state = decision.state
            assert state is not None
            if state.type is _CANCELLING:
                return self.finish_cancel()
            if state.type in TERMINAL_TYPES:
                return state  # a cache hit, or a run that was cancelled before it started
            if state.type is _PAUSED:  # parked NotReady while the flow run is paused
                sleep(_NOT_READY_POLL_SECONDS, self.stop.stopping)
                continue
            raise OrchestrationAborted(
                f"the {self.kind} could not start: it is {state.name} ({decision.reason})"
            )

    def finish(self, proposal: State) -> State | None:
        """Propose the outcome; None means retry (after waiting for AwaitingRetry's time)."""
        if self.stop.cancel_state is not None and not proposal.is_cancelled():
            proposal = State(StateType.CANCELLED, message="cancelled while it ran")
        current = self.orchestration.state
        if proposal.is_cancelled() and current is not None and current.is_cancelled():
            return current
        with self.reporting:
            if self.stop.stop_requested is RunCrashed:  # its flow run reports it Crashed
                raise RunCrashed
            try:
                decision = self.orchestration.propose(proposal)
            except ResourceExhausted as error:
                proposal = self.within_server_limit(proposal, error)
                decision = self.orchestration.propose(proposal)
        if decision.status is _ABORT:
            raise OrchestrationAborted(decision.reason)
        state = decision.state
        assert state is not None
        if decision.status is _ACCEPT and state.type is not _CANCELLING:
            return carry_value(proposal, state)  # the caller gets its own object back
        if state.type in TERMINAL_TYPES:
            return state
        if state.type is _CANCELLING:  # cancelled meanwhile, or the code returned it
            return self.finish_cancel(state.message or "cancelled while it ran")
        if state.type is _SCHEDULED and state.name == "AwaitingRetry":
            self._sleep_until_retry(state)
            return None
        if state.type is _RUNNING and state.name == "Retrying":
            self.retrying_now = True  # retried without delay: already RUNNING again
            return None
        return state

    def _sleep_until_retry(self, awaiting: State) -> None:
        at = awaiting.details.scheduled_time
        if at is not None:
            sleep((at - now()).total_seconds(), self.stop.stopping)

    def classify(self, error: BaseException) -> State:
        """The state an exception out of the user's code stands for (see `_stopping.classify`);
        raises `error` when it crashes the run."""
        region = self.interruptible
        ending = classify(
            error,
            self.stop,
            from_outside=region is not None and region.from_outside,
            nested=self.inside_another_run(),
            asyncio_cancelling=asyncio_task_cancelling(),
            timeout=self.timeout,
            label=self.orchestration.label,
        )
        if ending.passed_on is not None:
            self.stop.passed_on = ending.passed_on
        if ending.failure is not None:
            self.error = self.orchestration.failure = ending.failure
            return self.failed_attempt(ending.state)
        return ending.state

    def failed_attempt(self, state: State) -> State:
        """The Failed state of an attempt whose code raised (a task may make it unretriable)."""
        return state

    def inside_another_run(self) -> bool:
        """Whether this run executes inside another run's code (a task or a subflow)."""
        return self.parent is not None

    def pass_on(self) -> None:
        """After the run ended: hand an interrupt meant for the enclosing run over to it."""
        if self.stop.passed_on is not None:
            raise self.stop.passed_on

    # --- hooks ------------------------------------------------------------------------------------

    def _hooks_due(self, kind: str | None) -> bool:
        if kind is None or (kind == "on_cancellation" and self.stop.cancel_hooks_ran):
            return False
        self.stop.cancel_hooks_ran = self.stop.cancel_hooks_ran or kind == "on_cancellation"
        return bool(self.subject.hooks(kind))

    def run_hooks(self, kind: str | None, state: State, *, fresh: bool = True) -> None:
        """Run the hooks of `kind` in the run's context, given the run's current record (as
        known here when not `fresh`: the server may be gone)."""
        if self._hooks_due(kind):
            assert kind is not None
            hooks = self.subject.hooks(kind)
            record = self.fresh_record() if fresh else self.record()
            leave = self.hook_context(record)
            try:  # hooks are the user's code: a signal stops them; their prints are the run's
                with printing_to_log(self.subject.log_prints):
                    waiting(run_hooks, hooks, kind, self.subject, record, state, self.log)
            finally:
                leave()

    async def run_hooks_async(self, kind: str | None, state: State) -> None:
        if self._hooks_due(kind):
            assert kind is not None
            record = await asyncio.to_thread(self.fresh_record)
            leave = self.hook_context(record)
            try:
                with printing_to_log(self.subject.log_prints):
                    await run_hooks_async(
                        self.subject.hooks(kind), kind, self.subject, record, state, self.log
                    )
            finally:
                leave()

    def crash(self, error: BaseException) -> None:
        """Report a crash (an interrupt, a signal...) and run on_crashed."""
        self.orchestration.crash(error)
        if self.orchestration.state is not None and self.orchestration.state.is_crashed():
            reachable = not isinstance(error, ServerUnavailable | DeadlineExceeded)
            self.run_hooks("on_crashed", self.orchestration.state, fresh=reachable)

    # --- executing the code -----------------------------------------------------------------------

    def enter_code(self) -> Callable[[], None]:
        """Make the run's context current for its code; returns what makes it not current."""
        raise NotImplementedError

    def code_over(self, error: BaseException | None) -> None:
        """After the run's code (which raised `error`, or None), before its context ends (a
        flow waits for its task runs)."""

    async def code_over_async(self, error: BaseException | None) -> None:
        """`code_over` for async code."""

    def call_sync(self) -> Any:
        leave = self.enter_code()
        subject = self.subject
        raised: BaseException | None = None
        try:
            if not subject.log_prints:  # printing_to_log(False) does nothing: not even made
                return call_with(subject.fn, subject.signature, self.parameters)
            with printing_to_log(True):
                return call_with(subject.fn, subject.signature, self.parameters)
        except BaseException as error:
            raised = error
            raise
        finally:
            try:
                self.code_over(raised)
            finally:
                leave()

    async def call_async(self) -> Any:
        leave = self.enter_code()
        raised: BaseException | None = None
        try:
            with printing_to_log(self.subject.log_prints):
                value = await call_with(self.subject.fn, self.subject.signature, self.parameters)
                if inspect.iscoroutine(value):  # an async task's call, not awaited: its value
                    value = await value
                return value
        except BaseException as error:
            raised = error
            raise
        finally:
            try:
                await self.code_over_async(raised)
            finally:
                leave()

    def after_call(self, value: Any) -> State:
        """The state the code's return value proposes."""
        raise NotImplementedError

    def result_policy(self) -> ResultPolicy:
        """How this run keeps its result."""
        raise NotImplementedError

    @property
    def result_what(self) -> str:
        """What this run's result is called in messages: "result of task 'name'"."""
        noun = "flow" if isinstance(self.subject, Flow) else "task"
        return f"result of {noun} {self.subject.name!r}"

    def within_server_limit(self, proposal: State, error: ResourceExhausted) -> State:
        """`proposal` again after the server refused it as larger than its largest message
        (`stateward server start --max-message-bytes`, 4 MiB by default; gRPC's "Received
        message larger than max (N vs. M)"): its result kept as one over the size limit is
        (to a file in result storage, else in memory only unless the run required
        persistence; see `_results.ResultPolicy`), that limit the server's. A run whose result
        must persist then fails with ResultTooLarge naming the server's limit and the option
        that raises it, instead of crashing. Raises `error` for any other refusal."""
        match = _LARGER_THAN_MAX.search(str(error))
        if match is None or proposal.data is None or not has_value(proposal):
            raise error
        server_limit = int(match.group(2))
        try:
            data = stored(
                proposal._value, self.result_what, self.log, self.result_policy(), server_limit
            )
        except (ResultTooLarge, OSError) as failure:
            return failed(failure)
        return proposal.evolve(data=data)

    def execute_sync(self) -> State:
        region = Interruptible()
        self.interruptible = region
        # Read after the region is known: a stop or cancel coming later reaches the region.
        stop = self.stop.stop_requested
        if stop is not None:
            region.interrupt(stop, from_outside=True)
        elif self.stop.cancel_state is not None:  # cancelled before the code started
            region.interrupt(RunCancelled)
        try:
            value = region.run(self.call_sync, self.timeout, self.on_timeout)
        except BaseException as error:
            return self.classify(error)
        finally:
            self.interruptible = None
        return self.after_call(value)

    def on_timeout(self, region: Interruptible) -> None:
        """The `timeout_seconds` of the attempt that ran in `region` passed: stop its code."""
        region.interrupt(RunTimedOut)

    def on_async_timeout(self) -> None:
        """An async run's `timeout_seconds` passed (asyncio cancels its own code)."""

    async def execute_async(self) -> State:
        self.asyncio_loop = asyncio.get_running_loop()
        self.asyncio_task = asyncio.current_task()
        self.stop.timed_out = False
        try:
            stop = self.stop.stop_requested
            if stop is RunCrashed:
                raise stop
            if stop is not None:
                self.stop.passed_on = stop()
                return State(StateType.CANCELLED, message=stopped_message(stop))
            if self.stop.cancel_state is not None:
                raise RunCancelled
            timer = None
            if self.timeout is not None:
                timer = self.asyncio_loop.call_later(self.timeout, self.on_async_timeout)
            try:
                async with asyncio.timeout(self.timeout) as deadline:
                    value = await self.call_async()
            except TimeoutError:
                self.stop.timed_out = deadline.expired()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            return self.after_call(value)
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError) and (
                self.stop.cancel_state is not None or (self.owns_loop and self.stop.stop_requested)
            ):
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  # we asked for it
            return self.classify(error)
        finally:
            self.asyncio_task = None
            self.interruptible = None

    # --- the drivers ------------------------------------------------------------------------------

    def orchestrate_sync(self, first: OrchestrationResult | None = None) -> State:
        while True:
            final = self.start(first)
            first = None
            if final is not None:
                return final
            self.run_count += 1
            self.run_hooks("on_running", self.orchestration.state)  # type: ignore[arg-type]
            final = self.finish(self.execute_sync())
            if final is not None:
                return final

    async def orchestrate_async(self, first: OrchestrationResult | None = None) -> State:
        while True:
            final = await asyncio.to_thread(self.start, first)
            first = None
            if final is not None:
                return final
            self.run_count += 1
            await self.run_hooks_async("on_running", self.orchestration.state)  # type: ignore[arg-type]
            proposal = await self.execute_async()
            final = await asyncio.to_thread(self.finish, proposal)
            if final is not None:
                return final

    # --- the whole run ----------------------------------------------------------------------------

    def begin(self) -> OrchestrationResult | State | None:
        """Create the run and propose Running. Returns the answer to Running; None when the run
        exists already (it proposes Running itself); a final state if it ended before its code
        could start."""
        raise NotImplementedError

    def created(self) -> bool:
        """Whether the run exists on the server (so a crash can be reported)."""
        raise NotImplementedError

    def catch_signals(self) -> Callable[[], None]:
        """Before a synchronous run: catch what crashes it; returns what undoes that."""
        return _nothing_to_undo

    def enter(self) -> None:
        """Before the run begins: make it reachable by what may stop it."""

    def done(self) -> None:
        """After the run, however it ended: it no longer runs in this process."""
        if self.parent is not None:
            self.parent.engine.untrack(self)
        self.supervisor.release_lease(self.id)

    def _crash_unless_reported(self, error: BaseException) -> None:
        if (
            self.created()
            and not isinstance(error, OrchestrationAborted | ServerUnavailable)
            and self.stop.stop_requested is not RunCrashed  # the flow run reported it
        ):
            self.crash(error)

    # --- work an earlier attempt of the flow run around this one finished -----------------------

    def reused(self) -> State | None:
        """The final state of this same call (the same task or subflow, called as many times
        before it in the attempt) completed by an earlier attempt of the flow run around this
        one: a retried flow run does not run finished work again."""
        if self.parent is None or self.call is None:
            return None
        state = self.parent.engine.completed_calls.get(self.call)
        if state is not None:
            self.parent.engine.untrack(self)
        return state

    def remember(self, final: State) -> None:
        if self.parent is not None and self.call is not None and final.is_completed():
            self.parent.engine.completed_calls[self.call] = final

    def run(self) -> State:
        """The whole run (the engine's work, in which the code runs as user code)."""
        reused = self.reused()
        if reused is not None:
            return reused
        restore = self.catch_signals()
        self.enter()
        try:
            try:
                begun = self.begin()
                final = begun if isinstance(begun, State) else self.orchestrate_sync(begun)
            except BaseException as error:
                self._crash_unless_reported(error)
                raise
        finally:
            restore()
            self.done()
        self.remember(final)
        self.run_hooks(FINAL_HOOKS.get(final.type), final)
        self.pass_on()
        return final

    async def run_async(self) -> State:
        """The whole run of async code, on the caller's event loop (the engine's calls to the
        server in worker threads)."""
        reused = self.reused()
        if reused is not None:
            return reused
        self.enter()
        try:
            try:
                begun = await asyncio.to_thread(self.begin)
                if isinstance(begun, State):
                    final = begun
                else:
                    final = await self.orchestrate_async(begun)
            except BaseException as error:
                await asyncio.to_thread(self._crash_unless_reported, error)
                raise
        finally:
            self.done()
        self.remember(final)
        await self.run_hooks_async(FINAL_HOOKS.get(final.type), final)
        self.pass_on()
        return final

    def result_of(self, state: State, return_state: bool) -> Any:
        """What the call returns: the state, or its value (raising if the run did not complete)."""
        if return_state:
            return state
        if state.is_completed():
            # Not state.result(), which asks whether its caller awaits it: this method does not.
            return state._result(True)
        if self.error is not None and (state.is_failed() or state.is_pending()):
            raise self.error  # the code's exception, or the upstream that kept it from running
        raise exception_for(state)


def _nothing_to_undo() -> None:
    pass


def call_run(make: Callable[[], RunEngine], isasync: bool, return_state: bool) -> Any:
    """A flow or task call: make its engine and run it (for async code, a coroutine doing so);
    returns what the call returns (see `RunEngine.result_of`)."""
    if isasync:
        return _call_run_async(make, return_state)
    with engine_code():
        engine = make()
        return engine.result_of(engine.run(), return_state)


async def _call_run_async(make: Callable[[], RunEngine], return_state: bool) -> Any:
    engine = await asyncio.to_thread(make)
    return engine.result_of(await engine.run_async(), return_state)
