"""States: the vocabulary the SDK and the server share.

Pure data and helpers, no I/O. A `State` is immutable and compares by value; the server's rules and
the user's code see the same class.
"""

from __future__ import annotations

import dis
import enum
import functools
import inspect
import operator
import sys
import types
from collections.abc import Callable
from dataclasses import field, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

# The vocabulary's record maker, for the server's records too (it may import the vocabulary only).
from stateward._records import dataclass as dataclass
from stateward._records import maker as maker
from stateward._records import quick_init as quick_init
from stateward._records import unfrozen

__all__ = [
    "TERMINAL_TYPES",
    "AwaitingRetry",
    "Cancelled",
    "Cancelling",
    "Completed",
    "Crashed",
    "Failed",
    "Late",
    "Paused",
    "Pending",
    "ResultData",
    "Retrying",
    "Running",
    "Scheduled",
    "State",
    "StateDetails",
    "StateType",
    "get_state_exception",
    "get_state_result",
    "is_state_iterable",
    "raise_state_exception",
]


class StateType(enum.IntEnum):
    """The canonical type of a state; the values are those of `stateward.v1.StateType`.

    It reads as the reference's string enum does: `str()`, `repr()` and `format()` give
    `StateType.FAILED`, and a type equals its name (`state.type == "FAILED"`) as well as its
    number. `.value` and `int()` are the contract's number, and a type hashes as its number (in a
    set or dict of names, look up `state.type.name`)."""

    SCHEDULED = 1
    PENDING = 2
    RUNNING = 3
    PAUSED = 4
    CANCELLING = 5
    COMPLETED = 6
    FAILED = 7
    CANCELLED = 8
    CRASHED = 9

    def __eq__(self, other: object) -> bool:
        """Equal to its number, and (as the reference's string enum) to its name."""
        if isinstance(other, str):
            return self.name == other
        return int.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        """The opposite of `==` (int's own `!=` knows nothing of names)."""
        if isinstance(other, str):
            return self.name != other
        return int.__ne__(self, other)

    __hash__ = enum.IntEnum.__hash__

    def __str__(self) -> str:
        """`StateType.FAILED`, as the reference prints its types (not the number)."""
        return f"StateType.{self._name_}"

    __repr__ = __str__

    def __format__(self, format_spec: str) -> str:
        """f-strings and `format()`: as `str()`, the spec applied to that text."""
        return format(str(self), format_spec)

    @classmethod
    def _missing_(cls, value: object) -> StateType | None:
        """`StateType("COMPLETED")`: a name is taken too."""
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls.__members__[value.upper()]
        return None

    @property
    def default_name(self) -> str:
        """The name a state of this type has when none is given: the capitalised type."""
        return _DEFAULT_NAMES[self]


# Worked out once: every State made without a name looks its name up here.
_DEFAULT_NAMES = {state_type: state_type.name.capitalize() for state_type in StateType}

TERMINAL_TYPES = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}
)
_ENDED_BADLY = frozenset({StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})
_COMPLETED = StateType.COMPLETED  # a global is read quicker than an enum's attribute


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, quick=True)
class StateDetails:
    """Facts about a state that the orchestration rules read and write."""

    flow_run_id: str = ""
    task_run_id: str = ""
    scheduled_time: datetime | None = None
    cache_key: str = ""
    cache_expiration: datetime | None = None
    transition_id: str = ""
    pause_key: str = ""
    pause_timeout: datetime | None = None
    refresh_cache: bool = False
    unretriable: bool = False
    child_flow_run_id: str = ""
    run_input_schema: str = ""  # PAUSED: the JSON Schema of the input a resume must carry
    run_input: str = ""  # RUNNING after a resume: the input (JSON) it carried


def _slot_setters(cls: type) -> tuple[Callable[[object, Any], None], ...]:
    """The `__set__` of each field's slot descriptor, in the order of the fields: it sets the
    field of a frozen instance (as `object.__setattr__` does, without looking the name up)."""
    return tuple(cls.__dict__[item.name].__set__ for item in fields(cls))


@dataclass(frozen=True, slots=True, quick=True)
class ResultData:
    """A result as stored: JSON text (any language reads it) or a Python pickle."""

    json: str | None = None
    pickle: bytes | None = None


_NO_VALUE: Any = object()
# The details of every state made without any: one value (it is immutable), not a new object
# for each state.
_NO_DETAILS = StateDetails()
_DETAIL_FIELDS = tuple(field.name for field in fields(StateDetails))
_detail_values = operator.attrgetter(*_DETAIL_FIELDS)  # every field's value, in one call
_DETAIL_INDEX = {name: index for index, name in enumerate(_DETAIL_FIELDS)}


