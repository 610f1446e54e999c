"""Several server processes on one database (a SQLite file, a PostgreSQL database): the database,
not a process, serialises. Exactly one
of racing clients wins, a transition_id applies once whichever process it reaches, every
process's subscribers see every process's transitions in sequence order and resume anywhere, a
killed process loses nothing it acknowledged, and the loops pass to another process when their
leader dies."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from tests.support import (
    ABORT,
    ACCEPT,
    REJECT,
    ST,
    ServerProcess,
    history,
    new_flow_run,
    new_task_run,
    propose,
    state,
    wait_until,
    write_lock_held,
)

LOOP_ARGS = ["--late-after", "0.5", "--late-runs-interval", "0.2"]


def start_replicas(
    tmp_path: Path, database: str, count: int, args: list[str] | None = None
) -> list[ServerProcess]:
    db: Path | str = database if "://" in database else Path(database)
    replicas = [
        ServerProcess(db, args=args or [], log_path=tmp_path / f"replica-{index}.log")
        for index in range(count)
    ]
    failures: list[BaseException] = []

    def start(replica: ServerProcess) -> None:
        try:
            replica.start()
        except BaseException as error:
            failures.append(error)

    starting = [threading.Thread(target=start, args=(replica,)) for replica in replicas]
    for thread in starting:
        thread.start()
    for thread in starting:
        thread.join()
    if failures:
        stop_all(replicas)
        raise failures[0]
    return replicas


def stop_all(replicas: list[ServerProcess]) -> None:
    for replica in replicas:
        if replica.process is not None and not replica._log.closed:
            replica.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def replicas(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    """Three replicas on one database of each backend, shared by the tests that leave them
    running (each test makes its own runs)."""
    tmp_path = tmp_path_factory.mktemp(f"replicas-{request.param}")
    if request.param == "sqlite":
        database = str(tmp_path / "shared.db")
    else:
        database = request.getfixturevalue("postgres_databases").create()
    started = start_replicas(tmp_path, database, 3)
    yield started
    stop_all(started)


def test_sixteen_clients_racing_through_three_processes_one_wins(replicas):
    run = new_flow_run(replicas[0].stub())
    pending = run.state.id
    answers: list[int] = []
    barrier = threading.Barrier(16)

    def race(index: int) -> None:
        stub = replicas[index % 3].stub()
        barrier.wait()
        answer = propose(stub, run.id, ST.STATE_TYPE_RUNNING, expected_state_id=pending)
        answers.append(answer.status)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers).count(ACCEPT) == 1 and answers.count(ABORT) == 15
    for replica in replicas:
        assert history(replica.stub(), run.id) == ["Pending", "Running"]


def test_a_transition_id_applies_once_through_two_processes(replicas):
    run = new_flow_run(replicas[0].stub())
    transition = str(uuid.uuid4())
    first = propose(
        replicas[1].stub(), run.id, state(ST.STATE_TYPE_RUNNING, transition_id=transition)
    )
    again = propose(
        replicas[2].stub(), run.id, state(ST.STATE_TYPE_RUNNING, transition_id=transition)
    )
    assert first.status == ACCEPT and again.state.id == first.state.id
    assert history(replicas[0].stub(), run.id) == ["Pending", "Running"]


def collect(stub, after: int, count: int, into: list[int]) -> None:
    """Append the sequences of `count` transitions after `after` to `into`."""
    stream = stub.WatchTransitions(pb.WatchTransitionsRequest(after_sequence=after), timeout=60)
    for message in stream:
        into.append(message.transition.sequence)
        if len(into) == count:
            stream.cancel()
            return


def test_every_process_streams_every_transition_in_order_and_resumes_anywhere(replicas):
    stubs = [replica.stub() for replica in replicas]
    first_sequence = _last_sequence(stubs[0])
    writers, per_writer = 8, 12
    total = writers * per_writer * 2  # each run: created Pending, then Running
    seen: list[list[int]] = [[] for _ in replicas]
    watchers = []
    for index, stub in enumerate(stubs):
        watcher = threading.Thread(target=collect, args=(stub, first_sequence, total, seen[index]))
        watcher.start()
        watchers.append(watcher)

    def write(index: int) -> None:
        stub = stubs[index % 3]
        for _ in range(per_writer):
            run = new_flow_run(stub)
            propose(stub, run.id, ST.STATE_TYPE_RUNNING)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for watcher in watchers:
        watcher.join(60)
    expected = list(range(first_sequence + 1, first_sequence + total + 1))
    for received in seen:
        assert received == expected  # every one, in order, no gap, no duplicate
    # A cursor from one process resumes in another.
    middle = expected[total // 2]
    resumed: list[int] = []
    collect(stubs[2], middle, total // 2 - 1, resumed)
    assert resumed == expected[total // 2 + 1 :]


def _last_sequence(stub) -> int:
    """The sequence of a new run's first transition, read back from the log."""
    run = new_flow_run(stub)
    for message in stub.WatchTransitions(
        pb.WatchTransitionsRequest(run_ids=[run.id], after_sequence=0), timeout=30
    ):
        return int(message.transition.sequence)
    raise AssertionError("no transition")


