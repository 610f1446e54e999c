"""Group commit and ExecuteStream at their edges: one failing call in a group fails alone, the
same proposal twice in one group is written once, creates of one id in one group make one run,
an oversized call ends its stream alone, a client that goes away mid-group leaves each call
written whole or not at all, and every answer survives a SIGKILL right after it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import orchestration_pb2_grpc, runs_pb2
from tests.support import ST, ServerProcess, new_flow_run, state


def stream_all(server: ServerProcess, requests: list[pb.ExecuteStreamRequest]) -> list[Any]:
    with grpc.insecure_channel(server.target) as channel:
        stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
        return list(stub.ExecuteStream(iter(requests)))


def test_the_same_proposal_twice_in_one_group_is_written_once(server: ServerProcess) -> None:
    stub = server.stub()
    runs = [new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING) for _ in range(8)]
    requests = []
    for index, run in enumerate(runs):
        proposed = state(ST.STATE_TYPE_COMPLETED, transition_id=str(uuid.uuid4()))
        for copy in range(3):
            requests.append(
                pb.ExecuteStreamRequest(
                    call_id=index * 10 + copy + 1,
                    set_state=pb.SetStateRequest(run_id=run.id, state=proposed),
                )
            )
    answers = {answer.call_id: answer for answer in stream_all(server, requests)}
    assert len(answers) == 24
    for index, run in enumerate(runs):
        got = [answers[index * 10 + copy + 1] for copy in range(3)]
        assert all(a.WhichOneof("result") == "set_state" for a in got), got
        statuses = sorted(a.set_state.status for a in got)
        assert statuses == [pb.SET_STATE_STATUS_ACCEPT] + [pb.SET_STATE_STATUS_REJECT] * 2, got
        stored = stub.ListStates(pb.ListStatesRequest(run_id=run.id)).states
        assert [s.type for s in stored] == [ST.STATE_TYPE_RUNNING, ST.STATE_TYPE_COMPLETED]


def test_a_failing_call_in_a_group_fails_alone(server: ServerProcess) -> None:
    stub = server.stub()
    runs = [new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING) for _ in range(16)]
    requests = []
    for index, run in enumerate(runs):
        requests.append(
            pb.ExecuteStreamRequest(
                call_id=2 * index + 1,
                set_state=pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_COMPLETED)),
            )
        )
        bad = pb.SetStateRequest(run_id=str(uuid.uuid4()), state=state(ST.STATE_TYPE_RUNNING))
        if index % 3 == 0:
            bad = pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_RUNNING))
            bad.expected_state_id = str(uuid.uuid4())
        requests.append(pb.ExecuteStreamRequest(call_id=2 * index + 2, set_state=bad))
    answers = {answer.call_id: answer for answer in stream_all(server, requests)}
    for index, run in enumerate(runs):
        assert answers[2 * index + 1].set_state.status == pb.SET_STATE_STATUS_ACCEPT
        stored = stub.ListStates(pb.ListStatesRequest(run_id=run.id)).states
        assert stored[-1].type == ST.STATE_TYPE_COMPLETED
        assert stored[-1].id == answers[2 * index + 1].set_state.state.id


def test_an_oversized_call_ends_only_its_stream(server: ServerProcess) -> None:
    stub = server.stub()
    run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    huge = state(ST.STATE_TYPE_COMPLETED, result_json='"' + "x" * (8 << 20) + '"')
    requests = [
        pb.ExecuteStreamRequest(call_id=1, set_state=pb.SetStateRequest(run_id=run.id, state=huge))
    ]
    with pytest.raises(grpc.RpcError) as raised:
        stream_all(server, requests)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert new_flow_run(stub).id  # the server goes on serving
    assert stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run.state.type == (
        ST.STATE_TYPE_RUNNING
    )


def test_a_stream_cancelled_mid_group_leaves_each_call_whole(server: ServerProcess) -> None:
    stub = server.stub()
    runs = [new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING) for _ in range(64)]
    requests = [
        pb.ExecuteStreamRequest(
            call_id=index + 1,
            set_state=pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_COMPLETED)),
        )
        for index, run in enumerate(runs)
    ]
    with grpc.insecure_channel(server.target) as channel:
        responses = orchestration_pb2_grpc.OrchestrationServiceStub(channel).ExecuteStream(
            iter(requests)
        )
        first = next(responses)
        responses.cancel()
    assert first.set_state.status == pb.SET_STATE_STATUS_ACCEPT
    for run in runs:  # each call either wrote its state whole or not at all
        stored = stub.ListStates(pb.ListStatesRequest(run_id=run.id)).states
        assert [s.type for s in stored] in (
            [ST.STATE_TYPE_RUNNING],
            [ST.STATE_TYPE_RUNNING, ST.STATE_TYPE_COMPLETED],
        )
    again = [
        pb.ExecuteStreamRequest(
            call_id=1,
            set_state=pb.SetStateRequest(run_id=runs[-1].id, state=state(ST.STATE_TYPE_FAILED)),
        )
    ]
    (answer,) = stream_all(server, again)  # the server goes on answering streams
    assert answer.WhichOneof("result") == "set_state"
    assert "Traceback" not in server.output()


def test_creates_of_one_id_in_one_group_make_one_run(server: ServerProcess) -> None:
    stub = server.stub()
    given = str(uuid.uuid4())
    futures = []
    for index in range(24):
        run = runs_pb2.FlowRun(flow_name="same-id", id=given if index % 2 else "")
        run.state.CopyFrom(state(ST.STATE_TYPE_PENDING))
        futures.append(stub.CreateFlowRun.future(pb.CreateFlowRunRequest(flow_run=run)))
    made, refused = 0, 0
    for index, future in enumerate(futures):
        try:
            future.result(timeout=60)
            made += 1
        except grpc.RpcError as error:
            assert index % 2 and error.code() is grpc.StatusCode.ALREADY_EXISTS, error
            refused += 1
    assert (made, refused) == (13, 11)
    assert len(stub.ListStates(pb.ListStatesRequest(run_id=given)).states) == 1


def test_every_answer_survives_a_kill_right_after_it(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "killed.db").start()
    try:
        stub = server.stub()
        runs = [new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING) for _ in range(200)]
        requests = [
            pb.ExecuteStreamRequest(
                call_id=index + 1,
                set_state=pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_COMPLETED)),
            )
            for index, run in enumerate(runs)
        ]
        answered: dict[str, str] = {}
        with grpc.insecure_channel(server.target) as channel:
            responses = orchestration_pb2_grpc.OrchestrationServiceStub(channel).ExecuteStream(
                iter(requests)
            )
            for answer in responses:
                answered[runs[answer.call_id - 1].id] = answer.set_state.state.id
                if len(answered) == 50:
                    server.kill()
                    break
    finally:
        server.kill()  # (a no-op when already killed)
    assert len(answered) == 50
    server.restart()
    try:
        stub = server.stub()
        for run_id, state_id in answered.items():
            stored = stub.ListStates(pb.ListStatesRequest(run_id=run_id)).states
            assert stored[-1].id == state_id
    finally:
        server.stop()
