"""The server as a process: health, reflection, a clear error when its port or database is taken,
graceful shutdown, restarts that keep everything, and `kill -9` losing nothing acknowledged."""

from __future__ import annotations

import queue
import re
import signal
import sqlite3
import threading
import time
import uuid

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from tests.sdk.test_server_stops import takes_no_new_writes
from tests.support import (
    ACCEPT,
    ST,
    ServerProcess,
    history,
    new_flow_run,
    propose,
    state,
    status_name,
    wait_until,
    write_lock_held,
)


def test_health_is_serving_and_reflection_lists_the_service(server):
    health = health_pb2_grpc.HealthStub(server.channel())
    for service in ("", "stateward.v1.OrchestrationService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel())
    replies = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"stateward.v1.OrchestrationService", "grpc.health.v1.Health"} <= names


def test_startup_line_names_address_and_database(server):
    shown = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", str(server.db))  # never a password
    assert f"listening on 127.0.0.1:{server.port} (database {shown})" in server.output()
    assert server.says(f"export STATEWARD_API_URL=127.0.0.1:{server.port}"), server.output()


def test_a_taken_port_is_a_clear_error(server, tmp_path):
    second = ServerProcess(tmp_path / "other.db", port=server.port)
    try:
        second.start()
    except RuntimeError as error:
        message = str(error)
    else:  # pragma: no cover - the bug this test is for
        second.stop()
        raise AssertionError("a second server listened on a taken port")
    assert "already in use" in message and str(server.port) in message
    # The first server is untouched.
    assert new_flow_run(server.stub()).state.name == "Pending"


def test_a_second_server_on_the_same_database_shares_it(server, tmp_path):
    second = ServerProcess(server.db, log_path=tmp_path / "second.log").start()
    try:
        run = new_flow_run(server.stub())
        assert second.stub().GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run.id == run.id
        assert propose(second.stub(), run.id, ST.STATE_TYPE_RUNNING).status == ACCEPT
        assert history(server.stub(), run.id) == ["Pending", "Running"]
    finally:
        second.stop()


def test_sigterm_stops_gracefully_and_closes_the_database(tmp_path):
    server = ServerProcess(tmp_path / "graceful.db").start()
    run = new_flow_run(server.stub(), initial=ST.STATE_TYPE_RUNNING)
    assert server.stop(signal.SIGTERM) == 0
    assert "shutting down" in server.output() and "stopped" in server.output()
    wal = tmp_path / "graceful.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed on close
    with sqlite3.connect(tmp_path / "graceful.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        row = db.execute("SELECT state_name FROM flow_runs WHERE id = ?", (run.id,)).fetchone()
    assert row == ("Running",)


def test_in_flight_calls_finish_during_shutdown(tmp_path):
    """Writers keep proposing while SIGTERM arrives: every call either completes (and its state is
    stored) or is refused without being applied; none is half done. (gRPC refuses calls that arrive
    once shutdown began with UNAVAILABLE or CANCELLED.)"""
    server = ServerProcess(tmp_path / "inflight.db").start()
    stub = server.stub()
    runs = [new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING).id for _ in range(4)]
    acknowledged: list[tuple[str, str]] = []
    refused: list[tuple[str, str, grpc.StatusCode]] = []

    def write(run_id: str) -> None:
        channel = grpc.insecure_channel(server.target)
        writer = pb_stub(channel)
        while True:
            transition = str(uuid.uuid4())
            try:
                propose(writer, run_id, state(ST.STATE_TYPE_RUNNING, transition_id=transition))
            except grpc.RpcError as error:
                refused.append((run_id, transition, error.code()))
                return
            acknowledged.append((run_id, transition))

    threads = [threading.Thread(target=write, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    assert server.stop(signal.SIGTERM) == 0
    for thread in threads:
        thread.join(10)
    assert acknowledged and len(refused) == len(runs)
    assert {code for _, _, code in refused} <= {
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
    }  # fmt: skip
    restarted = server.restart()
    try:
        stored = {
            run_id: {
                s.details.transition_id
                for s in restarted.stub().ListStates(pb.ListStatesRequest(run_id=run_id)).states
            }
            for run_id in runs
        }
        assert all(transition in stored[run_id] for run_id, transition in acknowledged)
        assert not any(transition in stored[run_id] for run_id, transition, _ in refused)
    finally:
        restarted.stop()


def test_a_write_in_a_thread_that_outlives_the_grace_is_answered_as_it_ended(tmp_path):
    """SIGTERM with a 1 s grace while a WriteLogs (written by a worker thread, not the
    group-commit writer) waits for the SQLite write lock another process holds, past the grace
    and the time the answers get after it: the call is answered once its write is done, as the
    database has it. (The gRPC server cancelled it then, and the lines were committed once the
    lock was released: the client heard an error for lines that were written.)"""
    database = tmp_path / "thread.db"
    server = ServerProcess(database, env={"STATEWARD_SHUTDOWN_GRACE_SECONDS": "1"}).start()
    stub = server.stub()
    health = health_pb2_grpc.HealthStub(server.channel())
    run_id = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING).id
    line = runs_pb2.LogEntry(flow_run_id=run_id, level=20, logger="test", message="held up")
    line.timestamp.GetCurrentTime()
    try:
        with write_lock_held(database) as release:
            call = stub.WriteLogs.future(pb.WriteLogsRequest(entries=[line]), timeout=60)
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)  # its thread took it
            server.process.send_signal(signal.SIGTERM)
            wait_until(
                lambda: "handed to threads" in server.output() or call.done(),
                30,
                "the end of the grace (or, past the answers' time, the call's end)",
            )
            release()
        try:
            outcome = f"written {call.result().written}"
        except grpc.RpcError as error:
            outcome = error.code().name
        assert server.process.wait(30) == 0
    finally:
        server.stop()
    with sqlite3.connect(database) as db:
        (stored,) = db.execute("SELECT count(*) FROM run_logs WHERE message = 'held up'").fetchone()
    assert outcome == f"written {stored}", server.output()
    assert stored == 1


