"""The names DESIGN.md pins are present in the compiled contract: other languages and outside
test suites depend on them."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from stateward.v1 import orchestration_pb2, runs_pb2, states_pb2


def fields(message) -> dict[str, FieldDescriptor]:
    return dict(message.DESCRIPTOR.fields_by_name)


def test_package_and_service():
    service = orchestration_pb2.DESCRIPTOR.services_by_name["OrchestrationService"]
    assert service.full_name == "stateward.v1.OrchestrationService"
    methods = {m.name: m for m in service.methods}
    for name in ("CreateFlowRun", "GetFlowRun", "ListFlowRuns", "CreateTaskRun", "GetTaskRun",
                 "ListTaskRuns", "SetState", "ListStates", "WatchTransitions"):  # fmt: skip
        assert name in methods
        assert methods[name].input_type.name == f"{name}Request"
    assert methods["WatchTransitions"].server_streaming
    assert not methods["SetState"].server_streaming


def test_state_type_enum():
    values = {v.name: v.number for v in states_pb2.StateType.DESCRIPTOR.values}
    expected = ["UNSPECIFIED", "SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING",
                "COMPLETED", "FAILED", "CANCELLED", "CRASHED"]  # fmt: skip
    assert values == {f"STATE_TYPE_{name}": number for number, name in enumerate(expected)}


def test_set_state_status_enum():
    values = {v.name: v.number for v in orchestration_pb2.SetStateStatus.DESCRIPTOR.values}
    assert values == {
        "SET_STATE_STATUS_UNSPECIFIED": 0,
        "SET_STATE_STATUS_ACCEPT": 1,
        "SET_STATE_STATUS_REJECT": 2,
        "SET_STATE_STATUS_WAIT": 3,
        "SET_STATE_STATUS_ABORT": 4,
    }


def test_state_and_details():
    assert {"id", "type", "name", "timestamp", "message", "details"} <= fields(
        states_pb2.State
    ).keys()
    assert (
        fields(states_pb2.State)["timestamp"].message_type.full_name == "google.protobuf.Timestamp"
    )
    assert {"flow_run_id", "task_run_id", "scheduled_time", "cache_key", "cache_expiration",
            "transition_id", "pause_key"} <= fields(states_pb2.StateDetails).keys()  # fmt: skip


def test_runs():
    shared = {"id", "name", "tags", "retry_policy", "state", "run_count", "start_time", "end_time"}
    flow_run = fields(runs_pb2.FlowRun)
    task_run = fields(runs_pb2.TaskRun)
    assert shared | {"flow_name", "parameters"} <= flow_run.keys()
    assert shared | {"task_key", "flow_run_id"} <= task_run.keys()
    assert flow_run["parameters"].message_type.full_name == "google.protobuf.Struct"
    assert {"retries", "retry_delay_seconds"} <= fields(runs_pb2.RetryPolicy).keys()


def test_requests_and_responses():
    assert set(fields(orchestration_pb2.CreateFlowRunRequest)) >= {"flow_run"}
    assert set(fields(orchestration_pb2.CreateTaskRunRequest)) >= {"task_run"}
    assert set(fields(orchestration_pb2.GetFlowRunRequest)) >= {"id"}
    assert set(fields(orchestration_pb2.GetTaskRunRequest)) >= {"id"}
    assert set(fields(orchestration_pb2.ListStatesRequest)) >= {"run_id"}
    assert set(fields(orchestration_pb2.ListStatesResponse)) >= {"states"}
    set_state = fields(orchestration_pb2.SetStateRequest)
    assert set(set_state) >= {"run_id", "state", "force", "expected_state_id"}
    assert set_state["expected_state_id"].has_presence
    assert set(fields(orchestration_pb2.SetStateResponse)) >= {
        "status", "state", "reason", "delay_seconds",
    }  # fmt: skip


def test_transition_and_watch_request():
    transition = fields(orchestration_pb2.Transition)
    assert {"sequence", "run_id", "flow_run_id", "from_state", "to_state"} <= transition.keys()
    assert transition["sequence"].type == FieldDescriptor.TYPE_UINT64
    watch = fields(orchestration_pb2.WatchTransitionsRequest)
    assert {"run_ids", "flow_run_ids", "state_types", "after_sequence"} <= watch.keys()
    assert watch["after_sequence"].has_presence
    assert watch["after_sequence"].type == FieldDescriptor.TYPE_UINT64
