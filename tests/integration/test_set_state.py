"""SetState over real gRPC: a run's full life, its bookkeeping, and the guards every later rule
relies on (duplicate transitions, compare-and-set, force, terminal states, result loss)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from stateward.v1 import orchestration_pb2 as pb
from tests.support import (
    ABORT,
    ACCEPT,
    REJECT,
    ST,
    history,
    new_flow_run,
    new_task_run,
    propose,
    state,
    status_name,
)


def test_a_flow_run_lives_from_pending_to_completed(stub):
    run = new_flow_run(stub, flow_name="etl", tags=["nightly"], parameters={"x": 1})
    assert run.state.name == "Pending"
    assert run.flow_name == "etl" and run.name  # a name was made up
    assert uuid.UUID(run.id)

    running = propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    assert status_name(running.status) == "ACCEPT"
    assert running.state.type == ST.STATE_TYPE_RUNNING and running.state.name == "Running"
    done = propose(stub, run.id, state(ST.STATE_TYPE_COMPLETED, result_json='{"rows": 3}'))
    assert status_name(done.status) == "ACCEPT"
    assert done.state.result.json == '{"rows": 3}'

    stored = stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run
    assert stored.state.id == done.state.id
    assert stored.state.type == ST.STATE_TYPE_COMPLETED
    assert stored.run_count == 1
    assert stored.start_time.ToDatetime() == running.state.timestamp.ToDatetime()
    assert stored.end_time.ToDatetime() == done.state.timestamp.ToDatetime()
    expected_run_time = done.state.timestamp.ToDatetime() - running.state.timestamp.ToDatetime()
    assert stored.total_run_time.ToTimedelta() == expected_run_time
    assert stored.expected_start_time.ToDatetime() == run.state.timestamp.ToDatetime()
    assert dict(stored.parameters) == {"x": 1.0}
    assert list(stored.tags) == ["nightly"]
    assert history(stub, run.id) == ["Pending", "Running", "Completed"]


def test_states_get_server_minted_ids_and_strictly_increasing_timestamps(stub):
    run = new_flow_run(stub)
    client_id = str(uuid.uuid4())
    proposed = state(ST.STATE_TYPE_RUNNING)
    proposed.id = client_id
    proposed.timestamp.FromDatetime(datetime(2001, 1, 1, tzinfo=UTC))
    answer = propose(stub, run.id, proposed)
    assert answer.state.id != client_id and uuid.UUID(answer.state.id)
    assert answer.state.timestamp.ToDatetime().year > 2001
    for _ in range(20):
        propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    states = stub.ListStates(pb.ListStatesRequest(run_id=run.id)).states
    stamps = [s.timestamp.ToNanoseconds() for s in states]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert len({s.id for s in states}) == len(states)
    assert all(s.details.flow_run_id == run.id and not s.details.task_run_id for s in states)


def test_task_run_states_name_their_run_and_flow_run(stub):
    flow_run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    task_run = new_task_run(stub, flow_run.id)
    assert task_run.state.details.task_run_id == task_run.id
    assert task_run.state.details.flow_run_id == flow_run.id
    answer = propose(stub, task_run.id, ST.STATE_TYPE_RUNNING)
    assert answer.state.details.task_run_id == task_run.id


def test_a_run_without_initial_state_has_none(stub):
    run = new_flow_run(stub, initial=None)
    assert not run.HasField("state")
    assert history(stub, run.id) == []
    assert status_name(propose(stub, run.id, ST.STATE_TYPE_PENDING).status) == "ACCEPT"


def test_duplicate_transition_id_applies_once(stub):
    run = new_flow_run(stub)
    transition = str(uuid.uuid4())
    first = propose(stub, run.id, state(ST.STATE_TYPE_RUNNING, transition_id=transition))
    again = propose(stub, run.id, state(ST.STATE_TYPE_RUNNING, transition_id=transition))
    assert first.status == ACCEPT
    assert again.status == REJECT
    assert again.state.id == first.state.id  # null reject: the current state comes back
    assert "already applied" in again.reason
    assert history(stub, run.id) == ["Pending", "Running"]


def test_duplicate_transition_id_applies_once_even_when_forced(stub):
    run = new_flow_run(stub)
    transition = str(uuid.uuid4())
    propose(stub, run.id, state(ST.STATE_TYPE_RUNNING, transition_id=transition), force=True)
    again = propose(
        stub, run.id, state(ST.STATE_TYPE_RUNNING, transition_id=transition), force=True
    )
    assert again.status == REJECT
    assert history(stub, run.id) == ["Pending", "Running"]


def test_expected_state_id_is_compare_and_set(stub):
    run = new_flow_run(stub)
    current = run.state.id
    won = propose(stub, run.id, ST.STATE_TYPE_RUNNING, expected_state_id=current)
    lost = propose(stub, run.id, ST.STATE_TYPE_COMPLETED, expected_state_id=current)
    assert won.status == ACCEPT
    assert lost.status == ABORT
    assert current in lost.reason and won.state.id in lost.reason
    assert lost.state.id == won.state.id
    assert history(stub, run.id) == ["Pending", "Running"]


def test_expected_state_id_empty_means_no_state_yet(stub):
    run = new_flow_run(stub, initial=None)
    first = propose(stub, run.id, ST.STATE_TYPE_PENDING, expected_state_id="")
    second = propose(stub, run.id, ST.STATE_TYPE_PENDING, expected_state_id="")
    assert first.status == ACCEPT
    assert second.status == ABORT


def test_finished_runs_cannot_be_cancelled_paused_or_crashed(stub):
    for terminal in (ST.STATE_TYPE_COMPLETED, ST.STATE_TYPE_FAILED, ST.STATE_TYPE_CANCELLED,
                     ST.STATE_TYPE_CRASHED):  # fmt: skip
        for target in (ST.STATE_TYPE_CANCELLING, ST.STATE_TYPE_PAUSED, ST.STATE_TYPE_CRASHED):
            for make in (new_flow_run, new_task_run):
                run = make(stub, initial=terminal)
                answer = propose(stub, run.id, target)
                assert answer.status == ABORT, (terminal, target, make.__name__)
                assert "already finished" in answer.reason


def test_forcing_skips_the_policy_but_keeps_bookkeeping(stub):
    run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    propose(stub, run.id, ST.STATE_TYPE_COMPLETED)
    refused = propose(stub, run.id, ST.STATE_TYPE_CRASHED)
    forced = propose(stub, run.id, ST.STATE_TYPE_CRASHED, force=True)
    assert refused.status == ABORT
    assert forced.status == ACCEPT and forced.state.type == ST.STATE_TYPE_CRASHED
    stored = stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run
    assert stored.state.id == forced.state.id
    assert stored.end_time.ToDatetime() == forced.state.timestamp.ToDatetime()


def test_a_completed_flow_result_is_never_lost(stub):
    run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    done = propose(stub, run.id, state(ST.STATE_TYPE_COMPLETED, result_json="42"))
    for force in (False, True):
        back = propose(stub, run.id, ST.STATE_TYPE_RUNNING, force=force)
        assert back.status == REJECT and back.state.id == done.state.id
        bare = propose(stub, run.id, ST.STATE_TYPE_COMPLETED, force=force)
        assert bare.status == REJECT and "result" in bare.reason
    again = propose(stub, run.id, state(ST.STATE_TYPE_COMPLETED, result_json="43"))
    assert again.status == REJECT and again.state.id == done.state.id  # 3.2: it stays completed
    forced = propose(stub, run.id, state(ST.STATE_TYPE_COMPLETED, result_json="43"), force=True)
    assert forced.status == ACCEPT
    assert history(stub, run.id) == ["Running", "Completed", "Completed"]


def test_a_completed_task_result_is_final(stub):
    run = new_task_run(stub, initial=ST.STATE_TYPE_RUNNING)
    done = propose(stub, run.id, state(ST.STATE_TYPE_COMPLETED, result_json='"x"'))
    for target in (ST.STATE_TYPE_FAILED, ST.STATE_TYPE_COMPLETED, ST.STATE_TYPE_PENDING):
        for force in (False, True):
            answer = propose(stub, run.id, target, force=force)
            assert answer.status == REJECT and answer.state.id == done.state.id


def test_rerunning_a_finished_flow_keeps_its_run_count(stub):
    run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    propose(stub, run.id, ST.STATE_TYPE_FAILED)
    assert propose(stub, run.id, ST.STATE_TYPE_SCHEDULED).status == ACCEPT
    stored = stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run
    assert stored.run_count == 1
    assert not stored.HasField("end_time")  # cleared on leaving the terminal state
    rerun = propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    assert rerun.state.name == "Rerunning"
    assert stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run.run_count == 2


def test_rerunning_a_finished_task_resets_its_run_count(stub):
    run = new_task_run(stub, initial=ST.STATE_TYPE_RUNNING)
    propose(stub, run.id, ST.STATE_TYPE_FAILED)
    assert stub.GetTaskRun(pb.GetTaskRunRequest(id=run.id)).task_run.run_count == 1
    assert propose(stub, run.id, ST.STATE_TYPE_PENDING).status == ACCEPT
    assert stub.GetTaskRun(pb.GetTaskRunRequest(id=run.id)).task_run.run_count == 0
    again = propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    assert again.state.name == "Running"
    assert stub.GetTaskRun(pb.GetTaskRunRequest(id=run.id)).task_run.run_count == 1


def test_a_scheduled_state_without_time_is_scheduled_now(stub):
    run = new_flow_run(stub, initial=None)
    before = datetime.now(UTC) - timedelta(seconds=1)
    answer = propose(stub, run.id, ST.STATE_TYPE_SCHEDULED)
    scheduled = answer.state.details.scheduled_time.ToDatetime(tzinfo=UTC)
    assert before <= scheduled <= datetime.now(UTC) + timedelta(seconds=1)
    stored = stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run
    assert stored.next_scheduled_start_time.ToDatetime(tzinfo=UTC) == scheduled
    assert stored.expected_start_time.ToDatetime(tzinfo=UTC) == scheduled
    propose(stub, run.id, ST.STATE_TYPE_PENDING)
    stored = stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run
    assert not stored.HasField("next_scheduled_start_time")
    assert stored.expected_start_time.ToDatetime(tzinfo=UTC) == scheduled  # set once


def test_unstarted_run_entering_terminal_state_gets_a_start_time(stub):
    run = new_flow_run(stub)
    answer = propose(stub, run.id, ST.STATE_TYPE_CANCELLED)
    stored = stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run
    assert stored.start_time.ToDatetime() == answer.state.timestamp.ToDatetime()
    assert stored.run_count == 0


def test_written_says_whether_a_state_was_written(stub):
    from tests.support import WAIT

    run = new_flow_run(stub, retry_policy={"retries": 1})
    assert propose(stub, run.id, ST.STATE_TYPE_RUNNING).written  # ACCEPT
    replaced = propose(stub, run.id, ST.STATE_TYPE_FAILED)
    assert replaced.status == REJECT and replaced.written  # AwaitingRetry in its place
    null = propose(stub, run.id, ST.STATE_TYPE_PAUSED)  # only a RUNNING run can pause
    assert null.status == REJECT and not null.written
    waiting = new_flow_run(stub, initial=None)
    later = datetime.now(UTC) + timedelta(minutes=5)
    propose(stub, waiting.id, state(ST.STATE_TYPE_SCHEDULED, scheduled_time=later))
    wait = propose(stub, waiting.id, ST.STATE_TYPE_RUNNING)
    assert wait.status == WAIT and not wait.written
    aborted = propose(stub, waiting.id, ST.STATE_TYPE_RUNNING, expected_state_id=run.id)
    assert aborted.status == ABORT and not aborted.written