def test_a_stopping_server_refuses_the_web_views_writes_as_it_refuses_the_rpcs(tmp_path):
    """Once a stop began (SIGTERM; a write in flight holds the grace open), a cancel from the
    web view is refused at once, 503 saying nothing was written, as a writing RPC is, and the
    run is left as it was. (The web view took it until its own server stopped, after the
    writes in flight were answered: one could commit with nobody told.)"""
    database = tmp_path / "web.db"
    server = ServerProcess(
        database, ui=True, env={"STATEWARD_SHUTDOWN_GRACE_SECONDS": "60"}
    ).start()
    stub = server.stub()
    health = health_pb2_grpc.HealthStub(server.channel())
    holding, cancelled = (new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING).id for _ in range(2))
    try:
        with write_lock_held(database) as release, httpx.Client(timeout=30) as http:
            in_flight = stub.SetState.future(
                pb.SetStateRequest(run_id=holding, state=state(ST.STATE_TYPE_RUNNING)), timeout=60
            )
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)  # it reached the writer
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: takes_no_new_writes(stub), 30, "the stop to refuse new writes")
            answer = http.post(f"{server.ui_url}api/flow-runs/{cancelled}/cancel", json={})
            release()
        assert answer.status_code == 503, answer.text
        assert "nothing was written" in answer.text
        assert in_flight.result().status == ACCEPT
        assert server.process.wait(30) == 0
        server.restart()
        assert history(server.stub(), cancelled) == ["Running"]
    finally:
        server.stop()


