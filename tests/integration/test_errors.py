"""Bad input gets a status a person can act on (and rich details a program can), and changes
nothing. No request may produce UNKNOWN or INTERNAL."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2, states_pb2
from tests.support import ST, history, new_flow_run, new_task_run, state

MISSING = "7d0c3b0e-0000-4000-8000-000000000000"


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return caught.value


def test_unknown_runs_are_not_found(stub):
    for call, request in (
        (stub.GetFlowRun, pb.GetFlowRunRequest(id=MISSING)),
        (stub.GetTaskRun, pb.GetTaskRunRequest(id=MISSING)),
        (stub.ListStates, pb.ListStatesRequest(run_id=MISSING)),
        (stub.SetState, pb.SetStateRequest(run_id=MISSING, state=state(ST.STATE_TYPE_RUNNING))),
        (
            stub.CreateTaskRun,
            pb.CreateTaskRunRequest(task_run=runs_pb2.TaskRun(task_key="t", flow_run_id=MISSING)),
        ),
        (
            stub.CreateFlowRun,
            pb.CreateFlowRunRequest(
                flow_run=runs_pb2.FlowRun(flow_name="f", parent_task_run_id=MISSING)
            ),
        ),
    ):
        error = refused(call, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND, request
        assert MISSING in error.details()


def test_a_flow_run_id_is_not_a_task_run(stub):
    flow_run = new_flow_run(stub)
    error = refused(stub.GetTaskRun, pb.GetTaskRunRequest(id=flow_run.id))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no task run" in error.details()


def test_existing_ids_are_already_exists_and_change_nothing(stub):
    run = new_flow_run(stub)
    for request, call in (
        (
            pb.CreateFlowRunRequest(flow_run=runs_pb2.FlowRun(id=run.id, flow_name="x")),
            stub.CreateFlowRun,
        ),
        (
            pb.CreateTaskRunRequest(task_run=runs_pb2.TaskRun(id=run.id, task_key="x")),
            stub.CreateTaskRun,
        ),
    ):
        error = refused(call, request)
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert run.id in error.details() and "omit the id" in error.details()
    stored = stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run
    assert stored.flow_name == "test-flow"


def test_client_given_ids_are_kept_in_canonical_form(stub):
    wanted = uuid.uuid4()
    run = stub.CreateFlowRun(
        pb.CreateFlowRunRequest(flow_run=runs_pb2.FlowRun(id=str(wanted).upper(), flow_name="f"))
    ).flow_run
    assert run.id == str(wanted)


def _set_state(
    run_id: str, proposed: states_pb2.State | None = None, **kwargs
) -> pb.SetStateRequest:
    request = pb.SetStateRequest(run_id=run_id, **kwargs)
    if proposed is not None:
        request.state.CopyFrom(proposed)
    return request


def invalid_set_state_requests(run_id: str):
    too_long = "x" * 201
    out_of_range = state(ST.STATE_TYPE_SCHEDULED)
    out_of_range.details.scheduled_time.seconds = 253_402_300_800  # year 10000
    bad_nanos = state(ST.STATE_TYPE_SCHEDULED)
    bad_nanos.details.scheduled_time.nanos = -1
    bad_json = state(ST.STATE_TYPE_COMPLETED, result_json="{not json")
    return {
        "empty run id": (_set_state("", state(ST.STATE_TYPE_RUNNING)), "run_id"),
        "non-UUID run id": (_set_state("run-1", state(ST.STATE_TYPE_RUNNING)), "run_id"),
        "no state": (_set_state(run_id), "state"),
        "unspecified type": (_set_state(run_id, state(ST.STATE_TYPE_UNSPECIFIED)), "state.type"),
        "unknown type": (_set_state(run_id, state(99)), "state.type"),
        "name too long": (_set_state(run_id, state(ST.STATE_TYPE_RUNNING, too_long)), "state.name"),
        "message too long": (
            _set_state(run_id, state(ST.STATE_TYPE_RUNNING, message="m" * 100_001)),
            "state.message",
        ),
        "timestamp out of range": (
            _set_state(run_id, out_of_range),
            "state.details.scheduled_time",
        ),
        "bad nanos": (_set_state(run_id, bad_nanos), "state.details.scheduled_time"),
        "cache key too long": (
            _set_state(run_id, state(ST.STATE_TYPE_COMPLETED, cache_key="k" * 2001)),
            "state.details.cache_key",
        ),
        "result not JSON": (_set_state(run_id, bad_json), "state.result.json"),
        "non-UUID expected state": (
            _set_state(run_id, state(ST.STATE_TYPE_RUNNING), expected_state_id="nope"),
            "expected_state_id",
        ),
    }


@pytest.mark.parametrize("case", list(invalid_set_state_requests(MISSING)))
def test_malformed_set_state_is_invalid_argument_and_changes_nothing(stub, case):
    run = new_flow_run(stub)
    request, field = invalid_set_state_requests(run.id)[case]
    error = refused(stub.SetState, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    assert error.details().startswith(field), (case, error.details())
    # The rich status names the field for programs too.
    status = rpc_status.from_call(error)
    assert status is not None
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(v.field for v in bad.field_violations)
    assert violations == [field]
    assert history(stub, run.id) == ["Pending"]


def invalid_create_requests():
    def flow(**fields) -> pb.CreateFlowRunRequest:
        fields.setdefault("flow_name", "f")
        return pb.CreateFlowRunRequest(flow_run=runs_pb2.FlowRun(**fields))

    def task(**fields) -> pb.CreateTaskRunRequest:
        fields.setdefault("task_key", "t")
        return pb.CreateTaskRunRequest(task_run=runs_pb2.TaskRun(**fields))

    return {
        "flow without flow_name": ("CreateFlowRun", flow(flow_name=""), "flow_run.flow_name"),
        "task without task_key": ("CreateTaskRun", task(task_key=""), "task_run.task_key"),
        "non-UUID id": ("CreateFlowRun", flow(id="abc"), "flow_run.id"),
        "oversized flow name": ("CreateFlowRun", flow(flow_name="f" * 201), "flow_run.flow_name"),
        "oversized run name": ("CreateTaskRun", task(name="n" * 201), "task_run.name"),
        "negative retries": (
            "CreateTaskRun",
            task(retry_policy=runs_pb2.RetryPolicy(retries=-1)),
            "task_run.retry_policy.retries",
        ),
        "negative delay": (
            "CreateFlowRun",
            flow(retry_policy=runs_pb2.RetryPolicy(retries=1, retry_delay_seconds=[1, -2])),
            "flow_run.retry_policy.retry_delay_seconds[1]",
        ),
        "infinite jitter": (
            "CreateTaskRun",
            task(retry_policy=runs_pb2.RetryPolicy(retry_jitter_factor=float("inf"))),
            "task_run.retry_policy.retry_jitter_factor",
        ),
        "delay beyond a year": (
            "CreateTaskRun",
            task(retry_policy=runs_pb2.RetryPolicy(retries=1, retry_delay_seconds=[1e300])),
            "task_run.retry_policy.retry_delay_seconds[0]",
        ),
        "huge jitter": (
            "CreateFlowRun",
            flow(retry_policy=runs_pb2.RetryPolicy(retry_jitter_factor=1e9)),
            "flow_run.retry_policy.retry_jitter_factor",
        ),
        "empty tag": ("CreateFlowRun", flow(tags=["ok", ""]), "flow_run.tags[1]"),
        "too many tags": ("CreateFlowRun", flow(tags=[str(i) for i in range(51)]), "flow_run.tags"),
        "non-UUID flow run": ("CreateTaskRun", task(flow_run_id="x"), "task_run.flow_run_id"),
        "unknown initial type": (
            "CreateFlowRun",
            flow(state=states_pb2.State(type=12)),  # type: ignore[arg-type]
            "flow_run.state.type",
        ),
    }


@pytest.mark.parametrize("case", list(invalid_create_requests()))
def test_malformed_create_is_invalid_argument_and_creates_nothing(stub, case):
    method, request, field = invalid_create_requests()[case]
    before = len(stub.ListFlowRuns(pb.ListFlowRunsRequest(page_size=1000)).flow_runs)
    error = refused(getattr(stub, method), request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    assert error.details().startswith(field), (case, error.details())
    assert len(stub.ListFlowRuns(pb.ListFlowRunsRequest(page_size=1000)).flow_runs) == before


def test_malformed_ids_in_reads_and_lists_are_invalid_argument(stub):
    for call, request, field in (
        (stub.GetFlowRun, pb.GetFlowRunRequest(id=""), "id"),
        (stub.GetTaskRun, pb.GetTaskRunRequest(id="nope"), "id"),
        (stub.ListStates, pb.ListStatesRequest(run_id=""), "run_id"),
        (stub.ListTaskRuns, pb.ListTaskRunsRequest(flow_run_ids=["x"]), "flow_run_ids[0]"),
        (stub.ListFlowRuns, pb.ListFlowRunsRequest(ids=["y"]), "ids[0]"),
        (stub.ListFlowRuns, pb.ListFlowRunsRequest(state_types=[0]), "state_types"),
        (stub.ListTaskRuns, pb.ListTaskRunsRequest(state_types=[77]), "state_types"),
        (stub.ListFlowRuns, pb.ListFlowRunsRequest(page_size=-1), "page_size"),
        (stub.ListFlowRuns, pb.ListFlowRunsRequest(flow_names=["f"] * 1001), "flow_names"),
        (stub.ListFlowRuns, pb.ListFlowRunsRequest(tags=["t"] * 1001), "tags"),
        (stub.ListTaskRuns, pb.ListTaskRunsRequest(task_keys=["k"] * 1001), "task_keys"),
        (stub.ListTaskRuns, pb.ListTaskRunsRequest(state_types=[1] * 1001), "state_types"),
        (stub.ListFlowRuns, pb.ListFlowRunsRequest(ids=[MISSING] * 1001), "ids"),
    ):
        error = refused(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert error.details().startswith(field)


def test_refused_initial_state_creates_no_run(stub):
    run_id = str(uuid.uuid4())
    request = pb.CreateFlowRunRequest(
        flow_run=runs_pb2.FlowRun(id=run_id, flow_name="f", state=state(ST.STATE_TYPE_PAUSED))
    )
    error = refused(stub.CreateFlowRun, request)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "refused" in error.details()
    assert refused(stub.GetFlowRun, pb.GetFlowRunRequest(id=run_id)).code() == (
        grpc.StatusCode.NOT_FOUND
    )


def test_task_runs_of_unknown_flow_runs_are_not_created(stub):
    error = refused(
        stub.CreateTaskRun,
        pb.CreateTaskRunRequest(task_run=runs_pb2.TaskRun(task_key="t", flow_run_id=MISSING)),
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = stub.ListTaskRuns(pb.ListTaskRunsRequest(flow_run_ids=[MISSING])).task_runs
    assert list(listed) == []


def test_a_task_run_id_works_for_set_state_and_history(stub):
    flow_run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    task_run = new_task_run(stub, flow_run.id)
    assert history(stub, task_run.id) == ["Pending"]
