"""What a run's call and its outcome look like: bound parameters, recorded parameters, inputs
resolved from futures, and the state the outcome of the code proposes."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any

from stateward._results import encode, encode_exception
from stateward.exceptions import ResultTooLarge
from stateward.futures import StatewardFuture
from stateward.states import State, StateType, carry_value, has_value
from stateward.tasks import unmapped


class UpstreamFailed(Exception):
    """A task's input came from a task run that did not complete."""


# --- parameters ---------------------------------------------------------------------------------


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
            json.dumps(value, allow_nan=False)  # NaN and Infinity are not JSON
        except (TypeError, ValueError, RecursionError):
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


def resolve(value: Any) -> Any:
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


# --- what the code's outcome proposes -----------------------------------------------------------


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
    """A flow's final state from its return value: a final (or paused) state, or a future's, is
    taken as it is; a collection of only states is judged by them; anything else is a result."""
    if isinstance(value, StatewardFuture):
        value = value._future.result()
    if isinstance(value, State):
        if value.is_final() or value.is_paused():
            return _adopted(value)
        return _judge([value])  # a run cannot end in Pending, Running...
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
