"""The cases of the flow-run and task-run policies (spec sections 3 and 4) over real gRPC, with
named states and details; the plain type-by-type matrix is in test_transition_matrix.py."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from tests.support import (
    ABORT,
    ACCEPT,
    REJECT,
    ST,
    WAIT,
    history,
    new_flow_run,
    new_task_run,
    propose,
    running_server,
    state,
    wait_until,
)


def now() -> datetime:
    return datetime.now(UTC)


def flow_run_in(stub, type_: int, name: str = "", **details) -> runs_pb2.FlowRun:
    """A flow run whose current state was forced to the given one."""
    run = new_flow_run(stub, initial=None)
    propose(stub, run.id, state(type_, name, **details), force=True)
    return run


def get_flow_run(stub, run_id: str) -> runs_pb2.FlowRun:
    return stub.GetFlowRun(pb.GetFlowRunRequest(id=run_id)).flow_run


def get_task_run(stub, run_id: str) -> runs_pb2.TaskRun:
    return stub.GetTaskRun(pb.GetTaskRunRequest(id=run_id)).task_run


# --- flow runs: section 3 ------------------------------------------------------------------------


def test_out_of_cancelling_only_cancelled(stub):
    run = flow_run_in(stub, ST.STATE_TYPE_CANCELLING)
    for target in (ST.STATE_TYPE_COMPLETED, ST.STATE_TYPE_FAILED, ST.STATE_TYPE_RUNNING):
        answer = propose(stub, run.id, target)
        assert answer.status == REJECT and answer.state.type == ST.STATE_TYPE_CANCELLING
    assert propose(stub, run.id, ST.STATE_TYPE_CANCELLED).status == ACCEPT


@pytest.mark.parametrize("initial", [None, "Scheduled", "Late"])
def test_cancelling_an_unstarted_flow_run_cancels_it(stub, initial):
    if initial is None:
        run = new_flow_run(stub, initial=None)
    else:
        run = flow_run_in(stub, ST.STATE_TYPE_SCHEDULED, initial)
    answer = propose(stub, run.id, state(ST.STATE_TYPE_CANCELLING, message="user asked"))
    assert answer.status == REJECT
    assert answer.state.type == ST.STATE_TYPE_CANCELLED and answer.state.message == "user asked"
    assert get_flow_run(stub, run.id).state.type == ST.STATE_TYPE_CANCELLED


@pytest.mark.parametrize(
    "initial, name",
    [
        (ST.STATE_TYPE_SCHEDULED, "AwaitingRetry"),
        (ST.STATE_TYPE_PENDING, ""),
        (ST.STATE_TYPE_RUNNING, ""),
        (ST.STATE_TYPE_PAUSED, ""),
    ],
)
def test_cancelling_an_owned_flow_run_is_accepted(stub, initial, name):
    run = flow_run_in(stub, initial, name)
    answer = propose(stub, run.id, ST.STATE_TYPE_CANCELLING)
    assert answer.status == ACCEPT and answer.state.type == ST.STATE_TYPE_CANCELLING


@pytest.mark.parametrize(
    "target",
    [
        ST.STATE_TYPE_CANCELLED,
        ST.STATE_TYPE_FAILED,
        ST.STATE_TYPE_COMPLETED,
        ST.STATE_TYPE_SCHEDULED,
        ST.STATE_TYPE_RUNNING,
    ],
)
def test_a_flow_run_completed_with_a_result_stays_completed(stub, target):
    """3.2: a cancel (or any proposal) racing a completion that stored a result is not written
    after it; only a forced proposal may still move it to another final state."""
    run = flow_run_in(stub, ST.STATE_TYPE_RUNNING)
    done = propose(stub, run.id, state(ST.STATE_TYPE_COMPLETED, result_json='"ok"'))
    answer = propose(stub, run.id, state(target, result_json='"other"'))
    assert answer.status == REJECT and answer.state.id == done.state.id
    assert "stored result" in answer.reason
    assert history(stub, run.id) == ["Running", "Completed"]
    assert propose(stub, run.id, ST.STATE_TYPE_CANCELLED, force=True).status == ACCEPT


def test_a_second_start_is_aborted_but_a_pending_rename_is_not(stub):
    run = new_flow_run(stub)
    again = propose(stub, run.id, ST.STATE_TYPE_PENDING)
    assert again.status == ABORT and "second time" in again.reason
    renamed = propose(stub, run.id, state(ST.STATE_TYPE_PENDING, "Submitted"))
    assert renamed.status == ACCEPT and renamed.state.name == "Submitted"
    assert propose(stub, run.id, state(ST.STATE_TYPE_PENDING, "Submitted")).status == ABORT
    for initial in (ST.STATE_TYPE_RUNNING, ST.STATE_TYPE_CANCELLED):
        other = flow_run_in(stub, initial)
        assert propose(stub, other.id, ST.STATE_TYPE_PENDING).status == ABORT
    # From CANCELLING, the earlier rule (only CANCELLED follows) answers first: a null reject.
    cancelling = flow_run_in(stub, ST.STATE_TYPE_CANCELLING)
    assert propose(stub, cancelling.id, ST.STATE_TYPE_PENDING).status == REJECT


def test_late_only_from_scheduled_and_only_once(stub):
    run = flow_run_in(stub, ST.STATE_TYPE_SCHEDULED)
    late = propose(stub, run.id, state(ST.STATE_TYPE_SCHEDULED, "Late"))
    assert late.status == ACCEPT and late.state.name == "Late"
    again = propose(stub, run.id, state(ST.STATE_TYPE_SCHEDULED, "Late"))
    assert again.status == REJECT and again.state.id == late.state.id
    pending = new_flow_run(stub)
    assert propose(stub, pending.id, state(ST.STATE_TYPE_SCHEDULED, "Late")).status == REJECT
    fresh = new_flow_run(stub, initial=None)
    assert propose(stub, fresh.id, state(ST.STATE_TYPE_SCHEDULED, "Late")).status == REJECT


def test_pausing_needs_a_running_run_and_fires_each_key_once(stub):
    fresh = new_flow_run(stub, initial=None)
    assert propose(stub, fresh.id, ST.STATE_TYPE_PAUSED).status == ABORT
    pending = new_flow_run(stub)
    assert propose(stub, pending.id, ST.STATE_TYPE_PAUSED).status == REJECT

    run = flow_run_in(stub, ST.STATE_TYPE_RUNNING)
    first = propose(stub, run.id, state(ST.STATE_TYPE_PAUSED, pause_key="approve"))
    assert first.status == ACCEPT
    resumed = propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    assert resumed.status == ACCEPT and resumed.state.name == "Running"  # not a rerun
    repeat = propose(stub, run.id, state(ST.STATE_TYPE_PAUSED, pause_key="approve"))
    assert repeat.status == REJECT and repeat.state.type == ST.STATE_TYPE_RUNNING
    other_key = propose(stub, run.id, state(ST.STATE_TYPE_PAUSED, pause_key="second"))
    assert other_key.status == ACCEPT
    assert get_flow_run(stub, run.id).run_count == 1  # resuming is not a new run
    assert history(stub, run.id) == ["Running", "Paused", "Running", "Paused"]


def test_a_paused_run_resumes_only_to_allowed_states(stub):
    run = flow_run_in(stub, ST.STATE_TYPE_RUNNING)
    propose(stub, run.id, ST.STATE_TYPE_PAUSED)
    assert propose(stub, run.id, ST.STATE_TYPE_PENDING).status == REJECT
    assert propose(stub, run.id, ST.STATE_TYPE_SCHEDULED).status == ACCEPT


@pytest.fixture(scope="module")
def unswept_stub(tmp_path_factory: pytest.TempPathFactory):
    """A server whose expired-pause sweep never comes by: the rule alone answers."""
    args = ["--pause-expiry-interval", "3600"]
    with running_server(tmp_path_factory.mktemp("unswept"), args=args) as server:
        yield server.stub()


def test_an_expired_pause_cannot_resume(unswept_stub):
    stub = unswept_stub
    run = flow_run_in(stub, ST.STATE_TYPE_RUNNING)
    expired = now() - timedelta(seconds=1)
    propose(stub, run.id, state(ST.STATE_TYPE_PAUSED, pause_timeout=expired), force=True)
    answer = propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    assert answer.status == REJECT and answer.state.type == ST.STATE_TYPE_FAILED
    assert "never resumed" in answer.state.message


def test_pending_inherits_the_scheduled_time_and_running_waits_for_it(stub):
    later = now() + timedelta(seconds=120)
    run = new_flow_run(stub, initial=None)
    propose(stub, run.id, state(ST.STATE_TYPE_SCHEDULED, scheduled_time=later))
    pending = propose(stub, run.id, ST.STATE_TYPE_PENDING)
    assert pending.state.details.scheduled_time.ToDatetime(tzinfo=UTC) == later
    wait = propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    assert wait.status == WAIT
    assert 110 < wait.delay_seconds <= 120
    assert wait.state.id == pending.state.id
    assert history(stub, run.id) == ["Scheduled", "Pending"]


def test_failed_flow_runs_with_retries_left_await_a_retry(stub):
    run = new_flow_run(
        stub, retry_policy=runs_pb2.RetryPolicy(retries=1, retry_delay_seconds=[0.0])
    )
    propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    failed = propose(stub, run.id, state(ST.STATE_TYPE_FAILED, message="oops", result_json='"e"'))
    assert failed.status == REJECT
    assert (failed.state.type, failed.state.name) == (ST.STATE_TYPE_SCHEDULED, "AwaitingRetry")
    assert failed.state.message == "oops" and failed.state.result.json == '"e"'
    retry = propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    assert retry.status == ACCEPT and retry.state.name == "Retrying"
    final = propose(stub, run.id, state(ST.STATE_TYPE_FAILED, message="again"))
    assert final.status == ACCEPT and final.state.type == ST.STATE_TYPE_FAILED
    assert history(stub, run.id) == ["Pending", "Running", "AwaitingRetry", "Retrying", "Failed"]
    assert get_flow_run(stub, run.id).run_count == 2


def test_unretriable_failures_are_final(stub):
    run = new_flow_run(stub, retry_policy=runs_pb2.RetryPolicy(retries=3))
    propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    answer = propose(stub, run.id, state(ST.STATE_TYPE_FAILED, unretriable=True))
    assert answer.status == ACCEPT and answer.state.type == ST.STATE_TYPE_FAILED


def test_the_retry_delay_puts_awaiting_retry_in_the_future(stub):
    run = new_flow_run(stub, retry_policy=runs_pb2.RetryPolicy(retries=1, retry_delay_seconds=[30]))
    propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    before = now()
    awaiting = propose(stub, run.id, ST.STATE_TYPE_FAILED).state
    scheduled = awaiting.details.scheduled_time.ToDatetime(tzinfo=UTC)
    assert before + timedelta(seconds=29) < scheduled < now() + timedelta(seconds=31)
    early = propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    assert early.status == WAIT and 25 < early.delay_seconds <= 30


# --- task runs: section 4 ------------------------------------------------------------------------


def test_a_cached_result_completes_a_later_task_run(stub):
    key = f"key-{uuid.uuid4()}"
    first = new_task_run(stub)
    propose(stub, first.id, state(ST.STATE_TYPE_RUNNING, cache_key=key))
    done = propose(stub, first.id, state(ST.STATE_TYPE_COMPLETED, cache_key=key, result_json="[1]"))
    assert done.status == ACCEPT

    second = new_task_run(stub)
    hit = propose(stub, second.id, state(ST.STATE_TYPE_RUNNING, cache_key=key))
    assert hit.status == REJECT
    assert (hit.state.type, hit.state.name) == (ST.STATE_TYPE_COMPLETED, "Cached")
    assert hit.state.result.json == "[1]" and hit.state.id != done.state.id
    assert history(stub, second.id) == ["Pending", "Cached"]

    refreshed = new_task_run(stub)
    fresh = propose(
        stub, refreshed.id, state(ST.STATE_TYPE_RUNNING, cache_key=key, refresh_cache=True)
    )
    assert fresh.status == ACCEPT and fresh.state.type == ST.STATE_TYPE_RUNNING
    other_key = new_task_run(stub)
    miss = propose(stub, other_key.id, state(ST.STATE_TYPE_RUNNING, cache_key=key + "-other"))
    assert miss.status == ACCEPT


def test_an_expired_cache_entry_is_not_used(stub):
    key = f"expiring-{uuid.uuid4()}"
    first = new_task_run(stub, initial=ST.STATE_TYPE_RUNNING)
    expired = now() - timedelta(seconds=1)
    propose(stub, first.id, state(ST.STATE_TYPE_COMPLETED, cache_key=key, cache_expiration=expired))
    second = new_task_run(stub)
    assert propose(stub, second.id, state(ST.STATE_TYPE_RUNNING, cache_key=key)).status == ACCEPT
    valid = now() + timedelta(hours=1)
    propose(stub, second.id, state(ST.STATE_TYPE_COMPLETED, cache_key=key, cache_expiration=valid))
    third = new_task_run(stub)
    hit = propose(stub, third.id, state(ST.STATE_TYPE_RUNNING, cache_key=key))
    assert hit.state.name == "Cached"
    assert hit.state.details.cache_expiration.ToDatetime(tzinfo=UTC) == valid


def test_tasks_start_only_while_their_flow_run_is_running(stub):
    flow_run = new_flow_run(stub)  # Pending
    task_run = new_task_run(stub, flow_run.id)
    refused = propose(stub, task_run.id, ST.STATE_TYPE_RUNNING)
    assert refused.status == ABORT and "Pending" in refused.reason
    propose(stub, flow_run.id, ST.STATE_TYPE_RUNNING)
    assert propose(stub, task_run.id, ST.STATE_TYPE_RUNNING).status == ACCEPT


def test_tasks_of_a_paused_flow_run_are_parked_not_ready(stub):
    flow_run = flow_run_in(stub, ST.STATE_TYPE_RUNNING)
    timeout = now() + timedelta(minutes=10)
    propose(stub, flow_run.id, state(ST.STATE_TYPE_PAUSED, pause_timeout=timeout))
    task_run = new_task_run(stub, flow_run.id)
    parked = propose(stub, task_run.id, ST.STATE_TYPE_RUNNING)
    assert parked.status == REJECT
    assert (parked.state.type, parked.state.name) == (ST.STATE_TYPE_PAUSED, "NotReady")
    assert parked.state.details.pause_timeout.ToDatetime(tzinfo=UTC) == timeout
    propose(stub, flow_run.id, ST.STATE_TYPE_RUNNING)
    started = propose(stub, task_run.id, ST.STATE_TYPE_RUNNING)
    assert started.status == ACCEPT and started.state.name == "Running"
    assert get_task_run(stub, task_run.id).run_count == 1


def test_task_retries_use_the_delay_list_and_rename_reruns(stub):
    run = new_task_run(
        stub, retry_policy=runs_pb2.RetryPolicy(retries=3, retry_delay_seconds=[0.2, 0.2, 60])
    )
    propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    delays = []
    for _ in range(3):
        before = now()
        awaiting = propose(stub, run.id, ST.STATE_TYPE_FAILED)
        assert awaiting.state.name == "AwaitingRetry"
        scheduled = awaiting.state.details.scheduled_time.ToDatetime(tzinfo=UTC)
        delays.append((scheduled - before).total_seconds())
        if delays[-1] < 30:  # propose Running until the delay has passed (WAIT before)
            answers: list = []

            def decided(answers: list = answers) -> bool:
                answers.append(propose(stub, run.id, ST.STATE_TYPE_RUNNING))
                return answers[-1].status != WAIT

            wait_until(decided, what="the retry delay to pass")
            assert answers[-1].state.name == "Retrying"
    # Each delay from the list, give or take the call's own latency.
    assert all(0 <= got - wanted < 5 for got, wanted in zip(delays, [0.2, 0.2, 60], strict=True))
    assert propose(stub, run.id, ST.STATE_TYPE_RUNNING).status == WAIT
    propose(stub, run.id, ST.STATE_TYPE_RUNNING, force=True)  # skip the wait
    assert propose(stub, run.id, ST.STATE_TYPE_FAILED).state.name == "Failed"
    assert history(stub, run.id) == [
        "Pending", "Running", "AwaitingRetry", "Retrying", "AwaitingRetry", "Retrying",
        "AwaitingRetry", "Running", "Failed",
    ]  # fmt: skip


def test_retry_jitter_never_shortens_the_delay(stub):
    for _ in range(5):
        run = new_task_run(
            stub,
            retry_policy=runs_pb2.RetryPolicy(
                retries=1, retry_delay_seconds=[10], retry_jitter_factor=0.5
            ),
        )
        propose(stub, run.id, ST.STATE_TYPE_RUNNING)
        before = now()
        awaiting = propose(stub, run.id, ST.STATE_TYPE_FAILED).state
        delay = (awaiting.details.scheduled_time.ToDatetime(tzinfo=UTC) - before).total_seconds()
        assert 10 <= delay <= 15.5


def test_a_rerun_of_a_finished_task_is_rerunning_after_one_run(stub):
    run = new_task_run(stub, initial=ST.STATE_TYPE_RUNNING)
    propose(stub, run.id, ST.STATE_TYPE_COMPLETED)  # no result: may rerun
    propose(stub, run.id, ST.STATE_TYPE_SCHEDULED)
    assert propose(stub, run.id, ST.STATE_TYPE_RUNNING).state.name == "Running"  # count reset
    flow_run = flow_run_in(stub, ST.STATE_TYPE_RUNNING)
    propose(stub, flow_run.id, ST.STATE_TYPE_FAILED)
    propose(stub, flow_run.id, ST.STATE_TYPE_SCHEDULED)
    assert propose(stub, flow_run.id, ST.STATE_TYPE_RUNNING).state.name == "Rerunning"


def test_scheduled_tasks_wait_for_their_time(stub):
    run = new_task_run(stub, initial=None)
    later = now() + timedelta(seconds=60)
    propose(stub, run.id, state(ST.STATE_TYPE_SCHEDULED, scheduled_time=later))
    pending = propose(stub, run.id, ST.STATE_TYPE_PENDING)
    assert pending.state.details.scheduled_time.ToDatetime(tzinfo=UTC) == later
    assert propose(stub, run.id, ST.STATE_TYPE_RUNNING).status == WAIT


# --- subflows ------------------------------------------------------------------------------------


def test_a_subflow_mirrors_its_states_onto_its_parent_task_run(stub):
    parent = flow_run_in(stub, ST.STATE_TYPE_RUNNING)
    stand_in = new_task_run(stub, parent.id, task_key="child-flow", initial=None)
    child = new_flow_run(stub, flow_name="child", parent_task_run_id=stand_in.id)
    propose(stub, child.id, ST.STATE_TYPE_RUNNING)
    done = propose(stub, child.id, state(ST.STATE_TYPE_COMPLETED, result_json=json.dumps("ok")))
    assert history(stub, stand_in.id) == ["Pending", "Running", "Completed"]
    task_run = get_task_run(stub, stand_in.id)
    assert task_run.child_flow_run_id == child.id
    assert task_run.state.result.json == '"ok"' and task_run.run_count == 1
    assert task_run.state.details.child_flow_run_id == child.id
    assert task_run.state.id != done.state.id
    assert get_flow_run(stub, child.id).parent_task_run_id == stand_in.id
