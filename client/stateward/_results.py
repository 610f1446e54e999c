"""Results: a run's return value (or exception) encoded for storage on its state.

JSON when the value survives a round trip through it unchanged, so other languages can read it;
otherwise a Python pickle. Encoded results have a size limit, checked before anything is sent.
"""

from __future__ import annotations

import json
import math
import pickle
from typing import Any

from stateward import settings
from stateward.exceptions import (
    CancelledRun,
    CrashedRun,
    FailedRun,
    PausedRun,
    ResultTooLarge,
    RunError,
)
from stateward.states import ResultData, State, StateType, has_value


def _is_plain_json(value: Any) -> bool:
    """Whether json.loads(json.dumps(value)) == value with the same types all the way down."""
    if value is None or isinstance(value, bool | str):
        return True
    if isinstance(value, int):
        return type(value) is int
    if isinstance(value, float):
        return type(value) is float and math.isfinite(value)
    if type(value) is list:
        return all(_is_plain_json(item) for item in value)
    if type(value) is dict:
        return all(type(k) is str and _is_plain_json(v) for k, v in value.items())
    return False


def encode(value: Any, what: str = "result") -> ResultData:
    """Encode a value for storage, or raise ResultTooLarge (or the pickling error)."""
    if _is_plain_json(value):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        size = len(text.encode())
        data = ResultData(json=text)
    else:
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        size = len(blob)
        data = ResultData(pickle=blob)
    limit = settings.max_result_bytes()
    if size > limit:
        raise ResultTooLarge(
            f"the {what} is {size:,} bytes once encoded, over the limit of {limit:,} bytes; "
            "return something smaller (a path or a key to the data, say) or raise the limit "
            "with STATEWARD_MAX_RESULT_BYTES"
        )
    return data


def encode_exception(error: BaseException) -> ResultData | None:
    """Encode an exception for a failed state; None when it cannot be pickled or is too large."""
    try:
        blob = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(blob)
    except Exception:
        return None
    if len(blob) > settings.max_result_bytes():
        return None
    return ResultData(pickle=blob)


def decode(data: ResultData) -> Any:
    """The value an encoded result holds."""
    if data.json is not None:
        return json.loads(data.json)
    if data.pickle is not None:
        return pickle.loads(data.pickle)
    return None


_RUN_ERRORS: dict[StateType, type[RunError]] = {
    StateType.FAILED: FailedRun,
    StateType.CRASHED: CrashedRun,
    StateType.CANCELLED: CancelledRun,
    StateType.PAUSED: PausedRun,
}

_BAD_TYPES = (StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


def held_value(state: State) -> Any:
    """The value a state carries (in this process, or decoded); None when it cannot be read."""
    if has_value(state):
        return state._value
    if state.data is None:
        return None
    try:
        return decode(state.data)
    except Exception:
        return None


def exception_for(state: State) -> BaseException:
    """The exception a failed, crashed, cancelled or paused state stands for: the one it carries;
    for a state judged from other states (a flow that returned them), that of the first failed,
    crashed or cancelled one among them; else a RunError naming the state."""
    value = held_value(state)
    if isinstance(value, BaseException):
        return value
    if isinstance(value, State) and value.type in _BAD_TYPES:
        return exception_for(value)
    if isinstance(value, list | tuple | set):
        for item in value:
            if isinstance(item, State) and item.type in _BAD_TYPES:
                return exception_for(item)
    error_type = _RUN_ERRORS.get(state.type, FailedRun)
    return error_type(state.message or f"the run ended in state {state.name}")
