"""Conversions between the protobuf messages of `stateward.v1` and the SDK's pure types."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from stateward.runs import (
    ConcurrencyLimit,
    FlowRun,
    OrchestrationResult,
    RetryPolicy,
    RunKind,
    SetStateStatus,
    TaskRun,
    Transition,
)
from stateward.states import ResultData, State, StateDetails, StateType
from stateward.v1 import orchestration_pb2, runs_pb2, states_pb2


def to_datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def optional_datetime(message: object, name: str) -> datetime | None:
    """The timestamp field `name` of `message` as a datetime, or None when unset."""
    if message.HasField(name):  # type: ignore[attr-defined]
        return to_datetime(getattr(message, name))
    return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def set_timestamp(ts: Timestamp, value: datetime | None) -> None:
    """Set a Timestamp from a timezone-aware datetime (plain arithmetic: FromDatetime is slow)."""
    if value is not None:
        delta = value - _EPOCH
        ts.seconds = delta.days * 86_400 + delta.seconds
        ts.nanos = delta.microseconds * 1000


_TIME_FIELDS = frozenset({"scheduled_time", "cache_expiration", "pause_timeout"})
_NO_DETAILS = StateDetails()


def details_from_proto(msg: states_pb2.StateDetails) -> StateDetails:
    fields: dict[str, Any] = {
        field.name: to_datetime(value) if field.name in _TIME_FIELDS else value
        for field, value in msg.ListFields()
    }
    return StateDetails(**fields) if fields else _NO_DETAILS


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


# --- runs, transitions and decisions --------------------------------------------------------------


def python_value(value: struct_pb2.Value) -> Any:
    """A google.protobuf.Value as plain Python (faster than json_format for small values)."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_dict(value.struct_value)
    if kind == "list_value":
        return [python_value(item) for item in value.list_value.values]
    return None


def struct_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A google.protobuf.Struct as a dict. Whole numbers come back as ints (a Struct holds
    every number as a double)."""
    return {key: python_value(value) for key, value in struct.fields.items()}


def retry_policy_from_proto(msg: runs_pb2.RetryPolicy) -> RetryPolicy:
    return RetryPolicy(msg.retries, tuple(msg.retry_delay_seconds), msg.retry_jitter_factor)


def retry_policy_to_proto(policy: RetryPolicy, out: runs_pb2.RetryPolicy) -> None:
    out.retries = policy.retries
    out.retry_delay_seconds[:] = policy.retry_delay_seconds
    out.retry_jitter_factor = policy.retry_jitter_factor


def _run_fields(msg: runs_pb2.FlowRun | runs_pb2.TaskRun) -> dict[str, Any]:
    return {
        "id": msg.id,
        "name": msg.name,
        "parameters": struct_dict(msg.parameters),
        "tags": tuple(msg.tags),
        "retry_policy": retry_policy_from_proto(msg.retry_policy),
        "state": state_from_proto(msg.state) if msg.HasField("state") else None,
        "run_count": msg.run_count,
        "start_time": optional_datetime(msg, "start_time"),
        "end_time": optional_datetime(msg, "end_time"),
        "total_run_time": msg.total_run_time.ToTimedelta(),
        "expected_start_time": optional_datetime(msg, "expected_start_time"),
        "next_scheduled_start_time": optional_datetime(msg, "next_scheduled_start_time"),
        "created": optional_datetime(msg, "create_time"),
        "lease_expires": optional_datetime(msg, "lease_expire_time"),
    }


def flow_run_from_proto(msg: runs_pb2.FlowRun) -> FlowRun:
    return FlowRun(
        flow_name=msg.flow_name, parent_task_run_id=msg.parent_task_run_id, **_run_fields(msg)
    )


def task_run_from_proto(msg: runs_pb2.TaskRun) -> TaskRun:
    return TaskRun(
        task_key=msg.task_key,
        flow_run_id=msg.flow_run_id,
        child_flow_run_id=msg.child_flow_run_id,
        **_run_fields(msg),
    )


def orchestration_result_from_proto(msg: orchestration_pb2.SetStateResponse) -> OrchestrationResult:
    return OrchestrationResult(
        status=SetStateStatus(msg.status),
        state=state_from_proto(msg.state) if msg.HasField("state") else None,
        reason=msg.reason,
        delay_seconds=msg.delay_seconds,
        written=msg.written,
    )


def transition_from_proto(msg: orchestration_pb2.Transition) -> Transition:
    return Transition(
        sequence=msg.sequence,
        run_id=msg.run_id,
        run_kind=RunKind(msg.run_kind),
        flow_run_id=msg.flow_run_id,
        run_name=msg.run_name,
        flow_name=msg.flow_name,
        task_key=msg.task_key,
        from_state=state_from_proto(msg.from_state) if msg.HasField("from_state") else None,
        to_state=state_from_proto(msg.to_state),
    )


def limit_from_proto(msg: runs_pb2.ConcurrencyLimit) -> ConcurrencyLimit:
    return ConcurrencyLimit(
        tag=msg.tag,
        limit=msg.limit,
        active_slots=tuple(msg.active_slots),
        created=optional_datetime(msg, "create_time"),
    )
