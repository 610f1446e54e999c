"""Every client-controlled size that reaches SQL, JSON or recursion has a real limit (within it
the call works, past it INVALID_ARGUMENT), and every value the store accepts reads back the same
(or is refused): tags with U+0000, NaN and Infinity in parameters and results."""

from __future__ import annotations

import base64
import json
import math
import uuid

import grpc
import pytest
from google.protobuf import json_format

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from tests.support import ST, new_flow_run, new_task_run, propose, state

MAX_FILTER = 1_000


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return caught.value


def test_filters_at_their_documented_maximum_work(stub):
    run = new_flow_run(stub, tags=["t0", "t1"])
    task = new_task_run(stub, run.id, tags=["t0"])
    tags = [f"t{i}" for i in range(MAX_FILTER)]
    ids = [run.id] + [str(uuid.uuid4()) for _ in range(MAX_FILTER - 1)]
    types = [ST.STATE_TYPE_PENDING] * MAX_FILTER
    # A run holds at most 50 tags, so every tag of a 1,000-tag filter matches nothing...
    flows = stub.ListFlowRuns(pb.ListFlowRunsRequest(tags=tags, ids=ids, state_types=types))
    assert list(flows.flow_runs) == []
    # ...but the same number of filter values, repeated, is the run's own tags.
    many = (["t0", "t1"] * MAX_FILTER)[:MAX_FILTER]
    flows = stub.ListFlowRuns(
        pb.ListFlowRunsRequest(
            tags=many, ids=ids, state_types=types, flow_names=["test-flow"] * 999
        )
    )
    assert [r.id for r in flows.flow_runs] == [run.id]
    tasks = stub.ListTaskRuns(
        pb.ListTaskRunsRequest(
            tags=["t0"] * MAX_FILTER,
            flow_run_ids=ids,
            state_types=types,
            task_keys=["test-task"] * MAX_FILTER,
        )
    )
    assert [t.id for t in tasks.task_runs] == [task.id]
    replay = stub.WatchTransitions(
        pb.WatchTransitionsRequest(
            run_ids=ids, flow_run_ids=ids, state_types=types, after_sequence=0
        ),
        timeout=30,
    )
    first = next(replay)
    assert first.transition.run_id == run.id
    replay.cancel()