@pytest.mark.slow
def test_killing_one_process_under_load_loses_nothing_acknowledged(tmp_path, database):
    replicas = start_replicas(tmp_path, database, 3)
    try:
        _kill_one_under_load(replicas)
    finally:
        stop_all(replicas)


def _kill_one_under_load(replicas: list[ServerProcess]) -> None:
    acknowledged: dict[str, str] = {}  # run id -> the name of its last acknowledged state
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(replica: ServerProcess, counter: list[int]) -> None:
        stub = replica.stub()
        while not stop.is_set():
            try:
                run = new_flow_run(stub)
                acknowledged[run.id] = "Pending"
                propose(stub, run.id, ST.STATE_TYPE_RUNNING)
                acknowledged[run.id] = "Running"
                counter[0] += 1
            except grpc.RpcError as error:
                if replica is not replicas[0]:
                    errors.append(error)
                return

    counters = [[0] for _ in range(6)]
    threads = [
        threading.Thread(target=write, args=(replicas[i % 3], counters[i])) for i in range(6)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: sum(c[0] for c in counters) >= 60, what="60 acknowledged writes")
    # The process only: the test's channel to it stays open until its writers have stopped
    # (on the RpcError of a call to the dead process), or one would call on a closed channel.
    killed = replicas[0].process
    assert killed is not None
    killed.kill()
    killed.wait()
    survivors = sum(c[0] for i, c in enumerate(counters) if i % 3)
    wait_until(
        lambda: sum(c[0] for i, c in enumerate(counters) if i % 3) >= survivors + 30,
        what="the other processes to go on writing",
    )
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    stub = replicas[1].stub()
    for run_id, name in list(acknowledged.items()):
        states = history(stub, run_id)
        assert states == ["Pending", "Running"] if name == "Running" else states[0] == "Pending"


@pytest.mark.slow
def test_killing_the_leader_hands_the_loops_to_another_process(tmp_path, database):
    replicas = start_replicas(tmp_path, database, 3, LOOP_ARGS)
    try:
        wait_until(lambda: any("leads" in r.output() for r in replicas), what="a leader")
        leaders = [r for r in replicas if "leads" in r.output()]
        assert len(leaders) == 1
        leader = leaders[0]
        others = [r for r in replicas if r is not leader]
        leader.stop(signal.SIGKILL)
        wait_until(
            lambda: any("leads" in r.output() for r in others), timeout=15, what="a new leader"
        )
        # The new leader's late-runs loop moves a run that is late.
        stub = others[0].stub()
        past = datetime.now(UTC) - timedelta(seconds=5)
        run = new_flow_run(stub, initial=None)
        propose(stub, run.id, state(ST.STATE_TYPE_SCHEDULED, scheduled_time=past))
        wait_until(lambda: history(stub, run.id)[-1] == "Late", what="the run to be marked Late")
    finally:
        stop_all(replicas)


def test_a_cancel_written_through_another_process_cascades_at_once(tmp_path, database):
    # The sweep is an hour away: only the wake-up from the log follower can cascade in time.
    args = ["--cascade-interval", "3600"]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    leader = start_replicas(tmp_path / "a", database, 1, args)[0]
    replicas = [leader]
    try:
        wait_until(lambda: "leads" in leader.output(), what="the first process to lead")
        other = start_replicas(tmp_path / "b", database, 1, args)[0]
        replicas.append(other)
        # The flow run's task runs are driven through the leader ...
        stub = leader.stub()
        parent = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
        children = [new_task_run(stub, parent.id, initial=ST.STATE_TYPE_RUNNING) for _ in range(3)]
        # ... and the cancel goes through the other process, which does not lead.
        assert "leads" not in other.output()
        assert propose(other.stub(), parent.id, ST.STATE_TYPE_CANCELLED).status == ACCEPT
        for child in children:  # not at the sweep, an hour away
            wait_until(
                lambda child=child: history(stub, child.id)[-1] == "Cancelled",
                timeout=30,
                what="the cascade to cancel a task run",
            )
    finally:
        stop_all(replicas)


