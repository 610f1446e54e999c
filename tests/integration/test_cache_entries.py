"""WriteCacheEntries over real gRPC, on each backend: a completed task run's state stored under a
key serves a later run with that key (Cached); entries for unknown runs, runs not completed or
malformed ones are refused with a status that says why, and nothing of the call is written. A
write that waits for the database (another program's lock) waits in a worker thread: the server
goes on answering meanwhile."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stateward.v1 import orchestration_pb2 as pb
from tests.support import (
    ACCEPT,
    REJECT,
    ST,
    new_task_run,
    running_server,
    state,
    write_lock_held,
)

MISSING = "7d0c3b0e-0000-4000-8000-000000000000"


def completed_run(stub) -> str:
    """A task run that completed with the result 42, its state stored under no key."""
    run = new_task_run(stub)
    for type_ in (ST.STATE_TYPE_RUNNING, ST.STATE_TYPE_COMPLETED):
        proposal = (
            state(type_, result_json="42") if type_ == ST.STATE_TYPE_COMPLETED else state(type_)
        )
        answer = stub.SetState(pb.SetStateRequest(run_id=run.id, state=proposal))
        assert answer.status == ACCEPT
    return run.id


def lookup(stub, key: str) -> pb.SetStateResponse:
    """What a new task run proposing RUNNING with `key` is answered."""
    run = new_task_run(stub)
    return stub.SetState(
        pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_RUNNING, cache_key=key))
    )


def test_an_entry_written_later_serves_runs_with_its_key(stub) -> None:
    run_id, key = completed_run(stub), f"held-{uuid.uuid4()}"
    assert lookup(stub, key).status == ACCEPT  # nothing under the key yet
    request = pb.WriteCacheEntriesRequest()
    request.entries.add(task_run_id=run_id, cache_key=key)
    assert stub.WriteCacheEntries(request).written == 1
    hit = lookup(stub, key)
    assert hit.status == REJECT and hit.state.name == "Cached" and hit.state.result.json == "42"


def test_an_expired_entry_serves_nothing(stub) -> None:
    run_id, key = completed_run(stub), f"expired-{uuid.uuid4()}"
    request = pb.WriteCacheEntriesRequest()
    entry = request.entries.add(task_run_id=run_id, cache_key=key)
    entry.cache_expiration.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
    assert stub.WriteCacheEntries(request).written == 1
    assert lookup(stub, key).status == ACCEPT


@pytest.mark.parametrize(
    ("problem", "code", "words"),
    [
        ("unknown run", grpc.StatusCode.NOT_FOUND, MISSING),
        ("running run", grpc.StatusCode.FAILED_PRECONDITION, "not COMPLETED"),
        ("no key", grpc.StatusCode.INVALID_ARGUMENT, "entries[1].cache_key"),
        ("bad id", grpc.StatusCode.INVALID_ARGUMENT, "entries[1].task_run_id"),
    ],
)
def test_a_bad_entry_is_refused_and_nothing_is_written(stub, problem, code, words) -> None:
    good_run, good_key = completed_run(stub), f"good-{uuid.uuid4()}"
    request = pb.WriteCacheEntriesRequest()
    request.entries.add(task_run_id=good_run, cache_key=good_key)
    bad = request.entries.add(task_run_id=MISSING, cache_key=f"bad-{uuid.uuid4()}")
    if problem == "running run":
        running = new_task_run(stub)
        stub.SetState(pb.SetStateRequest(run_id=running.id, state=state(ST.STATE_TYPE_RUNNING)))
        bad.task_run_id = running.id
    elif problem == "no key":
        bad.task_run_id, bad.cache_key = good_run, ""
    elif problem == "bad id":
        bad.task_run_id = "not-a-uuid"
    with pytest.raises(grpc.RpcError) as caught:
        stub.WriteCacheEntries(request)
    assert caught.value.code() == code and words in caught.value.details()
    assert lookup(stub, good_key).status == ACCEPT  # the good entry was not written either


def test_a_write_waiting_for_the_database_lets_the_server_answer_meanwhile(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path) as server:
        stub = server.stub()
        run_id, key = completed_run(stub), f"waiting-{uuid.uuid4()}"
        request = pb.WriteCacheEntriesRequest()
        request.entries.add(task_run_id=run_id, cache_key=key)
        health = health_pb2_grpc.HealthStub(server.channel())
        assert isinstance(server.db, Path)
        with write_lock_held(server.db) as release:
            # The write waits for the lock (up to SQLite's busy timeout, 5 s): on the event
            # loop, every other call would wait with it, and be answered after it.
            writing = stub.WriteCacheEntries.future(request, timeout=60)
            for _ in range(2):
                health.Check(health_pb2.HealthCheckRequest(), timeout=60)
                assert not writing.done(), "the server answered nothing while the write waited"
            release()
            assert writing.result().written == 1
        assert lookup(stub, key).state.name == "Cached"
