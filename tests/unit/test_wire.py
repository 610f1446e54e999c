"""`stateward.wire`: the conversions client and server share."""

from __future__ import annotations

from datetime import UTC, datetime

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