def test_a_pause_and_resume_through_another_process_are_seen_by_the_first(replicas):
    # Process A holds the run in its cache; B pauses and resumes it; A must decide against
    # what B wrote, never against the run it remembers.
    a, b = replicas[0].stub(), replicas[1].stub()
    run = new_flow_run(a, initial=ST.STATE_TYPE_RUNNING)
    assert propose(a, run.id, state(ST.STATE_TYPE_PAUSED, pause_key="first")).status == ACCEPT
    assert flow_run_state(a, run.id) == ST.STATE_TYPE_PAUSED  # read (and cached) in A

    assert b.ResumeFlowRun(pb.ResumeFlowRunRequest(flow_run_id=run.id)).status == ACCEPT
    assert flow_run_state(a, run.id) == ST.STATE_TYPE_RUNNING
    with pytest.raises(grpc.RpcError) as refused:  # A does not resume it a second time
        a.ResumeFlowRun(pb.ResumeFlowRunRequest(flow_run_id=run.id))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Running" in (refused.value.details() or "")

    # B pauses under a second key and resumes: A knows that key was used (the run's pause keys
    # as B wrote them), and pauses under a third.
    assert propose(b, run.id, state(ST.STATE_TYPE_PAUSED, pause_key="second")).status == ACCEPT
    assert b.ResumeFlowRun(pb.ResumeFlowRunRequest(flow_run_id=run.id)).status == ACCEPT
    repeat = propose(a, run.id, state(ST.STATE_TYPE_PAUSED, pause_key="second"))
    assert repeat.status == REJECT and repeat.state.type == ST.STATE_TYPE_RUNNING
    assert propose(a, run.id, state(ST.STATE_TYPE_PAUSED, pause_key="third")).status == ACCEPT
    assert history(a, run.id) == [
        "Running", "Paused", "Running", "Paused", "Running", "Paused"
    ]  # fmt: skip

    # Its log lines go through either process, to the one run.
    for stub, text in ((a, "from A"), (b, "from B")):
        entry = runs_pb2.LogEntry(flow_run_id=run.id, level=20, logger="t", message=text)
        entry.timestamp.GetCurrentTime()
        assert stub.WriteLogs(pb.WriteLogsRequest(entries=[entry])).written == 1
    lines = a.ListLogs(pb.ListLogsRequest(run_id=run.id)).entries
    assert [line.message for line in lines] == ["from A", "from B"]


def flow_run_state(stub, run_id: str) -> int:
    return stub.GetFlowRun(pb.GetFlowRunRequest(id=run_id)).flow_run.state.type


def test_a_process_that_is_shutting_down_takes_no_lead(tmp_path):
    """Processes that stop together (the workers of one server) hand the loops on to no one: one
    that is draining does not take the leader lock the leader gave up (it took it, started the
    loops and stopped them again at once). Here a second server on the same database drains a
    write held by another connection's write lock while the leader stops."""
    database = tmp_path / "lead.db"
    leader = ServerProcess(database, log_path=tmp_path / "leader.log").start()
    assert leader.says("this process leads")
    other = ServerProcess(
        database, args=["--shutdown-grace", "60"], log_path=tmp_path / "other.log"
    ).start()
    assert other.process is not None
    try:
        run_id = new_flow_run(other.stub(), initial=ST.STATE_TYPE_RUNNING).id
        with write_lock_held(database) as release:
            call = other.stub().SetState.future(
                pb.SetStateRequest(run_id=run_id, state=state(ST.STATE_TYPE_RUNNING)), timeout=90
            )
            health_pb2_grpc.HealthStub(other.channel()).Check(health_pb2.HealthCheckRequest())
            other.process.send_signal(signal.SIGTERM)
            assert other.says("shutting down")
            assert leader.stop() == 0  # the leader lock is free
            # The other tries to take it every second while it runs: three chances.
            time.sleep(3)
            assert "this process leads" not in other.output()
            release()
        assert call.result().status == ACCEPT
        assert other.process.wait(60) == 0
    finally:
        other.stop()
