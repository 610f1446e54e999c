"""What a run's call and its outcome look like: bound parameters, recorded parameters, inputs
resolved from futures, and the state the outcome of the code proposes."""

from __future__ import annotations

import inspect
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from stateward._results import ResultPolicy, encode, encode_exception
from stateward._run_logs import sendable
from stateward.exceptions import ParameterBindError, ResultTooLarge, UpstreamTaskError
from stateward.futures import StatewardFuture
from stateward.states import (
    ResultData,
    State,
    StateDetails,
    StateType,
    carry_value,
    has_value,
)
from stateward.utilities.annotations import allow_failure, quote, unmapped

# --- parameters ---------------------------------------------------------------------------------


KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_POSITIONAL_OR_KEYWORD = inspect.Parameter.POSITIONAL_OR_KEYWORD
_NO_DEFAULT = inspect.Parameter.empty


def bind(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any], called: str
) -> dict[str, Any]:
    """The call's arguments by parameter name, defaults applied, in the signature's order.
    Raises ParameterBindError (a TypeError) where calling the function (named `called`) would
    raise TypeError, as the reference does, saying why and what was given."""
    # Every call of a task does this: a function whose parameters all take keywords is bound
    # by hand; anything else (and every mistake, for its message) goes to Signature.bind.
    parameters = signature.parameters
    if len(args) <= len(parameters):
        bound: dict[str, Any] = {}
        for index, (name, parameter) in enumerate(parameters.items()):
            kind = parameter.kind
            if index < len(args):
                if kind is not _POSITIONAL_OR_KEYWORD or name in kwargs:
                    break
                bound[name] = args[index]
            elif kind not in KEYWORD_KINDS:
                break
            elif name in kwargs:
                bound[name] = kwargs[name]
            elif parameter.default is not _NO_DEFAULT:
                bound[name] = parameter.default
            else:
                break
        else:
            if not kwargs or all(key in parameters for key in kwargs):  # else: unexpected
                return bound
    try:
        full = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise _bind_error(signature, args, kwargs, called, error) from None
    full.apply_defaults()
    return dict(full.arguments)


def bind_given(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any], called: str
) -> dict[str, Any]:
    """The arguments given by parameter name, without defaults (a partial binding); raises
    ParameterBindError as `bind` does."""
    try:
        return dict(signature.bind_partial(*args, **kwargs).arguments)
    except TypeError as error:
        raise _bind_error(signature, args, kwargs, called, error) from None


def _bind_error(
    signature: inspect.Signature,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    called: str,
    error: TypeError,
) -> ParameterBindError:
    given = f"{len(args)} positional argument{'s' if len(args) != 1 else ''}"
    given += f" and the keywords {sorted(kwargs)}" if kwargs else " and no keywords"
    # Annotations kept as text (`from __future__ import annotations`) are shown as written.
    shown = signature.replace(
        parameters=[
            p.replace(annotation=_AsWritten(p.annotation)) if isinstance(p.annotation, str) else p
            for p in signature.parameters.values()
        ],
        return_annotation=inspect.Signature.empty,
    )
    return ParameterBindError(
        f"{called}() cannot be called with these arguments: {error}; it takes {shown} and "
        f"was given {given}"
    )


class _AsWritten(str):
    """An annotation's text, which a signature then shows without quotes."""

    def __repr__(self) -> str:
        return str(self)


def call_with(
    fn: Callable[..., Any], signature: inspect.Signature, parameters: dict[str, Any]
) -> Any:
    global _by_name
    if signature is not _by_name:
        if not all(parameter.kind in KEYWORD_KINDS for parameter in signature.parameters.values()):
            args, kwargs = as_call(signature, parameters)
            return fn(*args, **kwargs)
        _by_name = signature
    return fn(**parameters)  # the usual function: every argument by name


