"""Every error Stateward raises, as one tree:

StatewardError
├── RunError                 a run did not complete; State.result() raises it
│   ├── FailedRun            its code failed and no exception was stored
│   ├── CrashedRun           something outside its code ended it
│   ├── CancelledRun         somebody cancelled it
│   ├── TimedOutRun          it exceeded its timeout_seconds (also a built-in TimeoutError)
│   ├── PausedRun            it paused (a flow that returned Paused()), or is paused now
│   └── UnfinishedRun        its result was asked for before it ended
├── OrchestrationAborted     the server answered ABORT: the run must stop here
├── MappingMissingIterable   Task.map() got no iterable argument (also a ValueError)
├── MappingLengthMismatch    Task.map() got iterables of different lengths (also a ValueError)
├── FlowPauseTimeout         a paused flow run was not resumed before its timeout
├── FlowRunWaitTimeout       wait_for_flow_run's timeout passed first (also a TimeoutError)
├── ResultTooLarge           a result is larger than the limit for storing it
├── MissingResult            a run's result is not available here (not persisted, file gone)
├── ParameterTypeError       a flow's parameters do not fit its annotations (also a TypeError)
├── ParameterBindError       a flow or task was called with arguments its function cannot take
│                            (also a TypeError)
├── UpstreamTaskError        an upstream of a task or subflow did not complete: it did not run
├── MissingContextError      code that needs a run executing ran outside any (a RuntimeError)
├── ServerUnavailable        no server could be reached or started
├── InvalidSetting           an environment setting (STATEWARD_...) cannot be right
└── RpcError                 the server refused a call (a gRPC status other than OK)
    ├── NotFound             (also under the reference's name, ObjectNotFound)
    ├── InvalidArgument
    ├── AlreadyExists
    ├── FailedPrecondition
    │   ├── CursorExpired    a watch's cursor is before the oldest transition the log keeps
    │   └── NotPausedError   resume_flow_run of a flow run that is not paused
    ├── ResourceExhausted
    ├── DeadlineExceeded
    └── Unauthenticated

Raised inside a run's code to stop it, and derived from BaseException so that an
`except Exception` does not swallow them (code that catches one has handled it):

RunInterrupted
├── RunTimedOut              the run exceeded its `timeout_seconds`
├── RunCancelled             the run (or the flow run around it) was cancelled
└── RunCrashed               a signal (Ctrl-C, SIGTERM) crashed the flow run around it

TerminationSignal            SIGTERM arrived while a flow ran (the run is Crashed); as the
                             reference's, so `except TerminationSignal` finds it here
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from stateward._interrupt import RunCancelled, RunCrashed, RunInterrupted, RunTimedOut
from stateward._signals import TerminationSignal

__all__ = [
    "AlreadyExists",
    "CancelledRun",
    "CrashedRun",
    "CursorExpired",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FailedRun",
    "FlowPauseTimeout",
    "FlowRunWaitTimeout",
    "InvalidArgument",
    "InvalidSetting",
    "MappingLengthMismatch",
    "MappingMissingIterable",
    "MissingContextError",
    "MissingResult",
    "NotFound",
    "NotPausedError",
    "ObjectNotFound",
    "OrchestrationAborted",
    "ParameterBindError",
    "ParameterTypeError",
    "PausedRun",
    "PrefectException",
    "ResourceExhausted",
    "ResultTooLarge",
    "RpcError",
    "RunCancelled",
    "RunCrashed",
    "RunError",
    "RunInterrupted",
    "RunTimedOut",
    "ServerUnavailable",
    "StatewardError",
    "TerminationSignal",
    "TimedOutRun",
    "Unauthenticated",
    "UnfinishedRun",
    "UpstreamTaskError",
]


class StatewardError(Exception):
    """The root of every Stateward error."""


# The reference's name for the root of its errors, for code written for it
# (`except PrefectException`): the same class.
PrefectException = StatewardError


class RunError(StatewardError):
    """A run did not complete."""


class FailedRun(RunError):
    """A run failed, and its exception was not stored (or could not be restored)."""


class CrashedRun(RunError):
    """A run crashed: an interrupt, a signal, a lost connection or a dead process ended it."""


class CancelledRun(RunError):
    """A run was cancelled."""


class TimedOutRun(RunError, TimeoutError):
    """A run exceeded its `timeout_seconds`; the message names the timeout. Also a built-in
    TimeoutError, as the reference raises."""


class PausedRun(RunError):
    """A run paused instead of completing (its code returned a Paused state), or a Paused
    state's result was asked for: a paused run has none, as in the reference."""


class UnfinishedRun(RunError):
    """A state's result was asked for while its run had not ended (Scheduled, Pending,
    Running, Cancelling): there is none yet, as the reference's UnfinishedRun says."""


class MappingMissingIterable(StatewardError, ValueError):
    """`Task.map()` got no iterable argument to map over."""


class MappingLengthMismatch(StatewardError, ValueError):
    """`Task.map()` got iterable arguments of different lengths."""


