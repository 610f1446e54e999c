"""`stateward.wire`: the conversions client and server share, and the one table between status
codes and the client's exceptions."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc

from stateward import exceptions, wire
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


def test_status_codes_are_grpcs_names_and_numbers():
    assert {code.name: code.value for code in wire.StatusCode} == {
        code.name: code.value[0] for code in grpc.StatusCode
    }


def test_each_rpc_error_maps_to_its_code_and_back():
    error_types = {
        cls for cls in vars(exceptions).values()
        if isinstance(cls, type) and issubclass(cls, exceptions.RpcError)
        and cls is not exceptions.RpcError
    }  # fmt: skip
    assert set(wire.ERROR_TYPES.values()) == error_types
    for code, error_type in wire.ERROR_TYPES.items():
        error = wire.error_for_status(code.value, "refused")
        assert type(error) is error_type and error.code == code.name == error_type.code
        assert str(error) == "refused"


def test_codes_without_an_exception_of_their_own_raise_rpc_error_with_the_name():
    error = wire.error_for_status(wire.StatusCode.UNAVAILABLE, "down")
    assert type(error) is exceptions.RpcError and error.code == "UNAVAILABLE"
    unknown = wire.error_for_status(99, "odd")
    assert type(unknown) is exceptions.RpcError and unknown.code == "UNKNOWN"


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
