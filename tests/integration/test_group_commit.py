"""Group commit: writes that arrive together share one transaction and one commit, each one
undone alone when it fails, each answered only once the commit is done; on both backends, and
over real gRPC with many calls in flight."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stateward.runs import OrchestrationResult, RunKind, SetStateStatus, Transition
from stateward.states import State, StateType
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import orchestration_pb2_grpc
from stateward_service.group_commit import GroupCommitWriter, WriterFailed
from stateward_service.model import RunRecord
from stateward_service.orchestrator import Orchestrator, RunNotFound
from stateward_service.store import open_database
from tests.support import (
    ABORT,
    ACCEPT,
    ST,
    ServerProcess,
    new_flow_run,
    state,
    write_lock_held,
)


def flow_run() -> RunRecord:
    return RunRecord(
        kind=RunKind.FLOW_RUN,
        id=str(uuid.uuid4()),
        name="grouped",
        created=datetime.now(UTC),
        flow_name="group-commit",
    )


def running_runs(orchestrator: Orchestrator, count: int) -> list[str]:
    runs = [flow_run() for _ in range(count)]
    for run in runs:
        orchestrator.create_run(run, State(StateType.RUNNING))
    return [run.id for run in runs]


class Published:
    """What the orchestrator published, in order."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.transitions: list[Transition] = []
        orchestrator.subscribe(self.transitions.extend)


def test_a_write_that_fails_in_a_group_is_undone_alone(database: str) -> None:
    orchestrator = Orchestrator(open_database(database))
    try:
        first, failing, last = running_runs(orchestrator, 3)
        published = Published(orchestrator)

        def completes(run_id: str) -> Callable[[], OrchestrationResult]:
            return lambda: orchestrator.set_state(run_id, State(StateType.COMPLETED))

        def writes_then_fails() -> None:
            written = orchestrator.set_state(failing, State(StateType.COMPLETED))
            assert written.status is SetStateStatus.ACCEPT  # it was written, then:
            raise ValueError("failed after writing")

        unknown = str(uuid.uuid4())
        outcomes = orchestrator.together(
            [
                completes(first),
                writes_then_fails,
                lambda: orchestrator.set_state(unknown, State(StateType.RUNNING)),
                completes(last),
            ]
        )
        assert isinstance(outcomes[0], OrchestrationResult)
        assert outcomes[0].status is SetStateStatus.ACCEPT
        assert isinstance(outcomes[1], ValueError)
        assert isinstance(outcomes[2], RunNotFound)
        assert isinstance(outcomes[3], OrchestrationResult)
        assert outcomes[3].status is SetStateStatus.ACCEPT

        # The failed write left nothing: not in the database, not in memory, not published.
        assert orchestrator.get_run(failing).state.type is StateType.RUNNING  # type: ignore[union-attr]
        assert [s.type for s in orchestrator.list_states(failing)] == [StateType.RUNNING]
        for run_id in (first, last):
            assert [s.type for s in orchestrator.list_states(run_id)] == [
                StateType.RUNNING,
                StateType.COMPLETED,
            ]
        assert [t.run_id for t in published.transitions] == [first, last]
        logged, _, newest = orchestrator.read_log(0, 100)
        sequences = [t.sequence for t in logged]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))  # no gap
        assert [t.sequence for t in published.transitions] == sequences[-2:]
        assert newest == sequences[-1]

        # A reader of its own (another process) sees the same.
        other = Orchestrator(open_database(database))
        try:
            assert other.get_run(failing).state.type is StateType.RUNNING  # type: ignore[union-attr]
            assert other.get_run(last).state.type is StateType.COMPLETED  # type: ignore[union-attr]
        finally:
            other.close()
    finally:
        orchestrator.close()


