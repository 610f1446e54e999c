"""How a run is stopped, and how its code ended.

`StopFlags` gathers what other threads ask of a run while it runs (a cancel, the stop of the run
around it, a timeout) and what the run did about it; the engine reads them between its steps.
`classify` is the pure rule that turns the exception out of the run's code, with those flags,
into the state the run proposes: no I/O, no engine, tested from a table.
"""

from __future__ import annotations

import asyncio

from stateward._interrupt import RunCancelled, RunCrashed, RunInterrupted, RunTimedOut
from stateward._outcomes import failed
from stateward._records import dataclass
from stateward.exceptions import TimedOutRun
from stateward.states import State, StateType


@dataclass
class StopFlags:
    """The mutable stop flags of one run. Set from other threads (the supervisor's cancel
    stream, a timer, the run around it); each is written once a cause arrives, read by the
    engine's steps."""

    # The run is being cancelled: the CANCELLING (or CANCELLED) state that said so.
    cancel_state: State | None = None
    # The run around this one is being stopped (its cancel or timeout): this run stops too,
    # wherever it is, ends Cancelled, then passes the interrupt on to that run.
    stop_requested: type[RunInterrupted] | None = None
    # An async attempt's `timeout_seconds` expired (asyncio raised TimeoutError for it).
    timed_out: bool = False
    # The on_cancellation hooks ran already (they run once per run).
    cancel_hooks_ran: bool = False
    # An interrupt meant for the run around this one, raised to it once this run ended.
    passed_on: BaseException | None = None

    def stopping(self) -> bool:
        """Whether the engine's waits should end early: the run is being cancelled, or stopped
        with the run around it."""
        return self.cancel_state is not None or self.stop_requested is not None


@dataclass(frozen=True)
class Ending:
    """How a run's code ended: the state to propose, the interrupt to pass on to the run around
    it (if any), and the code's own exception when it failed (the engine keeps it to re-raise
    it to the caller, and may make the failure unretriable)."""

    state: State
    passed_on: BaseException | None = None
    failure: Exception | None = None


def classify(
    error: BaseException,
    flags: StopFlags,
    *,
    from_outside: bool = False,
    nested: bool = False,
    asyncio_cancelling: bool = False,
    timeout: float | None = None,
    label: str = "run",
) -> Ending:
    """The ending that `error`, raised out of a run's code, stands for.

    `from_outside`: the interrupt that stopped the code's region was meant for an enclosing
    run. `nested`: the run executes inside another run's code (a task, a subflow).
    `asyncio_cancelling`: the asyncio task running the code was asked to cancel (rather than
    the code raising CancelledError itself). `timeout` and `label` go into a timeout's message.

    Raises `error` itself when it is not an outcome of the code (KeyboardInterrupt,
    SystemExit, a termination signal, RunCrashed: a signal crashed the flow run around it):
    the caller crashes the run.
    """
    if isinstance(error, RunCrashed) or (
        isinstance(error, asyncio.CancelledError) and flags.stop_requested is RunCrashed
    ):
        raise error
    if isinstance(error, RunInterrupted) and from_outside:
        return Ending(
            State(StateType.CANCELLED, message=stopped_message(type(error))), passed_on=error
        )
    if (
        isinstance(error, asyncio.CancelledError)
        and flags.cancel_state is None
        and nested
        and (flags.stop_requested is not None or asyncio_cancelling)
    ):
        # The enclosing run is being cancelled or timed out.
        stopped = flags.stop_requested
        message = stopped_message(stopped) if stopped else "stopped with the run around it"
        return Ending(State(StateType.CANCELLED, message=message), passed_on=error)
    if isinstance(error, RunTimedOut) or (isinstance(error, TimeoutError) and flags.timed_out):
        limit = f" of {timeout:g}s" if timeout is not None else ""
        timed_out = TimedOutRun(f"{label} exceeded its timeout{limit}")
        return Ending(failed(timed_out, name="TimedOut", message=str(timed_out)))
    # RunCancelled only comes from a cancel (of this run, or of the flow run around it);
    # an asyncio cancellation is one only if a cancel was asked for.
    if isinstance(error, RunCancelled) or (
        isinstance(error, asyncio.CancelledError) and flags.cancel_state is not None
    ):
        return Ending(State(StateType.CANCELLED, message="cancelled while it ran"))
    if isinstance(error, TimeoutError):  # the code's own: a timeout all the same
        return Ending(failed(error, name="TimedOut"), failure=error)
    if isinstance(error, Exception):
        return Ending(failed(error), failure=error)
    raise error  # KeyboardInterrupt, SystemExit, termination: the caller crashes the run


def stopped_message(error: type[RunInterrupted]) -> str:
    """The message of a run that ended Cancelled because the run around it was stopped."""
    cause = "timed out" if issubclass(error, RunTimedOut) else "was cancelled"
    return f"stopped: the run around it {cause}"


def asyncio_task_cancelling() -> bool:
    """Whether the asyncio task running now was asked to cancel (rather than its code raising
    CancelledError itself)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop in this thread
        return False
    return task is not None and task.cancelling() > 0
