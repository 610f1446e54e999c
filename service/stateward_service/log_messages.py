"""WatchTransitions messages made directly from rows of the transitions log, for the streams
that replay it: the same bytes as `encode_transition` makes of the Transition a row stands for
(`orchestrator.transition_from_log_row`), at less than half the CPU, since no Transition, State,
datetime or enum is made on the way. A replay spends most of its time here, on a thread that
shares the interpreter's lock with the event loop."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from stateward.states import StateDetails, StateType
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import states_pb2
from stateward_service.orchestrator import LOG_ROW_STATE_WIDTH, transition_from_log_row

LogRow = Sequence[Any]  # a row of `Orchestrator.read_log_rows`

_DETAIL_TIMES = frozenset({"scheduled_time", "cache_expiration", "pause_timeout"})
# What a state's details may hold (each written by `wire.details_to_proto` into the field of the
# same name): a row with any other key goes the long way, which refuses it as reading the log
# does, and so does one whose state type does not exist.
_DETAIL_FIELDS = frozenset(StateDetails.__slots__)
_DEFAULT_NAMES = {int(t): t.default_name for t in StateType}
_FROM = 7  # where the old state's columns start
_TO = _FROM + LOG_ROW_STATE_WIDTH


class _OtherDetails(Exception):
    """Details this module does not write (left to the long way)."""


def _write_state(out: states_pb2.State, columns: Sequence[Any]) -> None:
    state_id, type_, name, timestamp, message, details, result_json, result_pickle = columns
    default_name = _DEFAULT_NAMES[type_]
    out.id = state_id
    out.type = type_
    out.name = name or default_name
    if timestamp is not None:
        # Floor division, as `wire.set_timestamp` finds for the datetime of these microseconds.
        seconds, micros = divmod(timestamp, 1_000_000)
        stamp = out.timestamp
        stamp.seconds = seconds
        stamp.nanos = micros * 1000
    out.message = message
    written = out.details
    written.SetInParent()
    if details != "{}":
        for key, value in json.loads(details).items():
            if key not in _DETAIL_FIELDS:
                raise _OtherDetails(key)
            if key in _DETAIL_TIMES:
                if value is not None:
                    seconds, micros = divmod(value, 1_000_000)
                    stamp = getattr(written, key)
                    stamp.seconds = seconds
                    stamp.nanos = micros * 1000
            elif value:  # a default is not written
                setattr(written, key, value)
    if result_json is not None:
        out.result.json = result_json
    elif result_pickle is not None:
        out.result.pickle = bytes(result_pickle)


def log_row_message(row: LogRow) -> bytes:
    """The encoded WatchTransitionsResponse of one row of `Orchestrator.read_log_rows`: the
    bytes `encode_transition(transition_from_log_row(row))` makes. Raises as that does for a row
    it cannot read (a state type that does not exist, details of another shape)."""
    message = pb.WatchTransitionsResponse()
    out = message.transition
    out.sequence = row[0]
    out.run_kind = row[1]
    out.run_id = row[2]
    out.flow_run_id = row[3]
    out.run_name = row[4] or ""
    out.flow_name = row[5]
    out.task_key = row[6]
    try:
        if row[_FROM] is not None:
            _write_state(out.from_state, row[_FROM:_TO])
        _write_state(out.to_state, row[_TO:])
    except (_OtherDetails, KeyError):
        return _the_long_way(row)
    return message.SerializeToString()


def log_row_messages(rows: Sequence[LogRow]) -> list[bytes]:
    """`log_row_message` of each row, in order."""
    return [log_row_message(row) for row in rows]


def _the_long_way(row: LogRow) -> bytes:
    from stateward_service.replica import encode_transition

    return encode_transition(transition_from_log_row(row))


__all__ = ["log_row_message", "log_row_messages"]