@dataclass(frozen=True, slots=True, init=False, quick=True)
class State:
    """One state of a run: its type, name, message, time and the data it carries.

    `timestamp` and `id` are given by the server when it writes the state. An empty name means the
    capitalised type.
    """

    type: StateType
    name: str = ""
    message: str = ""
    timestamp: datetime | None = None
    id: str = ""
    details: StateDetails = _NO_DETAILS
    data: ResultData | None = None
    # The decoded result, when this process already has it; not part of the state's value.
    _value: Any = field(default=_NO_VALUE, compare=False, repr=False)

    def __init__(
        self,
        type: StateType,
        name: str = "",
        message: str = "",
        timestamp: datetime | None = None,
        id: str = "",
        details: StateDetails = _NO_DETAILS,
        data: ResultData | None = None,
        _value: Any = _NO_VALUE,
    ) -> None:
        # Exact classes first: every state passes here, and nearly all come in right.
        if type.__class__ is not StateType and not isinstance(type, StateType):
            type = StateType(type)
        if (
            data is not None
            and data.__class__ is not ResultData
            and not isinstance(data, ResultData)
        ):
            # `State(type=..., data=value)`: a value the code built, encoded when stored.
            _value, data = data, None
        if _class_of(self) is State:
            # Its fields assigned with its class switched to one with its slots alone (see
            # `stateward._records.unfrozen`): every state is made here, several a task run.
            _set_class(self, "__class__", _StateFields)
            _filled(self, type, name, message, timestamp, id, details, data, _value)
            return
        _set_type(self, type)  # a subclass's instance: by the slots' descriptors
        _set_name(self, name or _DEFAULT_NAMES[type])
        _set_message(self, message)
        _set_timestamp(self, timestamp)
        _set_id(self, id)
        _set_state_details(self, details)
        _set_data(self, data)
        _set_value(self, _value)

    # Predicates, as the reference orchestrator names them.
    def is_scheduled(self) -> bool:
        return self.type is StateType.SCHEDULED

    def is_pending(self) -> bool:
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        return self.type is StateType.RUNNING

    def is_paused(self) -> bool:
        return self.type is StateType.PAUSED

    def is_cancelling(self) -> bool:
        return self.type is StateType.CANCELLING

    def is_completed(self) -> bool:
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        return self.type is StateType.FAILED

    def is_cancelled(self) -> bool:
        return self.type is StateType.CANCELLED

    def is_crashed(self) -> bool:
        return self.type is StateType.CRASHED

    def is_final(self) -> bool:
        return self.type in TERMINAL_TYPES

    def has_result(self) -> bool:
        return self.data is not None

    def evolve(self, **changes: Any) -> State:
        """A copy with some fields replaced (the decoded result is kept unless data changes)."""
        # As dataclasses.replace, field by field: states are copied on every proposal.
        values = {
            "type": self.type,
            "name": self.name,
            "message": self.message,
            "timestamp": self.timestamp,
            "id": self.id,
            "details": self.details,
            "data": self.data,
            "_value": self._value,
        }
        values.update(changes)
        return State(**values)

    def with_details(self, **changes: Any) -> State:
        """A copy whose details have some fields replaced (TypeError for a name that is not a
        field of StateDetails)."""
        values = list(_detail_values(self.details))
        for name, value in changes.items():
            index = _DETAIL_INDEX.get(name)
            if index is None:
                raise TypeError(f"StateDetails has no field {name!r}")
            values[index] = value
        # As `evolve(details=...)`, by position: proposals pass here every time.
        return State(
            self.type,
            self.name,
            self.message,
            self.timestamp,
            self.id,
            StateDetails(*values),
            self.data,
            self._value,
        )

    @property
    def state_details(self) -> StateDetails:
        """The reference's name for `details`."""
        return self.details

    def result(self, raise_on_failure: bool = True) -> Any:
        """The run's result: its return value, or (for a failed, crashed or cancelled run) its
        exception, raised unless `raise_on_failure` is false (then the data the state carries,
        e.g. the states a flow returned, or else the exception). Raises MissingResult for a
        run's completed state whose result is not available here (not persisted and read in
        another process than the run's, or its result file gone); as the reference, PausedRun
        for a Paused state and UnfinishedRun for a state of a run that has not ended
        (Scheduled, Pending, Running, Cancelling), whatever `raise_on_failure` says.

        Async code may also write `await state.result()`, as with the reference: when the
        calling coroutine awaits the call, an awaitable of the same value comes back."""
        value = self._result(raise_on_failure)
        if _caller_awaits(sys._getframe(1)):
            return _ready(value)
        return value

    def _result(self, raise_on_failure: bool) -> Any:
        value = self._value
        if value is not _NO_VALUE and self.type is _COMPLETED:  # the value of a call here
            return value
        from stateward._results import decode, exception_for, held_value

        if self.type is StateType.PENDING and self.name == "NotReady":
            from stateward.exceptions import UpstreamTaskError

            upstream = UpstreamTaskError(self.message or "an upstream run did not complete")
            if raise_on_failure:
                raise upstream
            return upstream
        if self.type not in TERMINAL_TYPES:
            from stateward.exceptions import PausedRun, UnfinishedRun

            if self.type is StateType.PAUSED:
                raise PausedRun("the run is paused: it has no result")
            raise UnfinishedRun(f"the run is {self.name}: it has no result until it ends")
        if self.type in _ENDED_BADLY:
            error = exception_for(self)
            if raise_on_failure:
                raise error
            held = held_value(self)
            return error if held is None else held
        if self._value is _NO_VALUE:
            if self.data is None and self.is_completed() and self._of_a_run():
                from stateward.exceptions import MissingResult

                raise MissingResult(
                    "this run's result was not persisted (persist_result=False, a value "
                    "that could not be encoded, or one over the size limit without "
                    "result_storage): it was only available in the process that ran the run; "
                    "persist it, or keep large ones in files with result_storage="
                )
            object.__setattr__(self, "_value", decode(self.data) if self.data else None)
        return self._value

    def _of_a_run(self) -> bool:
        """Whether the server wrote this state for a run (a state code builds names none)."""
        return bool(self.details.flow_run_id or self.details.task_run_id)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles the state's value: its data (encoded from the in-process value if needed),
        not the in-process cache."""
        data = self.data
        if data is None and self._value is not _NO_VALUE:
            from stateward._results import encode

            try:
                data = encode(self._value)
            except Exception:
                data = None
        return (
            State,
            (self.type, self.name, self.message, self.timestamp, self.id, self.details, data),
        )

    def __repr__(self) -> str:
        text = f"{self.name}({self.type.name}"
        if self.message:
            text += f", message={self.message!r}"
        return text + ")"


(
    _set_type,
    _set_name,
    _set_message,
    _set_timestamp,
    _set_id,
    _set_state_details,
    _set_data,
    _set_value,
) = _slot_setters(State)
_fields_class = unfrozen(State)
if _fields_class is None:  # never for State's layout (its only base is object)
    raise TypeError("State's slots cannot be assigned through a class of their own")
_StateFields: type = _fields_class
_class_of = type  # `type` is a parameter of State's __init__
_set_class = object.__setattr__
_new = object.__new__


def new_state(
    type: StateType,
    name: str,
    message: str,
    timestamp: datetime | None,
    id: str,
    details: StateDetails,
    data: ResultData | None,
    value: Any = _NO_VALUE,
) -> State:
    """`State(type, name, message, timestamp, id, details, data, value)` for parts that need no
    conversion (a StateType member, ResultData or None), made without calling the class: for
    the engine and the orchestrator, which make several states a task run."""
    return _filled(_new(_StateFields), type, name, message, timestamp, id, details, data, value)


def _filled(
    fields: Any,
    type: StateType,
    name: str,
    message: str,
    timestamp: datetime | None,
    id: str,
    details: StateDetails,
    data: ResultData | None,
    value: Any,
) -> State:
    """`fields` (an instance of `_StateFields`, the slots of State alone) with its fields
    assigned, switched to State: both ways of making a state end here."""
    fields.type = type
    fields.name = name or _DEFAULT_NAMES[type]
    fields.message = message
    fields.timestamp = timestamp
    fields.id = id
    fields.details = details
    fields.data = data
    fields._value = value
    fields.__class__ = State
    return fields  # type: ignore[no-any-return]


new_state_details = maker(StateDetails)

_AWAITING_CODE = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _caller_awaits(frame: types.FrameType) -> bool:
    """Whether the code in `frame` awaits the value of the call it is making now: its next
    instruction is GET_AWAITABLE (only coroutines can await, so other code is not looked at)."""
    return bool(frame.f_code.co_flags & _AWAITING_CODE) and _awaits_after(
        frame.f_code, frame.f_lasti
    )


@functools.lru_cache(maxsize=4096)
def _awaits_after(code: types.CodeType, offset: int) -> bool:
    for instruction in dis.get_instructions(code):  # `offset` may point into the call's caches
        if instruction.offset > offset:
            return instruction.opname == "GET_AWAITABLE"
    return False


async def _ready(value: Any) -> Any:
    return value


def carry_value(source: State, target: State) -> State:
    """Give `target` the decoded result `source` holds in this process, if any."""
    if source._value is not _NO_VALUE:
        object.__setattr__(target, "_value", source._value)
    return target


def has_value(state: State) -> bool:
    """Whether this process holds the state's decoded result."""
    return state._value is not _NO_VALUE