def test_runs_created_in_a_group_survive_the_undo_of_another_write(database: str) -> None:
    """A new run's row is written once, at the end of its own operation: undoing a later
    operation of the group does not lose it."""
    orchestrator = Orchestrator(open_database(database))
    try:
        created, undone = flow_run(), flow_run()

        def creates_then_fails() -> None:
            orchestrator.create_run(undone, State(StateType.PENDING))
            raise ValueError("failed after creating")

        outcomes = orchestrator.together(
            [
                lambda: orchestrator.create_run(created, State(StateType.PENDING)),
                creates_then_fails,
            ]
        )
        assert isinstance(outcomes[1], ValueError)
        other = Orchestrator(open_database(database))  # another process's view
        try:
            assert other.get_run(created.id).state.type is StateType.PENDING  # type: ignore[union-attr]
            with pytest.raises(RunNotFound):
                other.get_run(undone.id)
        finally:
            other.close()
    finally:
        orchestrator.close()


def test_a_publisher_that_raises_does_not_make_committed_writes_look_failed(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Publishing runs after the commit: a subscriber of the orchestrator that raises (a bug)
    is logged, the other subscribers still hear of the transitions, and each caller gets what
    was written (before, a group's callers were all told it failed, and a lone write raised)."""
    orchestrator = Orchestrator(open_database(database))
    try:
        first, second = running_runs(orchestrator, 2)

        def broken(transitions: Sequence[Transition]) -> None:
            raise ValueError("a publisher's bug")

        orchestrator.subscribe(broken)
        published = Published(orchestrator)
        with caplog.at_level("ERROR", logger="stateward.orchestrator"):
            outcomes = orchestrator.together(
                [
                    lambda: orchestrator.set_state(first, State(StateType.COMPLETED)),
                    lambda: orchestrator.set_state(second, State(StateType.COMPLETED)),
                ]
            )
            alone = orchestrator.set_state(first, State(StateType.RUNNING), force=True)
        assert [o.status for o in outcomes] == [SetStateStatus.ACCEPT] * 2  # type: ignore[union-attr]
        assert alone.status is SetStateStatus.ACCEPT
        assert [t.run_id for t in published.transitions] == [first, second, first]
        assert [s.type for s in orchestrator.list_states(first)] == [
            StateType.RUNNING,
            StateType.COMPLETED,
            StateType.RUNNING,
        ]
        failures = [r for r in caplog.records if "publishing transitions" in r.getMessage()]
        assert len(failures) == 2 and failures[0].exc_info is not None
    finally:
        orchestrator.close()


def test_proposals_for_one_run_in_one_group_are_decided_in_order(database: str) -> None:
    orchestrator = Orchestrator(open_database(database))
    try:
        (run_id,) = running_runs(orchestrator, 1)
        current = orchestrator.get_run(run_id).state
        assert current is not None
        retried = State(StateType.COMPLETED).with_details(transition_id=str(uuid.uuid4()))
        outcomes = orchestrator.together(
            [
                # Two racing clients that both saw `current`: exactly one wins.
                lambda: orchestrator.set_state(
                    run_id, State(StateType.PAUSED), expected_state_id=current.id
                ),
                lambda: orchestrator.set_state(
                    run_id, State(StateType.FAILED), expected_state_id=current.id
                ),
                lambda: orchestrator.set_state(run_id, State(StateType.RUNNING)),
                # A proposal sent twice (a retry) applies once.
                lambda: orchestrator.set_state(run_id, retried),
                lambda: orchestrator.set_state(run_id, retried),
            ]
        )
        statuses = [o.status for o in outcomes if isinstance(o, OrchestrationResult)]
        assert statuses == [
            SetStateStatus.ACCEPT,
            SetStateStatus.ABORT,
            SetStateStatus.ACCEPT,
            SetStateStatus.ACCEPT,
            SetStateStatus.REJECT,
        ]
        assert [s.type for s in orchestrator.list_states(run_id)] == [
            StateType.RUNNING,
            StateType.PAUSED,
            StateType.RUNNING,
            StateType.COMPLETED,
        ]
    finally:
        orchestrator.close()


@pytest.mark.parametrize("in_thread", [False, True])
def test_writes_that_arrive_together_share_commits(tmp_path: Any, in_thread: bool) -> None:
    orchestrator = Orchestrator(open_database(tmp_path / "grouped.db"))
    writer = GroupCommitWriter(orchestrator, in_thread=in_thread)
    run_ids = running_runs(orchestrator, 64)
    published = Published(orchestrator)

    async def propose_all() -> list[OrchestrationResult]:
        return await asyncio.gather(
            *(
                writer.run(
                    lambda run_id=run_id: orchestrator.set_state(run_id, State(StateType.RUNNING))
                )
                for run_id in run_ids
            )
        )

    try:
        answers = asyncio.run(propose_all())
    finally:
        writer.stop()
    try:
        assert all(answer.status is SetStateStatus.ACCEPT for answer in answers)
        assert writer.calls == 64
        if in_thread:
            assert writer.groups < 64  # some shared a transaction (usually all but the first)
        else:
            assert writer.groups == 1  # all were handed in before the loop ran the group
        sequences = [t.sequence for t in published.transitions]
        assert sequences == list(range(sequences[0], sequences[0] + 64))
        # Each answer is its own run's new state.
        for run_id, answer in zip(run_ids, answers, strict=True):
            assert answer.state is not None
            assert orchestrator.get_run(run_id).state.id == answer.state.id  # type: ignore[union-attr]
    finally:
        orchestrator.close()


def _completes(orchestrator: Orchestrator, run_id: str) -> Callable[[], OrchestrationResult]:
    return lambda: orchestrator.set_state(run_id, State(StateType.COMPLETED))


def _stored(database: str, run_id: str) -> list[StateType]:
    """A run's history as another process reads it."""
    other = Orchestrator(open_database(database))
    try:
        return [s.type for s in other.list_states(run_id)]
    finally:
        other.close()


@pytest.mark.parametrize("in_thread", [False, True], ids=["on-the-loop", "in-a-thread"])
def test_every_call_of_a_group_is_answered_when_answering_one_fails(
    database: str, in_thread: bool
) -> None:
    """A call whose operation raises StopIteration (a bug: a `next()` without a default)
    cannot be told its outcome: a future refuses that exception. That call is told an error
    saying it was not written, the others of its group their own answers, and the writer goes
    on. (Telling it raised out of the writer: the answers after it were never given, their
    writes committed and their callers waiting forever.)"""
    orchestrator = Orchestrator(open_database(database))
    writer = GroupCommitWriter(orchestrator, in_thread=in_thread)
    first, last, after = running_runs(orchestrator, 3)

    async def scenario() -> tuple[list[Any], OrchestrationResult]:
        calls = [
            writer.run(_completes(orchestrator, first)),
            writer.run(lambda: next(iter(()))),
            writer.run(_completes(orchestrator, last)),
        ]
        outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 60)
        later = await asyncio.wait_for(writer.run(_completes(orchestrator, after)), 60)
        return outcomes, later

    try:
        (done_first, failed, done_last), later = asyncio.run(scenario())
    finally:
        writer.stop()
        orchestrator.close()
    assert isinstance(done_first, OrchestrationResult) and isinstance(
        done_last, OrchestrationResult
    )
    assert done_first.status is SetStateStatus.ACCEPT and done_last.status is SetStateStatus.ACCEPT
    assert isinstance(failed, WriterFailed)
    assert "StopIteration" in str(failed) and "it was not written" in str(failed)
    assert later.status is SetStateStatus.ACCEPT  # the writer goes on
    for run_id in (first, last, after):
        assert _stored(database, run_id) == [StateType.RUNNING, StateType.COMPLETED]


class Interrupted(BaseException):
    """Not an Exception: it goes through the group's savepoints and out of `together`."""


def test_a_group_that_fails_outside_its_calls_is_rolled_back_and_every_call_told(
    database: str,
) -> None:
    """In the writer thread: an operation raising what is not an Exception fails the whole
    group (`together` lets it through): the group's transaction is rolled back, every call of
    it is told an error saying so and what to do, and the thread goes on with the next group.
    (The thread died with the group unanswered: its callers waited forever.)"""
    orchestrator = Orchestrator(open_database(database))
    writer = GroupCommitWriter(orchestrator, in_thread=True)
    first, last, after = running_runs(orchestrator, 3)
    busy, go_on = threading.Event(), threading.Event()

    def holds_the_thread() -> None:  # the next calls gather into one group meanwhile
        busy.set()
        assert go_on.wait(60)

    def interrupted() -> None:
        raise Interrupted("stop")

    async def scenario() -> tuple[list[Any], OrchestrationResult]:
        holding = asyncio.ensure_future(writer.run(holds_the_thread))
        assert await asyncio.to_thread(busy.wait, 60)
        calls = [
            writer.run(_completes(orchestrator, first)),
            writer.run(interrupted),
            writer.run(_completes(orchestrator, last)),
        ]
        gathered = asyncio.gather(*calls, return_exceptions=True)
        await asyncio.sleep(0)  # the calls are handed in
        go_on.set()
        await holding
        outcomes = await asyncio.wait_for(gathered, 60)
        later = await asyncio.wait_for(writer.run(_completes(orchestrator, after)), 60)
        return outcomes, later

    try:
        outcomes, later = asyncio.run(scenario())
        groups = writer.groups
    finally:
        writer.stop()
        orchestrator.close()
    assert groups == 2  # the one that held the thread, and the one after the failure
    assert all(isinstance(outcome, WriterFailed) for outcome in outcomes), outcomes
    assert "Interrupted: stop" in str(outcomes[0]) and "transition_id" in str(outcomes[0])
    assert later.status is SetStateStatus.ACCEPT
    # Rolled back: the write made before the failure in the same group is not there.
    assert _stored(database, first) == [StateType.RUNNING]
    assert _stored(database, last) == [StateType.RUNNING]
    assert _stored(database, after) == [StateType.RUNNING, StateType.COMPLETED]


# --- over gRPC ----------------------------------------------------------------------------------


async def _calls(target: str, requests: Sequence[pb.SetStateRequest]) -> list[Any]:
    """The requests sent all at once on one channel: each answer, or the error's code and
    message."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)

        async def one(request: pb.SetStateRequest) -> Any:
            try:
                return await stub.SetState(request)
            except grpc.aio.AioRpcError as error:
                return (error.code(), error.details())

        return await asyncio.gather(*(one(request) for request in requests))


def test_calls_in_flight_together_each_get_their_own_answer(server: ServerProcess) -> None:
    stub = server.stub()
    runs = [new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING) for _ in range(16)]
    unknown = [str(uuid.uuid4()) for _ in range(8)]
    requests: list[pb.SetStateRequest] = []
    for run in runs:  # two racing proposals per run, both expecting its current state
        for proposed in (ST.STATE_TYPE_COMPLETED, ST.STATE_TYPE_FAILED):
            requests.append(
                pb.SetStateRequest(
                    run_id=run.id, state=state(proposed), expected_state_id=run.state.id
                )
            )
    requests += [pb.SetStateRequest(run_id=u, state=state(ST.STATE_TYPE_RUNNING)) for u in unknown]
    requests += [pb.SetStateRequest(run_id=run.id) for run in runs[:8]]  # no state: bad input
    answers = asyncio.run(_calls(server.target, requests))

    racing, rest = answers[:32], answers[32:]
    for index, run in enumerate(runs):
        pair = racing[2 * index : 2 * index + 2]
        assert sorted(answer.status for answer in pair) == sorted([ACCEPT, ABORT])
        winner = next(answer for answer in pair if answer.status == ACCEPT)
        stored = stub.ListStates(pb.ListStatesRequest(run_id=run.id)).states
        assert [s.id for s in stored] == [run.state.id, winner.state.id]
    for answer, run_id in zip(rest[:8], unknown, strict=True):
        assert answer[0] is grpc.StatusCode.NOT_FOUND
        assert run_id in answer[1]
    for answer in rest[8:]:
        assert answer[0] is grpc.StatusCode.INVALID_ARGUMENT
        assert "state" in answer[1]


@pytest.mark.parametrize("in_flight", [64])
def test_many_calls_in_flight_on_the_same_run_are_serialised(
    server: ServerProcess, in_flight: int
) -> None:
    stub = server.stub()
    run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    requests = [
        pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_RUNNING, message=str(n)))
        for n in range(in_flight)
    ]
    answers = asyncio.run(_calls(server.target, requests))
    assert all(answer.status == ACCEPT for answer in answers)
    stored = stub.ListStates(pb.ListStatesRequest(run_id=run.id)).states
    # Every answered state is in the history once, in an order the answers agree with: each
    # was decided against the state before it.
    assert sorted(s.id for s in stored[1:]) == sorted(answer.state.id for answer in answers)
    assert len({s.id for s in stored}) == in_flight + 1


def test_a_server_waiting_for_another_process_write_lock_goes_on_answering(tmp_path: Any) -> None:
    """SQLite: while another process holds the write lock (another server's group, a backup),
    the SetState that needs it waits, in the writer thread; the event loop goes on answering
    health checks meanwhile, and the SetState is answered once the lock is released."""
    database = tmp_path / "locked.db"
    server = ServerProcess(database).start()
    try:
        stub = server.stub()
        health = health_pb2_grpc.HealthStub(server.channel())
        run = new_flow_run(stub, initial=ST.STATE_TYPE_PENDING)
        with write_lock_held(database) as release:
            waiting = stub.SetState.future(
                pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_RUNNING)),
                timeout=30,
            )
            # The SetState reached the server before these (one channel, in order); a loop
            # that waited for the lock (up to the 5 s busy timeout) would miss their deadlines.
            for _ in range(20):
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            assert not waiting.done()  # it still waits for the lock
            release()
        assert waiting.result(timeout=30).status == ACCEPT
        states = stub.ListStates(pb.ListStatesRequest(run_id=run.id)).states
        assert [s.type for s in states] == [ST.STATE_TYPE_PENDING, ST.STATE_TYPE_RUNNING]
        # The loop runs the groups again once the thread caught up.
        answer = stub.SetState(
            pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_COMPLETED)), timeout=10
        )
        assert answer.status == ACCEPT
    finally:
        server.stop()


def test_reads_of_runs_go_on_while_a_write_waits_for_another_process_lock(tmp_path: Any) -> None:
    """SQLite: while a SetState waits in the writer thread for the write lock another process
    holds (up to the 5 s busy timeout), GetFlowRun and ListStates of a run are answered at
    once, with the run as committed, rather than waiting for that write to get the lock."""
    database = tmp_path / "reads.db"
    server = ServerProcess(database).start()
    try:
        stub = server.stub()
        run = new_flow_run(stub, initial=ST.STATE_TYPE_PENDING)
        other = new_flow_run(stub, initial=ST.STATE_TYPE_PENDING)
        with write_lock_held(database) as release:
            waiting = stub.SetState.future(
                pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_RUNNING)),
                timeout=30,
            )
            # Health checks on the same channel after it: the SetState reached the writer.
            health = health_pb2_grpc.HealthStub(server.channel())
            health.Check(health_pb2.HealthCheckRequest(), timeout=2.5)
            for _ in range(3):  # each well within the busy timeout the write may wait
                found = stub.GetFlowRun(pb.GetFlowRunRequest(id=other.id), timeout=2.5)
                assert found.flow_run.state.type == ST.STATE_TYPE_PENDING
                found = stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id), timeout=2.5)
                assert found.flow_run.state.type == ST.STATE_TYPE_PENDING  # not yet written
                states = stub.ListStates(pb.ListStatesRequest(run_id=other.id), timeout=2.5)
                assert [s.type for s in states.states] == [ST.STATE_TYPE_PENDING]
                with pytest.raises(grpc.RpcError) as unknown:
                    stub.GetFlowRun(pb.GetFlowRunRequest(id=str(uuid.uuid4())), timeout=2.5)
                assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            assert not waiting.done()  # it still waits for the lock
            release()
        assert waiting.result(timeout=30).status == ACCEPT
        found = stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id), timeout=10)
        assert found.flow_run.state.type == ST.STATE_TYPE_RUNNING
    finally:
        server.stop()