def as_call(
    signature: inspect.Signature, parameters: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments of a call given `parameters` by name (as `bind`
    returns them: a positional-only parameter by its name, *args as a tuple, **kwargs as a
    dict)."""
    bound = signature.bind_partial()
    bound.arguments.update(parameters)
    return bound.args, bound.kwargs


# The signature `call_with` last found to take every argument by name (held, so that no other
# signature takes its id): a task called in a loop is looked at once.
_by_name: inspect.Signature | None = None


# NaN and Infinity are not JSON; text is checked for what UTF-8 cannot hold (below).
_check_json = json.JSONEncoder(allow_nan=False, ensure_ascii=False).encode
_PLAIN_VALUES = (str, int, bool, type(None))


def jsonable(parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameters as they can be recorded on the run (values JSON cannot hold, as text). Text
    UTF-8 cannot hold (a lone surrogate: a file name decoded with 'surrogateescape', say) is
    recorded escaped: it could not be sent or stored."""
    recorded: dict[str, Any] = {}
    for key, value in parameters.items():
        kind = type(value)
        if kind in _PLAIN_VALUES:
            recorded[key] = sendable(value) if kind is str else value
            continue
        try:
            text = _check_json(value)
            if not text.isascii():
                text.encode()  # UnicodeEncodeError (a ValueError) for a lone surrogate
        except (TypeError, ValueError, RecursionError):
            recorded[key] = repr(value)
        else:
            recorded[key] = value
    return recorded


class TaskRunNames:
    """The task run names given out in one flow run: a task's runs are `name-0`, `name-1`, ...
    in the order they start, a mapped run takes its map index when it is free, and no name is
    given twice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: set[str] = set()
        self._next: dict[str, int] = {}

    def take(self, base: str, index: int | None = None) -> str:
        """A name for the next run of `base` (with `index`, `base-index` if it is free)."""
        taken = self._taken
        with self._lock:
            if index is not None:
                name = f"{base}-{index}"
                if name not in taken:
                    taken.add(name)
                    return name
            number = self._next.get(base, 0)
            name = f"{base}-{number}"
            while name in taken:
                number += 1
                name = f"{base}-{number}"
            self._next[base] = number + 1
            taken.add(name)
            return name


def run_name(
    template: str | Callable[[], str] | None,
    parameters: dict[str, Any],
    enter: Callable[[], Callable[[], None]],
) -> str:
    """A run's name from its template (formatted with the run's parameters) or function; text
    UTF-8 cannot hold (a file name decoded with 'surrogateescape', say) is escaped, as a run
    log line's is: it could not be sent or stored. The function is called between `enter()`
    and the function that returns: the run's context, so that `stateward.runtime` shows it the
    run (its parameters, its task's or flow's name, its flow run), as the reference's does."""
    if template is None:
        return ""
    if callable(template):
        leave = enter()
        try:
            return sendable(str(template()))
        finally:
            leave()
    try:
        return sendable(template.format(**parameters))
    except (KeyError, IndexError, ValueError):
        return sendable(template)


# Values `resolve` passes as they are, by their exact type (a subclass may hold anything).
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


def nothing_to_resolve(parameters: dict[str, Any]) -> bool:
    """Whether `resolve` would give back `parameters` as they are: plain values only."""
    # A loop, not all() over a generator (whose frame every task call would pay).
    for value in parameters.values():  # noqa: SIM110
        if value.__class__ not in _PLAIN:
            return False
    return True


def resolve(value: Any) -> Any:
    """Futures and states among a task's inputs become their results (waiting for futures);
    raises UpstreamTaskError for one that did not complete, unless it is wrapped in
    `allow_failure`. A `quote`d value is passed as it is."""
    if value.__class__ in _PLAIN:  # most inputs: nothing inside to resolve
        return value
    if value.__class__ is dict:  # the parameters themselves
        return {key: resolve(item) for key, item in value.items()}
    if isinstance(value, StatewardFuture):
        state = value._future.result()
        if not state.is_completed():
            name = value._task_run_name
            run = f"{name!r} ({value.task_run_id})" if name else value.task_run_id
            raise UpstreamTaskError(f"upstream task run {run} did not complete ({state.name})")
        return state.result()
    if isinstance(value, State):
        if not value.is_completed():
            raise UpstreamTaskError(f"an upstream state did not complete ({value.name})")
        return value.result()
    if isinstance(value, quote):
        return value.unquote()
    if isinstance(value, allow_failure):
        return _allowing_failure(value.value)
    if isinstance(value, unmapped):
        return resolve(value.value)
    if isinstance(value, list):
        return [resolve(item) for item in value]
    if isinstance(value, tuple):
        return tuple(resolve(item) for item in value)
    if isinstance(value, set):
        return {resolve(item) for item in value}
    if isinstance(value, dict):
        return {key: resolve(item) for key, item in value.items()}
    return value


def _allowing_failure(value: Any) -> Any:
    """`resolve` of an `allow_failure` value: an upstream that did not complete gives its
    exception (or None), as the reference does."""
    if isinstance(value, StatewardFuture):
        return value._future.result().result(raise_on_failure=False)
    if isinstance(value, State):
        return value.result(raise_on_failure=False)
    try:
        return resolve(value)
    except UpstreamTaskError:  # a failed future deeper inside: resolve each item the same way
        if isinstance(value, list | tuple | set):
            return type(value)(_allowing_failure(item) for item in value)
        if isinstance(value, dict):
            return {key: _allowing_failure(item) for key, item in value.items()}
        raise


# --- what the code's outcome proposes -----------------------------------------------------------


def completed(value: Any, what: str, log: logging.Logger, policy: ResultPolicy) -> State:
    """Completed carrying the value (kept in-process too), encoded as `policy` says; an
    unencodable value stays in memory only, and so does one too large for the server without
    storage when the run did not require persistence (as the reference keeps results it does
    not persist); one too large whose run required persistence (or whose file cannot be
    written) fails the run."""
    return _carrying(StateType.COMPLETED, "", value, what, log, policy)


