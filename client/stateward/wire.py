"""The wire: conversions between the protobuf messages of `stateward.v1` and the vocabulary of
`stateward.states` and `stateward.runs`, used by the client and the server alike.

- states, runs, transitions, limits and the answer to a proposal, both ways (`*_from_proto`,
  `*_to_proto`); the server converts its own run records straight to messages (`StoredRun`);
- the request messages the clients send (`*_request`), built once for `Client` and `AsyncClient`;
- the metadata key by which a transitions stream says where it starts.

Pure data conversion: no I/O and no `grpc` import. Timestamps are set by plain arithmetic and
Structs read by hand, since the protobuf helpers are slow on the hot path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from stateward.exceptions import RpcError, error_for_status
from stateward.runs import (
    CacheEntry,
    ConcurrencyLimit,
    FlowRun,
    LogEntry,
    OrchestrationResult,
    RetryPolicy,
    RunKind,
    SetStateStatus,
    TaskRun,
    Transition,
)
from stateward.states import ResultData, State, StateDetails, StateType
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2, states_pb2

# The initial metadata by which WatchTransitions says after which sequence the stream starts, so
# that a client losing the stream before its first message resumes without a gap.
START_SEQUENCE_KEY = "stateward-start-sequence"


# --- times and structs --------------------------------------------------------------------------


def to_datetime(ts: Timestamp) -> datetime:
    """A Timestamp as a timezone-aware datetime in UTC (plain arithmetic where it is valid:
    ToDatetime is slow). Raises ValueError for a Timestamp out of datetime's range, as
    ToDatetime does."""
    nanos = ts.nanos
    if 0 <= nanos <= 999_999_999:
        try:
            return _EPOCH + timedelta(seconds=ts.seconds, microseconds=nanos // 1000)
        except OverflowError:
            pass  # out of range: ToDatetime says so
    return ts.ToDatetime(tzinfo=UTC)


def optional_datetime(message: object, name: str) -> datetime | None:
    """The timestamp field `name` of `message` as a datetime, or None when unset."""
    if message.HasField(name):  # type: ignore[attr-defined]
        return to_datetime(getattr(message, name))
    return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def set_timestamp(ts: Timestamp, value: datetime | None) -> None:
    """Set a Timestamp from a timezone-aware datetime (plain arithmetic: FromDatetime is slow);
    None leaves it unset. (A caller on the hot path tests for None first: reading a message
    field, `msg.start_time`, makes a Python object for it, set or not.)"""
    if value is not None:
        delta = value - _EPOCH
        ts.seconds = delta.days * 86_400 + delta.seconds
        ts.nanos = delta.microseconds * 1000


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


# --- states -------------------------------------------------------------------------------------

_TIME_FIELDS = frozenset({"scheduled_time", "cache_expiration", "pause_timeout"})

# The members by number: calling an enum class (`StateType(3)`) runs its metaclass's Python
# code, a dictionary is read in C, and every message carries one or two of them. An unknown
# number still goes to the class, which raises ValueError.
_STATE_TYPES = {int(member): member for member in StateType}
_STATUSES = {int(member): member for member in SetStateStatus}
_RUN_KINDS = {int(member): member for member in RunKind}


def _state_type(number: int) -> StateType:
    found = _STATE_TYPES.get(number)
    return found if found is not None else StateType(number)


def _status(number: int) -> SetStateStatus:
    found = _STATUSES.get(number)
    return found if found is not None else SetStateStatus(number)


def _run_kind(number: int) -> RunKind:
    found = _RUN_KINDS.get(number)
    return found if found is not None else RunKind(number)


_NO_DETAILS = StateDetails()


def details_from_proto(msg: states_pb2.StateDetails) -> StateDetails:
    fields: dict[str, Any] = {
        field.name: to_datetime(value) if field.name in _TIME_FIELDS else value
        for field, value in msg.ListFields()
    }
    return StateDetails(**fields) if fields else _NO_DETAILS


def details_to_proto(details: StateDetails, out: states_pb2.StateDetails) -> None:
    """Write `details` into `out`, a message with nothing set yet: a field at its default is
    not written (each write costs more than the test), but `out` is marked present, as when
    every field was written."""
    out.SetInParent()
    if details is _NO_DETAILS:
        return
    if details.flow_run_id:
        out.flow_run_id = details.flow_run_id
    if details.task_run_id:
        out.task_run_id = details.task_run_id
    if details.scheduled_time is not None:
        set_timestamp(out.scheduled_time, details.scheduled_time)
    if details.cache_key:
        out.cache_key = details.cache_key
    if details.cache_expiration is not None:
        set_timestamp(out.cache_expiration, details.cache_expiration)
    if details.transition_id:
        out.transition_id = details.transition_id
    if details.pause_key:
        out.pause_key = details.pause_key
    if details.pause_timeout is not None:
        set_timestamp(out.pause_timeout, details.pause_timeout)
    if details.refresh_cache:
        out.refresh_cache = True
    if details.unretriable:
        out.unretriable = True
    if details.child_flow_run_id:
        out.child_flow_run_id = details.child_flow_run_id
    if details.run_input_schema:
        out.run_input_schema = details.run_input_schema
    if details.run_input:
        out.run_input = details.run_input


def result_data_from_proto(msg: states_pb2.StateResult) -> ResultData | None:
    """A stored result (JSON text or a pickle), or None when the message holds neither."""
    kind = msg.WhichOneof("value")
    if kind == "json":
        return ResultData(json=msg.json)
    if kind == "pickle":
        return ResultData(pickle=msg.pickle)
    return None


def state_from_proto(msg: states_pb2.State) -> State:
    """A State from its message; the message's type must be a known, specified value (else
    ValueError)."""
    return State(
        type=_state_type(msg.type),
        name=msg.name,
        message=msg.message,
        timestamp=optional_datetime(msg, "timestamp"),
        id=msg.id,
        details=details_from_proto(msg.details),
        data=result_data_from_proto(msg.result) if msg.HasField("result") else None,
    )


def state_to_proto(state: State, out: states_pb2.State | None = None) -> states_pb2.State:
    """The message of a State, written into `out` when given (e.g. a field of a larger message)."""
    msg = states_pb2.State() if out is None else out
    msg.id = state.id
    msg.type = int(state.type)  # type: ignore[assignment]  # int(): .value runs Python code
    msg.name = state.name
    if state.timestamp is not None:
        set_timestamp(msg.timestamp, state.timestamp)
    msg.message = state.message
    details_to_proto(state.details, msg.details)
    if state.data is not None:
        if state.data.json is not None:
            msg.result.json = state.data.json
        elif state.data.pickle is not None:
            msg.result.pickle = state.data.pickle
    return msg


# --- runs ---------------------------------------------------------------------------------------


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
        "total_run_time": _to_timedelta(msg.total_run_time),
        "expected_start_time": optional_datetime(msg, "expected_start_time"),
        "next_scheduled_start_time": optional_datetime(msg, "next_scheduled_start_time"),
        "created": optional_datetime(msg, "create_time"),
        "lease_expires": optional_datetime(msg, "lease_expire_time"),
    }


def _to_timedelta(duration: Duration) -> timedelta:
    """A Duration as a timedelta (ToTimedelta's rounding of nanoseconds toward zero, faster)."""
    nanos = duration.nanos
    micros = nanos // 1000 if nanos >= 0 else -(-nanos // 1000)
    return timedelta(seconds=duration.seconds, microseconds=micros)


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


class StoredRun(Protocol):
    """A run as a server keeps it (the server's run record): what `flow_run_to_proto` and
    `task_run_to_proto` read, so that the server answers from its record without a copy."""

    id: str
    name: str
    flow_name: str
    task_key: str
    flow_run_id: str
    parent_task_run_id: str
    child_flow_run_id: str
    parameters: str  # a JSON object
    tags: tuple[str, ...]
    retry_policy: RetryPolicy
    state: State | None
    run_count: int
    start_time: datetime | None
    end_time: datetime | None
    total_run_time: float  # seconds
    expected_start_time: datetime | None
    next_scheduled_start_time: datetime | None
    created: datetime
    lease_expires: datetime | None


def _fill_run(
    run: StoredRun, msg: runs_pb2.FlowRun | runs_pb2.TaskRun, parameters: struct_pb2.Struct | None
) -> None:
    """The fields FlowRun and TaskRun share (`parameters`: the run's, as a Struct already)."""
    msg.id = run.id
    msg.name = run.name
    if run.tags:
        msg.tags.extend(run.tags)
    policy = run.retry_policy
    out = msg.retry_policy  # each read of a message field makes a Python object
    out.retries = policy.retries  # written even when 0: the answer always holds a policy
    if policy.retry_delay_seconds:
        out.retry_delay_seconds.extend(policy.retry_delay_seconds)
    out.retry_jitter_factor = policy.retry_jitter_factor
    if run.state is not None:
        state_to_proto(run.state, msg.state)
    msg.run_count = run.run_count
    if run.start_time is not None:
        set_timestamp(msg.start_time, run.start_time)
    if run.end_time is not None:
        set_timestamp(msg.end_time, run.end_time)
    msg.total_run_time.FromMicroseconds(round(run.total_run_time * 1_000_000))
    if run.expected_start_time is not None:
        set_timestamp(msg.expected_start_time, run.expected_start_time)
    if run.next_scheduled_start_time is not None:
        set_timestamp(msg.next_scheduled_start_time, run.next_scheduled_start_time)
    set_timestamp(msg.create_time, run.created)
    if run.lease_expires is not None:
        set_timestamp(msg.lease_expire_time, run.lease_expires)
    if parameters is not None:
        msg.parameters.CopyFrom(parameters)
    elif run.parameters != "{}":
        msg.parameters.update(json.loads(run.parameters))


def flow_run_to_proto(
    run: StoredRun, parameters: struct_pb2.Struct | None = None
) -> runs_pb2.FlowRun:
    """The FlowRun message of a stored flow run; `parameters`, when given, are its parameters
    already as a Struct (they are not decoded again from the record's JSON)."""
    msg = runs_pb2.FlowRun()
    fill_flow_run(run, msg, parameters)
    return msg


def fill_flow_run(
    run: StoredRun, msg: runs_pb2.FlowRun, parameters: struct_pb2.Struct | None = None
) -> None:
    """Write a stored flow run into `msg`, an empty FlowRun (typically a field of the response
    that carries it: a message assigned to a field is copied whole)."""
    msg.flow_name = run.flow_name
    msg.parent_task_run_id = run.parent_task_run_id
    _fill_run(run, msg, parameters)


def task_run_to_proto(
    run: StoredRun, parameters: struct_pb2.Struct | None = None
) -> runs_pb2.TaskRun:
    """The TaskRun message of a stored task run (`parameters` as for `flow_run_to_proto`)."""
    msg = runs_pb2.TaskRun()
    fill_task_run(run, msg, parameters)
    return msg


def fill_task_run(
    run: StoredRun, msg: runs_pb2.TaskRun, parameters: struct_pb2.Struct | None = None
) -> None:
    """Write a stored task run into `msg`, an empty TaskRun (see `fill_flow_run`)."""
    msg.task_key = run.task_key
    msg.flow_run_id = run.flow_run_id
    msg.child_flow_run_id = run.child_flow_run_id
    _fill_run(run, msg, parameters)


# --- answers, transitions, limits ---------------------------------------------------------------


def orchestration_result_from_proto(msg: pb.SetStateResponse) -> OrchestrationResult:
    return OrchestrationResult(
        status=_status(msg.status),
        state=state_from_proto(msg.state) if msg.HasField("state") else None,
        reason=msg.reason,
        delay_seconds=msg.delay_seconds,
        written=msg.written,
    )


def orchestration_result_to_proto(result: OrchestrationResult) -> pb.SetStateResponse:
    msg = pb.SetStateResponse()
    fill_orchestration_result(result, msg)
    return msg


def fill_orchestration_result(result: OrchestrationResult, msg: pb.SetStateResponse) -> None:
    """Write `result` into `msg`, an empty SetStateResponse (see `fill_flow_run`)."""
    msg.status = int(result.status)  # type: ignore[assignment]
    msg.reason = result.reason
    msg.delay_seconds = result.delay_seconds
    msg.written = result.written
    if result.state is not None:
        state_to_proto(result.state, msg.state)


def resume_flow_run_request(
    flow_run_id: str, run_input: str | None = None
) -> pb.ResumeFlowRunRequest:
    msg = pb.ResumeFlowRunRequest(flow_run_id=flow_run_id)
    if run_input is not None:
        msg.run_input = run_input
    return msg


def resume_result_to_proto(result: OrchestrationResult) -> pb.ResumeFlowRunResponse:
    msg = pb.ResumeFlowRunResponse(
        status=int(result.status),  # type: ignore[arg-type]
        reason=result.reason,
        written=result.written,
    )
    if result.state is not None:
        state_to_proto(result.state, msg.state)
    return msg


def resume_result_from_proto(msg: pb.ResumeFlowRunResponse) -> OrchestrationResult:
    return OrchestrationResult(
        _status(msg.status),
        state_from_proto(msg.state) if msg.HasField("state") else None,
        msg.reason,
        written=msg.written,
    )


def transition_from_proto(msg: pb.Transition) -> Transition:
    return Transition(
        sequence=msg.sequence,
        run_id=msg.run_id,
        run_kind=_run_kind(msg.run_kind),
        flow_run_id=msg.flow_run_id,
        run_name=msg.run_name,
        flow_name=msg.flow_name,
        task_key=msg.task_key,
        from_state=state_from_proto(msg.from_state) if msg.HasField("from_state") else None,
        to_state=state_from_proto(msg.to_state),
    )


def transition_to_proto(transition: Transition) -> pb.Transition:
    msg = pb.Transition(
        sequence=transition.sequence,
        run_id=transition.run_id,
        flow_run_id=transition.flow_run_id,
        run_kind=int(transition.run_kind),  # type: ignore[arg-type]
        run_name=transition.run_name,
        flow_name=transition.flow_name,
        task_key=transition.task_key,
    )
    if transition.from_state is not None:
        state_to_proto(transition.from_state, msg.from_state)
    state_to_proto(transition.to_state, msg.to_state)
    return msg


def limit_from_proto(msg: runs_pb2.ConcurrencyLimit) -> ConcurrencyLimit:
    return ConcurrencyLimit(
        tag=msg.tag,
        limit=msg.limit,
        active_slots=tuple(msg.active_slots),
        created=optional_datetime(msg, "create_time"),
    )


def limit_to_proto(limit: ConcurrencyLimit) -> runs_pb2.ConcurrencyLimit:
    msg = runs_pb2.ConcurrencyLimit(
        tag=limit.tag, limit=limit.limit, active_slots=list(limit.active_slots)
    )
    set_timestamp(msg.create_time, limit.created)
    return msg


def watch_response(transition: Transition) -> pb.WatchTransitionsResponse:
    """The WatchTransitions message of one transition (as a broadcaster sends it)."""
    return pb.WatchTransitionsResponse(transition=transition_to_proto(transition))


# --- requests -----------------------------------------------------------------------------------


def create_flow_run_request(run: FlowRun) -> pb.CreateFlowRunRequest:
    """The request creating `run`, from the fields a create takes (id, name, flow_name,
    parameters, tags, retry_policy, parent_task_run_id and the initial state); the server fills
    in the others."""
    msg = runs_pb2.FlowRun(
        id=run.id,
        name=run.name,
        flow_name=run.flow_name,
        tags=list(run.tags),
        parent_task_run_id=run.parent_task_run_id,
    )
    _fill_create(msg, run.parameters, run.retry_policy, run.state)
    return pb.CreateFlowRunRequest(flow_run=msg)


def create_task_run_request(run: TaskRun) -> pb.CreateTaskRunRequest:
    """The request creating `run`, from the fields a create takes (id, name, task_key,
    flow_run_id, parameters, tags, retry_policy and the initial state)."""
    msg = runs_pb2.TaskRun(
        id=run.id,
        name=run.name,
        task_key=run.task_key,
        flow_run_id=run.flow_run_id,
        tags=list(run.tags),
    )
    _fill_create(msg, run.parameters, run.retry_policy, run.state)
    return pb.CreateTaskRunRequest(task_run=msg)


def _fill_create(
    msg: runs_pb2.FlowRun | runs_pb2.TaskRun,
    parameters: Mapping[str, Any],
    retry_policy: RetryPolicy,
    state: State | None,
) -> None:
    if parameters:
        msg.parameters.update(dict(parameters))
    if retry_policy != RetryPolicy():
        retry_policy_to_proto(retry_policy, msg.retry_policy)
    if state is not None:
        state_to_proto(state, msg.state)


def set_state_request(
    run_id: str,
    state: State,
    force: bool = False,
    expected_state_id: str | None = None,
    lease_seconds: float = 0.0,
) -> pb.SetStateRequest:
    request = pb.SetStateRequest(run_id=run_id, force=force)
    state_to_proto(state, request.state)
    if expected_state_id is not None:
        request.expected_state_id = expected_state_id
    if lease_seconds:
        request.lease_duration.FromNanoseconds(round(lease_seconds * 1e9))
    return request


def write_cache_entries_request(entries: Iterable[CacheEntry]) -> pb.WriteCacheEntriesRequest:
    request = pb.WriteCacheEntriesRequest()
    for entry in entries:
        msg = request.entries.add(task_run_id=entry.task_run_id, cache_key=entry.cache_key)
        set_timestamp(msg.cache_expiration, entry.cache_expiration)
    return request


def cache_entry_from_proto(msg: pb.CacheEntry) -> CacheEntry:
    return CacheEntry(msg.task_run_id, msg.cache_key, optional_datetime(msg, "cache_expiration"))


def renew_leases_request(run_ids: Iterable[str], lease_seconds: float) -> pb.RenewLeasesRequest:
    request = pb.RenewLeasesRequest(run_ids=list(run_ids))
    request.lease_duration.FromNanoseconds(round(lease_seconds * 1e9))
    return request


def list_flow_runs_request(
    flow_names: Iterable[str],
    state_types: Iterable[StateType],
    tags: Iterable[str],
    ids: Iterable[str],
    page_size: int,
) -> pb.ListFlowRunsRequest:
    return pb.ListFlowRunsRequest(
        flow_names=list(flow_names),
        state_types=[int(t) for t in state_types],  # type: ignore[misc]
        tags=list(tags),
        ids=list(ids),
        page_size=page_size,
    )


def list_task_runs_request(
    flow_run_ids: Iterable[str],
    state_types: Iterable[StateType],
    tags: Iterable[str],
    task_keys: Iterable[str],
    page_size: int,
) -> pb.ListTaskRunsRequest:
    return pb.ListTaskRunsRequest(
        flow_run_ids=list(flow_run_ids),
        state_types=[int(t) for t in state_types],  # type: ignore[misc]
        tags=list(tags),
        task_keys=list(task_keys),
        page_size=page_size,
    )


# The clients ask for batches: a subscriber that is behind then gets many transitions per message.
WATCH_BATCH = 500


def transitions_of(message: pb.WatchTransitionsResponse) -> list[Transition]:
    """The transitions one stream message carries: `transitions`, or else the one `transition`."""
    if message.transitions:
        return [transition_from_proto(item) for item in message.transitions]
    return [transition_from_proto(message.transition)]


def watch_request(
    run_ids: Iterable[str],
    flow_run_ids: Iterable[str],
    state_types: Iterable[StateType],
    after_sequence: int | None,
    max_batch: int = WATCH_BATCH,
) -> pb.WatchTransitionsRequest:
    request = pb.WatchTransitionsRequest(
        run_ids=list(run_ids),
        flow_run_ids=list(flow_run_ids),
        state_types=[int(t) for t in state_types],  # type: ignore[misc]
        max_batch=max_batch,
    )
    if after_sequence is not None:
        request.after_sequence = after_sequence
    return request


def create_limit_request(tag: str, limit: int) -> pb.CreateConcurrencyLimitRequest:
    return pb.CreateConcurrencyLimitRequest(
        concurrency_limit=runs_pb2.ConcurrencyLimit(tag=tag, limit=limit)
    )


def batch_request(operations: Iterable[tuple[str, Any]]) -> pb.ExecuteBatchRequest:
    """A batch of (operation field name, request message) pairs, e.g. ("set_state", request)."""
    request = pb.ExecuteBatchRequest()
    for kind, message in operations:
        getattr(request.operations.add(), kind).CopyFrom(message)
    return request


def batch_operation_result(result: pb.BatchResult) -> Any:
    """One operation's response message, or the error (an RpcError) it was refused with."""
    kind = result.WhichOneof("result")
    if kind is None:
        return RpcError("the server sent an empty batch result")
    if kind == "error":
        return error_for_status(result.error.code, result.error.message)
    return getattr(result, kind)


# --- run logs -----------------------------------------------------------------------------------


def log_entry_to_proto(entry: LogEntry, out: runs_pb2.LogEntry | None = None) -> runs_pb2.LogEntry:
    msg = runs_pb2.LogEntry() if out is None else out
    msg.id = entry.id
    msg.flow_run_id = entry.flow_run_id
    msg.task_run_id = entry.task_run_id
    set_timestamp(msg.timestamp, entry.timestamp)
    msg.level = entry.level
    msg.logger = entry.logger
    msg.message = entry.message
    return msg


def log_entry_from_proto(msg: runs_pb2.LogEntry) -> LogEntry:
    return LogEntry(
        flow_run_id=msg.flow_run_id,
        task_run_id=msg.task_run_id,
        timestamp=to_datetime(msg.timestamp),
        level=msg.level,
        logger=msg.logger,
        message=msg.message,
        id=msg.id,
    )


def write_logs_request(entries: Iterable[LogEntry]) -> pb.WriteLogsRequest:
    request = pb.WriteLogsRequest()
    for entry in entries:
        log_entry_to_proto(entry, request.entries.add())
    return request


def list_logs_response(entries: Iterable[LogEntry]) -> pb.ListLogsResponse:
    response = pb.ListLogsResponse()
    for entry in entries:
        log_entry_to_proto(entry, response.entries.add())
    return response