class OrchestrationAborted(StatewardError):
    """The server answered ABORT to a proposed state; the reason is the message."""


class UpstreamTaskError(StatewardError):
    """A task run or subflow did not run: one of its upstreams (a `wait_for`, or a future or
    state among its arguments) did not complete. It stays Pending, named NotReady."""


class ParameterTypeError(StatewardError, TypeError):
    """A flow's parameters do not fit its annotations: the run fails before its code runs."""


class ParameterBindError(StatewardError, TypeError):
    """A flow or task was called with arguments its function cannot take (too many, a missing
    or unknown one): raised by the call, before any run is made, where calling the function
    would raise TypeError; also a TypeError, as the reference's ParameterBindError is."""


class FlowPauseTimeout(StatewardError):
    """A paused flow run was not resumed before its pause timeout (`pause_flow_run` raises it
    in the flow's code; the run ends Failed), or can no longer be resumed."""


class FlowRunWaitTimeout(StatewardError, TimeoutError):
    """`wait_for_flow_run` waited its `timeout` and the flow run had not ended, as the
    reference's FlowRunWaitTimeout says; also a built-in TimeoutError."""


class ResultTooLarge(StatewardError):
    """A result is larger than the limit for storing it."""


class MissingResult(StatewardError):
    """A run's result cannot be read here: it was not persisted (`persist_result=False`, a value
    that could not be encoded, or one over the size limit without result storage in a run that
    did not require persistence) and this is not the process that ran the run, or the file its
    result storage wrote is gone."""


class MissingContextError(StatewardError, RuntimeError):
    """Code that needs a flow run or task run executing (`get_run_logger()`,
    `get_run_context()`) was called outside any. Also a RuntimeError, as the reference's
    MissingContextError is."""


class ServerUnavailable(StatewardError):
    """No Stateward server could be reached or started."""


class InvalidSetting(StatewardError, ValueError):
    """A STATEWARD_... environment variable holds a value that cannot be right; the message
    names it and says what it allows."""


class RpcError(StatewardError):
    """The server refused a call. `code` is the gRPC status code's name, e.g. "NOT_FOUND"; each
    subclass names the code it stands for (`error_for_status` picks the class for a code)."""

    code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class NotFound(RpcError):
    code = "NOT_FOUND"


# The reference's client raises ObjectNotFound where Stateward's raises NotFound: the same
# class, so that `except ObjectNotFound` finds it.
ObjectNotFound = NotFound


class InvalidArgument(RpcError):
    code = "INVALID_ARGUMENT"


class AlreadyExists(RpcError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(RpcError):
    code = "FAILED_PRECONDITION"


class CursorExpired(FailedPrecondition):
    """A watch asked for the transitions after a sequence the log no longer holds: its
    retention pruned them. `oldest_sequence` is the oldest transition it keeps: watch after
    `oldest_sequence - 1` to replay from there."""

    def __init__(self, message: str, oldest_sequence: int) -> None:
        super().__init__(message)
        self.oldest_sequence = oldest_sequence


class NotPausedError(FailedPrecondition):
    """`resume_flow_run` of a flow run that is not paused (the message says what it is), as
    the reference's NotPausedError; a FailedPrecondition, the server's refusal."""


class ResourceExhausted(RpcError):
    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(RpcError):
    code = "DEADLINE_EXCEEDED"


class Unauthenticated(RpcError):
    code = "UNAUTHENTICATED"


# --- status codes ------------------------------------------------------------------------------


class StatusCode(enum.IntEnum):
    """The gRPC status codes, numbered as google.rpc.Code and named as gRPC names them: here,
    not in the protocol's modules, so that code in one process (the in-process transport, the
    server's refusals) names them without loading gRPC."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# The client's exception for each status code (each class names its code); other codes raise a
# plain RpcError carrying the code's name.
ERROR_TYPES: dict[StatusCode, type[RpcError]] = {
    StatusCode[error_type.code]: error_type
    for error_type in (
        NotFound,
        InvalidArgument,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        DeadlineExceeded,
        Unauthenticated,
    )
}


def error_for_status(code: int, message: str) -> RpcError:
    """The client's exception for a call refused with status `code` (a number of
    google.rpc.Code; an unknown number counts as UNKNOWN) and `message`: the one table between
    status codes and exceptions, for the network transport, the in-process transport, batch
    results and the server's refusals alike."""
    try:
        status = StatusCode(code)
    except ValueError:
        status = StatusCode.UNKNOWN
    return ERROR_TYPES.get(status, RpcError)(message, status.name)


if not TYPE_CHECKING:  # (for type checkers, a misspelt name stays an error)

    def __getattr__(name: str) -> Any:
        """Only for a name not found: one the reference's module has and this one leaves out
        (its engine's signals, Abort and Pause) raises ImportError saying what to do instead
        (see `stateward._left_out`)."""
        from stateward._left_out import missing_name

        missing_name(__name__, name)