@pytest.mark.parametrize("grace, signals", [("1", 1), ("60", 2)], ids=["grace", "second-signal"])
def test_writes_that_outlive_the_grace_are_answered_as_they_ended(tmp_path, grace, signals):
    """SIGTERM with a grace shorter than the writes in flight (here they wait for the SQLite
    write lock another process holds), or a second SIGTERM that ends the grace at once: each
    call, unary or on ExecuteStream, is answered as the database has it. The write under way
    when the grace ends is answered once it is committed; the calls that had not started are
    refused with UNAVAILABLE and not written. (The end of the grace cancelled them all,
    UNAVAILABLE, and the writes were committed after: a client sending them again without a
    transition id wrote them twice.)"""
    database = tmp_path / "grace.db"
    server = ServerProcess(database, env={"STATEWARD_SHUTDOWN_GRACE_SECONDS": grace}).start()
    stub = server.stub()
    health = health_pb2_grpc.HealthStub(server.channel())
    runs = [new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING).id for _ in range(3)]
    requests: queue.SimpleQueue[pb.ExecuteStreamRequest | None] = queue.SimpleQueue()
    grace_over = re.compile(r"grace period is over with \d+ writing call\(s\) in flight: (\d+) not")
    try:
        with write_lock_held(database) as release:
            calls = {}
            for name, run_id in zip(("first", "second"), runs, strict=False):
                proposal = state(ST.STATE_TYPE_RUNNING, message=name)
                calls[name] = stub.SetState.future(
                    pb.SetStateRequest(run_id=run_id, state=proposal), timeout=60
                )
                health.Check(health_pb2.HealthCheckRequest(), timeout=10)  # it reached the writer
            streamed = stub.ExecuteStream(iter(requests.get, None), timeout=60)
            proposal = state(ST.STATE_TYPE_RUNNING, message="streamed")
            requests.put(
                pb.ExecuteStreamRequest(
                    call_id=1, set_state=pb.SetStateRequest(run_id=runs[2], state=proposal)
                )
            )
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            server.process.send_signal(signal.SIGTERM)
            if signals == 2:
                wait_until(lambda: "shutting down" in server.output(), 30, "the shutdown")
                server.process.send_signal(signal.SIGTERM)
            wait_until(
                lambda: (
                    grace_over.search(server.output()) is not None
                    or all(call.done() for call in calls.values())  # cancelled, unanswered
                ),
                30,
                "the end of the grace",
            )
            release()
        outcomes = {}
        for name, call in calls.items():
            try:
                outcomes[name] = status_name(call.result().status)
            except grpc.RpcError as error:
                outcomes[name] = error.code().name
                assert "nothing was written" in (error.details() or ""), error.details()
        try:
            for answer in streamed:
                if answer.HasField("error"):
                    codes = {code.value[0]: code.name for code in grpc.StatusCode}
                    outcomes["streamed"] = codes[answer.error.code]
                else:
                    outcomes["streamed"] = status_name(answer.set_state.status)
        except grpc.RpcError as error:
            outcomes.setdefault("streamed", error.code().name)
        assert server.process.wait(30) == 0
    finally:
        requests.put(None)
        server.stop()
    with sqlite3.connect(database) as db:
        written = {row[0] for row in db.execute("SELECT message FROM states")}
    for name, outcome in outcomes.items():
        assert outcome in ("ACCEPT", "UNAVAILABLE"), (name, outcome)
        assert (outcome == "ACCEPT") == (name in written), (name, outcome, written)
    # The calls the writer had not started (those queued behind the first, unless they joined
    # its group) were refused, and so was a streamed call the stream had not read yet when it
    # was told to close; the group under way was answered after the grace, ACCEPT.
    found = grace_over.search(server.output())
    assert found is not None
    assert list(outcomes.values()).count("UNAVAILABLE") >= int(found.group(1))
    assert outcomes["first"] == "ACCEPT"


def pb_stub(channel: grpc.Channel):
    from stateward.v1 import orchestration_pb2_grpc

    return orchestration_pb2_grpc.OrchestrationServiceStub(channel)


def test_restart_on_the_same_database_keeps_everything(tmp_path):
    server = ServerProcess(tmp_path / "restart.db").start()
    stub = server.stub()
    run = new_flow_run(stub, flow_name="kept", tags=["a"], parameters={"n": 2})
    propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    propose(stub, run.id, state(ST.STATE_TYPE_COMPLETED, result_json="[1, 2]"))
    before = stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run
    states_before = stub.ListStates(pb.ListStatesRequest(run_id=run.id)).states
    server.restart()
    try:
        stub = server.stub()
        assert stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run == before
        assert stub.ListStates(pb.ListStatesRequest(run_id=run.id)).states == states_before
        assert history(stub, run.id) == ["Pending", "Running", "Completed"]
    finally:
        server.stop()


