"""`stateward.wire`: the conversions client and server share."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stateward import wire
from stateward.runs import (
    ConcurrencyLimit,
    OrchestrationResult,
    RunKind,
    SetStateStatus,
    Transition,
)
from stateward.states import ResultData, State, StateDetails, StateType
from stateward_service.model import RunRecord

AT = datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)


def test_a_state_survives_the_wire():
    state = State(
        StateType.SCHEDULED,
        "AwaitingRetry",
        "later",
        AT,
        "id-1",
        StateDetails(flow_run_id="f", scheduled_time=AT, cache_key="k", pause_timeout=AT),
        ResultData(json="[1]"),
    )
    assert wire.state_from_proto(wire.state_to_proto(state)) == state


def test_transitions_limits_and_answers_survive_the_wire():
    transition = Transition(
        sequence=7,
        run_id="r",
        run_kind=RunKind.TASK_RUN,
        flow_run_id="f",
        run_name="n",
        flow_name="",
        task_key="t",
        from_state=None,
        to_state=State(StateType.RUNNING, timestamp=AT, id="s"),
    )
    assert wire.transition_from_proto(wire.transition_to_proto(transition)) == transition
    limit = ConcurrencyLimit("tag", 2, ("a", "b"), AT)
    assert wire.limit_from_proto(wire.limit_to_proto(limit)) == limit
    answer = OrchestrationResult(SetStateStatus.WAIT, None, "not yet", 1.5)
    assert (
        wire.orchestration_result_from_proto(wire.orchestration_result_to_proto(answer)) == answer
    )


def test_a_stored_run_reads_back_as_the_clients_run():
    record = RunRecord(
        kind=RunKind.FLOW_RUN,
        id="r",
        name="n",
        created=AT,
        flow_name="f",
        parameters='{"x":1,"y":[1.5,"z"]}',
        tags=("a",),
        run_count=2,
        total_run_time=1.25,
        start_time=AT,
    )
    run = wire.flow_run_from_proto(wire.flow_run_to_proto(record))
    assert (run.id, run.name, run.flow_name, run.tags, run.run_count) == ("r", "n", "f", ("a",), 2)
    assert run.parameters == {"x": 1, "y": [1.5, "z"]}
    assert run.total_run_time.total_seconds() == 1.25
    assert (run.start_time, run.created, run.end_time) == (AT, AT, None)


def test_timestamps_and_durations_read_as_protobufs_own_conversions_do():
    """`to_datetime` and the run's `total_run_time` use plain arithmetic instead of protobuf's
    helpers: the same values at the ends of the range, and the same error past them."""
    from google.protobuf.duration_pb2 import Duration
    from google.protobuf.timestamp_pb2 import Timestamp

    for seconds, nanos in [
        (0, 0),
        (-62_135_596_800, 0),  # 0001-01-01
        (253_402_300_799, 999_999_999),  # 9999-12-31, the last microsecond
        (1_767_323_045, 678_901_999),  # sub-microsecond nanos round down
        (-1, 999_999_999),
    ]:
        ts = Timestamp(seconds=seconds, nanos=nanos)
        assert wire.to_datetime(ts) == ts.ToDatetime(tzinfo=UTC)
        assert wire.to_datetime(ts).tzinfo is UTC
    for bad in [
        Timestamp(seconds=253_402_300_800),
        Timestamp(seconds=-62_135_596_801),
        Timestamp(seconds=0, nanos=-1),
        Timestamp(seconds=0, nanos=1_000_000_000),
    ]:
        with pytest.raises(ValueError):
            wire.to_datetime(bad)
    for seconds, nanos in [(0, 0), (3, 500_999), (-3, -500_999), (86_400 * 365, 1)]:
        duration = Duration(seconds=seconds, nanos=nanos)
        assert wire._to_timedelta(duration) == duration.ToTimedelta()
