"""Row encoding shared by the backends: times as integer microseconds since the epoch, details,
tags and retry delays as JSON text, a state as the columns of the `states` table."""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from stateward.runs import RetryPolicy, RunKind
from stateward.states import ResultData, State, StateDetails, StateType
from stateward_service.model import RunRecord

STATE_COLUMNS = "id, type, name, timestamp, message, details, result_json, result_pickle"
STATE_WIDTH = len(STATE_COLUMNS.split(","))

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(value: datetime | None) -> int | None:
    """A datetime as integer microseconds since the epoch (how the store keeps times)."""
    if value is None:
        return None
    # Whole numbers: as `(value - EPOCH) // timedelta(microseconds=1)`, at half the cost.
    since = value - EPOCH
    return (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds


def from_us(value: int | None) -> datetime | None:
    return None if value is None else EPOCH + timedelta(microseconds=value)


def table(kind: RunKind) -> str:
    return "flow_runs" if kind is RunKind.FLOW_RUN else "task_runs"


def _prefix_state_columns(alias: str) -> str:
    return ", ".join(f"{alias}.{column.strip()}" for column in STATE_COLUMNS.split(","))


_PREFIXED = {alias: _prefix_state_columns(alias) for alias in ("s", "a", "b")}


def prefixed_state_columns(alias: str) -> str:
    return _PREFIXED[alias]


def json_list(values: Sequence[Any]) -> str:
    """A list as JSON text; most runs' tags, delays and pause keys are empty (no encoding)."""
    return json.dumps(list(values)) if values else "[]"


# The columns of a run's row, in the order `run_values` gives their values.
_RUN_COLUMNS = (
    "id",
    "name",
    "parameters",
    "tags",
    "retries",
    "retry_delays",
    "retry_jitter",
    "state_id",
    "state_type",
    "state_name",
    "run_count",
    "start_time",
    "end_time",
    "total_run_time",
    "expected_start_time",
    "next_scheduled_start_time",
    "lease_expires",
    "created",
)
RUN_COLUMNS = {
    RunKind.FLOW_RUN: (*_RUN_COLUMNS, "flow_name", "parent_task_run_id", "pause_keys"),
    RunKind.TASK_RUN: (*_RUN_COLUMNS, "task_key", "flow_run_id", "child_flow_run_id"),
}
_FLOW_RUN = RunKind.FLOW_RUN


def run_values(run: RunRecord) -> tuple[Any, ...]:
    """Every column of a run's row, in the order of `RUN_COLUMNS[run.kind]` (None: NULL)."""
    state = run.state
    policy = run.retry_policy
    common = (
        run.id,
        run.name,
        run.parameters,
        json_list(run.tags),
        policy.retries,
        json_list(policy.retry_delay_seconds),
        policy.retry_jitter_factor,
        state.id if state else None,
        int(state.type) if state else None,
        state.name if state else None,
        run.run_count,
        to_us(run.start_time),
        to_us(run.end_time),
        run.total_run_time,
        to_us(run.expected_start_time),
        to_us(run.next_scheduled_start_time),
        to_us(run.lease_expires),
        to_us(run.created),
    )
    if run.kind is _FLOW_RUN:
        return (
            *common,
            run.flow_name,
            run.parent_task_run_id or None,
            json_list(sorted(run.pause_keys)),
        )
    return (*common, run.task_key, run.flow_run_id or None, run.child_flow_run_id or None)


def run_from_row(kind: RunKind, description: Any, row: Sequence[Any]) -> RunRecord:
    names = [column[0] for column in description]
    width = STATE_WIDTH
    fields = dict(zip(names[:-width], row[:-width], strict=True))
    state_row = row[-width:]
    return RunRecord(
        kind=kind,
        id=fields["id"],
        name=fields["name"],
        created=from_us(fields["created"]) or EPOCH,
        flow_name=fields.get("flow_name") or "",
        task_key=fields.get("task_key") or "",
        flow_run_id=fields.get("flow_run_id") or "",
        parent_task_run_id=fields.get("parent_task_run_id") or "",
        child_flow_run_id=fields.get("child_flow_run_id") or "",
        parameters=fields["parameters"],
        tags=tuple(json.loads(fields["tags"])),
        retry_policy=RetryPolicy(
            retries=fields["retries"] or 0,
            retry_delay_seconds=tuple(json.loads(fields["retry_delays"] or "[]")),
            retry_jitter_factor=fields["retry_jitter"] or 0.0,
        ),
        state=state_from_row(state_row) if state_row[0] is not None else None,
        run_count=fields["run_count"],
        start_time=from_us(fields["start_time"]),
        end_time=from_us(fields["end_time"]),
        total_run_time=fields["total_run_time"],
        expected_start_time=from_us(fields["expected_start_time"]),
        next_scheduled_start_time=from_us(fields["next_scheduled_start_time"]),
        pause_keys=frozenset(json.loads(fields.get("pause_keys") or "[]")),
        lease_expires=from_us(fields["lease_expires"]),
    )


_DETAIL_TIMES = frozenset({"scheduled_time", "cache_expiration", "pause_timeout"})
# The details every state made without any shares (one immutable value).
_DEFAULT_DETAILS = State(StateType.COMPLETED).details
_DETAIL_NAMES: tuple[str, ...] = StateDetails.__slots__
# Every field's value in one call (a state's details are written with each state).
_detail_values = operator.attrgetter(*_DETAIL_NAMES)
# The JSON text of a string, as `json.dumps` writes it (ASCII, escaped).
_json_text = json.encoder.encode_basestring_ascii


# The details' values that name the run and the proposal (nearly every state written holds
# these and nothing else), and the others.
_IDS = ("flow_run_id", "task_run_id", "transition_id")
_id_values = operator.itemgetter(*(_DETAIL_NAMES.index(name) for name in _IDS))
_other_values = operator.itemgetter(
    *(index for index, name in enumerate(_DETAIL_NAMES) if name not in _IDS)
)


def details_json(details: StateDetails) -> str:
    """The details that differ from their defaults, as JSON (times in microseconds): the text
    `json.dumps(..., separators=(",", ":"))` writes for them, made directly (every state
    written passes here, and json.dumps builds an encoder each time)."""
    values = _detail_values(details)
    if not any(_other_values(values)):  # every default is falsy ("", None, False)
        # A task run's or a flow run's state as proposed: its ids alone, in the fields' order.
        flow_run_id, task_run_id, transition_id = _id_values(values)
        if flow_run_id and transition_id:
            if task_run_id:
                return (
                    f'{{"flow_run_id":{_json_text(flow_run_id)},'
                    f'"task_run_id":{_json_text(task_run_id)},'
                    f'"transition_id":{_json_text(transition_id)}}}'
                )
            return (
                f'{{"flow_run_id":{_json_text(flow_run_id)},'
                f'"transition_id":{_json_text(transition_id)}}}'
            )
    parts = []
    for name, value in zip(_DETAIL_NAMES, values, strict=True):
        if not value:  # every default is falsy ("", None, False)
            continue
        if value is True:
            parts.append(f'"{name}":true')
        elif name in _DETAIL_TIMES:
            parts.append(f'"{name}":{to_us(value)}')
        else:
            parts.append(f'"{name}":{_json_text(value)}')
    return "{" + ",".join(parts) + "}" if parts else "{}"


def details_from_json(text: str) -> StateDetails:
    if text == "{}":
        return _DEFAULT_DETAILS
    values = json.loads(text)
    for name in _DETAIL_TIMES:
        if name in values:
            values[name] = from_us(values[name])
    return StateDetails(**values)


def state_from_row(row: Sequence[Any]) -> State:
    state_id, type_, name, timestamp, message, details, result_json, result_pickle = row
    data = None
    if result_json is not None:
        data = ResultData(json=result_json)
    elif result_pickle is not None:
        data = ResultData(pickle=result_pickle)
    return State(
        type=StateType(type_),
        name=name,
        message=message,
        timestamp=from_us(timestamp),
        id=state_id,
        details=details_from_json(details),
        data=data,
    )