def test_kill_9_while_8_clients_write_loses_nothing_acknowledged(tmp_path):
    server = ServerProcess(tmp_path / "crash.db").start()
    stub = server.stub()
    runs = [new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING).id for _ in range(8)]
    acknowledged: dict[str, list[str]] = {run_id: [] for run_id in runs}
    stop = threading.Event()

    def write(run_id: str) -> None:
        channel = grpc.insecure_channel(server.target)
        writer = pb_stub(channel)
        while not stop.is_set():
            try:
                answer = propose(writer, run_id, ST.STATE_TYPE_RUNNING)
            except grpc.RpcError:
                return
            assert answer.status == ACCEPT
            acknowledged[run_id].append(answer.state.id)
        channel.close()

    threads = [threading.Thread(target=write, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    wait_until(  # a good number, whatever the load
        lambda: sum(len(ids) for ids in acknowledged.values()) > 100, 30, "100 acknowledged writes"
    )
    time.sleep(0.2)  # and kill in the middle of writes
    server.kill()
    stop.set()
    for thread in threads:
        thread.join(10)
    total = sum(len(ids) for ids in acknowledged.values())
    assert total > 100
    server.restart()
    try:
        stub = server.stub()
        for run_id, state_ids in acknowledged.items():
            stored = [s.id for s in stub.ListStates(pb.ListStatesRequest(run_id=run_id)).states]
            missing = set(state_ids) - set(stored)
            assert not missing, f"{len(missing)} acknowledged states of {run_id} were lost"
            # Acknowledged states are in the history in the order they were acknowledged.
            positions = [stored.index(state_id) for state_id in state_ids]
            assert positions == sorted(positions)
    finally:
        server.stop()


def test_kill_9_with_64_calls_in_flight_loses_nothing_answered(tmp_path):
    """Calls in flight together commit in groups: each is answered only after its group's
    commit, so a server killed at any moment keeps every state it answered."""
    import asyncio

    server = ServerProcess(tmp_path / "grouped.db").start()
    stub = server.stub()
    runs = [new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING).id for _ in range(64)]
    answered: dict[str, list[str]] = {run_id: [] for run_id in runs}

    async def write_all() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            writer = pb_stub(channel)

            async def write(run_id: str) -> None:
                request = pb.SetStateRequest(run_id=run_id, state=state(ST.STATE_TYPE_RUNNING))
                while True:
                    try:
                        answer = await writer.SetState(request)
                    except grpc.aio.AioRpcError:
                        return  # the server died
                    assert answer.status == ACCEPT
                    answered[run_id].append(answer.state.id)

            await asyncio.gather(*(write(run_id) for run_id in runs))

    thread = threading.Thread(target=asyncio.run, args=(write_all(),))
    thread.start()
    wait_until(lambda: sum(map(len, answered.values())) > 300, 60, "300 answered writes")
    server.kill()
    thread.join(30)
    assert not thread.is_alive()
    server.restart()
    try:
        stub = server.stub()
        for run_id, state_ids in answered.items():
            stored = [s.id for s in stub.ListStates(pb.ListStatesRequest(run_id=run_id)).states]
            assert not set(state_ids) - set(stored), f"answered states of {run_id} were lost"
            assert stored[1 : len(state_ids) + 1] == state_ids  # in the order answered
    finally:
        server.stop()


def test_a_backup_taken_while_the_server_writes_opens_as_a_database(tmp_path):
    import subprocess
    import sys

    from tests.support import ROOT

    server = ServerProcess(tmp_path / "live.db").start()
    try:
        stub = server.stub()
        run = new_flow_run(stub, flow_name="backed-up", initial=ST.STATE_TYPE_RUNNING)
        stop = threading.Event()
        writing = threading.Event()

        def keep_writing() -> None:
            writer = pb_stub(grpc.insecure_channel(server.target))
            while not stop.is_set():
                propose(writer, run.id, ST.STATE_TYPE_RUNNING)
                writing.set()

        writer = threading.Thread(target=keep_writing)
        writer.start()
        assert writing.wait(30)  # the backup starts while writes go on
        copy = tmp_path / "copy.db"
        result = subprocess.run(
            [sys.executable, "-m", "stateward", "db", "backup", str(copy), "--db", str(server.db)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        stop.set()
        writer.join()
        assert result.returncode == 0, result.stderr
        assert "integrity: ok" in result.stdout
    finally:
        server.stop()
    restored = ServerProcess(copy).start()
    try:
        found = restored.stub().ListFlowRuns(pb.ListFlowRunsRequest(flow_names=["backed-up"]))
        assert [r.id for r in found.flow_runs] == [run.id]
        assert history(restored.stub(), run.id)[:2] == ["Running", "Running"]
    finally:
        restored.stop()


def test_a_read_pool_size_given_for_a_sqlite_file_is_said_to_do_nothing(tmp_path):
    """STATEWARD_READ_POOL_SIZE sizes PostgreSQL's read pool; a SQLite file's reads open a
    connection each: the server says so at start rather than take it in silence."""
    server = ServerProcess(tmp_path / "pool.db", env={"STATEWARD_READ_POOL_SIZE": "3"}).start()
    try:
        assert server.says("read_pool_size (STATEWARD_READ_POOL_SIZE, --read-pool-size) is for")
    finally:
        server.stop()
    quiet = ServerProcess(tmp_path / "quiet.db").start()
    try:
        new_flow_run(quiet.stub())
        assert "is for PostgreSQL" not in quiet.output()
    finally:
        quiet.stop()
