"""The web API's JSON: runs, states and transitions as plain dictionaries. Times are ISO 8601 in
UTC, state types their names (COMPLETED), durations seconds."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from stateward.runs import LogEntry, RunKind, Transition
from stateward.states import State, StateType
from stateward_service.model import RunRecord

Document = dict[str, Any]

_KIND_NAMES = {RunKind.FLOW_RUN: "flow_run", RunKind.TASK_RUN: "task_run"}
_ENDED_BADLY = frozenset((StateType.FAILED, StateType.CRASHED, StateType.CANCELLED))


def _parse_json(text: str) -> Any:
    """Stored JSON as a value; NaN and the infinities (which JSON lacks) become strings."""
    return json.loads(text, parse_constant=str)


def iso(moment: datetime | None) -> str | None:
    return (
        None if moment is None else moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


def result_document(state: State) -> Document | None:
    """The stored result of a state: JSON is shown as its value; a pickle only by its size (the
    page cannot read it, and unpickling is for the code that made it, never the server). The
    pickled exception of a failed, crashed or cancelled run is shown by the state's message,
    which the SDK writes beside it as the exception's type and message ("ValueError: ...")."""
    data = state.data
    if data is None:
        return None
    if data.json is not None:
        return {"kind": "json", "value": _parse_json(data.json)}
    size = len(data.pickle or b"")
    if state.type in _ENDED_BADLY and state.message:
        return {"kind": "exception", "message": state.message, "bytes": size}
    return {"kind": "pickle", "bytes": size}


def state_document(state: State | None, *, with_result: bool = False) -> Document | None:
    if state is None:
        return None
    document: Document = {
        "id": state.id,
        "type": state.type.name,
        "name": state.name,
        "timestamp": iso(state.timestamp),
        "message": state.message,
    }
    if with_result:
        document["result"] = result_document(state)
        if state.type is StateType.PAUSED:
            document["pause_timeout"] = iso(state.details.pause_timeout)
            document["pause_key"] = state.details.pause_key
            if state.details.run_input_schema:
                document["run_input_schema"] = _parse_json(state.details.run_input_schema)
    return document


def run_document(run: RunRecord, *, with_result: bool = False) -> Document:
    """A flow run or task run; `with_result` adds its current state's stored result and, for a
    pause, until when it waits (`pause_timeout`), its key (`pause_key`) and, when it waits for
    input, the input's JSON Schema (`run_input_schema`)."""
    document: Document = {
        "id": run.id,
        "kind": _KIND_NAMES[run.kind],
        "name": run.name,
        "state": state_document(run.state, with_result=with_result),
        "tags": list(run.tags),
        "run_count": run.run_count,
        "created": iso(run.created),
        "start_time": iso(run.start_time),
        "end_time": iso(run.end_time),
        "total_run_time": run.total_run_time,
        "expected_start_time": iso(run.expected_start_time),
        "parameters": _parse_json(run.parameters),
    }
    if run.kind is RunKind.FLOW_RUN:
        document["flow_name"] = run.flow_name
        document["parent_task_run_id"] = run.parent_task_run_id
    else:
        document["task_key"] = run.task_key
        document["flow_run_id"] = run.flow_run_id
        document["child_flow_run_id"] = run.child_flow_run_id
    return document


def log_document(entry: LogEntry) -> Document:
    """A line a run logged, as `stateward flow-run logs` shows it: `level` the `logging`
    number and `level_name` its name (INFO, or "Level 25" for an unnamed one). The message is
    the run's own text, untrusted: a page shows it as text, never as markup."""
    return {
        "id": entry.id,
        "timestamp": iso(entry.timestamp),
        "level": entry.level,
        "level_name": logging.getLevelName(entry.level),
        "logger": entry.logger,
        "message": entry.message,
        "task_run_id": entry.task_run_id or None,
    }


def transition_document(transition: Transition) -> Document:
    return {
        "sequence": transition.sequence,
        "run_kind": _KIND_NAMES[transition.run_kind],
        "run_id": transition.run_id,
        "flow_run_id": transition.flow_run_id,
        "run_name": transition.run_name,
        "flow_name": transition.flow_name,
        "task_key": transition.task_key,
        "from_state": state_document(transition.from_state),
        "to_state": state_document(transition.to_state),
    }


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_transition(transition: Transition) -> bytes:
    """One whole SSE event: the transition as compact JSON (one line), its sequence as the
    event's id. Encoded once per transition, whatever the number of pages watching."""
    data = _encode(transition_document(transition))
    return f"id: {transition.sequence}\nevent: transition\ndata: {data}\n\n".encode()