def now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


# --- constructors, as the reference orchestrator names them --------------------------------------


def _with_value(state: State, data: Any) -> State:
    """A state carrying `data`: encoded data as is, any other value kept to encode on use."""
    if data is None or isinstance(data, ResultData):
        return state.evolve(data=data) if data is not None else state
    object.__setattr__(state, "_value", data)
    return state


def Scheduled(
    scheduled_time: datetime | None = None, *, name: str = "Scheduled", message: str = ""
) -> State:
    return State(
        StateType.SCHEDULED, name, message, details=StateDetails(scheduled_time=scheduled_time)
    )


def Late(scheduled_time: datetime | None = None, *, message: str = "") -> State:
    return Scheduled(scheduled_time, name="Late", message=message)


def AwaitingRetry(scheduled_time: datetime | None = None, *, message: str = "") -> State:
    return Scheduled(scheduled_time, name="AwaitingRetry", message=message)


def Pending(*, name: str = "Pending", message: str = "") -> State:
    return State(StateType.PENDING, name, message)


def Running(*, name: str = "Running", message: str = "") -> State:
    return State(StateType.RUNNING, name, message)


def Retrying(*, message: str = "") -> State:
    return State(StateType.RUNNING, "Retrying", message)


def Paused(
    *,
    timeout_seconds: float | None = None,
    pause_key: str = "",
    name: str = "Paused",
    message: str = "",
) -> State:
    timeout = now() + timedelta(seconds=timeout_seconds) if timeout_seconds is not None else None
    return State(
        StateType.PAUSED,
        name,
        message,
        details=StateDetails(pause_timeout=timeout, pause_key=pause_key),
    )


