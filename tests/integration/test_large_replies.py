"""Replies and memory bounded by bytes, not only by count: a page of runs or states stops at a
byte budget and says there is more, the clients read every page, and the server's run cache
forgets the oldest runs past its byte bound."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from stateward.client import Client
from stateward.runs import RunKind
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from stateward_service.model import RunRecord
from stateward_service.orchestrator import RUN_CACHE_BYTES, Orchestrator
from stateward_service.store import Store
from stateward_service.store.pages import STATES, digest, encode_page_token
from tests.support import ST, new_flow_run, propose, state

MIB = 1024 * 1024
CLIENT_LIMIT = 4 * MIB  # what a gRPC client receives by default


def test_run_pages_stop_at_a_byte_budget_and_clients_read_every_page(server):
    flow = f"heavy-{uuid.uuid4().hex[:6]}"
    stub = server.stub()
    created = []
    for index in range(6):  # 6 MiB of parameters: more than one reply may hold
        run = runs_pb2.FlowRun(flow_name=flow)
        run.parameters.update({"blob": str(index) * MIB})
        created.append(stub.CreateFlowRun(pb.CreateFlowRunRequest(flow_run=run)).flow_run.id)
    seen: list[str] = []
    request = pb.ListFlowRunsRequest(flow_names=[flow])
    pages = 0
    while True:
        page = stub.ListFlowRuns(request)
        assert page.ByteSize() < CLIENT_LIMIT
        pages += 1
        seen.extend(run.id for run in page.flow_runs)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert pages > 1 and seen == list(reversed(created))
    with Client(server.target) as client:
        listed = [run.id for run in client.list_flow_runs(flow_names=[flow])]
    assert listed == list(reversed(created))


def test_state_pages_stop_at_a_byte_budget_and_clients_read_every_page(server):
    stub = server.stub()
    run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    for index in range(60):  # 6 MB of messages
        propose(stub, run.id, state(ST.STATE_TYPE_RUNNING, message=f"{index:03}" + "m" * 99_990))
    whole = stub.ListStates(pb.ListStatesRequest(run_id=run.id))
    assert whole.ByteSize() < CLIENT_LIMIT and whole.next_page_token
    few = stub.ListStates(pb.ListStatesRequest(run_id=run.id, page_size=5))
    assert len(few.states) == 5 and few.next_page_token
    rest = stub.ListStates(
        pb.ListStatesRequest(run_id=run.id, page_size=5, page_token=few.next_page_token)
    )
    assert rest.states[0].id not in {s.id for s in few.states}
    with Client(server.target) as client:
        history = client.list_states(run.id)
    assert len(history) == 61
    assert [s.message[:3] for s in history[1:]] == [f"{index:03}" for index in range(60)]
    stamps = [s.timestamp for s in history]
    assert stamps == sorted(stamps)


def test_a_states_page_token_is_for_its_own_run(server):
    stub = server.stub()
    one = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    other = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    for _ in range(3):
        propose(stub, one.id, ST.STATE_TYPE_RUNNING)
    page = stub.ListStates(pb.ListStatesRequest(run_id=one.id, page_size=1))
    for request in (
        pb.ListStatesRequest(run_id=other.id, page_token=page.next_page_token),
        pb.ListStatesRequest(run_id=one.id, page_size=-1),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListStates(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_states_page_token_from_before_schema_9_is_refused_not_read_as_the_end(server):
    """Before schema 9 a page token of states held a state's timestamp (µs) for the run alone;
    read on SQLite as a position in today's order (the state's log sequence) it would end the
    listing early, silently. Both stores fingerprint the order, so PostgreSQL refuses it too."""
    stub = server.stub()
    run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    first = stub.ListStates(pb.ListStatesRequest(run_id=run.id)).states[0]
    position = first.timestamp.seconds * 1_000_000 + first.timestamp.nanos // 1_000
    old_token = encode_page_token(position, STATES, digest(run.id))
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListStates(pb.ListStatesRequest(run_id=run.id, page_token=old_token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start again without a token" in caught.value.details()


def test_the_run_cache_is_bounded_by_bytes(tmp_path: Path):
    store = Store(tmp_path / "cache.db")
    orchestrator = Orchestrator(store)
    try:
        ids = []
        for _ in range(100):  # 100 MiB of parameters
            record = RunRecord(
                kind=RunKind.FLOW_RUN,
                id=str(uuid.uuid4()),
                name="big",
                created=datetime.now(UTC),
                flow_name="big",
                parameters='{"blob": "' + "x" * MIB + '"}',
            )
            ids.append(orchestrator.create_run(record, None).id)
        assert orchestrator._runs.bytes <= RUN_CACHE_BYTES
        assert orchestrator._runs.cached(ids[-1]) is not None  # the newest is kept
        assert orchestrator._runs.cached(ids[0]) is None
        assert orchestrator.get_run(ids[0]).parameters.startswith('{"blob"')  # read back
    finally:
        store.close()
