"""A flow run against a server that stops gracefully and comes back: what the stopping server
refuses (UNAVAILABLE, nothing written) or cancels, the SDK sends again, and the flow run goes on
on the restarted server."""

from __future__ import annotations

import signal
import socket

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from tests.integration.test_metrics import counted
from tests.sdk.conftest import spawn
from tests.support import (
    ACCEPT,
    ST,
    ServerProcess,
    new_flow_run,
    state,
    wait_until,
    write_lock_held,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def takes_no_new_writes(stub) -> bool:
    """Whether the server refuses writes now (its stop began): a create of a limit that is
    refused either way, before anything is written, says which refusal comes first."""
    try:
        stub.CreateConcurrencyLimit(
            pb.CreateConcurrencyLimitRequest(
                concurrency_limit=runs_pb2.ConcurrencyLimit(tag="probe", limit=-1)
            ),
            timeout=10,
        )
    except grpc.RpcError as error:
        return error.code() is grpc.StatusCode.UNAVAILABLE
    raise AssertionError("a negative limit was taken")


def test_a_task_submitted_while_the_server_stops_is_created_once_it_is_back(tmp_path):
    """The server is stopping (SIGTERM; a write in flight holds its grace open) when the flow
    submits a task: the create is refused with UNAVAILABLE, nothing written, "send it again".
    The SDK sends it again, as it sends a proposal again, and once the server is back the task
    runs and the flow run completes. (The create was sent once: the flow run failed with
    ServerUnavailable.)"""
    database = tmp_path / "stops.db"
    metrics_port = free_port()
    server = ServerProcess(
        database,
        args=["--metrics-port", str(metrics_port)],
        env={"STATEWARD_SHUTDOWN_GRACE_SECONDS": "60"},
    ).start()
    runner = spawn(
        """
        import sys
        from stateward import flow, task

        @task
        def double(x):
            return 2 * x

        @flow(name="submits-while-the-server-stops")
        def submitting():
            print("ready", flush=True)
            sys.stdin.readline()
            return double.submit(21).result()

        print("result", submitting(), flush=True)
        """,
        env={"STATEWARD_API_URL": server.target},
    )
    assert runner.stdin is not None and runner.stdout is not None
    try:
        assert runner.stdout.readline() == "ready\n"
        stub = server.stub()
        health = health_pb2_grpc.HealthStub(server.channel())
        run_id = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING).id
        with write_lock_held(database) as release:
            in_flight = stub.SetState.future(
                pb.SetStateRequest(run_id=run_id, state=state(ST.STATE_TYPE_RUNNING)), timeout=60
            )
            # Answered after the SetState was read: it waits for the write lock in the writer.
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert not in_flight.done()
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: takes_no_new_writes(stub), 30, "the stop to refuse new writes")
            runner.stdin.write("go\n")
            runner.stdin.flush()
            refused = counted(
                metrics_port, "stateward_rpc_requests_total", 1, method="CreateTaskRun",
                code="UNAVAILABLE",
            )  # fmt: skip
            assert refused >= 1
            release()
        assert in_flight.result().status == ACCEPT
        assert server.process.wait(30) == 0
        server.restart()
        out, err = runner.communicate(timeout=60)
        assert runner.returncode == 0, err
        assert "result 42" in out
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
        server.stop()