def stored(
    value: Any,
    what: str,
    log: logging.Logger,
    policy: ResultPolicy,
    server_limit: int | None = None,
) -> ResultData | None:
    """`value` encoded for its state as `policy` says (see `completed`): None, with a warning,
    for a value kept in this process only. Raises ResultTooLarge or OSError when it fails the
    run."""
    try:
        return encode(value, what, policy, server_limit)
    except ResultTooLarge as error:
        if policy.required:
            raise
        log.warning("%s", error)
    except OSError:
        raise
    except Exception as error:
        log.warning("%s cannot be stored (%s); it is kept in this process only", what, error)
    return None


def _carrying(
    state_type: StateType,
    message: str,
    value: Any,
    what: str,
    log: logging.Logger,
    policy: ResultPolicy,
) -> State:
    """A state of `state_type` (and `message`) carrying `value` as its result (see
    `completed`)."""
    try:
        data = stored(value, what, log, policy)
    except (ResultTooLarge, OSError) as error:
        return failed(error)
    state = State(state_type, message=message, data=data)
    object.__setattr__(state, "_value", value)
    return state


def not_ready(error: UpstreamTaskError) -> State:
    """The state of a run that did not run because an upstream did not complete."""
    return State(StateType.PENDING, name="NotReady", message=str(error))


def failed(error: BaseException, name: str = "Failed", message: str = "") -> State:
    """A Failed state (named `name`) carrying `error`; the message names it unless given."""
    if not message:
        message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return State(StateType.FAILED, name=name, message=message, data=encode_exception(error))


def states_of(value: Any) -> Any:
    """`value` with its futures replaced by their final states (waiting for them), in lists,
    tuples, sets and dict values too; the same object when it holds no future."""
    if isinstance(value, StatewardFuture):
        return value._future.result()
    items: list[Any]
    if isinstance(value, list | set) or (isinstance(value, tuple) and type(value) is tuple):
        items = [states_of(item) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return type(value)(items) if not isinstance(value, list) else items
    if isinstance(value, dict):
        resolved = {key: states_of(item) for key, item in value.items()}
        if all(resolved[key] is item for key, item in value.items()):
            return value
        return resolved
    return value


def _all_states(value: Any) -> bool:
    return (
        isinstance(value, list | tuple | set)
        and bool(value)
        and all(isinstance(item, State) for item in value)
    )


def judged(value: Any, what: str, log: logging.Logger, policy: ResultPolicy) -> State:
    """The final state a run's return value proposes (the reference's rules):

    - a state the code built itself (it names no run) is the run's own final state, with its
      type, name, message, data and pause timeout;
    - a run's state or a future, or a non-empty list, tuple or set of only those, is judged:
      all completed: Completed; any cancelled: Cancelled; any paused: Paused; else Failed; the
      value (futures as their final states) is the result;
    - anything else (futures in it as their final states) is the result of a Completed run.

    The result is kept as `policy` says (see `completed`).
    """
    returned = states_of(value)
    if (
        isinstance(returned, State)
        and not isinstance(value, StatewardFuture)
        and not _of_a_run(returned)
    ):
        return _adopted(returned, what, log, policy)
    if isinstance(returned, State) or _all_states(returned):
        group = [returned] if isinstance(returned, State) else list(returned)
        return _carrying(
            _aggregate_type(group), _aggregate_message(group), returned, what, log, policy
        )
    return completed(returned, what, log, policy)


def _of_a_run(state: State) -> bool:
    """Whether the state is a run's (written by the server), not one the code built."""
    return bool(state.details.flow_run_id or state.details.task_run_id)


def _adopted(state: State, what: str, log: logging.Logger, policy: ResultPolicy) -> State:
    """A state the code built, as the run's own final state."""
    adopted = State(
        state.type,
        name=state.name,
        message=state.message,
        details=StateDetails(
            pause_timeout=state.details.pause_timeout,
            pause_key=state.details.pause_key,
            scheduled_time=state.details.scheduled_time,
        ),
        data=state.data,
    )
    if adopted.data is None and has_value(state):
        value = state._value
        if isinstance(value, BaseException):
            data = encode_exception(value)
        else:
            try:
                data = stored(value, what, log, policy)
            except (ResultTooLarge, OSError) as error:
                return failed(error)
        adopted = adopted.evolve(data=data)
    return carry_value(state, adopted)


def _aggregate_type(states: list[State]) -> StateType:
    if all(s.is_completed() for s in states):
        return StateType.COMPLETED
    if any(s.is_cancelled() for s in states):
        return StateType.CANCELLED
    if any(s.is_paused() for s in states):
        return StateType.PAUSED
    return StateType.FAILED


def _aggregate_message(states: list[State]) -> str:
    total = len(states)

    def count(predicate: Callable[[State], bool]) -> int:
        return sum(1 for s in states if predicate(s))

    if all(s.is_completed() for s in states):
        return "All states completed."
    if count(State.is_cancelled):
        return f"{count(State.is_cancelled)}/{total} states cancelled."
    if count(State.is_paused):
        return f"{count(State.is_paused)}/{total} states paused."
    if count(State.is_failed):
        return f"{count(State.is_failed)}/{total} states failed."
    not_final = count(lambda s: not s.is_final())
    if not_final:
        return f"{not_final}/{total} states are not final."
    return f"{count(State.is_crashed)}/{total} states crashed."
