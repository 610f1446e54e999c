"""The server's loops, on a server whose periods and thresholds are set short by its flags."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from stateward.v1 import orchestration_pb2 as pb
from tests.support import (
    ST,
    ServerProcess,
    history,
    new_flow_run,
    new_task_run,
    propose,
    state,
    wait_until,
)

SHORT = [
    "--late-after", "0.3", "--late-runs-interval", "0.1",
    "--pause-expiry-interval", "0.1",
    "--cancelling-timeout", "0.5", "--cancelling-interval", "0.1",
    # Long on purpose: the cascade must happen at once, not on the next sweep (an hour away;
    # the first one ran as the server started).
    "--cascade-interval", "3600",
]  # fmt: skip


@pytest.fixture(scope="module")
def loop_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("loops") / "loops.db", args=SHORT).start()
    yield server
    server.stop()


@pytest.fixture
def stub(loop_server):
    return loop_server.stub()


def eventually(check: Callable[[], bool]) -> None:
    # Every loop here sweeps 10 times a second: the window is only for a loaded machine.
    wait_until(check, timeout=30)


def another_run_made_late(stub) -> None:
    """Wait for a sweep of the late-runs loop that began after this call: a new flow run, past
    its time, becoming Late shows one. What a sweep would have done to other runs it has done."""
    run = new_flow_run(stub, initial=None)
    propose(stub, run.id, state(ST.STATE_TYPE_SCHEDULED, scheduled_time=now() - timedelta(hours=1)))
    eventually(lambda: current(stub, run.id).name == "Late")


def current(stub, run_id: str):
    try:
        return stub.GetFlowRun(pb.GetFlowRunRequest(id=run_id)).flow_run.state
    except Exception:
        return stub.GetTaskRun(pb.GetTaskRunRequest(id=run_id)).task_run.state


def now() -> datetime:
    return datetime.now(UTC)


def test_scheduled_flow_runs_past_their_time_become_late(stub):
    past = now() - timedelta(seconds=1)
    due = new_flow_run(stub, initial=None)
    propose(stub, due.id, state(ST.STATE_TYPE_SCHEDULED, scheduled_time=past))
    future = new_flow_run(stub, initial=None)
    propose(
        stub, future.id, state(ST.STATE_TYPE_SCHEDULED, scheduled_time=now() + timedelta(hours=1))
    )
    task_run = new_task_run(stub, initial=None)
    propose(stub, task_run.id, state(ST.STATE_TYPE_SCHEDULED, scheduled_time=past))

    eventually(lambda: current(stub, due.id).name == "Late")
    late = current(stub, due.id)
    assert late.type == ST.STATE_TYPE_SCHEDULED
    assert late.details.scheduled_time.ToDatetime(tzinfo=UTC) == past  # still due when it was
    assert history(stub, due.id) == ["Scheduled", "Late"]
    for _ in range(2):  # several more sweeps: Late only once, and nothing else moves
        another_run_made_late(stub)
    assert history(stub, due.id) == ["Scheduled", "Late"]
    assert current(stub, future.id).name == "Scheduled"
    assert current(stub, task_run.id).name == "Scheduled"  # the late-runs loop is for flow runs


def test_a_run_scheduled_recently_is_not_late_yet(stub):
    run = new_flow_run(stub, initial=None)
    propose(stub, run.id, state(ST.STATE_TYPE_SCHEDULED))  # scheduled now; threshold is 0.3 s
    eventually(lambda: current(stub, run.id).name == "Late")
    scheduled, late = stub.ListStates(pb.ListStatesRequest(run_id=run.id)).states
    assert scheduled.details.HasField("scheduled_time")
    due = scheduled.details.scheduled_time.ToDatetime(tzinfo=UTC)
    assert due <= scheduled.timestamp.ToDatetime(tzinfo=UTC)  # "now" when it was proposed
    # Not Late before the threshold, whenever a sweep came by.
    assert late.timestamp.ToDatetime(tzinfo=UTC) - due >= timedelta(seconds=0.3)


def test_expired_pauses_are_forced_to_failed(stub):
    flow_run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    # Long enough for the task run's proposal to be parked before the pause expires.
    timeout = now() + timedelta(seconds=2)
    propose(stub, flow_run.id, state(ST.STATE_TYPE_PAUSED, pause_timeout=timeout))
    task_run = new_task_run(stub, flow_run.id)
    parked = propose(stub, task_run.id, ST.STATE_TYPE_RUNNING)
    assert parked.state.name == "NotReady"
    still = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    propose(stub, still.id, state(ST.STATE_TYPE_PAUSED, pause_timeout=now() + timedelta(hours=1)))

    eventually(lambda: current(stub, flow_run.id).type == ST.STATE_TYPE_FAILED)
    eventually(lambda: current(stub, task_run.id).type == ST.STATE_TYPE_FAILED)
    assert "never resumed" in current(stub, flow_run.id).message
    assert history(stub, flow_run.id) == ["Running", "Paused", "Failed"]
    assert current(stub, still.id).type == ST.STATE_TYPE_PAUSED


def test_runs_cancelling_too_long_are_cancelled(stub):
    run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    propose(stub, run.id, ST.STATE_TYPE_CANCELLING)
    eventually(lambda: current(stub, run.id).type == ST.STATE_TYPE_CANCELLED)
    assert "0.5s" in current(stub, run.id).message
    assert history(stub, run.id) == ["Running", "Cancelling", "Cancelled"]


def test_cancelling_a_flow_run_cancels_its_unfinished_children_at_once(stub):
    parent = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    running = new_task_run(stub, parent.id, initial=ST.STATE_TYPE_RUNNING)
    pending = new_task_run(stub, parent.id)
    finished = new_task_run(stub, parent.id, initial=ST.STATE_TYPE_RUNNING)
    propose(stub, finished.id, state(ST.STATE_TYPE_COMPLETED, result_json="1"))
    stand_in = new_task_run(stub, parent.id, initial=None)
    subflow = new_flow_run(stub, parent_task_run_id=stand_in.id, initial=ST.STATE_TYPE_RUNNING)
    grandchild = new_task_run(stub, subflow.id, initial=ST.STATE_TYPE_RUNNING)

    propose(stub, parent.id, ST.STATE_TYPE_CANCELLED)
    for child in (running, pending, subflow, grandchild, stand_in):  # not at the next sweep
        eventually(lambda child=child: current(stub, child.id).type == ST.STATE_TYPE_CANCELLED)
    assert current(stub, finished.id).type == ST.STATE_TYPE_COMPLETED
    assert parent.id in current(stub, running.id).message
    assert history(stub, grandchild.id) == ["Running", "Cancelled"]
