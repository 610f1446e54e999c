"""Conversions between the protobuf messages of `stateward.v1` and the SDK's pure types."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from stateward.states import ResultData, State, StateDetails, StateType
from stateward.v1 import states_pb2


def to_datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def optional_datetime(message: object, name: str) -> datetime | None:
    """The timestamp field `name` of `message` as a datetime, or None when unset."""
    if message.HasField(name):  # type: ignore[attr-defined]
        return to_datetime(getattr(message, name))
    return None


def set_timestamp(ts: Timestamp, value: datetime | None) -> None:
    if value is not None:
        ts.FromDatetime(value)


def details_from_proto(msg: states_pb2.StateDetails) -> StateDetails:
    return StateDetails(
        flow_run_id=msg.flow_run_id,
        task_run_id=msg.task_run_id,
        scheduled_time=optional_datetime(msg, "scheduled_time"),
        cache_key=msg.cache_key,
        cache_expiration=optional_datetime(msg, "cache_expiration"),
        transition_id=msg.transition_id,
        pause_key=msg.pause_key,
        pause_timeout=optional_datetime(msg, "pause_timeout"),
        refresh_cache=msg.refresh_cache,
        unretriable=msg.unretriable,
        child_flow_run_id=msg.child_flow_run_id,
    )


def details_to_proto(details: StateDetails, out: states_pb2.StateDetails) -> None:
    out.flow_run_id = details.flow_run_id
    out.task_run_id = details.task_run_id
    set_timestamp(out.scheduled_time, details.scheduled_time)
    out.cache_key = details.cache_key
    set_timestamp(out.cache_expiration, details.cache_expiration)
    out.transition_id = details.transition_id
    out.pause_key = details.pause_key
    set_timestamp(out.pause_timeout, details.pause_timeout)
    out.refresh_cache = details.refresh_cache
    out.unretriable = details.unretriable
    out.child_flow_run_id = details.child_flow_run_id


def result_from_proto(msg: states_pb2.StateResult) -> ResultData | None:
    kind = msg.WhichOneof("value")
    if kind == "json":
        return ResultData(json=msg.json)
    if kind == "pickle":
        return ResultData(pickle=msg.pickle)
    return None


def state_from_proto(msg: states_pb2.State) -> State:
    """A State from its message; the message's type must be a known, specified value."""
    return State(
        type=StateType(msg.type),
        name=msg.name,
        message=msg.message,
        timestamp=optional_datetime(msg, "timestamp"),
        id=msg.id,
        details=details_from_proto(msg.details),
        data=result_from_proto(msg.result) if msg.HasField("result") else None,
    )


def state_to_proto(state: State, out: states_pb2.State | None = None) -> states_pb2.State:
    msg = states_pb2.State() if out is None else out
    msg.id = state.id
    msg.type = state.type.value  # type: ignore[assignment]
    msg.name = state.name
    set_timestamp(msg.timestamp, state.timestamp)
    msg.message = state.message
    details_to_proto(state.details, msg.details)
    if state.data is not None:
        if state.data.json is not None:
            msg.result.json = state.data.json
        elif state.data.pickle is not None:
            msg.result.pickle = state.data.pickle
    return msg