@pytest.mark.parametrize(
    "call, request_",
    [
        ("ListFlowRuns", pb.ListFlowRunsRequest(tags=[f"t{i}" for i in range(MAX_FILTER + 1)])),
        ("ListTaskRuns", pb.ListTaskRunsRequest(tags=["x"] * (MAX_FILTER + 1))),
        ("ListFlowRuns", pb.ListFlowRunsRequest(flow_names=["x"] * (MAX_FILTER + 1))),
    ],
)
def test_filters_past_their_maximum_are_invalid_argument(stub, call, request_):
    error = refused(getattr(stub, call), request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1,000" in error.details()


def _token(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        _token(b"[" * 100_000 + b"]" * 100_000),  # deeply nested JSON
        _token(b'{"r":' * 50_000 + b"1" + b"}" * 50_000),
        "A" * 200_000,  # far longer than any token the server makes
        _token(json.dumps({"k": 1, "r": 1, "f": "x" * 5000}).encode()),
    ],
)
@pytest.mark.parametrize("call", ["ListFlowRuns", "ListTaskRuns"])
def test_forged_page_tokens_are_invalid_argument(stub, call, token):
    request = getattr(pb, f"{call}Request")(page_token=token)
    error = refused(getattr(stub, call), request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in error.details()


def test_page_tokens_of_large_filters_stay_small_and_work(stub):
    flow = f"big-filter-{uuid.uuid4().hex[:6]}"
    for _ in range(3):
        new_flow_run(stub, flow_name=flow)
    names = [flow] + [f"{'n' * 190}{i}" for i in range(MAX_FILTER - 1)]
    page = stub.ListFlowRuns(pb.ListFlowRunsRequest(flow_names=names, page_size=2))
    assert len(page.flow_runs) == 2 and 0 < len(page.next_page_token) <= 200
    rest = stub.ListFlowRuns(
        pb.ListFlowRunsRequest(flow_names=names, page_size=2, page_token=page.next_page_token)
    )
    assert len(rest.flow_runs) == 1 and rest.next_page_token == ""


# --- values the store must round-trip, or refuse -------------------------------------------------


def test_a_tag_with_u0000_is_refused_everywhere_it_would_be_stored(stub):
    for call, request in (
        (
            stub.CreateFlowRun,
            pb.CreateFlowRunRequest(flow_run=runs_pb2.FlowRun(flow_name="f", tags=["a\x00b"])),
        ),
        (
            stub.CreateTaskRun,
            pb.CreateTaskRunRequest(task_run=runs_pb2.TaskRun(task_key="t", tags=["ok", "\x00"])),
        ),
        (
            stub.CreateConcurrencyLimit,
            pb.CreateConcurrencyLimitRequest(
                concurrency_limit=runs_pb2.ConcurrencyLimit(tag="a\x00", limit=1)
            ),
        ),
    ):
        error = refused(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "U+0000" in error.details()


def test_names_and_messages_with_u0000_round_trip(stub):
    run = new_flow_run(stub, flow_name="nul\x00flow", name="run\x00name")
    again = stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run
    assert again.flow_name == "nul\x00flow" and again.name == "run\x00name"
    listed = stub.ListFlowRuns(pb.ListFlowRunsRequest(flow_names=["nul\x00flow"])).flow_runs
    assert [r.id for r in listed] == [run.id]
    answer = propose(stub, run.id, state(ST.STATE_TYPE_RUNNING, message="a\x00b"))
    assert answer.state.message == "a\x00b"


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_parameters_are_refused_and_nothing_is_written(stub, number):
    flow = f"nan-{uuid.uuid4().hex[:6]}"
    run = runs_pb2.FlowRun(flow_name=flow)
    run.parameters.update({"ok": 1, "nested": {"x": [1, number]}})
    error = refused(stub.CreateFlowRun, pb.CreateFlowRunRequest(flow_run=run))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters" in error.details() and "nested.x[1]" in error.details()
    assert list(stub.ListFlowRuns(pb.ListFlowRunsRequest(flow_names=[flow])).flow_runs) == []
    task = runs_pb2.TaskRun(task_key=flow)
    task.parameters.update({"n": number})
    error = refused(stub.CreateTaskRun, pb.CreateTaskRunRequest(task_run=task))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_finite_parameters_render_through_the_json_mapping(stub):
    run = runs_pb2.FlowRun(flow_name="finite")
    run.parameters.update({"big": 1.7976931348623157e308, "small": -5e-324, "s": "\x00"})
    created = stub.CreateFlowRun(pb.CreateFlowRunRequest(flow_run=run)).flow_run
    stored = stub.GetFlowRun(pb.GetFlowRunRequest(id=created.id)).flow_run
    assert stored.parameters == run.parameters
    json_format.MessageToJson(stored)  # raises on a value the JSON mapping cannot hold


@pytest.mark.parametrize("text", ["NaN", "[1, Infinity]", '{"a": -Infinity}'])
def test_results_json_with_nan_or_infinity_is_refused(stub, text):
    run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    error = refused(
        stub.SetState,
        pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_COMPLETED, result_json=text)),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "state.result.json" in error.details()
    assert stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run.state.type == (
        ST.STATE_TYPE_RUNNING
    )


def test_result_json_nesting_has_a_real_limit(stub):
    run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    too_deep = "[" * 100_000 + "]" * 100_000
    error = refused(
        stub.SetState,
        pb.SetStateRequest(
            run_id=run.id, state=state(ST.STATE_TYPE_COMPLETED, result_json=too_deep)
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nested" in error.details()
    within = "[" * 100 + "]" * 100
    done = propose(stub, run.id, state(ST.STATE_TYPE_COMPLETED, result_json=within))
    assert done.state.result.json == within
