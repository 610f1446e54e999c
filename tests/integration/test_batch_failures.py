"""A batch whose database fails under it: ExecuteBatch, and the SDK's in-process create and
start, fail as a whole (UNAVAILABLE) and write nothing, while an operation refused on its own
(an unknown run, a duplicate id) is still answered alone and the others commit.

The database fails the way a deployment meets it: the replica's PostgreSQL connection is ended
(an administrator's pg_terminate_backend, a failover) while the batch waits for a run's row
lock that another session holds; another program holds a SQLite file's write lock past the
busy timeout."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from stateward.exceptions import StatusCode
from stateward.ids import new_id
from stateward.runs import FlowRun, RunKind, TaskRun
from stateward.states import State, StateType
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from stateward_service.errors import ServiceError
from stateward_service.local_api import LocalService
from stateward_service.orchestrator import Orchestrator, RunNotFound
from tests.support import (
    ST,
    PostgresDatabases,
    ServerProcess,
    history,
    new_flow_run,
    running_server,
    state,
    wait_until,
    write_lock_held,
)


@contextmanager
def row_locked(url: str, table: str, run_id: str) -> Iterator[None]:
    """Another session holding the row lock of run `run_id` for the block."""
    import psycopg

    holder = psycopg.connect(url)  # not autocommit: the lock lasts until the rollback
    try:
        holder.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", (run_id,))
        yield
    finally:
        holder.rollback()
        holder.close()


def end_the_waiting_connection(databases: PostgresDatabases, url: str) -> None:
    """Once a connection to the database of `url` waits for a row lock, end it (as an
    administrator's pg_terminate_backend does)."""
    name = url.partition("?")[0].rsplit("/", 1)[1]

    def waiting() -> list[int]:
        rows = databases.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (name,),
        ).fetchall()
        return [int(row[0]) for row in rows]

    wait_until(lambda: bool(waiting()), timeout=60, what="the batch to wait for the row lock")
    for pid in waiting():
        databases.admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def in_a_thread(call: Callable[[], Any]) -> Callable[[], Any]:
    """Start `call` in a thread; the returned function waits for it and returns its outcome
    (what it returned, or the exception it raised)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()

    def result() -> Any:
        thread.join(90)
        assert not thread.is_alive(), "the call never returned"
        return outcome[0]

    return result


def create_flow_run(run_id: str) -> pb.BatchOperation:
    run = runs_pb2.FlowRun(id=run_id, flow_name="after-the-failure")
    run.state.CopyFrom(state(ST.STATE_TYPE_RUNNING))
    return pb.BatchOperation(create_flow_run=pb.CreateFlowRunRequest(flow_run=run))


@pytest.fixture
def replica(postgres_databases: PostgresDatabases, tmp_path: Path) -> Iterator[ServerProcess]:
    url = postgres_databases.create()
    server = ServerProcess(url, log_path=tmp_path / "server.log").start()
    try:
        yield server
    finally:
        server.stop()


def test_a_batch_whose_connection_is_lost_fails_whole_and_writes_nothing(
    replica, postgres_databases
):
    stub = replica.stub()
    running = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    later_id = str(uuid.uuid4())
    batch = pb.ExecuteBatchRequest(
        operations=[
            pb.BatchOperation(
                set_state=pb.SetStateRequest(
                    run_id=running.id, state=state(ST.STATE_TYPE_COMPLETED)
                )
            ),
            create_flow_run(later_id),
        ]
    )
    with row_locked(str(replica.db), "flow_runs", running.id):
        answer = in_a_thread(lambda: stub.ExecuteBatch(batch, timeout=90))
        end_the_waiting_connection(postgres_databases, str(replica.db))
    outcome = answer()
    assert isinstance(outcome, grpc.RpcError), f"the batch was answered: {outcome}"
    assert outcome.code() == grpc.StatusCode.UNAVAILABLE
    assert "unreachable" in outcome.details()
    # Nothing of it was written: not the run the later operation created, not the state.
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetFlowRun(pb.GetFlowRunRequest(id=later_id), timeout=30)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert history(stub, running.id) == ["Running"]
    # The same batch sent again applies, whole.
    again = stub.ExecuteBatch(batch, timeout=30)
    assert [result.WhichOneof("result") for result in again.results] == [
        "set_state",
        "create_flow_run",
    ]
    assert history(stub, running.id) == ["Running", "Completed"]
    assert stub.GetFlowRun(pb.GetFlowRunRequest(id=later_id)).flow_run.state.name == "Running"


def test_an_operation_refused_alone_leaves_the_others_of_its_batch(replica):
    stub = replica.stub()
    created_id = str(uuid.uuid4())
    answer = stub.ExecuteBatch(
        pb.ExecuteBatchRequest(
            operations=[
                pb.BatchOperation(
                    set_state=pb.SetStateRequest(
                        run_id=str(uuid.uuid4()), state=state(ST.STATE_TYPE_RUNNING)
                    )
                ),
                create_flow_run(created_id),
            ]
        ),
        timeout=30,
    )
    assert answer.results[0].error.code == StatusCode.NOT_FOUND
    assert answer.results[1].create_flow_run.flow_run.id == created_id
    assert history(stub, created_id) == ["Running"]


def test_create_and_start_in_process_whose_connection_is_lost_writes_nothing(
    postgres_databases,
):
    from stateward_service.store.postgres import PostgresStore

    url = postgres_databases.create()
    orchestrator = Orchestrator(PostgresStore(url))
    local = LocalService(orchestrator)
    try:
        parent_flow = local.create_run(FlowRun(id="", name="", flow_name="parent"))
        parent_task = local.create_run(
            TaskRun(id="", name="", task_key="t", flow_run_id=parent_flow.id)
        )
        # The subflow's create locks its parent task run's row: it waits there.
        subflow = FlowRun(id=new_id(), name="", flow_name="sub", parent_task_run_id=parent_task.id)
        other = FlowRun(id=new_id(), name="", flow_name="other")
        with row_locked(url, "task_runs", parent_task.id):
            answer = in_a_thread(
                lambda: local.create_and_start(
                    [subflow, other], State(StateType.RUNNING), 0.0, new_ids=True
                )
            )
            end_the_waiting_connection(postgres_databases, url)
        outcome = answer()
        assert isinstance(outcome, ServiceError), f"create_and_start answered: {outcome}"
        assert outcome.code == StatusCode.UNAVAILABLE
        for run_id in (subflow.id, other.id):
            with pytest.raises(RunNotFound):
                orchestrator.get_run(run_id, RunKind.FLOW_RUN)
    finally:
        orchestrator.close()


def test_a_batch_on_a_sqlite_file_another_program_locks_is_unavailable_and_unwritten(tmp_path):
    with running_server(tmp_path) as server:
        stub = server.stub()
        running = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
        later_id = str(uuid.uuid4())
        batch = pb.ExecuteBatchRequest(
            operations=[
                pb.BatchOperation(
                    set_state=pb.SetStateRequest(
                        run_id=running.id, state=state(ST.STATE_TYPE_COMPLETED)
                    )
                ),
                create_flow_run(later_id),
            ]
        )
        assert isinstance(server.db, Path)
        with write_lock_held(server.db), pytest.raises(grpc.RpcError) as refused:
            stub.ExecuteBatch(batch, timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "locked by another program" in refused.value.details()
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetFlowRun(pb.GetFlowRunRequest(id=later_id), timeout=30)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert history(stub, running.id) == ["Running"]
