"""ListFlowRuns and ListTaskRuns: filters, newest-first pagination with opaque tokens."""

from __future__ import annotations

import base64
import json
import uuid

import grpc
import pytest

from stateward.v1 import orchestration_pb2 as pb
from tests.support import ST, new_flow_run, new_task_run, propose


def test_flow_runs_page_newest_first_without_overlap(stub):
    flow = f"paged-{uuid.uuid4().hex[:6]}"
    created = [new_flow_run(stub, flow_name=flow).id for _ in range(25)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = stub.ListFlowRuns(
            pb.ListFlowRunsRequest(flow_names=[flow], page_size=10, page_token=token)
        )
        seen.extend(run.id for run in page.flow_runs)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == list(reversed(created))


def test_flow_run_filters_combine(stub):
    flow = f"filters-{uuid.uuid4().hex[:6]}"
    a = new_flow_run(stub, flow_name=flow, tags=["red", "big"])
    b = new_flow_run(stub, flow_name=flow, tags=["red"])
    c = new_flow_run(stub, flow_name=flow, tags=["blue"], initial=ST.STATE_TYPE_RUNNING)
    new_flow_run(stub, flow_name=flow + "-other", tags=["red"])

    def ids(**filters) -> list[str]:
        return [r.id for r in stub.ListFlowRuns(pb.ListFlowRunsRequest(**filters)).flow_runs]

    assert ids(flow_names=[flow]) == [c.id, b.id, a.id]
    assert ids(flow_names=[flow], tags=["red"]) == [b.id, a.id]
    assert ids(flow_names=[flow], tags=["red", "big"]) == [a.id]
    assert ids(flow_names=[flow], state_types=[ST.STATE_TYPE_RUNNING]) == [c.id]
    assert ids(flow_names=[flow], state_types=[ST.STATE_TYPE_RUNNING, ST.STATE_TYPE_PENDING]) == [
        c.id, b.id, a.id,
    ]  # fmt: skip
    assert ids(ids=[a.id, c.id]) == [c.id, a.id]


def test_task_run_filters(stub):
    flow_run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    other = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    t1 = new_task_run(stub, flow_run.id, task_key="load", tags=["io"])
    t2 = new_task_run(stub, flow_run.id, task_key="transform")
    new_task_run(stub, other.id, task_key="load")
    propose(stub, t2.id, ST.STATE_TYPE_RUNNING)

    def ids(**filters) -> list[str]:
        return [r.id for r in stub.ListTaskRuns(pb.ListTaskRunsRequest(**filters)).task_runs]

    assert ids(flow_run_ids=[flow_run.id]) == [t2.id, t1.id]
    assert ids(flow_run_ids=[flow_run.id], task_keys=["load"]) == [t1.id]
    assert ids(flow_run_ids=[flow_run.id], tags=["io"]) == [t1.id]
    assert ids(flow_run_ids=[flow_run.id], state_types=[ST.STATE_TYPE_RUNNING]) == [t2.id]


def test_bad_page_tokens_are_invalid_argument(stub):
    flow = f"tokens-{uuid.uuid4().hex[:6]}"
    for _ in range(3):
        new_flow_run(stub, flow_name=flow)
    first = stub.ListFlowRuns(pb.ListFlowRunsRequest(flow_names=[flow], page_size=1))
    assert first.next_page_token
    for token, words in (
        ("garbage!!", "not one this server made"),
        ("eyJ4IjogMX0", "not one this server made"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListFlowRuns(pb.ListFlowRunsRequest(flow_names=[flow], page_token=token))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("page_token") and words in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:  # same token, other filters
        stub.ListFlowRuns(
            pb.ListFlowRunsRequest(flow_names=["other"], page_token=first.next_page_token)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "other filters" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:  # a flow-run token for task runs
        stub.ListTaskRuns(pb.ListTaskRunsRequest(page_token=first.next_page_token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A forged token whose position SQLite cannot hold is refused, not an internal error.
    padded = first.next_page_token + "=" * (-len(first.next_page_token) % 4)
    payload = json.loads(base64.urlsafe_b64decode(padded))
    for rowid in (2**70, -1):
        forged = base64.urlsafe_b64encode(json.dumps({**payload, "r": rowid}).encode()).decode()
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListFlowRuns(pb.ListFlowRunsRequest(flow_names=[flow], page_token=forged))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, rowid


def test_page_size_defaults_to_100_and_is_clamped_to_1000(fresh_server):
    stub = fresh_server.stub()
    flow_run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    for _ in range(1001):
        new_task_run(stub, flow_run.id, initial=None)
    assert len(stub.ListTaskRuns(pb.ListTaskRunsRequest()).task_runs) == 100
    clamped = stub.ListTaskRuns(pb.ListTaskRunsRequest(page_size=5000))
    assert len(clamped.task_runs) == 1000 and clamped.next_page_token
    rest = stub.ListTaskRuns(
        pb.ListTaskRunsRequest(page_size=5000, page_token=clamped.next_page_token)
    )
    assert len(rest.task_runs) == 1 and not rest.next_page_token
