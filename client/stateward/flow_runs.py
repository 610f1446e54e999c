"""Pausing a flow run until somebody resumes it, and waiting for a flow run to end, at the
reference's path (`prefect.flow_runs`).

`pause_flow_run()` inside a flow proposes Paused (with a pause key and a timeout; a key that
already paused the run does not pause it again) and blocks the flow's code until the run is
resumed: by `resume_flow_run(flow_run_id)` from any process, `stateward flow-run resume ID`,
the web view, or the ResumeFlowRun RPC from any language. Task runs of the paused flow that try
to start are held (NotReady) and go on after the resume. A pause nobody resumes before its
timeout ends the run Failed ("never resumed") and raises FlowPauseTimeout in the flow's code.
With `wait_for_input=SomeModel` the resume must carry a value matching the model (checked by
the server against the model's JSON Schema) and `pause_flow_run` returns it as a model; the
model's description (its docstring, or `stateward.input.RunInput.with_initial_data`'s) is said
with the pause, in the run's logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from stateward._context import flow_run_context, task_run_context
from stateward._embedded import get_client
from stateward._interrupt import engine_code
from stateward.client import Client, WatchStopper, input_json
from stateward.exceptions import (
    FailedPrecondition,
    FlowPauseTimeout,
    FlowRunWaitTimeout,
    NotPausedError,
    OrchestrationAborted,
)
from stateward.runs import FlowRun, SetStateStatus
from stateward.states import TERMINAL_TYPES, State, StateDetails, StateType, now

log = logging.getLogger("stateward.flow_runs")

DEFAULT_PAUSE_TIMEOUT = 3600
DEFAULT_POLL_INTERVAL = 10
DEFAULT_WAIT_TIMEOUT = 10800  # wait_for_flow_run's, as the reference's: three hours


def pause_flow_run(
    wait_for_input: Any = None,
    timeout: float = DEFAULT_PAUSE_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    key: str | None = None,
) -> Any:
    """Pause the flow run executing this code until it is resumed; in an async flow's code,
    await it (a sync flow's code blocks, also when called from async code).

    `timeout`: seconds the pause may last (an hour by default); past it the run ends Failed
    and FlowPauseTimeout is raised here. `key`: names this pause point; a key that already
    paused the run does not pause it again (the call returns at once). Without one, each call
    of a flow run's attempt gets the next key ("pause-1", "pause-2", ...). `poll_interval`:
    the longest the code takes to notice a resume if the server's stream of transitions is
    lost. `wait_for_input`: a pydantic model (or any type pydantic validates): the resume must
    carry such a value, which is returned; otherwise returns None.

    Raises RuntimeError outside a flow run or in a task run, ValueError for a timeout or poll
    interval that is not positive, FlowPauseTimeout when nobody resumed the run in time, and
    OrchestrationAborted when the server refuses the pause or the run ends while paused."""
    if task_run_context.get() is not None:
        raise RuntimeError("pause_flow_run pauses a flow run: call it in a flow, not in a task")
    context = flow_run_context.get()
    if context is None:
        raise RuntimeError("pause_flow_run must be called inside a flow run")
    if not timeout > 0 or not poll_interval > 0:
        raise ValueError("pause_flow_run takes a positive timeout and poll_interval")
    adapter = None if wait_for_input is None else TypeAdapter(wait_for_input)
    if key is None:
        context.pauses += 1
        key = f"pause-{context.pauses}"
    pause = _Pause(context.engine, key, float(timeout), float(poll_interval), adapter)
    if _async_code():
        return asyncio.to_thread(pause.wait)
    return pause.wait()


def resume_flow_run(flow_run_id: str, run_input: Any = None) -> Any:
    """Resume a paused flow run, from any process; in async code, await it. `run_input` is the
    input its pause waits for: a pydantic model, or a value JSON can hold (a dict, say).

    Returns the run's new (Running) state. Raises FlowPauseTimeout when the pause had expired
    (the run is Failed now), OrchestrationAborted when another client changed the run first,
    NotPausedError (a FailedPrecondition) when the run is not paused, as the reference's
    NotPausedError, and the server's refusal otherwise: NotFound, InvalidArgument (the input
    is missing, unexpected or does not match the pause's schema)."""
    text = None if run_input is None else input_json(run_input)
    if _async_code():
        return asyncio.to_thread(_resume, flow_run_id, text)
    return _resume(flow_run_id, text)


async def apause_flow_run(
    wait_for_input: Any = None,
    timeout: float = DEFAULT_PAUSE_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    key: str | None = None,
) -> Any:
    """`await pause_flow_run(...)` under the name the reference's async form has
    (`apause_flow_run`): the same arguments, value and errors."""
    return await pause_flow_run(wait_for_input, timeout, poll_interval, key)


async def aresume_flow_run(flow_run_id: str, run_input: Any = None) -> State:
    """`await resume_flow_run(...)` under the name the reference's async form has
    (`aresume_flow_run`): the same arguments, value and errors."""
    state: State = await resume_flow_run(flow_run_id, run_input)
    return state


def _resume(flow_run_id: str, run_input: str | None) -> State:
    try:
        result = get_client().resume_flow_run(flow_run_id, run_input)
    except FailedPrecondition as refused:  # ResumeFlowRun's one: the run is not paused
        raise NotPausedError(str(refused)) from None
    if result.status is SetStateStatus.ACCEPT:
        assert result.state is not None
        return result.state
    if result.state is not None and result.state.is_failed():
        raise FlowPauseTimeout(
            f"flow run {flow_run_id} can no longer be resumed: {result.state.message}"
        )
    raise OrchestrationAborted(f"flow run {flow_run_id} was not resumed: {result.reason}")


def _async_code() -> bool:
    """Whether the calling code is async code, which awaits what these functions return: an
    event loop runs in this thread, and no sync flow's or task's code runs here (a sync flow
    called from async code runs in its caller's thread: its code blocks, as it was written to)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    task_context = task_run_context.get()
    if task_context is not None:
        return bool(task_context.task.isasync)
    flow_context = flow_run_context.get()
    return flow_context is None or bool(flow_context.flow.isasync)


class _Pause:
    """One pause of a flow run: propose it, then wait for the run to leave it."""

    def __init__(
        self,
        engine: Any,
        key: str,
        timeout: float,
        poll_interval: float,
        adapter: TypeAdapter[Any] | None,
    ) -> None:
        self.engine = engine
        self.key = key
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.adapter = adapter
        self.moved = threading.Event()  # a transition of the run: look at its state

    def wait(self) -> Any:
        engine = self.engine
        watching = threading.Event()
        threading.Thread(
            target=self._watch, args=(watching,), name="stateward-pause", daemon=True
        ).start()
        watching.wait(10)  # established before the pause, so that no resume slips between
        described = self.adapter.json_schema() if self.adapter is not None else {}
        schema = json.dumps(described) if self.adapter is not None else ""
        paused = State(
            StateType.PAUSED,
            details=StateDetails(
                pause_key=self.key,
                pause_timeout=now() + timedelta(seconds=self.timeout),
                run_input_schema=schema,
            ),
        )
        with engine_code():
            decision = engine.orchestration.propose(paused)
        if decision.status is SetStateStatus.ABORT:
            raise OrchestrationAborted(decision.reason)
        state = decision.state
        if state is None or state.type is not StateType.PAUSED:
            return None  # this pause key paused the run before: it keeps running
        asks = described.get("description")
        log.info(
            "%s - paused (key %r) for at most %gs; resume it with `stateward flow-run resume %s`%s",
            engine.orchestration.label,
            self.key,
            self.timeout,
            engine.id if self.adapter is None else f"{engine.id} --input '<json>'",
            f"; it waits for input: {asks}" if isinstance(asks, str) else "",
            extra=engine.orchestration.log_extra,  # in the run's logs too
        )
        current = self._wait_until_resumed(state)
        if current.type is StateType.RUNNING:
            if self.adapter is None:
                return None
            return self.adapter.validate_json(current.details.run_input or "null")
        if current.type is StateType.FAILED:
            raise FlowPauseTimeout(current.message or "the flow run was never resumed")
        raise OrchestrationAborted(f"the flow run became {current.name} while it was paused")

    def _wait_until_resumed(self, paused: State) -> State:
        engine = self.engine
        current: State | None
        end = time.monotonic() + self.timeout
        polled = time.monotonic()
        while True:
            left = end - time.monotonic()
            self.moved.wait(max(0.0, min(left, 0.2)))  # short steps: interrupts land between
            due = time.monotonic() - polled >= self.poll_interval
            if not (self.moved.is_set() or due or left <= 0):
                continue
            self.moved.clear()
            polled = time.monotonic()
            with engine_code():
                current = engine.client.get_flow_run(engine.id).state
            if current is None or current.id == paused.id:
                if left <= 0:
                    raise FlowPauseTimeout(
                        f"the flow run was paused and never resumed within {self.timeout:g}s"
                    )
                continue
            engine.orchestration.observe_state(current)
            if current.type in (StateType.CANCELLING, StateType.CANCELLED):
                engine.request_cancel(current)  # as the supervisor does: stops this code
                self.moved.wait(5)  # where the interrupt lands (code in a worker thread: not)
                return current
            if current.type is StateType.RUNNING or current.type in TERMINAL_TYPES:
                return current
            # Any other state (Scheduled by another client...): not a resume; keep waiting.

    def _watch(self, watching: threading.Event) -> None:
        """Wake the waiting code at each transition of the run until it leaves the pause."""
        try:
            for transition in self.engine.client.watch(
                run_ids=[self.engine.id], started=lambda _: watching.set()
            ):
                self.moved.set()
                if transition.to_state.type is not StateType.PAUSED:
                    return
        except Exception as error:  # the poll interval still finds the resume
            log.debug("pause: lost the transitions stream (%s); polling", error)
            watching.set()


def wait_for_flow_run(
    flow_run_id: str,
    timeout: float | None = DEFAULT_WAIT_TIMEOUT,
    poll_interval: float | None = None,
    client: Client | None = None,
    log_states: bool = False,
) -> Any:
    """Wait until the flow run `flow_run_id` ends (Completed, Failed, Cancelled or Crashed),
    from any process, and return it (a FlowRun, with its final state); in async code, await it.
    Mirrors the reference's `prefect.flow_runs.wait_for_flow_run`: `timeout` seconds (three
    hours by default; None: no limit) before FlowRunWaitTimeout (also a TimeoutError) is
    raised; `log_states` logs each state the run enters meanwhile (INFO, `stateward.flow_runs`);
    `client` the client to use (the process's by default). The wait follows the run's
    transitions as they happen: `poll_interval`, which the reference no longer uses either,
    has no effect (a warning says so). Raises NotFound for an unknown run, ValueError for a
    timeout that is not positive."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"wait_for_flow_run takes a positive timeout or None, not {timeout!r}")
    if poll_interval is not None:
        log.warning(
            "wait_for_flow_run: poll_interval=%r has no effect: the wait follows the run's "
            "transitions as they happen",
            poll_interval,
        )
    waiter = _RunWaiter(client or get_client(), flow_run_id, timeout, log_states)
    if _async_code():
        return waiter.awaited()
    return waiter.wait()


class _RunWaiter:
    """One wait for a flow run's end: read the run at each of its transitions."""

    def __init__(
        self, client: Client, flow_run_id: str, timeout: float | None, log_states: bool
    ) -> None:
        self.client = client
        self.flow_run_id = flow_run_id
        self.timeout = timeout
        self.log_states = log_states
        self.moved = threading.Event()
        self.stopper = WatchStopper()  # the wait's end ends its watch
        self.cancelled = False  # the awaiting code gave up: the thread waiting for it ends
        self._said: set[str] = set()  # the states logged (by id): each once, from either thread
        self._saying = threading.Lock()

    def wait(self) -> FlowRun:
        self.client.get_flow_run(self.flow_run_id)  # NotFound before any wait
        watching = threading.Event()
        threading.Thread(
            target=self._watch, args=(watching,), name="stateward-wait", daemon=True
        ).start()
        try:
            watching.wait(10)  # established before the next read: no transition slips between
            return self._until_final()
        finally:
            self.stopper.stop()

    async def awaited(self) -> FlowRun:
        """`wait` in a thread, for async code; cancelled (asyncio.wait_for, say), it ends that
        thread (else it went on until the run ended or the timeout passed, and asyncio.run
        waited for it at exit)."""
        try:
            return await asyncio.to_thread(self.wait)
        except asyncio.CancelledError:
            self.cancelled = True
            self.moved.set()
            raise

    def _until_final(self) -> FlowRun:
        end = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            self.moved.clear()
            if self.cancelled:
                raise asyncio.CancelledError
            run = self.client.get_flow_run(self.flow_run_id)
            if run.state is not None:
                self._say(run.state)
                if run.state.is_final():
                    return run
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                now_in = run.state.name if run.state is not None else "without a state"
                raise FlowRunWaitTimeout(
                    f"flow run {run.name} ({run.id}) did not end within {self.timeout:g}s "
                    f"(it is {now_in})"
                )
            # Woken by the run's next transition; a read now and then in case the stream broke.
            self.moved.wait(30.0 if left is None else min(left, 30.0))

    def _say(self, state: State) -> None:
        if not self.log_states:
            return
        with self._saying:
            if state.id in self._said:
                return
            self._said.add(state.id)
        log.info("Flow run %s - %s", self.flow_run_id, state.name)

    def _watch(self, watching: threading.Event) -> None:
        try:
            for transition in self.client.watch(
                run_ids=[self.flow_run_id], started=lambda _: watching.set(), stopper=self.stopper
            ):
                self._say(transition.to_state)
                self.moved.set()
                if transition.to_state.is_final():
                    return
        except Exception as error:  # the wait's reads every 30 s still find the end
            log.debug("wait_for_flow_run: lost the transitions stream (%s)", error)
            watching.set()


__all__ = [
    "apause_flow_run",
    "aresume_flow_run",
    "pause_flow_run",
    "resume_flow_run",
    "wait_for_flow_run",
]


if not TYPE_CHECKING:  # (for type checkers, a misspelt name stays an error)

    def __getattr__(name: str) -> Any:
        """Only for a name not found: one the reference's module has and this one leaves out
        raises ImportError saying what to do instead (see `stateward._left_out`)."""
        from stateward._left_out import missing_name

        missing_name(__name__, name)