def Cancelling(*, message: str = "") -> State:
    return State(StateType.CANCELLING, message=message)


def Completed(data: Any = None, *, name: str = "Completed", message: str = "") -> State:
    return _with_value(State(StateType.COMPLETED, name, message), data)


def Failed(data: Any = None, *, name: str = "Failed", message: str = "") -> State:
    return _with_value(State(StateType.FAILED, name, message), data)


def Cancelled(data: Any = None, *, name: str = "Cancelled", message: str = "") -> State:
    return _with_value(State(StateType.CANCELLED, name, message), data)


def Crashed(data: Any = None, *, name: str = "Crashed", message: str = "") -> State:
    return _with_value(State(StateType.CRASHED, name, message), data)


# --- helpers, as the reference's `prefect.states` has them ---------------------------------------


def get_state_result(state: State, raise_on_failure: bool = True) -> Any:
    """`state.result(raise_on_failure)`: see State.result (the same value and errors)."""
    return state._result(raise_on_failure)


def get_state_exception(state: State) -> BaseException:
    """The exception a Failed, Crashed or Cancelled state stands for: the one its run raised;
    for a run judged by states it returned, that of the first failed, crashed or cancelled one;
    else a FailedRun, CrashedRun or CancelledRun carrying the state's message. Raises
    ValueError for a state of another type, as the reference does."""
    if state.type not in _ENDED_BADLY:
        raise ValueError(f"expected a Failed, Crashed or Cancelled state, got {state!r}")
    from stateward._results import exception_for

    return exception_for(state)


def raise_state_exception(state: State) -> None:
    """Raise the exception of a Failed, Crashed or Cancelled state (see get_state_exception);
    for a state of another type, return None, as the reference does."""
    if state.type in _ENDED_BADLY:
        raise get_state_exception(state)


def is_state_iterable(obj: Any) -> bool:
    """Whether `obj` is a non-empty list, tuple or set whose items are all States (other
    iterables, e.g. dicts, count as no), as the reference's helper says."""
    return (
        isinstance(obj, list | tuple | set)
        and bool(obj)
        and all(isinstance(item, State) for item in obj)
    )


if not TYPE_CHECKING:  # (for type checkers, a misspelt name stays an error)

    def __getattr__(name: str) -> Any:
        """Only for a name not found: one the reference's module has and this one leaves out
        raises ImportError saying what to do instead (see `stateward._left_out`)."""
        from stateward._left_out import missing_name

        missing_name(__name__, name)
