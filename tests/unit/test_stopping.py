"""How a run ended, from the exception out of its code and its stop flags: one row per case of
`_stopping.classify`, a pure function."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from stateward._interrupt import RunCancelled, RunInterrupted, RunTimedOut
from stateward._signals import TerminationSignal
from stateward._stopping import StopFlags, classify
from stateward.states import State, StateType

CANCELLING = State(StateType.CANCELLING)


@dataclass
class Case:
    error: BaseException
    flags: StopFlags = field(default_factory=StopFlags)
    context: dict[str, Any] = field(default_factory=dict)
    # expected: (type, name, message), whether the error is passed on, whether it is a failure
    state: tuple[StateType, str, str] | None = None
    passed_on: bool = False
    failure: bool = False


def stopped(cause: str) -> tuple[StateType, str, str]:
    return (StateType.CANCELLED, "Cancelled", f"stopped: the run around it {cause}")


CANCELLED_WHILE_IT_RAN = (StateType.CANCELLED, "Cancelled", "cancelled while it ran")
TIMED_OUT = (StateType.FAILED, "TimedOut", "Task run 'x' exceeded its timeout of 2s")

CASES = {
    # An interrupt meant for the run around this one: Cancelled, and passed on.
    "outer timeout reached the code": Case(
        RunTimedOut(), context={"from_outside": True}, state=stopped("timed out"), passed_on=True
    ),
    "outer cancel reached the code": Case(
        RunCancelled(),
        context={"from_outside": True},
        state=stopped("was cancelled"),
        passed_on=True,
    ),
    "async code nested, outer run timed out": Case(
        asyncio.CancelledError(),
        StopFlags(stop_requested=RunTimedOut),
        {"nested": True},
        state=stopped("timed out"),
        passed_on=True,
    ),
    "async code nested, its asyncio task cancelled by the outer run": Case(
        asyncio.CancelledError(),
        context={"nested": True, "asyncio_cancelling": True},
        state=(StateType.CANCELLED, "Cancelled", "stopped with the run around it"),
        passed_on=True,
    ),
    # This run's own cancel.
    "this run cancelled (sync code)": Case(RunCancelled(), state=CANCELLED_WHILE_IT_RAN),
    "this run cancelled (async code)": Case(
        asyncio.CancelledError(), StopFlags(cancel_state=CANCELLING), state=CANCELLED_WHILE_IT_RAN
    ),
    "nested async code, this run's own cancel wins over the outer stop": Case(
        asyncio.CancelledError(),
        StopFlags(cancel_state=CANCELLING, stop_requested=RunTimedOut),
        {"nested": True, "asyncio_cancelling": True},
        state=CANCELLED_WHILE_IT_RAN,
    ),
    # This run's own timeout.
    "timeout of sync code": Case(RunTimedOut(), state=TIMED_OUT),
    "timeout of async code": Case(TimeoutError(), StopFlags(timed_out=True), state=TIMED_OUT),
    "timeout with no limit known": Case(
        RunTimedOut(),
        context={"timeout": None},
        state=(StateType.FAILED, "TimedOut", "Task run 'x' exceeded its timeout"),
    ),
    # The code's own exceptions fail the attempt.
    "the code raised": Case(
        ValueError("boom"), state=(StateType.FAILED, "Failed", "ValueError: boom"), failure=True
    ),
    # A TimeoutError of the code's own is a timeout too, as the reference names it.
    "the code raised TimeoutError itself": Case(
        TimeoutError("slow"),
        state=(StateType.FAILED, "TimedOut", "TimeoutError: slow"),
        failure=True,
    ),
    "the code raised with no message": Case(
        KeyError(), state=(StateType.FAILED, "Failed", "KeyError"), failure=True
    ),
}

CRASHES = {
    "Ctrl-C": KeyboardInterrupt(),
    "SIGTERM": TerminationSignal("SIGTERM"),
    "sys.exit": SystemExit(3),
    "CancelledError nobody asked for": asyncio.CancelledError(),
    "outer CancelledError of code not nested": asyncio.CancelledError(),
}


@pytest.mark.parametrize("name", list(CASES))
def test_how_a_run_ended(name: str) -> None:
    case = CASES[name]
    context = {"timeout": 2.0, "label": "Task run 'x'", **case.context}
    ending = classify(case.error, case.flags, **context)
    assert (ending.state.type, ending.state.name, ending.state.message) == case.state
    assert ending.passed_on is (case.error if case.passed_on else None)
    assert ending.failure is (case.error if case.failure else None)
    if case.failure:
        assert ending.state.data is not None  # the exception travels with the Failed state


@pytest.mark.parametrize("name", list(CRASHES))
def test_what_is_not_an_outcome_of_the_code_is_raised_to_crash_the_run(name: str) -> None:
    error = CRASHES[name]
    flags = StopFlags(stop_requested=RunCancelled) if "outer" in name else StopFlags()
    with pytest.raises(type(error)) as raised:
        classify(error, flags, nested=False)
    assert raised.value is error


def test_an_interrupt_from_outside_is_passed_on_only_if_it_came_from_outside() -> None:
    error: RunInterrupted = RunCancelled()
    inside = classify(error, StopFlags(), from_outside=False)
    outside = classify(error, StopFlags(), from_outside=True)
    assert inside.passed_on is None and outside.passed_on is error


def test_stopping_is_a_cancel_or_an_outer_stop() -> None:
    assert not StopFlags().stopping()
    assert not StopFlags(timed_out=True, cancel_hooks_ran=True).stopping()
    assert StopFlags(cancel_state=CANCELLING).stopping()
    assert StopFlags(stop_requested=RunTimedOut).stopping()
