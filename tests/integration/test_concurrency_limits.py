"""Tag concurrency limits: the RPCs, WAIT and ABORT, slots released whatever way a run leaves
RUNNING, 20 concurrent proposers never exceeding the limit, and no slot leaked across restarts."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import orchestration_pb2_grpc, runs_pb2
from tests.support import (
    ABORT,
    ACCEPT,
    REJECT,
    ST,
    WAIT,
    ServerProcess,
    new_flow_run,
    new_task_run,
    propose,
    state,
)


@pytest.fixture(scope="module")
def limit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("limits") / "limits.db", args=["--slot-wait", "0.02"]
    ).start()
    yield server
    server.stop()


@pytest.fixture
def stub(limit_server):
    return limit_server.stub()


def unique_tag() -> str:
    return f"tag-{uuid.uuid4().hex[:8]}"


def create_limit(stub, tag: str, limit: int) -> runs_pb2.ConcurrencyLimit:
    request = pb.CreateConcurrencyLimitRequest(
        concurrency_limit=runs_pb2.ConcurrencyLimit(tag=tag, limit=limit)
    )
    return stub.CreateConcurrencyLimit(request).concurrency_limit


def holders(stub, tag: str) -> list[str]:
    limit = stub.GetConcurrencyLimit(pb.GetConcurrencyLimitRequest(tag=tag)).concurrency_limit
    return sorted(limit.active_slots)


def test_limits_are_created_read_listed_and_deleted(stub):
    tag = unique_tag()
    created = create_limit(stub, tag, 2)
    assert (created.tag, created.limit, list(created.active_slots)) == (tag, 2, [])
    assert created.create_time.seconds > 0
    listed = stub.ListConcurrencyLimits(pb.ListConcurrencyLimitsRequest()).concurrency_limits
    assert tag in {limit.tag for limit in listed}
    with pytest.raises(grpc.RpcError) as caught:
        create_limit(stub, tag, 3)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    stub.DeleteConcurrencyLimit(pb.DeleteConcurrencyLimitRequest(tag=tag))
    for call, request in (
        (stub.GetConcurrencyLimit, pb.GetConcurrencyLimitRequest(tag=tag)),
        (stub.DeleteConcurrencyLimit, pb.DeleteConcurrencyLimitRequest(tag=tag)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(request)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND and tag in caught.value.details()


def test_bad_limits_are_invalid_argument(stub):
    for tag, limit, field in (
        ("", 1, "concurrency_limit.tag"),
        ("t", -1, "concurrency_limit.limit"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            create_limit(stub, tag, limit)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(field)


def test_a_limit_of_zero_aborts_and_a_full_limit_waits(stub):
    flow_run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    blocked, small = unique_tag(), unique_tag()
    create_limit(stub, blocked, 0)
    create_limit(stub, small, 1)
    never = new_task_run(stub, flow_run.id, tags=[blocked])
    answer = propose(stub, never.id, ST.STATE_TYPE_RUNNING)
    assert answer.status == ABORT and blocked in answer.reason

    first = new_task_run(stub, flow_run.id, tags=[small])
    second = new_task_run(stub, flow_run.id, tags=[small, "untracked"])
    assert propose(stub, first.id, ST.STATE_TYPE_RUNNING).status == ACCEPT
    waiting = propose(stub, second.id, ST.STATE_TYPE_RUNNING)
    assert waiting.status == WAIT and waiting.delay_seconds == pytest.approx(0.02)
    assert "full" in waiting.reason and waiting.state.type == ST.STATE_TYPE_PENDING
    assert holders(stub, small) == [first.id]
    propose(stub, first.id, ST.STATE_TYPE_COMPLETED)
    assert holders(stub, small) == []
    assert propose(stub, second.id, ST.STATE_TYPE_RUNNING).status == ACCEPT
    assert holders(stub, small) == [second.id]


def test_a_run_never_holds_two_slots_of_one_limit(stub):
    tag = unique_tag()
    create_limit(stub, tag, 1)
    run = new_task_run(stub, tags=[tag])
    assert propose(stub, run.id, ST.STATE_TYPE_RUNNING).status == ACCEPT
    again = propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    assert again.status == ACCEPT  # it holds the slot already: no wait, no second slot
    assert holders(stub, tag) == [run.id]


@pytest.mark.parametrize("leave", ["completed", "forced", "replaced", "cancelled"])
def test_the_slot_is_released_however_the_run_leaves_running(stub, leave):
    tag = unique_tag()
    create_limit(stub, tag, 1)
    run = new_task_run(
        stub, tags=[tag], retry_policy=runs_pb2.RetryPolicy(retries=1, retry_delay_seconds=[60])
    )
    propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    assert holders(stub, tag) == [run.id]
    if leave == "completed":
        assert propose(stub, run.id, ST.STATE_TYPE_COMPLETED).status == ACCEPT
    elif leave == "forced":
        assert propose(stub, run.id, ST.STATE_TYPE_CRASHED, force=True).status == ACCEPT
    elif leave == "replaced":
        answer = propose(stub, run.id, ST.STATE_TYPE_FAILED)
        assert answer.status == REJECT and answer.state.name == "AwaitingRetry"
    else:
        assert propose(stub, run.id, ST.STATE_TYPE_CANCELLED).status == ACCEPT
    assert holders(stub, tag) == []


def test_no_slot_is_taken_when_a_later_rule_refuses_the_start(stub):
    tag = unique_tag()
    create_limit(stub, tag, 1)
    run = new_task_run(stub, tags=[tag], initial=None)
    later = datetime.now(UTC) + timedelta(minutes=5)
    propose(stub, run.id, state(ST.STATE_TYPE_SCHEDULED, scheduled_time=later))
    assert propose(stub, run.id, ST.STATE_TYPE_RUNNING).status == WAIT  # scheduled later
    assert holders(stub, tag) == []


def test_twenty_concurrent_proposers_never_exceed_the_limit(limit_server, stub):
    tag, limit = unique_tag(), 3
    create_limit(stub, tag, limit)
    flow_run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    runs = [new_task_run(stub, flow_run.id, tags=[tag]).id for _ in range(20)]
    waits: list[int] = []
    failures: list[BaseException] = []
    start = threading.Barrier(len(runs))

    def work(run_id: str) -> None:
        try:
            channel = grpc.insecure_channel(limit_server.target)
            proposer = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
            start.wait()
            while True:
                answer = propose(proposer, run_id, ST.STATE_TYPE_RUNNING)
                if answer.status == ACCEPT:
                    break
                assert answer.status == WAIT, answer
                waits.append(1)
                time.sleep(answer.delay_seconds)
            time.sleep(0.03)  # the work
            assert propose(proposer, run_id, ST.STATE_TYPE_COMPLETED).status == ACCEPT
            channel.close()
        except BaseException as error:  # pragma: no cover - reported below
            failures.append(error)

    threads = [threading.Thread(target=work, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    assert waits, "with 20 proposers and 3 slots, some must have waited"

    # The server's own record: order every RUNNING entry and exit by timestamp (minted under one
    # lock) and count how many runs were RUNNING at once.
    events = []
    for run_id in runs:
        states = stub.ListStates(pb.ListStatesRequest(run_id=run_id)).states
        assert [s.type for s in states] == [
            ST.STATE_TYPE_PENDING, ST.STATE_TYPE_RUNNING, ST.STATE_TYPE_COMPLETED,
        ]  # fmt: skip
        events.append((states[1].timestamp.ToNanoseconds(), +1))
        events.append((states[2].timestamp.ToNanoseconds(), -1))
    running = peak = 0
    for _, change in sorted(events):
        running += change
        peak = max(peak, running)
    assert 2 <= peak <= limit  # never above the limit, and the limit does admit several
    assert holders(stub, tag) == []


def test_no_slot_leaks_across_a_restart(tmp_path):
    server = ServerProcess(tmp_path / "restart.db").start()
    stub = server.stub()
    tag = unique_tag()
    create_limit(stub, tag, 2)
    holder = new_task_run(stub, tags=[tag], initial=ST.STATE_TYPE_RUNNING)
    finished = new_task_run(stub, tags=[tag], initial=ST.STATE_TYPE_RUNNING)
    propose(stub, finished.id, ST.STATE_TYPE_COMPLETED)
    server.kill()
    # Plant a slot for a run that is not running, as a crash in an older version could leave.
    with sqlite3.connect(server.db) as db:
        db.execute("INSERT INTO concurrency_slots (tag, run_id) VALUES (?, ?)", (tag, finished.id))
    server.restart()
    try:
        stub = server.stub()
        assert holders(stub, tag) == [holder.id]  # still RUNNING, still holding its slot
        assert "released 1 concurrency slot" in server.output()
        propose(stub, holder.id, ST.STATE_TYPE_COMPLETED)
        assert holders(stub, tag) == []
    finally:
        server.stop()
